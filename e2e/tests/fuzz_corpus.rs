//! Replays the fuzz seeds (fuzz/seeds), the committed regression inputs (fuzz/regressions),
//! any local fuzz findings (fuzz/artifacts, not committed) and the shared test data
//! (manifests, evidence of every TEE type) through the fuzz target bodies, so every
//! `cargo test` runs the corpus even where cargo-fuzz and nightly are unavailable.
use std::path::{Path, PathBuf};

#[allow(dead_code)]
#[path = "../../fuzz/src/targets.rs"]
mod targets;

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return vec![];
    };
    let mut out: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    out
}

fn shared() -> PathBuf {
    std::env::var_os("QUARRY_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"))
        .join("testdata")
}

fn replay(target: &str, run: fn(&[u8]), extra: &[(PathBuf, Option<u8>)]) -> usize {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut n = 0;
    for dir in [
        fuzz.join("seeds").join(target),
        fuzz.join("regressions").join(target),
        fuzz.join("artifacts").join(target),
    ] {
        for f in files(&dir) {
            run(&std::fs::read(&f).unwrap());
            n += 1;
        }
    }
    for (dir, selector) in extra {
        for f in files(dir) {
            let mut data: Vec<u8> = selector.iter().copied().collect();
            data.extend(std::fs::read(&f).unwrap());
            run(&data);
            n += 1;
        }
    }
    n
}

#[test]
fn manifest_corpus_parses_without_panic() {
    let n = replay(
        "manifest",
        targets::manifest,
        &[(shared().join("marblerun-manifests"), None)],
    );
    assert!(n > 1, "no manifest corpus found");
}

#[test]
fn evidence_corpus_of_every_tee_type_verifies_without_panic() {
    let a = shared().join("attestation");
    let n = replay(
        "evidence",
        targets::evidence,
        &[
            (a.join("sgx"), Some(0)),
            (a.join("tdx"), Some(1)),
            (a.join("snp"), Some(2)),
        ],
    );
    assert!(n > 1, "no evidence corpus found");
}

#[test]
fn api_body_corpus_parses_without_panic() {
    assert!(replay("api_body", targets::api_body, &[]) > 0);
}

#[test]
fn bundle_corpus_parses_and_verifies_without_panic() {
    assert!(
        replay("bundle", targets::bundle, &[]) > 0,
        "no bundle corpus found"
    );
}
