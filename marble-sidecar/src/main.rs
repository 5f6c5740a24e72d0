//! `marble-sidecar`: parse the command line, resolve it against the environment, run.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser as _;
use marble_sidecar::{Cli, Config, EXIT_FAILURE, EXIT_USAGE};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(EXIT_USAGE));
        }
    };
    init_logging();
    let config = match Config::resolve(cli, env_var) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("starting the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let result = runtime.block_on(marble_sidecar::execute(config));
    drop(runtime);
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(EXIT_FAILURE)),
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// The process environment; non-UTF-8 values are passed on lossily and fail validation later.
fn env_var(name: &str) -> Option<String> {
    std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
}

/// Logs to stderr; `RUST_LOG` sets the filter (default `info`), `QUARRY_LOG_FORMAT=json`
/// (or MarbleRun's `EDG_LOG_FORMAT=json`) switches to JSON lines.
fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = env_var("QUARRY_LOG_FORMAT")
        .filter(|v| !v.is_empty())
        .or_else(|| env_var("EDG_LOG_FORMAT"))
        .is_some_and(|v| v.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
