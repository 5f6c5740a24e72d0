//! Recovery run against the coordinator's state: re-sealing the DEK (and new recovery data)
//! for a manifest before its commit, and the `POST /api/v2/recover` and
//! `GET /api/v2/recover/public-key` operations of a coordinator in Recovery.
use std::collections::BTreeMap;

use quarry_api::http::{RecoverRequest, RecoverResponse};
use quarry_api::manifest::Manifest;
use rsa::pkcs8::EncodePublicKey;
use rsa::RsaPrivateKey;

use super::{wrap, RecoveryData, Step};
use crate::http::error::ApiError;
use crate::state::sealed_key::SealedKey;
use crate::state::{Core, Phase};

/// Size of the ephemeral key for the air-gapped flow.
const EPHEMERAL_BITS: usize = 3072;

/// A rewritten `sealed-key.json` and how to put the previous one back.
pub struct SealingUpdate {
    /// New recovery secrets (key name → base64 ciphertext), to return once.
    pub recovery_secrets: Option<BTreeMap<String, String>>,
    sealed: SealedKey,
    previous: Option<Vec<u8>>,
}

impl SealingUpdate {
    /// Restores the previous file (call when the commit that this update belongs to failed).
    pub fn undo(self) {
        if let Some(bytes) = self.previous {
            self.sealed.restore(&bytes);
        }
    }
}

/// Re-seals the DEK for `manifest` before its commit: its `SealMode`, and new recovery data
/// when `RecoveryKeys`/`RecoveryThreshold` differ from `previous` (None = first manifest).
/// Call [`SealingUpdate::undo`] if the commit then fails. For the manifest update code.
pub fn reseal_for_manifest(
    core: &Core,
    manifest: &Manifest,
    previous: Option<&Manifest>,
) -> Result<SealingUpdate, ApiError> {
    let dek = core
        .dek()
        .ok_or_else(|| ApiError::Internal("no data encryption key outside Recovery".into()))?;
    let sealed = core.sealed_key().clone();
    let old_bytes = sealed.snapshot();
    let changed = previous.is_none_or(|p| {
        p.recovery_keys != manifest.recovery_keys
            || p.config.recovery_threshold != manifest.config.recovery_threshold
    });
    let (data, secrets) = if changed {
        match tokio::task::block_in_place(|| {
            wrap(
                &dek,
                &manifest.recovery_keys,
                manifest.config.recovery_threshold,
            )
        })? {
            Some((data, cts)) => (
                Some(data),
                Some(
                    cts.iter()
                        .map(|(k, v)| (k.clone(), quarry_api::bytes::b64(v)))
                        .collect(),
                ),
            ),
            None => (None, None),
        }
    } else {
        // An unreadable old file has no recovery data worth keeping.
        (sealed.recovery_data().ok().flatten(), None)
    };
    sealed
        .write(&dek, &core.tee, manifest.config.seal_mode, data)
        .map_err(ApiError::Internal)?;
    if manifest.config.seal_mode == quarry_api::manifest::SealMode::Disabled {
        tracing::warn!("SealMode Disabled: the data encryption key is not sealed to this TEE; after a restart only the RecoveryKeys (or a new manifest) get the coordinator out of Recovery");
    }
    Ok(SealingUpdate {
        recovery_secrets: secrets,
        sealed,
        previous: old_bytes,
    })
}

fn recovery_data(core: &Core) -> Result<RecoveryData, ApiError> {
    let sealed = core.sealed_key();
    let no_data = || {
        ApiError::wrong_state(format!(
            "{} has no recovery data (the manifest had no RecoveryKeys, or the file is missing): this state cannot be recovered with recovery secrets; restore the data directory, or set a new manifest to start a new deployment",
            sealed.path().display()
        ))
    };
    sealed
        .recovery_data()
        .map_err(ApiError::wrong_state)?
        .ok_or_else(no_data)
}

fn in_recovery(core: &Core) -> Result<(), ApiError> {
    match core.view().phase.as_ref() {
        Phase::Recovery { .. } => Ok(()),
        other => Err(ApiError::wrong_state(format!(
            "the coordinator is not in recovery mode (state {})",
            other.state().code()
        ))),
    }
}

/// `POST /api/v2/recover`.
pub async fn recover(core: &Core, req: RecoverRequest) -> Result<RecoverResponse, ApiError> {
    let _guard = core.manifest_lock.lock().await;
    in_recovery(core)?;
    let data = recovery_data(core)?;
    let step = {
        let mut session = core.recovery_session();
        tokio::task::block_in_place(|| {
            session.submit(&data, &req.recovery_secret, &req.recovery_secret_signature)
        })
    };
    let dek = match step {
        Err(e) => {
            tracing::warn!(error = %e, "recovery secret refused");
            return Err(e.into());
        }
        Ok(Step::Remaining(n)) => {
            tracing::info!(remaining = n, "recovery secret accepted");
            return Ok(RecoverResponse {
                remaining: n,
                message: format!(
                    "Secret was processed successfully. Upload the next secret. Remaining secrets: {n}"
                ),
            });
        }
        Ok(Step::Complete(dek)) => dek,
    };
    let outcome = core.install_recovered(dek, data).await;
    core.recovery_session().reset(outcome.is_ok());
    match outcome {
        Ok(()) => Ok(RecoverResponse {
            remaining: 0,
            message: "Recovery successful.".into(),
        }),
        Err(reason) => {
            tracing::error!(%reason, "the recovered key did not yield a usable state; staying in Recovery");
            Err(ApiError::forbidden(format!(
                "the recovery secrets are valid but the state cannot be used: {reason}; the uploaded secrets were discarded"
            )))
        }
    }
}

/// `GET /api/v2/recover/public-key`: the ephemeral RSA key (PKIX DER), created on first use.
pub async fn ephemeral_public_key(core: &Core) -> Result<Vec<u8>, ApiError> {
    in_recovery(core)?;
    let existing = core
        .recovery_session()
        .ephemeral
        .as_ref()
        .map(|k| k.to_public_key());
    let public = match existing {
        Some(p) => p,
        None => {
            let fresh = tokio::task::spawn_blocking(|| {
                RsaPrivateKey::new(&mut rand_core::OsRng, EPHEMERAL_BITS)
            })
            .await
            .map_err(|e| ApiError::Internal(format!("key generation task: {e}")))?
            .map_err(|e| ApiError::Internal(format!("ephemeral RSA key: {e}")))?;
            core.recovery_session().ephemeral(fresh).to_public_key()
        }
    };
    public
        .to_public_key_der()
        .map(|d| d.as_bytes().to_vec())
        .map_err(|e| ApiError::Internal(format!("encoding the ephemeral key: {e}")))
}
