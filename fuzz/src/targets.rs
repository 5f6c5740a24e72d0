//! One function per fuzz target: parse arbitrary bytes and never panic.
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use quarry_api::evidence::{Evidence, EvidenceType};
use quarry_api::{Claims, TcbStatus, TeeKind};
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

/// Offline bundles (`quarry verify --bundle`) and coordinator policy files. A fuzzer cannot
/// forge evidence, so after the real verifiers have seen the bundle's evidence, a stand-in
/// check accepts it with the claims the statement asks for: that way the statement, CA,
/// manifest and transparency-log checks behind the evidence check are reached too.
pub fn bundle(data: &[u8]) {
    use quarry_api::attestation::{verify_attestation, verify_log, Bundle, CoordinatorPolicy};
    let _ = CoordinatorPolicy::parse(data);
    let Ok(bundle) = serde_json::from_slice::<Bundle>(data) else {
        return;
    };
    let st = &bundle.attestation.statement;
    let _ = verify_log(&bundle.log, st);
    let nonce = st.nonce.as_deref().and_then(|n| hex::decode(n).ok());
    let now = UNIX_EPOCH + Duration::from_secs(bundle.captured_at.min(1 << 40));
    let accept = |evidence: &Evidence, at: SystemTime| -> Result<Claims, String> {
        verify_all(evidence, at);
        Ok(Claims {
            tee: TeeKind::Simulated,
            identity: Default::default(),
            debug: false,
            report_data: st.report_data(),
            tcb_status: TcbStatus::UpToDate,
            advisory_ids: vec![],
            platform_id: None,
            simulation: st.simulation,
            reported_tcb: None,
            tcb_standing: None,
        })
    };
    let deployed = bundle
        .attestation
        .manifest
        .as_deref()
        .and_then(|b64| quarry_api::bytes::unb64(b64).ok());
    for manifest in [None, deployed.as_deref()] {
        let opts = quarry_api::attestation::VerifyOptions {
            nonce: nonce.as_deref(),
            manifest,
            allow_simulation: true,
            presented_chain: None,
            log: Some(&bundle.log),
            now,
        };
        let _ = verify_attestation(&bundle.attestation, &opts, &accept);
    }
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
