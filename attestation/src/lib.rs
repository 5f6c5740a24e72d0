//! Quarry evidence: providers that obtain evidence inside a TEE, verifiers that turn evidence,
//! collateral and a clock into claims, and the policy check of claims against a package.
#![forbid(unsafe_code)]

pub mod binding;
pub mod cache;
pub mod collateral;
pub mod dcap;
pub mod error;
pub mod fetch;
pub mod measure;
pub mod policy;
pub mod provider;
pub mod sigstruct;
pub mod simulated;
pub mod snp;
pub mod standing;
pub mod timefmt;

use std::time::SystemTime;

use quarry_api::{Claims, Evidence, REPORT_DATA_LEN};

pub use error::{ProviderError, VerifyError};
pub use policy::{check_package, FieldMismatch, PolicyMismatch};
pub use quarry_api::claims::SnpTcb;

/// Turns evidence into claims, or refuses it with a precise reason. Fails closed.
pub trait Verifier: Send + Sync {
    /// Verify `evidence` as of `now`.
    fn verify(&self, evidence: &Evidence, now: SystemTime) -> Result<Claims, VerifyError>;
}

/// Obtains evidence for the TEE the current process runs in.
pub trait EvidenceProvider: Send + Sync {
    /// Produce evidence binding `report_data`.
    fn evidence(&self, report_data: &[u8; REPORT_DATA_LEN]) -> Result<Evidence, ProviderError>;

    /// True for providers of simulated (non-hardware) evidence.
    fn is_simulated(&self) -> bool;
}

/// Dispatches evidence to the verifier of its type; types without a configured verifier
/// are refused.
#[derive(Default)]
pub struct VerifierSet {
    simulated: Option<simulated::SimVerifier>,
    sgx: Option<dcap::DcapVerifier>,
    tdx: Option<dcap::DcapVerifier>,
    snp: Option<snp::SnpVerifier>,
}

impl VerifierSet {
    /// A set that accepts no evidence at all.
    pub fn new() -> VerifierSet {
        VerifierSet::default()
    }

    /// Accept simulated evidence signed by these platforms. Dangerous outside development.
    pub fn dangerous_with_simulation(mut self, verifier: simulated::SimVerifier) -> VerifierSet {
        self.simulated = Some(verifier);
        self
    }

    /// Accept SGX or TDX DCAP quotes with this verifier, by the TEE it was made for (see
    /// [`dcap::DcapVerifier::sgx`] and [`dcap::DcapVerifier::tdx`]).
    pub fn with_dcap(mut self, verifier: dcap::DcapVerifier) -> VerifierSet {
        match verifier.tee() {
            quarry_api::TeeKind::Tdx => self.tdx = Some(verifier),
            _ => self.sgx = Some(verifier),
        }
        self
    }

    /// Accept SEV-SNP reports with this verifier.
    pub fn with_snp(mut self, verifier: snp::SnpVerifier) -> VerifierSet {
        self.snp = Some(verifier);
        self
    }

    /// SGX, TDX and SNP verifiers sharing one collateral source; debug evidence is reported
    /// in the claims (`debug: true`) and left to the package policy (`Debug`), and so is an
    /// SNP report's VMPL (`MaxVMPL`, default 0).
    pub fn hardware(
        source: Option<std::sync::Arc<dyn collateral::CollateralSource>>,
    ) -> VerifierSet {
        let (mut sgx, mut tdx, mut snp) = (
            dcap::DcapVerifier::sgx().allow_debug(true),
            dcap::DcapVerifier::tdx().allow_debug(true),
            snp::SnpVerifier::new()
                .allow_debug(true)
                .max_vmpl(snp::HIGHEST_VMPL),
        );
        if let Some(s) = source {
            sgx = sgx.with_collateral_source(s.clone());
            tdx = tdx.with_collateral_source(s.clone());
            snp = snp.with_collateral_source(s);
        }
        VerifierSet::new()
            .with_dcap(sgx)
            .with_dcap(tdx)
            .with_snp(snp)
    }
}

impl Verifier for VerifierSet {
    fn verify(&self, evidence: &Evidence, now: SystemTime) -> Result<Claims, VerifyError> {
        use quarry_api::EvidenceType;
        match evidence.kind {
            EvidenceType::Simulated => match &self.simulated {
                Some(v) => v.verify(evidence, now),
                None => Err(VerifyError::Unsupported(
                    "simulated evidence is not accepted by this coordinator (no simulated platform configured)".into(),
                )),
            },
            EvidenceType::SgxDcap => match &self.sgx {
                Some(v) => v.verify(evidence, now),
                None => Err(not_configured(evidence.kind)),
            },
            EvidenceType::TdxDcap => match &self.tdx {
                Some(v) => v.verify(evidence, now),
                None => Err(not_configured(evidence.kind)),
            },
            EvidenceType::Snp => match &self.snp {
                Some(v) => v.verify(evidence, now),
                None => Err(not_configured(evidence.kind)),
            },
        }
    }
}

fn not_configured(kind: quarry_api::EvidenceType) -> VerifyError {
    VerifyError::Unsupported(format!(
        "no verifier for {} evidence is configured here",
        kind.as_str()
    ))
}

/// Refuses evidence of another type than the verifier's, naming both.
pub(crate) fn expect_kind(
    evidence: &Evidence,
    want: quarry_api::EvidenceType,
) -> Result<(), VerifyError> {
    if evidence.kind == want {
        return Ok(());
    }
    Err(VerifyError::Unsupported(format!(
        "{} evidence given to the {} verifier",
        evidence.kind.as_str(),
        want.as_str()
    )))
}
