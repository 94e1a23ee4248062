//! SIGHUP reloads the config file: a good file applies to the next request, a bad one or a
//! restart-only change is refused whole, named in the log and counted.

mod common;

use std::time::Duration;

use common::*;

const SUPPORT: &str = "support@example.com";
const OK: &str = r#"agentry_gateway_config_reloads_total{result="ok"}"#;
const ERROR: &str = r#"agentry_gateway_config_reloads_total{result="error"}"#;

fn edit(g: &Gateway, f: impl FnOnce(String) -> String) {
    let text = std::fs::read_to_string(&g.config_path).unwrap();
    let new = f(text.clone());
    assert_ne!(text, new, "the edit changed nothing");
    std::fs::write(&g.config_path, new).unwrap();
}

/// SIGHUP, then wait until the reload with this outcome has been counted.
fn reload(g: &Gateway, series: &str) {
    let before = g.metric(series);
    g.signal("-HUP");
    wait_until(series, Duration::from_secs(5), || {
        g.metric(series) == before + 1.0
    });
}

fn pod_token_block() -> String {
    format!(
        "[[management.tokens]]\nname = \"acme\"\nsha256 = \"{}\"\npods = [\"pod_acme\"]\n",
        sha256_hex(POD_TOKEN)
    )
}

fn list_keys(g: &Gateway, token: &str) -> u16 {
    g.mgmt(
        "GET",
        &format!("/human/v0/inboxes/{SUPPORT}/api-keys"),
        token,
        None,
    )
    .status
}

#[test]
fn a_management_token_removed_by_reload_is_refused_on_the_next_request() {
    let g = Gateway::start("");
    assert_eq!(list_keys(&g, POD_TOKEN), 200);
    let before = g.metric("agentry_gateway_config_last_reload_success_timestamp_seconds");
    assert!(before > 1.7e9, "{before}");
    edit(&g, |t| t.replace(&pod_token_block(), ""));
    std::thread::sleep(Duration::from_millis(1100));
    reload(&g, OK);
    let r = g.mgmt(
        "GET",
        &format!("/human/v0/inboxes/{SUPPORT}/api-keys"),
        POD_TOKEN,
        None,
    );
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json()["name"], "AuthenticationError");
    assert_eq!(list_keys(&g, ADMIN_TOKEN), 200);
    assert!(g.metric("agentry_gateway_config_last_reload_success_timestamp_seconds") > before);
    assert_eq!(g.metric(ERROR), 0.0);
    assert!(g.logs().contains("config reloaded from"), "{}", g.logs());
}

#[test]
fn a_route_added_by_reload_serves() {
    let up = Upstream::start();
    let routes = upstream_toml(&[up.addr], "").replace(
        "path = \"/v0/inboxes/{inbox_id}\"",
        "path = \"/v0/inboxes/{inbox_id}/threads\"",
    );
    let g = Gateway::start(&routes);
    let key = g.api_key(SUPPORT, "reload");
    let target = format!("/v0/inboxes/{SUPPORT}/messages");
    let r = g.call("GET", &target, &key);
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.json()["code"], "route_not_found");
    edit(&g, |t| {
        format!(
            "{t}\n[[routes]]\npath = \"/v0/inboxes/{{inbox_id}}/messages\"\nupstream = \"inbox\"\n"
        )
    });
    reload(&g, OK);
    let r = g.call("GET", &target, &key);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(up.requests().last().unwrap().target, target);
    // Counted in the logging phase, which runs after the response is written: poll.
    let series = r#"agentry_gateway_requests_total{kind="proxy",route="/v0/inboxes/{inbox_id}/messages",status_class="2xx"}"#;
    wait_until(
        "the new route's request is counted",
        std::time::Duration::from_secs(5),
        || g.metric(series) == 1.0,
    );
    // The route that was there before still serves.
    assert_eq!(
        g.call("GET", &format!("/v0/inboxes/{SUPPORT}/threads"), &key)
            .status,
        200
    );
}

#[test]
fn a_broken_file_keeps_the_running_config_and_is_counted() {
    let up = Upstream::start();
    let g = Gateway::start(&upstream_toml(&[up.addr], ""));
    let key = g.api_key(SUPPORT, "broken");
    let target = format!("/v0/inboxes/{SUPPORT}/messages");
    let good = std::fs::read_to_string(&g.config_path).unwrap();

    // A typo, and with it the removal of a token: neither applies.
    edit(&g, |t| {
        t.replace(&pod_token_block(), "") + "\n[logging]\nacess_log = true\n"
    });
    reload(&g, ERROR);
    assert!(
        g.logs()
            .contains("config reload refused, the running config stays: "),
        "{}",
        g.logs()
    );
    assert!(
        g.logs().contains("unknown field `acess_log`"),
        "{}",
        g.logs()
    );
    assert_eq!(list_keys(&g, POD_TOKEN), 200);
    assert_eq!(g.call("GET", &target, &key).status, 200);

    // A route to an upstream that does not exist: named by field.
    std::fs::write(
        &g.config_path,
        format!(
            "{good}\n[[routes]]\npath = \"/v0/inboxes/{{inbox_id}}/drafts\"\nupstream = \"mail\"\n"
        ),
    )
    .unwrap();
    reload(&g, ERROR);
    assert!(
        g.logs()
            .contains(".upstream: \"mail\" is not a defined upstream"),
        "{}",
        g.logs()
    );
    assert_eq!(g.metric(ERROR), 2.0);
    assert_eq!(g.metric(OK), 0.0);
    assert_eq!(g.call("GET", &target, &key).status, 200);
    let r = request(g.metrics_addr, "GET", "/readyz", &[], None);
    assert_eq!(r.status, 200);
}

#[test]
fn a_restart_only_change_is_refused_by_name_and_nothing_applies() {
    let g = Gateway::start("");
    edit(&g, |t| {
        t.replace("threads = 2", "threads = 3")
            .replace(&pod_token_block(), "")
    });
    reload(&g, ERROR);
    let logs = g.logs();
    assert!(
        logs.contains("config reload refused, the running config stays: server.threads changed, which only a restart applies; nothing was applied"),
        "{logs}"
    );
    // The token removal in the same file did not apply either.
    assert_eq!(list_keys(&g, POD_TOKEN), 200);
    assert_eq!(g.metric(OK), 0.0);
}
