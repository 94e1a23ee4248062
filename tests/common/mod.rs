//! Test harness: the real gateway binary on free loopback ports with a temp config
//! (`gateway`), a raw HTTP/1.1 client (`http`), and an echo upstream that reports what it
//! received (`upstream`). Shared configuration pieces live here.
// Each test binary uses a part of the harness.
#![allow(dead_code, unused_imports)]

mod exits;
mod gateway;
mod http;
mod pgdb;
mod tls;
mod tls_upstream;
mod upstream;

pub use exits::*;
pub use gateway::*;
pub use http::*;
pub use pgdb::*;
pub use tls::*;
pub use tls_upstream::*;
pub use upstream::*;

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

pub const ADMIN_TOKEN: &str = "agm_test_admin_token_all";
pub const POD_TOKEN: &str = "agm_test_pod_token_acme";
pub const INBOX_TOKEN: &str = "agm_test_inbox_token_sales";

pub fn sha256_hex(s: &str) -> String {
    hex::encode(agentry_gateway::keys::hash_secret(s.as_bytes()))
}

/// A port that was free a moment ago, and never handed out before in this test process.
/// Tests run in parallel: two of them asking between one's `free_port` and its gateway's bind
/// could be given the same port. The second gateway then fails to bind, but its test finds the
/// port open (the first gateway holds it) and talks to the other test's gateway.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if GIVEN.lock().unwrap().insert(port) {
            return port;
        }
    }
}

/// A gateway config body: `before` (sections of the test's own), the standard tokens and
/// directory, and one upstream group at `upstream`.
pub fn auth_and_upstream_toml(before: &str, upstream: SocketAddr) -> String {
    format!(
        "{before}{}\n{}",
        standard_auth_toml(),
        upstream_toml(&[upstream], "")
    )
}

/// Tokens for the three scopes and a static directory of four inboxes in two pods.
pub fn standard_auth_toml() -> String {
    format!(
        r#"
[[management.tokens]]
name = "admin"
sha256 = "{}"
scope = "all"

[[management.tokens]]
name = "acme"
sha256 = "{}"
pods = ["pod_acme"]

[[management.tokens]]
name = "sales"
sha256 = "{}"
inboxes = ["sales@example.com"]

[inbox_directory]
source = "static"
[[inbox_directory.inboxes]]
inbox_id = "support@example.com"
pod_id = "pod_acme"
[[inbox_directory.inboxes]]
inbox_id = "sales@example.com"
pod_id = "pod_acme"
[[inbox_directory.inboxes]]
inbox_id = "ops@other.com"
pod_id = "pod_other"
[[inbox_directory.inboxes]]
inbox_id = "nopod@example.com"
"#,
        sha256_hex(ADMIN_TOKEN),
        sha256_hex(POD_TOKEN),
        sha256_hex(INBOX_TOKEN)
    )
}

pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}
