//! TLS material: loading PEM files into rustls configurations, and generating a cluster CA
//! with node certificates for development and labs.
//!
//! One certificate per node serves the client API and authenticates the node to its peers.
//! The Raft listener requires a client certificate signed by the cluster CA; the API listener
//! does not ask for one (clients authenticate with tokens).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{path} holds no {what}")]
    Empty { path: PathBuf, what: &'static str },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("building TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("building client verifier: {0}")]
    Verifier(String),
    #[error("generating certificates: {0}")]
    Generate(#[from] rcgen::Error),
}

/// Installs the process-wide rustls crypto provider. Safe to call more than once.
pub fn install_crypto_provider() {
    // Err means a provider is already installed, which is all this function ensures.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The PEM files of one node.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Everything a node needs for its listeners and its calls to peers.
pub struct NodeTls {
    pub api_server: Arc<ServerConfig>,
    pub raft_server: Arc<ServerConfig>,
    pub peer_client: ClientConfig,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::Read { path: path.to_path_buf(), source })
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Invalid { path: path.to_path_buf(), reason: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::Empty { path: path.to_path_buf(), what: "certificate" });
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| TlsError::Invalid { path: path.to_path_buf(), reason: e.to_string() })?
        .ok_or(TlsError::Empty { path: path.to_path_buf(), what: "private key" })
}

/// A root store holding exactly the certificates in `ca`.
pub fn root_store(ca: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(ca)? {
        roots.add(cert).map_err(|e| TlsError::Invalid { path: ca.to_path_buf(), reason: e.to_string() })?;
    }
    Ok(roots)
}

impl NodeTls {
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let roots = Arc::new(root_store(&files.ca)?);
        let certs = load_certs(&files.cert)?;
        let key = load_key(&files.key)?;

        let mut api = ServerConfig::builder().with_no_client_auth().with_single_cert(certs.clone(), key.clone_key())?;
        api.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];

        let verifier =
            WebPkiClientVerifier::builder(roots.clone()).build().map_err(|e| TlsError::Verifier(e.to_string()))?;
        let mut raft = ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs.clone(), key.clone_key())?;
        raft.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];

        let peer_client = ClientConfig::builder().with_root_certificates(roots).with_client_auth_cert(certs, key)?;
        Ok(NodeTls { api_server: Arc::new(api), raft_server: Arc::new(raft), peer_client })
    }
}

/// File names used by [`generate_cluster_pki`] inside its directory.
pub fn ca_cert_path(dir: &Path) -> PathBuf {
    dir.join("ca.pem")
}

pub fn node_files(dir: &Path, node: u64) -> TlsFiles {
    TlsFiles {
        ca: ca_cert_path(dir),
        cert: dir.join(format!("node-{node}.pem")),
        key: dir.join(format!("node-{node}-key.pem")),
    }
}

fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), TlsError> {
    let wrap = |source| TlsError::Write { path: path.to_path_buf(), source };
    fs::write(path, contents).map_err(wrap)?;
    if private {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(wrap)?;
    }
    Ok(())
}

/// Creates (or completes) a cluster CA and certificates for nodes `1..=nodes` in `dir`.
/// Existing files are kept, so a second run reuses them. Certificates name `localhost`,
/// `127.0.0.1`, `::1` and the extra `hosts`.
pub fn generate_cluster_pki(dir: &Path, nodes: u64, hosts: &[String]) -> Result<(), TlsError> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};

    fs::create_dir_all(dir).map_err(|source| TlsError::Write { path: dir.to_path_buf(), source })?;
    let ca_cert_file = ca_cert_path(dir);
    let ca_key_file = dir.join("ca-key.pem");

    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name.push(DnType::CommonName, "Custos cluster CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let (ca_key, ca_cert) = if ca_cert_file.is_file() && ca_key_file.is_file() {
        let key_pem =
            fs::read_to_string(&ca_key_file).map_err(|source| TlsError::Read { path: ca_key_file.clone(), source })?;
        let key = KeyPair::from_pem(&key_pem)?;
        // Same subject and key as the stored CA: certificates it signs verify under the stored
        // CA file, which is left untouched.
        let cert = ca_params.self_signed(&key)?;
        (key, cert)
    } else {
        let key = KeyPair::generate()?;
        let cert = ca_params.self_signed(&key)?;
        write_file(&ca_key_file, &key.serialize_pem(), true)?;
        write_file(&ca_cert_file, &cert.pem(), false)?;
        (key, cert)
    };

    for node in 1..=nodes {
        let files = node_files(dir, node);
        if files.cert.is_file() && files.key.is_file() {
            continue;
        }
        let mut names =
            vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string(), format!("node-{node}.custos")];
        names.extend(hosts.iter().cloned());
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name.push(DnType::CommonName, format!("custos node {node}"));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca_cert, &ca_key)?;
        write_file(&files.key, &key.serialize_pem(), true)?;
        write_file(&files.cert, &cert.pem(), false)?;
    }
    Ok(())
}
