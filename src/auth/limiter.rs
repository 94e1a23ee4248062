//! Per-client limit on failed authentications (pingora-limits' fixed-memory rate estimator).
//!
//! Once a client IP has failed `limit` times in the current window, further credentials from
//! it are refused with 429 before any hashing or store query, until the window rolls over.

use std::net::IpAddr;
use std::time::Duration;

use pingora_limits::rate::Rate;

pub struct FailureLimiter {
    rate: Option<Rate>,
    limit: isize,
    window: Duration,
}

impl FailureLimiter {
    /// `limit` 0 disables the limiter.
    pub fn new(limit: u32, window: Duration) -> FailureLimiter {
        FailureLimiter {
            rate: (limit > 0).then(|| Rate::new(window)),
            limit: limit as isize,
            window,
        }
    }

    /// Whether `ip` has used up its failures for this window.
    pub fn is_blocked(&self, ip: &IpAddr) -> bool {
        self.rate
            .as_ref()
            .is_some_and(|r| r.observe(ip, 0) >= self.limit)
    }

    pub fn record_failure(&self, ip: &IpAddr) {
        if let Some(r) = &self.rate {
            r.observe(ip, 1);
        }
    }

    /// Seconds a blocked client should wait (one window, rounded up).
    pub fn retry_after_secs(&self) -> u64 {
        self.window.as_secs().max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_limit_per_ip() {
        let l = FailureLimiter::new(3, Duration::from_secs(60));
        let a: IpAddr = "1.1.1.1".parse().unwrap();
        let b: IpAddr = "2.2.2.2".parse().unwrap();
        for _ in 0..3 {
            assert!(!l.is_blocked(&a));
            l.record_failure(&a);
        }
        assert!(l.is_blocked(&a));
        assert!(!l.is_blocked(&b));
        let off = FailureLimiter::new(0, Duration::from_secs(60));
        for _ in 0..10 {
            off.record_failure(&a);
        }
        assert!(!off.is_blocked(&a));
    }
}
