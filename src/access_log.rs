//! The access log: one line per request, written by a dedicated thread, never on the request path.

use std::io::Write;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;

use http::{HeaderValue, Method};

use crate::auth::verifier::KeyId;
use crate::metrics::Metrics;

/// Lines buffered before new ones are dropped (and counted).
const QUEUE_LINES: usize = 16 * 1024;

/// What one access-log line says. Never the key, the token or the query string.
pub struct AccessRecord {
    pub method: Method,
    pub path: String,
    pub status: u16,
    pub micros: u64,
    pub api_key_id: Option<KeyId>,
    pub request_id: Option<HeaderValue>,
}

pub struct AccessLog {
    tx: SyncSender<AccessRecord>,
    metrics: Arc<Metrics>,
}

impl AccessLog {
    /// Starts the writer thread (lines go to stdout).
    pub fn start(metrics: Arc<Metrics>) -> AccessLog {
        let (tx, rx) = sync_channel(QUEUE_LINES);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_loop(rx))
            .expect("spawning the access log thread");
        AccessLog { tx, metrics }
    }

    /// Queues a line; drops it (counted) rather than ever blocking a request.
    pub fn send(&self, r: AccessRecord) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send(r) {
            self.metrics.access_log_dropped.inc();
        }
    }
}

fn write_loop(rx: Receiver<AccessRecord>) {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(r) = next {
            let _ = writeln!(
                out,
                "access method={} path={:?} status={} duration_us={} api_key_id={} request_id={}",
                r.method,
                r.path,
                r.status,
                r.micros,
                r.api_key_id.as_ref().map_or("-", KeyId::as_str),
                r.request_id
                    .as_ref()
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-"),
            );
            next = rx.try_recv().ok();
        }
        let _ = out.flush();
    }
}
