//! Relying-party verification of a coordinator (contract §7): its evidence against a
//! [`CoordinatorPolicy`] (hardware verifiers, plus the simulated platform of the policy when
//! simulation is allowed), then the statement binding, nonce, certificates, manifest and log
//! ([`quarry_api::attestation::verify_attestation`]).
//!
//! Online, the caller fetches [`attestation_path`] with a [`fresh_nonce`] over a TLS client
//! whose verifier is a [`crate::tls::Recording`], and passes the recorded chain in
//! [`VerifyOptions::presented_chain`]; offline (a bundle) there is no chain.
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use quarry_api::attestation::{
    verify_attestation, AttestationError, AttestationResponse, CoordinatorPolicy, Verified,
    VerifyOptions,
};
use quarry_api::manifest::ManifestError;
use quarry_api::{Claims, Evidence};
use quarry_attestation::simulated::{SimPlatform, SimVerifier};
use quarry_attestation::{Verifier as _, VerifierSet};

/// Path of the attestation endpoint (client and mesh APIs).
pub const ATTESTATION_PATH: &str = "/api/v2/attestation";

/// Why a coordinator was not verified.
#[derive(Debug, thiserror::Error)]
pub enum RelyingPartyError {
    /// The policy file cannot be read.
    #[error("cannot read coordinator policy {}: {source}", path.display())]
    PolicyUnreadable {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The policy file is not a coordinator policy.
    #[error("coordinator policy {}: {source}", path.display())]
    Policy {
        /// The file.
        path: PathBuf,
        /// The field (JSON pointer) and what is wrong with it.
        source: ManifestError,
    },
    /// The policy's `SimulationPlatformCA` is not a usable platform CA.
    #[error("SimulationPlatformCA in the policy: {reason}")]
    SimulationPlatformCa {
        /// What is wrong with it.
        reason: String,
    },
    /// No nonce could be drawn.
    #[error("the system random number generator failed")]
    Random,
    /// The attestation does not verify against the policy and the options.
    #[error("coordinator verification failed: {0}")]
    Attestation(#[from] AttestationError),
}

/// Reads and parses a coordinator policy file.
pub fn load_policy(path: &Path) -> Result<CoordinatorPolicy, RelyingPartyError> {
    let bytes = std::fs::read(path).map_err(|source| RelyingPartyError::PolicyUnreadable {
        path: path.to_path_buf(),
        source,
    })?;
    CoordinatorPolicy::parse(&bytes).map_err(|source| RelyingPartyError::Policy {
        path: path.to_path_buf(),
        source,
    })
}

/// 32 random bytes for `?nonce=`: the statement must answer them, so the evidence is fresh.
pub fn fresh_nonce() -> Result<[u8; 32], RelyingPartyError> {
    let mut nonce = [0u8; 32];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut nonce)
        .map_err(|_| RelyingPartyError::Random)?;
    Ok(nonce)
}

/// `/api/v2/attestation?nonce=HEX`.
pub fn attestation_path(nonce: &[u8]) -> String {
    format!("{ATTESTATION_PATH}?nonce={}", hex::encode(nonce))
}

/// `/api/v2/attestation?nonce=HEX&format=ear`: the version-2 statement (binding the EAR key),
/// the coordinator's EAR and its key, checked with [`crate::ear::verify_ear`].
pub fn ear_attestation_path(nonce: &[u8]) -> String {
    format!("{}&format=ear", attestation_path(nonce))
}

/// Verifies `attestation` against `policy` and `options`: the evidence by the hardware
/// verifiers (and, with `options.allow_simulation`, the policy's simulated platform), its
/// claims against the policy's package, then everything the statement binds.
pub fn verify(
    attestation: &AttestationResponse,
    policy: &CoordinatorPolicy,
    options: &VerifyOptions<'_>,
) -> Result<Verified, RelyingPartyError> {
    let verifiers = verifier_set(policy, options.allow_simulation)?;
    // verify_attestation takes the evidence check as a closure (quarry-api cannot depend on
    // quarry-attestation); its String error ends up inside AttestationError::Evidence.
    let check = |evidence: &Evidence, now: SystemTime| -> Result<Claims, String> {
        let claims = verifiers.verify(evidence, now).map_err(|e| e.to_string())?;
        quarry_attestation::check_package(&policy.package, &claims).map_err(|e| e.to_string())?;
        Ok(claims)
    };
    Ok(verify_attestation(attestation, options, &check)?)
}

/// The hardware verifiers, plus the policy's simulated platform when simulation is allowed.
fn verifier_set(
    policy: &CoordinatorPolicy,
    allow_simulation: bool,
) -> Result<VerifierSet, RelyingPartyError> {
    let set = VerifierSet::hardware(None);
    let pem = match (&policy.simulation_platform_ca, allow_simulation) {
        (Some(pem), true) => pem,
        // Without a platform CA no simulated evidence verifies; verify_attestation says why.
        _ => return Ok(set),
    };
    let invalid = |reason: String| RelyingPartyError::SimulationPlatformCa { reason };
    let platform = SimPlatform::from_ca_pem(pem).map_err(invalid)?;
    let verifier = SimVerifier::new(&[platform]).map_err(invalid)?;
    Ok(set.dangerous_with_simulation(verifier))
}

#[cfg(test)]
mod tests;
