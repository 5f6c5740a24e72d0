//! A real etcd cluster on loopback for the HA tests and benchmark (Debian `etcd-server`,
//! installed by `.ci/run`; a missing etcd panics with a clear message, never skips).
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free loopback TCP port, never the same one twice in this process (tests running in
/// parallel would otherwise race for a port the kernel handed out twice).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// An etcd cluster on loopback, killed on drop.
pub struct EtcdCluster {
    members: Vec<Option<Child>>,
    urls: Vec<String>,
    /// Command line of each member, to restart it.
    commands: Vec<Vec<String>>,
    dir: tempfile::TempDir,
}

impl EtcdCluster {
    /// Starts `n` members (a new cluster) on free loopback ports.
    pub fn start(n: usize) -> EtcdCluster {
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, p))| format!("e{i}=http://127.0.0.1:{p}"))
            .collect();
        let mut cluster = EtcdCluster {
            members: Vec::new(),
            urls: Vec::new(),
            commands: Vec::new(),
            dir,
        };
        for (i, (c, p)) in ports.iter().enumerate() {
            let url = format!("http://127.0.0.1:{c}");
            let peer = format!("http://127.0.0.1:{p}");
            let data = cluster
                .dir
                .path()
                .join(format!("e{i}"))
                .display()
                .to_string();
            let args: Vec<String> = [
                "--name",
                &format!("e{i}"),
                "--data-dir",
                &data,
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
                "--initial-cluster",
                &initial.join(","),
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                "quarry-ha-test",
                // One group commit of the coordinator is above etcd's default of 128 operations.
                "--max-txn-ops",
                "4096",
                "--log-level",
                "error",
            ]
            .iter()
            .map(|a| a.to_string())
            .collect();
            cluster.commands.push(args);
            cluster.urls.push(url);
            cluster.members.push(None);
            cluster.run(i);
        }
        cluster
    }

    /// (Re)starts member `i`.
    pub fn run(&mut self, i: usize) {
        let child = Command::new("etcd")
            .args(&self.commands[i])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.path().join(format!("e{i}.log"))).unwrap())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run etcd ({e}): this test needs a real etcd; install Debian's etcd-server (.ci/run does)")
            });
        self.members[i] = Some(child);
    }

    /// The log of the member serving `url`.
    fn log_of(&self, url: &str) -> String {
        let i = self.urls.iter().position(|u| u == url).unwrap_or(0);
        std::fs::read_to_string(self.dir.path().join(format!("e{i}.log"))).unwrap_or_default()
    }

    /// The data directory of member `i`.
    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("e{i}"))
    }

    /// Waits until every running member reports healthy (60 s at most).
    pub async fn wait_healthy(&self) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        for url in &self.urls {
            loop {
                let ok = match client.get(format!("{url}/health")).send().await {
                    Ok(r) => r.text().await.unwrap_or_default().contains("true"),
                    Err(_) => false,
                };
                if ok {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "etcd member {url} not healthy within 60 s; its log:\n{}",
                    self.log_of(url)
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    /// Kills member `i` (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The client URLs, comma-separated (`--etcd-endpoints`).
    pub fn endpoints(&self) -> String {
        self.urls.join(",")
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
