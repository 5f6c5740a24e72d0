//! The webhook over real HTTPS: a self-signed certificate, `GET /healthz` and a
//! `POST /mutate` round trip.
use std::sync::Arc;

use quarry_injector::{AdmissionReview, InjectorConfig, Tee};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn request(addr: std::net::SocketAddr, ca: &rcgen::Certificate, raw: String) -> String {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).expect("root added");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("quarry-injector.quarry.svc").expect("name");
    let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
    tls.write_all(raw.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    tls.read_to_end(&mut out).await.ok();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn the_webhook_answers_over_https() {
    let key = rcgen::KeyPair::generate().expect("key");
    let params = rcgen::CertificateParams::new(vec!["quarry-injector.quarry.svc".to_string()])
        .expect("params");
    let cert = params.self_signed(&key).expect("cert");
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert_path, cert.pem()).expect("cert written");
    std::fs::write(&key_path, key.serialize_pem()).expect("key written");

    let tls = quarry_injector::server::tls_config(&cert_path, &key_path).expect("TLS config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let config = InjectorConfig::new("coordinator:2001", Tee::Tdx, "sidecar@sha256:00");
    let router = quarry_injector::server::router(Arc::new(config));
    let server = tokio::spawn(quarry_injector::server::serve(listener, tls, router));

    let health = request(
        addr,
        &cert,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into(),
    )
    .await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");

    let body = std::fs::read_to_string(format!(
        "{}/tests/fixtures/entrypoint-command.json",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("fixture");
    let raw = format!(
        "POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let reply = request(addr, &cert, raw).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let json = reply.split("\r\n\r\n").nth(1).expect("a body");
    let review: AdmissionReview = serde_json::from_str(json).expect("an AdmissionReview");
    let response = review.response.expect("response");
    assert!(response.allowed && response.patch.is_some());
    assert_eq!(response.uid, "705ab4f5-6393-11e8-b7cc-42010a800002");

    let mismatched = quarry_injector::server::tls_config(&key_path, &cert_path);
    assert!(mismatched.is_err(), "swapped files are refused");
    server.abort();
}
