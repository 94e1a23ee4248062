//! Opaque page tokens: a keyset `Cursor` bound to one inbox, with an integrity tag.
//!
//! The token is not secret (it names a position the caller already saw); the tag makes forged,
//! truncated or cross-inbox tokens fail loudly with 400 instead of silently listing from
//! somewhere else.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::Cursor;

const VERSION: u8 = 1;
const TAG_LEN: usize = 8;
const MAX_ID_LEN: usize = 64;
/// Longest token text we will even try to decode.
pub const MAX_TOKEN_LEN: usize = 4 * (1 + 8 + MAX_ID_LEN + TAG_LEN).div_ceil(3);

fn tag(inbox_id: &str, payload: &[u8]) -> [u8; TAG_LEN] {
    let mut h = Sha256::new();
    h.update(b"agentry-gateway page token v1\0");
    h.update(inbox_id.as_bytes());
    h.update([0u8]);
    h.update(payload);
    let d = h.finalize();
    let mut out = [0u8; TAG_LEN];
    out.copy_from_slice(&d[..TAG_LEN]);
    out
}

/// Encodes the position after `cursor` in `inbox_id`'s listing.
pub fn encode(inbox_id: &str, cursor: &Cursor) -> String {
    let mut payload = Vec::with_capacity(1 + 8 + cursor.api_key_id.len() + TAG_LEN);
    payload.push(VERSION);
    payload.extend_from_slice(&cursor.created_at_us.to_be_bytes());
    payload.extend_from_slice(cursor.api_key_id.as_bytes());
    let t = tag(inbox_id, &payload);
    payload.extend_from_slice(&t);
    URL_SAFE_NO_PAD.encode(payload)
}

/// Decodes a token issued for `inbox_id`; `None` if it is not one we issued for it.
pub fn decode(inbox_id: &str, token: &str) -> Option<Cursor> {
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return None;
    }
    let raw = URL_SAFE_NO_PAD.decode(token).ok()?;
    if raw.len() < 1 + 8 + 1 + TAG_LEN || raw[0] != VERSION {
        return None;
    }
    let (payload, got) = raw.split_at(raw.len() - TAG_LEN);
    if !bool::from(tag(inbox_id, payload).ct_eq(got)) {
        return None;
    }
    let created_at_us = i64::from_be_bytes(payload[1..9].try_into().ok()?);
    let api_key_id = String::from_utf8(payload[9..].to_vec()).ok()?;
    Some(Cursor {
        created_at_us,
        api_key_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c() -> Cursor {
        Cursor {
            created_at_us: 1_767_225_600_000_000,
            api_key_id: "key_abcdefghijklmnopqrstuv".into(),
        }
    }

    #[test]
    fn roundtrip() {
        let t = encode("inbox@x", &c());
        assert!(t.len() <= MAX_TOKEN_LEN);
        assert_eq!(decode("inbox@x", &t), Some(c()));
    }

    #[test]
    fn other_inbox_truncated_and_forged_fail() {
        let t = encode("inbox@x", &c());
        assert_eq!(decode("other", &t), None);
        assert_eq!(decode("inbox@x", &t[..t.len() - 1]), None);
        assert_eq!(decode("inbox@x", &t[..10]), None);
        assert_eq!(decode("inbox@x", ""), None);
        assert_eq!(decode("inbox@x", "not base64 !"), None);
        let mut b = t.into_bytes();
        b[5] = if b[5] == b'A' { b'B' } else { b'A' };
        assert_eq!(decode("inbox@x", std::str::from_utf8(&b).unwrap()), None);
    }
}
