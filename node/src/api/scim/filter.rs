//! SCIM filters (RFC 7644 §3.4.2.2): parsed by `scim_proto`, evaluated here against a
//! resource in its lowercased-key JSON form (attribute names are case-insensitive in SCIM).
//!
//! Strings compare without regard to case except for the case-exact attributes (`id`,
//! `externalId`, member ids, `meta.version`); `meta.created` and `meta.lastModified` compare as
//! instants. A multi-valued attribute matches when any of its values does, and a complex one
//! named without a sub-attribute compares its `value`.

use scim_proto::filter::{ScimComplexFilter, ScimFilter};
use serde_json::Value;

/// Longest filter accepted.
pub const MAX_FILTER_BYTES: usize = 2048;

/// Why a filter cannot be used (a 400 `invalidFilter`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FilterError(pub String);

pub struct Filter(ScimFilter);

impl Filter {
    pub fn parse(text: &str) -> Result<Filter, FilterError> {
        if text.len() > MAX_FILTER_BYTES {
            return Err(FilterError(format!("a filter has at most {MAX_FILTER_BYTES} bytes")));
        }
        text.trim()
            .parse::<ScimFilter>()
            .map(Filter)
            .map_err(|e| FilterError(format!("the filter does not parse: {e}")))
    }

    /// `userName eq "<name>"`, the lookup provisioning clients make before creating a user,
    /// answered from the name index instead of a scan.
    pub fn user_name_equals(&self) -> Option<&str> {
        match &self.0 {
            ScimFilter::Equal(path, Value::String(name)) if path.to_string().eq_ignore_ascii_case("username") => {
                Some(name)
            }
            _ => None,
        }
    }

    pub fn matches(&self, resource: &Value) -> Result<bool, FilterError> {
        matches(&self.0, resource)
    }
}

#[derive(Clone, Copy)]
enum Op {
    Eq,
    Co,
    Sw,
    Ew,
    Gt,
    Lt,
    Ge,
    Le,
}

fn matches(filter: &ScimFilter, resource: &Value) -> Result<bool, FilterError> {
    let compare = |path: &scim_proto::filter::AttrPath, op, expected: &Value| {
        let path = path.to_string().to_lowercase();
        let (attr, sub) = match path.split_once('.') {
            Some((attr, sub)) => (attr.to_string(), Some(sub.to_string())),
            None => (path.clone(), None),
        };
        any_value(resolve(resource, &attr, sub.as_deref()), &path, op, expected)
    };
    Ok(match filter {
        ScimFilter::Or(a, b) => matches(a, resource)? || matches(b, resource)?,
        ScimFilter::And(a, b) => matches(a, resource)? && matches(b, resource)?,
        ScimFilter::Not(a) => !matches(a, resource)?,
        ScimFilter::Present(path) => {
            let path = path.to_string().to_lowercase();
            let (attr, sub) = path.split_once('.').map_or((path.as_str(), None), |(a, s)| (a, Some(s)));
            resolve(resource, attr, sub).into_iter().any(present)
        }
        ScimFilter::Equal(p, v) => compare(p, Op::Eq, v)?,
        ScimFilter::NotEqual(p, v) => !compare(p, Op::Eq, v)?,
        ScimFilter::Contains(p, v) => compare(p, Op::Co, v)?,
        ScimFilter::StartsWith(p, v) => compare(p, Op::Sw, v)?,
        ScimFilter::EndsWith(p, v) => compare(p, Op::Ew, v)?,
        ScimFilter::Greater(p, v) => compare(p, Op::Gt, v)?,
        ScimFilter::Less(p, v) => compare(p, Op::Lt, v)?,
        ScimFilter::GreaterOrEqual(p, v) => compare(p, Op::Ge, v)?,
        ScimFilter::LessOrEqual(p, v) => compare(p, Op::Le, v)?,
        ScimFilter::Complex(attr, inner) => {
            let attr = attr.to_lowercase();
            match resource.get(&attr) {
                Some(Value::Array(items)) => {
                    let mut any = false;
                    for item in items {
                        any |= matches_complex(inner, item, &attr)?;
                    }
                    any
                }
                Some(item @ Value::Object(_)) => matches_complex(inner, item, &attr)?,
                _ => false,
            }
        }
    })
}

/// A value filter (`emails[type eq "work"]`) on one value of `attr`. Also used by PATCH paths.
pub fn matches_complex(filter: &ScimComplexFilter, item: &Value, attr: &str) -> Result<bool, FilterError> {
    let compare = |sub: &str, op, expected: &Value| {
        let sub = sub.to_lowercase();
        let path = format!("{attr}.{sub}");
        any_value(item.get(&sub).into_iter().collect(), &path, op, expected)
    };
    Ok(match filter {
        ScimComplexFilter::Or(a, b) => matches_complex(a, item, attr)? || matches_complex(b, item, attr)?,
        ScimComplexFilter::And(a, b) => matches_complex(a, item, attr)? && matches_complex(b, item, attr)?,
        ScimComplexFilter::Not(a) => !matches_complex(a, item, attr)?,
        ScimComplexFilter::Present(sub) => item.get(sub.to_lowercase()).is_some_and(present),
        ScimComplexFilter::Equal(s, v) => compare(s, Op::Eq, v)?,
        ScimComplexFilter::NotEqual(s, v) => !compare(s, Op::Eq, v)?,
        ScimComplexFilter::Contains(s, v) => compare(s, Op::Co, v)?,
        ScimComplexFilter::StartsWith(s, v) => compare(s, Op::Sw, v)?,
        ScimComplexFilter::EndsWith(s, v) => compare(s, Op::Ew, v)?,
        ScimComplexFilter::Greater(s, v) => compare(s, Op::Gt, v)?,
        ScimComplexFilter::Less(s, v) => compare(s, Op::Lt, v)?,
        ScimComplexFilter::GreaterOrEqual(s, v) => compare(s, Op::Ge, v)?,
        ScimComplexFilter::LessOrEqual(s, v) => compare(s, Op::Le, v)?,
    })
}

/// The values an attribute path names: every value of a multi-valued attribute, and of a
/// complex one without a sub-attribute, its `value`.
fn resolve<'a>(resource: &'a Value, attr: &str, sub: Option<&str>) -> Vec<&'a Value> {
    let Some(value) = resource.get(attr) else { return Vec::new() };
    let items: Vec<&Value> = match value {
        Value::Array(items) => items.iter().collect(),
        other => vec![other],
    };
    items
        .into_iter()
        .filter_map(|item| match (sub, item) {
            (Some(sub), Value::Object(map)) => map.get(sub),
            (Some(_), _) => None,
            (None, Value::Object(map)) => map.get("value"),
            (None, other) => Some(other),
        })
        .collect()
}

fn present(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        _ => true,
    }
}

fn case_exact(path: &str) -> bool {
    matches!(path, "id" | "externalid" | "members" | "members.value" | "meta.version" | "groups" | "groups.value")
}

fn any_value(values: Vec<&Value>, path: &str, op: Op, expected: &Value) -> Result<bool, FilterError> {
    let mut any = false;
    for value in values {
        any |= compare(value, path, op, expected)?;
    }
    Ok(any)
}

fn compare(actual: &Value, path: &str, op: Op, expected: &Value) -> Result<bool, FilterError> {
    use std::cmp::Ordering;
    let ordered = |ordering: Ordering| match op {
        Op::Eq => Ok(ordering == Ordering::Equal),
        Op::Gt => Ok(ordering == Ordering::Greater),
        Op::Lt => Ok(ordering == Ordering::Less),
        Op::Ge => Ok(ordering != Ordering::Less),
        Op::Le => Ok(ordering != Ordering::Greater),
        Op::Co | Op::Sw | Op::Ew => Err(FilterError(format!("{path} is not a string"))),
    };
    match (actual, expected) {
        (Value::String(a), Value::String(e)) => {
            if matches!(path, "meta.created" | "meta.lastmodified") {
                let parse = |s: &str| s.parse::<jiff::Timestamp>().ok();
                if let (Some(a), Some(e)) = (parse(a), parse(e)) {
                    return ordered(a.cmp(&e));
                }
                return Err(FilterError(format!("{path} compares with an RFC 3339 date-time")));
            }
            let (a, e) = if case_exact(path) { (a.clone(), e.clone()) } else { (a.to_lowercase(), e.to_lowercase()) };
            match op {
                Op::Co => Ok(a.contains(&e)),
                Op::Sw => Ok(a.starts_with(&e)),
                Op::Ew => Ok(a.ends_with(&e)),
                _ => ordered(a.cmp(&e)),
            }
        }
        (Value::Bool(a), Value::Bool(e)) => match op {
            Op::Eq => Ok(a == e),
            _ => Err(FilterError(format!("{path} is a boolean: only eq and ne apply"))),
        },
        (Value::Number(a), Value::Number(e)) => match (a.as_f64(), e.as_f64()) {
            (Some(a), Some(e)) => ordered(a.partial_cmp(&e).unwrap_or(Ordering::Less)),
            _ => Ok(false),
        },
        // Values of different types (or null) never compare.
        _ => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn alice() -> Value {
        json!({
            "id": "u1",
            "username": "Alice@Acme.example",
            "externalid": "E-1",
            "active": true,
            "name": { "givenname": "Alice", "familyname": "Martin" },
            "emails": [
                { "value": "alice@acme.example", "type": "work", "primary": true },
                { "value": "alice@home.example", "type": "home" }
            ],
            "meta": { "created": "2026-11-20T10:00:00Z", "lastmodified": "2026-11-23T10:00:00.500Z" }
        })
    }

    fn check(filter: &str) -> bool {
        Filter::parse(filter).unwrap().matches(&alice()).unwrap()
    }

    #[test]
    fn operators_attributes_and_logic() {
        assert!(check(r#"userName eq "alice@acme.example""#), "userName ignores case");
        assert!(!check(r#"externalId eq "e-1""#), "externalId is case-exact");
        assert!(check(r#"name.familyName sw "mar""#));
        assert!(check(r#"emails co "home.example""#), "a complex attribute compares its value");
        assert!(check(r#"emails[type eq "work" and primary eq true]"#));
        assert!(!check(r#"emails[type eq "other"]"#));
        assert!(check(r#"active eq true and not (userName ew "globex.example")"#));
        assert!(check(r#"title pr or name.givenName pr"#));
        assert!(!check("title pr"));
        assert!(check(r#"meta.lastModified gt "2026-11-23T10:00:00Z""#), "instants, not strings");
        assert!(!check(r#"meta.created ge "2026-11-21T00:00:00+01:00""#));
        assert!(check(r#"userName ne "bob""#));
    }

    #[test]
    fn bad_filters_are_refused() {
        assert!(Filter::parse("userName eq").is_err());
        assert!(Filter::parse(&"x".repeat(MAX_FILTER_BYTES + 1)).is_err());
        let boolean = Filter::parse("active gt true").unwrap();
        assert!(boolean.matches(&alice()).is_err());
        let fast = Filter::parse(r#"userName eq "bob""#).unwrap();
        assert_eq!(fast.user_name_equals(), Some("bob"));
    }
}
