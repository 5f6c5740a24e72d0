//! The coordinator's state machine (MarbleRun states 1/2/3) and its startup from the data
//! directory: fresh start, reload of sealed state, or Recovery when the state cannot be
//! opened. Never a silent fresh start over existing state.
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use quarry_api::http::State;
use quarry_api::manifest::Manifest;
use quarry_api::Secret;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::pki::CaKey;
use crate::secrets::SecretValue;
use crate::store::file::{sync_dir, FileStore};
use crate::store::seal::{self, SealedKeyFile};
use crate::store::{Store, StoreError, Txn};
use crate::tee::Tee;

/// File holding the sealed data encryption key.
pub const SEALED_KEY_FILE: &str = "sealed-key.json";
/// How long an activation nonce stays valid.
const NONCE_TTL: Duration = Duration::from_secs(120);
/// Outstanding nonces at most (memory bound).
const MAX_NONCES: usize = 100_000;

/// Store keys.
pub mod keys {
    /// Root CA (cert + key).
    pub const ROOT: &str = "pki/root";
    /// Mesh CA (cert + key).
    pub const MESH: &str = "pki/mesh";
    /// 32-byte root secret for HKDF.
    pub const ROOT_SECRET: &str = "root-secret";
    /// The manifest as posted.
    pub const MANIFEST: &str = "manifest/raw";
    /// Root-key signature over the manifest.
    pub const MANIFEST_SIGNATURE: &str = "manifest/signature";
    /// Prefix of stored secret values.
    pub const SECRET_PREFIX: &str = "secret/";
    /// Prefix of activation counters per marble type.
    pub const ACTIVATIONS_PREFIX: &str = "activations/";
}

/// A running deployment: the manifest and everything generated for it.
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
    pub mesh: CaKey,
    /// Shared and user-set secret values by name.
    pub secrets: BTreeMap<String, SecretValue>,
}

/// What the coordinator is doing.
pub enum Phase {
    /// State 1: stored state exists but cannot be opened.
    Recovery {
        /// Why, for status and logs.
        reason: String,
    },
    /// State 2: waiting for a manifest.
    AcceptingManifest,
    /// State 3: running a deployment.
    Running(Arc<Deployment>),
}

impl Phase {
    /// The MarbleRun state code.
    pub fn state(&self) -> State {
        match self {
            Phase::Recovery { .. } => State::Recovery,
            Phase::AcceptingManifest => State::AcceptingManifest,
            Phase::Running(_) => State::AcceptingMarbles,
        }
    }
}

/// Identity material that exists from the first start: root CA and root secret.
pub struct Identity {
    /// Root CA.
    pub root: CaKey,
    /// Root secret for HKDF.
    pub root_secret: Secret,
}

/// Shared coordinator state.
pub struct Core {
    /// The TEE runtime (evidence provider, verifier, sealing).
    pub tee: Tee,
    data_dir: PathBuf,
    inner: RwLock<Inner>,
    nonces: Mutex<HashMap<[u8; 32], ([u8; 32], Instant)>>,
    /// Serialises manifest changes (not activations).
    pub manifest_lock: tokio::sync::Mutex<()>,
    quote_cache: Mutex<Option<(Vec<u8>, Vec<u8>)>>,
}

#[derive(Clone)]
struct Inner {
    phase: Arc<Phase>,
    store: Option<Arc<dyn Store>>,
    identity: Arc<Identity>,
}

/// A consistent view for one request.
pub struct View {
    /// Current phase.
    pub phase: Arc<Phase>,
    /// The store (absent in Recovery).
    pub store: Option<Arc<dyn Store>>,
    /// Root CA and root secret.
    pub identity: Arc<Identity>,
}

impl Core {
    /// Opens the data directory and decides the starting state.
    pub async fn open(data_dir: &Path, tee: Tee) -> anyhow::Result<Core> {
        create_private_dir(data_dir)?;
        let key_path = data_dir.join(SEALED_KEY_FILE);
        let log_present = FileStore::exists(data_dir);
        let key_present = key_path.exists();
        let inner = match (key_present, log_present) {
            (false, false) => fresh(data_dir, &tee).await?,
            (false, true) if log_is_empty(data_dir) => {
                // A crash between creating the log and sealing the key: nothing was ever
                // committed, so starting fresh loses nothing.
                tracing::warn!("removing an empty state log left by an interrupted first start");
                std::fs::remove_file(data_dir.join(crate::store::file::LOG_FILE))?;
                fresh(data_dir, &tee).await?
            }
            (false, true) => recovery(format!(
                "{} is missing but {} holds state: the state cannot be decrypted",
                key_path.display(),
                crate::store::file::LOG_FILE
            ))?,
            (true, false) => recovery(format!(
                "{} exists but the state log {} is missing",
                key_path.display(),
                data_dir.join(crate::store::file::LOG_FILE).display()
            ))?,
            (true, true) => match reload(data_dir, &tee).await {
                Ok(inner) => inner,
                Err(reason) => recovery(reason)?,
            },
        };
        if let Phase::Recovery { reason } = inner.phase.as_ref() {
            tracing::error!(
                %reason,
                "entering RECOVERY (state 1): the stored state cannot be used; nothing was overwritten. \
                 Restore the data directory, or POST a new manifest to start a new deployment (the old files are then moved aside)"
            );
        }
        Ok(Core {
            tee,
            data_dir: data_dir.to_path_buf(),
            inner: RwLock::new(inner),
            nonces: Mutex::new(HashMap::new()),
            manifest_lock: tokio::sync::Mutex::new(()),
            quote_cache: Mutex::new(None),
        })
    }

    /// A consistent snapshot of the state for one request.
    pub fn view(&self) -> View {
        let inner = self
            .inner
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        View {
            phase: inner.phase,
            store: inner.store,
            identity: inner.identity,
        }
    }

    /// The current state code.
    pub fn state(&self) -> State {
        self.view().phase.state()
    }

    /// Switch to a new phase (and store/identity after a reset).
    fn set(&self, phase: Phase, store: Option<Arc<dyn Store>>, identity: Option<Arc<Identity>>) {
        let mut inner = self
            .inner
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        inner.phase = Arc::new(phase);
        if store.is_some() {
            inner.store = store;
        }
        if let Some(id) = identity {
            inner.identity = id;
            if let Ok(mut c) = self.quote_cache.lock() {
                *c = None;
            }
        }
    }

    /// Enter state 3 with `deployment`.
    pub fn set_running(&self, deployment: Deployment) {
        self.set(Phase::Running(Arc::new(deployment)), None, None);
    }

    /// Leaves Recovery for a brand-new deployment identity: the unusable files are moved to
    /// `recovery-<unix time>/` inside the data directory, never deleted.
    pub async fn reset_from_recovery(&self) -> Result<(), ApiError> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let aside = self.data_dir.join(format!("recovery-{stamp}"));
        std::fs::create_dir_all(&aside).map_err(|e| ApiError::Internal(e.to_string()))?;
        for name in [SEALED_KEY_FILE, crate::store::file::LOG_FILE] {
            let p = self.data_dir.join(name);
            if p.exists() {
                std::fs::rename(&p, aside.join(name))
                    .map_err(|e| ApiError::Internal(format!("moving {}: {e}", p.display())))?;
            }
        }
        tracing::warn!(moved_to = %aside.display(), "state from before recovery moved aside; starting a new deployment");
        let inner = fresh(&self.data_dir, &self.tee)
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        self.set(
            Phase::AcceptingManifest,
            inner.store.clone(),
            Some(inner.identity.clone()),
        );
        Ok(())
    }

    /// Issues a single-use activation nonce bound to the TLS key that asked for it.
    pub fn issue_nonce(&self, spki_sha256: [u8; 32]) -> Result<[u8; 32], ApiError> {
        let mut nonce = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
            .map_err(|_| ApiError::Internal("system RNG failed".into()))?;
        let mut map = self
            .nonces
            .lock()
            .map_err(|_| ApiError::Internal("nonce table poisoned".into()))?;
        let now = Instant::now();
        if map.len() >= MAX_NONCES / 2 {
            map.retain(|_, (_, t)| now.duration_since(*t) < NONCE_TTL);
        }
        if map.len() >= MAX_NONCES {
            return Err(ApiError::Unavailable(
                "too many outstanding activation nonces; retry shortly".into(),
            ));
        }
        map.insert(nonce, (spki_sha256, now));
        Ok(nonce)
    }

    /// Consumes a nonce; it must exist, be fresh and belong to the same TLS key.
    pub fn take_nonce(&self, nonce: &[u8; 32], spki_sha256: &[u8; 32]) -> Result<(), ApiError> {
        let mut map = self
            .nonces
            .lock()
            .map_err(|_| ApiError::Internal("nonce table poisoned".into()))?;
        match map.remove(nonce) {
            Some((owner, t)) if owner == *spki_sha256 && t.elapsed() < NONCE_TTL => Ok(()),
            Some((owner, _)) if owner != *spki_sha256 => Err(ApiError::Forbidden(
                "the nonce was issued to another TLS key".into(),
            )),
            Some(_) => Err(ApiError::Forbidden("the nonce has expired".into())),
            None => Err(ApiError::Forbidden(
                "unknown or already used nonce".into(),
            )),
        }
    }

    /// The coordinator's evidence over SHA-256(root DER ‖ nonce), cached without a nonce.
    pub fn quote(&self, nonce: Option<&[u8]>) -> Result<Vec<u8>, ApiError> {
        let view = self.view();
        let root = view.identity.root.cert_der().to_vec();
        if nonce.is_none() {
            if let Ok(c) = self.quote_cache.lock() {
                if let Some((r, q)) = c.as_ref() {
                    if *r == root {
                        return Ok(q.clone());
                    }
                }
            }
        }
        let mut h = Sha256::new();
        h.update(&root);
        if let Some(n) = nonce {
            h.update(n);
        }
        let mut report_data = [0u8; 64];
        report_data[..32].copy_from_slice(&h.finalize());
        let evidence = self
            .tee
            .provider
            .evidence(&report_data)
            .map_err(|e| ApiError::Internal(format!("coordinator evidence: {e}")))?;
        if nonce.is_none() {
            if let Ok(mut c) = self.quote_cache.lock() {
                *c = Some((root, evidence.quote.clone()));
            }
        }
        Ok(evidence.quote)
    }
}

async fn fresh(data_dir: &Path, tee: &Tee) -> anyhow::Result<Inner> {
    let dek = seal::new_dek().map_err(anyhow::Error::msg)?;
    // Order matters: an empty log without a key is recognised as an interrupted first start.
    let store = FileStore::create(data_dir, dek.clone())?;
    let sealed = seal::seal_dek(&dek, &tee.seal_key, tee.sealing, &tee.sealer_id)
        .map_err(anyhow::Error::msg)?;
    write_atomic(
        &data_dir.join(SEALED_KEY_FILE),
        &serde_json::to_vec_pretty(&sealed)?,
    )?;
    let root = CaKey::new_root()?;
    let root_secret = seal::new_dek().map_err(anyhow::Error::msg)?;
    store
        .commit(
            Txn::new()
                .require_absent(keys::ROOT)
                .put(keys::ROOT, root.to_bytes().expose().to_vec())
                .put(keys::ROOT_SECRET, root_secret.expose().to_vec()),
        )
        .await?;
    tracing::info!("new deployment identity created (root CA and root secret sealed)");
    Ok(Inner {
        phase: Arc::new(Phase::AcceptingManifest),
        store: Some(Arc::new(store)),
        identity: Arc::new(Identity { root, root_secret }),
    })
}

async fn reload(data_dir: &Path, tee: &Tee) -> Result<Inner, String> {
    let key_path = data_dir.join(SEALED_KEY_FILE);
    let bytes = std::fs::read(&key_path).map_err(|e| format!("{}: {e}", key_path.display()))?;
    let sealed: SealedKeyFile = serde_json::from_slice(&bytes).map_err(|e| {
        format!(
            "{}: not a sealed key file (line {} column {}): {e}",
            key_path.display(),
            e.line(),
            e.column()
        )
    })?;
    let dek = seal::unseal_dek(&sealed, &tee.seal_key).map_err(|e| {
        format!(
            "cannot unseal the data encryption key in {}: {e}; it was sealed by {} ({}), this coordinator is {} ({})",
            key_path.display(),
            sealed.sealer_id,
            sealed.sealing,
            tee.sealer_id,
            tee.sealing
        )
    })?;
    let started = Instant::now();
    let (store, report) = FileStore::open(data_dir, dek).map_err(|e| e.to_string())?;
    if report.dropped_tail_bytes > 0 {
        tracing::warn!(
            bytes = report.dropped_tail_bytes,
            "dropped a torn record at the end of the state log (a write interrupted by a crash, never acknowledged)"
        );
    }
    let get = |key: &'static str| {
        let store = &store;
        async move {
            store
                .get(key)
                .await
                .map_err(|e: StoreError| e.to_string())?
                .ok_or_else(|| format!("the stored state has no {key}"))
        }
    };
    let root = CaKey::from_bytes(&get(keys::ROOT).await?.value).map_err(|e| e.to_string())?;
    let root_secret = Secret::new(get(keys::ROOT_SECRET).await?.value);
    let identity = Arc::new(Identity { root, root_secret });
    let phase = match store.get(keys::MANIFEST).await.map_err(|e| e.to_string())? {
        None => Phase::AcceptingManifest,
        Some(raw) => Phase::Running(Arc::new(load_deployment(&store, raw.value).await?)),
    };
    tracing::info!(
        records = report.records,
        elapsed_ms = started.elapsed().as_millis() as u64,
        state = phase.state().code(),
        "sealed state reloaded"
    );
    Ok(Inner {
        phase: Arc::new(phase),
        store: Some(Arc::new(store)),
        identity,
    })
}

async fn load_deployment(store: &FileStore, raw: Vec<u8>) -> Result<Deployment, String> {
    let checked = quarry_api::manifest::parse(&raw)
        .map_err(|e| format!("the stored manifest no longer validates: {e}"))?;
    let mesh = store
        .get(keys::MESH)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("the stored state has a manifest but no mesh CA")?;
    let mesh = CaKey::from_bytes(&mesh.value).map_err(|e| e.to_string())?;
    let signature = store
        .get(keys::MANIFEST_SIGNATURE)
        .await
        .map_err(|e| e.to_string())?
        .map(|v| v.value)
        .unwrap_or_default();
    let mut secrets = BTreeMap::new();
    for (key, v) in store
        .scan(keys::SECRET_PREFIX)
        .await
        .map_err(|e| e.to_string())?
    {
        let name = key.trim_start_matches(keys::SECRET_PREFIX).to_string();
        let value: SecretValue = serde_json::from_slice(&v.value)
            .map_err(|e| format!("stored secret {name} does not decode: {e}"))?;
        secrets.insert(name, value);
    }
    Ok(Deployment {
        manifest: checked.manifest,
        fingerprint: Sha256::digest(&raw).into(),
        raw,
        signature,
        mesh,
        secrets,
    })
}

fn recovery(reason: String) -> anyhow::Result<Inner> {
    // TLS still needs a certificate: an ephemeral root that is never persisted.
    Ok(Inner {
        phase: Arc::new(Phase::Recovery { reason }),
        store: None,
        identity: Arc::new(Identity {
            root: CaKey::new_root()?,
            root_secret: Secret::default(),
        }),
    })
}

fn log_is_empty(dir: &Path) -> bool {
    std::fs::metadata(dir.join(crate::store::file::LOG_FILE))
        .map(|m| m.len() <= 24)
        .unwrap_or(false)
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    Ok(())
}

/// Writes a file atomically: temporary file, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))?;
    Ok(())
}
