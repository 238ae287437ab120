//! `custos bench auth`: authorization decisions, in-process (p50/p99 per decision, from the
//! compiled policy alone and through the node's policy cache, with and without a Rego
//! constraint) and over HTTPS (`POST …/authorize` authenticated by an API key, at several
//! client counts, with the same keep-alive client as the other benchmarks); platform tokens
//! in-process (issue and verify, RS256 and EdDSA) and their issuance over HTTPS (an API key
//! exchanged at `POST /v1/auth/token`) next to Keycloak's client-credentials grant, over the
//! same TLS, in the same run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use custos_actors::policy::{
    AccessRequest, Attributes, Permission, PermissionSet, PolicyCache, Principal, PrincipalKind, TenantPolicy,
};
use custos_chaos_tests::{KeycloakServer, ProcessCluster};
use custos_raft::access::{AccessPolicy, AccessRule, Condition, CustomRole, SigningAlgorithm, TenantAccess};
use custos_raft::TenantId;
use reqwest::Method;
use serde_json::json;

use super::encrypt::{bench_node, entry, run_target, Target};
use crate::api::now_ms;

#[derive(Debug, Clone)]
pub struct Options {
    pub duration: Duration,
    pub clients: Vec<usize>,
    /// Decisions timed in-process per variant.
    pub decisions: u32,
    /// `deploy/scripts/keycloak.sh`, which installs and runs the peer.
    pub keycloak_script: std::path::PathBuf,
}

/// A policy of the size a real tenant has: custom roles and ABAC rules on other permissions
/// than the one asked, plus one rule (a time window) on it.
fn realistic_policy(rego: bool) -> AccessPolicy {
    let role = |name: &str, permissions: &[&str]| CustomRole {
        name: name.into(),
        description: String::new(),
        permissions: permissions.iter().map(|p| p.to_string()).collect(),
    };
    let rule = |id: &str, permissions: &[&str], conditions| AccessRule {
        id: id.into(),
        description: String::new(),
        permissions: permissions.iter().map(|p| p.to_string()).collect(),
        conditions,
    };
    AccessPolicy {
        roles: vec![
            role("key-user", &["keys:encrypt", "keys:decrypt"]),
            role("auditor", &["audit:read", "reports:*"]),
            role("release", &["config:*", "findings:read"]),
        ],
        rules: vec![
            rule("lob", &["findings:*"], vec![Condition::LineOfBusiness]),
            rule("prod", &["config:write"], vec![Condition::Environment { allowed: vec!["prod".into()] }]),
            rule(
                "always-open",
                &["keys:decrypt"],
                vec![Condition::TimeWindow {
                    time_zone: "Europe/Paris".into(),
                    days: (0..7).collect(),
                    start_minute: 0,
                    end_minute: 1440,
                }],
            ),
        ],
        mfa_required: None,
        rego: rego.then(|| {
            "package custos\n\ndefault allow := false\nallow if input.permission != \"keys:destroy\"\n".to_string()
        }),
        revision: 0,
    }
}

fn principal(tenant: &TenantId) -> Principal {
    Principal {
        subject: "user:bench".into(),
        kind: PrincipalKind::User,
        tenant: Some(tenant.clone()),
        roles: vec!["viewer".into(), "key-user".into()],
        permissions: PermissionSet::EMPTY,
        lob: vec!["security".into()],
        mfa_verified: false,
        idp: "bench".into(),
        idp_sub: "bench".into(),
    }
}

/// p50 and p99 in microseconds of `decide`, each call timed on its own.
fn time_decisions(calls: u32, mut decide: impl FnMut() -> bool) -> Result<(f64, f64)> {
    let mut samples = Vec::with_capacity(calls as usize);
    for _ in 0..calls {
        let start = Instant::now();
        let allowed = std::hint::black_box(decide());
        samples.push(start.elapsed());
        if !allowed {
            bail!("the benchmark's decision was denied");
        }
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    Ok((at(0.50), at(0.99)))
}

async fn in_process(calls: u32) -> Result<()> {
    let tenant = TenantId::new("bench")?;
    let who = principal(&tenant);
    let attributes = Attributes::default();
    let request = AccessRequest {
        tenant: Some(&tenant),
        permission: Permission::KeysDecrypt,
        attributes: &attributes,
        now_ms: 0,
    };
    println!("{:<44} {:>9} {:>9}", "in-process decision (keys:decrypt, allowed)", "p50 µs", "p99 µs");
    for rego in [false, true] {
        let access = TenantAccess { policy: realistic_policy(rego), ..TenantAccess::default() };
        let policy = TenantPolicy::compile(&access)?;
        let now_ms = now_ms();
        let request = AccessRequest { now_ms, ..request };
        let (p50, p99) = time_decisions(calls, || policy.decide(&who, &request).allowed)?;
        let label = if rego { "compiled policy + Rego constraint" } else { "compiled policy" };
        println!("{label:<44} {p50:>9.2} {p99:>9.2}");
    }
    // Through the cache a node decides with: revision check on the node's store, then the
    // compiled policy (as applied by Raft, here written directly by a state machine).
    let dir = tempfile::tempdir()?;
    let (_log, mut sm, reader) = custos_raft::store::open(dir.path(), custos_raft::store::StoreOptions::default())?;
    apply_policy(&mut sm, &tenant).await?;
    let cache = PolicyCache::new(reader);
    let request = AccessRequest { now_ms: now_ms(), ..request };
    let (p50, p99) = time_decisions(calls, || cache.decide(&who, &request).is_ok_and(|d| d.allowed))?;
    println!("{:<44} {p50:>9.2} {p99:>9.2}", "policy cache (revision read) + policy");
    Ok(())
}

async fn apply_policy(sm: &mut custos_raft::store::StateMachineStore, tenant: &TenantId) -> Result<()> {
    use custos_raft::{Command, CoreProviderKind, RegionLabel, TenantCustody};
    use openraft::storage::RaftStateMachine;
    let custody = TenantCustody {
        provider: CoreProviderKind::SealedLocal,
        root: Vec::new(),
        kek_wrapped: Vec::new(),
        keys_created: 0,
    };
    let create = Command::CreateTenant {
        id: tenant.clone(),
        display_name: "bench".into(),
        region: RegionLabel::new("bench")?,
        custody,
    };
    let put =
        Command::PutAccessPolicy { tenant: tenant.clone(), policy: realistic_policy(false), expected_revision: None };
    sm.apply([entry(1, create), entry(2, put)]).await?;
    Ok(())
}

/// Issue and verify rates of one token service with a key of `algorithm`, single-threaded.
async fn token_rates(algorithm: SigningAlgorithm, calls: u32) -> Result<(f64, f64)> {
    use custos_actors::custody::edge::MemoryEdge;
    use custos_actors::custody::master::MasterKey;
    use custos_actors::custody::provider::SealedLocal;
    use custos_actors::custody::{Custody, SecretKey};
    use custos_actors::identity::signing::{generate, record};
    use custos_actors::identity::{PlatformClaims, TokenService, TokenSettings};
    use custos_raft::{Command, CoreProviderKind};
    use openraft::storage::RaftStateMachine;

    let dir = tempfile::tempdir()?;
    let (_log, mut sm, reader) = custos_raft::store::open(dir.path(), custos_raft::store::StoreOptions::default())?;
    let provider = Arc::new(SealedLocal::new(MasterKey::new(SecretKey::generate())));
    let edge = Arc::new(MemoryEdge::new(64, Duration::from_secs(3600)));
    let custody = Arc::new(Custody::new(reader.clone(), vec![provider], CoreProviderKind::SealedLocal, edge));
    let platform = custody.provision_platform().await?;
    let generated = generate(algorithm)?;
    let kek = custody.platform_kek(&platform).await?;
    let key = record(&kek, &generated, 0, 0);
    sm.apply([entry(1, Command::PutSigningKeys { custody: platform, keys: vec![key], expected_revision: 0 })]).await?;
    let settings =
        TokenSettings { issuer: "custos".into(), audience: "custos-api".into(), ttl_s: 300, skew_s: 30, algorithm };
    let service = TokenService::new(reader, custody, settings);
    let claims = |iat, exp| PlatformClaims {
        sub: "apikey:bench".into(),
        iss: "custos".into(),
        aud: "custos-api".into(),
        exp,
        iat,
        nbf: iat,
        jti: "bench".into(),
        roles: vec![],
        tenant_id: Some("bench".into()),
        permissions: vec!["keys:encrypt".into(), "keys:decrypt".into()],
        lob: vec![],
        mfa_verified: false,
        idp: "custos".into(),
        idp_sub: "bench".into(),
        sid: None,
    };
    let start = Instant::now();
    let mut token = String::new();
    for _ in 0..calls {
        token = service.issue(now_ms(), claims).await?.0;
    }
    let issue = f64::from(calls) / start.elapsed().as_secs_f64();
    let start = Instant::now();
    for _ in 0..calls {
        std::hint::black_box(service.verify(&token)?);
    }
    let verify = f64::from(calls) / start.elapsed().as_secs_f64();
    Ok((issue, verify))
}

/// One node holding tenant `bench`, signing platform tokens with `algorithm`, with an API key
/// of an unlimited tier; returns once a token was issued (the leader makes the first signing
/// key right after the cluster forms).
async fn token_node(exe: &std::path::Path, algorithm: &str) -> Result<(ProcessCluster, String)> {
    let env = [
        ("CUSTOS_IDENTITY__API_KEY_TIERS__STANDARD__PER_SECOND", "1000000000"),
        ("CUSTOS_IDENTITY__TOKEN_ALGORITHM", algorithm),
    ];
    let cluster = bench_node(exe, &env).await?;
    let key = json!({ "name": "bench", "scopes": ["keys:read", "keys:encrypt", "keys:decrypt"] });
    let reply = cluster.call(1, Method::POST, "/v1/tenants/bench/apikeys", Some(&key), &[]).await?;
    let token =
        reply.body["token"].as_str().with_context(|| format!("creating the API key: {}", reply.body))?.to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.call_as(1, &token, Method::POST, "/v1/auth/token", None, &[]).await?.status != 200 {
        if Instant::now() > deadline {
            bail!("no {algorithm} platform token was issued within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok((cluster, token))
}

pub async fn run(options: Options) -> Result<()> {
    if options.decisions == 0 {
        bail!("--decisions must be at least 1");
    }
    in_process(options.decisions).await?;
    println!();
    println!("{:<44} {:>10} {:>10}", "in-process platform tokens (one thread)", "issue/s", "verify/s");
    for (algorithm, calls) in [(SigningAlgorithm::Rs256, 2_000), (SigningAlgorithm::EdDsa, 20_000)] {
        let (issue, verify) = token_rates(algorithm, calls).await?;
        println!("{:<44} {issue:>10.0} {verify:>10.0}", algorithm.as_str());
    }
    println!();

    let exe = std::env::current_exe().context("locating the custos binary")?;
    eprintln!("starting 2 custos nodes (RS256 and EdDSA platform tokens) on 127.0.0.1 …");
    let (cluster, token) = token_node(&exe, "RS256").await?;
    let (eddsa_cluster, eddsa_token) = token_node(&exe, "EdDSA").await?;
    let policy = json!({
        "roles": [{ "name": "key-user", "permissions": ["keys:encrypt", "keys:decrypt"] }],
        "rules": [{ "id": "prod", "permissions": ["config:write"], "conditions": [{ "type": "environment", "allowed": ["prod"] }] }],
    });
    let reply = cluster.call(1, Method::PUT, "/v1/tenants/bench/policy", Some(&policy), &[]).await?;
    if reply.status != 200 {
        bail!("writing the benchmark policy: {} {}", reply.status, reply.body);
    }
    let auth: (&'static str, String) = ("authorization", format!("Bearer {token}"));
    let tls = super::audit::client_tls(&cluster)?;
    let eddsa_tls = super::audit::client_tls(&eddsa_cluster)?;
    let url = cluster.url(1, "/v1/tenants/bench/authorize")?;
    let body = json!({ "permission": "keys:decrypt" });

    // The peer: Keycloak's client-credentials grant, RS256 (its default) and EdDSA (a client
    // of its own), over HTTPS with the same certificate and CA as the first node, started
    // while the nodes idle.
    let tls_dir = cluster.root().join("tls");
    eprintln!("starting Keycloak (keycloak.sh; tens of seconds) …");
    let keycloak = KeycloakServer::start(
        &options.keycloak_script,
        Some((&tls_dir.join("node-1.pem"), &tls_dir.join("node-1-key.pem"))),
    )?;
    let keycloak_base = keycloak.https_url()?;
    let keycloak_addr = keycloak_base.trim_start_matches("https://").parse().context("a loopback address")?;
    let grant = |client: &str| {
        let form = format!("grant_type=client_credentials&client_id={client}&client_secret=custos-bench-secret");
        super::wire::post_typed(
            keycloak_addr,
            "/realms/custos/protocol/openid-connect/token",
            "application/x-www-form-urlencoded",
            None,
            form.as_bytes(),
        )
    };
    let exchange = |cluster: &ProcessCluster, token: &str| -> Result<(String, Vec<u8>)> {
        let base = cluster.url(1, "")?.trim_end_matches('/').to_string();
        let addr = base.trim_start_matches("https://").parse().context("a loopback address")?;
        let bearer = format!("Bearer {token}");
        Ok((base, super::wire::post(addr, "/v1/auth/token", ("authorization", &bearer), b"{}")))
    };
    let (custos_base, custos_rs256) = exchange(&cluster, &token)?;
    let (eddsa_base, custos_eddsa) = exchange(&eddsa_cluster, &eddsa_token)?;

    println!(
        "authorization decisions and token issuance over HTTPS/1.1 keep-alive (a connection per client), {} s per run",
        options.duration.as_secs()
    );
    println!("  custos authorize: 1 node, API key, audit fail-closed to the local log");
    println!("  custos token: an API key exchanged for a platform token (audited), one node per algorithm");
    println!("  keycloak token: client-credentials grant, realm custos, a client per algorithm");
    println!(
        "{:<9} {:<16} {:>7} {:>10} {:>9} {:>9} {:>8}",
        "system", "op", "clients", "ops/s", "p50 ms", "p99 ms", "errors"
    );
    let field: &[u8] = b"\"access_token\"";
    let mut ratios = Vec::new();
    for &clients in &options.clients {
        let targets = [
            Target::new("custos", "authorize", &url, &auth, &body, &tls)?,
            Target::raw("custos", "token RS256", &custos_base, custos_rs256.clone(), field, &tls)?,
            Target::raw("keycloak", "token RS256", &keycloak_base, grant("custos-bench"), field, &tls)?,
            Target::raw("custos", "token EdDSA", &eddsa_base, custos_eddsa.clone(), field, &eddsa_tls)?,
            Target::raw("keycloak", "token EdDSA", &keycloak_base, grant("custos-bench-eddsa"), field, &tls)?,
        ];
        let mut rates = Vec::new();
        for target in targets {
            let (system, op) = (target.system, target.op);
            let stats = run_target(target, clients, options.duration).await;
            println!(
                "{:<9} {:<16} {:>7} {:>10.0} {:>9.2} {:>9.2} {:>8}",
                system,
                op,
                clients,
                stats.ops_per_sec(),
                stats.latency_ms(0.50),
                stats.latency_ms(0.99),
                stats.errors
            );
            rates.push(stats.ops_per_sec());
        }
        ratios.push((clients, rates[1] / rates[2], rates[3] / rates[4]));
    }
    println!();
    for (clients, rs256, eddsa) in ratios {
        println!("token issuance, custos/keycloak at {clients} clients: RS256 {rs256:.2}x, EdDSA {eddsa:.2}x");
    }
    Ok(())
}
