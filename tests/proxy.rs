//! The proxy path against the real binary and a real echo upstream.

mod common;

use std::time::Duration;

use common::*;

const SUPPORT: &str = "support@example.com";
const SALES: &str = "sales@example.com";

fn setup() -> (Gateway, Upstream) {
    let up = Upstream::start();
    let g = Gateway::start(&upstream_toml(&[up.addr], ""));
    (g, up)
}

fn key_for(g: &Gateway, inbox: &str) -> (String, String) {
    let k = g.create_key(inbox, "proxy");
    (
        k["api_key"].as_str().unwrap().to_owned(),
        k["api_key_id"].as_str().unwrap().to_owned(),
    )
}

fn forwards_with_identity_headers_and_without_credential() {
    let (g, up) = setup();
    let (key, id) = key_for(&g, SUPPORT);
    let auth = format!("Bearer {key}");
    let r = g.req(
        "POST",
        "/v0/inboxes/support@example.com/messages?x=1",
        &[
            ("Authorization", &auth),
            ("X-Request-Id", "client-req-1"),
            ("Content-Type", "text/plain"),
        ],
        Some(b"hello upstream"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-request-id"), Some("client-req-1"));
    let got = up.requests();
    assert_eq!(got.len(), 1);
    let req = &got[0];
    assert_eq!(req.method, "POST");
    assert_eq!(req.target, "/v0/inboxes/support@example.com/messages?x=1");
    assert_eq!(req.body, b"hello upstream");
    assert_eq!(req.all("x-agentry-api-key-id"), [id.as_str()]);
    assert_eq!(req.all("x-agentry-inbox-id"), [SUPPORT]);
    assert_eq!(req.all("x-agentry-pod-id"), ["pod_acme"]);
    assert!(req.all("authorization").is_empty());
    assert_eq!(req.all("x-forwarded-for"), ["127.0.0.1"]);
    // The scheme the client used: the h2 variant of this test runs over TLS.
    let scheme = match transport() {
        Transport::Plain => "http",
        Transport::H2 => "https",
    };
    assert_eq!(req.all("x-forwarded-proto"), [scheme]);
    assert_eq!(req.all("x-request-id"), ["client-req-1"]);
    // A malformed request id is replaced by a generated one, echoed to the client.
    let r = g.req(
        "GET",
        "/v0/inboxes/support@example.com",
        &[
            ("Authorization", &auth),
            ("X-Request-Id", "bad id with spaces"),
        ],
        None,
    );
    let rid = r.header("x-request-id").unwrap().to_owned();
    assert_eq!(rid.len(), 32);
    assert_eq!(up.requests()[1].all("x-request-id"), [rid.as_str()]);
}

/// Names reach the upstream in one spelling whatever the client sent (HTTP/1.1 in any case,
/// HTTP/2 lower-case): the common names pingora title-cases (`Host`, `Content-Type`, ...) so,
/// every other name lower-case.
fn header_names_reach_the_upstream_in_canonical_case() {
    let (g, up) = setup();
    let (key, _) = key_for(&g, SUPPORT);
    let auth = format!("Bearer {key}");
    let r = g.req(
        "GET",
        "/v0/inboxes/support@example.com/m",
        &[
            ("authorization", &auth),
            ("CONTENT-TYPE", "text/plain"),
            ("X-Custom-Thing", "1"),
            ("aCCept", "*/*"),
        ],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let got = &up.requests()[0];
    for expected in [
        "Host",
        "Content-Type",
        "accept",
        "x-custom-thing",
        "x-agentry-api-key-id",
        "x-agentry-inbox-id",
        "x-agentry-pod-id",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-request-id",
    ] {
        let spellings: Vec<&str> = got
            .headers
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| k.eq_ignore_ascii_case(expected))
            .collect();
        assert_eq!(spellings, [expected], "{:?}", got.headers);
    }
    assert_eq!(got.all("x-custom-thing"), ["1"]);
    assert_eq!(got.all("accept"), ["*/*"]);
}

fn percent_encoded_inbox_segment_matches_once_decoded() {
    let (g, up) = setup();
    let (key, _) = key_for(&g, SUPPORT);
    let r = g.call("GET", "/v0/inboxes/support%40example.com/m", &key);
    assert_eq!(r.status, 200);
    assert_eq!(
        up.requests()[0].target,
        "/v0/inboxes/support%40example.com/m"
    );
}

fn spoofed_identity_headers_are_removed() {
    let (g, up) = setup();
    let (key, id) = key_for(&g, SUPPORT);
    let auth = format!("Bearer {key}");
    let r = g.req(
        "GET",
        "/v0/inboxes/support@example.com",
        &[
            ("Authorization", auth.as_str()),
            ("X-Agentry-Inbox-Id", "sales@example.com"),
            ("x-agentry-inbox-id", "evil"),
            ("X-AGENTRY-API-KEY-ID", "key_forged"),
            ("X_Agentry_Inbox_Id", "underscore"),
            ("x-agentry-pod-id", "pod_other"),
            ("x-agentry-role", "admin"),
            // Naming a header in Connection (HTTP/1.1 only: HTTP/2 has no Connection).
            ("Connection", "x-agentry-inbox-id"),
        ]
        .into_iter()
        .filter(|(k, _)| transport() == Transport::Plain || *k != "Connection")
        .collect::<Vec<_>>(),
        None,
    );
    assert_eq!(r.status, 200);
    let req = &up.requests()[0];
    assert_eq!(req.all("x-agentry-inbox-id"), [SUPPORT]);
    assert_eq!(req.all("x-agentry-api-key-id"), [id.as_str()]);
    assert_eq!(req.all("x-agentry-pod-id"), ["pod_acme"]);
    assert!(req.all("x_agentry_inbox_id").is_empty());
    assert!(req.all("x-agentry-role").is_empty());
}

fn auth_failures_answer_identically() {
    let (g, up) = setup();
    let (key, id) = key_for(&g, SUPPORT);
    let p = "/v0/inboxes/support@example.com";

    let missing = g.req("GET", p, &[], None);
    assert_eq!(missing.status, 401);
    assert_eq!(missing.json()["code"], "missing_authorization");
    assert_eq!(missing.header("www-authenticate"), Some("Bearer"));

    let mut bad_checksum = key.clone().into_bytes();
    let last = bad_checksum.len() - 1;
    bad_checksum[last] = if bad_checksum[last] == b'A' {
        b'B'
    } else {
        b'A'
    };
    let bad_checksum = String::from_utf8(bad_checksum).unwrap();
    // A well-formed key (valid checksum) that was never issued.
    let unknown = agentry_gateway::keys::KeyFormat::new("agk")
        .generate()
        .plaintext;
    let (deleted, deleted_id) = key_for(&g, SUPPORT);
    assert_eq!(
        g.mgmt(
            "DELETE",
            &format!("/human/v0/inboxes/{SUPPORT}/api-keys/{deleted_id}"),
            ADMIN_TOKEN,
            None
        )
        .status,
        204
    );
    let cases = [
        format!("Bearer {}", &key[..key.len() - 1]),
        format!("Bearer {bad_checksum}"),
        format!("Bearer {unknown}"),
        format!("Bearer {deleted}"),
        "Bearer garbage".to_owned(),
        format!("Basic {key}"),
        format!("Bearer {}", "a".repeat(4000)),
    ];
    let mut first: Option<Resp> = None;
    for auth in &cases {
        let r = g.req("GET", p, &[("Authorization", auth)], None);
        assert_eq!(r.status, 401, "{auth}");
        assert_eq!(r.json()["code"], "invalid_api_key");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        let comparable = |r: &Resp| {
            let mut h: Vec<(String, String)> = r
                .headers
                .iter()
                .filter(|(k, _)| {
                    !k.eq_ignore_ascii_case("date") && !k.eq_ignore_ascii_case("x-request-id")
                })
                .cloned()
                .collect();
            h.sort();
            (h, r.body.clone())
        };
        if let Some(f) = &first {
            assert_eq!(comparable(&r), comparable(f), "{auth}");
        } else {
            first = Some(r);
        }
    }
    // Two Authorization headers: refused, same answer.
    let a = format!("Bearer {key}");
    let r = g.req(
        "GET",
        p,
        &[("Authorization", &a), ("Authorization", &a)],
        None,
    );
    assert_eq!(r.status, 401);
    assert_eq!(r.body, first.as_ref().unwrap().body);
    // A key in the query string is not a credential.
    let r = g.req("GET", &format!("{p}?api_key={key}"), &[], None);
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["code"], "credential_in_query");
    let r = g.req(
        "GET",
        &format!("{p}?x=1&token={key}"),
        &[("Authorization", &a)],
        None,
    );
    assert_eq!(r.status, 400);
    // A management token is not an API key.
    let r = g.call("GET", p, ADMIN_TOKEN);
    assert_eq!(r.status, 401);
    assert_eq!(r.body, first.as_ref().unwrap().body);

    // Valid key, other inbox: 403, the same for existing and non-existing inboxes.
    let r1 = g.call("GET", "/v0/inboxes/sales@example.com", &key);
    let r2 = g.call("GET", "/v0/inboxes/nobody@nowhere", &key);
    assert_eq!(r1.status, 403);
    assert_eq!(r1.json()["code"], "forbidden_inbox");
    assert_eq!(r1.body, r2.body);
    assert_eq!(up.count(), 0, "no refused request reached the upstream");
    let _ = id;
}

fn hostile_paths_never_reach_the_upstream() {
    let (g, up) = setup();
    let (key, _) = key_for(&g, SUPPORT);
    let x = "support@example.com";
    let y = "sales@example.com";
    let targets = [
        format!("/v0/inboxes/{x}/../{y}"),
        format!("/v0/inboxes/{x}/%2e%2e/{y}"),
        format!("/v0/inboxes/{x}%2F..%2F{y}"),
        format!("/v0/inboxes/{x}/%252e%252e/{y}"),
        format!("//inboxes/{y}"),
        format!("/v0/inboxes//{y}"),
        format!("/v0/inboxes/{x};a=1"),
        format!("/v0/inboxes/{x};/../{y}"),
        format!("/v0/inboxes/{x}\\..\\{y}"),
        format!("/v0/inboxes/{x}/./m"),
        format!("/v0/inboxes/{x}%00"),
        format!("/v0/inboxes/{x}/m%5c"),
        format!("/v0/inboxes/{x}/"),
        format!("http://gateway/v0/inboxes/{x}"),
    ];
    // HTTP/2 has no absolute-form: its authority travels apart from the path.
    let h2 = transport() == Transport::H2;
    for t in targets.iter().filter(|t| !h2 || t.starts_with('/')) {
        let r = g.call("GET", t, &key);
        assert_eq!(r.status, 400, "{t}: {}", r.text());
        assert_eq!(r.json()["code"], "bad_request_target", "{t}");
    }
    // Other spellings of the inbox are other inboxes (403); other spellings of a route's
    // literal segments are not canonical (400); paths under no route are 404.
    for (t, status) in [
        (format!("/v0/inboxes/{x}."), 403),
        ("/v0/inboxes/SUPPORT@example.com".to_owned(), 403),
        (format!("/V0/inboxes/{x}"), 400),
        (format!("/v0/Inboxes/{x}"), 400),
        ("/v0/inboxes".to_owned(), 404),
        ("/".to_owned(), 404),
    ] {
        let r = g.call("GET", &t, &key);
        assert_eq!(r.status, status, "{t}: {}", r.text());
        if status == 400 {
            assert_eq!(r.json()["code"], "non_canonical_target", "{t}");
        }
    }
    // Authority-form (CONNECT).
    if h2 {
        let r = g.call("CONNECT", "gateway:443", &key);
        assert!(
            r.status == 400 || r.status == 405,
            "{}: {}",
            r.status,
            r.text()
        );
    } else {
        let raw = format!(
            "CONNECT gateway:443 HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {key}\r\n\r\n"
        );
        let out = raw_exchange(g.addr, raw.as_bytes(), Duration::from_secs(3));
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.starts_with("HTTP/1.1 400") || text.starts_with("HTTP/1.1 405"),
            "{text}"
        );
    }
    assert_eq!(up.count(), 0, "{:?}", up.requests());
}

fn deleted_key_is_refused_on_the_very_next_request() {
    let (g, up) = setup();
    let (key, id) = key_for(&g, SUPPORT);
    let p = "/v0/inboxes/support@example.com";
    for _ in 0..3 {
        assert_eq!(g.call("GET", p, &key).status, 200);
    }
    let r = g.delete_key(SUPPORT, &id);
    assert_eq!(r.status, 204);
    let r = g.call("GET", p, &key);
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["code"], "invalid_api_key");
    assert_eq!(up.count(), 3);
}

fn used_at_of(g: &Gateway, inbox: &str, id: &str) -> Option<String> {
    let v = g
        .mgmt(
            "GET",
            &format!("/human/v0/inboxes/{inbox}/api-keys"),
            ADMIN_TOKEN,
            None,
        )
        .json();
    v["api_keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["api_key_id"] == id)
        .and_then(|k| k["used_at"].as_str().map(str::to_owned))
}

fn used_at_is_shown_at_once_and_persisted_by_flush_and_sigterm() {
    let (mut g, _up) = setup();
    let (key, id) = key_for(&g, SUPPORT);
    let (key2, id2) = key_for(&g, SALES);
    assert_eq!(used_at_of(&g, SUPPORT, &id), None);
    assert_eq!(
        g.call("GET", "/v0/inboxes/support@example.com", &key)
            .status,
        200
    );
    // Shown before any flush.
    let shown = used_at_of(&g, SUPPORT, &id).expect("used_at shown at once");
    // Persisted by the periodic flush (200 ms in tests).
    wait_until("a flush", Duration::from_secs(10), || {
        g.metric("agentry_gateway_usage_flushes_total") >= 1.0
    });
    g.kill9();
    g.restart();
    assert_eq!(used_at_of(&g, SUPPORT, &id), Some(shown));
    // Persisted by SIGTERM, however recent.
    assert_eq!(
        g.call("GET", "/v0/inboxes/sales@example.com", &key2).status,
        200
    );
    let status = g.sigterm();
    assert!(status.success(), "{status}");
    g.restart();
    assert!(used_at_of(&g, SALES, &id2).is_some());
}

fn sigterm_flushes_marks_made_just_before() {
    let up = Upstream::start();
    // A flush interval far longer than the test: only the shutdown flushes can save the mark.
    let body = auth_and_upstream_toml("[usage]\nflush_interval_ms = 600000\n", up.addr);
    let mut g = Gateway::start_with(&body, "");
    let (key, id) = key_for(&g, SUPPORT);
    assert_eq!(
        g.call("GET", "/v0/inboxes/support@example.com", &key)
            .status,
        200
    );
    assert_eq!(g.metric("agentry_gateway_usage_pending_marks"), 1.0);
    let status = g.sigterm();
    assert!(status.success());
    g.restart();
    assert!(used_at_of(&g, SUPPORT, &id).is_some());
}

fn round_robin_failover_and_all_down() {
    let up1 = Upstream::start();
    let mut up2 = Upstream::start();
    let g = Gateway::start(&upstream_toml(&[up1.addr, up2.addr], ""));
    let (key, _) = key_for(&g, SUPPORT);
    let p = "/v0/inboxes/support@example.com";
    for _ in 0..10 {
        assert_eq!(g.call("GET", p, &key).status, 200);
    }
    assert!(
        up1.count() >= 3 && up2.count() >= 3,
        "{} {}",
        up1.count(),
        up2.count()
    );
    up2.stop();
    let before = up1.count();
    for _ in 0..10 {
        let r = g.call("GET", p, &key);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(up1.count(), before + 10);
    wait_until(
        "health check marks the stopped backend",
        Duration::from_secs(10),
        || g.metric(r#"agentry_gateway_upstream_healthy_backends{upstream="inbox"}"#) == 1.0,
    );
    drop(up1);
    wait_until("all backends unhealthy", Duration::from_secs(10), || {
        g.metric(r#"agentry_gateway_upstream_healthy_backends{upstream="inbox"}"#) == 0.0
    });
    let r = g.call("GET", p, &key);
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json()["code"], "no_healthy_upstream");
}

fn upstream_failures_are_json_and_the_gateway_stays_up() {
    let mut refused = Upstream::start();
    let reset = Upstream::start_mode(Mode::Reset);
    let hang = Upstream::start_mode(Mode::Hang);
    let garbage = Upstream::start_mode(Mode::Garbage);
    let ok = Upstream::start();
    let extra = format!(
        r#"
[[upstreams]]
name = "refused"
addresses = ["{}"]
health_check = {{ interval_seconds = 3600 }}
[[upstreams]]
name = "reset"
addresses = ["{}"]
health_check = {{ interval_seconds = 3600 }}
[[upstreams]]
name = "hang"
addresses = ["{}"]
read_timeout_ms = 300
health_check = {{ interval_seconds = 3600 }}
[[upstreams]]
name = "garbage"
addresses = ["{}"]
health_check = {{ interval_seconds = 3600 }}
[[upstreams]]
name = "ok"
addresses = ["{}"]
[[routes]]
path = "/refused/{{inbox_id}}"
upstream = "refused"
[[routes]]
path = "/reset/{{inbox_id}}"
upstream = "reset"
[[routes]]
path = "/hang/{{inbox_id}}"
upstream = "hang"
[[routes]]
path = "/garbage/{{inbox_id}}"
upstream = "garbage"
[[routes]]
path = "/ok/{{inbox_id}}"
upstream = "ok"
"#,
        refused.addr, reset.addr, hang.addr, garbage.addr, ok.addr
    );
    let g = Gateway::start(&extra);
    // Healthy at the start-up check, gone by the time the request comes.
    // The first (TCP) health check has connected: it found the address up.
    wait_until("the first health check", Duration::from_secs(5), || {
        refused
            .connections
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 1
    });
    refused.stop();
    let (key, _) = key_for(&g, SUPPORT);
    for (route, status, code) in [
        ("refused", 502, "upstream_error"),
        ("reset", 502, "upstream_error"),
        ("hang", 504, "upstream_timeout"),
        ("garbage", 502, "upstream_error"),
    ] {
        let r = g.call("GET", &format!("/{route}/{SUPPORT}"), &key);
        assert_eq!(r.status, status, "{route}: {}", r.text());
        assert_eq!(
            r.header("content-type"),
            Some("application/json"),
            "{route}"
        );
        assert_eq!(r.json()["code"], code, "{route}");
        assert_eq!(g.call("GET", &format!("/ok/{SUPPORT}"), &key).status, 200);
    }
    assert_eq!(
        g.metric(r#"agentry_gateway_upstream_errors_total{reason="timeout",upstream="hang"}"#),
        1.0
    );
    assert_eq!(
        g.metric(r#"agentry_gateway_upstream_errors_total{reason="refused",upstream="refused"}"#),
        1.0
    );
}

fn metrics_move_as_requests_flow() {
    let (g, _up) = setup();
    let (key, _) = key_for(&g, SUPPORT);
    let p = "/v0/inboxes/support@example.com";
    for _ in 0..3 {
        assert_eq!(g.call("GET", p, &key).status, 200);
    }
    assert_eq!(g.call("GET", p, "agk_nope").status, 401);
    assert_eq!(g.req("GET", p, &[], None).status, 401);
    // Metrics are counted in pingora's logging phase, just after the response is sent.
    wait_until("five requests counted", Duration::from_secs(5), || {
        g.metric("agentry_gateway_request_duration_seconds_count{kind=\"proxy\"}") == 5.0
    });
    let m = g.metrics();
    let v = |s: &str| metric_value(&m, s);
    assert_eq!(
        v(
            r#"agentry_gateway_requests_total{kind="proxy",route="/v0/inboxes/{inbox_id}",status_class="2xx"}"#
        ),
        3.0,
        "{m}"
    );
    assert_eq!(
        v(r#"agentry_gateway_requests_total{kind="proxy",route="none",status_class="4xx"}"#),
        2.0
    );
    assert_eq!(v(r#"agentry_gateway_auth_cache_total{result="miss"}"#), 1.0);
    assert_eq!(v(r#"agentry_gateway_auth_cache_total{result="hit"}"#), 2.0);
    assert_eq!(
        v(r#"agentry_gateway_auth_rejections_total{reason="malformed_key"}"#),
        1.0
    );
    assert_eq!(
        v(r#"agentry_gateway_auth_rejections_total{reason="missing_authorization"}"#),
        1.0
    );
    assert_eq!(
        v(r#"agentry_gateway_store_queries_total{op="find_by_hash"}"#),
        1.0
    );
    assert_eq!(
        v(r#"agentry_gateway_upstream_responses_total{status_class="2xx",upstream="inbox"}"#),
        3.0
    );
    assert_eq!(
        v(r#"agentry_gateway_upstream_healthy_backends{upstream="inbox"}"#),
        1.0
    );
    assert_eq!(
        v("agentry_gateway_request_duration_seconds_count{kind=\"proxy\"}"),
        5.0
    );
    // Access log: one line per request, key id but never the key.
    wait_until("access log lines", Duration::from_secs(5), || {
        g.logs()
            .matches("access method=GET path=\"/v0/inboxes/support@example.com\"")
            .count()
            >= 5
    });
    assert!(!g.logs().contains(&key));
}

#[test]
fn uncached_keys_get_503_while_the_store_is_gone_and_recover() {
    let (g, up) = setup();
    let (cached, _) = key_for(&g, SUPPORT);
    let (uncached, _) = key_for(&g, SUPPORT);
    let p = "/v0/inboxes/support@example.com";
    assert_eq!(g.call("GET", p, &cached).status, 200);
    let db = g.db_path();
    let aside = g.dir.path().join("aside.db");
    std::fs::rename(&db, &aside).unwrap();
    // /readyz checks the file at once (lookups trust a good check for 250 ms).
    let r = request(g.metrics_addr, "GET", "/readyz", &[], None);
    assert_eq!(r.status, 503);
    assert_eq!(g.call("GET", p, &cached).status, 200);
    let r = g.call("GET", p, &uncached);
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["code"], "auth_unavailable");
    std::fs::rename(&aside, &db).unwrap();
    // Not cached as unknown: works as soon as the store is back.
    assert_eq!(g.call("GET", p, &uncached).status, 200);
    assert_eq!(
        request(g.metrics_addr, "GET", "/readyz", &[], None).status,
        200
    );
    assert_eq!(up.count(), 3);
}

on_every_store!(
    routes_require_permissions_per_method,
    a_permission_revoked_by_patch_is_refused_on_the_next_request,
    an_expired_key_is_refused_like_an_unknown_one_even_when_cached,
    forwards_with_identity_headers_and_without_credential,
    header_names_reach_the_upstream_in_canonical_case,
    percent_encoded_inbox_segment_matches_once_decoded,
    spoofed_identity_headers_are_removed,
    auth_failures_answer_identically,
    hostile_paths_never_reach_the_upstream,
    deleted_key_is_refused_on_the_very_next_request,
    used_at_is_shown_at_once_and_persisted_by_flush_and_sigterm,
    sigterm_flushes_marks_made_just_before,
    round_robin_failover_and_all_down,
    upstream_failures_are_json_and_the_gateway_stays_up,
    metrics_move_as_requests_flow,
);

/// A gateway whose `/messages` route says what each method needs; it comes after the
/// catch-all in the file, and wins because it is more specific.
fn setup_with_require() -> (Gateway, Upstream) {
    let up = Upstream::start();
    let routes = r#"
[[routes]]
path = "/v0/inboxes/{inbox_id}/messages"
upstream = "inbox"
require = { GET = "message_read", POST = "message_send" }
"#;
    let g = Gateway::start(&format!("{}\n{routes}", upstream_toml(&[up.addr], "")));
    (g, up)
}

fn key_with(g: &Gateway, body: &str) -> (String, String) {
    let r = g.mgmt(
        "POST",
        &format!("/human/v0/inboxes/{SUPPORT}/api-keys"),
        ADMIN_TOKEN,
        Some(body),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let v = r.json();
    (
        v["api_key"].as_str().unwrap().to_owned(),
        v["api_key_id"].as_str().unwrap().to_owned(),
    )
}

fn routes_require_permissions_per_method() {
    let (g, up) = setup_with_require();
    let m = format!("/v0/inboxes/{SUPPORT}/messages");
    let (reader, reader_id) = key_with(&g, r#"{"name":"r","permissions":{"message_read":true}}"#);
    let (default, _) = key_with(&g, r#"{"name":"d"}"#);
    let (armor, _) = key_with(
        &g,
        r#"{"name":"a","permissions":{"agent_armor_release":true}}"#,
    );
    assert_eq!(g.call("GET", &m, &reader).status, 200);
    assert_eq!(g.call("GET", &format!("{m}/123"), &reader).status, 200);
    let r = g.call("POST", &m, &reader);
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["name"], "PermissionDeniedError");
    assert_eq!(r.json()["code"], "insufficient_permission");
    let msg = r.json()["message"].as_str().unwrap().to_owned();
    assert!(msg.contains("\"message_send\""), "{msg}");
    assert!(!msg.contains(&reader) && !r.text().contains(&reader_id));
    // The default set holds both; a key with only an opt-in permission holds neither.
    assert_eq!(g.call("POST", &m, &default).status, 200);
    assert_eq!(g.call("GET", &m, &armor).status, 403);
    // A method the route does not take: 405 with Allow, for any key.
    for key in [&reader, &default] {
        let r = g.call("PUT", &m, key);
        assert_eq!(r.status, 405);
        assert_eq!(r.header("allow"), Some("GET, POST"));
        assert_eq!(r.json()["code"], "method_not_allowed");
    }
    // Routes without `require` need only a valid key of the inbox; other inboxes stay 403.
    assert_eq!(
        g.call(
            "DELETE",
            &format!("/v0/inboxes/{SUPPORT}/drafts/1"),
            &reader
        )
        .status,
        200
    );
    let other = g.call("GET", &format!("/v0/inboxes/{SALES}/messages"), &reader);
    assert_eq!(other.json()["code"], "forbidden_inbox");
    assert_eq!(
        g.metric(r#"agentry_gateway_auth_rejections_total{reason="insufficient_permission"}"#),
        2.0
    );
    assert_eq!(
        g.metric(r#"agentry_gateway_auth_rejections_total{reason="method_not_allowed"}"#),
        2.0
    );
    // Refused requests never reach the upstream.
    let posts = up.requests().iter().filter(|r| r.method == "POST").count();
    assert_eq!(posts, 1);
}

fn a_permission_revoked_by_patch_is_refused_on_the_next_request() {
    let (g, _up) = setup_with_require();
    let m = format!("/v0/inboxes/{SUPPORT}/messages");
    let (key, id) = key_with(&g, r#"{"name":"k"}"#);
    let mut c = g.keep_alive();
    let auth = format!("Bearer {key}");
    assert_eq!(c.send("GET", &m, &[("Authorization", &auth)]).status, 200);
    let r = g.mgmt(
        "PATCH",
        &format!("/human/v0/inboxes/{SUPPORT}/api-keys/{id}"),
        ADMIN_TOKEN,
        Some(r#"{"permissions":{"message_send":true}}"#),
    );
    assert_eq!(r.status, 200);
    let r = c.send("GET", &m, &[("Authorization", &auth)]);
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["code"], "insufficient_permission");
    assert_eq!(c.send("POST", &m, &[("Authorization", &auth)]).status, 200);
}

fn an_expired_key_is_refused_like_an_unknown_one_even_when_cached() {
    let (g, _up) = setup();
    let p = format!("/v0/inboxes/{SUPPORT}/m");
    let soon = time::OffsetDateTime::now_utc() + time::Duration::seconds(2);
    let soon = soon
        .replace_nanosecond(0)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let (key, _) = key_with(&g, &format!(r#"{{"name":"brief","expires_at":"{soon}"}}"#));
    let mut c = g.keep_alive();
    let auth = format!("Bearer {key}");
    assert_eq!(c.send("GET", &p, &[("Authorization", &auth)]).status, 200);
    wait_until("the key expires", Duration::from_secs(5), || {
        c.send("GET", &p, &[("Authorization", &auth)]).status == 401
    });
    let expired = c.send("GET", &p, &[("Authorization", &auth)]);
    let unknown_key = agentry_gateway::keys::KeyFormat::new("agk")
        .generate()
        .plaintext;
    let unknown = g.call("GET", &p, &unknown_key);
    assert_eq!(expired.status, 401);
    assert_eq!(expired.body, unknown.body);
    assert_eq!(expired.header("www-authenticate"), Some("Bearer"));
    assert!(g.metric(r#"agentry_gateway_auth_rejections_total{reason="expired"}"#) >= 2.0);
}

/// `THP_enabled` of a process, from `/proc/PID/status`.
#[cfg(target_os = "linux")]
fn thp_enabled(pid: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let lines: Vec<&str> = status
        .lines()
        .filter(|l| l.starts_with("THP_enabled:"))
        .collect();
    assert_eq!(lines.len(), 1, "{status}");
    lines[0].to_owned()
}

/// The gateway opts out of transparent huge pages by default (README, configuration), and
/// leaves the host's setting alone with `server.transparent_huge_pages = true`.
#[cfg(target_os = "linux")]
#[test]
fn transparent_huge_pages_are_off_unless_configured() {
    let (g, _up) = setup();
    assert_eq!(thp_enabled(&g.pid().to_string()), "THP_enabled:\t0");

    let up = Upstream::start();
    let body = auth_and_upstream_toml("", up.addr);
    let on = Gateway::start_with(&body, "transparent_huge_pages = true");
    // Inherited from this test process, as any process started without the opt-out.
    assert_eq!(thp_enabled(&on.pid().to_string()), thp_enabled("self"));
    assert_eq!(on.call("GET", "/v0/inboxes/x", "agk_nope").status, 401);
}
