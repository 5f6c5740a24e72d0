//! Egress: a loopback port the service connects to in plaintext. accept (loopback only) →
//! connect to `Address` → TLS 1.3 with the marble's certificate, the server's chaining to the
//! deployment root and naming a marble of the expected type (the host name is not what
//! identifies it) → copy.
use std::net::SocketAddr;
use std::sync::Arc;

use quarry_api::http::MeshOutboundConfig;
use quarry_trust::tls::PinnedRootServer;
use rustls_pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

use super::{Admit, MeshIdentity, MeshPeerCheck, ProxyError, CONNECT_TIMEOUT, HANDSHAKE_TIMEOUT};

/// One bound egress port.
pub struct Egress {
    listener: TcpListener,
    connector: TlsConnector,
    address: String,
    server_name: ServerName<'static>,
    marble: String,
}

impl std::fmt::Debug for Egress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Egress")
            .field("listen", &self.local_addr())
            .field("address", &self.address)
            .field("marble", &self.marble)
            .finish_non_exhaustive()
    }
}

impl Egress {
    /// Builds the TLS configuration of `entry` and binds its loopback listener.
    pub async fn bind(entry: &MeshOutboundConfig, id: &MeshIdentity) -> Result<Egress, ProxyError> {
        // Plaintext in: never reachable from outside the pod, whatever the manifest says.
        if !entry.listen.ip().is_loopback() {
            return Err(ProxyError::Bind {
                what: "egress",
                addr: entry.listen,
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "egress listeners must be loopback addresses",
                ),
            });
        }
        let config = client_config(entry, id)?;
        let listener = super::bind("egress", entry.listen).await?;
        Ok(Egress {
            listener,
            connector: TlsConnector::from(Arc::new(config)),
            address: entry.address.clone(),
            server_name: server_name(&entry.address),
            marble: entry.marble.clone(),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Accepts connections forever, each in its own task.
    pub async fn serve(self) {
        let me = Arc::new(self);
        super::accept_forever("egress", &me.listener, me.local_addr(), |tcp, peer| {
            me.clone().connection(tcp, peer)
        })
        .await
    }

    async fn connection(self: Arc<Self>, mut local: TcpStream, peer: SocketAddr) {
        let listen = self.local_addr();
        let target = self.marble.as_str();
        // Connect to the server's mesh port.
        let tcp = match super::within(CONNECT_TIMEOUT, TcpStream::connect(&self.address)).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(proxy = "egress", %listen, marble = target, address = %self.address, error = %e, "cannot reach the server");
                return;
            }
        };
        let _ = tcp.set_nodelay(true);
        // TLS; the verifier checks the chain and the server's marble type.
        let handshake = self.connector.connect(self.server_name.clone(), tcp);
        let mut tls = match super::within(HANDSHAKE_TIMEOUT, handshake).await {
            Ok(tls) => tls,
            Err(e) => {
                tracing::warn!(proxy = "egress", %listen, marble = target, address = %self.address, error = %e, "handshake with the server failed");
                return;
            }
        };
        tracing::debug!(proxy = "egress", %listen, marble = target, "connection established");
        // Copy.
        super::copy::relay("egress", peer, target, &mut local, &mut tls).await;
    }
}

/// The TLS 1.3 client configuration of one egress port.
fn client_config(
    entry: &MeshOutboundConfig,
    id: &MeshIdentity,
) -> Result<rustls::ClientConfig, ProxyError> {
    let verifier = server_verifier(id, &entry.marble)?;
    let mut config = quarry_trust::tls::client_with_verifier(Arc::new(verifier))
        .map_err(|e| ProxyError::Tls(e.to_string()))?
        .with_client_cert_resolver(id.certs.clone());
    // Every connection is a full handshake: the server is always verified afresh.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(config)
}

/// SNI for `host:port`; mesh servers are identified by SPIFFE ID, not by this name.
fn server_name(address: &str) -> ServerName<'static> {
    let host = address
        .rsplit_once(':')
        .map_or(address, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    ServerName::try_from(host.to_string())
        .unwrap_or_else(|_| ServerName::from(std::net::IpAddr::from([127, 0, 0, 1])))
}

/// Server certificate verifier of an egress port: the chain must reach the deployment root
/// (webpki, serverAuth), then [`MeshPeerCheck`] judges the leaf. The host name is
/// deliberately not checked.
pub type MeshServerVerifier = PinnedRootServer<MeshPeerCheck>;

/// The verifier of an egress port trusting `id.roots` only, expecting a server of type
/// `expected`.
pub fn server_verifier(
    id: &MeshIdentity,
    expected: &str,
) -> Result<MeshServerVerifier, ProxyError> {
    let check = id.peer_check(Admit::Server {
        expected: expected.to_string(),
    });
    PinnedRootServer::new(id.roots.clone(), check)
        .map_err(|e| ProxyError::Tls(format!("server verifier: {e}")))
}
