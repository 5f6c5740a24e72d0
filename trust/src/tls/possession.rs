//! [`KeyPossession`] and [`AnyClientCert`]: the peer proves possession of a key, and the
//! application decides who that key belongs to.
use rustls::client::danger::ServerCertVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::DistinguishedName;
use rustls_pki_types::{CertificateDer, UnixTime};

/// Accepts any server certificate whose holder proves possession of its key in the
/// handshake; who the peer is, the application decides from evidence bound to that key
/// (replica-to-replica key sharing).
#[derive(Debug, Default, Clone, Copy)]
pub struct KeyPossession;

impl KeyPossession {
    /// The verifier.
    pub fn new() -> KeyPossession {
        KeyPossession
    }
}

impl ServerCertVerifier for KeyPossession {
    // The key, not the certificate, is what the caller relies on.
    accept_any_server_chain!();

    tls13_signatures!();
}

/// Accepts any client certificate whose holder proves possession of its key in the
/// handshake. Who the certificate belongs to is decided by the application: marbles by the
/// evidence binding to the key, users by exact certificate match.
///
/// Client authentication is always offered, with no root hints (any certificate will do).
#[derive(Debug, Clone, Copy)]
pub struct AnyClientCert {
    mandatory: bool,
}

impl AnyClientCert {
    /// The verifier; `mandatory` refuses clients that present no certificate.
    pub fn new(mandatory: bool) -> AnyClientCert {
        AnyClientCert { mandatory }
    }
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

    tls13_signatures!();
}
