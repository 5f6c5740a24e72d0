//! Ingress: a mesh port. accept → TLS 1.3 (client certificate chaining to the deployment root
//! via the mesh CA) → peer identity (single SPIFFE URI SAN in our trust domain) → allow-list →
//! connect to `Forward` → copy. Identity and allow-list run inside the client certificate
//! verifier, so a refused peer gets a TLS alert before `Forward` is even connected.
//! External ports (`AllowFrom: ["*external*"]`) serve their certificate secret and ask for no
//! client certificate.
use std::net::SocketAddr;
use std::sync::Arc;

use quarry_api::http::{MeshAllow, MeshInboundConfig};
use quarry_trust::tls::PinnedRootClient;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use super::allow::{self, Policy};
use super::{Admit, MeshIdentity, MeshPeerCheck, ProxyError, CONNECT_TIMEOUT, HANDSHAKE_TIMEOUT};

/// One bound mesh port.
pub struct Ingress {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    forward: SocketAddr,
    trust_domain: String,
    external: bool,
}

impl std::fmt::Debug for Ingress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingress")
            .field("listen", &self.local_addr())
            .field("forward", &self.forward)
            .field("external", &self.external)
            .finish_non_exhaustive()
    }
}

impl Ingress {
    /// Builds the TLS configuration of `entry` and binds its port on all interfaces.
    pub async fn bind(entry: &MeshInboundConfig, id: &MeshIdentity) -> Result<Ingress, ProxyError> {
        let config = server_config(entry, id)?;
        let addr = SocketAddr::from(([0, 0, 0, 0], entry.port));
        let listener = super::bind("ingress", addr).await?;
        Ok(Ingress {
            listener,
            acceptor: TlsAcceptor::from(Arc::new(config)),
            forward: entry.forward,
            trust_domain: id.trust_domain.clone(),
            external: matches!(entry.allow, MeshAllow::External(_)),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Accepts connections forever, each in its own task.
    pub async fn serve(self) {
        let me = Arc::new(self);
        super::accept_forever("ingress", &me.listener, me.local_addr(), |tcp, peer| {
            me.clone().connection(tcp, peer)
        })
        .await
    }

    async fn connection(self: Arc<Self>, tcp: TcpStream, peer: SocketAddr) {
        let port = self.local_addr().port();
        // TLS; identity and allow-list are checked by the verifier during the handshake.
        let mut tls = match super::within(HANDSHAKE_TIMEOUT, self.acceptor.accept(tcp)).await {
            Ok(tls) => tls,
            Err(e) => {
                tracing::info!(proxy = "ingress", port, %peer, error = %e, "handshake refused");
                return;
            }
        };
        let who = if self.external {
            "external".to_string()
        } else {
            // The verifier already accepted this identity; re-derive it for the logs.
            match tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                Some(cert) => match allow::peer_identity(cert, &self.trust_domain) {
                    Ok(id) => id.to_string(),
                    Err(e) => {
                        tracing::warn!(proxy = "ingress", port, %peer, error = %e, "peer identity lost after handshake");
                        return;
                    }
                },
                None => {
                    tracing::warn!(proxy = "ingress", port, %peer, "no client certificate after handshake");
                    return;
                }
            }
        };
        // Connect to the service.
        let mut upstream = match super::within(CONNECT_TIMEOUT, TcpStream::connect(self.forward))
            .await
        {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(proxy = "ingress", port, %peer, who, forward = %self.forward, error = %e, "cannot reach the service");
                return;
            }
        };
        let _ = upstream.set_nodelay(true);
        tracing::debug!(proxy = "ingress", port, %peer, who, "connection accepted");
        // Copy.
        super::copy::relay("ingress", peer, &who, &mut tls, &mut upstream).await;
    }
}

/// The TLS 1.3 server configuration of one mesh port.
fn server_config(
    entry: &MeshInboundConfig,
    id: &MeshIdentity,
) -> Result<rustls::ServerConfig, ProxyError> {
    let builder =
        quarry_trust::tls::server_builder().map_err(|e| ProxyError::Tls(e.to_string()))?;
    let mut config = match Policy::from_wire(&entry.allow) {
        Some(policy) => {
            let verifier = client_verifier(id, policy, entry.port)?;
            builder
                .with_client_cert_verifier(Arc::new(verifier))
                .with_cert_resolver(id.certs.clone())
        }
        None => {
            let MeshAllow::External(ext) = &entry.allow else {
                return Err(ProxyError::Tls("inconsistent allow-list".into()));
            };
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ext.private_key.clone()));
            let certified = super::certified_key(&id.provider, &ext.certificate_chain, key)?;
            builder
                .with_no_client_auth()
                .with_cert_resolver(Arc::new(super::CertStore::new(certified)))
        }
    };
    // Every connection is a full handshake: the verifier (identity, allow-list) always runs.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

/// Client certificate verifier of a mesh port: a client certificate is required, its chain
/// must reach the deployment root (webpki), then [`MeshPeerCheck`] judges the leaf.
pub type MeshClientVerifier = PinnedRootClient<MeshPeerCheck>;

/// The verifier of mesh port `port` trusting `id.roots` only, admitting per `policy`.
pub fn client_verifier(
    id: &MeshIdentity,
    policy: Policy,
    port: u16,
) -> Result<MeshClientVerifier, ProxyError> {
    let check = id.peer_check(Admit::Client { policy, port });
    PinnedRootClient::new(id.roots.clone(), check)
        .map_err(|e| ProxyError::Tls(format!("client verifier: {e}")))
}
