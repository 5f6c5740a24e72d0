//! Real TLS 1.3 handshakes between in-memory rustls connections, one per verifier shape and
//! refusal.
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::client::danger::ServerCertVerifier;
use rustls::client::VerifierBuilderError;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::ResolvesServerCert;
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, ClientConnection, Connection, Error, PeerIncompatible,
    ServerConfig, ServerConnection,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

use super::*;

/// A CA and the leaves it issues.
struct Ca {
    der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate chain (leaf first) and the leaf's key.
struct Leaf {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let der = params.self_signed(&key).unwrap().der().clone();
        Ca {
            der,
            issuer: Issuer::new(params, key),
        }
    }

    fn roots(&self) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        Arc::new(roots)
    }

    /// A leaf for `name` (a DNS SAN), chain leaf first.
    fn leaf(&self, name: &str) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec![name.to_string()]).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            chain: vec![cert.der().clone(), self.der.clone()],
            key: pkcs8(&key),
        }
    }
}

fn pkcs8(key: &KeyPair) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()))
}

/// A self-signed leaf, as marbles and replicas present.
fn self_signed(name: &str) -> Leaf {
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    Leaf {
        chain: vec![cert.der().clone()],
        key: pkcs8(&key),
    }
}

/// `leaf`'s chain with another key: the holder cannot sign for the certificate it shows.
fn impostor(leaf: &Leaf) -> Arc<CertifiedKey> {
    let other = pkcs8(&KeyPair::generate().unwrap());
    let signer = provider().key_provider.load_private_key(other).unwrap();
    Arc::new(CertifiedKey::new(leaf.chain.clone(), signer))
}

#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

impl rustls::client::ResolvesClientCert for Fixed {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn server(leaf: &Leaf, clients: Arc<dyn ClientCertVerifier>) -> ServerConfig {
    server_builder()
        .unwrap()
        .with_client_cert_verifier(clients)
        .with_single_cert(leaf.chain.clone(), leaf.key.clone_key())
        .unwrap()
}

fn server_without_client_auth(leaf: &Leaf) -> ServerConfig {
    server_builder()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(leaf.chain.clone(), leaf.key.clone_key())
        .unwrap()
}

fn client(verifier: Arc<dyn ServerCertVerifier>, leaf: Option<&Leaf>) -> ClientConfig {
    let builder = client_with_verifier(verifier).unwrap();
    match leaf {
        Some(l) => builder
            .with_client_auth_cert(l.chain.clone(), l.key.clone_key())
            .unwrap(),
        None => builder.with_no_client_auth(),
    }
}

/// Which side refused the handshake.
#[derive(Debug, PartialEq)]
enum Refused {
    Client(Error),
    Server(Error),
}

/// Runs a handshake to `peer.test` in memory; returns the server's view of the client's
/// certificates, or the first error and the side that raised it.
fn handshake(
    client: ClientConfig,
    server: ServerConfig,
) -> Result<Option<Vec<CertificateDer<'static>>>, Refused> {
    let name = ServerName::try_from("peer.test").unwrap();
    let mut c = Connection::Client(ClientConnection::new(Arc::new(client), name).unwrap());
    let mut s = Connection::Server(ServerConnection::new(Arc::new(server)).unwrap());
    for _ in 0..16 {
        pump(&mut c, &mut s).map_err(Refused::Server)?;
        pump(&mut s, &mut c).map_err(Refused::Client)?;
        if !c.is_handshaking() && !s.is_handshaking() {
            return Ok(s.peer_certificates().map(<[_]>::to_vec));
        }
    }
    panic!("the handshake did not finish");
}

/// Moves everything `from` wants to send into `to` and lets `to` process it.
fn pump(from: &mut Connection, to: &mut Connection) -> Result<(), Error> {
    let mut buf = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut buf).unwrap();
    }
    let mut slice = buf.as_slice();
    while !slice.is_empty() {
        to.read_tls(&mut slice).unwrap();
        to.process_new_packets()?;
    }
    Ok(())
}

/// Admits the leaves whose DER is in the list (stands in for an identity check).
#[derive(Debug)]
struct Allow(Vec<CertificateDer<'static>>);

impl PeerCheck for Allow {
    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), CertificateError> {
        if self.0.iter().any(|c| c.as_ref() == end_entity.as_ref()) {
            Ok(())
        } else {
            Err(CertificateError::ApplicationVerificationFailure)
        }
    }
}

fn bad_signature() -> Error {
    Error::InvalidCertificate(CertificateError::BadSignature)
}

#[test]
fn recording_records_the_chain_leaf_first_whoever_issued_it() {
    let leaf = Ca::new("anyone").leaf("elsewhere.example");
    let recording = Arc::new(Recording::new());
    assert!(recording.chain().is_empty());
    handshake(
        client(recording.clone(), None),
        server_without_client_auth(&leaf),
    )
    .expect("the recording verifier accepts any chain");
    let expected: Vec<Vec<u8>> = leaf.chain.iter().map(|c| c.to_vec()).collect();
    assert_eq!(recording.chain(), expected);
}

#[test]
fn recording_refuses_a_server_that_cannot_sign_for_its_certificate() {
    let leaf = Ca::new("anyone").leaf("peer.test");
    let server = server_builder()
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Fixed(impostor(&leaf))));
    let err = handshake(client(Arc::new(Recording::new()), None), server)
        .expect_err("a recorded chain must belong to the key in the handshake");
    assert_eq!(err, Refused::Client(bad_signature()));
}

#[test]
fn key_possession_and_accept_any_take_any_certificate_but_not_a_stolen_one() {
    let verifiers: [Arc<dyn ServerCertVerifier>; 2] = [
        Arc::new(KeyPossession::new()),
        Arc::new(dangerous::AcceptAnyServerCert::new()),
    ];
    for verifier in verifiers {
        let leaf = self_signed("quarry-peer");
        handshake(
            client(verifier.clone(), None),
            server_without_client_auth(&leaf),
        )
        .unwrap_or_else(|e| panic!("{verifier:?} refused a self-signed peer: {e:?}"));
        let server = server_builder()
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Fixed(impostor(&leaf))));
        let err = handshake(client(verifier.clone(), None), server)
            .expect_err("a peer without the certificate's key is refused");
        assert_eq!(err, Refused::Client(bad_signature()), "{verifier:?}");
    }
}

#[test]
fn any_client_cert_takes_any_client_that_holds_its_key() {
    let server_leaf = self_signed("peer.test");
    let user = self_signed("user");
    let seen = handshake(
        client(Arc::new(KeyPossession::new()), Some(&user)),
        server(&server_leaf, Arc::new(AnyClientCert::new(true))),
    )
    .expect("any client certificate is accepted");
    assert_eq!(seen, Some(user.chain.clone()));
    assert!(AnyClientCert::new(true).root_hint_subjects().is_empty());

    let stolen = client_with_verifier(Arc::new(KeyPossession::new()))
        .unwrap()
        .with_client_cert_resolver(Arc::new(Fixed(impostor(&user))));
    let err = handshake(
        stolen,
        server(&server_leaf, Arc::new(AnyClientCert::new(true))),
    )
    .expect_err("a client without the certificate's key is refused");
    assert_eq!(err, Refused::Server(bad_signature()));
}

#[test]
fn any_client_cert_refuses_a_client_without_certificate_only_when_mandatory() {
    let server_leaf = self_signed("peer.test");
    let seen = handshake(
        client(Arc::new(KeyPossession::new()), None),
        server(&server_leaf, Arc::new(AnyClientCert::new(false))),
    )
    .expect("optional client authentication admits an anonymous client");
    assert_eq!(seen, None);
    let err = handshake(
        client(Arc::new(KeyPossession::new()), None),
        server(&server_leaf, Arc::new(AnyClientCert::new(true))),
    )
    .expect_err("mandatory client authentication refuses an anonymous client");
    assert_eq!(err, Refused::Server(Error::NoCertificatesPresented));
}

#[test]
fn pinned_root_server_checks_chain_and_peer_but_not_the_host_name() {
    let root = Ca::new("deployment root");
    let leaf = root.leaf("not-the-dialled-name.example");
    let admitted = Allow(vec![leaf.chain[0].clone()]);
    let verifier = PinnedRootServer::new(root.roots(), admitted).unwrap();
    handshake(
        client(Arc::new(verifier), None),
        server_without_client_auth(&leaf),
    )
    .expect("a server chaining to the root and passing the check is accepted");

    let refused = PinnedRootServer::new(root.roots(), Allow(vec![])).unwrap();
    let err = handshake(
        client(Arc::new(refused), None),
        server_without_client_auth(&leaf),
    )
    .expect_err("the application's check decides after the chain");
    assert_eq!(
        err,
        Refused::Client(Error::InvalidCertificate(
            CertificateError::ApplicationVerificationFailure
        ))
    );

    let other = Ca::new("impostor root").leaf("peer.test");
    let verifier = PinnedRootServer::new(root.roots(), Allow(vec![other.chain[0].clone()]));
    let err = handshake(
        client(Arc::new(verifier.unwrap()), None),
        server_without_client_auth(&other),
    )
    .expect_err("a chain to another root is refused whatever the check says");
    assert_eq!(
        err,
        Refused::Client(Error::InvalidCertificate(CertificateError::UnknownIssuer))
    );
}

#[test]
fn pinned_root_client_checks_chain_and_peer_and_requires_a_certificate() {
    let root = Ca::new("deployment root");
    let server_leaf = root.leaf("peer.test");
    let marble = root.leaf("marble");
    let pinned = |admitted: Vec<CertificateDer<'static>>| -> Arc<dyn ClientCertVerifier> {
        Arc::new(PinnedRootClient::new(root.roots(), Allow(admitted)).unwrap())
    };
    let to_server = || Arc::new(KeyPossession::new());
    let seen = handshake(
        client(to_server(), Some(&marble)),
        server(&server_leaf, pinned(vec![marble.chain[0].clone()])),
    )
    .expect("a client chaining to the root and passing the check is accepted");
    assert_eq!(seen, Some(marble.chain.clone()));
    let hints = pinned(vec![]).root_hint_subjects().to_vec();
    assert_eq!(hints.len(), 1, "the root's subject is the one hint");

    let err = handshake(
        client(to_server(), Some(&marble)),
        server(&server_leaf, pinned(vec![])),
    )
    .expect_err("the application's check decides after the chain");
    assert_eq!(
        err,
        Refused::Server(Error::InvalidCertificate(
            CertificateError::ApplicationVerificationFailure
        ))
    );

    let stranger = Ca::new("impostor root").leaf("marble");
    let err = handshake(
        client(to_server(), Some(&stranger)),
        server(&server_leaf, pinned(vec![stranger.chain[0].clone()])),
    )
    .expect_err("a chain to another root is refused whatever the check says");
    assert_eq!(
        err,
        Refused::Server(Error::InvalidCertificate(CertificateError::UnknownIssuer))
    );

    let err = handshake(
        client(to_server(), None),
        server(&server_leaf, pinned(vec![])),
    )
    .expect_err("a client certificate is required");
    assert_eq!(err, Refused::Server(Error::NoCertificatesPresented));
}

#[test]
fn pinned_roots_must_not_be_empty() {
    let none = Arc::new(RootCertStore::empty());
    let err = PinnedRootServer::new(none.clone(), Allow(vec![])).unwrap_err();
    assert!(matches!(err, VerifierBuilderError::NoRootAnchors), "{err}");
    let err = PinnedRootClient::new(none, Allow(vec![])).unwrap_err();
    assert!(matches!(err, VerifierBuilderError::NoRootAnchors), "{err}");
}

#[test]
fn client_with_roots_checks_chain_and_host_name() {
    let root = Ca::new("deployment root");
    let right = client_with_roots(root.roots())
        .unwrap()
        .with_no_client_auth();
    handshake(right, server_without_client_auth(&root.leaf("peer.test")))
        .expect("the pinned root and the dialled name match");
    let wrong = client_with_roots(root.roots())
        .unwrap()
        .with_no_client_auth();
    let err = handshake(
        wrong,
        server_without_client_auth(&root.leaf("elsewhere.example")),
    )
    .expect_err("another host name is refused");
    assert!(
        matches!(
            err,
            Refused::Client(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
            ))
        ),
        "{err:?}"
    );
}

#[test]
fn every_verifier_refuses_tls12_signatures_and_tls12_servers() {
    let root = Ca::new("deployment root");
    let leaf = root.leaf("peer.test");
    let dss_source = self_signed("x");
    // A TLS 1.2 signature is never looked at: refused before any parsing.
    let dss = {
        let bytes = [0x04u8, 0x03, 0x00, 0x00];
        let mut reader = rustls::internal::msgs::codec::Reader::init(&bytes);
        <rustls::DigitallySignedStruct as rustls::internal::msgs::codec::Codec>::read(&mut reader)
            .unwrap()
    };
    let tls12 = Err(Error::PeerIncompatible(PeerIncompatible::Tls12NotOffered));
    let cert = &dss_source.chain[0];
    let servers: Vec<Arc<dyn ServerCertVerifier>> = vec![
        Arc::new(Recording::new()),
        Arc::new(KeyPossession::new()),
        Arc::new(dangerous::AcceptAnyServerCert::new()),
        Arc::new(PinnedRootServer::new(root.roots(), Allow(vec![])).unwrap()),
    ];
    for v in &servers {
        assert_eq!(
            v.verify_tls12_signature(b"m", cert, &dss).map(|_| ()),
            tls12.clone(),
            "{v:?}"
        );
        assert!(!v.supported_verify_schemes().is_empty());
    }
    let clients: Vec<Arc<dyn ClientCertVerifier>> = vec![
        Arc::new(AnyClientCert::new(true)),
        Arc::new(PinnedRootClient::new(root.roots(), Allow(vec![])).unwrap()),
    ];
    for v in &clients {
        assert_eq!(
            v.verify_tls12_signature(b"m", cert, &dss).map(|_| ()),
            tls12.clone(),
            "{v:?}"
        );
    }
    // A server offering TLS 1.2 only gets no handshake from these clients.
    let old = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(leaf.chain.clone(), leaf.key.clone_key())
        .unwrap();
    let err = handshake(client(Arc::new(KeyPossession::new()), None), old)
        .expect_err("TLS 1.2 is never negotiated");
    assert!(
        matches!(err, Refused::Server(Error::PeerIncompatible(_))),
        "{err:?}"
    );
}
