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

/// Where the coordinator keeps its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StoreKind {
    /// Sealed log in the data directory (one coordinator).
    File,
    /// etcd v3, shared by coordinator replicas (--etcd-endpoints).
    Etcd,
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
    /// DANGEROUS, simulation only: verify marble evidence as if it were this time (RFC 3339 or
    /// Unix seconds) instead of now, e.g. to replay recorded hardware quotes whose collateral
    /// has expired. Refused with a hardware TEE.
    #[arg(long, env = "QUARRY_DANGEROUS_VERIFICATION_TIME", value_name = "TIME")]
    pub dangerous_verification_time: Option<String>,
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
    /// Where the state lives: `file` (the data directory; one coordinator) or `etcd` (shared
    /// by several coordinator replicas).
    #[arg(
        long = "store",
        env = "QUARRY_STORE",
        value_enum,
        default_value = "file"
    )]
    pub store_kind: StoreKind,
    /// etcd client URLs, comma-separated (`--store etcd`).
    #[arg(long, env = "QUARRY_ETCD_ENDPOINTS", value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,
    /// Prefix of every etcd key Quarry writes (several deployments can share one etcd).
    #[arg(long, env = "QUARRY_ETCD_PREFIX", default_value = "/quarry/")]
    pub etcd_prefix: String,
    /// CA bundle (PEM) of the etcd servers' certificates (HTTPS endpoints).
    #[arg(long, env = "QUARRY_ETCD_CA")]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) for etcd's client-certificate authentication.
    #[arg(long, env = "QUARRY_ETCD_CERT")]
    pub etcd_cert: Option<PathBuf>,
    /// Key (PEM) of --etcd-cert.
    #[arg(long, env = "QUARRY_ETCD_KEY")]
    pub etcd_key: Option<PathBuf>,
    /// Listen address of the key-sharing service (etcd mode): other replicas obtain the data
    /// encryption key here over mutually attested TLS. Without it this replica shares nothing.
    #[arg(long, env = "QUARRY_PEER_ADDR")]
    pub peer_addr: Option<SocketAddr>,
    /// Address other replicas reach the key-sharing service at (default: --peer-addr).
    #[arg(long, env = "QUARRY_PEER_ADVERTISE")]
    pub peer_advertise: Option<String>,
    /// How long a new replica waits for a running one to share the key before Recovery.
    #[arg(long, env = "QUARRY_PEER_WAIT", value_parser = humantime::parse_duration, default_value = "30s")]
    pub peer_wait: std::time::Duration,
    /// How often this replica compares its transparency-log head with every other replica's
    /// over the attested peer channel (etcd mode with --peer-addr; 0s: never). A fork (etcd
    /// showing replicas different histories) stops the replica: Recovery `split-view`.
    #[arg(long, env = "QUARRY_PEER_CHECK_INTERVAL", value_parser = humantime::parse_duration, default_value = "10s")]
    pub peer_check_interval: std::time::Duration,
    /// How often the TCB monitor re-verifies every running marble's stored evidence with the
    /// current collateral (it also runs at start and when a file in the collateral directory
    /// changes).
    #[arg(long, env = "QUARRY_TCB_RECHECK_INTERVAL", value_parser = humantime::parse_duration, default_value = "1h")]
    pub tcb_recheck_interval: std::time::Duration,
    /// Connection and request limits of the client and mesh API listeners.
    #[command(flatten, next_help_heading = "Connection limits")]
    pub limits: crate::http::limits::Limits,
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
