//! The TEE the coordinator runs in: its evidence provider, the verifiers it accepts marble
//! evidence with, and its sealing key. There is no fallback: a TEE that is configured but
//! unavailable is a startup error.
use std::path::Path;
use std::sync::Arc;

use quarry_api::Secret;
use quarry_attestation::simulated::{SimIdentity, SimPlatform, SimProvider, SimVerifier};
use quarry_attestation::{EvidenceProvider, Verifier, VerifierSet};
use sha2::{Digest, Sha256};

/// The coordinator's TEE runtime.
pub struct Tee {
    /// Where the coordinator's own evidence comes from.
    pub provider: Arc<dyn EvidenceProvider>,
    /// Verifies marble evidence.
    pub verifier: Arc<dyn Verifier>,
    /// True when running on the simulated TEE.
    pub simulation: bool,
    /// Key that seals the data encryption key.
    pub seal_key: Secret,
    /// Name of the sealing mechanism.
    pub sealing: &'static str,
    /// Hex digest identifying who can unseal (platform + measurement).
    pub sealer_id: String,
    /// The coordinator's own measurement.
    pub measurement: [u8; 32],
}

impl Tee {
    /// The simulated TEE with the platform in `platform_dir` (CA and key).
    pub fn simulated(platform_dir: &Path) -> anyhow::Result<Tee> {
        let platform = SimPlatform::load(platform_dir).map_err(|e| {
            anyhow::anyhow!(
                "simulated platform {}: {e} (create one with `quarry sim init {}`)",
                platform_dir.display(),
                platform_dir.display()
            )
        })?;
        let exe = std::env::current_exe()?;
        let measurement = quarry_attestation::measure::file_sha256(&exe)?;
        let seal_key = platform.derive_seal_key(&measurement)?;
        let mut h = Sha256::new();
        h.update(platform.ca_digest());
        h.update(measurement);
        let sealer_id = hex::encode(h.finalize());
        let verifier = SimVerifier::new(&[SimPlatform::from_ca_pem(&platform.ca_pem())
            .map_err(anyhow::Error::msg)?])
        .map_err(anyhow::Error::msg)?;
        let provider = SimProvider::new(
            platform,
            SimIdentity {
                unique_id: measurement,
                signer_id: [0; 32],
                product_id: 0,
                security_version: 0,
                debug: false,
            },
        )?;
        Ok(Tee {
            provider: Arc::new(provider),
            verifier: Arc::new(VerifierSet::new().dangerous_with_simulation(verifier)),
            simulation: true,
            seal_key,
            sealing: "simulated",
            sealer_id,
            measurement,
        })
    }
}
