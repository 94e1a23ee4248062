//! The management API over HTTP against the real binary, as `api-keys.md` specifies it.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const SUPPORT: &str = "support@example.com";
const SALES: &str = "sales@example.com";
const OTHER: &str = "ops@other.com";
const NOPOD: &str = "nopod@example.com";

fn keys_path(inbox: &str) -> String {
    format!("/human/v0/inboxes/{inbox}/api-keys")
}

fn assert_json_headers(r: &Resp) {
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
}

fn assert_error(r: &Resp, status: u16, name: &str) -> Value {
    assert_eq!(r.status, status, "{}", r.text());
    assert_json_headers(r);
    let v = r.json();
    assert_eq!(v["name"], name, "{v}");
    assert!(v["code"].is_string(), "{v}");
    assert!(v["message"].is_string(), "{v}");
    v
}

fn list_all(g: &Gateway, inbox: &str, limit: usize) -> Vec<Vec<Value>> {
    let mut pages = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut target = format!("{}?limit={limit}", keys_path(inbox));
        if let Some(t) = &token {
            target.push_str(&format!("&page_token={t}"));
        }
        let r = g.mgmt("GET", &target, ADMIN_TOKEN, None);
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        let items = v["api_keys"].as_array().unwrap().clone();
        assert_eq!(v["count"], items.len());
        pages.push(items);
        match v.get("next_page_token") {
            Some(t) => token = Some(t.as_str().unwrap().to_owned()),
            None => return pages,
        }
    }
}

fn is_rfc3339_seconds(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'Z'
}

fn create_list_delete() {
    let g = Gateway::start("");
    let r = g.mgmt(
        "POST",
        &keys_path(SUPPORT),
        ADMIN_TOKEN,
        Some(r#"{"name":"ci"}"#),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_json_headers(&r);
    let created = r.json();
    let obj = created.as_object().unwrap();
    let mut fields: Vec<&str> = obj.keys().map(String::as_str).collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "api_key",
            "api_key_id",
            "created_at",
            "inbox_id",
            "name",
            "pod_id",
            "prefix",
            "type",
            "updated_at"
        ]
    );
    assert_eq!(created["type"], "bearer");
    assert_eq!(created["updated_at"], created["created_at"]);
    let key = created["api_key"].as_str().unwrap();
    assert!(key.starts_with("agk_") && key.len() == 53, "{key}");
    assert_eq!(created["inbox_id"], SUPPORT);
    assert_eq!(created["name"], "ci");
    assert_eq!(created["pod_id"], "pod_acme");
    let prefix = created["prefix"].as_str().unwrap();
    assert!(key.starts_with(prefix) && prefix.len() < 16, "{prefix}");
    assert!(is_rfc3339_seconds(created["created_at"].as_str().unwrap()));
    let id = created["api_key_id"].as_str().unwrap().to_owned();

    let r = g.mgmt("GET", &keys_path(SUPPORT), ADMIN_TOKEN, None);
    assert_eq!(r.status, 200);
    assert_json_headers(&r);
    let v = r.json();
    assert_eq!(v["count"], 1);
    assert!(v.get("next_page_token").is_none());
    let item = &v["api_keys"][0];
    assert_eq!(
        *item,
        json!({
            "type": "bearer",
            "api_key_id": id,
            "created_at": created["created_at"],
            "updated_at": created["created_at"],
            "inbox_id": SUPPORT,
            "name": "ci",
            "pod_id": "pod_acme",
            "prefix": prefix,
        })
    );
    // The plaintext key is never shown again.
    assert!(!r.text().contains(key));

    let r = g.mgmt(
        "DELETE",
        &format!("{}/{id}", keys_path(SUPPORT)),
        ADMIN_TOKEN,
        None,
    );
    assert_eq!(r.status, 204);
    assert!(r.body.is_empty());
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("content-type"), None);

    let v = g.mgmt("GET", &keys_path(SUPPORT), ADMIN_TOKEN, None).json();
    assert_eq!(v, json!({"api_keys": [], "count": 0}));
    let r = g.mgmt(
        "DELETE",
        &format!("{}/{id}", keys_path(SUPPORT)),
        ADMIN_TOKEN,
        None,
    );
    assert_error(&r, 404, "NotFoundError");
}

fn key_of_inbox_without_pod_omits_pod_id() {
    let g = Gateway::start("");
    let created = g.create_key(NOPOD, "x");
    assert!(created.get("pod_id").is_none(), "{created}");
    let v = g.mgmt("GET", &keys_path(NOPOD), ADMIN_TOKEN, None).json();
    assert!(v["api_keys"][0].get("pod_id").is_none());
    assert!(v["api_keys"][0].get("used_at").is_none());
}

fn delete_of_another_inboxes_key_is_404() {
    let g = Gateway::start("");
    let id = g.create_key(SUPPORT, "x")["api_key_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = g.mgmt(
        "DELETE",
        &format!("{}/{id}", keys_path(SALES)),
        ADMIN_TOKEN,
        None,
    );
    assert_error(&r, 404, "NotFoundError");
    assert_eq!(
        g.mgmt("GET", &keys_path(SUPPORT), ADMIN_TOKEN, None).json()["count"],
        1
    );
}

fn pagination_over_250_keys() {
    let g = Gateway::start("");
    let mut created = Vec::new();
    for i in 0..250 {
        created.push(g.create_key(SUPPORT, &format!("k{i}"))["api_key_id"].clone());
    }
    let pages = list_all(&g, SUPPORT, 100);
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, [100, 100, 50]);
    let ids: Vec<Value> = pages
        .iter()
        .flatten()
        .map(|k| k["api_key_id"].clone())
        .collect();
    created.reverse();
    assert_eq!(ids, created, "newest first, every key once");
    let default = g.mgmt("GET", &keys_path(SUPPORT), ADMIN_TOKEN, None).json();
    assert_eq!(default["count"], 100);
    assert!(default["next_page_token"].is_string());
}

fn walk_during_concurrent_creates_and_deletes() {
    let g = Gateway::start("");
    let mut stable = Vec::new();
    let mut doomed = Vec::new();
    for i in 0..120 {
        let k = g.create_key(SUPPORT, &format!("k{i}"));
        let id = k["api_key_id"].as_str().unwrap().to_owned();
        if i % 3 == 0 {
            doomed.push(id);
        } else {
            stable.push(id);
        }
    }
    let client = g.client();
    let writer = std::thread::spawn(move || {
        for (i, id) in doomed.iter().enumerate() {
            let auth = format!("Bearer {ADMIN_TOKEN}");
            let h = [
                ("Authorization", auth.as_str()),
                ("Content-Type", "application/json"),
            ];
            let r = client.req(
                "DELETE",
                &format!("{}/{id}", keys_path(SUPPORT)),
                &h[..1],
                None,
            );
            assert_eq!(r.status, 204);
            let body = format!(r#"{{"name":"new{i}"}}"#);
            let r = client.req("POST", &keys_path(SUPPORT), &h, Some(body.as_bytes()));
            assert_eq!(r.status, 201);
        }
    });
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let mut target = format!("{}?limit=7", keys_path(SUPPORT));
        if let Some(t) = &token {
            target.push_str(&format!("&page_token={t}"));
        }
        let v = g.mgmt("GET", &target, ADMIN_TOKEN, None).json();
        for k in v["api_keys"].as_array().unwrap() {
            seen.push(k["api_key_id"].as_str().unwrap().to_owned());
        }
        match v.get("next_page_token") {
            Some(t) => token = Some(t.as_str().unwrap().to_owned()),
            None => break,
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    writer.join().unwrap();
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "a key was listed twice");
    for id in &stable {
        assert!(
            unique.contains(id),
            "key {id} existed throughout but was skipped"
        );
    }
}

fn bad_inputs_get_exact_errors() {
    let g = Gateway::start("");
    let p = keys_path(SUPPORT);
    let post = |body: &str| g.mgmt("POST", &p, ADMIN_TOKEN, Some(body));
    let validation = |r: &Resp, path: &[&str]| {
        let v = assert_error(r, 400, "ValidationError");
        assert_eq!(v["code"], "validation_error");
        let paths: Vec<Value> = v["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["path"].clone())
            .collect();
        assert!(paths.contains(&json!(path)), "{v}");
        v
    };
    validation(&post("{"), &["body"]);
    validation(&post("[1]"), &["body"]);
    validation(&post("\"name\""), &["body"]);
    validation(&post("{}"), &["body", "name"]);
    validation(&post(r#"{"name":""}"#), &["body", "name"]);
    validation(&post(r#"{"name":"   "}"#), &["body", "name"]);
    validation(
        &post(&format!(r#"{{"name":"{}"}}"#, "a".repeat(257))),
        &["body", "name"],
    );
    validation(&post(r#"{"name":"a\u0007b"}"#), &["body", "name"]);
    validation(&post(r#"{"name":null}"#), &["body", "name"]);
    let v = validation(
        &post(r#"{"name":"a","scopes":["all"]}"#),
        &["body", "scopes"],
    );
    assert!(v["message"].as_str().unwrap().contains("scopes"));
    // Expiry in the past or not a time, unknown or non-boolean permissions.
    for (body, path) in [
        (
            r#"{"name":"a","expires_at":"2020-01-01T00:00:00Z"}"#,
            vec!["body", "expires_at"],
        ),
        (
            r#"{"name":"a","expires_at":"soon"}"#,
            vec!["body", "expires_at"],
        ),
        (
            r#"{"name":"a","permissions":{"fly":true}}"#,
            vec!["body", "permissions", "fly"],
        ),
        (
            r#"{"name":"a","permissions":{"message_read":"yes"}}"#,
            vec!["body", "permissions", "message_read"],
        ),
        (
            r#"{"name":"a","permissions":true}"#,
            vec!["body", "permissions"],
        ),
    ] {
        validation(&post(body), &path);
    }

    // A 256-character name is fine.
    assert_eq!(
        post(&format!(r#"{{"name":"{}"}}"#, "a".repeat(256))).status,
        201
    );

    for q in ["0", "-1", "1001", "99999999999999999999", "abc", ""] {
        let r = g.mgmt("GET", &format!("{p}?limit={q}"), ADMIN_TOKEN, None);
        validation(&r, &["query", "limit"]);
    }
    for t in ["garbage", "AAAA", "AQAAAAAAAAAAa2V5X3g"] {
        let r = g.mgmt("GET", &format!("{p}?page_token={t}"), ADMIN_TOKEN, None);
        validation(&r, &["query", "page_token"]);
    }
    // A real token, truncated, and a real token used on another inbox.
    for i in 0..3 {
        g.create_key(SUPPORT, &format!("p{i}"));
    }
    let t = g
        .mgmt("GET", &format!("{p}?limit=1"), ADMIN_TOKEN, None)
        .json()["next_page_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = g.mgmt(
        "GET",
        &format!("{p}?page_token={}", &t[..t.len() - 2]),
        ADMIN_TOKEN,
        None,
    );
    validation(&r, &["query", "page_token"]);
    let r = g.mgmt(
        "GET",
        &format!("{}?page_token={t}", keys_path(SALES)),
        ADMIN_TOKEN,
        None,
    );
    validation(&r, &["query", "page_token"]);

    // Inbox ids: a segment the request target's one parser refuses gets its answer, as on
    // every path; an admitted segment that is no inbox id is the management API's own error.
    for inbox in ["", "a%2Fb", "a%2fb", "a%00b", "a%0Ab", "%FF%FE"] {
        let r = g.mgmt("GET", &keys_path(inbox), ADMIN_TOKEN, None);
        let v = assert_error(&r, 400, "ValidationError");
        assert_eq!(v["code"], "bad_request_target", "{inbox}");
    }
    for inbox in ["a".repeat(255), "%C3%A9".repeat(255)] {
        let r = g.mgmt("GET", &keys_path(&inbox), ADMIN_TOKEN, None);
        validation(&r, &["path", "inbox_id"]);
    }

    // Wrong content type, oversized body.
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let r = g.req(
        "POST",
        &p,
        &[("Authorization", &auth), ("Content-Type", "text/plain")],
        Some(br#"{"name":"x"}"#),
    );
    assert_error(&r, 415, "UnsupportedMediaTypeError");
    let r = g.req(
        "POST",
        &p,
        &[("Authorization", &auth)],
        Some(br#"{"name":"x"}"#),
    );
    assert_error(&r, 415, "UnsupportedMediaTypeError");
    let big = format!(r#"{{"name":"x","pad":"{}"}}"#, "a".repeat(70 * 1024));
    let r = g.mgmt("POST", &p, ADMIN_TOKEN, Some(&big));
    assert_error(&r, 413, "PayloadTooLargeError");

    // Unknown routes and methods.
    for path in [
        "/human/v0/nope",
        "/human/v1/inboxes/x/api-keys",
        "/human",
        "/human/v0/inboxes/x/keys",
    ] {
        let r = g.mgmt("GET", path, ADMIN_TOKEN, None);
        assert_error(&r, 404, "NotFoundError");
    }
    let r = g.mgmt("PUT", &p, ADMIN_TOKEN, Some("{}"));
    assert_error(&r, 405, "MethodNotAllowedError");
    assert_eq!(r.header("allow"), Some("GET, POST"));
    let r = g.mgmt("GET", &format!("{p}/key_x"), ADMIN_TOKEN, None);
    assert_error(&r, 405, "MethodNotAllowedError");
    assert_eq!(r.header("allow"), Some("DELETE, PATCH"));

    // Nothing above created a key beyond the four that were meant to.
    assert_eq!(g.mgmt("GET", &p, ADMIN_TOKEN, None).json()["count"], 4);
}

fn authentication_errors() {
    let g = Gateway::start("");
    let p = keys_path(SUPPORT);
    let r = g.req("GET", &p, &[], None);
    let v = assert_error(&r, 401, "AuthenticationError");
    assert_eq!(v["code"], "missing_authorization");
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    for bad in ["Bearer nope", "Basic YWxhZGRpbjpvcGVu", "Bearer"] {
        let r = g.req("GET", &p, &[("Authorization", bad)], None);
        let v = assert_error(&r, 401, "AuthenticationError");
        assert_eq!(v["code"], "invalid_token");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    }
    // An inbox API key is never a management credential.
    let key = g.create_key(SUPPORT, "k")["api_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = g.mgmt("GET", &p, &key, None);
    assert_error(&r, 401, "AuthenticationError");
    // Unauthenticated callers learn nothing about routes.
    let r = g.req("GET", "/human/v0/nope", &[], None);
    assert_error(&r, 401, "AuthenticationError");
}

fn scope_rules_for_all_pod_and_inbox_tokens() {
    let g = Gateway::start("");
    let create = |token: &str, inbox: &str| {
        g.mgmt("POST", &keys_path(inbox), token, Some(r#"{"name":"x"}"#))
    };
    // all: every inbox in the directory; unknown inboxes do not exist.
    for inbox in [SUPPORT, SALES, OTHER, NOPOD] {
        assert_eq!(create(ADMIN_TOKEN, inbox).status, 201, "{inbox}");
    }
    let unknown = create(ADMIN_TOKEN, "ghost@example.com");
    let unknown_body = assert_error(&unknown, 404, "NotFoundError");

    // pod_acme: support and sales only.
    assert_eq!(create(POD_TOKEN, SUPPORT).status, 201);
    assert_eq!(create(POD_TOKEN, SALES).status, 201);
    for inbox in [OTHER, NOPOD] {
        let r = create(POD_TOKEN, inbox);
        assert_eq!(assert_error(&r, 404, "NotFoundError"), unknown_body);
        let r = g.mgmt("GET", &keys_path(inbox), POD_TOKEN, None);
        assert_eq!(assert_error(&r, 404, "NotFoundError"), unknown_body);
    }
    // inbox-scoped: sales only.
    assert_eq!(create(INBOX_TOKEN, SALES).status, 201);
    let support_key = g.create_key(SUPPORT, "s")["api_key_id"]
        .as_str()
        .unwrap()
        .to_owned();
    for r in [
        create(INBOX_TOKEN, SUPPORT),
        g.mgmt("GET", &keys_path(SUPPORT), INBOX_TOKEN, None),
        g.mgmt(
            "DELETE",
            &format!("{}/{support_key}", keys_path(SUPPORT)),
            INBOX_TOKEN,
            None,
        ),
    ] {
        assert_eq!(assert_error(&r, 404, "NotFoundError"), unknown_body);
    }
    // The refused delete did not delete.
    let r = g.mgmt(
        "DELETE",
        &format!("{}/{support_key}", keys_path(SUPPORT)),
        POD_TOKEN,
        None,
    );
    assert_eq!(r.status, 204);
    let v = g.mgmt("GET", &keys_path(SALES), INBOX_TOKEN, None).json();
    assert_eq!(v["count"], 3);
}

fn data_survives_restart() {
    let mut g = Gateway::start("");
    let a = g.create_key(SUPPORT, "a");
    let b = g.create_key(SUPPORT, "b");
    let id_b = b["api_key_id"].as_str().unwrap();
    assert_eq!(
        g.mgmt(
            "DELETE",
            &format!("{}/{id_b}", keys_path(SUPPORT)),
            ADMIN_TOKEN,
            None
        )
        .status,
        204
    );
    let status = g.sigterm();
    assert!(status.success(), "{status}");
    g.restart();
    let v = g.mgmt("GET", &keys_path(SUPPORT), ADMIN_TOKEN, None).json();
    assert_eq!(v["count"], 1);
    assert_eq!(v["api_keys"][0]["api_key_id"], a["api_key_id"]);
}

fn created_key_survives_kill_9() {
    let mut g = Gateway::start("");
    let created = g.create_key(SUPPORT, "durable");
    g.kill9();
    g.restart();
    let v = g.mgmt("GET", &keys_path(SUPPORT), ADMIN_TOKEN, None).json();
    assert_eq!(v["count"], 1);
    assert_eq!(v["api_keys"][0]["api_key_id"], created["api_key_id"]);
}

fn metrics_health_and_readiness() {
    let g = Gateway::start("");
    g.create_key(SUPPORT, "m");
    g.mgmt("GET", &keys_path("ghost"), ADMIN_TOKEN, None);
    // Counted in pingora's logging phase, just after the response is sent.
    wait_until("both requests counted", Duration::from_secs(5), || {
        g.metric("agentry_gateway_request_duration_seconds_count{kind=\"management\"}") == 2.0
    });
    let text = g.metrics();
    assert_eq!(
        metric_value(
            &text,
            r#"agentry_gateway_requests_total{kind="management",route="create_api_key",status_class="2xx"}"#
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        metric_value(
            &text,
            r#"agentry_gateway_requests_total{kind="management",route="list_api_keys",status_class="4xx"}"#
        ),
        1.0
    );
    let r = request(g.metrics_addr, "GET", "/metrics", &[], None);
    assert_eq!(r.header("content-type"), Some("text/plain; version=0.0.4"));
    let r = request(g.metrics_addr, "GET", "/healthz", &[], None);
    assert_eq!((r.status, r.text().as_str()), (200, r#"{"status":"ok"}"#));
    let r = request(g.metrics_addr, "GET", "/readyz", &[], None);
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, r#"{"status":"ready"}"#)
    );
}

#[test]
fn check_config_and_new_token() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_agentry-gateway"))
        .args(["new-token", "--name", "ops"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let token = text
        .lines()
        .nth(1)
        .and_then(|l| l.strip_prefix("# "))
        .unwrap();
    assert!(
        text.contains(&format!("sha256 = \"{}\"", sha256_hex(token))),
        "{text}"
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[server]\nlisten = \"127.0.0.1:1\"\nthreads = 0\n[store]\nkind = \"sqlite\"\npath = \"x\"\n[inbox_directory]\nsource = \"none\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_agentry-gateway"))
        .args(["check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("server.threads: must be between 1 and 1024"),
        "{err}"
    );
}

/// A page token built the way the seed built them: an unkeyed SHA-256 tag anyone can compute.
fn unkeyed_token(inbox: &str, version: u8, created_at_us: i64, id: &str, tag_len: usize) -> String {
    use base64::Engine;
    use sha2::Digest;
    let mut payload = vec![version];
    payload.extend_from_slice(&created_at_us.to_be_bytes());
    payload.extend_from_slice(id.as_bytes());
    let mut h = sha2::Sha256::new();
    h.update(b"agentry-gateway page token v1\0");
    h.update(inbox.as_bytes());
    h.update([0u8]);
    h.update(&payload);
    payload.extend_from_slice(&h.finalize()[..tag_len]);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(payload)
}

fn page_tokens_cannot_be_minted_or_moved_and_survive_restarts() {
    let mut g = Gateway::start("");
    let p = keys_path(SUPPORT);
    for i in 0..5 {
        g.create_key(SUPPORT, &format!("k{i}"));
    }
    let page = |g: &Gateway, q: &str| g.mgmt("GET", &format!("{p}?{q}"), ADMIN_TOKEN, None);
    let first = page(&g, "limit=2");
    let t = first.json()["next_page_token"].as_str().unwrap().to_owned();
    let second = page(&g, &format!("limit=2&page_token={t}"));
    assert_eq!(second.status, 200);
    // Forged positions: the start of time, the far future, a real key's position, each with
    // every tag an outsider can compute.
    let real_id = first.json()["api_keys"][0]["api_key_id"]
        .as_str()
        .unwrap()
        .to_owned();
    for (at, id) in [
        (0, "key_a"),
        (i64::MAX, "key_zzzzzzzzzzzzzzzzzzzzzz"),
        (4_000_000_000_000_000, real_id.as_str()),
    ] {
        for version in [1, 2] {
            for tag_len in [8, 16] {
                let forged = unkeyed_token(SUPPORT, version, at, id, tag_len);
                let r = page(&g, &format!("page_token={forged}"));
                assert_error(&r, 400, "ValidationError");
                assert_eq!(
                    r.json()["errors"][0]["path"],
                    json!(["query", "page_token"])
                );
            }
        }
    }
    // The secret lives in the store: a token outlives a restart.
    g.sigterm();
    g.restart();
    let again = page(&g, &format!("limit=2&page_token={t}"));
    assert_eq!(again.status, 200);
    assert_eq!(again.json()["api_keys"], second.json()["api_keys"]);
    // Another deployment (another database, another secret) does not accept it.
    let other = Gateway::start("");
    for i in 0..5 {
        other.create_key(SUPPORT, &format!("k{i}"));
    }
    let r = other.mgmt("GET", &format!("{p}?page_token={t}"), ADMIN_TOKEN, None);
    assert_error(&r, 400, "ValidationError");
}

fn duplicate_members_and_long_unknown_parameters() {
    let g = Gateway::start("");
    let p = keys_path(SUPPORT);
    for body in [
        r#"{"name":5,"name":"ok"}"#,
        r#"{"name":"ok","name":"ok"}"#,
        r#"{"name":"a","name":"b"}"#,
    ] {
        let r = g.mgmt("POST", &p, ADMIN_TOKEN, Some(body));
        let v = assert_error(&r, 400, "ValidationError");
        assert!(
            v["message"].as_str().unwrap().contains("duplicate member"),
            "{v}"
        );
    }
    assert_eq!(g.mgmt("GET", &p, ADMIN_TOKEN, None).json()["count"], 0);
    // An unknown parameter name is echoed at most 24 characters long.
    let name = format!("secret_{}", "x".repeat(60));
    let r = g.mgmt("GET", &format!("{p}?{name}=1"), ADMIN_TOKEN, None);
    let v = assert_error(&r, 400, "ValidationError");
    assert!(!r.text().contains(&name));
    let shown = format!("secret_{}…", "x".repeat(17));
    assert_eq!(v["errors"][0]["path"], json!(["query", shown]));
    let r = g.mgmt("GET", &format!("{p}?foo=1"), ADMIN_TOKEN, None);
    assert_eq!(
        assert_error(&r, 400, "ValidationError")["errors"][0]["path"],
        json!(["query", "foo"])
    );
}

on_every_store!(
    keys_manage_keys_never_beyond_themselves,
    a_default_key_mints_default_keys_but_never_opt_in_ones,
    permissions_expiry_and_update,
    create_list_delete,
    key_of_inbox_without_pod_omits_pod_id,
    delete_of_another_inboxes_key_is_404,
    pagination_over_250_keys,
    walk_during_concurrent_creates_and_deletes,
    bad_inputs_get_exact_errors,
    authentication_errors,
    scope_rules_for_all_pod_and_inbox_tokens,
    data_survives_restart,
    created_key_survives_kill_9,
    metrics_health_and_readiness,
    page_tokens_cannot_be_minted_or_moved_and_survive_restarts,
    duplicate_members_and_long_unknown_parameters,
);

fn permissions_expiry_and_update() {
    let g = Gateway::start("");
    let p = keys_path(SUPPORT);
    let r = g.mgmt(
        "POST",
        &p,
        ADMIN_TOKEN,
        Some(r#"{"name":"reader","permissions":{"message_read":true,"message_send":false},"expires_at":"2030-01-01T00:00:00Z"}"#),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let created = r.json();
    assert_eq!(
        created["permissions"],
        json!({"message_read": true, "message_send": false})
    );
    assert_eq!(created["expires_at"], "2030-01-01T00:00:00Z");
    assert_eq!(created["type"], "bearer");
    let id = created["api_key_id"].as_str().unwrap().to_owned();
    let listed = g.mgmt("GET", &p, ADMIN_TOKEN, None).json();
    let item = &listed["api_keys"][0];
    assert_eq!(item["permissions"], created["permissions"]);
    assert_eq!(item["expires_at"], "2030-01-01T00:00:00Z");
    assert!(item.get("created_by").is_none());

    // PATCH: name and permissions; the whole key back; updated_at moves, expiry stays.
    std::thread::sleep(Duration::from_millis(1100));
    let target = format!("{p}/{id}");
    let r = g.mgmt(
        "PATCH",
        &target,
        ADMIN_TOKEN,
        Some(r#"{"name":"sender","permissions":{"message_send":true}}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_json_headers(&r);
    let updated = r.json();
    assert_eq!(updated["name"], "sender");
    assert_eq!(updated["permissions"], json!({"message_send": true}));
    assert_eq!(updated["expires_at"], "2030-01-01T00:00:00Z");
    assert_eq!(updated["created_at"], created["created_at"]);
    assert_ne!(updated["updated_at"], created["updated_at"]);
    assert!(updated.get("api_key").is_none());
    let again = g.mgmt("GET", &p, ADMIN_TOKEN, None).json();
    assert_eq!(again["api_keys"][0], updated);
    // Rename only: permissions stay.
    let r = g.mgmt("PATCH", &target, ADMIN_TOKEN, Some(r#"{"name":"renamed"}"#));
    assert_eq!(r.json()["permissions"], json!({"message_send": true}));

    // Expiry is immutable; anything else is refused; nothing is not an update.
    for (body, path) in [
        (
            r#"{"expires_at":"2031-01-01T00:00:00Z"}"#,
            json!(["body", "expires_at"]),
        ),
        (
            r#"{"name":"x","inbox_id":"other"}"#,
            json!(["body", "inbox_id"]),
        ),
        (
            r#"{"permissions":{"nope":true}}"#,
            json!(["body", "permissions", "nope"]),
        ),
        (r#"{}"#, json!(["body"])),
        (r#"{"name":""}"#, json!(["body", "name"])),
    ] {
        let r = g.mgmt("PATCH", &target, ADMIN_TOKEN, Some(body));
        let v = assert_error(&r, 400, "ValidationError");
        assert_eq!(v["errors"][0]["path"], path, "{body}");
    }
    // Unknown id, and a key of another inbox: 404.
    let r = g.mgmt(
        "PATCH",
        &format!("{p}/key_nope"),
        ADMIN_TOKEN,
        Some(r#"{"name":"x"}"#),
    );
    assert_error(&r, 404, "NotFoundError");
    let r = g.mgmt(
        "PATCH",
        &format!("{}/{id}", keys_path(SALES)),
        ADMIN_TOKEN,
        Some(r#"{"name":"x"}"#),
    );
    assert_error(&r, 404, "NotFoundError");
    // 405 names both methods of a key.
    let r = g.mgmt("PUT", &target, ADMIN_TOKEN, Some(r#"{"name":"x"}"#));
    assert_error(&r, 405, "MethodNotAllowedError");
    assert_eq!(r.header("allow"), Some("DELETE, PATCH"));
}

/// A key-managed call: `/v0/inboxes/{inbox}/api-keys[/{id}]` with an API key.
fn by_key(
    g: &Gateway,
    method: &str,
    inbox: &str,
    rest: &str,
    key: &str,
    body: Option<&str>,
) -> Resp {
    // A key is a bearer credential like a token: the same request as a management call.
    g.mgmt(
        method,
        &format!("/v0/inboxes/{inbox}/api-keys{rest}"),
        key,
        body,
    )
}

fn keys_manage_keys_never_beyond_themselves() {
    let up = Upstream::start();
    let g = Gateway::start(&upstream_toml(&[up.addr], ""));
    let parent_perms = r#"{"api_key_read":true,"api_key_create":true,"api_key_update":true,"api_key_delete":true,"message_read":true}"#;
    let parent = g.mgmt(
        "POST",
        &keys_path(SUPPORT),
        ADMIN_TOKEN,
        Some(&format!(r#"{{"name":"parent","permissions":{parent_perms},"expires_at":"2031-06-01T00:00:00Z"}}"#)),
    );
    assert_eq!(parent.status, 201, "{}", parent.text());
    let pv = parent.json();
    let pkey = pv["api_key"].as_str().unwrap().to_owned();
    let pid = pv["api_key_id"].as_str().unwrap().to_owned();

    // List with the key itself.
    let r = by_key(&g, "GET", SUPPORT, "", &pkey, None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["count"], 1);
    assert_eq!(r.header("cache-control"), Some("no-store"));

    // Omitted fields inherit the creator's; provenance is recorded.
    let r = by_key(&g, "POST", SUPPORT, "", &pkey, Some(r#"{"name":"child"}"#));
    assert_eq!(r.status, 201, "{}", r.text());
    let child = r.json();
    assert_eq!(
        child["permissions"],
        serde_json::from_str::<Value>(parent_perms).unwrap()
    );
    assert_eq!(child["expires_at"], "2031-06-01T00:00:00Z");
    assert_eq!(child["created_by"], json!({"api_key_id": pid}));
    assert_eq!(child["pod_id"], "pod_acme");
    let cid = child["api_key_id"].as_str().unwrap().to_owned();
    let ckey = child["api_key"].as_str().unwrap().to_owned();
    let listed = g.mgmt("GET", &keys_path(SUPPORT), ADMIN_TOKEN, None).json();
    let item = listed["api_keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["api_key_id"] == cid.as_str())
        .unwrap()
        .clone();
    assert_eq!(item["created_by"], json!({"api_key_id": pid}));

    // Every combination beyond the creator is refused, naming the field; within it, created.
    let perms = [
        (r#"{"message_read":true}"#, true),
        (r#"{"message_read":true,"message_send":false}"#, true),
        (r#"{"message_send":true}"#, false),
        (r#"{"message_read":true,"message_send":true}"#, false),
        (r#"{"agent_armor_release":true}"#, false),
        (r#"{"app_connect":true}"#, false),
        (r#"{}"#, true),
    ];
    let expiries = [
        (None, true),
        (Some("2031-05-31T23:59:59Z"), true),
        (Some("2031-06-01T00:00:00Z"), true),
        (Some("2031-06-01T00:00:01Z"), false),
        (Some("2040-01-01T00:00:00Z"), false),
    ];
    for (p, p_ok) in perms {
        for (e, e_ok) in expiries {
            let body = match e {
                Some(e) => format!(r#"{{"name":"c","permissions":{p},"expires_at":"{e}"}}"#),
                None => format!(r#"{{"name":"c","permissions":{p}}}"#),
            };
            let r = by_key(&g, "POST", SUPPORT, "", &pkey, Some(&body));
            if p_ok && e_ok {
                assert_eq!(r.status, 201, "{body}: {}", r.text());
            } else {
                let v = assert_error(&r, 403, "PermissionDeniedError");
                assert_eq!(v["code"], "exceeds_creator", "{body}");
                let field = if p_ok { "expires_at" } else { "permissions" };
                assert_eq!(v["errors"][0]["path"], json!(["body", field]), "{body}");
            }
        }
    }
    // PATCH is bound the same way.
    let r = by_key(
        &g,
        "PATCH",
        SUPPORT,
        &format!("/{cid}"),
        &pkey,
        Some(r#"{"permissions":{"message_send":true}}"#),
    );
    assert_eq!(
        assert_error(&r, 403, "PermissionDeniedError")["code"],
        "exceeds_creator"
    );
    let r = by_key(
        &g,
        "PATCH",
        SUPPORT,
        &format!("/{cid}"),
        &pkey,
        Some(r#"{"name":"renamed","permissions":{"message_read":true}}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["name"], "renamed");
    // The child now lacks api_key_*: it may not manage keys.
    for (method, rest, body) in [
        ("GET", String::new(), None),
        ("POST", String::new(), Some(r#"{"name":"x"}"#)),
        ("DELETE", format!("/{pid}"), None),
    ] {
        let r = by_key(&g, method, SUPPORT, &rest, &ckey, body);
        let v = assert_error(&r, 403, "PermissionDeniedError");
        assert_eq!(v["code"], "insufficient_permission", "{method}");
    }
    // Another inbox is the 404 of an absent one; a management token is not a key here.
    let r = by_key(&g, "GET", SALES, "", &pkey, None);
    assert_eq!(
        assert_error(&r, 404, "NotFoundError")["code"],
        "inbox_not_found"
    );
    let r = by_key(&g, "GET", SUPPORT, "", ADMIN_TOKEN, None);
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["code"], "invalid_api_key");
    // Delete with the key: the child is gone at once.
    let r = by_key(&g, "DELETE", SUPPORT, &format!("/{cid}"), &pkey, None);
    assert_eq!(r.status, 204);
    assert_eq!(by_key(&g, "GET", SUPPORT, "", &ckey, None).status, 401);
    // None of it was proxied.
    assert_eq!(
        up.count(),
        0,
        "{:?}",
        up.requests().iter().map(|r| &r.target).collect::<Vec<_>>()
    );
}

fn a_default_key_mints_default_keys_but_never_opt_in_ones() {
    let g = Gateway::start("");
    let key = g.create_key(SUPPORT, "root")["api_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = by_key(&g, "POST", SUPPORT, "", &key, Some(r#"{"name":"kid"}"#));
    assert_eq!(r.status, 201);
    assert!(r.json().get("permissions").is_none(), "{}", r.text());
    assert!(r.json().get("expires_at").is_none());
    let r = by_key(
        &g,
        "POST",
        SUPPORT,
        "",
        &key,
        Some(r#"{"name":"kid","permissions":{"app_connect":true}}"#),
    );
    let v = assert_error(&r, 403, "PermissionDeniedError");
    assert!(v["message"].as_str().unwrap().contains("app_connect"));
}
