//! Encrypt, decrypt, rewrap, data keys and their batch forms under a tenant's L3 key.
//!
//! These run on the node that receives them, against its applied governance state: no Raft
//! round trip. A key change (rotation, disable, destruction) is in force on a node as soon as
//! that node has applied it — on followers typically within one heartbeat. A key, or a key
//! version named by a ciphertext, that this node does not know yet costs one linearizable read
//! barrier before the answer: a key created or rotated through another node works here as
//! soon as its creation was acknowledged.

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::{Extension, Json};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use custos_actors::custody::ciphertext::Ciphertext;
use custos_actors::custody::{CustodyError, EncryptionContext, Sealed};
use custos_raft::{KeyId, TenantId};
use serde::{Deserialize, Serialize};

use super::audit::Note;
use super::auth::Caller;
use super::error::ApiError;
use super::keys::{admit, key_path};
use super::AppState;
use custos_actors::policy::Permission;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptItem {
    /// Base64 of the bytes to encrypt.
    plaintext: String,
    #[serde(default)]
    context: EncryptionContext,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CiphertextItem {
    ciphertext: String,
    #[serde(default)]
    context: EncryptionContext,
}

#[derive(Debug, Serialize)]
pub struct Opened {
    /// Base64 of the decrypted bytes.
    plaintext: String,
}

/// The audit note of a single-item operation: the key version and, when the caller gave an
/// encryption context, its HMAC under the tenant's audit key (the context itself may be
/// sensitive, so it never enters the event).
async fn note(state: &AppState, tenant: &TenantId, key_version: Option<u32>, context: &EncryptionContext) -> Note {
    let mut note = Note { key_version, ..Note::default() };
    if !context.is_empty() {
        // A BTreeMap serialises with sorted keys: one encoding per context.
        let canonical = serde_json::to_vec(context).unwrap_or_default();
        if let Ok(hmac) = state.custody.audit_hmac(tenant, "encryption-context", &canonical).await {
            note = note.detail("context_hmac", hmac);
        }
    }
    note
}

/// Runs a key operation on this node's applied state; when the key, or the version a
/// ciphertext names, is not there, waits until this node has applied every write acknowledged
/// before (a linearizable read barrier) and runs it once more.
async fn caught_up<T, F, Fut>(state: &AppState, op: F) -> Result<T, CustodyError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, CustodyError>>,
{
    match op().await {
        Err(CustodyError::KeyNotFound(_) | CustodyError::UnknownVersion { .. })
            if state.cluster.read_barrier(custos_raft::Consistency::Linearizable).await.is_ok() =>
        {
            op().await
        }
        other => other,
    }
}

async fn encrypt_one(state: &AppState, tenant: &TenantId, key: &KeyId, item: EncryptItem) -> Result<Sealed, ApiError> {
    let plaintext = zeroize::Zeroizing::new(
        STANDARD
            .decode(item.plaintext.as_bytes())
            .map_err(|_| ApiError::bad_request("invalid_base64", "plaintext must be standard base64"))?,
    );
    Ok(caught_up(state, || state.custody.encrypt(tenant, key, &plaintext, &item.context)).await?)
}

fn batch_note<T>(results: &[ItemResult<T>]) -> Note {
    let failed = results.iter().filter(|r| matches!(r, ItemResult::Err { .. })).count();
    Note::default().detail("items", results.len()).detail("failed", failed)
}

async fn decrypt_one(
    state: &AppState,
    tenant: &TenantId,
    key: &KeyId,
    item: CiphertextItem,
) -> Result<Opened, ApiError> {
    let plaintext = caught_up(state, || state.custody.decrypt(tenant, key, &item.ciphertext, &item.context)).await?;
    Ok(Opened { plaintext: STANDARD.encode(plaintext.as_slice()) })
}

pub async fn encrypt(
    caller: Caller,
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<Json<EncryptItem>, JsonRejection>,
) -> Result<(Extension<Note>, Json<Sealed>), ApiError> {
    let (tenant, key) = key_path(path)?;
    caller.authorize(&state, Some(&tenant), Permission::KeysEncrypt)?;
    let Json(item) = body?;
    let _permit = admit(&state, &tenant).await?;
    let context = item.context.clone();
    let sealed = encrypt_one(&state, &tenant, &key, item).await?;
    Ok((Extension(note(&state, &tenant, Some(sealed.key_version), &context).await), Json(sealed)))
}

pub async fn decrypt(
    caller: Caller,
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<Json<CiphertextItem>, JsonRejection>,
) -> Result<(Extension<Note>, Json<Opened>), ApiError> {
    let (tenant, key) = key_path(path)?;
    caller.authorize(&state, Some(&tenant), Permission::KeysDecrypt)?;
    let Json(item) = body?;
    let _permit = admit(&state, &tenant).await?;
    let (version, context) = (Ciphertext::peek_version(&item.ciphertext), item.context.clone());
    let opened = decrypt_one(&state, &tenant, &key, item).await?;
    Ok((Extension(note(&state, &tenant, version, &context).await), Json(opened)))
}

pub async fn rewrap(
    caller: Caller,
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<Json<CiphertextItem>, JsonRejection>,
) -> Result<(Extension<Note>, Json<Sealed>), ApiError> {
    let (tenant, key) = key_path(path)?;
    caller.authorize(&state, Some(&tenant), Permission::KeysDecrypt)?;
    caller.authorize(&state, Some(&tenant), Permission::KeysEncrypt)?;
    let Json(item) = body?;
    let _permit = admit(&state, &tenant).await?;
    let sealed = caught_up(&state, || state.custody.rewrap(&tenant, &key, &item.ciphertext, &item.context)).await?;
    let mut note = note(&state, &tenant, Some(sealed.key_version), &item.context).await;
    if let Some(from) = Ciphertext::peek_version(&item.ciphertext) {
        note = note.detail("from_version", from);
    }
    Ok((Extension(note), Json(sealed)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataKeyRequest {
    #[serde(default)]
    context: EncryptionContext,
    /// False returns the wrapped key only, for storing until it is needed.
    #[serde(default = "yes")]
    include_plaintext: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Serialize)]
pub struct DataKeyView {
    ciphertext: String,
    key_version: u32,
    /// Base64 of the 256-bit data key.
    #[serde(skip_serializing_if = "Option::is_none")]
    plaintext: Option<String>,
}

pub async fn data_key(
    caller: Caller,
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<Json<DataKeyRequest>, JsonRejection>,
) -> Result<(Extension<Note>, Json<DataKeyView>), ApiError> {
    let (tenant, key) = key_path(path)?;
    caller.authorize(&state, Some(&tenant), Permission::KeysEncrypt)?;
    let Json(body) = body?;
    let _permit = admit(&state, &tenant).await?;
    let data_key = caught_up(&state, || state.custody.generate_data_key(&tenant, &key, &body.context)).await?;
    let plaintext = body.include_plaintext.then(|| STANDARD.encode(data_key.plaintext.expose()));
    let Sealed { ciphertext, key_version } = data_key.sealed;
    let note = note(&state, &tenant, Some(key_version), &body.context)
        .await
        .detail("include_plaintext", body.include_plaintext);
    Ok((Extension(note), Json(DataKeyView { ciphertext, key_version, plaintext })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Batch<T> {
    items: Vec<T>,
}

/// One item's outcome in a batch: its result, or its own error.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum ItemResult<T> {
    Ok(T),
    Err { error: ItemError },
}

#[derive(Debug, Serialize)]
pub struct ItemError {
    code: &'static str,
    message: String,
}

#[derive(Debug, Serialize)]
pub struct BatchResults<T> {
    results: Vec<ItemResult<T>>,
}

fn check_batch<T>(state: &AppState, batch: &Batch<T>) -> Result<(), ApiError> {
    let max = state.max_batch_items;
    if batch.items.is_empty() || batch.items.len() > max {
        return Err(ApiError::bad_request("invalid_batch", format!("a batch holds 1 to {max} items")));
    }
    Ok(())
}

fn item<T>(result: Result<T, ApiError>) -> ItemResult<T> {
    match result {
        Ok(value) => ItemResult::Ok(value),
        Err(e) => ItemResult::Err { error: ItemError { code: e.code, message: e.message } },
    }
}

pub async fn encrypt_batch(
    caller: Caller,
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<Json<Batch<EncryptItem>>, JsonRejection>,
) -> Result<(Extension<Note>, Json<BatchResults<Sealed>>), ApiError> {
    let (tenant, key) = key_path(path)?;
    caller.authorize(&state, Some(&tenant), Permission::KeysEncrypt)?;
    let Json(batch) = body?;
    check_batch(&state, &batch)?;
    let _permit = admit(&state, &tenant).await?;
    let mut results = Vec::with_capacity(batch.items.len());
    for one in batch.items {
        results.push(item(encrypt_one(&state, &tenant, &key, one).await));
    }
    Ok((Extension(batch_note(&results)), Json(BatchResults { results })))
}

pub async fn decrypt_batch(
    caller: Caller,
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<Json<Batch<CiphertextItem>>, JsonRejection>,
) -> Result<(Extension<Note>, Json<BatchResults<Opened>>), ApiError> {
    let (tenant, key) = key_path(path)?;
    caller.authorize(&state, Some(&tenant), Permission::KeysDecrypt)?;
    let Json(batch) = body?;
    check_batch(&state, &batch)?;
    let _permit = admit(&state, &tenant).await?;
    let mut results = Vec::with_capacity(batch.items.len());
    for one in batch.items {
        results.push(item(decrypt_one(&state, &tenant, &key, one).await));
    }
    Ok((Extension(batch_note(&results)), Json(BatchResults { results })))
}
