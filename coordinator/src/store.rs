//! The state store: one logical key/value space with compare-and-swap transactions
//! (contract §8). Backends: an embedded sealed log in the data directory (`file`); etcd comes
//! later behind the same trait.
pub mod file;
pub mod head;
pub mod seal;

use async_trait::async_trait;

/// A value and the revision of the commit that last wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// The stored bytes.
    pub value: Vec<u8>,
    /// Revision of the last write (strictly increasing per store).
    pub revision: u64,
}

/// A condition a transaction requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// The key must not exist.
    Absent(String),
    /// The key must exist with exactly this revision.
    Revision(String, u64),
}

/// An atomic set of writes guarded by checks.
#[derive(Debug, Clone, Default)]
pub struct Txn {
    /// Conditions; any failing one aborts the transaction with [`StoreError::Conflict`].
    pub checks: Vec<Check>,
    /// Keys to write.
    pub puts: Vec<(String, Vec<u8>)>,
    /// Keys to delete.
    pub deletes: Vec<String>,
}

impl Txn {
    /// An empty transaction.
    pub fn new() -> Txn {
        Txn::default()
    }

    /// Require `key` to be absent.
    pub fn require_absent(mut self, key: &str) -> Txn {
        self.checks.push(Check::Absent(key.to_string()));
        self
    }

    /// Require `key` to be at `revision` (or absent when `None`).
    pub fn require(mut self, key: &str, revision: Option<u64>) -> Txn {
        self.checks.push(match revision {
            Some(r) => Check::Revision(key.to_string(), r),
            None => Check::Absent(key.to_string()),
        });
        self
    }

    /// Write `value` at `key`.
    pub fn put(mut self, key: &str, value: Vec<u8>) -> Txn {
        self.puts.push((key.to_string(), value));
        self
    }
}

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A check of the transaction failed; re-read and retry.
    #[error("conflict on {0}: the state changed, retry on fresh state")]
    Conflict(String),
    /// Reading or writing the backing storage failed.
    #[error("storage I/O on {path}: {source}")]
    Io {
        /// File involved.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The stored state is corrupted or was tampered with.
    #[error("stored state is corrupted or tampered: {0}")]
    Corrupt(String),
}

/// The state store every coordinator component uses.
#[async_trait]
pub trait Store: Send + Sync {
    /// Read one key.
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError>;
    /// All keys starting with `prefix`, sorted.
    async fn scan(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError>;
    /// Apply `txn` atomically and durably; returns the new revision.
    async fn commit(&self, txn: Txn) -> Result<u64, StoreError>;
}
