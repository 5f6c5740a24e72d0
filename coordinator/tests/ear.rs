//! The coordinator's EAR from a real `Core` on a simulated TEE: the answer of
//! `attestation::answer(…, ear = true)` verifies as a relying party would (policy = the
//! coordinator's own printed policy), the EAR key is the same after a restart and is the one
//! the version-2 statement binds, marble submods follow the manifest, and Recovery has no EAR.
use quarry_api::attestation::{CoordinatorPolicy, VerifyOptions};
use quarry_attestation::simulated::SimPlatform;
use quarry_coordinator::http::error::{ApiError, NotNow};
use quarry_coordinator::state::{Core, Phase};
use quarry_coordinator::tee::Tee;
use quarry_trust::relying_party;

const NONCE: [u8; 16] = [3; 16];

async fn open(dir: &std::path::Path) -> Core {
    Core::open(
        &dir.join("data"),
        Tee::simulated(&dir.join("sim"), None).unwrap(),
    )
    .await
    .unwrap()
}

/// The answer verified by the relying party's code, then its EAR checked: the claims set.
fn relying_party_reads(
    core: &Core,
    att: &quarry_api::attestation::AttestationResponse,
) -> serde_json::Value {
    let policy = CoordinatorPolicy::parse(core.tee.policy.to_string().as_bytes()).unwrap();
    let options = VerifyOptions {
        nonce: Some(&NONCE),
        manifest: None,
        allow_simulation: true,
        presented_chain: None,
        log: None,
        now: std::time::SystemTime::now(),
    };
    let verified = relying_party::verify(att, &policy, &options).unwrap();
    quarry_trust::ear::verify_ear(att, &verified).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ear_is_bound_stable_across_restarts_and_absent_in_recovery() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    SimPlatform::create(&dir.join("sim")).unwrap();
    let core = open(dir).await;

    // Without format=ear: version 1, exactly as before.
    let plain = quarry_coordinator::attestation::answer(&core, Some(&NONCE), false)
        .await
        .unwrap();
    assert_eq!(plain.statement.version, 1);
    assert!(
        plain.statement.ear_key_sha256.is_none() && plain.ear.is_none() && plain.ear_key.is_none()
    );

    // State 2: only the coordinator's submod, simulation contraindicated.
    let att = quarry_coordinator::attestation::answer(&core, Some(&NONCE), true)
        .await
        .unwrap();
    assert_eq!(att.statement.version, 2);
    let claims = relying_party_reads(&core, &att);
    let submods = claims["submods"].as_object().unwrap();
    assert_eq!(submods.len(), 1, "{claims}");
    assert_eq!(submods["coordinator"]["ear_status"], "contraindicated");
    assert_eq!(claims["ear_status"], "contraindicated");
    assert_eq!(
        submods["coordinator"]["ear_attester_claims"]["quarry_unique_id"],
        core.tee.policy["UniqueID"]
    );

    // State 3: one submod per marble type, with the package as enforced.
    let manifest = serde_json::json!({
        "Packages": {
            "sim": {"TEE": "simulated", "SignerID": "00".repeat(32), "ProductID": 1, "SecurityVersion": 1},
            "tdx": {"TEE": "tdx", "MRTD": "ab".repeat(48)}
        },
        "Marbles": {"web": {"Package": "sim"}, "vault": {"Package": "tdx"}}
    });
    quarry_coordinator::manifest::set::set_manifest(&core, serde_json::to_vec(&manifest).unwrap())
        .await
        .unwrap();
    assert!(matches!(core.view().phase.as_ref(), Phase::Running(_)));
    let running = quarry_coordinator::attestation::answer(&core, Some(&NONCE), true)
        .await
        .unwrap();
    let claims = relying_party_reads(&core, &running);
    let web = &claims["submods"]["marble/web"];
    assert_eq!(web["ear_status"], "contraindicated");
    assert_eq!(
        web["ear_verifier_claims"]["quarry_reference_values"]["ProductID"],
        1
    );
    let vault = &claims["submods"]["marble/vault"];
    assert_eq!(vault["ear_status"], "none");
    assert_eq!(
        vault["ear_verifier_claims"]["quarry_reference_values"]["MRTD"],
        "ab".repeat(48)
    );
    assert_eq!(
        running.ear_key, att.ear_key,
        "one key for the deployment, whatever its state"
    );

    // After a restart: the same key (derived from the sealed root secret), still bound.
    drop(core);
    let core = open(dir).await;
    let again = quarry_coordinator::attestation::answer(&core, Some(&NONCE), true)
        .await
        .unwrap();
    assert_eq!(again.ear_key, att.ear_key);
    assert_eq!(again.statement.ear_key_sha256, att.statement.ear_key_sha256);
    relying_party_reads(&core, &again);

    // Recovery (the sealed key is gone): no EAR, and nothing derived from a placeholder.
    drop(core);
    std::fs::remove_file(dir.join("data").join("sealed-key.json")).unwrap();
    let core = open(dir).await;
    assert!(matches!(core.view().phase.as_ref(), Phase::Recovery { .. }));
    let err = quarry_coordinator::attestation::answer(&core, Some(&NONCE), true)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ApiError::NotNow(NotNow::WrongState(_))),
        "{err:?}"
    );
    assert!(err.to_string().contains("Recovery"), "{err}");
    // The statement alone is still answered in Recovery.
    quarry_coordinator::attestation::answer(&core, Some(&NONCE), false)
        .await
        .unwrap();
}
