//! Opaque page tokens: a keyset `Cursor` bound to one inbox, tagged with a keyed MAC.
//!
//! The token is not secret (it names a position the caller already saw); its tag is
//! HMAC-SHA-256 under a secret the gateway generates once and keeps in its store (shared by
//! every instance on one database), so nobody without that secret can mint or alter a token:
//! forged, truncated or cross-inbox tokens fail loudly with 400 instead of silently listing
//! from somewhere else.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::Cursor;

/// Version 1 tokens had an unkeyed tag; they are no longer accepted.
const VERSION: u8 = 2;
/// 128 bits of HMAC-SHA-256.
const TAG_LEN: usize = 16;
/// Name of the page-token secret in the store.
pub const SECRET_NAME: &str = "page_token_hmac_sha256";
/// Bytes of the page-token secret.
pub const SECRET_LEN: usize = 32;
const MAX_ID_LEN: usize = 64;
/// Longest token text we will even try to decode.
pub const MAX_TOKEN_LEN: usize = 4 * (1 + 8 + MAX_ID_LEN + TAG_LEN).div_ceil(3);

/// The keyed MAC that signs page tokens, built once from the store's secret.
#[derive(Clone)]
pub struct PageTokenKey {
    mac: Hmac<Sha256>,
}

impl std::fmt::Debug for PageTokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PageTokenKey(..)")
    }
}

impl PageTokenKey {
    pub fn new(secret: &[u8]) -> PageTokenKey {
        PageTokenKey {
            // HMAC takes a key of any length; this cannot fail.
            mac: <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!()),
        }
    }

    fn mac(&self, inbox_id: &str, payload: &[u8]) -> Hmac<Sha256> {
        let mut m = self.mac.clone();
        m.update(b"agentry-gateway page token v2\0");
        m.update(&(inbox_id.len() as u64).to_be_bytes());
        m.update(inbox_id.as_bytes());
        m.update(payload);
        m
    }

    fn tag(&self, inbox_id: &str, payload: &[u8]) -> [u8; TAG_LEN] {
        let d = self.mac(inbox_id, payload).finalize().into_bytes();
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(&d[..TAG_LEN]);
        out
    }

    fn verify(&self, inbox_id: &str, payload: &[u8], tag: &[u8]) -> bool {
        // Constant-time comparison of the truncated tag.
        self.mac(inbox_id, payload)
            .verify_truncated_left(tag)
            .is_ok()
    }
}

/// Encodes the position after `cursor` in `inbox_id`'s listing.
pub fn encode(key: &PageTokenKey, inbox_id: &str, cursor: &Cursor) -> String {
    let mut payload = Vec::with_capacity(1 + 8 + cursor.api_key_id.len() + TAG_LEN);
    payload.push(VERSION);
    payload.extend_from_slice(&cursor.created_at_us.to_be_bytes());
    payload.extend_from_slice(cursor.api_key_id.as_bytes());
    let t = key.tag(inbox_id, &payload);
    payload.extend_from_slice(&t);
    URL_SAFE_NO_PAD.encode(payload)
}

/// Decodes a token issued for `inbox_id`; `None` if it is not one we issued for it.
pub fn decode(key: &PageTokenKey, inbox_id: &str, token: &str) -> Option<Cursor> {
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return None;
    }
    let raw = URL_SAFE_NO_PAD.decode(token).ok()?;
    if raw.len() < 1 + 8 + 1 + TAG_LEN || raw[0] != VERSION {
        return None;
    }
    let (payload, got) = raw.split_at(raw.len() - TAG_LEN);
    if got.len() != TAG_LEN || !key.verify(inbox_id, payload, got) {
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

    fn k() -> PageTokenKey {
        PageTokenKey::new(&[7u8; SECRET_LEN])
    }

    #[test]
    fn roundtrip() {
        let t = encode(&k(), "inbox@x", &c());
        assert!(t.len() <= MAX_TOKEN_LEN);
        assert_eq!(decode(&k(), "inbox@x", &t), Some(c()));
    }

    #[test]
    fn tokens_minted_without_the_secret_fail() {
        // The old scheme: an unkeyed SHA-256 anyone can compute.
        use sha2::Digest;
        for version in [1u8, 2] {
            let mut payload = vec![version];
            payload.extend_from_slice(&0i64.to_be_bytes());
            payload.extend_from_slice(b"key_zzzzzzzzzzzzzzzzzzzzzz");
            let mut h = sha2::Sha256::new();
            h.update(b"agentry-gateway page token v1\0inbox@x\0");
            h.update(&payload);
            let d = h.finalize();
            for len in [8, TAG_LEN] {
                let mut forged = payload.clone();
                forged.extend_from_slice(&d[..len]);
                assert_eq!(
                    decode(&k(), "inbox@x", &URL_SAFE_NO_PAD.encode(&forged)),
                    None
                );
            }
        }
        // A token from another deployment (another secret) fails here.
        let other = PageTokenKey::new(&[8u8; SECRET_LEN]);
        assert_eq!(
            decode(&k(), "inbox@x", &encode(&other, "inbox@x", &c())),
            None
        );
        // Every single-bit change of a real token fails.
        let raw = URL_SAFE_NO_PAD
            .decode(encode(&k(), "inbox@x", &c()))
            .unwrap();
        for i in 0..raw.len() * 8 {
            let mut b = raw.clone();
            b[i / 8] ^= 1 << (i % 8);
            assert_eq!(
                decode(&k(), "inbox@x", &URL_SAFE_NO_PAD.encode(&b)),
                None,
                "bit {i}"
            );
        }
    }

    #[test]
    fn other_inbox_truncated_and_forged_fail() {
        let k = k();
        let t = encode(&k, "inbox@x", &c());
        assert_eq!(decode(&k, "other", &t), None);
        assert_eq!(decode(&k, "inbox@x", &t[..t.len() - 1]), None);
        assert_eq!(decode(&k, "inbox@x", &t[..10]), None);
        assert_eq!(decode(&k, "inbox@x", ""), None);
        assert_eq!(decode(&k, "inbox@x", "not base64 !"), None);
        let mut b = t.into_bytes();
        b[5] = if b[5] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            decode(&k, "inbox@x", std::str::from_utf8(&b).unwrap()),
            None
        );
    }
}
