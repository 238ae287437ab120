//! Platform tokens: signed with a key held by key custody, verified against the published
//! keys, and refused for every kind of forgery or misuse.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use custos_actors::custody::edge::MemoryEdge;
use custos_actors::custody::master::MasterKey;
use custos_actors::custody::provider::SealedLocal;
use custos_actors::custody::{Custody, SecretKey};
use custos_actors::identity::signing::{generate, record};
use custos_actors::identity::{PlatformClaims, TokenError, TokenService, TokenSettings};
use custos_raft::access::SigningAlgorithm;
use custos_raft::{Command, CoreProviderKind, Proposal, Proposals, RequestId, TypeConfig};
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

/// Real time: the verifier checks expiry against the system clock.
fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

fn settings(algorithm: SigningAlgorithm) -> TokenSettings {
    TokenSettings { issuer: "custos".into(), audience: "custos-api".into(), ttl_s: 300, skew_s: 30, algorithm }
}

fn claims(iat: u64, exp: u64) -> PlatformClaims {
    PlatformClaims {
        sub: "apikey:k1".into(),
        iss: "custos".into(),
        aud: "custos-api".into(),
        exp,
        iat,
        nbf: iat,
        jti: "j1".into(),
        roles: vec![],
        tenant_id: Some("acme".into()),
        permissions: vec!["keys:encrypt".into()],
        lob: vec![],
        mfa_verified: false,
        idp: "custos".into(),
        idp_sub: "k1".into(),
        sid: None,
    }
}

/// A store with one active signing key of `algorithm`, and token services over it.
struct Fixture {
    _dir: tempfile::TempDir,
    reader: custos_raft::GovernanceReader,
    custody: Arc<Custody>,
    kid: String,
}

impl Fixture {
    async fn new(algorithm: SigningAlgorithm) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let (_log, mut sm, reader) =
            custos_raft::store::open(dir.path(), custos_raft::store::StoreOptions::default()).unwrap();
        let provider = Arc::new(SealedLocal::new(MasterKey::new(SecretKey::generate())));
        let edge = Arc::new(MemoryEdge::new(64, Duration::from_secs(60)));
        let custody = Arc::new(Custody::new(reader.clone(), vec![provider], CoreProviderKind::SealedLocal, edge));
        let platform = custody.provision_platform().await.unwrap();
        let generated = generate(algorithm).unwrap();
        let kek = custody.platform_kek(&platform).await.unwrap();
        let key = record(&kek, &generated, 0, 0);
        let command = Command::PutSigningKeys { custody: platform, keys: vec![key], expected_revision: 0 };
        let proposal = Proposal { request_id: RequestId::new("keys").unwrap(), proposed_at_ms: 0, command };
        let entry: Entry<TypeConfig> = Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), 1),
            payload: EntryPayload::Normal(Proposals(vec![proposal])),
        };
        sm.apply([entry]).await.unwrap();
        Fixture { _dir: dir, reader, custody, kid: generated.kid }
    }

    fn service(&self, settings: TokenSettings) -> TokenService {
        TokenService::new(self.reader.clone(), self.custody.clone(), settings)
    }
}

fn rejected(result: Result<PlatformClaims, TokenError>, reason: &str) {
    match result {
        Err(TokenError::Invalid(why)) => assert_eq!(why, reason),
        other => panic!("expected a refusal ({reason}), got {other:?}"),
    }
}

fn segments(token: &str) -> Vec<String> {
    token.split('.').map(str::to_string).collect()
}

#[tokio::test]
async fn tokens_verify_and_every_forgery_is_refused() {
    for algorithm in [SigningAlgorithm::Rs256, SigningAlgorithm::EdDsa] {
        let fixture = Fixture::new(algorithm).await;
        let service = fixture.service(settings(algorithm));
        let now = now_ms();

        // A token verifies and carries its claims; the JWKS names the key.
        let (token, exp) = service.issue(now, claims).await.unwrap();
        assert_eq!(exp, now / 1000 + 300);
        let verified = service.verify(&token).unwrap();
        assert_eq!((verified.sub.as_str(), verified.tenant_id.as_deref()), ("apikey:k1", Some("acme")));
        let jwks = service.jwks().unwrap();
        assert_eq!(jwks["keys"][0]["kid"], fixture.kid.as_str());
        assert_eq!(jwks["keys"][0]["alg"], algorithm.as_str());

        // Issued for another issuer or audience: refused.
        let other_iss = fixture.service(TokenSettings { issuer: "someone-else".into(), ..settings(algorithm) });
        rejected(other_iss.verify(&token), "wrong issuer");
        let other_aud = fixture.service(TokenSettings { audience: "other-api".into(), ..settings(algorithm) });
        rejected(other_aud.verify(&token), "wrong audience");

        // Expired beyond the skew; within the skew it still passes.
        let (old, _) = service.issue(0, |iat, _| claims(iat, now / 1000 - 31)).await.unwrap();
        rejected(service.verify(&old), "expired");
        let (recent, _) = service.issue(0, |iat, _| claims(iat, now / 1000 + 3600)).await.unwrap();
        assert!(service.verify(&recent).is_ok());

        // Tampered claims: another tenant in the payload, the original signature.
        let mut parts = segments(&token);
        let mut forged = claims(now / 1000, now / 1000 + 300);
        forged.tenant_id = Some("globex".into());
        parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        rejected(service.verify(&parts.join(".")), "bad signature");

        // Signed by a key that is not published, under the published kid.
        let impostor = generate(algorithm).unwrap();
        let mut header = jsonwebtoken::Header::new(match algorithm {
            SigningAlgorithm::Rs256 => jsonwebtoken::Algorithm::RS256,
            SigningAlgorithm::EdDsa => jsonwebtoken::Algorithm::EdDSA,
        });
        header.kid = Some(fixture.kid.clone());
        let key = match algorithm {
            SigningAlgorithm::Rs256 => jsonwebtoken::EncodingKey::from_rsa_der(&impostor.private_der),
            SigningAlgorithm::EdDsa => jsonwebtoken::EncodingKey::from_ed_der(&impostor.private_der),
        };
        let claims_now = claims(now / 1000, now / 1000 + 300);
        let forged = jsonwebtoken::encode(&header, &claims_now, &key).unwrap();
        rejected(service.verify(&forged), "bad signature");
        // ... and under a kid nobody published.
        header.kid = Some("unknown".into());
        rejected(service.verify(&jsonwebtoken::encode(&header, &claims_now, &key).unwrap()), "unknown kid");
        header.kid = None;
        rejected(service.verify(&jsonwebtoken::encode(&header, &claims_now, &key).unwrap()), "no kid");

        // alg=none, and HS256 keyed with the public key (algorithm confusion).
        let none_header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"none","kid":"{}"}}"#, fixture.kid));
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims_now).unwrap());
        rejected(service.verify(&format!("{none_header}.{payload}.")), "malformed");
        let mut hs = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        hs.kid = Some(fixture.kid.clone());
        let confused = jsonwebtoken::encode(
            &hs,
            &claims_now,
            &jsonwebtoken::EncodingKey::from_secret(&jwks["keys"][0].to_string().into_bytes()),
        )
        .unwrap();
        rejected(service.verify(&confused), "algorithm does not match the key");

        // Garbage.
        rejected(service.verify("eyJ.not.a-token"), "malformed");
    }
}

#[tokio::test]
async fn no_signing_key_means_no_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, _sm, reader) =
        custos_raft::store::open(dir.path(), custos_raft::store::StoreOptions::default()).unwrap();
    let provider = Arc::new(SealedLocal::new(MasterKey::new(SecretKey::generate())));
    let edge = Arc::new(MemoryEdge::new(64, Duration::from_secs(60)));
    let custody = Arc::new(Custody::new(reader.clone(), vec![provider], CoreProviderKind::SealedLocal, edge));
    let service = TokenService::new(reader, custody, settings(SigningAlgorithm::EdDsa));
    assert!(matches!(service.issue(now_ms(), claims).await, Err(TokenError::NoSigningKey)));
    assert_eq!(service.jwks().unwrap()["keys"].as_array().unwrap().len(), 0);
}
