//! The coordinator's state: the phase machine (Recovery, AcceptingManifest, Running), the
//! store behind it, the deployment identity and transparency log, activation nonces and the
//! coordinator's own evidence. Start-up ([`startup`]) decides the first phase, [`transitions`]
//! the later ones; handlers take
//! a [`View`] per request and never hold a lock across an await.
pub mod backend;
pub mod deployment;
pub mod evidence;
pub mod fs;
pub mod keys;
pub mod nonces;
pub mod sealed_key;
pub mod startup;
mod transitions;
pub mod view;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use quarry_api::http::State;
use quarry_api::manifest::Manifest;
use quarry_api::Secret;

use self::backend::Backend;
pub use self::deployment::Deployment;
use self::evidence::QuoteCache;
use self::nonces::{NonceError, Nonces};
use self::sealed_key::SealedKey;
use self::startup::Opened;
pub use self::startup::RecoveryReason;
pub use self::view::View;
use crate::http::error::ApiError;
use crate::pki::CaKey;
use crate::store::etcd::EtcdConn;
use crate::store::Store;
use crate::tee::Tee;
use crate::translog::TransLog;

/// What the coordinator is doing.
pub enum Phase {
    /// State 1: stored state exists but cannot be opened.
    Recovery {
        /// Why, for status and logs.
        reason: RecoveryReason,
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
    sealed_key: SealedKey,
    inner: RwLock<Inner>,
    nonces: Nonces,
    /// Serialises manifest changes (not activations).
    pub manifest_lock: tokio::sync::Mutex<()>,
    quotes: QuoteCache,
    recovery: Mutex<crate::recovery::Session>,
    /// The etcd cluster when the state is in etcd (replicas); None for the file store.
    cluster: Option<EtcdConn>,
    /// The TCB monitor's memory (last verdicts, last run).
    pub tcb: crate::tcb::Monitor,
}

/// The swappable part: replaced as a whole when the state opens after Recovery.
#[derive(Clone)]
struct Inner {
    phase: Arc<Phase>,
    store: Option<Arc<dyn Store>>,
    identity: Arc<Identity>,
    log: Arc<TransLog>,
    /// The data encryption key (absent in Recovery).
    dek: Option<Arc<Secret>>,
    /// The backend behind `store` (absent in Recovery).
    backend: Option<Arc<dyn Backend>>,
}

impl Inner {
    /// Recovery: TLS still needs a certificate, so an ephemeral root that is never persisted.
    fn recovery(reason: RecoveryReason) -> anyhow::Result<Inner> {
        Ok(Inner {
            phase: Arc::new(Phase::Recovery { reason }),
            store: None,
            identity: Arc::new(Identity {
                root: CaKey::new_root()?,
                root_secret: Secret::default(),
            }),
            log: Arc::new(TransLog::new()),
            dek: None,
            backend: None,
        })
    }

    fn deployment_manifest(&self) -> Option<&Manifest> {
        match self.phase.as_ref() {
            Phase::Running(d) => Some(&d.manifest),
            _ => None,
        }
    }
}

impl Core {
    /// Opens the data directory (file store) and decides the starting state.
    pub async fn open(data_dir: &Path, tee: Tee) -> anyhow::Result<Core> {
        fs::create_private_dir(data_dir)?;
        let opened = startup::open_file(data_dir, &tee).await?;
        Core::start(data_dir, tee, opened, None)
    }

    /// Opens the state in etcd as a replica (see [`startup`]).
    pub async fn open_etcd(
        data_dir: &Path,
        tee: Tee,
        conn: EtcdConn,
        wait: Duration,
    ) -> anyhow::Result<Core> {
        fs::create_private_dir(data_dir)?;
        let opened = startup::open_etcd(data_dir, &tee, &conn, wait).await?;
        Core::start(data_dir, tee, opened, Some(conn))
    }

    fn start(
        data_dir: &Path,
        tee: Tee,
        opened: Opened,
        cluster: Option<EtcdConn>,
    ) -> anyhow::Result<Core> {
        let inner = match opened {
            Opened::Serving(inner) => inner,
            Opened::Recovery(reason) => {
                tracing::error!(
                    code = reason.code(),
                    %reason,
                    "entering RECOVERY (state 1): the stored state cannot be used; nothing was overwritten. \
                     Restore the data directory (or etcd), recover with the RecoveryKeys, or POST a new manifest to start a new deployment"
                );
                Inner::recovery(reason)?
            }
        };
        Ok(Core {
            tee,
            data_dir: data_dir.to_path_buf(),
            sealed_key: SealedKey::in_dir(data_dir),
            inner: RwLock::new(inner),
            nonces: Nonces::default(),
            manifest_lock: tokio::sync::Mutex::new(()),
            quotes: QuoteCache::default(),
            recovery: Mutex::new(crate::recovery::Session::default()),
            cluster,
            tcb: crate::tcb::Monitor::default(),
        })
    }

    fn inner(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The etcd cluster (etcd mode).
    pub fn cluster(&self) -> Option<&EtcdConn> {
        self.cluster.as_ref()
    }

    /// The backend the state is served from (outside Recovery).
    pub fn backend(&self) -> Option<Arc<dyn Backend>> {
        self.inner().backend.clone()
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The sealed key file of the data directory.
    pub fn sealed_key(&self) -> &SealedKey {
        &self.sealed_key
    }

    /// The data encryption key (absent in Recovery).
    pub fn dek(&self) -> Option<Arc<Secret>> {
        self.inner().dek.clone()
    }

    /// The recovery secrets uploaded so far (Recovery only).
    pub fn recovery_session(&self) -> std::sync::MutexGuard<'_, crate::recovery::Session> {
        self.recovery.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A consistent snapshot of the state for one request.
    pub fn view(&self) -> View {
        let inner = self.inner().clone();
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

    /// Issues a single-use activation nonce bound to the TLS key that asked for it.
    pub fn issue_nonce(&self, spki_sha256: [u8; 32]) -> Result<[u8; 32], ApiError> {
        self.nonces.issue(spki_sha256).map_err(|e| match e {
            NonceError::TableFull => ApiError::unavailable(e.to_string()),
            _ => ApiError::Internal(e.to_string()),
        })
    }

    /// Consumes a nonce; it must exist, be fresh and belong to the same TLS key.
    pub fn take_nonce(&self, nonce: &[u8; 32], spki_sha256: &[u8; 32]) -> Result<(), NonceError> {
        self.nonces.take(nonce, spki_sha256)
    }

    /// The statement of the current state (contract §4.5), answering `nonce`.
    pub fn statement(&self, view: &View, nonce: Option<&[u8]>) -> quarry_api::statement::Statement {
        evidence::statement(view, self.tee.simulation, nonce)
    }

    /// The coordinator's evidence over SHA-256(root DER ‖ nonce), cached without a nonce.
    pub fn quote(&self, nonce: Option<&[u8]>) -> Result<quarry_api::Evidence, ApiError> {
        let root = self.view().identity.root.cert_der().to_vec();
        self.quotes
            .quote(&self.tee, &root, nonce)
            .map_err(ApiError::Internal)
    }
}
