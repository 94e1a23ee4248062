//! Criterion micro-benchmarks of the hot path: key verification (malformed, bad checksum,
//! negative-cache hit, positive-cache hit with scope check), path matching, used_at marks.

use std::sync::Arc;
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, Criterion};

use agentry_gateway::auth::usage::UsageRecorder;
use agentry_gateway::auth::Verifier;
use agentry_gateway::config::CacheConfig;
use agentry_gateway::keys::KeyFormat;
use agentry_gateway::metrics::Metrics;
use agentry_gateway::store::sqlite::SqliteStore;
use agentry_gateway::store::{KeyRecord, NewKey, Store};
use agentry_gateway::target::{segment_equals, validate_path, RouteTemplate};

struct Fixture {
    _dir: tempfile::TempDir,
    verifier: Verifier,
    usage: UsageRecorder,
    valid: Vec<String>,
    unknown: String,
    bad_checksum: String,
}

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
    let verifier = Verifier::new(format.clone(), &cache, store.clone(), metrics.clone());
    let mut valid = Vec::new();
    rt.block_on(async {
        for i in 0..1000 {
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
                    },
                    hash: m.hash,
                })
                .await
                .unwrap();
            valid.push(m.plaintext);
        }
        for k in &valid {
            verifier.verify(k.as_bytes()).await.unwrap();
        }
    });
    let unknown = format.generate().plaintext;
    rt.block_on(async {
        let _ = verifier.verify(unknown.as_bytes()).await;
        verifier.sync().await;
    });
    let mut bad = valid[0].clone().into_bytes();
    let last = bad.len() - 1;
    bad[last] = if bad[last] == b'A' { b'B' } else { b'A' };
    Fixture {
        _dir: dir,
        verifier,
        usage: UsageRecorder::new(store, metrics),
        valid,
        unknown,
        bad_checksum: String::from_utf8(bad).unwrap(),
    }
}

fn verify(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let f = fixture(&rt);
    let route = RouteTemplate::parse("/v0/inboxes/{inbox_id}").unwrap();
    let path = b"/v0/inboxes/support@example.com/messages/123";
    let mut g = c.benchmark_group("verify");
    g.bench_function("malformed", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(f.verifier.verify(black_box(b"agk_short")).await.is_err()) })
    });
    g.bench_function("bad_checksum", |b| {
        b.to_async(&rt).iter(|| async {
            black_box(f.verifier.verify(f.bad_checksum.as_bytes()).await.is_err())
        })
    });
    g.bench_function("negative_hit", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(f.verifier.verify(f.unknown.as_bytes()).await.is_err()) })
    });
    let mut i = 0usize;
    g.bench_function("positive_hit_with_scope", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) % f.valid.len();
            let key = f.valid[i].as_bytes();
            let verifier = &f.verifier;
            let route = &route;
            async move {
                let id = verifier.verify(key).await.unwrap();
                validate_path(path).unwrap();
                let seg = route.match_path(path).unwrap();
                black_box(segment_equals(seg, id.inbox_id.as_bytes()))
            }
        })
    });
    g.finish();

    c.bench_function("path/validate_match_compare", |b| {
        b.iter(|| {
            validate_path(black_box(path)).unwrap();
            let seg = route.match_path(black_box(path)).unwrap();
            black_box(segment_equals(seg, b"support@example.com"))
        })
    });

    let id = rt
        .block_on(f.verifier.verify(f.valid[0].as_bytes()))
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
