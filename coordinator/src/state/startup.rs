//! Start-up: which state this coordinator opens, or why it must enter Recovery (state 1).
//! Every path ends in [`load`], which reads the identity, the transparency log and the
//! deployment from a [`Backend`] and checks them against the rollback evidence.
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quarry_api::Secret;

use super::backend::{serving_store, Backend};
use super::deployment::{self, required};
use super::sealed_key::{mode_for, SealedKey};
use super::{keys, Identity, Inner, Phase};
use crate::pki::CaKey;
use crate::sealing;
use crate::store::etcd::EtcdConn;
use crate::store::file::{FileStore, HeadTracker, LOG_FILE};
use crate::store::head::{self, HeadFile};
use crate::store::{StoreError, Txn};
use crate::tee::Tee;
use crate::translog::{BindingKey, TransLog};

/// Why the stored state cannot be served (the coordinator enters Recovery, state 1).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecoveryReason {
    /// The sealed key is gone but the state log holds state.
    #[error("{0}")]
    KeyMissing(String),
    /// The sealed key exists but the state it opens is gone.
    #[error("{0}")]
    StateMissing(String),
    /// The sealed key does not unseal on this TEE (other machine, measurement or mode).
    #[error("{0}")]
    Unseal(String),
    /// The state is older than the rollback evidence, or a fork of the acknowledged history.
    #[error("{0}")]
    Rollback(String),
    /// The state does not decrypt, decode or lacks a part.
    #[error("{0}")]
    Unreadable(String),
    /// A replica found no way to the cluster's key (no sealed copy, no replica shared it).
    #[error("{0}")]
    NoKey(String),
    /// Another replica's transparency log is a different history (etcd shows a split view).
    #[error("{0}")]
    SplitView(String),
}

impl RecoveryReason {
    /// Every code, in declaration order (`GET /api/v2/status` documents them as an enum).
    pub const CODES: [&'static str; 7] = [
        "key-missing",
        "state-missing",
        "unseal",
        "rollback",
        "unreadable",
        "no-key",
        "split-view",
    ];

    /// A stable code for the reason (logs, `/readyz`, `GET /api/v2/status`).
    pub fn code(&self) -> &'static str {
        match self {
            RecoveryReason::KeyMissing(_) => "key-missing",
            RecoveryReason::StateMissing(_) => "state-missing",
            RecoveryReason::Unseal(_) => "unseal",
            RecoveryReason::Rollback(_) => "rollback",
            RecoveryReason::Unreadable(_) => "unreadable",
            RecoveryReason::NoKey(_) => "no-key",
            RecoveryReason::SplitView(_) => "split-view",
        }
    }
}

/// What start-up found.
pub(super) enum Opened {
    /// The state opened and is served.
    Serving(Inner),
    /// The state exists but cannot be used.
    Recovery(RecoveryReason),
}

impl From<Result<Inner, RecoveryReason>> for Opened {
    fn from(r: Result<Inner, RecoveryReason>) -> Opened {
        match r {
            Ok(inner) => Opened::Serving(inner),
            Err(reason) => Opened::Recovery(reason),
        }
    }
}

/// Opens the file store in `data_dir`: a fresh deployment identity, the sealed state, or a
/// reason for Recovery. An unusable directory (not writable) is an error, not Recovery.
pub(super) async fn open_file(data_dir: &Path, tee: &Tee) -> anyhow::Result<Opened> {
    let sealed = SealedKey::in_dir(data_dir);
    let log = data_dir.join(LOG_FILE);
    Ok(match (sealed.exists(), FileStore::exists(data_dir)) {
        (false, false) => Opened::Serving(fresh(data_dir, tee).await?),
        (false, true) if log_is_empty(&log) => {
            // A crash between creating the log and sealing the key: nothing was ever
            // committed, so starting fresh loses nothing.
            tracing::warn!("removing an empty state log left by an interrupted first start");
            std::fs::remove_file(&log)?;
            Opened::Serving(fresh(data_dir, tee).await?)
        }
        (false, true) => Opened::Recovery(RecoveryReason::KeyMissing(format!(
            "{} is missing but {LOG_FILE} holds state: the state cannot be decrypted",
            sealed.path().display(),
        ))),
        (true, false) => Opened::Recovery(RecoveryReason::StateMissing(format!(
            "{} exists but the state log {} is missing",
            sealed.path().display(),
            log.display()
        ))),
        (true, true) => {
            // An unusable directory is not damaged state: refuse to start rather than
            // enter Recovery, which would invite a new deployment over intact state.
            ensure_writable(data_dir)?;
            reload(data_dir, tee, &sealed).await.into()
        }
    })
}

/// A new deployment identity in a new file store.
pub(super) async fn fresh(data_dir: &Path, tee: &Tee) -> anyhow::Result<Inner> {
    let dek = sealing::new_dek().map_err(anyhow::Error::msg)?;
    // Order matters: an empty log without a key is recognised as an interrupted first start.
    let store: Arc<dyn Backend> = Arc::new(FileStore::create(data_dir, dek.clone())?);
    SealedKey::in_dir(data_dir)
        .write(&dek, tee, mode_for(None), None)
        .map_err(anyhow::Error::msg)?;
    create_identity(store.as_ref()).await?;
    tracing::info!("new deployment identity created (root CA and root secret sealed)");
    load(data_dir, store, dek, false)
        .await
        .map_err(|r| anyhow::anyhow!("the new state does not load: {r}"))
}

async fn reload(data_dir: &Path, tee: &Tee, sealed: &SealedKey) -> Result<Inner, RecoveryReason> {
    let file = sealed
        .read()
        .map_err(RecoveryReason::Unreadable)?
        .ok_or_else(|| {
            RecoveryReason::KeyMissing(format!("{} vanished", sealed.path().display()))
        })?;
    let dek = sealed.unseal(&file, tee).map_err(RecoveryReason::Unseal)?;
    let inner = open_file_with(data_dir, dek).await?;
    normalize(&inner, tee, sealed, Some(&file));
    Ok(inner)
}

/// Opens the state log with `dek`, replays it and checks it against the rollback evidence.
pub(super) async fn open_file_with(data_dir: &Path, dek: Secret) -> Result<Inner, RecoveryReason> {
    let (store, report) = FileStore::open(data_dir, dek.clone())
        .map_err(|e| RecoveryReason::Unreadable(e.to_string()))?;
    if report.dropped_tail_bytes > 0 {
        tracing::warn!(
            bytes = report.dropped_tail_bytes,
            "dropped a torn record at the end of the state log (a write interrupted by a crash, never acknowledged)"
        );
    }
    tracing::info!(records = report.records, "state log replayed");
    load(data_dir, Arc::new(store), dek, true).await
}

/// Opens the state in etcd (a replica, contract §8): obtains the DEK (new cluster, own
/// sealed copy, or an attested running replica; waiting up to `wait` for one to announce
/// itself), checks the state against this replica's rollback evidence, and seals its own
/// copy of the DEK. No way to the DEK, or a rollback, is Recovery.
pub(super) async fn open_etcd(
    data_dir: &Path,
    tee: &Tee,
    conn: &EtcdConn,
    wait: Duration,
) -> anyhow::Result<Opened> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(e) = conn.revision().await {
        if Instant::now() >= deadline {
            anyhow::bail!("etcd is unreachable: {e}");
        }
        tracing::warn!(error = %e, "waiting for etcd");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let own = crate::replica::own_claims(tee).map_err(anyhow::Error::msg)?;
    let sealed = SealedKey::in_dir(data_dir);
    let own_copy = sealed.read_own_copy(tee);
    let obtained = crate::replica::join::obtain_dek(
        conn,
        tee,
        &own,
        own_copy.as_ref().map(|(d, _)| d.clone()),
        wait,
    )
    .await
    .map_err(anyhow::Error::msg)?;
    let (dek, created) = match obtained {
        crate::replica::join::Obtained::None(reason) => {
            return Ok(Opened::Recovery(RecoveryReason::NoKey(reason)))
        }
        crate::replica::join::Obtained::Key(dek, created) => (dek, created),
    };
    let inner = match open_etcd_with(data_dir, conn, dek.clone(), created).await {
        Ok(inner) => inner,
        Err(reason) => return Ok(Opened::Recovery(reason)),
    };
    // The file is only this replica's when it holds this cluster's key; otherwise it is
    // replaced by an own copy (without recovery data, which belongs to the file it replaces).
    let existing = match own_copy {
        Some((Ok(own), Some(file))) if own == dek => Some(file),
        _ => None,
    };
    let manifest = inner.deployment_manifest();
    sealed
        .normalize(&dek, tee, manifest, existing.as_ref())
        .map_err(|e| anyhow::anyhow!("sealing the data encryption key: {e}"))?;
    Ok(Opened::Serving(inner))
}

/// Opens the etcd state with `dek` (`created`: a new cluster, whose identity is made now),
/// checked against this replica's rollback evidence, which is kept current from then on.
pub(super) async fn open_etcd_with(
    data_dir: &Path,
    conn: &EtcdConn,
    dek: Secret,
    created: bool,
) -> Result<Inner, RecoveryReason> {
    let unreadable = |e: StoreError| RecoveryReason::Unreadable(e.to_string());
    let store: Arc<dyn Backend> = Arc::new(conn.store(&dek).map_err(unreadable)?);
    if created {
        match create_identity(store.as_ref()).await {
            Ok(()) => tracing::info!("new cluster: deployment identity created in etcd"),
            Err(IdentityError::Store(StoreError::Conflict(_))) => {}
            Err(e) => return Err(RecoveryReason::Unreadable(e.to_string())),
        }
    }
    load(data_dir, store, dek, true).await
}

#[derive(Debug, thiserror::Error)]
enum IdentityError {
    #[error("creating the root CA: {0}")]
    Pki(String),
    #[error("{0}")]
    Store(#[from] StoreError),
}

/// Creates the deployment identity (root CA, root secret) unless one exists.
async fn create_identity(store: &dyn Backend) -> Result<(), IdentityError> {
    let root = CaKey::new_root().map_err(|e| IdentityError::Pki(e.to_string()))?;
    let root_secret = sealing::new_dek().map_err(IdentityError::Pki)?;
    store
        .commit(
            Txn::new()
                .require_absent(keys::ROOT)
                .put(keys::ROOT, root.to_bytes().expose().to_vec())
                .put(keys::ROOT_SECRET, root_secret.expose().to_vec()),
        )
        .await?;
    Ok(())
}

/// Loads identity, transparency log and deployment from `backend`; with `check`, compares
/// them with the rollback evidence in `data_dir`; then keeps that evidence current.
async fn load(
    data_dir: &Path,
    backend: Arc<dyn Backend>,
    dek: Secret,
    check: bool,
) -> Result<Inner, RecoveryReason> {
    let started = Instant::now();
    let unreadable = RecoveryReason::Unreadable;
    // The replica that created the cluster may still be writing its identity.
    let deadline = Instant::now() + backend.identity_wait();
    let root = loop {
        match backend.get(keys::ROOT).await {
            Ok(Some(v)) => break v.value,
            Ok(None) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Ok(None) => {
                return Err(unreadable(format!(
                    "the stored state has no root CA ({} is missing)",
                    keys::ROOT
                )))
            }
            Err(e) => return Err(unreadable(e.to_string())),
        }
    };
    let root = CaKey::from_bytes(&root).map_err(|e| unreadable(e.to_string()))?;
    let root_secret = required(backend.as_ref(), keys::ROOT_SECRET, "no root secret")
        .await
        .map_err(unreadable)?;
    let identity = Arc::new(Identity {
        root,
        root_secret: Secret::new(root_secret),
    });
    let revision = backend
        .current_revision()
        .await
        .map_err(|e| unreadable(e.to_string()))?;
    let log = Arc::new(TransLog::load(backend.as_ref()).await.map_err(unreadable)?);
    log.set_binding(BindingKey::derive(&dek).map_err(unreadable)?);
    log.check_bound(keys::ROOT_SECRET, Some(identity.root_secret.expose()))
        .map_err(unreadable)?;
    let phase = match backend
        .get(keys::MANIFEST)
        .await
        .map_err(|e| unreadable(e.to_string()))?
    {
        // A store that lost its manifest while the log records one was tampered with (an
        // etcd writer deleting the key): accepting a new manifest under the same identity
        // would be manifest injection.
        None if log.entries(0).iter().any(|e| e.event["type"] == "manifest-set") => {
            return Err(unreadable(format!(
                "the transparency log records a manifest but the store holds none ({} is missing); refusing to accept a new manifest under this identity",
                keys::MANIFEST
            )))
        }
        None => Phase::AcceptingManifest,
        Some(raw) => {
            let d = deployment::load(backend.as_ref(), raw.value, &log)
                .await
                .map_err(unreadable)?;
            log.check_manifest(&d.fingerprint).map_err(unreadable)?;
            Phase::Running(Arc::new(d))
        }
    };
    let (log_size, log_root) = log.head();
    if check {
        backend
            .check_rollback(head::read(data_dir, &dek), revision, log_size, &|n| {
                log.root_at(n)
            })
            .map_err(RecoveryReason::Rollback)?;
    }
    let current = head::Head {
        revision,
        log_size,
        log_root,
    };
    let file = HeadFile::open(data_dir, &dek, &current).map_err(unreadable)?;
    let tracked = log.clone();
    backend.track_head(
        HeadTracker {
            file,
            log: Box::new(move || tracked.head()),
        },
        revision,
    );
    tracing::info!(
        store = backend.kind(),
        revision,
        log_size,
        elapsed_ms = started.elapsed().as_millis() as u64,
        state = phase.state().code(),
        "sealed state loaded"
    );
    Ok(Inner {
        phase: Arc::new(phase),
        store: Some(serving_store(&backend)),
        identity,
        log,
        dek: Some(Arc::new(dek)),
        backend: Some(backend),
    })
}

/// After a reload, re-seals the DEK when the file does not match the state; a failure only
/// warns (the previous file still opens this state).
pub(super) fn normalize(
    inner: &Inner,
    tee: &Tee,
    sealed: &SealedKey,
    existing: Option<&super::sealed_key::SealedKeyFile>,
) {
    let Some(dek) = inner.dek.as_ref() else {
        return;
    };
    if let Err(e) = sealed.normalize(dek, tee, inner.deployment_manifest(), existing) {
        tracing::warn!(error = %e, "could not re-seal the data encryption key; the previous sealed-key.json stays in use");
    }
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
    for name in [LOG_FILE, super::sealed_key::SEALED_KEY_FILE] {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(data_dir.join(name))
            .map_err(|e| refuse(format!("cannot open {name} for writing"), e))?;
    }
    let probe = data_dir.join(".quarry-write-probe");
    std::fs::write(&probe, b"").map_err(|e| refuse("cannot create a file in it".into(), e))?;
    std::fs::remove_file(&probe).map_err(|e| refuse("cannot remove a file from it".into(), e))
}

/// True for a state log holding its header and no record.
fn log_is_empty(log: &Path) -> bool {
    std::fs::metadata(log)
        .map(|m| m.len() <= 24)
        .unwrap_or(false)
}

/// The files of the file store's state, moved aside together when a new deployment replaces it.
pub(super) fn state_files(data_dir: &Path) -> [std::path::PathBuf; 3] {
    [
        data_dir.join(super::sealed_key::SEALED_KEY_FILE),
        data_dir.join(LOG_FILE),
        data_dir.join(head::HEAD_FILE),
    ]
}
