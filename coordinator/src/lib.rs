//! Quarry coordinator: attests marbles against the deployment manifest, issues their mesh
//! identities, secrets and parameters, and keeps its state sealed (contract §6, §8).
#![forbid(unsafe_code)]

pub mod activation;
pub mod config;
pub mod core;
pub mod error;
pub mod extract;
pub mod manifest_ops;
pub mod mesh;
pub mod metrics;
pub mod openapi;
pub mod pki;
pub mod recovery;
pub mod renewal;
pub mod revocation;
pub mod routes;
pub mod sealing;
pub mod secrets;
pub mod secrets_api;
pub mod store;
pub mod tee;
pub mod tls;
pub mod translog;
pub mod update;
pub mod users;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::config::{Config, TeeChoice};
use crate::core::Core;
use crate::tee::Tee;

/// A coordinator with its listeners bound, ready to serve.
pub struct App {
    core: Arc<Core>,
    client: TcpListener,
    mesh: TcpListener,
    client_tls: Arc<rustls::ServerConfig>,
    mesh_tls: Arc<rustls::ServerConfig>,
    metrics: Option<TcpListener>,
}

impl App {
    /// Opens the state and binds both listeners.
    pub async fn build(config: &Config) -> anyhow::Result<App> {
        create_private_dir(&config.data_dir)?;
        let tee = tee_from_config(config)?;
        if tee.simulation {
            tracing::warn!(
                "SIMULATION MODE: this coordinator runs on a simulated TEE. Its evidence proves nothing; never use it in production"
            );
        }
        let core = Arc::new(Core::open(&config.data_dir, tee).await?);
        let resolver = tls::ServerCertResolver::new(core.clone(), config.certificate_names())?;
        let client_tls = tls::server_config(resolver.clone(), false)?;
        let mesh_tls = tls::server_config(resolver, true)?;
        let client = TcpListener::bind(config.client_addr).await.map_err(|e| {
            anyhow::anyhow!("binding the client API to {}: {e}", config.client_addr)
        })?;
        let mesh = TcpListener::bind(config.mesh_addr)
            .await
            .map_err(|e| anyhow::anyhow!("binding the mesh API to {}: {e}", config.mesh_addr))?;
        let metrics = metrics::bind(config.metrics_addr).await?;
        Ok(App {
            core,
            client,
            mesh,
            client_tls,
            mesh_tls,
            metrics,
        })
    }

    /// Address of the client API listener.
    pub fn client_addr(&self) -> std::io::Result<SocketAddr> {
        self.client.local_addr()
    }

    /// Address of the mesh API listener.
    pub fn mesh_addr(&self) -> std::io::Result<SocketAddr> {
        self.mesh.local_addr()
    }

    /// Address of the metrics listener, when `--metrics-addr` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The shared coordinator state.
    pub fn core(&self) -> Arc<Core> {
        self.core.clone()
    }

    /// Serves both APIs until the future is dropped.
    pub async fn run(self) {
        let client = tls::serve(
            self.client,
            self.client_tls,
            routes::client_router(self.core.clone()),
            "client",
        );
        let mesh = tls::serve(
            self.mesh,
            self.mesh_tls,
            routes::mesh_router(self.core.clone()),
            "mesh",
        );
        let metrics = metrics::serve(self.metrics, self.core.clone());
        tokio::join!(client, mesh, metrics);
    }
}

/// The coordinator policy for this binary and the configured TEE (`--print-policy`).
pub fn print_policy(config: &Config) -> anyhow::Result<String> {
    let tee = tee_from_config(config)?;
    Ok(serde_json::to_string_pretty(&tee.policy)?)
}

fn tee_from_config(config: &Config) -> anyhow::Result<Tee> {
    let choice = match (config.tee, config.simulation) {
        (Some(t), _) => t,
        (None, true) => TeeChoice::Simulated,
        (None, false) => anyhow::bail!(
            "no TEE configured: pass --tee (simulated, gramine-sgx, tdx, snp) or --simulation for development"
        ),
    };
    match choice {
        TeeChoice::Simulated => {
            let dir = match &config.sim_platform {
                Some(d) => d.clone(),
                None if config.simulation => {
                    let d = config.data_dir.join("sim-platform");
                    if !d.join(quarry_attestation::simulated::CA_FILE).exists() {
                        quarry_attestation::simulated::SimPlatform::create(&d)?;
                        tracing::warn!(platform = %d.display(), "created a simulated TEE platform for development");
                    }
                    d
                }
                None => anyhow::bail!(
                    "--tee simulated needs --sim-platform DIR (see `quarry sim init`)"
                ),
            };
            Tee::simulated(&dir)
        }
        hw => {
            use quarry_api::TeeKind;
            use quarry_attestation::provider::{GRAMINE_ROOT, TSM_ROOT};
            let root_for = |tee: TeeKind| {
                config.attestation_root.clone().unwrap_or_else(|| {
                    std::path::PathBuf::from(if tee == TeeKind::Sgx {
                        GRAMINE_ROOT
                    } else {
                        TSM_ROOT
                    })
                })
            };
            let tee = match hw {
                TeeChoice::GramineSgx => TeeKind::Sgx,
                TeeChoice::Tdx => TeeKind::Tdx,
                TeeChoice::Snp => TeeKind::Snp,
                _ => quarry_attestation::provider::detect(&root_for(TeeKind::Sgx), &root_for(TeeKind::Tdx))
                    .ok_or_else(|| anyhow::anyhow!(
                        "--tee auto found no TEE (no Gramine /dev/attestation, no configfs-tsm with a TDX or SNP guest device); refusing to start (pass --tee simulated explicitly for development)"
                    ))?,
            };
            tracing::info!(tee = %tee, "hardware TEE selected");
            Tee::hardware(&tee::HardwareConfig {
                tee,
                attestation_root: root_for(tee),
                collateral_dir: config
                    .collateral_dir
                    .clone()
                    .unwrap_or_else(|| config.data_dir.join("collateral")),
                pccs_url: config.pccs_url.clone(),
                kds_url: config.kds_url.clone(),
                data_dir: config.data_dir.clone(),
            })
        }
    }
}

fn create_private_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| anyhow::anyhow!("creating the data directory {}: {e}", dir.display()))?;
    }
    Ok(())
}
