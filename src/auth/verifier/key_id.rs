//! A cached key's id, held inline: the ids the gateway makes are 26 bytes (`key_` and 22
//! letters or digits), so a million cached keys hold their ids in place rather than in a
//! million small buffers. A longer id (another writer's, in a shared store) is boxed.

use http::HeaderValue;

/// Bytes an id may have and still be held inline.
const INLINE: usize = 30;

/// An API key id that is a valid header value (checked when made).
#[derive(Clone, PartialEq, Eq)]
pub enum KeyId {
    Inline { len: u8, bytes: [u8; INLINE] },
    Boxed(Box<str>),
}

impl KeyId {
    /// `None` when `id` cannot be sent as a header value.
    pub fn new(id: &str) -> Option<KeyId> {
        HeaderValue::from_str(id).ok()?;
        if id.len() > INLINE {
            return Some(KeyId::Boxed(id.into()));
        }
        let mut bytes = [0u8; INLINE];
        bytes[..id.len()].copy_from_slice(id.as_bytes());
        Some(KeyId::Inline {
            len: id.len() as u8,
            bytes,
        })
    }

    pub fn as_bytes(&self) -> &[u8] {
        match self {
            KeyId::Inline { len, bytes } => &bytes[..usize::from(*len)],
            KeyId::Boxed(s) => s.as_bytes(),
        }
    }

    pub fn as_str(&self) -> &str {
        // Inline bytes are a copy of a whole `&str`: valid UTF-8, so the fallback is never taken.
        std::str::from_utf8(self.as_bytes()).unwrap_or("")
    }

    /// The id as a header value, built on use (a copy of at most a few dozen bytes): cheaper
    /// per request than a shared buffer is per cached key.
    pub fn header_value(&self) -> HeaderValue {
        // Checked in `new`; the fallback is never taken (and, lazily built, costs nothing).
        HeaderValue::from_bytes(self.as_bytes())
            .unwrap_or_else(|_| HeaderValue::from_static("invalid"))
    }
}

impl std::fmt::Debug for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_boxed_and_refused_ids() {
        for id in ["", "k", "key_0123456789abcdefghijkl", &"x".repeat(INLINE)] {
            let k = KeyId::new(id).unwrap();
            assert!(matches!(k, KeyId::Inline { .. }), "{id}");
            assert_eq!(k.as_str(), id);
            assert_eq!(k.header_value(), id);
        }
        let long = "y".repeat(INLINE + 1);
        let k = KeyId::new(&long).unwrap();
        assert!(matches!(k, KeyId::Boxed(_)));
        assert_eq!(k.as_str(), long);
        assert_eq!(k.header_value(), long.as_str());
        assert!(KeyId::new("bad\nid").is_none());
        assert!(KeyId::new("tab\tand\u{7f}").is_none());
        // Inline, as the gateway's own ids are: the id costs no allocation of its own.
        assert_eq!(std::mem::size_of::<KeyId>(), 32);
    }
}
