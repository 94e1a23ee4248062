//! The README's quick start, as a user runs it: `config/gateway.toml` with `--demo-upstream`
//! (only the ports and the database path moved to free, private ones), then its four calls.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn the_quick_start_config_answers_its_four_calls() {
    let dir = tempfile::tempdir().unwrap();
    let (port, mport, uport) = (free_port(), free_port(), free_port());
    let shipped = std::fs::read_to_string("config/gateway.toml").unwrap();
    for needed in [
        "127.0.0.1:8080",
        "127.0.0.1:9090",
        "127.0.0.1:3000",
        "data/gateway.db",
    ] {
        assert!(
            shipped.contains(needed),
            "config/gateway.toml lost {needed}"
        );
    }
    let config = shipped
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"))
        .replace("127.0.0.1:9090", &format!("127.0.0.1:{mport}"))
        .replace("127.0.0.1:3000", &format!("127.0.0.1:{uport}"))
        .replace(
            "data/gateway.db",
            &dir.path().join("gateway.db").display().to_string(),
        );
    let g = Gateway::launch(dir, &config, port, mport, &["--demo-upstream"]);
    let token = "agm_quickstart_change_me";
    let inbox = "/human/v0/inboxes/support@example.com/api-keys";

    let created = g.mgmt("POST", inbox, token, Some(r#"{"name":"ci"}"#));
    assert_eq!(created.status, 201, "{}", created.text());
    let key = created.json()["api_key"].as_str().unwrap().to_owned();
    let listed = g.mgmt("GET", inbox, token, None);
    assert_eq!(listed.status, 200);
    assert_eq!(listed.json()["count"], 1);
    let metrics = request(g.metrics_addr, "GET", "/metrics", &[], None);
    assert_eq!(metrics.status, 200);
    assert!(metrics.text().contains("agentry_gateway_"));

    // The demo upstream becomes healthy with its first health check.
    let target = "/v0/inboxes/support@example.com/messages";
    let mut last = None;
    wait_until("the demo upstream answers", Duration::from_secs(20), || {
        let r = g.call("GET", target, &key);
        let ok = r.status == 200;
        last = Some(r);
        ok
    });
    let r = last.unwrap();
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body = r.json();
    assert_eq!(body["demo_upstream"], true);
    assert_eq!(body["method"], "GET");
    assert_eq!(body["path"], target);
    assert_eq!(body["inbox_id"], "support@example.com");
    assert_eq!(body["pod_id"], "pod_acme");
    assert_eq!(body["api_key_id"], created.json()["api_key_id"]);
    let logs = g.logs();
    assert!(logs.contains("is the public quick-start token"), "{logs}");
    assert!(logs.contains("demo upstream answering on"), "{logs}");
}
