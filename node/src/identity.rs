//! The leader's identity upkeep: the platform's token-signing keys (the first key right after
//! the cluster forms, then rotation: publish ahead, retire after the last token it signed),
//! and announcing API-key secrets that expire soon. Each change of the signing keys is
//! audited in the cluster stream (`key.rotate`, actor `system`) before it is written, and a
//! refusal of the write again, as a failure.

use std::sync::Arc;
use std::time::Duration;

use custos_actors::audit::{Actor, Audit, AuditData, AuditRecord, AuditStream, EventType, Outcome};
use custos_actors::custody::Custody;
use custos_actors::identity::signing::{generate, plan, record, RotationPolicy};
use custos_config::{IdentityConfig, TokenAlgorithm};
use custos_raft::access::{ApiKeyRecord, SigningAlgorithm};
use custos_raft::{Cluster, Command, Proposal, RequestId};

/// How often the leader checks while no key exists yet (a fresh cluster's first tokens wait
/// for it), and afterwards.
const FIRST_KEY_INTERVAL: Duration = Duration::from_secs(1);

pub fn algorithm(config: &IdentityConfig) -> SigningAlgorithm {
    match config.token_algorithm {
        TokenAlgorithm::Rs256 => SigningAlgorithm::Rs256,
        TokenAlgorithm::EdDsa => SigningAlgorithm::EdDsa,
    }
}

pub fn rotation_policy(config: &IdentityConfig) -> RotationPolicy {
    RotationPolicy {
        rotation_ms: config.signing_key_rotation_days * 86_400_000,
        publish_ahead_ms: config.signing_key_publish_ahead_s * 1000,
        retire_after_ms: (config.token_ttl_s + config.token_clock_skew_s) * 1000,
    }
}

/// Most API keys looked at per round for expiry announcements; a scan resumes where the last
/// round stopped.
const KEYS_PER_ROUND: usize = 1000;

/// Runs until `stop` changes: on the leader, creates and rotates the signing keys and
/// announces expiring API keys.
pub async fn maintain(
    cluster: Cluster,
    custody: Arc<Custody>,
    audit: Arc<Audit>,
    config: IdentityConfig,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut wait = FIRST_KEY_INTERVAL;
    let mut cursor = None;
    loop {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
        if !crate::custody::is_leader(&cluster) {
            continue;
        }
        match step(&cluster, &custody, &audit, &config).await {
            Ok(have_key) => wait = if have_key { interval } else { FIRST_KEY_INTERVAL },
            Err(e) => tracing::warn!(error = %e, "signing-key upkeep failed; retrying"),
        }
        if config.api_key_expiry_warning_days > 0 {
            match announce_expiring(&cluster, &audit, &config, cursor.take()).await {
                Ok(next) => cursor = next,
                Err(e) => tracing::warn!(error = %e, "announcing expiring API keys failed; retrying"),
            }
        }
    }
}

/// Announces each unrevoked key whose current secret expires within the warning window, once
/// per secret: an `apikey.expiring` event in its tenant's stream, then the mark in governance
/// state (so a failure between the two announces twice rather than never). Returns where the
/// next round resumes.
async fn announce_expiring(
    cluster: &Cluster,
    audit: &Audit,
    config: &IdentityConfig,
    after: Option<ApiKeyRecord>,
) -> anyhow::Result<Option<ApiKeyRecord>> {
    let keys = cluster.reader().all_api_keys(after.as_ref(), KEYS_PER_ROUND)?;
    let now = crate::api::now_ms();
    let window_ms = config.api_key_expiry_warning_days * 86_400_000;
    for key in &keys {
        let due = key.revoked_at_ms.is_none()
            && key.expires_at_ms.saturating_sub(window_ms) <= now
            && key.expiry_announced_for_ms != Some(key.secret_issued_at_ms);
        if !due {
            continue;
        }
        let mut data = AuditData::new(Actor::system(), Outcome::Success);
        data.details.insert("expires_at_ms".into(), key.expires_at_ms.into());
        data.details.insert("api_key_name".into(), key.name.clone().into());
        let record = AuditRecord {
            stream: AuditStream::Tenant(key.tenant.clone()),
            kind: EventType::ApiKeyExpiring,
            subject: Some(format!("apikeys/{}", key.id)),
            data,
        };
        audit.record(record).await?;
        let proposal = Proposal {
            request_id: RequestId::new(format!("apikey-expiry/{}/{}", key.id, key.secret_issued_at_ms))?,
            proposed_at_ms: now,
            command: Command::AnnounceApiKeyExpiry {
                tenant: key.tenant.clone(),
                id: key.id.clone(),
                secret_issued_at_ms: key.secret_issued_at_ms,
            },
        };
        cluster.write(proposal).await?.outcome?;
        tracing::info!(tenant_id = %key.tenant, api_key = %key.id, expires_at_ms = key.expires_at_ms, "API key expiry announced");
    }
    Ok(if keys.len() == KEYS_PER_ROUND { keys.last().cloned() } else { None })
}

/// One round; returns whether a signing key exists afterwards.
async fn step(cluster: &Cluster, custody: &Custody, audit: &Audit, config: &IdentityConfig) -> anyhow::Result<bool> {
    let current = cluster.reader().platform_keys()?;
    let now = crate::api::now_ms();
    let keys = current.as_ref().map(|c| c.signing.as_slice()).unwrap_or_default();
    let Some(plan) = plan(keys, now, rotation_policy(config)) else { return Ok(true) };
    let platform = match &current {
        Some(current) => current.custody.clone(),
        None => custody.provision_platform().await?,
    };
    let mut keep = plan.keep;
    let mut data = AuditData::new(Actor::system(), Outcome::Success);
    let retired: Vec<&str> =
        keys.iter().filter(|k| !keep.iter().any(|kept| kept.kid == k.kid)).map(|k| k.kid.as_str()).collect();
    data.details.insert("retired_kids".into(), retired.into());
    if let Some(activates_at_ms) = plan.new_key_activates_at_ms {
        let algorithm = algorithm(config);
        // RSA generation takes a while; keep it off the async threads.
        let generated = tokio::task::spawn_blocking(move || generate(algorithm)).await??;
        let kek = custody.platform_kek(&platform).await?;
        keep.push(record(&kek, &generated, now, activates_at_ms));
        data.key_id = Some(generated.kid.clone());
        data.details.insert("activates_at_ms".into(), activates_at_ms.into());
        tracing::info!(kid = %generated.kid, activates_at_ms, "new token-signing key");
    }
    let expected_revision = current.as_ref().map_or(0, |c| c.revision);
    // The revision check keeps a retry after a lost answer from rotating twice; the id names
    // the new key, so a try's event and its outcome belong together.
    let request_id = match &data.key_id {
        Some(kid) => format!("signing-keys/{expected_revision}/{kid}"),
        None => format!("signing-keys/{expected_revision}"),
    };
    data.request_id = Some(request_id.clone());
    let event = |data| AuditRecord {
        stream: AuditStream::Cluster,
        kind: EventType::KeyRotate,
        subject: Some("signing-keys".to_string()),
        data,
    };
    let mut refused = data.clone();
    audit.record(event(data)).await?;
    let proposal = Proposal {
        request_id: RequestId::new(request_id)?,
        proposed_at_ms: now,
        command: Command::PutSigningKeys { custody: platform, keys: keep, expected_revision },
    };
    if let Err(rejection) = cluster.write(proposal).await?.outcome {
        refused.outcome = Outcome::Failure;
        refused.reason = Some("scheduled_work_refused".into());
        refused.details.insert("error".into(), rejection.to_string().into());
        audit.record(event(refused)).await?;
        return Err(rejection.into());
    }
    Ok(true)
}
