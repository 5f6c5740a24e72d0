//! `quarry manifest update apply|acknowledge|cancel|get` and `quarry manifest log`.
use std::path::PathBuf;

use quarry_api::http::ManifestSetRequest;
use serde_json::Value;

use crate::client::{Client, ConnectArgs, FetchArgs};
use crate::output::{self, Failure};

/// `quarry manifest update`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// What to do.
    #[command(subcommand)]
    pub command: UpdateCommand,
}

/// Subcommands of `quarry manifest update`.
#[derive(clap::Subcommand, Debug)]
pub enum UpdateCommand {
    /// Propose an update: a package-only manifest (SecurityVersion bumps) applies at once,
    /// a full manifest waits for the acknowledgements of the users holding UpdateManifest.
    #[command(
        after_help = "Example:\n  quarry manifest update apply new.json --root-ca root.pem -c admin.crt -k admin.key"
    )]
    Apply(FileArgs),
    /// Acknowledge the pending update with its exact bytes.
    #[command(
        after_help = "Example:\n  quarry manifest update acknowledge new.json --root-ca root.pem -c alice.crt -k alice.key"
    )]
    Acknowledge(FileArgs),
    /// Cancel the pending update.
    #[command(
        after_help = "Example:\n  quarry manifest update cancel --root-ca root.pem -c admin.crt -k admin.key"
    )]
    Cancel(ConnArgs),
    /// Show the pending update (or write its manifest with -o).
    #[command(after_help = "Example:\n  quarry manifest update get --root-ca root.pem --json")]
    Get(FetchArgs),
}

/// A manifest file and the connection.
#[derive(clap::Args, Debug)]
pub struct FileArgs {
    /// The manifest (JSON) to propose or acknowledge.
    pub file: PathBuf,
    /// Connection and user authentication.
    #[command(flatten)]
    pub conn: ConnectArgs,
    /// Print the coordinator's answer as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Only the connection.
#[derive(clap::Args, Debug)]
pub struct ConnArgs {
    /// Connection and user authentication.
    #[command(flatten)]
    pub conn: ConnectArgs,
}

/// `quarry manifest log`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Example:\n  quarry manifest log --root-ca root.pem")]
pub struct LogArgs {
    /// Connection.
    #[command(flatten)]
    pub conn: ConnectArgs,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `quarry manifest update …`.
pub fn run(args: &Args) -> Result<(), Failure> {
    match &args.command {
        UpdateCommand::Apply(a) => send(a, "api/v2/update", "proposing the update"),
        UpdateCommand::Acknowledge(a) => {
            send(a, "api/v2/update-manifest", "acknowledging the update")
        }
        UpdateCommand::Cancel(a) => {
            let client = Client::from_args(&a.conn)?;
            let v: Value = client.submit(
                "api/v2/update-cancel",
                &serde_json::json!({}),
                "cancelling the update",
            )?;
            output::line(v["message"].as_str().unwrap_or("cancelled"))
        }
        UpdateCommand::Get(a) => {
            let client = Client::from_args(&a.connect)?;
            let v: Value = client.fetch("api/v2/update-manifest", "fetching the pending update")?;
            if let Some(path) = &a.output {
                let bytes = quarry_api::bytes::unb64(v["manifest"].as_str().unwrap_or_default())
                    .map_err(|e| Failure::bare(format!("pending manifest is not base64: {e}")))?;
                output::write_file(path, &bytes, 0o644)?;
            }
            if a.json {
                return output::json(&v);
            }
            output::line(v["message"].as_str().unwrap_or_default())?;
            output::line(format!("missing users: {}", join(&v["missingUsers"])))
        }
    }
}

/// Runs `quarry manifest log`.
pub fn run_log(args: &LogArgs) -> Result<(), Failure> {
    let client = Client::from_args(&args.conn)?;
    let v: Value = client.fetch("api/v2/update", "fetching the update log")?;
    if args.json {
        return output::json(&v);
    }
    for line in v["updateLog"].as_array().into_iter().flatten() {
        output::line(line.as_str().unwrap_or_default())?;
    }
    Ok(())
}

fn send(a: &FileArgs, path: &str, action: &str) -> Result<(), Failure> {
    let bytes = output::read_file(&a.file, "manifest")?;
    let client = Client::from_args(&a.conn)?;
    let v: Value = client.submit(path, &ManifestSetRequest { manifest: bytes }, action)?;
    if a.json {
        return output::json(&v);
    }
    output::line(v["message"].as_str().unwrap_or_default())?;
    let missing = v["missingAcknowledgments"].as_u64().unwrap_or(0);
    if missing > 0 {
        output::line(format!(
            "{missing} acknowledgement(s) missing; waiting for: {}",
            join(&v["missingUsers"])
        ))?;
    }
    Ok(())
}

fn join(v: &Value) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}
