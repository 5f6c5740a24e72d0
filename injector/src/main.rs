//! `quarry-injector`: serves the sidecar injection webhook over HTTPS.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use quarry_injector::{InjectorConfig, Tee, TrustSource};

/// Quarry sidecar injector: a mutating admission webhook (AdmissionReview v1, `POST /mutate`,
/// `GET /healthz`) that wraps pods labelled quarry/marble-type in the marble sidecar and
/// refuses labelled pods it cannot wrap.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// HTTPS listen address.
    #[arg(long, env = "QUARRY_INJECTOR_ADDR", default_value = "0.0.0.0:8443")]
    listen: String,
    /// PEM certificate chain of the webhook server.
    #[arg(long, env = "QUARRY_INJECTOR_TLS_CERT")]
    tls_cert: PathBuf,
    /// PEM private key of the webhook server.
    #[arg(long, env = "QUARRY_INJECTOR_TLS_KEY")]
    tls_key: PathBuf,
    /// Coordinator mesh API the sidecars use, HOST:PORT.
    #[arg(long, env = "QUARRY_COORDINATOR_ADDR")]
    coordinator_addr: String,
    /// TEE of the marbles: simulated, gramine-sgx, tdx or snp.
    #[arg(long, env = "QUARRY_TEE")]
    tee: String,
    /// Sidecar image, by digest (repo@sha256:…).
    #[arg(long, env = "QUARRY_SIDECAR_IMAGE")]
    sidecar_image: String,
    /// Pull policy of the sidecar image.
    #[arg(
        long,
        env = "QUARRY_SIDECAR_PULL_POLICY",
        default_value = "IfNotPresent"
    )]
    sidecar_pull_policy: String,
    /// Path of marble-sidecar inside the sidecar image.
    #[arg(long, env = "QUARRY_SIDECAR_BINARY", default_value = quarry_injector::DEFAULT_SIDECAR_BINARY)]
    sidecar_binary: String,
    /// Kubernetes cluster domain (for default marble DNS names).
    #[arg(long, env = "QUARRY_CLUSTER_DOMAIN", default_value = "cluster.local")]
    cluster_domain: String,
    /// ConfigMap (in each marble namespace) holding the pinned deployment root CA.
    #[arg(
        long,
        env = "QUARRY_ROOT_CA_CONFIGMAP",
        conflicts_with = "root_ca_secret"
    )]
    root_ca_configmap: Option<String>,
    /// Secret (in each marble namespace) holding the pinned deployment root CA.
    #[arg(long, env = "QUARRY_ROOT_CA_SECRET")]
    root_ca_secret: Option<String>,
    /// Key of the root CA PEM in that ConfigMap or Secret.
    #[arg(long, env = "QUARRY_ROOT_CA_KEY", default_value = "root-ca.pem")]
    root_ca_key: String,
    /// With --tee simulated: Secret with platform-ca.pem and platform-key.pem (development only).
    #[arg(long, env = "QUARRY_SIM_PLATFORM_SECRET")]
    sim_platform_secret: Option<String>,
    /// With --tee gramine-sgx: resource limits for wrapped containers, NAME=QUANTITY, comma-separated.
    #[arg(long, env = "QUARRY_SGX_RESOURCES", value_delimiter = ',')]
    sgx_resources: Vec<String>,
    /// With --tee tdx or snp: runtimeClassName set on pods that name none.
    #[arg(long, env = "QUARRY_RUNTIME_CLASS")]
    runtime_class: Option<String>,
    /// In native-sidecar mode, also add the long-running `marble-sidecar proxy` native sidecar.
    #[arg(long, env = "QUARRY_MESH_PROXY")]
    mesh_proxy: bool,
    /// sizeLimit of the memory-backed volume for materialised secrets.
    #[arg(long, env = "QUARRY_SECRETS_SIZE_LIMIT", default_value = "16Mi")]
    secrets_size_limit: String,
    /// Log format: text or json.
    #[arg(long, env = "QUARRY_LOG_FORMAT", default_value = "text")]
    log_format: String,
}

fn config(args: &Args) -> Result<InjectorConfig, String> {
    let tee = Tee::parse(&args.tee).ok_or_else(|| {
        format!(
            "unknown --tee {:?} (allowed: simulated, gramine-sgx, tdx, snp)",
            args.tee
        )
    })?;
    let mut c = InjectorConfig::new(&args.coordinator_addr, tee, &args.sidecar_image);
    c.sidecar_pull_policy.clone_from(&args.sidecar_pull_policy);
    c.sidecar_binary.clone_from(&args.sidecar_binary);
    c.cluster_domain.clone_from(&args.cluster_domain);
    c.trust = match (&args.root_ca_configmap, &args.root_ca_secret) {
        (_, Some(s)) => TrustSource::Secret(s.clone()),
        (Some(m), None) => TrustSource::ConfigMap(m.clone()),
        (None, None) => c.trust,
    };
    c.trust_key.clone_from(&args.root_ca_key);
    c.sim_platform_secret.clone_from(&args.sim_platform_secret);
    if !args.sgx_resources.is_empty() {
        c.sgx_resources = args
            .sgx_resources
            .iter()
            .map(|r| match r.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() && !v.trim().is_empty() => {
                    Ok((k.trim().to_string(), v.trim().to_string()))
                }
                _ => Err(format!("--sgx-resources entry {r:?} is not NAME=QUANTITY")),
            })
            .collect::<Result<_, _>>()?;
    }
    c.runtime_class.clone_from(&args.runtime_class);
    c.mesh_proxy = args.mesh_proxy;
    c.secrets_size_limit.clone_from(&args.secrets_size_limit);
    c.check()?;
    Ok(c)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("QUARRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if args.log_format == "json" {
        fmt.json().init();
    } else {
        fmt.init();
    }
    let config = match config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if config.tee == Tee::Simulated {
        tracing::warn!("marbles are injected with the simulated TEE: development only");
    }
    let result = async {
        let tls = quarry_injector::server::tls_config(&args.tls_cert, &args.tls_key)?;
        let listener = tokio::net::TcpListener::bind(&args.listen).await?;
        tracing::info!(addr = %listener.local_addr()?, tee = %config.tee, "serving the injection webhook");
        let router = quarry_injector::server::router(Arc::new(config));
        tokio::select! {
            () = quarry_injector::server::serve(listener, tls, router) => {}
            _ = tokio::signal::ctrl_c() => tracing::info!("shutting down"),
        }
        anyhow::Ok(())
    }
    .await;
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
