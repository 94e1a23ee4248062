//! The API key format: generate, parse with checksum, hash (SHA-256), compare in constant time.
//!
//! A key is `{prefix}_{43 base62 chars}{6 base62 chars}`: 43 characters drawn uniformly from the
//! OS CSPRNG carry 256 bits, and the last 6 are the CRC32 of everything before them (GitHub's
//! scheme), so typos and garbage are rejected without hashing or any lookup.

use rand::distributions::{Alphanumeric, DistString};
use rand::rngs::OsRng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Random base62 characters in a key: 43 × log2(62) ≈ 256.03 bits.
pub const RANDOM_CHARS: usize = 43;
/// Base62 characters of the CRC32 checksum (62^6 > 2^32).
pub const CHECKSUM_CHARS: usize = 6;
/// Random characters shown in the public `prefix` field (about 36 of the 256 bits).
pub const DISPLAY_RANDOM_CHARS: usize = 6;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// SHA-256 of a secret (API key or management token).
pub type KeyHash = [u8; 32];

/// Why a presented key was rejected before any lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormatError {
    #[error("key has the wrong shape")]
    Malformed,
    #[error("key checksum does not match")]
    Checksum,
}

/// A freshly generated key: the plaintext (shown once) and what is stored about it.
pub struct NewKeyMaterial {
    pub plaintext: String,
    pub display_prefix: String,
    pub hash: KeyHash,
}

/// The key format of one deployment (its type prefix).
#[derive(Debug, Clone)]
pub struct KeyFormat {
    prefix: String,
    total_len: usize,
}

impl KeyFormat {
    pub fn new(prefix: &str) -> KeyFormat {
        KeyFormat {
            prefix: prefix.to_owned(),
            total_len: prefix.len() + 1 + RANDOM_CHARS + CHECKSUM_CHARS,
        }
    }

    /// Generates a new key from the OS CSPRNG.
    pub fn generate(&self) -> NewKeyMaterial {
        let random = Alphanumeric.sample_string(&mut OsRng, RANDOM_CHARS);
        let mut plaintext = String::with_capacity(self.total_len);
        plaintext.push_str(&self.prefix);
        plaintext.push('_');
        plaintext.push_str(&random);
        let checksum = encode_checksum(crc32fast::hash(plaintext.as_bytes()));
        plaintext.push_str(std::str::from_utf8(&checksum).expect("base62 is ASCII"));
        let display_prefix = format!("{}_{}", self.prefix, &random[..DISPLAY_RANDOM_CHARS]);
        let hash = hash_secret(plaintext.as_bytes());
        NewKeyMaterial {
            plaintext,
            display_prefix,
            hash,
        }
    }

    /// Checks shape and checksum of a presented key. Cheap: no hashing, no allocation.
    pub fn check(&self, key: &[u8]) -> Result<(), KeyFormatError> {
        if key.len() != self.total_len
            || !key.starts_with(self.prefix.as_bytes())
            || key[self.prefix.len()] != b'_'
        {
            return Err(KeyFormatError::Malformed);
        }
        let body = &key[self.prefix.len() + 1..];
        // A fold, not `all`: no early exit, so the compiler checks many bytes at a time.
        if !body
            .iter()
            .fold(true, |ok, &b| ok & b.is_ascii_alphanumeric())
        {
            return Err(KeyFormatError::Malformed);
        }
        let (signed, checksum) = key.split_at(self.total_len - CHECKSUM_CHARS);
        if encode_checksum(crc32fast::hash(signed)) != checksum {
            return Err(KeyFormatError::Checksum);
        }
        Ok(())
    }
}

impl KeyFormat {
    /// Whether `text` holds a well-formed key of this format anywhere (prefix, shape and
    /// checksum), read as it is or percent-decoded any number of times over (`%61gk_`,
    /// `agk%5F`, `%2561gk_`, a fully `%XX`-encoded key): an upstream or a log reader that
    /// decodes would see the key. Hand-written rather than `percent-encoding`, because it runs
    /// on every request's target and must not allocate.
    pub fn appears_in_url(&self, text: &[u8]) -> bool {
        if text.len() < self.total_len {
            return false;
        }
        let first = self.prefix.as_bytes()[0];
        (0..=text.len() - self.total_len)
            .filter(|&i| text[i] == first || text[i] == b'%')
            .any(|i| self.key_starts_at(text, i))
    }

    /// Whether a key, decoded byte by byte with `decoded_at`, starts at `text[i]`.
    fn key_starts_at(&self, text: &[u8], mut i: usize) -> bool {
        let signed_len = self.total_len - CHECKSUM_CHARS;
        let mut crc = crc32fast::Hasher::new();
        let mut checksum = [0u8; CHECKSUM_CHARS];
        for n in 0..self.total_len {
            let Some((b, next)) = decoded_at(text, i, 0) else {
                return false;
            };
            let fits = match n {
                n if n < self.prefix.len() => b == self.prefix.as_bytes()[n],
                n if n == self.prefix.len() => b == b'_',
                _ => b.is_ascii_alphanumeric(),
            };
            if !fits {
                return false;
            }
            if n < signed_len {
                crc.update(&[b]);
            } else {
                checksum[n - signed_len] = b;
            }
            i = next;
        }
        encode_checksum(crc.finalize()) == checksum
    }
}

/// The byte at `text[i]` after percent-decoding, and where the next one starts. An escape's
/// hex digits may themselves be escaped, and an escape may decode to `%` that starts another
/// (double encoding): both are followed, up to a small depth.
fn decoded_at(text: &[u8], i: usize, depth: u8) -> Option<(u8, usize)> {
    let b = *text.get(i)?;
    if b != b'%' || depth > 3 {
        return Some((b, i + 1));
    }
    let mut value = b'%';
    let mut next = i + 1;
    // Each round reads two hex digits (each possibly escaped) after a `%`.
    while value == b'%' {
        let Some((h, j)) = decoded_at(text, next, depth + 1) else {
            break;
        };
        let Some((l, k)) = decoded_at(text, j, depth + 1) else {
            break;
        };
        let (Some(h), Some(l)) = (hex_digit(h), hex_digit(l)) else {
            break;
        };
        value = h << 4 | l;
        next = k;
    }
    Some((value, next))
}

fn hex_digit(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

fn encode_checksum(mut crc: u32) -> [u8; CHECKSUM_CHARS] {
    let mut out = [b'0'; CHECKSUM_CHARS];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(crc % 62) as usize];
        crc /= 62;
    }
    out
}

/// SHA-256 of a secret.
pub fn hash_secret(secret: &[u8]) -> KeyHash {
    Sha256::digest(secret).into()
}

/// Constant-time equality of two hashes, compared as four 64-bit words: `subtle` puts an
/// optimisation barrier on each element it compares, so 4 words cost an eighth of 32 bytes.
pub fn hashes_equal(a: &KeyHash, b: &KeyHash) -> bool {
    fn words(h: &KeyHash) -> [u64; 4] {
        let mut w = [0u64; 4];
        for (w, c) in w.iter_mut().zip(h.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(c);
            *w = u64::from_ne_bytes(b);
        }
        w
    }
    words(a).ct_eq(&words(b)).into()
}

/// A random opaque, URL-safe identifier: `{kind}_` + 22 base62 characters (~131 bits).
pub fn random_id(kind: &str) -> String {
    format!("{kind}_{}", Alphanumeric.sample_string(&mut OsRng, 22))
}

/// A fresh management token (`agm_` + 256 random bits), for `new-token`.
pub fn generate_management_token() -> String {
    format!(
        "agm_{}",
        Alphanumeric.sample_string(&mut OsRng, RANDOM_CHARS)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_checks_and_has_expected_shape() {
        let f = KeyFormat::new("agk");
        let k = f.generate();
        assert_eq!(k.plaintext.len(), 3 + 1 + 43 + 6);
        assert!(k.plaintext.starts_with("agk_"));
        assert_eq!(k.display_prefix.len(), 4 + DISPLAY_RANDOM_CHARS);
        assert!(k.plaintext.starts_with(&k.display_prefix));
        assert_eq!(f.check(k.plaintext.as_bytes()), Ok(()));
        assert_eq!(k.hash, hash_secret(k.plaintext.as_bytes()));
    }

    #[test]
    fn every_single_character_change_is_caught() {
        let f = KeyFormat::new("agk");
        let k = f.generate().plaintext.into_bytes();
        for i in 4..k.len() {
            let mut bad = k.clone();
            bad[i] = if bad[i] == b'a' { b'b' } else { b'a' };
            assert!(f.check(&bad).is_err(), "position {i}");
        }
    }

    #[test]
    fn wrong_shapes_are_malformed() {
        let f = KeyFormat::new("agk");
        let k = f.generate().plaintext;
        assert_eq!(f.check(b""), Err(KeyFormatError::Malformed));
        assert_eq!(
            f.check(&k.as_bytes()[..k.len() - 1]),
            Err(KeyFormatError::Malformed)
        );
        assert_eq!(
            f.check(format!("{k}x").as_bytes()),
            Err(KeyFormatError::Malformed)
        );
        let other = KeyFormat::new("xyz").generate().plaintext;
        assert_eq!(f.check(other.as_bytes()), Err(KeyFormatError::Malformed));
        let mut dash = k.clone().into_bytes();
        dash[10] = b'-';
        assert_eq!(f.check(&dash), Err(KeyFormatError::Malformed));
    }

    #[test]
    fn keys_are_found_inside_text() {
        let f = KeyFormat::new("agk");
        let k = f.generate().plaintext;
        assert!(f.appears_in_url(format!("a=1&api_key={k}&b=2").as_bytes()));
        assert!(f.appears_in_url(k.as_bytes()));
        assert!(!f.appears_in_url(&format!("x={}", &k[..k.len() - 1]).into_bytes()));
        assert!(!f.appears_in_url(b"agk_agk_"));
        assert!(!f.appears_in_url(b""));
    }

    #[test]
    fn checksum_encoding_is_fixed_width() {
        assert_eq!(&encode_checksum(0), b"000000");
        assert_eq!(&encode_checksum(61), b"00000z");
        assert_eq!(&encode_checksum(u32::MAX), b"4gfFC3");
    }

    #[test]
    fn keys_are_unique() {
        let f = KeyFormat::new("agk");
        let a = f.generate();
        let b = f.generate();
        assert_ne!(a.plaintext, b.plaintext);
        assert!(!hashes_equal(&a.hash, &b.hash));
        assert!(hashes_equal(&a.hash, &a.hash));
    }

    #[test]
    fn hashes_differing_in_any_bit_are_unequal() {
        let a: KeyHash = hash_secret(b"agk_example");
        assert!(hashes_equal(&a, &a.clone()));
        for byte in 0..32 {
            for bit in 0..8 {
                let mut b = a;
                b[byte] ^= 1 << bit;
                assert!(!hashes_equal(&a, &b), "byte {byte} bit {bit}");
                assert!(!hashes_equal(&b, &a), "byte {byte} bit {bit}");
            }
        }
        assert!(!hashes_equal(&[0; 32], &[0xff; 32]));
        assert!(hashes_equal(&[0xff; 32], &[0xff; 32]));
    }

    #[test]
    fn ids_are_url_safe() {
        let id = random_id("key");
        assert_eq!(id.len(), 26);
        assert!(id[4..].bytes().all(|b| b.is_ascii_alphanumeric()));
    }

    fn encode_all(s: &str, upper: bool) -> String {
        s.bytes()
            .map(|b| {
                if upper {
                    format!("%{b:02X}")
                } else {
                    format!("%{b:02x}")
                }
            })
            .collect()
    }

    #[test]
    fn keys_are_found_in_urls_however_they_are_encoded() {
        let f = KeyFormat::new("agk");
        let k = f.generate().plaintext;
        let rest = &k[4..];
        let spellings = [
            k.clone(),
            format!("agk%5F{rest}"),
            format!("agk%5f{rest}"),
            format!("%61gk_{rest}"),
            format!("%61%67%6B%5F{rest}"),
            encode_all(&k, true),
            encode_all(&k, false),
            // Double and mixed encodings: what an upstream that decodes twice would see.
            format!("%2561gk_{rest}"),
            format!("%25%36%31gk_{rest}"),
            format!("%252561gk_{rest}"),
            encode_all(&encode_all(&k, true), false),
            // One character of the body encoded, in the middle and at the checksum.
            format!("{}%{:02X}{}", &k[..20], k.as_bytes()[20], &k[21..]),
            format!("{}%{:02x}", &k[..k.len() - 1], k.as_bytes()[k.len() - 1]),
        ];
        for (i, sp) in spellings.iter().enumerate() {
            for (before, after) in [
                ("", ""),
                ("/v0/inboxes/x/", "/y"),
                ("a=1&k=", "&b=2"),
                ("%", "%"),
                ("agk_", "agk"),
            ] {
                let text = format!("{before}{sp}{after}");
                assert!(f.appears_in_url(text.as_bytes()), "spelling {i}: {text}");
            }
        }
        // Near misses: a wrong checksum, a wrong prefix case, a broken escape, a short key.
        let mut bad = k.clone().into_bytes();
        let last = bad.len() - 1;
        bad[last] = if bad[last] == b'a' { b'b' } else { b'a' };
        let bad = String::from_utf8(bad).unwrap();
        for text in [
            bad.clone(),
            encode_all(&bad, true),
            format!("AGK_{rest}"),
            format!("%41gk_{rest}"),
            format!("agk%5G{rest}"),
            format!("agk%5{rest}"),
            k[..k.len() - 1].to_owned(),
            "%".repeat(200),
            "%25".repeat(200),
        ] {
            assert!(!f.appears_in_url(text.as_bytes()), "{text}");
        }
    }
}
