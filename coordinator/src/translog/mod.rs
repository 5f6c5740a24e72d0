//! The transparency log (contract §7): an RFC 6962 Merkle log of deployment events, persisted
//! in the sealed store (`log/<index>`), its size and root bound into every attestation.
//!
//! Appends are group-committed: callers queue their transaction and events, and one committer
//! task merges the queued transactions that touch disjoint keys into a single store
//! transaction, assigns the entries consecutive indices and commits them together, so n
//! concurrent activations cost one durable write instead of n serialised ones. The committer
//! is a spawned task, not a caller's future, so a client that disconnects mid-commit cannot
//! leave the in-memory view behind the store.
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use quarry_api::attestation::LogEntry;
use quarry_api::merkle::{self, Hash};
use quarry_api::statement::canonical_json;
use tokio::sync::oneshot;

use crate::store::{Store, StoreError, Txn, Versioned};

pub mod binding;

pub use binding::BindingKey;

/// Store key prefix of log entries.
pub const PREFIX: &str = "log/";

/// `type` of the event that records a monotonic counter raised to `value`.
pub const COUNTER_EVENT: &str = "monotonic-counter";

/// `type` of the event a running replica appends once per key-sharing address; the log
/// keeps the addresses so replicas can find each other for split-view checks.
pub const JOINED_EVENT: &str = "replica-joined";

/// Most callers merged into one store transaction.
const MAX_BATCH: usize = 256;

/// Attempts of one append whose log index another writer (an etcd replica) took first.
const MAX_INDEX_RETRIES: usize = 16;

/// The in-memory view of the log plus the queue of appends waiting for the committer.
pub struct TransLog {
    inner: Arc<Inner>,
}

struct Inner {
    state: RwLock<State>,
    queue: Mutex<Queue>,
    /// Key of the value digests the log records (set once the DEK is known).
    binding: OnceLock<BindingKey>,
}

#[derive(Default)]
struct State {
    leaves: Vec<Hash>,
    entries: Vec<serde_json::Value>,
    /// `roots[i]` = root over the first `i + 1` leaves, so heads are O(1).
    roots: Vec<Hash>,
    /// RFC 6962 compact range: roots of the perfect subtrees covering all leaves, with their
    /// heights, left to right; one append updates it in O(log n).
    compact: Vec<(u32, Hash)>,
    /// Activation events per marble type: the MaxActivations count the rollback evidence
    /// covers (the stored counters are not, see [`TransLog::activations`]).
    activations: HashMap<String, u64>,
    /// Highest logged value per monotonic counter (by [`COUNTER_EVENT`]'s `counter`), the
    /// floor the rollback evidence covers for the stored counters.
    counters: HashMap<String, u64>,
    /// `manifestSha256` of the last `manifest-set` / `manifest-update` event: the manifest
    /// the store must hold (an older one put back into etcd is refused against it).
    last_manifest: Option<String>,
    /// What the log last recorded per bound store key ([`binding`]).
    bound: HashMap<String, binding::Recorded>,
    /// Revoked UUIDs (lowercase) and serials (hex) with the time of their `revocation`
    /// event: revocations are never undone, so the log alone answers "is it revoked".
    revoked_uuids: HashMap<String, u64>,
    revoked_serials: HashMap<String, u64>,
    /// Key-sharing addresses of `replica-joined` events, in log order, each once.
    replicas: Vec<String>,
}

impl State {
    fn push(&mut self, leaf: Hash, event: serde_json::Value) {
        self.compact.push((0, leaf));
        while let [.., (hl, l), (hr, r)] = self.compact[..] {
            if hl != hr {
                break;
            }
            self.compact.truncate(self.compact.len() - 2);
            self.compact.push((hl + 1, merkle::node_hash(&l, &r)));
        }
        let mut parts = self.compact.iter().rev();
        let mut root = parts.next().map(|(_, h)| *h).unwrap_or(leaf);
        for (_, left) in parts {
            root = merkle::node_hash(left, &root);
        }
        self.roots.push(root);
        self.leaves.push(leaf);
        if event["type"] == "activation" {
            if let Some(t) = event["marbleType"].as_str() {
                *self.activations.entry(t.to_string()).or_default() += 1;
            }
        }
        if event["type"] == COUNTER_EVENT {
            // The value is a decimal string: JCS verifiers elsewhere read numbers as doubles.
            let value = event["value"].as_str().and_then(|v| v.parse::<u64>().ok());
            if let (Some(id), Some(v)) = (event["counter"].as_str(), value) {
                let top = self.counters.entry(id.to_string()).or_default();
                *top = (*top).max(v);
            }
        }
        if event["type"] == "manifest-set" || event["type"] == "manifest-update" {
            if let Some(sha) = event["manifestSha256"].as_str() {
                self.last_manifest = Some(sha.to_ascii_lowercase());
            }
        }
        if event["type"] == "revocation" {
            let time = event["time"].as_u64().unwrap_or(0);
            match (event["serial"].as_str(), event["uuid"].as_str()) {
                (Some(serial), _) => {
                    self.revoked_serials
                        .entry(serial.to_ascii_lowercase())
                        .or_insert(time);
                }
                (None, Some(uuid)) => {
                    self.revoked_uuids
                        .entry(uuid.to_ascii_lowercase())
                        .or_insert(time);
                }
                (None, None) => {}
            }
        }
        if event["type"] == JOINED_EVENT {
            if let Some(a) = event["address"].as_str() {
                if !self.replicas.iter().any(|r| r == a) {
                    self.replicas.push(a.to_string());
                }
            }
        }
        // Stored entries were parsed before they got here (push_stored), own ones were
        // built by BindingKey::record.
        self.bound
            .extend(binding::parse(&event).unwrap_or_default());
        self.entries.push(event);
    }

    fn root(&self, size: usize) -> Option<Hash> {
        match size {
            0 => Some(merkle::root(&[])),
            n => self.roots.get(n - 1).copied(),
        }
    }
}

/// One caller's append waiting in the queue.
struct Pending {
    txn: Txn,
    /// (canonical JSON, leaf hash, event) per event.
    events: Vec<(String, Hash, serde_json::Value)>,
    reply: oneshot::Sender<Result<u64, StoreError>>,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Pending>,
    /// True while a committer task drains the queue.
    running: bool,
}

fn key(index: usize) -> String {
    format!("{PREFIX}{index:020}")
}

impl TransLog {
    /// An empty log.
    pub fn new() -> TransLog {
        TransLog::from_state(State::default())
    }

    fn from_state(state: State) -> TransLog {
        TransLog {
            inner: Arc::new(Inner {
                state: RwLock::new(state),
                queue: Mutex::new(Queue::default()),
                binding: OnceLock::new(),
            }),
        }
    }

    /// Loads the log from the store; entries must be contiguous from 0.
    pub async fn load(store: &dyn Store) -> Result<TransLog, String> {
        let mut state = State::default();
        append_stored(&mut state, store).await?;
        Ok(TransLog::from_state(state))
    }

    /// (size, root) of the log now.
    pub fn head(&self) -> (u64, Hash) {
        let s = self.inner.read();
        let n = s.leaves.len();
        (n as u64, s.root(n).unwrap_or_else(|| merkle::root(&[])))
    }

    /// Root over the first `size` entries (None when the log is shorter).
    pub fn root_at(&self, size: u64) -> Option<Hash> {
        let s = self.inner.read();
        usize::try_from(size)
            .ok()
            .filter(|n| *n <= s.leaves.len())
            .and_then(|n| s.root(n))
    }

    /// Binds this log's commits to the deployment whose DEK `key` was derived from: from now
    /// on every commit writing a bound key records its values' digests (a second call is
    /// ignored: the DEK of a loaded state never changes).
    pub fn set_binding(&self, key: BindingKey) {
        let _ = self.inner.binding.set(key);
    }

    /// Commits `txn` together with `events` appended to the log, atomically. When `txn`
    /// writes bound keys, the first event records their digests ([`binding`]); such a
    /// transaction without an event is refused, as its values could not be checked later.
    pub async fn commit_with_events(
        &self,
        store: &Arc<dyn Store>,
        txn: Txn,
        mut events: Vec<serde_json::Value>,
    ) -> Result<u64, StoreError> {
        if let Some(b) = self.inner.binding.get() {
            if let Some(record) = b.record(&txn).map_err(StoreError::Corrupt)? {
                let first = events.first_mut().ok_or_else(|| {
                    StoreError::Corrupt(
                        "a commit writing bound keys needs a log event to record them".into(),
                    )
                })?;
                first[binding::FIELD] = record;
            }
        }
        let mut prepared = Vec::with_capacity(events.len());
        for event in events {
            let canonical = canonical_json(&event)
                .map_err(|e| StoreError::Corrupt(format!("log event: {e}")))?;
            let leaf = merkle::leaf_hash(canonical.as_bytes());
            prepared.push((canonical, leaf, event));
        }
        let (reply, outcome) = oneshot::channel();
        let start_committer = {
            let mut q = self.inner.lock_queue();
            q.waiting.push_back(Pending {
                txn,
                events: prepared,
                reply,
            });
            !std::mem::replace(&mut q.running, true)
        };
        if start_committer {
            tokio::spawn(Inner::drain(self.inner.clone(), store.clone()));
        }
        outcome
            .await
            .map_err(|_| StoreError::Corrupt("the transparency log committer stopped".into()))?
    }

    /// SHA-256 (hex) of the manifest the log last set or updated to, if any. The rollback
    /// evidence covers the log, so this is what the stored manifest must hash to.
    pub fn last_manifest_sha256(&self) -> Option<String> {
        self.inner.read().last_manifest.clone()
    }

    /// Refuses a stored manifest other than the one the log last recorded: an etcd writer
    /// putting an older ciphertext of `manifest/raw` back (its AEAD binds the key name only).
    pub fn check_manifest(&self, fingerprint: &Hash) -> Result<(), String> {
        match self.last_manifest_sha256() {
            Some(logged) if logged != hex::encode(fingerprint) => Err(format!(
                "the stored manifest (SHA-256 {}) is not the one the transparency log last recorded ({logged}): an older manifest was put back into the store",
                hex::encode(fingerprint)
            )),
            _ => Ok(()),
        }
    }

    /// Checks the stored `value` of bound `key` (None: absent) against the log's record of
    /// it: an error names the key and whether it was put back or deleted.
    pub fn check_bound(&self, key: &str, value: Option<&[u8]>) -> Result<(), String> {
        let s = self.inner.read();
        binding::check(self.inner.binding.get(), &s.bound, key, value)
    }

    /// Reads bound `key` from `store` and checks it against the log. A mismatch the log
    /// catching up (another replica's commit) or a fresh read resolves is a race, not
    /// tampering; one that persists is [`StoreError::Corrupt`] naming the key.
    pub async fn read_bound(
        &self,
        store: &Arc<dyn Store>,
        key: &str,
    ) -> Result<Option<Versioned>, StoreError> {
        const ATTEMPTS: usize = 4;
        let mut last = String::new();
        for attempt in 0..ATTEMPTS {
            if attempt > 0 && !self.catch_up(store).await? {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            let v = store.get(key).await?;
            match self.check_bound(key, v.as_ref().map(|v| v.value.as_slice())) {
                Ok(()) => return Ok(v),
                Err(e) => last = e,
            }
        }
        tracing::error!(key, error = %last, "stored value refused against the transparency log");
        Err(StoreError::Corrupt(last))
    }

    /// Checks a scan of `prefix` against the log: each value as [`TransLog::check_bound`]
    /// does, and no key the log records as written under `prefix` may be missing.
    pub fn check_bound_scan(
        &self,
        prefix: &str,
        scan: &[(String, Versioned)],
    ) -> Result<(), String> {
        for (k, v) in scan {
            self.check_bound(k, Some(&v.value))?;
        }
        let s = self.inner.read();
        let present: HashSet<&str> = scan.iter().map(|(k, _)| k.as_str()).collect();
        let missing = s.bound.iter().find(|(k, r)| {
            k.starts_with(prefix)
                && matches!(r, binding::Recorded::Written { .. })
                && !present.contains(k.as_str())
        });
        match missing {
            Some((k, _)) => binding::check(self.inner.binding.get(), &s.bound, k, None),
            None => Ok(()),
        }
    }

    /// The time of the revocation of `uuid` the log records, if any.
    pub fn revoked_uuid(&self, uuid: &str) -> Option<u64> {
        let s = self.inner.read();
        s.revoked_uuids.get(&uuid.to_ascii_lowercase()).copied()
    }

    /// The time of the revocation of certificate `serial` (hex) the log records, if any.
    pub fn revoked_serial(&self, serial: &str) -> Option<u64> {
        let s = self.inner.read();
        s.revoked_serials.get(&serial.to_ascii_lowercase()).copied()
    }

    /// Every revocation the log records: (UUIDs, serials), each with its time.
    pub fn revocations(&self) -> (HashMap<String, u64>, HashMap<String, u64>) {
        let s = self.inner.read();
        (s.revoked_uuids.clone(), s.revoked_serials.clone())
    }

    /// The replicas' key-sharing addresses the log records (`replica-joined`), oldest first.
    pub fn replica_addresses(&self) -> Vec<String> {
        self.inner.read().replicas.clone()
    }

    /// Activations of `marble_type` in the log. A replayed older counter in etcd cannot
    /// lower this: the log's size and root are in the rollback evidence.
    pub fn activations(&self, marble_type: &str) -> u64 {
        self.inner
            .read()
            .activations
            .get(marble_type)
            .copied()
            .unwrap_or(0)
    }

    /// The highest value logged for monotonic counter `id` (0 when never raised). Like
    /// [`TransLog::activations`], an older stored counter put back into etcd cannot lower it.
    pub fn counter(&self, id: &str) -> u64 {
        self.inner.read().counters.get(id).copied().unwrap_or(0)
    }

    /// The entries from index `from` on.
    pub fn entries(&self, from: u64) -> Vec<LogEntry> {
        let s = self.inner.read();
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

    /// Entries with index in `from..to` (fewer when the log is shorter).
    pub fn entries_range(&self, from: u64, to: u64) -> Vec<LogEntry> {
        let s = self.inner.read();
        let end = usize::try_from(to)
            .unwrap_or(usize::MAX)
            .min(s.entries.len());
        let start = usize::try_from(from).unwrap_or(usize::MAX).min(end);
        s.entries[start..end]
            .iter()
            .zip(start..)
            .map(|(e, i)| LogEntry {
                index: i as u64,
                event: e.clone(),
            })
            .collect()
    }

    /// Inclusion proof of `index` in the tree of the first `size` entries.
    pub fn inclusion(&self, index: u64, size: u64) -> Option<Vec<Hash>> {
        let s = self.inner.read();
        let size = usize::try_from(size)
            .ok()
            .filter(|n| *n <= s.leaves.len())?;
        merkle::inclusion_proof(&s.leaves[..size], usize::try_from(index).ok()?)
    }

    /// Brings the in-memory view up to the store, for entries other writers (coordinator
    /// replicas sharing etcd) appended. Runs only while no commit of this log is in flight
    /// (it takes the committer's role, so a commit's indices and its publication are never
    /// interleaved with it); when the committer is busy it does nothing, as the committer
    /// catches up itself on its next index conflict, and this returns false: call again later.
    pub async fn catch_up(&self, store: &Arc<dyn Store>) -> Result<bool, StoreError> {
        let claimed = {
            let mut q = self.inner.lock_queue();
            !std::mem::replace(&mut q.running, true)
        };
        if !claimed {
            return Ok(false);
        }
        let outcome = self.inner.catch_up_tail(store.as_ref()).await;
        // Hand the committer's role back: appends queued meanwhile are committed now.
        tokio::spawn(Inner::drain(self.inner.clone(), store.clone()));
        outcome.map(|()| true)
    }

    /// Consistency proof between the first `from` and the first `to` entries.
    pub fn consistency(&self, from: u64, to: u64) -> Option<Vec<Hash>> {
        let s = self.inner.read();
        let to = usize::try_from(to).ok().filter(|n| *n <= s.leaves.len())?;
        merkle::consistency_proof(&s.leaves[..to], usize::try_from(from).ok()?)
    }
}

impl Inner {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The committer: takes batches off the queue until it is empty.
    async fn drain(self: Arc<Inner>, store: Arc<dyn Store>) {
        loop {
            let batch = {
                let mut q = self.lock_queue();
                let batch = take_batch(&mut q.waiting);
                if batch.is_empty() {
                    q.running = false;
                    return;
                }
                batch
            };
            self.commit_batch(store.as_ref(), batch).await;
        }
    }

    /// Commits `batch` as one transaction; when that fails, commits each append on its own
    /// so one refused caller (a conflict, a reached limit) does not fail the others.
    async fn commit_batch(&self, store: &dyn Store, mut batch: Vec<Pending>) {
        if batch.len() > 1 {
            let mut merged = Txn::new();
            for p in &batch {
                merged.merge(p.txn.clone());
            }
            let events: Vec<_> = batch.iter().flat_map(|p| p.events.iter()).collect();
            if let Ok(rev) = self.append(store, merged, &events).await {
                for p in batch {
                    self.publish_events(p.events);
                    let _ = p.reply.send(Ok(rev));
                }
                return;
            }
            // Some check or limit failed (or the write did): fall through, one by one.
        }
        for p in batch.drain(..) {
            let events: Vec<_> = p.events.iter().collect();
            let outcome = self.append(store, p.txn.clone(), &events).await;
            if outcome.is_ok() {
                self.publish_events(p.events);
            }
            let _ = p.reply.send(outcome);
        }
    }

    /// Commits `txn` with `events` at the next indices. The in-memory view is not updated
    /// here (see [`Inner::publish_events`]); on a conflict over a log index — the store holds
    /// entries this view has not seen, appended by another replica — the view catches up from
    /// the store and retries, up to [`MAX_INDEX_RETRIES`] times (replicas race for indices).
    async fn append(
        &self,
        store: &dyn Store,
        txn: Txn,
        events: &[&(String, Hash, serde_json::Value)],
    ) -> Result<u64, StoreError> {
        for attempt in 0..MAX_INDEX_RETRIES {
            let start = self.read().leaves.len();
            let mut t = txn.clone();
            for (i, (canonical, _, _)) in events.iter().enumerate() {
                let k = key(start + i);
                t = t.require_absent(&k).put(&k, canonical.clone().into_bytes());
            }
            match store.commit(t).await {
                Err(StoreError::Conflict(k))
                    if attempt + 1 < MAX_INDEX_RETRIES && k.starts_with(PREFIX) =>
                {
                    // Only a store written by someone else gets here (the file store has one
                    // writer: this committer). A write whose outcome was unknown is never
                    // appended twice: the file store has no unknown outcomes, the etcd store
                    // resolves them itself (resend, recognised by its unique ciphertext).
                    self.catch_up_tail(store).await?;
                }
                other => return other,
            }
        }
        Err(StoreError::Conflict(PREFIX.into()))
    }

    /// Reads the stored entries beyond the in-memory view (a range read from the first
    /// missing index) and appends them. Only the holder of the committer's role calls it.
    async fn catch_up_tail(&self, store: &dyn Store) -> Result<(), StoreError> {
        let have = self.read().leaves.len();
        let tail = store.scan_from(PREFIX, &key(have)).await?;
        let mut s = self.state.write().unwrap_or_else(|p| p.into_inner());
        extend_tail(&mut s, have, tail).map_err(StoreError::Corrupt)
    }

    /// Adds committed events to the in-memory view (the committer is the only writer, so
    /// the indices assigned in [`Inner::append`] are the ones they get here).
    fn publish_events(&self, events: Vec<(String, Hash, serde_json::Value)>) {
        let mut s = self.state.write().unwrap_or_else(|p| p.into_inner());
        for (_, leaf, event) in events {
            s.push(leaf, event);
        }
    }
}

/// The longest prefix of `waiting` whose transactions touch pairwise disjoint keys (keys
/// only incremented may repeat: increments add up), at most [`MAX_BATCH`] long.
fn take_batch(waiting: &mut VecDeque<Pending>) -> Vec<Pending> {
    let mut exclusive: HashSet<String> = HashSet::new();
    let mut counted: HashSet<String> = HashSet::new();
    let mut batch = Vec::new();
    while let Some(next) = waiting.front() {
        if batch.len() == MAX_BATCH {
            break;
        }
        let increments: HashSet<&str> = next
            .txn
            .increments
            .iter()
            .map(|(k, _)| k.as_str())
            .collect();
        let clash = next.txn.keys().any(|k| {
            if increments.contains(k) {
                exclusive.contains(k)
            } else {
                exclusive.contains(k) || counted.contains(k)
            }
        });
        if clash && !batch.is_empty() {
            break;
        }
        for k in next.txn.keys() {
            if increments.contains(k) {
                counted.insert(k.to_string());
            } else {
                exclusive.insert(k.to_string());
            }
        }
        if let Some(p) = waiting.pop_front() {
            batch.push(p);
        }
    }
    batch
}

/// Appends the store's log entries beyond `state`'s size to `state` (entries contiguous).
async fn append_stored(state: &mut State, store: &dyn Store) -> Result<(), String> {
    let stored = store.scan(PREFIX).await.map_err(|e| e.to_string())?;
    extend_from(state, stored)
}

/// Appends `tail` (the stored entries from index `have` on) to `state`, which holds `have`.
fn extend_tail(
    state: &mut State,
    have: usize,
    tail: Vec<(String, Versioned)>,
) -> Result<(), String> {
    if state.leaves.len() != have {
        return Err(format!(
            "transparency log: the view changed during a catch-up ({have} → {})",
            state.leaves.len()
        ));
    }
    for (j, (k, v)) in tail.into_iter().enumerate() {
        push_stored(state, have + j, &k, &v)?;
    }
    Ok(())
}

/// Appends the stored entry `k` = `v` as leaf `i`: it must be the key of index `i` and hold
/// an event that canonicalises.
fn push_stored(state: &mut State, i: usize, k: &str, v: &Versioned) -> Result<(), String> {
    if k != key(i) {
        return Err(format!("transparency log: expected entry {i}, found {k}"));
    }
    let event: serde_json::Value = serde_json::from_slice(&v.value)
        .map_err(|e| format!("transparency log entry {i} does not decode: {e}"))?;
    let canonical = canonical_json(&event).map_err(|e| format!("log entry {i}: {e}"))?;
    binding::parse(&event).map_err(|e| format!("transparency log entry {i}: {e}"))?;
    state.push(merkle::leaf_hash(canonical.as_bytes()), event);
    Ok(())
}

/// Appends `stored` (a scan of [`PREFIX`]) beyond `state`'s size to `state`.
fn extend_from(state: &mut State, stored: Vec<(String, Versioned)>) -> Result<(), String> {
    let have = state.leaves.len();
    for (i, (k, v)) in stored.into_iter().enumerate().skip(have) {
        push_stored(state, i, &k, &v)?;
    }
    Ok(())
}

impl Default for TransLog {
    fn default() -> Self {
        TransLog::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::file::FileStore;

    fn event(i: usize) -> serde_json::Value {
        serde_json::json!({"type": "test", "i": i})
    }

    #[test]
    fn incremental_roots_equal_the_recursive_definition() {
        let mut state = State::default();
        let mut leaves = vec![];
        for i in 0..130 {
            let leaf = merkle::leaf_hash(format!("{i}").as_bytes());
            leaves.push(leaf);
            state.push(leaf, event(i));
            for n in [1, leaves.len() / 2 + 1, leaves.len()] {
                assert_eq!(state.root(n), Some(merkle::root(&leaves[..n])), "size {n}");
            }
        }
        assert_eq!(state.root(0), Some(merkle::root(&[])));
        assert_eq!(state.root(131), None);
    }

    fn pending(txn: Txn) -> Pending {
        Pending {
            txn,
            events: vec![],
            reply: oneshot::channel().0,
        }
    }

    #[test]
    fn a_batch_takes_disjoint_transactions_and_stops_before_the_first_overlap() {
        let mut q: VecDeque<Pending> = [
            Txn::new().require_absent("u/1").increment("n", 9),
            Txn::new().require_absent("u/2").increment("n", 9),
            Txn::new().put("a", vec![]),
            Txn::new().require("a", Some(3)).put("a", vec![]),
            Txn::new().put("b", vec![]),
        ]
        .into_iter()
        .map(pending)
        .collect();
        // Increments of one counter add up; the second write of `a` waits for the next batch.
        assert_eq!(take_batch(&mut q).len(), 3);
        assert_eq!(take_batch(&mut q).len(), 2);
        assert!(take_batch(&mut q).is_empty());
        // A key one transaction increments and another writes is an overlap too.
        let mut q: VecDeque<Pending> = [
            Txn::new().increment("n", 9),
            Txn::new().require("n", Some(1)).put("n", vec![]),
        ]
        .into_iter()
        .map(pending)
        .collect();
        assert_eq!(take_batch(&mut q).len(), 1);
    }

    #[test]
    fn concurrent_appends_are_contiguous_exact_and_reload_to_the_same_head() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (tasks, max) = (200usize, 150u64);
        let head = rt.block_on(async {
            let store: Arc<dyn Store> = Arc::new(
                FileStore::create(dir.path(), quarry_api::Secret::new(vec![7; 32])).unwrap(),
            );
            let log = Arc::new(TransLog::new());
            let mut handles = vec![];
            for i in 0..tasks {
                let (log, store) = (log.clone(), store.clone());
                handles.push(tokio::spawn(async move {
                    // Every append spends one unit of a shared budget; a few also write a
                    // key of their own that a later one requires absent.
                    let mut txn = Txn::new().increment("budget", max);
                    if i % 10 == 0 {
                        txn = txn.require_absent("shared").put("shared", vec![1]);
                    }
                    log.commit_with_events(&store, txn, vec![event(i)]).await
                }));
            }
            let mut outcomes = vec![];
            for h in handles {
                outcomes.push(h.await.unwrap());
            }
            let ok = outcomes.iter().filter(|o| o.is_ok()).count();
            let shared_wins = outcomes
                .iter()
                .enumerate()
                .filter(|(i, o)| i % 10 == 0 && o.is_ok())
                .count();
            assert_eq!(shared_wins, 1, "exactly one writer of `shared` wins");
            assert!(outcomes.iter().all(|o| matches!(
                o,
                Ok(_) | Err(StoreError::LimitReached { .. }) | Err(StoreError::Conflict(_))
            )));
            assert_eq!(ok as u64, max, "the budget is spent exactly");
            let (size, root) = log.head();
            assert_eq!(size, max);
            let stored = store.scan(PREFIX).await.unwrap();
            assert_eq!(stored.len() as u64, max);
            for (i, (k, _)) in stored.iter().enumerate() {
                assert_eq!(k, &key(i));
            }
            assert_eq!(
                store.get("budget").await.unwrap().unwrap().value,
                max.to_be_bytes()
            );
            (size, root)
        });
        rt.block_on(async {
            let (store, _) =
                FileStore::open(dir.path(), quarry_api::Secret::new(vec![7; 32])).unwrap();
            let log = TransLog::load(&store).await.unwrap();
            assert_eq!(log.head(), head);
            assert_eq!(log.root_at(head.0), Some(head.1));
        });
    }
}
