//! The pingora `ProxyHttp` impl: thin; dispatches to the management API or to auth + forward.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{self, Entry, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType};

use crate::access_log::{AccessLog, AccessRecord};
use crate::answer::{self, Answer, Body, IntoAnswer};
use crate::auth::usage::UsageRecorder;
use crate::auth::{ApiKeyIdentity, ClientAddr, Verifier};
use crate::client_ip::TrustedProxies;
use crate::clock::now_us;
use crate::header_deadline::DeadlineStream;
use crate::management::{BodySource, Management, PlainRequest};
use crate::metrics::{ManagementRoute, Metrics, Rejection};
use crate::request_target::{RequestTarget, Routed};
use crate::upstream::Upstream;

mod answers;
mod headers;
pub mod live;
pub mod pipeline;
mod request_id;

use answers::{classify, has_body, NO_HEALTHY_BACKEND};
pub use live::{Live, SharedLive};
pub use pipeline::{Http1Head, Pipeline, PlainHead};
pub use request_id::RequestIds;

// Prebuilt names: inserted into the `http` map directly (see `headers`), they cost nothing.
pub const H_API_KEY_ID: HeaderName = HeaderName::from_static("x-agentry-api-key-id");
pub const H_INBOX_ID: HeaderName = HeaderName::from_static("x-agentry-inbox-id");
pub const H_POD_ID: HeaderName = HeaderName::from_static("x-agentry-pod-id");
pub const H_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const H_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const H_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");
const NO_STORE: HeaderValue = HeaderValue::from_static("no-store");
const BEARER: HeaderValue = HeaderValue::from_static("Bearer");
const HTTP: HeaderValue = HeaderValue::from_static("http");
const HTTPS: HeaderValue = HeaderValue::from_static("https");

/// The gateway: everything a request needs, built once at start-up.
pub struct Gateway {
    pub management: Management,
    pub verifier: Arc<Verifier>,
    pub usage: Arc<UsageRecorder>,
    /// The decision steps before the upstream (router, routes, head limits) and what else a
    /// reload replaces.
    pub live: SharedLive,
    /// Requests in flight, for the drain and the early exit.
    pub lifecycle: Arc<crate::process::Lifecycle>,
    pub upstreams: Arc<Vec<Upstream>>,
    pub metrics: Arc<Metrics>,
    /// Writes lines while `live.access_log` is on.
    pub access_log: AccessLog,
    pub request_ids: RequestIds,
    pub trusted_proxies: TrustedProxies,
}

/// What kind of request this is, once known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Unknown,
    Management(ManagementRoute),
    Proxy,
}

/// Per-request state.
pub struct RequestCtx {
    start: Instant,
    kind: Kind,
    route: Option<usize>,
    upstream: Option<usize>,
    identity: Option<Arc<ApiKeyIdentity>>,
    request_id: Option<HeaderValue>,
    connect_retries: u8,
    /// The target held a key: the access log must not print it.
    redact_target: bool,
    /// The route table (and what else reloads) this request was decided on.
    live: Arc<Live>,
    _in_flight: crate::process::InFlight,
}

/// Whether a header name, with `_` read as `-`, is in the gateway's `x-agentry-` namespace.
fn is_identity_namespace(name: &HeaderName) -> bool {
    let n = name.as_str().as_bytes();
    n.len() >= 10
        && n[..10]
            .iter()
            .map(|&b| if b == b'_' { b'-' } else { b })
            .eq(b"x-agentry-".iter().copied())
}

/// The address of the connection's other end (none on a Unix socket).
fn peer_ip(session: &Session) -> Option<std::net::IpAddr> {
    match session.client_addr() {
        Some(PingoraAddr::Inet(a)) => Some(a.ip()),
        _ => None,
    }
}

/// The pingora session as a management [`BodySource`].
struct SessionBody<'a>(&'a mut Session);

#[async_trait]
impl BodySource for SessionBody<'_> {
    async fn next_chunk(&mut self) -> std::result::Result<Option<Bytes>, String> {
        self.0
            .read_request_body()
            .await
            .map_err(|e| format!("{:?}", e.etype()))
    }
}

/// What the request filter decided: forward upstream, or answer here.
type Decision = std::result::Result<(), Answer>;

impl Gateway {
    /// Writes an answer of the gateway's own: counts its refusal reason, sets the standard
    /// headers, and closes the connection when asked to or when a refused request's body
    /// would be left unread. The one writer of every gateway-made response.
    async fn send(&self, session: &mut Session, ctx: &RequestCtx, a: Answer) -> Result<()> {
        if let Some(reason) = a.reason {
            self.metrics.reject(reason);
        }
        if a.close || (a.reason.is_some() && has_body(session.req_header())) {
            session.set_keepalive(None);
        }
        let mut parts = headers::own_response(a.status, 6)?;
        let h = &mut parts.headers;
        h.insert(header::CACHE_CONTROL, NO_STORE);
        if let Some(id) = &ctx.request_id {
            h.insert(H_REQUEST_ID, id.clone());
        }
        if a.www_authenticate {
            h.insert(header::WWW_AUTHENTICATE, BEARER);
        }
        if let Some(allow) = a.allow.clone() {
            h.insert(header::ALLOW, allow);
        }
        if let Some(secs) = a.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        let body = match a.body {
            Body::Empty => None,
            Body::Static(s) => Some(Bytes::from_static(s.as_bytes())),
            Body::Owned(v) => Some(Bytes::from(v)),
        };
        match body {
            Some(body) => {
                h.insert(header::CONTENT_TYPE, APPLICATION_JSON);
                h.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
                session
                    .write_response_header(Box::new(parts.into()), false)
                    .await?;
                session.write_response_body(Some(body), true).await?;
            }
            None => {
                session
                    .write_response_header(Box::new(parts.into()), true)
                    .await?
            }
        }
        Ok(())
    }

    /// The client's address, honouring `X-Forwarded-For` only from trusted proxies; worked
    /// out only if the verifier asks (a cache hit does not).
    fn client_ip<'a>(&'a self, session: &'a Session) -> impl ClientAddr + 'a {
        let peer = peer_ip(session);
        let headers = &session.req_header().headers;
        move || {
            peer.map(|p| {
                self.trusted_proxies
                    .client_ip(p, headers.get_all(H_FORWARDED_FOR).iter())
            })
        }
    }

    /// The pingora request as the plain head the decision steps read.
    fn plain_head<'a>(session: &'a Session, raw: Option<&'a [u8]>) -> PlainHead<'a> {
        let req = session.req_header();
        // The stream's own view of the request line: pingora rewrites some lines before it
        // parses them, so only the bytes as they arrived tell (see `header_deadline`).
        let line_plain = session.as_http1().is_none_or(|h1| {
            h1.stream()
                .as_any()
                .downcast_ref::<DeadlineStream>()
                .is_none_or(DeadlineStream::request_line_was_plain)
        });
        PlainHead {
            method: &req.method,
            version: req.version,
            target: req.raw_path(),
            headers: &req.headers,
            http1: raw.map(|raw| Http1Head { raw, line_plain }),
        }
    }

    /// The request as plain data for the management handlers.
    fn plain_request(&self, session: &Session, target: &RequestTarget<'_>) -> PlainRequest {
        let h = session.req_header();
        PlainRequest {
            method: h.method.clone(),
            path: target.path().to_vec(),
            query: target.query().to_vec(),
            headers: h.headers.clone(),
            client: self.client_ip(session).ip(),
        }
    }

    /// A management request, answered here from plain inputs.
    async fn management(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        req: PlainRequest,
    ) -> Answer {
        let r = self
            .management
            .handle(&req, &mut SessionBody(session))
            .await;
        ctx.kind = Kind::Management(r.route);
        r.answer
    }

    /// A call of the key-managed API: authenticated like any proxied request (limiter,
    /// expiry), then answered here from the gateway's own store, never forwarded.
    async fn key_management(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        req: PlainRequest,
    ) -> Answer {
        ctx.kind = Kind::Management(ManagementRoute::Other);
        let identity = match self
            .verifier
            .authenticate(&req.headers, self.client_ip(session))
            .await
        {
            Ok(id) => id,
            Err(f) => return f.into_answer(),
        };
        let r = self
            .management
            .handle_by_key(&req, &mut SessionBody(session), &identity)
            .await;
        ctx.kind = Kind::Management(r.route);
        self.usage.touch(&identity, now_us());
        ctx.identity = Some(identity);
        r.answer
    }

    /// Every step before the upstream, in order; `Err` is the gateway's own answer.
    async fn decide(&self, session: &mut Session, ctx: &mut RequestCtx) -> Decision {
        // The raw head is kept by pingora as shared bytes: a reference count, not a copy.
        let raw = session.as_http1().map(|h1| h1.get_headers_raw_bytes());
        let head = Self::plain_head(session, raw.as_deref());
        let live = ctx.live.clone();
        let routing = match live.pipeline.route(&head) {
            Ok(r) => r,
            Err(refused) => {
                ctx.redact_target = refused.redact_target;
                return Err(refused.answer);
            }
        };
        let (route, inbox) = match routing.routed {
            Routed::Human(_) => {
                let req = self.plain_request(session, &routing.target);
                return Err(self.management(session, ctx, req).await);
            }
            Routed::KeyApi(_) => {
                let req = self.plain_request(session, &routing.target);
                return Err(self.key_management(session, ctx, req).await);
            }
            Routed::Proxy { route, inbox } => (Some(route), inbox),
            Routed::NoRoute => (None, &[][..]),
        };
        let req = session.req_header();
        // Authenticated before "no route": a client without a key learns nothing of the routes.
        let identity = self
            .verifier
            .authenticate(&req.headers, self.client_ip(session))
            .await?;
        let route =
            route.ok_or_else(|| answer::ROUTE_NOT_FOUND.answer().because(Rejection::NoRoute))?;
        ctx.route = Some(route);
        let upstream =
            live.pipeline
                .authorize(route, inbox, &req.method, identity.as_ref().into())?;
        self.usage.touch(&identity, now_us());
        ctx.upstream = Some(upstream);
        ctx.identity = Some(identity);
        Ok(())
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    /// No downstream modules. pingora's default adds a response-compression module at level 0
    /// (off), which still runs on every request: five allocations per request for nothing.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            start: Instant::now(),
            kind: Kind::Unknown,
            route: None,
            upstream: None,
            identity: None,
            request_id: None,
            connect_retries: 0,
            redact_target: false,
            live: self.live.load_full(),
            _in_flight: self.lifecycle.request_started(),
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.request_id = Some(
            self.request_ids
                .pick(session.req_header().headers.get(H_REQUEST_ID)),
        );
        match self.decide(session, ctx).await {
            Ok(()) => Ok(false),
            Err(answer) => {
                self.send(session, ctx, answer).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let u = ctx
            .upstream
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no upstream chosen"))?;
        self.upstreams[u]
            .peer()
            .ok_or_else(|| Error::explain(NO_HEALTHY_BACKEND, "no healthy upstream address"))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // One retry on another address: covers the window before a health check notices.
        let many = ctx
            .upstream
            .is_some_and(|u| self.upstreams[u].addresses() > 1);
        if many && ctx.connect_retries == 0 {
            ctx.connect_retries += 1;
            e.set_retry(true);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(id) = ctx.identity.as_ref() else {
            return Error::e_explain(ErrorType::InternalError, "unauthenticated request upstream");
        };
        // The listener's own scheme, per connection: TLS is terminated here or not at all.
        let proto = if session.digest().is_some_and(|d| d.ssl_digest.is_some()) {
            HTTPS
        } else {
            HTTP
        };
        let client = peer_ip(session);
        headers::edit_request(req, |req| {
            let h = &mut req.headers;
            h.remove(header::AUTHORIZATION);
            h.remove(header::PROXY_AUTHORIZATION);
            // Hop-by-hop: a client's `Connection: x-agentry-...` must not nominate our headers.
            h.remove(header::CONNECTION);
            let spoofed: Vec<HeaderName> = h
                .keys()
                .filter(|n| is_identity_namespace(n))
                .cloned()
                .collect();
            for name in &spoofed {
                h.remove(name);
            }
            h.reserve(6);
            h.insert(H_API_KEY_ID, id.api_key_id.header_value());
            h.insert(H_INBOX_ID, id.inbox.inbox_id.clone());
            if let Some(pod) = &id.inbox.pod_id {
                h.insert(H_POD_ID, pod.clone());
            }
            match client {
                // One lookup for reading the client's chain and replacing it.
                Some(ip) => match h.entry(H_FORWARDED_FOR) {
                    Entry::Occupied(mut e) => {
                        let xff = self.trusted_proxies.forwarded_for(ip, e.iter());
                        e.insert(xff);
                    }
                    Entry::Vacant(e) => {
                        e.insert(self.trusted_proxies.forwarded_for(ip, std::iter::empty()));
                    }
                },
                None => {
                    h.remove(H_FORWARDED_FOR);
                }
            }
            h.insert(H_FORWARDED_PROTO, proto);
            if let Some(rid) = &ctx.request_id {
                h.insert(H_REQUEST_ID, rid.clone());
            }
        })
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(u) = ctx.upstream {
            self.metrics.upstream_responses[u].inc(resp.status.as_u16());
        }
        if let Some(rid) = &ctx.request_id {
            headers::edit_response(resp, |r| r.headers.insert(H_REQUEST_ID, rid.clone()))?;
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let failure = classify(e.etype(), e.esource());
        if let (Some(reason), Some(u)) = (failure.upstream, ctx.upstream) {
            self.metrics.upstream_error(u, reason);
        }
        let code = failure.answer.map_or(0, |a| a.status);
        if let Some(fixed) = failure.answer {
            if session.response_written().is_none() {
                if let Err(we) = self.send(session, ctx, fixed.answer()).await {
                    log::debug!("could not write error response: {we}");
                }
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let elapsed = ctx.start.elapsed();
        match ctx.kind {
            Kind::Management(route) => {
                self.metrics.management(route).inc(status);
                self.metrics
                    .management_duration
                    .observe(elapsed.as_secs_f64());
            }
            Kind::Proxy | Kind::Unknown => {
                let live = &ctx.live;
                let i = ctx.route.unwrap_or(live.pipeline.routes.len());
                live.route_requests[i].inc(status);
                self.metrics.proxy_duration.observe(elapsed.as_secs_f64());
            }
        }
        if ctx.live.access_log {
            let log = &self.access_log;
            let req = session.req_header();
            let raw = req.raw_path();
            // The query is never logged: clients do put secrets there.
            let path = raw.split(|&b| b == b'?').next().unwrap_or(raw);
            let path = if ctx.redact_target {
                "<redacted: credential in URL>".to_owned()
            } else {
                String::from_utf8_lossy(path).into_owned()
            };
            log.send(AccessRecord {
                method: req.method.clone(),
                path,
                status,
                micros: elapsed.as_micros() as u64,
                api_key_id: ctx.identity.as_ref().map(|i| i.api_key_id.clone()),
                request_id: ctx.request_id.clone(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_namespace_matches_all_spellings() {
        for n in [
            "x-agentry-inbox-id",
            "x_agentry_inbox_id",
            "x-agentry_inbox-id",
            "x-agentry-anything",
        ] {
            assert!(
                is_identity_namespace(&HeaderName::from_bytes(n.as_bytes()).unwrap()),
                "{n}"
            );
        }
        for n in ["x-agentryinbox", "x-request-id", "agentry-inbox-id"] {
            assert!(
                !is_identity_namespace(&HeaderName::from_bytes(n.as_bytes()).unwrap()),
                "{n}"
            );
        }
    }
}
