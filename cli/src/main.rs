//! `quarry`: the command line for Quarry deployers and relying parties.
#![forbid(unsafe_code)]

mod client;
mod cmd;
mod output;

use std::process::ExitCode;

use clap::{CommandFactory as _, Parser, Subcommand};

/// Top-level help text after the command list.
const AFTER_HELP: &str = "\
Examples:
  quarry sim init ./sim-platform
  quarry manifest check manifest.json
  quarry certificate root --insecure -o root.pem
  quarry status --root-ca root.pem
  quarry manifest set manifest.json --root-ca root.pem -r recovery.json
  quarry evidence verify --type tdx --quote quote.bin --collateral collateral.json --json
  quarry explain --manifest manifest.json --package db --type snp --quote report.bin --vcek vcek.der
  quarry package-info enclave.sig
  quarry verify --policy coordinator-policy.json --manifest manifest.json --root-out root.pem
  quarry sign-quote --quote enclave.quote --root-ca root.pem

Network commands need coordinator trust: --root-ca FILE (QUARRY_ROOT_CA) pins the
deployment's root CA; --insecure accepts any certificate (development only).
The address is --coordinator HOST:PORT (QUARRY_COORDINATOR, default localhost:4433).

Exit codes:
  0  success
  1  the operation failed: network, TLS, refused by the coordinator, invalid manifest, file I/O
  2  usage error: unknown flag, missing argument, bad address, no or conflicting trust flags

Errors are printed as one line on stderr: error: <what failed>; <what to do>";

/// Quarry: a confidential mesh coordinator's command line.
#[derive(Parser, Debug)]
#[command(name = "quarry", version, about, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
enum Command {
    /// Check, set, fetch or fingerprint the deployment manifest.
    Manifest(cmd::manifest::Args),
    /// Show the coordinator's state (1 recovery, 2 accepting manifest, 3 accepting marbles).
    Status(cmd::status::Args),
    /// Fetch the coordinator's CA certificates (root, mesh, chain).
    Certificate(cmd::certificate::Args),
    /// Print a package's reference values for the manifest (Gramine .sig or --sim executable).
    PackageInfo(cmd::package_info::Args),
    /// Verify SGX/TDX quotes and SNP reports offline.
    Evidence(cmd::evidence::Args),
    /// Compare local evidence with a manifest package, field by field.
    Explain(cmd::evidence::ExplainArgs),
    /// Read or write secrets as a user (-c CERT -k KEY).
    Secret(cmd::secret::Args),
    /// Verify the whole deployment with one attestation (online, or an offline --bundle).
    Verify(cmd::verify::Args),
    /// Print the transparency log; --verify checks it against the attested root.
    Log(cmd::verify::LogArgs),
    /// Upload a signed recovery secret to a coordinator in Recovery (state 1).
    Recover(cmd::recover::Args),
    /// Revoke a marble by UUID or a certificate by serial (-c CERT -k KEY of a RevokeMarble user).
    Revoke(cmd::revoke::Args),
    /// Have the coordinator verify and sign a quote's TCB status; checks the signature offline.
    SignQuote(cmd::sign_quote::Args),
    /// The coordinator's TCB monitor: each running marble's TCB status and policy verdict.
    Tcb(cmd::tcb::Args),
    /// Manage a simulated TEE platform (development only).
    Sim(cmd::sim::Args),
    /// Print a shell completion script.
    Completions(cmd::completions::Args),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return output::clap_error(e),
    };
    let result = match &cli.command {
        Command::Manifest(a) => cmd::manifest::run(a),
        Command::Status(a) => cmd::status::run(a),
        Command::Certificate(a) => cmd::certificate::run(a),
        Command::PackageInfo(a) => cmd::package_info::run(a),
        Command::Evidence(a) => cmd::evidence::run(a),
        Command::Explain(a) => cmd::evidence::explain(a),
        Command::Secret(a) => cmd::secret::run(a),
        Command::Verify(a) => cmd::verify::run(a),
        Command::Log(a) => cmd::verify::run_log(a),
        Command::Recover(a) => cmd::recover::run(a),
        Command::Revoke(a) => cmd::revoke::run(a),
        Command::SignQuote(a) => cmd::sign_quote::run(a),
        Command::Tcb(a) => cmd::tcb::run(a),
        Command::Sim(a) => cmd::sim::run(a),
        Command::Completions(a) => cmd::completions::run(a, Cli::command()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            failure.report();
            failure.exit_code()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
