//! The hostile-input suite: request smuggling, resource abuse, credential guessing and leakage,
//! with raw TCP where an HTTP library would tidy the request up.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;

const SUPPORT: &str = "support@example.com";
const P: &str = "/v0/inboxes/support@example.com";

fn setup_with(limits: &str) -> (Gateway, Upstream) {
    let up = Upstream::start();
    let g = Gateway::start(&format!("{limits}\n{}", upstream_toml(&[up.addr], "")));
    (g, up)
}

fn setup() -> (Gateway, Upstream) {
    setup_with("")
}

fn new_key(g: &Gateway) -> String {
    g.create_key(SUPPORT, "hostile")["api_key"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Sends raw bytes; returns the responses and whether the server closed the connection.
fn exchange(g: &Gateway, raw: &str) -> Vec<Resp> {
    let out = raw_exchange(g.addr, raw.as_bytes(), Duration::from_secs(3));
    parse_responses(&out)
}

fn store_lookups(g: &Gateway) -> f64 {
    g.metric(r#"agentry_gateway_store_queries_total{op="find_by_hash"}"#)
}

#[test]
fn ambiguous_framing_is_refused_and_the_connection_closed() {
    let (g, up) = setup();
    let key = new_key(&g);
    // Each attack carries, after its ambiguous head, a second request to a marker path; the
    // upstream must never see either.
    let smuggled = format!(
        "GET /v0/inboxes/{SUPPORT}/smuggled HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {key}\r\n\r\n"
    );
    let head = |extra: &str, version: &str| {
        format!(
            "POST {P}/attack {version}\r\nHost: g\r\nAuthorization: Bearer {key}\r\n{extra}\r\n"
        )
    };
    let attacks = [
        // pingora #945: Content-Length and Transfer-Encoding together.
        head(
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
            "HTTP/1.1",
        ) + "0\r\n\r\n"
            + &smuggled,
        head(
            "Transfer-Encoding: chunked\r\nContent-Length: 40\r\n",
            "HTTP/1.1",
        ) + "0\r\n\r\n"
            + &smuggled,
        head("Content-Length: 5\r\nContent-Length: 6\r\n", "HTTP/1.1") + "hello!" + &smuggled,
        head("Content-Length: +5\r\n", "HTTP/1.1") + "hello" + &smuggled,
        head("Content-Length: -0\r\n", "HTTP/1.1") + &smuggled,
        head(
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
            "HTTP/1.1",
        ) + "0\r\n\r\n"
            + &smuggled,
        head("Transfer-Encoding: chunked, identity\r\n", "HTTP/1.1") + "0\r\n\r\n" + &smuggled,
        head("Transfer-Encoding: identity\r\n", "HTTP/1.1") + &smuggled,
        head("Transfer-Encoding: chunked\r\n", "HTTP/1.0") + "0\r\n\r\n" + &smuggled,
        head("Transfer-Encoding:  chunked\x0b\r\n", "HTTP/1.1") + "0\r\n\r\n" + &smuggled,
        head("Transfer-Encoding: \tchunked\r\n", "HTTP/1.1") + "0\r\n\r\n" + &smuggled,
        head("Transfer-Encoding: xchunked\r\n", "HTTP/1.1") + "0\r\n\r\n" + &smuggled,
        head(
            "Upgrade: websocket\r\nConnection: Upgrade\r\nContent-Length: 0\r\n",
            "HTTP/1.1",
        ) + &smuggled,
    ];
    for (i, raw) in attacks.iter().enumerate() {
        let rs = exchange(&g, raw);
        assert!(!rs.is_empty(), "attack {i}: no response");
        assert_eq!(rs[0].status, 400, "attack {i}: {:?}", rs[0]);
        assert_eq!(
            rs.len(),
            1,
            "attack {i}: the connection served a second request"
        );
    }
    assert_eq!(up.count(), 0, "{:?}", up.requests());
}

#[test]
fn a_refused_requests_body_is_never_read_as_a_request() {
    let (g, up) = setup();
    let key = new_key(&g);
    let inner = format!(
        "GET /v0/inboxes/{SUPPORT}/smuggled HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {key}\r\n\r\n"
    );
    for auth in ["", "Authorization: Bearer agk_wrong\r\n"] {
        let raw = format!(
            "POST {P} HTTP/1.1\r\nHost: g\r\n{auth}Content-Length: {}\r\n\r\n{inner}",
            inner.len()
        );
        let rs = exchange(&g, &raw);
        assert_eq!(rs.len(), 1, "{rs:?}");
        assert_eq!(rs[0].status, 401);
    }
    // The same on the management listener path.
    let raw = format!(
        "POST /human/v0/inboxes/{SUPPORT}/api-keys HTTP/1.1\r\nHost: g\r\nContent-Length: {}\r\n\r\n{inner}",
        inner.len()
    );
    let rs = exchange(&g, &raw);
    assert_eq!(rs.len(), 1);
    assert_eq!(rs[0].status, 401);
    assert_eq!(up.count(), 0, "{:?}", up.requests());
}

#[test]
fn pipelined_requests_are_each_authenticated() {
    let (g, up) = setup();
    let key = new_key(&g);
    let raw = format!(
        "GET {P}/one HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {key}\r\n\r\n\
         GET {P}/two HTTP/1.1\r\nHost: g\r\n\r\n\
         GET {P}/three HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n"
    );
    let rs = exchange(&g, &raw);
    // pingora answers pipelined requests one by one only when pipelining is enabled; by default
    // it answers the first and closes. Either way each request stands alone: the unauthenticated
    // one never reaches the upstream.
    assert_eq!(rs[0].status, 200);
    if rs.len() > 1 {
        assert_eq!(rs[1].status, 401);
    }
    let targets: Vec<String> = up.requests().into_iter().map(|r| r.target).collect();
    assert!(!targets.contains(&format!("{P}/two")), "{targets:?}");
    assert_eq!(targets[0], format!("{P}/one"));
}

#[test]
fn header_limits_and_oversized_credentials_cost_no_lookup() {
    let (g, up) = setup();
    let before = store_lookups(&g);
    // 1 MiB Authorization header: refused by the header limits, never hashed.
    let huge = format!("Bearer {}", "a".repeat(1 << 20));
    let raw = format!("GET {P} HTTP/1.1\r\nHost: g\r\nAuthorization: {huge}\r\n\r\n");
    let out = raw_exchange(g.addr, raw.as_bytes(), Duration::from_secs(5));
    let rs = parse_responses(&out);
    assert!(
        rs.is_empty() || rs[0].status == 431 || rs[0].status == 400,
        "{:?}",
        rs.first().map(|r| r.status)
    );
    // Just over the configured 32 KiB: 431 with a JSON body.
    let big = format!("Bearer {}", "a".repeat(33 * 1024));
    let r = g.req("GET", P, &[("Authorization", &big)], None);
    assert_eq!(r.status, 431);
    assert_eq!(r.json()["code"], "request_header_fields_too_large");
    // Too many header fields.
    let many: Vec<(String, String)> = (0..120).map(|i| (format!("x-h{i}"), "v".into())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let r = g.req("GET", P, &many, None);
    assert_eq!(r.status, 431);
    // Oversized and bad-checksum keys: refused before any lookup.
    let key = new_key(&g);
    let mut bad = key.clone().into_bytes();
    let i = bad.len() - 3;
    bad[i] = if bad[i] == b'x' { b'y' } else { b'x' };
    let bad = String::from_utf8(bad).unwrap();
    for k in [bad.as_str(), &format!("{key}{key}"), &"z".repeat(10_000)] {
        assert_eq!(g.call("GET", P, k).status, 401);
    }
    assert_eq!(store_lookups(&g), before);
    assert_eq!(up.count(), 0);
}

#[test]
fn distinct_unknown_keys_are_bounded_by_the_failure_limit() {
    let (g, _up) =
        setup_with("[limits]\nfailed_auth_per_ip = 50\nfailed_auth_window_seconds = 60\n");
    let format = agentry_gateway::keys::KeyFormat::new("agk");
    let valid = new_key(&g);
    // Cached before the flood.
    assert_eq!(g.call("GET", P, &valid).status, 200);
    let uncached = new_key(&g);
    let before = store_lookups(&g);
    let mut c = KeepAlive::connect(g.addr);
    let mut statuses = std::collections::BTreeMap::new();
    let mut retry_after = None;
    let started = std::time::Instant::now();
    for _ in 0..10_000 {
        let auth = format!("Bearer {}", format.generate().plaintext);
        let r = c.send("GET", P, &[("Authorization", &auth)]);
        if r.status == 429 {
            retry_after = r.header("retry-after").map(str::to_owned);
        }
        *statuses.entry(r.status).or_insert(0) += 1;
    }
    assert_eq!(statuses.get(&401), Some(&50), "{statuses:?}");
    assert_eq!(statuses.get(&429), Some(&9_950), "{statuses:?}");
    // Retry-After: what is left of the client's window, which began with its first failure.
    let left: u64 = retry_after.unwrap().parse().unwrap();
    let elapsed = started.elapsed().as_secs();
    assert!(
        left <= 60 && left + elapsed + 1 >= 60,
        "{left} s left after {elapsed} s"
    );
    assert_eq!(store_lookups(&g) - before, 50.0);
    // A key already cached still works from that client, and so does a management token:
    // neither needs a store query. A key not yet cached is refused until the window ends.
    assert_eq!(g.call("GET", P, &valid).status, 200);
    let r = g.mgmt(
        "GET",
        &format!("/human/v0/inboxes/{SUPPORT}/api-keys"),
        ADMIN_TOKEN,
        None,
    );
    assert_eq!(r.status, 200);
    let r = g.call("GET", P, &uncached);
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["code"], "too_many_failed_authentications");
    assert_eq!(store_lookups(&g) - before, 50.0);
    // A wrong management token counts too.
    let r = g.mgmt(
        "GET",
        &format!("/human/v0/inboxes/{SUPPORT}/api-keys"),
        "agm_guess",
        None,
    );
    assert_eq!(r.status, 429);
}

#[test]
fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let up = Upstream::start();
    let body = auth_and_upstream_toml(
        "[limits]\nfailed_auth_per_ip = 3\nfailed_auth_window_seconds = 60\n",
        up.addr,
    );
    // Trusted: each forwarded client has its own budget.
    let g = Gateway::start_with(&body, "trusted_proxies = [\"127.0.0.1/32\"]");
    for _ in 0..3 {
        let r = g.req(
            "GET",
            P,
            &[
                ("Authorization", "Bearer agk_x"),
                ("X-Forwarded-For", "9.9.9.9"),
            ],
            None,
        );
        assert_eq!(r.status, 401);
    }
    let r = g.req(
        "GET",
        P,
        &[
            ("Authorization", "Bearer agk_x"),
            ("X-Forwarded-For", "9.9.9.9"),
        ],
        None,
    );
    assert_eq!(r.status, 429);
    let r = g.req(
        "GET",
        P,
        &[
            ("Authorization", "Bearer agk_x"),
            ("X-Forwarded-For", "8.8.8.8"),
        ],
        None,
    );
    assert_eq!(r.status, 401);
    let key = g.create_key(SUPPORT, "xff")["api_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let auth = format!("Bearer {key}");
    let r = g.req(
        "GET",
        P,
        &[("Authorization", &auth), ("X-Forwarded-For", "7.7.7.7")],
        None,
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        up.requests()[0].all("x-forwarded-for"),
        ["7.7.7.7, 127.0.0.1"]
    );
    drop(g);

    // Untrusted (the default): a client cannot buy a fresh budget by inventing addresses,
    // and its X-Forwarded-For is not passed on.
    let g = Gateway::start_with(&body, "");
    for i in 0..3 {
        let xff = format!("1.1.1.{i}");
        let r = g.req(
            "GET",
            P,
            &[("Authorization", "Bearer agk_x"), ("X-Forwarded-For", &xff)],
            None,
        );
        assert_eq!(r.status, 401);
    }
    let r = g.req(
        "GET",
        P,
        &[
            ("Authorization", "Bearer agk_x"),
            ("X-Forwarded-For", "2.2.2.2"),
        ],
        None,
    );
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("60"));
    assert_eq!(r.json()["name"], "RateLimitError");
}

#[test]
fn secrets_never_leak_into_logs_metrics_or_error_bodies() {
    std::env::set_var("GATEWAY_TEST_LOG", "debug");
    let (g, up) = setup_with("[limits]\nfailed_auth_per_ip = 0\n");
    std::env::remove_var("GATEWAY_TEST_LOG");
    let mut secrets: Vec<String> = vec![ADMIN_TOKEN.into(), POD_TOKEN.into(), INBOX_TOKEN.into()];
    let mut bodies = Vec::new();
    let series_before = series_count(&g.metrics());
    let inboxes = [
        "support@example.com",
        "sales@example.com",
        "ops@other.com",
        "nopod@example.com",
    ];
    let mut keys = Vec::new();
    for (i, inbox) in inboxes.iter().cycle().take(40).enumerate() {
        let k = g.create_key(inbox, &format!("leak{i}"));
        keys.push((
            inbox.to_string(),
            k["api_key"].as_str().unwrap().to_owned(),
            k["api_key_id"].as_str().unwrap().to_owned(),
        ));
    }
    for (inbox, key, id) in &keys {
        secrets.push(key.clone());
        for target in [
            format!("/v0/inboxes/{inbox}/m"),
            "/v0/inboxes/other@x/m".to_owned(),
            format!("/v0/inboxes/{inbox}/../x"),
            format!("/v0/inboxes/{inbox}/m?api_key={key}"),
        ] {
            bodies.push(g.call("GET", &target, key).body);
        }
        let mut truncated = key.clone();
        truncated.pop();
        bodies.push(
            g.call("GET", &format!("/v0/inboxes/{inbox}"), &truncated)
                .body,
        );
        bodies.push(
            g.mgmt(
                "GET",
                &format!("/human/v0/inboxes/{inbox}/api-keys"),
                key,
                None,
            )
            .body,
        );
        bodies.push(
            g.mgmt(
                "GET",
                &format!("/human/v0/inboxes/{inbox}/api-keys"),
                ADMIN_TOKEN,
                None,
            )
            .body,
        );
        bodies.push(
            g.mgmt(
                "POST",
                &format!("/human/v0/inboxes/{inbox}/api-keys"),
                ADMIN_TOKEN,
                Some(&format!(r#"{{"name":"{key}","x":1}}"#)),
            )
            .body,
        );
        let _ = id;
    }
    bodies.push(
        g.mgmt("GET", "/human/v0/nope", "agm_not_a_token_but_secret", None)
            .body,
    );
    secrets.push("agm_not_a_token_but_secret".into());
    // Delete half and use them again.
    for (inbox, key, id) in keys.iter().step_by(2) {
        let r = g.mgmt(
            "DELETE",
            &format!("/human/v0/inboxes/{inbox}/api-keys/{id}"),
            ADMIN_TOKEN,
            None,
        );
        assert_eq!(r.status, 204);
        bodies.push(g.call("GET", &format!("/v0/inboxes/{inbox}"), key).body);
    }
    wait_until("flush", Duration::from_secs(5), || {
        g.metric("agentry_gateway_usage_flushes_total") >= 1.0
    });
    let metrics = g.metrics();
    let logs = g.logs();
    assert!(logs.contains("DEBUG"), "debug logging was on");
    for s in &secrets {
        if let Some(line) = logs.lines().find(|l| l.contains(s.as_str())) {
            panic!(
                "a secret is in the logs: {}",
                line.replace(s.as_str(), "<SECRET>")
            );
        }
        assert!(!metrics.contains(s.as_str()), "a secret is in /metrics");
        for b in &bodies {
            assert!(
                !String::from_utf8_lossy(b).contains(s.as_str()),
                "a secret is in an error body"
            );
        }
    }
    // Bounded labels: the series did not grow with keys or inboxes beyond the fixed set.
    let series_after = series_count(&metrics);
    let distinct: HashSet<&str> = metrics.lines().filter(|l| !l.starts_with('#')).collect();
    assert!(
        series_after <= series_before + 5,
        "{series_before} -> {series_after}"
    );
    assert!(
        distinct.iter().all(|l| !l.contains('@')),
        "an inbox id became a label"
    );
    assert!(up.count() >= 20);
}

fn series_count(metrics: &str) -> usize {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count()
}

#[test]
fn kill_9_during_creates_and_deletes_loses_nothing_acknowledged() {
    let mut g = Gateway::start("");
    let addr = g.addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let worker = std::thread::spawn(move || {
        let mut created: Vec<String> = Vec::new();
        let mut deleted: Vec<String> = Vec::new();
        let auth = format!("Bearer {ADMIN_TOKEN}");
        let mut i = 0;
        while !stop2.load(std::sync::atomic::Ordering::SeqCst) {
            i += 1;
            let body = format!(r#"{{"name":"burst{i}"}}"#);
            let attempt = std::panic::catch_unwind(|| {
                request(
                    addr,
                    "POST",
                    &format!("/human/v0/inboxes/{SUPPORT}/api-keys"),
                    &[
                        ("Authorization", &auth),
                        ("Content-Type", "application/json"),
                    ],
                    Some(body.as_bytes()),
                )
            });
            let Ok(r) = attempt else { break };
            if r.status == 201 {
                created.push(r.json()["api_key_id"].as_str().unwrap().to_owned());
            }
            if i % 3 == 0 {
                if let Some(id) = created.first().cloned() {
                    let attempt = std::panic::catch_unwind(|| {
                        request(
                            addr,
                            "DELETE",
                            &format!("/human/v0/inboxes/{SUPPORT}/api-keys/{id}"),
                            &[("Authorization", &auth)],
                            None,
                        )
                    });
                    let Ok(r) = attempt else {
                        // Killed mid-delete: committed or not, both are correct.
                        created.retain(|c| c != &id);
                        break;
                    };
                    if r.status == 204 {
                        created.retain(|c| c != &id);
                        deleted.push(id);
                    }
                }
            }
        }
        (created, deleted)
    });
    wait_until("a burst under way", Duration::from_secs(20), || {
        g.metric(r#"agentry_gateway_store_queries_total{op="delete"}"#) >= 20.0
    });
    g.kill9();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (created, deleted) = worker.join().unwrap();
    g.restart();
    let mut present = HashSet::new();
    let mut token: Option<String> = None;
    loop {
        let mut t = format!("/human/v0/inboxes/{SUPPORT}/api-keys?limit=1000");
        if let Some(tok) = &token {
            t.push_str(&format!("&page_token={tok}"));
        }
        let v = g.mgmt("GET", &t, ADMIN_TOKEN, None).json();
        for k in v["api_keys"].as_array().unwrap() {
            present.insert(k["api_key_id"].as_str().unwrap().to_owned());
        }
        match v.get("next_page_token") {
            Some(x) => token = Some(x.as_str().unwrap().to_owned()),
            None => break,
        }
    }
    for id in &created {
        assert!(present.contains(id), "201'd key {id} is gone");
    }
    for id in &deleted {
        assert!(!present.contains(id), "204'd key {id} came back");
    }
    assert!(!created.is_empty() && !deleted.is_empty());
    g.kill9();
    let conn = rusqlite::Connection::open(g.db_path()).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}

#[test]
fn sigterm_under_load_finishes_in_flight_requests() {
    let up = Upstream::start_mode(Mode::Slow);
    let body = auth_and_upstream_toml("[usage]\nflush_interval_ms = 600000\n", up.addr);
    let mut g = Gateway::start_with(&body, "grace_period_seconds = 3");
    let keys: Vec<(String, String)> = (0..8)
        .map(|i| {
            let k = g.create_key(SUPPORT, &format!("load{i}"));
            (
                k["api_key"].as_str().unwrap().to_owned(),
                k["api_key_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let addr = g.addr;
    let handles: Vec<_> = keys
        .iter()
        .map(|(k, _)| {
            let auth = format!("Bearer {k}");
            std::thread::spawn(move || {
                request(addr, "GET", P, &[("Authorization", &auth)], None).status
            })
        })
        .collect();
    wait_until("requests in flight", Duration::from_secs(10), || {
        up.count() == 8
    });
    let status = g.sigterm();
    for h in handles {
        assert_eq!(h.join().unwrap(), 200);
    }
    assert!(status.success(), "{status}");
    g.restart();
    let v = g
        .mgmt(
            "GET",
            &format!("/human/v0/inboxes/{SUPPORT}/api-keys"),
            ADMIN_TOKEN,
            None,
        )
        .json();
    let with_use = v["api_keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k.get("used_at").is_some())
        .count();
    assert_eq!(with_use, 8, "every used_at mark was saved");
}

/// A gateway with a 600 ms request-head deadline, its upstream, and a valid key.
fn slow_head_gateway() -> (Gateway, Upstream, String) {
    let up = Upstream::start();
    let body = auth_and_upstream_toml("", up.addr);
    let g = Gateway::start_with(&body, "header_read_timeout_ms = 600");
    let key = g.create_key(SUPPORT, "slow")["api_key"]
        .as_str()
        .unwrap()
        .to_owned();
    (g, up, key)
}

#[test]
fn a_dribbled_request_head_is_cut_off_by_the_header_deadline() {
    let (g, up, key) = slow_head_gateway();
    // A head sent one piece every 200 ms: 10 pieces take 2 s, far past the 600 ms deadline.
    let head = format!(
        "GET {P} HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {key}\r\nX-Pad: aaaaaaaaaa\r\n\r\n"
    );
    let started = std::time::Instant::now();
    let (cut_off, text) = dribble(g.addr, head.as_bytes(), 10, Duration::from_millis(200));
    assert!(cut_off || !text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(8));
    assert_eq!(up.count(), 0);
    // A head that arrives in time, even in pieces, and a slow body are fine.
    let mut c = KeepAlive::connect(g.addr);
    let auth = format!("Bearer {key}");
    assert_eq!(c.send("GET", P, &[("Authorization", &auth)]).status, 200);
    std::thread::sleep(Duration::from_millis(900)); // idle between requests is not head time
    assert_eq!(c.send("GET", P, &[("Authorization", &auth)]).status, 200);
    let mut s = std::net::TcpStream::connect(g.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    use std::io::{Read, Write};
    s.write_all(format!("POST {P} HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {key}\r\nContent-Length: 4\r\nConnection: close\r\n\r\nab").as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(900));
    s.write_all(b"cd").unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    assert!(
        String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(up.count(), 3);
}

/// Sends `bytes` in `pieces` parts `gap` apart; returns whether the gateway cut the connection
/// before the last piece, and whatever it answered.
fn dribble(
    addr: std::net::SocketAddr,
    bytes: &[u8],
    pieces: usize,
    gap: Duration,
) -> (bool, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut cut_off = false;
    for piece in bytes.chunks(bytes.len().div_ceil(pieces)) {
        if s.write_all(piece).is_err() {
            cut_off = true;
            break;
        }
        std::thread::sleep(gap);
    }
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    (cut_off, String::from_utf8_lossy(&rest).into_owned())
}

#[test]
fn empty_lines_before_the_request_line_do_not_stop_the_header_deadline() {
    let (g, up, key) = slow_head_gateway();
    let head = format!(
        "GET {P} HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {key}\r\nX-Pad: aaaaaaaaaa\r\n\r\n"
    );
    // Each lead before a head dribbled over 2 s; all at once, from many connections.
    let leads = [
        "\r\n\r\n",
        "\n\n",
        "\r\n",
        "\n",
        "\r\r\n\n",
        &"\r\n".repeat(40),
    ];
    let started = std::time::Instant::now();
    let workers: Vec<_> = leads
        .iter()
        .flat_map(|lead| std::iter::repeat_n(lead.to_string(), 4))
        .map(|lead| {
            let raw = format!("{lead}{}", head);
            let addr = g.addr;
            std::thread::spawn(move || {
                dribble(addr, raw.as_bytes(), 10, Duration::from_millis(200))
            })
        })
        .collect();
    for w in workers {
        let (cut_off, text) = w.join().unwrap();
        assert!(cut_off || !text.starts_with("HTTP/1.1 200"), "{text}");
    }
    // Only empty lines, slowly, forever: cut too.
    let (cut_off, text) = dribble(
        g.addr,
        "\r\n".repeat(20).as_bytes(),
        20,
        Duration::from_millis(100),
    );
    assert!(cut_off || text.is_empty(), "{text}");
    assert!(started.elapsed() < Duration::from_secs(8));
    assert_eq!(up.count(), 0, "{:?}", up.requests());

    // A second request on a kept-alive connection, after a stray CRLF, is on the clock too.
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(g.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    let mut r = std::io::BufReader::new(s.try_clone().unwrap());
    assert_eq!(read_response(&mut r, false).unwrap().status, 200);
    let mut cut_off = false;
    let next = format!("\r\n{head}");
    for piece in next.as_bytes().chunks(next.len() / 10 + 1) {
        if s.write_all(piece).is_err() {
            cut_off = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let second = read_response(&mut r, false);
    assert!(cut_off || second.is_err(), "{:?}", second.map(|r| r.status));
    assert_eq!(up.count(), 1);

    // In time, leading empty lines are harmless: the request is served.
    let rs = exchange(&g, &format!("\r\n\r\n{head}"));
    assert_eq!(rs[0].status, 200);
}

fn encode_all(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}

#[test]
fn a_key_anywhere_in_the_url_is_refused_and_never_logged() {
    let (g, up) = setup();
    let key = new_key(&g);
    let auth = format!("Bearer {key}");
    let rest = &key[4..];
    let spellings = [
        key.clone(),
        format!("agk%5F{rest}"),
        format!("%61gk_{rest}"),
        encode_all(&key),
        encode_all(&key).to_lowercase(),
        format!("%2561gk_{rest}"),
        format!("{}%{:02X}{}", &key[..30], key.as_bytes()[30], &key[31..]),
    ];
    let mut cases = Vec::new();
    for sp in &spellings {
        // In the query, in values and names, and in the path (where escapes are allowed).
        cases.push((format!("{P}/m?k={sp}"), "credential_in_query"));
        cases.push((format!("{P}/m?a=1&{sp}=1"), "credential_in_query"));
        cases.push((format!("{P}/m?{sp}"), "credential_in_query"));
        if !sp.contains("%25") {
            cases.push((format!("{P}/{sp}"), "credential_in_path"));
            cases.push((format!("{P}/x{sp}y/z"), "credential_in_path"));
        }
        cases.push((
            format!("/human/v0/inboxes/{SUPPORT}/api-keys?k={sp}"),
            "credential_in_query",
        ));
    }
    cases.push((format!("/v0/inboxes/{key}"), "credential_in_path"));
    cases.push((
        format!("/human/v0/inboxes/{key}/api-keys"),
        "credential_in_path",
    ));
    for (target, code) in &cases {
        let r = g.req("GET", target, &[("Authorization", &auth)], None);
        assert_eq!(r.status, 400, "{target}");
        assert_eq!(r.json()["code"], *code, "{target}");
        assert_eq!(r.json()["name"], "ValidationError");
        assert!(!r.text().contains(rest), "the key came back in the body");
    }
    assert_eq!(
        up.count(),
        0,
        "{:?}",
        up.requests().iter().map(|r| &r.target).collect::<Vec<_>>()
    );
    // Near misses are not keys: forwarded as usual.
    let mut bad = key.clone().into_bytes();
    let last = bad.len() - 1;
    bad[last] = if bad[last] == b'a' { b'b' } else { b'a' };
    let bad = String::from_utf8(bad).unwrap();
    for target in [
        format!("{P}/{bad}"),
        format!("{P}/m?k={bad}"),
        format!("{P}/m?k={}", &key[..key.len() - 1]),
    ] {
        assert_eq!(
            g.req("GET", &target, &[("Authorization", &auth)], None)
                .status,
            200,
            "{target}"
        );
    }
    // The access log never printed any spelling.
    let flushed = std::time::Instant::now();
    wait_until("access log", Duration::from_secs(5), || {
        g.logs().matches("status=").count() >= cases.len()
            || flushed.elapsed() > Duration::from_secs(2)
    });
    let logs = g.logs();
    for sp in &spellings {
        assert!(!logs.contains(sp.as_str()), "a key spelling is in the logs");
    }
    assert!(!logs.contains(rest));
}

#[test]
fn overlong_utf8_and_lookalikes_of_dot_and_slash_are_refused() {
    let (g, up) = setup();
    let key = new_key(&g);
    let auth = format!("Bearer {key}");
    for tail in [
        "%C0%AE%C0%AE/sales@example.com",
        "%E0%80%AE%E0%80%AE",
        "x%C0%AFy",
        "x%C1%9Cy",
        "%F0%80%80%AE",
        "%EF%BC%8E%EF%BC%8E/sales@example.com",
        "x%EF%BC%8Fy",
        "x%EF%BC%BCy",
        "%E2%80%A5",
        "%E2%80%A6",
        "%EF%B9%92%EF%B9%92",
        "x%E2%88%95y",
        "%80",
        "%C3",
        "%ED%A0%80",
        "%FF%FE",
    ] {
        for target in [
            format!("{P}/{tail}"),
            format!("/v0/inboxes/support@example.com{tail}/m"),
        ] {
            let r = g.req("GET", &target, &[("Authorization", &auth)], None);
            assert_eq!(r.status, 400, "{target}");
            assert_eq!(r.json()["code"], "bad_request_target", "{target}");
        }
    }
    assert_eq!(up.count(), 0);
    // Real non-ASCII text still passes.
    assert_eq!(
        g.req(
            "GET",
            &format!("{P}/caf%C3%A9"),
            &[("Authorization", &auth)],
            None
        )
        .status,
        200
    );
}

#[test]
fn targets_pingora_would_rewrite_are_refused() {
    let (g, up) = setup();
    let key = new_key(&g);
    let sent = [
        format!("GET {P}/m#frag HTTP/1.1"),
        format!("GET {P}/m#/../../sales@example.com HTTP/1.1"),
        format!("GET {P}#x HTTP/1.1"),
        format!("GET {P}/m?a=b#c HTTP/1.1"),
        format!("GET {P}/a b HTTP/1.1"),
        format!("GET {P}/m?a=b c HTTP/1.1"),
        format!("GET {P}/m  HTTP/1.1"),
        format!("GET {P}/m   HTTP/1.1"),
        format!("GET  {P}/m HTTP/1.1"),
        format!("GET {P}/m\tHTTP/1.1"),
        format!("GET {P}/m HTTP/1.1 "),
        format!("GET {P}/caf\u{e9} HTTP/1.1"),
        format!("GET {P}/<x> HTTP/1.1"),
        format!("GET {P}/\"x HTTP/1.1"),
        format!("GET {P}/m?q=\u{1} HTTP/1.1"),
    ];
    for line in &sent {
        let raw = format!("{line}\r\nHost: g\r\nAuthorization: Bearer {key}\r\n\r\n");
        let rs = exchange(&g, &raw);
        // Refused with 400 (or not parsed at all); never a 200, never upstream.
        if let Some(r) = rs.first() {
            assert_eq!(r.status, 400, "{line:?}");
        }
    }
    assert_eq!(
        up.count(),
        0,
        "{:?}",
        up.requests().iter().map(|r| &r.target).collect::<Vec<_>>()
    );
    // The plain request line still works, with empty lines before it too.
    let rs = exchange(
        &g,
        &format!("\r\nGET {P}/m HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {key}\r\n\r\n"),
    );
    assert_eq!(rs[0].status, 200);
}

/// A gateway that believes X-Forwarded-For from loopback, so one test can be many clients.
fn many_clients_gateway(limit: u32) -> (Gateway, Upstream) {
    let up = Upstream::start();
    let body = auth_and_upstream_toml(
        &format!("[limits]\nfailed_auth_per_ip = {limit}\nfailed_auth_window_seconds = 60\n"),
        up.addr,
    );
    let g = Gateway::start_with(&body, "trusted_proxies = [\"127.0.0.1/32\"]");
    (g, up)
}

#[test]
fn failing_clients_never_lock_out_clients_that_never_failed() {
    let (g, _up) = many_clients_gateway(3);
    let format = agentry_gateway::keys::KeyFormat::new("agk");
    let mut c = KeepAlive::connect(g.addr);
    // 600 addresses (IPv4, and IPv6 in distinct /64s) each fail past their limit.
    for i in 0..600u32 {
        let ip = if i % 2 == 0 {
            format!("10.{}.{}.{}", i >> 16 & 255, i >> 8 & 255, i & 255)
        } else {
            format!("2001:db8:{:x}:{:x}::1", i >> 16, i & 0xffff)
        };
        for n in 0..4 {
            let auth = format!("Bearer {}", format.generate().plaintext);
            let r = c.send(
                "GET",
                P,
                &[("Authorization", &auth), ("X-Forwarded-For", &ip)],
            );
            assert_eq!(r.status, if n < 3 { 401 } else { 429 }, "{ip} #{n}");
        }
    }
    // 50 fresh clients: valid management tokens and valid, never-cached keys all pass.
    for i in 0..50u32 {
        let ip = format!("192.0.2.{}", i + 1);
        let key = g.create_key(SUPPORT, &format!("fresh{i}"))["api_key"]
            .as_str()
            .unwrap()
            .to_owned();
        let auth = format!("Bearer {key}");
        let r = c.send(
            "GET",
            P,
            &[("Authorization", &auth), ("X-Forwarded-For", &ip)],
        );
        assert_eq!(r.status, 200, "{ip}");
        let admin = format!("Bearer {ADMIN_TOKEN}");
        let r = c.send(
            "GET",
            &format!("/human/v0/inboxes/{SUPPORT}/api-keys?limit=1"),
            &[("Authorization", &admin), ("X-Forwarded-For", &ip)],
        );
        assert_eq!(r.status, 200, "{ip}");
    }
}

#[test]
fn ipv6_clients_are_limited_by_their_64() {
    let (g, _up) = many_clients_gateway(3);
    let format = agentry_gateway::keys::KeyFormat::new("agk");
    let mut c = KeepAlive::connect(g.addr);
    let mut send = |ip: &str| {
        let auth = format!("Bearer {}", format.generate().plaintext);
        c.send(
            "GET",
            P,
            &[("Authorization", &auth), ("X-Forwarded-For", ip)],
        )
        .status
    };
    // Three addresses of one /64 share its budget...
    assert_eq!(send("2001:db8:1:2::1"), 401);
    assert_eq!(send("2001:db8:1:2::ffff"), 401);
    assert_eq!(send("2001:db8:1:2:aaaa:bbbb:cccc:dddd"), 401);
    for suffix in ["::2", "::1:2", ":ffff:ffff:ffff:ffff"] {
        assert_eq!(send(&format!("2001:db8:1:2{suffix}")), 429, "{suffix}");
    }
    // ...another /64 has its own.
    assert_eq!(send("2001:db8:1:3::1"), 401);
    // IPv4-mapped is the IPv4 client.
    assert_eq!(send("203.0.113.9"), 401);
    assert_eq!(send("::ffff:203.0.113.9"), 401);
    assert_eq!(send("203.0.113.9"), 401);
    assert_eq!(send("::ffff:203.0.113.9"), 429);
}

#[test]
fn concurrent_connections_of_one_client_get_exactly_the_limit_of_lookups() {
    let (g, _up) =
        setup_with("[limits]\nfailed_auth_per_ip = 40\nfailed_auth_window_seconds = 60\n");
    let before = store_lookups(&g);
    let addr = g.addr;
    let workers: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                let format = agentry_gateway::keys::KeyFormat::new("agk");
                let mut c = KeepAlive::connect(addr);
                let mut statuses = Vec::new();
                for _ in 0..60 {
                    let auth = format!("Bearer {}", format.generate().plaintext);
                    statuses.push(c.send("GET", P, &[("Authorization", &auth)]).status);
                }
                statuses
            })
        })
        .collect();
    let all: Vec<u16> = workers
        .into_iter()
        .flat_map(|w| w.join().unwrap())
        .collect();
    assert_eq!(all.iter().filter(|&&s| s == 401).count(), 40);
    assert_eq!(all.iter().filter(|&&s| s == 429).count(), 480 - 40);
    assert_eq!(store_lookups(&g) - before, 40.0);
}

#[test]
fn requests_without_a_credential_do_not_count_towards_the_limit() {
    let (g, _up) =
        setup_with("[limits]\nfailed_auth_per_ip = 3\nfailed_auth_window_seconds = 60\n");
    let mut c = KeepAlive::connect(g.addr);
    for _ in 0..50 {
        let r = c.send("GET", P, &[]);
        assert_eq!(r.status, 401);
        assert_eq!(r.json()["code"], "missing_authorization");
        let r = c.send("GET", &format!("/human/v0/inboxes/{SUPPORT}/api-keys"), &[]);
        assert_eq!(r.status, 401);
        assert_eq!(r.json()["code"], "missing_authorization");
    }
    // The client still has its whole budget: three failures, then 429.
    let format = agentry_gateway::keys::KeyFormat::new("agk");
    for n in 0..4 {
        let auth = format!("Bearer {}", format.generate().plaintext);
        let r = c.send("GET", P, &[("Authorization", &auth)]);
        assert_eq!(r.status, if n < 3 { 401 } else { 429 });
    }
    let r = c.send(
        "GET",
        &format!("/human/v0/inboxes/{SUPPORT}/api-keys"),
        &[("Authorization", "Bearer agm_wrong")],
    );
    assert_eq!(r.status, 429);
    assert!(r.header("retry-after").is_some());
}
