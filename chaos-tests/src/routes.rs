//! Every tenant-scoped route of the API, for tenant-isolation tests: each must refuse another
//! tenant's principal, whatever its credential.

use reqwest::Method;
use serde_json::{json, Value};

/// Every tenant-scoped route, with a body where it needs one (`{t}` is the tenant, `{k}` an
/// API key id).
pub fn tenant_routes() -> Vec<(Method, &'static str, Option<Value>)> {
    let encrypt = json!({ "plaintext": "aGk=" });
    let decrypt = json!({ "ciphertext": "custos:v1:x" });
    vec![
        (Method::GET, "/v1/tenants/{t}", None),
        (Method::PATCH, "/v1/tenants/{t}", Some(json!({ "display_name": "Stolen" }))),
        (Method::POST, "/v1/tenants/{t}/suspend", None),
        (Method::POST, "/v1/tenants/{t}/resume", None),
        (Method::DELETE, "/v1/tenants/{t}", None),
        (Method::GET, "/v1/tenants/{t}/actors", None),
        (Method::GET, "/v1/tenants/{t}/keys", None),
        (Method::POST, "/v1/tenants/{t}/keys", Some(json!({ "id": "stolen" }))),
        (Method::GET, "/v1/tenants/{t}/keys/orders", None),
        (Method::POST, "/v1/tenants/{t}/keys/orders/rotate", None),
        (Method::POST, "/v1/tenants/{t}/keys/orders/config", Some(json!({ "rotation_period_ms": 0 }))),
        (Method::POST, "/v1/tenants/{t}/keys/orders/enable", None),
        (Method::POST, "/v1/tenants/{t}/keys/orders/disable", None),
        (Method::POST, "/v1/tenants/{t}/keys/orders/destroy", None),
        (Method::DELETE, "/v1/tenants/{t}/keys/orders/destroy", None),
        (Method::POST, "/v1/tenants/{t}/keys/orders/encrypt", Some(encrypt.clone())),
        (Method::POST, "/v1/tenants/{t}/keys/orders/decrypt", Some(decrypt.clone())),
        (Method::POST, "/v1/tenants/{t}/keys/orders/rewrap", Some(decrypt.clone())),
        (Method::POST, "/v1/tenants/{t}/keys/orders/datakey", Some(json!({}))),
        (Method::POST, "/v1/tenants/{t}/keys/orders/encrypt/batch", Some(json!({ "items": [encrypt] }))),
        (Method::POST, "/v1/tenants/{t}/keys/orders/decrypt/batch", Some(json!({ "items": [decrypt] }))),
        (Method::GET, "/v1/tenants/{t}/audit", None),
        (Method::GET, "/v1/tenants/{t}/audit/tail", None),
        (Method::POST, "/v1/tenants/{t}/authorize", Some(json!({ "permission": "keys:read" }))),
        (Method::GET, "/v1/tenants/{t}/policy", None),
        (Method::PUT, "/v1/tenants/{t}/policy", Some(json!({}))),
        (Method::GET, "/v1/tenants/{t}/grants", None),
        (
            Method::POST,
            "/v1/tenants/{t}/grants",
            Some(json!({ "subject": "user:x", "permissions": ["keys:read"], "reason": "r", "duration_s": 60 })),
        ),
        (Method::DELETE, "/v1/tenants/{t}/grants/g1", None),
        (Method::GET, "/v1/tenants/{t}/identity-provider", None),
        (
            Method::PUT,
            "/v1/tenants/{t}/identity-provider",
            Some(json!({ "name": "x", "issuer": "https://idp.example", "client_id": "x", "client_secret": "x" })),
        ),
        (Method::DELETE, "/v1/tenants/{t}/identity-provider", None),
        (Method::GET, "/v1/tenants/{t}/apikeys", None),
        (Method::POST, "/v1/tenants/{t}/apikeys", Some(json!({ "name": "x", "scopes": ["keys:read"] }))),
        (Method::GET, "/v1/tenants/{t}/apikeys/{k}", None),
        (Method::POST, "/v1/tenants/{t}/apikeys/{k}/rotate", None),
        (Method::POST, "/v1/tenants/{t}/apikeys/{k}/revoke", None),
        (Method::POST, "/v1/tenants/{t}/users/u1/totp", None),
        (Method::DELETE, "/v1/tenants/{t}/users/u1/totp", None),
        (Method::GET, "/scim/v2/{t}/ServiceProviderConfig", None),
        (Method::GET, "/scim/v2/{t}/ResourceTypes", None),
        (Method::GET, "/scim/v2/{t}/Schemas", None),
        (Method::GET, "/scim/v2/{t}/Users", None),
        (Method::POST, "/scim/v2/{t}/Users", Some(json!({ "userName": "stolen" }))),
        (Method::GET, "/scim/v2/{t}/Users/u1", None),
        (Method::PUT, "/scim/v2/{t}/Users/u1", Some(json!({ "userName": "stolen" }))),
        (Method::PATCH, "/scim/v2/{t}/Users/u1", Some(json!({ "Operations": [{ "op": "remove", "path": "emails" }] }))),
        (Method::DELETE, "/scim/v2/{t}/Users/u1", None),
        (Method::GET, "/scim/v2/{t}/Groups", None),
        (Method::POST, "/scim/v2/{t}/Groups", Some(json!({ "displayName": "stolen" }))),
        (Method::GET, "/scim/v2/{t}/Groups/g1", None),
        (Method::PUT, "/scim/v2/{t}/Groups/g1", Some(json!({ "displayName": "stolen" }))),
        (
            Method::PATCH,
            "/scim/v2/{t}/Groups/g1",
            Some(json!({ "Operations": [{ "op": "remove", "path": "members" }] })),
        ),
        (Method::DELETE, "/scim/v2/{t}/Groups/g1", None),
    ]
}
