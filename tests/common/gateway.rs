//! The real gateway binary on free loopback ports with a temp config and database.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;

/// The gateway binary running on free ports with a temp config and database.
pub struct Gateway {
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    child: Option<Child>,
    starts: usize,
    args: Vec<String>,
    /// The PostgreSQL database this gateway uses (kept alive while it runs).
    pub pg: Option<Arc<TestDb>>,
    /// On the HTTP/2 transport: the CA of the listener's certificate and the client config.
    pub tls: Option<GatewayTls>,
}

/// The TLS side of a gateway started on the HTTP/2 transport.
pub struct GatewayTls {
    pub pki: Pki,
    pub h2: Arc<rustls::ClientConfig>,
}

/// Sends requests on the transport of the gateway it came from.
#[derive(Clone)]
pub struct Client {
    addr: SocketAddr,
    h2: Option<Arc<rustls::ClientConfig>>,
}

impl Client {
    pub fn req(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Resp {
        match &self.h2 {
            Some(config) => h2_request(self.addr, config.clone(), method, target, headers, body),
            None => request(self.addr, method, target, headers, body),
        }
    }
}

/// A connection for several requests in a row.
pub enum Conn {
    H1(KeepAlive),
    H2(
        tokio::runtime::Runtime,
        h2::client::SendRequest<bytes::Bytes>,
    ),
}

impl Conn {
    pub fn send(&mut self, method: &str, target: &str, headers: &[(&str, &str)]) -> Resp {
        match self {
            Conn::H1(c) => c.send(method, target, headers),
            Conn::H2(rt, send) => rt.block_on(h2_send(send, method, target, headers, None)),
        }
    }
}

/// How the suites talk to the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// HTTP/1.1 in plaintext.
    Plain,
    /// HTTP/2 over TLS (ALPN h2).
    H2,
}

/// Which store the gateways of the current test use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

thread_local! {
    static TRANSPORT: std::cell::Cell<Transport> = const { std::cell::Cell::new(Transport::Plain) };
    static BACKEND: std::cell::Cell<Backend> = const { std::cell::Cell::new(Backend::Sqlite) };
    static TEST_NAME: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// The backend of the current test.
pub fn backend() -> Backend {
    BACKEND.with(|b| b.get())
}

/// The transport of the current test.
pub fn transport() -> Transport {
    TRANSPORT.with(|t| t.get())
}

/// Runs a test body against gateways that serve TLS, with every request on HTTP/2.
pub fn run_on_h2(body: fn()) {
    set_transport(Transport::H2);
    body();
}

/// Sets the transport of the gateways this test (thread) starts from now on.
pub fn set_transport(transport: Transport) {
    TRANSPORT.with(|t| t.set(transport));
}

/// Runs a test body with every gateway it starts on a PostgreSQL database of its own (or, with
/// no server, reports it as not run; see `pgdb.rs`).
pub fn run_on_postgres(test: &str, body: fn()) {
    let Some(probe) = TestDb::create(test) else {
        return;
    };
    drop(probe);
    BACKEND.with(|b| b.set(Backend::Postgres));
    TEST_NAME.with(|t| *t.borrow_mut() = test.to_owned());
    body();
}

/// Generates, for each named test body (a plain `fn()`), a `sqlite::name` and a
/// `postgres::name` test: the same assertions against both stores, and an `h2::name` test:
/// the same assertions over HTTP/2 and TLS (on SQLite).
#[macro_export]
macro_rules! on_every_store {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $( #[test] fn $name() { super::$name() } )+
        }
        mod h2 {
            $( #[test] fn $name() { $crate::common::run_on_h2(super::$name) } )+
        }
        mod postgres {
            $(
                #[test]
                fn $name() {
                    $crate::common::run_on_postgres(
                        concat!(module_path!(), "::", stringify!($name)),
                        super::$name,
                    )
                }
            )+
        }
    };
}

/// Which store a gateway uses.
#[derive(Clone)]
pub enum StoreSpec {
    /// A SQLite file of its own.
    Sqlite,
    /// A PostgreSQL database, with extra `[store]` lines.
    Postgres(Arc<TestDb>, String),
    /// A `[store]` section written by the test (e.g. a URL through a forwarder), and the
    /// database to keep alive while the gateway runs.
    Raw(String, Arc<TestDb>),
}

impl StoreSpec {
    fn toml(&self, dir: &std::path::Path) -> String {
        match self {
            StoreSpec::Sqlite => format!(
                "[store]\nkind = \"sqlite\"\npath = \"{}/gateway.db\"\n",
                dir.display()
            ),
            StoreSpec::Postgres(db, extra) => format!(
                "[store]\nkind = \"postgres\"\nurl = \"{}\"\npool_size = 4\n{extra}\n",
                db.url()
            ),
            StoreSpec::Raw(section, _) => format!("{section}\n"),
        }
    }

    fn db(&self) -> Option<Arc<TestDb>> {
        match self {
            StoreSpec::Sqlite => None,
            StoreSpec::Postgres(db, _) | StoreSpec::Raw(_, db) => Some(db.clone()),
        }
    }
}

impl Gateway {
    /// Starts with the standard tokens and directory, plus `extra` TOML (upstreams, routes...).
    pub fn start(extra: &str) -> Gateway {
        Gateway::start_with(&format!("{}\n{extra}", standard_auth_toml()), "")
    }

    /// Starts with `body` as everything after [server]/[metrics]/[store], and `server_extra`
    /// appended to [server].
    pub fn start_with(body: &str, server_extra: &str) -> Gateway {
        let store = match backend() {
            Backend::Sqlite => StoreSpec::Sqlite,
            Backend::Postgres => {
                let name = TEST_NAME.with(|t| t.borrow().clone());
                let db = TestDb::create(&name).expect("PostgreSQL was reachable a moment ago");
                StoreSpec::Postgres(Arc::new(db), String::new())
            }
        };
        Gateway::start_on(store, body, server_extra)
    }

    /// Starts on the given store.
    pub fn start_on(store: StoreSpec, body: &str, server_extra: &str) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mport = free_port();
        let tls = (transport() == Transport::H2).then(|| {
            let pki = Pki::new("gateway test CA");
            let (cert, key) = pki
                .issue(&["localhost", "127.0.0.1"])
                .write(dir.path(), "listener");
            let h2 = client_config(&pki.ca_pem, &[b"h2"], BOTH_VERSIONS, None);
            let section = format!(
                "[server.tls]\ncert_path = \"{}\"\nkey_path = \"{}\"\n",
                cert.display(),
                key.display()
            );
            (GatewayTls { pki, h2 }, section)
        });
        let server_extra = match &tls {
            Some((_, section)) => format!("{server_extra}\n{section}"),
            None => server_extra.to_owned(),
        };
        let config = format!(
            r#"
[server]
listen = "127.0.0.1:{port}"
threads = 2
{grace}
{drain}
graceful_shutdown_timeout_seconds = 1
pid_file = "{dir}/gw.pid"
upgrade_sock = "{dir}/gw.sock"
{server_extra}

[metrics]
listen = "127.0.0.1:{mport}"

{store}
{usage}
{body}
"#,
            dir = dir.path().display(),
            store = store.toml(dir.path()),
            grace = if server_extra.contains("grace_period_seconds") {
                ""
            } else {
                "grace_period_seconds = 1"
            },
            // SIGTERM in the suites stops at once; tests/process.rs times the drain.
            drain = if server_extra.contains("drain_seconds") {
                ""
            } else {
                "drain_seconds = 0"
            },
            usage = if body.contains("[usage]") {
                ""
            } else {
                "[usage]\nflush_interval_ms = 200\n"
            }
        );
        let mut g = Gateway::launch(dir, &config, port, mport, &[]);
        g.pg = store.db();
        g.tls = tls.map(|(t, _)| t);
        g
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
            pg: None,
            tls: None,
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

    /// Sends a signal by name (`-TERM`, `-HUP`...).
    pub fn signal(&self, sig: &str) {
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

    /// Waits for the process to exit on its own; `None` if it is still running at `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut().unwrap();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().unwrap().try_wait().unwrap().is_none()
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
        self.client().req(method, target, headers, body)
    }

    /// A handle that sends requests the way this gateway's transport does, from any thread.
    pub fn client(&self) -> Client {
        Client {
            addr: self.addr,
            h2: self.tls.as_ref().map(|t| t.h2.clone()),
        }
    }

    /// A connection kept open for several requests (keep-alive HTTP/1.1, or one HTTP/2
    /// connection with a stream per request).
    pub fn keep_alive(&self) -> Conn {
        match &self.tls {
            None => Conn::H1(KeepAlive::connect(self.addr)),
            Some(t) => {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let send = rt.block_on(h2_connect(self.addr, t.h2.clone()));
                Conn::H2(rt, send)
            }
        }
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

    /// Creates a key; returns its plaintext.
    pub fn api_key(&self, inbox: &str, name: &str) -> String {
        self.create_key(inbox, name)["api_key"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Deletes a key through the management API (admin token).
    pub fn delete_key(&self, inbox: &str, api_key_id: &str) -> Resp {
        self.mgmt(
            "DELETE",
            &format!("/human/v0/inboxes/{inbox}/api-keys/{api_key_id}"),
            ADMIN_TOKEN,
            None,
        )
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
