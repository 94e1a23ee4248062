//! Criterion micro-benchmarks of the hot path, through the functions the proxy calls:
//! `Verifier::authenticate` (malformed, bad checksum, negative-cache hit, positive-cache hit
//! with scope check), the request-target checks, used_at marks.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue};

use criterion::{black_box, criterion_group, criterion_main, Criterion};

use agentry_gateway::auth::limiter::{FailureLimiter, LimiterConfig};
use agentry_gateway::auth::usage::UsageRecorder;
use agentry_gateway::auth::Verifier;
use agentry_gateway::config::CacheConfig;
use agentry_gateway::keys::KeyFormat;
use agentry_gateway::metrics::Metrics;
use agentry_gateway::request_target::{
    segment_equals, split_target, RequestTarget, RouteTemplate, Routed, Router,
};
use agentry_gateway::store::sqlite::SqliteStore;
use agentry_gateway::store::{KeyRecord, NewKey, Store};

struct Fixture {
    _dir: tempfile::TempDir,
    verifier: Verifier,
    usage: UsageRecorder,
    valid: Vec<HeaderMap>,
    /// Keys with an expiry and a permissions object (the checks of issue "Keys that carry
    /// their limits" on every hit).
    limited: Vec<HeaderMap>,
    unknown: HeaderMap,
    bad_checksum: HeaderMap,
    malformed: HeaderMap,
}

fn bearer(key: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {key}")).unwrap(),
    );
    h
}

/// The client every benchmark request comes from (the limiter is on, as by default).
const CLIENT: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));

fn fixture(rt: &tokio::runtime::Runtime) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("b.db")).unwrap());
    let metrics = Arc::new(Metrics::new(&[], &[]));
    let format = KeyFormat::new("agk");
    let cache = CacheConfig {
        max_entries: 1_000_000,
        ttl: Duration::from_secs(3600),
        negative_max_entries: 100_000,
        negative_ttl: Duration::from_secs(3600),
    };
    // The default limits, but a window too short for a benchmark's failures to add up.
    let limiter = Arc::new(FailureLimiter::new(LimiterConfig {
        limit: 100,
        window: Duration::from_nanos(1),
        max_clients: 100_000,
        ipv6_prefix: 64,
    }));
    let verifier = Verifier::new(
        format.clone(),
        &cache,
        store.clone(),
        metrics.clone(),
        limiter,
    );
    let mut valid = Vec::new();
    let mut limited = Vec::new();
    rt.block_on(async {
        for i in 0..2000 {
            let is_limited = i >= 1000;
            let m = format.generate();
            store
                .create_key(NewKey {
                    record: KeyRecord {
                        api_key_id: format!("key_{i:022}"),
                        inbox_id: "support@example.com".into(),
                        pod_id: Some("pod_acme".into()),
                        name: "bench".into(),
                        prefix: m.display_prefix.clone(),
                        created_at_us: i,
                        used_at_us: None,
                        permissions: is_limited
                            .then(|| r#"{"message_read":true,"message_send":true}"#.to_owned()),
                        expires_at_us: is_limited.then_some(4_102_444_800_000_000),
                        updated_at_us: i,
                        created_by: None,
                    },
                    hash: m.hash,
                })
                .await
                .unwrap();
            if is_limited {
                limited.push(m.plaintext);
            } else {
                valid.push(m.plaintext);
            }
        }
    });
    let valid: Vec<HeaderMap> = valid.iter().map(|k| bearer(k)).collect();
    let limited: Vec<HeaderMap> = limited.iter().map(|k| bearer(k)).collect();
    let unknown = bearer(&format.generate().plaintext);
    rt.block_on(async {
        for h in valid.iter().chain(&limited) {
            verifier.authenticate(h, CLIENT).await.unwrap();
        }
        let _ = verifier.authenticate(&unknown, CLIENT).await;
        verifier.sync().await;
    });
    let mut bad = format.generate().plaintext.into_bytes();
    let last = bad.len() - 1;
    bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
    Fixture {
        _dir: dir,
        verifier,
        usage: UsageRecorder::new(store, metrics),
        valid,
        limited,
        unknown,
        bad_checksum: bearer(&String::from_utf8(bad).unwrap()),
        malformed: bearer("agk_short"),
    }
}

fn verify(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let f = fixture(&rt);
    let route = Router::new([&RouteTemplate::parse("/v0/inboxes/{inbox_id}").unwrap()]);
    let path = b"/v0/inboxes/support@example.com/messages/123";
    let mut g = c.benchmark_group("verify");
    for (name, h) in [
        ("malformed", &f.malformed),
        ("bad_checksum", &f.bad_checksum),
        ("negative_hit", &f.unknown),
    ] {
        g.bench_function(name, |b| {
            b.to_async(&rt)
                .iter(|| async { black_box(f.verifier.authenticate(h, CLIENT).await.is_err()) })
        });
    }
    let read = agentry_gateway::permissions::Vocabulary::default()
        .lookup("message_read")
        .unwrap();
    // A cached hit as the proxy takes it: authenticate, validate, route, scope; with
    // `check_permission`, also the route's permission check.
    for (name, keys, check_permission) in [
        ("positive_hit_with_scope", &f.valid, false),
        (
            "positive_hit_with_scope_expiry_permission",
            &f.limited,
            true,
        ),
    ] {
        let mut i = 0usize;
        g.bench_function(name, |b| {
            b.to_async(&rt).iter(|| {
                i = (i + 1) % keys.len();
                let headers = &keys[i];
                let verifier = &f.verifier;
                let route = &route;
                async move {
                    let id = verifier.authenticate(headers, CLIENT).await.unwrap();
                    let t = RequestTarget::parse(path).unwrap();
                    let Ok(Routed::Proxy { inbox, .. }) = route.route(&t) else {
                        unreachable!()
                    };
                    black_box(
                        segment_equals(inbox, id.inbox.inbox_id.as_bytes())
                            && (!check_permission || id.permissions.contains(read)),
                    )
                }
            })
        });
    }
    g.finish();

    // The proxy's checks of a request target, in its order: split, no key anywhere in it
    // (path and query, decoded), path and query grammar, route match, scope compare.
    let format = KeyFormat::new("agk");
    let mut target_group = c.benchmark_group("target");
    for (name, target) in [
        ("plain", &b"/v0/inboxes/support@example.com/messages/123"[..]),
        (
            "escaped_with_query",
            b"/v0/inboxes/support%40example.com/messages/123?limit=10&page_token=AbCdEf012345&labels=inbox%2Cunread",
        ),
    ] {
        target_group.bench_function(name, |b| {
            b.iter(|| {
                let (p, q) = split_target(black_box(target)).unwrap();
                assert!(!format.appears_in_url(p) && !format.appears_in_url(q));
                let t = RequestTarget::from_parts(p, q).unwrap();
                let Ok(Routed::Proxy { inbox, .. }) = route.route(&t) else {
                    unreachable!()
                };
                black_box(segment_equals(inbox, b"support@example.com"))
            })
        });
    }
    target_group.finish();

    c.bench_function("path/validate_match_compare", |b| {
        b.iter(|| {
            let t = RequestTarget::parse(black_box(path)).unwrap();
            let Ok(Routed::Proxy { inbox, .. }) = route.route(&t) else {
                unreachable!()
            };
            black_box(segment_equals(inbox, b"support@example.com"))
        })
    });

    let id = rt
        .block_on(f.verifier.authenticate(&f.valid[0], CLIENT))
        .unwrap();
    let mut now = 0i64;
    c.bench_function("usage/touch", |b| {
        b.iter(|| {
            now += 1;
            f.usage.touch(black_box(&id), now)
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = verify
}
criterion_main!(benches);
