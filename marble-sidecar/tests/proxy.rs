//! The mesh proxies in process, over real TCP and TLS 1.3 on loopback, with a test PKI shaped
//! like a deployment's (root CA → mesh CA → marble leaves with one SPIFFE URI SAN): the
//! allowed path works both ways with half-close, and every refusal of issue 6 happens before
//! the service sees a byte.
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use marble_sidecar::proxy::{certified_key, MeshIdentity, Proxies};
use quarry_api::http::{MeshAllow, MeshConfig, MeshInboundConfig, MeshOutboundConfig};
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const DOMAIN: &str = "quarry.local";
/// Upper bound of every network wait in these tests.
const WAIT: Duration = Duration::from_secs(10);

/// One deployment's root and mesh CA.
struct Pki {
    root_pem: String,
    mesh_pem: String,
    mesh: Issuer<'static, KeyPair>,
}

/// A marble leaf: chain PEM (leaf + mesh CA) and its key.
struct Leaf {
    chain_pem: String,
    key: Vec<u8>,
}

impl Leaf {
    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone()))
    }
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, cn.to_string());
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

impl Pki {
    fn new() -> Pki {
        let root_key = KeyPair::generate().unwrap();
        let root_params = ca_params("Test Root CA");
        let root = root_params.self_signed(&root_key).unwrap();
        let root_issuer = Issuer::new(root_params, root_key);
        let mesh_key = KeyPair::generate().unwrap();
        let mesh_params = ca_params("Test Mesh CA");
        let mesh = mesh_params.signed_by(&mesh_key, &root_issuer).unwrap();
        Pki {
            root_pem: root.pem(),
            mesh_pem: mesh.pem(),
            mesh: Issuer::new(mesh_params, mesh_key),
        }
    }

    fn leaf(&self, marble_type: &str) -> Leaf {
        self.leaf_with_uri(&format!(
            "spiffe://{DOMAIN}/marble/{marble_type}/{}",
            uuid::Uuid::new_v4()
        ))
    }

    fn leaf_with_uri(&self, uri: &str) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = p.signed_by(&key, &self.mesh).unwrap();
        Leaf {
            chain_pem: format!("{}{}", cert.pem(), self.mesh_pem),
            key: key.serialize_der(),
        }
    }

    fn identity(&self, leaf: &Leaf) -> MeshIdentity {
        MeshIdentity::new(&leaf.chain_pem, leaf.key(), &self.root_pem, DOMAIN).unwrap()
    }
}

/// A plaintext service: echoes until EOF, then writes "bye" and closes (so half-close is
/// observable). Counts connections and bytes received.
struct Service {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    bytes: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Service {
    async fn start() -> Service {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let bytes = Arc::new(AtomicUsize::new(0));
        let (c, b) = (connections.clone(), bytes.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                c.fetch_add(1, Ordering::SeqCst);
                let b = b.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                b.fetch_add(n, Ordering::SeqCst);
                                if s.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    let _ = s.write_all(b"bye").await;
                    let _ = s.shutdown().await;
                });
            }
        });
        Service {
            addr,
            connections,
            bytes,
            task,
        }
    }

    fn untouched(&self) -> bool {
        self.connections.load(Ordering::SeqCst) == 0 && self.bytes.load(Ordering::SeqCst) == 0
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn inbound(forward: SocketAddr, allow: MeshAllow) -> MeshConfig {
    MeshConfig {
        trust_domain: DOMAIN.into(),
        inbound: vec![MeshInboundConfig {
            port: 0,
            forward,
            allow,
        }],
        outbound: vec![],
    }
}

fn only(types: &[&str]) -> MeshAllow {
    MeshAllow::Marbles {
        types: types.iter().map(|t| t.to_string()).collect(),
    }
}

fn outbound(to: SocketAddr, marble: &str) -> MeshConfig {
    MeshConfig {
        trust_domain: DOMAIN.into(),
        inbound: vec![],
        outbound: vec![MeshOutboundConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            marble: marble.into(),
            address: format!("localhost:{}", to.port()),
        }],
    }
}

fn loopback(addr: SocketAddr) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], addr.port()))
}

/// Sends `msg`, half-closes, and reads everything until EOF.
async fn exchange(addr: SocketAddr, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    tokio::time::timeout(WAIT, async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(msg).await?;
        s.shutdown().await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        Ok(out)
    })
    .await
    .map_err(|_| std::io::Error::other("timed out"))?
}

/// A direct TLS 1.3 client of a mesh port, with an optional client certificate; returns what
/// it read after sending `msg` (an error when refused).
async fn tls_exchange(
    pki: &Pki,
    addr: SocketAddr,
    client: Option<&Leaf>,
    msg: &[u8],
) -> std::io::Result<Vec<u8>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut pki.root_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    // The server is checked against the root only; the test's leaves carry no DNS names, so
    // use an accept-chain-only verifier built from the egress one.
    let server_verifier =
        marble_sidecar::proxy::egress::server_verifier(&pki_identity(pki), "server").unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(server_verifier));
    let config = match client {
        Some(leaf) => {
            let chain = rustls_pemfile::certs(&mut leaf.chain_pem.as_bytes())
                .collect::<Result<Vec<CertificateDer<'static>>, _>>()
                .unwrap();
            builder.with_client_auth_cert(chain, leaf.key()).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    tokio::time::timeout(WAIT, async {
        let tcp = TcpStream::connect(addr).await?;
        let mut tls = connector
            .connect(ServerName::try_from("server.test").unwrap(), tcp)
            .await?;
        tls.write_all(msg).await?;
        tls.shutdown().await?;
        let mut out = Vec::new();
        tls.read_to_end(&mut out).await?;
        Ok(out)
    })
    .await
    .map_err(|_| std::io::Error::other("timed out"))?
}

/// An identity of type `server` in `pki`, for building a verifier in the test client.
fn pki_identity(pki: &Pki) -> MeshIdentity {
    pki.identity(&pki.leaf("server"))
}

/// The service behind an ingress allowing only `app`; returns the ingress address.
async fn server_side(pki: &Pki, service: &Service, allow: MeshAllow) -> (Proxies, SocketAddr) {
    let proxies = Proxies::start(
        &inbound(service.addr, allow),
        &pki.identity(&pki.leaf("server")),
    )
    .await
    .unwrap();
    let addr = loopback(proxies.inbound_addrs()[0]);
    (proxies, addr)
}

#[tokio::test]
async fn allowed_marble_reaches_the_service_through_egress_and_ingress_with_half_close() {
    let pki = Pki::new();
    let service = Service::start().await;
    let (_server, ingress) = server_side(&pki, &service, only(&["app"])).await;
    let app = Proxies::start(
        &outbound(ingress, "server"),
        &pki.identity(&pki.leaf("app")),
    )
    .await
    .unwrap();
    let egress = app.outbound_addrs()[0];
    assert!(egress.ip().is_loopback());
    let big = vec![7u8; 1 << 20];
    let out = exchange(egress, &big)
        .await
        .expect("the allowed path works");
    assert_eq!(
        out.len(),
        big.len() + 3,
        "echo of 1 MiB, then the reply after half-close"
    );
    assert!(out.ends_with(b"bye"));
    for _ in 0..3 {
        assert_eq!(exchange(egress, b"ping").await.unwrap(), b"pingbye");
    }
}

#[tokio::test]
async fn marble_type_not_in_allow_from_is_refused_before_the_service_sees_a_byte() {
    let pki = Pki::new();
    let service = Service::start().await;
    let (_server, ingress) = server_side(&pki, &service, only(&["app"])).await;
    let intruder = Proxies::start(
        &outbound(ingress, "server"),
        &pki.identity(&pki.leaf("intruder")),
    )
    .await
    .unwrap();
    let out = exchange(intruder.outbound_addrs()[0], b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(
        out.as_ref().map_or(true, |b| b.is_empty()),
        "the intruder must get nothing: {out:?}"
    );
    let direct = tls_exchange(&pki, ingress, Some(&pki.leaf("intruder")), b"hello").await;
    let err = direct.expect_err("a marble type outside AllowFrom must be refused");
    assert!(
        err.to_string().contains("AccessDenied") || err.to_string().contains("access"),
        "refusal is a TLS access_denied alert: {err}"
    );
    assert!(service.untouched(), "the service saw the intruder");
    // The same port still admits an allowed marble.
    let ok = tls_exchange(&pki, ingress, Some(&pki.leaf("app")), b"hi").await;
    assert_eq!(ok.unwrap(), b"hibye");
}

#[tokio::test]
async fn certificate_from_another_deployment_is_refused() {
    let pki = Pki::new();
    let other = Pki::new();
    let service = Service::start().await;
    let (_server, ingress) = server_side(&pki, &service, MeshAllow::AnyMarble).await;
    let err = tls_exchange(&pki, ingress, Some(&other.leaf("app")), b"hello")
        .await
        .expect_err("a leaf of another deployment's mesh CA must be refused");
    // Every deployment names its CAs alike, so webpki finds a same-named issuer and the
    // signature check fails (decrypt_error); an unrelated CA would give unknown_ca.
    let text = err.to_string();
    assert!(
        text.contains("DecryptError") || text.contains("UnknownCA"),
        "refusal is a TLS alert about the chain: {text}"
    );
    assert!(service.untouched());
}

#[tokio::test]
async fn certificate_in_another_trust_domain_or_without_a_marble_id_is_refused() {
    let pki = Pki::new();
    let service = Service::start().await;
    let (_server, ingress) = server_side(&pki, &service, MeshAllow::AnyMarble).await;
    for uri in [
        format!("spiffe://other.domain/marble/app/{}", uuid::Uuid::new_v4()),
        "spiffe://quarry.local/workload/app".to_string(),
    ] {
        let leaf = pki.leaf_with_uri(&uri);
        tls_exchange(&pki, ingress, Some(&leaf), b"hello")
            .await
            .expect_err("refused");
    }
    assert!(service.untouched());
}

#[tokio::test]
async fn plain_tcp_and_tls_without_client_certificate_are_refused() {
    let pki = Pki::new();
    let service = Service::start().await;
    let (_server, ingress) = server_side(&pki, &service, MeshAllow::AnyMarble).await;
    let plain = exchange(ingress, b"GET / HTTP/1.0\r\n\r\n").await;
    assert!(
        plain.as_ref().map_or(true, |b| !b.ends_with(b"bye")),
        "plain TCP must not reach the service: {plain:?}"
    );
    let err = tls_exchange(&pki, ingress, None, b"hello")
        .await
        .expect_err("TLS without a client certificate must be refused");
    assert!(
        err.to_string().contains("CertificateRequired") || err.to_string().contains("certificate"),
        "{err}"
    );
    assert!(service.untouched());
}

#[tokio::test]
async fn egress_refuses_a_server_of_the_wrong_marble_type() {
    let pki = Pki::new();
    let service = Service::start().await;
    // A valid mesh server, but of type `intruder`.
    let impostor = Proxies::start(
        &inbound(service.addr, MeshAllow::AnyMarble),
        &pki.identity(&pki.leaf("intruder")),
    )
    .await
    .unwrap();
    let ingress = loopback(impostor.inbound_addrs()[0]);
    let app = Proxies::start(
        &outbound(ingress, "server"),
        &pki.identity(&pki.leaf("app")),
    )
    .await
    .unwrap();
    let out = exchange(app.outbound_addrs()[0], b"secret request").await;
    assert!(
        out.as_ref().map_or(true, |b| b.is_empty()),
        "nothing may come back from the wrong server: {out:?}"
    );
    assert_eq!(
        service.bytes.load(Ordering::SeqCst),
        0,
        "the request leaked"
    );
}

#[tokio::test]
async fn replacing_the_certificate_keeps_open_connections_and_applies_to_new_ones() {
    let pki = Pki::new();
    let service = Service::start().await;
    let (_server, ingress) = server_side(&pki, &service, only(&["app"])).await;
    let app_identity = pki.identity(&pki.leaf("app"));
    let app = Proxies::start(&outbound(ingress, "server"), &app_identity)
        .await
        .unwrap();
    let egress = app.outbound_addrs()[0];
    let mut open = TcpStream::connect(egress).await.unwrap();
    open.write_all(b"one").await.unwrap();
    let mut buf = [0u8; 3];
    tokio::time::timeout(WAIT, open.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    // Renewal: a new leaf of the same type replaces the old one.
    let renewed = pki.leaf("app");
    let key = certified_key(&app_identity.provider, &renewed.chain_pem, renewed.key()).unwrap();
    app_identity.certs.replace(key.clone());
    assert!(Arc::ptr_eq(&app_identity.certs.current(), &key));
    // The open connection still works; new ones use the new certificate.
    open.write_all(b"two").await.unwrap();
    tokio::time::timeout(WAIT, open.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"two");
    assert_eq!(exchange(egress, b"three").await.unwrap(), b"threebye");
    // A leaf of the wrong type swapped in is refused by the server on the next connection.
    let wrong = pki.leaf("intruder");
    app_identity
        .certs
        .replace(certified_key(&app_identity.provider, &wrong.chain_pem, wrong.key()).unwrap());
    let out = exchange(egress, b"four").await;
    assert!(out.as_ref().map_or(true, |b| b.is_empty()), "{out:?}");
}
