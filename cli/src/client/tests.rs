//! Client TLS configuration against a real rustls server on 127.0.0.1:0.
use std::net::SocketAddr;
use std::sync::mpsc;

use quarry_api::http::StatusResponse;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::ServerConfig;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;

/// A test CA that issues leaf certificates.
struct TestCa {
    cert: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("CA cert");
        TestCa {
            cert: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf for `names`, as a chain (leaf, CA) and its key.
    fn leaf(&self, names: &[&str]) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate().expect("leaf key");
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf cert");
        (
            vec![cert.der().clone(), self.cert.clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
    }
}

/// What the server saw of one connection.
#[derive(Debug)]
struct Seen {
    client_cert: bool,
}

/// A canned HTTP answer.
struct Answer {
    status: &'static str,
    body: &'static str,
}

const STATUS_OK: Answer = Answer {
    status: "200 OK",
    body: r#"{"status":"success","data":{"code":2,"message":"Coordinator is ready to accept a manifest.","simulation":true}}"#,
};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn server_config(
    versions: &[&'static rustls::SupportedProtocolVersion],
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_ca: Option<&TestCa>,
) -> ServerConfig {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .expect("versions");
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.cert.clone()).expect("client CA");
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                roots.into(),
                provider(),
            )
            .allow_unauthenticated()
            .build()
            .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        }
    };
    builder.with_single_cert(chain, key).expect("server cert")
}

/// Serves `answer` over TLS on 127.0.0.1:0 from a background thread.
fn serve(config: ServerConfig, answer: Answer) -> (SocketAddr, mpsc::Receiver<Seen>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("addr");
    let (seen_tx, seen_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    continue;
                };
                let client_cert = tls.get_ref().1.peer_certificates().is_some();
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let response = format!(
                    "HTTP/1.1 {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
                    answer.status,
                    answer.body.len(),
                    answer.body
                );
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
                let _ = seen_tx.send(Seen { client_cert });
            }
        });
    });
    (addr, seen_rx)
}

fn status(
    addr: SocketAddr,
    trust: &Trust,
    identity: Option<Identity>,
) -> Result<StatusResponse, ApiError> {
    let config = tls_config(trust, identity).expect("client config");
    let client = Client::new(&addr.to_string(), config).expect("client");
    client.get("api/v2/status")
}

fn tls13_server(ca: &TestCa, names: &[&str]) -> (SocketAddr, mpsc::Receiver<Seen>) {
    let (chain, key) = ca.leaf(names);
    serve(
        server_config(&[&rustls::version::TLS13], chain, key, None),
        STATUS_OK,
    )
}

#[test]
fn pinned_root_accepts_a_server_it_issued() {
    let ca = TestCa::new("deployment root");
    let (addr, _) = tls13_server(&ca, &["127.0.0.1", "localhost"]);
    let got = status(addr, &Trust::Pinned(ca.cert.clone()), None)
        .expect("pinned root must accept its own server");
    assert_eq!(got.code, 2);
    assert!(got.simulation);
}

#[test]
fn pinned_root_refuses_a_server_of_another_ca() {
    let ca = TestCa::new("deployment root");
    let other = TestCa::new("attacker root");
    let (addr, _) = tls13_server(&other, &["127.0.0.1"]);
    let err = status(addr, &Trust::Pinned(ca.cert.clone()), None)
        .expect_err("a server of another CA must be refused");
    match err {
        ApiError::Tls { address, detail } => {
            assert_eq!(address, addr.to_string());
            assert!(detail.contains("UnknownIssuer"), "{detail}");
        }
        other => panic!("expected a TLS error, got {other:?}"),
    }
}

#[test]
fn pinned_root_refuses_a_certificate_for_another_host() {
    let ca = TestCa::new("deployment root");
    let (addr, _) = tls13_server(&ca, &["coordinator.example"]);
    let err = status(addr, &Trust::Pinned(ca.cert.clone()), None)
        .expect_err("the host name must be verified");
    assert!(
        matches!(&err, ApiError::Tls { detail, .. } if detail.contains("not valid for name")),
        "{err:?}"
    );
}

#[test]
fn insecure_accepts_any_certificate() {
    let other = TestCa::new("unknown root");
    let (addr, _) = tls13_server(&other, &["somewhere.example"]);
    let got = status(addr, &Trust::Insecure, None).expect("--insecure accepts any certificate");
    assert_eq!(got.code, 2);
}

#[test]
fn tls12_only_server_is_refused_even_when_insecure() {
    let ca = TestCa::new("deployment root");
    let (chain, key) = ca.leaf(&["127.0.0.1"]);
    let (addr, _) = serve(
        server_config(&[&rustls::version::TLS12], chain, key, None),
        STATUS_OK,
    );
    let err = status(addr, &Trust::Insecure, None).expect_err("TLS 1.2 must be refused");
    assert!(matches!(err, ApiError::Tls { .. }), "{err:?}");
}

#[test]
fn client_certificate_is_presented_when_given() {
    let ca = TestCa::new("deployment root");
    let users = TestCa::new("users");
    let (chain, key) = ca.leaf(&["127.0.0.1"]);
    let (addr, seen) = serve(
        server_config(&[&rustls::version::TLS13], chain, key, Some(&users)),
        STATUS_OK,
    );
    let (user_chain, user_key) = users.leaf(&["alice.example"]);
    let identity = Identity {
        chain: user_chain,
        key: user_key,
    };
    status(addr, &Trust::Pinned(ca.cert.clone()), Some(identity)).expect("status with a user cert");
    assert!(seen.recv().expect("one connection").client_cert);
    status(addr, &Trust::Pinned(ca.cert.clone()), None).expect("status without a user cert");
    assert!(!seen.recv().expect("second connection").client_cert);
}

#[test]
fn jsend_refusal_carries_the_coordinators_message() {
    let ca = TestCa::new("deployment root");
    let (chain, key) = ca.leaf(&["127.0.0.1"]);
    let (addr, _) = serve(
        server_config(&[&rustls::version::TLS13], chain, key, None),
        Answer {
            status: "400 Bad Request",
            body: r#"{"status":"fail","message":"manifest already set"}"#,
        },
    );
    let err = status(addr, &Trust::Pinned(ca.cert.clone()), None).expect_err("400 is a refusal");
    match err {
        ApiError::Refused { status, message } => {
            assert_eq!(status, 400);
            assert_eq!(message, "manifest already set");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn root_ca_file_must_hold_exactly_one_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = TestCa::new("a");
    let b = TestCa::new("b");
    let pem_of = |c: &CertificateDer<'_>| pem::encode(&pem::Pem::new("CERTIFICATE", c.to_vec()));
    let one = dir.path().join("one.pem");
    std::fs::write(&one, pem_of(&a.cert)).expect("write");
    assert_eq!(load_root_ca(&one).expect("one certificate"), a.cert);
    let two = dir.path().join("two.pem");
    std::fs::write(&two, pem_of(&a.cert) + &pem_of(&b.cert)).expect("write");
    let err = load_root_ca(&two).expect_err("a chain is not a root to pin");
    assert!(err.to_string().contains("holds 2 certificates"), "{err}");
    let none = dir.path().join("none.pem");
    std::fs::write(&none, "not pem").expect("write");
    assert!(load_root_ca(&none).is_err());
}

#[test]
fn trust_needs_exactly_one_of_root_ca_and_insecure() {
    let args = |root_ca: Option<&str>, insecure| CoordinatorArgs {
        coordinator: DEFAULT_COORDINATOR.into(),
        root_ca: root_ca.map(PathBuf::from),
        insecure,
    };
    let none = trust_from_args(&args(None, false)).expect_err("no trust is a usage error");
    assert_eq!(none.exit_code(), std::process::ExitCode::from(2));
    let both = trust_from_args(&args(Some("root.pem"), true)).expect_err("both is a usage error");
    assert!(both.to_string().contains("both"), "{both}");
    assert!(matches!(
        trust_from_args(&args(None, true)),
        Ok(Trust::Insecure)
    ));
}

#[test]
fn coordinator_address_becomes_an_https_base_url() {
    assert_eq!(
        base_url("localhost:4433").expect("ok").as_str(),
        "https://localhost:4433/"
    );
    assert_eq!(
        base_url("https://10.0.0.1:4433/").expect("ok").as_str(),
        "https://10.0.0.1:4433/"
    );
    assert_eq!(
        base_url("[::1]:4433").expect("ok").as_str(),
        "https://[::1]:4433/"
    );
    for bad in ["", "http://x:1", "x:1/path", "user@x:1", "x:notaport"] {
        assert!(base_url(bad).is_err(), "{bad} must be refused");
    }
}
