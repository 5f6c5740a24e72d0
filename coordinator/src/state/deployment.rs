//! The running deployment and how it is rebuilt from the store.
use std::collections::BTreeMap;
use std::sync::Arc;

use quarry_api::manifest::Manifest;
use quarry_api::Secret;
use sha2::{Digest, Sha256};

use super::keys;
use crate::pki::CaKey;
use crate::secrets::SecretValue;
use crate::store::Store;
use crate::translog::TransLog;

/// A running deployment: the manifest and everything generated for it.
#[derive(Clone)]
pub struct Deployment {
    /// Checked manifest.
    pub manifest: Manifest,
    /// Exact bytes posted.
    pub raw: Vec<u8>,
    /// SHA-256 of `raw`.
    pub fingerprint: [u8; 32],
    /// Root-key ECDSA signature over `raw`.
    pub signature: Vec<u8>,
    /// Current mesh CA.
    pub mesh: Arc<CaKey>,
    /// Shared and user-set secret values by name.
    pub secrets: BTreeMap<String, SecretValue>,
    /// Values before the last manifest update (`.Previous.Secrets`).
    pub previous: BTreeMap<String, SecretValue>,
    /// Root secret for HKDF of private symmetric keys (rotated by `RotateRootSecret`).
    pub root_secret: Arc<Secret>,
}

/// Rebuilds the deployment of the stored manifest `raw` from the rest of the store. Every
/// value read must be the one `log` last recorded for its key (an etcd writer can put an
/// older ciphertext of a key back; see [`crate::translog::binding`]).
pub async fn load(store: &dyn Store, raw: Vec<u8>, log: &TransLog) -> Result<Deployment, String> {
    log.check_bound(keys::MANIFEST, Some(&raw))?;
    let checked = quarry_api::manifest::parse(&raw)
        .map_err(|e| format!("the stored manifest no longer validates: {e}"))?;
    let mesh = required(store, keys::MESH, "a manifest but no mesh CA").await?;
    log.check_bound(keys::MESH, Some(&mesh))?;
    let mesh = Arc::new(CaKey::from_bytes(&mesh).map_err(|e| e.to_string())?);
    let signature = store
        .get(keys::MANIFEST_SIGNATURE)
        .await
        .map_err(|e| e.to_string())?
        .map(|v| v.value);
    log.check_bound(keys::MANIFEST_SIGNATURE, signature.as_deref())?;
    let signature = signature.unwrap_or_default();
    let secrets = load_secrets(store, keys::SECRET_PREFIX, log).await?;
    // Shared secrets are generated with the manifest; one missing was deleted (an etcd
    // writer), and serving on would hand marbles a secret that differs from the one before.
    let generated = |(name, spec): &(&String, &quarry_api::manifest::SecretSpec)| {
        spec.shared && !spec.user_defined && !secrets.contains_key(*name)
    };
    if let Some((name, _)) = checked.manifest.secrets.iter().find(generated) {
        return Err(format!(
            "the stored state lacks shared secret {name} ({}{name} is missing)",
            keys::SECRET_PREFIX
        ));
    }
    let previous = load_secrets(store, keys::PREVIOUS_SECRET_PREFIX, log).await?;
    let root_secret = required(store, keys::ROOT_SECRET, "no root secret").await?;
    log.check_bound(keys::ROOT_SECRET, Some(&root_secret))?;
    let mut manifest = checked.manifest;
    apply_svn_overrides(store, &mut manifest, log).await?;
    Ok(Deployment {
        manifest,
        fingerprint: Sha256::digest(&raw).into(),
        raw,
        signature,
        mesh,
        secrets,
        previous,
        root_secret: Arc::new(Secret::new(root_secret)),
    })
}

/// The value at `key`, or an error saying the stored state has `what`.
pub async fn required(store: &dyn Store, key: &str, what: &str) -> Result<Vec<u8>, String> {
    store
        .get(key)
        .await
        .map_err(|e| e.to_string())?
        .map(|v| v.value)
        .ok_or_else(|| format!("the stored state has {what} ({key} is missing)"))
}

async fn load_secrets(
    store: &dyn Store,
    prefix: &str,
    log: &TransLog,
) -> Result<BTreeMap<String, SecretValue>, String> {
    let mut out = BTreeMap::new();
    let scan = store.scan(prefix).await.map_err(|e| e.to_string())?;
    log.check_bound_scan(prefix, &scan)?;
    for (key, v) in scan {
        let name = key.trim_start_matches(prefix).to_string();
        let value: SecretValue = serde_json::from_slice(&v.value)
            .map_err(|e| format!("stored secret {name} does not decode: {e}"))?;
        out.insert(name, value);
    }
    Ok(out)
}

/// Applies stored SecurityVersion overrides (package updates) to a freshly parsed manifest;
/// each must be the one `log` last recorded (an older, lower one put back is a downgrade).
pub async fn apply_svn_overrides(
    store: &dyn Store,
    manifest: &mut Manifest,
    log: &TransLog,
) -> Result<(), String> {
    let scan = store
        .scan(keys::SVN_PREFIX)
        .await
        .map_err(|e| e.to_string())?;
    log.check_bound_scan(keys::SVN_PREFIX, &scan)?;
    for (k, v) in scan {
        let name = k.trim_start_matches(keys::SVN_PREFIX);
        let svn: [u8; 8] = v
            .value
            .as_slice()
            .try_into()
            .map_err(|_| format!("stored SecurityVersion of {name} is corrupt"))?;
        if let Some(p) = manifest.packages.get_mut(name) {
            p.security_version = Some(u64::from_be_bytes(svn));
        }
    }
    Ok(())
}
