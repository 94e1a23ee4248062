//! The verifier: header parsing, the cache pipeline, the limiter gate.

mod parsing {
    use super::super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(
                http::header::AUTHORIZATION,
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn bearer_parsing() {
        assert_eq!(bearer_credential(&headers(&[])), Err(AuthFailure::Missing));
        assert_eq!(
            bearer_credential(&headers(&["Bearer abc"])),
            Ok(&b"abc"[..])
        );
        assert_eq!(
            bearer_credential(&headers(&["bEaReR abc"])),
            Ok(&b"abc"[..])
        );
        assert_eq!(
            bearer_credential(&headers(&["Bearer   abc"])),
            Ok(&b"abc"[..])
        );
        assert_eq!(
            bearer_credential(&headers(&["Bearer a", "Bearer b"])),
            Err(AuthFailure::Duplicate)
        );
        for bad in ["Basic abc", "Bearer", "Bearer ", "Bearerabc", "Token abc"] {
            assert_eq!(
                bearer_credential(&headers(&[bad])),
                Err(AuthFailure::Malformed),
                "{bad}"
            );
        }
    }
}

mod pipeline {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use super::super::*;
    use crate::store::memory::MemoryStore;

    fn cache() -> CacheConfig {
        CacheConfig {
            max_entries: 1000,
            ttl: Duration::from_secs(60),
            negative_max_entries: 1000,
            negative_ttl: Duration::from_secs(60),
        }
    }

    async fn setup() -> (Arc<MemoryStore>, Verifier, String) {
        setup_with(cache()).await
    }

    /// A store holding one key, and a verifier with `cache` over it.
    async fn setup_with(cache: CacheConfig) -> (Arc<MemoryStore>, Verifier, String) {
        let store = Arc::new(MemoryStore::default());
        let format = KeyFormat::new("agk");
        let m = format.generate();
        store.add_key("key_1", "i@x", m.hash);
        let v = Verifier::new(
            format,
            &cache,
            store.clone(),
            Arc::new(Metrics::new(&[], &[])),
            Arc::new(FailureLimiter::disabled()),
        );
        (store, v, m.plaintext)
    }

    #[tokio::test]
    async fn concurrent_misses_for_one_key_make_one_query() {
        let (store, v, key) = setup().await;
        *store.lookup_delay.lock() = Some(Duration::from_millis(50));
        let v = Arc::new(v);
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let v = v.clone();
                let key = key.clone();
                tokio::spawn(async move { v.authenticate_key(key.as_bytes(), None).await.is_ok() })
            })
            .collect();
        for t in tasks {
            assert!(t.await.unwrap());
        }
        assert_eq!(store.lookups.load(Ordering::SeqCst), 1);
        // Unknown keys: coalesced too, then remembered.
        let unknown = KeyFormat::new("agk").generate().plaintext;
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let v = v.clone();
                let k = unknown.clone();
                tokio::spawn(async move { v.authenticate_key(k.as_bytes(), None).await })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().err(), Some(AuthFailure::Unknown));
        }
        assert_eq!(
            v.authenticate_key(unknown.as_bytes(), None).await.err(),
            Some(AuthFailure::Unknown)
        );
        assert_eq!(store.lookups.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_cached_key_is_read_again_after_the_ttl() {
        let (store, v, key) = setup_with(CacheConfig {
            ttl: Duration::from_millis(100),
            ..cache()
        })
        .await;
        let hash = hash_secret(key.as_bytes());
        let key = key.as_bytes();
        for _ in 0..3 {
            assert!(v.authenticate_key(key, None).await.is_ok());
        }
        assert_eq!(
            store.lookups.load(Ordering::SeqCst),
            1,
            "hits within the TTL"
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(v.authenticate_key(key, None).await.is_ok());
        assert_eq!(
            store.lookups.load(Ordering::SeqCst),
            2,
            "read again after it"
        );
        assert!(v.authenticate_key(key, None).await.is_ok());
        assert_eq!(store.lookups.load(Ordering::SeqCst), 2, "and cached again");
        // A key deleted in the store meanwhile is refused once its TTL ran out.
        store.remove_key(&hash);
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(
            v.authenticate_key(key, None).await.err(),
            Some(AuthFailure::Unknown)
        );
    }

    #[tokio::test]
    async fn garbage_never_reaches_the_store() {
        let (store, v, key) = setup().await;
        let mut bad = key.clone().into_bytes();
        bad[10] = if bad[10] == b'a' { b'b' } else { b'a' };
        assert_eq!(
            v.authenticate_key(&bad, None).await.err(),
            Some(AuthFailure::Checksum)
        );
        assert_eq!(
            v.authenticate_key(b"agk_x", None).await.err(),
            Some(AuthFailure::Malformed)
        );
        assert_eq!(
            v.authenticate_key(&vec![b'a'; 1 << 20], None).await.err(),
            Some(AuthFailure::Malformed)
        );
        assert_eq!(store.lookups.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn store_outage_keeps_cached_keys_and_does_not_cache_unknown() {
        let (store, v, key) = setup().await;
        assert!(v.authenticate_key(key.as_bytes(), None).await.is_ok());
        store.failing.store(true, Ordering::SeqCst);
        assert!(v.authenticate_key(key.as_bytes(), None).await.is_ok());
        // An uncached key: the outage is reported, and not remembered as "unknown".
        let other = KeyFormat::new("agk").generate().plaintext;
        assert_eq!(
            v.authenticate_key(other.as_bytes(), None).await.err(),
            Some(AuthFailure::StoreUnavailable)
        );
        store.failing.store(false, Ordering::SeqCst);
        assert_eq!(
            v.authenticate_key(other.as_bytes(), None).await.err(),
            Some(AuthFailure::Unknown)
        );
    }

    #[tokio::test]
    async fn revoked_keys_stop_at_once() {
        let (store, v, key) = setup().await;
        let id = v.authenticate_key(key.as_bytes(), None).await.unwrap();
        store.delete_key("i@x", "key_1").await.unwrap();
        v.revoke(&id.hash).await;
        assert_eq!(
            v.authenticate_key(key.as_bytes(), None).await.err(),
            Some(AuthFailure::Unknown)
        );
    }

    /// Every key in one cache slot: two keys sharing a slot are told apart by their full
    /// hashes, each gets its own identity (never the other's), and deleting one leaves the
    /// other working.
    #[tokio::test]
    async fn keys_sharing_a_cache_slot_keep_their_own_identities() {
        let (store, v, a) = setup().await;
        let mut v = v;
        v.slot = |_| 7;
        let format = KeyFormat::new("agk");
        let m = format.generate();
        store.add_key("key_2", "j@x", m.hash);
        let b = m.plaintext;
        for _ in 0..3 {
            let ia = v.authenticate_key(a.as_bytes(), None).await.unwrap();
            assert_eq!(ia.api_key_id_str(), "key_1");
            let ib = v.authenticate_key(b.as_bytes(), None).await.unwrap();
            assert_eq!(ib.api_key_id_str(), "key_2");
            assert_eq!(ib.inbox.inbox_id, "j@x");
        }
        // Concurrently, with slow lookups (coalesced lookups of one slot for two keys).
        *store.lookup_delay.lock() = Some(Duration::from_millis(20));
        v.positive.invalidate_all();
        let v = Arc::new(v);
        let tasks: Vec<_> = (0..40)
            .map(|i| {
                let v = v.clone();
                let (key, id) = if i % 2 == 0 {
                    (a.clone(), "key_1")
                } else {
                    (b.clone(), "key_2")
                };
                tokio::spawn(async move {
                    let got = v.authenticate_key(key.as_bytes(), None).await.unwrap();
                    assert_eq!(got.api_key_id_str(), id);
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        *store.lookup_delay.lock() = None;
        // An unknown key of the same slot is unknown, and does not evict the others' answers.
        let unknown = format.generate().plaintext;
        assert_eq!(
            v.authenticate_key(unknown.as_bytes(), None).await.err(),
            Some(AuthFailure::Unknown)
        );
        // Deleting one key of the slot: it stops, the other goes on.
        store.delete_key("j@x", "key_2").await.unwrap();
        v.revoke(&hash_secret(b.as_bytes())).await;
        assert_eq!(
            v.authenticate_key(b.as_bytes(), None).await.err(),
            Some(AuthFailure::Unknown)
        );
        let ia = v.authenticate_key(a.as_bytes(), None).await.unwrap();
        assert_eq!(ia.api_key_id_str(), "key_1");
    }

    /// A cached identity fits one 144-byte heap block (with the `Arc` counts and malloc's
    /// 8-byte header): the memory per cached key in the README counts on it.
    #[test]
    fn a_cached_identity_fits_its_heap_block() {
        // With the `Arc`'s two counts: 128 bytes, one of mimalloc's size classes (the next is
        // 160); under glibc (8 bytes of header, 16-byte steps) a 144-byte chunk.
        assert!(std::mem::size_of::<ApiKeyIdentity>() <= 128 - 16);
    }

    fn headers_with(key: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_str(&format!("Bearer {key}")).unwrap(),
        );
        h
    }

    async fn limited(limit: u32) -> (Arc<MemoryStore>, Arc<Verifier>, String) {
        use crate::auth::limiter::LimiterConfig;
        let store = Arc::new(MemoryStore::default());
        let format = KeyFormat::new("agk");
        let m = format.generate();
        store.add_key("key_1", "i@x", m.hash);
        let limiter = FailureLimiter::new(LimiterConfig {
            limit,
            window: Duration::from_secs(60),
            max_clients: 1000,
            ipv6_prefix: 64,
        });
        let v = Verifier::new(
            format,
            &cache(),
            store.clone(),
            Arc::new(Metrics::new(&[], &[])),
            Arc::new(limiter),
        );
        (store, Arc::new(v), m.plaintext)
    }

    #[tokio::test]
    async fn concurrent_unknown_keys_from_one_client_make_exactly_limit_lookups() {
        let (store, v, _) = limited(10).await;
        *store.lookup_delay.lock() = Some(Duration::from_millis(20));
        let client: Option<std::net::IpAddr> = Some("10.0.0.1".parse().unwrap());
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let v = v.clone();
                let k = KeyFormat::new("agk").generate().plaintext;
                tokio::spawn(async move { v.authenticate(&headers_with(&k), client).await })
            })
            .collect();
        let mut limited = 0;
        for t in tasks {
            match t.await.unwrap().err() {
                Some(AuthFailure::RateLimited(_)) => limited += 1,
                Some(AuthFailure::Unknown) => {}
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(store.lookups.load(Ordering::SeqCst), 10);
        assert_eq!(limited, 54);
    }

    #[tokio::test]
    async fn a_blocked_client_keeps_its_cached_key_and_others_are_untouched() {
        let (store, v, key) = limited(3).await;
        let bad: Option<std::net::IpAddr> = Some("10.0.0.1".parse().unwrap());
        // The key is cached by another client first.
        assert!(v.authenticate(&headers_with(&key), None).await.is_ok());
        for _ in 0..3 {
            let k = KeyFormat::new("agk").generate().plaintext;
            assert_eq!(
                v.authenticate(&headers_with(&k), bad).await.err(),
                Some(AuthFailure::Unknown)
            );
        }
        let k = KeyFormat::new("agk").generate().plaintext;
        assert!(matches!(
            v.authenticate(&headers_with(&k), bad).await.err(),
            Some(AuthFailure::RateLimited(_))
        ));
        // Garbage from a blocked client: 429 too, never a lookup.
        assert!(matches!(
            v.authenticate(&headers_with("agk_x"), bad).await.err(),
            Some(AuthFailure::RateLimited(_))
        ));
        assert!(v.authenticate(&headers_with(&key), bad).await.is_ok());
        // No credential at all is not a failure, and not refused.
        assert_eq!(
            v.authenticate(&HeaderMap::new(), bad).await.err(),
            Some(AuthFailure::Missing)
        );
        let fresh: Option<std::net::IpAddr> = Some("10.0.0.2".parse().unwrap());
        for _ in 0..50 {
            assert_eq!(
                v.authenticate(&HeaderMap::new(), fresh).await.err(),
                Some(AuthFailure::Missing)
            );
        }
        let k = KeyFormat::new("agk").generate().plaintext;
        assert_eq!(
            v.authenticate(&headers_with(&k), fresh).await.err(),
            Some(AuthFailure::Unknown)
        );
        assert_eq!(store.lookups.load(Ordering::SeqCst), 5);
    }
}

/// A change is one event: once `key_changed` returns, no copy of the key older than the
/// change is cached or served, whatever lookups were in flight when it committed.
mod changes {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use super::super::*;
    use crate::store::memory::MemoryStore;
    use crate::store::KeyUpdate;

    const WIDE: &str = r#"{"message_read":true,"message_send":true}"#;
    const NARROW: &str = r#"{"message_read":true}"#;

    fn verifier(store: Arc<MemoryStore>) -> Arc<Verifier> {
        let cache = CacheConfig {
            max_entries: 1000,
            ttl: Duration::from_secs(60),
            negative_max_entries: 1000,
            negative_ttl: Duration::from_secs(60),
        };
        Arc::new(Verifier::new(
            KeyFormat::new("agk"),
            &cache,
            store,
            Arc::new(Metrics::new(&[], &[])),
            Arc::new(FailureLimiter::disabled()),
        ))
    }

    async fn setup() -> (Arc<MemoryStore>, Arc<Verifier>, String, KeyHash) {
        let store = Arc::new(MemoryStore::default());
        let m = KeyFormat::new("agk").generate();
        store.add_key("key_1", "i@x", m.hash);
        set_permissions(&store, WIDE).await;
        (store.clone(), verifier(store), m.plaintext, m.hash)
    }

    /// Changes the key's permissions in the store; returns its new version.
    async fn set_permissions(store: &MemoryStore, perms: &str) -> i64 {
        let update = KeyUpdate {
            name: None,
            permissions: Some(perms.into()),
            updated_at_us: 1,
        };
        let (_, changed) = store
            .update_key("i@x", "key_1", update)
            .await
            .unwrap()
            .unwrap();
        changed.version
    }

    fn can_send(id: &ApiKeyIdentity) -> bool {
        let send = Vocabulary::default().lookup("message_send").unwrap();
        id.permissions.contains(send)
    }

    /// Holds every lookup after its read; returns the gate that releases them.
    fn hold_reads(store: &MemoryStore) -> Arc<tokio::sync::Semaphore> {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        *store.hold_after_read.lock() = Some(gate.clone());
        gate
    }

    async fn until(what: &str, mut cond: impl FnMut() -> bool) {
        for _ in 0..2000 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("timed out waiting for {what}");
    }

    /// A lookup of `key` started and held right after it read the (wide) row: the gate that
    /// lets it finish, and its task.
    async fn held_lookup(
        store: &MemoryStore,
        v: &Arc<Verifier>,
        key: &str,
    ) -> (
        Arc<tokio::sync::Semaphore>,
        tokio::task::JoinHandle<Result<Arc<ApiKeyIdentity>, AuthFailure>>,
    ) {
        let gate = hold_reads(store);
        let early = {
            let (v, key) = (v.clone(), key.to_owned());
            tokio::spawn(async move { v.authenticate_key(key.as_bytes(), None).await })
        };
        until("the lookup has read the wide row", || {
            store.held.load(Ordering::SeqCst) == 1
        })
        .await;
        (gate, early)
    }

    /// Finding 1 of issue #24: a lookup reads the wide row, the narrowing update commits and
    /// is applied, then the lookup finishes. Before versions it cached the wide copy after the
    /// update's eviction, and every later request was served from it.
    #[tokio::test]
    async fn a_lookup_in_flight_never_caches_a_copy_older_than_a_change() {
        let (store, v, key, hash) = setup().await;
        let (gate, early) = held_lookup(&store, &v, &key).await;
        let version = set_permissions(&store, NARROW).await;
        assert_eq!(version, 3);
        let change = {
            let v = v.clone();
            tokio::spawn(async move { v.key_changed(&hash, version).await })
        };
        until("the change is learned", || v.known.contains_key(&hash)).await;
        // The read finishes after the change; later reads are not held.
        *store.hold_after_read.lock() = None;
        gate.add_permits(1);
        change.await.unwrap();
        // The change's 2xx would leave now: every request from here on sees the narrow key.
        for _ in 0..3 {
            let id = v.authenticate_key(key.as_bytes(), None).await.unwrap();
            assert!(!can_send(&id), "a copy older than the change was served");
            assert_eq!(id.version(), 3);
        }
        // The request in flight during the change was answered from a fresh read too.
        let id = early.await.unwrap().unwrap();
        assert_eq!(id.version(), 3);
    }

    /// The same with the lookup finishing between the change's commit and its notice: the
    /// copy is cached before the notice, and the notice drops it.
    #[tokio::test]
    async fn a_copy_cached_between_commit_and_notice_is_dropped_by_the_notice() {
        let (store, v, key, hash) = setup().await;
        let (gate, early) = held_lookup(&store, &v, &key).await;
        let version = set_permissions(&store, NARROW).await;
        *store.hold_after_read.lock() = None;
        gate.add_permits(1);
        assert!(
            can_send(&early.await.unwrap().unwrap()),
            "read before the change"
        );
        v.key_changed(&hash, version).await;
        let id = v.authenticate_key(key.as_bytes(), None).await.unwrap();
        assert!(!can_send(&id));
    }

    /// A delete is the same event: a lookup that read the row before it never brings the key
    /// back.
    #[tokio::test]
    async fn a_lookup_in_flight_never_brings_a_deleted_key_back() {
        let (store, v, key, hash) = setup().await;
        let gate = hold_reads(&store);
        let early = {
            let (v, key) = (v.clone(), key.clone());
            tokio::spawn(async move { v.authenticate_key(key.as_bytes(), None).await })
        };
        until("the lookup has read the row", || {
            store.held.load(Ordering::SeqCst) == 1
        })
        .await;
        let gone = store.delete_key("i@x", "key_1").await.unwrap().unwrap();
        assert_eq!(gone.version, crate::store::TOMBSTONE);
        let change = {
            let v = v.clone();
            tokio::spawn(async move { v.key_changed(&hash, gone.version).await })
        };
        until("the delete is learned", || v.known.contains_key(&hash)).await;
        *store.hold_after_read.lock() = None;
        gate.add_permits(1);
        change.await.unwrap();
        assert_eq!(
            v.authenticate_key(key.as_bytes(), None).await.err(),
            Some(AuthFailure::Unknown)
        );
        assert_eq!(early.await.unwrap().err(), Some(AuthFailure::Unknown));
    }

    /// Many real interleavings: readers hammer the key (slow, coalesced lookups and hits)
    /// while it is narrowed and widened; after each change returns, a fresh request must see
    /// that change's version or a later one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn no_request_after_a_change_sees_an_older_version() {
        let (store, v, key, hash) = setup().await;
        *store.answer_delay.lock() = Some(Duration::from_micros(500));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let readers: Vec<_> = (0..8)
            .map(|_| {
                let (v, key, stop) = (v.clone(), key.clone(), stop.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let _ = v.authenticate_key(key.as_bytes(), None).await;
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        for round in 0..300 {
            let perms = if round % 2 == 0 { NARROW } else { WIDE };
            let version = set_permissions(&store, perms).await;
            v.key_changed(&hash, version).await;
            let id = v.authenticate_key(key.as_bytes(), None).await.unwrap();
            assert!(
                id.version() >= version,
                "round {round}: version {} served after change {version}",
                id.version()
            );
            assert_eq!(can_send(&id), perms == WIDE, "round {round}");
            if round % 7 == 0 {
                // Sometimes from the cache only: a TTL-free hit right after the change.
                tokio::task::yield_now().await;
            }
        }
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            r.await.unwrap();
        }
    }
}
