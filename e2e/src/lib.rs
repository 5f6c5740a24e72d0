//! Harness for end-to-end tests: finds the workspace binaries, starts a real coordinator on
//! loopback with free ports, runs sidecars and the CLI with time bounds, and speaks HTTPS to
//! the coordinator with a pinned root (or a marble key) like the real clients do.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Path of a workspace binary, built by `cargo build --workspace` before the tests run.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` before the end-to-end tests",
        path.display()
    );
    path
}

/// A running `quarry-coordinator`, killed on drop.
pub struct Coordinator {
    child: Option<Child>,
    /// Client API address.
    pub client: SocketAddr,
    /// Mesh API address.
    pub mesh: SocketAddr,
    /// Its log file (JSON lines).
    pub log: PathBuf,
}

impl Coordinator {
    /// Starts a simulated coordinator on free loopback ports and waits until it listens.
    pub fn start(data_dir: &Path, sim_platform: &Path, log: &Path) -> anyhow::Result<Coordinator> {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let start_len = std::fs::metadata(log)?.len() as usize;
        let child = Command::new(bin("quarry-coordinator"))
            .args(["--tee", "simulated", "--log-format", "json"])
            .arg("--sim-platform")
            .arg(sim_platform)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--client-addr", "127.0.0.1:0", "--mesh-addr", "127.0.0.1:0"])
            .env("QUARRY_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .context("starting quarry-coordinator")?;
        let mut c = Coordinator {
            child: Some(child),
            client: "0.0.0.0:0".parse()?,
            mesh: "0.0.0.0:0".parse()?,
            log: log.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            for line in text[start_len.min(text.len())..].lines() {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                    continue;
                };
                let f = &v["fields"];
                if f["message"] == "coordinator listening" {
                    c.client = f["client_api"].as_str().unwrap_or_default().parse()?;
                    c.mesh = f["mesh_api"].as_str().unwrap_or_default().parse()?;
                    return Ok(c);
                }
            }
            if let Some(status) = c.child.as_mut().and_then(|ch| ch.try_wait().ok().flatten()) {
                bail!("coordinator exited with {status} before listening; log:\n{text}");
            }
            if Instant::now() > deadline {
                bail!("coordinator did not start within 60 s; log:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the coordinator (SIGTERM, then kill) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `https://<client>` base URL.
    pub fn client_url(&self) -> String {
        format!("https://{}", self.client)
    }

    /// `https://<mesh>` base URL.
    pub fn mesh_url(&self) -> String {
        format!("https://{}", self.mesh)
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs a command to completion with a time bound, capturing its output.
pub fn run(cmd: &mut Command, limit: Duration) -> anyhow::Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {cmd:?}"))?;
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait()?.is_some() {
            return Ok(child.wait_with_output()?);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output()?;
            bail!(
                "{cmd:?} did not finish within {limit:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// rustls client configuration: TLS 1.3, ring, the given root pinned, optional client key.
pub fn tls_config(
    root_pem: &str,
    client: Option<(Vec<u8>, Vec<u8>)>,
) -> anyhow::Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    let der = pem::parse(root_pem.trim())?;
    roots.add(rustls_pki_types::CertificateDer::from(
        der.contents().to_vec(),
    ))?;
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots);
    Ok(match client {
        None => b.with_no_client_auth(),
        Some((cert, key)) => b.with_client_auth_cert(
            vec![rustls_pki_types::CertificateDer::from(cert)],
            rustls_pki_types::PrivateKeyDer::Pkcs8(key.into()),
        )?,
    })
}

/// An HTTPS client over `config`.
pub fn https(config: rustls::ClientConfig) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .timeout(Duration::from_secs(30))
        .build()?)
}

/// A marble-like identity: P-256 key and self-signed certificate.
pub struct MarbleKey {
    /// Certificate DER.
    pub cert: Vec<u8>,
    /// PKCS#8 DER.
    pub key: Vec<u8>,
    /// SubjectPublicKeyInfo DER.
    pub spki: Vec<u8>,
}

impl MarbleKey {
    /// A fresh key and self-signed certificate.
    pub fn generate() -> anyhow::Result<MarbleKey> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let cert = rcgen::CertificateParams::new(vec![])?.self_signed(&key)?;
        Ok(MarbleKey {
            cert: cert.der().to_vec(),
            key: key.serialize_der(),
            spki: rcgen::PublicKeyData::subject_public_key_info(&key),
        })
    }
}

/// Reads a JSend response into (HTTP status, full JSON body).
pub async fn jsend(resp: reqwest::Response) -> anyhow::Result<(u16, serde_json::Value)> {
    let status = resp.status().as_u16();
    let text = resp.text().await?;
    let v = serde_json::from_str(&text).with_context(|| format!("non-JSON body: {text}"))?;
    Ok((status, v))
}
