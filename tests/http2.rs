//! HTTP/2 at the front door: the limits the gateway states in its SETTINGS, and what happens
//! to clients that abuse them (rapid reset, CONTINUATION floods, header blocks that never
//! end, too many streams, oversized header lists), written frame by frame over TLS. Then real
//! clients: curl --http2 and Python httpx with HTTP/2.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ENHANCE_YOUR_CALM: u32 = 0xb;
const REFUSED_STREAM: u32 = 0x7;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend(payload);
    f
}

/// An HPACK integer with a 7-bit prefix (RFC 7541 §5.1).
fn hpack_len(out: &mut Vec<u8>, mut n: usize) {
    if n < 127 {
        out.push(n as u8);
        return;
    }
    out.push(127);
    n -= 127;
    while n >= 128 {
        out.push((n % 128) as u8 | 0x80);
        n /= 128;
    }
    out.push(n as u8);
}

/// A literal header field without indexing, new name, no Huffman (RFC 7541 §6.2.2).
fn literal(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(0);
    hpack_len(out, name.len());
    out.extend(name.as_bytes());
    hpack_len(out, value.len());
    out.extend(value.as_bytes());
}

fn request_block(method: &str, path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    literal(&mut b, ":method", method);
    literal(&mut b, ":scheme", "https");
    literal(&mut b, ":path", path);
    literal(&mut b, ":authority", "localhost");
    for (k, v) in extra {
        literal(&mut b, k, v);
    }
    b
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A TLS connection that negotiated h2, with the client preface and empty SETTINGS sent.
async fn raw_h2(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> Tls {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    tls.write_all(PREFACE).await.unwrap();
    tls.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    tls
}

#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// Reads frames until `stop` says so, the connection ends, or `within` passes. Returns the
/// frames and whether the connection ended.
async fn read_frames(
    tls: &mut Tls,
    within: Duration,
    mut stop: impl FnMut(&Frame) -> bool,
) -> (Vec<Frame>, bool) {
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = Vec::new();
    let mut frames = Vec::new();
    loop {
        while buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() < 9 + len {
                break;
            }
            let f = Frame {
                kind: buf[3],
                flags: buf[4],
                stream: u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff,
                payload: buf[9..9 + len].to_vec(),
            };
            buf.drain(..9 + len);
            let done = stop(&f);
            frames.push(f);
            if done {
                return (frames, false);
            }
        }
        let mut chunk = vec![0u8; 16384];
        match tokio::time::timeout_at(deadline, tls.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (frames, true),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => return (frames, false),
        }
    }
}

fn goaway_code(frames: &[Frame]) -> Option<u32> {
    frames
        .iter()
        .find(|f| f.kind == GOAWAY)
        .map(|f| u32::from_be_bytes(f.payload[4..8].try_into().unwrap()))
}

/// The gateway process's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A gateway on the HTTP/2 transport with an echo upstream and a key for support@.
fn setup(server_extra: &str) -> (Gateway, Upstream, String) {
    let up = Upstream::start();
    let body = auth_and_upstream_toml("", up.addr);
    set_transport(Transport::H2);
    let g = Gateway::start_with(&body, server_extra);
    let key = g.api_key("support@example.com", "h2");
    (g, up, key)
}

fn config_of(g: &Gateway) -> Arc<rustls::ClientConfig> {
    g.tls.as_ref().unwrap().h2.clone()
}

fn still_serves(g: &Gateway, key: &str) {
    let r = g.call("GET", "/v0/inboxes/support@example.com/m", key);
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn settings_state_the_limits() {
    let (g, _up, _key) = setup("");
    block_on(async {
        let mut tls = raw_h2(g.addr, config_of(&g)).await;
        let (frames, _) = read_frames(&mut tls, Duration::from_secs(5), |f| {
            f.kind == SETTINGS && f.flags & 0x1 == 0
        })
        .await;
        let settings = &frames.last().unwrap().payload;
        let value = |id: u16| {
            settings.chunks(6).find_map(|s| {
                (u16::from_be_bytes([s[0], s[1]]) == id)
                    .then(|| u32::from_be_bytes([s[2], s[3], s[4], s[5]]))
            })
        };
        assert_eq!(value(0x3), Some(100), "MAX_CONCURRENT_STREAMS");
        assert_eq!(value(0x6), Some(32 * 1024), "MAX_HEADER_LIST_SIZE");
    });
}

#[test]
fn rapid_reset_gets_goaway_and_the_gateway_serves_others() {
    let (g, up, key) = setup("");
    let rss_before = rss_kib(g.pid());
    let auth = format!("Bearer {key}");
    let block = request_block(
        "GET",
        "/v0/inboxes/support@example.com/m",
        &[("authorization", &auth)],
    );
    let mut codes = Vec::new();
    for _round in 0..20 {
        let code = block_on(async {
            let mut tls = raw_h2(g.addr, config_of(&g)).await;
            let mut burst = Vec::new();
            for i in 0..1000u32 {
                let id = 1 + 2 * i;
                burst.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, &block));
                burst.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes())); // CANCEL
            }
            let _ = tls.write_all(&burst).await;
            let (frames, _closed) =
                read_frames(&mut tls, Duration::from_secs(10), |f| f.kind == GOAWAY).await;
            goaway_code(&frames)
        });
        codes.push(code);
        still_serves(&g, &key);
    }
    assert!(
        codes.iter().all(|c| *c == Some(ENHANCE_YOUR_CALM)),
        "every flood ends in GOAWAY ENHANCE_YOUR_CALM: {codes:?}"
    );
    // 20 000 streams opened and cancelled; only a bounded few reached the upstream.
    assert!(up.count() < 20 * 100, "{} reached the upstream", up.count());
    let grown = rss_kib(g.pid()).saturating_sub(rss_before);
    assert!(grown < 64 * 1024, "RSS grew {grown} KiB");
}

#[test]
fn continuation_floods_are_cut_off() {
    let (g, up, key) = setup("");
    let rss_before = rss_kib(g.pid());
    let auth = format!("Bearer {key}");
    for payload_len in [0usize, 100] {
        let closed_with = block_on(async {
            let mut tls = raw_h2(g.addr, config_of(&g)).await;
            let block = request_block(
                "GET",
                "/v0/inboxes/support@example.com/m",
                &[("authorization", &auth)],
            );
            let _ = tls.write_all(&frame(HEADERS, END_STREAM, 1, &block)).await;
            let mut one = Vec::new();
            while one.len() < payload_len {
                literal(
                    &mut one,
                    "x-flood",
                    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                );
            }
            let cont = frame(CONTINUATION, 0, 1, &one);
            let mut burst = Vec::new();
            for _ in 0..2000 {
                burst.extend_from_slice(&cont);
            }
            // Keep flooding until the gateway stops reading (bounded: 100 bursts).
            let started = Instant::now();
            for _ in 0..100 {
                if tls.write_all(&burst).await.is_err() {
                    break;
                }
            }
            let (frames, closed) =
                read_frames(&mut tls, Duration::from_secs(10), |f| f.kind == GOAWAY).await;
            (goaway_code(&frames), closed, started.elapsed())
        });
        assert!(
            closed_with.0.is_some() || closed_with.1,
            "payload {payload_len}: the connection must end: {closed_with:?}"
        );
        assert!(closed_with.2 < Duration::from_secs(10), "{closed_with:?}");
        still_serves(&g, &key);
    }
    assert_eq!(
        up.requests()
            .iter()
            .filter(|r| !r.all("x-flood").is_empty())
            .count(),
        0
    );
    let grown = rss_kib(g.pid()).saturating_sub(rss_before);
    assert!(grown < 64 * 1024, "RSS grew {grown} KiB");
}

#[test]
fn a_header_block_that_never_ends_is_closed_at_the_deadline() {
    let (g, _up, key) = setup("header_read_timeout_ms = 500");
    let auth = format!("Bearer {key}");
    let block = request_block(
        "GET",
        "/v0/inboxes/support@example.com/m",
        &[("authorization", &auth)],
    );
    block_on(async {
        // HEADERS without END_HEADERS, then nothing.
        let mut tls = raw_h2(g.addr, config_of(&g)).await;
        tls.write_all(&frame(HEADERS, END_STREAM, 1, &block))
            .await
            .unwrap();
        let started = Instant::now();
        let (_, closed) = read_frames(&mut tls, Duration::from_secs(5), |_| false).await;
        assert!(closed, "closed");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );

        // The same, dribbled: a one-byte CONTINUATION every 100 ms does not keep it open.
        let mut tls = raw_h2(g.addr, config_of(&g)).await;
        tls.write_all(&frame(HEADERS, END_STREAM, 1, &block))
            .await
            .unwrap();
        let started = Instant::now();
        let mut open = true;
        while open && started.elapsed() < Duration::from_secs(4) {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut one = Vec::new();
            literal(&mut one, "x", "");
            open = tls
                .write_all(&frame(CONTINUATION, 0, 1, &one))
                .await
                .is_ok();
            let (_, closed) = read_frames(&mut tls, Duration::from_millis(1), |_| false).await;
            open &= !closed;
        }
        assert!(!open, "the dribbling connection is closed");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    });
    // An idle HTTP/2 connection is not a slow header block: it outlives the deadline.
    block_on(async {
        let mut send = h2_connect(g.addr, config_of(&g)).await;
        // A request, 1.2 s idle (past the 500 ms deadline), and another on the same connection.
        for idle_before in [Duration::ZERO, Duration::from_millis(1200)] {
            tokio::time::sleep(idle_before).await;
            let r = h2_send(
                &mut send,
                "GET",
                "/v0/inboxes/support@example.com/m",
                &[("authorization", &auth)],
                None,
            )
            .await;
            assert_eq!(r.status, 200);
        }
    });
}

#[test]
fn streams_beyond_the_limit_are_refused() {
    let (g, _up, _key) = setup("[server.http2]\nmax_concurrent_streams = 4");
    let admin = format!("Bearer {ADMIN_TOKEN}");
    // POSTs whose bodies never come: each stream stays open.
    let block = request_block(
        "POST",
        "/human/v0/inboxes/support@example.com/api-keys",
        &[
            ("authorization", &admin),
            ("content-type", "application/json"),
            ("content-length", "20"),
        ],
    );
    block_on(async {
        let mut tls = raw_h2(g.addr, config_of(&g)).await;
        let mut burst = Vec::new();
        for i in 0..6u32 {
            burst.extend(frame(HEADERS, END_HEADERS, 1 + 2 * i, &block));
        }
        tls.write_all(&burst).await.unwrap();
        let (frames, _) = read_frames(&mut tls, Duration::from_secs(5), |f| {
            f.kind == RST_STREAM && f.stream == 11
        })
        .await;
        let refused: Vec<u32> = frames
            .iter()
            .filter(|f| {
                f.kind == RST_STREAM
                    && u32::from_be_bytes(f.payload[..4].try_into().unwrap()) == REFUSED_STREAM
            })
            .map(|f| f.stream)
            .collect();
        assert_eq!(refused, [9, 11], "{frames:?}");
    });
}

#[test]
fn an_oversized_header_list_is_refused() {
    let (g, up, key) = setup("");
    let auth = format!("Bearer {key}");
    let big = "b".repeat(40 * 1024);
    let block = request_block(
        "GET",
        "/v0/inboxes/support@example.com/m",
        &[("authorization", &auth), ("x-big", &big)],
    );
    block_on(async {
        let mut tls = raw_h2(g.addr, config_of(&g)).await;
        let mut chunks = block.chunks(16 * 1024).peekable();
        let mut first = true;
        let mut bytes = Vec::new();
        while let Some(c) = chunks.next() {
            let last = chunks.peek().is_none();
            let flags = if last { END_HEADERS } else { 0 };
            if first {
                bytes.extend(frame(HEADERS, flags | END_STREAM, 1, c));
                first = false;
            } else {
                bytes.extend(frame(CONTINUATION, flags, 1, c));
            }
        }
        tls.write_all(&bytes).await.unwrap();
        let (frames, closed) = read_frames(&mut tls, Duration::from_secs(5), |f| {
            f.stream == 1 && (f.kind == HEADERS || f.kind == RST_STREAM) || f.kind == GOAWAY
        })
        .await;
        let last = frames.last();
        // h2 answers 431 on the stream (a HEADERS frame) or resets it; never a request upstream.
        assert!(
            closed
                || last
                    .is_some_and(|f| f.kind == HEADERS || f.kind == RST_STREAM || f.kind == GOAWAY),
            "{frames:?}"
        );
    });
    assert_eq!(up.count(), 0);
    still_serves(&g, &key);
}

// ---- Real clients ----

fn write_ca(g: &Gateway) -> std::path::PathBuf {
    g.tls
        .as_ref()
        .unwrap()
        .pki
        .write_ca(g.dir.path(), "client-ca")
}

#[test]
fn curl_http2_through_proxy_and_management() {
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("curl is needed for this test (apt-get install curl)");
    }
    let (g, up, key) = setup("");
    let ca = write_ca(&g);
    let url = |path: &str| format!("https://localhost:{}{path}", g.addr.port());
    let curl = |args: &[&str]| {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--http2", "--cacert"])
            .arg(&ca)
            .args(["-w", "\n%{http_version} %{http_code}"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let out = curl(&[
        "-H",
        &format!("Authorization: Bearer {ADMIN_TOKEN}"),
        &url("/human/v0/inboxes/support@example.com/api-keys?limit=1"),
    ]);
    let (body, status) = out.rsplit_once('\n').unwrap();
    assert_eq!(status, "2 200");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(body).unwrap()["count"],
        1
    );

    let out = curl(&[
        "-H",
        &format!("Authorization: Bearer {key}"),
        &url("/v0/inboxes/support@example.com/threads"),
    ]);
    assert!(out.ends_with("\n2 200"), "{out}");
    let seen = up.requests().pop().unwrap();
    assert_eq!(seen.all("x-agentry-inbox-id"), ["support@example.com"]);
    assert!(seen.all("authorization").is_empty());

    let out = curl(&[
        "-H",
        &format!("Authorization: Bearer {key}"),
        &url("/v0/inboxes/sales@example.com/threads"),
    ]);
    let (body, status) = out.rsplit_once('\n').unwrap();
    assert_eq!(status, "2 403");
    assert_eq!(
        body,
        r#"{"name":"PermissionDeniedError","code":"forbidden_inbox","message":"the API key may not access this inbox"}"#
    );
}

#[test]
fn python_httpx_over_http2() {
    let has_httpx = std::process::Command::new("python3")
        .args(["-c", "import httpx, h2"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_httpx {
        if std::env::var("AGENTRY_REQUIRE_SDK").is_ok_and(|v| v == "1") {
            panic!("AGENTRY_REQUIRE_SDK=1 but python3 cannot import httpx and h2: pip install -r tests/sdk/requirements.txt");
        }
        eprintln!("NOT RUN (no python3 with httpx and h2): http2::python_httpx_over_http2; pip install -r tests/sdk/requirements.txt to run it");
        return;
    }
    let (g, _up, key) = setup("");
    let ca = write_ca(&g);
    let script = r#"
import json, sys, httpx
base, ca, key, admin = sys.argv[1:5]
with httpx.Client(http2=True, verify=ca, base_url=base) as c:
    r = c.get("/v0/inboxes/support@example.com/m", headers={"Authorization": "Bearer " + key})
    print(r.http_version, r.status_code, r.json()["path"] if "path" in r.json() else "")
    r = c.get("/v0/inboxes/support@example.com/m")
    print(r.http_version, r.status_code, r.json()["code"], r.headers["www-authenticate"])
    r = c.post("/human/v0/inboxes/support@example.com/api-keys", json={"name": "py"}, headers={"Authorization": "Bearer " + admin})
    print(r.http_version, r.status_code, r.json()["name"])
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(format!("https://localhost:{}", g.addr.port()))
        .arg(&ca)
        .arg(&key)
        .arg(ADMIN_TOKEN)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0].split(' ').take(2).collect::<Vec<_>>(),
        ["HTTP/2", "200"],
        "{text}"
    );
    assert_eq!(
        lines[1], "HTTP/2 401 missing_authorization Bearer",
        "{text}"
    );
    assert_eq!(lines[2], "HTTP/2 201 py", "{text}");
}

// ---- h2c (HTTP/2 in plaintext with prior knowledge) ----

/// One request over h2c on a fresh plaintext connection; `Err` when the gateway does not
/// speak HTTP/2 there.
fn h2c_request(addr: SocketAddr, key: &str) -> Result<Resp, String> {
    block_on(async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let (mut send, conn) = h2::client::handshake(tcp)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = http::Request::builder()
            .uri("http://localhost/v0/inboxes/support@example.com/m")
            .header("authorization", format!("Bearer {key}"))
            .body(())
            .unwrap();
        let (resp, _) = send.send_request(req, true).map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(Duration::from_secs(5), resp)
            .await
            .map_err(|_| "no answer".to_owned())?
            .map_err(|e| e.to_string())?;
        Ok(Resp {
            status: resp.status().as_u16(),
            headers: Vec::new(),
            body: Vec::new(),
        })
    })
}

#[test]
fn h2c_is_off_by_default_and_works_when_enabled() {
    set_transport(Transport::Plain);
    let up = Upstream::start();
    let body = auth_and_upstream_toml("", up.addr);
    let off = Gateway::start_with(&body, "");
    let key = off.api_key("support@example.com", "h2c");
    assert!(
        h2c_request(off.addr, &key).is_err(),
        "no HTTP/2 in plaintext by default"
    );
    assert_eq!(up.count(), 0);

    let on = Gateway::start_with(&body, "[server.http2]\ncleartext = true");
    let key = on.api_key("support@example.com", "h2c");
    assert_eq!(h2c_request(on.addr, &key).unwrap().status, 200);
    assert_eq!(
        up.requests()[0].all("x-agentry-inbox-id"),
        ["support@example.com"]
    );
    // HTTP/1.1 still works beside it.
    assert_eq!(
        on.call("GET", "/v0/inboxes/support@example.com/m", &key)
            .status,
        200
    );
    assert_eq!(
        on.call("GET", "/v0/inboxes/sales@example.com/m", &key)
            .status,
        403
    );
}
