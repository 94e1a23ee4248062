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

/// A closed set of label values: each variant names its own label, and `ALL` lists every
/// variant, so a handle table built from `ALL` and indexed by `index()` cannot drift.
pub trait Label: Copy + Eq + 'static {
    const ALL: &'static [Self];
    fn label(self) -> &'static str;
    /// Position in `ALL`.
    fn index(self) -> usize;
}

/// Declares a label enum with its label strings; `ALL` follows the declaration order.
macro_rules! label_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $label:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name { $($variant),+ }
        impl Label for $name {
            const ALL: &'static [Self] = &[$($name::$variant),+];
            fn label(self) -> &'static str {
                match self { $($name::$variant => $label),+ }
            }
            fn index(self) -> usize {
                self as usize
            }
        }
    };
}

label_enum!(
    /// Management routes, as metric label values.
    ManagementRoute {
        ListApiKeys => "list_api_keys",
        CreateApiKey => "create_api_key",
        DeleteApiKey => "delete_api_key",
        UpdateApiKey => "update_api_key",
        Other => "other",
    }
);

label_enum!(
    /// Why a request was refused by the gateway itself.
    Rejection {
        BadRequestTarget => "bad_request_target",
        MissingAuthorization => "missing_authorization",
        MalformedKey => "malformed_key",
        BadChecksum => "bad_checksum",
        UnknownKey => "unknown_key",
        ForbiddenInbox => "forbidden_inbox",
        NoRoute => "no_route",
        StoreUnavailable => "store_unavailable",
        DuplicateAuthorization => "duplicate_authorization",
        AmbiguousFraming => "ambiguous_framing",
        HeadersTooLarge => "headers_too_large",
        RateLimited => "rate_limited",
        UpgradeRefused => "upgrade_refused",
        Expired => "expired",
        InsufficientPermission => "insufficient_permission",
        MethodNotAllowed => "method_not_allowed",
        NonCanonicalTarget => "non_canonical_target",
        MethodOverride => "method_override",
    }
);

label_enum!(
    /// Store operations, as metric label values.
    StoreOp {
        Create => "create",
        List => "list",
        Delete => "delete",
        FindByHash => "find_by_hash",
        RecordUsage => "record_usage",
        Ping => "ping",
        Update => "update",
        Get => "get",
    }
);

label_enum!(
    /// Why talking to an upstream failed.
    UpstreamError {
        Refused => "refused",
        Reset => "reset",
        Timeout => "timeout",
        Tls => "tls",
        NoHealthyBackend => "no_healthy_backend",
        Other => "other",
    }
);

label_enum!(
    /// How a TLS handshake with a client ended.
    TlsHandshake {
        Ok => "ok",
        Failed => "failed",
        TimedOut => "timeout",
    }
);

label_enum!(
    /// What a check of changed certificate files did.
    TlsReload {
        Rotated => "rotated",
        Refused => "refused",
    }
);

/// One handle per value of `L`, with `prefix` labels before it, indexed by `L::index()`.
fn handles<L: Label>(vec: &IntCounterVec, prefix: &[&str]) -> Vec<IntCounter> {
    L::ALL
        .iter()
        .map(|v| {
            let mut labels = prefix.to_vec();
            labels.push(v.label());
            vec.with_label_values(&labels)
        })
        .collect()
}

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
    /// `requests_total`, for the route handles of a reloaded route table.
    requests: IntCounterVec,
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
    /// Re-resolutions of an upstream's DNS names that failed (the name keeps its last addresses).
    pub upstream_resolve_failures: Vec<IntCounter>,
    pub usage_pending_marks: IntGauge,
    pub usage_flushes: IntCounter,
    pub usage_flush_failures: IntCounter,
    pub usage_flush_duration: Histogram,
    pub access_log_dropped: IntCounter,
    pub revocation_lag: Histogram,
    pub revocation_events: IntCounter,
    pub revocation_listener_up: IntGauge,
    pub store_pool_in_use: IntGauge,
    pub store_pool_idle: IntGauge,
    pub store_pool_waiting: IntGauge,
    /// The serving certificate's notAfter (Unix seconds); absent without TLS.
    tls_cert_expiry: IntGauge,
    tls_cert_expiry_shown: std::sync::atomic::AtomicBool,
    tls_handshakes: Vec<IntCounter>,
    tls_reloads: Vec<IntCounter>,
}

/// Registers a metric: the one place a bad definition (a bug, caught by the first test run)
/// would stop start-up.
fn register<C>(registry: &Registry, metric: prometheus::Result<C>) -> C
where
    C: prometheus::core::Collector + Clone + 'static,
{
    metric
        .and_then(|m| registry.register(Box::new(m.clone())).map(|()| m))
        .expect("metric definitions are valid and their names unique")
}

fn name(n: &str) -> String {
    format!("{PREFIX}_{n}")
}

/// Per-route request counters; index = route index, the last is "no route matched".
fn route_requests(requests: &IntCounterVec, routes: &[String]) -> Vec<ByStatusClass> {
    routes
        .iter()
        .map(String::as_str)
        .chain(std::iter::once("none"))
        .map(|r| ByStatusClass::new(requests, &["proxy", r]))
        .collect()
}

impl Metrics {
    /// The route handles for a route table loaded after start-up (SIGHUP).
    pub fn route_requests(&self, routes: &[String]) -> Vec<ByStatusClass> {
        route_requests(&self.requests, routes)
    }

    /// For metrics registered outside this module (the config reload's).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Registers every metric; `routes` and `upstreams` are the names from config.
    pub fn new(routes: &[String], upstreams: &[String]) -> Metrics {
        let registry = Registry::new();

        let requests = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    name("requests_total"),
                    "Requests answered, by kind, route and status class",
                ),
                &["kind", "route", "status_class"],
            ),
        );
        let management_requests = ManagementRoute::ALL
            .iter()
            .map(|r| ByStatusClass::new(&requests, &["management", r.label()]))
            .collect();
        let proxy_requests = route_requests(&requests, routes);

        let duration = register(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    name("request_duration_seconds"),
                    "Time from request header to the end of the response",
                )
                .buckets(vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0, 2.5, 5.0, 10.0,
                ]),
                &["kind"],
            ),
        );

        let cache = register(
            &registry,
            IntCounterVec::new(
                Opts::new(name("auth_cache_total"), "API key cache lookups by result"),
                &["result"],
            ),
        );

        let rejections_vec = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    name("auth_rejections_total"),
                    "Proxied requests refused by the gateway, by reason",
                ),
                &["reason"],
            ),
        );

        let store_q = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    name("store_queries_total"),
                    "Store operations, by operation",
                ),
                &["op"],
            ),
        );
        let store_e = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    name("store_errors_total"),
                    "Failed store operations, by operation",
                ),
                &["op"],
            ),
        );

        let up_resp = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    name("upstream_responses_total"),
                    "Upstream responses by upstream and status class",
                ),
                &["upstream", "status_class"],
            ),
        );
        let up_err = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    name("upstream_errors_total"),
                    "Upstream failures by upstream and reason",
                ),
                &["upstream", "reason"],
            ),
        );
        let healthy = register(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    name("upstream_healthy_backends"),
                    "Backends currently passing health checks, per upstream",
                ),
                &["upstream"],
            ),
        );
        let resolve_failures = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    name("upstream_resolve_failures_total"),
                    "Resolutions of an upstream's DNS names that failed (each keeps its last addresses)",
                ),
                &["upstream"],
            ),
        );

        let pending = register(
            &registry,
            IntGauge::new(
                name("usage_pending_marks"),
                "Keys whose used_at awaits a flush to the store",
            ),
        );
        let flushes = register(
            &registry,
            IntCounter::new(name("usage_flushes_total"), "used_at flushes that wrote"),
        );
        let flush_failures = register(
            &registry,
            IntCounter::new(
                name("usage_flush_failures_total"),
                "used_at flushes that failed (marks kept for retry)",
            ),
        );
        let flush_duration = register(
            &registry,
            Histogram::with_opts(
                HistogramOpts::new(
                    name("usage_flush_duration_seconds"),
                    "Time to write one used_at flush",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
                ]),
            ),
        );
        let dropped = register(
            &registry,
            IntCounter::new(
                name("access_log_dropped_total"),
                "Access log lines dropped because the writer fell behind",
            ),
        );

        let revocation_lag = register(
            &registry,
            Histogram::with_opts(
                HistogramOpts::new(
                    name("revocation_lag_seconds"),
                    "From a key change's commit (its log entry's time) to its eviction here",
                )
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
                ]),
            ),
        );
        let revocation_events = register(
            &registry,
            IntCounter::new(
                name("revocation_events_total"),
                "Key changes from the shared revocation log applied to this instance's caches",
            ),
        );
        let revocation_listener_up = register(
            &registry,
            IntGauge::new(
                name("revocation_listener_up"),
                "1 while this instance follows the shared revocation log (PostgreSQL store)",
            ),
        );
        let pool = register(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    name("store_pool_connections"),
                    "Store connections: in use, idle, and callers waiting for one",
                ),
                &["state"],
            ),
        );
        let tls_handshakes = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    name("tls_handshakes_total"),
                    "TLS handshakes with clients, by result",
                ),
                &["result"],
            ),
        );
        let tls_reloads = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    name("tls_cert_reloads_total"),
                    "Changed certificate files found: put in service, or refused (the old pair stays)",
                ),
                &["result"],
            ),
        );
        let tls_cert_expiry = IntGauge::new(
            name("tls_cert_expiry_timestamp_seconds"),
            "When the certificate served to clients expires (Unix time)",
        );

        Metrics {
            tls_cert_expiry: tls_cert_expiry.expect("metric definitions are valid"),
            tls_cert_expiry_shown: Default::default(),
            tls_handshakes: handles::<TlsHandshake>(&tls_handshakes, &[]),
            tls_reloads: handles::<TlsReload>(&tls_reloads, &[]),
            revocation_lag,
            revocation_events,
            revocation_listener_up,
            store_pool_in_use: pool.with_label_values(&["in_use"]),
            store_pool_idle: pool.with_label_values(&["idle"]),
            store_pool_waiting: pool.with_label_values(&["waiting"]),
            management_requests,
            proxy_requests,
            requests,
            management_duration: duration.with_label_values(&["management"]),
            proxy_duration: duration.with_label_values(&["proxy"]),
            auth_cache_hits: cache.with_label_values(&["hit"]),
            auth_cache_misses: cache.with_label_values(&["miss"]),
            auth_cache_negative_hits: cache.with_label_values(&["negative_hit"]),
            rejections: handles::<Rejection>(&rejections_vec, &[]),
            store_queries: handles::<StoreOp>(&store_q, &[]),
            store_errors: handles::<StoreOp>(&store_e, &[]),
            upstream_responses: upstreams
                .iter()
                .map(|u| ByStatusClass::new(&up_resp, &[u]))
                .collect(),
            upstream_errors: upstreams
                .iter()
                .map(|u| handles::<UpstreamError>(&up_err, &[u.as_str()]))
                .collect(),
            upstream_healthy_backends: upstreams
                .iter()
                .map(|u| healthy.with_label_values(&[u]))
                .collect(),
            upstream_resolve_failures: upstreams
                .iter()
                .map(|u| resolve_failures.with_label_values(&[u]))
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
        &self.management_requests[route.index()]
    }

    pub fn tls_handshake(&self, r: TlsHandshake) {
        self.tls_handshakes[r.index()].inc();
    }

    pub fn tls_reload(&self, r: TlsReload) {
        self.tls_reloads[r.index()].inc();
    }

    /// Shows the serving certificate's expiry; the series exists only once TLS is on.
    pub fn set_tls_cert_expiry(&self, not_after: i64) {
        if !self
            .tls_cert_expiry_shown
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            register(&self.registry, Ok(self.tls_cert_expiry.clone()));
        }
        self.tls_cert_expiry.set(not_after);
    }

    pub fn reject(&self, r: Rejection) {
        self.rejections[r.index()].inc();
    }

    pub fn store_query(&self, op: StoreOp) {
        self.store_queries[op.index()].inc();
    }

    pub fn store_error(&self, op: StoreOp) {
        self.store_errors[op.index()].inc();
    }

    pub fn upstream_error(&self, upstream: usize, e: UpstreamError) {
        if let Some(u) = self.upstream_errors.get(upstream) {
            u[e.index()].inc();
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

    fn labels_are_in_order<L: Label + std::fmt::Debug>() {
        for (i, v) in L::ALL.iter().enumerate() {
            assert_eq!(v.index(), i, "{v:?}");
        }
        let mut names: Vec<&str> = L::ALL.iter().map(|v| v.label()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), L::ALL.len());
    }

    #[test]
    fn every_label_is_its_own_series() {
        labels_are_in_order::<ManagementRoute>();
        labels_are_in_order::<Rejection>();
        labels_are_in_order::<StoreOp>();
        labels_are_in_order::<UpstreamError>();
        let m = Metrics::new(&[], &["up".into()]);
        for r in Rejection::ALL {
            m.reject(*r);
        }
        m.reject(Rejection::RateLimited);
        m.upstream_error(0, UpstreamError::Timeout);
        let text = String::from_utf8(m.render()).unwrap();
        assert!(text.contains(r#"agentry_gateway_auth_rejections_total{reason="rate_limited"} 2"#));
        assert!(text.contains(r#"agentry_gateway_auth_rejections_total{reason="no_route"} 1"#));
        assert!(text.contains(
            r#"agentry_gateway_upstream_errors_total{reason="timeout",upstream="up"} 1"#
        ));
    }

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
