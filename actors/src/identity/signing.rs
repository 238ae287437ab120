//! Token-signing keys: generation, sealing under the platform KEK, and rotation.

use custos_raft::access::{SigningAlgorithm, SigningKey};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::custody::crypto::{labelled_aad, open, seal, SecretKey};

/// A freshly generated key pair.
pub struct GeneratedKey {
    pub kid: String,
    pub algorithm: SigningAlgorithm,
    pub public_key: Vec<u8>,
    /// RS256: PKCS#1 DER; EdDSA: PKCS#8 DER.
    pub private_der: Zeroizing<Vec<u8>>,
}

#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("generating a signing key: {0}")]
    Generate(String),
    #[error("the signing key {0} does not open under the platform KEK")]
    Open(String),
    #[error("the signing key {0} is not a usable key pair")]
    Unusable(String),
}

/// Generates a key pair (an RSA 2048 key takes a noticeable fraction of a second: call this
/// off the async threads). Its kid is derived from the public key.
pub fn generate(algorithm: SigningAlgorithm) -> Result<GeneratedKey, SigningError> {
    let fail = |e: &dyn std::fmt::Display| SigningError::Generate(e.to_string());
    let (public_key, private_der) = match algorithm {
        SigningAlgorithm::Rs256 => {
            use rsa::pkcs1::{EncodeRsaPrivateKey, EncodeRsaPublicKey};
            let private = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).map_err(|e| fail(&e))?;
            let public = private.to_public_key().to_pkcs1_der().map_err(|e| fail(&e))?.into_vec();
            let der = private.to_pkcs1_der().map_err(|e| fail(&e))?;
            (public, Zeroizing::new(der.as_bytes().to_vec()))
        }
        SigningAlgorithm::EdDsa => {
            use ring::signature::KeyPair;
            let rng = ring::rand::SystemRandom::new();
            let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| fail(&e))?;
            let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|e| fail(&e))?;
            (pair.public_key().as_ref().to_vec(), Zeroizing::new(pkcs8.as_ref().to_vec()))
        }
    };
    let kid = hex::encode(&Sha256::digest(&public_key)[..12]);
    Ok(GeneratedKey { kid, algorithm, public_key, private_der })
}

fn aad(kid: &str) -> Vec<u8> {
    labelled_aad("custos/signing-key/v1", &[kid.as_bytes()])
}

/// The private key sealed under the platform KEK, bound to its kid.
pub fn seal_private(kek: &SecretKey, key: &GeneratedKey) -> Vec<u8> {
    seal(kek, &key.private_der, &aad(&key.kid))
}

/// The record to replicate for a generated key: its public half and its private half sealed
/// under the platform KEK.
pub fn record(kek: &SecretKey, key: &GeneratedKey, created_at_ms: u64, activates_at_ms: u64) -> SigningKey {
    SigningKey {
        kid: key.kid.clone(),
        algorithm: key.algorithm,
        public_key: key.public_key.clone(),
        private_wrapped: seal_private(kek, key),
        created_at_ms,
        activates_at_ms,
        retires_at_ms: None,
    }
}

pub fn open_private(kek: &SecretKey, key: &SigningKey) -> Result<Zeroizing<Vec<u8>>, SigningError> {
    open(kek, &key.private_wrapped, &aad(&key.kid)).map(Zeroizing::new).map_err(|_| SigningError::Open(key.kid.clone()))
}

/// When keys change.
#[derive(Debug, Clone, Copy)]
pub struct RotationPolicy {
    /// How long a key signs before the next one takes over.
    pub rotation_ms: u64,
    /// How long a new key is published before it signs, so verifiers' cached JWKS know it.
    pub publish_ahead_ms: u64,
    /// How long a key stays published after its successor activated: the longest token
    /// lifetime plus the verifiers' clock skew.
    pub retire_after_ms: u64,
}

/// What the leader should write: the keys to keep (retirement times updated) and whether a
/// new key is needed, active from when. None when nothing changes.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub keep: Vec<SigningKey>,
    pub new_key_activates_at_ms: Option<u64>,
}

pub fn plan(keys: &[SigningKey], now_ms: u64, policy: RotationPolicy) -> Option<Plan> {
    let mut keep: Vec<SigningKey> =
        keys.iter().filter(|k| k.retires_at_ms.is_none_or(|r| r > now_ms)).cloned().collect();
    let pruned = keep.len() != keys.len();
    let pending = keep.iter().any(|k| k.activates_at_ms > now_ms);
    let current =
        keep.iter().enumerate().filter(|(_, k)| k.activates_at_ms <= now_ms).max_by_key(|(_, k)| k.activates_at_ms);
    let new_at = match current {
        None if !pending => Some(now_ms),
        Some((_, key))
            if !pending
                && now_ms
                    >= key
                        .activates_at_ms
                        .saturating_add(policy.rotation_ms)
                        .saturating_sub(policy.publish_ahead_ms) =>
        {
            Some(now_ms + policy.publish_ahead_ms)
        }
        _ => None,
    };
    if let (Some(at), Some((index, _))) = (new_at, current) {
        keep[index].retires_at_ms = Some(at + policy.retire_after_ms);
    }
    (pruned || new_at.is_some()).then_some(Plan { keep, new_key_activates_at_ms: new_at })
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: RotationPolicy = RotationPolicy { rotation_ms: 1000, publish_ahead_ms: 100, retire_after_ms: 50 };

    fn key(kid: &str, activates_at_ms: u64, retires_at_ms: Option<u64>) -> SigningKey {
        SigningKey {
            kid: kid.into(),
            algorithm: SigningAlgorithm::EdDsa,
            public_key: vec![],
            private_wrapped: vec![],
            created_at_ms: 0,
            activates_at_ms,
            retires_at_ms,
        }
    }

    #[test]
    fn keys_are_published_ahead_and_retired_after_their_last_token() {
        // No key: one, active at once.
        assert_eq!(plan(&[], 5, POLICY), Some(Plan { keep: vec![], new_key_activates_at_ms: Some(5) }));
        // A young key: nothing to do.
        let a = key("a", 0, None);
        assert_eq!(plan(std::slice::from_ref(&a), 899, POLICY), None);
        // Rotation due within the publish-ahead time: the next key activates in 100 ms, and the
        // current one retires 50 ms after that.
        let step = plan(std::slice::from_ref(&a), 900, POLICY).unwrap();
        assert_eq!(step.new_key_activates_at_ms, Some(1000));
        assert_eq!(step.keep[0].retires_at_ms, Some(1050));
        // With the next key pending, nothing more; once the old one retired, it is dropped.
        let keys = [key("a", 0, Some(1050)), key("b", 1000, None)];
        assert_eq!(plan(&keys, 950, POLICY), None);
        let dropped = plan(&keys, 1050, POLICY).unwrap();
        assert_eq!((dropped.keep.len(), dropped.keep[0].kid.as_str(), dropped.new_key_activates_at_ms), (1, "b", None));
    }

    #[test]
    fn generated_keys_seal_under_the_platform_kek_only() {
        let kek = SecretKey::generate();
        for algorithm in [SigningAlgorithm::EdDsa, SigningAlgorithm::Rs256] {
            let generated = generate(algorithm).unwrap();
            assert_eq!(generated.kid.len(), 24);
            let stored = SigningKey { private_wrapped: seal_private(&kek, &generated), ..key(&generated.kid, 0, None) };
            assert_eq!(open_private(&kek, &stored).unwrap().as_slice(), generated.private_der.as_slice());
            assert!(open_private(&SecretKey::generate(), &stored).is_err());
            // Bound to its kid: moved under another kid it does not open.
            let moved = SigningKey { kid: "other".into(), ..stored };
            assert!(open_private(&kek, &moved).is_err());
        }
    }
}
