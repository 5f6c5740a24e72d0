//! Quarry marble sidecar: attests the service it wraps, activates it with the coordinator's
//! mesh API, materialises its certificate, files and environment, and runs it (contract §9).
//!
//! The flow: resolve the [`Config`], load the coordinator trust anchor, measure the executable
//! and set up the evidence provider, load or create the UUID, generate the marble key in
//! memory, activate ([`client::activate`]), then either run the service
//! ([`supervise::run_child`]) with the mesh proxies ([`proxy`]) and the SPIFFE Workload API
//! ([`workload`]) in the background, run only those, or write everything into a directory
//! ([`materialise::write_activation_dir`]).
#![forbid(unsafe_code)]

pub mod attest;
pub mod client;
pub mod config;
pub mod crl;
pub mod identity;
pub mod materialise;
pub mod proxy;
pub mod renew;
pub mod supervise;
pub mod workload;

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt as _;
use std::path::PathBuf;

use quarry_attestation::simulated::{SimIdentity, SimPlatform, SimProvider};
use quarry_attestation::{EvidenceProvider, ProviderError};

pub use config::{Cli, Config, ConfigError, CoordinatorTrust};

use crate::client::{ClientError, MeshClient, RetryPolicy, TrustAnchor};
use crate::config::{Mode, Tee};
use crate::identity::{IdentityError, MarbleKey};
use crate::materialise::MaterialiseError;
use crate::supervise::{ChildSpec, SuperviseError};

/// Exit code of a refused activation or any failure before the service started.
pub const EXIT_FAILURE: u8 = 1;
/// Exit code of an invalid command line or configuration.
pub const EXIT_USAGE: u8 = 2;

/// Why the sidecar stopped before (or instead of) running the service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The executable to measure cannot be found or read.
    #[error("cannot measure {program:?}: {source}")]
    Measure {
        /// The program as configured.
        program: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The evidence provider cannot be set up.
    #[error("evidence provider: {0}")]
    Provider(#[from] ProviderError),
    /// The UUID or key could not be established.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// Activation failed or was refused.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Files or environment could not be produced.
    #[error(transparent)]
    Materialise(#[from] MaterialiseError),
    /// The service could not be run.
    #[error(transparent)]
    Supervise(#[from] SuperviseError),
    /// The mesh proxies could not be started.
    #[error(transparent)]
    Proxy(#[from] proxy::ProxyError),
    /// Certificate renewal or CRL refresh could not be set up.
    #[error(transparent)]
    Upkeep(#[from] renew::UpkeepError),
    /// The SPIFFE Workload API could not be started.
    #[error(transparent)]
    WorkloadApi(#[from] workload::WorkloadApiError),
    /// `proxy` mode for a marble whose manifest entry has no `Mesh` section, without
    /// `--workload-api`.
    #[error("marble type {0} has no Mesh section in the manifest and no --workload-api is set: there is nothing to serve")]
    NoMesh(String),
    /// Waiting for a termination signal failed.
    #[error("installing signal handlers: {0}")]
    Signals(std::io::Error),
}

impl Error {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) => EXIT_USAGE,
            _ => EXIT_FAILURE,
        }
    }
}

/// Runs the configured mode; returns the exit code (the service's, for `run`).
pub async fn execute(config: Config) -> Result<i32, Error> {
    execute_with(config, &RetryPolicy::default()).await
}

/// [`execute`] with an explicit retry policy for reaching the coordinator.
pub async fn execute_with(config: Config, retry: &RetryPolicy) -> Result<i32, Error> {
    let measured = match &config.mode {
        Mode::Run { command } => command.first().cloned(),
        Mode::Activate { measure, .. } | Mode::Proxy { measure } => measure.clone(),
    };
    let (program, provider) = evidence_provider(&config.tee, measured.as_deref())?;
    let uuid = identity::load_or_create_uuid(&config.uuid_file)?;
    let key = MarbleKey::generate(&uuid)?;
    let trust = match &config.trust {
        CoordinatorTrust::Policy {
            path,
            allow_simulation,
        } => TrustAnchor::PinnedRoot(
            attest::verify_coordinator(&config.coordinator, path, *allow_simulation, &key).await?,
        ),
        other => TrustAnchor::load(other)?,
    };
    let mesh = MeshClient::new(
        config.coordinator.clone(),
        client::tls_config(&trust, &key)?,
    )?;
    tracing::info!(
        coordinator = %config.coordinator,
        marble_type = %config.marble_type,
        %uuid,
        "activating"
    );
    let response = client::activate(
        &mesh,
        &key,
        provider.as_ref(),
        &config.marble_type,
        &uuid,
        &config.dns_names,
        retry,
    )
    .await?;
    tracing::info!(spiffe_id = %response.spiffe_id, "activated");
    if response.simulation {
        tracing::warn!(
            "WARNING: this marble was activated with SIMULATED evidence; it has no TEE protection"
        );
    }
    // `run` writes its files before the proxies (and renewal, which replaces some of them)
    // start.
    if let Mode::Run { .. } = &config.mode {
        materialise::write_files(&response.parameters.files, None, &key)?;
    }
    let proxies = match config.mode {
        Mode::Activate { .. } => None,
        Mode::Run { .. } | Mode::Proxy { .. } => {
            let upkeep = renew::Upkeep {
                coordinator: config.coordinator.clone(),
                trust: trust.clone(),
                provider: std::sync::Arc::from(provider),
                spki: key.spki_der().to_vec(),
                spiffe_id: response.spiffe_id.clone(),
                crl_interval: config.crl_interval,
                files: match &config.mode {
                    Mode::Run { .. } => Some(renew::RenewedFiles {
                        written: response.parameters.files.keys().cloned().collect(),
                        base: None,
                        key_pkcs8: zeroize::Zeroizing::new(key.pkcs8_der().to_vec()),
                    }),
                    _ => None,
                },
            };
            start_background(&response, &key, upkeep, config.workload_api.as_deref()).await?
        }
    };
    match config.mode {
        Mode::Run { command } => {
            // The proxies serve in the background while the service runs.
            let _proxies = proxies;
            let env = materialise::environment(&response.parameters.env, &key)?;
            // `run` always measures its command, so the resolved program is known.
            let program = program.ok_or_else(|| ConfigError::Invalid {
                origin: "CMD".into(),
                reason: "no command to run after `--`".into(),
            })?;
            let argv = if response.parameters.argv.is_empty() {
                &command
            } else {
                &response.parameters.argv
            };
            let mut argv = argv.iter().map(OsString::from);
            let spec = ChildSpec {
                program,
                arg0: argv.next().unwrap_or_default(),
                args: argv.collect(),
                env: env
                    .iter()
                    .map(|(k, v)| (OsString::from(k), OsString::from_vec(v.to_vec())))
                    .collect(),
            };
            // The child gets its own copies; wipe the sidecar's zeroizing ones now rather
            // than at exit.
            drop(env);
            drop(response);
            Ok(supervise::run_child(spec).await?)
        }
        Mode::Proxy { .. } => {
            let proxies = proxies.ok_or_else(|| Error::NoMesh(config.marble_type.clone()))?;
            drop(response);
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .map_err(Error::Signals)?;
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: stopping the mesh proxies"),
                r = tokio::signal::ctrl_c() => {
                    r.map_err(Error::Signals)?;
                    tracing::info!("SIGINT: stopping the mesh proxies");
                }
                () = proxies.wait() => {}
            }
            Ok(0)
        }
        Mode::Activate { out, .. } => {
            materialise::write_activation_dir(&out, &response, &key)?;
            tracing::info!(dir = %out.display(), "activation written");
            Ok(0)
        }
    }
}

/// Starts what runs beside the service: the proxies of the activation's mesh configuration
/// and the SPIFFE Workload API (each if configured), with certificate renewal and CRL refresh
/// for them. `None` when neither is configured.
async fn start_background(
    response: &quarry_api::http::ActivateResponse,
    key: &MarbleKey,
    upkeep: renew::Upkeep,
    workload_api: Option<&std::path::Path>,
) -> Result<Option<proxy::Proxies>, Error> {
    if response.mesh.is_none() && workload_api.is_none() {
        return Ok(None);
    }
    let trust_domain = match &response.mesh {
        Some(mesh) => mesh.trust_domain.clone(),
        None => workload::trust_domain_of(&response.spiffe_id)
            .map_err(workload::WorkloadApiError::Identity)?
            .to_string(),
    };
    let identity = proxy::MeshIdentity::new(
        &response.certificate_chain,
        key.private_key_der(),
        &response.root_ca,
        &trust_domain,
    )?;
    let mut proxies = match &response.mesh {
        Some(mesh) => proxy::Proxies::start(mesh, &identity).await?,
        None => proxy::Proxies::without_listeners(),
    };
    if let Some(path) = workload_api {
        let svid = workload::Identity::new(
            &response.spiffe_id,
            identity.certs.clone(),
            zeroize::Zeroizing::new(key.pkcs8_der().to_vec()),
            &response.root_ca,
        )?;
        // Bound before the service starts, so it can connect at once.
        let server = workload::WorkloadApi::bind(path, svid)?;
        proxies.spawn(server.serve());
    }
    upkeep.start(&mut proxies, &identity)?;
    Ok(Some(proxies))
}

/// Sets up the evidence provider; returns the resolved measured executable with it.
fn evidence_provider(
    tee: &Tee,
    measured: Option<&str>,
) -> Result<(Option<PathBuf>, Box<dyn EvidenceProvider>), Error> {
    match tee {
        Tee::Simulated(sim) => {
            let measured = measured.ok_or(ConfigError::MissingSimMeasure)?;
            let (path, unique_id) = quarry_attestation::measure::simulated_unique_id(measured)
                .map_err(|source| Error::Measure {
                    program: measured.to_string(),
                    source,
                })?;
            let platform = SimPlatform::load(&sim.platform_dir)?;
            let provider = SimProvider::new(
                platform,
                SimIdentity {
                    unique_id,
                    signer_id: sim.signer_id,
                    product_id: sim.product_id,
                    security_version: sim.security_version,
                    debug: sim.debug,
                },
            )?;
            tracing::warn!(
                unique_id = %hex::encode(unique_id),
                measured = %path.display(),
                "WARNING: evidence is SIMULATED (development only, no TEE protection)"
            );
            Ok((Some(path), Box::new(provider)))
        }
        Tee::Hardware(hw) => {
            let provider = hardware_provider(hw)?;
            // Inside the TEE the service is part of what was measured (the enclave or the
            // confidential VM image); the command runs as given.
            Ok((measured.map(PathBuf::from), provider))
        }
    }
}

/// Opens the hardware provider and produces one piece of evidence right away, so a TEE
/// that is configured but unusable fails at startup rather than at the first activation.
fn hardware_provider(hw: &config::HardwareTee) -> Result<Box<dyn EvidenceProvider>, Error> {
    use quarry_api::{EvidenceType, TeeKind};
    use quarry_attestation::provider::{GramineProvider, TsmProvider};
    let unavailable = |e: &dyn std::fmt::Display| {
        ConfigError::Invalid {
            origin: "--tee".into(),
            reason: format!(
                "TEE {} configured but unavailable at {}: {e}; refusing to start (there is no fallback to simulation)",
                hw.kind,
                hw.root.display()
            ),
        }
    };
    let inner: Box<dyn EvidenceProvider> = match hw.kind {
        TeeKind::Sgx => Box::new(GramineProvider::open(&hw.root).map_err(|e| unavailable(&e))?),
        TeeKind::Tdx => Box::new(
            TsmProvider::open(&hw.root, EvidenceType::TdxDcap).map_err(|e| unavailable(&e))?,
        ),
        TeeKind::Snp => {
            Box::new(TsmProvider::open(&hw.root, EvidenceType::Snp).map_err(|e| unavailable(&e))?)
        }
        TeeKind::Simulated => return Err(unavailable(&"not a hardware TEE").into()),
    };
    inner
        .evidence(&[0; quarry_api::REPORT_DATA_LEN])
        .map_err(|e| unavailable(&e))?;
    let collateral = match &hw.collateral {
        None => None,
        Some(path) => {
            let text = std::fs::read(path).map_err(|e| ConfigError::Invalid {
                origin: "--collateral".into(),
                reason: format!("cannot read {}: {e}", path.display()),
            })?;
            Some(
                serde_json::from_slice(&text).map_err(|e| ConfigError::Invalid {
                    origin: "--collateral".into(),
                    reason: format!("{} is not JSON: {e}", path.display()),
                })?,
            )
        }
    };
    tracing::info!(tee = %hw.kind, root = %hw.root.display(), collateral = hw.collateral.is_some(), "hardware evidence provider ready");
    Ok(Box::new(WithCollateral { inner, collateral }))
}

/// A provider whose evidence carries the configured collateral.
struct WithCollateral {
    inner: Box<dyn EvidenceProvider>,
    collateral: Option<serde_json::Value>,
}

impl EvidenceProvider for WithCollateral {
    fn evidence(
        &self,
        report_data: &[u8; quarry_api::REPORT_DATA_LEN],
    ) -> Result<quarry_api::Evidence, quarry_attestation::ProviderError> {
        let mut evidence = self.inner.evidence(report_data)?;
        if evidence.collateral.is_none() {
            evidence.collateral = self.collateral.clone();
        }
        Ok(evidence)
    }

    fn is_simulated(&self) -> bool {
        self.inner.is_simulated()
    }
}
