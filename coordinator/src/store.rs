//! The state store: one logical key/value space with compare-and-swap transactions
//! (contract §8). Backends: an embedded sealed log in the data directory (`file`) and etcd v3
//! shared by several coordinator replicas (`etcd`).
pub mod etcd;
pub mod file;
pub mod head;

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
    /// Bounded counters to increment: `(key, max)`. The value is a big-endian `u64`
    /// (absent = 0); each entry adds one, in order, after the checks, and fails the whole
    /// transaction with [`StoreError::LimitReached`] when the value is already `max`. Stores
    /// evaluate it against their current state, so concurrent increments never conflict with
    /// each other (the file store's writer; etcd: read, compare `mod_revision`, put). A key is
    /// never both put and incremented by one transaction.
    pub increments: Vec<(String, u64)>,
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

    /// Add one to the big-endian `u64` counter at `key`, refusing beyond `max`.
    pub fn increment(mut self, key: &str, max: u64) -> Txn {
        self.increments.push((key.to_string(), max));
        self
    }

    /// Every key the transaction reads or writes.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.checks
            .iter()
            .map(|c| match c {
                Check::Absent(k) | Check::Revision(k, _) => k.as_str(),
            })
            .chain(self.puts.iter().map(|(k, _)| k.as_str()))
            .chain(self.deletes.iter().map(String::as_str))
            .chain(self.increments.iter().map(|(k, _)| k.as_str()))
    }

    /// Appends `other`'s checks, writes and increments to this transaction.
    pub fn merge(&mut self, other: Txn) {
        self.checks.extend(other.checks);
        self.puts.extend(other.puts);
        self.deletes.extend(other.deletes);
        self.increments.extend(other.increments);
    }
}

/// Records `key` = `current + 1` in `values` (the new counter values of one transaction, a
/// key once), refusing when `current` is already `max`.
pub fn bump_counter(
    values: &mut Vec<(String, u64)>,
    key: &str,
    current: u64,
    max: u64,
) -> Result<(), StoreError> {
    if current >= max {
        return Err(StoreError::LimitReached {
            key: key.to_string(),
            max,
        });
    }
    match values.iter_mut().find(|(k, _)| k == key) {
        Some((_, v)) => *v = current + 1,
        None => values.push((key.to_string(), current + 1)),
    }
    Ok(())
}

/// Decodes a counter value written by [`Txn::increment`].
pub fn decode_counter(key: &str, value: &[u8]) -> Result<u64, StoreError> {
    let bytes: [u8; 8] = value
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("counter {key} is not 8 bytes")))?;
    Ok(u64::from_be_bytes(bytes))
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
    /// The backing store cannot be reached (etcd down or without quorum); nothing was
    /// written, or the outcome was checked and found not applied. Retry later.
    #[error("the state store is unavailable: {0}")]
    Unavailable(String),
    /// An increment of the transaction found its counter at the maximum.
    #[error("counter {key} is at its limit of {max}")]
    LimitReached {
        /// Counter key.
        key: String,
        /// The limit.
        max: u64,
    },
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
    /// Keys starting with `prefix` that sort at or after `from`, sorted (a range read where
    /// the backend has one; by default a filtered [`Store::scan`]).
    async fn scan_from(
        &self,
        prefix: &str,
        from: &str,
    ) -> Result<Vec<(String, Versioned)>, StoreError> {
        let mut all = self.scan(prefix).await?;
        all.retain(|(k, _)| k.as_str() >= from);
        Ok(all)
    }
}

/// A shared store is a store (the handlers hold `Arc<dyn Store>`, start-up `Arc<dyn Backend>`).
#[async_trait]
impl<S: Store + ?Sized> Store for std::sync::Arc<S> {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        self.as_ref().get(key).await
    }
    async fn scan(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError> {
        self.as_ref().scan(prefix).await
    }
    async fn commit(&self, txn: Txn) -> Result<u64, StoreError> {
        self.as_ref().commit(txn).await
    }
    async fn scan_from(
        &self,
        prefix: &str,
        from: &str,
    ) -> Result<Vec<(String, Versioned)>, StoreError> {
        self.as_ref().scan_from(prefix, from).await
    }
}
