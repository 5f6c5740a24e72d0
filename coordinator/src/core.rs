//! The coordinator's state machine (MarbleRun states 1/2/3) and its startup from the data
//! directory: fresh start, reload of sealed state, or Recovery when the state cannot be
//! opened. Never a silent fresh start over existing state.
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use quarry_api::http::State;
use quarry_api::manifest::{Manifest, SealMode};
use quarry_api::Secret;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::pki::CaKey;
use crate::secrets::SecretValue;
use crate::store::etcd::{EtcdConn, EtcdStore};
use crate::store::file::{sync_dir, FileStore, HeadTracker};
use crate::store::head::{self, HeadFile, HEAD_FILE};
use crate::store::seal::{self, SealedKeyFile};
use crate::store::{Store, StoreError, Txn};
use crate::tee::Tee;
use crate::translog::TransLog;

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
    /// Prefix of secret values from before the last manifest update.
    pub const PREVIOUS_SECRET_PREFIX: &str = "previous-secret/";
    /// Prefix of SecurityVersion overrides from package updates.
    pub const SVN_PREFIX: &str = "package-svn/";
    /// The pending manifest update, if any.
    pub const PENDING_UPDATE: &str = "update/pending";
    /// Prefix of activation counters per marble type.
    pub const ACTIVATIONS_PREFIX: &str = "activations/";
}

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

/// Outstanding activation nonces: nonce → (SHA-256 of the TLS key it was issued to, issue time).
type NonceTable = HashMap<[u8; 32], ([u8; 32], Instant)>;

/// Shared coordinator state.
pub struct Core {
    /// The TEE runtime (evidence provider, verifier, sealing).
    pub tee: Tee,
    data_dir: PathBuf,
    inner: RwLock<Inner>,
    nonces: Mutex<NonceTable>,
    /// Serialises manifest changes (not activations).
    pub manifest_lock: tokio::sync::Mutex<()>,
    quote_cache: Mutex<Option<(Vec<u8>, quarry_api::Evidence)>>,
    recovery: Mutex<crate::recovery::Session>,
    /// The etcd connection when the state is in etcd (replicas); None for the file store.
    etcd: Option<EtcdConn>,
}

#[derive(Clone)]
struct Inner {
    phase: Arc<Phase>,
    store: Option<Arc<dyn Store>>,
    identity: Arc<Identity>,
    log: Arc<TransLog>,
    /// The data encryption key (absent in Recovery).
    dek: Option<Arc<Secret>>,
    /// The etcd store behind `store` (etcd mode, outside Recovery).
    etcd: Option<Arc<EtcdStore>>,
}

/// A consistent view for one request.
pub struct View {
    /// Current phase.
    pub phase: Arc<Phase>,
    /// The store (absent in Recovery).
    pub store: Option<Arc<dyn Store>>,
    /// Root CA and root secret.
    pub identity: Arc<Identity>,
    /// The transparency log.
    pub log: Arc<TransLog>,
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
            (true, true) => {
                // An unusable directory is not damaged state: refuse to start rather than
                // enter Recovery, which would invite a new deployment over intact state.
                ensure_writable(data_dir)?;
                match reload(data_dir, &tee).await {
                    Ok(inner) => inner,
                    Err(reason) => recovery(reason)?,
                }
            }
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
            recovery: Mutex::new(crate::recovery::Session::default()),
            etcd: None,
        })
    }

    /// Opens the state in etcd (a replica, contract §8): obtains the DEK (new cluster, own
    /// sealed copy, or an attested running replica; waiting up to `wait` for one to announce
    /// itself), checks the state against this replica's rollback evidence, and seals its own
    /// copy of the DEK. No way to the DEK, or a rollback, is Recovery.
    pub async fn open_etcd(
        data_dir: &Path,
        tee: Tee,
        conn: EtcdConn,
        wait: Duration,
    ) -> anyhow::Result<Core> {
        create_private_dir(data_dir)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match conn.revision().await {
                Ok(_) => break,
                Err(e) if Instant::now() < deadline => {
                    tracing::warn!(error = %e, "waiting for etcd");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => anyhow::bail!("etcd is unreachable: {e}"),
            }
        }
        let own = crate::ha::own_claims(&tee).map_err(anyhow::Error::msg)?;
        let sealed = crate::ha::read_sealed(data_dir, &tee);
        let obtained = crate::ha::obtain_dek(
            &conn,
            &tee,
            &own,
            sealed.as_ref().map(|(d, _)| d.clone()),
            wait,
        )
        .await
        .map_err(anyhow::Error::msg)?;
        let inner = match obtained {
            crate::ha::Obtained::None(reason) => recovery(reason)?,
            crate::ha::Obtained::Key(dek, created) => {
                match open_etcd_state(data_dir, &conn, dek.clone(), created).await {
                    Ok(inner) => {
                        match sealed {
                            Some((Ok(own_copy), Some(file))) if own_copy == dek => {
                                normalize_sealing(data_dir, &tee, &inner, &file)
                            }
                            _ => seal_own_copy(data_dir, &tee, &inner).map_err(|e| {
                                anyhow::anyhow!("sealing the data encryption key: {e}")
                            })?,
                        }
                        inner
                    }
                    Err(reason) => recovery(reason)?,
                }
            }
        };
        if let Phase::Recovery { reason } = inner.phase.as_ref() {
            tracing::error!(
                %reason,
                "entering RECOVERY (state 1): this replica cannot serve the etcd state; nothing was overwritten"
            );
        }
        Ok(Core {
            tee,
            data_dir: data_dir.to_path_buf(),
            inner: RwLock::new(inner),
            nonces: Mutex::new(HashMap::new()),
            manifest_lock: tokio::sync::Mutex::new(()),
            quote_cache: Mutex::new(None),
            recovery: Mutex::new(crate::recovery::Session::default()),
            etcd: Some(conn),
        })
    }

    /// The etcd connection (etcd mode).
    pub fn etcd_conn(&self) -> Option<&EtcdConn> {
        self.etcd.as_ref()
    }

    /// The etcd store (etcd mode, outside Recovery).
    pub fn etcd_store(&self) -> Option<Arc<EtcdStore>> {
        self.inner
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .etcd
            .clone()
    }

    /// Brings the in-memory state up to the store after other replicas changed it: the
    /// transparency log (`log`) and the deployment (`deployment`). Returns false when the
    /// log could not catch up now (a commit of this replica was in flight): call again.
    pub async fn refresh(&self, log: bool, deployment: bool) -> Result<bool, StoreError> {
        let view = self.view();
        let Some(store) = view.store.clone() else {
            return Ok(true);
        };
        let mut done = true;
        if log {
            done = view.log.catch_up(&store).await?;
        }
        if deployment {
            let _guard = self.manifest_lock.lock().await;
            if let Some(raw) = store.get(keys::MANIFEST).await? {
                let d = load_deployment(store.as_ref(), raw.value)
                    .await
                    .map_err(StoreError::Corrupt)?;
                match self.view().phase.as_ref() {
                    Phase::Recovery { .. } => {}
                    Phase::Running(old) if old.fingerprint == d.fingerprint => {
                        // Secrets, SVN overrides, the mesh CA or the root secret changed.
                        self.set_running(d);
                    }
                    _ => {
                        tracing::info!(
                            fingerprint = %hex::encode(d.fingerprint),
                            "manifest set or updated by another replica; reloaded from etcd"
                        );
                        self.set_running(d);
                    }
                }
            }
        }
        Ok(done)
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The data encryption key (absent in Recovery).
    pub fn dek(&self) -> Option<Arc<Secret>> {
        self.inner
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .dek
            .clone()
    }

    /// The recovery secrets uploaded so far (Recovery only).
    pub fn recovery_session(&self) -> std::sync::MutexGuard<'_, crate::recovery::Session> {
        self.recovery
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Leaves Recovery with a DEK recovered from the recovery secrets: opens the state with
    /// it (all the checks of a normal start, rollback evidence included), checks the
    /// manifest's recovery keys against `data`, re-seals the DEK for this TEE and serves.
    pub async fn install_recovered(
        &self,
        dek: Secret,
        data: crate::recovery::RecoveryData,
    ) -> Result<(), String> {
        let inner = match &self.etcd {
            Some(conn) => open_etcd_state(&self.data_dir, conn, dek.clone(), false).await?,
            None => open_state(&self.data_dir, dek.clone()).await?,
        };
        let mode = match inner.phase.as_ref() {
            Phase::Running(d) => {
                data.matches_manifest(&d.manifest)?;
                d.manifest.config.seal_mode
            }
            _ => SealMode::ProductKey,
        };
        let file = seal::seal_dek(
            &dek,
            &self.tee.seal_keys,
            self.tee.sealing,
            mode,
            Some(data),
        )?;
        let bytes = serde_json::to_vec_pretty(&file).map_err(|e| e.to_string())?;
        write_atomic(&self.data_dir.join(SEALED_KEY_FILE), &bytes).map_err(|e| e.to_string())?;
        tracing::warn!(
            state = inner.phase.state().code(),
            seal_mode = mode.as_str(),
            "RECOVERED: the state was opened with the recovery secrets and re-sealed for this TEE"
        );
        *self
            .inner
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = inner;
        if let Ok(mut c) = self.quote_cache.lock() {
            *c = None;
        }
        Ok(())
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
            log: inner.log,
        }
    }

    /// The current state code.
    pub fn state(&self) -> State {
        self.view().phase.state()
    }

    /// Switch to a new phase (and store/identity after a reset).
    fn set(&self, phase: Phase, reset: Option<Inner>) {
        let mut inner = self
            .inner
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        inner.phase = Arc::new(phase);
        let identity = reset.map(|r| {
            inner.store = r.store;
            inner.log = r.log;
            inner.dek = r.dek;
            inner.etcd = r.etcd;
            r.identity
        });
        if let Some(id) = identity {
            inner.identity = id;
            if let Ok(mut c) = self.quote_cache.lock() {
                *c = None;
            }
        }
    }

    /// Enter state 3 with `deployment`.
    pub fn set_running(&self, deployment: Deployment) {
        self.set(Phase::Running(Arc::new(deployment)), None);
    }

    /// Leaves Recovery for a brand-new deployment identity: the unusable files are moved to
    /// `recovery-<unix time>/` inside the data directory, never deleted.
    pub async fn reset_from_recovery(&self) -> Result<(), ApiError> {
        if self.etcd.is_some() {
            return Err(ApiError::WrongState(
                "this replica is in recovery and its state is in etcd: a replica never discards the shared state. Start a replica that holds the key, recover with the RecoveryKeys, or clear the etcd prefix deliberately to start a new deployment".into(),
            ));
        }
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let aside = self.data_dir.join(format!("recovery-{stamp}"));
        std::fs::create_dir_all(&aside).map_err(|e| ApiError::Internal(e.to_string()))?;
        for name in [SEALED_KEY_FILE, crate::store::file::LOG_FILE, HEAD_FILE] {
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
        self.set(Phase::AcceptingManifest, Some(inner));
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
            None => Err(ApiError::Forbidden("unknown or already used nonce".into())),
        }
    }

    /// The statement of the current state (contract §4.5), answering `nonce`.
    pub fn statement(&self, view: &View, nonce: Option<&[u8]>) -> quarry_api::statement::Statement {
        let (log_size, log_root) = view.log.head();
        let (mesh, manifest) = match view.phase.as_ref() {
            Phase::Running(d) => (
                Some(hex::encode(Sha256::digest(d.mesh.cert_der()))),
                Some(hex::encode(d.fingerprint)),
            ),
            _ => (None, None),
        };
        quarry_api::statement::Statement {
            version: quarry_api::statement::STATEMENT_VERSION,
            root_ca_sha256: hex::encode(Sha256::digest(view.identity.root.cert_der())),
            mesh_ca_sha256: mesh,
            manifest_sha256: manifest,
            log_size,
            log_root: hex::encode(log_root),
            simulation: self.tee.simulation,
            nonce: nonce.map(hex::encode),
        }
    }

    /// The coordinator's evidence over SHA-256(root DER ‖ nonce), cached without a nonce.
    pub fn quote(&self, nonce: Option<&[u8]>) -> Result<quarry_api::Evidence, ApiError> {
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
                *c = Some((root, evidence.clone()));
            }
        }
        Ok(evidence)
    }
}

async fn fresh(data_dir: &Path, tee: &Tee) -> anyhow::Result<Inner> {
    let dek = seal::new_dek().map_err(anyhow::Error::msg)?;
    // Order matters: an empty log without a key is recognised as an interrupted first start.
    let store = FileStore::create(data_dir, dek.clone())?;
    let log = Arc::new(TransLog::new());
    track_head(data_dir, &dek, &store, &log, None).map_err(anyhow::Error::msg)?;
    // Before a manifest chooses, the DEK is sealed with the ProductKey (MarbleRun's default).
    let sealed = seal::seal_dek(
        &dek,
        &tee.seal_keys,
        tee.sealing,
        SealMode::ProductKey,
        None,
    )
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
        store: Some(crate::metrics::timed_store(store)),
        identity: Arc::new(Identity { root, root_secret }),
        log,
        dek: Some(Arc::new(dek)),
        etcd: None,
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
    let mode = sealed
        .mode()
        .map_err(|e| format!("{}: {e}", key_path.display()))?;
    let dek = seal::unseal_dek(&sealed, &tee.seal_keys).map_err(|e| {
        format!(
            "cannot unseal the data encryption key in {}: {e}; it was sealed by {} ({}, {}), this coordinator is {} ({}); recover with the RecoveryKeys (POST /api/v2/recover) or set a new manifest",
            key_path.display(),
            sealed.sealer_id,
            sealed.sealing,
            mode.as_str(),
            tee.seal_keys.sealer_id(mode),
            tee.sealing
        )
    })?;
    let inner = open_state(data_dir, dek).await?;
    normalize_sealing(data_dir, tee, &inner, &sealed);
    Ok(inner)
}

/// Opens the state log with `dek`, replays it and checks it against the rollback evidence.
async fn open_state(data_dir: &Path, dek: Secret) -> Result<Inner, String> {
    let started = Instant::now();
    let (store, report) = FileStore::open(data_dir, dek.clone()).map_err(|e| e.to_string())?;
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
    let log = Arc::new(TransLog::load(&store).await?);
    let phase = match store.get(keys::MANIFEST).await.map_err(|e| e.to_string())? {
        None => Phase::AcceptingManifest,
        Some(raw) => Phase::Running(Arc::new(load_deployment(&store, raw.value).await?)),
    };
    track_head(
        data_dir,
        &dek,
        &store,
        &log,
        Some(head::read(data_dir, &dek)?),
    )?;
    tracing::info!(
        records = report.records,
        revision = store.revision(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        state = phase.state().code(),
        "sealed state reloaded"
    );
    Ok(Inner {
        phase: Arc::new(phase),
        store: Some(crate::metrics::timed_store(store)),
        identity,
        log,
        dek: Some(Arc::new(dek)),
        etcd: None,
    })
}

/// Refuses a data directory whose state files cannot be opened for writing, or in which no
/// file can be created (read-only mount, wrong owner or mode), naming the OS error. Opening
/// for writing writes nothing; the probe file is removed at once.
fn ensure_writable(data_dir: &Path) -> anyhow::Result<()> {
    let refuse = |what: String, e: std::io::Error| {
        anyhow::anyhow!(
            "the data directory {} is not writable: {what}: {e}; fix its mount or permissions and restart (the stored state was not touched)",
            data_dir.display()
        )
    };
    for name in [crate::store::file::LOG_FILE, SEALED_KEY_FILE] {
        let path = data_dir.join(name);
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| refuse(format!("cannot open {name} for writing"), e))?;
    }
    let probe = data_dir.join(".quarry-write-probe");
    std::fs::write(&probe, b"").map_err(|e| refuse("cannot create a file in it".into(), e))?;
    std::fs::remove_file(&probe).map_err(|e| refuse("cannot remove a file from it".into(), e))
}

/// Checks the opened state against the last acknowledged head (`found`: None = fresh
/// store, Some(None) = no head file), then keeps `state.head` current from now on.
fn track_head(
    data_dir: &Path,
    dek: &Secret,
    store: &FileStore,
    log: &Arc<TransLog>,
    found: Option<Option<head::Head>>,
) -> Result<(), String> {
    let (log_size, log_root) = log.head();
    match found {
        Some(Some(h)) => head::check(&h, store.revision(), log_size, |n| log.root_at(n))?,
        Some(None) => tracing::warn!(
            "no {HEAD_FILE} in the data directory: no rollback evidence to check this state against (recording it from now on)"
        ),
        None => {}
    }
    let file = HeadFile::open(
        data_dir,
        dek,
        &head::Head {
            revision: store.revision(),
            log_size,
            log_root,
        },
    )?;
    let log = log.clone();
    store.track_head(HeadTracker {
        file,
        log: Box::new(move || log.head()),
    });
    Ok(())
}

/// After a reload, re-seals the DEK when the file does not match what the state asks for:
/// the manifest's SealMode (ProductKey before a manifest), this TEE, the current format.
/// Recovery data without a manifest is from a manifest whose commit never happened: dropped.
fn normalize_sealing(data_dir: &Path, tee: &Tee, inner: &Inner, file: &SealedKeyFile) {
    let Some(dek) = inner.dek.as_ref() else {
        return;
    };
    let (mode, manifest) = match inner.phase.as_ref() {
        Phase::Running(d) => (d.manifest.config.seal_mode, Some(&d.manifest)),
        _ => (SealMode::ProductKey, None),
    };
    let recovery = manifest.and(file.recovery.clone());
    if let (Some(data), Some(m)) = (&recovery, manifest) {
        if let Err(e) = data.matches_manifest(m) {
            tracing::warn!(error = %e, "recovery data does not match the manifest; recovery with these secrets will be refused");
        }
    }
    if manifest.is_some_and(|m| !m.recovery_keys.is_empty()) && recovery.is_none() {
        tracing::warn!("the manifest has RecoveryKeys but sealed-key.json has no recovery data (a crash during manifest set?): this state cannot be recovered with recovery secrets");
    }
    if file.version == 2
        && file.mode().ok() == Some(mode)
        && file.sealing == tee.sealing
        && file.sealer_id == tee.seal_keys.sealer_id(mode)
        && file.recovery == recovery
    {
        return;
    }
    let written = seal::seal_dek(dek, &tee.seal_keys, tee.sealing, mode, recovery)
        .and_then(|f| serde_json::to_vec_pretty(&f).map_err(|e| e.to_string()))
        .and_then(|b| write_atomic(&data_dir.join(SEALED_KEY_FILE), &b).map_err(|e| e.to_string()));
    match written {
        Ok(()) => tracing::info!(seal_mode = mode.as_str(), "data encryption key re-sealed"),
        Err(e) => {
            tracing::warn!(error = %e, "could not re-seal the data encryption key; the previous sealed-key.json stays in use")
        }
    }
}

async fn load_deployment(store: &dyn Store, raw: Vec<u8>) -> Result<Deployment, String> {
    let checked = quarry_api::manifest::parse(&raw)
        .map_err(|e| format!("the stored manifest no longer validates: {e}"))?;
    let mesh = store
        .get(keys::MESH)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("the stored state has a manifest but no mesh CA")?;
    let mesh = Arc::new(CaKey::from_bytes(&mesh.value).map_err(|e| e.to_string())?);
    let signature = store
        .get(keys::MANIFEST_SIGNATURE)
        .await
        .map_err(|e| e.to_string())?
        .map(|v| v.value)
        .unwrap_or_default();
    let secrets = load_secrets(store, keys::SECRET_PREFIX).await?;
    let previous = load_secrets(store, keys::PREVIOUS_SECRET_PREFIX).await?;
    let root_secret = store
        .get(keys::ROOT_SECRET)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("the stored state has no root secret")?;
    let mut manifest = checked.manifest;
    crate::update::apply_svn_overrides(store, &mut manifest).await?;
    Ok(Deployment {
        manifest,
        fingerprint: Sha256::digest(&raw).into(),
        raw,
        signature,
        mesh,
        secrets,
        previous,
        root_secret: Arc::new(Secret::new(root_secret.value)),
    })
}

async fn load_secrets(
    store: &dyn Store,
    prefix: &str,
) -> Result<BTreeMap<String, SecretValue>, String> {
    let mut out = BTreeMap::new();
    for (key, v) in store.scan(prefix).await.map_err(|e| e.to_string())? {
        let name = key.trim_start_matches(prefix).to_string();
        let value: SecretValue = serde_json::from_slice(&v.value)
            .map_err(|e| format!("stored secret {name} does not decode: {e}"))?;
        out.insert(name, value);
    }
    Ok(out)
}

/// Opens the etcd state with `dek` (`created`: a new cluster, whose identity is made now),
/// checked against this replica's rollback evidence, which is kept current from then on.
async fn open_etcd_state(
    data_dir: &Path,
    conn: &EtcdConn,
    dek: Secret,
    created: bool,
) -> Result<Inner, String> {
    let started = Instant::now();
    let store = Arc::new(conn.store(&dek).map_err(|e| e.to_string())?);
    if created {
        let root = CaKey::new_root().map_err(|e| e.to_string())?;
        let root_secret = seal::new_dek()?;
        match store
            .commit(
                Txn::new()
                    .require_absent(keys::ROOT)
                    .put(keys::ROOT, root.to_bytes().expose().to_vec())
                    .put(keys::ROOT_SECRET, root_secret.expose().to_vec()),
            )
            .await
        {
            Ok(_) => tracing::info!("new cluster: deployment identity created in etcd"),
            Err(StoreError::Conflict(_)) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    // The replica that created the cluster may still be writing its identity.
    let deadline = Instant::now() + Duration::from_secs(30);
    let root = loop {
        match store.get(keys::ROOT).await.map_err(|e| e.to_string())? {
            Some(v) => break v,
            None if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            None => return Err("etcd has a Quarry cluster marker but no root CA".into()),
        }
    };
    let root = CaKey::from_bytes(&root.value).map_err(|e| e.to_string())?;
    let root_secret = store
        .get(keys::ROOT_SECRET)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("the etcd state has no root secret")?;
    let identity = Arc::new(Identity {
        root,
        root_secret: Secret::new(root_secret.value),
    });
    let revision = conn.revision().await.map_err(|e| e.to_string())?;
    let log = Arc::new(TransLog::load(store.as_ref()).await?);
    let phase = match store.get(keys::MANIFEST).await.map_err(|e| e.to_string())? {
        None => Phase::AcceptingManifest,
        Some(raw) => Phase::Running(Arc::new(load_deployment(store.as_ref(), raw.value).await?)),
    };
    let (log_size, log_root) = log.head();
    match head::read(data_dir, &dek) {
        Ok(Some(h)) => {
            crate::store::etcd::check_head(&h, revision, log_size, |n| log.root_at(n))?
        }
        Ok(None) => tracing::warn!(
            "no {HEAD_FILE} in the data directory: no rollback evidence to check the etcd state against (recording it from now on)"
        ),
        Err(e) => tracing::warn!(error = %e, "the rollback evidence in the data directory is not this cluster's; recording it anew"),
    }
    let file = HeadFile::open(
        data_dir,
        &dek,
        &head::Head {
            revision,
            log_size,
            log_root,
        },
    )?;
    let tracked = log.clone();
    store.track_head(
        HeadTracker {
            file,
            log: Box::new(move || tracked.head()),
        },
        revision,
    );
    tracing::info!(
        revision,
        log_size,
        elapsed_ms = started.elapsed().as_millis() as u64,
        state = phase.state().code(),
        "etcd state loaded"
    );
    Ok(Inner {
        phase: Arc::new(phase),
        store: Some(crate::metrics::timed_store(store.clone())),
        identity,
        log,
        dek: Some(Arc::new(dek)),
        etcd: Some(store),
    })
}

/// Seals this replica's own copy of the DEK (the manifest's SealMode, ProductKey before one).
fn seal_own_copy(data_dir: &Path, tee: &Tee, inner: &Inner) -> Result<(), String> {
    let Some(dek) = inner.dek.as_ref() else {
        return Ok(());
    };
    let mode = match inner.phase.as_ref() {
        Phase::Running(d) => d.manifest.config.seal_mode,
        _ => SealMode::ProductKey,
    };
    let file = seal::seal_dek(dek, &tee.seal_keys, tee.sealing, mode, None)?;
    let bytes = serde_json::to_vec_pretty(&file).map_err(|e| e.to_string())?;
    write_atomic(&data_dir.join(SEALED_KEY_FILE), &bytes).map_err(|e| e.to_string())?;
    tracing::info!(
        seal_mode = mode.as_str(),
        "this replica sealed its own copy of the data encryption key"
    );
    Ok(())
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
        log: Arc::new(TransLog::new()),
        dek: None,
        etcd: None,
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
