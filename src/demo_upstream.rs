//! A tiny stand-in for an inbox service, for trying the proxy path (`run --demo-upstream`).
//!
//! It answers every request with 200 and a JSON echo of what the gateway forwarded: the method,
//! the path (never the query) and the identity headers. Not for production.

use std::net::SocketAddr;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora::services::listening::Service;

use crate::proxy::{H_API_KEY_ID, H_INBOX_ID, H_POD_ID};

/// The demo upstream's app.
pub struct DemoUpstream;

#[async_trait]
impl ServeHttp for DemoUpstream {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let header = |name: http::header::HeaderName| {
            req.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let body = serde_json::json!({
            "demo_upstream": true,
            "method": req.method.as_str(),
            "path": req.uri.path(),
            "api_key_id": header(H_API_KEY_ID),
            "inbox_id": header(H_INBOX_ID),
            "pod_id": header(H_POD_ID),
        });
        let body = serde_json::to_vec(&body).unwrap_or_default();
        Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .header("content-length", body.len())
            .body(body)
            .unwrap_or_else(|_| Response::new(Vec::new()))
    }
}

/// A listening service answering as the demo upstream on each of `addrs`.
pub fn service(addrs: &[SocketAddr]) -> Service<DemoUpstream> {
    let mut s = Service::new("demo upstream".to_owned(), DemoUpstream);
    for a in addrs {
        s.add_tcp(&a.to_string());
    }
    s.threads = Some(1);
    s
}
