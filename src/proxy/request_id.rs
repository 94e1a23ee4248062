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
        self.fresh()
    }

    /// A generated id: a slice of this thread's current block of ids (one allocation per
    /// [`IDS_PER_BLOCK`] ids, and no lock: each block reserves its counter values at once).
    fn fresh(&self) -> HeaderValue {
        CURRENT.with(|cell| {
            let mut block = cell.borrow_mut();
            if block.owner != self.prefix || block.next == IDS_PER_BLOCK {
                let first = self
                    .counter
                    .fetch_add(IDS_PER_BLOCK as u64, std::sync::atomic::Ordering::Relaxed);
                *block = IdBlock::new(self.prefix, first);
            }
            let at = block.next * ID_LEN;
            block.next += 1;
            HeaderValue::from_maybe_shared(block.ids.slice(at..at + ID_LEN))
                .expect("hex is a valid header value")
        })
    }
}

/// Ids per block.
const IDS_PER_BLOCK: usize = 64;
/// Hex digits per id: the 64-bit process prefix, then the 64-bit counter.
const ID_LEN: usize = 32;

/// A run of consecutive ids in one shared buffer; each id handed out is a slice of it.
struct IdBlock {
    /// The prefix of the [`RequestIds`] the block was made for (several may share a thread).
    owner: u64,
    ids: bytes::Bytes,
    next: usize,
}

impl IdBlock {
    fn new(prefix: u64, first: u64) -> IdBlock {
        let mut ids = vec![0u8; IDS_PER_BLOCK * ID_LEN];
        for (i, id) in ids.chunks_exact_mut(ID_LEN).enumerate() {
            hex::encode_to_slice(prefix.to_be_bytes(), &mut id[..16]).expect("16 hex digits");
            hex::encode_to_slice((first + i as u64).to_be_bytes(), &mut id[16..])
                .expect("16 hex digits");
        }
        IdBlock {
            owner: prefix,
            ids: ids.into(),
            next: 0,
        }
    }
}

thread_local! {
    /// Exhausted (`next == IDS_PER_BLOCK`) until the first id is asked for.
    static CURRENT: std::cell::RefCell<IdBlock> = const {
        std::cell::RefCell::new(IdBlock {
            owner: 0,
            ids: bytes::Bytes::new(),
            next: IDS_PER_BLOCK,
        })
    };
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

    #[test]
    fn generated_ids_are_unique_across_blocks_threads_and_generators() {
        let ids = std::sync::Arc::new(RequestIds::default());
        let other = RequestIds::default();
        let mut seen = std::collections::HashSet::new();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let ids = ids.clone();
                std::thread::spawn(move || (0..300).map(|_| ids.pick(None)).collect::<Vec<_>>())
            })
            .collect();
        for t in threads {
            for id in t.join().unwrap() {
                assert!(seen.insert(id.as_bytes().to_vec()));
            }
        }
        // Two generators taking turns on one thread: each keeps its own prefix.
        for _ in 0..(IDS_PER_BLOCK * 2 + 3) {
            for (gen, id) in [(&*ids, ids.pick(None)), (&other, other.pick(None))] {
                assert_eq!(id.len(), ID_LEN);
                assert!(id.as_bytes().iter().all(u8::is_ascii_hexdigit));
                assert_eq!(
                    &id.as_bytes()[..16],
                    format!("{:016x}", gen.prefix).as_bytes()
                );
                assert!(seen.insert(id.as_bytes().to_vec()));
            }
        }
        assert_eq!(seen.len(), 4 * 300 + 2 * (IDS_PER_BLOCK * 2 + 3));
    }
}
