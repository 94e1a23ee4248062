//! The shipped AgentMail route table (`config/agentmail-inbox-api.toml`) as a client meets it:
//! which key may make which call (only ports, database and upstream moved to private ones).

mod common;

use common::*;

const INBOX: &str = "support@example.com";

#[test]
fn the_agentmail_route_table_checks_each_calls_permission() {
    let up = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let (port, mport) = (free_port(), free_port());
    let shipped = std::fs::read_to_string("config/agentmail-inbox-api.toml").unwrap();
    let config = shipped
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"))
        .replace("127.0.0.1:9090", &format!("127.0.0.1:{mport}"))
        .replace("127.0.0.1:3000", &up.addr.to_string())
        .replace(
            "data/gateway.db",
            &dir.path().join("g.db").display().to_string(),
        );
    let g = Gateway::launch(dir, &config, port, mport, &[]);
    let token = "agm_quickstart_change_me";
    let make = |body: &str| {
        let r = g.mgmt(
            "POST",
            &format!("/human/v0/inboxes/{INBOX}/api-keys"),
            token,
            Some(body),
        );
        assert_eq!(r.status, 201, "{}", r.text());
        r.json()["api_key"].as_str().unwrap().to_owned()
    };
    let reader = make(r#"{"name":"reader","permissions":{"message_read":true}}"#);
    let sender = make(r#"{"name":"sender","permissions":{"message_send":true}}"#);
    let default = make(r#"{"name":"default"}"#);
    let p = |rest: &str| format!("/v0/inboxes/{INBOX}{rest}");
    wait_until(
        "the upstream is healthy",
        std::time::Duration::from_secs(10),
        || g.call("GET", &p("/messages"), &reader).status == 200,
    );
    let cases: &[(&str, &str, &str, u16)] = &[
        (&reader, "GET", "/messages", 200),
        (&reader, "GET", "/messages/m1", 200),
        (&reader, "GET", "/messages/m1/raw", 200),
        (&reader, "GET", "/messages/m1/attachments/a1", 200),
        (&reader, "GET", "/threads/t1", 200),
        (&reader, "POST", "/messages/batch-get", 200),
        (&reader, "POST", "/messages/send", 403),
        (&reader, "POST", "/messages/m1/reply", 403),
        (&reader, "POST", "/messages/m1/forward", 403),
        (&reader, "PATCH", "/messages/m1", 403),
        (&reader, "DELETE", "/threads/t1", 403),
        (&reader, "POST", "/drafts/d1/send", 403),
        (&reader, "PUT", "/messages/m1", 405),
        (&sender, "POST", "/messages/send", 200),
        (&sender, "POST", "/messages/m1/reply", 200),
        (&sender, "POST", "/messages/m1/reply-all", 200),
        (&sender, "GET", "/messages", 403),
        (&default, "POST", "/drafts/d1/send", 200),
        (&default, "PATCH", "/calendar/events/e1", 200),
        (&default, "POST", "/messages/m1/agent-armor/release", 403),
        (&default, "POST", "/messages/m1/agent-armor/feedback", 200),
    ];
    for (key, method, rest, status) in cases {
        let r = g.call(method, &p(rest), key);
        assert_eq!(r.status, *status, "{method} {rest}: {}", r.text());
        if *status == 403 {
            assert_eq!(
                r.json()["code"],
                "insufficient_permission",
                "{method} {rest}"
            );
        }
    }
    let forwarded = up
        .requests()
        .iter()
        .filter(|r| r.target != "/healthz")
        .count();
    let expected = cases.iter().filter(|c| c.3 == 200).count();
    assert_eq!(
        forwarded,
        expected + 1,
        "only allowed calls reach the upstream"
    );
}
