//! Upstream groups: round-robin over healthy addresses, health checks as background services.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use pingora::lb::health_check::{
    HealthObserve, HealthObserveCallback, HttpHealthCheck, TcpHealthCheck,
};
use pingora::lb::selection::RoundRobin;
use pingora::lb::{Backend, LoadBalancer};
use pingora::protocols::ALPN;
use pingora::services::background::{background_service, GenBackgroundService};
use pingora::upstreams::peer::HttpPeer;

use crate::config::UpstreamConfig;
use crate::tls::upstream::PeerTls;

/// One upstream group and its prepared peer settings.
pub struct Upstream {
    /// Each address's health, as the checks last reported it.
    health: Arc<Health>,
    next: AtomicUsize,
    peer_template: HttpPeer,
}

/// The group's addresses, fixed at start-up (static discovery), each with a flag the health
/// checks flip. The balancer keeps the same state, but reading it per request costs a SipHash
/// of the backend and a map lookup; these flags cost one atomic load.
struct Health {
    addresses: Vec<Address>,
}

struct Address {
    addr: SocketAddr,
    /// Starts true, as pingora's own health state does, until a check says otherwise.
    healthy: AtomicBool,
}

/// Hands the health checks' verdicts to [`Health`].
struct Observer(Arc<Health>);

#[async_trait]
impl HealthObserve for Observer {
    async fn observe(&self, target: &Backend, healthy: bool) {
        let Some(addr) = target.addr.as_inet() else {
            return;
        };
        if let Some(a) = self.0.addresses.iter().find(|a| a.addr == *addr) {
            a.healthy.store(healthy, Ordering::Relaxed);
        }
    }
}

impl Upstream {
    /// Builds the group and the background service that runs its health checks; the checks
    /// report each change of an address's health to the group.
    pub fn build(
        cfg: &UpstreamConfig,
    ) -> std::io::Result<(Upstream, GenBackgroundService<LoadBalancer<RoundRobin>>)> {
        // The balancer here only runs the health checks (and dedupes the addresses); `peer`
        // does the selection.
        let mut lb = LoadBalancer::<RoundRobin>::try_from_iter(cfg.addresses.iter().copied())?;
        let health = Arc::new(Health {
            addresses: lb
                .backends()
                .get_backend()
                .iter()
                .filter_map(|b| b.addr.as_inet().copied())
                .map(|addr| Address {
                    addr,
                    healthy: AtomicBool::new(true),
                })
                .collect(),
        });
        let observer = || Some(Box::new(Observer(health.clone())) as HealthObserveCallback);
        let mut peer_template = HttpPeer::new(cfg.addresses[0], cfg.tls.is_some(), String::new());
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
        let addrs = &self.health.addresses;
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
        self.health.addresses.len()
    }

    /// How many addresses pass their health check now.
    pub fn healthy_backends(&self) -> usize {
        self.health
            .addresses
            .iter()
            .filter(|a| a.healthy.load(Ordering::Relaxed))
            .count()
    }
}
