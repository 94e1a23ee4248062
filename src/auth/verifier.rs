//! Key verification, credential → identity in one call (`Verifier::authenticate`):
//! `Authorization` header → parse + checksum → SHA-256 → positive cache → negative cache →
//! failed-auth limiter → store.
//!
//! The positive cache holds identities by key hash; concurrent misses for one key are coalesced
//! into a single store query (moka `try_get_with`). Unknown keys land in a short-lived negative
//! cache. Store failures are never cached, so cached keys keep working through a store outage
//! and uncached ones are retried once it recovers. Only a miss takes a limiter reservation:
//! a cached key is never refused by the limiter.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicI64};
use std::sync::Arc;

use http::{HeaderMap, HeaderValue};
use moka::future::Cache;

use super::limiter::{Blocked, FailureLimiter};
use crate::answer::{self, Answer};
use crate::config::CacheConfig;
use crate::keys::{hash_secret, hashes_equal, KeyFormat, KeyFormatError, KeyHash};
use crate::metrics::{Metrics, Rejection};
use crate::store::{AuthRecord, Store};

/// Who a valid API key is: what upstreams are told, and its in-memory usage mark.
pub struct ApiKeyIdentity {
    pub api_key_id: HeaderValue,
    pub inbox_id: HeaderValue,
    pub pod_id: Option<HeaderValue>,
    pub hash: KeyHash,
    /// Latest use on this instance, microseconds since the epoch (0 = none yet).
    pub(crate) last_used_us: AtomicI64,
    /// Set while this identity sits in the usage recorder's pending set.
    pub(crate) pending: AtomicBool,
}

impl ApiKeyIdentity {
    fn from_record(r: AuthRecord) -> Option<ApiKeyIdentity> {
        Some(ApiKeyIdentity {
            api_key_id: HeaderValue::from_str(&r.api_key_id).ok()?,
            inbox_id: HeaderValue::from_bytes(r.inbox_id.as_bytes()).ok()?,
            pod_id: match r.pod_id {
                Some(p) => Some(HeaderValue::from_bytes(p.as_bytes()).ok()?),
                None => None,
            },
            hash: r.hash,
            last_used_us: AtomicI64::new(0),
            pending: AtomicBool::new(false),
        })
    }

    /// The key id as text (ids are ASCII by construction).
    pub fn api_key_id_str(&self) -> &str {
        self.api_key_id.to_str().unwrap_or("")
    }
}

/// Why a request was not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Authorization` header.
    Missing,
    /// More than one `Authorization` header.
    Duplicate,
    /// Not `Bearer <key>` or not the key shape.
    Malformed,
    /// Key shape right, checksum wrong.
    Checksum,
    /// Well-formed key that is not (or no longer) in the store.
    Unknown,
    /// The store could not be asked.
    StoreUnavailable,
    /// The client has failed too often: refused before any store query.
    RateLimited(Blocked),
}

impl AuthFailure {
    pub fn rejection(self) -> Rejection {
        match self {
            AuthFailure::Missing => Rejection::MissingAuthorization,
            AuthFailure::Duplicate => Rejection::DuplicateAuthorization,
            AuthFailure::Malformed => Rejection::MalformedKey,
            AuthFailure::Checksum => Rejection::BadChecksum,
            AuthFailure::Unknown => Rejection::UnknownKey,
            AuthFailure::StoreUnavailable => Rejection::StoreUnavailable,
            AuthFailure::RateLimited(_) => Rejection::RateLimited,
        }
    }

    /// The answer to this failure: every kind of bad key answers identically.
    pub fn answer(self) -> Answer {
        let a = match self {
            AuthFailure::Missing => answer::MISSING_AUTHORIZATION.answer(),
            AuthFailure::StoreUnavailable => answer::AUTH_UNAVAILABLE.answer(),
            AuthFailure::RateLimited(b) => answer::TOO_MANY_FAILED_AUTHENTICATIONS
                .answer()
                .retry_after(b.retry_after_secs),
            AuthFailure::Duplicate
            | AuthFailure::Malformed
            | AuthFailure::Checksum
            | AuthFailure::Unknown => answer::INVALID_API_KEY.answer(),
        };
        a.because(self.rejection())
    }
}

/// Extracts the credential of `Authorization: Bearer <credential>` (scheme case-insensitive).
/// Exactly one `Authorization` header is accepted.
pub fn bearer_credential(headers: &HeaderMap) -> Result<&[u8], AuthFailure> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let value = values.next().ok_or(AuthFailure::Missing)?;
    if values.next().is_some() {
        return Err(AuthFailure::Duplicate);
    }
    let v = value.as_bytes();
    if v.len() < 7 || !v[..6].eq_ignore_ascii_case(b"bearer") || v[6] != b' ' {
        return Err(AuthFailure::Malformed);
    }
    let cred = &v[7..];
    let start = cred.iter().position(|&b| b != b' ').unwrap_or(cred.len());
    let cred = &cred[start..];
    if cred.is_empty() {
        return Err(AuthFailure::Malformed);
    }
    Ok(cred)
}

/// The outcome of the cache path.
enum Cached {
    Hit(Arc<ApiKeyIdentity>),
    /// Not cached either way: the store must be asked about this hash.
    Miss(KeyHash),
}

#[derive(Debug)]
enum Lookup {
    NotFound,
    Store,
}

pub struct Verifier {
    format: KeyFormat,
    positive: Cache<KeyHash, Arc<ApiKeyIdentity>>,
    negative: Cache<KeyHash, ()>,
    /// Hashes deleted recently: closes the race where a lookup that started before a delete
    /// committed would put the deleted key back into the positive cache.
    revoked: Cache<KeyHash, ()>,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    limiter: Arc<FailureLimiter>,
}

impl Verifier {
    pub fn new(
        format: KeyFormat,
        cache: &CacheConfig,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        limiter: Arc<FailureLimiter>,
    ) -> Verifier {
        Verifier {
            format,
            positive: Cache::builder()
                .max_capacity(cache.max_entries)
                .time_to_live(cache.ttl)
                .build(),
            negative: Cache::builder()
                .max_capacity(cache.negative_max_entries)
                .time_to_live(cache.negative_ttl)
                .build(),
            revoked: Cache::builder()
                .max_capacity(cache.negative_max_entries)
                .time_to_live(cache.ttl * 2)
                .build(),
            store,
            metrics,
            limiter,
        }
    }

    /// The key format this verifier accepts.
    pub fn key_format(&self) -> &KeyFormat {
        &self.format
    }

    /// The whole credential → identity path of one request: the `Authorization` header, the
    /// key's format, the caches, the failed-auth limiter of `client` (before any store query)
    /// and the store. No credential at all is not counted as a failure: it costs nothing.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        client: Option<IpAddr>,
    ) -> Result<Arc<ApiKeyIdentity>, AuthFailure> {
        let key = match bearer_credential(headers) {
            Ok(key) => key,
            Err(AuthFailure::Missing) => return Err(AuthFailure::Missing),
            Err(f) => return Err(self.failed(client, f)),
        };
        self.authenticate_key(key, client).await
    }

    /// [`Verifier::authenticate`] for a key already taken out of its header.
    pub async fn authenticate_key(
        &self,
        key: &[u8],
        client: Option<IpAddr>,
    ) -> Result<Arc<ApiKeyIdentity>, AuthFailure> {
        let hash = match self.check_cached(key).await {
            Ok(Cached::Hit(id)) => return Ok(id),
            Ok(Cached::Miss(hash)) => hash,
            Err(f) => return Err(self.failed(client, f)),
        };
        // Only misses reach the store: gate them on the client's failures, exactly.
        let reservation = self
            .limiter
            .reserve(client)
            .map_err(AuthFailure::RateLimited)?;
        match self.load(hash).await {
            Ok(id) => {
                reservation.release();
                Ok(id)
            }
            // An outage is not the client's failure.
            Err(f @ AuthFailure::StoreUnavailable) => {
                reservation.release();
                Err(f)
            }
            Err(f) => {
                reservation.keep();
                Err(f)
            }
        }
    }

    /// A failure that needed no store query: counted, or 429 once the client is at its limit.
    fn failed(&self, client: Option<IpAddr>, f: AuthFailure) -> AuthFailure {
        match self.limiter.fail(client) {
            Ok(()) => f,
            Err(b) => AuthFailure::RateLimited(b),
        }
    }

    /// Format check, hash, positive and negative cache: everything but the store.
    async fn check_cached(&self, key: &[u8]) -> Result<Cached, AuthFailure> {
        self.format.check(key).map_err(|e| match e {
            KeyFormatError::Malformed => AuthFailure::Malformed,
            KeyFormatError::Checksum => AuthFailure::Checksum,
        })?;
        let hash = hash_secret(key);
        if let Some(id) = self.positive.get(&hash).await {
            self.metrics.auth_cache_hits.inc();
            return self.confirm(id, &hash).map(Cached::Hit);
        }
        if self.negative.contains_key(&hash) {
            self.metrics.auth_cache_negative_hits.inc();
            return Err(AuthFailure::Unknown);
        }
        self.metrics.auth_cache_misses.inc();
        Ok(Cached::Miss(hash))
    }

    /// Looks a key hash up in the store (coalesced with concurrent lookups of the same hash).
    async fn load(&self, hash: KeyHash) -> Result<Arc<ApiKeyIdentity>, AuthFailure> {
        let store = self.store.clone();
        let loaded = self
            .positive
            .try_get_with(hash, async move {
                match store.find_by_hash(&hash).await {
                    Ok(Some(rec)) => match ApiKeyIdentity::from_record(rec) {
                        Some(id) => Ok(Arc::new(id)),
                        None => {
                            log::error!("stored key has ids that are not valid header values");
                            Err(Lookup::NotFound)
                        }
                    },
                    Ok(None) => Err(Lookup::NotFound),
                    Err(_) => Err(Lookup::Store),
                }
            })
            .await;
        match loaded {
            Ok(id) => {
                if self.revoked.contains_key(&hash) {
                    self.positive.invalidate(&hash).await;
                    return Err(AuthFailure::Unknown);
                }
                self.confirm(id, &hash)
            }
            Err(e) => match *e {
                Lookup::NotFound => {
                    self.negative.insert(hash, ()).await;
                    Err(AuthFailure::Unknown)
                }
                Lookup::Store => Err(AuthFailure::StoreUnavailable),
            },
        }
    }

    /// The final constant-time comparison of the stored hash with the presented key's.
    fn confirm(
        &self,
        id: Arc<ApiKeyIdentity>,
        hash: &KeyHash,
    ) -> Result<Arc<ApiKeyIdentity>, AuthFailure> {
        if hashes_equal(&id.hash, hash) {
            Ok(id)
        } else {
            Err(AuthFailure::Unknown)
        }
    }

    /// Forgets a deleted key on this instance: it will never authenticate here again.
    pub async fn revoke(&self, hash: &KeyHash) {
        self.revoked.insert(*hash, ()).await;
        self.positive.invalidate(hash).await;
    }

    /// A new key exists: drop any stale "unknown" entry for its hash.
    pub async fn forget_negative(&self, hash: &KeyHash) {
        self.negative.invalidate(hash).await;
    }

    /// Number of identities cached (approximate, for benchmarks).
    pub fn cached_keys(&self) -> u64 {
        self.positive.entry_count()
    }

    /// Runs pending cache maintenance (for benchmarks and tests).
    pub async fn sync(&self) {
        self.positive.run_pending_tasks().await;
        self.negative.run_pending_tasks().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(
                http::header::AUTHORIZATION,
                HeaderValue::from_str(v).unwrap(),
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

#[cfg(test)]
mod pipeline_tests {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use super::*;
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
        let store = Arc::new(MemoryStore::default());
        let format = KeyFormat::new("agk");
        let m = format.generate();
        store.add_key("key_1", "i@x", m.hash);
        let v = Verifier::new(
            format,
            &cache(),
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

    fn headers_with(key: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {key}")).unwrap(),
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
