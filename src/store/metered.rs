//! A `Store` decorator that counts every operation and failure in the metrics.

use std::sync::Arc;

use async_trait::async_trait;

use super::{AuthRecord, Cursor, KeyRecord, NewKey, Store, StoreError};
use crate::keys::KeyHash;
use crate::metrics::{Metrics, StoreOp};

pub struct MeteredStore {
    inner: Arc<dyn Store>,
    metrics: Arc<Metrics>,
}

impl MeteredStore {
    pub fn new(inner: Arc<dyn Store>, metrics: Arc<Metrics>) -> MeteredStore {
        MeteredStore { inner, metrics }
    }

    fn count<T>(&self, op: StoreOp, r: Result<T, StoreError>) -> Result<T, StoreError> {
        self.metrics.store_query(op);
        if let Err(e) = &r {
            self.metrics.store_error(op);
            log::warn!("store {op:?} failed: {e}");
        }
        r
    }
}

#[async_trait]
impl Store for MeteredStore {
    async fn create_key(&self, key: NewKey) -> Result<(), StoreError> {
        let r = self.inner.create_key(key).await;
        self.count(StoreOp::Create, r)
    }

    async fn list_keys(
        &self,
        inbox_id: &str,
        after: Option<&Cursor>,
        limit: usize,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        let r = self.inner.list_keys(inbox_id, after, limit).await;
        self.count(StoreOp::List, r)
    }

    async fn delete_key(
        &self,
        inbox_id: &str,
        api_key_id: &str,
    ) -> Result<Option<super::KeyVersion>, StoreError> {
        let r = self.inner.delete_key(inbox_id, api_key_id).await;
        self.count(StoreOp::Delete, r)
    }

    async fn update_key(
        &self,
        inbox_id: &str,
        api_key_id: &str,
        update: super::KeyUpdate,
    ) -> Result<Option<(KeyRecord, super::KeyVersion)>, StoreError> {
        let r = self.inner.update_key(inbox_id, api_key_id, update).await;
        self.count(StoreOp::Update, r)
    }

    async fn get_key(
        &self,
        inbox_id: &str,
        api_key_id: &str,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let r = self.inner.get_key(inbox_id, api_key_id).await;
        self.count(StoreOp::Get, r)
    }

    async fn find_by_hash(&self, hash: &KeyHash) -> Result<Option<AuthRecord>, StoreError> {
        let r = self.inner.find_by_hash(hash).await;
        self.count(StoreOp::FindByHash, r)
    }

    async fn record_usage(&self, marks: &[(String, i64)]) -> Result<(), StoreError> {
        let r = self.inner.record_usage(marks).await;
        self.count(StoreOp::RecordUsage, r)
    }

    async fn get_or_create_secret(
        &self,
        name: &str,
        candidate: Vec<u8>,
    ) -> Result<Vec<u8>, StoreError> {
        self.inner.get_or_create_secret(name, candidate).await
    }

    fn pool_status(&self) -> Option<super::PoolStatus> {
        self.inner.pool_status()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let r = self.inner.ping().await;
        self.count(StoreOp::Ping, r)
    }
}
