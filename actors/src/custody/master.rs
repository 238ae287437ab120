//! The cluster master key that seals the `sealed-local` provider's tenant roots.
//!
//! Every node of a cluster must load the same key. It comes from a file, an environment
//! variable or an unseal command (whose standard output is the key), always as 64 hex digits.
//! It lives only in memory, zeroized on drop.

use std::path::PathBuf;

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::crypto::SecretKey;

/// Where the master key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MasterKeySource {
    File(PathBuf),
    /// The name of an environment variable.
    Env(String),
    /// A program and its arguments; its standard output is the key.
    Command(Vec<String>),
}

#[derive(Debug, thiserror::Error)]
pub enum MasterKeyError {
    #[error("reading the master key file {path}: {source}")]
    File { path: PathBuf, source: std::io::Error },
    #[error("environment variable {0} holding the master key is not set")]
    EnvMissing(String),
    #[error("running the unseal command {program}: {reason}")]
    Command { program: String, reason: String },
    #[error("the master key must be 64 hex digits (256 bits)")]
    Format,
}

/// Upper bound on the unseal command's output that is read.
const MAX_OUTPUT_BYTES: usize = 4096;

/// The loaded master key.
pub struct MasterKey {
    key: SecretKey,
    check: [u8; 8],
}

impl MasterKey {
    pub fn load(source: &MasterKeySource) -> Result<Self, MasterKeyError> {
        let text: Zeroizing<String> = match source {
            MasterKeySource::File(path) => Zeroizing::new(
                std::fs::read_to_string(path).map_err(|source| MasterKeyError::File { path: path.clone(), source })?,
            ),
            MasterKeySource::Env(name) => {
                Zeroizing::new(std::env::var(name).map_err(|_| MasterKeyError::EnvMissing(name.clone()))?)
            }
            MasterKeySource::Command(argv) => {
                let program = argv.first().cloned().unwrap_or_default();
                let fail = |reason: String| MasterKeyError::Command { program: program.clone(), reason };
                let output = std::process::Command::new(&program)
                    .args(&argv[1..])
                    .stdin(std::process::Stdio::null())
                    .output()
                    .map_err(|e| fail(e.to_string()))?;
                let stdout = Zeroizing::new(output.stdout);
                if !output.status.success() {
                    return Err(fail(format!("exited with {}", output.status)));
                }
                if stdout.len() > MAX_OUTPUT_BYTES {
                    return Err(fail("printed more than a key".into()));
                }
                Zeroizing::new(String::from_utf8(stdout.to_vec()).map_err(|_| MasterKeyError::Format)?)
            }
        };
        Self::from_hex(text.trim())
    }

    pub fn from_hex(text: &str) -> Result<Self, MasterKeyError> {
        let mut bytes = Zeroizing::new(hex::decode(text).map_err(|_| MasterKeyError::Format)?);
        let key = SecretKey::from_slice(&mut bytes).ok_or(MasterKeyError::Format)?;
        Ok(Self::new(key))
    }

    pub fn new(key: SecretKey) -> Self {
        let digest = Sha256::new().chain_update(b"custos/master-key-check/v1").chain_update(key.expose()).finalize();
        let mut check = [0u8; 8];
        check.copy_from_slice(&digest[..8]);
        MasterKey { key, check }
    }

    /// A new random key as 64 hex digits, for `custos dev` and operators' first setup.
    pub fn generate_hex() -> Zeroizing<String> {
        Zeroizing::new(hex::encode(SecretKey::generate().expose()))
    }

    pub fn key(&self) -> &SecretKey {
        &self.key
    }

    /// A key check value: a one-way digest that tells whether two nodes hold the same key.
    pub fn check_value(&self) -> [u8; 8] {
        self.check
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_from_file_env_and_command() {
        let hex = MasterKey::generate_hex();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        std::fs::write(&path, format!("{}\n", hex.as_str())).unwrap();
        let from_file = MasterKey::load(&MasterKeySource::File(path.clone())).unwrap();
        let from_command =
            MasterKey::load(&MasterKeySource::Command(vec!["cat".into(), path.display().to_string()])).unwrap();
        assert_eq!(from_file.key().expose(), from_command.key().expose());
        assert_eq!(from_file.check_value(), from_command.check_value());
        assert!(matches!(
            MasterKey::load(&MasterKeySource::Env("CUSTOS_TEST_NO_SUCH_VAR".into())),
            Err(MasterKeyError::EnvMissing(_))
        ));
        assert!(matches!(MasterKey::from_hex("abcd"), Err(MasterKeyError::Format)));
        assert!(matches!(
            MasterKey::load(&MasterKeySource::Command(vec!["false".into()])),
            Err(MasterKeyError::Command { .. })
        ));
    }
}
