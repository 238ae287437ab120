//! The policy engine: built-in roles, custom roles, ABAC conditions on a fixed clock, MFA,
//! just-in-time grants and Rego constraints, table-driven.

use custos_actors::policy::{
    AccessRequest, Attributes, DenyKind, Permission, PermissionSet, Principal, PrincipalKind, TenantPolicy,
};
use custos_raft::access::{AccessPolicy, AccessRule, Condition, CustomRole, JitGrant, TenantAccess};
use custos_raft::{GrantId, TenantId};

fn acme() -> TenantId {
    TenantId::new("acme").unwrap()
}

fn user(name: &str, tenant: Option<TenantId>, roles: &[&str]) -> Principal {
    Principal {
        subject: format!("user:{name}"),
        kind: PrincipalKind::User,
        tenant,
        roles: roles.iter().map(|r| r.to_string()).collect(),
        permissions: PermissionSet::EMPTY,
        lob: vec!["security".into()],
        mfa_verified: true,
        idp: "keycloak".into(),
        idp_sub: format!("sub-{name}"),
    }
}

/// 2026-11-23 (a Monday) 10:30 UTC, 11:30 in Paris.
const MONDAY_1030_UTC: u64 = 1_795_429_800_000;

fn ask<'a>(tenant: Option<&'a TenantId>, permission: Permission, attributes: &'a Attributes) -> AccessRequest<'a> {
    AccessRequest { tenant, permission, attributes, now_ms: MONDAY_1030_UTC }
}

fn allowed(policy: &TenantPolicy, principal: &Principal, permission: Permission) -> bool {
    let attributes = Attributes::default();
    policy.decide(principal, &ask(Some(&acme()), permission, &attributes)).allowed
}

#[test]
fn every_builtin_role_holds_exactly_its_permissions() {
    // ADR-006's table, extended with Custos' permissions. Columns: viewer, analyst, operator,
    // admin (tenant principals of acme), super_admin (a platform principal).
    let table: &[(&str, [u8; 5])] = &[
        ("findings:read", [1, 1, 1, 1, 1]),
        ("findings:write", [0, 1, 1, 1, 1]),
        ("findings:delete", [0, 0, 0, 1, 1]),
        ("reports:read", [1, 1, 1, 1, 1]),
        ("reports:create", [0, 1, 1, 1, 1]),
        ("reports:export", [0, 0, 0, 1, 1]),
        ("config:read", [0, 0, 1, 1, 1]),
        ("config:write", [0, 0, 0, 1, 1]),
        ("users:manage", [0, 0, 0, 1, 1]),
        ("audit:read", [0, 0, 0, 1, 1]),
        ("tenants:read", [1, 1, 1, 1, 1]),
        ("tenants:create", [0, 0, 0, 0, 1]),
        ("tenants:update", [0, 0, 0, 1, 1]),
        ("tenants:delete", [0, 0, 0, 0, 1]),
        ("keys:read", [1, 1, 1, 1, 1]),
        ("keys:create", [0, 0, 0, 1, 1]),
        ("keys:rotate", [0, 0, 0, 1, 1]),
        ("keys:configure", [0, 0, 0, 1, 1]),
        ("keys:destroy", [0, 0, 0, 1, 1]),
        ("keys:encrypt", [0, 0, 1, 1, 1]),
        ("keys:decrypt", [0, 0, 1, 1, 1]),
        ("apikeys:read", [0, 0, 0, 1, 1]),
        ("apikeys:create", [0, 0, 0, 1, 1]),
        ("apikeys:revoke", [0, 0, 0, 1, 1]),
        ("policies:read", [0, 0, 0, 1, 1]),
        ("policies:write", [0, 0, 0, 1, 1]),
        ("policies:elevate", [0, 0, 0, 1, 1]),
        ("cluster:read", [0, 0, 0, 0, 1]),
        ("cluster:manage", [0, 0, 0, 0, 1]),
        ("users:provision", [0, 0, 0, 1, 1]),
    ];
    assert_eq!(table.len(), Permission::ALL.len(), "every permission is in the table");
    let policy = TenantPolicy::builtin();
    let principals = [
        user("v", Some(acme()), &["viewer"]),
        user("a", Some(acme()), &["analyst"]),
        user("o", Some(acme()), &["operator"]),
        user("d", Some(acme()), &["admin"]),
        user("s", None, &["super_admin"]),
    ];
    for (name, expected) in table {
        let permission = Permission::from_name(name).unwrap();
        for (principal, want) in principals.iter().zip(expected) {
            let got = allowed(&policy, principal, permission);
            assert_eq!(got, *want == 1, "{} / {name}", principal.roles[0]);
        }
    }
    // A tenant principal never gets platform permissions, even with the super_admin role.
    let confused = user("x", Some(acme()), &["super_admin"]);
    assert!(!allowed(&policy, &confused, Permission::TenantsCreate));
    assert!(allowed(&policy, &confused, Permission::KeysDestroy));
}

#[test]
fn tenant_scope_and_default_deny_name_their_reason() {
    let policy = TenantPolicy::builtin();
    let attributes = Attributes::default();
    let globex = TenantId::new("globex").unwrap();
    let admin = user("d", Some(acme()), &["admin"]);

    // Another tenant's resources: denied whatever the role.
    let cross = policy.decide(&admin, &ask(Some(&globex), Permission::KeysRead, &attributes));
    assert_eq!((cross.allowed, cross.deny, cross.rule.as_str()), (false, Some(DenyKind::TenantMismatch), "tenant"));
    // Platform questions from a tenant principal: denied.
    let platform = policy.decide(&admin, &ask(None, Permission::TenantsRead, &attributes));
    assert_eq!(platform.deny, Some(DenyKind::TenantMismatch));
    // Nothing grants it: default deny, and an allow names the role.
    let viewer = user("v", Some(acme()), &["viewer", "no-such-role"]);
    let denied = policy.decide(&viewer, &ask(Some(&acme()), Permission::KeysEncrypt, &attributes));
    assert_eq!((denied.deny, denied.rule.as_str()), (Some(DenyKind::NotGranted), "default_deny"));
    assert!(denied.reasons[0].contains("keys:encrypt"));
    let ok = policy.decide(&viewer, &ask(Some(&acme()), Permission::KeysRead, &attributes));
    assert_eq!((ok.allowed, ok.rule.as_str()), (true, "role:viewer"));
    // Decision ids are unique.
    assert_ne!(ok.id, denied.id);
    assert!(ok.id.to_string().starts_with("dec_"));
}

fn compile(policy: AccessPolicy, grants: Vec<JitGrant>) -> TenantPolicy {
    TenantPolicy::compile(&TenantAccess { policy, grants, api_keys_created: 0, revision: 7 }).unwrap()
}

fn rule(id: &str, permissions: &[&str], conditions: Vec<Condition>) -> AccessRule {
    AccessRule {
        id: id.into(),
        description: String::new(),
        permissions: permissions.iter().map(|p| p.to_string()).collect(),
        conditions,
    }
}

#[test]
fn custom_roles_and_scopes_grant_within_the_tenant() {
    let policy = compile(
        AccessPolicy {
            roles: vec![CustomRole {
                name: "key-user".into(),
                description: "applications".into(),
                permissions: vec!["keys:encrypt".into(), "keys:decrypt".into(), "tenants:*".into()],
            }],
            ..AccessPolicy::default()
        },
        vec![],
    );
    let app = user("app", Some(acme()), &["key-user"]);
    assert!(allowed(&policy, &app, Permission::KeysDecrypt));
    assert!(!allowed(&policy, &app, Permission::KeysRotate));
    // `tenants:*` in a custom role does not reach platform permissions.
    assert!(allowed(&policy, &app, Permission::TenantsUpdate));
    assert!(!allowed(&policy, &app, Permission::TenantsCreate));

    // An API key's scopes are direct permissions.
    let key = Principal {
        subject: "apikey:k1".into(),
        kind: PrincipalKind::ApiKey,
        roles: vec![],
        permissions: PermissionSet::parse(&["keys:encrypt"]).unwrap(),
        mfa_verified: false,
        ..user("k1", Some(acme()), &[])
    };
    let attributes = Attributes::default();
    let decision = policy.decide(&key, &ask(Some(&acme()), Permission::KeysEncrypt, &attributes));
    assert_eq!((decision.allowed, decision.rule.as_str()), (true, "scope"));
    assert!(!allowed(&policy, &key, Permission::KeysDecrypt));

    // Names that are not permissions, duplicates, and built-in names are refused when compiled.
    let bad = |roles: Vec<CustomRole>| {
        TenantPolicy::compile(&TenantAccess {
            policy: AccessPolicy { roles, ..AccessPolicy::default() },
            ..TenantAccess::default()
        })
        .is_err()
    };
    let role = |name: &str, perms: &[&str]| CustomRole {
        name: name.into(),
        description: String::new(),
        permissions: perms.iter().map(|p| p.to_string()).collect(),
    };
    assert!(bad(vec![role("r", &["keys:fly"])]));
    assert!(bad(vec![role("r", &["keys:read"]), role("r", &["keys:read"])]));
    assert!(bad(vec![role("admin", &["keys:read"])]));
}

#[test]
fn mfa_is_required_for_privileged_permissions() {
    let mut alice = user("alice", Some(acme()), &["admin"]);
    alice.mfa_verified = false;
    let policy = TenantPolicy::builtin();
    let attributes = Attributes::default();
    for (permission, needs_mfa) in [
        (Permission::KeysDestroy, true),
        (Permission::PoliciesWrite, true),
        (Permission::PoliciesElevate, true),
        (Permission::UsersManage, true),
        (Permission::FindingsDelete, true),
        (Permission::KeysCreate, false),
        (Permission::KeysEncrypt, false),
        (Permission::AuditRead, false),
    ] {
        let decision = policy.decide(&alice, &ask(Some(&acme()), permission, &attributes));
        assert_eq!(decision.deny == Some(DenyKind::MfaRequired), needs_mfa, "{permission}");
        assert_eq!(decision.allowed, !needs_mfa, "{permission}");
    }
    alice.mfa_verified = true;
    assert!(allowed(&policy, &alice, Permission::KeysDestroy));

    // A tenant can choose its own list.
    let relaxed =
        compile(AccessPolicy { mfa_required: Some(vec!["keys:encrypt".into()]), ..Default::default() }, vec![]);
    alice.mfa_verified = false;
    assert!(allowed(&relaxed, &alice, Permission::KeysDestroy));
    assert!(!allowed(&relaxed, &alice, Permission::KeysEncrypt));
}

#[test]
fn abac_conditions_hold_on_a_fixed_clock() {
    let policy = compile(
        AccessPolicy {
            rules: vec![
                rule("lob-findings", &["findings:*"], vec![Condition::LineOfBusiness]),
                rule("prod-only", &["keys:decrypt"], vec![Condition::Environment { allowed: vec!["prod".into()] }]),
                // Monday to Friday, 09:00 to 18:00 in Paris.
                rule(
                    "office-hours",
                    &["config:write"],
                    vec![Condition::TimeWindow {
                        time_zone: "Europe/Paris".into(),
                        days: vec![0, 1, 2, 3, 4],
                        start_minute: 9 * 60,
                        end_minute: 18 * 60,
                    }],
                ),
                // 11:00-12:00 in New York: 16:00-17:00 UTC, so not at 10:30 UTC.
                rule(
                    "ny-hour",
                    &["reports:export"],
                    vec![Condition::TimeWindow {
                        time_zone: "America/New_York".into(),
                        days: vec![0],
                        start_minute: 11 * 60,
                        end_minute: 12 * 60,
                    }],
                ),
            ],
            ..AccessPolicy::default()
        },
        vec![],
    );
    let admin = user("alice", Some(acme()), &["admin"]);
    let decide = |permission, attributes: Attributes, now_ms| {
        policy.decide(&admin, &AccessRequest { tenant: Some(&acme()), permission, attributes: &attributes, now_ms })
    };
    let lob = |l: &str| Attributes { lob: Some(l.into()), environment: None };
    let env = |e: &str| Attributes { lob: None, environment: Some(e.into()) };

    // Line of business: the principal's own, not another's, and never unnamed.
    assert!(decide(Permission::FindingsRead, lob("security"), MONDAY_1030_UTC).allowed);
    let other = decide(Permission::FindingsRead, lob("finance"), MONDAY_1030_UTC);
    assert_eq!(
        (other.allowed, other.rule.as_str(), other.deny),
        (false, "rule:lob-findings", Some(DenyKind::Condition))
    );
    assert!(!decide(Permission::FindingsRead, Attributes::default(), MONDAY_1030_UTC).allowed);
    // Rules only constrain the permissions they name.
    assert!(decide(Permission::KeysRead, lob("finance"), MONDAY_1030_UTC).allowed);

    // Environment.
    assert!(decide(Permission::KeysDecrypt, env("prod"), MONDAY_1030_UTC).allowed);
    assert!(!decide(Permission::KeysDecrypt, env("staging"), MONDAY_1030_UTC).allowed);
    assert!(!decide(Permission::KeysDecrypt, Attributes::default(), MONDAY_1030_UTC).allowed);

    // Time windows, in the rule's time zone.
    let hour = 3_600_000;
    assert!(decide(Permission::ConfigWrite, Attributes::default(), MONDAY_1030_UTC).allowed);
    // 17:30 UTC is 18:30 in Paris: closed.
    let late = decide(Permission::ConfigWrite, Attributes::default(), MONDAY_1030_UTC + 7 * hour);
    assert_eq!(late.rule, "rule:office-hours");
    assert!(late.reasons[0].contains("Mon 18:30"), "{:?}", late.reasons);
    // 07:30 UTC is 08:30 in Paris: not yet open; Saturday never.
    assert!(!decide(Permission::ConfigWrite, Attributes::default(), MONDAY_1030_UTC - 3 * hour).allowed);
    assert!(!decide(Permission::ConfigWrite, Attributes::default(), MONDAY_1030_UTC + 5 * 24 * hour).allowed);
    assert!(!decide(Permission::ReportsExport, Attributes::default(), MONDAY_1030_UTC).allowed);
    assert!(decide(Permission::ReportsExport, Attributes::default(), MONDAY_1030_UTC + 6 * hour).allowed);

    // An unknown time zone does not compile.
    let bad = AccessPolicy {
        rules: vec![rule(
            "r",
            &["keys:read"],
            vec![Condition::TimeWindow {
                time_zone: "Mars/Olympus".into(),
                days: vec![0],
                start_minute: 0,
                end_minute: 60,
            }],
        )],
        ..AccessPolicy::default()
    };
    assert!(TenantPolicy::compile(&TenantAccess { policy: bad, ..TenantAccess::default() }).is_err());
}

#[test]
fn just_in_time_grants_elevate_until_they_expire() {
    let grant = JitGrant {
        id: GrantId::new("g1").unwrap(),
        subject: "user:bob".into(),
        permissions: vec!["keys:destroy".into(), "cluster:manage".into()],
        reason: "incident 42".into(),
        granted_by: "user:alice".into(),
        granted_at_ms: MONDAY_1030_UTC - 1_000,
        expires_at_ms: MONDAY_1030_UTC + 60_000,
    };
    let policy = compile(AccessPolicy::default(), vec![grant]);
    let bob = user("bob", Some(acme()), &["viewer"]);
    let attributes = Attributes::default();
    let tenant = acme();
    let at = |now_ms| AccessRequest {
        tenant: Some(&tenant),
        permission: Permission::KeysDestroy,
        attributes: &attributes,
        now_ms,
    };

    let during = policy.decide(&bob, &at(MONDAY_1030_UTC));
    assert_eq!((during.allowed, during.rule.as_str()), (true, "grant:g1"));
    assert!(!policy.decide(&bob, &at(MONDAY_1030_UTC + 60_000)).allowed, "expired by itself");
    // Only its subject, and never a platform permission inside a tenant.
    assert!(!policy.decide(&user("carol", Some(acme()), &["viewer"]), &at(MONDAY_1030_UTC)).allowed);
    let platform = AccessRequest { permission: Permission::ClusterManage, ..at(MONDAY_1030_UTC) };
    assert!(!policy.decide(&bob, &platform).allowed);
}

#[test]
fn a_rego_constraint_narrows_what_roles_allow() {
    let rego = r#"
package custos

default allow := false

# Decrypting needs the analyst role on top of what roles give; everything else passes.
allow if input.permission != "keys:decrypt"
allow if "analyst" in input.principal.roles
"#;
    let policy = compile(AccessPolicy { rego: Some(rego.into()), ..AccessPolicy::default() }, vec![]);
    let operator = user("o", Some(acme()), &["operator"]);
    let both = user("b", Some(acme()), &["operator", "analyst"]);
    assert!(allowed(&policy, &operator, Permission::KeysEncrypt));
    let attributes = Attributes::default();
    let denied = policy.decide(&operator, &ask(Some(&acme()), Permission::KeysDecrypt, &attributes));
    assert_eq!((denied.allowed, denied.deny, denied.rule.as_str()), (false, Some(DenyKind::Rego), "rego"));
    assert!(allowed(&policy, &both, Permission::KeysDecrypt));
    // Rego never adds what roles do not give.
    assert!(!allowed(&policy, &both, Permission::KeysRotate));

    // Modules that do not compile, use another package or never yield a boolean are refused.
    for bad in ["package custos\nallow if {", "package other\nallow := true", "package custos\nallow := \"yes\""] {
        let policy = AccessPolicy { rego: Some(bad.into()), ..AccessPolicy::default() };
        assert!(TenantPolicy::compile(&TenantAccess { policy, ..TenantAccess::default() }).is_err(), "{bad}");
    }
}
