//! [`Recording`]: the server verifier of a relying party's first request.
use std::sync::Mutex;

use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

/// Accepts any server chain only to record it: the caller must then have an attestation
/// vouch for the recorded chain before trusting anything the server said.
///
/// The handshake signature is still verified with the leaf key, so the recorded leaf is the
/// certificate of the key that took part in this connection.
#[derive(Debug, Default)]
pub struct Recording {
    chain: Mutex<Vec<Vec<u8>>>,
}

impl Recording {
    /// A verifier that has recorded nothing yet.
    pub fn new() -> Recording {
        Recording::default()
    }

    /// The chain (DER, leaf first) of the last handshake; empty before the first.
    pub fn chain(&self) -> Vec<Vec<u8>> {
        // A poisoned lock still holds a whole chain: it is replaced in one assignment.
        match self.chain.lock() {
            Ok(chain) => chain.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

impl ServerCertVerifier for Recording {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let chain = std::iter::once(end_entity)
            .chain(intermediates)
            .map(|c| c.to_vec())
            .collect();
        match self.chain.lock() {
            Ok(mut recorded) => *recorded = chain,
            Err(poisoned) => *poisoned.into_inner() = chain,
        }
        Ok(ServerCertVerified::assertion())
    }

    tls13_signatures!();
}
