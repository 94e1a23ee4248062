//! An echo upstream that records what it received, and misbehaves on request.

use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;

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
