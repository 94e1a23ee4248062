//! The pingora `ProxyHttp` impl: thin; dispatches to the management API or to auth + forward.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType};

use crate::access_log::{AccessLog, AccessRecord};
use crate::auth::limiter::FailureLimiter;
use crate::auth::usage::UsageRecorder;
use crate::auth::verifier::{bearer_credential, AuthFailure, Cached};
use crate::auth::{ApiKeyIdentity, Verifier};
use crate::client_ip::TrustedProxies;
use crate::clock::now_us;
use crate::config::RouteConfig;
use crate::guard::{self, HeaderLimits};
use crate::header_deadline::DeadlineStream;
use crate::management::{routes::is_management_path, ApiResponse, Management};
use crate::metrics::{ManagementRoute, Metrics, Rejection, UpstreamError};
use crate::target::{
    check_request_line, segment_equals, split_target, validate_path, validate_query, TargetError,
};
use crate::upstream::Upstream;

mod answers;
mod request_id;

use answers::*;
pub use request_id::RequestIds;

// Header names are `&'static str` where pingora inserts them: its case-preserving map then
// takes them without allocating (a `HeaderName` would be copied and title-cased per request).
pub const H_API_KEY_ID: &str = "x-agentry-api-key-id";
pub const H_INBOX_ID: &str = "x-agentry-inbox-id";
pub const H_POD_ID: &str = "x-agentry-pod-id";
pub const H_REQUEST_ID: &str = "x-request-id";
const H_FORWARDED_FOR: &str = "x-forwarded-for";
const H_FORWARDED_PROTO: &str = "x-forwarded-proto";
const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");
const NO_STORE: HeaderValue = HeaderValue::from_static("no-store");
const BEARER: HeaderValue = HeaderValue::from_static("Bearer");
const HTTP: HeaderValue = HeaderValue::from_static("http");
const NO_HEALTHY_BACKEND: ErrorType = ErrorType::Custom("no_healthy_backend");

/// The gateway: everything a request needs, built once at start-up.
pub struct Gateway {
    pub management: Management,
    pub verifier: Arc<Verifier>,
    pub usage: Arc<UsageRecorder>,
    pub routes: Vec<RouteConfig>,
    pub upstreams: Arc<Vec<Upstream>>,
    pub metrics: Arc<Metrics>,
    pub access_log: Option<AccessLog>,
    pub request_ids: RequestIds,
    pub header_limits: HeaderLimits,
    pub limiter: FailureLimiter,
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
    retry_after: Option<u64>,
    /// The target held a key: the access log must not print it.
    redact_target: bool,
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

impl Gateway {
    async fn write_json(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        status: u16,
        body: Option<Bytes>,
        www_authenticate: bool,
        allow: Option<&'static str>,
    ) -> Result<()> {
        let mut h = ResponseHeader::build(status, Some(6))?;
        h.insert_header(header::CACHE_CONTROL, NO_STORE)?;
        if let Some(id) = &ctx.request_id {
            h.insert_header(H_REQUEST_ID, id.clone())?;
        }
        if www_authenticate {
            h.insert_header(header::WWW_AUTHENTICATE, BEARER)?;
        }
        if let Some(allow) = allow {
            h.insert_header(header::ALLOW, allow)?;
        }
        if let Some(secs) = ctx.retry_after {
            h.insert_header(header::RETRY_AFTER, secs)?;
        }
        match body {
            Some(body) => {
                h.insert_header(header::CONTENT_TYPE, APPLICATION_JSON)?;
                h.insert_header(header::CONTENT_LENGTH, body.len())?;
                session.write_response_header(Box::new(h), false).await?;
                session.write_response_body(Some(body), true).await?;
            }
            None => {
                session.write_response_header(Box::new(h), true).await?;
            }
        }
        Ok(())
    }

    /// Refuses a request before it reaches any upstream: counts it, writes the JSON error and
    /// closes the connection when asked to or when a body would be left unread.
    async fn refuse(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        reason: Rejection,
        (status, body, www_authenticate): (u16, Bytes, bool),
        close: bool,
    ) -> Result<bool> {
        self.metrics.reject(reason);
        if close || has_body(session.req_header()) {
            // Never leave an unread body behind on a refused request: close instead.
            session.set_keepalive(None);
        }
        if status == 429 {
            ctx.retry_after = Some(self.limiter.retry_after_secs());
        }
        self.write_json(session, ctx, status, Some(body), www_authenticate, None)
            .await?;
        Ok(true)
    }

    /// Refuses a proxied request with a fixed JSON error.
    async fn reject(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        reason: Rejection,
        e: &ProxyError,
    ) -> Result<bool> {
        let answer = (
            e.status,
            Bytes::from_static(e.body.as_bytes()),
            e.www_authenticate,
        );
        self.refuse(session, ctx, reason, answer, false).await
    }

    /// The client's address, honouring `X-Forwarded-For` only from trusted proxies.
    fn client_ip(&self, session: &Session) -> Option<std::net::IpAddr> {
        let peer = match session.client_addr() {
            Some(PingoraAddr::Inet(a)) => a.ip(),
            _ => return None,
        };
        Some(self.trusted_proxies.client_ip(
            peer,
            session.req_header().headers.get_all(H_FORWARDED_FOR).iter(),
        ))
    }

    /// A failed authentication: 429 once the client has failed too often, else `e`.
    async fn auth_failed(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        reason: Rejection,
        e: &ProxyError,
    ) -> Result<bool> {
        if let Some(ip) = self.client_ip(session) {
            if self.limiter.is_blocked(&ip) {
                return self
                    .reject(session, ctx, Rejection::RateLimited, &ERR_RATE_LIMITED)
                    .await;
            }
            self.limiter.record_failure(&ip);
        }
        self.reject(session, ctx, reason, e).await
    }

    fn guard(&self, session: &Session) -> std::result::Result<(), guard::Refusal> {
        let req = session.req_header();
        // The raw head is only needed to see a Content-Length beside Transfer-Encoding.
        let raw = req
            .headers
            .contains_key(header::TRANSFER_ENCODING)
            .then(|| session.as_http1().map(|h1| h1.get_headers_raw_bytes()))
            .flatten();
        guard::check(
            req.version,
            &req.headers,
            raw.as_deref(),
            self.header_limits,
        )
    }

    async fn respond_management(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        r: ApiResponse,
    ) -> Result<bool> {
        ctx.kind = Kind::Management(r.route);
        if r.close {
            session.set_keepalive(None);
        }
        self.write_json(
            session,
            ctx,
            r.status,
            r.body.map(Bytes::from),
            r.www_authenticate,
            r.allow,
        )
        .await?;
        Ok(true)
    }

    /// Authenticates and scopes a validated proxied request whose path is `raw_path()[..path_end]`.
    async fn proxy_request(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        path_end: usize,
    ) -> Result<bool> {
        let credential = match bearer_credential(&session.req_header().headers) {
            Ok(c) => c,
            Err(f) => {
                return self
                    .reject(session, ctx, f.rejection(), auth_answer(f))
                    .await
            }
        };
        let identity = match self.verifier.check_cached(credential).await {
            Ok(Cached::Hit(id)) => Ok(id),
            Ok(Cached::Miss(hash)) => {
                // Only misses reach the store: refuse them from clients that keep failing.
                let blocked = self
                    .client_ip(session)
                    .is_some_and(|ip| self.limiter.is_blocked(&ip));
                if blocked {
                    return self
                        .reject(session, ctx, Rejection::RateLimited, &ERR_RATE_LIMITED)
                        .await;
                }
                self.verifier.load(hash).await
            }
            Err(f) => Err(f),
        };
        let identity = match identity {
            Ok(id) => id,
            // An outage is not the client's failure: it does not count towards its limit.
            Err(f @ AuthFailure::StoreUnavailable) => {
                return self
                    .reject(session, ctx, f.rejection(), auth_answer(f))
                    .await
            }
            Err(f) => {
                return self
                    .auth_failed(session, ctx, f.rejection(), auth_answer(f))
                    .await
            }
        };
        let matched = {
            let path = &session.req_header().raw_path()[..path_end];
            self.routes.iter().enumerate().find_map(|(i, r)| {
                let segment = r.template.match_path(path)?;
                Some((i, segment_equals(segment, identity.inbox_id.as_bytes())))
            })
        };
        let Some((i, in_scope)) = matched else {
            return self
                .reject(session, ctx, Rejection::NoRoute, &ERR_NO_ROUTE)
                .await;
        };
        ctx.route = Some(i);
        if !in_scope {
            return self
                .reject(session, ctx, Rejection::ForbiddenInbox, &ERR_FORBIDDEN)
                .await;
        }
        self.usage.touch(&identity, now_us());
        ctx.upstream = Some(self.routes[i].upstream);
        ctx.identity = Some(identity);
        Ok(false)
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            start: Instant::now(),
            kind: Kind::Unknown,
            route: None,
            upstream: None,
            identity: None,
            request_id: None,
            connect_retries: 0,
            retry_after: None,
            redact_target: false,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.start = Instant::now();
        ctx.request_id = Some(
            self.request_ids
                .pick(session.req_header().headers.get(H_REQUEST_ID)),
        );
        if let Err(refusal) = self.guard(session) {
            ctx.kind = Kind::Proxy;
            let (reason, name) = match refusal.status {
                431 => (
                    Rejection::HeadersTooLarge,
                    "RequestHeaderFieldsTooLargeError",
                ),
                _ if refusal.code == "upgrade_not_supported" => {
                    (Rejection::UpgradeRefused, "BadRequestError")
                }
                _ => (Rejection::AmbiguousFraming, "BadRequestError"),
            };
            let body = error_json(name, refusal.code, refusal.message);
            // Whatever follows an ambiguous head cannot be trusted: close the connection.
            return self
                .refuse(session, ctx, reason, (refusal.status, body, false), true)
                .await;
        }
        // The request line as the client sent it must be what pingora parsed: it drops a
        // `#` fragment and accepts some spaces, and the gateway decides on the target.
        let line = {
            let req = session.req_header();
            session.as_http1().map_or(Ok(()), |h1| {
                let plain = h1
                    .stream()
                    .as_any()
                    .downcast_ref::<DeadlineStream>()
                    .is_none_or(DeadlineStream::request_line_was_plain);
                if !plain {
                    return Err(TargetError::MalformedRequestLine);
                }
                check_request_line(
                    &h1.get_headers_raw_bytes(),
                    req.method.as_str().as_bytes(),
                    req.raw_path(),
                )
            })
        };
        if let Err(e) = line {
            ctx.kind = Kind::Proxy;
            let answer = (400, target_error_body(e), false);
            return self
                .refuse(session, ctx, Rejection::BadRequestTarget, answer, true)
                .await;
        }
        // Work on the target where it lies (no copy on the proxy path): remember where the
        // path ends and the query starts, and borrow the bytes again when needed.
        let split = {
            let raw = session.req_header().raw_path();
            split_target(raw).map(|(path, query)| (path.len(), raw.len() - query.len()))
        };
        let (path_end, query_start) = match split {
            Ok(bounds) => bounds,
            Err(e) => {
                ctx.kind = Kind::Proxy;
                let answer = (400, target_error_body(e), false);
                return self
                    .refuse(session, ctx, Rejection::BadRequestTarget, answer, true)
                    .await;
            }
        };
        // A key anywhere in the URL, however encoded, ends up in upstream and proxy logs:
        // refuse it (on every path, management included) and never log the target.
        let key_in_url = {
            let raw = session.req_header().raw_path();
            let format = self.verifier.key_format();
            if format.appears_in_url(&raw[..path_end]) {
                Some(&ERR_KEY_IN_PATH)
            } else if format.appears_in_url(&raw[query_start..]) {
                Some(&ERR_KEY_IN_QUERY)
            } else {
                None
            }
        };
        if let Some(err) = key_in_url {
            ctx.kind = Kind::Proxy;
            ctx.redact_target = true;
            return self
                .reject(session, ctx, Rejection::BadRequestTarget, err)
                .await;
        }
        if is_management_path(&session.req_header().raw_path()[..path_end]) {
            let raw = session.req_header().raw_path().to_vec();
            let (path, query) = (&raw[..path_end], &raw[query_start..]);
            let ip = self.client_ip(session);
            if ip.is_some_and(|ip| self.limiter.is_blocked(&ip)) {
                ctx.kind = Kind::Management(ManagementRoute::Other);
                return self
                    .reject(session, ctx, Rejection::RateLimited, &ERR_RATE_LIMITED)
                    .await;
            }
            let r = self.management.handle(session, path, query).await;
            if r.status == 401 {
                if let Some(ip) = ip {
                    self.limiter.record_failure(&ip);
                }
            }
            return self.respond_management(session, ctx, r).await;
        }
        ctx.kind = Kind::Proxy;
        let valid = {
            let raw = session.req_header().raw_path();
            validate_path(&raw[..path_end]).and_then(|_| validate_query(&raw[query_start..]))
        };
        match valid {
            Err(e) => {
                let answer = (400, target_error_body(e), false);
                self.refuse(session, ctx, Rejection::BadRequestTarget, answer, false)
                    .await
            }
            Ok(()) => self.proxy_request(session, ctx, path_end).await,
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
            .is_some_and(|u| self.upstreams[u].lb.backends().get_backend().len() > 1);
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
        req.remove_header(&header::AUTHORIZATION);
        req.remove_header(&header::PROXY_AUTHORIZATION);
        // Hop-by-hop: a client's `Connection: x-agentry-...` must not nominate our headers.
        req.remove_header(&header::CONNECTION);
        let spoofed: Vec<HeaderName> = req
            .headers
            .keys()
            .filter(|n| is_identity_namespace(n))
            .cloned()
            .collect();
        for name in &spoofed {
            req.remove_header(name);
        }
        req.insert_header(H_API_KEY_ID, id.api_key_id.clone())?;
        req.insert_header(H_INBOX_ID, id.inbox_id.clone())?;
        if let Some(pod) = &id.pod_id {
            req.insert_header(H_POD_ID, pod.clone())?;
        }
        if let Some(PingoraAddr::Inet(addr)) = session.client_addr() {
            let xff = self
                .trusted_proxies
                .forwarded_for(addr.ip(), req.headers.get_all(H_FORWARDED_FOR).iter());
            req.insert_header(H_FORWARDED_FOR, xff)?;
        } else {
            req.remove_header(H_FORWARDED_FOR);
        }
        req.insert_header(H_FORWARDED_PROTO, HTTP)?;
        if let Some(rid) = &ctx.request_id {
            req.insert_header(H_REQUEST_ID, rid.clone())?;
        }
        Ok(())
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
            resp.insert_header(H_REQUEST_ID, rid.clone())?;
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        use ErrorType::*;
        let (err, reason) = match e.etype() {
            t if *t == NO_HEALTHY_BACKEND => {
                (Some(&ERR_NO_BACKEND), UpstreamError::NoHealthyBackend)
            }
            ConnectTimedout | ReadTimedout | WriteTimedout => {
                (Some(&ERR_GATEWAY_TIMEOUT), UpstreamError::Timeout)
            }
            ConnectRefused => (Some(&ERR_BAD_GATEWAY), UpstreamError::Refused),
            ConnectionClosed | ReadError | WriteError if e.esource() == &ErrorSource::Upstream => {
                (Some(&ERR_BAD_GATEWAY), UpstreamError::Reset)
            }
            _ => match e.esource() {
                ErrorSource::Upstream => (Some(&ERR_BAD_GATEWAY), UpstreamError::Other),
                ErrorSource::Downstream => match e.etype() {
                    WriteError | ReadError | ConnectionClosed => (None, UpstreamError::Other),
                    _ => (Some(&ERR_BAD_REQUEST), UpstreamError::Other),
                },
                _ => (Some(&ERR_INTERNAL), UpstreamError::Other),
            },
        };
        if e.esource() == &ErrorSource::Upstream || *e.etype() == NO_HEALTHY_BACKEND {
            if let Some(u) = ctx.upstream {
                self.metrics.upstream_error(u, reason);
            }
        }
        let code = err.map_or(0, |x| x.status);
        if let Some(err) = err {
            if session.response_written().is_none() {
                let body = Some(Bytes::from_static(err.body.as_bytes()));
                if let Err(we) = self
                    .write_json(session, ctx, err.status, body, false, None)
                    .await
                {
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
                let i = ctx.route.unwrap_or(self.routes.len());
                self.metrics.proxy_requests[i].inc(status);
                self.metrics.proxy_duration.observe(elapsed.as_secs_f64());
            }
        }
        if let Some(log) = &self.access_log {
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
