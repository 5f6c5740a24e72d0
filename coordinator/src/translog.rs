//! The transparency log (contract §7): an RFC 6962 Merkle log of deployment events, persisted
//! in the sealed store (`log/<index>`), its size and root bound into every attestation.
use std::sync::RwLock;

use quarry_api::attestation::LogEntry;
use quarry_api::merkle::{self, Hash};
use quarry_api::statement::canonical_json;

use crate::store::{Store, StoreError, Txn};

/// Store key prefix of log entries.
pub const PREFIX: &str = "log/";

/// The in-memory view of the log plus the lock that orders appends.
pub struct TransLog {
    state: RwLock<State>,
    append: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct State {
    leaves: Vec<Hash>,
    entries: Vec<serde_json::Value>,
}

fn key(index: usize) -> String {
    format!("{PREFIX}{index:020}")
}

impl TransLog {
    /// An empty log.
    pub fn new() -> TransLog {
        TransLog {
            state: RwLock::new(State::default()),
            append: tokio::sync::Mutex::new(()),
        }
    }

    /// Loads the log from the store; entries must be contiguous from 0.
    pub async fn load(store: &dyn Store) -> Result<TransLog, String> {
        let mut state = State::default();
        for (i, (k, v)) in store
            .scan(PREFIX)
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .enumerate()
        {
            if k != key(i) {
                return Err(format!("transparency log: expected entry {i}, found {k}"));
            }
            let event: serde_json::Value = serde_json::from_slice(&v.value)
                .map_err(|e| format!("transparency log entry {i} does not decode: {e}"))?;
            let canonical = canonical_json(&event).map_err(|e| format!("log entry {i}: {e}"))?;
            state.leaves.push(merkle::leaf_hash(canonical.as_bytes()));
            state.entries.push(event);
        }
        Ok(TransLog {
            state: RwLock::new(state),
            append: tokio::sync::Mutex::new(()),
        })
    }

    /// (size, root) of the log now.
    pub fn head(&self) -> (u64, Hash) {
        let s = self.state.read().unwrap_or_else(|p| p.into_inner());
        (s.leaves.len() as u64, merkle::root(&s.leaves))
    }

    /// Root over the first `size` entries (None when the log is shorter).
    pub fn root_at(&self, size: u64) -> Option<Hash> {
        let s = self.state.read().unwrap_or_else(|p| p.into_inner());
        let size = usize::try_from(size)
            .ok()
            .filter(|n| *n <= s.leaves.len())?;
        Some(merkle::root(&s.leaves[..size]))
    }

    /// Commits `txn` together with `events` appended to the log, atomically.
    pub async fn commit_with_events(
        &self,
        store: &dyn Store,
        mut txn: Txn,
        events: Vec<serde_json::Value>,
    ) -> Result<u64, StoreError> {
        let _order = self.append.lock().await;
        let start = self
            .state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .leaves
            .len();
        let mut leaves = Vec::with_capacity(events.len());
        for (i, event) in events.iter().enumerate() {
            let canonical = canonical_json(event)
                .map_err(|e| StoreError::Corrupt(format!("log event: {e}")))?;
            leaves.push(merkle::leaf_hash(canonical.as_bytes()));
            let k = key(start + i);
            txn = txn.require_absent(&k).put(&k, canonical.into_bytes());
        }
        let rev = store.commit(txn).await?;
        let mut s = self.state.write().unwrap_or_else(|p| p.into_inner());
        s.leaves.extend(leaves);
        s.entries.extend(events);
        Ok(rev)
    }

    /// Entries from index `from` on.
    pub fn entries(&self, from: u64) -> Vec<LogEntry> {
        let s = self.state.read().unwrap_or_else(|p| p.into_inner());
        s.entries
            .iter()
            .enumerate()
            .skip(from as usize)
            .map(|(i, e)| LogEntry {
                index: i as u64,
                event: e.clone(),
            })
            .collect()
    }

    /// Inclusion proof of `index` in the tree of the first `size` entries.
    pub fn inclusion(&self, index: u64, size: u64) -> Option<Vec<Hash>> {
        let s = self.state.read().unwrap_or_else(|p| p.into_inner());
        let size = usize::try_from(size)
            .ok()
            .filter(|n| *n <= s.leaves.len())?;
        merkle::inclusion_proof(&s.leaves[..size], usize::try_from(index).ok()?)
    }

    /// Consistency proof between the first `from` and the first `to` entries.
    pub fn consistency(&self, from: u64, to: u64) -> Option<Vec<Hash>> {
        let s = self.state.read().unwrap_or_else(|p| p.into_inner());
        let to = usize::try_from(to).ok().filter(|n| *n <= s.leaves.len())?;
        merkle::consistency_proof(&s.leaves[..to], usize::try_from(from).ok()?)
    }
}

impl Default for TransLog {
    fn default() -> Self {
        TransLog::new()
    }
}

/// Unix seconds now.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
