//! The answer of `GET /api/v2/attestation` (contract §7): the statement of the current view,
//! the coordinator's evidence over it, CAs and manifest; with `format=ear`, a version-2
//! statement that binds the EAR key, and the coordinator's EAR ([`crate::ear`]).
use quarry_api::attestation::AttestationResponse;

use crate::http::error::ApiError;
use crate::state::{Core, Phase};

/// The attestation answering `nonce`; with `ear`, the EAR and its key too (not in Recovery,
/// where the identity the key is derived from is not loaded).
pub async fn answer(
    core: &Core,
    nonce: Option<&[u8]>,
    ear: bool,
) -> Result<AttestationResponse, ApiError> {
    let view = core.view();
    let mut statement = core.statement(&view, nonce);
    let ear_key = if ear {
        if matches!(view.phase.as_ref(), Phase::Recovery { .. }) {
            return Err(ApiError::wrong_state(
                "no EAR in Recovery: the deployment identity (and the EAR key derived from it) is not loaded".into(),
            ));
        }
        let key = crate::ear::EarKey::derive(view.identity.root_secret.expose())
            .map_err(|e| ApiError::Internal(format!("EAR key: {e}")))?;
        statement.version = quarry_api::statement::STATEMENT_VERSION_EAR;
        statement.ear_key_sha256 = Some(key.digest());
        Some(key)
    } else {
        None
    };
    let report_data = statement.report_data();
    let provider = core.tee.provider.clone();
    let evidence = tokio::task::spawn_blocking(move || provider.evidence(&report_data))
        .await
        .map_err(|e| ApiError::Internal(format!("evidence task: {e}")))?
        .map_err(|e| ApiError::Internal(format!("coordinator evidence: {e}")))?;
    let token = match &ear_key {
        None => None,
        Some(key) => {
            // The coordinator appraises its own evidence with the verifier it applies to
            // marbles; the relying party verifies the quote itself as well.
            let verifier = core.tee.verifier.clone();
            let (own, now) = (evidence.clone(), core.tee.now());
            let claims = tokio::task::spawn_blocking(move || verifier.verify(&own, now))
                .await
                .map_err(|e| ApiError::Internal(format!("evidence task: {e}")))?
                .map_err(|e| {
                    ApiError::Internal(format!(
                        "EAR: the coordinator's own evidence does not verify with its verifier: {e}"
                    ))
                })?;
            let manifest = match view.phase.as_ref() {
                Phase::Running(d) => Some(&d.manifest),
                _ => None,
            };
            Some(
                crate::ear::issue(key, &claims, &statement, manifest)
                    .map_err(|e| ApiError::Internal(format!("EAR: {e}")))?,
            )
        }
    };
    let (mesh_ca, manifest) = match view.phase.as_ref() {
        Phase::Running(d) => (
            Some(d.mesh.cert_pem()),
            Some(quarry_api::bytes::b64(&d.raw)),
        ),
        _ => (None, None),
    };
    Ok(AttestationResponse {
        statement,
        evidence,
        root_ca: view.identity.root.cert_pem(),
        mesh_ca,
        manifest,
        ear: token,
        ear_key: ear_key.map(|k| k.public_pem()),
    })
}
