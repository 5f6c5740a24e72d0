//! Authenticating the coordinator by its attestation (`--coordinator-policy`): fetch
//! `/api/v2/attestation` with a fresh nonce over a connection whose server chain is recorded,
//! verify the evidence against the policy, the statement binding and the recorded chain
//! ([`quarry_trust::relying_party`]), then pin the attested root CA for the activation.
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use quarry_api::attestation::VerifyOptions;
use quarry_trust::relying_party::{self, RelyingPartyError};
use quarry_trust::tls::Recording;
use rustls_pki_types::CertificateDer;

use crate::client::{self, ClientError, MeshClient, TrustAnchor};
use crate::identity::MarbleKey;

/// Verifies the coordinator at `base` against the policy file; returns the attested root CA.
pub async fn verify_coordinator(
    base: &reqwest::Url,
    policy_path: &Path,
    allow_simulation: bool,
    key: &MarbleKey,
) -> Result<Arc<rustls::RootCertStore>, ClientError> {
    let fail = |reason: String| ClientError::CoordinatorNotAuthenticated {
        url: base.to_string(),
        reason,
    };
    let refused = |e: RelyingPartyError| match e {
        RelyingPartyError::Random => ClientError::Setup(e.to_string()),
        other => fail(other.to_string()),
    };
    let policy = relying_party::load_policy(policy_path).map_err(refused)?;
    let nonce = relying_party::fresh_nonce().map_err(refused)?;
    let recording = Arc::new(Recording::new());
    let trust = TrustAnchor::Recording(recording.clone());
    let mesh = MeshClient::new(base.clone(), client::tls_config(&trust, key)?)?;
    let attestation = mesh.attestation(&nonce).await.map_err(|e| match e {
        // Nothing is verified yet: what the coordinator answered is only a reason not to
        // trust it.
        ClientError::Refused {
            message,
            code,
            fields,
        } => fail(client::refusal_line(code.as_deref(), &message, &fields)),
        ClientError::Protocol { .. } => fail(e.to_string()),
        other => other,
    })?;
    let chain = recording.chain();
    let options = VerifyOptions {
        nonce: Some(&nonce),
        manifest: None,
        allow_simulation,
        presented_chain: Some(&chain),
        log: None,
        now: SystemTime::now(),
    };
    let verified = relying_party::verify(&attestation, &policy, &options).map_err(refused)?;
    if verified.statement.simulation {
        tracing::warn!("WARNING: the coordinator runs on a SIMULATED TEE (accepted by --allow-simulated-coordinator)");
    }
    tracing::info!(
        root_ca_sha256 = %verified.statement.root_ca_sha256,
        "coordinator attested against the policy; pinning its root CA"
    );
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(verified.root_ca_der))
        .map_err(|e| fail(format!("attested root CA unusable: {e}")))?;
    Ok(Arc::new(roots))
}
