//! The process as an operator drives it: start-up that fails loudly, the pid file, and what
//! each signal does (README, Operations: signals).

mod common;

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const SUPPORT: &str = "support@example.com";

/// Runs the binary on `config_path` until it exits (at most `timeout`); returns its exit
/// code, how long it ran and what it wrote to stderr.
fn run_to_exit(
    config_path: &std::path::Path,
    timeout: Duration,
) -> (Option<i32>, Duration, String) {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_agentry-gateway"))
        .args(["run", "--config"])
        .arg(config_path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        started.elapsed(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A second copy of a running gateway's config, with `from` replaced by `to`, in its own dir.
fn variant(g: &Gateway, from: &str, to: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let text = std::fs::read_to_string(&g.config_path).unwrap();
    assert!(text.contains(from), "{from} not in the config");
    let dir = tempfile::tempdir().unwrap();
    let text = text.replace(from, to).replace(
        &g.dir.path().display().to_string(),
        &dir.path().display().to_string(),
    );
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

#[test]
fn a_taken_listen_port_exits_1_at_once_naming_address_and_os_error() {
    let g = Gateway::start("");
    let (_dir, path) = variant(&g, "threads = 2", "threads = 2");
    let (code, took, stderr) = run_to_exit(&path, Duration::from_secs(20));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    let want = format!(
        "error: server.listen: cannot listen on {}: Address already in use (os error 98)",
        g.addr
    );
    assert!(stderr.contains(&want), "{stderr}");
}

#[test]
fn a_taken_metrics_port_exits_1_naming_it() {
    let g = Gateway::start("");
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = held.local_addr().unwrap();
    let free = free_port();
    let (_dir, path) = variant(
        &g,
        &format!("listen = \"{}\"", g.addr),
        &format!("listen = \"127.0.0.1:{free}\""),
    );
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace(&g.metrics_addr.to_string(), &taken.to_string());
    std::fs::write(&path, text).unwrap();
    let (code, took, stderr) = run_to_exit(&path, Duration::from_secs(20));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert!(
        stderr.contains(&format!(
            "error: metrics.listen: cannot listen on {taken}: Address already in use"
        )),
        "{stderr}"
    );
}

#[test]
fn the_pid_file_names_the_process_while_it_runs_and_is_gone_after() {
    let mut g = Gateway::start("");
    let pid_file = g.dir.path().join("gw.pid");
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap(),
        format!("{}\n", g.pid())
    );
    assert_eq!(g.sigterm().code(), Some(0));
    assert!(!pid_file.exists(), "pid file left behind");
}

#[test]
fn readyz_is_200_once_started() {
    let g = Gateway::start("");
    let r = request(g.metrics_addr, "GET", "/readyz", &[], None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "ready");
}

/// A gateway with a long grace period (an idle process must not wait it out) and the drain
/// given, proxying to an echo upstream; usage marks are only written at exit.
fn draining_gateway(drain_seconds: u64, up: &Upstream) -> Gateway {
    Gateway::start_with(
        &format!(
            "{}\n{}\n[usage]\nflush_interval_ms = 600000\n",
            standard_auth_toml(),
            upstream_toml(&[up.addr], "")
        ),
        &format!("drain_seconds = {drain_seconds}\ngrace_period_seconds = 20\n"),
    )
}

/// `used_at` of a key as stored in the gateway's SQLite file.
fn stored_used_at(g: &Gateway, api_key_id: &str) -> Option<i64> {
    let c = rusqlite::Connection::open(g.db_path()).unwrap();
    c.query_row(
        "SELECT used_at_us FROM api_keys WHERE api_key_id = ?1",
        [api_key_id],
        |r| r.get(0),
    )
    .unwrap()
}

fn readyz(g: &Gateway) -> (u16, String) {
    let r = request(g.metrics_addr, "GET", "/readyz", &[], None);
    (r.status, r.text())
}

#[test]
fn sigterm_drains_with_readyz_503_while_serving_then_exits_at_once_when_idle() {
    let up = Upstream::start();
    let mut g = draining_gateway(3, &up);
    let k = g.create_key(SUPPORT, "drain");
    let (key, id) = (
        k["api_key"].as_str().unwrap(),
        k["api_key_id"].as_str().unwrap(),
    );
    let target = format!("/v0/inboxes/{SUPPORT}/messages");
    assert_eq!(readyz(&g).0, 200);
    let t0 = Instant::now();
    g.signal("-TERM");
    wait_until("readyz 503", Duration::from_secs(1), || readyz(&g).0 == 503);
    let (status, body) = readyz(&g);
    assert_eq!(status, 503);
    assert_eq!(body, r#"{"status":"not_ready","reason":"draining"}"#);
    // Still serving, on new connections, through the drain.
    let mut served = 0;
    while t0.elapsed() < Duration::from_millis(2500) {
        assert_eq!(g.call("GET", &target, key).status, 200);
        assert_eq!(readyz(&g).0, 503);
        served += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(served >= 10, "{served}");
    let status = g.wait_exit(Duration::from_secs(10)).expect("exited");
    let took = t0.elapsed();
    assert_eq!(status.code(), Some(0), "{}", g.logs());
    // The drain (3 s), then at once: far from the 20 s grace period.
    assert!(took >= Duration::from_secs(3), "{took:?}");
    assert!(took < Duration::from_millis(4500), "{took:?}\n{}", g.logs());
    assert!(g
        .logs()
        .contains("nothing in flight: exiting before the grace period ends"));
    // The drain's requests' used_at is in the store (the periodic flush is 10 minutes).
    assert!(stored_used_at(&g, id).is_some(), "{}", g.logs());
}

#[test]
fn sigterm_gives_a_request_in_flight_the_grace_period_then_exits() {
    let up = Upstream::start_mode(Mode::Slow);
    let mut g = draining_gateway(0, &up);
    let key = g.api_key(SUPPORT, "inflight");
    let client = g.client();
    let target = format!("/v0/inboxes/{SUPPORT}/messages");
    let auth = format!("Bearer {key}");
    let slow = std::thread::spawn(move || {
        client
            .req("GET", &target, &[("Authorization", &auth)], None)
            .status
    });
    // The upstream answers after one second: signal while the request waits for it.
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    g.signal("-TERM");
    assert_eq!(slow.join().unwrap(), 200, "{}", g.logs());
    let status = g.wait_exit(Duration::from_secs(10)).expect("exited");
    let took = t0.elapsed();
    assert_eq!(status.code(), Some(0));
    assert!(took >= Duration::from_millis(500), "{took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}\n{}", g.logs());
    // New connections are refused once the listeners closed.
    assert!(std::net::TcpStream::connect(g.addr).is_err());
}

#[test]
fn sigint_stops_without_drain_and_flushes_used_at() {
    let up = Upstream::start();
    let mut g = draining_gateway(5, &up);
    let k = g.create_key(SUPPORT, "int");
    let key = k["api_key"].as_str().unwrap().to_owned();
    let id = k["api_key_id"].as_str().unwrap().to_owned();
    assert_eq!(
        g.call("GET", &format!("/v0/inboxes/{SUPPORT}/messages"), &key)
            .status,
        200
    );
    let t0 = Instant::now();
    g.signal("-INT");
    let status = g.wait_exit(Duration::from_secs(10)).expect("exited");
    assert_eq!(status.code(), Some(0));
    // No drain (5 s), no grace period (20 s).
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert!(
        stored_used_at(&g, &id).is_some(),
        "used_at lost on SIGINT\n{}",
        g.logs()
    );
}

#[test]
fn sighup_keeps_the_process_serving_and_counts_the_reload() {
    let up = Upstream::start();
    let mut g = draining_gateway(5, &up);
    let k = g.create_key(SUPPORT, "hup");
    let (key, id) = (
        k["api_key"].as_str().unwrap(),
        k["api_key_id"].as_str().unwrap(),
    );
    let target = format!("/v0/inboxes/{SUPPORT}/messages");
    g.signal("-HUP");
    wait_until("reload counted", Duration::from_secs(5), || {
        g.metric(r#"agentry_gateway_config_reloads_total{result="ok"}"#) == 1.0
    });
    assert!(g.running(), "SIGHUP ended the process:\n{}", g.logs());
    assert_eq!(g.call("GET", &target, key).status, 200);
    assert_eq!(readyz(&g).0, 200);
    assert_eq!(
        g.metric(r#"agentry_gateway_config_reloads_total{result="error"}"#),
        0.0
    );
    // The pending mark survives the reload: SIGTERM later still writes it.
    assert!(stored_used_at(&g, id).is_none());
    assert_eq!(g.sigterm().code(), Some(0));
    assert!(stored_used_at(&g, id).is_some(), "{}", g.logs());
}
