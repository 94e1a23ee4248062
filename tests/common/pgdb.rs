//! Databases of their own for tests on the PostgreSQL server the machine provides.
//!
//! The server is `AGENTRY_TEST_PG` (libpq key=value, default
//! `host=127.0.0.1 port=5432 user=postgres dbname=postgres`). Each test creates a database of
//! its own and drops it when done. Where no server answers, PostgreSQL tests say so on the
//! terminal and pass without running, unless `AGENTRY_REQUIRE_POSTGRES=1` (CI) makes that a
//! failure.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};

const DEFAULT_SERVER: &str = "host=127.0.0.1 port=5432 user=postgres dbname=postgres";

fn server() -> String {
    std::env::var("AGENTRY_TEST_PG").unwrap_or_else(|_| DEFAULT_SERVER.to_owned())
}

fn required() -> bool {
    std::env::var("AGENTRY_REQUIRE_POSTGRES").is_ok_and(|v| v == "1")
}

/// The server's TCP address, from its key=value string (`host`, `port`).
pub fn server_addr() -> std::net::SocketAddr {
    let s = server();
    let get = |k: &str| {
        s.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")).map(str::to_owned))
    };
    let host = get("host").unwrap_or_else(|| "127.0.0.1".into());
    let port = get("port").unwrap_or_else(|| "5432".into());
    format!("{host}:{port}")
        .parse()
        .expect("AGENTRY_TEST_PG host must be an IP address")
}

/// A database that exists for one test.
pub struct TestDb {
    pub name: String,
}

impl TestDb {
    /// A fresh database, or `None` (with a line on the terminal) when no server answers.
    pub fn create(test: &str) -> Option<TestDb> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "agentry_test_{}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst),
            rand_suffix()
        );
        let sql = format!("CREATE DATABASE {name}");
        match admin(move |c| c.batch_execute(&sql)) {
            Ok(()) => Some(TestDb { name }),
            Err(e) if !required() => {
                // Straight to the terminal: cargo test captures print macros only.
                let _ = writeln!(
                    std::io::stderr(),
                    "NOT RUN (no PostgreSQL at `{}`: {e}): {test}; start a server or set AGENTRY_TEST_PG, and AGENTRY_REQUIRE_POSTGRES=1 to make this a failure",
                    server()
                );
                None
            }
            Err(e) => {
                panic!("PostgreSQL required (AGENTRY_REQUIRE_POSTGRES=1) but unreachable: {e}")
            }
        }
    }

    /// Its libpq key=value connection string.
    pub fn url(&self) -> String {
        format!("{} dbname={}", server(), self.name)
    }

    /// Its connection string, but reaching the server through `via` (e.g. a forwarder).
    pub fn url_via(&self, via: std::net::SocketAddr) -> String {
        let server = server();
        let rest: Vec<&str> = server
            .split_whitespace()
            .filter(|kv| {
                !kv.starts_with("host=") && !kv.starts_with("port=") && !kv.starts_with("dbname=")
            })
            .collect();
        format!(
            "host={} port={} {} dbname={}",
            via.ip(),
            via.port(),
            rest.join(" "),
            self.name
        )
    }

    /// A synchronous client on it (test set-up and checks).
    pub fn client(&self) -> postgres::Client {
        let url = self.url();
        std::thread::spawn(move || postgres::Client::connect(&url, postgres::NoTls))
            .join()
            .unwrap()
            .unwrap()
    }

    /// Runs `f` with a synchronous client on this database, off any async runtime.
    pub fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut postgres::Client) -> T + Send + 'static,
    ) -> T {
        let url = self.url();
        std::thread::spawn(move || {
            let mut c = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            f(&mut c)
        })
        .join()
        .unwrap()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(e) = admin(move |c| c.batch_execute(&sql)) {
            let _ = writeln!(std::io::stderr(), "could not drop {}: {e}", self.name);
        }
    }
}

fn rand_suffix() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.finish() as u32
}

/// Runs `f` on the server's maintenance database, on a thread of its own (the synchronous
/// client must not run inside an async runtime).
pub fn admin<T: Send + 'static>(
    f: impl FnOnce(&mut postgres::Client) -> Result<T, postgres::Error> + Send + 'static,
) -> Result<T, String> {
    std::thread::spawn(move || {
        let mut config: postgres::Config = server().parse().map_err(|e| format!("{e}"))?;
        config.connect_timeout(std::time::Duration::from_secs(3));
        let mut c = config.connect(postgres::NoTls).map_err(|e| e.to_string())?;
        f(&mut c).map_err(|e| e.to_string())
    })
    .join()
    .unwrap()
}
