//! TLS 1.3 servers for the client and mesh APIs, and the accept loop that hands each
//! request the client certificate of its connection and holds every connection to the
//! limits of [`Limits`].
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::http::limits::Limits;

/// The DER of the TLS client certificate (end entity) of the request's connection.
#[derive(Clone, Debug, Default)]
pub struct PeerCert(pub Option<Arc<Vec<u8>>>);

/// The crypto provider used everywhere (ring), with TLS 1.3's AES-128-GCM-SHA256 first: it
/// matches the 128-bit strength of the P-256 keys, and SHA-256 (the handshake's key
/// schedule) runs on the CPU's SHA extensions where SHA-384 does not.
pub fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(provider)
}

/// Presents a server certificate issued by the current root CA; re-issues it when the root
/// changes (a new deployment after Recovery).
pub struct ServerCertResolver {
    core: Arc<crate::state::Core>,
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
    pub fn new(core: Arc<crate::state::Core>, names: Vec<String>) -> anyhow::Result<Arc<Self>> {
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
    let verifier = Arc::new(quarry_trust::tls::AnyClientCert::new(client_cert_required));
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(resolver);
    apply_server_policy(&mut cfg);
    Ok(Arc::new(cfg))
}

/// The coordinator's TLS server settings beyond the protocol version and certificates
/// (shared with the benchmark's ceiling so that it measures the same handshake).
pub fn apply_server_policy(cfg: &mut rustls::ServerConfig) {
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // No session resumption: a resumed session would skip the client's proof of key
    // possession and carry the identity of an earlier handshake, and no client of this API
    // (sidecars, the CLI) ever resumes. Without tickets the server keeps no per-client state
    // and sends two fewer messages per handshake.
    cfg.send_tls13_tickets = 0;
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    // The provider's order (AES-128-GCM-SHA256 first), whatever the client prefers.
    cfg.ignore_client_order = true;
}

/// Serves `router` over TLS on `listener` until the task is dropped, within `limits`: at
/// most `max_connections` at once (at the cap the loop stops accepting, so further clients
/// wait in the kernel's accept backlog until a connection ends), each bounded by the
/// handshake, header, idle and HTTP/2 limits.
pub async fn serve(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    router: Router,
    name: &'static str,
    limits: Arc<Limits>,
) {
    let acceptor = TlsAcceptor::from(config);
    let permits = Arc::new(Semaphore::new(limits.max_connections as usize));
    let mut last_cap_warning: Option<Instant> = None;
    loop {
        let permit = match permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if last_cap_warning.is_none_or(|t| t.elapsed() > CAP_WARNING_INTERVAL) {
                    last_cap_warning = Some(Instant::now());
                    tracing::warn!(
                        api = name,
                        max_connections = limits.max_connections,
                        "connection limit reached; new connections wait in the accept backlog"
                    );
                }
                match permits.clone().acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => return,
                }
            }
        };
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
        let limits = limits.clone();
        tokio::spawn(async move {
            let _open = crate::metrics::open_connection(name);
            handle_connection(acceptor, tcp, peer, router, name, &limits).await;
            drop(permit);
        });
    }
}

/// Least time between two "connection limit reached" warnings of a listener.
const CAP_WARNING_INTERVAL: Duration = Duration::from_secs(10);

async fn handle_connection(
    acceptor: TlsAcceptor,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    router: Router,
    name: &'static str,
    limits: &Limits,
) {
    let _ = tcp.set_nodelay(true);
    let tls = match tokio::time::timeout(limits.tls_handshake_timeout, acceptor.accept(tcp)).await {
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
    let conn_info = tls.get_ref().1;
    let peer_cert = PeerCert(
        conn_info
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| Arc::new(c.to_vec())),
    );
    // RFC 9113 §3.2: HTTP/2 over TLS is negotiated with ALPN; anything else is HTTP/1, so no
    // connection waits in hyper's protocol sniffing (which has no timeout).
    let h2 = conn_info.alpn_protocol() == Some(b"h2");
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(peer_cert.clone());
            let router = router.clone();
            async move {
                use tower::ServiceExt;
                router.oneshot(req).await
            }
        });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes as usize);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .max_header_list_size(limits.max_header_bytes);
    let builder = if h2 {
        builder.http2_only()
    } else {
        builder.http1_only()
    };
    let activity = Activity::new();
    let io = TokioIo::new(Tracked {
        inner: tls,
        activity: activity.clone(),
    });
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = activity.idle_for(limits.idle_timeout) => {
            tracing::debug!(api = name, %peer, "connection idle; shutting it down");
            conn.as_mut().graceful_shutdown();
            // In-flight requests may finish; the connection ends at the latest one more
            // idle period later.
            match tokio::time::timeout(limits.idle_timeout, conn.as_mut()).await {
                Ok(r) => r,
                Err(_) => Ok(()),
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(api = name, %peer, error = %e, "connection ended with an error");
    }
}

/// When a connection last moved a byte, shared between its I/O and its idle watchdog.
#[derive(Clone)]
struct Activity {
    start: Instant,
    /// Milliseconds from `start` to the last byte read or written.
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Completes once no byte has moved for `idle`.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline.into()).await;
        }
    }
}

/// An I/O stream that records in [`Activity`] every read or write that moved bytes.
struct Tracked<S> {
    inner: S,
    activity: Activity,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::CaKey;
    use rustls_pki_types::ServerName;

    /// A server with the coordinator's settings and a client with a fresh self-signed
    /// certificate that prefers AES-256-GCM (ring's default order), as a sidecar does.
    fn pair() -> (rustls::ServerConnection, rustls::ClientConnection) {
        let root = CaKey::new_root().unwrap();
        let (leaf, key) = root.issue_server_cert(&["127.0.0.1".into()]).unwrap();
        let mut server = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_client_cert_verifier(Arc::new(quarry_trust::tls::AnyClientCert::new(true)))
            .with_single_cert(
                vec![
                    CertificateDer::from(leaf),
                    CertificateDer::from(root.cert_der().to_vec()),
                ],
                PrivateKeyDer::Pkcs8(key.expose().to_vec().into()),
            )
            .unwrap();
        apply_server_policy(&mut server);
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from(root.cert_der().to_vec()))
            .unwrap();
        let client_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let client_cert = rcgen::CertificateParams::new(vec![])
            .unwrap()
            .self_signed(&client_key)
            .unwrap();
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from(client_cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(client_key.serialize_der().into()),
        )
        .unwrap();
        let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
        (
            rustls::ServerConnection::new(Arc::new(server)).unwrap(),
            rustls::ClientConnection::new(Arc::new(client), name).unwrap(),
        )
    }

    /// Moves every pending TLS byte from `from` to `to` and processes it; returns how many
    /// bytes moved.
    fn transfer(from: &mut rustls::Connection, to: &mut rustls::Connection) -> usize {
        let mut buf = Vec::new();
        while from.wants_write() {
            from.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            to.read_tls(&mut rd).unwrap();
            to.process_new_packets().unwrap();
        }
        buf.len()
    }

    #[test]
    fn the_server_picks_aes_128_gcm_and_sends_no_session_tickets() {
        let (server, client) = pair();
        let (mut server, mut client) = (
            rustls::Connection::from(server),
            rustls::Connection::from(client),
        );
        transfer(&mut client, &mut server); // ClientHello
        transfer(&mut server, &mut client); // ServerHello .. server Finished
        transfer(&mut client, &mut server); // client Certificate, CertificateVerify, Finished
        assert!(!client.is_handshaking() && !server.is_handshaking());
        assert_eq!(
            server.negotiated_cipher_suite().map(|s| s.suite()),
            Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256),
            "the client preferred AES-256-GCM; the server's order must win"
        );
        // With tickets the server would now send NewSessionTicket messages.
        assert_eq!(
            transfer(&mut server, &mut client),
            0,
            "the server sent something after the handshake (a session ticket?)"
        );
    }

    #[test]
    fn the_provider_puts_aes_128_gcm_first() {
        let suites: Vec<_> = provider().cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(suites[0], rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        assert!(suites.contains(&rustls::CipherSuite::TLS13_AES_256_GCM_SHA384));
    }
}
