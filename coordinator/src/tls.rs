//! TLS 1.3 servers for the client and mesh APIs, and the accept loop that hands each
//! request the client certificate of its connection.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// The DER of the TLS client certificate (end entity) of the request's connection.
#[derive(Clone, Debug, Default)]
pub struct PeerCert(pub Option<Arc<Vec<u8>>>);

/// The crypto provider used everywhere (ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts any client certificate whose holder proves possession of its key in the
/// handshake. Who the certificate belongs to is decided by the handlers: marbles by the
/// evidence binding to the key, users by exact certificate match.
#[derive(Debug)]
struct AnyClientCert {
    mandatory: bool,
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for AnyClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Presents a server certificate issued by the current root CA; re-issues it when the root
/// changes (a new deployment after Recovery).
pub struct ServerCertResolver {
    core: Arc<crate::core::Core>,
    names: Vec<String>,
    cache: std::sync::RwLock<Option<(Vec<u8>, Arc<CertifiedKey>)>>,
}

impl std::fmt::Debug for ServerCertResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCertResolver")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

impl ServerCertResolver {
    /// A resolver for the coordinator's DNS names / IPs.
    pub fn new(core: Arc<crate::core::Core>, names: Vec<String>) -> anyhow::Result<Arc<Self>> {
        let r = Arc::new(ServerCertResolver {
            core,
            names,
            cache: std::sync::RwLock::new(None),
        });
        r.current()?;
        Ok(r)
    }

    fn current(&self) -> anyhow::Result<Arc<CertifiedKey>> {
        let view = self.core.view();
        let root = view.identity.root.cert_der();
        if let Ok(c) = self.cache.read() {
            if let Some((r, k)) = c.as_ref() {
                if r.as_slice() == root {
                    return Ok(k.clone());
                }
            }
        }
        let (leaf, key) = view.identity.root.issue_server_cert(&self.names)?;
        let signing = provider()
            .key_provider
            .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                key.expose().to_vec(),
            )))?;
        let ck = Arc::new(CertifiedKey::new(
            vec![
                CertificateDer::from(leaf),
                CertificateDer::from(root.to_vec()),
            ],
            signing,
        ));
        if let Ok(mut c) = self.cache.write() {
            *c = Some((root.to_vec(), ck.clone()));
        }
        Ok(ck)
    }
}

impl ResolvesServerCert for ServerCertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match self.current() {
            Ok(k) => Some(k),
            Err(e) => {
                tracing::error!(error = %e, "cannot issue the coordinator TLS certificate");
                None
            }
        }
    }
}

/// A TLS 1.3 server configuration; `client_cert_required` for the mesh API.
pub fn server_config(
    resolver: Arc<ServerCertResolver>,
    client_cert_required: bool,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let provider = provider();
    let verifier = Arc::new(AnyClientCert {
        mandatory: client_cert_required,
        provider: provider.clone(),
    });
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Serves `router` over TLS on `listener` until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    router: Router,
    name: &'static str,
) {
    let acceptor = TlsAcceptor::from(config);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(api = name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        tokio::spawn(async move {
            handle_connection(acceptor, tcp, peer, router, name).await;
        });
    }
}

async fn handle_connection(
    acceptor: TlsAcceptor,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    router: Router,
    name: &'static str,
) {
    let _ = tcp.set_nodelay(true);
    let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(api = name, %peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(api = name, %peer, "TLS handshake timed out");
            return;
        }
    };
    let peer_cert = PeerCert(
        tls.get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| Arc::new(c.to_vec())),
    );
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(peer_cert.clone());
            let router = router.clone();
            async move {
                use tower::ServiceExt;
                router.oneshot(req).await
            }
        });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    if let Err(e) = builder.serve_connection(TokioIo::new(tls), service).await {
        tracing::debug!(api = name, %peer, error = %e, "connection ended with an error");
    }
}
