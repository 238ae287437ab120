//! `/v1/tenants/{tenant}/authorize`, `…/policy` and `…/grants`: authorization decisions, the
//! tenant's policy document (custom roles, ABAC rules, MFA list, Rego) and just-in-time
//! grants.

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use custos_actors::policy::{
    Attributes, Decision, DenyKind, Permission, PermissionSet, Principal, PrincipalKind, TenantPolicy,
};
use custos_raft::access::{AccessPolicy, AccessRule, Condition, CustomRole, JitGrant, TenantAccess};
use custos_raft::{Command, GrantId, Output, TenantId};
use serde::{Deserialize, Serialize};

use super::auth::Caller;
use super::error::ApiError;
use super::{now_ms, replicate, AppState};

pub(super) fn tenant_path(path: Result<Path<String>, PathRejection>) -> Result<TenantId, ApiError> {
    let Path(tenant) = path?;
    Ok(TenantId::new(tenant)?)
}

fn permission(name: &str) -> Result<Permission, ApiError> {
    Permission::from_name(name)
        .ok_or_else(|| ApiError::bad_request("unknown_permission", format!("{name:?} is not a permission")))
}

/// The principal a policy decision point asks about.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalSpec {
    subject: String,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    permissions: Vec<String>,
    #[serde(default)]
    lob: Vec<String>,
    #[serde(default)]
    mfa_verified: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizeBody {
    permission: String,
    #[serde(default)]
    attributes: Attributes,
    /// Whom to decide for; the caller itself when absent.
    principal: Option<PrincipalSpec>,
}

#[derive(Debug, Serialize)]
pub struct DecisionView {
    decision_id: String,
    allowed: bool,
    permission: &'static str,
    rule: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    deny: Option<DenyKind>,
    reasons: Vec<String>,
}

impl DecisionView {
    fn new(decision: Decision, permission: Permission) -> Self {
        DecisionView {
            decision_id: decision.id.to_string(),
            allowed: decision.allowed,
            permission: permission.as_str(),
            rule: decision.rule,
            deny: decision.deny,
            reasons: decision.reasons,
        }
    }
}

/// `POST /v1/tenants/{tenant}/authorize`: a decision, answered 200 whether it allows or not.
/// About the caller itself by default; about another principal of the tenant (a gateway
/// acting as policy enforcement point) when the caller holds `policies:read`.
pub async fn authorize(
    caller: Caller,
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<AuthorizeBody>, JsonRejection>,
) -> Result<Json<DecisionView>, ApiError> {
    let tenant = tenant_path(path)?;
    let Json(body) = body?;
    let asked = permission(&body.permission)?;
    let decision = match body.principal {
        None => {
            // Another tenant's decision endpoint is not the caller's to use: refused like any
            // other route of that tenant.
            let decision = caller.decide(&state, &caller.principal, Some(&tenant), asked, &body.attributes)?;
            if decision.deny == Some(DenyKind::TenantMismatch) {
                return Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", decision.reasons.join("; ")));
            }
            decision
        }
        Some(spec) => {
            caller.authorize(&state, Some(&tenant), Permission::PoliciesRead)?;
            let permissions = PermissionSet::parse(&spec.permissions)
                .map_err(|e| ApiError::bad_request("unknown_permission", e.to_string()))?;
            let principal = Principal {
                subject: spec.subject,
                kind: PrincipalKind::User,
                tenant: Some(tenant.clone()),
                roles: spec.roles,
                permissions,
                lob: spec.lob,
                mfa_verified: spec.mfa_verified,
                idp: "external".into(),
                idp_sub: String::new(),
            };
            caller.decide(&state, &principal, Some(&tenant), asked, &body.attributes)?
        }
    };
    Ok(Json(DecisionView::new(decision, asked)))
}

/// A condition as the API writes it: `{"type": "lob"}`, `{"type": "environment", "allowed":
/// ["prod"]}` or `{"type": "time_window", "time_zone": "Europe/Paris", "days": ["mon", …],
/// "start": "09:00", "end": "18:00"}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ConditionDoc {
    Lob,
    Environment { allowed: Vec<String> },
    TimeWindow { time_zone: String, days: Vec<String>, start: String, end: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleDoc {
    name: String,
    #[serde(default)]
    description: String,
    permissions: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleDoc {
    id: String,
    #[serde(default)]
    description: String,
    permissions: Vec<String>,
    conditions: Vec<ConditionDoc>,
}

/// The policy document of `GET`/`PUT …/policy`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyDoc {
    #[serde(default)]
    roles: Vec<RoleDoc>,
    #[serde(default)]
    rules: Vec<RuleDoc>,
    /// Permissions needing MFA; the built-in list when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mfa_required: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rego: Option<String>,
    /// On PUT: replace only while the stored document is at this revision (0: never written).
    /// On GET: the stored revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    revision: Option<u64>,
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn minute_of(text: &str) -> Result<u16, String> {
    let parse = || -> Option<u16> {
        let (h, m) = text.split_once(':')?;
        let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
        (h <= 24 && m < 60 && h * 60 + m <= 1440).then_some(h * 60 + m)
    };
    parse().ok_or_else(|| format!("{text:?} is not a time of day like 09:00 (24:00 ends a day)"))
}

impl PolicyDoc {
    fn into_policy(self) -> Result<AccessPolicy, String> {
        let conditions = |docs: Vec<ConditionDoc>| -> Result<Vec<Condition>, String> {
            docs.into_iter()
                .map(|doc| {
                    Ok(match doc {
                        ConditionDoc::Lob => Condition::LineOfBusiness,
                        ConditionDoc::Environment { allowed } => Condition::Environment { allowed },
                        ConditionDoc::TimeWindow { time_zone, days, start, end } => Condition::TimeWindow {
                            time_zone,
                            days: days
                                .iter()
                                .map(|d| {
                                    DAYS.iter()
                                        .position(|n| n == d)
                                        .map(|i| i as u8)
                                        .ok_or_else(|| format!("{d:?} is not a day; use one of {DAYS:?}"))
                                })
                                .collect::<Result<_, _>>()?,
                            start_minute: minute_of(&start)?,
                            end_minute: minute_of(&end)?,
                        },
                    })
                })
                .collect()
        };
        Ok(AccessPolicy {
            roles: self
                .roles
                .into_iter()
                .map(|r| CustomRole { name: r.name, description: r.description, permissions: r.permissions })
                .collect(),
            rules: self
                .rules
                .into_iter()
                .map(|r| {
                    Ok(AccessRule {
                        id: r.id,
                        description: r.description,
                        permissions: r.permissions,
                        conditions: conditions(r.conditions)?,
                    })
                })
                .collect::<Result<_, String>>()?,
            mfa_required: self.mfa_required,
            rego: self.rego,
            revision: 0,
        })
    }

    fn from_policy(policy: AccessPolicy) -> PolicyDoc {
        let hhmm = |m: u16| format!("{:02}:{:02}", m / 60, m % 60);
        PolicyDoc {
            roles: policy
                .roles
                .into_iter()
                .map(|r| RoleDoc { name: r.name, description: r.description, permissions: r.permissions })
                .collect(),
            rules: policy
                .rules
                .into_iter()
                .map(|r| RuleDoc {
                    id: r.id,
                    description: r.description,
                    permissions: r.permissions,
                    conditions: r
                        .conditions
                        .into_iter()
                        .map(|c| match c {
                            Condition::LineOfBusiness => ConditionDoc::Lob,
                            Condition::Environment { allowed } => ConditionDoc::Environment { allowed },
                            Condition::TimeWindow { time_zone, days, start_minute, end_minute } => {
                                ConditionDoc::TimeWindow {
                                    time_zone,
                                    days: days.iter().map(|d| DAYS[usize::from(*d) % 7].to_string()).collect(),
                                    start: hhmm(start_minute),
                                    end: hhmm(end_minute),
                                }
                            }
                        })
                        .collect(),
                })
                .collect(),
            mfa_required: policy.mfa_required,
            rego: policy.rego,
            revision: Some(policy.revision),
        }
    }
}

/// `GET /v1/tenants/{tenant}/policy`.
pub async fn get_policy(
    caller: Caller,
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<PolicyDoc>, ApiError> {
    let tenant = tenant_path(path)?;
    caller.authorize(&state, Some(&tenant), Permission::PoliciesRead)?;
    state.cluster.read_barrier(custos_raft::Consistency::Linearizable).await?;
    if state.cluster.reader().tenant(&tenant)?.is_none() {
        return Err(custos_raft::Rejection::TenantNotFound(tenant).into());
    }
    let access = state.cluster.reader().access(&tenant)?.unwrap_or_default();
    Ok(Json(PolicyDoc::from_policy(access.policy)))
}

/// `PUT /v1/tenants/{tenant}/policy`: replaces the document; it must compile (known
/// permissions and time zones, a Rego module declaring `package custos`).
pub async fn put_policy(
    caller: Caller,
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<PolicyDoc>, JsonRejection>,
) -> Result<Response, ApiError> {
    let tenant = tenant_path(path)?;
    caller.authorize(&state, Some(&tenant), Permission::PoliciesWrite)?;
    let Json(doc) = body?;
    let expected_revision = doc.revision;
    let invalid = |reason: String| ApiError::bad_request("invalid_policy", reason);
    let policy = doc.into_policy().map_err(invalid)?;
    custos_raft::access::check_policy(&policy).map_err(invalid)?;
    TenantPolicy::compile(&TenantAccess { policy: policy.clone(), ..TenantAccess::default() })
        .map_err(|e| invalid(e.to_string()))?;
    let command = Command::PutAccessPolicy { tenant, policy, expected_revision };
    replicate(&state, &headers, command, StatusCode::OK, |output| match output {
        Output::Access(access) => Some(PolicyDoc::from_policy(access.policy)),
        _ => None,
    })
    .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantBody {
    /// The principal elevated: `user:<name>` or `apikey:<id>`.
    subject: String,
    permissions: Vec<String>,
    reason: String,
    /// How long the grant lasts, in seconds (1 minute to 12 hours).
    duration_s: u64,
}

#[derive(Debug, Serialize)]
pub struct GrantView {
    id: String,
    subject: String,
    permissions: Vec<String>,
    reason: String,
    granted_by: String,
    granted_at_ms: u64,
    expires_at_ms: u64,
}

impl From<JitGrant> for GrantView {
    fn from(g: JitGrant) -> Self {
        GrantView {
            id: g.id.to_string(),
            subject: g.subject,
            permissions: g.permissions,
            reason: g.reason,
            granted_by: g.granted_by,
            granted_at_ms: g.granted_at_ms,
            expires_at_ms: g.expires_at_ms,
        }
    }
}

/// `POST /v1/tenants/{tenant}/grants`: just-in-time elevation. The granter must hold every
/// permission it grants; platform permissions are never granted inside a tenant.
pub async fn grant(
    caller: Caller,
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<GrantBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let tenant = tenant_path(path)?;
    caller.authorize(&state, Some(&tenant), Permission::PoliciesElevate)?;
    let Json(body) = body?;
    let granted = PermissionSet::parse(&body.permissions)
        .map_err(|e| ApiError::bad_request("unknown_permission", e.to_string()))?;
    if granted.is_empty() || body.subject.trim().is_empty() || body.reason.trim().is_empty() {
        return Err(ApiError::bad_request("invalid_body", "a grant names a subject, permissions and a reason"));
    }
    check_held(&state, &caller, &tenant, granted)?;
    let command = Command::GrantAccess {
        tenant,
        id: GrantId::new(uuid::Uuid::new_v4().simple().to_string()).expect("a UUID's hex digits are a valid id"),
        subject: body.subject,
        permissions: granted.names(),
        reason: body.reason,
        granted_by: caller.principal.subject.clone(),
        duration_ms: body.duration_s.saturating_mul(1000),
    };
    replicate(&state, &headers, command, StatusCode::CREATED, |output| match output {
        Output::Grant(grant) => Some(GrantView::from(grant)),
        _ => None,
    })
    .await
}

/// Refuses to hand out (as a grant or API-key scope) a permission the caller does not hold in
/// the tenant, or a platform permission.
pub fn check_held(state: &AppState, caller: &Caller, tenant: &TenantId, wanted: PermissionSet) -> Result<(), ApiError> {
    let compiled = state.policy.compiled(tenant)?;
    let policy = compiled.as_ref().as_ref().map_err(|e| {
        ApiError::new(StatusCode::CONFLICT, "policy_error", format!("the tenant's policy does not compile: {e}"))
    })?;
    let held = policy.granted(&caller.principal, now_ms());
    let platform: Vec<_> = wanted.iter().filter(|p| p.is_platform()).map(Permission::as_str).collect();
    if !platform.is_empty() {
        return Err(ApiError::bad_request(
            "platform_permission",
            format!("platform permissions cannot be handed out inside a tenant: {platform:?}"),
        ));
    }
    let missing: Vec<_> = wanted.iter().filter(|p| !held.contains(*p)).map(Permission::as_str).collect();
    if !missing.is_empty() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "scope_not_held",
            format!("you cannot hand out permissions you do not hold: {missing:?}"),
        ));
    }
    Ok(())
}

#[derive(Debug, Serialize)]
struct GrantList {
    grants: Vec<GrantView>,
}

/// `GET /v1/tenants/{tenant}/grants`: the unexpired grants.
pub async fn list_grants(
    caller: Caller,
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<impl Serialize>, ApiError> {
    let tenant = tenant_path(path)?;
    caller.authorize(&state, Some(&tenant), Permission::PoliciesRead)?;
    state.cluster.read_barrier(custos_raft::Consistency::Linearizable).await?;
    let now = now_ms();
    let grants = state.cluster.reader().access(&tenant)?.map(|a| a.grants).unwrap_or_default();
    Ok(Json(GrantList { grants: grants.into_iter().filter(|g| g.expires_at_ms > now).map(GrantView::from).collect() }))
}

/// `DELETE /v1/tenants/{tenant}/grants/{grant}`.
pub async fn revoke_grant(
    caller: Caller,
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((tenant, grant)) = path?;
    let tenant = TenantId::new(tenant)?;
    caller.authorize(&state, Some(&tenant), Permission::PoliciesElevate)?;
    let command = Command::RevokeGrant { tenant, grant: GrantId::new(grant)? };
    replicate(&state, &headers, command, StatusCode::OK, |output| match output {
        Output::Access(_) => Some(serde_json::json!({ "revoked": true })),
        _ => None,
    })
    .await
}
