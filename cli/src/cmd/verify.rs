//! `quarry verify` (one attestation for the whole deployment, online or from an offline
//! bundle) and `quarry log` (the transparency log, checked against the attested root).
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use quarry_api::attestation::{
    AttestationResponse, Bundle, CoordinatorPolicy, LogEntry, LogResponse, Verified, VerifyOptions,
    LOG_PAGE_DEFAULT, LOG_PAGE_MAX,
};
use quarry_trust::relying_party::{self, RelyingPartyError};
use quarry_trust::tls::{self, Recording};
use serde_json::json;

use crate::client::Client;
use crate::output::{self, Failure};

/// `quarry verify`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  quarry verify --coordinator localhost:4433 --policy coordinator-policy.json \\
      --manifest manifest.json --root-out root.pem --save-bundle bundle.json
  quarry verify --bundle bundle.json --policy coordinator-policy.json --manifest manifest.json
  quarry verify --bundle bundle.json --policy policy.json --at 2026-11-26T12:00:00Z --allow-simulation
  quarry verify --coordinator localhost:4433 --policy coordinator-policy.json --format ear --save-bundle bundle.json
  quarry verify --bundle bundle.json --policy coordinator-policy.json --format ear")]
pub struct Args {
    /// Coordinator client API, HOST:PORT (online mode).
    #[arg(
        long,
        env = "QUARRY_COORDINATOR",
        default_value = "localhost:4433",
        conflicts_with = "bundle"
    )]
    pub coordinator: String,
    /// Coordinator policy (JSON: package fields, and SimulationPlatformCA for a simulated one).
    #[arg(long, value_name = "FILE")]
    pub policy: PathBuf,
    /// The manifest you expect (exact bytes are compared).
    #[arg(long, value_name = "FILE")]
    pub manifest: Option<PathBuf>,
    /// Accept a coordinator on a SIMULATED TEE (development only).
    #[arg(long)]
    pub allow_simulation: bool,
    /// Write an offline bundle (evidence, collateral, statement, CAs, manifest, log).
    #[arg(long, value_name = "FILE")]
    pub save_bundle: Option<PathBuf>,
    /// Write the verified root CA (PEM) here, to pin it (`--root-ca`).
    #[arg(long, value_name = "FILE")]
    pub root_out: Option<PathBuf>,
    /// Verify an offline bundle instead of contacting the coordinator.
    #[arg(long, value_name = "FILE")]
    pub bundle: Option<PathBuf>,
    /// Verification time for --bundle: RFC 3339 or Unix seconds (default: now).
    #[arg(long, value_name = "TIME", requires = "bundle")]
    pub at: Option<String>,
    /// Print the result as JSON (the same as --format json).
    #[arg(long)]
    pub json: bool,
    /// Output: a summary (text), JSON, or the coordinator's EAR (a JWT, ES256), checked
    /// against the key the verified quote binds (fetched with format=ear online; read from
    /// the bundle offline).
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

/// What `quarry verify` prints.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A one-screen summary.
    Text,
    /// The verified statement, claims and marbles as JSON.
    Json,
    /// The coordinator's EAR (compact JWS), after checking it.
    Ear,
}

/// `quarry log`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:
  quarry log --coordinator localhost:4433 --policy coordinator-policy.json --verify
  quarry log --coordinator localhost:4433 --policy coordinator-policy.json --verify --page-size 500 --json")]
pub struct LogArgs {
    /// Coordinator client API, HOST:PORT.
    #[arg(long, env = "QUARRY_COORDINATOR", default_value = "localhost:4433")]
    pub coordinator: String,
    /// Coordinator policy (see `quarry verify`).
    #[arg(long, value_name = "FILE")]
    pub policy: PathBuf,
    /// Accept a coordinator on a SIMULATED TEE (development only).
    #[arg(long)]
    pub allow_simulation: bool,
    /// Check that the entries hash to the attested log root.
    #[arg(long)]
    pub verify: bool,
    /// Entries fetched per request (the coordinator pages `GET /api/v2/log`; at most 10000).
    #[arg(long, value_name = "N", default_value_t = LOG_PAGE_DEFAULT, value_parser = clap::value_parser!(u64).range(1..=LOG_PAGE_MAX))]
    pub page_size: u64,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `quarry verify`.
pub fn run(args: &Args) -> Result<(), Failure> {
    let policy = load_policy(&args.policy)?;
    let manifest = match &args.manifest {
        Some(p) => Some(output::read_file(p, "manifest")?),
        None => None,
    };
    let want_ear = args.format == Format::Ear;
    let (verified, bundle) = match &args.bundle {
        Some(path) => {
            let bytes = output::read_file(path, "bundle")?;
            let bundle: Bundle = serde_json::from_slice(&bytes).map_err(|e| {
                Failure::new(
                    format!(
                        "{} is not a Quarry bundle (line {} column {}): {e}",
                        path.display(),
                        e.line(),
                        e.column()
                    ),
                    "pass a file written by quarry verify --save-bundle",
                )
            })?;
            let now = match &args.at {
                Some(t) => parse_time(t)?,
                None => SystemTime::now(),
            };
            // The nonce made the evidence fresh when the bundle was captured; offline, the
            // statement's own nonce is taken as the expected one.
            let nonce = match &bundle.attestation.statement.nonce {
                Some(n) => Some(hex::decode(n).map_err(|e| {
                    Failure::new(
                        format!("bundle statement nonce is not hex: {e}"),
                        "recapture the bundle",
                    )
                })?),
                None => None,
            };
            let options = VerifyOptions {
                nonce: nonce.as_deref(),
                manifest: manifest.as_deref(),
                allow_simulation: args.allow_simulation,
                presented_chain: None,
                log: Some(&bundle.log),
                now,
            };
            let v = verify(&bundle.attestation, &policy, &options)?;
            if want_ear && bundle.attestation.ear.is_none() {
                return Err(Failure::new(
                    format!(
                        "{} carries no EAR (it was saved without --format ear)",
                        path.display()
                    ),
                    "recapture it with quarry verify --format ear --save-bundle FILE",
                ));
            }
            (v, bundle)
        }
        None => {
            let (att, log, chain, nonce) = fetch(&args.coordinator, LOG_PAGE_DEFAULT, want_ear)?;
            let options = VerifyOptions {
                nonce: Some(&nonce),
                manifest: manifest.as_deref(),
                allow_simulation: args.allow_simulation,
                presented_chain: Some(&chain),
                log: Some(&log),
                now: SystemTime::now(),
            };
            let v = verify(&att, &policy, &options)?;
            let bundle = Bundle {
                version: 1,
                captured_at: unix_now(),
                attestation: att,
                log,
            };
            (v, bundle)
        }
    };
    // The EAR is checked before anything is written: a bundle or pin is only kept for a
    // coordinator whose whole answer verified.
    let ear = if want_ear {
        Some(
            quarry_trust::ear::verify_ear(&bundle.attestation, &verified)
                .map_err(|e| {
                    Failure::new(
                        e.to_string(),
                        "do not trust this EAR; verify the coordinator again (quarry verify)",
                    )
                })
                .map(|_| bundle.attestation.ear.clone().unwrap_or_default())?,
        )
    } else {
        None
    };
    if let Some(path) = &args.save_bundle {
        let bytes = serde_json::to_vec_pretty(&bundle)
            .map_err(|e| Failure::bare(format!("encoding the bundle: {e}")))?;
        output::write_file(path, &bytes, 0o644)?;
    }
    if let Some(path) = &args.root_out {
        let pem = quarry_api::bytes::encode_pem("CERTIFICATE", &verified.root_ca_der);
        output::write_file(path, pem.as_bytes(), 0o644)?;
    }
    if let Some(token) = ear {
        if verified.statement.simulation {
            output::warn("SIMULATION: this EAR appraises a SIMULATED TEE (status contraindicated); it proves NOTHING about confidentiality");
        }
        return output::line(token);
    }
    print_summary(
        &verified,
        args.json || args.format == Format::Json,
        bundle.log.len(),
    )
}

/// Runs `quarry log`.
pub fn run_log(args: &LogArgs) -> Result<(), Failure> {
    let policy = load_policy(&args.policy)?;
    let (att, log, chain, nonce) = fetch(&args.coordinator, args.page_size, false)?;
    let options = VerifyOptions {
        nonce: Some(&nonce),
        manifest: None,
        allow_simulation: args.allow_simulation,
        presented_chain: Some(&chain),
        log: if args.verify { Some(&log) } else { None },
        now: SystemTime::now(),
    };
    verify(&att, &policy, &options)?;
    if args.json {
        return output::json(&json!({
            "verified": args.verify,
            "size": att.statement.log_size,
            "root": att.statement.log_root,
            "entries": log,
        }));
    }
    for e in &log {
        output::line(format!(
            "{:>6}  {}",
            e.index,
            quarry_api::statement::canonical_json(&e.event).unwrap_or_default()
        ))?;
    }
    output::line(format!(
        "log size {}, root {}{}",
        att.statement.log_size,
        att.statement.log_root,
        if args.verify {
            " (verified: the entries hash to the attested root)"
        } else {
            " (not checked; pass --verify)"
        }
    ))
}

fn load_policy(path: &std::path::Path) -> Result<CoordinatorPolicy, Failure> {
    relying_party::load_policy(path).map_err(failure)
}

type Fetched = (AttestationResponse, Vec<LogEntry>, Vec<Vec<u8>>, [u8; 32]);

/// Fetches the attestation with a fresh nonce (with `ear`, in `format=ear`: version-2
/// statement, EAR and its key) and the whole log (`page` entries per request), recording the
/// TLS chain.
fn fetch(address: &str, page: u64, ear: bool) -> Result<Fetched, Failure> {
    let nonce = relying_party::fresh_nonce().map_err(failure)?;
    let recording = Arc::new(Recording::new());
    let config = tls::client_with_verifier(recording.clone())
        .map_err(|e| Failure::bare(format!("cannot configure TLS 1.3: {e}")))?
        .with_no_client_auth();
    let client = Client::new(address, config)?;
    let path = if ear {
        relying_party::ear_attestation_path(&nonce)
    } else {
        relying_party::attestation_path(&nonce)
    };
    let att: AttestationResponse = client.fetch(&path, "fetching the attestation")?;
    // Entries appended after the attestation are outside the attested root: read up to its size.
    let entries = fetch_log(&client, att.statement.log_size, page)?;
    Ok((att, entries, recording.chain(), nonce))
}

/// The first `size` log entries, read `page` at a time (`from`, `limit`).
fn fetch_log(client: &Client, size: u64, page: u64) -> Result<Vec<LogEntry>, Failure> {
    let mut entries: Vec<LogEntry> = Vec::new();
    while (entries.len() as u64) < size {
        let from = entries.len() as u64;
        let limit = (size - from).min(page.clamp(1, LOG_PAGE_MAX));
        let page: LogResponse = client.fetch(
            &format!("api/v2/log?from={from}&limit={limit}"),
            &format!("fetching the transparency log from entry {from}"),
        )?;
        let before = entries.len();
        // A coordinator that ignores `limit` answers everything from `from` on.
        entries.extend(page.entries.into_iter().take(limit as usize));
        if entries.len() == before {
            return Err(Failure::new(
                format!(
                    "the coordinator's log ends at {before} entries but its attestation covers {size}"
                ),
                "do not trust this coordinator; its log does not match its attestation",
            ));
        }
    }
    Ok(entries)
}

/// Verifies the coordinator's attestation against the policy (`quarry_trust`).
fn verify(
    att: &AttestationResponse,
    policy: &CoordinatorPolicy,
    options: &VerifyOptions<'_>,
) -> Result<Verified, Failure> {
    relying_party::verify(att, policy, options).map_err(failure)
}

/// The one-line failure of a relying-party refusal, with what to do about it.
fn failure(e: RelyingPartyError) -> Failure {
    let hint = match &e {
        RelyingPartyError::PolicyUnreadable { .. } => "check the path and its permissions",
        RelyingPartyError::Policy { .. } => {
            "fix the policy file (see docs/coordinator-policy.example.json)"
        }
        RelyingPartyError::SimulationPlatformCa { .. } => {
            "paste the PEM of the platform's platform-ca.pem"
        }
        RelyingPartyError::Random => return Failure::bare(e.to_string()),
        RelyingPartyError::Attestation(_) => {
            "do not trust this coordinator; check the policy, manifest and bundle"
        }
    };
    Failure::new(e.to_string(), hint)
}

fn print_summary(v: &Verified, as_json: bool, log_len: usize) -> Result<(), Failure> {
    let st = &v.statement;
    let manifest: Option<quarry_api::manifest::Manifest> = v
        .manifest
        .as_deref()
        .and_then(|m| quarry_api::manifest::parse(m).ok())
        .map(|c| c.manifest);
    let marbles: Vec<serde_json::Value> = manifest
        .iter()
        .flat_map(|m| {
            m.marbles.iter().map(|(t, mb)| {
                let pkg = m.packages.get(&mb.package);
                json!({
                    "type": t,
                    "package": mb.package,
                    "tee": pkg.map(|p| p.tee.as_str()),
                    "uniqueId": pkg.and_then(|p| p.unique_id.as_ref()).map(hex::encode),
                    "signerId": pkg.and_then(|p| p.signer_id.as_ref()).map(hex::encode),
                })
            })
        })
        .collect();
    if as_json {
        return output::json(&json!({
            "verified": true,
            "simulation": st.simulation,
            "statement": st,
            "claims": v.claims,
            "rootCaSha256": st.root_ca_sha256,
            "manifestFingerprint": st.manifest_sha256,
            "marbles": marbles,
            "logSize": st.log_size,
            "logEntriesChecked": log_len,
        }));
    }
    if st.simulation {
        output::warn("SIMULATION: this coordinator runs on a SIMULATED TEE; its evidence proves NOTHING about confidentiality");
    }
    let id = &v.claims.identity;
    output::line(format!(
        "OK: coordinator verified{}",
        if st.simulation { " (SIMULATION)" } else { "" }
    ))?;
    output::line(format!(
        "  TEE: {}{}  TCB: {}",
        v.claims.tee,
        if v.claims.debug { " (DEBUG)" } else { "" },
        v.claims.tcb_status.as_str()
    ))?;
    if let Some(u) = &id.unique_id {
        output::line(format!("  UniqueID: {}", hex::encode(u)))?;
    }
    if let Some(s) = &id.signer_id {
        output::line(format!("  SignerID: {}", hex::encode(s)))?;
    }
    output::line(format!("  root CA SHA-256: {}", st.root_ca_sha256))?;
    output::line(format!(
        "  manifest: {}",
        st.manifest_sha256.as_deref().unwrap_or("(none set yet)")
    ))?;
    for m in &marbles {
        output::line(format!(
            "    marble {} → package {} ({}) {}",
            m["type"].as_str().unwrap_or_default(),
            m["package"].as_str().unwrap_or_default(),
            m["tee"].as_str().unwrap_or_default(),
            m["uniqueId"]
                .as_str()
                .map(|u| format!("UniqueID {u}"))
                .or_else(|| m["signerId"].as_str().map(|s| format!("SignerID {s}")))
                .unwrap_or_default()
        ))?;
    }
    output::line(format!(
        "  transparency log: {} entries, root {} ({} verified)",
        st.log_size, st.log_root, log_len
    ))
}

fn parse_time(text: &str) -> Result<SystemTime, Failure> {
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(UNIX_EPOCH + Duration::from_secs(secs));
    }
    let t = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| {
            Failure::usage(
                format!("--at {text:?}: {e}"),
                "give RFC 3339 (2026-11-26T12:00:00Z) or Unix seconds",
            )
        })?;
    let secs = u64::try_from(t.unix_timestamp()).map_err(|_| {
        Failure::usage(format!("--at {text:?} is before 1970"), "give a later time")
    })?;
    Ok(UNIX_EPOCH + Duration::from_secs(secs))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
