//! The permission catalog, sets of permissions, and the built-in roles.
//!
//! Permissions form a closed catalog (ADR-006's plus Custos' own), so a set of them is a
//! bitmask and a check is one AND. Roles, grants, rules and API-key scopes name permissions
//! or patterns (`keys:*`, `*`) that expand to sets when a tenant's policy is compiled.

use std::fmt;

/// One permission. The discriminant is its bit in a [`PermissionSet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Permission {
    FindingsRead,
    FindingsWrite,
    FindingsDelete,
    ReportsRead,
    ReportsCreate,
    ReportsExport,
    ConfigRead,
    ConfigWrite,
    UsersManage,
    AuditRead,
    TenantsRead,
    TenantsCreate,
    TenantsUpdate,
    TenantsDelete,
    KeysRead,
    KeysCreate,
    KeysRotate,
    KeysConfigure,
    KeysDestroy,
    KeysEncrypt,
    KeysDecrypt,
    ApikeysRead,
    ApikeysCreate,
    ApikeysRevoke,
    PoliciesRead,
    PoliciesWrite,
    PoliciesElevate,
    ClusterRead,
    ClusterManage,
    /// SCIM provisioning of a tenant's directory: what an IdP's provisioning client holds.
    /// Unlike `users:manage` it needs no MFA, since provisioning clients are machines.
    UsersProvision,
}

impl Permission {
    pub const ALL: [Permission; 30] = [
        Permission::FindingsRead,
        Permission::FindingsWrite,
        Permission::FindingsDelete,
        Permission::ReportsRead,
        Permission::ReportsCreate,
        Permission::ReportsExport,
        Permission::ConfigRead,
        Permission::ConfigWrite,
        Permission::UsersManage,
        Permission::AuditRead,
        Permission::TenantsRead,
        Permission::TenantsCreate,
        Permission::TenantsUpdate,
        Permission::TenantsDelete,
        Permission::KeysRead,
        Permission::KeysCreate,
        Permission::KeysRotate,
        Permission::KeysConfigure,
        Permission::KeysDestroy,
        Permission::KeysEncrypt,
        Permission::KeysDecrypt,
        Permission::ApikeysRead,
        Permission::ApikeysCreate,
        Permission::ApikeysRevoke,
        Permission::PoliciesRead,
        Permission::PoliciesWrite,
        Permission::PoliciesElevate,
        Permission::ClusterRead,
        Permission::ClusterManage,
        Permission::UsersProvision,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Permission::FindingsRead => "findings:read",
            Permission::FindingsWrite => "findings:write",
            Permission::FindingsDelete => "findings:delete",
            Permission::ReportsRead => "reports:read",
            Permission::ReportsCreate => "reports:create",
            Permission::ReportsExport => "reports:export",
            Permission::ConfigRead => "config:read",
            Permission::ConfigWrite => "config:write",
            Permission::UsersManage => "users:manage",
            Permission::AuditRead => "audit:read",
            Permission::TenantsRead => "tenants:read",
            Permission::TenantsCreate => "tenants:create",
            Permission::TenantsUpdate => "tenants:update",
            Permission::TenantsDelete => "tenants:delete",
            Permission::KeysRead => "keys:read",
            Permission::KeysCreate => "keys:create",
            Permission::KeysRotate => "keys:rotate",
            Permission::KeysConfigure => "keys:configure",
            Permission::KeysDestroy => "keys:destroy",
            Permission::KeysEncrypt => "keys:encrypt",
            Permission::KeysDecrypt => "keys:decrypt",
            Permission::ApikeysRead => "apikeys:read",
            Permission::ApikeysCreate => "apikeys:create",
            Permission::ApikeysRevoke => "apikeys:revoke",
            Permission::PoliciesRead => "policies:read",
            Permission::PoliciesWrite => "policies:write",
            Permission::PoliciesElevate => "policies:elevate",
            Permission::ClusterRead => "cluster:read",
            Permission::ClusterManage => "cluster:manage",
            Permission::UsersProvision => "users:provision",
        }
    }

    pub fn from_name(name: &str) -> Option<Permission> {
        Permission::ALL.into_iter().find(|p| p.as_str() == name)
    }

    /// Whether the permission concerns the whole platform rather than one tenant: only a
    /// platform principal (no tenant) ever holds it.
    pub fn is_platform(self) -> bool {
        matches!(
            self,
            Permission::TenantsCreate | Permission::TenantsDelete | Permission::ClusterRead | Permission::ClusterManage
        )
    }

    fn bit(self) -> u64 {
        1 << (self as u8)
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of permissions.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PermissionSet(u64);

impl PermissionSet {
    pub const EMPTY: PermissionSet = PermissionSet(0);

    pub fn all() -> PermissionSet {
        Permission::ALL.into_iter().collect()
    }

    pub fn contains(self, permission: Permission) -> bool {
        self.0 & permission.bit() != 0
    }

    pub fn insert(&mut self, permission: Permission) {
        self.0 |= permission.bit();
    }

    pub fn union(self, other: PermissionSet) -> PermissionSet {
        PermissionSet(self.0 | other.0)
    }

    pub fn intersection(self, other: PermissionSet) -> PermissionSet {
        PermissionSet(self.0 & other.0)
    }

    pub fn is_subset(self, other: PermissionSet) -> bool {
        self.0 & !other.0 == 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The permissions, in catalog order.
    pub fn iter(self) -> impl Iterator<Item = Permission> {
        Permission::ALL.into_iter().filter(move |p| self.contains(*p))
    }

    /// Names, in catalog order.
    pub fn names(self) -> Vec<String> {
        self.iter().map(|p| p.as_str().to_string()).collect()
    }

    /// Parses permissions and patterns: a name (`keys:encrypt`), a resource wildcard
    /// (`keys:*`) or `*`. Every entry must match at least one permission.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<PermissionSet, UnknownPermission> {
        let mut set = PermissionSet::EMPTY;
        for entry in entries {
            set = set.union(PermissionSet::parse_one(entry.as_ref())?);
        }
        Ok(set)
    }

    fn parse_one(entry: &str) -> Result<PermissionSet, UnknownPermission> {
        let matched: PermissionSet = match entry.strip_suffix(":*") {
            _ if entry == "*" => PermissionSet::all(),
            Some(resource) => Permission::ALL
                .into_iter()
                .filter(|p| p.as_str().split_once(':').is_some_and(|(r, _)| r == resource))
                .collect(),
            None => Permission::from_name(entry).into_iter().collect(),
        };
        if matched.is_empty() {
            return Err(UnknownPermission(entry.chars().take(80).collect()));
        }
        Ok(matched)
    }
}

impl FromIterator<Permission> for PermissionSet {
    fn from_iter<I: IntoIterator<Item = Permission>>(iter: I) -> Self {
        let mut set = PermissionSet::EMPTY;
        for p in iter {
            set.insert(p);
        }
        set
    }
}

impl fmt::Debug for PermissionSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter().map(Permission::as_str)).finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a permission or a pattern of them (like keys:* or keys:encrypt)")]
pub struct UnknownPermission(pub String);

/// The built-in roles (ADR-006's table, extended with Custos' own permissions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BuiltinRole {
    Viewer,
    Analyst,
    Operator,
    Admin,
    SuperAdmin,
}

impl BuiltinRole {
    pub const ALL: [BuiltinRole; 5] =
        [BuiltinRole::Viewer, BuiltinRole::Analyst, BuiltinRole::Operator, BuiltinRole::Admin, BuiltinRole::SuperAdmin];

    pub fn as_str(self) -> &'static str {
        match self {
            BuiltinRole::Viewer => "viewer",
            BuiltinRole::Analyst => "analyst",
            BuiltinRole::Operator => "operator",
            BuiltinRole::Admin => "admin",
            BuiltinRole::SuperAdmin => "super_admin",
        }
    }

    pub fn from_name(name: &str) -> Option<BuiltinRole> {
        BuiltinRole::ALL.into_iter().find(|r| r.as_str() == name)
    }

    /// The role's permissions. Findings and reports follow ADR-006's table; keys, API keys
    /// and policies follow the same gradient: viewers read, operators use keys, admins manage
    /// their tenant, and only the super admin holds platform permissions.
    pub fn permissions(self) -> PermissionSet {
        use Permission::*;
        let viewer = [FindingsRead, ReportsRead, TenantsRead, KeysRead];
        let analyst = [FindingsWrite, ReportsCreate];
        let operator = [ConfigRead, KeysEncrypt, KeysDecrypt];
        let set = |groups: &[&[Permission]]| groups.iter().flat_map(|g| g.iter().copied()).collect();
        match self {
            BuiltinRole::Viewer => set(&[&viewer]),
            BuiltinRole::Analyst => set(&[&viewer, &analyst]),
            BuiltinRole::Operator => set(&[&viewer, &analyst, &operator]),
            BuiltinRole::Admin => {
                let platform: PermissionSet = Permission::ALL.into_iter().filter(|p| p.is_platform()).collect();
                PermissionSet(PermissionSet::all().0 & !platform.0)
            }
            BuiltinRole::SuperAdmin => PermissionSet::all(),
        }
    }
}

/// Permissions that need an MFA-verified principal unless a tenant's policy says otherwise:
/// those that destroy, reshape access, or act on the platform.
pub fn default_mfa_required() -> PermissionSet {
    use Permission::*;
    [FindingsDelete, UsersManage, TenantsDelete, KeysDestroy, PoliciesWrite, PoliciesElevate, ClusterManage]
        .into_iter()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_permission_round_trips_and_fits_the_mask() {
        assert!(Permission::ALL.len() <= 64);
        for (i, p) in Permission::ALL.into_iter().enumerate() {
            assert_eq!(p as usize, i, "ALL is in discriminant order");
            assert_eq!(Permission::from_name(p.as_str()), Some(p));
        }
    }

    #[test]
    fn patterns_expand_and_unknown_names_are_refused() {
        let keys = PermissionSet::parse(&["keys:*"]).unwrap();
        assert_eq!(keys.iter().count(), 7);
        assert!(keys.iter().all(|p| p.as_str().starts_with("keys:")));
        assert_eq!(PermissionSet::parse(&["*"]).unwrap(), PermissionSet::all());
        assert_eq!(
            PermissionSet::parse(&["audit:read", "audit:read"]).unwrap(),
            [Permission::AuditRead].into_iter().collect()
        );
        for bad in ["keys:fly", "nope:*", "keys", "", "keys:*:*"] {
            assert!(PermissionSet::parse(&[bad]).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn roles_grow_from_viewer_to_super_admin() {
        let chain = BuiltinRole::ALL.map(BuiltinRole::permissions);
        for pair in chain.windows(2) {
            assert!(pair[0].is_subset(pair[1]) && pair[0] != pair[1]);
        }
        // Only the super admin holds platform permissions.
        let platform: Vec<_> = Permission::ALL.into_iter().filter(|p| p.is_platform()).collect();
        for role in BuiltinRole::ALL {
            let holds_platform = platform.iter().any(|p| role.permissions().contains(*p));
            assert_eq!(holds_platform, role == BuiltinRole::SuperAdmin, "{role:?}");
        }
    }
}
