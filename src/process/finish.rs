//! The one way out: the final `used_at` flush and the pid file's removal, done once whichever
//! path ends the process (run returning, an early exit when nothing is in flight, a failed
//! listener).

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use pingora::server::ExecutionPhase;

use super::{Lifecycle, PidFile};
use crate::auth::usage::UsageRecorder;

/// How long "nothing in flight" must hold before an early exit: a connection accepted just
/// before the listeners closed gets this long to send its head.
const IDLE_BEFORE_EXIT: Duration = Duration::from_millis(100);
const IDLE_POLL: Duration = Duration::from_millis(10);

pub struct Finisher {
    usage: Arc<UsageRecorder>,
    pid_file: OnceLock<PidFile>,
    /// Held from the final flush to the exit: the second path to arrive waits, then the
    /// process is gone.
    once: Mutex<()>,
}

impl Finisher {
    pub fn new(usage: Arc<UsageRecorder>) -> Arc<Finisher> {
        Arc::new(Finisher {
            usage,
            pid_file: OnceLock::new(),
            once: Mutex::new(()),
        })
    }

    pub fn set_pid_file(&self, p: PidFile) {
        let _ = self.pid_file.set(p);
    }

    /// Flushes the pending `used_at` marks and removes the pid file; returns the exit code
    /// (`code`, or 1 when the flush failed). Call at most once per path; the caller exits.
    fn finish_locked(&self, code: u8) -> u8 {
        let code = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            // Waits for a periodic flush that is under way (the flush lock), then writes the rest.
            Ok(rt) => match rt.block_on(self.usage.flush()) {
                Ok(n) => {
                    log::info!("final used_at flush wrote {n} marks; exiting");
                    code
                }
                Err(e) => {
                    log::error!("final used_at flush failed: {e}");
                    1
                }
            },
            Err(e) => {
                log::error!("final used_at flush: no runtime: {e}");
                1
            }
        };
        if let Some(p) = self.pid_file.get() {
            p.remove();
        }
        code
    }

    /// The end of `main`: flush, remove the pid file, return the code to exit with. If an
    /// early exit is under way, it ends the process and this never returns.
    pub fn finish(&self, code: u8) -> u8 {
        let _once = self.once.lock().unwrap_or_else(|p| p.into_inner());
        self.finish_locked(code)
    }

    /// Flush, remove the pid file and end the process now.
    pub fn exit(&self, code: u8) -> ! {
        let _once = self.once.lock().unwrap_or_else(|p| p.into_inner());
        let code = self.finish_locked(code);
        std::process::exit(code.into())
    }

    /// Once the server is shutting down (listeners closed), ends the process as soon as no
    /// request is in flight, instead of waiting out the whole grace period; pingora's
    /// grace period stays the upper bound.
    pub fn exit_when_idle(
        self: &Arc<Self>,
        mut phases: tokio::sync::broadcast::Receiver<ExecutionPhase>,
        lifecycle: Arc<Lifecycle>,
    ) {
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("exit when idle".into())
            .spawn(move || {
                loop {
                    match phases.blocking_recv() {
                        Ok(ExecutionPhase::ShutdownStarted) => break,
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    }
                }
                let mut idle_since = None;
                loop {
                    if lifecycle.in_flight() > 0 {
                        idle_since = None;
                    } else {
                        let since = *idle_since.get_or_insert_with(std::time::Instant::now);
                        if since.elapsed() >= IDLE_BEFORE_EXIT {
                            break;
                        }
                    }
                    std::thread::sleep(IDLE_POLL);
                }
                log::info!("nothing in flight: exiting before the grace period ends");
                me.exit(0)
            });
        if let Err(e) = spawned {
            log::warn!("no early-exit thread ({e}): the process waits out the grace period");
        }
    }
}
