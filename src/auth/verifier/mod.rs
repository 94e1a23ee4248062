//! Key verification, credential → identity in one call (`Verifier::authenticate`):
//! `Authorization` header → parse + checksum → SHA-256 → positive cache → negative cache →
//! failed-auth limiter → store.
//!
//! The positive cache holds identities by the first 8 bytes of the key hash (`Slot`), each
//! identity holding its full hash for the constant-time check; concurrent misses for one key
//! are coalesced into a single store query (moka `try_get_with`). Unknown keys land in a
//! short-lived negative cache. Store failures are never cached, so cached keys keep working through a store outage
//! and uncached ones are retried once it recovers. Only a miss takes a limiter reservation:
//! a cached key is never refused by the limiter.
//!
//! A change to a key (update, delete) is one event: the key's new version (`TOMBSTONE` for a
//! delete), from this instance's management API before its 2xx or from a shared store's change
//! log. Once `key_changed` returns, no copy older than that version is cached, and none is
//! cached later: a lookup that read the row before the change is refused on insert, or waited
//! for and dropped if it was already past that check. A hit costs nothing more for it.

use std::net::IpAddr;
use std::sync::Arc;

use http::HeaderMap;
use moka::future::Cache;

use super::limiter::{Blocked, FailureLimiter};
use super::usage::UsageMark;
use crate::answer::{self, Answer};
use crate::clock::coarse_now_us;
use crate::config::CacheConfig;
use crate::keys::{hash_secret, hashes_equal, KeyFormat, KeyFormatError, KeyHash};
use crate::metrics::{Metrics, Rejection};
use crate::permissions::{PermissionSet, Permissions, Vocabulary};
use crate::store::{AuthRecord, FeedHealth, KeyEvents, Store, TOMBSTONE, UNKNOWN_VERSION};

/// The caches' hasher: aHash with per-process random keys (resistant to chosen collisions, as
/// the standard SipHash is) at a fraction of SipHash's cost per lookup; the keys are SHA-256
/// outputs.
type Hasher = ahash::RandomState;

mod inboxes;
mod key_id;
mod stamp;
pub use inboxes::InboxHeaders;
use inboxes::Inboxes;
pub use key_id::KeyId;
use stamp::Stamp;

/// How often a lookup refused as older than a known change (or joined by one) is tried again,
/// coalesced with others and cached, then alone and uncached, before the request is answered
/// as a store failure.
const COALESCED_ATTEMPTS: usize = 8;
const ALONE_ATTEMPTS: usize = 4;

/// The client's address, for the failed-authentication limit: a value, or a function asked
/// only when a failure or a store lookup needs it (a cache hit never does).
pub trait ClientAddr: Send + Sync {
    fn ip(&self) -> Option<IpAddr>;
}

impl ClientAddr for Option<IpAddr> {
    fn ip(&self) -> Option<IpAddr> {
        *self
    }
}

impl<F: Fn() -> Option<IpAddr> + Send + Sync> ClientAddr for F {
    fn ip(&self) -> Option<IpAddr> {
        self()
    }
}

/// Who a valid API key is: what upstreams are told, and its in-memory usage mark. A million
/// of these are cached: with its `Arc` counts it fills one 128-byte heap block (mimalloc's
/// size class; glibc's is 144), see the README (performance) and bench/HISTORY.md.
pub struct ApiKeyIdentity {
    pub api_key_id: KeyId,
    /// The inbox's id and pod, shared with every other cached key of the inbox.
    pub inbox: Arc<InboxHeaders>,
    pub hash: KeyHash,
    /// What the key may do (checked against a route's `require` on every request).
    pub permissions: PermissionSet,
    /// When the key stops authenticating (µs since the epoch); `i64::MAX`: never.
    pub expires_at_us: i64,
    /// When this identity was read from the store (the cache's time-to-live runs from there)
    /// and the version of its key's row it was read at.
    pub(crate) stamp: Stamp,
    /// This instance's `used_at` mark and whether it awaits a flush (one atomic word).
    pub(crate) usage: UsageMark,
}

impl ApiKeyIdentity {
    fn from_record(
        r: AuthRecord,
        vocabulary: &Vocabulary,
        inboxes: &Inboxes,
    ) -> Option<ApiKeyIdentity> {
        // Unreadable stored permissions grant nothing (fail closed).
        let stored = r
            .permissions
            .as_deref()
            .map(|text| Permissions::from_json(text).unwrap_or_default());
        Some(ApiKeyIdentity {
            permissions: vocabulary.set_of(stored.as_ref()),
            expires_at_us: r.expires_at_us.unwrap_or(i64::MAX),
            api_key_id: KeyId::new(&r.api_key_id)?,
            inbox: inboxes.get(&r.inbox_id, r.pod_id.as_deref())?,
            hash: r.hash,
            stamp: Stamp::new(coarse_now_us(), r.version),
            usage: UsageMark::default(),
        })
    }

    /// The key id as text (ids are ASCII by construction).
    pub fn api_key_id_str(&self) -> &str {
        self.api_key_id.as_str()
    }

    /// The version of the key's row this identity was read at.
    pub fn version(&self) -> i64 {
        self.stamp.version()
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
    /// A valid key past its `expires_at`: answered exactly like an unknown key.
    Expired,
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
            AuthFailure::Expired => Rejection::Expired,
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
            | AuthFailure::Unknown
            | AuthFailure::Expired => answer::INVALID_API_KEY.answer(),
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

#[derive(Debug, Clone, Copy)]
enum Lookup {
    NotFound,
    Store,
    /// The row read is older than a change this instance knows of: not cached, read again.
    Stale,
    /// A change is waiting for this slot's lookups to finish: nothing read, read again.
    Changing,
}

/// Where a key hash sits in the positive cache: its first 8 bytes. moka keeps each cache key
/// in a heap block of its own; 8 bytes instead of 32 halve that block. Two keys of one slot
/// (1 in 2^64 per pair, and not something a client can aim for: it does not know other keys'
/// hashes) are told apart by the full hash every cached identity holds, which is compared on
/// every hit anyway; the second key is then served from the store, uncached.
type Slot = u64;

fn slot_of(hash: &KeyHash) -> Slot {
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash[..8]);
    u64::from_le_bytes(first)
}

pub struct Verifier {
    format: KeyFormat,
    positive: Cache<Slot, Arc<ApiKeyIdentity>, Hasher>,
    /// `slot_of`, or (in tests) one slot for every key.
    slot: fn(&KeyHash) -> Slot,
    /// How long a cached identity is trusted after it was read from the store.
    ttl_us: i64,
    negative: Cache<KeyHash, (), Hasher>,
    /// The latest version of each recently changed key (`TOMBSTONE`: deleted): a lookup that
    /// read an older row is never cached. One mechanism for every kind of change.
    known: Cache<KeyHash, i64, Hasher>,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    limiter: Arc<FailureLimiter>,
    /// Whether cached identities may be used without asking the store (a shared store's
    /// change feed is live, or not down for long).
    feed: Arc<FeedHealth>,
    /// Reads stored `permissions` objects into sets.
    vocabulary: Arc<Vocabulary>,
    inboxes: Arc<Inboxes>,
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
            // No moka time-to-live here: it costs 32 bytes per entry. The TTL is checked on use
            // instead (`check_cached`), against the identity's load time.
            positive: Cache::builder()
                .max_capacity(cache.max_entries)
                .build_with_hasher(Hasher::new()),
            slot: slot_of,
            ttl_us: i64::try_from(cache.ttl.as_micros()).unwrap_or(i64::MAX),
            negative: Cache::builder()
                .max_capacity(cache.negative_max_entries)
                .time_to_live(cache.negative_ttl)
                .build_with_hasher(Hasher::new()),
            known: Cache::builder()
                .max_capacity(cache.negative_max_entries)
                .time_to_live(cache.ttl * 2)
                .build_with_hasher(Hasher::new()),
            store,
            metrics,
            limiter,
            feed: Arc::new(FeedHealth::always()),
            vocabulary: Arc::new(Vocabulary::default()),
            inboxes: Arc::default(),
        }
    }

    /// Reads permissions with `vocabulary` (default: the AgentMail API's names).
    pub fn with_vocabulary(mut self, vocabulary: Arc<Vocabulary>) -> Verifier {
        self.vocabulary = vocabulary;
        self
    }

    /// Follows a shared store's change feed: while it is down past its staleness bound,
    /// cached keys are confirmed with the store on every use.
    pub fn with_feed(mut self, feed: Arc<FeedHealth>) -> Verifier {
        self.feed = feed;
        self
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
        client: impl ClientAddr,
    ) -> Result<Arc<ApiKeyIdentity>, AuthFailure> {
        let key = match bearer_credential(headers) {
            Ok(key) => key,
            Err(AuthFailure::Missing) => return Err(AuthFailure::Missing),
            Err(f) => return Err(self.failed(&client, f)),
        };
        self.authenticate_key(key, client).await
    }

    /// [`Verifier::authenticate`] for a key already taken out of its header.
    pub async fn authenticate_key(
        &self,
        key: &[u8],
        client: impl ClientAddr,
    ) -> Result<Arc<ApiKeyIdentity>, AuthFailure> {
        let id = self.identify(key, &client).await?;
        // Expiry is checked on every use, cached or not, against a clock at most
        // `clock::COARSE_TICK` (5 ms) old: a key may outlive its `expires_at` by that much.
        if id.expires_at_us != i64::MAX && coarse_now_us() >= id.expires_at_us {
            return Err(self.failed(&client, AuthFailure::Expired));
        }
        Ok(id)
    }

    async fn identify(
        &self,
        key: &[u8],
        client: &impl ClientAddr,
    ) -> Result<Arc<ApiKeyIdentity>, AuthFailure> {
        let hash = match self.check_cached(key).await {
            Ok(Cached::Hit(id)) if self.feed.cache_trusted() => return Ok(id),
            Ok(Cached::Hit(id)) => return self.reconfirm(id).await,
            Ok(Cached::Miss(hash)) => hash,
            Err(f) => return Err(self.failed(client, f)),
        };
        // Only misses reach the store: gate them on the client's failures, exactly.
        let reservation = self
            .limiter
            .reserve(client.ip())
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

    /// A cached key while the change feed is stale: it holds only if the store still has it
    /// at the same version; otherwise the store's current identity (permissions, expiry) is
    /// learned, cached and used.
    async fn reconfirm(&self, id: Arc<ApiKeyIdentity>) -> Result<Arc<ApiKeyIdentity>, AuthFailure> {
        match self.store.find_by_hash(&id.hash).await {
            Ok(Some(rec)) if id.stamp.is_version(rec.version) => Ok(id),
            Ok(Some(rec)) => {
                self.apply_change(&id.hash, rec.version).await;
                self.load(id.hash).await
            }
            Ok(None) => {
                self.revoke(&id.hash).await;
                Err(AuthFailure::Unknown)
            }
            Err(_) => Err(AuthFailure::StoreUnavailable),
        }
    }

    /// A failure that needed no store query: counted, or 429 once the client is at its limit.
    fn failed(&self, client: &impl ClientAddr, f: AuthFailure) -> AuthFailure {
        match self.limiter.fail(client.ip()) {
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
        let slot = (self.slot)(&hash);
        if let Some(id) = self.positive.get(&slot).await {
            // The final, constant-time comparison of the stored hash with the presented key's.
            // Unequal: another key holds the slot, and this one is a miss.
            if hashes_equal(&id.hash, &hash) {
                if coarse_now_us().saturating_sub(id.stamp.loaded_at_us()) < self.ttl_us {
                    self.metrics.auth_cache_hits.inc();
                    return Ok(Cached::Hit(id));
                }
                // Past its time-to-live: read it again (a miss, counted as one below).
                self.positive.invalidate(&slot).await;
            }
        }
        if self.negative.contains_key(&hash) {
            self.metrics.auth_cache_negative_hits.inc();
            return Err(AuthFailure::Unknown);
        }
        self.metrics.auth_cache_misses.inc();
        Ok(Cached::Miss(hash))
    }

    /// Looks a key hash up in the store (coalesced with concurrent lookups of the same slot).
    /// A lookup refused as older than a change learned meanwhile, or joined by a change, is
    /// tried again; while changes keep coming faster than lookups finish, the last attempts
    /// read alone (not coalesced, not cached).
    async fn load(&self, hash: KeyHash) -> Result<Arc<ApiKeyIdentity>, AuthFailure> {
        let slot = (self.slot)(&hash);
        for attempt in 0..COALESCED_ATTEMPTS + ALONE_ATTEMPTS {
            let loaded = if attempt < COALESCED_ATTEMPTS {
                self.positive
                    .try_get_with(slot, self.lookup(hash))
                    .await
                    .map_err(|e| *e)
            } else {
                self.lookup(hash).await
            };
            let loaded = match loaded {
                // A copy read before a change this instance has learned since (a lookup that
                // this one joined): read again.
                Ok(id) if hashes_equal(&id.hash, &hash) && self.outdated(&id).await => continue,
                Ok(id) if hashes_equal(&id.hash, &hash) => return Ok(id),
                // The slot holds another key (or a concurrent lookup of one filled it): this
                // key is read from the store and not cached.
                Ok(_) => self.lookup(hash).await,
                Err(e) => Err(e),
            };
            match loaded {
                Ok(id) => return Ok(id),
                Err(Lookup::Stale | Lookup::Changing) => continue,
                Err(e) => return self.not_loaded(hash, e).await,
            }
        }
        log::warn!("a key lookup kept being overtaken by changes to the key; answering 503");
        Err(AuthFailure::StoreUnavailable)
    }

    /// Whether `id` is older than a change this instance knows of.
    async fn outdated(&self, id: &ApiKeyIdentity) -> bool {
        self.known
            .get(&id.hash)
            .await
            .is_some_and(|v| id.version() < v.min(stamp::MAX_HELD_VERSION))
    }

    /// The store's answer for one hash, as a cacheable identity: never one older than a
    /// change this instance knows of.
    fn lookup(
        &self,
        hash: KeyHash,
    ) -> impl std::future::Future<Output = Result<Arc<ApiKeyIdentity>, Lookup>> + Send + 'static
    {
        let store = self.store.clone();
        let vocabulary = self.vocabulary.clone();
        let inboxes = self.inboxes.clone();
        let known = self.known.clone();
        async move {
            match store.find_by_hash(&hash).await {
                Ok(Some(rec)) if known.get(&hash).await.is_some_and(|v| rec.version < v) => {
                    Err(Lookup::Stale)
                }
                Ok(Some(rec)) => match ApiKeyIdentity::from_record(rec, &vocabulary, &inboxes) {
                    Some(id) => Ok(Arc::new(id)),
                    None => {
                        log::error!("stored key has ids that are not valid header values");
                        Err(Lookup::NotFound)
                    }
                },
                Ok(None) => Err(Lookup::NotFound),
                Err(_) => Err(Lookup::Store),
            }
        }
    }

    /// A lookup that found nothing (remembered in the negative cache) or failed.
    async fn not_loaded(
        &self,
        hash: KeyHash,
        e: Lookup,
    ) -> Result<Arc<ApiKeyIdentity>, AuthFailure> {
        match e {
            Lookup::NotFound => {
                self.negative.insert(hash, ()).await;
                Err(AuthFailure::Unknown)
            }
            Lookup::Store | Lookup::Stale | Lookup::Changing => Err(AuthFailure::StoreUnavailable),
        }
    }

    /// Forgets a deleted key on this instance: it will never authenticate here again.
    pub async fn revoke(&self, hash: &KeyHash) {
        self.key_changed(hash, TOMBSTONE).await;
    }

    /// Learns that the key of `hash` is at `version` now, and drops every older copy: after
    /// this returns, none is cached and none will be.
    async fn apply_change(&self, hash: &KeyHash, version: i64) {
        if version > UNKNOWN_VERSION {
            self.known
                .entry(*hash)
                .and_upsert_with(|old| {
                    let newest = old.map_or(version, |e| (*e.value()).max(version));
                    std::future::ready(newest)
                })
                .await;
        }
        let slot = (self.slot)(hash);
        self.positive.invalidate(&slot).await;
        // A lookup of this slot may be in flight that read the row before the change and
        // passed the version check before the version above was learned: it caches its copy
        // before its waiters are released. Join it (or, with none in flight, stand in its
        // place for a moment), then drop whatever it cached.
        let _ = self
            .positive
            .try_get_with(slot, std::future::ready(Err(Lookup::Changing)))
            .await;
        self.positive.invalidate(&slot).await;
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

#[async_trait::async_trait]
impl KeyEvents for Verifier {
    async fn key_changed(&self, hash: &KeyHash, version: i64) {
        self.apply_change(hash, version).await;
    }

    async fn forget_all(&self) {
        self.positive.invalidate_all();
    }
}

#[cfg(test)]
mod tests;
