//! Test harness: the real gateway binary on free loopback ports with a temp config, a raw
//! HTTP/1.1 client, and an echo upstream that reports what it received.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const ADMIN_TOKEN: &str = "agm_test_admin_token_all";
pub const POD_TOKEN: &str = "agm_test_pod_token_acme";
pub const INBOX_TOKEN: &str = "agm_test_inbox_token_sales";

pub fn sha256_hex(s: &str) -> String {
    hex::encode(agentry_gateway::keys::hash_secret(s.as_bytes()))
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn header_value<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Reads header lines up to the blank line; an early end of stream is an error.
fn read_headers(r: &mut impl BufRead) -> std::io::Result<Vec<(String, String)>> {
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let h = h.trim_end_matches(['\r', '\n']);
        if h.is_empty() {
            return Ok(headers);
        }
        let (k, v) = h.split_once(':').unwrap_or((h, ""));
        headers.push((k.trim().to_owned(), v.trim().to_owned()));
    }
}

/// Reads a chunked or Content-Length body; `None` when the message has neither.
fn read_framed_body(
    r: &mut impl BufRead,
    headers: &[(String, String)],
) -> std::io::Result<Option<Vec<u8>>> {
    if header_value(headers, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        let mut body = Vec::new();
        loop {
            let mut size = String::new();
            if r.read_line(&mut size)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                .map_err(std::io::Error::other)?;
            if n == 0 {
                let mut end = String::new();
                r.read_line(&mut end)?;
                return Ok(Some(body));
            }
            let mut chunk = vec![0u8; n + 2];
            r.read_exact(&mut chunk)?;
            body.extend_from_slice(&chunk[..n]);
        }
    }
    match header_value(headers, "content-length").and_then(|v| v.parse::<usize>().ok()) {
        Some(n) => {
            let mut body = vec![0u8; n];
            r.read_exact(&mut body)?;
            Ok(Some(body))
        }
        None => Ok(None),
    }
}

/// Reads one HTTP/1.1 response from a buffered stream.
pub fn read_response(r: &mut impl BufRead, head_request: bool) -> std::io::Result<Resp> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    if line.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed before a response",
        ));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let headers = read_headers(r)?;
    let body = if head_request || status == 204 || status == 304 || status / 100 == 1 {
        Vec::new()
    } else {
        match read_framed_body(r, &headers)? {
            Some(body) => body,
            None => {
                let mut body = Vec::new();
                r.read_to_end(&mut body)?;
                body
            }
        }
    };
    Ok(Resp {
        status,
        headers,
        body,
    })
}

/// Sends raw bytes and returns everything the server answered until it closed (or timeout).
pub fn raw_exchange(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(timeout)).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    out
}

/// One request on a fresh connection (`Connection: close`).
pub fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Resp {
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    if let Some(b) = body {
        bytes.extend_from_slice(b);
    }
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    (&s).write_all(&bytes).unwrap();
    let mut r = BufReader::new(s);
    read_response(&mut r, method == "HEAD").unwrap()
}

/// The gateway binary running on free ports with a temp config and database.
pub struct Gateway {
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    child: Option<Child>,
    starts: usize,
    args: Vec<String>,
}

impl Gateway {
    /// Starts with the standard tokens and directory, plus `extra` TOML (upstreams, routes...).
    pub fn start(extra: &str) -> Gateway {
        Gateway::start_with(&format!("{}\n{extra}", standard_auth_toml()), "")
    }

    /// Starts with `body` as everything after [server]/[metrics]/[store], and `server_extra`
    /// appended to [server].
    pub fn start_with(body: &str, server_extra: &str) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mport = free_port();
        let config = format!(
            r#"
[server]
listen = "127.0.0.1:{port}"
threads = 2
{grace}
graceful_shutdown_timeout_seconds = 1
pid_file = "{dir}/gw.pid"
upgrade_sock = "{dir}/gw.sock"
{server_extra}

[metrics]
listen = "127.0.0.1:{mport}"

[store]
kind = "sqlite"
path = "{dir}/gateway.db"

{usage}
{body}
"#,
            dir = dir.path().display(),
            grace = if server_extra.contains("grace_period_seconds") {
                ""
            } else {
                "grace_period_seconds = 1"
            },
            usage = if body.contains("[usage]") {
                ""
            } else {
                "[usage]\nflush_interval_ms = 200\n"
            }
        );
        Gateway::launch(dir, &config, port, mport, &[])
    }

    /// Starts the binary on a whole config text (which must listen on `port` and serve
    /// metrics on `mport`), with extra arguments after `run --config FILE`.
    pub fn launch(
        dir: tempfile::TempDir,
        config: &str,
        port: u16,
        mport: u16,
        args: &[&str],
    ) -> Gateway {
        let config_path = dir.path().join("gateway.toml");
        std::fs::write(&config_path, config).unwrap();
        let mut g = Gateway {
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            metrics_addr: format!("127.0.0.1:{mport}").parse().unwrap(),
            dir,
            config_path,
            child: None,
            starts: 0,
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        g.spawn();
        g
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("gateway.db")
    }

    fn log_path(&self, kind: &str) -> PathBuf {
        self.dir.path().join(format!("{kind}.{}.log", self.starts))
    }

    /// Everything the gateway wrote to stdout and stderr, over all its starts.
    pub fn logs(&self) -> String {
        let mut all = String::new();
        for i in 1..=self.starts {
            for kind in ["stdout", "stderr"] {
                let p = self.dir.path().join(format!("{kind}.{i}.log"));
                all.push_str(&std::fs::read_to_string(p).unwrap_or_default());
            }
        }
        all
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let out = std::fs::File::create(self.log_path("stdout")).unwrap();
        let err = std::fs::File::create(self.log_path("stderr")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_agentry-gateway"))
            .args(["run", "--config"])
            .arg(&self.config_path)
            .args(&self.args)
            .env(
                "RUST_LOG",
                std::env::var("GATEWAY_TEST_LOG").unwrap_or("info".into()),
            )
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap();
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("gateway exited early ({status}):\n{}", self.logs());
            }
            let up = TcpStream::connect(self.addr).is_ok()
                && TcpStream::connect(self.metrics_addr).is_ok()
                && request(self.metrics_addr, "GET", "/healthz", &[], None).status == 200;
            if up {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "gateway not ready:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} failed");
    }

    /// `kill -9`, then wait for the process to be gone.
    pub fn kill9(&mut self) {
        self.signal("-KILL");
        self.child.as_mut().unwrap().wait().unwrap();
    }

    /// SIGTERM, then wait for a clean exit; returns the exit status.
    pub fn sigterm(&mut self) -> ExitStatus {
        self.signal("-TERM");
        let child = self.child.as_mut().unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "gateway did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the binary again on the same config and database.
    pub fn restart(&mut self) {
        self.spawn();
    }

    pub fn req(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Resp {
        request(self.addr, method, target, headers, body)
    }

    /// A management call with a bearer token and (for bodies) JSON content type.
    pub fn mgmt(&self, method: &str, target: &str, token: &str, body: Option<&str>) -> Resp {
        let auth = format!("Bearer {token}");
        let mut h = vec![("Authorization", auth.as_str())];
        if body.is_some() {
            h.push(("Content-Type", "application/json"));
        }
        self.req(method, target, &h, body.map(str::as_bytes))
    }

    /// Creates a key; returns the 201 body.
    pub fn create_key(&self, inbox: &str, name: &str) -> serde_json::Value {
        let r = self.mgmt(
            "POST",
            &format!("/human/v0/inboxes/{inbox}/api-keys"),
            ADMIN_TOKEN,
            Some(&serde_json::json!({ "name": name }).to_string()),
        );
        assert_eq!(r.status, 201, "{}", r.text());
        r.json()
    }

    /// A proxied request with an API key.
    pub fn call(&self, method: &str, target: &str, key: &str) -> Resp {
        let auth = format!("Bearer {key}");
        self.req(method, target, &[("Authorization", &auth)], None)
    }

    pub fn metrics(&self) -> String {
        request(self.metrics_addr, "GET", "/metrics", &[], None).text()
    }

    /// The value of one metric series (exact name with labels), 0 when absent.
    pub fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics(), series)
    }
}

pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What the echo upstream received.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// How the echo upstream behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 200 with a JSON description of the request.
    Echo,
    /// Accept, then close without answering.
    Reset,
    /// Accept, read, never answer.
    Hang,
    /// Answer bytes that are not HTTP.
    Garbage,
    /// Echo, after one second.
    Slow,
}

/// A loopback HTTP/1.1 upstream that records every request (health checks aside).
pub struct Upstream {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    pub connections: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
    listener_thread: Option<std::thread::JoinHandle<()>>,
}

impl Upstream {
    pub fn start() -> Upstream {
        Upstream::start_mode(Mode::Echo)
    }

    pub fn start_mode(mode: Mode) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let streams = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (r, s, st, c) = (
            received.clone(),
            stop.clone(),
            streams.clone(),
            connections.clone(),
        );
        let listener_thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                c.fetch_add(1, Ordering::SeqCst);
                st.lock().unwrap().push(conn.try_clone().unwrap());
                let r = r.clone();
                std::thread::spawn(move || serve(conn, r, mode));
            }
        });
        Upstream {
            addr,
            received,
            connections,
            stop,
            streams,
            listener_thread: Some(listener_thread),
        }
    }

    /// Requests received so far (health checks excluded).
    pub fn requests(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    /// Stops listening and closes every open connection.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.listener_thread.take() {
            t.join().unwrap();
        }
        for s in self.streams.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(conn: TcpStream, received: Arc<Mutex<Vec<Received>>>, mode: Mode) {
    let mut w = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_owned();
        let target = parts.next().unwrap_or("").to_owned();
        let Ok(headers) = read_headers(&mut r) else {
            return;
        };
        let Ok(body) = read_framed_body(&mut r, &headers) else {
            return;
        };
        let body = body.unwrap_or_default();
        if target == "/healthz" {
            let _ = w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok");
            continue;
        }
        let rec = Received {
            method,
            target,
            headers,
            body,
        };
        received.lock().unwrap().push(rec.clone());
        match mode {
            Mode::Echo => {}
            Mode::Slow => std::thread::sleep(Duration::from_secs(1)),
            Mode::Reset => {
                let _ = w.shutdown(Shutdown::Both);
                return;
            }
            Mode::Hang => {
                std::thread::sleep(Duration::from_secs(60));
                return;
            }
            Mode::Garbage => {
                let _ = w.write_all(b"this is not http\r\n\r\n");
                let _ = w.shutdown(Shutdown::Both);
                return;
            }
        }
        let json = serde_json::json!({
            "method": rec.method,
            "target": rec.target,
            "headers": rec.headers,
            "body_len": rec.body.len(),
        })
        .to_string();
        let resp = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-upstream: {}\r\n\r\n{json}",
            json.len(),
            w.local_addr().map(|a| a.port()).unwrap_or(0)
        );
        if w.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

/// Upstream + routes TOML for one upstream group named "inbox".
pub fn upstream_toml(addrs: &[SocketAddr], extra: &str) -> String {
    let list: Vec<String> = addrs.iter().map(|a| format!("\"{a}\"")).collect();
    format!(
        r#"
[[upstreams]]
name = "inbox"
addresses = [{}]
health_check = {{ path = "/healthz", interval_seconds = 1 }}
connect_timeout_ms = 500
read_timeout_ms = 2000
{extra}

[[routes]]
path = "/v0/inboxes/{{inbox_id}}"
upstream = "inbox"
"#,
        list.join(", ")
    )
}

pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A keep-alive HTTP/1.1 connection for many requests in a row.
pub struct KeepAlive {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl KeepAlive {
    pub fn connect(addr: SocketAddr) -> KeepAlive {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.set_nodelay(true).unwrap();
        KeepAlive {
            writer: s.try_clone().unwrap(),
            reader: BufReader::new(s),
        }
    }

    pub fn send(&mut self, method: &str, target: &str, headers: &[(&str, &str)]) -> Resp {
        let mut req = format!("{method} {target} HTTP/1.1\r\nHost: gateway\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        self.writer.write_all(req.as_bytes()).unwrap();
        read_response(&mut self.reader, method == "HEAD").unwrap()
    }
}

/// Splits a raw exchange into responses: (status, headers, body) of each, in order.
pub fn parse_responses(mut bytes: &[u8]) -> Vec<Resp> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let mut r = BufReader::new(bytes);
        match read_response(&mut r, false) {
            Ok(resp) => {
                let remaining = r.buffer().len() + r.get_ref().len();
                out.push(resp);
                bytes = &bytes[bytes.len() - remaining..];
            }
            Err(_) => break,
        }
    }
    out
}
