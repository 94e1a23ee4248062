//! An upstream that speaks TLS: HTTP/1.1 forwarded to a plain echo upstream behind it, or
//! HTTP/2 answered here (ALPN h2). It records handshakes and the client certificates shown.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use super::tls::Issued;
use super::upstream::Received;

pub struct TlsUpstream {
    pub addr: SocketAddr,
    pub handshakes: Arc<AtomicUsize>,
    /// The leaf certificate (DER) each client presented, in order.
    pub client_certs: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Requests answered here on HTTP/2.
    pub h2_requests: Arc<Mutex<Vec<Received>>>,
}

/// What the TLS upstream does after the handshake.
pub enum Behind {
    /// Forward the bytes to a plain HTTP/1.1 upstream.
    Forward(SocketAddr),
    /// Answer HTTP/2 requests itself: 200 with a JSON body naming method and path.
    Http2,
}

impl TlsUpstream {
    pub fn start(cert: &Issued, client_ca_pem: Option<&str>, behind: Behind) -> TlsUpstream {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let builder = match client_ca_pem {
            Some(pem) => {
                let mut roots = RootCertStore::empty();
                for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                    roots.add(c.unwrap()).unwrap();
                }
                let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .unwrap();
                builder.with_client_cert_verifier(v)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(
                CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap(),
            )
            .unwrap();
        config.alpn_protocols = match behind {
            Behind::Http2 => vec![b"h2".to_vec()],
            Behind::Forward(_) => vec![b"http/1.1".to_vec()],
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let up = TlsUpstream {
            addr,
            handshakes: Arc::default(),
            client_certs: Arc::default(),
            h2_requests: Arc::default(),
        };
        let (handshakes, certs, h2_requests) = (
            up.handshakes.clone(),
            up.client_certs.clone(),
            up.h2_requests.clone(),
        );
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    let acceptor = acceptor.clone();
                    let (handshakes, certs, h2_requests) =
                        (handshakes.clone(), certs.clone(), h2_requests.clone());
                    let forward = match behind {
                        Behind::Forward(a) => Some(a),
                        Behind::Http2 => None,
                    };
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        handshakes.fetch_add(1, Ordering::SeqCst);
                        if let Some(leaf) =
                            tls.get_ref().1.peer_certificates().and_then(|c| c.first())
                        {
                            certs.lock().unwrap().push(leaf.to_vec());
                        }
                        match forward {
                            Some(a) => forward_to(tls, a).await,
                            None => serve_h2(tls, h2_requests).await,
                        }
                    });
                }
            });
        });
        up
    }
}

async fn forward_to(
    mut tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    to: SocketAddr,
) {
    let Ok(mut plain) = tokio::net::TcpStream::connect(to).await else {
        return;
    };
    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
}

async fn serve_h2(
    tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    requests: Arc<Mutex<Vec<Received>>>,
) {
    let Ok(mut conn) = h2::server::handshake(tls).await else {
        return;
    };
    while let Some(Ok((req, mut respond))) = conn.accept().await {
        let (parts, mut body) = req.into_parts();
        let mut bytes = Vec::new();
        while let Some(Ok(chunk)) = body.data().await {
            let _ = body.flow_control().release_capacity(chunk.len());
            bytes.extend_from_slice(&chunk);
        }
        let target = parts
            .uri
            .path_and_query()
            .map_or("/".to_owned(), |p| p.as_str().to_owned());
        let headers = parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        requests.lock().unwrap().push(Received {
            method: parts.method.as_str().to_owned(),
            target: target.clone(),
            headers,
            body: bytes,
        });
        let body =
            serde_json::json!({"h2": true, "method": parts.method.as_str(), "target": target})
                .to_string();
        let resp = http::Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .header("content-length", body.len())
            .body(())
            .unwrap();
        if let Ok(mut send) = respond.send_response(resp, false) {
            let _ = send.send_data(bytes::Bytes::from(body), true);
        }
    }
}
