//! DNS names in `upstreams[].addresses`: resolved at start (a name that does not resolve is
//! refused, naming the field), resolved again every `resolve_interval_seconds`; every address a
//! name resolves to joins the group, and one that refuses connections fails no request.

mod common;

use std::time::Duration;

use common::*;

const INBOX: &str = "support@example.com";

/// The standard upstream group, with its one address written as `addresses` instead.
fn group(up: &Upstream, addresses: &str, extra: &str) -> String {
    upstream_toml(&[up.addr], extra).replace(&format!("\"{}\"", up.addr), addresses)
}

#[test]
fn a_name_resolves_at_start_and_is_served() {
    let up = Upstream::start();
    let g = Gateway::start(&group(
        &up,
        &format!("\"localhost:{}\"", up.addr.port()),
        "resolve_interval_seconds = 1",
    ));
    let key = g.api_key(INBOX, "k");
    for _ in 0..10 {
        let r = g.call("GET", &format!("/v0/inboxes/{INBOX}"), &key);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(up.count(), 10);
    // Resolved again a few times meanwhile, without a failure.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        g.call("GET", &format!("/v0/inboxes/{INBOX}"), &key).status,
        200
    );
    assert_eq!(
        g.metric("agentry_gateway_upstream_resolve_failures_total{upstream=\"inbox\"}"),
        0.0
    );
}

/// `localhost` may also stand for `::1`, where the upstream does not listen: written out here
/// so the test holds on any host. The refused address costs no request (one connect retry on
/// the next address, until the health check takes it out).
#[test]
fn an_address_of_a_name_that_refuses_fails_no_request() {
    let up = Upstream::start();
    let port = up.addr.port();
    let g = Gateway::start(&group(
        &up,
        &format!("\"[::1]:{port}\", \"localhost:{port}\""),
        "",
    ));
    let key = g.api_key(INBOX, "k");
    for i in 0..20 {
        let r = g.call("GET", &format!("/v0/inboxes/{INBOX}"), &key);
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
    }
    assert_eq!(up.count(), 20);
    wait_until(
        "the health check takes [::1] out",
        Duration::from_secs(10),
        || g.metric("agentry_gateway_upstream_healthy_backends{upstream=\"inbox\"}") == 1.0,
    );
}

#[test]
fn a_name_that_does_not_resolve_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{}\"\n[store]\nkind = \"sqlite\"\npath = \"{}/g.db\"\n{}\n\
         [[upstreams]]\nname = \"inbox\"\naddresses = [\"127.0.0.1:1\", \"nonexistent.invalid:80\"]\n",
        free_port(),
        dir.path().display(),
        standard_auth_toml()
    );
    std::fs::write(&path, config).unwrap();
    for command in ["check-config", "run"] {
        let exit = run_to_exit(command, &path, Duration::from_secs(30));
        assert_eq!(exit.code, 2, "{command}: {}", exit.output);
        let prefix = format!(
            "error: {}: upstreams[0].addresses[1]: \"nonexistent.invalid:80\" does not resolve (",
            path.display()
        );
        let line = exit
            .output
            .lines()
            .find(|l| l.starts_with("error: "))
            .unwrap_or_default();
        assert!(
            line.starts_with(&prefix) && line.ends_with("): check the name, or write an IP:port"),
            "{command}: {}",
            exit.output
        );
    }
    assert!(
        !dir.path().join("g.db").exists(),
        "refused before opening the store"
    );
}
