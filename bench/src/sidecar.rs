//! An in-process simulated sidecar: the full activation a real `marble-sidecar` performs
//! (fresh P-256 key and self-signed certificate, TLS 1.3 handshake with that client
//! certificate, `GET /api/v2/activate/nonce`, simulated evidence binding key and nonce,
//! `POST /api/v2/activate`), over one HTTP/1.1 connection per activation.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use quarry_attestation::simulated::SimProvider;
use quarry_attestation::EvidenceProvider;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// What every sidecar shares: the mesh address, the pinned root and the evidence signer.
pub struct Mesh {
    /// Mesh API address.
    pub addr: SocketAddr,
    /// The coordinator's root CA (DER), pinned.
    pub roots: Arc<rustls::RootCertStore>,
    /// Signs simulated evidence for the benchmark package.
    pub provider: Arc<SimProvider>,
    /// Marble type to activate as.
    pub marble_type: String,
}

/// Timings of one successful activation.
#[derive(Debug, Clone, Copy)]
pub struct Activation {
    /// From key generation to the parsed activation response.
    pub total: Duration,
}

/// Where a serialised run holds its global lock.
pub type SerialLock = Arc<tokio::sync::Mutex<()>>;

impl Mesh {
    /// One complete activation. With `serial`, the evidence generation and the activation
    /// request (not the TLS handshake or the nonce request) run under that global lock.
    pub async fn activate(&self, serial: Option<&SerialLock>) -> anyhow::Result<Activation> {
        let started = Instant::now();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let cert = rcgen::CertificateParams::new(vec![])?.self_signed(&key)?;
        let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(self.roots.clone())
        .with_client_auth_cert(
            vec![CertificateDer::from(cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )?;
        let (mut send, driver) = connect(self.addr, config).await?;

        let nonce_resp = request(&mut send, "GET", "/api/v2/activate/nonce", None).await?;
        let nonce_hex = nonce_resp["data"]["nonce"]
            .as_str()
            .context("nonce response without data.nonce")?
            .to_string();
        let nonce: [u8; 32] = hex::decode(&nonce_hex)?
            .try_into()
            .map_err(|_| anyhow::anyhow!("nonce is not 32 bytes"))?;

        let _guard = match serial {
            Some(lock) => Some(lock.lock().await),
            None => None,
        };
        let report_data = quarry_api::evidence::activation_report_data(&spki, Some(&nonce));
        let evidence = self.provider.evidence(&report_data)?;
        let body = serde_json::json!({
            "marbleType": self.marble_type,
            "uuid": uuid::Uuid::new_v4().to_string(),
            "evidence": evidence,
            "nonce": nonce_hex,
        });
        let resp = request(
            &mut send,
            "POST",
            "/api/v2/activate",
            Some(serde_json::to_vec(&body)?),
        )
        .await?;
        drop(_guard);
        if resp["data"]["certificateChain"].as_str().is_none() {
            bail!("activation response without a certificate chain: {resp}");
        }
        let total = started.elapsed();
        drop(send);
        driver.abort();
        Ok(Activation { total })
    }
}

/// A sender for requests on a new TLS connection to `addr` and the task driving it.
pub async fn connect(
    addr: SocketAddr,
    config: rustls::ClientConfig,
) -> anyhow::Result<(Sender, tokio::task::JoinHandle<hyper::Result<()>>)> {
    let tcp = TcpStream::connect(addr).await.context("connect")?;
    tcp.set_nodelay(true)?;
    let server_name = ServerName::IpAddress(addr.ip().into());
    let tls = TlsConnector::from(Arc::new(config))
        .connect(server_name, tcp)
        .await
        .context("TLS handshake")?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
    Ok((send, tokio::spawn(conn)))
}

/// The request half of one HTTP/1.1 connection.
pub type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// Sends one request on the connection and returns the JSend body of a 2xx answer.
pub async fn request(
    send: &mut Sender,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
) -> anyhow::Result<serde_json::Value> {
    let mut builder = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "coordinator");
    if body.is_some() {
        builder = builder.header("content-type", "application/json");
    }
    let req = builder.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
    send.ready().await?;
    let resp = send
        .send_request(req)
        .await
        .with_context(|| format!("{method} {path}"))?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!(
            "{method} {path}: HTTP {status}: {}",
            String::from_utf8_lossy(&bytes)
        );
    }
    Ok(serde_json::from_slice(&bytes)?)
}
