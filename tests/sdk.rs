//! The AgentMail Python SDK (PyPI `agentmail`, pinned in `tests/sdk/requirements.txt`), unchanged,
//! drives the key-managed API with an API key as its credential, and a proxied call that needs
//! `message_send` is refused. Runs where Python and the SDK are installed (CI installs them and
//! sets `AGENTRY_REQUIRE_SDK=1`); elsewhere it says on the terminal that it did not run.

mod common;

use std::io::Write;
use std::process::Command;

use common::*;

const INBOX: &str = "support@example.com";

fn sdk_available() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import agentmail"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var("AGENTRY_REQUIRE_SDK").is_ok_and(|v| v == "1") {
            panic!("AGENTRY_REQUIRE_SDK=1 but `python3 -c 'import agentmail'` fails: pip install -r tests/sdk/requirements.txt");
        }
        let _ = writeln!(
            std::io::stderr(),
            "NOT RUN (no python3 with the agentmail SDK): sdk::the_public_sdk_manages_keys_through_the_gateway; pip install -r tests/sdk/requirements.txt to run it"
        );
    }
    ok
}

#[test]
fn the_public_sdk_manages_keys_through_the_gateway() {
    if !sdk_available() {
        return;
    }
    let up = Upstream::start();
    let routes = r#"
[[routes]]
path = "/v0/inboxes/{inbox_id}/messages/send"
upstream = "inbox"
require = { POST = "message_send" }
"#;
    let g = Gateway::start(&format!("{}\n{routes}", upstream_toml(&[up.addr], "")));
    let r = g.mgmt(
        "POST",
        &format!("/human/v0/inboxes/{INBOX}/api-keys"),
        ADMIN_TOKEN,
        Some(r#"{"name":"sdk-parent","permissions":{"api_key_read":true,"api_key_create":true,"api_key_update":true,"api_key_delete":true,"message_read":true}}"#),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let key = r.json()["api_key"].as_str().unwrap().to_owned();
    let out = Command::new("python3")
        .arg("tests/sdk/agentmail_sdk.py")
        .env("GATEWAY_URL", format!("http://{}", g.addr))
        .env("INBOX", INBOX)
        .env("KEY", &key)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}\n{}", g.logs());
    assert!(stdout.contains("sdk ok"), "{stdout}");
    assert!(!stderr.contains(&key) && !g.logs().contains(&key));
    assert_eq!(
        up.requests()
            .iter()
            .filter(|r| r.target != "/healthz")
            .count(),
        0
    );
}
