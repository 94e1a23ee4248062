//! Cross-instance revocation: every gateway follows the shared revocation log.
//!
//! Every change to a key (update, delete) commits the row change and a `key_events` entry
//! (monotonic `seq`, key hash, time, the key's new version) in one transaction and `NOTIFY`s
//! `CHANNEL`. This listener holds a dedicated connection that `LISTEN`s, hands each change's
//! version to this instance's caches (which then refuse anything older), and after every
//! (re)connect reads every log entry past the last `seq` it applied before it trusts its caches
//! again, so no change is missed. While it is down, the
//! verifier trusts cached keys for `store.revocation_max_staleness_ms` at most, then asks the
//! store on every use (`FeedHealth`). A heartbeat (a quarter of the bound, at most a second) proves
//! the feed alive and caught up; the bound runs from the last such proof.
//! Entries older than `store.revocation_log_retention_seconds` are pruned; an instance whose
//! listener was down longer than that drops its whole cache on reconnect.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;

use super::{Connector, CHANNEL};
use crate::clock::now_us;
use crate::config::PostgresConfig;
use crate::keys::KeyHash;
use crate::metrics::Metrics;
use crate::store::{FeedHealth, KeyEvents, TOMBSTONE, UNKNOWN_VERSION};

/// How the listening connection names itself in `pg_stat_activity`.
pub const LISTENER_APPLICATION_NAME: &str = "agentry-gateway-revocation-listener";
const HEARTBEAT: Duration = Duration::from_secs(1);
const PRUNE_EVERY: Duration = Duration::from_secs(60);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The listener of one instance, before it is bound to the caches it keeps true.
pub struct RevocationListener {
    connector: Connector,
    health: Arc<FeedHealth>,
    retention: Duration,
    /// The last log entry applied (or known not to matter: the log's end when this instance
    /// opened the store, before any cache could fill).
    last_applied: Arc<AtomicI64>,
}

impl RevocationListener {
    pub(super) fn new(connector: Connector, settings: &PostgresConfig, start_seq: i64) -> Self {
        RevocationListener {
            connector,
            health: Arc::new(FeedHealth::shared(settings.revocation_max_staleness)),
            retention: settings.revocation_log_retention,
            last_applied: Arc::new(AtomicI64::new(start_seq)),
        }
    }

    /// Whether this instance's caches may be trusted; shared with the verifier.
    pub fn health(&self) -> Arc<FeedHealth> {
        self.health.clone()
    }

    /// The background service that runs the listener for `events`.
    pub fn into_service(
        self,
        events: Arc<dyn KeyEvents>,
        metrics: Arc<Metrics>,
    ) -> RevocationService {
        RevocationService {
            listener: self,
            events,
            metrics,
        }
    }
}

/// The running listener (a pingora background service).
pub struct RevocationService {
    listener: RevocationListener,
    events: Arc<dyn KeyEvents>,
    metrics: Arc<Metrics>,
}

/// One parsed log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    seq: i64,
    at_us: i64,
    /// The key's version after the change (`TOMBSTONE`: deleted).
    version: i64,
    hash: KeyHash,
}

/// The version a log entry gives its key: a delete is a tombstone whatever its row says; any
/// other kind (and any kind a newer gateway adds) carries the row's new version, or
/// `UNKNOWN_VERSION` when logged before versions existed (cached copies are dropped then).
fn version_of(kind: &str, version: i64) -> i64 {
    match kind {
        "delete" => TOMBSTONE,
        _ if version > 0 => version,
        _ => UNKNOWN_VERSION,
    }
}

/// Parses a notification payload: `seq:at_us:kind:hex(hash):version` (or, from a gateway
/// before versions, `seq:at_us:kind:hex(hash)`).
fn parse_payload(payload: &str) -> Option<Entry> {
    let mut parts = payload.splitn(5, ':');
    let seq = parts.next()?.parse().ok()?;
    let at_us = parts.next()?.parse().ok()?;
    let kind = parts.next()?;
    let hash: KeyHash = hex::decode(parts.next()?).ok()?.try_into().ok()?;
    let version = match parts.next() {
        Some(v) => v.parse().ok()?,
        None => UNKNOWN_VERSION,
    };
    Some(Entry {
        seq,
        at_us,
        version: version_of(kind, version),
        hash,
    })
}

impl RevocationService {
    async fn apply(&self, e: &Entry) {
        let l = &self.listener;
        if e.seq <= l.last_applied.load(Ordering::Acquire) {
            return; // seen already (a notification that raced the catch-up read)
        }
        self.events.key_changed(&e.hash, e.version).await;
        l.last_applied.fetch_max(e.seq, Ordering::AcqRel);
        let lag = (now_us() - e.at_us).max(0) as f64 / 1e6;
        self.metrics.revocation_lag.observe(lag);
        self.metrics.revocation_events.inc();
    }

    /// Applies every log entry past the last one applied.
    async fn catch_up(&self, client: &tokio_postgres::Client) -> Result<usize, String> {
        let since = self.listener.last_applied.load(Ordering::Acquire);
        let rows = client
            .query(
                "SELECT seq, at_us, kind, key_hash, version FROM key_events WHERE seq > $1
                 ORDER BY seq",
                &[&since],
            )
            .await
            .map_err(|e| e.to_string())?;
        for r in &rows {
            let hash: &[u8] = r.get(3);
            let Ok(hash) = hash.try_into() else {
                log::error!(
                    "revocation log entry {} has a malformed hash",
                    r.get::<_, i64>(0)
                );
                continue;
            };
            let e = Entry {
                seq: r.get(0),
                at_us: r.get(1),
                version: version_of(r.get(2), r.get(4)),
                hash,
            };
            self.apply(&e).await;
        }
        Ok(rows.len())
    }

    /// One listening session: connect, LISTEN, catch up, then follow until the connection
    /// fails (`Err`) or the server shuts down (`Ok`).
    async fn session(&self, shutdown: &mut ShutdownWatch) -> Result<(), String> {
        let l = &self.listener;
        let mut config = l.connector.config.clone();
        config.application_name(LISTENER_APPLICATION_NAME);
        let (client, mut conn) = config.connect(l.connector.tls.clone()).await.map_err(|e| {
            format!(
                "PostgreSQL at {}: {}",
                l.connector.target,
                super::errors::describe(&e)
            )
        })?;
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        // The connection task: drives the client and forwards notifications.
        let driver = tokio::spawn(async move {
            loop {
                match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                    Some(Ok(AsyncMessage::Notification(n))) => {
                        if tx.send(n.payload().to_owned()).is_err() {
                            return "listener gone".to_owned();
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return e.to_string(),
                    None => return "connection closed".to_owned(),
                }
            }
        });
        let result = self.follow(&client, &mut rx, shutdown).await;
        driver.abort();
        result
    }

    async fn follow(
        &self,
        client: &tokio_postgres::Client,
        rx: &mut mpsc::UnboundedReceiver<String>,
        shutdown: &mut ShutdownWatch,
    ) -> Result<(), String> {
        let l = &self.listener;
        client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .await
            .map_err(|e| e.to_string())?;
        // Down longer than entries are kept: some may be gone, so nothing cached is trusted.
        let down_since = l.health.down_since_us();
        if down_since != 0 && now_us() - down_since > l.retention.as_micros() as i64 {
            log::warn!("revocation listener was down longer than the log is kept; dropping every cached key");
            self.events.forget_all().await;
        }
        let applied = self.catch_up(client).await?;
        l.health.set_up();
        self.metrics.revocation_listener_up.set(1);
        log::info!("revocation listener up ({applied} missed log entries applied)");
        let beat = l.health.heartbeat_interval();
        let mut heartbeat = tokio::time::interval(beat);
        let mut prune = tokio::time::interval(PRUNE_EVERY);
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(payload) => match parse_payload(&payload) {
                        Some(e) => self.apply(&e).await,
                        None => log::warn!("ignoring a malformed revocation notification"),
                    },
                    None => return Err("notification stream ended".into()),
                },
                _ = heartbeat.tick() => {
                    match tokio::time::timeout(HEARTBEAT, client.simple_query("SELECT 1")).await {
                        // Alive, and caught up only if no notification waits: a backlog
                        // stops the clock the staleness bound runs from.
                        Ok(Ok(_)) if rx.is_empty() => l.health.mark_alive(),
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return Err(e.to_string()),
                        Err(_) => return Err("heartbeat timed out".into()),
                    }
                }
                _ = prune.tick() => {
                    let before = now_us() - l.retention.as_micros() as i64;
                    if let Err(e) = client
                        .execute("DELETE FROM key_events WHERE at_us < $1", &[&before])
                        .await
                    {
                        log::warn!("pruning the revocation log failed: {e}");
                    }
                }
                _ = shutdown.changed() => return Ok(()),
            }
        }
    }
}

#[async_trait]
impl BackgroundService for RevocationService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut backoff = Duration::from_millis(50);
        loop {
            if *shutdown.borrow() {
                return;
            }
            let result = self.session(&mut shutdown).await;
            let was_up = self.listener.health.is_up();
            self.listener.health.set_down();
            self.metrics.revocation_listener_up.set(0);
            match result {
                Ok(()) => return,
                Err(e) => log::warn!("revocation listener down: {e}; reconnecting"),
            }
            let backoff_now = if was_up {
                Duration::from_millis(50)
            } else {
                backoff
            };
            tokio::select! {
                _ = tokio::time::sleep(backoff_now) => {}
                _ = shutdown.changed() => return,
            }
            backoff = if was_up {
                Duration::from_millis(50)
            } else {
                (backoff * 2).min(MAX_BACKOFF)
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_parse() {
        let h = [7u8; 32];
        let p = format!("42:1700000000000000:delete:{}:{TOMBSTONE}", hex::encode(h));
        assert_eq!(
            parse_payload(&p),
            Some(Entry {
                seq: 42,
                at_us: 1_700_000_000_000_000,
                version: TOMBSTONE,
                hash: h
            })
        );
        let p = format!("43:1:update:{}:7", hex::encode(h));
        assert_eq!(parse_payload(&p).unwrap().version, 7);
        // Before versions: a delete is still a tombstone, an update is a change of unknown
        // version.
        let p = format!("44:1:delete:{}", hex::encode(h));
        assert_eq!(parse_payload(&p).unwrap().version, TOMBSTONE);
        let p = format!("45:1:update:{}", hex::encode(h));
        assert_eq!(parse_payload(&p).unwrap().version, UNKNOWN_VERSION);
        for bad in [
            "",
            "1:2:delete",
            "x:2:delete:00",
            "1:2:delete:zz",
            "1:2:delete:0011",
            &format!("1:2:update:{}:x", hex::encode(h)),
        ] {
            assert_eq!(parse_payload(bad), None, "{bad}");
        }
    }
}
