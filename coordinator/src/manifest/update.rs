//! Manifest updates (MarbleRun semantics, reference §5): package-only SecurityVersion bumps,
//! and full updates acknowledged by k of the n users holding `UpdateManifest`. Every step is a
//! transparency-log event.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use quarry_api::manifest::SecretSpec;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::http::error::ApiError;
use crate::pki::CaKey;
use crate::secrets::{self, SecretValue};
use crate::state::{keys, Core, Deployment};
use crate::store::{Store, StoreError, Txn};
use crate::users::{authenticate, authorize, update_manifest_users, Action};

/// A full update waiting for acknowledgements (stored sealed).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pending {
    #[serde(with = "quarry_api::bytes::base64")]
    raw: Vec<u8>,
    required: Vec<String>,
    threshold: usize,
    acks: BTreeSet<String>,
}

impl Pending {
    fn missing_users(&self) -> Vec<String> {
        self.required
            .iter()
            .filter(|u| !self.acks.contains(*u))
            .cloned()
            .collect()
    }

    fn missing(&self) -> usize {
        self.threshold.saturating_sub(self.acks.len())
    }
}

/// Response of `POST /api/v2/update` and `POST /api/v2/update-manifest`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateResponse {
    /// Human-readable outcome.
    pub message: String,
    /// Acknowledgements still needed (0 = applied).
    pub missing_acknowledgments: usize,
    /// Users who have not acknowledged yet.
    pub missing_users: Vec<String>,
    /// New recovery secrets (key name → base64), returned once when the update changed
    /// `RecoveryKeys` or `RecoveryThreshold`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovery_secrets: Option<BTreeMap<String, String>>,
}

/// `GET /api/v2/update-manifest`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingResponse {
    /// The pending manifest, base64.
    pub manifest: String,
    /// Summary.
    pub message: String,
    /// Users who have not acknowledged yet.
    pub missing_users: Vec<String>,
}

fn store_of(core: &Core) -> Result<Arc<dyn Store>, ApiError> {
    core.view()
        .store
        .clone()
        .ok_or_else(|| ApiError::Internal("no store in state 3".into()))
}

/// The pending update, checked against the transparency log (an older pending value put
/// back into etcd, e.g. one that was cancelled, is refused, never acknowledged into force).
async fn pending(core: &Core, store: &Arc<dyn Store>) -> Result<Option<(Pending, u64)>, ApiError> {
    match core
        .view()
        .log
        .read_bound(store, keys::PENDING_UPDATE)
        .await?
    {
        None => Ok(None),
        Some(v) => Ok(Some((
            serde_json::from_slice(&v.value)
                .map_err(|e| ApiError::Internal(format!("stored pending update: {e}")))?,
            v.revision,
        ))),
    }
}

/// What every update step holds: the manifest lock (one change at a time), the running
/// deployment, its store and the authenticated user.
type Begun<'c> = (
    tokio::sync::MutexGuard<'c, ()>,
    Arc<Deployment>,
    Arc<dyn Store>,
    String,
);

/// Takes the manifest lock, then requires a running deployment and a user of its manifest.
async fn begin<'c>(core: &'c Core, peer: Option<&[u8]>) -> Result<Begun<'c>, ApiError> {
    let guard = core.manifest_lock.lock().await;
    let (d, store) = core
        .view()
        .running("manifest updates need a running deployment")?;
    let user = authenticate(&d.manifest, peer)?;
    Ok((guard, d, store, user))
}

/// `POST /api/v2/update`: a package-only update is applied at once; a full manifest starts
/// (or, with enough acknowledgements, completes) a multi-party update.
pub async fn propose(
    core: &Core,
    peer: Option<&[u8]>,
    raw: Vec<u8>,
) -> Result<UpdateResponse, ApiError> {
    let (_guard, d, store, user) = begin(core, peer).await?;
    if quarry_api::manifest::is_package_update(&raw) {
        return package_update(core, &d, &user, &raw).await;
    }
    // Validated now (the same rules as `quarry manifest check`); parsed again when applied.
    quarry_api::manifest::parse(&raw).map_err(ApiError::from)?;
    authorize(&d.manifest, &user, Action::UpdateManifest, &[])?;
    if pending(core, &store).await?.is_some() {
        return Err(ApiError::wrong_state(
            "an update is already pending; acknowledge or cancel it first".into(),
        ));
    }
    let required = update_manifest_users(&d.manifest);
    let threshold = match d.manifest.config.update_threshold {
        0 => required.len(),
        n => n as usize,
    };
    let mut p = Pending {
        raw,
        required,
        threshold,
        acks: BTreeSet::new(),
    };
    p.acks.insert(user.clone());
    advance(core, &d, &store, &p, Step::Proposed, &user, None).await
}

/// `POST /api/v2/update-manifest`: acknowledge the pending update with its exact bytes.
pub async fn acknowledge(
    core: &Core,
    peer: Option<&[u8]>,
    raw: Vec<u8>,
) -> Result<UpdateResponse, ApiError> {
    let (_guard, d, store, user) = begin(core, peer).await?;
    let (mut p, rev) = pending(core, &store)
        .await?
        .ok_or_else(|| ApiError::not_found("no update is pending".into()))?;
    if !p.required.contains(&user) {
        return Err(ApiError::forbidden(format!(
            "user {user} is not among the users who acknowledge updates"
        )));
    }
    if raw != p.raw {
        return Err(ApiError::bad_request(format!(
            "the manifest differs from the pending one (SHA-256 {} vs {}); acknowledge the exact bytes",
            hex::encode(Sha256::digest(&raw)),
            hex::encode(Sha256::digest(&p.raw))
        )));
    }
    if !p.acks.insert(user.clone()) {
        return Err(ApiError::wrong_state(format!(
            "user {user} has already acknowledged this update"
        )));
    }
    advance(core, &d, &store, &p, Step::Acknowledged, &user, Some(rev)).await
}

/// Which step of a multi-party update a user took.
#[derive(Clone, Copy)]
enum Step {
    Proposed,
    Acknowledged,
}

/// Logs `user`'s `step` on the update `p` and applies it when no acknowledgement is missing;
/// otherwise stores `p` as the pending update (`rev`: the pending key's revision, None for a
/// new proposal, so that two proposals or two acknowledgements never both win).
async fn advance(
    core: &Core,
    d: &Arc<Deployment>,
    store: &Arc<dyn Store>,
    p: &Pending,
    step: Step,
    user: &str,
    rev: Option<u64>,
) -> Result<UpdateResponse, ApiError> {
    let (kind, applied) = match step {
        Step::Proposed => ("manifest-update-proposed", "manifest updated"),
        Step::Acknowledged => (
            "manifest-update-acknowledged",
            "all acknowledgements received; manifest updated",
        ),
    };
    let event = serde_json::json!({
        "type": kind,
        "time": crate::clock::now_unix(),
        "manifestSha256": hex::encode(Sha256::digest(&p.raw)),
        "user": user,
    });
    if p.missing() == 0 {
        let recovery_secrets = apply_full(core, d, p, vec![event]).await?;
        return Ok(UpdateResponse {
            message: applied.into(),
            missing_acknowledgments: 0,
            missing_users: vec![],
            recovery_secrets,
        });
    }
    let txn = Txn::new()
        .require(keys::PENDING_UPDATE, rev)
        .put(keys::PENDING_UPDATE, encode(p)?);
    commit(core, store, txn, vec![event]).await?;
    let message = match step {
        Step::Proposed => {
            tracing::info!(user, missing = p.missing(), "manifest update proposed");
            format!(
                "update pending: {} more acknowledgement(s) needed",
                p.missing()
            )
        }
        Step::Acknowledged => format!("{} more acknowledgement(s) needed", p.missing()),
    };
    Ok(UpdateResponse {
        message,
        missing_acknowledgments: p.missing(),
        missing_users: p.missing_users(),
        recovery_secrets: None,
    })
}

/// `POST /api/v2/update-cancel`.
pub async fn cancel(core: &Core, peer: Option<&[u8]>) -> Result<(), ApiError> {
    let (_guard, d, store, user) = begin(core, peer).await?;
    authorize(&d.manifest, &user, Action::UpdateManifest, &[])?;
    let (p, rev) = pending(core, &store)
        .await?
        .ok_or_else(|| ApiError::not_found("no update is pending".into()))?;
    let mut txn = Txn::new().require(keys::PENDING_UPDATE, Some(rev));
    txn.deletes.push(keys::PENDING_UPDATE.into());
    let event = serde_json::json!({
        "type": "manifest-update-cancelled",
        "time": crate::clock::now_unix(),
        "manifestSha256": hex::encode(Sha256::digest(&p.raw)),
        "user": user,
    });
    commit(core, &store, txn, vec![event]).await?;
    tracing::info!(user, "pending manifest update cancelled");
    Ok(())
}

/// `GET /api/v2/update-manifest`.
pub async fn get_pending(core: &Core) -> Result<PendingResponse, ApiError> {
    let (_, store) = core
        .view()
        .running("manifest updates need a running deployment")?;
    let (p, _) = pending(core, &store)
        .await?
        .ok_or_else(|| ApiError::not_found("no update is pending".into()))?;
    Ok(PendingResponse {
        manifest: quarry_api::bytes::b64(&p.raw),
        message: format!(
            "{} user(s) still need to acknowledge the update",
            p.missing()
        ),
        missing_users: p.missing_users(),
    })
}

/// `GET /api/v2/update`: the update-related entries of the transparency log, as JSON lines.
pub fn update_log(core: &Core) -> Vec<String> {
    core.view()
        .log
        .entries(0)
        .into_iter()
        .filter(|e| {
            e.event["type"].as_str().is_some_and(|t| {
                t.starts_with("manifest") || t == "package-update" || t == "secret-set"
            })
        })
        .map(|e| e.event.to_string())
        .collect()
}

async fn package_update(
    core: &Core,
    d: &Arc<Deployment>,
    user: &str,
    raw: &[u8],
) -> Result<UpdateResponse, ApiError> {
    let update = quarry_api::manifest::parse_package_update(raw)
        .map_err(|e| ApiError::bad_request(format!("invalid package update: {e}")))?;
    let names: Vec<String> = update.security_versions.keys().cloned().collect();
    authorize(&d.manifest, user, Action::UpdateSecurityVersion, &names)?;
    let mut next = (**d).clone();
    let mut txn = Txn::new();
    let mut events = Vec::new();
    for (name, svn) in &update.security_versions {
        let pkg =
            next.manifest.packages.get_mut(name).ok_or_else(|| {
                ApiError::bad_request(format!("/Packages/{name}: no such package"))
            })?;
        let current = pkg.security_version.ok_or_else(|| {
            ApiError::bad_request(format!(
                "/Packages/{name}: the package is pinned by UniqueID and has no SecurityVersion; use a full manifest update"
            ))
        })?;
        if *svn < current {
            return Err(ApiError::bad_request(format!(
                "/Packages/{name}/SecurityVersion: {svn} is lower than the current {current}"
            )));
        }
        pkg.security_version = Some(*svn);
        txn = txn.put(
            &format!("{}{name}", keys::SVN_PREFIX),
            svn.to_be_bytes().to_vec(),
        );
        events.push(serde_json::json!({
            "type": "package-update",
            "time": crate::clock::now_unix(),
            "package": name,
            "securityVersion": svn,
            "user": user,
        }));
    }
    let (mesh, reissued) = rotate_mesh(core, &next)?;
    txn = txn.put(keys::MESH, mesh.to_bytes().expose().to_vec());
    for (name, v) in &reissued {
        txn = txn.put(
            &format!("{}{name}", keys::SECRET_PREFIX),
            serde_json::to_vec(v).map_err(|e| ApiError::Internal(e.to_string()))?,
        );
    }
    next.mesh = mesh;
    next.secrets.extend(reissued);
    let store = store_of(core)?;
    commit(core, &store, txn, events).await?;
    core.set_running(next);
    tracing::info!(user, packages = ?names, "SecurityVersion raised; mesh CA rotated");
    Ok(UpdateResponse {
        message: "SecurityVersion updated".into(),
        missing_acknowledgments: 0,
        missing_users: vec![],
        recovery_secrets: None,
    })
}

/// A new mesh CA and the shared certificate secrets re-issued under it.
fn rotate_mesh(
    core: &Core,
    d: &Deployment,
) -> Result<(Arc<CaKey>, BTreeMap<String, SecretValue>), ApiError> {
    let view = core.view();
    let mesh = Arc::new(CaKey::new_mesh(&view.identity.root)?);
    let mut out = BTreeMap::new();
    for (name, spec) in &d.manifest.secrets {
        if spec.shared && !spec.user_defined && secrets::cert_key_kind(spec.kind).is_some() {
            let v = tokio::task::block_in_place(|| secrets::generate(spec, &mesh))?;
            out.insert(name.clone(), v);
        }
    }
    Ok((mesh, out))
}

fn same_definition(a: &SecretSpec, b: &SecretSpec) -> bool {
    a.kind == b.kind
        && a.size == b.size
        && a.shared == b.shared
        && a.user_defined == b.user_defined
        && a.valid_for_days == b.valid_for_days
}

/// Applies a full update: new manifest, new mesh CA, secrets carried over or regenerated as
/// MarbleRun does, previous values kept for `.Previous.Secrets`, the data key re-sealed for
/// the new `SealMode` and re-wrapped when the recovery keys changed (secrets returned once).
async fn apply_full(
    core: &Core,
    d: &Arc<Deployment>,
    p: &Pending,
    mut events: Vec<serde_json::Value>,
) -> Result<Option<BTreeMap<String, String>>, ApiError> {
    let checked = quarry_api::manifest::parse(&p.raw)
        .map_err(|e| ApiError::bad_request(format!("invalid manifest: {e}")))?;
    let manifest = checked.manifest;
    let view = core.view();
    let store = store_of(core)?;
    let mesh = Arc::new(CaKey::new_mesh(&view.identity.root)?);
    let rotate = manifest.config.rotate_root_secret;
    let mut values: BTreeMap<String, SecretValue> = BTreeMap::new();
    for (name, spec) in &manifest.secrets {
        let old = d
            .manifest
            .secrets
            .get(name)
            .filter(|o| same_definition(o, spec))
            .and_then(|_| d.secrets.get(name));
        if spec.user_defined {
            if let Some(v) = old {
                values.insert(name.clone(), v.clone());
            } else if let Some(private) = &spec.initial_private {
                values.insert(
                    name.clone(),
                    SecretValue {
                        kind: spec.kind.as_str().into(),
                        cert: None,
                        public: spec
                            .initial_public
                            .clone()
                            .unwrap_or_else(|| private.clone()),
                        private: private.clone(),
                    },
                );
            }
        } else if spec.shared {
            let keep = old.is_some() && secrets::cert_key_kind(spec.kind).is_none() && !rotate;
            let v = match (keep, old) {
                (true, Some(v)) => v.clone(),
                _ => {
                    let spec = spec.clone();
                    tokio::task::block_in_place(|| secrets::generate(&spec, &mesh))?
                }
            };
            values.insert(name.clone(), v);
        }
    }
    let signature = view.identity.root.sign(&p.raw)?;
    let mut txn = Txn::new()
        .put(keys::MANIFEST, p.raw.clone())
        .put(keys::MANIFEST_SIGNATURE, signature.clone())
        .put(keys::MESH, mesh.to_bytes().expose().to_vec());
    for (k, _) in store.scan(keys::SECRET_PREFIX).await? {
        txn.deletes.push(k);
    }
    for (k, _) in store.scan(keys::PREVIOUS_SECRET_PREFIX).await? {
        txn.deletes.push(k);
    }
    for (k, _) in store.scan(keys::SVN_PREFIX).await? {
        txn.deletes.push(k);
    }
    txn.deletes.push(keys::PENDING_UPDATE.into());
    // Deletes apply after puts in the store: keep the keys we write out of the delete list.
    let mut puts: Vec<(String, Vec<u8>)> = Vec::new();
    for (name, v) in &values {
        puts.push((
            format!("{}{name}", keys::SECRET_PREFIX),
            serde_json::to_vec(v).map_err(|e| ApiError::Internal(e.to_string()))?,
        ));
    }
    for (name, v) in &d.secrets {
        puts.push((
            format!("{}{name}", keys::PREVIOUS_SECRET_PREFIX),
            serde_json::to_vec(v).map_err(|e| ApiError::Internal(e.to_string()))?,
        ));
    }
    let root_secret = if rotate {
        let s = crate::sealing::new_dek().map_err(ApiError::Internal)?;
        puts.push((keys::ROOT_SECRET.into(), s.expose().to_vec()));
        Arc::new(s)
    } else {
        d.root_secret.clone()
    };
    let written: BTreeSet<&String> = puts.iter().map(|(k, _)| k).collect();
    txn.deletes.retain(|k| !written.contains(k));
    txn.puts.extend(puts);
    let fingerprint: [u8; 32] = Sha256::digest(&p.raw).into();
    events.push(serde_json::json!({
        "type": "manifest-update",
        "time": crate::clock::now_unix(),
        "manifestSha256": hex::encode(fingerprint),
        "acknowledgedBy": p.acks,
        "rotateRootSecret": rotate,
    }));
    let sealing =
        crate::recovery::service::reseal_for_manifest(core, &manifest, Some(&d.manifest))?;
    if let Err(e) = commit(core, &store, txn, events).await {
        sealing.undo();
        return Err(e);
    }
    let recovery_secrets = sealing.recovery_secrets.clone();
    core.set_running(Deployment {
        manifest,
        raw: p.raw.clone(),
        fingerprint,
        signature,
        mesh,
        secrets: values,
        previous: d.secrets.clone(),
        root_secret,
    });
    tracing::info!(fingerprint = %hex::encode(fingerprint), "manifest updated; mesh CA rotated");
    Ok(recovery_secrets)
}

async fn commit(
    core: &Core,
    store: &Arc<dyn Store>,
    txn: Txn,
    events: Vec<serde_json::Value>,
) -> Result<(), ApiError> {
    match core.view().log.commit_with_events(store, txn, events).await {
        Ok(_) => Ok(()),
        Err(StoreError::Conflict(k)) => Err(ApiError::wrong_state(format!(
            "the state changed concurrently ({k}); retry"
        ))),
        Err(e) => Err(e.into()),
    }
}

fn encode(p: &Pending) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(p).map_err(|e| ApiError::Internal(e.to_string()))
}
