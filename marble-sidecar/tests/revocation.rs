//! Revocation in the mesh proxies, in process over loopback TLS 1.3: once a CRL signed by the
//! mesh CA lists a peer's serial, ingress refuses that client and egress refuses that server
//! (a TLS alert, the service sees nothing); a CRL not signed by the mesh CA changes nothing.
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use marble_sidecar::crl::{verify_crl, CrlError};
use marble_sidecar::proxy::{MeshIdentity, Proxies};
use quarry_api::http::{MeshAllow, MeshConfig, MeshInboundConfig, MeshOutboundConfig};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, ExtendedKeyUsagePurpose,
    IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SanType, SerialNumber,
};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const DOMAIN: &str = "quarry.local";
const WAIT: Duration = Duration::from_secs(10);

struct Pki {
    root_pem: String,
    mesh_pem: String,
    mesh_der: Vec<u8>,
    mesh: Issuer<'static, KeyPair>,
}

struct Leaf {
    chain_pem: String,
    key: Vec<u8>,
    serial: Vec<u8>,
}

fn ca(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, cn.to_string());
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

impl Pki {
    fn new() -> Pki {
        let root_key = KeyPair::generate().unwrap();
        let root_params = ca("Revocation Test Root");
        let root = root_params.self_signed(&root_key).unwrap();
        let root_issuer = Issuer::new(root_params, root_key);
        let mesh_key = KeyPair::generate().unwrap();
        let mesh_params = ca("Revocation Test Mesh CA");
        let mesh = mesh_params.signed_by(&mesh_key, &root_issuer).unwrap();
        Pki {
            root_pem: root.pem(),
            mesh_pem: mesh.pem(),
            mesh_der: mesh.der().to_vec(),
            mesh: Issuer::new(mesh_params, mesh_key),
        }
    }

    fn leaf(&self, marble_type: &str) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        let uri = format!(
            "spiffe://{DOMAIN}/marble/{marble_type}/{}",
            uuid::Uuid::new_v4()
        );
        p.subject_alt_names = vec![SanType::URI(uri.as_str().try_into().unwrap())];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = p.signed_by(&key, &self.mesh).unwrap();
        let serial = x509_parser::parse_x509_certificate(cert.der())
            .unwrap()
            .1
            .raw_serial()
            .to_vec();
        Leaf {
            chain_pem: format!("{}{}", cert.pem(), self.mesh_pem),
            key: key.serialize_der(),
            serial,
        }
    }

    fn identity(&self, leaf: &Leaf) -> MeshIdentity {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf.key.clone()));
        MeshIdentity::new(&leaf.chain_pem, key, &self.root_pem, DOMAIN).unwrap()
    }

    /// A CRL listing `serials`, signed by `issuer` (the mesh CA, or a forger).
    fn crl(issuer: &Issuer<'static, KeyPair>, serials: &[&[u8]]) -> Vec<u8> {
        CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2024, 1, 1),
            next_update: rcgen::date_time_ymd(2100, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(s),
                    revocation_time: rcgen::date_time_ymd(2024, 1, 1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(issuer)
        .unwrap()
        .der()
        .to_vec()
    }

    /// Installs a CRL into `identity` the way the refresh loop does (verify, then install).
    fn revoke_in(&self, identity: &MeshIdentity, serials: &[&[u8]]) {
        let crl = verify_crl(&Pki::crl(&self.mesh, serials), &self.mesh_der).unwrap();
        identity.revoked.install(&crl);
    }
}

/// An echo service counting accepted connections.
struct Service {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Service {
    async fn start() -> Service {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let c = connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = s.shutdown().await;
                });
            }
        });
        Service {
            addr,
            connections,
            task,
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn exchange(addr: SocketAddr, msg: &[u8]) -> Vec<u8> {
    tokio::time::timeout(WAIT, async {
        let Ok(mut s) = TcpStream::connect(addr).await else {
            return Vec::new();
        };
        let _ = s.write_all(msg).await;
        let _ = s.shutdown().await;
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        out
    })
    .await
    .unwrap_or_default()
}

/// `server` behind an ingress allowing any marble, `app` with an egress to it.
async fn mesh(
    pki: &Pki,
    service: &Service,
    server: &MeshIdentity,
    app: &MeshIdentity,
) -> (Proxies, Proxies, SocketAddr) {
    let server_proxies = Proxies::start(
        &MeshConfig {
            trust_domain: DOMAIN.into(),
            inbound: vec![MeshInboundConfig {
                port: 0,
                forward: service.addr,
                allow: MeshAllow::AnyMarble,
            }],
            outbound: vec![],
        },
        server,
    )
    .await
    .unwrap();
    let ingress = server_proxies.inbound_addrs()[0].port();
    let app_proxies = Proxies::start(
        &MeshConfig {
            trust_domain: DOMAIN.into(),
            inbound: vec![],
            outbound: vec![MeshOutboundConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                marble: "server".into(),
                address: format!("localhost:{ingress}"),
            }],
        },
        app,
    )
    .await
    .unwrap();
    let egress = app_proxies.outbound_addrs()[0];
    let _ = pki;
    (server_proxies, app_proxies, egress)
}

#[tokio::test]
async fn ingress_refuses_a_revoked_client_after_the_crl_lists_it() {
    let pki = Pki::new();
    let service = Service::start().await;
    let server = pki.identity(&pki.leaf("server"));
    let app_leaf = pki.leaf("app");
    let app = pki.identity(&app_leaf);
    let (_s, _a, egress) = mesh(&pki, &service, &server, &app).await;
    assert_eq!(exchange(egress, b"before").await, b"before");
    let served = service.connections.load(Ordering::SeqCst);
    // Another serial revoked: nothing changes for app.
    pki.revoke_in(&server, &[&[0x01, 0x02]]);
    assert_eq!(exchange(egress, b"still").await, b"still");
    // app's own serial revoked at the server: refused during the handshake.
    pki.revoke_in(&server, &[&app_leaf.serial]);
    assert_eq!(exchange(egress, b"after").await, b"");
    assert_eq!(
        service.connections.load(Ordering::SeqCst),
        served + 1,
        "the service saw the revoked client"
    );
}

#[tokio::test]
async fn egress_refuses_a_revoked_server() {
    let pki = Pki::new();
    let service = Service::start().await;
    let server_leaf = pki.leaf("server");
    let server = pki.identity(&server_leaf);
    let app = pki.identity(&pki.leaf("app"));
    let (_s, _a, egress) = mesh(&pki, &service, &server, &app).await;
    assert_eq!(exchange(egress, b"before").await, b"before");
    let served = service.connections.load(Ordering::SeqCst);
    pki.revoke_in(&app, &[&server_leaf.serial]);
    assert_eq!(exchange(egress, b"secret").await, b"");
    assert_eq!(service.connections.load(Ordering::SeqCst), served);
}

#[tokio::test]
async fn a_crl_not_signed_by_the_mesh_ca_is_refused_and_revokes_nothing() {
    let pki = Pki::new();
    let service = Service::start().await;
    let server = pki.identity(&pki.leaf("server"));
    let app_leaf = pki.leaf("app");
    let app = pki.identity(&app_leaf);
    let (_s, _a, egress) = mesh(&pki, &service, &server, &app).await;
    // Another deployment's mesh CA with the same name signs a CRL listing app.
    let other = Pki::new();
    let forged = Pki::crl(&other.mesh, &[&app_leaf.serial]);
    assert_eq!(verify_crl(&forged, &pki.mesh_der), Err(CrlError::Signature));
    assert!(server.revoked.is_empty());
    assert_eq!(exchange(egress, b"works").await, b"works");
}
