//! One function per fuzz target: parse arbitrary bytes and never panic.
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use quarry_api::evidence::{Evidence, EvidenceType};
use quarry_attestation::Verifier;

/// Manifest parsing and validation (JSON), and the YAML front end.
pub fn manifest(data: &[u8]) {
    let _ = quarry_api::manifest::parse(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = quarry_api::manifest::yaml_to_json(text);
    }
}

/// Evidence of every TEE type: the first byte picks the type, the rest is the quote; the
/// whole input is also tried as a JSON evidence object (with collateral).
pub fn evidence(data: &[u8]) {
    let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    if let Some((&selector, quote)) = data.split_first() {
        let kind = match selector % 4 {
            0 => EvidenceType::SgxDcap,
            1 => EvidenceType::TdxDcap,
            2 => EvidenceType::Snp,
            _ => EvidenceType::Simulated,
        };
        let evidence = Evidence {
            kind,
            quote: quote.to_vec(),
            collateral: None,
        };
        verify_all(&evidence, now);
    }
    if let Ok(evidence) = serde_json::from_slice::<Evidence>(data) {
        verify_all(&evidence, now);
    }
}

/// Request bodies of the client and mesh APIs.
pub fn api_body(data: &[u8]) {
    use quarry_api::http::*;
    let _ = serde_json::from_slice::<ActivateRequest>(data);
    let _ = serde_json::from_slice::<ManifestSetRequest>(data);
    let _ = serde_json::from_slice::<JSend<serde_json::Value>>(data);
    let _ = serde_json::from_slice::<ActivateResponse>(data);
}

fn verify_all(evidence: &Evidence, now: SystemTime) {
    for v in verifiers() {
        let _ = v.verify(evidence, now);
    }
}

fn verifiers() -> &'static [Box<dyn Verifier + Send + Sync>] {
    static SET: OnceLock<Vec<Box<dyn Verifier + Send + Sync>>> = OnceLock::new();
    SET.get_or_init(|| {
        let mut set: Vec<Box<dyn Verifier + Send + Sync>> = vec![
            Box::new(quarry_attestation::dcap::DcapVerifier::sgx()),
            Box::new(quarry_attestation::dcap::DcapVerifier::tdx()),
            Box::new(quarry_attestation::snp::SnpVerifier::new()),
        ];
        // A throw-away simulated platform: the verifier keeps its CA in memory.
        let dir = std::env::temp_dir().join(format!("quarry-fuzz-sim-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let platform = quarry_attestation::simulated::SimPlatform::create(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        if let Ok(p) = platform {
            if let Ok(v) = quarry_attestation::simulated::SimVerifier::new(&[p]) {
                set.push(Box::new(v));
            }
        }
        set
    })
}
