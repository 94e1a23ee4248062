//! Upstream groups: round-robin over healthy addresses, health checks as background services.

use std::net::SocketAddr;
use std::sync::Arc;

use pingora::lb::health_check::{HttpHealthCheck, TcpHealthCheck};
use pingora::lb::selection::RoundRobin;
use pingora::lb::LoadBalancer;
use pingora::protocols::ALPN;
use pingora::services::background::{background_service, GenBackgroundService};
use pingora::upstreams::peer::HttpPeer;

use crate::config::UpstreamConfig;
use crate::tls::upstream::PeerTls;

/// One upstream group and its prepared peer settings.
pub struct Upstream {
    pub lb: Arc<LoadBalancer<RoundRobin>>,
    peer_template: HttpPeer,
}

impl Upstream {
    /// Builds the group and the background service that runs its health checks; both share
    /// one load balancer, so selection sees the health state.
    pub fn build(
        cfg: &UpstreamConfig,
    ) -> std::io::Result<(Upstream, GenBackgroundService<LoadBalancer<RoundRobin>>)> {
        let mut lb = LoadBalancer::<RoundRobin>::try_from_iter(cfg.addresses.iter().copied())?;
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
                lb.set_health_check(Box::new(hc));
            }
            None => lb.set_health_check(TcpHealthCheck::new()),
        }
        lb.health_check_frequency = Some(cfg.health_check_interval);
        lb.parallel_health_check = true;
        let service = background_service(&format!("health check {}", cfg.name), lb);
        let upstream = Upstream {
            lb: service.task(),
            peer_template,
        };
        Ok((upstream, service))
    }

    /// Picks the next healthy address, round-robin.
    pub fn peer(&self) -> Option<Box<HttpPeer>> {
        let backend = self.lb.select(b"", 256)?;
        let addr: SocketAddr = *backend.addr.as_inet()?;
        let mut peer = Box::new(self.peer_template.clone());
        peer._address = pingora::protocols::l4::socket::SocketAddr::Inet(addr);
        Some(peer)
    }

    /// How many addresses pass their health check now.
    pub fn healthy_backends(&self) -> usize {
        let backends = self.lb.backends();
        backends
            .get_backend()
            .iter()
            .filter(|b| backends.ready(b))
            .count()
    }
}
