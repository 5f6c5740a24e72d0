//! Setting the manifest (state 2 → 3): validation, mesh CA, shared secrets, one commit.
use std::collections::BTreeMap;

use quarry_api::manifest::CheckedManifest;
use sha2::{Digest, Sha256};

use crate::core::{keys, Core, Deployment, Phase};
use crate::error::ApiError;
use crate::pki::CaKey;
use crate::secrets::{self, SecretValue};
use crate::store::{StoreError, Txn};

/// Outcome of a successful manifest set.
pub struct SetOutcome {
    /// Validation warnings (unknown keys...).
    pub warnings: Vec<String>,
}

/// `POST /api/v2/manifest`.
pub async fn set_manifest(core: &Core, raw: Vec<u8>) -> Result<SetOutcome, ApiError> {
    let _guard = core.manifest_lock.lock().await;
    let CheckedManifest { manifest, warnings } = quarry_api::manifest::parse(&raw)
        .map_err(|e| ApiError::BadRequest(format!("invalid manifest: {e}")))?;
    secrets::check_generatable(&manifest.secrets)
        .map_err(|e| ApiError::BadRequest(format!("invalid manifest: {e}")))?;
    if !manifest.recovery_keys.is_empty() {
        return Err(ApiError::BadRequest(
            "invalid manifest: /RecoveryKeys: recovery is not available in this version of Quarry yet; remove RecoveryKeys (the state stays sealed to this coordinator)".into(),
        ));
    }
    match core.view().phase.as_ref() {
        Phase::Running(_) => {
            return Err(ApiError::WrongState(
                "a manifest is already set (state 3); use a manifest update instead".into(),
            ))
        }
        Phase::Recovery { reason } => {
            tracing::warn!(%reason, "manifest posted in recovery: discarding the unusable state for a new deployment");
            core.reset_from_recovery().await?;
        }
        Phase::AcceptingManifest => {}
    }
    let view = core.view();
    let store = view
        .store
        .clone()
        .ok_or_else(|| ApiError::Internal("no store in state 2".into()))?;
    let root = &view.identity.root;
    let mesh = CaKey::new_mesh(root)?;
    let mut values: BTreeMap<String, SecretValue> = BTreeMap::new();
    for (name, spec) in &manifest.secrets {
        if spec.user_defined {
            if let (Some(private), public) = (&spec.initial_private, &spec.initial_public) {
                values.insert(
                    name.clone(),
                    SecretValue {
                        kind: spec.kind.as_str().into(),
                        cert: None,
                        public: public.clone().unwrap_or_else(|| private.clone()),
                        private: private.clone(),
                    },
                );
            }
        } else if spec.shared {
            let spec = spec.clone();
            let mesh_ref = &mesh;
            let v = tokio::task::block_in_place(|| secrets::generate(&spec, mesh_ref))?;
            values.insert(name.clone(), v);
        }
    }
    let signature = root.sign(&raw)?;
    let mut txn = Txn::new()
        .require_absent(keys::MANIFEST)
        .put(keys::MANIFEST, raw.clone())
        .put(keys::MANIFEST_SIGNATURE, signature.clone())
        .put(keys::MESH, mesh.to_bytes().expose().to_vec());
    for (name, v) in &values {
        txn = txn.put(
            &format!("{}{name}", keys::SECRET_PREFIX),
            serde_json::to_vec(v).map_err(|e| ApiError::Internal(e.to_string()))?,
        );
    }
    match store.commit(txn).await {
        Ok(_) => {}
        Err(StoreError::Conflict(_)) => {
            return Err(ApiError::WrongState("a manifest is already set".into()))
        }
        Err(e) => return Err(e.into()),
    }
    let fingerprint: [u8; 32] = Sha256::digest(&raw).into();
    tracing::info!(
        fingerprint = %hex::encode(fingerprint),
        packages = manifest.packages.len(),
        marbles = manifest.marbles.len(),
        secrets = manifest.secrets.len(),
        "manifest set; accepting marbles (state 3)"
    );
    core.set_running(Deployment {
        manifest,
        raw,
        fingerprint,
        signature,
        mesh,
        secrets: values,
    });
    Ok(SetOutcome {
        warnings: warnings.iter().map(|w| w.to_string()).collect(),
    })
}
