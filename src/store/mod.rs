//! The `Store` abstraction over key storage, shared by the management API and the verifier.
//!
//! Backends: `sqlite` (embedded default) and `postgres` (several gateways on one database).
//!
//! Every key row carries a version, bumped in the same transaction by every change (rename,
//! permissions, delete). A change is one event to every cache: the key's new version (a delete's
//! is `TOMBSTONE`). The instance that made the change applies it before its 2xx; a shared
//! store's change log carries it to every other instance.

use std::sync::atomic::{AtomicI64, Ordering};

use async_trait::async_trait;

use crate::keys::KeyHash;

pub mod cursor;
#[cfg(test)]
pub mod memory;
pub mod metered;
pub mod postgres;
pub mod sqlite;

/// Everything stored about a key except its secret (only its hash is kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub api_key_id: String,
    pub inbox_id: String,
    pub pod_id: Option<String>,
    pub name: String,
    pub prefix: String,
    /// Microseconds since the Unix epoch.
    pub created_at_us: i64,
    /// Microseconds since the Unix epoch; `None` until first use is flushed.
    pub used_at_us: Option<i64>,
    /// The `permissions` object as given (JSON, names sorted); `None`: every permission but the
    /// opt-in ones.
    pub permissions: Option<String>,
    /// When the key stops authenticating (µs since the epoch); `None`: never.
    pub expires_at_us: Option<i64>,
    /// Last change of name or permissions (µs since the epoch); the creation time at first.
    pub updated_at_us: i64,
    /// The key that created this one, when a key did.
    pub created_by: Option<String>,
}

/// A change to a key's mutable fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyUpdate {
    pub name: Option<String>,
    /// A new `permissions` object (JSON), replacing the old one.
    pub permissions: Option<String>,
    pub updated_at_us: i64,
}

/// A key to insert: its record and the SHA-256 of its plaintext.
#[derive(Debug, Clone)]
pub struct NewKey {
    pub record: KeyRecord,
    pub hash: KeyHash,
}

/// What authentication needs to know about a key, found by its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthRecord {
    pub api_key_id: String,
    pub inbox_id: String,
    pub pod_id: Option<String>,
    pub hash: KeyHash,
    pub permissions: Option<String>,
    pub expires_at_us: Option<i64>,
    /// The row's version when it was read (1 when created, +1 on every change).
    pub version: i64,
}

/// The version a deleted key has: newer than any it had while it existed.
pub const TOMBSTONE: i64 = i64::MAX;

/// A change notice whose version is not known (a notification from a gateway that predates
/// versions): cached copies are dropped, nothing is learned.
pub const UNKNOWN_VERSION: i64 = 0;

/// A committed change to a key: its hash (for the caches) and the version it now has
/// (`TOMBSTONE` once deleted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyVersion {
    pub hash: KeyHash,
    pub version: i64,
}

/// A keyset position in the `(created_at desc, api_key_id desc)` order: list what comes after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub created_at_us: i64,
    pub api_key_id: String,
}

/// A store failure. Causes are for logs, never for clients.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("store conflict: {0}")]
    Conflict(String),
}

impl StoreError {
    /// What went wrong, without the kind's prefix.
    pub fn cause(&self) -> &str {
        match self {
            StoreError::Unavailable(s) | StoreError::Conflict(s) => s,
        }
    }
}

/// A connection pool's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStatus {
    pub in_use: usize,
    pub idle: usize,
    /// Callers waiting for a connection.
    pub waiting: usize,
}

/// Whoever keeps copies of keys (the verifier's caches) and must follow changes made through
/// any instance.
#[async_trait]
pub trait KeyEvents: Send + Sync + 'static {
    /// The key of `hash` has `version` now (`TOMBSTONE`: deleted; `UNKNOWN_VERSION`: changed,
    /// to an unknown version). When this returns, no copy older than `version` is cached, and
    /// none will be.
    async fn key_changed(&self, hash: &KeyHash, version: i64);
    /// Changes may have been missed (the log was pruned past what this instance applied):
    /// drop every cached key.
    async fn forget_all(&self);
}

/// Whether this instance's caches may be trusted: with a shared store, only while its change
/// feed is live, or has been down for less than the staleness bound. One atomic load per
/// request while the feed is up.
#[derive(Debug)]
pub struct FeedHealth {
    /// 0 while the feed is live; otherwise when it went down (µs since the epoch).
    down_since_us: AtomicI64,
    /// When the feed last proved it is alive and caught up (a heartbeat answered with no
    /// notification waiting, or the feed came up), µs since the epoch. The staleness bound
    /// counts from here, not from when a failure is noticed: a connection that dies silently,
    /// or a listener stuck applying a backlog, stops this clock at once.
    alive_at_us: AtomicI64,
    /// `None`: a single-instance store with nothing to follow; always trusted.
    max_staleness_us: Option<i64>,
}

impl FeedHealth {
    /// For a store no other instance writes to.
    pub fn always() -> FeedHealth {
        FeedHealth {
            down_since_us: AtomicI64::new(0),
            alive_at_us: AtomicI64::new(0),
            max_staleness_us: None,
        }
    }

    /// For a shared store; down until the feed first comes up.
    pub fn shared(max_staleness: std::time::Duration) -> FeedHealth {
        let now = crate::clock::now_us().max(1);
        FeedHealth {
            down_since_us: AtomicI64::new(now),
            alive_at_us: AtomicI64::new(now),
            max_staleness_us: Some(max_staleness.as_micros() as i64),
        }
    }

    /// Whether a cached key may be used without asking the store: the feed proved itself
    /// alive and caught up within the staleness bound (read on the coarse clock, one atomic
    /// load: it is asked on every cache hit).
    pub fn cache_trusted(&self) -> bool {
        match self.max_staleness_us {
            None => true,
            Some(max) => {
                crate::clock::coarse_now_us() - self.alive_at_us.load(Ordering::Acquire) <= max
            }
        }
    }

    /// How often the feed must prove itself alive so that a live feed is always trusted: a
    /// quarter of the staleness bound, at most a second, at least 50 ms.
    pub fn heartbeat_interval(&self) -> std::time::Duration {
        let quarter = self.max_staleness_us.unwrap_or(i64::MAX) / 4;
        std::time::Duration::from_micros(quarter.clamp(50_000, 1_000_000) as u64)
    }

    pub fn set_up(&self) {
        self.alive_at_us
            .store(crate::clock::now_us(), Ordering::Release);
        self.down_since_us.store(0, Ordering::Release);
    }

    /// The feed answered and nothing waits to be applied.
    pub fn mark_alive(&self) {
        self.alive_at_us
            .store(crate::clock::now_us(), Ordering::Release);
    }

    /// Marks the feed down, keeping the earliest time it went down.
    pub fn set_down(&self) {
        let now = crate::clock::now_us().max(1);
        let _ = self
            .down_since_us
            .compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire);
    }

    /// When the feed went down (µs since the epoch); 0 while it is live.
    pub fn down_since_us(&self) -> i64 {
        self.down_since_us.load(Ordering::Acquire)
    }

    pub fn is_up(&self) -> bool {
        self.down_since_us.load(Ordering::Acquire) == 0
    }
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Inserts a key; returns only once it is durable.
    async fn create_key(&self, key: NewKey) -> Result<(), StoreError>;

    /// Up to `limit` keys of an inbox, newest first, strictly after `after`.
    async fn list_keys(
        &self,
        inbox_id: &str,
        after: Option<&Cursor>,
        limit: usize,
    ) -> Result<Vec<KeyRecord>, StoreError>;

    /// Deletes a key of an inbox; returns its hash and `TOMBSTONE` (for the caches), or `None`
    /// if no such key. A shared store tells every instance (its change log).
    async fn delete_key(
        &self,
        inbox_id: &str,
        api_key_id: &str,
    ) -> Result<Option<KeyVersion>, StoreError>;

    /// Changes a key's name and/or permissions and bumps its version; returns the whole record
    /// and its hash and new version (for the caches), or `None` if the inbox has no such key.
    /// A shared store tells every instance (the same log as deletes).
    async fn update_key(
        &self,
        inbox_id: &str,
        api_key_id: &str,
        update: KeyUpdate,
    ) -> Result<Option<(KeyRecord, KeyVersion)>, StoreError>;

    /// One key of an inbox.
    async fn get_key(
        &self,
        inbox_id: &str,
        api_key_id: &str,
    ) -> Result<Option<KeyRecord>, StoreError>;

    /// Finds a key by the SHA-256 of its plaintext.
    async fn find_by_hash(&self, hash: &KeyHash) -> Result<Option<AuthRecord>, StoreError>;

    /// Writes `used_at` marks in one transaction, never moving a key's `used_at` backwards.
    async fn record_usage(&self, marks: &[(String, i64)]) -> Result<(), StoreError>;

    /// The secret stored under `name`; when there is none yet, stores `candidate` and returns
    /// it. Every instance on one database gets the same secret, whoever stored it first.
    async fn get_or_create_secret(
        &self,
        name: &str,
        candidate: Vec<u8>,
    ) -> Result<Vec<u8>, StoreError>;

    /// Checks that the store answers (for `/readyz`).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Connection-pool gauges, for stores that pool connections.
    fn pool_status(&self) -> Option<PoolStatus> {
        None
    }
}

#[cfg(test)]
mod feed_tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_staleness_bound_runs_from_the_last_proof_of_life() {
        let feed = FeedHealth::shared(Duration::from_millis(500));
        feed.set_up();
        assert!(feed.is_up() && feed.cache_trusted());
        // A silent death: still "up" (nothing noticed yet), but the last proof of life is
        // older than the bound, so nothing cached is trusted.
        feed.alive_at_us
            .store(crate::clock::now_us() - 600_000, Ordering::Release);
        assert!(feed.is_up());
        assert!(!feed.cache_trusted());
        feed.mark_alive();
        assert!(feed.cache_trusted());
        assert_eq!(feed.heartbeat_interval(), Duration::from_millis(125));
        let default = FeedHealth::shared(Duration::from_millis(2000));
        assert_eq!(default.heartbeat_interval(), Duration::from_millis(500));
        assert_eq!(
            FeedHealth::shared(Duration::from_secs(60)).heartbeat_interval(),
            Duration::from_secs(1)
        );
        assert!(FeedHealth::always().cache_trusted());
    }
}
