//! Authorization: the permission catalog, built-in and custom roles, ABAC conditions, MFA
//! requirements, just-in-time grants and an optional Rego constraint per tenant.
//!
//! Decisions run in the request's own task against a tenant's compiled [`TenantPolicy`],
//! taken from the node's [`PolicyCache`], which recompiles a tenant's policy when its
//! replicated access state changes revision. The order of a decision: tenant scope, then
//! whether any role, scope or grant gives the permission, then MFA, then every ABAC rule on
//! the permission, then Rego. Anything that cannot be evaluated denies.
//!
//! # Layout
//! - `permission.rs` — [`Permission`], [`PermissionSet`] (a bitmask), [`BuiltinRole`].
//! - `principal.rs` — [`Principal`], the platform identity model every credential maps to.
//! - `decision.rs` — [`AccessRequest`], [`Attributes`], [`Decision`], [`DecisionId`].
//! - `engine.rs` — [`TenantPolicy`]: compilation and the decision procedure.
//! - `rego.rs` — the tenant's Rego constraint (regorus).
//! - `cache.rs` — [`PolicyCache`]: compiled policies per tenant, by revision.

mod cache;
mod decision;
mod engine;
mod permission;
mod principal;
mod rego;

pub use cache::PolicyCache;
pub use decision::{AccessRequest, Attributes, Decision, DecisionId, DenyKind};
pub use engine::{PolicyError, TenantPolicy};
pub use permission::{default_mfa_required, BuiltinRole, Permission, PermissionSet, UnknownPermission};
pub use principal::{Principal, PrincipalKind};
pub use rego::RegoError;
