//! `quarry sim init DIR`: create a simulated TEE platform (development only).
use std::path::PathBuf;

use quarry_attestation::simulated::{SimPlatform, CA_FILE, KEY_FILE};
use serde::Serialize;

use crate::output::{self, Failure};

/// Arguments of `quarry sim`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// What to do with a simulated platform.
    #[command(subcommand)]
    pub command: SimCommand,
}

/// Subcommands of `quarry sim`.
#[derive(clap::Subcommand, Debug)]
pub enum SimCommand {
    /// Create a simulated platform (CA certificate + signing key) in DIR; never overwrites.
    #[command(
        after_help = "Example:\n  quarry sim init ./sim-platform\n  # give ./sim-platform/platform-ca.pem to the coordinator, the key to the sidecars\n\nThe platform is SIMULATED: evidence it signs proves nothing about hardware.\nUse it for development and CI only."
    )]
    Init {
        /// Directory for the platform files (created if missing).
        dir: PathBuf,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// What `sim init` reports with `--json`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Created {
    ca: PathBuf,
    key: PathBuf,
    platform_id: String,
    simulation: bool,
}

/// Runs `quarry sim`.
pub fn run(args: &Args) -> Result<(), Failure> {
    match &args.command {
        SimCommand::Init { dir, json } => init(dir, *json),
    }
}

fn init(dir: &std::path::Path, json: bool) -> Result<(), Failure> {
    let platform = SimPlatform::create(dir).map_err(|e| {
        Failure::new(
            format!(
                "cannot create a simulated platform in {}: {e}",
                dir.display()
            ),
            "choose an empty directory (an existing platform is never overwritten)",
        )
    })?;
    output::warn(
        "this is a SIMULATED TEE platform for DEVELOPMENT ONLY: its evidence proves nothing about hardware; never use it in production",
    );
    let created = Created {
        ca: dir.join(CA_FILE),
        key: dir.join(KEY_FILE),
        platform_id: hex::encode(platform.ca_digest()),
        simulation: true,
    };
    if json {
        return output::json(&created);
    }
    output::line(format!(
        "platform CA:  {} (public; configure the coordinator with it)",
        created.ca.display()
    ))?;
    output::line(format!(
        "platform key: {} (private, mode 0600; only for sidecars that sign simulated evidence)",
        created.key.display()
    ))?;
    output::line(format!(
        "platform id:  {} (SHA-256 of the CA certificate)",
        created.platform_id
    ))
}
