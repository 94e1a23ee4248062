//! The `Store` abstraction over key storage, shared by the management API and the verifier.
//!
//! Backends: `sqlite` (embedded default). A PostgreSQL backend slots in behind the same trait;
//! on one instance a delete evicts the key from this instance's caches directly (see
//! `Verifier::revoke`), and a shared store will add a way to tell every instance.

use async_trait::async_trait;

use crate::keys::KeyHash;

pub mod cursor;
#[cfg(test)]
pub mod memory;
pub mod metered;
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

    /// Deletes a key of an inbox; returns its hash (for cache eviction), or `None` if no such key.
    async fn delete_key(
        &self,
        inbox_id: &str,
        api_key_id: &str,
    ) -> Result<Option<KeyHash>, StoreError>;

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
}
