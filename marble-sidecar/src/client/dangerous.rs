//! The verifier behind `--insecure-skip-coordinator-verify`: accepts any coordinator
//! certificate. It still checks the TLS 1.3 handshake signature (so the peer holds the key of
//! the certificate it sent) but nothing ties that certificate to the deployment.
//! Development only.
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

/// Accepts every server certificate; verifies handshake signatures with the provider's algorithms.
#[derive(Debug)]
pub struct AcceptAnyCoordinator {
    provider: Arc<CryptoProvider>,
}

impl AcceptAnyCoordinator {
    /// A verifier using `provider`'s signature algorithms.
    pub fn new(provider: Arc<CryptoProvider>) -> AcceptAnyCoordinator {
        AcceptAnyCoordinator { provider }
    }
}

impl ServerCertVerifier for AcceptAnyCoordinator {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // The client config offers TLS 1.3 only; a TLS 1.2 signature is a protocol violation.
        Err(rustls::Error::General(
            "TLS 1.2 is not accepted from the coordinator".into(),
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
