//! Quarry evidence: providers that obtain evidence inside a TEE, verifiers that turn evidence,
//! collateral and a clock into claims, and the policy check of claims against a package.
#![forbid(unsafe_code)]

pub mod binding;
pub mod error;
pub mod measure;
pub mod policy;
pub mod simulated;

use std::time::SystemTime;

use quarry_api::{Claims, Evidence, REPORT_DATA_LEN};

pub use error::{ProviderError, VerifyError};
pub use policy::{check_package, FieldMismatch, PolicyMismatch};

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
            other => Err(VerifyError::Unsupported(format!(
                "no verifier for {} evidence is configured in this build",
                other.as_str()
            ))),
        }
    }
}
