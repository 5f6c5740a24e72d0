//! `quarry evidence verify` and `quarry explain`: verify local hardware evidence and compare
//! its claims with a manifest package, field by field.
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use quarry_api::{Claims, Package, TcbStatus, TeeKind};
use quarry_attestation::dcap::{parse_collateral, DcapVerifier};
use quarry_attestation::snp::{SnpCollateral, SnpVerifier};
use quarry_attestation::{check_package, VerifyError};
use serde_json::{json, Value};

use crate::output::{self, Failure};

/// Evidence flags shared by `evidence verify` and `explain`.
#[derive(clap::Args, Debug)]
pub struct EvidenceArgs {
    /// Evidence type.
    #[arg(long = "type", value_enum)]
    pub kind: Kind,
    /// The quote (SGX/TDX) or attestation report (SNP), raw bytes.
    #[arg(long, value_name = "FILE")]
    pub quote: PathBuf,
    /// SGX/TDX collateral: dcap-qvl QuoteCollateralV3 JSON.
    #[arg(long, value_name = "FILE")]
    pub collateral: Option<PathBuf>,
    /// SNP: the VCEK or VLEK, DER or PEM.
    #[arg(long, value_name = "FILE")]
    pub vcek: Option<PathBuf>,
    /// SNP: PEM with the ASK or ASVK and the ARK (default: AMD's built-in ASK + ARK).
    #[arg(long, value_name = "FILE")]
    pub ca_chain: Option<PathBuf>,
    /// Verification time: RFC 3339 or Unix seconds (default: now).
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,
    /// Accept debug enclaves / VMs.
    #[arg(long)]
    pub allow_debug: bool,
    /// SNP: highest VMPL accepted (0 = full guest; 1..3 under an SVSM). `explain` uses the
    /// package's MaxVMPL unless this is given.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=3))]
    pub max_vmpl: Option<u32>,
    /// Accepted TCB statuses, comma-separated (default: UpToDate,SWHardeningNeeded).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub accepted_tcb_statuses: Vec<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Evidence types on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// Intel SGX DCAP quote v3.
    Sgx,
    /// Intel TDX DCAP quote v4/v5.
    Tdx,
    /// AMD SEV-SNP attestation report.
    Snp,
}

/// Arguments of `quarry evidence`.
#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: Sub,
}

#[derive(clap::Subcommand, Debug)]
enum Sub {
    /// Verify an SGX/TDX quote or SNP report offline; exit 0 iff it verifies under the policy.
    #[command(
        after_help = "Examples:\n  quarry evidence verify --type sgx --quote quote.bin --collateral collateral.json --at 2025-07-01T00:00:00Z\n  quarry evidence verify --type snp --quote report.bin --vcek vcek.der --ca-chain ask_ark.pem --json"
    )]
    Verify(EvidenceArgs),
}

/// Arguments of `quarry explain`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example:\n  quarry explain --manifest manifest.json --package backend --type tdx --quote quote.bin --collateral collateral.json"
)]
pub struct ExplainArgs {
    /// The manifest (JSON or YAML).
    #[arg(long, value_name = "FILE")]
    pub manifest: PathBuf,
    /// The package to compare with.
    #[arg(long, value_name = "NAME")]
    pub package: String,
    #[command(flatten)]
    evidence: EvidenceArgs,
}

/// Runs `quarry evidence`.
pub fn run(args: &Args) -> Result<(), Failure> {
    match &args.command {
        Sub::Verify(a) => verify(a),
    }
}

fn verify(args: &EvidenceArgs) -> Result<(), Failure> {
    let (claims, error) = evaluate(args)?;
    if args.json {
        output::json(&json!({
            "verified": error.is_none(),
            "error": error,
            "claims": claims.as_ref().map(claims_json),
        }))?;
    } else {
        if let Some(c) = &claims {
            print_claims(c)?;
        }
        if error.is_none() {
            output::line("verified: yes")?;
        }
    }
    match error {
        None => Ok(()),
        Some(e) => Err(Failure::bare(format!("evidence refused: {e}"))),
    }
}

/// Runs `quarry explain`.
pub fn explain(args: &ExplainArgs) -> Result<(), Failure> {
    let mut package = load_package(&args.manifest, &args.package)?;
    if let Some(limit) = args.evidence.max_vmpl {
        package.max_vmpl = limit;
    }
    let (claims, error) = evaluate_with(&args.evidence, true)?;
    let rows = claims
        .as_ref()
        .map(|c| compare(&package, c))
        .unwrap_or_default();
    let matches = claims.is_some() && rows.iter().all(|r| r.ok);
    if args.evidence.json {
        output::json(&json!({
            "package": args.package,
            "verified": error.is_none(),
            "error": error,
            "matches": matches,
            "fields": rows.iter().map(|r| json!({
                "field": r.field, "expected": r.expected, "actual": r.actual, "ok": r.ok
            })).collect::<Vec<_>>(),
            "claims": claims.as_ref().map(claims_json),
        }))?;
    } else {
        output::line(format!(
            "package {} (TEE {}) against {} evidence:",
            args.package,
            package.tee,
            kind_name(args.evidence.kind)
        ))?;
        for r in &rows {
            output::line(format!(
                "  {} {:<20} expected {}  actual {}",
                if r.ok { "ok      " } else { "MISMATCH" },
                r.field,
                r.expected,
                r.actual
            ))?;
        }
        if let Some(st) = claims.as_ref().and_then(|c| c.tcb_standing.as_ref()) {
            for line in standing_lines(st) {
                output::line(format!("  {line}"))?;
            }
        }
    }
    match (error, matches) {
        (Some(e), _) => Err(Failure::bare(format!("evidence refused: {e}"))),
        (None, false) => Err(Failure::bare(format!(
            "the evidence does not match package {}",
            args.package
        ))),
        (None, true) => {
            if !args.evidence.json {
                output::line("result: the evidence satisfies the package")?;
            }
            Ok(())
        }
    }
}

/// Verifies and applies the command-line policy: (claims if the evidence verified
/// cryptographically, the refusal if any).
fn evaluate(args: &EvidenceArgs) -> Result<(Option<Claims>, Option<String>), Failure> {
    evaluate_with(args, false)
}

fn evaluate_with(
    args: &EvidenceArgs,
    package_decides: bool,
) -> Result<(Option<Claims>, Option<String>), Failure> {
    let now = parse_time(args.at.as_deref())?;
    let accepted = accepted_statuses(&args.accepted_tcb_statuses)?;
    let quote = output::read_file(&args.quote, "quote")?;
    // Debug is decided here (not in the verifier) so the claims are shown with the refusal.
    let result = match args.kind {
        Kind::Sgx | Kind::Tdx => {
            let path = args.collateral.as_ref().ok_or_else(|| {
                Failure::usage(
                    format!("--type {} needs --collateral FILE", kind_name(args.kind)),
                    "pass the QuoteCollateralV3 JSON of the quote's FMSPC",
                )
            })?;
            let text = read_text(path, "collateral")?;
            let collateral = parse_collateral(&text).map_err(|e| {
                Failure::new(
                    format!("{}: {e}", path.display()),
                    "pass dcap-qvl QuoteCollateralV3 JSON",
                )
            })?;
            let v = if args.kind == Kind::Sgx {
                DcapVerifier::sgx()
            } else {
                DcapVerifier::tdx()
            };
            v.allow_debug(true)
                .verify_quote(&quote, Some(&collateral), now)
        }
        Kind::Snp => {
            let path = args.vcek.as_ref().ok_or_else(|| {
                Failure::usage(
                    "--type snp needs --vcek FILE",
                    "pass the VCEK or VLEK (DER or PEM) of the report's chip and TCB",
                )
            })?;
            let bytes = output::read_file(path, "VCEK")?;
            let vek = if std::str::from_utf8(&bytes).is_ok_and(|t| t.contains("-----BEGIN")) {
                String::from_utf8_lossy(&bytes).into_owned()
            } else {
                quarry_api::bytes::encode_pem("CERTIFICATE", &bytes)
            };
            let ca_chain = args
                .ca_chain
                .as_ref()
                .map(|p| read_text(p, "CA chain"))
                .transpose()?;
            // `explain` leaves the VMPL to the package (or to --max-vmpl, applied there).
            let max_vmpl = match (package_decides, args.max_vmpl) {
                (true, _) => quarry_attestation::snp::HIGHEST_VMPL,
                (false, limit) => limit.unwrap_or(0),
            };
            SnpVerifier::new()
                .allow_debug(true)
                .max_vmpl(max_vmpl)
                .verify_report(&quote, Some(&SnpCollateral { vek, ca_chain }), now)
        }
    };
    let claims = match result {
        Ok(c) => c,
        Err(e) => return Ok((None, Some(e.to_string()))),
    };
    if package_decides {
        return Ok((Some(claims), None));
    }
    let mut error = None;
    if claims.debug && !args.allow_debug {
        error = Some(
            VerifyError::Debug(
                "the enclave or VM runs in debug mode; pass --allow-debug to accept it".into(),
            )
            .to_string(),
        );
    } else if !accepted.contains(&claims.tcb_status) {
        error = Some(format!(
            "TCB status {} is not accepted (accepted: {})",
            claims.tcb_summary(),
            TcbStatus::join(&accepted)
        ));
    }
    Ok((Some(claims), error))
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Sgx => "sgx",
        Kind::Tdx => "tdx",
        Kind::Snp => "snp",
    }
}

fn read_text(path: &Path, what: &str) -> Result<String, Failure> {
    let bytes = output::read_file(path, what)?;
    String::from_utf8(bytes).map_err(|_| {
        Failure::new(
            format!("{what} {} is not UTF-8 text", path.display()),
            "pass a text (JSON or PEM) file",
        )
    })
}

/// RFC 3339 or Unix seconds; absent = now.
pub fn parse_time(text: Option<&str>) -> Result<SystemTime, Failure> {
    let Some(t) = text else {
        return Ok(SystemTime::now());
    };
    let t = t.trim();
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(UNIX_EPOCH + Duration::from_secs(secs));
    }
    let dt = time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
        .map_err(|e| {
            Failure::usage(
                format!("--at {t:?} is not RFC 3339 or Unix seconds: {e}"),
                "write e.g. 2025-07-01T00:00:00Z or 1751328000",
            )
        })?;
    let secs = u64::try_from(dt.unix_timestamp())
        .map_err(|_| Failure::usage(format!("--at {t:?} is before 1970"), "pass a later time"))?;
    Ok(UNIX_EPOCH + Duration::from_secs(secs))
}

fn accepted_statuses(list: &[String]) -> Result<Vec<TcbStatus>, Failure> {
    if list.is_empty() {
        return Ok(TcbStatus::DEFAULT_ACCEPTED.to_vec());
    }
    list.iter()
        .map(|s| {
            TcbStatus::parse(s.trim()).ok_or_else(|| {
                Failure::usage(
                    format!("unknown TCB status {s:?}"),
                    "use UpToDate, SWHardeningNeeded, ConfigurationNeeded, ConfigurationAndSWHardeningNeeded, OutOfDate, OutOfDateConfigurationNeeded",
                )
            })
        })
        .collect()
}

/// The claims as the `--json` contract names them.
pub fn claims_json(c: &Claims) -> Value {
    let f = |name: &str| {
        c.identity
            .fields
            .get(name)
            .cloned()
            .map(|s| s.to_lowercase())
    };
    let mut out = json!({
        "tee": c.tee.as_str(),
        "tcb_status": c.tcb_status.as_str(),
        "advisory_ids": c.advisory_ids,
        "debug": c.debug,
        "report_data": hex::encode(c.report_data),
        "platform_id": c.platform_id,
    });
    let extra = match c.tee {
        TeeKind::Sgx | TeeKind::Simulated => json!({
            "mrenclave": c.identity.unique_id.as_ref().map(hex::encode),
            "mrsigner": c.identity.signer_id.as_ref().map(hex::encode),
            "isv_prod_id": c.identity.product_id,
            "isv_svn": c.identity.security_version,
        }),
        TeeKind::Tdx => json!({
            "mrtd": f("MRTD"),
            "rtmr0": f("RTMR0"),
            "rtmr1": f("RTMR1"),
            "rtmr2": f("RTMR2"),
            "rtmr3": f("RTMR3"),
            "mrseam": f("MRSEAM"),
        }),
        TeeKind::Snp => json!({
            "measurement": f("Measurement"),
            "host_data": f("HostData"),
            "id_key_digest": f("IDKeyDigest"),
            "policy": f("Policy").and_then(|p| u64::from_str_radix(p.trim_start_matches("0x"), 16).ok()),
            "vmpl": f("VMPL").and_then(|v| v.parse::<u64>().ok()),
            "chip_id": f("ChipID"),
            "reported_tcb": c.reported_tcb.map(|t| json!({
                "bootloader": t.bootloader, "tee": t.tee, "snp": t.snp, "microcode": t.microcode,
            })),
        }),
    };
    if let (Value::Object(o), Value::Object(e)) = (&mut out, extra) {
        o.extend(e);
        if let Some(st) = &c.tcb_standing {
            o.insert("tcb_standing".into(), json!(st));
        }
    }
    out
}

fn print_claims(c: &Claims) -> Result<(), Failure> {
    if let Value::Object(mut map) = claims_json(c) {
        // Shown in its own lines below rather than as one JSON value.
        map.remove("tcb_standing");
        for (k, v) in map {
            let shown = match v {
                Value::String(s) => s,
                Value::Null => "(none)".into(),
                other => other.to_string(),
            };
            output::line(format!("{k:<14} {shown}"))?;
        }
    }
    if let Some(st) = &c.tcb_standing {
        for line in standing_lines(st) {
            output::line(line)?;
        }
    }
    Ok(())
}

/// The matched TCB level and each component to raise, one per line.
pub fn standing_lines(st: &quarry_api::claims::TcbStanding) -> Vec<String> {
    let mut lines = vec![format!(
        "{:<14} {} (TCB evaluation data number {})",
        "tcb_level", st.matched_date, st.evaluation_data_number
    )];
    let status = st.target_status.map(|s| s.as_str()).unwrap_or("unknown");
    match (&st.target_date, st.to_raise.is_empty()) {
        (None, _) => lines.push(format!(
            "{:<14} (the TCB information has no TCB levels)",
            "to_raise"
        )),
        (Some(target), true) => lines.push(format!(
            "{:<14} nothing (the platform meets the newest {status} level, {target})",
            "to_raise"
        )),
        (Some(target), false) => {
            lines.push(format!(
                "{:<14} to reach the newest {status} level ({target}):",
                "to_raise"
            ));
            for gap in &st.to_raise {
                lines.push(format!("  {gap}"));
            }
        }
    }
    lines
}

fn load_package(path: &Path, name: &str) -> Result<Package, Failure> {
    let bytes = output::read_file(path, "manifest")?;
    let json = if serde_json::from_slice::<Value>(&bytes).is_ok() {
        bytes
    } else {
        let text = String::from_utf8_lossy(&bytes);
        quarry_api::manifest::yaml_to_json(&text).map_err(|e| {
            Failure::new(
                format!("manifest {} is neither JSON nor YAML: {e}", path.display()),
                "fix the manifest",
            )
        })?
    };
    let checked = quarry_api::manifest::parse(&json).map_err(|e| {
        Failure::new(
            format!("manifest {}: {e}", path.display()),
            "run `quarry manifest check` and fix it",
        )
    })?;
    checked.manifest.packages.get(name).cloned().ok_or_else(|| {
        Failure::new(
            format!("manifest {} has no package {name:?}", path.display()),
            format!(
                "use one of: {}",
                checked
                    .manifest
                    .packages
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    })
}

/// One row of `explain`.
struct Row {
    field: String,
    expected: String,
    actual: String,
    ok: bool,
}

/// Every reference value of `package` next to the evidence's value; mismatches come from
/// the same policy check the coordinator runs.
fn compare(package: &Package, c: &Claims) -> Vec<Row> {
    let mismatches = check_package(package, c)
        .err()
        .map(|e| e.0)
        .unwrap_or_default();
    let mut rows = Vec::new();
    let mut add = |field: &str, expected: String, actual: String| {
        let bad = mismatches.iter().find(|m| m.field == field);
        rows.push(Row {
            field: field.to_string(),
            expected: bad.map(|m| m.expected.clone()).unwrap_or(expected),
            actual: bad.map(|m| m.found.clone()).unwrap_or(actual),
            ok: bad.is_none(),
        });
    };
    let hexo = |v: &Option<Vec<u8>>| {
        v.as_ref()
            .map(hex::encode)
            .unwrap_or_else(|| "(absent)".into())
    };
    let num = |v: Option<u64>| {
        v.map(|n| n.to_string())
            .unwrap_or_else(|| "(absent)".into())
    };
    add("TEE", package.tee.to_string(), c.tee.to_string());
    if package.unique_id.is_some() {
        add(
            "UniqueID",
            hexo(&package.unique_id),
            hexo(&c.identity.unique_id),
        );
    }
    if package.signer_id.is_some() {
        add(
            "SignerID",
            hexo(&package.signer_id),
            hexo(&c.identity.signer_id),
        );
    }
    if package.product_id.is_some() {
        add(
            "ProductID",
            num(package.product_id),
            num(c.identity.product_id),
        );
    }
    if let Some(min) = package.security_version {
        add(
            "SecurityVersion",
            format!(">= {min}"),
            num(c.identity.security_version),
        );
    }
    for (name, want) in &package.fields {
        add(
            name,
            want.clone(),
            c.identity
                .fields
                .get(name)
                .cloned()
                .unwrap_or_else(|| "(absent)".into()),
        );
    }
    add("Debug", package.debug.to_string(), c.debug.to_string());
    add(
        "AcceptedTCBStatuses",
        TcbStatus::join(&package.effective_tcb_statuses()),
        c.tcb_status.as_str().to_string(),
    );
    if !package.accepted_advisories.is_empty() {
        add(
            "AcceptedAdvisories",
            package.accepted_advisories.join(","),
            c.advisory_ids.join(","),
        );
    }
    if let Some(min) = &package.minimum_tcb {
        add(
            "MinimumTCB",
            format!(">= {min}"),
            c.reported_tcb
                .map(|t| t.to_string())
                .unwrap_or_else(|| "(absent)".into()),
        );
    }
    if package.tee == TeeKind::Snp {
        add(
            "MaxVMPL",
            format!("VMPL <= {}", package.max_vmpl),
            c.identity
                .fields
                .get("VMPL")
                .map(|v| format!("VMPL {v}"))
                .unwrap_or_else(|| "(absent)".into()),
        );
    }
    if !package.allowed_platforms.is_empty() {
        let field = if package.tee == TeeKind::Snp {
            "AllowedChipIDs"
        } else {
            "AllowedPlatforms"
        };
        add(
            field,
            package.allowed_platforms.join(","),
            c.platform_id.clone().unwrap_or_else(|| "(none)".into()),
        );
    }
    // A mismatch without its own row (e.g. simulated evidence for a hardware TEE).
    for m in &mismatches {
        if !rows.iter().any(|r| r.field == m.field) {
            rows.push(Row {
                field: m.field.to_string(),
                expected: m.expected.clone(),
                actual: m.found.clone(),
                ok: false,
            });
        }
    }
    rows
}
