//! Coordinator configuration: flags with `QUARRY_*` environment equivalents.
use std::net::SocketAddr;
use std::path::PathBuf;

/// Which TEE the coordinator runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TeeChoice {
    /// Development TEE: evidence signed by a platform key from `quarry sim init`.
    Simulated,
    /// Intel SGX via Gramine (/dev/attestation).
    GramineSgx,
    /// Intel TDX confidential VM (configfs-tsm).
    Tdx,
    /// AMD SEV-SNP confidential VM (configfs-tsm).
    Snp,
    /// Detect Gramine SGX, TDX or SNP; no TEE found is a startup error (never simulation).
    Auto,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable.
    Text,
    /// One JSON object per line.
    Json,
}

/// `quarry-coordinator` flags.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "quarry-coordinator",
    version,
    about = "Quarry coordinator: attests marbles against a manifest and issues their mesh identities, secrets and parameters.",
    after_help = "Examples:\n  quarry-coordinator --simulation\n  quarry-coordinator --data-dir /var/lib/quarry --tee simulated --sim-platform ./sim"
)]
pub struct Config {
    /// Directory of the sealed state (created 0700 if missing).
    #[arg(long, env = "QUARRY_DATA_DIR", default_value = "quarry-data")]
    pub data_dir: PathBuf,
    /// Client API (HTTPS) listen address.
    #[arg(long, env = "QUARRY_CLIENT_ADDR", default_value = "0.0.0.0:4433")]
    pub client_addr: SocketAddr,
    /// Mesh API (HTTPS, mTLS) listen address.
    #[arg(long, env = "QUARRY_MESH_ADDR", default_value = "0.0.0.0:2001")]
    pub mesh_addr: SocketAddr,
    /// DNS names and IPs of the coordinator's TLS certificate (127.0.0.1 and ::1 are always added).
    #[arg(
        long,
        env = "QUARRY_DNS_NAMES",
        value_delimiter = ',',
        default_value = "localhost"
    )]
    pub dns_names: Vec<String>,
    /// The TEE to run in. Required unless --simulation is given; never falls back.
    #[arg(long, env = "QUARRY_TEE", value_enum)]
    pub tee: Option<TeeChoice>,
    /// Simulated platform directory (platform-ca.pem + platform-key.pem) for --tee simulated.
    #[arg(long, env = "QUARRY_SIM_PLATFORM")]
    pub sim_platform: Option<PathBuf>,
    /// Shortcut for development: --tee simulated with a platform created under <data-dir>/sim-platform.
    #[arg(long, env = "QUARRY_SIMULATION")]
    pub simulation: bool,
    /// Root of the TEE device files (default /dev/attestation for gramine-sgx,
    /// /sys/kernel/config/tsm/report for tdx and snp); tests point it at a prepared directory.
    #[arg(long, env = "QUARRY_ATTESTATION_ROOT")]
    pub attestation_root: Option<PathBuf>,
    /// Collateral cache directory (default <data-dir>/collateral); offline unless a URL is given.
    #[arg(long, env = "QUARRY_COLLATERAL_DIR")]
    pub collateral_dir: Option<PathBuf>,
    /// PCCS or Intel PCS base URL to fetch missing SGX/TDX collateral from.
    #[arg(long, env = "QUARRY_PCCS_URL")]
    pub pccs_url: Option<String>,
    /// AMD KDS base URL to fetch missing VCEKs from.
    #[arg(long, env = "QUARRY_KDS_URL")]
    pub kds_url: Option<String>,
    /// Print the coordinator policy (JSON) a relying party pins for this binary and TEE, then exit.
    #[arg(long)]
    pub print_policy: bool,
    /// Log format.
    #[arg(long, env = "QUARRY_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Plain-HTTP listen address of /metrics (Prometheus), /healthz and /readyz; off unless set
    /// (the conventional port is 9100).
    #[arg(long, env = "QUARRY_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
}

impl Config {
    /// The names of the coordinator's certificate, with the loopback addresses added.
    pub fn certificate_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .dns_names
            .iter()
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .collect();
        for n in ["127.0.0.1", "::1"] {
            if !names.iter().any(|x| x == n) {
                names.push(n.to_string());
            }
        }
        names
    }
}
