//! `used_at` write-behind: requests mark keys in memory; a background service flushes the marks
//! every interval, so store writes grow with active keys, not with requests. A periodic flush
//! writes in chunks of `FLUSH_CHUNK` keys, one transaction each, `FLUSH_PAUSE` apart, for as
//! long as it is within its pacing budget (half the interval): SQLite runs on the blocking pool,
//! on the cores the proxy uses, and a long write there delays the requests that arrive during
//! it. A flush past its budget writes the rest without pauses, so a backlog is caught up.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::ApiKeyIdentity;
use crate::metrics::Metrics;
use crate::store::{KeyRecord, Store};

/// Keys written per transaction of a flush: 32 is about 0.15 ms of SQLite's CPU, short enough
/// that a request arriving during it is not held up noticeably (256 held the one-connection
/// miss p99 above 1 ms; see bench/HISTORY.md, tuning log).
pub const FLUSH_CHUNK: usize = 32;
/// Pause between two chunks of a paced flush.
pub const FLUSH_PAUSE: Duration = Duration::from_millis(1);

/// One key's `used_at` mark on this instance, and whether it awaits a flush, in one atomic
/// word (so a cached identity stays within its 128-byte block): positive while pending (the
/// latest use, µs since the epoch), negated once flushed, 0 when never used.
#[derive(Debug, Default)]
pub struct UsageMark(AtomicI64);

impl UsageMark {
    /// Latest use (µs since the epoch), flushed or not; 0: none yet.
    pub fn last_used_us(&self) -> i64 {
        self.0.load(Ordering::Relaxed).saturating_abs()
    }

    /// Raises the mark to `now_us` if that is newer; true when this made it pending (exactly
    /// one caller sees that for each flush).
    fn raise(&self, now_us: i64) -> bool {
        let raised = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |v| {
                (now_us > v.saturating_abs()).then_some(now_us)
            });
        matches!(raised, Ok(before) if before <= 0)
    }

    /// Marks it flushed and returns the time to write, in one step: a later `raise` makes it
    /// pending again, so no use is lost.
    fn take(&self) -> i64 {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |v| {
                Some(-v.saturating_abs())
            })
            .unwrap_or_else(|v| v)
            .saturating_abs()
    }

    /// Makes a flushed mark pending again (its write failed); false when a `raise` already did.
    fn restore(&self) -> bool {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |v| {
                (v < 0).then_some(-v)
            })
            .is_ok()
    }
}

/// Pending `used_at` marks of this instance.
pub struct UsageRecorder {
    pending: Mutex<Vec<Arc<ApiKeyIdentity>>>,
    /// Marks being written right now: still shown by `overlay` until the write commits.
    inflight: Mutex<Vec<Arc<ApiKeyIdentity>>>,
    /// Serialises flushes (the periodic one and the shutdown ones).
    flush_lock: tokio::sync::Mutex<()>,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
}

impl UsageRecorder {
    pub fn new(store: Arc<dyn Store>, metrics: Arc<Metrics>) -> UsageRecorder {
        UsageRecorder {
            pending: Mutex::new(Vec::new()),
            inflight: Mutex::new(Vec::new()),
            flush_lock: tokio::sync::Mutex::new(()),
            store,
            metrics,
        }
    }

    /// Marks a key used at `now_us`: one atomic update, plus a lock when that made the key
    /// pending. A time no newer than the mark (pending or flushed) changes nothing.
    pub fn touch(&self, id: &Arc<ApiKeyIdentity>, now_us: i64) {
        if id.usage.raise(now_us) {
            self.queue(id);
        }
    }

    fn queue(&self, id: &Arc<ApiKeyIdentity>) {
        self.pending.lock().push(id.clone());
        self.metrics.usage_pending_marks.inc();
    }

    /// Number of keys awaiting a flush.
    pub fn pending_count(&self) -> usize {
        self.pending.lock().len()
    }

    /// Raises `used_at` of listed records to this instance's unflushed marks.
    pub fn overlay(&self, records: &mut [KeyRecord]) {
        let mut latest: HashMap<&str, i64> = HashMap::new();
        let pending = self.pending.lock().clone();
        let inflight = self.inflight.lock().clone();
        for id in pending.iter().chain(inflight.iter()) {
            let at = id.usage.last_used_us();
            let e = latest.entry(id.api_key_id_str()).or_insert(at);
            *e = (*e).max(at);
        }
        if latest.is_empty() {
            return;
        }
        for r in records {
            if let Some(&at) = latest.get(r.api_key_id.as_str()) {
                if r.used_at_us.is_none_or(|u| u < at) {
                    r.used_at_us = Some(at);
                }
            }
        }
    }

    /// Writes every pending mark, `FLUSH_CHUNK` per transaction, without pauses (at exit, and
    /// wherever nothing else competes).
    pub async fn flush(&self) -> Result<usize, crate::store::StoreError> {
        self.flush_paced(Duration::ZERO).await
    }

    /// Writes every pending mark, `FLUSH_CHUNK` per transaction, pausing `FLUSH_PAUSE` between
    /// chunks while the flush has run for less than `budget`. On failure every mark of the
    /// batch is pending again (rewriting a written one changes nothing: the store keeps the
    /// latest time).
    pub async fn flush_paced(&self, budget: Duration) -> Result<usize, crate::store::StoreError> {
        let _one_at_a_time = self.flush_lock.lock().await;
        let batch = std::mem::take(&mut *self.pending.lock());
        if batch.is_empty() {
            return Ok(0);
        }
        self.metrics.usage_pending_marks.sub(batch.len() as i64);
        let marks: Vec<(String, i64)> = batch
            .iter()
            .map(|id| (id.api_key_id_str().to_owned(), id.usage.take()))
            .collect();
        *self.inflight.lock() = batch.clone();
        let started = tokio::time::Instant::now();
        let mut result = Ok(());
        for (i, chunk) in marks.chunks(FLUSH_CHUNK).enumerate() {
            if i > 0 && started.elapsed() < budget {
                tokio::time::sleep(FLUSH_PAUSE).await;
            }
            result = self.store.record_usage(chunk).await;
            if result.is_err() {
                break;
            }
        }
        self.metrics
            .usage_flush_duration
            .observe(started.elapsed().as_secs_f64());
        self.inflight.lock().clear();
        match result {
            Ok(()) => {
                self.metrics.usage_flushes.inc();
                Ok(marks.len())
            }
            Err(e) => {
                self.metrics.usage_flush_failures.inc();
                for id in batch.iter().filter(|id| id.usage.restore()) {
                    self.queue(id);
                }
                Err(e)
            }
        }
    }
}

/// The background service that flushes marks every interval and at shutdown.
pub struct UsageFlusher {
    pub recorder: Arc<UsageRecorder>,
    pub interval: Duration,
}

#[async_trait]
impl BackgroundService for UsageFlusher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stopping = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed(), if !stopping => {
                    // Shutdown begins: flush at once, then keep flushing through the grace
                    // period; main flushes once more after the server has stopped.
                    stopping = true;
                }
            }
            if let Err(e) = self.recorder.flush_paced(self.interval / 2).await {
                log::warn!("used_at flush failed, will retry: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::auth::Verifier;
    use crate::config::CacheConfig;
    use crate::keys::KeyFormat;
    use crate::store::memory::MemoryStore;

    async fn identity(store: &Arc<MemoryStore>, id: &str) -> Arc<ApiKeyIdentity> {
        let format = KeyFormat::new("agk");
        let m = format.generate();
        store.add_key(id, "i", m.hash);
        let v = Verifier::new(
            format,
            &CacheConfig {
                max_entries: 10,
                ttl: Duration::from_secs(60),
                negative_max_entries: 10,
                negative_ttl: Duration::from_secs(60),
            },
            store.clone(),
            Arc::new(Metrics::new(&[], &[])),
            Arc::new(crate::auth::limiter::FailureLimiter::disabled()),
        );
        v.authenticate_key(m.plaintext.as_bytes(), None)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn many_touches_one_write_forward_only() {
        let store = Arc::new(MemoryStore::default());
        let a = identity(&store, "a").await;
        let b = identity(&store, "b").await;
        let rec = UsageRecorder::new(store.clone(), Arc::new(Metrics::new(&[], &[])));
        for t in 0..10_000 {
            rec.touch(&a, 1000 + t);
            rec.touch(&b, 500);
        }
        rec.touch(&a, 5); // older than what is already marked: ignored
        assert_eq!(rec.pending_count(), 2);
        assert_eq!(rec.flush().await.unwrap(), 2);
        assert_eq!(store.usage_writes.load(Ordering::SeqCst), 1);
        assert_eq!(store.used_at("a"), Some(10_999));
        assert_eq!(store.used_at("b"), Some(500));
        assert_eq!(rec.flush().await.unwrap(), 0);
        assert_eq!(store.usage_writes.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_large_flush_is_written_in_chunks() {
        let store = Arc::new(MemoryStore::default());
        let rec = UsageRecorder::new(store.clone(), Arc::new(Metrics::new(&[], &[])));
        let n = 2 * FLUSH_CHUNK + 1;
        for i in 0..n {
            let id = identity(&store, &format!("k{i}")).await;
            rec.touch(&id, 1_000 + i as i64);
        }
        assert_eq!(rec.flush().await.unwrap(), n);
        assert_eq!(
            store.usage_writes.load(Ordering::SeqCst),
            3,
            "three transactions"
        );
        for i in 0..n {
            assert_eq!(store.used_at(&format!("k{i}")), Some(1_000 + i as i64));
        }
        assert_eq!(rec.pending_count(), 0);
    }

    /// Paced: pauses between chunks until the budget is spent, then writes the rest at once.
    /// Unpaced (`flush`, at exit): no pauses. Counted on tokio's paused clock.
    #[tokio::test(start_paused = true)]
    async fn a_paced_flush_pauses_within_its_budget_only() {
        let store = Arc::new(MemoryStore::default());
        let rec = UsageRecorder::new(store.clone(), Arc::new(Metrics::new(&[], &[])));
        let mut ids = Vec::new();
        for i in 0..10 * FLUSH_CHUNK {
            ids.push(identity(&store, &format!("k{i}")).await);
        }
        let t0 = tokio::time::Instant::now();
        for id in &ids {
            rec.touch(id, 7);
        }
        assert_eq!(rec.flush_paced(FLUSH_PAUSE * 4).await.unwrap(), ids.len());
        assert_eq!(t0.elapsed(), FLUSH_PAUSE * 4, "four pauses, then no more");
        assert_eq!(store.usage_writes.load(Ordering::SeqCst), 10);
        let t1 = tokio::time::Instant::now();
        for id in &ids {
            rec.touch(id, 8);
        }
        assert_eq!(rec.flush().await.unwrap(), ids.len());
        assert_eq!(t1.elapsed(), Duration::ZERO, "no pauses at all");
        assert_eq!(store.usage_writes.load(Ordering::SeqCst), 20);
        assert_eq!(store.used_at("k0"), Some(8));
    }

    /// Touches from many threads while flushes run: each key is queued at most once at a time,
    /// and the last flush leaves every key's latest touch in the store.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn touches_racing_flushes_lose_no_mark_and_queue_each_key_once() {
        let store = Arc::new(MemoryStore::default());
        let rec = Arc::new(UsageRecorder::new(
            store.clone(),
            Arc::new(Metrics::new(&[], &[])),
        ));
        let mut ids = Vec::new();
        for i in 0..8 {
            ids.push(identity(&store, &format!("k{i}")).await);
        }
        let ids = Arc::new(ids);
        let touchers: Vec<_> = (0..4i64)
            .map(|t| {
                let (rec, ids) = (rec.clone(), ids.clone());
                std::thread::spawn(move || {
                    for n in 0..20_000i64 {
                        let id = &ids[(n as usize + t as usize) % ids.len()];
                        rec.touch(id, 1 + n * 4 + t);
                        assert!(rec.pending_count() <= ids.len());
                    }
                })
            })
            .collect();
        while touchers.iter().any(|t| !t.is_finished()) {
            rec.flush().await.unwrap();
            tokio::task::yield_now().await;
        }
        for t in touchers {
            t.join().unwrap();
        }
        rec.flush().await.unwrap();
        assert_eq!(rec.pending_count(), 0);
        for (i, id) in ids.iter().enumerate() {
            // The latest time any thread gave key i: the largest n*4+t+1 with (n+t) % 8 == i.
            let latest = (0..4i64)
                .flat_map(|t| {
                    (0..20_000i64)
                        .filter(move |n| (n + t) % 8 == i as i64)
                        .map(move |n| 1 + n * 4 + t)
                })
                .max()
                .unwrap();
            assert_eq!(store.used_at(&format!("k{i}")), Some(latest), "k{i}");
            assert_eq!(id.usage.last_used_us(), latest);
        }
    }

    #[tokio::test]
    async fn failed_flush_keeps_marks_and_retries() {
        let store = Arc::new(MemoryStore::default());
        let a = identity(&store, "a").await;
        let rec = UsageRecorder::new(store.clone(), Arc::new(Metrics::new(&[], &[])));
        rec.touch(&a, 42);
        store.failing.store(true, Ordering::SeqCst);
        assert!(rec.flush().await.is_err());
        assert_eq!(rec.pending_count(), 1);
        // Still shown to the list API while pending.
        let mut rows = vec![KeyRecord {
            api_key_id: "a".into(),
            inbox_id: "i".into(),
            pod_id: None,
            name: "n".into(),
            prefix: "p".into(),
            created_at_us: 1,
            used_at_us: None,
            permissions: None,
            expires_at_us: None,
            updated_at_us: 1,
            created_by: None,
        }];
        rec.overlay(&mut rows);
        assert_eq!(rows[0].used_at_us, Some(42));
        store.failing.store(false, Ordering::SeqCst);
        assert_eq!(rec.flush().await.unwrap(), 1);
        assert_eq!(store.used_at("a"), Some(42));
    }
}
