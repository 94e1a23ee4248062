//! Zero-downtime upgrade: a new process started with `--upgrade` takes the listening sockets
//! from the old one on SIGQUIT. A client at over 500 requests a second on 4 connections sees
//! no failed request and no refused connection, and the old process's last `used_at` marks
//! are in the store.

mod common;

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;

const SUPPORT: &str = "support@example.com";
const CONNECTIONS: usize = 4;
/// Each connection's pace: 4 × 1000 = 4000 requests a second offered (the gateway sets the rate).
const INTERVAL: Duration = Duration::from_millis(1);
/// Requests per key before the next: keys are many so that some are only ever used on
/// connections the old process accepted.
const PER_KEY: usize = 20;

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    refused: AtomicU64,
    /// Requests sent again on a new connection because the server closed a kept-alive one
    /// before answering (what HTTP clients do for idempotent requests, RFC 9110 9.2.2).
    retried_on_closed_keepalive: AtomicU64,
}

struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    used: bool,
    /// Opened before the new process existed: only the old process can have accepted it.
    old_only: bool,
}

fn connect(addr: SocketAddr, tally: &Tally, new_started: &AtomicBool) -> Option<Conn> {
    let old_only = !new_started.load(Ordering::SeqCst);
    match TcpStream::connect(addr) {
        Ok(s) => {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.set_nodelay(true).unwrap();
            Some(Conn {
                writer: s.try_clone().unwrap(),
                reader: BufReader::new(s),
                used: false,
                old_only,
            })
        }
        Err(e) => {
            eprintln!("connect: {e}");
            tally.refused.fetch_add(1, Ordering::SeqCst);
            None
        }
    }
}

/// One GET; `Err(true)` when a kept-alive connection was closed before any answer.
fn send(c: &mut Conn, target: &str, key: &str) -> Result<Resp, bool> {
    let req =
        format!("GET {target} HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {key}\r\n\r\n");
    let reused = c.used;
    c.used = true;
    if c.writer.write_all(req.as_bytes()).is_err() {
        return Err(reused);
    }
    match read_response(&mut c.reader, false) {
        Ok(r) => Ok(r),
        Err(e) => Err(reused && e.kind() != std::io::ErrorKind::InvalidData),
    }
}

/// Per key: the send time of its last request and whether every request of it went on a
/// connection only the old process could have accepted.
type LastUse = Arc<Mutex<Vec<(i64, bool, bool)>>>;

#[allow(clippy::too_many_arguments)]
fn client(
    addr: SocketAddr,
    keys: Vec<(usize, String)>,
    last: LastUse,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
    new_started: Arc<AtomicBool>,
) {
    let target = format!("/v0/inboxes/{SUPPORT}/messages");
    let mut conn = connect(addr, &tally, &new_started);
    let mut n = 0usize;
    let mut next = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        let (ki, key) = &keys[(n / PER_KEY) % keys.len()];
        n += 1;
        let mut attempts = 0;
        loop {
            attempts += 1;
            if conn.is_none() {
                conn = connect(addr, &tally, &new_started);
            }
            let Some(c) = conn.as_mut() else {
                std::thread::sleep(Duration::from_millis(1));
                if attempts > 100 {
                    tally.failed.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                continue;
            };
            let sent_at = now_us();
            let old_only = c.old_only;
            match send(c, &target, key) {
                Ok(r) => {
                    if r.status == 200 {
                        tally.ok.fetch_add(1, Ordering::SeqCst);
                        let mut l = last.lock().unwrap();
                        let e = &mut l[*ki];
                        e.0 = e.0.max(sent_at);
                        e.1 &= old_only;
                        e.2 = true;
                    } else {
                        eprintln!("status {}: {}", r.status, r.text());
                        tally.failed.fetch_add(1, Ordering::SeqCst);
                    }
                    if r.header("connection")
                        .is_some_and(|v| v.eq_ignore_ascii_case("close"))
                    {
                        conn = None;
                    }
                    break;
                }
                Err(true) if attempts == 1 => {
                    tally
                        .retried_on_closed_keepalive
                        .fetch_add(1, Ordering::SeqCst);
                    conn = None;
                }
                Err(_) => {
                    eprintln!("request failed on a fresh connection");
                    tally.failed.fetch_add(1, Ordering::SeqCst);
                    conn = None;
                    break;
                }
            }
        }
        next += INTERVAL;
        if let Some(d) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
    }
}

#[test]
fn an_upgrade_under_load_fails_no_request_refuses_no_connection_and_keeps_used_at() {
    let up = Upstream::start();
    let mut old = Gateway::start_with(
        &format!(
            "{}\n{}\n[usage]\nflush_interval_ms = 600000\n",
            standard_auth_toml(),
            upstream_toml(&[up.addr], "")
        ),
        "grace_period_seconds = 5",
    );
    let keys: Vec<(usize, String, String)> = (0..120)
        .map(|i| {
            let k = old.create_key(SUPPORT, &format!("k{i}"));
            (
                i,
                k["api_key"].as_str().unwrap().to_owned(),
                k["api_key_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let last: LastUse = Arc::new(Mutex::new(vec![(0, true, false); keys.len()]));
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let new_started = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|c| {
            let mine: Vec<(usize, String)> = keys
                .iter()
                .filter(|(i, _, _)| i % CONNECTIONS == c)
                .map(|(i, k, _)| (*i, k.clone()))
                .collect();
            let (addr, last, tally, stop, new_started) = (
                old.addr,
                last.clone(),
                tally.clone(),
                stop.clone(),
                new_started.clone(),
            );
            std::thread::spawn(move || client(addr, mine, last, tally, stop, new_started))
        })
        .collect();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(1));

    // The new process, on the same config, takes the sockets.
    new_started.store(true, Ordering::SeqCst);
    let log = std::fs::File::create(old.dir.path().join("new.log")).unwrap();
    let mut new = Command::new(env!("CARGO_BIN_EXE_agentry-gateway"))
        .args(["run", "--config"])
        .arg(&old.config_path)
        .arg("--upgrade")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let pid_file = old.dir.path().join("gw.pid");
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        old.pid().to_string(),
        "the pid file names the old process until the handover"
    );
    let quit_at = Instant::now();
    old.signal("-QUIT");
    let status = old
        .wait_exit(Duration::from_secs(30))
        .expect("old process exited");
    let old_took = quit_at.elapsed();
    assert_eq!(status.code(), Some(0), "{}", old.logs());
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    let elapsed = t0.elapsed();
    let new_log = || std::fs::read_to_string(old.dir.path().join("new.log")).unwrap();
    assert!(
        new.try_wait().unwrap().is_none(),
        "new process died:\n{}",
        new_log()
    );

    let ok = tally.ok.load(Ordering::SeqCst);
    let rate = ok as f64 / elapsed.as_secs_f64();
    let retried = tally.retried_on_closed_keepalive.load(Ordering::SeqCst);
    eprintln!(
        "upgrade: {ok} ok in {elapsed:?} ({rate:.0}/s), {retried} retried on a closed keep-alive connection; old process exited {old_took:?} after SIGQUIT"
    );
    assert_eq!(tally.failed.load(Ordering::SeqCst), 0, "{}", old.logs());
    assert_eq!(tally.refused.load(Ordering::SeqCst), 0);
    assert!(rate >= 500.0, "{rate:.0} requests a second");
    assert!(
        old.logs().contains("listener sockets sent"),
        "{}",
        old.logs()
    );
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        new.id().to_string(),
        "after the handover the pid file names the new process"
    );

    // Keys used only on connections the old process accepted: their last use is stored.
    let c = rusqlite::Connection::open(old.db_path()).unwrap();
    let last = last.lock().unwrap();
    let mut checked = 0;
    for (i, _, id) in &keys {
        let (sent, old_only, used) = last[*i];
        if !(used && old_only) {
            continue;
        }
        let stored: Option<i64> = c
            .query_row(
                "SELECT used_at_us FROM api_keys WHERE api_key_id = ?1",
                [id],
                |r| r.get(0),
            )
            .unwrap();
        assert!(
            stored.is_some_and(|s| s >= sent),
            "key {i}: last sent {sent}, stored {stored:?}"
        );
        checked += 1;
    }
    assert!(
        checked >= 10,
        "only {checked} keys were used on the old process alone"
    );
    eprintln!(
        "upgrade: {checked} keys used only through the old process have their last used_at stored"
    );

    // The new process serves and stops cleanly.
    let key = &keys[0].1;
    assert_eq!(
        request(
            old.addr,
            "GET",
            &format!("/v0/inboxes/{SUPPORT}/messages"),
            &[("Authorization", &format!("Bearer {key}"))],
            None
        )
        .status,
        200
    );
    Command::new("kill")
        .args(["-TERM", &new.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(new.wait().unwrap().code(), Some(0), "{}", new_log());
    assert!(!pid_file.exists());
}
