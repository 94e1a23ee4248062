//! Certificates made in the test (rcgen) and TLS clients: HTTP/1.1 over TLS (blocking rustls)
//! and HTTP/2 over TLS (tokio-rustls + the h2 crate), both returning the same `Resp`.

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, SupportedProtocolVersion};

use super::http::{one_shot_request, read_response, Resp};

/// A test certificate authority.
pub struct Pki {
    pub ca_pem: String,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

/// A certificate and its key, PEM.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Issued {
    /// Writes `{stem}.crt` and `{stem}.key` into `dir`.
    pub fn write(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&cert, &self.cert_pem).unwrap();
        std::fs::write(&key, &self.key_pem).unwrap();
        (cert, key)
    }
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let ca = params.self_signed(&ca_key).unwrap();
        Pki {
            ca_pem: ca.pem(),
            ca,
            ca_key,
        }
    }

    /// A leaf for `names` (DNS names or IPs), valid from `from_days` to `to_days` around now.
    pub fn issue_window(&self, names: &[&str], from_days: i64, to_days: i64) -> Issued {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("client"),
        );
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now + time::Duration::days(from_days);
        params.not_after = now + time::Duration::days(to_days);
        let cert = params.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A leaf for `names`, valid from yesterday for 30 days.
    pub fn issue(&self, names: &[&str]) -> Issued {
        self.issue_window(names, -1, 30)
    }

    pub fn write_ca(&self, dir: &Path, stem: &str) -> PathBuf {
        let p = dir.join(format!("{stem}.pem"));
        std::fs::write(&p, &self.ca_pem).unwrap();
        p
    }
}

/// A client config trusting `ca_pem`, offering `alpn`, limited to `versions`, optionally
/// presenting a client certificate.
pub fn client_config(
    ca_pem: &str,
    alpn: &[&[u8]],
    versions: &[&'static SupportedProtocolVersion],
    client: Option<&Issued>,
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match client {
        Some(c) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(c.cert_pem.as_bytes())
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Arc::new(config)
}

pub const BOTH_VERSIONS: &[&SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// A blocking TLS connection: the handshake is complete when this returns `Ok`.
pub fn tls_connect(
    addr: SocketAddr,
    name: &str,
    config: Arc<ClientConfig>,
) -> std::io::Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
    let conn =
        rustls::ClientConnection::new(config, ServerName::try_from(name.to_owned()).unwrap())
            .map_err(std::io::Error::other)?;
    let mut s = rustls::StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    // TLS 1.3 servers report a refused client certificate after the client's Finished:
    // one more round trip makes such a refusal visible here.
    s.flush()?;
    Ok(s)
}

/// One HTTP/1.1 request over a fresh TLS connection (`Connection: close`).
pub fn h1_tls_request(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Resp {
    let bytes = one_shot_request("localhost", method, target, headers, body);
    let mut s = tls_connect(addr, "localhost", config).unwrap();
    s.write_all(&bytes).unwrap();
    let mut r = BufReader::new(s);
    read_response(&mut r, method == "HEAD").unwrap()
}

/// Runs an async block on a fresh current-thread runtime.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// An HTTP/2 connection over TLS (ALPN `h2`, asserted).
pub async fn h2_connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> h2::client::SendRequest<bytes::Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(&b"h2"[..]),
        "the gateway must choose h2 by ALPN"
    );
    let (send, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// Sends one request on an HTTP/2 connection and reads the whole response.
pub async fn h2_send(
    send: &mut h2::client::SendRequest<bytes::Bytes>,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Resp {
    // Origin-form targets go to this gateway; others (authority-form for CONNECT) as given.
    let uri = if target.starts_with('/') {
        format!("https://localhost{target}")
    } else {
        target.to_owned()
    };
    let mut req = http::Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        if k.eq_ignore_ascii_case("host") {
            continue; // :authority carries it on HTTP/2
        }
        req = req.header(*k, *v);
    }
    let req = req
        .body(())
        .unwrap_or_else(|e| panic!("not expressible on HTTP/2: {method} {target:?}: {e}"));
    send.clone().ready().await.unwrap();
    let (response, mut stream) = send.send_request(req, body.is_none()).unwrap();
    if let Some(b) = body {
        stream
            .send_data(bytes::Bytes::copy_from_slice(b), true)
            .unwrap();
    }
    let response = response.await.unwrap();
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let mut body = response.into_body();
    let mut out = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    Resp {
        status,
        headers,
        body: out,
    }
}

/// One request on a fresh HTTP/2 connection over TLS.
pub fn h2_request(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Resp {
    block_on(async {
        let mut send = h2_connect(addr, config).await;
        h2_send(&mut send, method, target, headers, body).await
    })
}
