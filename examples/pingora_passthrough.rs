//! Benchmark peer S4: the smallest pingora reverse proxy (no auth), built with the gateway's
//! release profile, to measure what pingora itself costs.
//!
//! `cargo run --release --example pingora_passthrough -- LISTEN UPSTREAM [THREADS]`

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;
use pingora::upstreams::peer::HttpPeer;

struct Passthrough {
    peer: HttpPeer,
}

#[async_trait]
impl ProxyHttp for Passthrough {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _s: &mut Session, _c: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(self.peer.clone()))
    }
}

pub fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (listen, upstream) = (args[1].clone(), args[2].clone());
    let threads = args.get(3).and_then(|t| t.parse().ok()).unwrap_or(1);
    let port = listen.rsplit(':').next().unwrap_or("0").to_owned();
    let conf = ServerConf {
        threads,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(0),
        pid_file: format!("/tmp/pingora-passthrough-{port}.pid"),
        upgrade_sock: format!("/tmp/pingora-passthrough-{port}.sock"),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let addr: std::net::SocketAddr = upstream.parse().expect("upstream IP:port");
    let mut svc = pingora::proxy::http_proxy_service(
        &server.configuration,
        Passthrough {
            peer: HttpPeer::new(addr, false, String::new()),
        },
    );
    svc.add_tcp(&listen);
    server.add_service(svc);
    server.run_forever();
}
