//! TLS to PostgreSQL through rustls (ring): `sslmode` from `store.url` decides whether it is
//! used (`disable`, `prefer`, `require`, as libpq). With `store.tls_ca_path` the server's
//! certificate is verified against that CA and the host name; without it the connection is
//! encrypted but the server is not authenticated, which is what libpq's `require` means.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::unavailable;
use crate::store::StoreError;

/// The TLS connector handed to tokio-postgres.
pub type Tls = MakeRustlsConnect;

/// Accepts any server certificate but still checks the handshake signatures: encryption
/// without authentication (libpq `sslmode=require` without a CA).
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Builds the connector: verifying against `ca_path` when given, encrypt-only otherwise.
pub fn new(ca_path: Option<&Path>) -> Result<Tls, StoreError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(unavailable)?;
    let config = match ca_path {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| unavailable(format!("store.tls_ca_path {}: {e}", path.display())))?;
            for cert in certs {
                let cert = cert.map_err(|e| {
                    unavailable(format!("store.tls_ca_path {}: {e}", path.display()))
                })?;
                roots.add(cert).map_err(|e| {
                    unavailable(format!("store.tls_ca_path {}: {e}", path.display()))
                })?;
            }
            if roots.is_empty() {
                return Err(unavailable(format!(
                    "store.tls_ca_path {}: no certificate in the file",
                    path.display()
                )));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(EncryptOnly(provider)))
            .with_no_client_auth(),
    };
    Ok(MakeRustlsConnect::new(config))
}
