//! `quarry package-info FILE.sig | --sim FILE`: the reference values of a package.
use quarry_attestation::measure::simulated_unique_id;
use serde::Serialize;

use crate::output::{self, Failure};

/// Arguments of `quarry package-info`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example:\n  quarry package-info app.manifest.sgx.sig   # Gramine SIGSTRUCT: MRENCLAVE, MRSIGNER, ISVPRODID, ISVSVN\n  quarry package-info --sim /usr/bin/my-service\n  quarry package-info --sim python3 --json   # resolved on PATH, symlinks followed\n\nPaste the printed package into the manifest's \"Packages\" section."
)]
pub struct Args {
    /// Measure FILE as a simulated package: UniqueID = SHA-256 of the executable.
    #[arg(long)]
    pub sim: bool,
    /// A Gramine .sig (SIGSTRUCT), or with --sim the executable (a name without '/' is looked
    /// up on PATH; symlinks are resolved).
    #[arg(value_name = "FILE")]
    pub file: String,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// A manifest package entry for a simulated TEE.
#[derive(Serialize)]
struct SimPackage {
    #[serde(rename = "TEE")]
    tee: &'static str,
    #[serde(rename = "UniqueID")]
    unique_id: String,
}

/// What `package-info --sim` reports with `--json`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Info {
    path: std::path::PathBuf,
    unique_id: String,
    package: SimPackage,
}

/// Runs `quarry package-info`.
pub fn run(args: &Args) -> Result<(), Failure> {
    if !args.sim {
        return sig(args);
    }
    let (path, digest) = simulated_unique_id(&args.file).map_err(|e| {
        Failure::new(
            format!("cannot measure {}: {e}", args.file),
            "pass the path of the executable, or a program name on PATH",
        )
    })?;
    let unique_id = hex::encode(digest);
    let info = Info {
        path,
        unique_id: unique_id.clone(),
        package: SimPackage {
            tee: "simulated",
            unique_id,
        },
    };
    if args.json {
        return output::json(&info);
    }
    let snippet = serde_json::to_string(&info.package)
        .map_err(|e| Failure::bare(format!("cannot encode the package: {e}")))?;
    output::line(format!("UniqueID: {}", info.unique_id))?;
    output::line(format!("path:     {}", info.path.display()))?;
    output::line(format!("package:  {snippet}"))
}

/// What `package-info FILE.sig --json` reports.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SigInfo {
    path: String,
    mrenclave: String,
    mrsigner: String,
    isv_prod_id: u16,
    isv_svn: u16,
    debug: bool,
    package: serde_json::Value,
}

fn sig(args: &Args) -> Result<(), Failure> {
    let path = std::path::Path::new(&args.file);
    let bytes = output::read_file(path, "SIGSTRUCT")?;
    let s = quarry_attestation::sigstruct::SigStruct::parse(&bytes).map_err(|e| {
        Failure::new(
            format!("{}: {e}", path.display()),
            "pass the .sig file Gramine writes (gramine-sgx-sign), or --sim FILE for a simulated package",
        )
    })?;
    let info = SigInfo {
        path: args.file.clone(),
        mrenclave: hex::encode(s.mrenclave),
        mrsigner: hex::encode(s.mrsigner),
        isv_prod_id: s.isv_prod_id,
        isv_svn: s.isv_svn,
        debug: s.debug,
        package: serde_json::json!({
            "UniqueID": hex::encode(s.mrenclave),
        }),
    };
    if args.json {
        return output::json(&info);
    }
    output::line(format!("MRENCLAVE: {}", info.mrenclave))?;
    output::line(format!("MRSIGNER:  {}", info.mrsigner))?;
    output::line(format!("ISVPRODID: {}", info.isv_prod_id))?;
    output::line(format!("ISVSVN:    {}", info.isv_svn))?;
    if info.debug {
        output::line("DEBUG:     yes (the enclave may run in debug mode)")?;
    }
    output::line(format!(
        "package:   {{\"UniqueID\":\"{}\"}}  or  {{\"SignerID\":\"{}\",\"ProductID\":{},\"SecurityVersion\":{}}}",
        info.mrenclave, info.mrsigner, info.isv_prod_id, info.isv_svn
    ))
}
