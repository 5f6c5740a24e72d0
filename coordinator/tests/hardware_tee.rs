//! `--tee gramine-sgx|tdx|snp|auto`: a configured hardware TEE that is unavailable is a
//! startup error, never a fallback to simulation; a prepared Gramine directory starts.
use std::path::PathBuf;

use clap::Parser as _;
use quarry_coordinator::config::Config;
use quarry_coordinator::App;

fn vectors() -> PathBuf {
    if let Some(dir) = std::env::var_os("QUARRY_SHARED_DIR") {
        return PathBuf::from(dir).join("testdata/attestation");
    }
    let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    loop {
        let p = dir.join("shared/testdata/attestation");
        if p.is_dir() {
            return p;
        }
        assert!(
            dir.pop(),
            "shared/testdata/attestation not found; set QUARRY_SHARED_DIR"
        );
    }
}

fn config(data: &std::path::Path, extra: &[&str]) -> Config {
    let mut args = vec![
        "quarry-coordinator",
        "--data-dir",
        data.to_str().unwrap(),
        "--client-addr",
        "127.0.0.1:0",
        "--mesh-addr",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    Config::try_parse_from(args).unwrap()
}

async fn build_err(cfg: &Config) -> String {
    match App::build(cfg).await {
        Ok(_) => panic!("must refuse to start"),
        Err(e) => format!("{e:#}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_but_unavailable_hardware_is_a_startup_error() {
    let data = tempfile::tempdir().unwrap();
    for tee in ["tdx", "snp", "gramine-sgx"] {
        let cfg = config(
            data.path(),
            &["--tee", tee, "--attestation-root", "/nonexistent/quarry"],
        );
        let err = build_err(&cfg).await;
        assert!(err.contains("configured but unavailable"), "{tee}: {err}");
        assert!(err.contains("no fallback to simulation"), "{tee}: {err}");
    }
    let empty = tempfile::tempdir().unwrap();
    let cfg = config(
        data.path(),
        &[
            "--tee",
            "auto",
            "--attestation-root",
            empty.path().to_str().unwrap(),
        ],
    );
    assert!(build_err(&cfg).await.contains("--tee auto found no TEE"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gramine_sgx_coordinator_starts_on_a_prepared_attestation_directory() {
    let data = tempfile::tempdir().unwrap();
    let dev = tempfile::tempdir().unwrap();
    std::fs::write(dev.path().join("attestation_type"), "dcap").unwrap();
    std::fs::write(
        dev.path().join("quote"),
        std::fs::read(vectors().join("sgx/dcapqvl_sgx_quote_v3.bin")).unwrap(),
    )
    .unwrap();
    std::fs::create_dir(dev.path().join("keys")).unwrap();
    std::fs::write(dev.path().join("keys/_sgx_mrenclave"), [5u8; 16]).unwrap();
    std::fs::write(dev.path().join("keys/_sgx_mrsigner"), [6u8; 16]).unwrap();
    let cfg = config(
        data.path(),
        &[
            "--tee",
            "gramine-sgx",
            "--attestation-root",
            dev.path().to_str().unwrap(),
        ],
    );
    let app = App::build(&cfg).await.expect("starts");
    let core = app.core();
    assert!(!core.tee.simulation);
    use sha2::Digest as _;
    let mrenclave =
        hex::decode("33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb").unwrap();
    assert_eq!(
        core.tee.measurement,
        <[u8; 32]>::from(sha2::Sha256::digest(mrenclave))
    );
}
