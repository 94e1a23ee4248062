//! Request ids: the client's when well-formed, otherwise generated; echoed on the response.

use http::HeaderValue;

/// Longest client-supplied `X-Request-Id` that is kept.
const MAX_REQUEST_ID_LEN: usize = 128;

/// Request ids: kept from the client when well-formed, otherwise generated.
pub struct RequestIds {
    prefix: u64,
    counter: std::sync::atomic::AtomicU64,
}

impl Default for RequestIds {
    fn default() -> Self {
        RequestIds {
            prefix: rand::random(),
            counter: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl RequestIds {
    /// The id for one request: `client` when it is 1 to 128 of `A-Za-z0-9-_.:`, else a fresh one.
    pub fn pick(&self, client: Option<&HeaderValue>) -> HeaderValue {
        if let Some(v) = client {
            let b = v.as_bytes();
            if !b.is_empty()
                && b.len() <= MAX_REQUEST_ID_LEN
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':'))
            {
                return v.clone();
            }
        }
        let n = self
            .counter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut buf = [0u8; 32];
        hex::encode_to_slice(self.prefix.to_be_bytes(), &mut buf[..16]).expect("16 hex digits");
        hex::encode_to_slice(n.to_be_bytes(), &mut buf[16..]).expect("16 hex digits");
        // One allocation, shared by every clone: the id goes upstream and back on the response.
        // (`HeaderValue::from_bytes` copies into a vector-backed buffer whose first clone
        // allocates again to become shareable.)
        HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(buf))
            .expect("hex is a valid header value")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_keep_well_formed_and_replace_others() {
        let ids = RequestIds::default();
        let good = HeaderValue::from_static("abc-123.def:4_5");
        assert_eq!(ids.pick(Some(&good)), good);
        let bad = HeaderValue::from_static("a b");
        let got = ids.pick(Some(&bad));
        assert_eq!(got.len(), 32);
        assert_ne!(ids.pick(None), ids.pick(None));
    }
}
