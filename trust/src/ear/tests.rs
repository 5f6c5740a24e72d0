//! A simulated coordinator's EAR, built here with the same claims rules the coordinator uses,
//! read by Veraison's `ear` crate and checked by [`verify_ear`] through every refusal.
use std::time::SystemTime;

use ::ear::{Algorithm, Ear, TrustTier};
use quarry_api::attestation::{AttestationResponse, VerifyOptions};
use quarry_api::ear::{b64url, claims_set, EarInput};
use quarry_api::statement::{Statement, STATEMENT_VERSION, STATEMENT_VERSION_EAR};
use quarry_attestation::simulated::{SimIdentity, SimPlatform, SimProvider};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};
use sha2::{Digest, Sha256};

use super::*;
use crate::relying_party;

const NONCE: [u8; 32] = [5; 32];

const MANIFEST: &[u8] = br#"{
  "Packages": {
    "backend": {"TEE": "sgx", "SignerID": "1111111111111111111111111111111111111111111111111111111111111111", "ProductID": 1, "SecurityVersion": 4},
    "dev": {"TEE": "simulated", "UniqueID": "2222222222222222222222222222222222222222222222222222222222222222"}
  },
  "Marbles": {
    "api": {"Package": "backend"},
    "worker": {"Package": "backend"},
    "devtool": {"Package": "dev"}
  }
}"#;

/// An ES256 key, as the coordinator's EAR key or an impostor's.
struct Key {
    pair: EcdsaKeyPair,
}

impl Key {
    fn new() -> Key {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        Key {
            pair: EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
                .unwrap(),
        }
    }

    fn spki(&self) -> Vec<u8> {
        [&P256_SPKI_PREFIX[..], self.pair.public_key().as_ref()].concat()
    }

    fn pem(&self) -> String {
        quarry_api::bytes::encode_pem("PUBLIC KEY", &self.spki())
    }

    /// The JWK the `ear` crate verifies with.
    fn jwk(&self) -> Vec<u8> {
        let point = self.pair.public_key().as_ref();
        serde_json::to_vec(&serde_json::json!({
            "kty": "EC", "crv": "P-256",
            "x": b64url(&point[1..33]), "y": b64url(&point[33..65]),
        }))
        .unwrap()
    }

    fn sign(&self, claims: &serde_json::Value) -> String {
        let input = quarry_api::ear::signing_input(claims);
        let sig = self
            .pair
            .sign(&SystemRandom::new(), input.as_bytes())
            .unwrap();
        quarry_api::ear::compact(&input, sig.as_ref())
    }
}

/// A simulated coordinator whose version-2 statement binds `bound`, its attestation verified,
/// and an EAR signed by `signer` over the verified claims.
struct Attested {
    _dir: tempfile::TempDir,
    attestation: AttestationResponse,
    verified: Verified,
}

fn attested(bound: &Key, signer: &Key) -> Attested {
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
    let statement = Statement {
        version: STATEMENT_VERSION_EAR,
        root_ca_sha256: hex::encode(Sha256::digest(root.der())),
        mesh_ca_sha256: None,
        manifest_sha256: Some(hex::encode(Sha256::digest(MANIFEST))),
        log_size: 0,
        log_root: hex::encode(quarry_api::merkle::root(&[])),
        simulation: true,
        nonce: Some(hex::encode(NONCE)),
        ear_key_sha256: Some(quarry_api::ear::key_digest(&bound.spki())),
    };
    let evidence = provider
        .evidence_at(&statement.report_data(), SystemTime::now())
        .unwrap();
    let mut attestation = AttestationResponse {
        statement,
        evidence,
        root_ca: root.pem(),
        mesh_ca: None,
        manifest: Some(quarry_api::bytes::b64(MANIFEST)),
        ear: None,
        ear_key: Some(bound.pem()),
    };
    let policy = CoordinatorPolicy::parse(
        serde_json::json!({
            "TEE": "simulated",
            "UniqueID": hex::encode(unique_id),
            "SimulationPlatformCA": platform_ca,
        })
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    let options = VerifyOptions {
        nonce: Some(&NONCE),
        manifest: None,
        allow_simulation: true,
        presented_chain: None,
        log: Some(&[]),
        now: SystemTime::now(),
    };
    let verified = relying_party::verify(&attestation, &policy, &options).unwrap();
    let manifest = quarry_api::manifest::parse(MANIFEST).unwrap().manifest;
    let set = claims_set(&EarInput {
        claims: &verified.claims,
        statement: &verified.statement,
        manifest: Some(&manifest),
        build: "quarry-coordinator test",
        iat: 1_800_000_000,
    });
    attestation.ear = Some(signer.sign(&set));
    Attested {
        _dir: dir,
        attestation,
        verified,
    }
}

use quarry_api::attestation::CoordinatorPolicy;

fn token(a: &Attested) -> &str {
    a.attestation.ear.as_deref().unwrap()
}

/// The token with the byte at `index` of segment `segment` (0 header, 1 payload, 2
/// signature) changed, still base64url.
fn tampered(token: &str, segment: usize, index: usize) -> String {
    let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
    let mut bytes = parts[segment].clone().into_bytes();
    bytes[index] = if bytes[index] == b'A' { b'B' } else { b'A' };
    parts[segment] = String::from_utf8(bytes).unwrap();
    parts.join(".")
}

#[test]
fn the_ear_crate_reads_the_coordinator_submod_and_one_submod_per_marble_type() {
    let key = Key::new();
    let a = attested(&key, &key);
    let ear = Ear::from_jwt_jwk(token(&a), Algorithm::ES256, &key.jwk()).unwrap();
    assert_eq!(ear.profile, quarry_api::ear::EAR_PROFILE);
    assert_eq!(ear.profile, ::ear::EAR_PROFILE);
    assert_eq!(ear.iat, 1_800_000_000);
    assert_eq!(ear.vid.developer, "Quarry");
    assert_eq!(ear.vid.build, "quarry-coordinator test");
    let names: Vec<&str> = ear.submods.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "coordinator",
            "marble/api",
            "marble/devtool",
            "marble/worker"
        ]
    );
    // Simulation: never affirming, and the vector says why.
    let coordinator = &ear.submods["coordinator"];
    assert_eq!(coordinator.status, TrustTier::Contraindicated);
    assert_eq!(coordinator.trust_vector.hardware.get(), 97);
    assert_eq!(coordinator.trust_vector.runtime_opaque.get(), 96);
    assert_eq!(coordinator.trust_vector.storage_opaque.get(), 32);
    for unset in [
        coordinator.trust_vector.instance_identity,
        coordinator.trust_vector.configuration,
        coordinator.trust_vector.executables,
        coordinator.trust_vector.file_system,
        coordinator.trust_vector.sourced_data,
    ] {
        assert!(!unset.is_set(), "{unset:?}");
    }
    assert!(coordinator
        .verifier_claims
        .contains_key("quarry_simulation"));
    assert_eq!(
        coordinator.policy_ids,
        [quarry_api::ear::COORDINATOR_POLICY_ID]
    );
    // Hardware packages: reference values, no appraisal of an instance.
    for t in ["marble/api", "marble/worker"] {
        let m = &ear.submods[t];
        assert_eq!(m.status, TrustTier::None, "{t}");
        assert!(!m.trust_vector.any_set(), "{t}");
        assert!(m.verifier_claims.contains_key("quarry_reference_values"));
        assert!(m.policy_ids[0].ends_with("#/Packages/backend"), "{t}");
    }
    let dev = &ear.submods["marble/devtool"];
    assert_eq!(dev.status, TrustTier::Contraindicated);
    assert_eq!(dev.trust_vector.hardware.get(), 97);
    assert_eq!(ear.status, Some(TrustTier::Contraindicated));
    assert_eq!(
        ear.nonce.as_ref().map(|n| serde_json::to_value(n).unwrap()),
        Some(serde_json::json!(b64url(&NONCE)))
    );

    let claims = verify_ear(&a.attestation, &a.verified).unwrap();
    assert_eq!(
        claims["quarry_statement_sha256"],
        hex::encode(a.verified.statement.digest())
    );
    assert_eq!(
        claims["submods"]["marble/api"]["ear_verifier_claims"]["quarry_reference_values"]
            ["SecurityVersion"],
        4
    );
}

#[test]
fn a_changed_byte_of_payload_or_signature_is_refused_by_the_ear_crate_and_by_quarry() {
    let key = Key::new();
    let a = attested(&key, &key);
    for (segment, index) in [(1, 10), (1, 40), (2, 5), (2, 80)] {
        let bad = tampered(token(&a), segment, index);
        assert!(
            Ear::from_jwt_jwk(&bad, Algorithm::ES256, &key.jwk()).is_err(),
            "ear crate accepted segment {segment} byte {index}"
        );
        let mut att = a.attestation.clone();
        att.ear = Some(bad);
        let err = verify_ear(&att, &a.verified).unwrap_err();
        assert!(
            matches!(err, EarError::Signature | EarError::Malformed(_)),
            "segment {segment} byte {index}: {err:?}"
        );
    }
}

#[test]
fn an_ear_signed_by_another_key_is_refused() {
    let bound = Key::new();
    let impostor = Key::new();
    // The impostor's token with the bound key: the signature does not verify.
    let a = attested(&bound, &impostor);
    assert_eq!(
        verify_ear(&a.attestation, &a.verified).unwrap_err(),
        EarError::Signature
    );
    // The impostor's token with the impostor's key: not the key the quote binds.
    let mut att = a.attestation.clone();
    att.ear_key = Some(impostor.pem());
    let err = verify_ear(&att, &a.verified).unwrap_err();
    assert!(matches!(err, EarError::KeyNotBound { .. }), "{err:?}");
    assert!(err
        .to_string()
        .contains("not the key the attested statement binds"));
}

#[test]
fn an_ear_of_another_statement_or_a_version_1_statement_is_refused() {
    let key = Key::new();
    let a = attested(&key, &key);
    let mut other = a.verified.clone();
    other.statement.log_size = 1;
    let err = verify_ear(&a.attestation, &other).unwrap_err();
    assert!(matches!(err, EarError::Statement { .. }), "{err:?}");

    let mut v1 = a.verified.clone();
    v1.statement.version = STATEMENT_VERSION;
    v1.statement.ear_key_sha256 = None;
    assert_eq!(
        verify_ear(&a.attestation, &v1).unwrap_err(),
        EarError::Unbound(1)
    );

    let mut no_ear = a.attestation.clone();
    no_ear.ear = None;
    let err = verify_ear(&no_ear, &a.verified).unwrap_err();
    assert!(err.to_string().contains("field ear"), "{err}");
}
