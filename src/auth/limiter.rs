//! Per-client limit on failed authentications, exact per client within a memory bound.
//!
//! A client is its IPv4 address, or its IPv6 address cut to a prefix (`/64` by default: one
//! customer's network, not one of its 2^64 addresses). Each client has its own counter and a
//! fixed window that starts at its first failure; once it holds `limit` failures, further
//! failed or not-yet-cached credentials from it are refused with 429 until the window ends.
//! A client that never failed has no entry and is never refused.
//!
//! Store lookups are gated exactly: a lookup takes a reservation (counted as a failure until
//! it succeeds), so a client's concurrent connections together get at most `limit` lookups of
//! unknown keys per window.
//!
//! Memory: at most `max_clients` entries, in 64 shards. A full shard first drops entries whose
//! window has ended, then the entry with the fewest failures (the oldest among equals): a
//! client at its limit is the last to be forgotten.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

const SHARDS: usize = 64;

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Failures, plus lookups in flight, in this window.
    count: u32,
    started: Instant,
}

/// Limits failed authentications per client.
pub struct FailureLimiter {
    shards: Box<[Mutex<HashMap<IpAddr, Entry>>]>,
    limit: u32,
    window: Duration,
    per_shard: usize,
    ipv6_prefix: u8,
    hasher: std::collections::hash_map::RandomState,
}

/// Settings of a [`FailureLimiter`].
#[derive(Debug, Clone, Copy)]
pub struct LimiterConfig {
    /// Failures per client and window; 0 disables the limiter.
    pub limit: u32,
    pub window: Duration,
    /// Most clients tracked at once.
    pub max_clients: usize,
    /// IPv6 addresses are grouped by this prefix length (1–128).
    pub ipv6_prefix: u8,
}

/// A refusal: the client must wait this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocked {
    pub retry_after_secs: u64,
}

/// A store lookup allowed by the limiter. Counted as a failure unless released: call
/// [`Reservation::release`] when the lookup found the key or the store was down.
#[must_use]
pub struct Reservation<'a> {
    limiter: &'a FailureLimiter,
    client: Option<IpAddr>,
}

impl Reservation<'_> {
    /// The lookup was not the client's failure: give the reservation back.
    pub fn release(self) {
        if let Some(c) = self.client {
            self.limiter.with_entry(c, false, |e, _| {
                if let Some(e) = e {
                    e.count = e.count.saturating_sub(1);
                }
            });
        }
    }

    /// The lookup failed (unknown key): the reservation stays as the failure.
    pub fn keep(self) {}
}

impl FailureLimiter {
    pub fn new(cfg: LimiterConfig) -> FailureLimiter {
        FailureLimiter {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            limit: cfg.limit,
            window: cfg.window,
            per_shard: cfg.max_clients.div_ceil(SHARDS).max(1),
            ipv6_prefix: cfg.ipv6_prefix.clamp(1, 128),
            hasher: Default::default(),
        }
    }

    /// A limiter that never refuses.
    pub fn disabled() -> FailureLimiter {
        FailureLimiter::new(LimiterConfig {
            limit: 0,
            window: Duration::from_secs(1),
            max_clients: 1,
            ipv6_prefix: 64,
        })
    }

    /// The client an address belongs to: IPv4 as is (also when IPv4-mapped), IPv6 cut to the
    /// configured prefix.
    pub fn client_of(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(_) => ip,
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let bits = u128::from(v6);
                    let mask = u128::MAX << (128 - u32::from(self.ipv6_prefix));
                    IpAddr::V6(Ipv6Addr::from(bits & mask))
                }
            },
        }
    }

    fn shard(&self, client: &IpAddr) -> &Mutex<HashMap<IpAddr, Entry>> {
        use std::hash::BuildHasher;
        &self.shards[(self.hasher.hash_one(client) as usize) % SHARDS]
    }

    /// Runs `f` on the client's live entry (a window that ended counts as none); with
    /// `create`, makes the entry first, evicting as the module doc says when the shard is full.
    fn with_entry<T>(
        &self,
        ip: IpAddr,
        create: bool,
        f: impl FnOnce(Option<&mut Entry>, Instant) -> T,
    ) -> T {
        let client = self.client_of(ip);
        let now = Instant::now();
        let mut shard = self.shard(&client).lock();
        if let Some(e) = shard.get_mut(&client) {
            if now.duration_since(e.started) >= self.window {
                *e = Entry {
                    count: 0,
                    started: now,
                };
            }
            return f(Some(e), now);
        }
        if !create {
            return f(None, now);
        }
        if shard.len() >= self.per_shard {
            let window = self.window;
            shard.retain(|_, e| now.duration_since(e.started) < window);
        }
        if shard.len() >= self.per_shard {
            let victim = shard
                .iter()
                .min_by_key(|(_, e)| (e.count, e.started))
                .map(|(k, _)| *k);
            if let Some(v) = victim {
                shard.remove(&v);
            }
        }
        let e = shard.entry(client).or_insert(Entry {
            count: 0,
            started: now,
        });
        f(Some(e), now)
    }

    fn blocked_answer(&self, e: &Entry, now: Instant) -> Blocked {
        let left = (e.started + self.window).saturating_duration_since(now);
        Blocked {
            retry_after_secs: left.as_secs() + u64::from(left.subsec_nanos() > 0),
        }
        .at_least_one()
    }

    /// Whether `ip`'s client has used up its failures for this window.
    pub fn check(&self, ip: Option<IpAddr>) -> Result<(), Blocked> {
        let Some(ip) = ip.filter(|_| self.limit > 0) else {
            return Ok(());
        };
        self.with_entry(ip, false, |e, now| match e {
            Some(e) if e.count >= self.limit => Err(self.blocked_answer(e, now)),
            _ => Ok(()),
        })
    }

    /// Counts a failed authentication that needed no store lookup; refuses it (without
    /// counting) when the client is already at its limit.
    pub fn fail(&self, ip: Option<IpAddr>) -> Result<(), Blocked> {
        let Some(ip) = ip.filter(|_| self.limit > 0) else {
            return Ok(());
        };
        self.count_one(ip)
    }

    /// Adds one to the client's count, or refuses when it is at the limit.
    fn count_one(&self, ip: IpAddr) -> Result<(), Blocked> {
        self.with_entry(ip, true, |e, now| {
            let e = e.expect("created");
            if e.count >= self.limit {
                return Err(self.blocked_answer(e, now));
            }
            e.count += 1;
            Ok(())
        })
    }

    /// Takes a reservation for one store lookup, or refuses when the client's failures and
    /// lookups in flight already reach the limit.
    pub fn reserve(&self, ip: Option<IpAddr>) -> Result<Reservation<'_>, Blocked> {
        let Some(ip) = ip.filter(|_| self.limit > 0) else {
            return Ok(Reservation {
                limiter: self,
                client: None,
            });
        };
        self.count_one(ip)?;
        Ok(Reservation {
            limiter: self,
            client: Some(ip),
        })
    }

    /// Clients tracked now (for tests and metrics).
    pub fn tracked_clients(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }
}

impl Blocked {
    fn at_least_one(self) -> Blocked {
        Blocked {
            retry_after_secs: self.retry_after_secs.max(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(limit: u32, max_clients: usize) -> FailureLimiter {
        FailureLimiter::new(LimiterConfig {
            limit,
            window: Duration::from_secs(60),
            max_clients,
            ipv6_prefix: 64,
        })
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn blocks_after_limit_per_client_exactly() {
        let l = limiter(3, 1000);
        for _ in 0..3 {
            assert_eq!(l.check(ip("1.1.1.1")), Ok(()));
            assert_eq!(l.fail(ip("1.1.1.1")), Ok(()));
        }
        let blocked = l.check(ip("1.1.1.1")).unwrap_err();
        assert!((59..=60).contains(&blocked.retry_after_secs), "{blocked:?}");
        assert!(l.fail(ip("1.1.1.1")).is_err());
        assert!(l.reserve(ip("1.1.1.1")).is_err());
        assert_eq!(l.check(ip("1.1.1.2")), Ok(()));
        assert_eq!(l.check(None), Ok(()));
        let off = limiter(0, 1000);
        for _ in 0..10 {
            assert_eq!(off.fail(ip("1.1.1.1")), Ok(()));
        }
        assert_eq!(off.check(ip("1.1.1.1")), Ok(()));
        assert_eq!(off.tracked_clients(), 0);
    }

    #[test]
    fn many_failing_clients_never_block_a_fresh_one() {
        // What broke the approximate counter: thousands of failing addresses, then fresh ones.
        let l = limiter(100, 100_000);
        for a in 0..2600u32 {
            let addr = Some(IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + a)));
            for _ in 0..101 {
                let _ = l.fail(addr);
            }
        }
        for a in 0..5000u32 {
            let fresh = Some(IpAddr::from(std::net::Ipv4Addr::from(0xc000_0000 + a)));
            assert_eq!(l.check(fresh), Ok(()));
            l.reserve(fresh).unwrap().release();
        }
    }

    #[test]
    fn ipv6_clients_are_their_prefix() {
        let l = limiter(2, 1000);
        assert!(l.fail(ip("2001:db8:1:2::1")).is_ok());
        assert!(l.fail(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")).is_ok());
        assert!(l.check(ip("2001:db8:1:2:abcd::9")).is_err());
        assert!(l.check(ip("2001:db8:1:3::1")).is_ok());
        // IPv4-mapped addresses are their IPv4 address.
        assert!(l.fail(ip("9.9.9.9")).is_ok());
        assert!(l.fail(ip("::ffff:9.9.9.9")).is_ok());
        assert!(l.check(ip("9.9.9.9")).is_err());
        let wide = FailureLimiter::new(LimiterConfig {
            ipv6_prefix: 48,
            ..LimiterConfig {
                limit: 1,
                window: Duration::from_secs(60),
                max_clients: 10,
                ipv6_prefix: 64,
            }
        });
        assert!(wide.fail(ip("2001:db8:1:2::1")).is_ok());
        assert!(wide.check(ip("2001:db8:1:ffff::1")).is_err());
        assert_eq!(
            wide.client_of("2001:db8:1:ffff::1".parse().unwrap()),
            "2001:db8:1::".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn reservations_make_concurrent_lookups_exact() {
        let l = limiter(5, 1000);
        let held: Vec<_> = (0..5).map(|_| l.reserve(ip("1.2.3.4")).unwrap()).collect();
        assert!(
            l.reserve(ip("1.2.3.4")).is_err(),
            "a sixth lookup in flight"
        );
        for r in held {
            r.release();
        }
        assert_eq!(l.check(ip("1.2.3.4")), Ok(()));
        for _ in 0..5 {
            l.reserve(ip("1.2.3.4")).unwrap().keep();
        }
        assert!(l.check(ip("1.2.3.4")).is_err());
    }

    #[test]
    fn a_full_table_forgets_the_least_failed_first() {
        // 64 shards of 10: each new client in a full shard evicts the entry with fewest failures.
        let l = limiter(3, 640);
        for _ in 0..3 {
            let _ = l.fail(ip("7.7.7.7"));
        }
        for a in 0..10_000u32 {
            let addr = Some(IpAddr::from(std::net::Ipv4Addr::from(0x0b00_0000 + a)));
            let _ = l.fail(addr);
            assert!(l.tracked_clients() <= 640);
        }
        assert!(
            l.check(ip("7.7.7.7")).is_err(),
            "the blocked client was evicted"
        );
    }

    #[test]
    fn windows_end() {
        let l = FailureLimiter::new(LimiterConfig {
            limit: 1,
            window: Duration::from_millis(50),
            max_clients: 10,
            ipv6_prefix: 64,
        });
        l.fail(ip("1.1.1.1")).unwrap();
        assert!(l.check(ip("1.1.1.1")).is_err());
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(l.check(ip("1.1.1.1")), Ok(()));
    }
}
