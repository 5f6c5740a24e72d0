//! DANGEROUS: a server verifier that authenticates nobody.
//!
//! For the `--insecure` (CLI) and `--insecure-skip-coordinator-verify` (sidecar) paths only,
//! which exist for development and bootstrap. With it, anyone on the network path can
//! impersonate the coordinator: every answer, certificate and secret received over such a
//! connection may be forged. Callers must warn the operator each time it is used.
use rustls::client::danger::ServerCertVerifier;

/// DANGEROUS: accepts every server certificate and nothing checks it later; only the TLS 1.3
/// handshake signature is verified (the server holds the key of the certificate it shows,
/// which proves nothing about who it is).
#[derive(Debug, Default, Clone, Copy)]
pub struct AcceptAnyServerCert;

impl AcceptAnyServerCert {
    /// The verifier. Warn the operator that the server is not authenticated.
    pub fn new() -> AcceptAnyServerCert {
        AcceptAnyServerCert
    }
}

impl ServerCertVerifier for AcceptAnyServerCert {
    accept_any_server_chain!();

    tls13_signatures!();
}
