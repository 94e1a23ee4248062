//! Certificate and key files: read, parse, checked against each other and the clock. Used by
//! the config check (so `check-config` names the broken file) and at start and rotation.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use sha2::{Digest, Sha256};

/// Why a certificate, key or CA file cannot be used. Each names the file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum MaterialError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate (expected a -----BEGIN CERTIFICATE----- block)")]
    NoCertificate { path: PathBuf },
    #[error("{path}: PEM block {index} is not a valid certificate: {message}")]
    BadCertificate {
        path: PathBuf,
        index: usize,
        message: String,
    },
    #[error(
        "{path} holds no PEM private key (expected -----BEGIN PRIVATE KEY-----, \
         -----BEGIN RSA PRIVATE KEY----- or -----BEGIN EC PRIVATE KEY-----)"
    )]
    NoKey { path: PathBuf },
    #[error("{path}: the private key cannot be used: {message}")]
    BadKey { path: PathBuf, message: String },
    #[error(
        "the private key in {key} does not belong to the certificate in {cert} \
         (write the key that was issued with this certificate)"
    )]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("the certificate in {path} expired at {when} (renew it)")]
    Expired { path: PathBuf, when: String },
    #[error("the certificate in {path} is not valid before {when}")]
    NotYetValid { path: PathBuf, when: String },
}

/// A certificate chain with its private key, ready to serve.
#[derive(Clone)]
pub struct Pair {
    pub certified: Arc<CertifiedKey>,
    /// The leaf certificate's notAfter, in Unix seconds.
    pub not_after: i64,
    /// SHA-256 over both files' bytes: tells a changed pair from the one in service.
    pub fingerprint: [u8; 32],
}

impl std::fmt::Debug for Pair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pair")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, MaterialError> {
    std::fs::read(path).map_err(|source| MaterialError::Read {
        path: path.to_owned(),
        source,
    })
}

/// A certificate file and a key file, read once: the fingerprint, the checks and the parsing
/// all work on these bytes, so what is checked is what was fingerprinted.
pub struct PairFiles {
    cert_path: PathBuf,
    key_path: PathBuf,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
}

impl PairFiles {
    pub fn read(cert_path: &Path, key_path: &Path) -> Result<PairFiles, MaterialError> {
        Ok(PairFiles {
            cert_pem: read(cert_path)?,
            key_pem: read(key_path)?,
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
        })
    }

    /// The SHA-256 of both files' bytes, as `Pair::fingerprint`.
    pub fn fingerprint(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(&self.cert_pem);
        h.update([0u8]);
        h.update(&self.key_pem);
        h.finalize().into()
    }

    /// The private key, parsed.
    pub fn private_key(&self) -> Result<PrivateKeyDer<'static>, MaterialError> {
        parse_private_key(&self.key_path, &self.key_pem)
    }

    /// The chain and its key, checked: they belong together and the leaf is valid at `now`
    /// (Unix seconds).
    pub fn check(&self, now: i64) -> Result<Pair, MaterialError> {
        let (cert_path, key_path) = (&self.cert_path, &self.key_path);
        let chain = parse_certificates(cert_path, &self.cert_pem)?;
        let (not_before, not_after) = validity(cert_path, &chain[0])?;
        if not_after <= now {
            return Err(MaterialError::Expired {
                path: cert_path.clone(),
                when: rfc3339(not_after),
            });
        }
        if not_before > now {
            return Err(MaterialError::NotYetValid {
                path: cert_path.clone(),
                when: rfc3339(not_before),
            });
        }
        let key = self.private_key()?;
        let provider = rustls::crypto::ring::default_provider();
        let certified = CertifiedKey::from_der(chain, key, &provider).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => MaterialError::Mismatch {
                cert: cert_path.clone(),
                key: key_path.clone(),
            },
            e => MaterialError::BadKey {
                path: key_path.clone(),
                message: e.to_string(),
            },
        })?;
        Ok(Pair {
            certified: Arc::new(certified),
            not_after,
            fingerprint: self.fingerprint(),
        })
    }
}

/// Every certificate in a PEM file, in order (leaf first for a chain).
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, MaterialError> {
    parse_certificates(path, &read(path)?)
}

fn parse_certificates(
    path: &Path,
    bytes: &[u8],
) -> Result<Vec<CertificateDer<'static>>, MaterialError> {
    let mut out = Vec::new();
    for (index, c) in CertificateDer::pem_slice_iter(bytes).enumerate() {
        let c = c.map_err(|e| MaterialError::BadCertificate {
            path: path.to_owned(),
            index,
            message: e.to_string(),
        })?;
        x509_parser::parse_x509_certificate(&c).map_err(|e| MaterialError::BadCertificate {
            path: path.to_owned(),
            index,
            message: e.to_string(),
        })?;
        out.push(c);
    }
    if out.is_empty() {
        return Err(MaterialError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(out)
}

/// The first private key in PEM bytes (PKCS#8, PKCS#1 or SEC1); `path` names them in errors.
fn parse_private_key(path: &Path, bytes: &[u8]) -> Result<PrivateKeyDer<'static>, MaterialError> {
    PrivateKeyDer::from_pem_slice(bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => MaterialError::NoKey {
            path: path.to_owned(),
        },
        e => MaterialError::BadKey {
            path: path.to_owned(),
            message: e.to_string(),
        },
    })
}

/// The CA certificates of a PEM file, as a trust store.
pub fn roots(path: &Path) -> Result<RootCertStore, MaterialError> {
    let mut store = RootCertStore::empty();
    for (index, c) in certificates(path)?.into_iter().enumerate() {
        store.add(c).map_err(|e| MaterialError::BadCertificate {
            path: path.to_owned(),
            index,
            message: e.to_string(),
        })?;
    }
    Ok(store)
}

/// The leaf's validity window, in Unix seconds.
fn validity(path: &Path, leaf: &CertificateDer<'_>) -> Result<(i64, i64), MaterialError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(leaf).map_err(|e| MaterialError::BadCertificate {
            path: path.to_owned(),
            index: 0,
            message: e.to_string(),
        })?;
    let v = cert.validity();
    Ok((v.not_before.timestamp(), v.not_after.timestamp()))
}

fn rfc3339(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| secs.to_string())
}

/// Reads a certificate chain and its key and checks them (see `PairFiles::check`).
pub fn load_pair(cert_path: &Path, key_path: &Path, now: i64) -> Result<Pair, MaterialError> {
    PairFiles::read(cert_path, key_path)?.check(now)
}

/// The current time in Unix seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
