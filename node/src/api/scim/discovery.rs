//! The SCIM discovery documents (RFC 7644 §4): `ServiceProviderConfig`, `ResourceTypes` and
//! `Schemas`, describing what this server offers.

use serde_json::{json, Value};

use super::resource::{CUSTOS_USER_SCHEMA, GROUP_SCHEMA, USER_SCHEMA};
use super::MAX_RESULTS;

pub fn service_provider_config(base: &str) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"],
        "patch": { "supported": true },
        "bulk": { "supported": false, "maxOperations": 0, "maxPayloadSize": 0 },
        "filter": { "supported": true, "maxResults": MAX_RESULTS },
        "changePassword": { "supported": true },
        "sort": { "supported": false },
        "etag": { "supported": true },
        "authenticationSchemes": [{
            "type": "oauthbearertoken",
            "name": "Custos API key",
            "description": "A Custos API key of the tenant with the users:provision scope, sent as a bearer token",
            "primary": true,
        }],
        "meta": { "resourceType": "ServiceProviderConfig", "location": format!("{base}/ServiceProviderConfig") },
    })
}

pub fn resource_types(base: &str) -> Vec<Value> {
    vec![
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ResourceType"],
            "id": "User", "name": "User", "endpoint": "/Users", "description": "A person of the tenant",
            "schema": USER_SCHEMA,
            "schemaExtensions": [{ "schema": CUSTOS_USER_SCHEMA, "required": false }],
            "meta": { "resourceType": "ResourceType", "location": format!("{base}/ResourceTypes/User") },
        }),
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ResourceType"],
            "id": "Group", "name": "Group", "endpoint": "/Groups",
            "description": "A group of the tenant's people; a group named like a role gives its members that role",
            "schema": GROUP_SCHEMA,
            "meta": { "resourceType": "ResourceType", "location": format!("{base}/ResourceTypes/Group") },
        }),
    ]
}

struct Attr {
    name: &'static str,
    kind: &'static str,
    multi: bool,
    mutability: &'static str,
    unique: bool,
    case_exact: bool,
    sub: Vec<Value>,
}

impl Attr {
    fn new(name: &'static str, kind: &'static str) -> Attr {
        Attr { name, kind, multi: false, mutability: "readWrite", unique: false, case_exact: false, sub: Vec::new() }
    }

    fn multi(self) -> Attr {
        Attr { multi: true, ..self }
    }

    fn mutability(self, mutability: &'static str) -> Attr {
        Attr { mutability, ..self }
    }

    fn unique(self) -> Attr {
        Attr { unique: true, ..self }
    }

    fn case_exact(self) -> Attr {
        Attr { case_exact: true, ..self }
    }

    fn sub(self, sub: Vec<Value>) -> Attr {
        Attr { sub, ..self }
    }

    fn json(self) -> Value {
        let mut a = json!({
            "name": self.name, "type": self.kind, "multiValued": self.multi, "required": self.unique,
            "caseExact": self.case_exact, "mutability": self.mutability,
            "returned": if self.mutability == "writeOnly" { "never" } else { "default" },
            "uniqueness": if self.unique { "server" } else { "none" },
        });
        if !self.sub.is_empty() {
            a["subAttributes"] = Value::Array(self.sub);
        }
        a
    }
}

pub fn schemas(base: &str) -> Vec<Value> {
    let s = |name| Attr::new(name, "string").json();
    let reference = |mutability| {
        vec![
            Attr::new("value", "string").case_exact().mutability(mutability).json(),
            Attr::new("display", "string").mutability("readOnly").json(),
            Attr::new("$ref", "reference").case_exact().mutability("readOnly").json(),
        ]
    };
    let wrap = |id: &str, name: &str, description: &str, attributes: Vec<Value>| {
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"],
            "id": id, "name": name, "description": description, "attributes": attributes,
            "meta": { "resourceType": "Schema", "location": format!("{base}/Schemas/{id}") },
        })
    };
    let user = vec![
        Attr::new("userName", "string").unique().json(),
        Attr::new("externalId", "string").case_exact().json(),
        Attr::new("name", "complex")
            .sub(vec![s("givenName"), s("familyName"), Attr::new("formatted", "string").mutability("readOnly").json()])
            .json(),
        s("displayName"),
        Attr::new("emails", "complex")
            .multi()
            .sub(vec![s("value"), s("type"), Attr::new("primary", "boolean").json()])
            .json(),
        Attr::new("active", "boolean").json(),
        Attr::new("password", "string").case_exact().mutability("writeOnly").json(),
        Attr::new("roles", "complex").multi().sub(vec![Attr::new("value", "string").case_exact().json()]).json(),
        Attr::new("groups", "complex").multi().mutability("readOnly").sub(reference("readOnly")).json(),
    ];
    let group = vec![
        Attr::new("displayName", "string").unique().json(),
        Attr::new("externalId", "string").case_exact().json(),
        Attr::new("members", "complex").multi().sub(reference("immutable")).json(),
    ];
    let custos = vec![
        Attr::new("lineOfBusiness", "string").multi().json(),
        Attr::new("mfaEnrolled", "boolean").mutability("readOnly").json(),
    ];
    vec![
        wrap(USER_SCHEMA, "User", "A person of the tenant", user),
        wrap(GROUP_SCHEMA, "Group", "A group of the tenant's people", group),
        wrap(CUSTOS_USER_SCHEMA, "Custos user", "What Custos' policies need to know of a person", custos),
    ]
}
