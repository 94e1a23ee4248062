//! Upstream groups: round-robin over healthy addresses; health checks and the re-resolution
//! of DNS names as background services.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use parking_lot::Mutex;
use pingora::lb::discovery::ServiceDiscovery;
use pingora::lb::health_check::{
    HealthObserve, HealthObserveCallback, HttpHealthCheck, TcpHealthCheck,
};
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::protocols::ALPN;
use pingora::services::background::{background_service, GenBackgroundService};
use pingora::upstreams::peer::HttpPeer;

use crate::config::{UpstreamAddress, UpstreamConfig};
use crate::tls::upstream::PeerTls;

/// One upstream group and its prepared peer settings.
pub struct Upstream {
    /// Each address's health, as the checks last reported it.
    health: Arc<Health>,
    next: AtomicUsize,
    peer_template: HttpPeer,
}

/// The group's addresses, each with a flag the health checks flip; replaced as a whole when a
/// DNS name resolves to other addresses. The balancer keeps the same state, but reading it per
/// request costs a SipHash of the backend and a map lookup; these flags cost one atomic load.
struct Health {
    addresses: ArcSwap<Vec<Arc<Address>>>,
}

impl Health {
    fn new(addrs: &[SocketAddr]) -> Health {
        Health {
            addresses: ArcSwap::from_pointee(
                addrs.iter().map(|a| Arc::new(Address::new(*a))).collect(),
            ),
        }
    }

    /// Makes `addrs` the group's addresses; an address that stays keeps its health flag, a
    /// new one starts healthy (as in pingora's own state) until its first check.
    fn publish(&self, addrs: &[SocketAddr]) -> bool {
        let old = self.addresses.load();
        if old.len() == addrs.len() && old.iter().all(|a| addrs.contains(&a.addr)) {
            return false;
        }
        let new = addrs
            .iter()
            .map(|addr| {
                old.iter()
                    .find(|a| a.addr == *addr)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Address::new(*addr)))
            })
            .collect();
        self.addresses.store(Arc::new(new));
        true
    }
}

struct Address {
    addr: SocketAddr,
    /// Starts true, as pingora's own health state does, until a check says otherwise.
    healthy: AtomicBool,
}

impl Address {
    fn new(addr: SocketAddr) -> Address {
        Address {
            addr,
            healthy: AtomicBool::new(true),
        }
    }
}

/// Hands the health checks' verdicts to [`Health`].
struct Observer(Arc<Health>);

#[async_trait]
impl HealthObserve for Observer {
    async fn observe(&self, target: &Backend, healthy: bool) {
        let Some(addr) = target.addr.as_inet() else {
            return;
        };
        if let Some(a) = self.0.addresses.load().iter().find(|a| a.addr == *addr) {
            a.healthy.store(healthy, Ordering::Relaxed);
        }
    }
}

impl Upstream {
    /// Builds the group and the background service that runs its health checks and, when it
    /// has DNS names, resolves them again every `resolve_interval`; the service reports each
    /// change of an address's health, and each new set of addresses, to the group.
    pub fn build(
        cfg: &UpstreamConfig,
        resolve_failures: prometheus::IntCounter,
    ) -> std::io::Result<(Upstream, GenBackgroundService<LoadBalancer<RoundRobin>>)> {
        // Each entry as it resolves now (the config's own lookup may be a moment old).
        let last = cfg
            .entries
            .iter()
            .enumerate()
            .map(|(j, e)| {
                e.resolve().map_err(|err| {
                    let msg = format!("addresses[{j}]: \"{e}\" does not resolve ({err})");
                    std::io::Error::new(err.kind(), msg)
                })
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        let health = Arc::new(Health::new(&union(&last)));
        let resolver = Resolver {
            group: cfg.name.clone(),
            entries: cfg.entries.clone(),
            last: Mutex::new(last),
            health: health.clone(),
            failures: resolve_failures,
        };
        // The balancer here runs discovery and the health checks; `peer` does the selection.
        // Its first update runs when the service starts, before its first health check.
        let mut lb = LoadBalancer::<RoundRobin>::from_backends(Backends::new(Box::new(resolver)));
        if cfg.entries.iter().any(UpstreamAddress::is_name) {
            lb.update_frequency = Some(cfg.resolve_interval);
        }
        let observer = || Some(Box::new(Observer(health.clone())) as HealthObserveCallback);
        let first = health.addresses.load()[0].addr;
        let mut peer_template = HttpPeer::new(first, cfg.tls.is_some(), String::new());
        peer_template.options.connection_timeout = Some(cfg.connect_timeout);
        peer_template.options.read_timeout = Some(cfg.read_timeout);
        peer_template.options.write_timeout = cfg.write_timeout;
        if let Some(t) = &cfg.tls {
            PeerTls::load(t)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?
                .apply(&mut peer_template);
            peer_template.options.alpn = if cfg.http2 { ALPN::H2 } else { ALPN::H1 };
        }
        match &cfg.health_check_path {
            Some(path) => {
                // Over TLS, the check uses the group's own TLS settings (CA, SNI, client cert).
                let mut hc = HttpHealthCheck::new(&peer_template.sni, cfg.tls.is_some());
                hc.peer_template = peer_template.clone();
                hc.peer_template.options.alpn = ALPN::H1;
                hc.req.set_uri(
                    http::Uri::try_from(path.as_str())
                        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?,
                );
                hc.health_changed_callback = observer();
                lb.set_health_check(Box::new(hc));
            }
            None => {
                let mut hc = TcpHealthCheck::new();
                hc.health_changed_callback = observer();
                lb.set_health_check(hc);
            }
        }
        lb.health_check_frequency = Some(cfg.health_check_interval);
        lb.parallel_health_check = true;
        let service = background_service(&format!("health check {}", cfg.name), lb);
        let upstream = Upstream {
            health,
            next: AtomicUsize::new(0),
            peer_template,
        };
        Ok((upstream, service))
    }

    /// Picks the next healthy address, round-robin. The balancer's own `select` would do the
    /// same but allocates a set per call to skip repeats and hashes each backend it asks about.
    pub fn peer(&self) -> Option<Box<HttpPeer>> {
        let addrs = self.health.addresses.load();
        let n = addrs.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let addr = (0..n)
            .map(|i| &addrs[start.wrapping_add(i) % n])
            .find(|a| a.healthy.load(Ordering::Relaxed))?
            .addr;
        let mut peer = Box::new(self.peer_template.clone());
        peer._address = pingora::protocols::l4::socket::SocketAddr::Inet(addr);
        Some(peer)
    }

    /// How many addresses the group has.
    pub fn addresses(&self) -> usize {
        self.health.addresses.load().len()
    }

    /// How many addresses pass their health check now.
    pub fn healthy_backends(&self) -> usize {
        self.health
            .addresses
            .load()
            .iter()
            .filter(|a| a.healthy.load(Ordering::Relaxed))
            .count()
    }
}

/// Every address of `per_entry`, in order, without repeats.
fn union(per_entry: &[Vec<SocketAddr>]) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for a in per_entry.iter().flatten() {
        if !out.contains(a) {
            out.push(*a);
        }
    }
    out
}

/// The group's service discovery: literal addresses as written; DNS names resolved again at
/// each update, every address a name resolves to joining the group. A name that stops
/// resolving keeps the addresses it last had, and the failure is counted.
struct Resolver {
    group: String,
    entries: Vec<UpstreamAddress>,
    /// Per entry, what it stood for at its last successful resolution.
    last: Mutex<Vec<Vec<SocketAddr>>>,
    health: Arc<Health>,
    failures: prometheus::IntCounter,
}

#[async_trait]
impl ServiceDiscovery for Resolver {
    async fn discover(&self) -> pingora::Result<(BTreeSet<Backend>, HashMap<u64, bool>)> {
        for (i, entry) in self.entries.iter().enumerate() {
            let UpstreamAddress::Name { host, port } = entry else {
                continue;
            };
            match lookup(host, *port).await {
                Ok(addrs) => self.last.lock()[i] = addrs,
                Err(e) => {
                    self.failures.inc();
                    log::warn!(
                        "upstream {}: {entry} does not resolve ({e}); keeping its last addresses",
                        self.group
                    );
                }
            }
        }
        let addrs = union(&self.last.lock());
        if self.health.publish(&addrs) {
            log::info!("upstream {}: addresses now {addrs:?}", self.group);
        }
        let backends = addrs
            .iter()
            .map(|a| Backend {
                addr: pingora::protocols::l4::socket::SocketAddr::Inet(*a),
                weight: 1,
                ext: Default::default(),
            })
            .collect();
        Ok((backends, HashMap::new()))
    }
}

/// How long one re-resolution of a name may take before it counts as a failure.
const LOOKUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The addresses `host` resolves to now (tokio's resolver: the system's, off the runtime's
/// threads), without repeats; none is an error.
async fn lookup(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    // The balancer runs discovery and health checks in one loop: a resolver that hangs must
    // not hold the group's health checks up.
    let found = tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host((host, port)))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "lookup timed out"))??;
    crate::config::distinct_addresses(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A new set of addresses keeps the health of those that stay; new ones start healthy.
    #[test]
    fn a_new_address_set_keeps_the_health_of_addresses_that_stay() {
        let h = Health::new(&[addr("127.0.0.1:1"), addr("127.0.0.2:1")]);
        h.addresses.load()[1]
            .healthy
            .store(false, Ordering::Relaxed);
        assert!(
            !h.publish(&[addr("127.0.0.2:1"), addr("127.0.0.1:1")]),
            "same set"
        );
        assert!(h.publish(&[addr("127.0.0.2:1"), addr("127.0.0.3:1")]));
        let now = h.addresses.load();
        assert_eq!(now[0].addr, addr("127.0.0.2:1"));
        assert!(!now[0].healthy.load(Ordering::Relaxed), "kept its flag");
        assert!(now[1].healthy.load(Ordering::Relaxed), "new: healthy");
    }

    /// A name that stops resolving keeps its last addresses, and the failure is counted.
    #[tokio::test]
    async fn a_name_that_stops_resolving_keeps_its_last_addresses() {
        let entries = vec![
            UpstreamAddress::Ip(addr("127.0.0.1:1")),
            UpstreamAddress::Name {
                host: "nonexistent.invalid".into(),
                port: 80,
            },
        ];
        let last = vec![vec![addr("127.0.0.1:1")], vec![addr("10.0.0.9:80")]];
        let health = Arc::new(Health::new(&union(&last)));
        let failures = prometheus::IntCounter::new("f", "f").unwrap();
        let r = Resolver {
            group: "u".into(),
            entries,
            last: Mutex::new(last),
            health: health.clone(),
            failures: failures.clone(),
        };
        let (backends, _) = r.discover().await.unwrap();
        assert_eq!(backends.len(), 2);
        assert_eq!(failures.get(), 1);
        assert_eq!(health.addresses.load().len(), 2);
    }
}
