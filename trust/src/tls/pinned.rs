//! [`PinnedRootServer`] and [`PinnedRootClient`]: the peer's chain must reach pinned roots
//! (webpki), then the application's [`PeerCheck`] judges the leaf.
use std::sync::Arc;

use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::client::VerifierBuilderError;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{CertificateError, DistinguishedName, RootCertStore};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::ALGORITHMS;

/// What the application requires of a peer's leaf certificate once its chain reached the
/// pinned roots (an identity, an allow-list, a revocation list).
pub trait PeerCheck: std::fmt::Debug + Send + Sync {
    /// `Ok` admits the peer; the error becomes the TLS alert the peer receives.
    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), CertificateError>;
}

/// Server verifier: the chain must reach `roots` (webpki, serverAuth) and the leaf must pass
/// the [`PeerCheck`]. The host name is deliberately not checked: the check identifies the
/// server (for example by SPIFFE ID), not the name that was dialled.
#[derive(Debug)]
pub struct PinnedRootServer<C> {
    roots: Arc<RootCertStore>,
    check: C,
}

impl<C: PeerCheck> PinnedRootServer<C> {
    /// A verifier trusting `roots` only; refused when there are none (nothing could verify).
    pub fn new(roots: Arc<RootCertStore>, check: C) -> Result<Self, VerifierBuilderError> {
        if roots.is_empty() {
            return Err(VerifierBuilderError::NoRootAnchors);
        }
        Ok(PinnedRootServer { roots, check })
    }

    /// The application's check.
    pub fn check(&self) -> &C {
        &self.check
    }
}

impl<C: PeerCheck> ServerCertVerifier for PinnedRootServer<C> {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            ALGORITHMS.all,
        )?;
        self.check
            .check(end_entity)
            .map_err(rustls::Error::InvalidCertificate)?;
        Ok(ServerCertVerified::assertion())
    }

    tls13_signatures!();
}

/// Client verifier: a client certificate is required, its chain must reach `roots` (webpki,
/// clientAuth; the roots' subjects are sent as hints) and the leaf must pass the
/// [`PeerCheck`].
#[derive(Debug)]
pub struct PinnedRootClient<C> {
    chain: Arc<dyn ClientCertVerifier>,
    check: C,
}

impl<C: PeerCheck> PinnedRootClient<C> {
    /// A verifier trusting `roots` only; refused when there are none.
    pub fn new(roots: Arc<RootCertStore>, check: C) -> Result<Self, VerifierBuilderError> {
        let chain =
            WebPkiClientVerifier::builder_with_provider(roots, super::provider()).build()?;
        Ok(PinnedRootClient { chain, check })
    }

    /// The application's check.
    pub fn check(&self) -> &C {
        &self.check
    }
}

impl<C: PeerCheck> ClientCertVerifier for PinnedRootClient<C> {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.chain.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .chain
            .verify_client_cert(end_entity, intermediates, now)?;
        self.check
            .check(end_entity)
            .map_err(rustls::Error::InvalidCertificate)?;
        Ok(verified)
    }

    tls13_signatures!();
}
