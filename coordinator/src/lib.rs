//! Quarry coordinator: attests marbles against the deployment manifest, issues their mesh
//! identities, secrets and parameters, and keeps its state sealed (contract §6, §8).
#![forbid(unsafe_code)]

pub mod attestation;
pub mod clock;
pub mod config;
pub mod ear;
pub mod http;
pub mod manifest;
pub mod marble;
pub mod metrics;
pub mod pki;
pub mod recovery;
pub mod replica;
pub mod sealing;
pub mod secrets;
pub mod sign_quote;
pub mod state;
pub mod store;
pub mod tcb;
pub mod tee;
pub mod translog;
pub mod users;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::config::{Config, StoreKind, TeeChoice};
use crate::state::Core;
use crate::tee::Tee;

/// A coordinator with its listeners bound, ready to serve.
pub struct App {
    core: Arc<Core>,
    client: TcpListener,
    mesh: TcpListener,
    client_tls: Arc<rustls::ServerConfig>,
    mesh_tls: Arc<rustls::ServerConfig>,
    metrics: Option<TcpListener>,
    /// Replica tasks (etcd watch, key sharing, announcement), ended with the app.
    background: Background,
    limits: Arc<http::limits::Limits>,
}

impl App {
    /// Opens the state and binds both listeners.
    pub async fn build(config: &Config) -> anyhow::Result<App> {
        state::fs::create_private_dir(&config.data_dir).map_err(|e| {
            anyhow::anyhow!(
                "creating the data directory {}: {e}",
                config.data_dir.display()
            )
        })?;
        let tee = tee_from_config(config)?;
        if tee.simulation {
            tracing::warn!(
                "SIMULATION MODE: this coordinator runs on a simulated TEE. Its evidence proves nothing; never use it in production"
            );
        }
        let (core, peer) = match config.store_kind {
            StoreKind::File => (Arc::new(Core::open(&config.data_dir, tee).await?), None),
            StoreKind::Etcd => {
                let conn = store::etcd::EtcdConn::connect(&store::etcd::EtcdConfig {
                    endpoints: config.etcd_endpoints.clone(),
                    prefix: config.etcd_prefix.clone(),
                    ca: config.etcd_ca.clone(),
                    cert: config.etcd_cert.clone(),
                    key: config.etcd_key.clone(),
                })
                .await?;
                // Bound before the state opens, so a bad address fails fast.
                let peer = match config.peer_addr {
                    Some(a) => Some((replica::bind_peer(a).await?, a)),
                    None => None,
                };
                let core =
                    Arc::new(Core::open_etcd(&config.data_dir, tee, conn, config.peer_wait).await?);
                (core, peer)
            }
        };
        let mut tasks = start_replica(
            &core,
            peer,
            config.peer_advertise.clone(),
            config.peer_check_interval,
        )?;
        tasks.push(tcb::monitor::spawn(
            core.clone(),
            config.tcb_recheck_interval,
        ));
        let background = Background(tasks);
        let resolver =
            http::tls::ServerCertResolver::new(core.clone(), config.certificate_names())?;
        let client_tls = http::tls::server_config(resolver.clone(), false)?;
        let mesh_tls = http::tls::server_config(resolver, true)?;
        let client = TcpListener::bind(config.client_addr).await.map_err(|e| {
            anyhow::anyhow!("binding the client API to {}: {e}", config.client_addr)
        })?;
        let mesh = TcpListener::bind(config.mesh_addr)
            .await
            .map_err(|e| anyhow::anyhow!("binding the mesh API to {}: {e}", config.mesh_addr))?;
        let metrics = http::ops::bind(config.metrics_addr).await?;
        Ok(App {
            core,
            client,
            mesh,
            client_tls,
            mesh_tls,
            metrics,
            background,
            limits: Arc::new(config.limits.clone()),
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
        let serve = |listener, config, router, name| {
            http::tls::serve(listener, config, router, name, self.limits.clone())
        };
        let client = serve(
            self.client,
            self.client_tls,
            http::routes::client_router(self.core.clone(), &self.limits),
            "client",
        );
        let mesh = serve(
            self.mesh,
            self.mesh_tls,
            http::routes::mesh_router(self.core.clone(), &self.limits),
            "mesh",
        );
        let metrics = http::ops::serve(self.metrics, self.core.clone());
        let _background = self.background;
        tokio::join!(client, mesh, metrics);
    }
}

/// Background tasks aborted on drop.
struct Background(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Background {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Starts what a replica runs besides its APIs (etcd mode): the watch that keeps its caches
/// current and the key-sharing service with its announcement in etcd (a replica in Recovery
/// answers that it holds no key, and picks the state up once recovered).
fn start_replica(
    core: &Arc<Core>,
    peer: Option<(TcpListener, SocketAddr)>,
    advertise: Option<String>,
    fork_check: std::time::Duration,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let Some(conn) = core.cluster() else {
        return Ok(Vec::new());
    };
    let mut tasks = Vec::new();
    // Watched from the revision the state was loaded at (in Recovery: from now on).
    let seen = core.backend().map(|s| s.seen_revision()).unwrap_or(0);
    let changes = if seen > 0 {
        conn.watch(seen + 1)
    } else {
        conn.watch(0)
    };
    tasks.push(tokio::spawn(replica::watch::refresh_from_watch(
        core.clone(),
        changes,
    )));
    if peer.is_none() {
        tracing::warn!("etcd mode without --peer-addr: this replica shares the data encryption key with no other replica");
    }
    if let Some((listener, addr)) = peer {
        let own = Arc::new(replica::own_claims(&core.tee).map_err(anyhow::Error::msg)?);
        let advertise =
            advertise.unwrap_or_else(|| listener.local_addr().unwrap_or(addr).to_string());
        tasks.extend(replica::start_peer_service(
            core.clone(),
            conn,
            listener,
            advertise,
            own,
            fork_check,
        ));
    }
    Ok(tasks)
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
            let mut tee = Tee::simulated(&dir, config.collateral_dir.as_deref())?;
            if let Some(text) = &config.dangerous_verification_time {
                let at = quarry_attestation::timefmt::parse_verification_time(text)
                    .map_err(|e| anyhow::anyhow!("--dangerous-verification-time: {e}"))?;
                tracing::warn!(
                    verification_time = %text,
                    "WARNING: SIMULATION with a FIXED verification clock: marble evidence is checked as of this time, not now (tests and replays of recorded evidence only)"
                );
                tee.verification_time = Some(at);
            }
            Ok(tee)
        }
        _ if config.dangerous_verification_time.is_some() => anyhow::bail!(
            "--dangerous-verification-time is refused with a hardware TEE: evidence is always verified at the current time there"
        ),
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
