//! The Quarry hop: the real coordinator (`quarry-coordinator --tee simulated`) with a manifest
//! of two marble types, and two real `marble-sidecar proxy` processes: `client` (egress on
//! loopback → mTLS) and `backend` (ingress mTLS, `AllowFrom: ["client"]` → the backend).
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::procs::{free_port, wait_listening, Proc};

/// The coordinator and the two sidecars.
pub struct QuarryHop {
    /// Where the load generator connects (the client sidecar's egress port).
    pub entry: SocketAddr,
    /// The ingress sidecar's mesh port.
    pub mesh: SocketAddr,
    /// The egress (client-side) sidecar.
    pub client: Proc,
    /// The ingress (server-side) sidecar.
    pub server: Proc,
    /// Kept running for the sidecars' renewal and CRL refresh; stopped last.
    _coordinator: Proc,
}

impl QuarryHop {
    /// Process ids of both sidecars.
    pub fn pids(&self) -> Vec<u32> {
        vec![self.client.pid(), self.server.pid()]
    }
}

fn run_ok(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Waits for the coordinator's JSON "coordinator listening" line; returns (client, mesh).
fn wait_coordinator(proc: &mut Proc) -> anyhow::Result<(String, String)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for line in proc.log().lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let f = &v["fields"];
            if f["message"] == "coordinator listening" {
                let get = |k: &str| f[k].as_str().unwrap_or_default().to_string();
                return Ok((get("client_api"), get("mesh_api")));
            }
        }
        proc.ensure_alive()?;
        if Instant::now() > deadline {
            bail!(
                "the coordinator did not listen within 60 s:\n{}",
                proc.log()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Starts everything in `dir` with the binaries of `bin_dir`, forwarding to `backend`.
pub fn start(dir: &Path, bin_dir: &Path, backend: SocketAddr) -> anyhow::Result<QuarryHop> {
    let bin = |name: &str| -> anyhow::Result<PathBuf> {
        let p = bin_dir.join(name);
        if !p.is_file() {
            bail!(
                "{} is missing: run `cargo build --release -p quarry-coordinator -p quarry-cli -p marble-sidecar` (or pass --bin-dir)",
                p.display()
            );
        }
        Ok(p)
    };
    let (quarry, coordinator_bin, sidecar) = (
        bin("quarry")?,
        bin("quarry-coordinator")?,
        bin("marble-sidecar")?,
    );
    let platform = dir.join("sim");
    run_ok(
        Command::new(&quarry).args(["sim", "init"]).arg(&platform),
        "quarry sim init",
    )?;
    let mut cmd = Command::new(&coordinator_bin);
    cmd.args(["--tee", "simulated", "--log-format", "json"])
        .arg("--sim-platform")
        .arg(&platform)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--client-addr", "127.0.0.1:0", "--mesh-addr", "127.0.0.1:0"])
        .env("QUARRY_LOG", "info");
    let mut coordinator = Proc::spawn("coordinator", &mut cmd, dir)?;
    let (client_api, mesh_api) = wait_coordinator(&mut coordinator)?;
    let root = dir.join("root.pem");
    run_ok(
        Command::new(&quarry)
            .args([
                "certificate",
                "root",
                "--coordinator",
                &client_api,
                "--insecure",
                "-o",
            ])
            .arg(&root),
        "quarry certificate root",
    )?;
    let (egress, mesh) = (free_port()?, free_port()?);
    let package = serde_json::json!({"TEE": "simulated", "SignerID": "00".repeat(32), "ProductID": 0, "SecurityVersion": 0});
    let manifest = serde_json::json!({
        "Packages": {"any": package},
        "Marbles": {
            "backend": {"Package": "any", "Mesh": {"Inbound": [
                {"Port": mesh, "Forward": backend.to_string(), "AllowFrom": ["client"]}
            ]}},
            "client": {"Package": "any", "Mesh": {"Outbound": [
                {"Listen": format!("127.0.0.1:{egress}"), "Marble": "backend", "Address": format!("127.0.0.1:{mesh}")}
            ]}}
        }
    });
    let manifest_path = dir.join("manifest.json");
    std::fs::write(&manifest_path, manifest.to_string())?;
    run_ok(
        Command::new(&quarry)
            .args(["manifest", "set"])
            .arg(&manifest_path)
            .args(["--coordinator", &client_api, "--root-ca"])
            .arg(&root),
        "quarry manifest set",
    )?;
    let spawn = |marble_type: &str| -> anyhow::Result<Proc> {
        let mut c = Command::new(&sidecar);
        c.arg("proxy")
            .args(["--coordinator", &mesh_api])
            .args(["--marble-type", marble_type])
            .arg("--uuid-file")
            .arg(dir.join(format!("{marble_type}.uuid")))
            .args(["--tee", "simulated"])
            .arg("--sim-platform")
            .arg(&platform)
            .arg("--coordinator-root-ca")
            .arg(&root)
            .args(["--sim-measure", "/bin/sh"])
            .env_remove("RUST_LOG")
            .env_remove("QUARRY_MARBLE_TYPE")
            .env_remove("EDG_MARBLE_TYPE");
        Proc::spawn(&format!("sidecar-{marble_type}"), &mut c, dir)
    };
    let mut server = spawn("backend")?;
    let mut client = spawn("client")?;
    let loopback = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    wait_listening(
        loopback(mesh),
        &mut [&mut server, &mut client, &mut coordinator],
    )?;
    wait_listening(
        loopback(egress),
        &mut [&mut server, &mut client, &mut coordinator],
    )?;
    Ok(QuarryHop {
        entry: loopback(egress),
        mesh: loopback(mesh),
        client,
        server,
        _coordinator: coordinator,
    })
}
