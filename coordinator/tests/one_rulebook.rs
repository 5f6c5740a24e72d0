//! One rulebook (issue 17): `quarry manifest check` (quarry-api validation) and the
//! coordinator's `manifest set` give the same verdict on every shared MarbleRun manifest and on
//! the key-parameter refusal cases, and a refusal names the same JSON pointer in both.
use std::path::{Path, PathBuf};

use quarry_attestation::simulated::SimPlatform;
use quarry_coordinator::http::error::{ApiError, RequestFault};
use quarry_coordinator::state::Core;
use quarry_coordinator::tee::Tee;

/// `$QUARRY_SHARED_DIR/testdata/marblerun-manifests`, or `shared/` above the repository.
fn fixtures() -> PathBuf {
    const DIR: &str = "testdata/marblerun-manifests";
    if let Some(shared) = std::env::var_os("QUARRY_SHARED_DIR") {
        return Path::new(&shared).join(DIR);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .map(|a| a.join("shared").join(DIR))
        .find(|d| d.is_dir())
        .expect("shared/testdata/marblerun-manifests not found; set QUARRY_SHARED_DIR")
}

/// A manifest with one secret `k` of `kind`, `size` and `user_defined`.
fn with_secret(kind: &str, size: u32, user_defined: bool) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "Packages": {"p": {"TEE": "simulated", "UniqueID": "00".repeat(32)}},
        "Marbles": {"a": {"Package": "p"}},
        "Secrets": {"k": {"Type": kind, "Size": size, "UserDefined": user_defined}}
    }))
    .expect("serialises")
}

/// The coordinator's verdict: `manifest set` on a fresh simulated coordinator.
async fn coordinator_verdict(raw: &[u8]) -> Result<(), ApiError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = dir.path().join("sim");
    SimPlatform::create(&sim).expect("sim platform");
    let core = Core::open(
        &dir.path().join("data"),
        Tee::simulated(&sim, None).expect("tee"),
    )
    .await
    .expect("core opens");
    quarry_coordinator::manifest::set::set_manifest(&core, raw.to_vec())
        .await
        .map(|_| ())
}

/// Both verdicts agree; a refusal is `invalid-manifest` at the pointer quarry-api names.
async fn same_verdict(name: &str, raw: &[u8]) -> bool {
    let api = quarry_api::manifest::parse(raw);
    let coordinator = coordinator_verdict(raw).await;
    match (&api, &coordinator) {
        (Ok(_), Ok(())) => true,
        (Err(e), Err(ApiError::Request(RequestFault::InvalidManifest { pointer, message }))) => {
            assert_eq!(pointer, &e.path, "{name}: {message}");
            assert_eq!(message, &e.to_string(), "{name}");
            false
        }
        _ => {
            panic!("{name}: quarry manifest check says {api:?}, manifest set says {coordinator:?}")
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_shared_manifest_gets_one_verdict() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .expect("fixtures")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json" || x == "yaml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 20,
        "expected the shared fixtures, got {files:?}"
    );
    let mut accepted = 0;
    for path in &files {
        let raw = std::fs::read(path).expect("reads");
        if same_verdict(&path.display().to_string(), &raw).await {
            accepted += 1;
        }
    }
    // Both accept at least the MarbleRun samples (most fixtures carry placeholders that both
    // refuse at the same pointer).
    assert!(accepted > 0, "no fixture accepted by both");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_parameters_get_one_verdict_generated_or_uploaded() {
    let cases = [
        ("cert-ecdsa", 521, false, false),
        ("cert-ecdsa", 521, true, false),
        ("cert-ecdsa", 224, false, false),
        ("cert-ecdsa", 0, false, false),
        ("cert-ecdsa", 384, false, true),
        ("cert-ecdsa", 256, true, true),
        ("cert-ecdsa", 0, true, true),
        ("cert-rsa", 1000, false, false),
        ("cert-rsa", 1000, true, false),
        ("cert-rsa", 2049, false, false),
        ("cert-rsa", 0, false, false),
        ("cert-rsa", 8200, false, false),
        ("cert-rsa", 2048, false, true),
        ("cert-rsa", 0, true, true),
        ("cert-ed25519", 256, false, false),
        ("cert-ed25519", 256, true, false),
        ("cert-ed25519", 0, false, true),
        ("symmetric-key", 12, false, false),
        ("symmetric-key", 128, false, true),
    ];
    for (kind, size, user_defined, ok) in cases {
        let name = format!("{kind} Size {size} UserDefined {user_defined}");
        let accepted = same_verdict(&name, &with_secret(kind, size, user_defined)).await;
        assert_eq!(accepted, ok, "{name}");
        if !ok {
            let err = quarry_api::manifest::parse(&with_secret(kind, size, user_defined))
                .expect_err("refused");
            assert_eq!(err.path, "/Secrets/k/Size", "{name}: {err}");
        }
    }
}
