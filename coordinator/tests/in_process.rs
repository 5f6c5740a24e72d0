//! Manifest set/update, users and secrets against a real `Core` on a simulated TEE, without
//! sockets: each refusal is asserted by its variant and its stable code (the same code the
//! JSend body, the log line and the metric label carry), beside the e2e tests that drive the
//! same paths over TLS.
use quarry_attestation::simulated::SimPlatform;
use quarry_coordinator::http::error::{ApiError, Denial, NotNow, RequestFault};
use quarry_coordinator::manifest::{set as manifest_ops, update};
use quarry_coordinator::state::{Core, Phase};
use quarry_coordinator::tee::Tee;
use quarry_coordinator::users::secrets::{self as secrets_api, SetSecretsRequest};

struct Fixture {
    _dir: tempfile::TempDir,
    core: Core,
    alice: Vec<u8>,
    bob: Vec<u8>,
    eve: Vec<u8>,
    pems: [String; 3],
}

fn user_cert(name: &str) -> (String, Vec<u8>) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, name.to_string());
    let cert = p.self_signed(&key).unwrap();
    (cert.pem(), cert.der().to_vec())
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let sim = dir.path().join("sim");
    SimPlatform::create(&sim).unwrap();
    let core = Core::open(
        &dir.path().join("data"),
        Tee::simulated(&sim, None).unwrap(),
    )
    .await
    .unwrap();
    let (a_pem, alice) = user_cert("alice");
    let (b_pem, bob) = user_cert("bob");
    let (e_pem, eve) = user_cert("eve");
    Fixture {
        _dir: dir,
        core,
        alice,
        bob,
        eve,
        pems: [a_pem, b_pem, e_pem],
    }
}

impl Fixture {
    /// Alice writes and reads `note`, alice and bob update the manifest (both must agree),
    /// eve is a user without roles.
    fn manifest(&self, version: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "Packages": {"web": {"TEE": "simulated", "SignerID": "00".repeat(32), "ProductID": 1, "SecurityVersion": 1}},
            "Marbles": {"web": {"Package": "web", "Parameters": {"Env": {"VERSION": version}}}},
            "Secrets": {
                "note": {"Type": "plain", "UserDefined": true},
                "private_k": {"Type": "symmetric-key", "Size": 256}
            },
            "Users": {
                "alice": {"Certificate": self.pems[0], "Roles": ["notes", "updater"]},
                "bob": {"Certificate": self.pems[1], "Roles": ["updater"]},
                "eve": {"Certificate": self.pems[2], "Roles": []}
            },
            "Roles": {
                "notes": {"ResourceType": "Secrets", "ResourceNames": ["note"], "Actions": ["ReadSecret", "WriteSecret"]},
                "updater": {"ResourceType": "Manifest", "Actions": ["UpdateManifest"]}
            }
        }))
        .unwrap()
    }

    async fn running(&self) {
        manifest_ops::set_manifest(&self.core, self.manifest("1"))
            .await
            .expect("the manifest is accepted");
    }

    async fn write_note(&self, peer: Option<&[u8]>, value: &[u8]) -> Result<(), ApiError> {
        let req: SetSecretsRequest = serde_json::from_value(serde_json::json!({
            "secrets": {"note": {"Key": quarry_api::bytes::b64(value)}}
        }))
        .unwrap();
        secrets_api::write(&self.core, peer, req).await
    }
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_manifest_is_wrong_state_and_a_broken_one_names_its_pointer() {
    let f = fixture().await;
    let mut broken: serde_json::Value = serde_json::from_slice(&f.manifest("1")).unwrap();
    broken["Secrets"]["tls"] = serde_json::json!({"Type": "cert-ecdsa", "Size": 521});
    let err = manifest_ops::set_manifest(&f.core, serde_json::to_vec(&broken).unwrap())
        .await
        .err()
        .expect("ECDSA 521 is refused");
    assert_eq!(err.code(), "invalid-manifest");
    let ApiError::Request(RequestFault::InvalidManifest { pointer, .. }) = &err else {
        panic!("expected an invalid manifest: {err:?}");
    };
    assert_eq!(pointer, "/Secrets/tls/Size");
    assert_eq!(
        err.fail_data().pointer.as_deref(),
        Some("/Secrets/tls/Size")
    );
    assert!(
        matches!(f.core.view().phase.as_ref(), Phase::AcceptingManifest),
        "a refused manifest changes nothing"
    );

    f.running().await;
    let err = manifest_ops::set_manifest(&f.core, f.manifest("2"))
        .await
        .err()
        .expect("state 3 takes updates, not a new manifest");
    assert!(
        matches!(err, ApiError::NotNow(NotNow::WrongState(_))),
        "{err:?}"
    );
    assert_eq!(err.code(), "wrong-state");
    assert_eq!(err.status(), 409);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_read_and_written_within_roles_only() {
    let f = fixture().await;
    f.running().await;
    let note = names(&["note"]);
    // Nobody, and a certificate that is no user, is unauthenticated.
    for peer in [None, Some(user_cert("mallory").1)] {
        let err = secrets_api::read(&f.core, peer.as_deref(), &note).unwrap_err();
        assert!(
            matches!(err, ApiError::Denied(Denial::Unauthenticated(_))),
            "{err:?}"
        );
        assert_eq!(err.code(), "unauthenticated");
        assert_eq!(err.status(), 401);
    }
    // A user without the role is forbidden, for reading and for writing.
    let err = secrets_api::read(&f.core, Some(&f.eve), &note).unwrap_err();
    assert!(
        matches!(err, ApiError::Denied(Denial::Forbidden(_))),
        "{err:?}"
    );
    let err = f.write_note(Some(&f.eve), b"x").await.unwrap_err();
    assert_eq!(err.code(), "forbidden");
    // Not set yet: not found; then written and read back exactly.
    let err = secrets_api::read(&f.core, Some(&f.alice), &note).unwrap_err();
    assert!(
        matches!(err, ApiError::Request(RequestFault::NotFound(_))),
        "{err:?}"
    );
    f.write_note(Some(&f.alice), b"meet at noon").await.unwrap();
    let read = secrets_api::read(&f.core, Some(&f.alice), &note).unwrap();
    assert_eq!(
        read["note"].private,
        quarry_api::bytes::b64(b"meet at noon")
    );
    // A private secret is never readable (no role may even name it: the manifest rules).
    let err = secrets_api::read(&f.core, Some(&f.alice), &names(&["private_k"])).unwrap_err();
    assert_eq!(err.code(), "forbidden");
    // Unknown names and empty requests are the caller's mistake.
    let err = secrets_api::read(&f.core, Some(&f.alice), &[]).unwrap_err();
    assert_eq!(err.code(), "bad-request");
    let err = secrets_api::read(&f.core, Some(&f.alice), &names(&["nope"])).unwrap_err();
    assert!(
        matches!(err, ApiError::Denied(_) | ApiError::Request(_)),
        "{err:?}"
    );
    // Before a manifest, secrets are a wrong-state request.
    let g = fixture().await;
    let err = secrets_api::read(&g.core, Some(&g.alice), &note).unwrap_err();
    assert_eq!(err.code(), "wrong-state");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_update_needs_every_updater_and_refuses_the_rest() {
    let f = fixture().await;
    f.running().await;
    let before = match f.core.view().phase.as_ref() {
        Phase::Running(d) => d.fingerprint,
        _ => panic!("not running"),
    };
    let next = f.manifest("2");
    // eve may not propose; nobody is unauthenticated.
    let err = update::propose(&f.core, Some(&f.eve), next.clone())
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), "forbidden");
    let err = update::propose(&f.core, None, next.clone())
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), "unauthenticated");
    // A broken proposal is refused with its pointer and leaves nothing pending.
    let mut broken: serde_json::Value = serde_json::from_slice(&next).unwrap();
    broken["Marbles"]["web"]["Package"] = "nope".into();
    let err = update::propose(
        &f.core,
        Some(&f.alice),
        serde_json::to_vec(&broken).unwrap(),
    )
    .await
    .err()
    .unwrap();
    assert_eq!(err.code(), "invalid-manifest");
    assert!(update::get_pending(&f.core).await.is_err());

    let proposed = update::propose(&f.core, Some(&f.alice), next.clone())
        .await
        .unwrap();
    assert_eq!(proposed.missing_acknowledgments, 1);
    assert_eq!(proposed.missing_users, ["bob"]);
    let err = update::propose(&f.core, Some(&f.bob), next.clone())
        .await
        .err()
        .unwrap();
    assert_eq!(err.code(), "wrong-state", "one pending update at a time");
    // Acknowledging other bytes than the pending ones is refused and changes nothing.
    let err = update::acknowledge(&f.core, Some(&f.bob), f.manifest("3"))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, ApiError::Request(_) | ApiError::Denied(_)),
        "{err:?}"
    );
    let done = update::acknowledge(&f.core, Some(&f.bob), next.clone())
        .await
        .unwrap();
    assert_eq!(done.missing_acknowledgments, 0);
    match f.core.view().phase.as_ref() {
        Phase::Running(d) => {
            assert_ne!(d.fingerprint, before);
            assert_eq!(d.raw, next);
        }
        _ => panic!("not running"),
    }
}
