//! `quarry status`: the coordinator's state.
use quarry_api::http::StatusResponse;

use crate::client::{Client, ConnectArgs};
use crate::output::{self, Failure};

/// Arguments of `quarry status`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example:\n  quarry status --coordinator coordinator.example:4433 --root-ca root.pem\n  QUARRY_COORDINATOR=localhost:4433 quarry status --insecure --json\n\nStates: 1 recovery, 2 accepting a manifest, 3 accepting marbles. The second line names the\ncoordinator's version and this CLI's (`quarry --version` prints the CLI's alone)."
)]
pub struct Args {
    /// Coordinator address and trust.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Print the status as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `quarry status`.
pub fn run(args: &Args) -> Result<(), Failure> {
    let client = Client::from_args(&args.connect)?;
    let status: StatusResponse = client.fetch("api/v2/status", "reading the coordinator status")?;
    if status.simulation {
        warn_simulation(client.address());
    }
    if args.json {
        return output::json(&status);
    }
    output::line(format!("{}: {}", status.code, status.message))?;
    if let Some(reason) = &status.recovery_reason {
        output::line(format!(
            "recovery reason: {reason} (docs/OPERATIONS.md, \"Recovery reasons\"; the coordinator's log says more)"
        ))?;
    }
    output::line(format!(
        "coordinator version {}, quarry CLI version {}",
        status
            .version
            .as_deref()
            .unwrap_or("unknown (the coordinator does not report it)"),
        env!("CARGO_PKG_VERSION")
    ))
}

/// The loud warning for a coordinator that runs on a simulated TEE.
pub fn warn_simulation(address: &str) {
    output::warn(format!(
        "the coordinator at {address} runs in SIMULATION mode: no TEE protects it; use it for development only"
    ));
}
