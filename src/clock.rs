//! Wall-clock time in microseconds, a strictly increasing creation clock, RFC 3339 formatting.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use time::macros::format_description;
use time::OffsetDateTime;

/// Microseconds since the Unix epoch.
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// How stale [`coarse_now_us`] may be.
pub const COARSE_TICK: std::time::Duration = std::time::Duration::from_millis(5);

/// Microseconds since the Unix epoch, at most [`COARSE_TICK`] old: one atomic load, for checks
/// on every request (key expiry) where a clock read would be most of their cost. A thread
/// started on first use refreshes it.
pub fn coarse_now_us() -> i64 {
    static NOW: AtomicI64 = AtomicI64::new(0);
    static START: std::sync::Once = std::sync::Once::new();
    START.call_once(|| {
        NOW.store(now_us(), Ordering::Relaxed);
        let spawned = std::thread::Builder::new()
            .name("coarse-clock".into())
            .spawn(|| loop {
                std::thread::sleep(COARSE_TICK);
                NOW.store(now_us(), Ordering::Relaxed);
            });
        if let Err(e) = spawned {
            log::error!("coarse clock thread: {e}");
        }
    });
    let t = NOW.load(Ordering::Relaxed);
    // Without its thread the value would freeze: read the clock instead.
    if t == 0 {
        now_us()
    } else {
        t
    }
}

/// Hands out strictly increasing timestamps, so creation order is stable even if the wall
/// clock steps back.
#[derive(Debug, Default)]
pub struct MonotonicClock {
    last: AtomicI64,
}

impl MonotonicClock {
    pub fn next_us(&self) -> i64 {
        let now = now_us();
        let mut prev = self.last.load(Ordering::Relaxed);
        loop {
            let next = now.max(prev + 1);
            match self
                .last
                .compare_exchange_weak(prev, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(p) => prev = p,
            }
        }
    }
}

/// `2026-01-01T00:00:00Z`: RFC 3339, UTC, whole seconds.
pub fn rfc3339(us: i64) -> String {
    let fmt = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    OffsetDateTime::from_unix_timestamp(us.div_euclid(1_000_000))
        .ok()
        .and_then(|t| t.format(&fmt).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coarse_clock_follows_the_clock() {
        let a = coarse_now_us();
        assert!((now_us() - a).abs() < 1_000_000);
        let later = now_us() + 3 * COARSE_TICK.as_micros() as i64;
        while now_us() < later {
            std::thread::yield_now();
        }
        std::thread::sleep(COARSE_TICK * 2);
        assert!(coarse_now_us() > a);
    }

    #[test]
    fn formats_rfc3339_seconds() {
        assert_eq!(rfc3339(1_767_225_600_999_999), "2026-01-01T00:00:00Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn monotonic() {
        let c = MonotonicClock::default();
        let a = c.next_us();
        let b = c.next_us();
        assert!(b > a);
    }
}
