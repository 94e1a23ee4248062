//! The management handlers as plain functions: a `PlainRequest` and a body source in, an
//! `Answer` out. No sockets.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::Value;

use super::*;
use crate::answer::Body;
use crate::auth::limiter::LimiterConfig;
use crate::config::{CacheConfig, InboxDirectory, ManagementToken, TokenScope};
use crate::keys::hash_secret;
use crate::metrics::Metrics;
use crate::store::memory::MemoryStore;

const TOKEN: &str = "agm_unit_test_token";
const INBOX: &str = "support@example.com";

fn management(limit: u32) -> Management {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let metrics = Arc::new(Metrics::new(&[], &[]));
    let limiter = Arc::new(FailureLimiter::new(LimiterConfig {
        limit,
        window: Duration::from_secs(60),
        max_clients: 1000,
        ipv6_prefix: 64,
    }));
    let format = KeyFormat::new("agk");
    let cache = CacheConfig {
        max_entries: 100,
        ttl: Duration::from_secs(60),
        negative_max_entries: 100,
        negative_ttl: Duration::from_secs(60),
    };
    let verifier = Arc::new(Verifier::new(
        format.clone(),
        &cache,
        store.clone(),
        metrics.clone(),
        limiter.clone(),
    ));
    let mut directory = BTreeMap::new();
    directory.insert(INBOX.to_owned(), Some("pod_acme".to_owned()));
    Management {
        store: store.clone(),
        verifier,
        usage: Arc::new(UsageRecorder::new(store, metrics)),
        principals: Arc::new(arc_swap::ArcSwap::from_pointee(Principals::new(
            vec![ManagementToken {
                name: "unit".into(),
                sha256: hash_secret(TOKEN.as_bytes()),
                scope: TokenScope::All,
            }],
            InboxDirectory::Static(directory),
        ))),
        key_format: format,
        clock: Default::default(),
        page_tokens: PageTokenKey::new(&[3u8; 32]),
        limiter,
        vocabulary: Arc::new(Vocabulary::default()),
        max_lifetime: None,
    }
}

fn request(method: Method, target: &str, token: Option<&str>) -> PlainRequest {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut headers = HeaderMap::new();
    if let Some(t) = token {
        headers.insert(
            http::header::AUTHORIZATION,
            format!("Bearer {t}").parse().unwrap(),
        );
    }
    headers.insert(
        http::header::CONTENT_TYPE,
        "application/json".parse().unwrap(),
    );
    PlainRequest {
        method,
        path: path.as_bytes().to_vec(),
        query: query.as_bytes().to_vec(),
        headers,
        client: Some("192.0.2.1".parse().unwrap()),
    }
}

fn json(a: &Answer) -> Value {
    serde_json::from_slice(a.body.as_bytes()).unwrap()
}

/// A body source that remembers whether anyone read it.
struct Watched {
    read: Arc<AtomicBool>,
}

#[async_trait]
impl BodySource for Watched {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, String> {
        self.read.store(true, Ordering::SeqCst);
        Ok(None)
    }
}

fn keys_path() -> String {
    format!("/human/v0/inboxes/{INBOX}/api-keys")
}

#[tokio::test]
async fn create_list_delete_without_sockets() {
    let m = management(10);
    let body = Bytes::from_static(br#"{"name":"ci"}"#);
    let created = m
        .handle(
            &request(Method::POST, &keys_path(), Some(TOKEN)),
            &mut BytesBody(Some(body)),
        )
        .await;
    assert_eq!(created.route, ManagementRoute::CreateApiKey);
    assert_eq!(created.answer.status, 201);
    let c = json(&created.answer);
    assert_eq!(c["name"], "ci");
    assert_eq!(c["inbox_id"], INBOX);
    assert_eq!(c["pod_id"], "pod_acme");
    assert!(c["api_key"].as_str().unwrap().starts_with("agk_"));

    let listed = m
        .handle(
            &request(
                Method::GET,
                &format!("{}?limit=5", keys_path()),
                Some(TOKEN),
            ),
            &mut BytesBody(None),
        )
        .await;
    assert_eq!(listed.route, ManagementRoute::ListApiKeys);
    assert_eq!(listed.answer.status, 200);
    let l = json(&listed.answer);
    assert_eq!(l["count"], 1);
    assert_eq!(l["api_keys"][0]["api_key_id"], c["api_key_id"]);
    assert!(l["api_keys"][0].get("api_key").is_none());

    let id = c["api_key_id"].as_str().unwrap();
    let target = format!("{}/{id}", keys_path());
    let deleted = m
        .handle(
            &request(Method::DELETE, &target, Some(TOKEN)),
            &mut BytesBody(None),
        )
        .await;
    assert_eq!(deleted.route, ManagementRoute::DeleteApiKey);
    assert_eq!(deleted.answer.status, 204);
    assert_eq!(deleted.answer.body, Body::Empty);
    let again = m
        .handle(
            &request(Method::DELETE, &target, Some(TOKEN)),
            &mut BytesBody(None),
        )
        .await;
    assert_eq!(again.answer.status, 404);
    assert_eq!(json(&again.answer)["code"], "api_key_not_found");
}

#[tokio::test]
async fn the_body_is_read_only_for_an_authenticated_create() {
    let m = management(10);
    for (token, status) in [(None, 401), (Some("agm_wrong"), 401)] {
        let read = Arc::new(AtomicBool::new(false));
        let r = m
            .handle(
                &request(Method::POST, &keys_path(), token),
                &mut Watched { read: read.clone() },
            )
            .await;
        assert_eq!(r.answer.status, status);
        assert!(r.answer.www_authenticate);
        assert!(
            !read.load(Ordering::SeqCst),
            "body read before authentication"
        );
    }
    let read = Arc::new(AtomicBool::new(false));
    let r = m
        .handle(
            &request(Method::GET, &keys_path(), Some(TOKEN)),
            &mut Watched { read: read.clone() },
        )
        .await;
    assert_eq!(r.answer.status, 200);
    assert!(!read.load(Ordering::SeqCst), "a list read a body");
}

#[tokio::test]
async fn answers_carry_their_headers() {
    let m = management(10);
    let r = m
        .handle(
            &request(Method::PUT, &keys_path(), Some(TOKEN)),
            &mut BytesBody(None),
        )
        .await;
    assert_eq!(r.answer.status, 405);
    assert_eq!(
        r.answer.allow,
        Some(http::HeaderValue::from_static("GET, POST"))
    );
    assert_eq!(json(&r.answer)["name"], "MethodNotAllowedError");
    let big = Bytes::from(vec![b' '; MAX_BODY_BYTES + 1]);
    let r = m
        .handle(
            &request(Method::POST, &keys_path(), Some(TOKEN)),
            &mut BytesBody(Some(big)),
        )
        .await;
    assert_eq!(r.answer.status, 413);
    assert!(r.answer.close);
    let r = m
        .handle(
            &request(Method::GET, "/human/v0/nothing", Some(TOKEN)),
            &mut BytesBody(None),
        )
        .await;
    assert_eq!(r.route, ManagementRoute::Other);
    assert_eq!(r.answer.status, 404);
    assert_eq!(json(&r.answer)["code"], "route_not_found");
}

#[tokio::test]
async fn wrong_tokens_count_missing_ones_do_not_and_valid_ones_always_pass() {
    let m = management(2);
    for _ in 0..20 {
        let r = m
            .handle(
                &request(Method::GET, &keys_path(), None),
                &mut BytesBody(None),
            )
            .await;
        assert_eq!(json(&r.answer)["code"], "missing_authorization");
    }
    for expected in [401, 401, 429, 429] {
        let r = m
            .handle(
                &request(Method::GET, &keys_path(), Some("agm_wrong")),
                &mut BytesBody(None),
            )
            .await;
        assert_eq!(r.answer.status, expected);
        if expected == 429 {
            assert!(r.answer.retry_after.is_some());
            assert_eq!(
                r.answer.reason,
                Some(crate::metrics::Rejection::RateLimited)
            );
            assert_eq!(json(&r.answer)["code"], "too_many_failed_authentications");
        }
    }
    let r = m
        .handle(
            &request(Method::GET, &keys_path(), Some(TOKEN)),
            &mut BytesBody(None),
        )
        .await;
    assert_eq!(r.answer.status, 200);
}
