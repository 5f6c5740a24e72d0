//! The store as start-up sees it: reads and commits ([`Store`]) plus where its revision
//! stands and how its rollback evidence is checked and kept current. Implemented by the
//! sealed file log and by etcd; the core loads either through this trait alone.
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use quarry_api::merkle::Hash;

use crate::store::etcd::EtcdStore;
use crate::store::file::{FileStore, HeadTracker};
use crate::store::head::{self, Head};
use crate::store::{Store, StoreError};

/// A comparison of the loaded state (head, revision, log size, log root at a size) with
/// the rollback evidence.
pub type HeadCheck = fn(&Head, u64, u64, &dyn Fn(u64) -> Option<Hash>) -> Result<(), String>;

/// A state store the coordinator can open, check against rollback evidence and serve.
#[async_trait]
pub trait Backend: Store {
    /// Name for logs (`file`, `etcd`).
    fn kind(&self) -> &'static str;
    /// The revision the loaded state is at (read before the transparency log is loaded).
    async fn current_revision(&self) -> Result<u64, StoreError>;
    /// How long the root CA may take to appear (another replica creating the cluster).
    fn identity_wait(&self) -> Duration {
        Duration::ZERO
    }
    /// How the loaded state (`revision`, log size, `root_at`) is compared with the last head
    /// this coordinator acknowledged; its message names the store and what to do.
    fn head_check(&self) -> HeadCheck;
    /// Whether rollback evidence that does not open with this key refuses the state (the
    /// file store: it is written with the log) or is replaced (a replica of another cluster).
    fn unreadable_head_refuses(&self) -> bool;
    /// Checks the loaded state against the rollback evidence `found` in the data directory
    /// (None: there is none yet, recorded from now on).
    fn check_rollback(
        &self,
        found: Result<Option<Head>, String>,
        revision: u64,
        log_size: u64,
        root_at: &dyn Fn(u64) -> Option<Hash>,
    ) -> Result<(), String> {
        match found {
            Ok(Some(h)) => self.head_check()(&h, revision, log_size, root_at),
            Ok(None) => {
                tracing::warn!(
                    store = self.kind(),
                    "no {} in the data directory: no rollback evidence to check the state against (recording it from now on)",
                    head::HEAD_FILE
                );
                Ok(())
            }
            Err(e) if self.unreadable_head_refuses() => Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "the rollback evidence in the data directory is not this cluster's; recording it anew");
                Ok(())
            }
        }
    }
    /// Keeps the rollback evidence current after every commit from `revision` on.
    fn track_head(&self, tracker: HeadTracker, revision: u64);
    /// The last revision recorded as seen (0 before tracking starts).
    fn seen_revision(&self) -> u64 {
        0
    }
    /// Records a revision another replica committed, seen through a watch.
    fn note_revision(&self, _revision: u64) {}
}

#[async_trait]
impl Backend for FileStore {
    fn kind(&self) -> &'static str {
        "file"
    }

    async fn current_revision(&self) -> Result<u64, StoreError> {
        Ok(self.revision())
    }

    fn head_check(&self) -> HeadCheck {
        |h, revision, log_size, root_at| head::check(h, revision, log_size, root_at)
    }

    // The head file is written with the log: unreadable evidence is not a fresh start.
    fn unreadable_head_refuses(&self) -> bool {
        true
    }

    fn track_head(&self, tracker: HeadTracker, _revision: u64) {
        FileStore::track_head(self, tracker)
    }
}

#[async_trait]
impl Backend for EtcdStore {
    fn kind(&self) -> &'static str {
        "etcd"
    }

    async fn current_revision(&self) -> Result<u64, StoreError> {
        self.conn().revision().await
    }

    fn identity_wait(&self) -> Duration {
        Duration::from_secs(30)
    }

    fn head_check(&self) -> HeadCheck {
        |h, revision, log_size, root_at| {
            crate::store::etcd::check_head(h, revision, log_size, root_at)
        }
    }

    // A data directory of another cluster (a moved replica): its evidence says nothing about
    // this cluster, and this replica's key was checked against the cluster marker.
    fn unreadable_head_refuses(&self) -> bool {
        false
    }

    fn track_head(&self, tracker: HeadTracker, revision: u64) {
        EtcdStore::track_head(self, tracker, revision)
    }

    fn seen_revision(&self) -> u64 {
        EtcdStore::seen_revision(self)
    }

    fn note_revision(&self, revision: u64) {
        EtcdStore::note_revision(self, revision)
    }
}

/// Wraps a backend for the handlers: every commit timed (`quarry_store_commit_seconds`).
pub fn serving_store(backend: &Arc<dyn Backend>) -> Arc<dyn Store> {
    crate::metrics::timed_store(backend.clone())
}
