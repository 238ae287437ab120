//! The two kinds of SCIM resource, `Users` and `Groups`: how each is read, rendered, built
//! from a request body and written, so that one set of handlers serves both.

use std::collections::HashMap;
use std::future::Future;

use custos_raft::directory::{DirectoryGroup, DirectoryUser, MAX_DIRECTORY_GROUPS, MAX_DIRECTORY_USERS};
use custos_raft::{Command, DirectoryId, Output, TenantId};
use serde_json::Value;

use super::filter::Filter;
use super::resource::{lowercase_keys, render_group, render_user, GroupInput, UserInput, ValueInput};
use crate::api::error::ApiError;
use crate::api::AppState;

/// Renders records of one kind for answers (with the lookups that takes, done once).
pub type Renderer<'a, R> = Box<dyn Fn(&R) -> Value + Send + Sync + 'a>;

pub trait Kind: Send + Sync + 'static {
    type Record: Send + Sync + 'static;

    fn get(state: &AppState, tenant: &TenantId, id: &DirectoryId) -> Result<Option<Self::Record>, ApiError>;
    /// The records a filter may match (all of them unless the filter allows a lookup).
    fn candidates(state: &AppState, tenant: &TenantId, filter: Option<&Filter>) -> Result<Vec<Self::Record>, ApiError>;
    fn revision(record: &Self::Record) -> u64;
    /// For answers.
    fn renderer<'a>(state: &'a AppState, tenant: &'a TenantId) -> Result<Renderer<'a, Self::Record>, ApiError>;
    /// For filters and PATCH: without what takes lookups (a user's groups, members' names).
    fn bare(base: &str, record: &Self::Record) -> Value;
    /// The record a request body describes; what SCIM does not carry is kept from `previous`.
    fn build(
        state: &AppState,
        tenant: &TenantId,
        body: Value,
        id: DirectoryId,
        previous: Option<&Self::Record>,
    ) -> impl Future<Output = Result<Self::Record, ApiError>> + Send;
    fn put(tenant: TenantId, record: Self::Record, expected_revision: Option<u64>) -> Command;
    fn delete(tenant: TenantId, id: DirectoryId) -> Command;
    fn from_output(output: Output) -> Option<Self::Record>;
}

fn read_body<T: serde::de::DeserializeOwned>(body: Value) -> Result<T, ApiError> {
    serde_json::from_value(lowercase_keys(body)).map_err(|e| ApiError::bad_request("invalid_value", e.to_string()))
}

/// Refuses role names a directory may not give (see `native::tenant_roles`).
fn check_roles(state: &AppState, tenant: &TenantId, roles: &[ValueInput]) -> Result<(), ApiError> {
    let is_role = crate::api::native::tenant_roles(state, tenant)?;
    match roles.iter().find(|r| !is_role(&r.value)) {
        Some(role) => Err(ApiError::bad_request(
            "invalid_value",
            format!("{:?} is not a tenant role (built-in or custom) of {tenant}", role.value),
        )),
        None => Ok(()),
    }
}

pub struct Users;

impl Kind for Users {
    type Record = DirectoryUser;

    fn get(state: &AppState, tenant: &TenantId, id: &DirectoryId) -> Result<Option<DirectoryUser>, ApiError> {
        Ok(state.cluster.reader().directory_user(tenant, id)?)
    }

    fn candidates(
        state: &AppState,
        tenant: &TenantId,
        filter: Option<&Filter>,
    ) -> Result<Vec<DirectoryUser>, ApiError> {
        let reader = state.cluster.reader();
        Ok(match filter.and_then(Filter::user_name_equals) {
            Some(name) => reader.directory_user_by_name(tenant, name)?.into_iter().collect(),
            None => reader.directory_users(tenant, None, MAX_DIRECTORY_USERS as usize)?,
        })
    }

    fn revision(record: &DirectoryUser) -> u64 {
        record.revision
    }

    fn renderer<'a>(state: &'a AppState, tenant: &'a TenantId) -> Result<Renderer<'a, DirectoryUser>, ApiError> {
        let mut groups: HashMap<DirectoryId, Vec<(DirectoryId, String)>> = HashMap::new();
        for group in state.cluster.reader().directory_groups(tenant, None, MAX_DIRECTORY_GROUPS as usize)? {
            for member in &group.members {
                groups.entry(member.clone()).or_default().push((group.id.clone(), group.display_name.clone()));
            }
        }
        let base = super::base_url(state, tenant);
        Ok(Box::new(move |user| render_user(&base, user, groups.get(&user.id).map_or(&[][..], Vec::as_slice))))
    }

    fn bare(base: &str, record: &DirectoryUser) -> Value {
        render_user(base, record, &[])
    }

    async fn build(
        state: &AppState,
        tenant: &TenantId,
        body: Value,
        id: DirectoryId,
        previous: Option<&DirectoryUser>,
    ) -> Result<DirectoryUser, ApiError> {
        let mut input: UserInput = read_body(body)?;
        check_roles(state, tenant, &input.roles)?;
        let hash = crate::api::native::hash_password(state, input.password.take()).await?;
        Ok(input.into_user(id, previous, hash))
    }

    fn put(tenant: TenantId, user: DirectoryUser, expected_revision: Option<u64>) -> Command {
        Command::PutDirectoryUser { tenant, user, expected_revision }
    }

    fn delete(tenant: TenantId, id: DirectoryId) -> Command {
        Command::DeleteDirectoryUser { tenant, id }
    }

    fn from_output(output: Output) -> Option<DirectoryUser> {
        match output {
            Output::DirectoryUser(user) => Some(user),
            _ => None,
        }
    }
}

pub struct Groups;

impl Kind for Groups {
    type Record = DirectoryGroup;

    fn get(state: &AppState, tenant: &TenantId, id: &DirectoryId) -> Result<Option<DirectoryGroup>, ApiError> {
        Ok(state.cluster.reader().directory_group(tenant, id)?)
    }

    fn candidates(state: &AppState, tenant: &TenantId, _: Option<&Filter>) -> Result<Vec<DirectoryGroup>, ApiError> {
        Ok(state.cluster.reader().directory_groups(tenant, None, MAX_DIRECTORY_GROUPS as usize)?)
    }

    fn revision(record: &DirectoryGroup) -> u64 {
        record.revision
    }

    fn renderer<'a>(state: &'a AppState, tenant: &'a TenantId) -> Result<Renderer<'a, DirectoryGroup>, ApiError> {
        let base = super::base_url(state, tenant);
        let reader = state.cluster.reader();
        Ok(Box::new(move |group| {
            render_group(&base, group, |id| reader.directory_user(tenant, id).ok().flatten().map(|u| u.user_name))
        }))
    }

    fn bare(base: &str, record: &DirectoryGroup) -> Value {
        render_group(base, record, |_| None)
    }

    async fn build(
        _: &AppState,
        _: &TenantId,
        body: Value,
        id: DirectoryId,
        _: Option<&DirectoryGroup>,
    ) -> Result<DirectoryGroup, ApiError> {
        let input: GroupInput = read_body(body)?;
        let members = input
            .members
            .into_iter()
            .map(|m| {
                DirectoryId::new(m.value.clone()).map_err(|_| {
                    ApiError::bad_request("invalid_value", format!("member {:?} is not a user of this tenant", m.value))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(DirectoryGroup {
            id,
            display_name: input.displayname.trim().to_string(),
            external_id: input.externalid,
            members,
            created_at_ms: 0,
            modified_at_ms: 0,
            revision: 0,
        })
    }

    fn put(tenant: TenantId, group: DirectoryGroup, expected_revision: Option<u64>) -> Command {
        Command::PutDirectoryGroup { tenant, group, expected_revision }
    }

    fn delete(tenant: TenantId, id: DirectoryId) -> Command {
        Command::DeleteDirectoryGroup { tenant, id }
    }

    fn from_output(output: Output) -> Option<DirectoryGroup> {
        match output {
            Output::DirectoryGroup(group) => Some(group),
            _ => None,
        }
    }
}
