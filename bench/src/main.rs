//! `quarry-bench`: activation throughput and latency of a real coordinator under 1, 10 and
//! 100 concurrent simulated sidecars, the crypto ceiling measured in the same run, a
//! serialised comparison, and RSS + reload time at 10,000 marbles (contract §13).
#![forbid(unsafe_code)]

mod ceiling;
mod coordinator;
mod cpus;
mod report;
mod run;
mod sidecar;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use quarry_attestation::simulated::{SimIdentity, SimPlatform, SimProvider, SimVerifier};

use crate::coordinator::Coordinator;
use crate::report::Report;
use crate::run::Scenario;

/// Benchmark flags.
#[derive(Debug, Parser)]
#[command(
    name = "quarry-bench",
    about = "Activation benchmark of a real quarry-coordinator with in-process simulated sidecars.",
    after_help = "Example:\n  cargo build --release -p quarry-coordinator -p quarry-bench\n  cargo run --release -p quarry-bench -- --json"
)]
struct Args {
    /// The coordinator binary (default: next to this binary).
    #[arg(long)]
    coordinator: Option<PathBuf>,
    /// Activations per concurrency level, as LEVEL:COUNT pairs.
    #[arg(long, value_delimiter = ',', default_value = "1:300,10:1500,100:3000")]
    scenarios: Vec<String>,
    /// Activations of the serialised comparison (100 concurrent, one global lock).
    #[arg(long, default_value_t = 1000)]
    serialized: usize,
    /// Marbles activated in total before the restart (the rest is filled at 100 concurrent).
    #[arg(long, default_value_t = 10_000)]
    marbles: usize,
    /// Length of one ceiling measurement round, in milliseconds (3 rounds per operation).
    #[arg(long, default_value_t = 400)]
    round_ms: u64,
    /// Open-loop comparison: after the scenarios, offer this fraction of the throughput
    /// measured at the highest concurrency, at most that many in flight (0 = skip).
    #[arg(long, default_value_t = 0.5)]
    paced_fraction: f64,
    /// Activations of the open-loop comparison.
    #[arg(long, default_value_t = 2000)]
    paced: usize,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Keep the data directory and coordinator log (printed) instead of deleting them.
    #[arg(long)]
    keep: bool,
    /// Pin the coordinator to these CPUs (taskset list, e.g. `0` or `0-1`) and count only
    /// them in the ceiling. Run the benchmark itself on the other CPUs
    /// (`taskset -c 1 quarry-bench --coordinator-cpus 0`), so the sidecars do not share the
    /// coordinator's cores.
    #[arg(long, value_name = "LIST")]
    coordinator_cpus: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(bench(args))
}

async fn bench(args: Args) -> anyhow::Result<()> {
    let binary = args
        .coordinator
        .clone()
        .unwrap_or_else(coordinator::default_binary);
    anyhow::ensure!(
        binary.exists(),
        "{} is missing: run `cargo build --release -p quarry-coordinator` first (or pass --coordinator)",
        binary.display()
    );
    let scenarios = args
        .scenarios
        .iter()
        .map(|s| s.parse::<Scenario>())
        .collect::<anyhow::Result<Vec<_>>>()?;
    let tmp = tempfile::Builder::new().prefix("quarry-bench-").tempdir()?;
    let platform_dir = tmp.path().join("sim");
    let data_dir = tmp.path().join("data");
    let log = tmp.path().join("coordinator.log");
    SimPlatform::create(&platform_dir)?;
    let identity = SimIdentity {
        unique_id: [0x42; 32],
        signer_id: [0; 32],
        product_id: 1,
        security_version: 1,
        debug: false,
    };
    let provider = Arc::new(SimProvider::new(
        SimPlatform::load(&platform_dir)?,
        identity,
    )?);
    let verifier = SimVerifier::from_ca_file(&SimVerifier::ca_path(&platform_dir))?;

    let cores = match &args.coordinator_cpus {
        Some(list) => {
            let coordinator = cpus::parse_list(list)
                .map_err(|e| anyhow::anyhow!("--coordinator-cpus {list:?}: {e}"))?;
            let own = cpus::own()?;
            if !coordinator.is_disjoint(&own) {
                eprintln!(
                    "warning: the benchmark may run on the coordinator's CPUs ({list}); run it \
                     under taskset on the others (this process may use {own:?})"
                );
            }
            coordinator.len()
        }
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let pinned = args.coordinator_cpus.as_deref();

    progress(&args, "measuring the crypto ceiling");
    let ceiling = ceiling::measure(
        &provider,
        &verifier,
        Duration::from_millis(args.round_ms),
        cores,
        args.coordinator_cpus.clone(),
    )?;

    progress(&args, "starting the coordinator and setting the manifest");
    let coord = Coordinator::start(&binary, &data_dir, &platform_dir, &log, pinned)?;
    let mesh = Arc::new(run::prepare(&coord, provider.clone()).await?);
    let mut activated = run::warm_up(&mesh, 20).await?;

    let mut results = Vec::new();
    for s in &scenarios {
        progress(
            &args,
            &format!("{} concurrent, {} activations", s.concurrency, s.count),
        );
        let r = run::scenario(&mesh, &coord, *s, false).await?;
        activated += r.ok;
        results.push(r);
    }
    let paced = match results.iter().max_by_key(|r| r.concurrency) {
        Some(top) if args.paced_fraction > 0.0 && args.paced > 0 && top.per_s > 0.0 => {
            let rate = top.per_s * args.paced_fraction;
            progress(
                &args,
                &format!(
                    "open loop: {} activations offered at {rate:.0}/s, at most {} in flight",
                    args.paced, top.concurrency
                ),
            );
            let r = run::paced(&mesh, &coord, top.concurrency, rate, args.paced).await?;
            activated += r.ok;
            Some(r)
        }
        _ => None,
    };
    progress(&args, "serialised comparison");
    let serialized = run::scenario(
        &mesh,
        &coord,
        Scenario {
            concurrency: 100,
            count: args.serialized,
        },
        true,
    )
    .await?;
    activated += serialized.ok;
    // Refused activations (e.g. 503 under contention) are retried until the total is reached.
    for _ in 0..5 {
        if activated >= args.marbles {
            break;
        }
        progress(&args, &format!("filling to {} marbles", args.marbles));
        let fill = Scenario {
            concurrency: 100,
            count: args.marbles - activated,
        };
        activated += run::scenario(&mesh, &coord, fill, false).await?.ok;
    }
    let (rss_mb, rss_peak_mb) = coord.rss_mb()?;
    let state_bytes =
        std::fs::metadata(data_dir.join(quarry_coordinator::store::file::LOG_FILE))?.len();

    progress(&args, "restarting (SIGKILL) and reloading the sealed state");
    coord.kill();
    let coord = Coordinator::start(&binary, &data_dir, &platform_dir, &log, pinned)?;
    let (rss_reload_mb, _) = coord.rss_mb()?;
    let reload_s = coord.startup.as_secs_f64();
    let reload_state_ms = coord.reload_ms;
    let after = run::prepare_existing(&coord, provider).await?;
    run::warm_up(&after, 1).await?;
    drop(coord);

    let report = Report::new(
        ceiling,
        results,
        paced,
        serialized,
        activated,
        rss_mb,
        rss_peak_mb,
        state_bytes,
        reload_s,
        reload_state_ms,
        rss_reload_mb,
    );
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.json())?);
    } else {
        print!("{}", report.table());
    }
    if args.keep {
        let kept = tmp.keep();
        eprintln!("kept {}", kept.display());
    }
    Ok(())
}

fn progress(args: &Args, what: &str) {
    if !args.json {
        eprintln!("· {what}");
    }
}
