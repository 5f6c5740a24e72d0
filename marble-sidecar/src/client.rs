//! Talking to the coordinator's mesh API, with one client ([`MeshClient`]) for everything the
//! sidecar asks: the attestation, nonces, `POST /api/v2/activate`, `POST /api/v2/renew` and
//! the CRL. Also the TLS 1.3 client configurations (the marble key, or the current leaf, as
//! client certificate; the coordinator authenticated as [`TrustAnchor`] says) and the
//! activation exchange with retries.
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use quarry_api::attestation::AttestationResponse;
use quarry_api::evidence::activation_report_data;
use quarry_api::http::{
    ActivateRequest, ActivateResponse, FieldMismatch, JSend, NonceResponse, RenewRequest,
    RenewResponse, MAX_BODY_BYTES,
};
use quarry_attestation::{EvidenceProvider, ProviderError};
use quarry_trust::tls::{self, dangerous::AcceptAnyServerCert, Recording};
use rustls::client::WantsClientCert;
use serde::de::DeserializeOwned;
use zeroize::Zeroizing;

use crate::config::CoordinatorTrust;
use crate::identity::MarbleKey;
use crate::proxy::CertStore;

/// Path of the nonce endpoint.
pub const NONCE_PATH: &str = "/api/v2/activate/nonce";
/// Path of the activation endpoint.
pub const ACTIVATE_PATH: &str = "/api/v2/activate";
/// Path of the renewal endpoint.
pub const RENEW_PATH: &str = "/api/v2/renew";
/// Path of the CRL endpoint.
pub const CRL_PATH: &str = "/api/v2/crl";
/// Upper bound of one request, connection included.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound of establishing a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest coordinator message echoed to the operator.
const MAX_MESSAGE_CHARS: usize = 512;

/// Why talking to the coordinator failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The pinned root CA file is unusable.
    #[error("coordinator root CA {path}: {reason}")]
    RootCa {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The TLS or HTTP client could not be built.
    #[error("building the mesh API client: {0}")]
    Setup(String),
    /// No connection could be made (retried before giving up).
    #[error("cannot reach the coordinator at {url}: {reason}")]
    Unreachable {
        /// The URL called.
        url: String,
        /// The transport error.
        reason: String,
    },
    /// The coordinator's certificate does not verify against the pinned root (invariant 10).
    #[error("the coordinator at {url} could not be authenticated: {reason} (is --coordinator-root-ca the deployment's root CA, and is the address one of the coordinator's DNS names?)")]
    CoordinatorNotAuthenticated {
        /// The URL called.
        url: String,
        /// The TLS error.
        reason: String,
    },
    /// The TLS handshake failed for another reason.
    #[error("TLS handshake with the coordinator at {url} failed: {reason}")]
    Handshake {
        /// The URL called.
        url: String,
        /// The TLS error.
        reason: String,
    },
    /// The request failed after the connection was made (for example a timeout).
    #[error("request to the coordinator at {url} failed: {reason}")]
    Transport {
        /// The URL called.
        url: String,
        /// The transport error.
        reason: String,
    },
    /// The coordinator answered with a JSend fail/error or an error status.
    #[error("activation refused by coordinator: {}", refusal_line(code.as_deref(), message, fields))]
    Refused {
        /// The coordinator's message (control characters removed, shortened).
        message: String,
        /// The stable refusal code (`policy-mismatch`, `nonce`, ...), when the coordinator
        /// sent one (docs/OPERATIONS.md, "Refusal codes").
        code: Option<String>,
        /// The compared fields of the refusal (sanitised like the message).
        fields: Vec<FieldMismatch>,
    },
    /// The coordinator's answer is not what the protocol says.
    #[error("unexpected answer from the coordinator to {what}: {reason}")]
    Protocol {
        /// The request.
        what: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The TEE could not produce evidence.
    #[error("producing evidence: {0}")]
    Evidence(#[from] ProviderError),
    /// The issued certificate is not for this marble's key; nothing from the answer is used.
    #[error("the coordinator issued a certificate for a different public key than this marble's; refusing the activation response")]
    LeafKeyMismatch,
}

impl ClientError {
    /// True for failures worth retrying: the request never reached a coordinator.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ClientError::Unreachable { .. })
    }
}

/// How the coordinator is authenticated, with the pinned roots loaded.
#[derive(Debug, Clone)]
pub enum TrustAnchor {
    /// The server certificate must chain to one of these roots and match the host name.
    PinnedRoot(Arc<rustls::RootCertStore>),
    /// Any server certificate is accepted (the handshake signature is still checked).
    DangerousAcceptAnyCoordinator,
    /// Any server chain is accepted and recorded; the coordinator's attestation must then
    /// vouch for it (`--coordinator-policy`, before a root is pinned).
    Recording(Arc<Recording>),
}

impl TrustAnchor {
    /// Loads the trust configuration; reads and checks the root CA file.
    pub fn load(trust: &CoordinatorTrust) -> Result<TrustAnchor, ClientError> {
        match trust {
            CoordinatorTrust::PinnedRoot(path) => load_roots(path).map(TrustAnchor::PinnedRoot),
            CoordinatorTrust::Policy { .. } => Err(ClientError::Setup(
                "a coordinator policy is verified online (attest::verify_coordinator)".into(),
            )),
            CoordinatorTrust::DangerousAcceptAnyCoordinator => {
                tracing::warn!(
                    "WARNING: --insecure-skip-coordinator-verify: the coordinator is NOT authenticated; \
                     anyone on the network path can impersonate it and hand this marble forged secrets. \
                     Development only."
                );
                Ok(TrustAnchor::DangerousAcceptAnyCoordinator)
            }
        }
    }
}

fn load_roots(path: &Path) -> Result<Arc<rustls::RootCertStore>, ClientError> {
    let err = |reason: String| ClientError::RootCa {
        path: path.display().to_string(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut bytes.as_slice()) {
        let cert = cert.map_err(|e| err(format!("not PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| err(format!("not a usable CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(err("contains no PEM CERTIFICATE".into()));
    }
    Ok(Arc::new(roots))
}

/// The TLS 1.3 client configuration: ring, the marble's self-signed certificate as client
/// certificate, and the coordinator verified as `trust` says.
pub fn tls_config(
    trust: &TrustAnchor,
    key: &MarbleKey,
) -> Result<rustls::ClientConfig, ClientError> {
    let mut config = client_builder(trust)?
        .with_client_auth_cert(vec![key.cert_der()], key.private_key_der())
        .map_err(|e| ClientError::Setup(format!("client certificate: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The TLS 1.3 client configuration of renewals and CRL fetches: the marble's *current* leaf
/// (from `certs`, which renewal replaces) as client certificate.
pub fn leaf_tls_config(
    trust: &TrustAnchor,
    certs: Arc<CertStore>,
) -> Result<rustls::ClientConfig, ClientError> {
    let mut config = client_builder(trust)?.with_client_cert_resolver(certs);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // A resumed session would carry the identity of the certificate it was made with.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

fn client_builder(
    trust: &TrustAnchor,
) -> Result<rustls::ConfigBuilder<rustls::ClientConfig, WantsClientCert>, ClientError> {
    match trust {
        TrustAnchor::PinnedRoot(roots) => tls::client_with_roots(roots.clone()),
        TrustAnchor::DangerousAcceptAnyCoordinator => {
            tls::client_with_verifier(Arc::new(AcceptAnyServerCert::new()))
        }
        TrustAnchor::Recording(recording) => tls::client_with_verifier(recording.clone()),
    }
    .map_err(|e| ClientError::Setup(e.to_string()))
}

/// Retry schedule for connection failures (a sidecar may start before its coordinator).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total (at least 1).
    pub attempts: u32,
    /// Wait after the first failure; doubles after each further one.
    pub initial_delay: Duration,
    /// Longest wait between two attempts.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            attempts: 10,
            initial_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(4),
        }
    }
}

/// An HTTPS client of one coordinator's mesh API.
#[derive(Debug, Clone)]
pub struct MeshClient {
    http: reqwest::Client,
    base: reqwest::Url,
}

impl MeshClient {
    /// A client of the mesh API at `base` (`https://host:port`) using `tls`.
    pub fn new(base: reqwest::Url, tls: rustls::ClientConfig) -> Result<MeshClient, ClientError> {
        MeshClient::build(base, tls, true)
    }

    /// A client that authenticates with the marble's *current* leaf certificate (renewals,
    /// CRL). No connection is reused, so every request presents the certificate in force at
    /// that moment.
    pub fn with_current_leaf(
        base: reqwest::Url,
        trust: &TrustAnchor,
        certs: Arc<CertStore>,
    ) -> Result<MeshClient, ClientError> {
        MeshClient::build(base, leaf_tls_config(trust, certs)?, false)
    }

    fn build(
        base: reqwest::Url,
        tls: rustls::ClientConfig,
        reuse_connections: bool,
    ) -> Result<MeshClient, ClientError> {
        let mut builder = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .https_only(true)
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("quarry-marble-sidecar/", env!("CARGO_PKG_VERSION")));
        if !reuse_connections {
            builder = builder.pool_max_idle_per_host(0);
        }
        let http = builder
            .build()
            .map_err(|e| ClientError::Setup(error_chain(&e)))?;
        Ok(MeshClient { http, base })
    }

    /// `GET /api/v2/attestation?nonce=HEX`: the coordinator's evidence and statement
    /// (unverified; see [`quarry_trust::relying_party::verify`]).
    pub async fn attestation(&self, nonce: &[u8]) -> Result<AttestationResponse, ClientError> {
        let path = quarry_trust::relying_party::attestation_path(nonce);
        self.get(&path, "the attestation request").await
    }

    /// `GET /api/v2/activate/nonce`: a fresh nonce bound to this client's TLS key.
    pub async fn nonce(&self) -> Result<[u8; 32], ClientError> {
        let data: NonceResponse = self.get(NONCE_PATH, "the nonce request").await?;
        hex::decode(data.nonce.trim())
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| ClientError::Protocol {
                what: "the nonce request",
                reason: "the nonce is not 32 bytes of hex".into(),
            })
    }

    /// `POST /api/v2/activate`.
    pub async fn activate(
        &self,
        request: &ActivateRequest,
    ) -> Result<ActivateResponse, ClientError> {
        self.post(ACTIVATE_PATH, request, "the activation request")
            .await
    }

    /// `POST /api/v2/renew`.
    pub async fn renew(&self, request: &RenewRequest) -> Result<RenewResponse, ClientError> {
        self.post(RENEW_PATH, request, "the renewal request").await
    }

    /// `GET /api/v2/crl`: the DER CRL (unverified; see [`crate::crl::verify_crl`]).
    pub async fn crl(&self) -> Result<Vec<u8>, ClientError> {
        let what = "the CRL request";
        let url = self.url(CRL_PATH)?;
        let (status, body) = self.fetch(self.http.get(url.clone()), &url, what).await?;
        if status.is_success() {
            // The CRL is the body itself, not a JSend envelope.
            return Ok(body.to_vec());
        }
        // A refusal is an envelope like any other; interpret never accepts an error status.
        match interpret::<serde_json::Value>(status, &body, what) {
            Err(e) => Err(e),
            Ok(_) => Err(ClientError::Protocol {
                what,
                reason: format!("HTTP {status}"),
            }),
        }
    }

    fn url(&self, path: &str) -> Result<reqwest::Url, ClientError> {
        self.base
            .join(path)
            .map_err(|e| ClientError::Setup(e.to_string()))
    }

    /// `GET path`, unwrapping the JSend payload.
    async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        what: &'static str,
    ) -> Result<T, ClientError> {
        let url = self.url(path)?;
        let (status, body) = self.fetch(self.http.get(url.clone()), &url, what).await?;
        interpret(status, &body, what)
    }

    /// `POST path` with a JSON body, unwrapping the JSend payload.
    async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl serde::Serialize,
        what: &'static str,
    ) -> Result<T, ClientError> {
        let url = self.url(path)?;
        let request = self.http.post(url.clone()).json(body);
        let (status, body) = self.fetch(request, &url, what).await?;
        interpret(status, &body, what)
    }

    /// Sends `request`; returns the status and the whole (bounded) body.
    async fn fetch(
        &self,
        request: reqwest::RequestBuilder,
        url: &reqwest::Url,
        what: &'static str,
    ) -> Result<(reqwest::StatusCode, Zeroizing<Vec<u8>>), ClientError> {
        let response = request.send().await.map_err(|e| transport_error(url, &e))?;
        let status = response.status();
        let body = read_body(response, what).await.map_err(|e| match e {
            BodyError::Transport(e) => transport_error(url, &e),
            BodyError::TooLarge => ClientError::Protocol {
                what,
                reason: format!("the body exceeds {MAX_BODY_BYTES} bytes"),
            },
        })?;
        Ok((status, body))
    }
}

/// Runs the activation exchange, retrying while the coordinator cannot be reached, and checks
/// that the issued certificate is for `key`.
pub async fn activate(
    mesh: &MeshClient,
    key: &MarbleKey,
    provider: &dyn EvidenceProvider,
    marble_type: &str,
    uuid: &uuid::Uuid,
    dns_names: &[String],
    retry: &RetryPolicy,
) -> Result<ActivateResponse, ClientError> {
    let mut delay = retry.initial_delay;
    let mut attempt = 1;
    loop {
        // One exchange: a fresh nonce, evidence binding the key to it, the request, the check.
        let once = async {
            let nonce = mesh.nonce().await?;
            let report_data = activation_report_data(key.spki_der(), Some(&nonce));
            let request = ActivateRequest {
                marble_type: marble_type.to_string(),
                uuid: uuid.hyphenated().to_string(),
                evidence: provider.evidence(&report_data)?,
                dns_names: dns_names.to_vec(),
                nonce: Some(hex::encode(nonce)),
            };
            let response = mesh.activate(&request).await?;
            check_leaf_key(&response, key)?;
            Ok::<_, ClientError>(response)
        };
        match once.await {
            Err(e) if e.is_retryable() && attempt < retry.attempts.max(1) => {
                tracing::warn!(
                    attempt,
                    of = retry.attempts,
                    retry_in_ms = delay.as_millis() as u64,
                    "{e}"
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(retry.max_delay);
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Checks that the chain's first certificate is for `key` and that the root CA parses.
pub fn check_leaf_key(response: &ActivateResponse, key: &MarbleKey) -> Result<(), ClientError> {
    use x509_parser::prelude::FromDer as _;
    let protocol = |reason: String| ClientError::Protocol {
        what: "the activation request",
        reason,
    };
    let leaf = first_certificate(&response.certificate_chain)
        .map_err(|e| protocol(format!("certificateChain: {e}")))?;
    first_certificate(&response.root_ca).map_err(|e| protocol(format!("rootCA: {e}")))?;
    let (_, leaf) = x509_parser::parse_x509_certificate(&leaf)
        .map_err(|e| protocol(format!("certificateChain: leaf: {e}")))?;
    let (_, own) = x509_parser::x509::SubjectPublicKeyInfo::from_der(key.spki_der())
        .map_err(|e| protocol(format!("own public key: {e}")))?;
    let issued = leaf.public_key();
    if issued.algorithm.algorithm != own.algorithm.algorithm
        || issued.subject_public_key.data != own.subject_public_key.data
    {
        return Err(ClientError::LeafKeyMismatch);
    }
    Ok(())
}

fn first_certificate(pem_text: &str) -> Result<Vec<u8>, String> {
    let blocks = pem::parse_many(pem_text).map_err(|e| format!("not PEM: {e}"))?;
    match blocks.into_iter().next() {
        Some(b) if b.tag() == "CERTIFICATE" => Ok(b.into_contents()),
        Some(b) => Err(format!("expected a CERTIFICATE, found {}", b.tag())),
        None => Err("no PEM certificate".into()),
    }
}

enum BodyError {
    Transport(reqwest::Error),
    TooLarge,
}

async fn read_body(
    mut response: reqwest::Response,
    what: &'static str,
) -> Result<Zeroizing<Vec<u8>>, BodyError> {
    if response
        .content_length()
        .is_some_and(|n| n > MAX_BODY_BYTES as u64)
    {
        return Err(BodyError::TooLarge);
    }
    let mut body = Zeroizing::new(Vec::new());
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Transport)? {
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            tracing::debug!(what, "response body too large");
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Maps status + JSend body to the payload, a refusal, or a protocol error.
fn interpret<T: DeserializeOwned>(
    status: reqwest::StatusCode,
    body: &[u8],
    what: &'static str,
) -> Result<T, ClientError> {
    let envelope = match serde_json::from_slice::<JSend<serde_json::Value>>(body) {
        Ok(envelope) => envelope,
        Err(e) if status.is_success() => {
            return Err(ClientError::Protocol {
                what,
                reason: format!("the body is not a JSend envelope: {e}"),
            })
        }
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let first = text.lines().next().unwrap_or("").trim();
            let message = if first.is_empty() {
                format!("HTTP {status}")
            } else {
                format!("HTTP {status}: {first}")
            };
            return Err(ClientError::Refused {
                message: sanitize(&message),
                code: None,
                fields: Vec::new(),
            });
        }
    };
    let refusal = (envelope.status != "success").then(|| {
        let message = envelope
            .message
            .clone()
            .unwrap_or_else(|| format!("status {}", envelope.status));
        refused(&envelope, &message)
    });
    if let Some(refusal) = refusal {
        return Err(refusal);
    }
    match envelope.into_result() {
        Ok(data) if status.is_success() => {
            serde_json::from_value(data).map_err(|e| ClientError::Protocol {
                what,
                reason: format!("unexpected data: {e}"),
            })
        }
        Ok(_) => Err(ClientError::Protocol {
            what,
            reason: format!("HTTP {status} with a success envelope"),
        }),
        Err(message) => Err(ClientError::Refused {
            message: sanitize(&message),
            code: None,
            fields: Vec::new(),
        }),
    }
}

/// What an operator reads of a refusal: `refused [code] field: expected X, found Y` when the
/// coordinator said which fields failed, `refused [code] message` when it gave a code only,
/// and the bare message from a coordinator that sends neither.
pub fn refusal_line(code: Option<&str>, message: &str, fields: &[FieldMismatch]) -> String {
    match code {
        None => message.to_string(),
        Some(code) => quarry_api::http::FailData {
            code: code.to_string(),
            message: message.to_string(),
            fields: fields.to_vec(),
            pointer: None,
        }
        .summary(),
    }
}

/// The refusal of a `fail`/`error` envelope, its code and fields sanitised for display.
fn refused(envelope: &JSend<serde_json::Value>, message: &str) -> ClientError {
    let data = envelope.fail_data();
    ClientError::Refused {
        message: sanitize(message),
        code: data.as_ref().map(|d| sanitize(&d.code)),
        fields: data
            .map(|d| {
                d.fields
                    .iter()
                    .map(|f| FieldMismatch {
                        field: sanitize(&f.field),
                        expected: sanitize(&f.expected),
                        found: sanitize(&f.found),
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// One line, printable, bounded: coordinator text is shown to operators and logs.
fn sanitize(message: &str) -> String {
    let mut out: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_MESSAGE_CHARS)
        .collect();
    if message.chars().count() > MAX_MESSAGE_CHARS {
        out.push('…');
    }
    out
}

/// Classifies a reqwest error: TLS failures are never retried, connection failures are.
fn transport_error(url: &reqwest::Url, error: &reqwest::Error) -> ClientError {
    let url = url.to_string();
    if let Some(tls) = find_rustls_error(error) {
        let reason = tls.to_string();
        return match tls {
            rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => {
                ClientError::CoordinatorNotAuthenticated { url, reason }
            }
            _ => ClientError::Handshake { url, reason },
        };
    }
    // reqwest's own message repeats the URL; its sources say what went wrong.
    let reason = std::error::Error::source(error)
        .map(error_chain)
        .unwrap_or_else(|| error.to_string());
    if error.is_connect() {
        ClientError::Unreachable { url, reason }
    } else {
        ClientError::Transport { url, reason }
    }
}

/// The rustls error somewhere in `error`'s source chain (also inside `io::Error`s).
fn find_rustls_error<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::Error> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                if let Some(tls) = find_rustls_error(inner) {
                    return Some(tls);
                }
            }
        }
        next = e.source();
    }
    None
}

/// `error` and its sources joined with `: `, skipping repeats.
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = next {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests;
