//! AES-256-GCM with 96-bit random nonces, and the one type that holds plaintext key material.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore;
use zeroize::{Zeroize, ZeroizeOnDrop};

pub const KEY_BYTES: usize = 32;
pub const NONCE_BYTES: usize = 12;
pub const TAG_BYTES: usize = 16;

/// 256 bits of plaintext key material. Zeroized on drop; never printed, serialised or logged.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SecretKey([u8; KEY_BYTES]);

impl SecretKey {
    /// Fresh material from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let mut bytes = [0u8; KEY_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        SecretKey(bytes)
    }

    /// Takes the bytes of `material` and wipes the source.
    pub fn from_slice(material: &mut [u8]) -> Option<Self> {
        let key = <[u8; KEY_BYTES]>::try_from(&*material).ok().map(SecretKey);
        material.zeroize();
        key
    }

    pub fn expose(&self) -> &[u8; KEY_BYTES] {
        &self.0
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new((&self.0).into())
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(..)")
    }
}

/// Authentication failed: wrong key, wrong associated data, or modified bytes. Deliberately
/// says nothing more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("authenticated decryption failed")]
pub struct OpenError;

/// Encrypts `plaintext` under `key`, binding `aad`; returns `nonce || ciphertext || tag`.
pub fn seal(key: &SecretKey, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_BYTES];
    // The thread's CSPRNG (ChaCha, seeded and periodically reseeded from the OS): a random
    // nonce without a system call per encryption. Key material comes from the OS directly.
    rand::thread_rng().fill_bytes(&mut nonce);
    let sealed = key
        .cipher()
        .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad })
        // AES-GCM encryption fails only for inputs beyond 64 GiB, far above any body limit.
        .expect("AES-GCM encryption of a bounded message");
    let mut out = Vec::with_capacity(NONCE_BYTES + sealed.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    out
}

/// Reverses [`seal`].
pub fn open(key: &SecretKey, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, OpenError> {
    if sealed.len() < NONCE_BYTES + TAG_BYTES {
        return Err(OpenError);
    }
    let (nonce, body) = sealed.split_at(NONCE_BYTES);
    key.cipher().decrypt(Nonce::from_slice(nonce), Payload { msg: body, aad }).map_err(|_| OpenError)
}

/// Wraps key material under `kek`.
pub fn wrap_key(kek: &SecretKey, key: &SecretKey, aad: &[u8]) -> Vec<u8> {
    seal(kek, key.expose(), aad)
}

/// Unwraps key material wrapped by [`wrap_key`].
pub fn unwrap_key(kek: &SecretKey, wrapped: &[u8], aad: &[u8]) -> Result<SecretKey, OpenError> {
    let mut plain = open(kek, wrapped, aad)?;
    SecretKey::from_slice(&mut plain).ok_or(OpenError)
}

/// Associated data naming what a wrapped key is: a domain label, then length-prefixed parts.
pub fn labelled_aad(label: &str, parts: &[&[u8]]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(64);
    push_field(&mut aad, label.as_bytes());
    for part in parts {
        push_field(&mut aad, part);
    }
    aad
}

/// Appends a 4-byte big-endian length and the bytes, so concatenations cannot collide.
pub fn push_field(out: &mut Vec<u8>, bytes: &[u8]) {
    // Every field is bounded by the request body limit, far below 4 GiB.
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_mismatch_fails() {
        let key = SecretKey::generate();
        let sealed = seal(&key, b"payload", b"aad");
        assert_eq!(open(&key, &sealed, b"aad").unwrap(), b"payload");
        assert_eq!(open(&key, &sealed, b"other"), Err(OpenError));
        assert_eq!(open(&SecretKey::generate(), &sealed, b"aad"), Err(OpenError));
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(open(&key, &tampered, b"aad"), Err(OpenError));
        assert_eq!(open(&key, &sealed[..10], b"aad"), Err(OpenError));
    }

    #[test]
    fn nonces_differ_between_encryptions() {
        let key = SecretKey::generate();
        assert_ne!(seal(&key, b"same", b""), seal(&key, b"same", b""));
    }

    #[test]
    fn labelled_parts_cannot_be_shifted() {
        assert_ne!(labelled_aad("l", &[b"ab", b"c"]), labelled_aad("l", &[b"a", b"bc"]));
    }

    #[test]
    fn debug_output_hides_material() {
        assert_eq!(format!("{:?}", SecretKey::generate()), "SecretKey(..)");
    }
}
