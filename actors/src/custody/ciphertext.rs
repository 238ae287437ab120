//! The self-describing, versioned ciphertext format and the associated data it binds.
//!
//! Text form: `custos:v1:` followed by standard base64 of
//! `key version (u32, big-endian) || nonce (12 bytes) || AES-256-GCM ciphertext || tag`.
//! The `v1` names this layout; a later format gets a new prefix and old ones stay readable.
//!
//! The associated data binds the tenant id, key id, key version and the caller's encryption
//! context, so a ciphertext opens only under the same tenant, key, version and context.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use custos_raft::{KeyId, TenantId};

use super::crypto::{push_field, NONCE_BYTES, TAG_BYTES};

pub const PREFIX_V1: &str = "custos:v1:";
const VERSION_BYTES: usize = 4;
/// Most pairs in one encryption context.
pub const MAX_CONTEXT_PAIRS: usize = 64;
/// Longest context key or value, in bytes.
pub const MAX_CONTEXT_FIELD_BYTES: usize = 512;

/// Why a ciphertext could not even be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MalformedCiphertext {
    #[error("ciphertext does not start with a known format prefix (expected {PREFIX_V1:?})")]
    UnknownFormat,
    #[error("ciphertext is not valid base64")]
    Base64,
    #[error("ciphertext is too short to hold a key version, nonce and tag")]
    Truncated,
    #[error("ciphertext names key version 0, which never exists")]
    ZeroVersion,
}

/// A parsed ciphertext: which key version sealed it and the sealed bytes (`nonce || ct || tag`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ciphertext {
    pub key_version: u32,
    pub sealed: Vec<u8>,
}

impl Ciphertext {
    pub fn encode(&self) -> String {
        let mut raw = Vec::with_capacity(VERSION_BYTES + self.sealed.len());
        raw.extend_from_slice(&self.key_version.to_be_bytes());
        raw.extend_from_slice(&self.sealed);
        let mut text = String::with_capacity(PREFIX_V1.len() + raw.len() * 4 / 3 + 4);
        text.push_str(PREFIX_V1);
        STANDARD.encode_string(&raw, &mut text);
        text
    }

    /// The key version a ciphertext names, read from its first bytes without decoding the
    /// rest; None when it is not a well-formed start of a `custos:v1:` ciphertext.
    pub fn peek_version(text: &str) -> Option<u32> {
        let head = text.strip_prefix(PREFIX_V1)?.get(..8)?;
        let bytes = STANDARD.decode(head).ok()?;
        let version = u32::from_be_bytes(bytes.get(..VERSION_BYTES)?.try_into().ok()?);
        (version != 0).then_some(version)
    }

    pub fn parse(text: &str) -> Result<Self, MalformedCiphertext> {
        let body = text.strip_prefix(PREFIX_V1).ok_or(MalformedCiphertext::UnknownFormat)?;
        let raw = STANDARD.decode(body).map_err(|_| MalformedCiphertext::Base64)?;
        if raw.len() < VERSION_BYTES + NONCE_BYTES + TAG_BYTES {
            return Err(MalformedCiphertext::Truncated);
        }
        let (version, sealed) = raw.split_at(VERSION_BYTES);
        let key_version = u32::from_be_bytes(version.try_into().expect("split at 4 bytes"));
        if key_version == 0 {
            return Err(MalformedCiphertext::ZeroVersion);
        }
        Ok(Ciphertext { key_version, sealed: sealed.to_vec() })
    }
}

/// A caller's encryption context: string pairs, bound in canonical (sorted) order.
pub type EncryptionContext = BTreeMap<String, String>;

/// Checks the context's bounds; the reason names the offending part.
pub fn check_context(context: &EncryptionContext) -> Result<(), String> {
    if context.len() > MAX_CONTEXT_PAIRS {
        return Err(format!("encryption context has more than {MAX_CONTEXT_PAIRS} pairs"));
    }
    for (k, v) in context {
        if k.len() > MAX_CONTEXT_FIELD_BYTES || v.len() > MAX_CONTEXT_FIELD_BYTES {
            return Err(format!("encryption context keys and values are at most {MAX_CONTEXT_FIELD_BYTES} bytes"));
        }
    }
    Ok(())
}

/// The associated data of a data ciphertext.
pub fn data_aad(tenant: &TenantId, key: &KeyId, version: u32, context: &EncryptionContext) -> Vec<u8> {
    let mut aad = Vec::with_capacity(64 + context.len() * 32);
    push_field(&mut aad, b"custos/data/v1");
    push_field(&mut aad, tenant.as_str().as_bytes());
    push_field(&mut aad, key.as_str().as_bytes());
    aad.extend_from_slice(&version.to_be_bytes());
    // Bounded by MAX_CONTEXT_PAIRS.
    aad.extend_from_slice(&(context.len() as u32).to_be_bytes());
    for (k, v) in context {
        push_field(&mut aad, k.as_bytes());
        push_field(&mut aad, v.as_bytes());
    }
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_is_read_from_the_first_bytes_alone() {
        let text = Ciphertext { key_version: 258, sealed: vec![7; NONCE_BYTES + TAG_BYTES + 5] }.encode();
        assert_eq!(Ciphertext::peek_version(&text), Some(258));
        assert_eq!(Ciphertext::peek_version("custos:v1:AAAA"), None);
        assert_eq!(Ciphertext::peek_version("nope"), None);
    }

    #[test]
    fn encode_parse_round_trip() {
        let c = Ciphertext { key_version: 7, sealed: vec![9; NONCE_BYTES + TAG_BYTES + 3] };
        let text = c.encode();
        assert!(text.starts_with("custos:v1:"));
        assert_eq!(Ciphertext::parse(&text).unwrap(), c);
    }

    #[test]
    fn malformed_inputs_are_named() {
        assert_eq!(Ciphertext::parse("vault:v1:abc"), Err(MalformedCiphertext::UnknownFormat));
        assert_eq!(Ciphertext::parse("custos:v1:%%%"), Err(MalformedCiphertext::Base64));
        assert_eq!(Ciphertext::parse("custos:v1:AAAA"), Err(MalformedCiphertext::Truncated));
        let zero = Ciphertext { key_version: 0, sealed: vec![0; 40] }.encode();
        assert_eq!(Ciphertext::parse(&zero), Err(MalformedCiphertext::ZeroVersion));
    }

    #[test]
    fn aad_depends_on_every_binding() {
        let t = TenantId::new("t").unwrap();
        let k = KeyId::new("k").unwrap();
        let ctx: EncryptionContext = [("a".to_string(), "1".to_string())].into();
        let base = data_aad(&t, &k, 1, &ctx);
        assert_ne!(base, data_aad(&TenantId::new("u").unwrap(), &k, 1, &ctx));
        assert_ne!(base, data_aad(&t, &KeyId::new("j").unwrap(), 1, &ctx));
        assert_ne!(base, data_aad(&t, &k, 2, &ctx));
        assert_ne!(base, data_aad(&t, &k, 1, &EncryptionContext::new()));
    }
}
