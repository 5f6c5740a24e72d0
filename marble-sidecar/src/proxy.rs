//! The sidecar's TLS proxies (contract §9). Every mesh edge is sidecar-to-sidecar mTLS 1.3
//! while the service speaks plaintext on loopback:
//!
//! * ingress ([`ingress`]): accept → TLS (client certificate chaining to the deployment root)
//!   → peer identity (the SPIFFE ID) → allow-list → connect to `Forward` → copy;
//! * egress ([`egress`]): accept on loopback → connect to `Address` → TLS (server certificate
//!   chaining to the root *and* naming the expected marble type) → copy.
//!
//! Identity checks run inside the certificate verifiers, so a refused peer gets a TLS alert and
//! the service never sees a byte of it. Sessions are never resumed: every connection is a full
//! handshake against the current certificates and policy. The marble's certificate lives in a
//! [`CertStore`] that renewal replaces without touching open connections.
pub mod allow;
pub mod copy;
pub mod egress;
pub mod ingress;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quarry_api::http::MeshConfig;
use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Longest time a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest time connecting to a forward or egress destination may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the proxies could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A certificate or key from the activation is unusable.
    #[error("mesh certificate: {0}")]
    Certificate(String),
    /// The TLS configuration could not be built.
    #[error("mesh TLS setup: {0}")]
    Tls(String),
    /// A listener could not be bound.
    #[error("binding the {what} listener {addr}: {source}")]
    Bind {
        /// `ingress` or `egress`.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// The marble's current certificate chain and key, replaceable while connections are open.
///
/// A watch channel rather than a lock, so that whoever serves the certificate to others (the
/// Workload API's open streams) learns of a renewal the moment it is swapped in.
pub struct CertStore {
    current: tokio::sync::watch::Sender<Arc<CertifiedKey>>,
}

impl CertStore {
    /// A store holding `key`.
    pub fn new(key: Arc<CertifiedKey>) -> CertStore {
        CertStore {
            current: tokio::sync::watch::Sender::new(key),
        }
    }

    /// The certificate used for new handshakes.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.borrow().clone()
    }

    /// Replaces the certificate for every later handshake; open connections keep theirs.
    /// Subscribers are told.
    pub fn replace(&self, key: Arc<CertifiedKey>) {
        self.current.send_replace(key);
    }

    /// A receiver that sees the current certificate and every later replacement.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Arc<CertifiedKey>> {
        self.current.subscribe()
    }
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore").finish_non_exhaustive()
    }
}

impl rustls::server::ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl rustls::client::ResolvesClientCert for CertStore {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Everything the proxies authenticate with: the marble's certificate, the deployment root CA
/// and the trust domain.
#[derive(Debug, Clone)]
pub struct MeshIdentity {
    /// The marble's certificate (hot-swappable).
    pub certs: Arc<CertStore>,
    /// The deployment root CA, the only trust anchor.
    pub roots: Arc<rustls::RootCertStore>,
    /// SPIFFE trust domain of this deployment.
    pub trust_domain: String,
    /// The crypto provider (ring).
    pub provider: Arc<CryptoProvider>,
    /// Revoked peer certificates, refused by every port (filled from the CRL).
    pub revoked: Arc<crate::crl::Revoked>,
}

impl MeshIdentity {
    /// From the activation response's PEM chain and root CA, and the marble's key.
    pub fn new(
        chain_pem: &str,
        key: PrivateKeyDer<'static>,
        root_ca_pem: &str,
        trust_domain: &str,
    ) -> Result<MeshIdentity, ProxyError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certified = certified_key(&provider, chain_pem, key)?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in pem_certs(root_ca_pem)? {
            roots
                .add(cert)
                .map_err(|e| ProxyError::Certificate(format!("root CA: {e}")))?;
        }
        Ok(MeshIdentity {
            certs: Arc::new(CertStore::new(certified)),
            roots: Arc::new(roots),
            trust_domain: trust_domain.to_string(),
            provider,
            revoked: crate::crl::Revoked::new(),
        })
    }

    /// What the proxies require of a peer's leaf, admitting marble types as `admit` says.
    pub fn peer_check(&self, admit: Admit) -> MeshPeerCheck {
        MeshPeerCheck {
            trust_domain: self.trust_domain.clone(),
            revoked: self.revoked.clone(),
            admit,
        }
    }
}

/// Which marble types a proxy admits at the other end of a connection.
#[derive(Debug)]
pub enum Admit {
    /// Egress: the server must be a marble of this type.
    Server {
        /// The marble type the manifest names for the egress port.
        expected: String,
    },
    /// Ingress: the client's type must be allowed by the port's `AllowFrom`.
    Client {
        /// The port's policy.
        policy: allow::Policy,
        /// The port (for the logs).
        port: u16,
    },
}

/// The check of a peer's leaf once its chain reached the deployment root: its SPIFFE ID must
/// name a marble of this trust domain that [`Admit`] accepts, and the CRL must not list it.
/// Runs inside the certificate verifiers, so a refused peer gets a TLS alert.
#[derive(Debug)]
pub struct MeshPeerCheck {
    trust_domain: String,
    revoked: Arc<crate::crl::Revoked>,
    admit: Admit,
}

impl MeshPeerCheck {
    /// Logs why the peer is refused; `why` completes "server refused" / "peer refused".
    fn refused(&self, peer: Option<&allow::PeerId>, reason: &dyn std::fmt::Display, why: &str) {
        // Displayed as the operator reads it (`peer=web/<uuid>`); `-` without a marble identity.
        let peer = peer.map_or_else(|| "-".to_string(), ToString::to_string);
        match &self.admit {
            Admit::Server { expected } => {
                tracing::warn!(proxy = "egress", marble = %expected, server = %peer, %reason, "server refused{why}")
            }
            Admit::Client { port, .. } => {
                tracing::warn!(proxy = "ingress", port, peer = %peer, %reason, "peer refused{why}")
            }
        }
    }
}

impl quarry_trust::tls::PeerCheck for MeshPeerCheck {
    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::CertificateError> {
        use rustls::CertificateError::{ApplicationVerificationFailure, Revoked};
        let peer = allow::peer_identity(end_entity, &self.trust_domain).map_err(|e| {
            self.refused(None, &e, ": no marble identity");
            ApplicationVerificationFailure
        })?;
        let (admitted, why) = match &self.admit {
            Admit::Server { expected } => (allow::check_server(&peer, expected), ""),
            Admit::Client { policy, .. } => (policy.check(&peer), " by AllowFrom"),
        };
        admitted.map_err(|e| {
            self.refused(Some(&peer), &e, why);
            ApplicationVerificationFailure
        })?;
        self.revoked.check(end_entity).map_err(|e| {
            self.refused(Some(&peer), &e, ": certificate revoked");
            Revoked
        })
    }
}

/// A certificate chain (PEM, leaf first) with its private key, ready for rustls.
pub fn certified_key(
    provider: &CryptoProvider,
    chain_pem: &str,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<CertifiedKey>, ProxyError> {
    let chain = pem_certs(chain_pem)?;
    let signer = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| ProxyError::Certificate(format!("private key: {e}")))?;
    let certified = CertifiedKey::new(chain, signer);
    certified
        .keys_match()
        .map_err(|e| ProxyError::Certificate(format!("the key does not match the leaf: {e}")))?;
    Ok(Arc::new(certified))
}

fn pem_certs(text: &str) -> Result<Vec<CertificateDer<'static>>, ProxyError> {
    let certs = rustls_pemfile::certs(&mut text.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ProxyError::Certificate(format!("not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(ProxyError::Certificate("no PEM CERTIFICATE".into()));
    }
    Ok(certs)
}

/// The running proxies; dropping this stops accepting (open connections run to completion).
#[derive(Debug)]
pub struct Proxies {
    tasks: tokio::task::JoinSet<()>,
    inbound: Vec<SocketAddr>,
    outbound: Vec<SocketAddr>,
}

impl Proxies {
    /// Binds every listener of `config` (failing on the first that cannot be bound) and starts
    /// serving them.
    pub async fn start(
        config: &MeshConfig,
        identity: &MeshIdentity,
    ) -> Result<Proxies, ProxyError> {
        let mut tasks = tokio::task::JoinSet::new();
        let mut inbound = Vec::new();
        for entry in &config.inbound {
            let port = ingress::Ingress::bind(entry, identity).await?;
            inbound.push(port.local_addr());
            tasks.spawn(port.serve());
        }
        let mut outbound = Vec::new();
        for entry in &config.outbound {
            let port = egress::Egress::bind(entry, identity).await?;
            outbound.push(port.local_addr());
            tasks.spawn(port.serve());
        }
        tracing::info!(
            inbound = ?inbound,
            outbound = ?outbound,
            "mesh proxies listening"
        );
        Ok(Proxies {
            tasks,
            inbound,
            outbound,
        })
    }

    /// No listeners, only room for background tasks (renewal, the Workload API) of a marble
    /// without a `Mesh` section.
    pub fn without_listeners() -> Proxies {
        Proxies {
            tasks: tokio::task::JoinSet::new(),
            inbound: Vec::new(),
            outbound: Vec::new(),
        }
    }

    /// Bound addresses of the ingress ports, in manifest order.
    pub fn inbound_addrs(&self) -> &[SocketAddr] {
        &self.inbound
    }

    /// Bound addresses of the egress ports, in manifest order.
    pub fn outbound_addrs(&self) -> &[SocketAddr] {
        &self.outbound
    }

    /// Runs `task` beside the listeners (renewal, CRL refresh); it stops with them.
    pub fn spawn(&mut self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
    }

    /// Serves until every listener stops (which only happens when a task panics).
    pub async fn wait(mut self) {
        while let Some(result) = self.tasks.join_next().await {
            if let Err(e) = result {
                tracing::error!(error = %e, "a mesh proxy listener stopped");
            }
        }
    }
}

/// Binds the `what` (`ingress` or `egress`) listener on `addr`.
async fn bind(what: &'static str, addr: SocketAddr) -> Result<tokio::net::TcpListener, ProxyError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ProxyError::Bind { what, addr, source })
}

/// `fut` bounded by `limit`: its output, or why there is none (its error, or the timeout).
async fn within<T, E: std::fmt::Display>(
    limit: Duration,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("timed out after {} s", limit.as_secs())),
    }
}

/// Accepts connections on `listener` (bound to `addr`) forever, each handled by `handle` in
/// its own task.
async fn accept_forever<F, C>(
    what: &'static str,
    listener: &tokio::net::TcpListener,
    addr: SocketAddr,
    handle: F,
) where
    F: Fn(tokio::net::TcpStream, SocketAddr) -> C,
    C: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                let _ = tcp.set_nodelay(true);
                tokio::spawn(handle(tcp, peer));
            }
            Err(error) => {
                // For example out of file descriptors: wait before accepting again.
                tracing::warn!(proxy = what, %addr, %error, "accept failed; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
