//! `quarry package-info --sim FILE`: the reference values of a package.
use quarry_attestation::measure::simulated_unique_id;
use serde::Serialize;

use crate::output::{self, Failure};

/// Arguments of `quarry package-info`.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Example:\n  quarry package-info --sim /usr/bin/my-service\n  quarry package-info --sim python3 --json   # resolved on PATH, symlinks followed\n\nPaste the printed package into the manifest's \"Packages\" section."
)]
pub struct Args {
    /// Measure FILE as a simulated package: UniqueID = SHA-256 of the executable.
    #[arg(long)]
    pub sim: bool,
    /// The executable (a name without '/' is looked up on PATH; symlinks are resolved).
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
        return Err(Failure::new(
            "reading a Gramine .sig (SIGSTRUCT) is not supported yet",
            "pass --sim FILE to measure an executable for a simulated package",
        ));
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
