//! SCIM resources: how directory users and groups are rendered (RFC 7643's core `User` and
//! `Group`, plus Custos' extension with lines of business), and how request bodies are read.
//!
//! Attribute names are case-insensitive in SCIM, so bodies are read after lowercasing every
//! key; attributes Custos does not keep (addresses, phone numbers, the enterprise extension …)
//! are ignored, as provisioning clients send whatever they have.

use custos_raft::directory::{DirectoryGroup, DirectoryUser, Email};
use custos_raft::DirectoryId;
use serde::{Deserialize, Deserializer};
use serde_json::{json, Map, Value};
use zeroize::Zeroizing;

pub const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
pub const GROUP_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
/// Custos' extension of `User`: `lineOfBusiness` (ABAC) and the read-only `mfaEnrolled`.
pub const CUSTOS_USER_SCHEMA: &str = "urn:custos:params:scim:schemas:extension:2.0:User";
pub const LIST_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
pub const ERROR_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:Error";

/// A JSON value with every object key lowercased.
pub fn lowercase_keys(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            Value::Object(map.into_iter().map(|(k, v)| (k.to_lowercase(), lowercase_keys(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(lowercase_keys).collect()),
        other => other,
    }
}

/// The weak ETag of a resource version (`W/"<revision>"`).
pub fn etag(revision: u64) -> String {
    format!("W/\"{revision}\"")
}

/// The revision an `If-Match` header names, if it is one of our ETags.
pub fn parse_etag(value: &str) -> Option<u64> {
    value.trim().trim_start_matches("W/").trim_matches('"').parse().ok()
}

fn timestamp(ms: u64) -> String {
    jiff::Timestamp::from_millisecond(ms as i64).map(|t| t.to_string()).unwrap_or_default()
}

fn meta(kind: &str, location: String, created: u64, modified: u64, revision: u64) -> Value {
    json!({
        "resourceType": kind,
        "created": timestamp(created),
        "lastModified": timestamp(modified),
        "version": etag(revision),
        "location": location,
    })
}

/// A user as SCIM shows it; `groups` are the (id, display name) of the groups holding it.
pub fn render_user(base: &str, user: &DirectoryUser, groups: &[(DirectoryId, String)]) -> Value {
    let mut out = json!({
        "schemas": [USER_SCHEMA, CUSTOS_USER_SCHEMA],
        "id": user.id.as_str(),
        "userName": user.user_name,
        "active": user.active,
        "emails": user.emails.iter().map(|e| {
            let mut email = json!({ "value": e.value, "primary": e.primary });
            if let Some(kind) = &e.kind {
                email["type"] = json!(kind);
            }
            email
        }).collect::<Vec<_>>(),
        "roles": user.roles.iter().map(|r| json!({ "value": r })).collect::<Vec<_>>(),
        "groups": groups.iter().map(|(id, name)| json!({
            "value": id.as_str(),
            "display": name,
            "$ref": format!("{base}/Groups/{id}"),
        })).collect::<Vec<_>>(),
        CUSTOS_USER_SCHEMA: { "lineOfBusiness": user.lob, "mfaEnrolled": user.totp_sealed.is_some() },
        "meta": meta("User", format!("{base}/Users/{}", user.id), user.created_at_ms, user.modified_at_ms, user.revision),
    });
    let map = out.as_object_mut().expect("a JSON object literal");
    for (name, value) in [("externalId", &user.external_id), ("displayName", &user.display_name)] {
        if let Some(value) = value {
            map.insert(name.into(), json!(value));
        }
    }
    if user.given_name.is_some() || user.family_name.is_some() {
        let formatted = [&user.given_name, &user.family_name].into_iter().flatten().cloned().collect::<Vec<_>>();
        map.insert(
            "name".into(),
            json!({ "givenName": user.given_name, "familyName": user.family_name, "formatted": formatted.join(" ") }),
        );
    }
    out
}

/// A group as SCIM shows it; `user_name` names a member for its `display`.
pub fn render_group(base: &str, group: &DirectoryGroup, user_name: impl Fn(&DirectoryId) -> Option<String>) -> Value {
    let mut out = json!({
        "schemas": [GROUP_SCHEMA],
        "id": group.id.as_str(),
        "displayName": group.display_name,
        "members": group.members.iter().map(|m| json!({
            "value": m.as_str(),
            "display": user_name(m),
            "type": "User",
            "$ref": format!("{base}/Users/{m}"),
        })).collect::<Vec<_>>(),
        "meta": meta("Group", format!("{base}/Groups/{}", group.id), group.created_at_ms, group.modified_at_ms, group.revision),
    });
    if let Some(external_id) = &group.external_id {
        out["externalId"] = json!(external_id);
    }
    out
}

/// Keeps only the requested top-level attributes (`attributes`), or drops the excluded ones
/// (`excludedAttributes`); `id` and `schemas` always stay.
pub fn select(resource: Value, attributes: Option<&str>, excluded: Option<&str>) -> Value {
    let names = |list: &str| -> Vec<String> {
        list.split(',')
            .map(|a| {
                let a = a.trim().to_lowercase();
                let a = a.strip_prefix(&format!("{}:", USER_SCHEMA.to_lowercase())).map(str::to_string).unwrap_or(a);
                a.split('.').next().unwrap_or_default().to_string()
            })
            .collect()
    };
    let Value::Object(map) = resource else { return resource };
    let keep: Box<dyn Fn(&str) -> bool> = match (attributes, excluded) {
        (Some(list), _) => {
            let wanted = names(list);
            Box::new(move |k: &str| wanted.iter().any(|w| w.eq_ignore_ascii_case(k)))
        }
        (None, Some(list)) => {
            let dropped = names(list);
            Box::new(move |k: &str| !dropped.iter().any(|d| d.eq_ignore_ascii_case(k)))
        }
        (None, None) => return Value::Object(map),
    };
    Value::Object(map.into_iter().filter(|(k, _)| k == "id" || k == "schemas" || keep(k)).collect::<Map<_, _>>())
}

/// Null, or a list (clients send `null` for an empty list).
fn list<'de, D: Deserializer<'de>, T: Deserialize<'de>>(deserializer: D) -> Result<Vec<T>, D::Error> {
    Ok(Option::<Vec<T>>::deserialize(deserializer)?.unwrap_or_default())
}

/// A boolean, or the strings "true"/"false" in any case (Entra ID sends "False").
fn flexible_bool<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<bool>, D::Error> {
    match Option::<Value>::deserialize(deserializer)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(b)),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(Some(true)),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(Some(false)),
        Some(other) => Err(serde::de::Error::custom(format!("expected a boolean, found {other}"))),
    }
}

/// A user as a client writes it (keys lowercased).
#[derive(Deserialize)]
pub struct UserInput {
    pub username: String,
    #[serde(default)]
    pub externalid: Option<String>,
    #[serde(default)]
    pub name: Option<NameInput>,
    #[serde(default)]
    pub displayname: Option<String>,
    #[serde(default, deserialize_with = "list")]
    pub emails: Vec<EmailInput>,
    #[serde(default, deserialize_with = "flexible_bool")]
    pub active: Option<bool>,
    #[serde(default, deserialize_with = "list")]
    pub roles: Vec<ValueInput>,
    /// Write-only: hashed with argon2id, never returned.
    #[serde(default)]
    pub password: Option<Zeroizing<String>>,
    #[serde(default, rename = "urn:custos:params:scim:schemas:extension:2.0:user")]
    pub custos: Option<CustosInput>,
}

#[derive(Deserialize)]
pub struct NameInput {
    #[serde(default)]
    pub givenname: Option<String>,
    #[serde(default)]
    pub familyname: Option<String>,
}

#[derive(Deserialize)]
pub struct EmailInput {
    pub value: String,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default, deserialize_with = "flexible_bool")]
    pub primary: Option<bool>,
}

#[derive(Deserialize)]
pub struct ValueInput {
    pub value: String,
}

#[derive(Deserialize)]
pub struct CustosInput {
    #[serde(default, deserialize_with = "list")]
    pub lineofbusiness: Vec<String>,
}

impl UserInput {
    /// The directory record this input describes. What SCIM does not carry — the password
    /// hash unless a new one is given, the TOTP enrolment — is kept from `previous`.
    pub fn into_user(
        self,
        id: DirectoryId,
        previous: Option<&DirectoryUser>,
        password_hash: Option<String>,
    ) -> DirectoryUser {
        let (given_name, family_name) = self.name.map_or((None, None), |n| (n.givenname, n.familyname));
        DirectoryUser {
            id,
            user_name: self.username.trim().to_string(),
            external_id: self.externalid,
            display_name: self.displayname,
            given_name,
            family_name,
            emails: self
                .emails
                .into_iter()
                .map(|e| Email { value: e.value, kind: e.kind, primary: e.primary.unwrap_or(false) })
                .collect(),
            active: self.active.unwrap_or(true),
            roles: self.roles.into_iter().map(|r| r.value).collect(),
            lob: self.custos.map(|c| c.lineofbusiness).unwrap_or_default(),
            password_hash: password_hash.or_else(|| previous.and_then(|p| p.password_hash.clone())),
            totp_sealed: previous.and_then(|p| p.totp_sealed.clone()),
            totp_last_step: previous.map_or(0, |p| p.totp_last_step),
            created_at_ms: 0,
            modified_at_ms: 0,
            revision: 0,
        }
    }
}

/// A group as a client writes it (keys lowercased).
#[derive(Deserialize)]
pub struct GroupInput {
    pub displayname: String,
    #[serde(default)]
    pub externalid: Option<String>,
    #[serde(default, deserialize_with = "list")]
    pub members: Vec<ValueInput>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_read_in_any_case_and_render_back() {
        let body = lowercase_keys(json!({
            "schemas": [USER_SCHEMA],
            "UserName": " alice ",
            "name": { "givenName": "Alice", "familyName": "Martin" },
            "emails": [{ "value": "alice@acme.example", "type": "work", "primary": "True" }],
            "phoneNumbers": [{ "value": "+33 1" }],
            "active": "False",
            "roles": null,
            (CUSTOS_USER_SCHEMA): { "lineOfBusiness": ["security"] },
        }));
        let input: UserInput = serde_json::from_value(body).unwrap();
        let user = input.into_user(DirectoryId::new("u1").unwrap(), None, None);
        assert_eq!((user.user_name.as_str(), user.active, user.lob.len()), ("alice", false, 1));
        assert!(user.emails[0].primary);
        let shown = render_user("https://c/scim/v2/acme", &user, &[]);
        assert_eq!(shown["name"]["formatted"], "Alice Martin");
        assert_eq!(shown["meta"]["location"], "https://c/scim/v2/acme/Users/u1");
        assert!(shown.get("password").is_none());
        let picked = select(shown, Some("userName,name.givenName"), None);
        let keys: Vec<&String> = picked.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 4, "id, schemas, userName, name: {keys:?}");
        assert_eq!(parse_etag(&etag(42)), Some(42));
    }
}
