//! SCIM PATCH (RFC 7644 §3.5.2): `add`, `replace` and `remove` operations applied to a
//! resource in its lowercased-key JSON form; the result is then read back like a PUT body.
//!
//! Paths are `attr`, `attr.sub`, `attr[filter]`, `attr[filter].sub`, each optionally behind
//! its schema URN. Operation names are case-insensitive and boolean values may come as the
//! strings `"True"`/`"False"` (as Entra ID sends them). A `remove` of `members` with a value
//! removes those members.

use scim_proto::filter::ScimComplexFilter;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::filter::matches_complex;
use super::resource::{lowercase_keys, CUSTOS_USER_SCHEMA, GROUP_SCHEMA, USER_SCHEMA};

/// Most operations in one PATCH request.
pub const MAX_OPERATIONS: usize = 100;
pub const PATCH_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";

/// Why a PATCH cannot be applied; `scim_type` is RFC 7644's `scimType`.
#[derive(Debug)]
pub struct PatchError {
    pub scim_type: &'static str,
    pub message: String,
}

fn error(scim_type: &'static str, message: impl Into<String>) -> PatchError {
    PatchError { scim_type, message: message.into() }
}

#[derive(Deserialize)]
pub struct PatchRequest {
    #[serde(default)]
    pub schemas: Vec<String>,
    #[serde(rename = "Operations", alias = "operations")]
    pub operations: Vec<Operation>,
}

#[derive(Deserialize)]
pub struct Operation {
    pub op: String,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub value: Option<Value>,
}

struct Path {
    attr: String,
    filter: Option<ScimComplexFilter>,
    sub: Option<String>,
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Add,
    Replace,
    Remove,
}

/// Applies every operation, in order, to `doc` (a JSON object with lowercased keys).
pub fn apply(doc: &mut Map<String, Value>, request: PatchRequest) -> Result<(), PatchError> {
    if !request.schemas.is_empty() && !request.schemas.iter().any(|s| s == PATCH_SCHEMA) {
        return Err(error("invalidSyntax", format!("a PATCH request names the schema {PATCH_SCHEMA}")));
    }
    if request.operations.len() > MAX_OPERATIONS {
        return Err(error("tooMany", format!("at most {MAX_OPERATIONS} operations per PATCH")));
    }
    for operation in request.operations {
        let kind = match operation.op.to_lowercase().as_str() {
            "add" => Kind::Add,
            "replace" => Kind::Replace,
            "remove" => Kind::Remove,
            other => return Err(error("invalidSyntax", format!("unknown operation {other:?}"))),
        };
        let value = operation.value.map(lowercase_keys);
        match operation.path {
            Some(path) => apply_path(doc, kind, &parse_path(&path)?, value)?,
            None => {
                let Some(Value::Object(attributes)) = value else {
                    return Err(error("invalidValue", "an operation without a path takes an object value"));
                };
                if kind == Kind::Remove {
                    return Err(error("noTarget", "a remove operation needs a path"));
                }
                for (name, value) in attributes {
                    apply_path(doc, kind, &parse_path(&name)?, Some(value))?;
                }
            }
        }
    }
    Ok(())
}

fn parse_path(raw: &str) -> Result<Path, PatchError> {
    let lower = raw.to_lowercase();
    // An extension's attributes live under its URN; the core schemas' at the top.
    for urn in [USER_SCHEMA, GROUP_SCHEMA] {
        let urn = format!("{}:", urn.to_lowercase());
        if lower.starts_with(&urn) {
            return parse_path(&raw[urn.len()..]);
        }
    }
    let custos = CUSTOS_USER_SCHEMA.to_lowercase();
    if lower == custos {
        return Ok(Path { attr: custos, filter: None, sub: None });
    }
    if let Some(rest) = lower.strip_prefix(&format!("{custos}:")) {
        return Ok(Path { attr: custos, filter: None, sub: Some(rest.to_string()) });
    }
    if lower.starts_with("urn:") {
        return Err(error("invalidPath", format!("{raw:?} names a schema this server does not hold")));
    }
    let name_end = raw.find(['[', '.']).unwrap_or(raw.len());
    let attr = lower[..name_end].to_string();
    if attr.is_empty() || !attr.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'$') {
        return Err(error("invalidPath", format!("{raw:?} is not an attribute path")));
    }
    let rest = &raw[name_end..];
    let (filter, rest) = match rest.strip_prefix('[') {
        Some(inner) => {
            let close = inner.rfind(']').ok_or_else(|| error("invalidPath", format!("{raw:?} has an unclosed '['")))?;
            let filter = inner[..close]
                .trim()
                .parse::<ScimComplexFilter>()
                .map_err(|e| error("invalidFilter", format!("the value filter of {raw:?} does not parse: {e}")))?;
            (Some(filter), &inner[close + 1..])
        }
        None => (None, rest),
    };
    let sub = match rest.strip_prefix('.') {
        Some(sub) if !sub.is_empty() && !sub.contains(['.', '[']) => Some(sub.to_lowercase()),
        None if rest.is_empty() => None,
        _ => return Err(error("invalidPath", format!("{raw:?} is not an attribute path"))),
    };
    Ok(Path { attr, filter, sub })
}

fn apply_path(doc: &mut Map<String, Value>, kind: Kind, path: &Path, value: Option<Value>) -> Result<(), PatchError> {
    let needs_value = || value.clone().ok_or_else(|| error("invalidValue", "add and replace take a value"));
    match (&path.filter, &path.sub) {
        (None, None) => match kind {
            Kind::Remove => match (doc.get_mut(&path.attr), &value) {
                // `remove members` with a value removes those members (Entra ID's form).
                (Some(Value::Array(current)), Some(value)) => {
                    let gone: Vec<Value> = as_list(value).iter().filter_map(|v| v.get("value").cloned()).collect();
                    current.retain(|item| !item.get("value").is_some_and(|v| gone.contains(v)));
                }
                _ => {
                    doc.remove(&path.attr);
                }
            },
            Kind::Add | Kind::Replace => {
                let value = needs_value()?;
                let current = doc.remove(&path.attr);
                let merged = match (current, value) {
                    (Some(Value::Array(mut items)), value) if kind == Kind::Add => {
                        for item in as_list(&value) {
                            if !items.contains(&item) {
                                items.push(item);
                            }
                        }
                        Value::Array(items)
                    }
                    (Some(Value::Object(mut current)), Value::Object(value)) => {
                        current.extend(value);
                        Value::Object(current)
                    }
                    (_, value) => value,
                };
                doc.insert(path.attr.clone(), merged);
            }
        },
        (None, Some(sub)) => {
            let target = doc.entry(path.attr.clone()).or_insert_with(|| Value::Object(Map::new()));
            let Value::Object(target) = target else {
                return Err(error("invalidPath", format!("{} has no sub-attributes", path.attr)));
            };
            match kind {
                Kind::Remove => {
                    target.remove(sub);
                }
                Kind::Add | Kind::Replace => {
                    target.insert(sub.clone(), needs_value()?);
                }
            }
        }
        (Some(filter), sub) => {
            let items = match doc.get_mut(&path.attr) {
                Some(Value::Array(items)) => items,
                _ if kind == Kind::Remove => return Ok(()),
                _ => return Err(error("noTarget", format!("{} has no values to filter", path.attr))),
            };
            let mut hits = Vec::new();
            for (i, item) in items.iter().enumerate() {
                if matches_complex(filter, item, &path.attr).map_err(|e| error("invalidFilter", e.0))? {
                    hits.push(i);
                }
            }
            if hits.is_empty() && kind != Kind::Remove {
                return Err(error("noTarget", format!("no value of {} matches the filter", path.attr)));
            }
            match (kind, sub) {
                (Kind::Remove, None) => {
                    for i in hits.into_iter().rev() {
                        items.remove(i);
                    }
                }
                (Kind::Remove, Some(sub)) => {
                    for i in hits {
                        if let Value::Object(item) = &mut items[i] {
                            item.remove(sub);
                        }
                    }
                }
                (_, Some(sub)) => {
                    let value = needs_value()?;
                    for i in hits {
                        if let Value::Object(item) = &mut items[i] {
                            item.insert(sub.clone(), value.clone());
                        }
                    }
                }
                (_, None) => {
                    let value = needs_value()?;
                    for i in hits {
                        match (&mut items[i], &value) {
                            (Value::Object(item), Value::Object(new)) => item.extend(new.clone()),
                            (item, new) => *item = new.clone(),
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

fn as_list(value: &Value) -> Vec<Value> {
    match value {
        Value::Array(items) => items.clone(),
        other => vec![other.clone()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn patch(doc: Value, operations: Value) -> Result<Value, PatchError> {
        let Value::Object(mut doc) = doc else { unreachable!() };
        let request: PatchRequest =
            serde_json::from_value(json!({ "schemas": [PATCH_SCHEMA], "Operations": operations })).unwrap();
        apply(&mut doc, request)?;
        Ok(Value::Object(doc))
    }

    #[test]
    fn entra_style_operations() {
        let user =
            json!({ "username": "alice", "active": true, "emails": [{ "value": "a@acme.example", "type": "work" }] });
        let out = patch(
            user.clone(),
            json!([
                { "op": "Replace", "path": "active", "value": "False" },
                { "op": "replace", "path": "emails[type eq \"work\"].value", "value": "alice@acme.example" },
                { "op": "Add", "value": { "displayName": "Alice", "name.givenName": "Alice" } },
                { "op": "add", "path": "urn:custos:params:scim:schemas:extension:2.0:User:lineOfBusiness", "value": ["security"] }
            ]),
        )
        .unwrap();
        assert_eq!(out["active"], "False");
        assert_eq!(out["emails"][0]["value"], "alice@acme.example");
        assert_eq!(out["displayname"], "Alice");
        assert_eq!(out["name"]["givenname"], "Alice");
        assert_eq!(out[CUSTOS_USER_SCHEMA.to_lowercase()]["lineofbusiness"], json!(["security"]));
        // A replace whose filter matches nothing has no target.
        let miss = patch(user, json!([{ "op": "replace", "path": "emails[type eq \"home\"].value", "value": "x" }]));
        assert_eq!(miss.unwrap_err().scim_type, "noTarget");
    }

    #[test]
    fn group_members_are_added_and_removed() {
        let group = json!({ "displayname": "admin", "members": [{ "value": "u1" }] });
        let out = patch(
            group,
            json!([
                { "op": "add", "path": "members", "value": [{ "value": "u2" }, { "value": "u1" }] },
                { "op": "remove", "path": "members[value eq \"u1\"]" },
                { "op": "add", "path": "members", "value": [{ "value": "u3" }] },
                { "op": "remove", "path": "members", "value": [{ "value": "u3" }] }
            ]),
        )
        .unwrap();
        assert_eq!(out["members"], json!([{ "value": "u2" }]));
        let bad = patch(json!({}), json!([{ "op": "move", "path": "members" }]));
        assert_eq!(bad.unwrap_err().scim_type, "invalidSyntax");
        let bad = patch(json!({}), json!([{ "op": "add", "path": "urn:example:other:thing", "value": 1 }]));
        assert_eq!(bad.unwrap_err().scim_type, "invalidPath");
    }
}
