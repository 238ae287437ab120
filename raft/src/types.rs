//! Identifiers and node addresses shared by every layer.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A Raft node id. Unique in a cluster and never reused after a node leaves.
pub type NodeId = u64;

/// How to reach a member: its Raft transport and its client API.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NodeInfo {
    /// `host:port` of the mutual-TLS Raft transport.
    pub raft_addr: String,
    /// `host:port` of the HTTPS client API.
    pub api_addr: String,
}

impl fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "raft={} api={}", self.raft_addr, self.api_addr)
    }
}

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {value:?} is invalid: {reason}")]
pub struct InvalidId {
    pub what: &'static str,
    pub value: String,
    pub reason: &'static str,
}

/// Checks a DNS-label-like identifier: 1 to 63 characters of `a-z`, `0-9` and `-`, starting
/// with a letter or digit. Tenant ids end up in Vault namespaces, Kafka keys and actor names,
/// so they use the alphabet all of those accept.
fn check_label(what: &'static str, value: &str) -> Result<(), InvalidId> {
    let fail = |reason| Err(InvalidId { what, value: value.chars().take(80).collect(), reason });
    if value.is_empty() || value.len() > 63 {
        return fail("must be 1 to 63 characters long");
    }
    if !value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        return fail("may contain only lowercase letters, digits and '-'");
    }
    if value.starts_with('-') || value.ends_with('-') {
        return fail("must start and end with a letter or digit");
    }
    Ok(())
}

macro_rules! label_newtype {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn new(value: impl Into<String>) -> Result<Self, InvalidId> {
                let value = value.into();
                check_label($what, &value)?;
                Ok($name(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidId;
            fn try_from(value: String) -> Result<Self, InvalidId> {
                $name::new(value)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

label_newtype!(
    /// A tenant's identifier, chosen at creation and never reused, even after deletion.
    TenantId,
    "tenant id"
);
label_newtype!(
    /// A key's identifier, unique within its tenant and never reused, even after destruction.
    KeyId,
    "key id"
);
label_newtype!(
    /// A residency or region label such as `eu-central` or `on-prem-paris`.
    RegionLabel,
    "region"
);
label_newtype!(
    /// The public identifier of an API key, chosen at random by the node that created it. It is
    /// the lookup prefix of the key's token and appears in audit events; the secret never does.
    ApiKeyId,
    "API key id"
);
label_newtype!(
    /// A just-in-time grant's identifier, chosen at random by the node that accepted it.
    GrantId,
    "grant id"
);
label_newtype!(
    /// A sign-in session's public identifier, chosen at random by the node that created it;
    /// the session cookie is `<id>.<secret>`.
    SessionId,
    "session id"
);
label_newtype!(
    /// A directory user's or group's identifier (SCIM `id`), chosen at random by the node
    /// that created it and never reused.
    DirectoryId,
    "directory id"
);

/// A client-chosen identifier of one logical write. A retried write carries the same id and is
/// applied once; the state machine answers the retry with the first outcome.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RequestId(String);

impl RequestId {
    pub const MAX_LEN: usize = 128;

    pub fn new(value: impl Into<String>) -> Result<Self, InvalidId> {
        let value = value.into();
        let fail = |reason| Err(InvalidId { what: "request id", value: value.chars().take(80).collect(), reason });
        if value.is_empty() || value.len() > Self::MAX_LEN {
            return fail("must be 1 to 128 characters long");
        }
        if !value.bytes().all(|b| b.is_ascii_graphic()) {
            return fail("may contain only printable ASCII without spaces");
        }
        Ok(RequestId(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RequestId {
    type Error = InvalidId;
    fn try_from(value: String) -> Result<Self, InvalidId> {
        RequestId::new(value)
    }
}

impl From<RequestId> for String {
    fn from(id: RequestId) -> String {
        id.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids_follow_the_label_alphabet() {
        assert!(TenantId::new("acme-corp").is_ok());
        assert!(TenantId::new("a").is_ok());
        for bad in ["", "-acme", "acme-", "Acme", "acme corp", "acme/../x", &"a".repeat(64)] {
            assert!(TenantId::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn deserializing_checks_the_id() {
        // Ids arriving over the network or from disk go through the same check.
        let err = serde_json::from_str::<TenantId>("\"NOT OK\"");
        assert!(err.is_err());
        let ok: TenantId = serde_json::from_str("\"ok-1\"").expect("valid id");
        assert_eq!(ok.as_str(), "ok-1");
    }

    #[test]
    fn request_ids_are_bounded_printable_ascii() {
        assert!(RequestId::new("0b6f2c1e-req").is_ok());
        assert!(RequestId::new("with space").is_err());
        assert!(RequestId::new("x".repeat(129)).is_err());
    }
}
