//! Benchmark helper: resident memory per cached key. Verifies N distinct keys through the real
//! verifier and moka caches (against a store that answers every hash), then reports the RSS
//! growth divided by N.
//!
//! `cargo run --release --example cache_memory -- [N]`, and `-- N bare` for moka alone (built
//! as the verifier's positive cache is: an 8-byte key, the same capacity, no TTL; empty
//! values): the floor any moka-based cache pays.

/// The gateway binary's allocator, so the figure is the binary's (feature `mimalloc`).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use agentry_gateway::auth::Verifier;
use agentry_gateway::config::CacheConfig;
use agentry_gateway::keys::{KeyFormat, KeyHash};
use agentry_gateway::metrics::Metrics;
use agentry_gateway::store::{
    AuthRecord, Cursor, KeyRecord, KeyUpdate, KeyVersion, NewKey, Store, StoreError,
};

/// Knows every key: derives a record from the hash, holds nothing in memory.
struct Synthetic;

#[async_trait]
impl Store for Synthetic {
    async fn create_key(&self, _k: NewKey) -> Result<(), StoreError> {
        Ok(())
    }
    async fn list_keys(
        &self,
        _i: &str,
        _a: Option<&Cursor>,
        _l: usize,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        Ok(Vec::new())
    }
    async fn delete_key(&self, _i: &str, _k: &str) -> Result<Option<KeyVersion>, StoreError> {
        Ok(None)
    }
    async fn find_by_hash(&self, hash: &KeyHash) -> Result<Option<AuthRecord>, StoreError> {
        let n = u32::from_be_bytes([hash[0], hash[1], hash[2], hash[3]]);
        Ok(Some(AuthRecord {
            api_key_id: format!("key_{}", hex::encode(&hash[..11])),
            inbox_id: format!("inbox{}@bench.example", n % 1000),
            pod_id: Some("pod_bench".into()),
            hash: *hash,
            permissions: None,
            expires_at_us: None,
            version: 1,
        }))
    }
    async fn record_usage(&self, _m: &[(String, i64)]) -> Result<(), StoreError> {
        Ok(())
    }
    async fn update_key(
        &self,
        _i: &str,
        _k: &str,
        _u: KeyUpdate,
    ) -> Result<Option<(KeyRecord, KeyVersion)>, StoreError> {
        Ok(None)
    }
    async fn get_key(&self, _i: &str, _k: &str) -> Result<Option<KeyRecord>, StoreError> {
        Ok(None)
    }
    async fn get_or_create_secret(&self, _n: &str, c: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        Ok(c)
    }
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = s.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn main() {
    // As the gateway runs by default (`server.transparent_huge_pages = false`).
    agentry_gateway::huge_pages(false).expect("PR_SET_THP_DISABLE");
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    if std::env::args().nth(2).as_deref() == Some("bare") {
        return bare(n);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let format = KeyFormat::new("agk");
    let keys: Vec<String> = (0..n).map(|_| format.generate().plaintext).collect();
    let cache = CacheConfig {
        max_entries: n as u64 * 2,
        ttl: Duration::from_secs(3600),
        negative_max_entries: 1000,
        negative_ttl: Duration::from_secs(5),
    };
    let verifier = Verifier::new(
        format,
        &cache,
        Arc::new(Synthetic),
        Arc::new(Metrics::new(&[], &[])),
        Arc::new(agentry_gateway::auth::limiter::FailureLimiter::disabled()),
    );
    rt.block_on(verifier.sync());
    let before = rss_bytes();
    rt.block_on(async {
        for k in &keys {
            // The proxy's entry: the Authorization header in, the identity out.
            let mut h = http::HeaderMap::new();
            h.insert(
                http::header::AUTHORIZATION,
                http::HeaderValue::from_str(&format!("Bearer {k}")).unwrap(),
            );
            verifier.authenticate(&h, None).await.unwrap();
        }
        verifier.sync().await;
    });
    let after = rss_bytes();
    println!(
        "cached_keys={} rss_growth_bytes={} bytes_per_cached_key={:.1}",
        verifier.cached_keys(),
        after - before,
        (after - before) as f64 / n as f64
    );
}

/// Baseline: moka alone, as the positive cache is built, with an empty value (`-- N bare`).
fn bare(n: usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let bare: moka::future::Cache<u64, ()> = moka::future::Cache::builder()
        .max_capacity(n as u64 * 2)
        .build();
    let before = rss_bytes();
    rt.block_on(async {
        for i in 0..n {
            bare.insert(i as u64, ()).await;
        }
        bare.run_pending_tasks().await;
    });
    let after = rss_bytes();
    println!(
        "moka_alone_bytes_per_entry={:.1}",
        after.saturating_sub(before) as f64 / n as f64
    );
}
