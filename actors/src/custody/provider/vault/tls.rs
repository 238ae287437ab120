//! Which Vault server certificates the adapter accepts. One configuration serves both of its
//! HTTP clients (vaultrs' and the one for the namespace API):
//! - with `ca_file`, a certificate must chain to that CA, the only root trusted; without one,
//!   to the system's roots;
//! - with pinned fingerprints, the server's own certificate must also have one of those
//!   SHA-256 digests (of its DER), so a certificate the CA issued to someone else for the
//!   same name is refused too. Pin the next certificate's digest alongside before rotating.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};
use sha2::{Digest, Sha256};

/// The TLS client configuration for Vault, or why it cannot be built.
pub(super) fn client_config(ca_file: Option<&Path>, pins: &[[u8; 32]]) -> Result<rustls::ClientConfig, String> {
    let provider = CryptoProvider::get_default().cloned().ok_or("no TLS crypto provider is installed")?;
    let verifier = verifier(ca_file, pins, &provider)?;
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS versions: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

fn verifier(
    ca_file: Option<&Path>,
    pins: &[[u8; 32]],
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ServerCertVerifier>, String> {
    let chain: Arc<dyn ServerCertVerifier> = match ca_file {
        Some(ca) => {
            let pem = std::fs::read(ca).map_err(|e| format!("reading {}: {e}", ca.display()))?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| format!("parsing {}: {e}", ca.display()))?;
                roots.add(cert).map_err(|e| format!("using {}: {e}", ca.display()))?;
            }
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| format!("using {}: {e}", ca.display()))?
        }
        None => Arc::new(
            rustls_platform_verifier::Verifier::new(provider.clone())
                .map_err(|e| format!("loading the system's roots: {e}"))?,
        ),
    };
    Ok(if pins.is_empty() { chain } else { Arc::new(Pinned { chain, pins: pins.to_vec() }) })
}

/// A verifier that also requires the server's certificate to be one of `pins`.
#[derive(Debug)]
struct Pinned {
    chain: Arc<dyn ServerCertVerifier>,
    pins: Vec<[u8; 32]>,
}

#[derive(thiserror::Error)]
#[error("the server's certificate (SHA-256 {0}) is not one of custody.vault.server_cert_sha256")]
struct NotPinned(String);

/// rustls shows a certificate error's cause with `Debug`: this one reads as its message.
impl std::fmt::Debug for NotPinned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        let digest: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if self.pins.contains(&digest) {
            Ok(ServerCertVerified::assertion())
        } else {
            let error = NotPinned(hex::encode(digest));
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(error)))))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

    use super::*;

    /// A CA's PEM file and a certificate it issued for `localhost`.
    fn issued(dir: &Path, name: &str) -> (std::path::PathBuf, CertificateDer<'static>) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        let ca = params.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let leaf =
            CertificateParams::new(vec!["localhost".to_string()]).unwrap().signed_by(&key, &ca, &ca_key).unwrap();
        let path = dir.join(format!("{name}.pem"));
        std::fs::write(&path, ca.pem()).unwrap();
        (path, leaf.der().clone())
    }

    fn check(verifier: &Arc<dyn ServerCertVerifier>, cert: &CertificateDer<'_>) -> Result<(), String> {
        let name = ServerName::try_from("localhost").unwrap();
        verifier.verify_server_cert(cert, &[], &name, &[], UnixTime::now()).map(|_| ()).map_err(|e| e.to_string())
    }

    #[test]
    fn a_pinned_digest_narrows_the_pinned_ca_to_one_certificate() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let provider = CryptoProvider::get_default().cloned().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert) = issued(dir.path(), "ca");
        let (_, other_ca_cert) = issued(dir.path(), "other");
        let digest: [u8; 32] = Sha256::digest(cert.as_ref()).into();

        let by_ca = verifier(Some(&ca), &[], &provider).unwrap();
        assert_eq!(check(&by_ca, &cert), Ok(()));
        assert!(check(&by_ca, &other_ca_cert).is_err(), "a certificate of another CA is refused");

        let pinned = verifier(Some(&ca), &[[7; 32], digest], &provider).unwrap();
        assert_eq!(check(&pinned, &cert), Ok(()));
        let refused = verifier(Some(&ca), &[[7; 32]], &provider).unwrap();
        let error = check(&refused, &cert).unwrap_err();
        assert!(error.contains(&hex::encode(digest)) && error.contains("server_cert_sha256"), "{error}");

        // A pin does not stand in for the CA: the chain is checked first.
        let other_digest: [u8; 32] = Sha256::digest(other_ca_cert.as_ref()).into();
        let pinned_other = verifier(Some(&ca), &[other_digest], &provider).unwrap();
        assert!(check(&pinned_other, &other_ca_cert).is_err());
    }
}
