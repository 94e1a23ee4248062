//! An in-memory `Store` for unit tests and benchmarks: counts queries, can be made to fail,
//! and can hold a lookup between its read and its answer (to replay races with changes).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;

use super::{
    AuthRecord, Cursor, KeyRecord, KeyUpdate, KeyVersion, NewKey, Store, StoreError, TOMBSTONE,
};
use crate::keys::KeyHash;

#[derive(Default)]
pub struct MemoryStore {
    /// Each key with its version.
    keys: Mutex<Vec<(NewKey, i64)>>,
    secrets: Mutex<std::collections::HashMap<String, Vec<u8>>>,
    /// Every `find_by_hash` call.
    pub lookups: AtomicUsize,
    /// Every `record_usage` call.
    pub usage_writes: AtomicUsize,
    /// When set, every call fails as if the store were unreachable.
    pub failing: AtomicBool,
    /// Delay of each lookup, to let concurrent misses pile up.
    pub lookup_delay: Mutex<Option<Duration>>,
    /// Delay between a lookup's read and its answer: a window for changes to commit in.
    pub answer_delay: Mutex<Option<Duration>>,
    /// When set, a lookup reads its row, then waits here before answering: the read is done
    /// and its answer not yet cached (a lookup in flight while a change commits).
    pub hold_after_read: Mutex<Option<Arc<tokio::sync::Semaphore>>>,
    /// Lookups that have read their row and wait on `hold_after_read`.
    pub held: AtomicUsize,
}

impl MemoryStore {
    fn check(&self) -> Result<(), StoreError> {
        if self.failing.load(Ordering::SeqCst) {
            Err(StoreError::Unavailable("memory store set to fail".into()))
        } else {
            Ok(())
        }
    }

    /// Adds a key directly (test and benchmark set-up).
    pub fn add_key(&self, api_key_id: &str, inbox_id: &str, hash: KeyHash) {
        self.keys.lock().push((
            NewKey {
                record: KeyRecord {
                    api_key_id: api_key_id.into(),
                    inbox_id: inbox_id.into(),
                    pod_id: None,
                    name: "test".into(),
                    prefix: "agk_test".into(),
                    created_at_us: 1,
                    used_at_us: None,
                    permissions: None,
                    expires_at_us: None,
                    updated_at_us: 1,
                    created_by: None,
                },
                hash,
            },
            1,
        ));
    }

    /// Removes a key behind the gateway's back (as another writer of the store would).
    pub fn remove_key(&self, hash: &KeyHash) {
        self.keys.lock().retain(|(k, _)| k.hash != *hash);
    }

    /// The stored `used_at` of a key.
    pub fn used_at(&self, api_key_id: &str) -> Option<i64> {
        self.keys
            .lock()
            .iter()
            .find(|(k, _)| k.record.api_key_id == api_key_id)
            .and_then(|(k, _)| k.record.used_at_us)
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn create_key(&self, key: NewKey) -> Result<(), StoreError> {
        self.check()?;
        self.keys.lock().push((key, 1));
        Ok(())
    }

    async fn list_keys(
        &self,
        inbox_id: &str,
        after: Option<&Cursor>,
        limit: usize,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        self.check()?;
        let mut v: Vec<KeyRecord> = self
            .keys
            .lock()
            .iter()
            .filter(|(k, _)| k.record.inbox_id == inbox_id)
            .map(|(k, _)| k.record.clone())
            .filter(|r| {
                after.is_none_or(|c| {
                    (r.created_at_us, r.api_key_id.as_str())
                        < (c.created_at_us, c.api_key_id.as_str())
                })
            })
            .collect();
        v.sort_by(|a, b| (b.created_at_us, &b.api_key_id).cmp(&(a.created_at_us, &a.api_key_id)));
        v.truncate(limit);
        Ok(v)
    }

    async fn delete_key(
        &self,
        inbox_id: &str,
        api_key_id: &str,
    ) -> Result<Option<KeyVersion>, StoreError> {
        self.check()?;
        let mut keys = self.keys.lock();
        let pos = keys
            .iter()
            .position(|(k, _)| k.record.inbox_id == inbox_id && k.record.api_key_id == api_key_id);
        Ok(pos.map(|i| KeyVersion {
            hash: keys.remove(i).0.hash,
            version: TOMBSTONE,
        }))
    }

    async fn find_by_hash(&self, hash: &KeyHash) -> Result<Option<AuthRecord>, StoreError> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        let delay = *self.lookup_delay.lock();
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        self.check()?;
        let found = self
            .keys
            .lock()
            .iter()
            .find(|(k, _)| &k.hash == hash)
            .map(|(k, version)| AuthRecord {
                api_key_id: k.record.api_key_id.clone(),
                inbox_id: k.record.inbox_id.clone(),
                pod_id: k.record.pod_id.clone(),
                hash: k.hash,
                permissions: k.record.permissions.clone(),
                expires_at_us: k.record.expires_at_us,
                version: *version,
            });
        let delay = *self.answer_delay.lock();
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        let hold = self.hold_after_read.lock().clone();
        if let Some(gate) = hold {
            self.held.fetch_add(1, Ordering::SeqCst);
            let _ = gate.acquire().await.map(|p| p.forget());
        }
        Ok(found)
    }

    async fn update_key(
        &self,
        inbox_id: &str,
        api_key_id: &str,
        update: KeyUpdate,
    ) -> Result<Option<(KeyRecord, KeyVersion)>, StoreError> {
        self.check()?;
        let mut keys = self.keys.lock();
        let Some((k, version)) = keys
            .iter_mut()
            .find(|(k, _)| k.record.inbox_id == inbox_id && k.record.api_key_id == api_key_id)
        else {
            return Ok(None);
        };
        *version += 1;
        if let Some(n) = update.name {
            k.record.name = n;
        }
        if let Some(p) = update.permissions {
            k.record.permissions = Some(p);
        }
        k.record.updated_at_us = update.updated_at_us;
        Ok(Some((
            k.record.clone(),
            KeyVersion {
                hash: k.hash,
                version: *version,
            },
        )))
    }

    async fn get_key(
        &self,
        inbox_id: &str,
        api_key_id: &str,
    ) -> Result<Option<KeyRecord>, StoreError> {
        self.check()?;
        Ok(self
            .keys
            .lock()
            .iter()
            .find(|(k, _)| k.record.inbox_id == inbox_id && k.record.api_key_id == api_key_id)
            .map(|(k, _)| k.record.clone()))
    }

    async fn record_usage(&self, marks: &[(String, i64)]) -> Result<(), StoreError> {
        self.usage_writes.fetch_add(1, Ordering::SeqCst);
        self.check()?;
        let mut keys = self.keys.lock();
        for (id, at) in marks {
            if let Some((k, _)) = keys.iter_mut().find(|(k, _)| &k.record.api_key_id == id) {
                if k.record.used_at_us.is_none_or(|u| u < *at) {
                    k.record.used_at_us = Some(*at);
                }
            }
        }
        Ok(())
    }

    async fn get_or_create_secret(
        &self,
        name: &str,
        candidate: Vec<u8>,
    ) -> Result<Vec<u8>, StoreError> {
        self.check()?;
        Ok(self
            .secrets
            .lock()
            .entry(name.to_owned())
            .or_insert(candidate)
            .clone())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.check()
    }
}
