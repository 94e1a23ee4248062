//! When a cached identity was read and which version of its key it is, in one word: the
//! identity stays 112 bytes (its `Arc` block 128, a mimalloc size class; see the README's memory
//! per cached key), so carrying the version costs no memory per key.

/// The load time's unit: 1,024 µs (a shift, not a division, on the hit path's TTL check).
const TICK_SHIFT: u32 = 10;
/// Bits for the load time: 2^42 ticks of 1,024 µs is 142 years from 1970.
const TIME_BITS: u32 = 42;
const TIME_MASK: u64 = (1 << TIME_BITS) - 1;
/// The largest version held exactly; a key changed more often than this is held as this
/// ("at least"), and such a copy is never taken as current (see `Stamp::is_version`).
pub const MAX_HELD_VERSION: i64 = (1 << (64 - TIME_BITS)) - 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp(u64);

impl Stamp {
    /// Read at `now_us` (µs since the epoch), the key's row at `version` (≥ 1).
    pub fn new(now_us: i64, version: i64) -> Stamp {
        let ticks = (now_us.max(0) as u64 >> TICK_SHIFT) & TIME_MASK;
        let v = version.clamp(0, MAX_HELD_VERSION) as u64;
        Stamp(v << TIME_BITS | ticks)
    }

    /// When the identity was read, rounded down to the tick: a cached copy is trusted a
    /// little less than its TTL, never more.
    #[inline]
    pub fn loaded_at_us(self) -> i64 {
        ((self.0 & TIME_MASK) << TICK_SHIFT) as i64
    }

    /// The version the identity was read at (`MAX_HELD_VERSION`: that or later).
    pub fn version(self) -> i64 {
        (self.0 >> TIME_BITS) as i64
    }

    /// Whether this copy is exactly `version` of its key. A copy held at `MAX_HELD_VERSION`
    /// is never sure to be current: it is read again.
    pub fn is_version(self, version: i64) -> bool {
        self.version() == version && version < MAX_HELD_VERSION
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_and_version_round_trip() {
        let now = 1_800_000_000_123_456;
        let s = Stamp::new(now, 7);
        assert_eq!(s.version(), 7);
        assert!(s.loaded_at_us() <= now && now - s.loaded_at_us() < 1024);
        assert!(s.is_version(7) && !s.is_version(6) && !s.is_version(8));
        // Year 2100 still fits.
        let later = 4_102_444_800_000_000;
        assert!(later - Stamp::new(later, 1).loaded_at_us() < 1024);
        // Past the held range: never taken as current.
        let big = Stamp::new(now, MAX_HELD_VERSION + 5);
        assert_eq!(big.version(), MAX_HELD_VERSION);
        assert!(!big.is_version(MAX_HELD_VERSION));
        assert!(!big.is_version(MAX_HELD_VERSION + 5));
    }
}
