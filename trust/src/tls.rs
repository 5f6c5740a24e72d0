//! The TLS certificate verifiers of Quarry, one type per meaning of a peer certificate:
//!
//! * [`Recording`] (server): any chain, recorded so that an attestation can vouch for it;
//! * [`KeyPossession`] (server) and [`AnyClientCert`] (client): any certificate, whose key the
//!   application then ties to evidence or to a known user;
//! * [`PinnedRootServer`] / [`PinnedRootClient`]: a chain to pinned roots, then the
//!   application's [`PeerCheck`] of the leaf;
//! * [`dangerous::AcceptAnyServerCert`]: any certificate, nothing checked later.
//!
//! All of them verify the TLS 1.3 handshake signature with the leaf key (ring's algorithms)
//! and refuse TLS 1.2 signatures; the config builders here offer TLS 1.3 only.
use std::sync::{Arc, LazyLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerifier};
use rustls::client::WantsClientCert;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::{ClientConfig, ConfigBuilder, DigitallySignedStruct, ServerConfig, SignatureScheme};
use rustls::{RootCertStore, WantsVerifier};
use rustls_pki_types::CertificateDer;

/// The signature methods every verifier here shares: TLS 1.2 refused, TLS 1.3 verified with
/// ring's algorithms. Expands inside an `impl ServerCertVerifier` / `impl ClientCertVerifier`.
macro_rules! tls13_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            _message: &[u8],
            _cert: &::rustls_pki_types::CertificateDer<'_>,
            _dss: &::rustls::DigitallySignedStruct,
        ) -> Result<::rustls::client::danger::HandshakeSignatureValid, ::rustls::Error> {
            $crate::tls::refuse_tls12()
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &::rustls_pki_types::CertificateDer<'_>,
            dss: &::rustls::DigitallySignedStruct,
        ) -> Result<::rustls::client::danger::HandshakeSignatureValid, ::rustls::Error> {
            $crate::tls::verify_tls13(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<::rustls::SignatureScheme> {
            $crate::tls::supported_schemes()
        }
    };
}

/// `verify_server_cert` of a verifier that accepts any server chain: the key, proven by the
/// handshake signature, is all the application relies on (or, under `dangerous`, nothing).
macro_rules! accept_any_server_chain {
    () => {
        fn verify_server_cert(
            &self,
            _end_entity: &::rustls_pki_types::CertificateDer<'_>,
            _intermediates: &[::rustls_pki_types::CertificateDer<'_>],
            _server_name: &::rustls_pki_types::ServerName<'_>,
            _ocsp_response: &[u8],
            _now: ::rustls_pki_types::UnixTime,
        ) -> Result<::rustls::client::danger::ServerCertVerified, ::rustls::Error> {
            Ok(::rustls::client::danger::ServerCertVerified::assertion())
        }
    };
}

pub mod dangerous;
mod pinned;
mod possession;
mod recording;

pub use pinned::{PeerCheck, PinnedRootClient, PinnedRootServer};
pub use possession::{AnyClientCert, KeyPossession};
pub use recording::Recording;

/// The crypto provider of every Quarry TLS client and server: ring.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS 1.3 client configuration that authenticates the server by `roots` with webpki
/// (chain and host name), as a browser would.
pub fn client_with_roots(
    roots: Arc<RootCertStore>,
) -> Result<ConfigBuilder<ClientConfig, WantsClientCert>, rustls::Error> {
    Ok(client_builder()?.with_root_certificates(roots))
}

/// A TLS 1.3 client configuration that authenticates the server with `verifier`.
pub fn client_with_verifier(
    verifier: Arc<dyn ServerCertVerifier>,
) -> Result<ConfigBuilder<ClientConfig, WantsClientCert>, rustls::Error> {
    Ok(client_builder()?
        .dangerous()
        .with_custom_certificate_verifier(verifier))
}

/// A TLS 1.3 server configuration, before its client certificate policy is chosen.
pub fn server_builder() -> Result<ConfigBuilder<ServerConfig, WantsVerifier>, rustls::Error> {
    ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
}

fn client_builder() -> Result<ConfigBuilder<ClientConfig, WantsVerifier>, rustls::Error> {
    ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
}

/// ring's signature algorithms, built once (the provider is rebuilt on every call otherwise).
static ALGORITHMS: LazyLock<WebPkiSupportedAlgorithms> =
    LazyLock::new(|| rustls::crypto::ring::default_provider().signature_verification_algorithms);

/// Every configuration here offers TLS 1.3 only; a TLS 1.2 signature is a protocol violation.
fn refuse_tls12() -> Result<HandshakeSignatureValid, rustls::Error> {
    Err(rustls::Error::PeerIncompatible(
        rustls::PeerIncompatible::Tls12NotOffered,
    ))
}

/// The peer proves possession of `cert`'s key: its handshake signature verifies with it.
fn verify_tls13(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(message, cert, dss, &ALGORITHMS)
}

fn supported_schemes() -> Vec<SignatureScheme> {
    ALGORITHMS.supported_schemes()
}

#[cfg(test)]
mod tests;
