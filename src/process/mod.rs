//! The process around the server: signals, drain, readiness, the pid file, the bind check,
//! the final `used_at` flush on every way out, and config reload.

mod bind;
mod finish;
mod pid_file;
pub mod reload;
mod signals;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use bind::{check_listen_addresses, exit_on_listener_panic};
pub use finish::Finisher;
pub use pid_file::PidFile;
pub use signals::Signals;

/// How long a connect to our own listener may take before it counts as not bound.
const BIND_PROBE_TIMEOUT: Duration = Duration::from_millis(250);

/// What the operations listener and the signal handler share about this process.
pub struct Lifecycle {
    draining: AtomicBool,
    in_flight: AtomicUsize,
    listeners_bound: AtomicBool,
    /// The proxy's listen addresses, probed until they accept.
    listen: Vec<SocketAddr>,
}

impl Lifecycle {
    pub fn new(listen: Vec<SocketAddr>) -> Arc<Lifecycle> {
        Arc::new(Lifecycle {
            draining: AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            listeners_bound: AtomicBool::new(false),
            listen,
        })
    }

    /// Counts a request as in flight until the returned guard drops.
    pub fn request_started(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// Requests whose head has been read and whose answer is not finished.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// From now on `/readyz` answers 503 (SIGTERM's drain).
    pub fn start_drain(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Whether every proxy listener accepts connections. pingora gives no signal when it has
    /// bound, so this connects to each address until one round succeeds; the bind check at
    /// start-up made sure nobody else held them.
    pub async fn listeners_bound(&self) -> bool {
        if self.listeners_bound.load(Ordering::Acquire) {
            return true;
        }
        for addr in &self.listen {
            let connect = tokio::net::TcpStream::connect(addr);
            match tokio::time::timeout(BIND_PROBE_TIMEOUT, connect).await {
                Ok(Ok(_)) => {}
                _ => return false,
            }
        }
        self.listeners_bound.store(true, Ordering::Release);
        true
    }
}

/// One request in flight; dropping it ends the request.
pub struct InFlight(Arc<Lifecycle>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_counts_guards() {
        let l = Lifecycle::new(vec![]);
        let a = l.request_started();
        let b = l.request_started();
        assert_eq!(l.in_flight(), 2);
        drop(a);
        assert_eq!(l.in_flight(), 1);
        drop(b);
        assert_eq!(l.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_closed_port_is_not_bound_and_an_open_one_is() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = held.local_addr().unwrap();
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        assert!(!Lifecycle::new(vec![closed]).listeners_bound().await);
        assert!(Lifecycle::new(vec![open]).listeners_bound().await);
    }
}
