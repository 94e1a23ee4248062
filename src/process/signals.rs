//! The gateway's signal handling, in place of pingora's: each signal does one thing.
//!
//! | signal | what happens |
//! |---|---|
//! | TERM | drain: `/readyz` 503 for `server.drain_seconds` while serving; then stop as INT |
//! | INT  | stop: listeners close, requests in flight get `grace_period_seconds`, final flush |
//! | QUIT | upgrade: hand the listening sockets to the process started with `--upgrade`, then stop |
//! | HUP  | reload the config file; the process keeps running whatever the outcome |

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use tokio::signal::unix::{signal, Signal, SignalKind};

use super::Lifecycle;

pub struct Signals {
    pub lifecycle: Arc<Lifecycle>,
    pub drain: Duration,
    /// Runs on SIGHUP (the config reload).
    pub on_hup: Box<dyn Fn() + Send + Sync>,
}

fn listen(kind: SignalKind, name: &str) -> Option<Signal> {
    match signal(kind) {
        Ok(s) => Some(s),
        Err(e) => {
            log::error!("cannot handle {name}: {e}");
            None
        }
    }
}

/// The next delivery of `s`, or never when it could not be registered.
async fn next(s: &mut Option<Signal>) {
    match s {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let mut term = listen(SignalKind::terminate(), "SIGTERM");
        let mut int = listen(SignalKind::interrupt(), "SIGINT");
        let mut quit = listen(SignalKind::quit(), "SIGQUIT");
        let mut hup = listen(SignalKind::hangup(), "SIGHUP");
        loop {
            tokio::select! {
                _ = next(&mut hup) => {
                    log::info!("SIGHUP: reloading the config file");
                    (self.on_hup)();
                }
                _ = next(&mut int) => {
                    log::info!("SIGINT: stopping: listeners close, requests in flight finish");
                    return ShutdownSignal::GracefulTerminate;
                }
                _ = next(&mut quit) => {
                    log::info!("SIGQUIT: upgrade: handing the listening sockets to the new process");
                    return ShutdownSignal::GracefulUpgrade;
                }
                _ = next(&mut term) => break,
            }
        }
        self.lifecycle.start_drain();
        log::info!(
            "SIGTERM: draining: /readyz answers 503 for {}s while the listeners serve; SIGINT stops at once",
            self.drain.as_secs()
        );
        let end = tokio::time::sleep(self.drain);
        tokio::pin!(end);
        loop {
            tokio::select! {
                _ = &mut end => {
                    log::info!("drain over: stopping: listeners close, requests in flight finish");
                    break;
                }
                _ = next(&mut int) => {
                    log::info!("SIGINT during the drain: stopping now");
                    break;
                }
                _ = next(&mut term) => log::info!("SIGTERM again: already draining"),
                _ = next(&mut hup) => {
                    log::info!("SIGHUP: reloading the config file");
                    (self.on_hup)();
                }
            }
        }
        ShutdownSignal::GracefulTerminate
    }
}
