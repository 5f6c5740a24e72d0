//! A simulated coordinator's attestation, built here, through every refusal the relying
//! party must make.
use quarry_api::attestation::VerifyOptions;
use quarry_api::statement::{Statement, STATEMENT_VERSION};
use quarry_attestation::simulated::{SimIdentity, SimProvider};
use sha2::{Digest, Sha256};

use super::*;

/// A coordinator on a simulated platform: its attestation answering `nonce`, the policy it
/// satisfies, and the certificate its TLS server presents.
struct Coordinator {
    _dir: tempfile::TempDir,
    platform_ca: String,
    unique_id: [u8; 32],
    attestation: AttestationResponse,
    tls_chain: Vec<Vec<u8>>,
}

const NONCE: [u8; 32] = [7; 32];

impl Coordinator {
    fn new() -> Coordinator {
        let dir = tempfile::tempdir().unwrap();
        let platform = SimPlatform::create(dir.path()).unwrap();
        let platform_ca = platform.ca_pem();
        let unique_id = [0x42; 32];
        let provider = SimProvider::new(
            platform,
            SimIdentity {
                unique_id,
                signer_id: [0; 32],
                product_id: 0,
                security_version: 0,
                debug: false,
            },
        )
        .unwrap();
        let root_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let root = params.self_signed(&root_key).unwrap();
        let issuer = rcgen::Issuer::new(params, root_key);
        let server_key = rcgen::KeyPair::generate().unwrap();
        let server = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&server_key, &issuer)
            .unwrap();
        let statement = Statement {
            version: STATEMENT_VERSION,
            root_ca_sha256: hex::encode(Sha256::digest(root.der())),
            mesh_ca_sha256: None,
            manifest_sha256: None,
            log_size: 0,
            log_root: hex::encode(quarry_api::merkle::root(&[])),
            simulation: true,
            nonce: Some(hex::encode(NONCE)),
            ear_key_sha256: None,
        };
        let evidence = provider
            .evidence_at(&statement.report_data(), SystemTime::now())
            .unwrap();
        Coordinator {
            _dir: dir,
            platform_ca,
            unique_id,
            attestation: AttestationResponse {
                statement,
                evidence,
                root_ca: root.pem(),
                mesh_ca: None,
                manifest: None,
                ear: None,
                ear_key: None,
            },
            tls_chain: vec![server.der().to_vec(), root.der().to_vec()],
        }
    }

    fn policy(&self, unique_id: &[u8; 32], platform_ca: &str) -> CoordinatorPolicy {
        let json = serde_json::json!({
            "TEE": "simulated",
            "UniqueID": hex::encode(unique_id),
            "SimulationPlatformCA": platform_ca,
        });
        CoordinatorPolicy::parse(json.to_string().as_bytes()).unwrap()
    }

    fn satisfied_policy(&self) -> CoordinatorPolicy {
        self.policy(&self.unique_id, &self.platform_ca)
    }

    fn options(&self) -> VerifyOptions<'_> {
        VerifyOptions {
            nonce: Some(&NONCE),
            manifest: None,
            allow_simulation: true,
            presented_chain: Some(&self.tls_chain),
            log: Some(&[]),
            now: SystemTime::now(),
        }
    }
}

#[test]
fn a_coordinator_satisfying_the_policy_is_verified_and_its_root_returned() {
    let c = Coordinator::new();
    let verified = verify(&c.attestation, &c.satisfied_policy(), &c.options()).unwrap();
    assert!(verified.statement.simulation);
    assert_eq!(verified.root_ca_der, c.tls_chain[1]);
    assert_eq!(
        verified.claims.identity.unique_id,
        Some(c.unique_id.to_vec())
    );
}

#[test]
fn a_simulated_coordinator_is_refused_unless_simulation_is_allowed() {
    let c = Coordinator::new();
    let options = VerifyOptions {
        allow_simulation: false,
        ..c.options()
    };
    let err = verify(&c.attestation, &c.satisfied_policy(), &options).unwrap_err();
    assert!(
        matches!(
            err,
            RelyingPartyError::Attestation(AttestationError::Simulation)
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("SIMULATED"), "{err}");
}

#[test]
fn another_measurement_than_the_policy_names_is_refused_naming_the_field() {
    let c = Coordinator::new();
    let policy = c.policy(&[0x43; 32], &c.platform_ca);
    let err = verify(&c.attestation, &policy, &c.options()).unwrap_err();
    match &err {
        RelyingPartyError::Attestation(AttestationError::Evidence(reason)) => {
            assert!(reason.contains("UniqueID"), "{reason}")
        }
        other => panic!("expected an evidence refusal, got {other:?}"),
    }
    assert!(
        err.to_string()
            .starts_with("coordinator verification failed: coordinator evidence: "),
        "{err}"
    );
}

#[test]
fn simulated_evidence_without_the_policy_platform_ca_is_refused() {
    let c = Coordinator::new();
    // The policy parser requires the CA for a simulated package; a policy built in code may not.
    let policy = CoordinatorPolicy {
        simulation_platform_ca: None,
        ..c.satisfied_policy()
    };
    let err = verify(&c.attestation, &policy, &c.options()).unwrap_err();
    assert!(
        matches!(
            err,
            RelyingPartyError::Attestation(AttestationError::Evidence(_))
        ),
        "{err:?}"
    );
}

#[test]
fn evidence_from_another_simulated_platform_is_refused() {
    let c = Coordinator::new();
    let other = Coordinator::new();
    let policy = c.policy(&c.unique_id, &other.platform_ca);
    let err = verify(&c.attestation, &policy, &c.options()).unwrap_err();
    assert!(
        matches!(
            err,
            RelyingPartyError::Attestation(AttestationError::Evidence(_))
        ),
        "{err:?}"
    );
}

#[test]
fn an_unusable_platform_ca_is_a_policy_error() {
    let c = Coordinator::new();
    let policy = c.policy(&c.unique_id, "not PEM");
    let err = verify(&c.attestation, &policy, &c.options()).unwrap_err();
    assert!(
        matches!(err, RelyingPartyError::SimulationPlatformCa { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with("SimulationPlatformCA in the policy: "),
        "{err}"
    );
}

#[test]
fn another_nonce_is_refused() {
    let c = Coordinator::new();
    let options = VerifyOptions {
        nonce: Some(&[8; 32]),
        ..c.options()
    };
    let err = verify(&c.attestation, &c.satisfied_policy(), &options).unwrap_err();
    assert!(
        matches!(
            err,
            RelyingPartyError::Attestation(AttestationError::Nonce { .. })
        ),
        "{err:?}"
    );
}

#[test]
fn a_tls_server_the_attested_root_did_not_issue_is_refused() {
    let c = Coordinator::new();
    let stranger = Coordinator::new();
    let options = VerifyOptions {
        presented_chain: Some(&stranger.tls_chain),
        ..c.options()
    };
    let err = verify(&c.attestation, &c.satisfied_policy(), &options).unwrap_err();
    assert!(
        matches!(
            err,
            RelyingPartyError::Attestation(AttestationError::Certificates(_))
        ),
        "{err:?}"
    );
}

#[test]
fn policy_files_that_are_missing_or_malformed_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.json");
    let err = load_policy(&missing).unwrap_err();
    assert!(
        matches!(err, RelyingPartyError::PolicyUnreadable { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("missing.json"), "{err}");
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"TEE": "simulated", "SimulationPlatformCA": 1}"#).unwrap();
    let err = load_policy(&bad).unwrap_err();
    match &err {
        RelyingPartyError::Policy { source, .. } => {
            assert_eq!(source.path, "/SimulationPlatformCA")
        }
        other => panic!("expected a policy error, got {other:?}"),
    }
}

#[test]
fn the_attestation_path_carries_the_nonce_in_hex() {
    assert_eq!(
        attestation_path(&[0xab, 0x01]),
        "/api/v2/attestation?nonce=ab01"
    );
    assert_ne!(fresh_nonce().unwrap(), fresh_nonce().unwrap());
}
