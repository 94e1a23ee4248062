//! TLS at the front door: the server config (versions, ALPN, client certificates), a
//! certificate that rotates without a restart, and the handshake with its deadline.
//!
//! The gateway performs the handshake itself, in its connection wrapper, instead of
//! pingora's TLS listener: pingora 0.9's rustls `TlsSettings` fixes the protocol versions to
//! 1.2 + 1.3 and does not time the handshake. The handshake still goes through pingora's
//! `Acceptor`, so the stream it yields is pingora's own `TlsStream`, with its ALPN and digests.

pub mod material;
pub mod upstream;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::{Mutex, RwLock};
use pingora::listeners::tls::Acceptor;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::metrics::{Metrics, TlsHandshake, TlsReload};
use material::{MaterialError, Pair};

/// The lowest TLS version the listener accepts (1.0 and 1.1 are never offered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MinVersion {
    Tls12,
    Tls13,
}

/// What the listener needs to terminate TLS.
#[derive(Debug, Clone)]
pub struct FrontDoorSettings {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub min_version: MinVersion,
    /// Clients must present a certificate issued by one of these CAs (mutual TLS).
    pub client_ca_path: Option<PathBuf>,
    /// Offer HTTP/2 by ALPN (else HTTP/1.1 only).
    pub http2: bool,
    /// How long a client may take to complete the handshake.
    pub handshake_timeout: Duration,
    /// How often the certificate files are checked for a new pair.
    pub reload_interval: Duration,
}

/// Why the TLS listener cannot start.
#[derive(Debug, thiserror::Error)]
pub enum FrontDoorError {
    #[error(transparent)]
    Material(#[from] MaterialError),
    #[error("server.tls.client_ca_path: {0}")]
    ClientCa(String),
    #[error("server.tls: {0}")]
    Config(String),
}

/// The certificate being served; swapped whole when a new valid pair is found on disk.
pub struct RotatingCert {
    current: RwLock<Pair>,
    cert_path: PathBuf,
    key_path: PathBuf,
    /// The fingerprint of the last pair refused, so it is logged once, not every check.
    refused: Mutex<Option<[u8; 32]>>,
}

impl std::fmt::Debug for RotatingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RotatingCert")
            .field("cert_path", &self.cert_path)
            .finish_non_exhaustive()
    }
}

/// What a check of the certificate files found.
#[derive(Debug)]
pub enum Reload {
    Unchanged,
    /// A new pair is in service; its notAfter.
    Rotated(i64),
    /// The files changed but the new pair is unusable; the old one stays.
    Refused(MaterialError),
    /// The same unusable pair as last time (already reported).
    StillRefused,
}

impl RotatingCert {
    pub fn load(cert_path: PathBuf, key_path: PathBuf) -> Result<RotatingCert, MaterialError> {
        let pair = material::load_pair(&cert_path, &key_path, material::unix_now())?;
        Ok(RotatingCert {
            current: RwLock::new(pair),
            cert_path,
            key_path,
            refused: Mutex::new(None),
        })
    }

    /// The serving certificate's notAfter, in Unix seconds.
    pub fn not_after(&self) -> i64 {
        self.current.read().not_after
    }

    /// Looks at the files; puts a changed, valid pair in service.
    pub fn check(&self, now: i64) -> Reload {
        let files = match material::PairFiles::read(&self.cert_path, &self.key_path) {
            Ok(f) => f,
            Err(e) => return self.refuse(None, e),
        };
        let fingerprint = files.fingerprint();
        if fingerprint == self.current.read().fingerprint {
            return Reload::Unchanged;
        }
        if *self.refused.lock() == Some(fingerprint) {
            return Reload::StillRefused;
        }
        match files.check(now) {
            Ok(pair) => {
                let not_after = pair.not_after;
                *self.current.write() = pair;
                *self.refused.lock() = None;
                Reload::Rotated(not_after)
            }
            // A pair read half-written has another fingerprint next time; it is retried then.
            Err(e) => self.refuse(Some(fingerprint), e),
        }
    }

    fn refuse(&self, fingerprint: Option<[u8; 32]>, e: MaterialError) -> Reload {
        let mut refused = self.refused.lock();
        if fingerprint.is_some() && *refused == fingerprint {
            return Reload::StillRefused;
        }
        *refused = fingerprint;
        Reload::Refused(e)
    }
}

impl ResolvesServerCert for RotatingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().certified.clone())
    }
}

/// The TLS side of the listener: accepts handshakes with the current certificate.
pub struct FrontDoor {
    acceptor: Acceptor,
    cert: Arc<RotatingCert>,
    handshake_timeout: Duration,
    metrics: Arc<Metrics>,
}

impl FrontDoor {
    pub fn new(s: &FrontDoorSettings, metrics: Arc<Metrics>) -> Result<FrontDoor, FrontDoorError> {
        let cert = Arc::new(RotatingCert::load(s.cert_path.clone(), s.key_path.clone())?);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions: &[&rustls::SupportedProtocolVersion] = match s.min_version {
            MinVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            MinVersion::Tls13 => &[&rustls::version::TLS13],
        };
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(|e| FrontDoorError::Config(e.to_string()))?;
        let builder = match &s.client_ca_path {
            Some(path) => {
                let roots = Arc::new(material::roots(path)?);
                let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(|e| FrontDoorError::ClientCa(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(cert.clone());
        config.alpn_protocols = if s.http2 {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        metrics.set_tls_cert_expiry(cert.not_after());
        Ok(FrontDoor {
            acceptor: Acceptor::from_server_config(Arc::new(config)),
            cert,
            handshake_timeout: s.handshake_timeout,
            metrics,
        })
    }

    /// The rotating certificate, for the watcher.
    pub fn cert(&self) -> Arc<RotatingCert> {
        self.cert.clone()
    }

    /// Completes the handshake on a freshly accepted connection, within the deadline;
    /// `None`: the connection is closed (the reason is counted and logged at debug).
    pub async fn accept(&self, stream: Stream) -> Option<Stream> {
        // pingora's listeners hand over their L4 stream boxed; the TLS stream wraps it.
        let l4 = match stream.into_any().downcast::<L4Stream>() {
            Ok(l4) => *l4,
            Err(_) => {
                log::error!("TLS: the listener handed over a stream that is not TCP; closed");
                self.metrics.tls_handshake(TlsHandshake::Failed);
                return None;
            }
        };
        match tokio::time::timeout(self.handshake_timeout, self.acceptor.tls_handshake(l4)).await {
            Ok(Ok(tls)) => {
                self.metrics.tls_handshake(TlsHandshake::Ok);
                Some(Box::new(tls))
            }
            Ok(Err(e)) => {
                log::debug!("TLS handshake failed: {e}");
                self.metrics.tls_handshake(TlsHandshake::Failed);
                None
            }
            Err(_) => {
                log::debug!("TLS handshake timed out");
                self.metrics.tls_handshake(TlsHandshake::TimedOut);
                None
            }
        }
    }
}

/// Checks the certificate files every interval and rotates to a new valid pair.
pub struct CertWatcher {
    pub cert: Arc<RotatingCert>,
    pub interval: Duration,
    pub metrics: Arc<Metrics>,
}

impl CertWatcher {
    /// One check: rotates, or logs why not; the metrics follow.
    pub fn check_once(&self) {
        match self.cert.check(material::unix_now()) {
            Reload::Unchanged | Reload::StillRefused => {}
            Reload::Rotated(not_after) => {
                log::info!(
                    "TLS: new certificate in service from {} (expires at Unix time {not_after})",
                    self.cert.cert_path.display()
                );
                self.metrics.set_tls_cert_expiry(not_after);
                self.metrics.tls_reload(TlsReload::Rotated);
            }
            Reload::Refused(e) => {
                log::error!("TLS: new certificate refused, the previous one stays in service: {e}");
                self.metrics.tls_reload(TlsReload::Refused);
            }
        }
    }
}

#[async_trait]
impl BackgroundService for CertWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(self.interval) => self.check_once(),
            }
        }
    }
}
