//! Real hardware evidence through the whole activation path (issue 3): the sidecar's Gramine
//! provider reads a real SGX DCAP quote from a prepared `/dev/attestation` directory, sends it
//! with its collateral to a real coordinator, which verifies signatures, certificate chain,
//! TCB and collateral window, and then refuses exactly at the key-binding check — a quote
//! recorded on someone else's machine cannot bind this sidecar's TLS key. Proves everything
//! up to that point, and that time is an input (the same quote at today's date is refused for
//! its expired collateral).
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use quarry_e2e::{bin, https, run, tls_config, Coordinator};

const LIMIT: Duration = Duration::from_secs(60);

/// Inside the collateral window of the recorded quote (PROVENANCE.md: 2025-07-01).
const RECORDED_AT: &str = "1751328000";

fn shared() -> PathBuf {
    std::env::var_os("QUARRY_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"))
        .join("testdata/attestation/sgx")
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A directory laid out like Gramine's `/dev/attestation` whose `quote` is the real quote.
fn prepared_gramine(dir: &Path, quote: &Path) -> PathBuf {
    let root = dir.join("attestation");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("attestation_type"), "dcap").unwrap();
    std::fs::write(root.join("user_report_data"), [0u8; 64]).unwrap();
    std::fs::copy(quote, root.join("quote")).unwrap();
    root
}

/// The manifest: one SGX package pinned to the recorded enclave's signer, product and SVN,
/// accepting its TCB status and advisories.
fn manifest() -> serde_json::Value {
    serde_json::json!({
        "Packages": {
            "enclave": {
                "TEE": "sgx",
                "SignerID": "815f42f11cf64430c30bab7816ba596a1da0130c3b028b673133a66cf9a3e0e6",
                "ProductID": 0,
                "SecurityVersion": 0,
                "Debug": false,
                "AcceptedTCBStatuses": ["UpToDate", "SWHardeningNeeded", "ConfigurationAndSWHardeningNeeded"],
                "AcceptedAdvisories": ["INTEL-SA-00289", "INTEL-SA-00615"]
            }
        },
        "Marbles": {
            "enclave": {"Package": "enclave", "Parameters": {"Env": {"X": "1"}}}
        }
    })
}

struct Setup {
    _tmp: tempfile::TempDir,
    coord: Coordinator,
    root_pem: PathBuf,
    gramine: PathBuf,
    collateral: PathBuf,
    dir: PathBuf,
}

async fn setup(extra: &[&str]) -> Setup {
    let sgx = shared();
    let quote = sgx.join("dcapqvl_sgx_quote_v3.bin");
    let collateral = sgx.join("dcapqvl_sgx_quote_v3.collateral.json");
    assert!(
        quote.exists() && collateral.exists(),
        "{} missing: the shared attestation vectors are required (set QUARRY_SHARED_DIR)",
        quote.display()
    );
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let platform = dir.join("sim");
    let o = run(
        Command::new(bin("quarry")).args(["sim", "init", platform.to_str().unwrap()]),
        LIMIT,
    )
    .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let coord = Coordinator::start_with(
        &dir.join("data"),
        &platform,
        &dir.join("coordinator.log"),
        extra,
    )
    .unwrap();
    let root = quarry_e2e::fetch_root_unverified(&coord).await.unwrap();
    let root_pem = dir.join("root.pem");
    std::fs::write(&root_pem, &root).unwrap();
    let client = https(tls_config(&root, None).unwrap()).unwrap();
    let body = serde_json::json!({
        "manifest": quarry_api::bytes::b64(&serde_json::to_vec(&manifest()).unwrap())
    });
    let r = client
        .post(format!("{}/api/v2/manifest", coord.client_url()))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    let gramine = prepared_gramine(&dir, &quote);
    Setup {
        _tmp: tmp,
        coord,
        root_pem,
        gramine,
        collateral,
        dir,
    }
}

fn sidecar(s: &Setup, tee_args: &[&str]) -> std::process::Output {
    let mut c = Command::new(bin("marble-sidecar"));
    c.arg("run")
        .args(["--coordinator", &s.coord.mesh_url()])
        .args(["--marble-type", "enclave"])
        .arg("--uuid-file")
        .arg(s.dir.join("uuid"))
        .arg("--coordinator-root-ca")
        .arg(&s.root_pem)
        .args(tee_args)
        .args(["--", "/bin/true"])
        .env_remove("QUARRY_TEE")
        .env_remove("QUARRY_MARBLE_TYPE")
        .env_remove("EDG_MARBLE_TYPE");
    run(&mut c, LIMIT).unwrap()
}

/// The sidecar on the prepared Gramine directory, sending the quote's collateral.
fn sidecar_with_collateral(s: &Setup) -> std::process::Output {
    let root = s.gramine.to_str().unwrap().to_string();
    let collateral = s.collateral.to_str().unwrap().to_string();
    sidecar(
        s,
        &[
            "--tee",
            "gramine-sgx",
            "--attestation-root",
            &root,
            "--collateral",
            &collateral,
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_sgx_quote_passes_every_check_up_to_the_key_binding() {
    let s = setup(&["--dangerous-verification-time", RECORDED_AT]).await;
    let root = s.gramine.to_str().unwrap().to_string();
    let o = sidecar_with_collateral(&s);
    let out = text(&o);
    assert!(
        !o.status.success(),
        "a recorded quote must not activate: {out}"
    );
    // The sidecar wrote its REPORTDATA (SHA-256 of its key, then the nonce) for the quote.
    let urd = std::fs::read(s.gramine.join("user_report_data")).unwrap();
    assert_eq!(urd.len(), 64);
    assert_ne!(urd, vec![0u8; 64], "the provider wrote the key binding");
    let refusal = out
        .lines()
        .find(|l| l.contains("activation refused by coordinator"))
        .unwrap_or_else(|| panic!("no refusal line: {out}"));
    assert!(
        refusal.contains("binding mismatch: report_data[0..32] is not SHA-256 of the TLS client key"),
        "the refusal is exactly the key-binding check (signatures, certificate chain, TCB and collateral window all passed): {refusal}"
    );
    // The coordinator's log says the same: evidence verified, binding refused.
    let log = std::fs::read_to_string(&s.coord.log).unwrap();
    assert!(log.contains("activation refused"), "{log}");
    assert!(
        log.contains("FIXED verification clock"),
        "the fixed clock is announced"
    );

    // Without the collateral the coordinator (offline, empty cache) refuses earlier, naming it.
    let o = sidecar(&s, &["--tee", "gramine-sgx", "--attestation-root", &root]);
    let out = text(&o);
    assert!(!o.status.success());
    assert!(out.to_lowercase().contains("collateral"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_todays_date_the_same_quote_is_refused_for_its_expired_collateral() {
    let s = setup(&[]).await;
    let o = sidecar_with_collateral(&s);
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(
        out.contains("expired") || out.contains("not valid") || out.contains("window"),
        "refused for the collateral's validity window: {out}"
    );
}

#[test]
fn hardware_that_is_configured_but_missing_is_a_startup_error_never_simulation() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-such-device");
    for tee in ["gramine-sgx", "tdx", "snp"] {
        let o = run(
            Command::new(bin("marble-sidecar"))
                .args([
                    "run",
                    "--coordinator",
                    "https://127.0.0.1:9",
                    "--marble-type",
                    "m",
                    "--insecure-skip-coordinator-verify",
                    "--tee",
                    tee,
                    "--attestation-root",
                ])
                .arg(&missing)
                .args(["--", "/bin/true"])
                .env_remove("QUARRY_TEE"),
            LIMIT,
        )
        .unwrap();
        let out = text(&o);
        assert!(!o.status.success(), "{tee}: {out}");
        assert!(
            out.contains("configured but unavailable") && out.contains("no fallback to simulation"),
            "{tee}: {out}"
        );
    }
    let o = run(
        Command::new(bin("marble-sidecar"))
            .args([
                "run",
                "--coordinator",
                "https://127.0.0.1:9",
                "--marble-type",
                "m",
                "--insecure-skip-coordinator-verify",
                "--tee",
                "auto",
                "--attestation-root",
            ])
            .arg(&missing)
            .args(["--", "/bin/true"])
            .env_remove("QUARRY_TEE"),
        LIMIT,
    )
    .unwrap();
    let out = text(&o);
    assert!(!o.status.success());
    assert!(out.contains("--tee auto found no TEE"), "{out}");
}

#[test]
fn the_fixed_verification_clock_is_refused_with_a_hardware_tee() {
    let tmp = tempfile::tempdir().unwrap();
    let o = run(
        Command::new(bin("quarry-coordinator"))
            .args(["--tee", "gramine-sgx", "--attestation-root"])
            .arg(tmp.path())
            .arg("--data-dir")
            .arg(tmp.path().join("data"))
            .args(["--dangerous-verification-time", RECORDED_AT])
            .args(["--client-addr", "127.0.0.1:0", "--mesh-addr", "127.0.0.1:0"]),
        LIMIT,
    )
    .unwrap();
    let out = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(
        out.contains("--dangerous-verification-time is refused with a hardware TEE"),
        "{out}"
    );
}
