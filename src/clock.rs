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
