//! What the injector adds to pods: set once at start from flags (see `main.rs`), the same
//! for every pod.
use std::fmt;

/// The TEE marbles run in; decides `QUARRY_TEE` and the resources added to wrapped containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tee {
    /// Development TEE (`quarry sim init`); the platform key is mounted from a Secret.
    Simulated,
    /// Intel SGX through Gramine; SGX device-plugin resources are requested.
    GramineSgx,
    /// Intel TDX confidential pod VMs (configfs-tsm).
    Tdx,
    /// AMD SEV-SNP confidential pod VMs (configfs-tsm).
    Snp,
}

impl Tee {
    /// Parse the value of `--tee` (the names of the sidecar's and coordinator's `--tee`).
    pub fn parse(text: &str) -> Option<Tee> {
        match text {
            "simulated" => Some(Tee::Simulated),
            "gramine-sgx" => Some(Tee::GramineSgx),
            "tdx" => Some(Tee::Tdx),
            "snp" => Some(Tee::Snp),
            _ => None,
        }
    }

    /// The `QUARRY_TEE` value for the sidecar.
    pub fn as_str(self) -> &'static str {
        match self {
            Tee::Simulated => "simulated",
            Tee::GramineSgx => "gramine-sgx",
            Tee::Tdx => "tdx",
            Tee::Snp => "snp",
        }
    }

    /// True when every container of a pod shares one TEE (a confidential VM pod), so a
    /// tmpfs shared between containers stays inside it.
    pub fn pod_is_one_tee(self) -> bool {
        !matches!(self, Tee::GramineSgx)
    }
}

impl fmt::Display for Tee {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the pinned deployment root CA comes from (one object per marble namespace).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustSource {
    /// A ConfigMap of this name.
    ConfigMap(String),
    /// A Secret of this name.
    Secret(String),
}

/// The injector's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct InjectorConfig {
    /// Coordinator mesh API, `HOST:PORT` (`QUARRY_COORDINATOR_ADDR`).
    pub coordinator_addr: String,
    /// TEE of the marbles.
    pub tee: Tee,
    /// Sidecar image, by digest (`repo@sha256:…`).
    pub sidecar_image: String,
    /// Pull policy of the sidecar image (`IfNotPresent` when by digest).
    pub sidecar_pull_policy: String,
    /// Path of the `marble-sidecar` executable inside the sidecar image.
    pub sidecar_binary: String,
    /// Kubernetes cluster domain for default DNS names (`cluster.local`).
    pub cluster_domain: String,
    /// Object holding the root CA.
    pub trust: TrustSource,
    /// Key of the root CA PEM in that object.
    pub trust_key: String,
    /// With [`Tee::Simulated`]: Secret holding `platform-ca.pem` and `platform-key.pem`.
    pub sim_platform_secret: Option<String>,
    /// With [`Tee::GramineSgx`]: resource limits added to wrapped containers.
    pub sgx_resources: Vec<(String, String)>,
    /// With [`Tee::Tdx`] / [`Tee::Snp`]: runtime class set on pods that name none.
    pub runtime_class: Option<String>,
    /// In native-sidecar mode, also add the long-running `marble-sidecar proxy` container,
    /// which activates on its own and serves the marble's Mesh section (it exits 1, and is
    /// restarted, for a marble type without one).
    pub mesh_proxy: bool,
    /// `sizeLimit` of the memory-backed volume holding materialised secrets.
    pub secrets_size_limit: String,
}

impl InjectorConfig {
    /// A configuration with the defaults of every optional field.
    pub fn new(coordinator_addr: &str, tee: Tee, sidecar_image: &str) -> InjectorConfig {
        InjectorConfig {
            coordinator_addr: coordinator_addr.to_string(),
            tee,
            sidecar_image: sidecar_image.to_string(),
            sidecar_pull_policy: "IfNotPresent".to_string(),
            sidecar_binary: DEFAULT_SIDECAR_BINARY.to_string(),
            cluster_domain: "cluster.local".to_string(),
            trust: TrustSource::ConfigMap("quarry-root-ca".to_string()),
            trust_key: "root-ca.pem".to_string(),
            sim_platform_secret: None,
            sgx_resources: default_sgx_resources(),
            runtime_class: None,
            mesh_proxy: false,
            secrets_size_limit: "16Mi".to_string(),
        }
    }

    /// Check the combination of settings; the message names the flag to fix.
    pub fn check(&self) -> Result<(), String> {
        if self.coordinator_addr.trim().is_empty() {
            return Err("--coordinator-addr must not be empty".into());
        }
        if self.sidecar_image.trim().is_empty() {
            return Err("--sidecar-image must not be empty".into());
        }
        if self.tee == Tee::Simulated && self.sim_platform_secret.is_none() {
            return Err("--tee simulated needs --sim-platform-secret (the Secret with platform-ca.pem and platform-key.pem)".into());
        }
        if self.tee != Tee::Simulated && self.sim_platform_secret.is_some() {
            return Err("--sim-platform-secret is only for --tee simulated".into());
        }
        Ok(())
    }
}

/// Where `marble-sidecar` lives in the sidecar image.
pub const DEFAULT_SIDECAR_BINARY: &str = "/usr/local/bin/marble-sidecar";

/// Intel SGX device plugin resources (EPC size, enclave and provisioning devices).
pub fn default_sgx_resources() -> Vec<(String, String)> {
    vec![
        ("sgx.intel.com/epc".into(), "64Mi".into()),
        ("sgx.intel.com/enclave".into(), "1".into()),
        ("sgx.intel.com/provision".into(), "1".into()),
    ]
}
