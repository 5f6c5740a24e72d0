//! Harness for end-to-end tests: finds the workspace binaries, starts a real coordinator on
//! loopback with free ports, runs sidecars and the CLI with time bounds, and speaks HTTPS to
//! the coordinator with a pinned root (or a marble key) like the real clients do.
#![forbid(unsafe_code)]

pub mod etcd;

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
        Coordinator::start_wrapped(&[], data_dir, sim_platform, log)
    }

    /// Like [`Coordinator::start`], run through `wrapper` (a command that ends by executing
    /// its trailing arguments, e.g. `sh -c '…; exec "$@"' sh`), to impose limits on it.
    pub fn start_wrapped(
        wrapper: &[&str],
        data_dir: &Path,
        sim_platform: &Path,
        log: &Path,
    ) -> anyhow::Result<Coordinator> {
        Coordinator::start_wrapped_with(wrapper, data_dir, sim_platform, log, &[])
    }

    /// Like [`Coordinator::start`], with `extra_args` appended to the command line.
    pub fn start_with(
        data_dir: &Path,
        sim_platform: &Path,
        log: &Path,
        extra_args: &[&str],
    ) -> anyhow::Result<Coordinator> {
        Coordinator::start_wrapped_with(&[], data_dir, sim_platform, log, extra_args)
    }

    /// [`Coordinator::start_wrapped`] with `extra_args` appended to the command line.
    pub fn start_wrapped_with(
        wrapper: &[&str],
        data_dir: &Path,
        sim_platform: &Path,
        log: &Path,
        extra_args: &[&str],
    ) -> anyhow::Result<Coordinator> {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let start_len = std::fs::metadata(log)?.len() as usize;
        let mut cmd = match wrapper.split_first() {
            None => Command::new(bin("quarry-coordinator")),
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin("quarry-coordinator"));
                c
            }
        };
        let child = cmd
            .args(["--tee", "simulated", "--log-format", "json"])
            .arg("--sim-platform")
            .arg(sim_platform)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--client-addr", "127.0.0.1:0", "--mesh-addr", "127.0.0.1:0"])
            .args(extra_args)
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

    /// Kills the coordinator with SIGKILL (no chance to clean up) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
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

/// The coordinator's root CA (PEM), fetched over an unauthenticated TLS connection from the
/// end of the `/api/v2/quote` chain. Tests only: real clients pin the root from attestation.
pub async fn fetch_root_unverified(coord: &Coordinator) -> anyhow::Result<String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider)))
        .with_no_client_auth();
    let (code, v) = jsend(
        https(config)?
            .get(format!("{}/api/v2/quote", coord.client_url()))
            .send()
            .await?,
    )
    .await?;
    anyhow::ensure!(code == 200, "quote: HTTP {code}: {v}");
    let chain = v["data"]["cert"].as_str().context("quote without cert")?;
    let root = pem::parse_many(chain)?.pop().context("empty chain")?;
    Ok(pem::encode(&root))
}

#[derive(Debug)]
struct AcceptAnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not offered".into()))
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls_pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// One complete marble activation at `mesh_url` like a sidecar's (fresh key, mTLS, nonce, evidence from
/// `provider`); returns the HTTP status, the JSend body and the UUID used.
pub async fn activate(
    mesh_url: &str,
    root_pem: &str,
    provider: &quarry_attestation::simulated::SimProvider,
    marble_type: &str,
) -> anyhow::Result<(u16, serde_json::Value, String)> {
    use quarry_attestation::EvidenceProvider;
    let key = MarbleKey::generate()?;
    let client = https(tls_config(
        root_pem,
        Some((key.cert.clone(), key.key.clone())),
    )?)?;
    let (code, n) = jsend(
        client
            .get(format!("{mesh_url}/api/v2/activate/nonce"))
            .send()
            .await?,
    )
    .await?;
    anyhow::ensure!(code == 200, "nonce: HTTP {code}: {n}");
    let nonce_hex = n["data"]["nonce"].as_str().context("no nonce")?.to_string();
    let nonce: [u8; 32] = hex::decode(&nonce_hex)?
        .try_into()
        .map_err(|_| anyhow::anyhow!("nonce is not 32 bytes"))?;
    let rd = quarry_api::evidence::activation_report_data(&key.spki, Some(&nonce));
    let uuid = uuid::Uuid::new_v4().to_string();
    let body = serde_json::json!({
        "marbleType": marble_type,
        "uuid": uuid,
        "evidence": provider.evidence(&rd)?,
        "nonce": nonce_hex,
    });
    let (code, v) = jsend(
        client
            .post(format!("{mesh_url}/api/v2/activate"))
            .json(&body)
            .send()
            .await?,
    )
    .await?;
    Ok((code, v, uuid))
}
