//! A tenant's compiled policy and the decision procedure.
//!
//! Compilation turns the replicated [`TenantAccess`] into bitmasks, parsed time zones and a
//! prepared Rego engine once per revision; a decision then is a handful of mask operations
//! and, only where a tenant configured them, condition checks and a Rego evaluation.

use std::collections::HashMap;

use custos_raft::access::{AccessRule, Condition, TenantAccess};
use custos_raft::TenantId;

use super::decision::{AccessRequest, Decision, DecisionId, DenyKind};
use super::permission::{default_mfa_required, BuiltinRole, Permission, PermissionSet, UnknownPermission};
use super::principal::Principal;
use super::rego::{RegoConstraint, RegoError};

/// Why a policy document does not compile. Shown to the admin who writes it.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{context}: {source}")]
    Permission { context: String, source: UnknownPermission },
    #[error("custom role {0:?} has the name of a built-in role")]
    ShadowsBuiltin(String),
    #[error("custom role {0:?} is defined twice")]
    DuplicateRole(String),
    #[error("rule {0:?} is defined twice")]
    DuplicateRule(String),
    #[error("rule {rule:?}: unknown time zone {zone:?}")]
    TimeZone { rule: String, zone: String },
    #[error(transparent)]
    Rego(#[from] RegoError),
}

/// One tenant's policy, ready for decisions. Also the platform's: built-in roles only.
pub struct TenantPolicy {
    /// The access revision this was compiled from (0: the tenant never wrote one).
    pub revision: u64,
    custom_roles: HashMap<String, PermissionSet>,
    rules: Vec<CompiledRule>,
    mfa_required: PermissionSet,
    grants: Vec<CompiledGrant>,
    rego: Option<RegoConstraint>,
}

struct CompiledRule {
    id: String,
    permissions: PermissionSet,
    conditions: Vec<CompiledCondition>,
}

enum CompiledCondition {
    LineOfBusiness,
    Environment(Vec<String>),
    TimeWindow { zone: jiff::tz::TimeZone, zone_name: String, days: u8, start_minute: u16, end_minute: u16 },
}

struct CompiledGrant {
    id: String,
    subject: String,
    permissions: PermissionSet,
    expires_at_ms: u64,
}

impl TenantPolicy {
    /// The policy of a tenant that has written none, and of the platform.
    pub fn builtin() -> TenantPolicy {
        TenantPolicy {
            revision: 0,
            custom_roles: HashMap::new(),
            rules: Vec::new(),
            mfa_required: default_mfa_required(),
            grants: Vec::new(),
            rego: None,
        }
    }

    pub fn compile(access: &TenantAccess) -> Result<TenantPolicy, PolicyError> {
        let parse = |context: String, entries: &[String]| {
            PermissionSet::parse(entries).map_err(|source| PolicyError::Permission { context, source })
        };
        let policy = &access.policy;
        let mut custom_roles = HashMap::with_capacity(policy.roles.len());
        for role in &policy.roles {
            if BuiltinRole::from_name(&role.name).is_some() {
                return Err(PolicyError::ShadowsBuiltin(role.name.clone()));
            }
            let set = parse(format!("role {:?}", role.name), &role.permissions)?;
            if custom_roles.insert(role.name.clone(), set).is_some() {
                return Err(PolicyError::DuplicateRole(role.name.clone()));
            }
        }
        let mut rules: Vec<CompiledRule> = Vec::with_capacity(policy.rules.len());
        for rule in &policy.rules {
            if rules.iter().any(|r| r.id == rule.id) {
                return Err(PolicyError::DuplicateRule(rule.id.clone()));
            }
            rules.push(compile_rule(rule, parse(format!("rule {:?}", rule.id), &rule.permissions)?)?);
        }
        let mfa_required = match &policy.mfa_required {
            Some(list) => parse("mfa_required".into(), list)?,
            None => default_mfa_required(),
        };
        let grants = access
            .grants
            .iter()
            .map(|g| {
                Ok(CompiledGrant {
                    id: g.id.to_string(),
                    subject: g.subject.clone(),
                    permissions: parse(format!("grant {}", g.id), &g.permissions)?,
                    expires_at_ms: g.expires_at_ms,
                })
            })
            .collect::<Result<_, PolicyError>>()?;
        let rego = policy.rego.as_deref().map(RegoConstraint::compile).transpose()?;
        Ok(TenantPolicy { revision: access.revision, custom_roles, rules, mfa_required, grants, rego })
    }

    /// The permissions a principal holds here before rules, MFA and Rego: its roles, its
    /// direct permissions and its unexpired grants.
    pub fn granted(&self, principal: &Principal, now_ms: u64) -> PermissionSet {
        let mut set = principal.permissions;
        for role in &principal.roles {
            set = set.union(self.role(role, principal.tenant.is_some()));
        }
        for grant in self.active_grants(principal, now_ms) {
            set = set.union(grant.permissions);
        }
        set
    }

    fn role(&self, name: &str, in_tenant: bool) -> PermissionSet {
        match BuiltinRole::from_name(name) {
            // A tenant principal never holds platform permissions, whatever its role says.
            Some(role) if in_tenant => role.permissions().intersection(tenant_permissions()),
            Some(role) => role.permissions(),
            None => self.custom_roles.get(name).copied().unwrap_or_default().intersection(tenant_permissions()),
        }
    }

    fn active_grants<'a>(&'a self, principal: &'a Principal, now_ms: u64) -> impl Iterator<Item = &'a CompiledGrant> {
        self.grants.iter().filter(move |g| g.subject == principal.subject && g.expires_at_ms > now_ms)
    }

    /// Whether `permission` needs an MFA-verified principal here.
    pub fn needs_mfa(&self, permission: Permission) -> bool {
        self.mfa_required.contains(permission)
    }

    /// Decides one request. Denials name their reason; an allow names what granted it.
    pub fn decide(&self, principal: &Principal, request: &AccessRequest) -> Decision {
        let deny = |kind, rule: &str, reason: String| Decision {
            id: DecisionId::next(),
            allowed: false,
            rule: rule.to_string(),
            deny: Some(kind),
            reasons: vec![reason],
        };
        let permission = request.permission;
        if let Some(home) = &principal.tenant {
            if request.tenant != Some(home) {
                let asked = request.tenant.map_or("the platform", TenantId::as_str);
                return deny(
                    DenyKind::TenantMismatch,
                    "tenant",
                    format!("{} belongs to tenant {home}, not {asked}", principal.subject),
                );
            }
        }
        let Some(source) = self.source_of(principal, permission, request.now_ms) else {
            return deny(
                DenyKind::NotGranted,
                "default_deny",
                format!("no role, scope or grant of {} gives {permission}", principal.subject),
            );
        };
        if self.mfa_required.contains(permission) && !principal.mfa_verified {
            return deny(
                DenyKind::MfaRequired,
                "mfa",
                format!("{permission} requires a multi-factor authenticated session"),
            );
        }
        for rule in self.rules.iter().filter(|r| r.permissions.contains(permission)) {
            if let Some(reason) = rule.conditions.iter().find_map(|c| c.violation(principal, request)) {
                return deny(DenyKind::Condition, &format!("rule:{}", rule.id), reason);
            }
        }
        if let Some(rego) = &self.rego {
            match rego.allows(principal, request) {
                Ok(true) => {}
                Ok(false) => {
                    return deny(DenyKind::Rego, "rego", "the tenant's Rego policy does not allow it".into());
                }
                Err(e) => return deny(DenyKind::PolicyError, "rego", format!("the tenant's Rego policy failed: {e}")),
            }
        }
        Decision { id: DecisionId::next(), allowed: true, rule: source, deny: None, reasons: Vec::new() }
    }

    /// What gives the principal the permission: the first role holding it, its direct
    /// permissions, or a grant.
    fn source_of(&self, principal: &Principal, permission: Permission, now_ms: u64) -> Option<String> {
        let in_tenant = principal.tenant.is_some();
        if let Some(role) = principal.roles.iter().find(|r| self.role(r, in_tenant).contains(permission)) {
            return Some(format!("role:{role}"));
        }
        if principal.permissions.contains(permission) && (!in_tenant || !permission.is_platform()) {
            return Some("scope".into());
        }
        self.active_grants(principal, now_ms)
            .find(|g| g.permissions.contains(permission) && (!in_tenant || !permission.is_platform()))
            .map(|g| format!("grant:{}", g.id))
    }
}

/// Every permission a tenant principal can ever hold.
fn tenant_permissions() -> PermissionSet {
    Permission::ALL.into_iter().filter(|p| !p.is_platform()).collect()
}

fn compile_rule(rule: &AccessRule, permissions: PermissionSet) -> Result<CompiledRule, PolicyError> {
    let conditions = rule
        .conditions
        .iter()
        .map(|condition| {
            Ok(match condition {
                Condition::LineOfBusiness => CompiledCondition::LineOfBusiness,
                Condition::Environment { allowed } => CompiledCondition::Environment(allowed.clone()),
                Condition::TimeWindow { time_zone, days, start_minute, end_minute } => {
                    let zone = jiff::tz::TimeZone::get(time_zone)
                        .map_err(|_| PolicyError::TimeZone { rule: rule.id.clone(), zone: time_zone.clone() })?;
                    CompiledCondition::TimeWindow {
                        zone,
                        zone_name: time_zone.clone(),
                        days: days.iter().fold(0u8, |mask, d| mask | 1 << d),
                        start_minute: *start_minute,
                        end_minute: *end_minute,
                    }
                }
            })
        })
        .collect::<Result<_, PolicyError>>()?;
    Ok(CompiledRule { id: rule.id.clone(), permissions, conditions })
}

impl CompiledCondition {
    /// Why the condition does not hold for this request, or None when it does.
    fn violation(&self, principal: &Principal, request: &AccessRequest) -> Option<String> {
        match self {
            CompiledCondition::LineOfBusiness => match &request.attributes.lob {
                None => Some("the request names no line of business (attribute lob)".into()),
                Some(lob) if principal.lob.iter().any(|l| l == lob) => None,
                Some(lob) => Some(format!("{} does not work for line of business {lob:?}", principal.subject)),
            },
            CompiledCondition::Environment(allowed) => match &request.attributes.environment {
                Some(env) if allowed.iter().any(|a| a == env) => None,
                Some(env) => Some(format!("environment {env:?} is not one of {allowed:?}")),
                None => Some(format!("the request names no environment; allowed: {allowed:?}")),
            },
            CompiledCondition::TimeWindow { zone, zone_name, days, start_minute, end_minute } => {
                let local = zone.to_datetime(
                    jiff::Timestamp::from_millisecond(request.now_ms as i64).unwrap_or(jiff::Timestamp::UNIX_EPOCH),
                );
                let day = local.weekday().to_monday_zero_offset() as u8;
                let minute = local.hour() as u16 * 60 + local.minute() as u16;
                if days & (1 << day) != 0 && (*start_minute..*end_minute).contains(&minute) {
                    None
                } else {
                    Some(format!(
                        "outside the allowed hours ({:02}:{:02}-{:02}:{:02} {zone_name}); it is {} there",
                        start_minute / 60,
                        start_minute % 60,
                        end_minute / 60,
                        end_minute % 60,
                        local.strftime("%a %H:%M"),
                    ))
                }
            }
        }
    }
}
