//! Recovery end to end with the real binaries: a deployment with three RSA recovery keys and
//! RecoveryThreshold 2 moves to another simulated platform, comes up in Recovery (state 1),
//! refuses wrong secrets, and is recovered with two of the three Shamir shares through
//! `quarry recover`: same root CA, same shared secrets, same MaxActivations budget. Then
//! the rollback evidence (an older state.log restored) and a tampered state both keep it in
//! Recovery, where even valid recovery secrets never yield a running coordinator.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use quarry_attestation::simulated::{SimIdentity, SimPlatform, SimProvider};
use quarry_e2e::{
    activate, bin, fetch_root_unverified, https, jsend, run, tls_config, Coordinator,
};
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use rsa::sha2::{Digest as _, Sha256};
use rsa::{Pkcs1v15Sign, RsaPrivateKey};

const LIMIT: Duration = Duration::from_secs(120);
const UNIQUE_ID: [u8; 32] = [0x5a; 32];

fn quarry(args: &[&str]) -> std::process::Output {
    run(Command::new(bin("quarry")).args(args), LIMIT).unwrap()
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn provider(platform: &Path) -> SimProvider {
    SimProvider::new(
        SimPlatform::load(platform).unwrap(),
        SimIdentity {
            unique_id: UNIQUE_ID,
            signer_id: [0; 32],
            product_id: 0,
            security_version: 0,
            debug: false,
        },
    )
    .unwrap()
}

/// State code over an unverified connection (the root changes across Recovery).
async fn state(coord: &Coordinator) -> u64 {
    status(coord).await["code"].as_u64().unwrap()
}

/// `recoveryReason` of the status (absent outside Recovery).
async fn recovery_reason(coord: &Coordinator) -> Option<String> {
    status(coord).await["recoveryReason"]
        .as_str()
        .map(String::from)
}

/// The status body's data, over an unverified connection.
async fn status(coord: &Coordinator) -> serde_json::Value {
    let root = fetch_root_unverified(coord).await.unwrap();
    let (code, body) = jsend(
        https(tls_config(&root, None).unwrap())
            .unwrap()
            .get(format!("{}/api/v2/status", coord.client_url()))
            .send()
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(code, 200, "{body}");
    body["data"].clone()
}

/// Writes the coordinator's current root (unverified: tests only) and returns its path.
async fn current_root(coord: &Coordinator, dir: &Path, name: &str) -> (PathBuf, String) {
    let pem = fetch_root_unverified(coord).await.unwrap();
    let path = dir.join(name);
    std::fs::write(&path, &pem).unwrap();
    (path, pem)
}

fn recover(coord: &Coordinator, root: &Path, secret: &Path, key: &Path) -> std::process::Output {
    quarry(&[
        "recover",
        secret.to_str().unwrap(),
        "-k",
        key.to_str().unwrap(),
        "--coordinator",
        &coord.client.to_string(),
        "--root-ca",
        root.to_str().unwrap(),
    ])
}

async fn shared_env(
    coord: &Coordinator,
    root: &str,
    platform: &Path,
    ty: &str,
) -> (u16, serde_json::Value) {
    let (code, v, _) = activate(&coord.mesh_url(), root, &provider(platform), ty)
        .await
        .unwrap();
    (code, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_on_a_second_platform_with_2_of_3_shamir_shares() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (platform_a, platform_b) = (t.join("sim-a"), t.join("sim-b"));
    for p in [&platform_a, &platform_b] {
        let o = quarry(&["sim", "init", p.to_str().unwrap()]);
        assert!(o.status.success(), "{}", text(&o));
    }
    let data = t.join("data");
    let log = t.join("coordinator.log");

    // Three recovery keys (the private halves stay with the "key holders").
    let mut public = BTreeMap::new();
    let mut private: BTreeMap<String, (RsaPrivateKey, PathBuf)> = BTreeMap::new();
    for name in ["alice", "bob", "carol"] {
        let key = RsaPrivateKey::new(&mut rand_core::OsRng, 2048).unwrap();
        let path = t.join(format!("{name}.pem"));
        std::fs::write(&path, key.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes()).unwrap();
        public.insert(
            name.to_string(),
            key.to_public_key()
                .to_public_key_pem(LineEnding::LF)
                .unwrap(),
        );
        private.insert(name.to_string(), (key, path));
    }
    let manifest = serde_json::json!({
        "Packages": {"svc": {"TEE": "simulated", "UniqueID": hex::encode(UNIQUE_ID)}},
        "Marbles": {
            "svc": {
                "Package": "svc",
                "MaxActivations": 2,
                "Parameters": {"Env": {"SHARED": "{{ hex .Secrets.shared_key }}"}}
            },
            "free": {
                "Package": "svc",
                "Parameters": {"Env": {"SHARED": "{{ hex .Secrets.shared_key }}"}}
            }
        },
        "Secrets": {"shared_key": {"Type": "symmetric-key", "Size": 256, "Shared": true}},
        "RecoveryKeys": public,
        "Config": {"RecoveryThreshold": 2}
    });
    let manifest_path = t.join("manifest.json");
    std::fs::write(
        &manifest_path,
        serde_json::to_vec_pretty(&manifest).unwrap(),
    )
    .unwrap();

    // Platform A: manifest with recovery data, one activation of the budget of two.
    let mut coord = Coordinator::start(&data, &platform_a, &log).unwrap();
    let (root_path, root_pem) = current_root(&coord, t, "root.pem").await;
    let recovery_json = t.join("recovery.json");
    let o = quarry(&[
        "manifest",
        "set",
        manifest_path.to_str().unwrap(),
        "--coordinator",
        &coord.client.to_string(),
        "--root-ca",
        root_path.to_str().unwrap(),
        "--recovery-data",
        recovery_json.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let secrets: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&recovery_json).unwrap()).unwrap();
    let mut secret_files = BTreeMap::new();
    for (i, name) in ["alice", "bob", "carol"].iter().enumerate() {
        let b64 = secrets["RecoverySecrets"][name].as_str().unwrap();
        let path = t.join(format!("{name}.secret"));
        // Raw bytes for some, base64 text for others: the CLI takes both.
        if i % 2 == 0 {
            std::fs::write(&path, quarry_api::bytes::unb64(b64).unwrap()).unwrap();
        } else {
            std::fs::write(&path, format!("{b64}\n")).unwrap();
        }
        secret_files.insert(name.to_string(), path);
    }
    let sealed: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("sealed-key.json")).unwrap()).unwrap();
    assert_eq!(sealed["seal_mode"], "ProductKey");
    assert_eq!(sealed["recovery"]["scheme"], "shamir");
    assert!(
        !serde_json::to_string(&sealed)
            .unwrap()
            .contains(b64_of(&secrets, "alice")),
        "the recovery data holds no secret"
    );
    let (code, first) = shared_env(&coord, &root_pem, &platform_a, "svc").await;
    assert_eq!(code, 200, "{first}");
    let shared = first["data"]["parameters"]["env"]["SHARED"].clone();
    assert!(!shared.is_null(), "{first}");
    coord.stop();

    // Platform B: the seal key differs, so Recovery; nothing on disk changes.
    let before = std::fs::read(data.join("state.log")).unwrap();
    let coord = Coordinator::start(&data, &platform_b, &log).unwrap();
    assert_eq!(state(&coord).await, 1);
    assert_eq!(recovery_reason(&coord).await.as_deref(), Some("unseal"));
    assert_eq!(std::fs::read(data.join("state.log")).unwrap(), before);
    let (eph_root, _) = current_root(&coord, t, "recovery-root.pem").await;
    let o = quarry(&[
        "status",
        "--coordinator",
        &coord.client.to_string(),
        "--root-ca",
        eph_root.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("recovery reason: unseal"), "{}", text(&o));
    // The ephemeral key for the air-gapped flow.
    let (code, pk) = jsend(
        https(tls_config(&std::fs::read_to_string(&eph_root).unwrap(), None).unwrap())
            .unwrap()
            .get(format!("{}/api/v2/recover/public-key", coord.client_url()))
            .send()
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(code, 200, "{pk}");
    assert_eq!(pk["data"]["algorithm"], "RSA");

    // Refusals: signed by the wrong key, a wrong share, a forged upload with no valid key.
    let o = recover(&coord, &eph_root, &secret_files["alice"], &private["bob"].1);
    assert!(!o.status.success());
    assert!(text(&o).contains("does not decrypt"), "{}", text(&o));
    let alice_plain = private["alice"]
        .0
        .decrypt(
            rsa::Oaep::new::<Sha256>(),
            &std::fs::read(&secret_files["alice"]).unwrap(),
        )
        .unwrap();
    let forged = t.join("forged.secret");
    let mut wrong = alice_plain.clone();
    wrong[0] ^= 1;
    std::fs::write(&forged, &wrong).unwrap();
    let o = recover(&coord, &eph_root, &forged, &private["alice"].1);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("not the recovery secret issued to key \"alice\""),
        "{}",
        text(&o)
    );
    // Alice's share signed by Bob (air-gapped form with --signature).
    let plain_path = t.join("alice.plain");
    std::fs::write(&plain_path, &alice_plain).unwrap();
    let sig_path = t.join("alice-by-bob.sig");
    let sig = private["bob"]
        .0
        .sign(Pkcs1v15Sign::new::<Sha256>(), &Sha256::digest(&alice_plain))
        .unwrap();
    std::fs::write(&sig_path, sig).unwrap();
    let o = quarry(&[
        "recover",
        plain_path.to_str().unwrap(),
        "--signature",
        sig_path.to_str().unwrap(),
        "--coordinator",
        &coord.client.to_string(),
        "--root-ca",
        eph_root.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("not the recovery secret issued to key \"bob\""),
        "{}",
        text(&o)
    );
    assert_eq!(state(&coord).await, 1);

    // One share: accepted, still Recovery; the same share twice is refused.
    let o = recover(
        &coord,
        &eph_root,
        &secret_files["alice"],
        &private["alice"].1,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("1 more"), "{}", text(&o));
    assert_eq!(state(&coord).await, 1, "fewer than the threshold");
    let o = recover(
        &coord,
        &eph_root,
        &secret_files["alice"],
        &private["alice"].1,
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("already uploaded"), "{}", text(&o));
    // The second share recovers.
    let o = recover(
        &coord,
        &eph_root,
        &secret_files["carol"],
        &private["carol"].1,
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("Recovery successful"), "{}", text(&o));
    assert_eq!(state(&coord).await, 3);
    assert_eq!(
        fetch_root_unverified(&coord).await.unwrap(),
        root_pem,
        "same root CA after recovery"
    );
    // Same shared secret; the budget of two has one left.
    let (code, v) = shared_env(&coord, &root_pem, &platform_b, "svc").await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["data"]["parameters"]["env"]["SHARED"], shared);
    let (code, v) = shared_env(&coord, &root_pem, &platform_b, "svc").await;
    assert_ne!(code, 200);
    assert!(v.to_string().contains("MaxActivations"), "{v}");
    drop(coord);

    // Re-sealed for platform B: a restart there comes straight up in state 3.
    let coord = Coordinator::start(&data, &platform_b, &log).unwrap();
    assert_eq!(state(&coord).await, 3);
    drop(coord);

    // Rollback evidence: an older state.log than the acknowledged head is refused.
    let older = std::fs::read(data.join("state.log")).unwrap();
    let coord = Coordinator::start(&data, &platform_b, &log).unwrap();
    let (code, v) = shared_env(&coord, &root_pem, &platform_b, "free").await;
    assert_eq!(code, 200, "{v}");
    drop(coord);
    let newest = std::fs::read(data.join("state.log")).unwrap();
    std::fs::write(data.join("state.log"), &older).unwrap();
    let coord = Coordinator::start(&data, &platform_b, &log).unwrap();
    assert_eq!(state(&coord).await, 1, "a rolled-back state is not served");
    assert_eq!(recovery_reason(&coord).await.as_deref(), Some("rollback"));
    assert!(std::fs::read_to_string(&log).unwrap().contains("ROLLBACK"));
    drop(coord);
    std::fs::write(data.join("state.log"), &newest).unwrap();
    let coord = Coordinator::start(&data, &platform_b, &log).unwrap();
    assert_eq!(state(&coord).await, 3, "the newest state is served again");
    assert_eq!(
        recovery_reason(&coord).await,
        None,
        "no reason outside Recovery"
    );
    drop(coord);

    // Tampered state on yet another platform: valid recovery secrets do not yield a
    // running coordinator.
    let mut bytes = newest.clone();
    let n = bytes.len();
    bytes[n - 40] ^= 0x01;
    std::fs::write(data.join("state.log"), &bytes).unwrap();
    let coord = Coordinator::start(&data, &platform_a, &log).unwrap();
    assert_eq!(state(&coord).await, 1);
    let (eph_root, _) = current_root(&coord, t, "recovery-root-2.pem").await;
    let o = recover(&coord, &eph_root, &secret_files["bob"], &private["bob"].1);
    assert!(o.status.success(), "{}", text(&o));
    let o = recover(
        &coord,
        &eph_root,
        &secret_files["carol"],
        &private["carol"].1,
    );
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("cannot be used"), "{}", text(&o));
    assert_eq!(state(&coord).await, 1);
    assert_eq!(std::fs::read(data.join("state.log")).unwrap(), bytes);
}

fn b64_of<'a>(v: &'a serde_json::Value, name: &str) -> &'a str {
    v["RecoverySecrets"][name].as_str().unwrap()
}
