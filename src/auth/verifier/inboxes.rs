//! The identity headers of an inbox (its id and pod), built once and shared by every cached
//! key of that inbox: a million cached keys over a thousand inboxes hold a thousand copies of
//! these values, not a million.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use http::HeaderValue;
use parking_lot::Mutex;

/// What upstreams are told about the inbox of a key.
#[derive(Debug)]
pub struct InboxHeaders {
    pub inbox_id: HeaderValue,
    pub pod_id: Option<HeaderValue>,
}

/// A header value whose clones share one buffer from the start. (A value built from a slice
/// sits in a vector-backed buffer whose first clone allocates to make it shareable; that
/// clone would otherwise happen on a request.)
pub(super) fn shared_value(text: &str) -> Option<HeaderValue> {
    let v = HeaderValue::from_bytes(text.as_bytes()).ok()?;
    drop(v.clone());
    Some(v)
}

/// Interns `InboxHeaders` by inbox id. Holds them weakly: an inbox none of whose keys is
/// cached any more is forgotten at the next sweep.
#[derive(Default)]
pub(super) struct Inboxes {
    map: Mutex<InboxMap>,
}

#[derive(Default)]
struct InboxMap {
    by_id: HashMap<Box<str>, Weak<InboxHeaders>>,
    /// Sweep dead entries when the map reaches this size (then twice the live count).
    sweep_at: usize,
}

const MIN_SWEEP_AT: usize = 1024;

impl Inboxes {
    /// The shared headers of `inbox_id` in `pod_id`; `None` when either is not a valid header
    /// value. Called on the miss path only (a store lookup has just happened).
    pub(super) fn get(&self, inbox_id: &str, pod_id: Option<&str>) -> Option<Arc<InboxHeaders>> {
        let mut m = self.map.lock();
        if let Some(live) = m.by_id.get(inbox_id).and_then(Weak::upgrade) {
            let same_pod = live.pod_id.as_ref().map(|p| p.as_bytes()) == pod_id.map(str::as_bytes);
            if same_pod {
                return Some(live);
            }
        }
        let headers = Arc::new(InboxHeaders {
            inbox_id: shared_value(inbox_id)?,
            pod_id: match pod_id {
                Some(p) => Some(shared_value(p)?),
                None => None,
            },
        });
        if m.by_id.len() >= m.sweep_at.max(MIN_SWEEP_AT) {
            m.by_id.retain(|_, w| w.strong_count() > 0);
            m.sweep_at = (m.by_id.len() * 2).max(MIN_SWEEP_AT);
        }
        m.by_id.insert(inbox_id.into(), Arc::downgrade(&headers));
        Some(headers)
    }

    /// How many inboxes are held (live or awaiting a sweep).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.map.lock().by_id.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_copy_per_inbox_and_forgotten_when_unused() {
        let inboxes = Inboxes::default();
        let a = inboxes.get("a@x.com", Some("pod_1")).unwrap();
        let b = inboxes.get("a@x.com", Some("pod_1")).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.inbox_id, "a@x.com");
        assert_eq!(a.pod_id.as_ref().unwrap(), "pod_1");
        // A different pod for the same inbox is not served the old pair.
        let c = inboxes.get("a@x.com", None).unwrap();
        assert!(c.pod_id.is_none());
        assert!(inboxes.get("bad\nid", None).is_none());
        drop((a, b, c));
        for i in 0..(2 * MIN_SWEEP_AT) {
            let kept = inboxes.get(&format!("i{i}@x.com"), None).unwrap();
            drop(kept);
        }
        assert!(inboxes.len() <= MIN_SWEEP_AT + 1, "{}", inboxes.len());
    }
}
