//! Each tenant's directory: the people and groups a tenant provisions (through SCIM, or by
//! hand for the `native` identity provider), and whether its people sign in natively.
//!
//! A directory user is the person an external provider's sign-in names (subject
//! `user:<user_name>`). Once a tenant's directory holds a user, it is the list of who may sign
//! in to that tenant: a sign-in for a person it does not hold, or holds as inactive, is
//! refused. Deactivating or deleting a user ends its sessions and revokes the API keys it
//! created in the same apply.

use serde::{Deserialize, Serialize};

use crate::access::{check_text, MAX_PERMISSIONS_PER_ENTRY};
use crate::types::DirectoryId;

/// Most users one tenant's directory holds.
pub const MAX_DIRECTORY_USERS: u64 = 50_000;
/// Most groups one tenant's directory holds.
pub const MAX_DIRECTORY_GROUPS: u64 = 5_000;
/// Most members of one group.
pub const MAX_GROUP_MEMBERS: usize = 10_000;
/// Most email addresses of one user.
pub const MAX_EMAILS: usize = 8;
/// Longest stored password hash (an argon2id PHC string is about 100 bytes).
pub const MAX_PASSWORD_HASH_BYTES: usize = 256;
/// Longest sealed TOTP secret.
pub const MAX_TOTP_SEALED_BYTES: usize = 256;

/// A person in a tenant's directory.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectoryUser {
    pub id: DirectoryId,
    /// Unique in the tenant, compared without regard to case (SCIM `userName`).
    pub user_name: String,
    /// The provisioning client's own id for the person.
    pub external_id: Option<String>,
    pub display_name: Option<String>,
    pub given_name: Option<String>,
    pub family_name: Option<String>,
    pub emails: Vec<Email>,
    /// An inactive user cannot sign in and holds no session or API key.
    pub active: bool,
    /// Role names given to the person directly (built-in or the tenant's custom roles).
    pub roles: Vec<String>,
    /// Lines of business the person works for (ABAC).
    pub lob: Vec<String>,
    /// The argon2id hash (PHC string) of the person's password, for native sign-in.
    pub password_hash: Option<String>,
    /// The person's TOTP secret, sealed under the tenant KEK, for native sign-in with MFA.
    pub totp_sealed: Option<Vec<u8>>,
    /// The last TOTP time step accepted: a code is never accepted twice.
    pub totp_last_step: u64,
    pub created_at_ms: u64,
    pub modified_at_ms: u64,
    /// Log index of the last change (the SCIM version).
    pub revision: u64,
}

impl std::fmt::Debug for DirectoryUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectoryUser")
            .field("id", &self.id)
            .field("user_name", &self.user_name)
            .field("active", &self.active)
            .field("revision", &self.revision)
            .finish_non_exhaustive()
    }
}

impl DirectoryUser {
    /// The subject grants, sessions and audit name the person by.
    pub fn subject(&self) -> String {
        format!("user:{}", self.user_name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Email {
    pub value: String,
    /// `work`, `home`, `other` or the client's own word.
    pub kind: Option<String>,
    pub primary: bool,
}

/// A group of a tenant's directory. A group whose display name is a role's name gives that
/// role to its members when they sign in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectoryGroup {
    pub id: DirectoryId,
    /// Unique in the tenant, compared without regard to case.
    pub display_name: String,
    pub external_id: Option<String>,
    /// Ids of member users; each exists in the directory.
    pub members: Vec<DirectoryId>,
    pub created_at_ms: u64,
    pub modified_at_ms: u64,
    pub revision: u64,
}

/// How many users and groups a tenant's directory holds, and how its people sign in.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DirectoryMeta {
    pub users: u64,
    pub groups: u64,
    /// Set when the tenant uses the `native` identity provider.
    pub native: Option<NativeSignIn>,
    pub revision: u64,
}

/// The `native` identity provider: people sign in with the password (and TOTP code) their
/// directory entry holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NativeSignIn {
    /// Whether every sign-in needs a TOTP code (people without a TOTP secret cannot sign in).
    pub mfa_required: bool,
}

/// Checks what every node must refuse alike in a user.
pub fn check_user(user: &DirectoryUser) -> Result<(), String> {
    check_name("userName", &user.user_name)?;
    for (what, value) in [
        ("externalId", &user.external_id),
        ("displayName", &user.display_name),
        ("name.givenName", &user.given_name),
        ("name.familyName", &user.family_name),
    ] {
        if let Some(value) = value {
            check_text(what, value)?;
        }
    }
    if user.emails.len() > MAX_EMAILS {
        return Err(format!("a user has at most {MAX_EMAILS} emails"));
    }
    for email in &user.emails {
        check_text("emails.value", &email.value)?;
        if let Some(kind) = &email.kind {
            check_text("emails.type", kind)?;
        }
    }
    for (what, list) in [("roles", &user.roles), ("lob", &user.lob)] {
        if list.len() > MAX_PERMISSIONS_PER_ENTRY {
            return Err(format!("a user has at most {MAX_PERMISSIONS_PER_ENTRY} {what}"));
        }
        list.iter().try_for_each(|v| check_text(what, v))?;
    }
    if user.password_hash.as_ref().is_some_and(|h| h.len() > MAX_PASSWORD_HASH_BYTES) {
        return Err("the password hash is too long".into());
    }
    if user.totp_sealed.as_ref().is_some_and(|t| t.len() > MAX_TOTP_SEALED_BYTES) {
        return Err("the sealed TOTP secret is too long".into());
    }
    Ok(())
}

/// Checks what every node must refuse alike in a group (members are checked against the
/// directory when applied).
pub fn check_group(group: &DirectoryGroup) -> Result<(), String> {
    check_name("displayName", &group.display_name)?;
    if let Some(external_id) = &group.external_id {
        check_text("externalId", external_id)?;
    }
    if group.members.len() > MAX_GROUP_MEMBERS {
        return Err(format!("a group has at most {MAX_GROUP_MEMBERS} members"));
    }
    Ok(())
}

fn check_name(what: &str, name: &str) -> Result<(), String> {
    check_text(what, name)?;
    if name.trim().is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    Ok(())
}

/// The form under which names are unique: trimmed and lowercased.
pub fn name_key(name: &str) -> String {
    name.trim().to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str) -> DirectoryUser {
        DirectoryUser {
            id: DirectoryId::new("u1").unwrap(),
            user_name: name.into(),
            external_id: None,
            display_name: None,
            given_name: None,
            family_name: None,
            emails: vec![],
            active: true,
            roles: vec![],
            lob: vec![],
            password_hash: None,
            totp_sealed: None,
            totp_last_step: 0,
            created_at_ms: 0,
            modified_at_ms: 0,
            revision: 0,
        }
    }

    #[test]
    fn names_are_checked_and_compared_without_case() {
        assert!(check_user(&user("alice@acme.example")).is_ok());
        assert!(check_user(&user("  ")).is_err());
        assert!(check_user(&user("a\u{7}b")).is_err());
        assert!(check_user(&user(&"x".repeat(300))).is_err());
        assert_eq!(name_key(" Alice "), name_key("alice"));
        let many = DirectoryUser {
            emails: vec![Email { value: "a@b".into(), kind: None, primary: false }; MAX_EMAILS + 1],
            ..user("alice")
        };
        assert!(check_user(&many).is_err());
    }
}
