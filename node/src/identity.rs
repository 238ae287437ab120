//! The leader's upkeep of the platform's token-signing keys: the first key right after the
//! cluster forms, then rotation (publish ahead, retire after the last token it signed).

use std::sync::Arc;
use std::time::Duration;

use custos_actors::custody::Custody;
use custos_actors::identity::signing::{generate, plan, record, RotationPolicy};
use custos_config::{IdentityConfig, TokenAlgorithm};
use custos_raft::access::SigningAlgorithm;
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

/// Runs until `stop` changes: on the leader, creates and rotates the signing keys.
pub async fn maintain_signing_keys(
    cluster: Cluster,
    custody: Arc<Custody>,
    config: IdentityConfig,
    interval: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut wait = FIRST_KEY_INTERVAL;
    loop {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
        if !crate::custody::is_leader(&cluster) {
            continue;
        }
        match step(&cluster, &custody, &config).await {
            Ok(have_key) => wait = if have_key { interval } else { FIRST_KEY_INTERVAL },
            Err(e) => tracing::warn!(error = %e, "signing-key upkeep failed; retrying"),
        }
    }
}

/// One round; returns whether a signing key exists afterwards.
async fn step(cluster: &Cluster, custody: &Custody, config: &IdentityConfig) -> anyhow::Result<bool> {
    let current = cluster.reader().platform_keys()?;
    let now = crate::api::now_ms();
    let keys = current.as_ref().map(|c| c.signing.as_slice()).unwrap_or_default();
    let Some(plan) = plan(keys, now, rotation_policy(config)) else { return Ok(true) };
    let platform = match &current {
        Some(current) => current.custody.clone(),
        None => custody.provision_platform().await?,
    };
    let mut keep = plan.keep;
    if let Some(activates_at_ms) = plan.new_key_activates_at_ms {
        let algorithm = algorithm(config);
        // RSA generation takes a while; keep it off the async threads.
        let generated = tokio::task::spawn_blocking(move || generate(algorithm)).await??;
        let kek = custody.platform_kek(&platform).await?;
        keep.push(record(&kek, &generated, now, activates_at_ms));
        tracing::info!(kid = %generated.kid, activates_at_ms, "new token-signing key");
    }
    let expected_revision = current.as_ref().map_or(0, |c| c.revision);
    let proposal = Proposal {
        // One request per revision: a retry after a lost answer replays instead of rotating twice.
        request_id: RequestId::new(format!("signing-keys/{expected_revision}"))?,
        proposed_at_ms: now,
        command: Command::PutSigningKeys { custody: platform, keys: keep, expected_revision },
    };
    cluster.write(proposal).await?.outcome?;
    Ok(true)
}
