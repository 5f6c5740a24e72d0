//! `quarry manifest check|set|get|signature`.
use std::path::{Path, PathBuf};

use quarry_api::http::{ManifestGetResponse, ManifestSetRequest, ManifestSetResponse};
use quarry_api::manifest;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::client::{Client, ConnectArgs, FetchArgs};
use crate::output::{self, Failure};

/// Arguments of `quarry manifest`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// What to do with a manifest.
    #[command(subcommand)]
    pub command: ManifestCommand,
}

/// Subcommands of `quarry manifest`.
#[derive(clap::Subcommand, Debug)]
pub enum ManifestCommand {
    /// Validate a manifest (JSON or YAML) offline, as the coordinator would.
    #[command(
        after_help = "Example:\n  quarry manifest check manifest.json\n  quarry manifest check manifest.yaml --json\n\nYAML is converted to JSON first; the fingerprint is SHA-256 of the JSON that\n'quarry manifest set' posts. Exit code 1 when the manifest is invalid."
    )]
    Check(CheckArgs),
    /// Set the deployment's manifest (the first one claims the coordinator).
    #[command(
        after_help = "Example:\n  quarry manifest set manifest.json --root-ca root.pem --recovery-data recovery.json\n\nThe manifest is checked locally first and not sent if invalid. Recovery secrets\nare written to --recovery-data (mode 0600, never overwritten) or printed."
    )]
    Set(SetArgs),
    /// Fetch the manifest the coordinator enforces, verified against its fingerprint.
    #[command(
        after_help = "Example:\n  quarry manifest get --root-ca root.pem -o deployed.json\n  quarry manifest get --root-ca root.pem --json"
    )]
    Get(FetchArgs),
    /// Print the fingerprint (hex SHA-256) of a manifest file's exact bytes, offline.
    #[command(
        after_help = "Example:\n  quarry manifest signature manifest.json\n  # compare with: quarry manifest get --json | jq -r .manifestFingerprint"
    )]
    Signature(SignatureArgs),
    /// Update the manifest: apply, acknowledge, cancel, or show the pending update.
    Update(crate::cmd::update::Args),
    /// Print the update log (manifest updates, SecurityVersion bumps, secret writes).
    Log(crate::cmd::update::LogArgs),
}

/// Flags of `quarry manifest check`.
#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// The manifest file (.json, .yaml or .yml; other names are sniffed).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Flags of `quarry manifest set`.
#[derive(clap::Args, Debug)]
pub struct SetArgs {
    /// The manifest file (.json, .yaml or .yml; other names are sniffed).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Coordinator address and trust.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Write the recovery secrets to OUT (mode 0600; must not exist yet).
    #[arg(short = 'r', long, value_name = "OUT")]
    pub recovery_data: Option<PathBuf>,
}

/// Flags of `quarry manifest signature`.
#[derive(clap::Args, Debug)]
pub struct SignatureArgs {
    /// The manifest file.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Print the fingerprint as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `quarry manifest`.
pub fn run(args: &Args) -> Result<(), Failure> {
    match &args.command {
        ManifestCommand::Check(a) => check(a),
        ManifestCommand::Set(a) => set(a),
        ManifestCommand::Get(a) => get(a),
        ManifestCommand::Signature(a) => signature(a),
        ManifestCommand::Update(a) => crate::cmd::update::run(a),
        ManifestCommand::Log(a) => crate::cmd::update::run_log(a),
    }
}

/// How a manifest file is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Yaml,
}

/// A manifest file as the JSON bytes that would be posted.
struct Source {
    format: Format,
    json: Vec<u8>,
}

impl Source {
    /// Reads `path`, converting YAML to JSON.
    fn load(path: &Path) -> Result<Source, Failure> {
        let bytes = output::read_file(path, "manifest")?;
        let format = detect(path, &bytes);
        let json = match format {
            Format::Json => bytes,
            Format::Yaml => {
                let text = std::str::from_utf8(&bytes).map_err(|e| {
                    Failure::new(
                        format!("manifest {} is not UTF-8 text: {e}", path.display()),
                        "save it as UTF-8",
                    )
                })?;
                manifest::yaml_to_json(text).map_err(|e| {
                    Failure::new(
                        format!("manifest {} is not valid YAML: {e}", path.display()),
                        "fix the YAML, or write the manifest as JSON",
                    )
                })?
            }
        };
        Ok(Source { format, json })
    }

    /// Hex SHA-256 of the bytes that would be posted.
    fn fingerprint(&self) -> String {
        hex::encode(Sha256::digest(&self.json))
    }
}

/// JSON or YAML: by extension, else JSON when the first non-blank byte opens an object.
fn detect(path: &Path, bytes: &[u8]) -> Format {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
    {
        Some(e) if e == "yaml" || e == "yml" => Format::Yaml,
        Some(e) if e == "json" => Format::Json,
        _ => match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') => Format::Json,
            _ => Format::Yaml,
        },
    }
}

/// A warning or error as JSON.
#[derive(Serialize)]
struct Finding {
    path: String,
    message: String,
}

/// What `manifest check --json` prints.
#[derive(Serialize)]
struct CheckReport {
    valid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    packages: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    marbles: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secrets: Option<usize>,
    fingerprint: String,
    warnings: Vec<Finding>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<Finding>,
}

fn check(args: &CheckArgs) -> Result<(), Failure> {
    let source = Source::load(&args.file)?;
    let fingerprint = source.fingerprint();
    let checked = match manifest::parse(&source.json) {
        Ok(c) => c,
        Err(e) => {
            if args.json {
                output::json(&CheckReport {
                    valid: false,
                    packages: None,
                    marbles: None,
                    secrets: None,
                    fingerprint,
                    warnings: Vec::new(),
                    error: Some(Finding {
                        path: e.path.clone(),
                        message: e.message.clone(),
                    }),
                })?;
            }
            return Err(Failure::bare(describe(&args.file, &e)));
        }
    };
    let m = &checked.manifest;
    if args.json {
        return output::json(&CheckReport {
            valid: true,
            packages: Some(m.packages.len()),
            marbles: Some(m.marbles.len()),
            secrets: Some(m.secrets.len()),
            fingerprint,
            warnings: checked
                .warnings
                .iter()
                .map(|w| Finding {
                    path: w.path.clone(),
                    message: w.message.clone(),
                })
                .collect(),
            error: None,
        });
    }
    for w in &checked.warnings {
        output::warn(w.to_string());
    }
    output::line(format!(
        "OK: manifest is valid ({} packages, {} marbles, {} secrets)",
        m.packages.len(),
        m.marbles.len(),
        m.secrets.len()
    ))?;
    output::line(format!(
        "fingerprint: {fingerprint}{}",
        yaml_note(source.format)
    ))
}

fn set(args: &SetArgs) -> Result<(), Failure> {
    let source = Source::load(&args.file)?;
    let checked = manifest::parse(&source.json).map_err(|e| {
        Failure::new(
            format!("invalid manifest: {}", describe(&args.file, &e)),
            "fix it (quarry manifest check FILE); nothing was sent",
        )
    })?;
    let local: Vec<String> = checked.warnings.iter().map(ToString::to_string).collect();
    for w in &local {
        output::warn(w);
    }
    if let Some(out) = &args.recovery_data {
        if out.exists() {
            return Err(Failure::new(
                format!(
                    "{} already exists; recovery secrets are never overwritten",
                    out.display()
                ),
                "choose another --recovery-data path; nothing was sent",
            ));
        }
    }
    let client = Client::from_args(&args.connect)?;
    let fingerprint = source.fingerprint();
    let response: ManifestSetResponse = client
        .post(
            "api/v2/manifest",
            &ManifestSetRequest {
                manifest: source.json,
            },
        )
        .map_err(|e| match e {
            crate::client::ApiError::Refused { message, .. } => Failure::new(
                format!("coordinator refused the manifest: {message}"),
                "fix what it names, or see 'quarry status' for the coordinator's state",
            ),
            other => other.failure("setting the manifest"),
        })?;
    for w in response.warnings.iter().filter(|w| !local.contains(w)) {
        output::warn(format!("coordinator: {w}"));
    }
    output::line(format!(
        "manifest set; fingerprint: {fingerprint}{}",
        yaml_note(source.format)
    ))?;
    match response.recovery_secrets {
        Some(secrets) => {
            let body =
                serde_json::to_vec_pretty(&serde_json::json!({ "RecoverySecrets": secrets }))
                    .map_err(|e| {
                        Failure::bare(format!("cannot encode the recovery secrets: {e}"))
                    })?;
            match &args.recovery_data {
                Some(out) => {
                    output::write_new_file(out, &body, 0o600).inspect_err(|_| {
                        // The manifest is set; the secrets must not be lost.
                        output::note("the manifest IS set; printing the recovery secrets instead:");
                        // Best effort: the write failure is reported either way.
                        let _ = output::stdout(&body);
                    })?;
                    output::line(format!(
                        "recovery secrets written to {} (mode 0600): keep them offline, they unseal the coordinator's state",
                        out.display()
                    ))
                }
                None => {
                    output::note("recovery secrets follow; store them offline, they unseal the coordinator's state");
                    output::stdout(&body)?;
                    output::line("")
                }
            }
        }
        None => {
            output::note("the manifest has no RecoveryKeys: no recovery secrets were issued, and sealed state cannot be recovered on another platform");
            Ok(())
        }
    }
}

fn get(args: &FetchArgs) -> Result<(), Failure> {
    let client = Client::from_args(&args.connect)?;
    let response: ManifestGetResponse = client.fetch("api/v2/manifest", "fetching the manifest")?;
    let bytes = quarry_api::bytes::unb64(&response.manifest).map_err(|e| {
        Failure::new(
            format!(
                "the coordinator at {} sent a manifest that is not base64: {e}",
                client.address()
            ),
            "check that --coordinator names a Quarry coordinator",
        )
    })?;
    let computed = hex::encode(Sha256::digest(&bytes));
    if !computed.eq_ignore_ascii_case(response.manifest_fingerprint.trim()) {
        return Err(Failure::new(
            format!(
                "the manifest from {} does not match its fingerprint (claimed {}, computed {computed})",
                client.address(),
                response.manifest_fingerprint
            ),
            "do not use it; attest the coordinator before trusting it",
        ));
    }
    if let Some(path) = &args.output {
        output::write_file(path, &bytes, 0o644)?;
    }
    if args.json {
        return output::json(&response);
    }
    match &args.output {
        Some(path) => output::line(format!(
            "wrote the manifest to {} (fingerprint {computed})",
            path.display()
        )),
        None => output::stdout(&bytes),
    }
}

/// What `manifest signature --json` prints.
#[derive(Serialize)]
struct Signature {
    fingerprint: String,
}

fn signature(args: &SignatureArgs) -> Result<(), Failure> {
    let bytes = output::read_file(&args.file, "manifest")?;
    let fingerprint = hex::encode(Sha256::digest(&bytes));
    if detect(&args.file, &bytes) == Format::Yaml {
        output::note(format!(
            "{} is YAML: the coordinator fingerprints the JSON that 'quarry manifest set' posts (see 'quarry manifest check')",
            args.file.display()
        ));
    }
    if args.json {
        return output::json(&Signature { fingerprint });
    }
    output::line(fingerprint)
}

/// `<path>: <message>`, naming the file when the error is about the whole document.
fn describe(file: &Path, e: &manifest::ManifestError) -> String {
    if e.path.is_empty() {
        format!("{}: {}", file.display(), e.message)
    } else {
        e.to_string()
    }
}

fn yaml_note(format: Format) -> &'static str {
    match format {
        Format::Json => "",
        Format::Yaml => " (of the JSON converted from YAML)",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_follows_extension_then_content() {
        assert_eq!(detect(Path::new("m.yaml"), b"{}"), Format::Yaml);
        assert_eq!(detect(Path::new("m.YML"), b"{}"), Format::Yaml);
        assert_eq!(detect(Path::new("m.json"), b"a: 1"), Format::Json);
        assert_eq!(
            detect(Path::new("manifest"), b"  \n{\"a\":1}"),
            Format::Json
        );
        assert_eq!(detect(Path::new("manifest"), b"Packages:\n"), Format::Yaml);
    }
}
