//! The TEE the coordinator runs in: its evidence provider, the verifiers it accepts marble
//! evidence with, and its sealing key. There is no fallback: a TEE that is configured but
//! unavailable is a startup error.
use std::path::Path;
use std::sync::Arc;

use quarry_api::{EvidenceType, Secret, TeeKind};
use quarry_attestation::collateral::{CollateralCache, CollateralSource};
use quarry_attestation::simulated::{SimIdentity, SimPlatform, SimProvider, SimVerifier};
use quarry_attestation::{EvidenceProvider, Verifier, VerifierSet};
use sha2::{Digest, Sha256};

use crate::sealing::{GramineSealing, SealKeys};

/// The coordinator's TEE runtime.
pub struct Tee {
    /// Where the coordinator's own evidence comes from.
    pub provider: Arc<dyn EvidenceProvider>,
    /// Verifies marble evidence.
    pub verifier: Arc<dyn Verifier>,
    /// True when running on the simulated TEE.
    pub simulation: bool,
    /// Keys that seal the data encryption key, per `SealMode`.
    pub seal_keys: SealKeys,
    /// Name of the sealing mechanism.
    pub sealing: &'static str,
    /// The coordinator's own measurement.
    pub measurement: [u8; 32],
    /// The coordinator policy a relying party pins for this binary and TEE
    /// (`quarry-coordinator --print-policy`).
    pub policy: serde_json::Value,
    /// The verification collateral cache directory (hardware TEEs only).
    pub collateral_dir: Option<std::path::PathBuf>,
    /// A fixed time marble evidence is verified at (simulation only; see
    /// `--dangerous-verification-time`); `None` = the clock.
    pub verification_time: Option<std::time::SystemTime>,
}

impl Tee {
    /// The time marble evidence is verified at: the clock, or the fixed simulation time.
    pub fn now(&self) -> std::time::SystemTime {
        self.verification_time
            .unwrap_or_else(std::time::SystemTime::now)
    }

    /// The simulated TEE with the platform in `platform_dir` (CA and key). Marble evidence
    /// from hardware TEEs is verified too (collateral from the evidence or, offline, from
    /// `collateral_dir`), so a development coordinator can take real enclaves.
    pub fn simulated(platform_dir: &Path, collateral_dir: Option<&Path>) -> anyhow::Result<Tee> {
        let platform = SimPlatform::load(platform_dir).map_err(|e| {
            anyhow::anyhow!(
                "simulated platform {}: {e} (create one with `quarry sim init {}`)",
                platform_dir.display(),
                platform_dir.display()
            )
        })?;
        let exe = std::env::current_exe()?;
        let measurement = quarry_attestation::measure::file_sha256(&exe)?;
        let identity = SimIdentity {
            unique_id: measurement,
            signer_id: [0; 32],
            product_id: 0,
            security_version: 0,
            debug: false,
        };
        // UniqueKey: HKDF(platform key, measurement); ProductKey: HKDF(platform key,
        // signer ‖ product id), so any coordinator build of the same signer on the same
        // platform unseals (MarbleRun's default).
        let mut product_info = identity.signer_id.to_vec();
        product_info.extend_from_slice(&identity.product_id.to_be_bytes());
        let id =
            |info: &[u8]| hex::encode(Sha256::digest([&platform.ca_digest()[..], info].concat()));
        let seal_keys = SealKeys::new(
            platform.derive_seal_key(&measurement)?,
            id(&measurement),
            platform.derive_seal_key_info(&product_info)?,
            id(&product_info),
        );
        let mut verifier = SimVerifier::new(&[
            SimPlatform::from_ca_pem(&platform.ca_pem()).map_err(anyhow::Error::msg)?
        ])
        .map_err(anyhow::Error::msg)?;
        // The simulated TCB notion lives beside the hardware collateral (development only).
        if let Some(dir) = collateral_dir {
            verifier =
                verifier.with_tcb_file(dir.join(quarry_attestation::simulated::SIM_TCB_FILE));
        }
        let policy = serde_json::json!({
            "TEE": "simulated",
            "UniqueID": hex::encode(measurement),
            "Debug": false,
            "SimulationPlatformCA": platform.ca_pem(),
        });
        let provider = SimProvider::new(platform, identity)?;
        let source: Option<Arc<dyn CollateralSource>> = collateral_dir
            .map(|d| Arc::new(CollateralCache::offline(d)) as Arc<dyn CollateralSource>);
        Ok(Tee {
            policy,
            provider: Arc::new(provider),
            verifier: Arc::new(VerifierSet::hardware(source).dangerous_with_simulation(verifier)),
            simulation: true,
            seal_keys,
            sealing: "simulated",
            measurement,
            collateral_dir: collateral_dir.map(Path::to_path_buf),
            verification_time: None,
        })
    }
}

/// Where a hardware coordinator gets its evidence and collateral.
pub struct HardwareConfig {
    /// The TEE to use.
    pub tee: TeeKind,
    /// Root of the device files (Gramine `/dev/attestation` or configfs-tsm reports).
    pub attestation_root: std::path::PathBuf,
    /// Collateral cache directory.
    pub collateral_dir: std::path::PathBuf,
    /// PCCS / Intel PCS URL for fetching (none = offline).
    pub pccs_url: Option<String>,
    /// AMD KDS URL for fetching (none = offline).
    pub kds_url: Option<String>,
    /// The data directory (CVM seal key).
    pub data_dir: std::path::PathBuf,
}

impl Tee {
    /// A hardware TEE: its provider must produce evidence now, or this is a startup error.
    /// Marble evidence of any hardware type is verified with collateral from the evidence
    /// or the cache; debug evidence is left to each package's `Debug` policy.
    pub fn hardware(cfg: &HardwareConfig) -> anyhow::Result<Tee> {
        use quarry_attestation::provider::{GramineProvider, TsmProvider};
        let root = &cfg.attestation_root;
        let unavailable = |e: &dyn std::fmt::Display| {
            anyhow::anyhow!(
                "TEE {} configured but unavailable at {}: {e}; refusing to start (there is no fallback to simulation)",
                cfg.tee,
                root.display()
            )
        };
        let provider: Arc<dyn EvidenceProvider> = match cfg.tee {
            TeeKind::Sgx => Arc::new(GramineProvider::open(root).map_err(|e| unavailable(&e))?),
            TeeKind::Tdx => Arc::new(
                TsmProvider::open(root, EvidenceType::TdxDcap).map_err(|e| unavailable(&e))?,
            ),
            TeeKind::Snp => {
                Arc::new(TsmProvider::open(root, EvidenceType::Snp).map_err(|e| unavailable(&e))?)
            }
            TeeKind::Simulated => anyhow::bail!("Tee::hardware is for hardware TEEs"),
        };
        let own = provider
            .evidence(&[0; quarry_api::REPORT_DATA_LEN])
            .map_err(|e| unavailable(&e))?;
        let measurement: [u8; 32] = Sha256::digest(own_identity(&own)).into();
        let mut cache = CollateralCache::offline(&cfg.collateral_dir);
        if cfg.pccs_url.is_some() || cfg.kds_url.is_some() {
            let fetcher = quarry_attestation::fetch::Fetcher::new(
                cfg.pccs_url.clone(),
                cfg.kds_url.clone(),
                &[],
            )?;
            cache = cache.with_fetcher(fetcher);
        }
        let source: Arc<dyn CollateralSource> = Arc::new(cache);
        let (seal_keys, sealing) = match cfg.tee {
            TeeKind::Sgx => (
                GramineSealing::open(root, &measurement).map_err(|e| unavailable(&e))?,
                "gramine-sgx",
            ),
            _ => {
                tracing::warn!(
                    "TDX/SNP: the seal key is kept in the data directory; protect it with the confidential VM's disk encryption (ProductKey and UniqueKey use the same key there)"
                );
                let key = cvm_seal_key(&cfg.data_dir, &measurement)?;
                let id = hex::encode(measurement);
                (
                    SealKeys::new(key.clone(), id.clone(), key, id),
                    "cvm-data-dir",
                )
            }
        };
        let reference = hex::encode(own_identity(&own));
        let policy = match cfg.tee {
            TeeKind::Sgx => {
                serde_json::json!({"TEE": "sgx", "UniqueID": reference, "Debug": false})
            }
            TeeKind::Tdx => serde_json::json!({"TEE": "tdx", "MRTD": reference, "Debug": false}),
            _ => serde_json::json!({"TEE": "snp", "Measurement": reference, "Debug": false}),
        };
        Ok(Tee {
            policy,
            provider,
            verifier: Arc::new(VerifierSet::hardware(Some(source))),
            simulation: false,
            seal_keys,
            sealing,
            measurement,
            collateral_dir: Some(cfg.collateral_dir.clone()),
            verification_time: None,
        })
    }
}

/// The bytes that identify the coordinator's own code in its evidence.
fn own_identity(ev: &quarry_api::Evidence) -> Vec<u8> {
    let q = &ev.quote;
    let slice = |a: usize, b: usize| q.get(a..b).unwrap_or_default().to_vec();
    match ev.kind {
        EvidenceType::SgxDcap => slice(48 + 64, 48 + 96),
        EvidenceType::TdxDcap => {
            let body = if q.first() == Some(&5) { 54 } else { 48 };
            slice(body + 136, body + 184)
        }
        EvidenceType::Snp => slice(0x90, 0xC0),
        EvidenceType::Simulated => Vec::new(),
    }
}

fn cvm_seal_key(data_dir: &Path, measurement: &[u8; 32]) -> anyhow::Result<Secret> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let path = data_dir.join("cvm-seal.key");
    let key = match std::fs::read(&path) {
        Ok(k) => k,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut k = vec![0u8; 32];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut k)
                .map_err(|_| anyhow::anyhow!("no randomness for the seal key"))?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            f.write_all(&k)?;
            f.sync_all()?;
            k
        }
        Err(e) => anyhow::bail!("reading {}: {e}", path.display()),
    };
    Ok(crate::sealing::expand(&key, measurement))
}
