//! `quarry-coordinator`: loads configuration, builds the app, serves until a signal.
#![forbid(unsafe_code)]

use clap::Parser;
use quarry_coordinator::config::{Config, LogFormat};
use quarry_coordinator::App;

/// Upper bound of blocking threads (evidence verification, fsync): bounded so the process
/// fits an enclave's fixed thread count.
const MAX_BLOCKING_THREADS: usize = 48;

fn main() -> std::process::ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(serve())
}

async fn serve() -> std::process::ExitCode {
    let config = Config::parse();
    init_logging(config.log_format);
    if config.print_policy {
        return match quarry_coordinator::print_policy(&config) {
            Ok(p) => {
                println!("{p}");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: cannot compute the policy: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let app = match App::build(&config).await {
        Ok(app) => app,
        Err(e) => {
            tracing::error!("cannot start: {e:#}");
            eprintln!("error: cannot start the coordinator: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match (app.client_addr(), app.mesh_addr()) {
        (Ok(c), Ok(m)) => {
            tracing::info!(client_api = %c, mesh_api = %m, state = app.core().state().code(), "coordinator listening")
        }
        _ => tracing::info!("coordinator listening"),
    }
    if let Some(addr) = app.metrics_addr() {
        tracing::info!(metrics = %addr, "metrics listening");
    }
    tokio::select! {
        _ = app.run() => {}
        _ = shutdown_signal() => tracing::info!("shutting down"),
    }
    std::process::ExitCode::SUCCESS
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("QUARRY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
