//! `quarry-proxy-bench`: requests/s and p50/p99 latency of a small HTTP backend reached
//! directly, through two Quarry sidecars (egress → ingress mTLS hop) and through stunnel4,
//! HAProxy and nginx configured as the same mTLS hop, all in one run with the same `wrk` load;
//! plus the sidecars' resident memory and every proxy's CPU per request. See
//! `docs/performance.md`, "Mesh proxy benchmark".
#![forbid(unsafe_code)]

mod backend;
mod peers;
mod pki;
mod procs;
mod quarry;
mod wrk;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Parser;

/// Goal: the sidecars reach at least this share of the best peer's requests/s.
const RPS_GOAL: f64 = 0.9;
/// Goal: resident memory of each sidecar, MB (MiB as the kernel reports it).
const RSS_GOAL_MB: f64 = 15.0;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Mesh proxy benchmark: direct vs two Quarry sidecars vs stunnel4 / HAProxy / nginx as the same mTLS hop, loaded by wrk."
)]
struct Args {
    /// Print one JSON object instead of tables.
    #[arg(long)]
    json: bool,
    /// wrk threads.
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// wrk connections, keep-alive runs.
    #[arg(long, default_value_t = 50)]
    connections: u32,
    /// Seconds per measured wrk run.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Seconds of unmeasured load before each measured run (0 = none).
    #[arg(long, default_value_t = 1)]
    warmup: u64,
    /// Measured rounds per target and mode; the report gives the median of each figure.
    #[arg(long, default_value_t = 1)]
    rounds: u32,
    /// Skip the new-connection-per-request runs (`Connection: close`).
    #[arg(long)]
    no_close: bool,
    /// wrk connections of the new-connection-per-request runs.
    #[arg(long, default_value_t = 16)]
    close_connections: u32,
    /// Worker threads of the in-process backend.
    #[arg(long, default_value_t = 1)]
    backend_threads: usize,
    /// Directory with quarry, quarry-coordinator and marble-sidecar (default: this binary's).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

/// One proxied or direct path.
struct Target {
    name: &'static str,
    entry: SocketAddr,
    /// Top-level processes of the client side and server side (empty for direct).
    sides: Vec<u32>,
}

/// Median figures of one target in one mode.
#[derive(Debug, Clone, Default)]
struct Row {
    name: &'static str,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    requests: u64,
    cpu_us_per_req: Option<f64>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// One HTTP/1.0 GET through `entry`; fails unless the body is the backend's.
fn check_path(name: &str, entry: SocketAddr) -> anyhow::Result<()> {
    let mut s = TcpStream::connect_timeout(&entry, Duration::from_secs(5))
        .with_context(|| format!("{name}: connecting to {entry}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n")?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    let body = String::from_utf8_lossy(backend::BODY);
    if !(text.starts_with("HTTP/1.") && text.contains(" 200 ") && text.ends_with(&*body)) {
        bail!("{name}: a request through {entry} did not reach the backend: {text:?}");
    }
    Ok(())
}

fn measure(
    targets: &[Target],
    load: &wrk::Load,
    rounds: u32,
    warmup: u64,
) -> anyhow::Result<Vec<Row>> {
    let mut samples: Vec<Vec<(wrk::Measured, Option<f64>)>> = vec![Vec::new(); targets.len()];
    for round in 0..rounds {
        for (i, t) in targets.iter().enumerate() {
            if warmup > 0 {
                let w = wrk::Load {
                    duration: Duration::from_secs(warmup),
                    ..load.clone()
                };
                wrk::run(&w, t.entry).with_context(|| format!("warm-up of {}", t.name))?;
            }
            let pids: Vec<u32> = t.sides.iter().flat_map(|&p| procs::tree(p)).collect();
            let before = procs::cpu_seconds(&pids);
            let m = wrk::run(load, t.entry).with_context(|| format!("load on {}", t.name))?;
            let cpu = procs::cpu_seconds(&pids) - before;
            let per_req =
                (!pids.is_empty() && m.requests > 0).then(|| cpu * 1e6 / m.requests as f64);
            eprintln!(
                "  round {}/{rounds} {:<8} {:>9.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  errors {}",
                round + 1,
                t.name,
                m.rps,
                m.p50_ms,
                m.p99_ms,
                m.errors
            );
            samples[i].push((m, per_req));
        }
    }
    Ok(targets
        .iter()
        .zip(samples)
        .map(|(t, s)| Row {
            name: t.name,
            rps: median(s.iter().map(|(m, _)| m.rps).collect()),
            p50_ms: median(s.iter().map(|(m, _)| m.p50_ms).collect()),
            p99_ms: median(s.iter().map(|(m, _)| m.p99_ms).collect()),
            errors: s.iter().map(|(m, _)| m.errors).sum(),
            requests: s.iter().map(|(m, _)| m.requests).sum(),
            cpu_us_per_req: (!t.sides.is_empty())
                .then(|| median(s.iter().filter_map(|(_, c)| *c).collect())),
        })
        .collect())
}

/// Sidecar figures against the best peer (by req/s) of one mode.
fn compare(rows: &[Row]) -> serde_json::Value {
    let get = |n: &str| {
        rows.iter()
            .find(|r| r.name == n)
            .cloned()
            .unwrap_or_default()
    };
    let direct = get("direct");
    let sidecar = get("quarry");
    let best = rows
        .iter()
        .filter(|r| !matches!(r.name, "direct" | "quarry"))
        .max_by(|a, b| a.rps.total_cmp(&b.rps))
        .cloned()
        .unwrap_or_default();
    let lowest_peer_p99 = rows
        .iter()
        .filter(|r| !matches!(r.name, "direct" | "quarry"))
        .map(|r| r.p99_ms)
        .fold(f64::INFINITY, f64::min);
    let ratio = if best.rps > 0.0 {
        sidecar.rps / best.rps
    } else {
        0.0
    };
    serde_json::json!({
        "direct_rps": direct.rps.round(),
        "sidecar_rps": sidecar.rps.round(),
        "sidecar_p50_ms": round2(sidecar.p50_ms),
        "sidecar_p99_ms": round2(sidecar.p99_ms),
        "best_peer": best.name,
        "best_peer_rps": best.rps.round(),
        "best_peer_p50_ms": round2(best.p50_ms),
        "best_peer_p99_ms": round2(best.p99_ms),
        "lowest_peer_p99_ms": round2(lowest_peer_p99),
        "sidecar_vs_best_peer_rps": (ratio * 1000.0).round() / 1000.0,
        "rps_goal_met": ratio >= RPS_GOAL,
        "p99_goal_met": sidecar.p99_ms < best.p99_ms,
    })
}

fn rows_json(rows: &[Row]) -> serde_json::Value {
    rows.iter()
        .map(|r| {
            serde_json::json!({
                "target": r.name,
                "rps": r.rps.round(),
                "p50_ms": round2(r.p50_ms),
                "p99_ms": round2(r.p99_ms),
                "errors": r.errors,
                "requests": r.requests,
                "proxy_cpu_us_per_req": r.cpu_us_per_req.map(|v| v.round()),
            })
        })
        .collect()
}

fn print_table(title: &str, rows: &[Row]) {
    println!("\n{title}\n");
    println!("| target | req/s | p50 ms | p99 ms | errors | proxy CPU µs/req (both sides) |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for r in rows {
        println!(
            "| {} | {:.0} | {:.2} | {:.2} | {} | {} |",
            r.name,
            r.rps,
            r.p50_ms,
            r.p99_ms,
            r.errors,
            r.cpu_us_per_req
                .map_or_else(|| "–".to_string(), |v| format!("{v:.0}"))
        );
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}

fn main() -> std::process::ExitCode {
    match run(Args::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quarry-proxy-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    for (tool, package) in [
        ("wrk", "wrk"),
        ("stunnel4", "stunnel4"),
        ("haproxy", "haproxy"),
        ("nginx", "nginx"),
        ("openssl", "openssl"),
        ("timeout", "coreutils"),
    ] {
        procs::require_tool(tool, package)?;
    }
    if !std::path::Path::new(peers::NGINX_STREAM_MODULE).is_file() {
        bail!(
            "{} is missing (Debian: `apt-get install libnginx-mod-stream`); the nginx hop needs the stream module",
            peers::NGINX_STREAM_MODULE
        );
    }
    let bin_dir = match args.bin_dir {
        Some(d) => d,
        None => std::env::current_exe()?
            .parent()
            .context("directory of this binary")?
            .to_path_buf(),
    };
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    eprintln!("working directory {}", dir.display());

    let backend = backend::Backend::start(args.backend_threads)?;
    let pki = pki::generate(dir)?;
    eprintln!("starting the coordinator and two sidecars");
    let quarry = quarry::start(dir, &bin_dir, backend.addr)?;
    eprintln!("starting stunnel4, haproxy and nginx hops");
    let stunnel = peers::stunnel(dir, &pki, backend.addr)?;
    let haproxy = peers::haproxy(dir, &pki, backend.addr)?;
    let nginx = peers::nginx(dir, &pki, backend.addr)?;

    let mut targets = vec![
        Target {
            name: "direct",
            entry: backend.addr,
            sides: vec![],
        },
        Target {
            name: "quarry",
            entry: quarry.entry,
            sides: quarry.pids(),
        },
    ];
    for hop in [&stunnel, &haproxy, &nginx] {
        targets.push(Target {
            name: hop.name,
            entry: hop.entry,
            sides: hop.pids(),
        });
    }
    for t in &targets {
        check_path(t.name, t.entry)?;
    }
    peers::check_mtls("quarry", quarry.mesh, None, &pki.ca)?;
    for hop in [&stunnel, &haproxy, &nginx] {
        peers::check_mtls(hop.name, hop.mesh, Some(&pki), &pki.ca)?;
    }
    eprintln!("every path reaches the backend; every server side refuses TLS without a client certificate");

    let keepalive = wrk::Load {
        threads: args.threads,
        connections: args.connections,
        duration: Duration::from_secs(args.duration),
        close: false,
    };
    eprintln!(
        "keep-alive: {}",
        wrk::command(&keepalive, backend.addr).join(" ")
    );
    let ka_rows = measure(&targets, &keepalive, args.rounds, args.warmup)?;
    let close = wrk::Load {
        connections: args.close_connections,
        close: true,
        ..keepalive.clone()
    };
    let close_rows = if args.no_close {
        None
    } else {
        eprintln!(
            "new connection per request: {}",
            wrk::command(&close, backend.addr).join(" ")
        );
        Some(measure(&targets, &close, args.rounds, args.warmup)?)
    };

    // Memory after all load: current and peak resident set of each sidecar.
    let rss = |pid: u32| procs::sum_mib(&[pid], "VmRSS");
    let hwm = |pid: u32| procs::sum_mib(&[pid], "VmHWM");
    let (c, s) = (quarry.client.pid(), quarry.server.pid());
    let sidecar_rss = rss(c).max(rss(s));
    let sidecar_hwm = hwm(c).max(hwm(s));
    let mut memory = serde_json::Map::new();
    memory.insert(
        "quarry".into(),
        serde_json::json!({"client_rss_mb": round2(rss(c)), "server_rss_mb": round2(rss(s)),
                           "client_hwm_mb": round2(hwm(c)), "server_hwm_mb": round2(hwm(s))}),
    );
    for hop in [&stunnel, &haproxy, &nginx] {
        let sides: Vec<Vec<u32>> = hop.pids().into_iter().map(procs::tree).collect();
        let side = |i: usize, f: &str| round2(procs::sum_mib(&sides[i], f));
        memory.insert(
            hop.name.into(),
            serde_json::json!({"server_rss_mb": side(0, "VmRSS"), "client_rss_mb": side(1, "VmRSS"),
                               "server_hwm_mb": side(0, "VmHWM"), "client_hwm_mb": side(1, "VmHWM")}),
        );
    }
    let rss_ok = sidecar_hwm <= RSS_GOAL_MB;

    let ka = compare(&ka_rows);
    let mut out = serde_json::json!({
        "backend": format!("in-process hyper HTTP/1.1 server, {} worker thread(s), {}-byte text/plain body", args.backend_threads, backend::BODY.len()),
        "load": {"tool": "wrk", "threads": args.threads, "connections": args.connections,
                 "duration_s": args.duration, "warmup_s": args.warmup, "rounds": args.rounds,
                 "close_connections": args.close_connections},
        "sidecar_rss_mb": round2(sidecar_rss),
        "sidecar_hwm_mb": round2(sidecar_hwm),
        "rss_goal_met": rss_ok,
        "keepalive": rows_json(&ka_rows),
        "memory": memory,
    });
    if let (Some(obj), Some(ka_obj)) = (out.as_object_mut(), ka.as_object()) {
        for (k, v) in ka_obj {
            obj.insert(k.clone(), v.clone());
        }
        if let Some(rows) = &close_rows {
            obj.insert("close".into(), rows_json(rows));
            obj.insert("close_summary".into(), compare(rows));
        }
    }
    if args.json {
        println!("{out}");
    } else {
        print_table(
            &format!(
                "Keep-alive: wrk -t{} -c{} -d{}s (median of {} round(s))",
                args.threads, args.connections, args.duration, args.rounds
            ),
            &ka_rows,
        );
        if let Some(rows) = &close_rows {
            print_table(
                &format!(
                    "New connection per request (Connection: close): wrk -t{} -c{} -d{}s",
                    args.threads, args.close_connections, args.duration
                ),
                rows,
            );
        }
        println!("\nMemory (MiB, VmRSS now / VmHWM peak, per side):\n");
        for (name, m) in out["memory"].as_object().into_iter().flatten() {
            println!(
                "* {name}: client side {} / {}, server side {} / {}",
                m["client_rss_mb"], m["client_hwm_mb"], m["server_rss_mb"], m["server_hwm_mb"]
            );
        }
        let ratio = ka["sidecar_vs_best_peer_rps"].as_f64().unwrap_or(0.0);
        println!("\nVerdicts (keep-alive):\n");
        println!(
            "* req/s ≥ {RPS_GOAL}× best peer ({}): {:.0} vs {:.0} = {ratio:.2}× → {}",
            ka["best_peer"].as_str().unwrap_or("?"),
            ka["sidecar_rps"].as_f64().unwrap_or(0.0),
            ka["best_peer_rps"].as_f64().unwrap_or(0.0),
            verdict(ka["rps_goal_met"].as_bool().unwrap_or(false))
        );
        println!(
            "* p99 lower than best peer's: {} ms vs {} ms → {}",
            ka["sidecar_p99_ms"],
            ka["best_peer_p99_ms"],
            verdict(ka["p99_goal_met"].as_bool().unwrap_or(false))
        );
        println!(
            "* sidecar RSS ≤ {RSS_GOAL_MB} MiB (peak of either sidecar): {sidecar_hwm:.1} MiB (now {sidecar_rss:.1}) → {}",
            verdict(rss_ok)
        );
        if let Some(cs) = out.get("close_summary") {
            println!(
                "* new connection per request: {} vs best peer {} {} req/s, p99 {} vs {} ms",
                cs["sidecar_rps"],
                cs["best_peer"],
                cs["best_peer_rps"],
                cs["sidecar_p99_ms"],
                cs["best_peer_p99_ms"]
            );
        }
    }
    drop((quarry, stunnel, haproxy, nginx, backend));
    Ok(())
}
