//! Keeps a replica's in-memory state current with the changes other replicas commit.
use std::sync::Arc;
use std::time::Duration;

use crate::state::{keys, Core};

/// Keeps the in-memory state current with the changes other replicas make: reloads the
/// deployment when its keys change and brings the transparency log up to etcd.
pub async fn refresh_from_watch(
    core: Arc<Core>,
    mut changes: tokio::sync::mpsc::Receiver<Vec<crate::store::etcd::Changed>>,
) {
    let mut log_pending = false;
    loop {
        let first = if log_pending {
            match tokio::time::timeout(Duration::from_millis(50), changes.recv()).await {
                Ok(Some(b)) => b,
                Ok(None) => return,
                Err(_) => Vec::new(),
            }
        } else {
            match changes.recv().await {
                Some(b) => b,
                None => return,
            }
        };
        let mut batch = first;
        while let Ok(more) = changes.try_recv() {
            batch.extend(more);
        }
        let mut log = log_pending;
        let mut deployment = false;
        for c in &batch {
            if c.key.starts_with(crate::translog::PREFIX) {
                log = true;
            } else if c.key.is_empty() || keys::affects_deployment(&c.key) {
                deployment = true;
                log |= c.key.is_empty();
            }
        }
        if let (Some(store), Some(rev)) = (core.backend(), batch.iter().map(|c| c.revision).max()) {
            store.note_revision(rev);
        }
        let refreshed = core.refresh(log, deployment).await;
        // The log caught up after the revision was noted: record its size with it.
        if let Some(store) = core.backend() {
            store.note_revision(store.seen_revision());
        }
        match refreshed {
            Ok(done) => log_pending = log && !done,
            Err(e) => {
                if matches!(e, crate::store::StoreError::Corrupt(_)) {
                    // Tampering (a value put back or deleted in etcd): this replica keeps
                    // serving what it had loaded and never takes the stored state in.
                    tracing::error!(error = %e, "etcd holds state the transparency log refutes; not loaded");
                } else {
                    tracing::warn!(error = %e, "refreshing from etcd failed; retrying");
                }
                log_pending = log;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
