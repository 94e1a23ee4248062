//! Every metric, registered once at start-up with its label values resolved to handles.
//!
//! Labels are bounded by construction: kinds, route names from config, status classes and fixed
//! reasons. Never a key, inbox, token or path.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

const PREFIX: &str = "agentry_gateway";
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Management routes, as metric label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManagementRoute {
    ListApiKeys = 0,
    CreateApiKey = 1,
    DeleteApiKey = 2,
    Other = 3,
}
const MANAGEMENT_ROUTES: [&str; 4] = ["list_api_keys", "create_api_key", "delete_api_key", "other"];

/// Why a proxied request was refused before reaching an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    BadRequestTarget = 0,
    MissingAuthorization = 1,
    MalformedKey = 2,
    BadChecksum = 3,
    UnknownKey = 4,
    ForbiddenInbox = 5,
    NoRoute = 6,
    StoreUnavailable = 7,
    DuplicateAuthorization = 8,
    AmbiguousFraming = 9,
    HeadersTooLarge = 10,
    RateLimited = 11,
    UpgradeRefused = 12,
}
const REJECTIONS: [&str; 13] = [
    "bad_request_target",
    "missing_authorization",
    "malformed_key",
    "bad_checksum",
    "unknown_key",
    "forbidden_inbox",
    "no_route",
    "store_unavailable",
    "duplicate_authorization",
    "ambiguous_framing",
    "headers_too_large",
    "rate_limited",
    "upgrade_refused",
];

/// Store operations, as metric label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOp {
    Create = 0,
    List = 1,
    Delete = 2,
    FindByHash = 3,
    RecordUsage = 4,
    Ping = 5,
}
const STORE_OPS: [&str; 6] = [
    "create",
    "list",
    "delete",
    "find_by_hash",
    "record_usage",
    "ping",
];

/// Why talking to an upstream failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamError {
    Refused = 0,
    Reset = 1,
    Timeout = 2,
    NoHealthyBackend = 3,
    Other = 4,
}
const UPSTREAM_ERRORS: [&str; 5] = ["refused", "reset", "timeout", "no_healthy_backend", "other"];

/// Resolved handles for one label set × five status classes.
#[derive(Clone)]
pub struct ByStatusClass([IntCounter; 5]);

impl ByStatusClass {
    fn new(vec: &IntCounterVec, labels: &[&str]) -> ByStatusClass {
        ByStatusClass(std::array::from_fn(|i| {
            let mut l = labels.to_vec();
            l.push(STATUS_CLASSES[i]);
            vec.with_label_values(&l)
        }))
    }

    pub fn inc(&self, status: u16) {
        let i = (status / 100).clamp(1, 5) as usize - 1;
        self.0[i].inc();
    }
}

/// All metric handles of one gateway.
pub struct Metrics {
    registry: Registry,
    pub management_requests: Vec<ByStatusClass>,
    /// Index = route index in config; the last entry is "no route matched".
    pub proxy_requests: Vec<ByStatusClass>,
    pub management_duration: Histogram,
    pub proxy_duration: Histogram,
    pub auth_cache_hits: IntCounter,
    pub auth_cache_misses: IntCounter,
    pub auth_cache_negative_hits: IntCounter,
    rejections: Vec<IntCounter>,
    store_queries: Vec<IntCounter>,
    store_errors: Vec<IntCounter>,
    /// Index = upstream index in config.
    pub upstream_responses: Vec<ByStatusClass>,
    upstream_errors: Vec<Vec<IntCounter>>,
    pub upstream_healthy_backends: Vec<IntGauge>,
    pub usage_pending_marks: IntGauge,
    pub usage_flushes: IntCounter,
    pub usage_flush_failures: IntCounter,
    pub usage_flush_duration: Histogram,
    pub access_log_dropped: IntCounter,
}

fn name(n: &str) -> String {
    format!("{PREFIX}_{n}")
}

impl Metrics {
    /// Registers every metric; `routes` and `upstreams` are the names from config.
    pub fn new(routes: &[String], upstreams: &[String]) -> Metrics {
        let registry = Registry::new();
        let reg = |c: Box<dyn prometheus::core::Collector>| {
            registry
                .register(c)
                .expect("metric names are unique and valid");
        };

        let requests = IntCounterVec::new(
            Opts::new(
                name("requests_total"),
                "Requests answered, by kind, route and status class",
            ),
            &["kind", "route", "status_class"],
        )
        .expect("valid metric");
        reg(Box::new(requests.clone()));
        let management_requests = MANAGEMENT_ROUTES
            .iter()
            .map(|r| ByStatusClass::new(&requests, &["management", r]))
            .collect();
        let proxy_requests = routes
            .iter()
            .map(String::as_str)
            .chain(std::iter::once("none"))
            .map(|r| ByStatusClass::new(&requests, &["proxy", r]))
            .collect();

        let duration = HistogramVec::new(
            HistogramOpts::new(
                name("request_duration_seconds"),
                "Time from request header to the end of the response",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0, 10.0,
            ]),
            &["kind"],
        )
        .expect("valid metric");
        reg(Box::new(duration.clone()));

        let cache = IntCounterVec::new(
            Opts::new(name("auth_cache_total"), "API key cache lookups by result"),
            &["result"],
        )
        .expect("valid metric");
        reg(Box::new(cache.clone()));

        let rejections_vec = IntCounterVec::new(
            Opts::new(
                name("auth_rejections_total"),
                "Proxied requests refused by the gateway, by reason",
            ),
            &["reason"],
        )
        .expect("valid metric");
        reg(Box::new(rejections_vec.clone()));

        let store_q = IntCounterVec::new(
            Opts::new(
                name("store_queries_total"),
                "Store operations, by operation",
            ),
            &["op"],
        )
        .expect("valid metric");
        reg(Box::new(store_q.clone()));
        let store_e = IntCounterVec::new(
            Opts::new(
                name("store_errors_total"),
                "Failed store operations, by operation",
            ),
            &["op"],
        )
        .expect("valid metric");
        reg(Box::new(store_e.clone()));

        let up_resp = IntCounterVec::new(
            Opts::new(
                name("upstream_responses_total"),
                "Upstream responses by upstream and status class",
            ),
            &["upstream", "status_class"],
        )
        .expect("valid metric");
        reg(Box::new(up_resp.clone()));
        let up_err = IntCounterVec::new(
            Opts::new(
                name("upstream_errors_total"),
                "Upstream failures by upstream and reason",
            ),
            &["upstream", "reason"],
        )
        .expect("valid metric");
        reg(Box::new(up_err.clone()));
        let healthy = IntGaugeVec::new(
            Opts::new(
                name("upstream_healthy_backends"),
                "Backends currently passing health checks, per upstream",
            ),
            &["upstream"],
        )
        .expect("valid metric");
        reg(Box::new(healthy.clone()));

        let pending = IntGauge::new(
            name("usage_pending_marks"),
            "Keys whose used_at awaits a flush to the store",
        )
        .expect("valid metric");
        reg(Box::new(pending.clone()));
        let flushes = IntCounter::new(name("usage_flushes_total"), "used_at flushes that wrote")
            .expect("valid metric");
        reg(Box::new(flushes.clone()));
        let flush_failures = IntCounter::new(
            name("usage_flush_failures_total"),
            "used_at flushes that failed (marks kept for retry)",
        )
        .expect("valid metric");
        reg(Box::new(flush_failures.clone()));
        let flush_duration = Histogram::with_opts(
            HistogramOpts::new(
                name("usage_flush_duration_seconds"),
                "Time to write one used_at flush",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
            ]),
        )
        .expect("valid metric");
        reg(Box::new(flush_duration.clone()));
        let dropped = IntCounter::new(
            name("access_log_dropped_total"),
            "Access log lines dropped because the writer fell behind",
        )
        .expect("valid metric");
        reg(Box::new(dropped.clone()));

        Metrics {
            management_requests,
            proxy_requests,
            management_duration: duration.with_label_values(&["management"]),
            proxy_duration: duration.with_label_values(&["proxy"]),
            auth_cache_hits: cache.with_label_values(&["hit"]),
            auth_cache_misses: cache.with_label_values(&["miss"]),
            auth_cache_negative_hits: cache.with_label_values(&["negative_hit"]),
            rejections: REJECTIONS
                .iter()
                .map(|r| rejections_vec.with_label_values(&[r]))
                .collect(),
            store_queries: STORE_OPS
                .iter()
                .map(|o| store_q.with_label_values(&[o]))
                .collect(),
            store_errors: STORE_OPS
                .iter()
                .map(|o| store_e.with_label_values(&[o]))
                .collect(),
            upstream_responses: upstreams
                .iter()
                .map(|u| ByStatusClass::new(&up_resp, &[u]))
                .collect(),
            upstream_errors: upstreams
                .iter()
                .map(|u| {
                    UPSTREAM_ERRORS
                        .iter()
                        .map(|r| up_err.with_label_values(&[u.as_str(), r]))
                        .collect()
                })
                .collect(),
            upstream_healthy_backends: upstreams
                .iter()
                .map(|u| healthy.with_label_values(&[u]))
                .collect(),
            usage_pending_marks: pending,
            usage_flushes: flushes,
            usage_flush_failures: flush_failures,
            usage_flush_duration: flush_duration,
            access_log_dropped: dropped,
            registry,
        }
    }

    pub fn management(&self, route: ManagementRoute) -> &ByStatusClass {
        &self.management_requests[route as usize]
    }

    pub fn reject(&self, r: Rejection) {
        self.rejections[r as usize].inc();
    }

    pub fn store_query(&self, op: StoreOp) {
        self.store_queries[op as usize].inc();
    }

    pub fn store_error(&self, op: StoreOp) {
        self.store_errors[op as usize].inc();
    }

    pub fn upstream_error(&self, upstream: usize, e: UpstreamError) {
        if let Some(u) = self.upstream_errors.get(upstream) {
            u[e as usize].inc();
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(16 * 1024);
        let families = self.registry.gather();
        if let Err(e) = TextEncoder::new().encode(&families, &mut buf) {
            log::error!("encoding metrics failed: {e}");
        }
        buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes_bucket_correctly() {
        let m = Metrics::new(&["inbox".into()], &["up".into()]);
        m.management(ManagementRoute::CreateApiKey).inc(201);
        m.management(ManagementRoute::CreateApiKey).inc(404);
        m.proxy_requests[1].inc(999);
        let text = String::from_utf8(m.render()).unwrap();
        assert!(text.contains(
            "agentry_gateway_requests_total{kind=\"management\",route=\"create_api_key\",status_class=\"2xx\"} 1"
        ));
        assert!(text.contains(
            "agentry_gateway_requests_total{kind=\"management\",route=\"create_api_key\",status_class=\"4xx\"} 1"
        ));
        assert!(text.contains(
            "agentry_gateway_requests_total{kind=\"proxy\",route=\"none\",status_class=\"5xx\"} 1"
        ));
    }
}
