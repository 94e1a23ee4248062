//! The operations listener: `GET /metrics` (Prometheus text), `/healthz` (alive), `/readyz`
//! (listeners bound, store answers, not draining).

use std::sync::Arc;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::metrics::Metrics;
use crate::store::Store;
use crate::upstream::Upstream;

pub struct AdminApp {
    pub metrics: Arc<Metrics>,
    pub store: Arc<dyn Store>,
    pub upstreams: Arc<Vec<Upstream>>,
    pub lifecycle: Arc<crate::process::Lifecycle>,
}

fn not_ready(reason: &str) -> Response<Vec<u8>> {
    reply(
        StatusCode::SERVICE_UNAVAILABLE,
        "application/json",
        format!(r#"{{"status":"not_ready","reason":"{reason}"}}"#).into_bytes(),
    )
}

fn reply(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("cache-control", "no-store")
        .header("content-length", body.len())
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        if req.method != http::Method::GET {
            return reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "application/json",
                crate::answer::OPERATIONS_ONLY_GET.body.as_bytes().to_vec(),
            );
        }
        match req.uri.path() {
            "/metrics" => {
                for (u, gauge) in self
                    .upstreams
                    .iter()
                    .zip(&self.metrics.upstream_healthy_backends)
                {
                    gauge.set(u.healthy_backends() as i64);
                }
                if let Some(p) = self.store.pool_status() {
                    self.metrics.store_pool_in_use.set(p.in_use as i64);
                    self.metrics.store_pool_idle.set(p.idle as i64);
                    self.metrics.store_pool_waiting.set(p.waiting as i64);
                }
                reply(
                    StatusCode::OK,
                    "text/plain; version=0.0.4",
                    self.metrics.render(),
                )
            }
            "/healthz" => reply(
                StatusCode::OK,
                "application/json",
                br#"{"status":"ok"}"#.to_vec(),
            ),
            "/readyz" => {
                if self.lifecycle.is_draining() {
                    return not_ready("draining");
                }
                if !self.lifecycle.listeners_bound().await {
                    return not_ready("listeners_not_bound");
                }
                match self.store.ping().await {
                    Ok(()) => reply(
                        StatusCode::OK,
                        "application/json",
                        br#"{"status":"ready"}"#.to_vec(),
                    ),
                    // The store's own words (server, database, role, SQLSTATE; never a
                    // password): this listener is for operators, not clients.
                    Err(e) => reply(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "application/json",
                        serde_json::json!({
                            "status": "not_ready",
                            "reason": "store_unavailable",
                            "message": e.cause(),
                        })
                        .to_string()
                        .into_bytes(),
                    ),
                }
            }
            _ => reply(
                StatusCode::NOT_FOUND,
                "application/json",
                crate::answer::OPERATIONS_NOT_FOUND.body.as_bytes().to_vec(),
            ),
        }
    }
}
