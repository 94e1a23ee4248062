//! TLS at the front door and to the upstreams, with certificates made in each test: protocol
//! versions, SNI, mutual TLS, rotation without a restart, the handshake deadline, upstream
//! verification and client certificates, HTTP/2 upstreams, and `check-config` on TLS files.

mod common;

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use common::*;
use rustls::ProtocolVersion;

const KEYS: &str = "/human/v0/inboxes/support@example.com/api-keys";

fn tls_section(cert: &Path, key: &Path, extra: &str) -> String {
    format!(
        "[server.tls]\ncert_path = \"{}\"\nkey_path = \"{}\"\n{extra}\n",
        cert.display(),
        key.display()
    )
}

/// A gateway serving TLS with a leaf for localhost and 127.0.0.1 from a fresh CA, plus
/// `tls_extra` lines in `[server.tls]`; the certificate files live in the returned dir.
fn tls_gateway(tls_extra: &str, body_extra: &str) -> (Gateway, Pki, tempfile::TempDir) {
    let pki = Pki::new("listener CA");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = pki
        .issue(&["localhost", "127.0.0.1"])
        .write(dir.path(), "listener");
    let g = Gateway::start_with(
        &format!("{}\n{body_extra}", standard_auth_toml()),
        &tls_section(&cert, &key, tls_extra),
    );
    (g, pki, dir)
}

/// A metric once it has stopped moving (200 ms without change): the readiness probe's plain
/// connects count as failed handshakes, a moment after they close.
fn settled(g: &Gateway, series: &str) -> f64 {
    let mut last = g.metric(series);
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = g.metric(series);
        if now == last {
            return now;
        }
        last = now;
    }
}

fn admin() -> [(&'static str, String); 1] {
    [("Authorization", format!("Bearer {ADMIN_TOKEN}"))]
}

fn list_keys(g: &Gateway, config: std::sync::Arc<rustls::ClientConfig>) -> Resp {
    let [(k, v)] = admin();
    h1_tls_request(g.addr, config, "GET", KEYS, &[(k, &v)], None)
}

/// A TLS 1.0/1.1-only ClientHello (no supported_versions extension), as an old client sends;
/// with `sig_algs`, it also carries a signature_algorithms extension, so that the version is
/// the only thing wrong with it.
fn legacy_client_hello(version: u16, sig_algs: bool) -> Vec<u8> {
    let mut body = version.to_be_bytes().to_vec();
    body.extend([0x42; 32]); // random
    body.push(0); // no session id
    body.extend([0x00, 0x04, 0x00, 0x2f, 0x00, 0x35]); // two RSA/AES-CBC suites
    body.extend([0x01, 0x00]); // null compression
    if sig_algs {
        // extensions (8 bytes): signature_algorithms = [ecdsa_secp256r1_sha256]
        body.extend([0x00, 0x08, 0x00, 0x0d, 0x00, 0x04, 0x00, 0x02, 0x04, 0x03]);
    }
    let mut handshake = vec![0x01];
    handshake.extend(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend(body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend((handshake.len() as u16).to_be_bytes());
    record.extend(handshake);
    record
}

/// Everything the server sends back before closing (or 3 s).
fn exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

#[test]
fn tls_12_and_13_are_served_and_10_and_11_refused() {
    let (g, pki, _dir) = tls_gateway("", "");
    let handshakes = |result: &str| {
        g.metric(&format!(
            r#"agentry_gateway_tls_handshakes_total{{result="{result}"}}"#
        ))
    };
    let failed_series = r#"agentry_gateway_tls_handshakes_total{result="failed"}"#;
    let (ok0, failed0) = (handshakes("ok"), settled(&g, failed_series));
    for (version, expect) in [
        (&rustls::version::TLS12, ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, ProtocolVersion::TLSv1_3),
    ] {
        let config = client_config(&pki.ca_pem, &[b"http/1.1"], &[version], None);
        let s = tls_connect(g.addr, "localhost", config.clone()).unwrap();
        assert_eq!(s.conn.protocol_version(), Some(expect));
        let r = list_keys(&g, config);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json(), serde_json::json!({"api_keys": [], "count": 0}));
    }
    for legacy in [0x0301u16, 0x0302] {
        // One fatal alert record and the end: protocol_version (70) when only the version is
        // wrong, handshake_failure (40) for a bare hello of that age.
        for (sig_algs, alert) in [(true, 70), (false, 40)] {
            let reply = exchange(g.addr, &legacy_client_hello(legacy, sig_algs));
            assert_eq!(reply.len(), 7, "{legacy:#06x}: {reply:02x?}");
            assert_eq!(reply[0], 0x15, "an alert record");
            assert_eq!(&reply[5..], [2, alert], "{legacy:#06x} {sig_algs}");
        }
    }
    // Plaintext HTTP on the TLS port is not served.
    let reply = exchange(g.addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(!reply.starts_with(b"HTTP/"), "{reply:02x?}");
    assert_eq!(handshakes("ok") - ok0, 4.0);
    // A refused connection closes a moment before its handshake is counted.
    wait_until(
        "five failed handshakes counted",
        Duration::from_secs(5),
        || handshakes("failed") - failed0 == 5.0,
    );
}

#[test]
fn the_upstream_hears_https_from_a_tls_client() {
    let up = Upstream::start();
    let (g, pki, _dir) = tls_gateway("", &upstream_toml(&[up.addr], ""));
    let config = client_config(
        &pki.ca_pem,
        &[b"http/1.1"],
        &[&rustls::version::TLS13],
        None,
    );
    let [(k, v)] = admin();
    let r = h1_tls_request(
        g.addr,
        config.clone(),
        "POST",
        KEYS,
        &[(k, &v), ("Content-Type", "application/json")],
        Some(br#"{"name":"tls"}"#),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let auth = format!("Bearer {}", r.json()["api_key"].as_str().unwrap());
    let r = h1_tls_request(
        g.addr,
        config,
        "GET",
        "/v0/inboxes/support@example.com/m",
        // A client's own claim is replaced, whatever it says.
        &[("Authorization", &auth), ("X-Forwarded-Proto", "http")],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let got = up.requests();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].all("x-forwarded-proto"), ["https"]);
}

#[test]
fn min_version_13_refuses_tls_12() {
    let (g, pki, _dir) = tls_gateway("min_version = \"1.3\"", "");
    let tls12 = client_config(&pki.ca_pem, &[], &[&rustls::version::TLS12], None);
    let e = tls_connect(g.addr, "localhost", tls12).unwrap_err();
    assert!(e.to_string().contains("ProtocolVersion"), "{e}");
    let tls13 = client_config(&pki.ca_pem, &[], &[&rustls::version::TLS13], None);
    assert_eq!(list_keys(&g, tls13).status, 200);
}

#[test]
fn one_certificate_whatever_the_sni() {
    let (g, pki, _dir) = tls_gateway("", "");
    let config = client_config(&pki.ca_pem, &[], BOTH_VERSIONS, None);
    // A name the certificate does not hold: the gateway serves its one certificate and a
    // client that checks names (as every client should) refuses it.
    let e = tls_connect(g.addr, "wrong.example", config.clone()).unwrap_err();
    assert!(e.to_string().contains("not valid for name"), "{e}");
    // No SNI at all (a client connecting by IP sends none): the same certificate, valid here
    // because it names 127.0.0.1.
    let by_ip = tls_connect(g.addr, "127.0.0.1", config.clone()).unwrap();
    let by_name = tls_connect(g.addr, "localhost", config).unwrap();
    assert_eq!(
        by_ip.conn.peer_certificates().unwrap()[0],
        by_name.conn.peer_certificates().unwrap()[0]
    );
}

/// A request over TLS that may be refused at any point: the handshake, or the first read
/// (TLS 1.3 reports a refused client certificate after the handshake).
fn try_list(g: &Gateway, config: std::sync::Arc<rustls::ClientConfig>) -> std::io::Result<Resp> {
    let mut s = tls_connect(g.addr, "localhost", config)?;
    let [(k, v)] = admin();
    write!(
        s,
        "GET {KEYS} HTTP/1.1\r\nHost: localhost\r\n{k}: {v}\r\nConnection: close\r\n\r\n"
    )?;
    read_response(&mut BufReader::new(s), false)
}

#[test]
fn mutual_tls_admits_only_clients_of_the_configured_ca() {
    let clients = Pki::new("client CA");
    let dir = tempfile::tempdir().unwrap();
    let ca_path = clients.write_ca(dir.path(), "clients");
    let (g, pki, _certs) = tls_gateway(&format!("client_ca_path = \"{}\"", ca_path.display()), "");
    let failed = || g.metric(r#"agentry_gateway_tls_handshakes_total{result="failed"}"#);
    let failed0 = settled(
        &g,
        r#"agentry_gateway_tls_handshakes_total{result="failed"}"#,
    );
    let good = clients.issue(&["client.example"]);
    let stranger = Pki::new("other CA").issue(&["client.example"]);
    for versions in [
        &[&rustls::version::TLS12][..],
        &[&rustls::version::TLS13][..],
    ] {
        let with = client_config(&pki.ca_pem, &[], versions, Some(&good));
        let r = try_list(&g, with).unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let without = client_config(&pki.ca_pem, &[], versions, None);
        assert!(try_list(&g, without).is_err(), "no client certificate");
        let wrong = client_config(&pki.ca_pem, &[], versions, Some(&stranger));
        assert!(try_list(&g, wrong).is_err(), "a certificate of another CA");
    }
    wait_until(
        "four failed handshakes counted",
        Duration::from_secs(5),
        || failed() - failed0 == 4.0,
    );
}

fn leaf_der(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

fn not_after(pem: &str) -> i64 {
    let der = leaf_der(pem);
    let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
    c.validity().not_after.timestamp()
}

#[test]
fn certificates_rotate_without_a_restart_and_broken_pairs_are_kept_out() {
    let pki = Pki::new("listener CA");
    let dir = tempfile::tempdir().unwrap();
    let first = pki.issue_window(&["localhost"], -1, 30);
    let (cert, key) = first.write(dir.path(), "listener");
    let g = Gateway::start_with(
        &standard_auth_toml(),
        &tls_section(&cert, &key, "reload_interval_ms = 100"),
    );
    let config = client_config(&pki.ca_pem, &[], BOTH_VERSIONS, None);
    let served = || {
        tls_connect(g.addr, "localhost", config.clone())
            .unwrap()
            .conn
            .peer_certificates()
            .unwrap()[0]
            .to_vec()
    };
    let expiry = r#"agentry_gateway_tls_cert_expiry_timestamp_seconds"#;
    assert_eq!(served(), leaf_der(&first.cert_pem));
    assert_eq!(g.metric(expiry), not_after(&first.cert_pem) as f64);

    // A keep-alive connection opened on the first certificate.
    let mut open = BufReader::new(tls_connect(g.addr, "localhost", config.clone()).unwrap());
    let [(k, v)] = admin();
    let ask = format!("GET {KEYS} HTTP/1.1\r\nHost: localhost\r\n{k}: {v}\r\n\r\n");
    open.get_mut().write_all(ask.as_bytes()).unwrap();
    assert_eq!(read_response(&mut open, false).unwrap().status, 200);

    let second = pki.issue_window(&["localhost"], -1, 60);
    second.write(dir.path(), "listener");
    wait_until(
        "the new certificate is served",
        Duration::from_secs(5),
        || served() == leaf_der(&second.cert_pem),
    );
    assert_eq!(g.metric(expiry), not_after(&second.cert_pem) as f64);
    assert_eq!(
        g.metric(r#"agentry_gateway_tls_cert_reloads_total{result="rotated"}"#),
        1.0
    );
    // The old connection goes on.
    open.get_mut().write_all(ask.as_bytes()).unwrap();
    assert_eq!(read_response(&mut open, false).unwrap().status, 200);

    // Broken pairs: garbage, a key of another certificate, an expired certificate.
    let other = pki.issue(&["localhost"]);
    let expired = pki.issue_window(&["localhost"], -10, -1);
    let broken: [(&str, String, String); 3] = [
        (
            "garbage",
            "not a certificate".into(),
            second.key_pem.clone(),
        ),
        ("mismatch", other.cert_pem.clone(), second.key_pem.clone()),
        ("expired", expired.cert_pem.clone(), expired.key_pem.clone()),
    ];
    for (i, (what, cert_pem, key_pem)) in broken.iter().enumerate() {
        std::fs::write(&key, key_pem).unwrap();
        std::fs::write(&cert, cert_pem).unwrap();
        let refused = (i + 1) as f64;
        wait_until(
            &format!("the {what} pair is refused"),
            Duration::from_secs(5),
            || g.metric(r#"agentry_gateway_tls_cert_reloads_total{result="refused"}"#) >= refused,
        );
        assert_eq!(
            served(),
            leaf_der(&second.cert_pem),
            "{what}: the old pair stays"
        );
        assert_eq!(g.metric(expiry), not_after(&second.cert_pem) as f64);
    }
    // Each broken pair is reported once, not at every check.
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(
        g.metric(r#"agentry_gateway_tls_cert_reloads_total{result="refused"}"#),
        3.0
    );
    let logs = g.logs();
    assert_eq!(logs.matches("new certificate refused").count(), 3, "{logs}");
    assert!(
        logs.contains("does not belong to the certificate"),
        "{logs}"
    );
    assert!(logs.contains("expired at"), "{logs}");

    // A good pair again.
    let third = pki.issue_window(&["localhost"], -1, 90);
    third.write(dir.path(), "listener");
    wait_until(
        "the third certificate is served",
        Duration::from_secs(5),
        || served() == leaf_der(&third.cert_pem),
    );
}

#[test]
fn a_client_that_stalls_the_handshake_is_closed() {
    let (g, _pki, _dir) = tls_gateway("handshake_timeout_ms = 300", "");
    let hello = legacy_client_hello(0x0303, true);
    for sent in [&b""[..], &hello[..5], &hello[..hello.len() - 1]] {
        let mut s = TcpStream::connect(g.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(sent).unwrap();
        let start = std::time::Instant::now();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "closed without an answer");
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{:?}",
            start.elapsed()
        );
    }
    // The connection closes as the handshake is abandoned, a moment before it is counted.
    wait_until(
        "three timed-out handshakes counted",
        Duration::from_secs(5),
        || g.metric(r#"agentry_gateway_tls_handshakes_total{result="timeout"}"#) == 3.0,
    );
}

// ---- Upstreams over TLS ----

fn tls_upstream_toml(up: std::net::SocketAddr, lines: &str, health: bool) -> String {
    format!(
        r#"
[[upstreams]]
name = "inbox"
addresses = ["{up}"]
{health}
connect_timeout_ms = 1000
read_timeout_ms = 2000
tls = true
{lines}

[[routes]]
path = "/v0/inboxes/{{inbox_id}}"
upstream = "inbox"
"#,
        health = if health {
            "health_check = { path = \"/healthz\", interval_seconds = 1 }"
        } else {
            ""
        }
    )
}

#[test]
fn upstream_tls_verifies_the_certificate_and_name() {
    let echo = Upstream::start();
    let upstream_ca = Pki::new("upstream CA");
    let tls_up = TlsUpstream::start(
        &upstream_ca.issue(&["inbox.internal"]),
        None,
        Behind::Forward(echo.addr),
    );
    let dir = tempfile::tempdir().unwrap();
    let ca = upstream_ca.write_ca(dir.path(), "upstream-ca");
    let stranger_ca = Pki::new("stranger").write_ca(dir.path(), "stranger-ca");
    let cases = [
        // (ca_path, sni, verify, expected status)
        (&ca, "inbox.internal", "true", 200),
        (&stranger_ca, "inbox.internal", "true", 502),
        (&ca, "other.internal", "true", 502),
        (&stranger_ca, "other.internal", "false", 200),
    ];
    for (ca_path, sni, verify, status) in cases {
        let g = Gateway::start(&tls_upstream_toml(
            tls_up.addr,
            &format!(
                "sni = \"{sni}\"\nverify = {verify}\nca_path = \"{}\"",
                ca_path.display()
            ),
            false,
        ));
        let key = g.api_key("support@example.com", "tls");
        let before = echo.count();
        let r = g.call("GET", "/v0/inboxes/support@example.com/messages", &key);
        assert_eq!(r.status, status, "{ca_path:?} {sni} {verify}: {}", r.text());
        if status == 502 {
            assert_eq!(r.json()["code"], "upstream_error");
            assert_eq!(echo.count(), before, "nothing reached the upstream");
            assert_eq!(
                g.metric(r#"agentry_gateway_upstream_errors_total{reason="tls",upstream="inbox"}"#),
                1.0
            );
        } else {
            let req = echo.requests().pop().unwrap();
            assert_eq!(req.target, "/v0/inboxes/support@example.com/messages");
            assert_eq!(req.all("x-agentry-inbox-id"), ["support@example.com"]);
            assert!(req.all("authorization").is_empty());
        }
    }
}

#[test]
fn upstream_mutual_tls_presents_the_configured_client_certificate() {
    let echo = Upstream::start();
    let upstream_ca = Pki::new("upstream CA");
    let gateway_clients = Pki::new("gateway client CA");
    let tls_up = TlsUpstream::start(
        &upstream_ca.issue(&["inbox.internal"]),
        Some(&gateway_clients.ca_pem),
        Behind::Forward(echo.addr),
    );
    let dir = tempfile::tempdir().unwrap();
    let ca = upstream_ca.write_ca(dir.path(), "upstream-ca");
    let mine = gateway_clients.issue(&["gateway.internal"]);
    let (cert, key) = mine.write(dir.path(), "gateway-client");
    let base = format!("sni = \"inbox.internal\"\nca_path = \"{}\"", ca.display());

    let without = Gateway::start(&tls_upstream_toml(tls_up.addr, &base, false));
    let k = without.api_key("support@example.com", "tls");
    let r = without.call("GET", "/v0/inboxes/support@example.com/x", &k);
    assert_eq!(r.status, 502, "{}", r.text());

    let with = Gateway::start(&tls_upstream_toml(
        tls_up.addr,
        &format!(
            "{base}\nclient_cert_path = \"{}\"\nclient_key_path = \"{}\"",
            cert.display(),
            key.display()
        ),
        true,
    ));
    let k = with.api_key("support@example.com", "tls");
    let r = with.call("GET", "/v0/inboxes/support@example.com/x", &k);
    assert_eq!(r.status, 200, "{}", r.text());
    let shown = tls_up.client_certs.lock().unwrap().clone();
    assert!(!shown.is_empty());
    assert!(shown.iter().all(|c| *c == leaf_der(&mine.cert_pem)));
}

#[test]
fn upstream_http2_over_tls() {
    let upstream_ca = Pki::new("upstream CA");
    let tls_up = TlsUpstream::start(&upstream_ca.issue(&["inbox.internal"]), None, Behind::Http2);
    let dir = tempfile::tempdir().unwrap();
    let ca = upstream_ca.write_ca(dir.path(), "upstream-ca");
    let g = Gateway::start(&tls_upstream_toml(
        tls_up.addr,
        &format!(
            "sni = \"inbox.internal\"\nca_path = \"{}\"\nhttp2 = true",
            ca.display()
        ),
        false,
    ));
    let key = g.api_key("support@example.com", "tls");
    let r = g.call(
        "GET",
        "/v0/inboxes/support@example.com/threads?limit=2",
        &key,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        serde_json::json!({"h2": true, "method": "GET", "target": "/v0/inboxes/support@example.com/threads?limit=2"})
    );
    let req = tls_up.h2_requests.lock().unwrap()[0].clone();
    assert_eq!(req.all("x-agentry-inbox-id"), ["support@example.com"]);
    assert!(req.all("authorization").is_empty());
}

// ---- check-config on TLS files ----

/// Runs check-config on `[server]` + `tls` lines + the standard auth; (exit code, stderr).
fn check(server_lines: &str, body_extra: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:1\"\n{server_lines}\n[store]\nkind = \"sqlite\"\npath = \"{}/x.db\"\n{}\n{body_extra}",
            dir.path().display(),
            standard_auth_toml()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_agentry-gateway"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_names_the_tls_field_and_the_fix() {
    let pki = Pki::new("ca");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = pki.issue(&["localhost"]).write(dir.path(), "good");
    let (other_cert, _) = pki.issue(&["localhost"]).write(dir.path(), "other");
    let (expired_cert, expired_key) = pki
        .issue_window(&["localhost"], -10, -1)
        .write(dir.path(), "expired");
    let (future_cert, future_key) = pki
        .issue_window(&["localhost"], 2, 10)
        .write(dir.path(), "future");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "hello").unwrap();
    let missing = dir.path().join("missing.pem");
    let ok = check(&tls_section(&cert, &key, ""), "");
    assert_eq!(ok.0, 0, "{}", ok.1);
    let cases: Vec<(String, &str, &str)> = vec![
        (
            tls_section(&missing, &key, ""),
            "server.tls.cert_path",
            "cannot read",
        ),
        (
            tls_section(&cert, &missing, ""),
            "server.tls.key_path",
            "cannot read",
        ),
        (
            tls_section(&garbage, &key, ""),
            "server.tls.cert_path",
            "holds no PEM certificate",
        ),
        (
            tls_section(&cert, &garbage, ""),
            "server.tls.key_path",
            "holds no PEM private key",
        ),
        (
            tls_section(&cert, &cert, ""),
            "server.tls.key_path",
            "holds no PEM private key",
        ),
        (
            tls_section(&other_cert, &key, ""),
            "server.tls.key_path",
            "does not belong to the certificate",
        ),
        (
            tls_section(&expired_cert, &expired_key, ""),
            "server.tls.cert_path",
            "expired at",
        ),
        (
            tls_section(&future_cert, &future_key, ""),
            "server.tls.cert_path",
            "not valid before",
        ),
        (
            tls_section(&cert, &key, "min_version = \"1.1\""),
            "server.tls.min_version",
            "never accepted",
        ),
        (
            tls_section(
                &cert,
                &key,
                &format!("client_ca_path = \"{}\"", garbage.display()),
            ),
            "server.tls.client_ca_path",
            "holds no PEM certificate",
        ),
        (
            format!(
                "[server.http2]\ncleartext = true\n{}",
                tls_section(&cert, &key, "")
            ),
            "server.http2.cleartext",
            "ALPN",
        ),
    ];
    for (lines, field, fix) in &cases {
        let (code, err) = check(lines, "");
        assert_eq!(code, 2, "{field}: {err}");
        assert!(
            err.contains(field) && err.contains(fix),
            "{field} / {fix}: {err}"
        );
        assert!(
            !err.contains("-----END"),
            "no key material in messages: {err}"
        );
    }
    let upstream = |lines: &str| {
        format!("[[upstreams]]\nname = \"inbox\"\naddresses = [\"127.0.0.1:1\"]\n{lines}\n")
    };
    let upstream_cases = [
        ("tls = true", "upstreams[0].sni", "required with tls = true"),
        ("sni = \"x\"", "upstreams[0].sni", "only with tls = true"),
        ("http2 = true", "upstreams[0].http2", "needs tls = true"),
        (
            "tls = true\nsni = \"x\"\nclient_cert_path = \"/x\"",
            "upstreams[0].client_key_path",
            "required with client_cert_path",
        ),
    ];
    for (lines, field, fix) in upstream_cases {
        let (code, err) = check("", &upstream(lines));
        assert_eq!(code, 2, "{field}: {err}");
        assert!(
            err.contains(field) && err.contains(fix),
            "{field} / {fix}: {err}"
        );
    }
    let (code, err) = check(
        "",
        &upstream(&format!(
            "tls = true\nsni = \"x\"\nca_path = \"{}\"",
            garbage.display()
        )),
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("upstreams[0].ca_path") && err.contains("holds no PEM certificate"),
        "{err}"
    );
}
