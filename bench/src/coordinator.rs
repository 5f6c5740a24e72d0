//! A real `quarry-coordinator` process on loopback (simulated TEE), killed on drop, with
//! its RSS and CPU time read from procfs and its start-up log parsed.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Linux reports utime/stime in /proc/<pid>/stat in USER_HZ, which is 100 on every
/// architecture the kernel exports to user space.
const USER_HZ: f64 = 100.0;

/// A running coordinator.
pub struct Coordinator {
    child: Child,
    /// Client API address.
    pub client: SocketAddr,
    /// Mesh API address.
    pub mesh: SocketAddr,
    /// From spawn to the "coordinator listening" log line.
    pub startup: Duration,
    /// `elapsed_ms` of the "sealed state reloaded" line, if the state was reloaded.
    pub reload_ms: Option<u64>,
}

impl Coordinator {
    /// Spawns `binary` with a data directory and simulated platform, waits until it listens.
    pub fn start(
        binary: &Path,
        data_dir: &Path,
        platform: &Path,
        log: &Path,
        cpus: Option<&str>,
    ) -> anyhow::Result<Coordinator> {
        let start_len = std::fs::metadata(log).map(|m| m.len()).unwrap_or(0) as usize;
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let started = Instant::now();
        // Pinned with taskset(1), which execs the coordinator in place (same pid).
        let mut command = match cpus {
            Some(list) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(list).arg(binary);
                c
            }
            None => Command::new(binary),
        };
        let child = command
            .args(["--tee", "simulated", "--log-format", "json"])
            .arg("--sim-platform")
            .arg(platform)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--client-addr", "127.0.0.1:0", "--mesh-addr", "127.0.0.1:0"])
            // The production default: one info line per activation included.
            .env("QUARRY_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut c = Coordinator {
            child,
            client: "0.0.0.0:0".parse()?,
            mesh: "0.0.0.0:0".parse()?,
            startup: Duration::ZERO,
            reload_ms: None,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            for line in text[start_len.min(text.len())..].lines() {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                    continue;
                };
                let f = &v["fields"];
                if f["message"] == "sealed state reloaded" {
                    c.reload_ms = f["elapsed_ms"].as_u64();
                }
                if f["message"] == "coordinator listening" {
                    c.startup = started.elapsed();
                    c.client = f["client_api"].as_str().unwrap_or_default().parse()?;
                    c.mesh = f["mesh_api"].as_str().unwrap_or_default().parse()?;
                    return Ok(c);
                }
            }
            if let Some(status) = c.child.try_wait()? {
                bail!("coordinator exited with {status} before listening; log:\n{text}");
            }
            if Instant::now() > deadline {
                bail!("coordinator did not start within 60 s; log:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size now and its peak, in MiB (VmRSS, VmHWM).
    pub fn rss_mb(&self) -> anyhow::Result<(f64, f64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let field = |name: &str| -> anyhow::Result<f64> {
            let line = status
                .lines()
                .find(|l| l.starts_with(name))
                .with_context(|| format!("{name} missing from /proc/<pid>/status"))?;
            let kb: f64 = line
                .split_whitespace()
                .nth(1)
                .context("malformed status line")?
                .parse()?;
            Ok(kb / 1024.0)
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// User + system CPU seconds the coordinator has used so far (all threads).
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        cpu_seconds_of(&format!("/proc/{}/stat", self.pid()))
    }

    /// Stops the process with SIGKILL and waits for it (state must survive anything).
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// User + system CPU seconds of the process whose `stat` file is at `path`.
pub fn cpu_seconds_of(path: &str) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(path)?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11).context("no utime")?.parse()?;
    let stime: f64 = fields.get(12).context("no stime")?.parse()?;
    Ok((utime + stime) / USER_HZ)
}

/// Finds the coordinator binary next to this benchmark (target/<profile>/).
pub fn default_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("quarry-coordinator")))
        .unwrap_or_else(|| PathBuf::from("target/release/quarry-coordinator"))
}
