//! Setting the manifest (state 2 → 3): validation, mesh CA, shared secrets, one commit.
use std::collections::BTreeMap;

use quarry_api::manifest::CheckedManifest;
use sha2::{Digest, Sha256};

use crate::http::error::ApiError;
use crate::pki::CaKey;
use crate::secrets::{self, SecretValue};
use crate::state::{keys, Core, Deployment, Phase};
use crate::store::{StoreError, Txn};

/// Outcome of a successful manifest set.
pub struct SetOutcome {
    /// Validation warnings (unknown keys...).
    pub warnings: Vec<String>,
    /// Recovery secrets by key name (base64 RSA-OAEP ciphertexts), returned only now.
    pub recovery_secrets: Option<BTreeMap<String, String>>,
}

/// `POST /api/v2/manifest`.
pub async fn set_manifest(core: &Core, raw: Vec<u8>) -> Result<SetOutcome, ApiError> {
    let _guard = core.manifest_lock.lock().await;
    let CheckedManifest { manifest, warnings } =
        quarry_api::manifest::parse(&raw).map_err(ApiError::from)?;
    match core.view().phase.as_ref() {
        Phase::Running(_) => {
            return Err(ApiError::wrong_state(
                "a manifest is already set (state 3); use a manifest update instead".into(),
            ))
        }
        Phase::Recovery { reason } => {
            tracing::warn!(%reason, "manifest posted in recovery: discarding the unusable state for a new deployment");
            core.reset_from_recovery().await?;
            core.recovery_session().reset(true);
        }
        Phase::AcceptingManifest => {}
    }
    let view = core.view();
    let store = view
        .store
        .clone()
        .ok_or_else(|| ApiError::Internal("no store in state 2".into()))?;
    let root = &view.identity.root;
    let mesh = std::sync::Arc::new(CaKey::new_mesh(root)?);
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
    let fingerprint: [u8; 32] = Sha256::digest(&raw).into();
    let event = serde_json::json!({
        "type": "manifest-set",
        "time": crate::clock::now_unix(),
        "manifestSha256": hex::encode(fingerprint),
    });
    // Seal mode and recovery data go to sealed-key.json before the commit, so a committed
    // manifest always has them; a failed commit puts the previous file back.
    let sealing = crate::recovery::service::reseal_for_manifest(core, &manifest, None)?;
    let committed = view.log.commit_with_events(&store, txn, vec![event]).await;
    let recovery_secrets = match committed {
        Ok(_) => sealing.recovery_secrets.clone(),
        Err(e) => {
            sealing.undo();
            return Err(match e {
                StoreError::Conflict(_) => {
                    ApiError::wrong_state("a manifest is already set".into())
                }
                e => e.into(),
            });
        }
    };
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
        previous: BTreeMap::new(),
        root_secret: std::sync::Arc::new(view.identity.root_secret.clone()),
    });
    Ok(SetOutcome {
        warnings: warnings.iter().map(|w| w.to_string()).collect(),
        recovery_secrets,
    })
}
