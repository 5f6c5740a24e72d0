//! Phase transitions of a running coordinator: catching up with other replicas' writes,
//! leaving Recovery (with the recovery secrets, or for a new deployment), stopping serving,
//! and entering Running. Start-up's choice of the first phase is [`super::startup`].
use std::sync::Arc;

use quarry_api::Secret;

use super::{deployment, sealed_key};
use super::{fs, keys, startup, Core, Deployment, Inner, Phase, RecoveryReason};
use crate::http::error::ApiError;
use crate::store::StoreError;
use crate::translog::TransLog;

impl Core {
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
            if let Some(d) = stored_deployment(&store, &view.log).await? {
                match self.view().phase.as_ref() {
                    Phase::Recovery { .. } => {}
                    // Secrets, SVN overrides, the mesh CA or the root secret changed.
                    Phase::Running(old) if old.fingerprint == d.fingerprint => self.set_running(d),
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

    /// Leaves Recovery with a DEK recovered from the recovery secrets: opens the state with
    /// it (all the checks of a normal start, rollback evidence included), checks the
    /// manifest's recovery keys against `data`, re-seals the DEK for this TEE and serves.
    pub async fn install_recovered(
        &self,
        dek: Secret,
        data: crate::recovery::RecoveryData,
    ) -> Result<(), String> {
        let inner = match &self.cluster {
            Some(conn) => startup::open_etcd_with(&self.data_dir, conn, dek.clone(), false).await,
            None => startup::open_file_with(&self.data_dir, dek.clone()).await,
        }
        .map_err(|r| r.to_string())?;
        let manifest = inner.deployment_manifest();
        if let Some(m) = manifest {
            data.matches_manifest(m)?;
        }
        let mode = sealed_key::mode_for(manifest);
        self.sealed_key.write(&dek, &self.tee, mode, Some(data))?;
        tracing::warn!(
            state = inner.phase.state().code(),
            seal_mode = mode.as_str(),
            "RECOVERED: the state was opened with the recovery secrets and re-sealed for this TEE"
        );
        self.replace(inner);
        Ok(())
    }

    /// Stops serving the loaded state: Recovery with `reason`. The store and the data
    /// directory are left as they are; a restart opens them again.
    pub fn stop_serving(&self, reason: RecoveryReason) {
        match Inner::recovery(reason) {
            Ok(inner) => self.replace(inner),
            Err(e) => tracing::error!(error = %e, "could not enter Recovery"),
        }
    }

    /// Replaces the whole state (a new identity: the cached evidence goes with it).
    fn replace(&self, inner: Inner) {
        *self.inner.write().unwrap_or_else(|p| p.into_inner()) = inner;
        self.quotes.clear();
    }

    /// Enter state 3 with `deployment`.
    pub fn set_running(&self, deployment: Deployment) {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        inner.phase = Arc::new(Phase::Running(Arc::new(deployment)));
    }

    /// Leaves Recovery for a brand-new deployment identity: the unusable files are moved to
    /// `recovery-<unix time>/` inside the data directory, never deleted.
    pub async fn reset_from_recovery(&self) -> Result<(), ApiError> {
        if self.cluster.is_some() {
            return Err(ApiError::wrong_state(
                "this replica is in recovery and its state is in etcd: a replica never discards the shared state. Start a replica that holds the key, recover with the RecoveryKeys, or clear the etcd prefix deliberately to start a new deployment".into(),
            ));
        }
        let stamp = crate::clock::now_unix();
        let aside = self.data_dir.join(format!("recovery-{stamp}"));
        std::fs::create_dir_all(&aside).map_err(|e| ApiError::Internal(e.to_string()))?;
        for path in startup::state_files(&self.data_dir) {
            fs::move_into(&path, &aside)
                .map_err(|e| ApiError::Internal(format!("moving {}: {e}", path.display())))?;
        }
        tracing::warn!(moved_to = %aside.display(), "state from before recovery moved aside; starting a new deployment");
        let inner = startup::fresh(&self.data_dir, &self.tee)
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        self.replace(inner);
        Ok(())
    }
}

/// Reads the deployment the store holds now, checked against the log (None: no manifest).
/// A value and its log record commit in one transaction, so a mismatch is explained once by
/// a log behind the store (another replica's commit not seen yet) or a read racing a newer
/// commit: the log catches up and everything is read again. One that persists was put back.
async fn stored_deployment(
    store: &Arc<dyn crate::store::Store>,
    log: &TransLog,
) -> Result<Option<Deployment>, StoreError> {
    const ATTEMPTS: usize = 4;
    let mut last = String::new();
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            // The committer may hold the log for a moment; it catches up itself then.
            if !log.catch_up(store).await? {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
        let Some(raw) = store.get(keys::MANIFEST).await? else {
            return Ok(None);
        };
        let loaded = match deployment::load(store.as_ref(), raw.value, log).await {
            Ok(d) => log.check_manifest(&d.fingerprint).map(|()| d),
            Err(e) => Err(e),
        };
        match loaded {
            Ok(d) => return Ok(Some(d)),
            Err(e) => last = e,
        }
    }
    Err(StoreError::Corrupt(last))
}
