//! TLS to an upstream group, as pingora peer options: the CAs that may sign its certificate
//! and the client certificate the gateway presents (mutual TLS).

use std::path::PathBuf;
use std::sync::Arc;

use pingora::protocols::tls::CaType;
use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::{parse_x509, CertKey, WrappedX509};

use super::material::{self, MaterialError};

/// How the gateway talks TLS to one upstream group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// The name sent as SNI and checked against the upstream's certificate.
    pub sni: String,
    /// Check the upstream's certificate (chain and name). Off only for tests and labs.
    pub verify: bool,
    /// Trust these CAs instead of the system's.
    pub ca_path: Option<PathBuf>,
    /// A certificate and key to present to the upstream.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// The loaded form of `UpstreamTls`, shared by every peer of the group.
pub struct PeerTls {
    ca: Option<Arc<CaType>>,
    client: Option<Arc<CertKey>>,
    sni: String,
    verify: bool,
}

impl PeerTls {
    pub fn load(t: &UpstreamTls) -> Result<PeerTls, MaterialError> {
        let ca = match &t.ca_path {
            Some(path) => {
                let certs: Vec<WrappedX509> = material::certificates(path)?
                    .into_iter()
                    .map(|c| WrappedX509::new(c.to_vec(), parse_x509))
                    .collect();
                Some(Arc::<CaType>::from(certs))
            }
            None => None,
        };
        let client = match &t.client_cert {
            Some((cert, key)) => {
                // Read once, checked with the same rules as the listener's pair.
                let files = material::PairFiles::read(cert, key)?;
                let pair = files.check(material::unix_now())?;
                let chain = pair.certified.cert.iter().map(|c| c.to_vec()).collect();
                let key = files.private_key()?.secret_der().to_vec();
                Some(Arc::new(CertKey::new(chain, key)))
            }
            None => None,
        };
        Ok(PeerTls {
            ca,
            client,
            sni: t.sni.clone(),
            verify: t.verify,
        })
    }

    /// Sets a peer's TLS options.
    pub fn apply(&self, peer: &mut HttpPeer) {
        peer.sni.clone_from(&self.sni);
        peer.options.verify_cert = self.verify;
        peer.options.verify_hostname = self.verify;
        peer.options.ca.clone_from(&self.ca);
        peer.client_cert_key.clone_from(&self.client);
    }
}
