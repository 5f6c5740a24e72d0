//! The coordinator client: TLS 1.3 with a pinned root CA (or, dangerously, none), HTTP, and
//! JSend unwrapping. Every transport problem becomes an [`ApiError`] that names the address.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quarry_api::http::JSend;
use quarry_trust::tls::{self, dangerous::AcceptAnyServerCert};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ClientConfig;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::output::{self, Failure};

/// Default client API address of the coordinator.
pub const DEFAULT_COORDINATOR: &str = "localhost:4433";
/// How long to wait for a TCP connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer the client reads, in bytes.
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
/// How long a whole request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Flags of the commands that fetch one document from the coordinator and print or save it.
#[derive(clap::Args, Debug, Clone)]
pub struct FetchArgs {
    /// Coordinator address and trust.
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Write the document to FILE instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Print the document and what was checked about it as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Flags shared by every command that talks to the coordinator's client API.
#[derive(clap::Args, Debug, Clone)]
pub struct ConnectArgs {
    /// Where the coordinator is and how it is authenticated.
    #[command(flatten)]
    pub server: CoordinatorArgs,
    /// User certificate (PEM) presented as TLS client authentication; needs --key.
    #[arg(short = 'c', long = "cert", value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// Private key (PEM) of the user certificate; needs --cert.
    #[arg(short = 'k', long = "key", value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
}

/// The coordinator's address and trust, without user authentication (`quarry recover`, whose
/// `-k` is the recovery key).
#[derive(clap::Args, Debug, Clone)]
pub struct CoordinatorArgs {
    /// Client API address of the coordinator.
    #[arg(long, env = "QUARRY_COORDINATOR", default_value = DEFAULT_COORDINATOR, value_name = "HOST:PORT")]
    pub coordinator: String,
    /// Trust only this root CA (PEM, one certificate) for the coordinator's TLS certificate.
    #[arg(long, env = "QUARRY_ROOT_CA", value_name = "FILE")]
    pub root_ca: Option<PathBuf>,
    /// DANGEROUS: accept any coordinator certificate (still TLS 1.3, nothing authenticated).
    #[arg(long)]
    pub insecure: bool,
}

/// How the client authenticates the coordinator.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Only certificates chaining to this root CA, with host name verification.
    Pinned(CertificateDer<'static>),
    /// Any certificate; the handshake signature is still checked. Dangerous.
    Insecure,
}

/// A user identity for TLS client authentication.
#[derive(Debug)]
pub struct Identity {
    /// The certificate chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key of the leaf.
    pub key: PrivateKeyDer<'static>,
}

/// Why a request to the coordinator failed.
#[derive(Debug)]
pub enum ApiError {
    /// No TCP connection to the address.
    Connect {
        /// The address tried.
        address: String,
        /// The innermost cause.
        detail: String,
    },
    /// The TLS handshake failed (untrusted certificate, wrong host name, protocol).
    Tls {
        /// The address tried.
        address: String,
        /// The rustls error.
        detail: String,
    },
    /// No answer in time.
    Timeout {
        /// The address tried.
        address: String,
    },
    /// The coordinator answered with a JSend fail/error or an HTTP error status.
    Refused {
        /// HTTP status code.
        status: u16,
        /// The coordinator's message.
        message: String,
    },
    /// The answer is not what the client API returns.
    Malformed {
        /// The address asked.
        address: String,
        /// What is wrong with the answer.
        detail: String,
    },
}

/// A connected-on-demand client for the coordinator's client API.
#[derive(Debug)]
pub struct Client {
    http: reqwest::Client,
    base: reqwest::Url,
    address: String,
    pinned: Option<CertificateDer<'static>>,
    runtime: tokio::runtime::Runtime,
}

impl Client {
    /// Builds a client from the command-line flags; prints a warning for `--insecure`.
    pub fn from_args(args: &ConnectArgs) -> Result<Client, Failure> {
        let trust = trust_from_args(&args.server)?;
        if matches!(trust, Trust::Insecure) {
            output::warn(format!(
                "--insecure: the certificate of {} is NOT verified; anyone on the network path can impersonate the coordinator",
                args.server.coordinator
            ));
        }
        let identity = match (&args.cert, &args.key) {
            (Some(cert), Some(key)) => Some(load_identity(cert, key)?),
            _ => None,
        };
        let config = tls_config(&trust, identity)?;
        let mut client = Client::new(&args.server.coordinator, config)?;
        if let Trust::Pinned(root) = trust {
            client.pinned = Some(root);
        }
        Ok(client)
    }

    /// Builds a client for `address` (`HOST:PORT`) with a prepared TLS configuration.
    pub fn new(address: &str, tls: ClientConfig) -> Result<Client, Failure> {
        let base = base_url(address)?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .https_only(true)
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .no_proxy()
            .build()
            .map_err(|e| Failure::bare(format!("cannot set up the HTTPS client: {e}")))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Failure::bare(format!("cannot start the async runtime: {e}")))?;
        Ok(Client {
            http,
            base,
            address: address.to_owned(),
            pinned: None,
            runtime,
        })
    }

    /// The coordinator address as given.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The pinned root CA, or `None` when the coordinator is not verified (`--insecure`).
    pub fn pinned_root(&self) -> Option<&CertificateDer<'static>> {
        self.pinned.as_ref()
    }

    /// `GET path` and unwrap the JSend success payload.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiError> {
        let url = self.url(path)?;
        self.runtime
            .block_on(self.send(self.http.get(url)))
            .and_then(|bytes| self.unwrap_jsend(bytes))
    }

    /// `POST path` with a JSON body and unwrap the JSend success payload.
    pub fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ApiError> {
        let url = self.url(path)?;
        self.runtime
            .block_on(self.send(self.http.post(url).json(body)))
            .and_then(|bytes| self.unwrap_jsend(bytes))
    }

    /// [`Client::get`], a failure worded for `action`.
    pub fn fetch<T: DeserializeOwned>(&self, path: &str, action: &str) -> Result<T, Failure> {
        self.get(path).map_err(|e| e.failure(action))
    }

    /// [`Client::post`], a failure worded for `action`.
    pub fn submit<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        action: &str,
    ) -> Result<T, Failure> {
        self.post(path, body).map_err(|e| e.failure(action))
    }

    fn url(&self, path: &str) -> Result<reqwest::Url, ApiError> {
        self.base.join(path).map_err(|e| ApiError::Malformed {
            address: self.address.clone(),
            detail: format!("bad request path {path}: {e}"),
        })
    }

    /// Sends a request; returns the body of a 2xx answer, or the refusal of another.
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Vec<u8>, ApiError> {
        let mut response = request
            .send()
            .await
            .map_err(|e| transport_error(&self.address, &e))?;
        let status = response.status();
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| transport_error(&self.address, &e))?
        {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(ApiError::Malformed {
                    address: self.address.clone(),
                    detail: format!("the answer is larger than {MAX_RESPONSE_BYTES} bytes"),
                });
            }
            body.extend_from_slice(&chunk);
        }
        if status.is_success() {
            return Ok(body);
        }
        Err(ApiError::Refused {
            status: status.as_u16(),
            message: refusal_message(&body, status),
        })
    }

    fn unwrap_jsend<T: DeserializeOwned>(&self, body: Vec<u8>) -> Result<T, ApiError> {
        let malformed = |detail: String| ApiError::Malformed {
            address: self.address.clone(),
            detail,
        };
        let envelope: JSend<serde_json::Value> = serde_json::from_slice(&body)
            .map_err(|e| malformed(format!("not a JSend JSON body: {e}")))?;
        if envelope.status != "success" {
            return Err(ApiError::Refused {
                status: 200,
                message: envelope
                    .message
                    .unwrap_or_else(|| format!("status {}", envelope.status)),
            });
        }
        let data = envelope.data.unwrap_or(serde_json::Value::Null);
        serde_json::from_value(data).map_err(|e| malformed(format!("unexpected data: {e}")))
    }
}

impl ApiError {
    /// The one-line failure for this error while doing `action` (e.g. "reading the status").
    pub fn failure(self, action: &str) -> Failure {
        Failure::new(format!("{action}: {self}"), self.hint())
    }

    /// What the user should check.
    fn hint(&self) -> &'static str {
        match self {
            ApiError::Connect { .. } => {
                "check --coordinator (QUARRY_COORDINATOR) and that the coordinator is running"
            }
            ApiError::Tls { .. } => "check that --root-ca (QUARRY_ROOT_CA) is this deployment's root CA and that HOST matches the coordinator's certificate",
            ApiError::Timeout { .. } => {
                "check --coordinator (QUARRY_COORDINATOR) and the coordinator's health"
            }
            ApiError::Refused { .. } => "see 'quarry status' for the coordinator's state",
            ApiError::Malformed { .. } => {
                "check that --coordinator names a Quarry coordinator's client API"
            }
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::Connect { address, detail } => {
                write!(
                    f,
                    "cannot connect to the coordinator at {address}: {detail}"
                )
            }
            ApiError::Tls { address, detail } => write!(
                f,
                "TLS handshake with the coordinator at {address} failed: {detail}"
            ),
            ApiError::Timeout { address } => {
                write!(f, "the coordinator at {address} did not answer in time")
            }
            ApiError::Refused { status, message } => {
                write!(f, "the coordinator refused (HTTP {status}): {message}")
            }
            ApiError::Malformed { address, detail } => {
                write!(f, "unexpected answer from {address}: {detail}")
            }
        }
    }
}

/// The trust decision from `--root-ca` / `--insecure`: exactly one is required.
pub fn trust_from_args(args: &CoordinatorArgs) -> Result<Trust, Failure> {
    match (&args.root_ca, args.insecure) {
        (Some(_), true) => Err(Failure::usage(
            "both --root-ca (or QUARRY_ROOT_CA) and --insecure are given",
            "use one: --root-ca FILE pins the coordinator's root CA, --insecure skips verification",
        )),
        (None, false) => Err(Failure::usage(
            "no coordinator trust given",
            "pass --root-ca FILE (or set QUARRY_ROOT_CA) to pin the coordinator's root CA, or --insecure to skip verification",
        )),
        (Some(path), false) => Ok(Trust::Pinned(load_root_ca(path)?)),
        (None, true) => Ok(Trust::Insecure),
    }
}

/// Reads a PEM file holding exactly one certificate: the root CA to pin.
pub fn load_root_ca(path: &Path) -> Result<CertificateDer<'static>, Failure> {
    let bytes = output::read_file(path, "root CA")?;
    let certs = parse_certs(&bytes).map_err(|e| {
        Failure::new(
            format!("root CA {}: {e}", path.display()),
            "pass the PEM file written by 'quarry certificate root'",
        )
    })?;
    match <[_; 1]>::try_from(certs) {
        Ok([cert]) => Ok(cert),
        Err(certs) => Err(Failure::new(
            format!(
                "root CA {} holds {} certificates, not exactly one",
                path.display(),
                certs.len()
            ),
            "pass the root CA alone (quarry certificate root -o FILE)",
        )),
    }
}

/// Reads a user certificate chain and its private key (PEM files).
pub fn load_identity(cert: &Path, key: &Path) -> Result<Identity, Failure> {
    let chain = parse_certs(&output::read_file(cert, "client certificate")?).map_err(|e| {
        Failure::new(
            format!("client certificate {}: {e}", cert.display()),
            "pass a PEM certificate with -c/--cert",
        )
    })?;
    if chain.is_empty() {
        return Err(Failure::new(
            format!("client certificate {} holds no certificate", cert.display()),
            "pass a PEM certificate with -c/--cert",
        ));
    }
    let key_bytes = output::read_file(key, "client key")?;
    let key_der = rustls_pemfile::private_key(&mut key_bytes.as_slice())
        .map_err(|e| e.to_string())
        .and_then(|k| k.ok_or_else(|| "no private key found".to_owned()))
        .map_err(|e| {
            Failure::new(
                format!("client key {}: {e}", key.display()),
                "pass a PEM private key (PKCS#8, SEC1 or PKCS#1) with -k/--key",
            )
        })?;
    Ok(Identity {
        chain,
        key: key_der,
    })
}

/// The rustls configuration: ring, TLS 1.3 only, the given trust and optional client auth.
pub fn tls_config(trust: &Trust, identity: Option<Identity>) -> Result<ClientConfig, Failure> {
    let setup = |e: rustls::Error| Failure::bare(format!("cannot configure TLS 1.3: {e}"));
    let builder = match trust {
        Trust::Pinned(root) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(root.clone()).map_err(|e| {
                Failure::new(
                    format!("the root CA cannot be used as a trust anchor: {e}"),
                    "pass the PEM file written by 'quarry certificate root'",
                )
            })?;
            tls::client_with_roots(Arc::new(roots)).map_err(setup)?
        }
        Trust::Insecure => {
            tls::client_with_verifier(Arc::new(AcceptAnyServerCert::new())).map_err(setup)?
        }
    };
    match identity {
        None => Ok(builder.with_no_client_auth()),
        Some(id) => builder
            .with_client_auth_cert(id.chain, id.key)
            .map_err(|e| {
                Failure::new(
                    format!("the client certificate and key cannot be used: {e}"),
                    "check that -k/--key is the key of -c/--cert",
                )
            }),
    }
}

/// `https://HOST:PORT/` from `HOST:PORT` (an `https://` prefix is accepted).
fn base_url(address: &str) -> Result<reqwest::Url, Failure> {
    let bad = |why: &str| {
        Failure::usage(
            format!("bad coordinator address {address:?}: {why}"),
            "pass --coordinator HOST:PORT, e.g. localhost:4433",
        )
    };
    let rest = address.strip_prefix("https://").unwrap_or(address);
    if rest.contains("://") {
        return Err(bad("only https is supported"));
    }
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
        return Err(bad("expected HOST:PORT"));
    }
    let url = reqwest::Url::parse(&format!("https://{rest}/")).map_err(|e| bad(&e.to_string()))?;
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    Ok(url)
}

fn parse_certs(bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    rustls_pemfile::certs(&mut &bytes[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM certificate file: {e}"))
}

/// The message of a non-2xx answer: the JSend message if there is one, else the status.
fn refusal_message(body: &[u8], status: reqwest::StatusCode) -> String {
    if let Ok(envelope) = serde_json::from_slice::<JSend<serde_json::Value>>(body) {
        // A typed refusal leads with its stable code (docs/OPERATIONS.md, "Refusal codes").
        let code = envelope.fail_data().map(|d| d.code);
        if let Some(m) = envelope.message.filter(|m| !m.trim().is_empty()) {
            return match code {
                Some(code) => output::one_line(&format!("[{code}] {m}")),
                None => output::one_line(&m),
            };
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = output::one_line(&text);
    if text.is_empty() || text.len() > 300 {
        status.to_string()
    } else {
        text
    }
}

/// Classifies a reqwest error by walking its causes.
fn transport_error(address: &str, err: &reqwest::Error) -> ApiError {
    let address = address.to_owned();
    let mut innermost = err.to_string();
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cause {
        innermost = e.to_string();
        cause = e.source();
    }
    if let Some(detail) = find_rustls_error(err) {
        return ApiError::Tls { address, detail };
    }
    if err.is_timeout() {
        return ApiError::Timeout { address };
    }
    if err.is_connect() {
        return ApiError::Connect {
            address,
            detail: innermost,
        };
    }
    ApiError::Malformed {
        address,
        detail: innermost,
    }
}

/// The rustls error somewhere in `err`'s causes, if the failure was the TLS handshake.
fn find_rustls_error(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    if let Some(r) = err.downcast_ref::<rustls::Error>() {
        return Some(r.to_string());
    }
    // io::Error hides a custom inner error from `source()`; look at it directly.
    if let Some(inner) = err
        .downcast_ref::<std::io::Error>()
        .and_then(std::io::Error::get_ref)
    {
        if let Some(found) = find_rustls_error(inner) {
            return Some(found);
        }
    }
    err.source().and_then(find_rustls_error)
}

#[cfg(test)]
mod tests;
