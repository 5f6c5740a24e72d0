//! Command line and environment: what the sidecar is asked to do, resolved once into a
//! [`Config`]. Resolution takes the environment as a lookup function, so tests never touch
//! the process environment.
//!
//! Precedence for every setting: command-line flag, then the `QUARRY_*` variable, then the
//! MarbleRun `EDG_*` alias (where one exists), then the default. An empty variable counts as
//! unset. With `--settings-from-args` (what the Kubernetes injector writes) the variables are
//! not read at all, and any of [`PROTECTED_ENV`] being present is an error: whoever writes
//! the command line then decides every setting, whoever writes the environment none.
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Coordinator mesh API address used when none is configured (MarbleRun's default).
pub const DEFAULT_COORDINATOR: &str = "localhost:2001";
/// Mesh API port assumed when an address names no port.
pub const DEFAULT_MESH_PORT: u16 = 2001;
/// UUID file used when none is configured, relative to the working directory.
pub const DEFAULT_UUID_FILE: &str = "uuid";

const LONG_ABOUT: &str = "\
Quarry marble sidecar: obtains TEE evidence bound to a key it generates in memory, activates \
the marble with the coordinator's mesh API (mutual TLS 1.3), and hands the service its \
certificate, files, environment and arguments.

The coordinator must be authenticated: pass --coordinator-root-ca FILE (the deployment's root \
CA, pinned), or, for development only, --insecure-skip-coordinator-verify.

Every flag can also be set by the environment variable shown in its help; a flag wins over \
QUARRY_* variables, which win over the MarbleRun EDG_* aliases. Empty variables count as unset. \
With --settings-from-args, those variables are ignored and any of them being present is an \
error (exit 2): only the command line configures the sidecar.

Logs go to stderr: RUST_LOG sets the filter (default info); QUARRY_LOG_FORMAT=json (or \
EDG_LOG_FORMAT=json) switches to JSON lines. Secrets, file contents and environment values are \
never logged, only names and paths.

Exit codes: 0 success (activate); for run, the service's exit code, or 128+N when the service \
was killed by signal N; 1 activation refused or any other failure before the service started \
(one line on stderr says why); 2 invalid command line or configuration.";

const RUN_ABOUT: &str = "\
Activate, write the marble's Files (directories 0700, files 0600; relative paths are relative \
to the working directory), then run CMD as a child with the marble's Env added to the \
sidecar's environment (including MARBLE_PREDEFINED_ROOT_CA, \
MARBLE_PREDEFINED_MARBLE_CERTIFICATE_CHAIN, MARBLE_PREDEFINED_PRIVATE_KEY and \
MARBLE_PREDEFINED_COORDINATOR_ROOT_CA). CMD is looked up on PATH and symlinks are resolved; the \
resolved file is what is executed and what simulated evidence measures. The child gets the \
manifest's Argv (argv[0] included) when it has one, otherwise CMD ARGS. stdin, stdout and \
stderr are inherited; SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 are forwarded to \
the child; the sidecar exits with the child's exit code (128+N if it was killed by signal N).";

const ACTIVATE_ABOUT: &str = "\
Activate once, write everything into DIR and exit 0 (for a service container that shares DIR, \
e.g. a tmpfs, with the sidecar container).

Written: the marble's Files at their manifest paths (absolute paths as given, relative paths \
under DIR; directories 0700, files 0600); DIR/env, a POSIX shell file with one \
`export NAME='value'` line per variable (single quotes escaped, load it with `. DIR/env`; \
0600); DIR/marble-cert.pem (leaf certificate + mesh CA; 0644); DIR/marble-key.pem (the marble's \
private key, PKCS#8 PEM; 0600); DIR/root-ca.pem (the deployment root CA; 0644); \
DIR/argv.json (the manifest's Argv as a JSON array, [] when it has none; 0600). DIR is created \
0700 when missing. Files are replaced atomically.";

const PROXY_ABOUT: &str = "\
Activate, then run only the mesh proxies of the marble's Mesh section until SIGTERM or SIGINT \
(for a service in another container of the same confidential pod): ingress ports accept mutual \
TLS 1.3 from marbles whose type AllowFrom lists (peers are identified by the SPIFFE ID in their \
certificate) and forward plaintext to Forward; egress ports accept plaintext on loopback and \
connect with mutual TLS to a marble of the named type. With --workload-api, also serves the \
SPIFFE Workload API. Nothing is written to disk. Exits 1 when the marble has no Mesh section and \
no --workload-api is set.";

/// The command line of `marble-sidecar`.
#[derive(Debug, Parser)]
#[command(
    name = "marble-sidecar",
    version,
    about = "Quarry marble sidecar: attest, activate with the coordinator, run the service.",
    long_about = LONG_ABOUT
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Activate, then run CMD with the marble's files, environment and arguments.
    #[command(long_about = RUN_ABOUT)]
    Run(RunArgs),
    /// Activate once, write files, certificates and an env file, and exit.
    #[command(long_about = ACTIVATE_ABOUT)]
    Activate(ActivateArgs),
    /// Activate, then run only the mesh proxies until SIGTERM.
    #[command(long_about = PROXY_ABOUT)]
    Proxy(ProxyArgs),
}

/// Flags of `marble-sidecar proxy`.
#[derive(Debug, Args)]
pub struct ProxyArgs {
    /// Flags shared by every subcommand.
    #[command(flatten)]
    pub common: CommonArgs,
    /// The executable measured for simulated evidence.
    #[command(flatten)]
    pub measure: MeasureArgs,
    /// The SPIFFE Workload API socket.
    #[command(flatten)]
    pub workload_api: WorkloadApiArgs,
}

/// `--workload-api`, of `run` and `proxy`.
#[derive(Debug, Args)]
pub struct WorkloadApiArgs {
    /// Serve the SPIFFE Workload API (this marble's X.509-SVID, key and trust bundle; JWT
    /// methods answer UNIMPLEMENTED) on this Unix socket: `unix:/PATH` or `unix:///PATH`, the
    /// syntax of SPIFFE_ENDPOINT_SOCKET. The socket is created 0600 in a directory (created
    /// 0700 when missing) that must belong to the sidecar's user and be writable by nobody
    /// else; connections from other users (peer credentials) are closed.
    /// [env: QUARRY_WORKLOAD_API] [default: not served]
    #[arg(long, value_name = "unix:PATH")]
    pub workload_api: Option<String>,
}

/// Flags of `marble-sidecar run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Flags shared by every subcommand.
    #[command(flatten)]
    pub common: CommonArgs,
    /// The SPIFFE Workload API socket.
    #[command(flatten)]
    pub workload_api: WorkloadApiArgs,
    /// The service and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Flags of `marble-sidecar activate`.
#[derive(Debug, Args)]
pub struct ActivateArgs {
    /// Flags shared by every subcommand.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Directory to write certificates, key, env file and argv into (created 0700 if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// The executable measured for simulated evidence.
    #[command(flatten)]
    pub measure: MeasureArgs,
}

/// `--sim-measure`, of `activate` and `proxy`.
#[derive(Debug, Args)]
pub struct MeasureArgs {
    /// With --tee simulated: the executable whose SHA-256 is the simulated UniqueID (looked up
    /// on PATH, symlinks resolved). Required for simulated evidence. [env: QUARRY_SIM_MEASURE]
    #[arg(long, value_name = "FILE")]
    pub sim_measure: Option<String>,
}

/// Flags shared by `run` and `activate`.
#[derive(Debug, Args)]
pub struct CommonArgs {
    /// Coordinator mesh API address, HOST:PORT ([IPv6]:PORT; port defaults to 2001).
    /// [env: QUARRY_COORDINATOR_ADDR, EDG_MARBLE_COORDINATOR_ADDR] [default: localhost:2001]
    #[arg(long, value_name = "ADDR")]
    pub coordinator: Option<String>,
    /// Marble type: a key of the manifest's Marbles. Required.
    /// [env: QUARRY_MARBLE_TYPE, EDG_MARBLE_TYPE]
    #[arg(long, value_name = "TYPE")]
    pub marble_type: Option<String>,
    /// File holding this marble's UUID; created (mode 0600) with a fresh v4 UUID when missing,
    /// an error when unparsable. [env: QUARRY_MARBLE_UUID_FILE, EDG_MARBLE_UUID_FILE]
    /// [default: ./uuid]
    #[arg(long, value_name = "FILE")]
    pub uuid_file: Option<PathBuf>,
    /// Comma-separated DNS names / IP addresses to request in the marble certificate.
    /// [env: QUARRY_MARBLE_DNS_NAMES, EDG_MARBLE_DNS_NAMES] [default: none]
    #[arg(long, value_name = "NAMES")]
    pub dns_names: Option<String>,
    /// Evidence provider: `gramine-sgx` (Gramine's /dev/attestation), `tdx` or `snp`
    /// (configfs-tsm), `auto` (detect one of those; none found is an error), or `simulated`
    /// (development only). Hardware that is configured but unavailable is a startup error,
    /// never replaced by simulation. Required. [env: QUARRY_TEE]
    #[arg(long, value_name = "PROVIDER")]
    pub tee: Option<String>,
    /// With a hardware --tee: root of the device files instead of /dev/attestation (Gramine)
    /// or /sys/kernel/config/tsm/report (configfs-tsm); for tests with a prepared directory.
    /// [env: QUARRY_ATTESTATION_ROOT]
    #[arg(long, value_name = "DIR")]
    pub attestation_root: Option<PathBuf>,
    /// With a hardware --tee: verification collateral (JSON; DCAP `QuoteCollateralV3` for
    /// SGX/TDX) sent with every piece of evidence, for coordinators without a collateral
    /// service. [env: QUARRY_COLLATERAL]
    #[arg(long, value_name = "FILE")]
    pub collateral: Option<PathBuf>,
    /// With --tee simulated: simulated platform directory (platform-ca.pem + platform-key.pem,
    /// from `quarry sim init`). [env: QUARRY_SIM_PLATFORM]
    #[arg(long, value_name = "DIR")]
    pub sim_platform: Option<PathBuf>,
    /// With --tee simulated: SignerID, 32 bytes hex. [env: QUARRY_SIM_SIGNER] [default: zeros]
    #[arg(long, value_name = "HEX")]
    pub sim_signer: Option<String>,
    /// With --tee simulated: ProductID. [env: QUARRY_SIM_PRODUCT_ID] [default: 0]
    #[arg(long, value_name = "N")]
    pub sim_product_id: Option<String>,
    /// With --tee simulated: SecurityVersion. [env: QUARRY_SIM_SVN] [default: 0]
    #[arg(long, value_name = "N")]
    pub sim_svn: Option<String>,
    /// With --tee simulated: claim a debug enclave. [env: QUARRY_SIM_DEBUG=true|false]
    #[arg(long)]
    pub sim_debug: bool,
    /// PEM file with the deployment root CA: the coordinator's certificate must chain to it
    /// and match the address's host name. [env: QUARRY_COORDINATOR_ROOT_CA]
    #[arg(long, value_name = "FILE")]
    pub coordinator_root_ca: Option<PathBuf>,
    /// Coordinator policy (JSON, see `quarry verify`): the coordinator's attestation must
    /// satisfy it; its attested root CA is then pinned. [env: QUARRY_COORDINATOR_POLICY]
    #[arg(long, value_name = "FILE")]
    pub coordinator_policy: Option<PathBuf>,
    /// With --coordinator-policy: accept a coordinator on a SIMULATED TEE (development only).
    /// [env: QUARRY_ALLOW_SIMULATED_COORDINATOR=true|false]
    #[arg(long)]
    pub allow_simulated_coordinator: bool,
    /// DANGEROUS, development only: accept any coordinator certificate (the coordinator is
    /// not authenticated). [env: QUARRY_INSECURE_SKIP_COORDINATOR_VERIFY=true|false]
    #[arg(long)]
    pub insecure_skip_coordinator_verify: bool,
    /// How often the mesh proxies fetch the coordinator's CRL (`500ms`, `30s`, `5m`; plain
    /// numbers are seconds). [env: QUARRY_CRL_INTERVAL] [default: 30s]
    #[arg(long, value_name = "DURATION")]
    pub crl_interval: Option<String>,
    /// Take every protected setting (coordinator, trust, marble identity, evidence, CRL
    /// interval, Workload API: each [env: …] of this help) only from the command line, and
    /// refuse to start (exit 2) if any of those variables is present in the environment, even
    /// empty.
    /// For launchers that write the command line but not the whole environment, like the
    /// Kubernetes injector (a pod's env and envFrom must not weaken the sidecar's trust).
    /// Logging (RUST_LOG, QUARRY_LOG_FORMAT) still comes from the environment. No variable.
    #[arg(long)]
    pub settings_from_args: bool,
}

/// Every variable [`Config::resolve`] reads (the list lives in `quarry-api`, which the
/// injector reads too). With `--settings-from-args` none may be present.
pub use quarry_api::sidecar_env::PROTECTED_ENV;

/// Everything the sidecar needs, resolved from flags and environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Base URL of the coordinator's mesh API (`https://host:port`).
    pub coordinator: reqwest::Url,
    /// The marble type to activate as.
    pub marble_type: String,
    /// Where the marble's UUID is kept.
    pub uuid_file: PathBuf,
    /// Names requested for the marble certificate.
    pub dns_names: Vec<String>,
    /// Where evidence comes from.
    pub tee: Tee,
    /// How the coordinator is authenticated.
    pub trust: CoordinatorTrust,
    /// What to do after activation.
    pub mode: Mode,
    /// How often the mesh proxies refresh the CRL.
    pub crl_interval: std::time::Duration,
    /// Unix socket path of the SPIFFE Workload API (`run` and `proxy`); `None`: not served.
    pub workload_api: Option<PathBuf>,
}

/// The evidence provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tee {
    /// Simulated evidence (development only).
    Simulated(SimulatedTee),
    /// Evidence from the TEE hardware through its runtime interface.
    Hardware(HardwareTee),
}

/// Settings of a hardware evidence provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HardwareTee {
    /// SGX (Gramine), TDX or SNP (configfs-tsm).
    pub kind: quarry_api::TeeKind,
    /// Root of the device files.
    pub root: PathBuf,
    /// Collateral file sent with the evidence.
    pub collateral: Option<PathBuf>,
}

/// Settings of the simulated evidence provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimulatedTee {
    /// Directory with `platform-ca.pem` and `platform-key.pem`.
    pub platform_dir: PathBuf,
    /// Claimed SignerID.
    pub signer_id: [u8; 32],
    /// Claimed ProductID.
    pub product_id: u64,
    /// Claimed SecurityVersion.
    pub security_version: u64,
    /// Claimed debug flag.
    pub debug: bool,
}

/// How the sidecar authenticates the coordinator (contract invariant 10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoordinatorTrust {
    /// The server certificate must chain to the root CA in this PEM file.
    PinnedRoot(PathBuf),
    /// The coordinator's attestation must satisfy this policy file; its root is then pinned.
    Policy {
        /// The coordinator policy (JSON).
        path: PathBuf,
        /// Accept a coordinator on a simulated TEE.
        allow_simulation: bool,
    },
    /// Any server certificate is accepted. Development only.
    DangerousAcceptAnyCoordinator,
}

/// What happens after activation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Run a child process.
    Run {
        /// CMD followed by its arguments (never empty).
        command: Vec<String>,
    },
    /// Run only the mesh proxies until SIGTERM.
    Proxy {
        /// The executable measured for simulated evidence.
        measure: Option<String>,
    },
    /// Write everything into a directory and exit.
    Activate {
        /// The output directory.
        out: PathBuf,
        /// The executable measured for simulated evidence.
        measure: Option<String>,
    },
}

/// Why the configuration is unusable. Exit code 2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// No marble type anywhere.
    #[error("no marble type: pass --marble-type or set QUARRY_MARBLE_TYPE (or EDG_MARBLE_TYPE)")]
    MissingMarbleType,
    /// Neither trust option was given.
    #[error("the coordinator cannot be authenticated: pass --coordinator-policy FILE or --coordinator-root-ca FILE (or QUARRY_COORDINATOR_POLICY / QUARRY_COORDINATOR_ROOT_CA), or --insecure-skip-coordinator-verify for development")]
    MissingTrust,
    /// More than one trust option was given.
    #[error("--coordinator-policy, --coordinator-root-ca and --insecure-skip-coordinator-verify exclude each other; choose one")]
    ConflictingTrust,
    /// No evidence provider was chosen.
    #[error(
        "no TEE provider: pass --tee or set QUARRY_TEE (gramine-sgx, tdx, snp, auto or simulated)"
    )]
    MissingTee,
    /// The chosen evidence provider does not exist in this build.
    #[error("TEE provider {0} is not known (available: gramine-sgx, tdx, snp, auto, simulated)")]
    UnavailableTee(String),
    /// `--tee auto` found no TEE.
    #[error("--tee auto found no TEE: no Gramine attestation files under {gramine} and no configfs-tsm with /dev/tdx_guest or /dev/sev-guest under {tsm}; refusing to start (there is no fallback to simulation)")]
    NoTeeDetected {
        /// Gramine root looked at.
        gramine: String,
        /// configfs-tsm root looked at.
        tsm: String,
    },
    /// Simulated evidence without a platform.
    #[error("--tee simulated needs --sim-platform DIR (or QUARRY_SIM_PLATFORM)")]
    MissingSimPlatform,
    /// `activate` with simulated evidence but nothing to measure.
    #[error("activate and proxy with --tee simulated need --sim-measure FILE (or QUARRY_SIM_MEASURE): the executable whose SHA-256 is the UniqueID")]
    MissingSimMeasure,
    /// `--settings-from-args` and a protected variable in the environment.
    #[error("{names} set in the environment, but with --settings-from-args the sidecar takes its coordinator, trust, identity and Workload API settings only from its command line; refusing to start (remove {them} from the container's env and envFrom)", names = .0.join(", "), them = if .0.len() == 1 { "it" } else { "them" })]
    ProtectedEnvSet(Vec<String>),
    /// A value does not parse; names where it came from.
    #[error("invalid {origin}: {reason}")]
    Invalid {
        /// The flag or variable that held the value.
        origin: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl Config {
    /// Resolve a parsed command line against an environment lookup (`None` = unset).
    ///
    /// With `--settings-from-args` a protected variable ([`PROTECTED_ENV`]) that is present
    /// at all is an error, and nothing is read from `env`.
    pub fn resolve(cli: Cli, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let from_args_only = match &cli.command {
            Command::Run(a) => a.common.settings_from_args,
            Command::Activate(a) => a.common.settings_from_args,
            Command::Proxy(a) => a.common.settings_from_args,
        };
        if from_args_only {
            // Present, not non-empty: an empty QUARRY_INSECURE_SKIP_COORDINATOR_VERIFY is
            // harmless today, but a pod that sets these at all is trying to reconfigure the
            // sidecar and should fail loudly.
            let present: Vec<String> = PROTECTED_ENV
                .iter()
                .filter(|name| env(name).is_some())
                .map(|name| (*name).to_string())
                .collect();
            if !present.is_empty() {
                return Err(ConfigError::ProtectedEnvSet(present));
            }
        }
        // Nothing at all from the environment then, so a setting added later without being
        // listed in PROTECTED_ENV is still flag-only (the test
        // `every_variable_the_resolver_reads_is_protected` catches the missing entry).
        let no_env = |_: &str| None;
        let env: &dyn Fn(&str) -> Option<String> = if from_args_only { &no_env } else { &env };
        let src = Sources { env };
        let (common, mode, workload_api) = match cli.command {
            Command::Run(a) => (
                a.common,
                Mode::Run { command: a.command },
                src.workload_api(a.workload_api)?,
            ),
            Command::Activate(a) => {
                let measure = src.measure(a.measure);
                (
                    a.common,
                    Mode::Activate {
                        out: a.out,
                        measure,
                    },
                    None,
                )
            }
            Command::Proxy(a) => {
                let measure = src.measure(a.measure);
                (
                    a.common,
                    Mode::Proxy { measure },
                    src.workload_api(a.workload_api)?,
                )
            }
        };
        if let Mode::Run { command } = &mode {
            if command.first().is_none_or(|c| c.is_empty()) {
                return Err(ConfigError::Invalid {
                    origin: "CMD".into(),
                    reason: "no command to run after `--`".into(),
                });
            }
        }

        let coordinator = match src.pick(
            common.coordinator,
            "--coordinator",
            &["QUARRY_COORDINATOR_ADDR", "EDG_MARBLE_COORDINATOR_ADDR"],
        ) {
            Some(s) => coordinator_url(&s.value).map_err(|reason| s.invalid(reason))?,
            None => {
                coordinator_url(DEFAULT_COORDINATOR).map_err(|reason| ConfigError::Invalid {
                    origin: "default coordinator address".into(),
                    reason,
                })?
            }
        };
        let marble_type = src
            .pick(
                common.marble_type,
                "--marble-type",
                &["QUARRY_MARBLE_TYPE", "EDG_MARBLE_TYPE"],
            )
            .ok_or(ConfigError::MissingMarbleType)?
            .value;
        let uuid_file = src
            .pick(
                common.uuid_file.map(path_string),
                "--uuid-file",
                &["QUARRY_MARBLE_UUID_FILE", "EDG_MARBLE_UUID_FILE"],
            )
            .map_or_else(|| PathBuf::from(DEFAULT_UUID_FILE), |s| s.value.into());
        let dns_names = src
            .pick(
                common.dns_names,
                "--dns-names",
                &["QUARRY_MARBLE_DNS_NAMES", "EDG_MARBLE_DNS_NAMES"],
            )
            .map(|s| split_names(&s.value))
            .unwrap_or_default();

        let root_ca = src.pick(
            common.coordinator_root_ca.map(path_string),
            "--coordinator-root-ca",
            &["QUARRY_COORDINATOR_ROOT_CA"],
        );
        let insecure = src.flag(
            common.insecure_skip_coordinator_verify,
            "QUARRY_INSECURE_SKIP_COORDINATOR_VERIFY",
        )?;
        let policy = src.pick(
            common.coordinator_policy.map(path_string),
            "--coordinator-policy",
            &["QUARRY_COORDINATOR_POLICY"],
        );
        let allow_simulated = src.flag(
            common.allow_simulated_coordinator,
            "QUARRY_ALLOW_SIMULATED_COORDINATOR",
        )?;
        let trust = match (root_ca, policy, insecure) {
            (Some(s), None, false) => CoordinatorTrust::PinnedRoot(s.value.into()),
            (None, Some(p), false) => CoordinatorTrust::Policy {
                path: p.value.into(),
                allow_simulation: allow_simulated,
            },
            (None, None, true) => CoordinatorTrust::DangerousAcceptAnyCoordinator,
            (None, None, false) => return Err(ConfigError::MissingTrust),
            _ => return Err(ConfigError::ConflictingTrust),
        };

        let tee_name = src
            .pick(common.tee, "--tee", &["QUARRY_TEE"])
            .ok_or(ConfigError::MissingTee)?
            .value;
        let tee = match tee_name.as_str() {
            "simulated" => {
                let platform_dir = src
                    .pick(
                        common.sim_platform.map(path_string),
                        "--sim-platform",
                        &["QUARRY_SIM_PLATFORM"],
                    )
                    .ok_or(ConfigError::MissingSimPlatform)?
                    .value
                    .into();
                let signer_id =
                    match src.pick(common.sim_signer, "--sim-signer", &["QUARRY_SIM_SIGNER"]) {
                        Some(s) => parse_hex32(&s.value).map_err(|r| s.invalid(r))?,
                        None => [0u8; 32],
                    };
                let number = |flag: Option<String>, name: &'static str, var: &'static str| {
                    src.pick(flag, name, &[var]).map_or(Ok(0), |s| {
                        s.value
                            .parse::<u64>()
                            .map_err(|e| s.invalid(format!("{:?} is not a number: {e}", s.value)))
                    })
                };
                let product_id = number(
                    common.sim_product_id,
                    "--sim-product-id",
                    "QUARRY_SIM_PRODUCT_ID",
                )?;
                let security_version = number(common.sim_svn, "--sim-svn", "QUARRY_SIM_SVN")?;
                let debug = src.flag(common.sim_debug, "QUARRY_SIM_DEBUG")?;
                Tee::Simulated(SimulatedTee {
                    platform_dir,
                    signer_id,
                    product_id,
                    security_version,
                    debug,
                })
            }
            "gramine-sgx" | "sgx" | "tdx" | "snp" | "auto" => {
                let root = src
                    .pick(
                        common.attestation_root.map(path_string),
                        "--attestation-root",
                        &["QUARRY_ATTESTATION_ROOT"],
                    )
                    .map(|s| PathBuf::from(s.value));
                let collateral = src
                    .pick(
                        common.collateral.map(path_string),
                        "--collateral",
                        &["QUARRY_COLLATERAL"],
                    )
                    .map(|s| PathBuf::from(s.value));
                let (kind, root) = hardware_kind(&tee_name, root)?;
                Tee::Hardware(HardwareTee {
                    kind,
                    root,
                    collateral,
                })
            }
            other => return Err(ConfigError::UnavailableTee(other.to_string())),
        };
        if let (
            Tee::Simulated(_),
            Mode::Activate { measure: None, .. } | Mode::Proxy { measure: None },
        ) = (&tee, &mode)
        {
            return Err(ConfigError::MissingSimMeasure);
        }

        let crl_interval = match src.pick(
            common.crl_interval,
            "--crl-interval",
            &["QUARRY_CRL_INTERVAL"],
        ) {
            Some(s) => crate::crl::parse_interval(&s.value).map_err(|r| s.invalid(r))?,
            None => crate::crl::DEFAULT_CRL_INTERVAL,
        };

        Ok(Config {
            coordinator,
            marble_type,
            uuid_file,
            dns_names,
            tee,
            trust,
            mode,
            crl_interval,
            workload_api,
        })
    }
}

/// Turns `host:port`, `[v6]:port`, `host` or `https://host:port` into the mesh API base URL.
pub fn coordinator_url(address: &str) -> Result<reqwest::Url, String> {
    let rest = match address.split_once("://") {
        Some(("https", rest)) => rest,
        Some((scheme, _)) => {
            return Err(format!(
                "{address:?}: only https is supported, not {scheme}"
            ))
        }
        None => address,
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '#', '@']) || rest.chars().any(char::is_whitespace) {
        return Err(format!("{address:?} is not HOST:PORT"));
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (inner, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{address:?}: unclosed '['"))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("{address:?} is not [IPv6]:PORT"))?,
            ),
        };
        (format!("[{inner}]"), port)
    } else {
        match rest.matches(':').count() {
            0 => (rest.to_string(), None),
            1 => {
                let (h, p) = rest.split_once(':').unwrap_or((rest, ""));
                (h.to_string(), Some(p))
            }
            _ => {
                return Err(format!(
                    "{address:?}: write IPv6 addresses in brackets, e.g. [::1]:2001"
                ))
            }
        }
    };
    if host.is_empty() || host == "[]" {
        return Err(format!("{address:?} has no host"));
    }
    let port = match port {
        None => DEFAULT_MESH_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n != 0 => n,
            _ => return Err(format!("{address:?}: {p:?} is not a port number")),
        },
    };
    reqwest::Url::parse(&format!("https://{host}:{port}"))
        .map_err(|e| format!("{address:?} is not a valid address: {e}"))
}

/// A value and the flag or variable it came from.
struct Setting {
    value: String,
    origin: String,
}

impl Setting {
    fn invalid(&self, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            origin: self.origin.clone(),
            reason: reason.into(),
        }
    }
}

struct Sources<'a> {
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl Sources<'_> {
    /// `--sim-measure`, else `QUARRY_SIM_MEASURE`.
    fn measure(&self, args: MeasureArgs) -> Option<String> {
        self.pick(args.sim_measure, "--sim-measure", &["QUARRY_SIM_MEASURE"])
            .map(|s| s.value)
    }

    /// `--workload-api`, else `QUARRY_WORKLOAD_API`, as a socket path.
    fn workload_api(&self, args: WorkloadApiArgs) -> Result<Option<PathBuf>, ConfigError> {
        self.pick(
            args.workload_api,
            "--workload-api",
            &["QUARRY_WORKLOAD_API"],
        )
        .map(|s| crate::workload::socket_path(&s.value).map_err(|r| s.invalid(r)))
        .transpose()
    }

    /// The flag if given, else the first non-empty variable of `vars`.
    fn pick(&self, flag: Option<String>, flag_name: &str, vars: &[&str]) -> Option<Setting> {
        if let Some(value) = flag {
            return Some(Setting {
                value,
                origin: flag_name.to_string(),
            });
        }
        vars.iter().find_map(|var| {
            (self.env)(var)
                .filter(|v| !v.is_empty())
                .map(|value| Setting {
                    value,
                    origin: (*var).to_string(),
                })
        })
    }

    /// A boolean: the flag when set, else the variable (`true/false`, `1/0`, `yes/no`, `on/off`).
    fn flag(&self, flag: bool, var: &str) -> Result<bool, ConfigError> {
        if flag {
            return Ok(true);
        }
        match (self.env)(var) {
            None => Ok(false),
            Some(v) => match v.trim().to_ascii_lowercase().as_str() {
                "" | "0" | "false" | "no" | "off" => Ok(false),
                "1" | "true" | "yes" | "on" => Ok(true),
                _ => Err(ConfigError::Invalid {
                    origin: var.to_string(),
                    reason: format!("{v:?} is not true or false"),
                }),
            },
        }
    }
}

/// The hardware TEE a `--tee` name selects and the root of its device files (`auto`
/// detects with the given root, or the default roots, and refuses when nothing is found).
fn hardware_kind(
    name: &str,
    root: Option<PathBuf>,
) -> Result<(quarry_api::TeeKind, PathBuf), ConfigError> {
    use quarry_api::TeeKind;
    use quarry_attestation::provider::{detect, GRAMINE_ROOT, TSM_ROOT};
    let default_root = |kind: TeeKind| match kind {
        TeeKind::Sgx => PathBuf::from(GRAMINE_ROOT),
        _ => PathBuf::from(TSM_ROOT),
    };
    let kind = match name {
        "gramine-sgx" | "sgx" => TeeKind::Sgx,
        "tdx" => TeeKind::Tdx,
        "snp" => TeeKind::Snp,
        _ => {
            let gramine = root.clone().unwrap_or_else(|| PathBuf::from(GRAMINE_ROOT));
            let tsm = root.clone().unwrap_or_else(|| PathBuf::from(TSM_ROOT));
            detect(&gramine, &tsm).ok_or_else(|| ConfigError::NoTeeDetected {
                gramine: gramine.display().to_string(),
                tsm: tsm.display().to_string(),
            })?
        }
    };
    let root = root.unwrap_or_else(|| default_root(kind));
    Ok((kind, root))
}

fn path_string(p: PathBuf) -> String {
    p.to_string_lossy().into_owned()
}

fn split_names(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .collect()
}

fn parse_hex32(text: &str) -> Result<[u8; 32], String> {
    hex::decode(text.trim())
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| format!("{text:?} is not 32 bytes of hex (64 hex digits)"))
}

#[cfg(test)]
mod tests;
