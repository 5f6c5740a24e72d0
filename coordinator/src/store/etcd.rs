//! The etcd v3 store: several coordinator replicas share one etcd cluster (contract §8).
//!
//! Layout under the configured prefix (default `/quarry/`):
//! - `s/<key>`: the store's keys; each value is AES-256-GCM under a key derived from the DEK,
//!   with the store key's name as associated data, so etcd (and whoever reads its disks or
//!   snapshots) sees only ciphertext and a value cannot be moved to another key.
//! - `c/cluster`: the cluster marker, created once (create-if-absent) by the replica that made
//!   the DEK; it holds a MAC under the DEK so a replica can tell whether its DEK is this
//!   cluster's.
//! - `c/peers/<id>`: each serving replica's key-sharing address, under a lease kept alive
//!   while it runs.
//!
//! Every [`Store::commit`] is one etcd transaction: [`Check::Absent`] compares the key's
//! version with 0, [`Check::Revision`] its `mod_revision`; puts and deletes run only when all
//! compares hold, otherwise the commit fails with [`StoreError::Conflict`] and the caller
//! re-reads. Bounded increments read their counters and compare their `mod_revision` in the
//! same transaction; a race with another increment is retried here on the values etcd
//! returned. Revisions are etcd's `mod_revision`s. A commit whose outcome is unknown (the
//! connection broke after sending) is resent: the compares make a resend of an applied
//! transaction fail, and then one of its write-once keys holding exactly this commit's
//! ciphertext (random nonce, so unique) proves it was applied.
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use quarry_api::Secret;
use tonic::Status;

use wire::pb;
use wire::Client;

use super::file::HeadTracker;
use super::head::Head;
use super::{Check, Store, StoreError, Txn, Versioned};
use crate::sealing;

mod wire;

/// Default key prefix.
pub const DEFAULT_PREFIX: &str = "/quarry/";
/// Time limit of one etcd request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Time limit of establishing a connection to one endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a commit with an unknown outcome is resent before giving up.
const UNKNOWN_OUTCOME_DEADLINE: Duration = Duration::from_secs(20);
/// Increment races retried at most (each attempt uses the values etcd returned).
const MAX_INCREMENT_RACES: usize = 256;
/// Keys per page of a scan.
const SCAN_PAGE: i64 = 1000;
/// Largest gRPC message accepted from etcd.
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// How to reach etcd.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// Client URLs (`http://host:2379`, `https://host:2379`).
    pub endpoints: Vec<String>,
    /// Prefix of every key Quarry writes (ends with `/`).
    pub prefix: String,
    /// CA bundle (PEM) that signs the etcd server certificates.
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) for etcd's client-certificate authentication.
    pub cert: Option<PathBuf>,
    /// Key (PEM) of the client certificate.
    pub key: Option<PathBuf>,
}

/// A connection to etcd under Quarry's prefix (no DEK yet: the control keys).
#[derive(Clone)]
pub struct EtcdConn {
    client: Client,
    prefix: String,
}

/// Maps an etcd error to [`StoreError::Unavailable`] naming the operation.
fn unavailable(what: &str) -> impl Fn(Status) -> StoreError + '_ {
    move |e| StoreError::Unavailable(format!("etcd {what}: {}", describe(&e)))
}

use wire::{describe, might_have_applied};

/// How long a read is retried while etcd endpoints fail (another member may answer).
const READ_RETRY: Duration = Duration::from_secs(8);

/// Runs the read `op` until it succeeds, fails for a reason other than reachability, or
/// [`READ_RETRY`] passed: a request to a dead member fails fast and the next one goes to
/// another member.
async fn retry_read<T, F, Fut>(what: &str, mut op: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    let started = Instant::now();
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if might_have_applied(&e) && started.elapsed() < READ_RETRY => {
                tracing::debug!(error = %describe(&e), what, "etcd read failed; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(unavailable(what)(e)),
        }
    }
}

/// The end of the etcd range of all keys starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl EtcdConn {
    /// Opens a (lazy) connection: nothing is sent until the first request.
    pub async fn connect(config: &EtcdConfig) -> Result<EtcdConn, StoreError> {
        if config.endpoints.is_empty() {
            return Err(StoreError::Unavailable(
                "no etcd endpoints configured (--etcd-endpoints)".into(),
            ));
        }
        if !config.prefix.ends_with('/') {
            return Err(StoreError::Unavailable(format!(
                "the etcd prefix {:?} must end with '/'",
                config.prefix
            )));
        }
        let options = wire::ChannelOptions {
            request_timeout: REQUEST_TIMEOUT,
            connect_timeout: CONNECT_TIMEOUT,
            keep_alive: (Duration::from_secs(5), Duration::from_secs(3)),
            max_message: MAX_MESSAGE,
        };
        let read = |p: &PathBuf, what: &str| {
            std::fs::read(p).map_err(|e| {
                StoreError::Unavailable(format!("reading the etcd {what} {}: {e}", p.display()))
            })
        };
        let mut tls = None;
        if config.ca.is_some() || config.cert.is_some() || config.key.is_some() {
            let identity = match (&config.cert, &config.key) {
                (Some(c), Some(k)) => {
                    Some((read(c, "client certificate")?, read(k, "client key")?))
                }
                (None, None) => None,
                _ => {
                    return Err(StoreError::Unavailable(
                        "--etcd-cert and --etcd-key must be given together".into(),
                    ))
                }
            };
            let ca = match &config.ca {
                Some(ca) => Some(read(ca, "CA")?),
                None => None,
            };
            tls = Some(wire::TlsMaterial { ca, identity });
        }
        let client =
            Client::new(&config.endpoints, &options, tls).map_err(StoreError::Unavailable)?;
        Ok(EtcdConn {
            client,
            prefix: config.prefix.clone(),
        })
    }

    /// The full etcd key of control key `name` (`<prefix>c/<name>`).
    fn control(&self, name: &str) -> Vec<u8> {
        format!("{}c/{name}", self.prefix).into_bytes()
    }

    /// Reads control key `name`: (value, mod_revision).
    pub async fn get_control(&self, name: &str) -> Result<Option<(Vec<u8>, i64)>, StoreError> {
        let key = self.control(name);
        let resp = retry_read("get", || self.client.get(key.clone())).await?;
        Ok(resp
            .kvs
            .into_iter()
            .next()
            .map(|kv| (kv.value, kv.mod_revision)))
    }

    /// Creates control key `name` unless it exists; true when this call created it.
    pub async fn create_control(&self, name: &str, value: Vec<u8>) -> Result<bool, StoreError> {
        let key = self.control(name);
        let txn = pb::TxnRequest {
            compare: vec![wire::version_equals(key.clone(), 0)],
            success: vec![wire::put_op(key, value.clone())],
            failure: Vec::new(),
        };
        let resp = retry_read("create", || self.client.txn(txn.clone())).await?;
        if resp.succeeded {
            return Ok(true);
        }
        // A resend after an unknown outcome finds its own write (values are unique).
        Ok(self
            .get_control(name)
            .await?
            .is_some_and(|(v, _)| v == value))
    }

    /// Control keys under `<prefix>c/<dir>`: (name after `dir`, value).
    pub async fn scan_control(&self, dir: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let start = self.control(dir);
        let request = pb::RangeRequest {
            key: start.clone(),
            range_end: prefix_end(&start),
            ..Default::default()
        };
        let resp = retry_read("scan", || self.client.range(request.clone())).await?;
        Ok(resp
            .kvs
            .into_iter()
            .map(|kv| {
                let name = String::from_utf8_lossy(kv.key.get(start.len()..).unwrap_or_default())
                    .into_owned();
                (name, kv.value)
            })
            .collect())
    }

    /// True when at least one store key (`<prefix>s/`) exists.
    pub async fn has_state(&self) -> Result<bool, StoreError> {
        let start = format!("{}s/", self.prefix).into_bytes();
        let request = pb::RangeRequest {
            key: start.clone(),
            range_end: prefix_end(&start),
            count_only: true,
            ..Default::default()
        };
        let resp = retry_read("count", || self.client.range(request.clone())).await?;
        Ok(resp.count > 0)
    }

    /// etcd's current revision.
    pub async fn revision(&self) -> Result<u64, StoreError> {
        let key = self.control("cluster");
        let resp = retry_read("get", || self.client.get(key.clone())).await?;
        Ok(u64::try_from(wire::header_revision(resp.header.as_ref())).unwrap_or(0))
    }

    /// Writes control key `name` under a lease of `ttl` and keeps the lease alive until the
    /// returned task is aborted (the key then expires). Reconnects after etcd outages.
    pub fn announce(
        &self,
        name: &str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let conn = self.clone();
        let key = self.control(name);
        let ttl_secs = i64::try_from(ttl.as_secs().max(2)).unwrap_or(10);
        tokio::spawn(async move {
            loop {
                if let Err(e) = conn.keep_announced(&key, &value, ttl_secs).await {
                    tracing::warn!(error = %describe(&e), "announcing this replica in etcd failed; retrying");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    }

    async fn keep_announced(&self, key: &[u8], value: &[u8], ttl: i64) -> Result<(), Status> {
        let id = self.client.lease_grant(ttl).await?;
        self.client.put(key.to_vec(), value.to_vec(), id).await?;
        let (keeper, mut responses) = self.client.lease_keep_alive(id).await?;
        let period = Duration::from_secs(u64::try_from(ttl / 3).unwrap_or(1).max(1));
        loop {
            match tokio::time::timeout(REQUEST_TIMEOUT, responses.message()).await {
                Ok(Ok(Some(r))) if r.ttl > 0 => {}
                Ok(Ok(Some(_))) => return Err(Status::unavailable("the lease expired")),
                Ok(Ok(None)) => return Err(Status::unavailable("keep-alive stream closed")),
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(Status::deadline_exceeded("keep-alive timed out")),
            }
            tokio::time::sleep(period).await;
            keeper
                .send(pb::LeaseKeepAliveRequest { id })
                .await
                .map_err(|_| Status::cancelled("keep-alive stream closed"))?;
        }
    }

    /// Watches every store key from `start_revision` on; changes arrive in batches (one per
    /// etcd response). The task ends when the receiver is dropped; a broken watch is
    /// re-established from the last revision seen, so no change is missed (a compacted
    /// revision sends a batch with the key `""`: everything may have changed).
    pub fn watch(&self, start_revision: u64) -> tokio::sync::mpsc::Receiver<Vec<Changed>> {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let conn = self.clone();
        let data_prefix = format!("{}s/", self.prefix).into_bytes();
        tokio::spawn(async move {
            let mut next = i64::try_from(start_revision).unwrap_or(0);
            loop {
                if tx.is_closed() {
                    return;
                }
                let start = data_prefix.clone();
                let end = prefix_end(&start);
                let mut stream = match conn.client.watch(start, end, next).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %describe(&e), "etcd watch failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                loop {
                    let msg = tokio::select! {
                        m = stream.message() => m,
                        _ = tx.closed() => return,
                    };
                    let resp = match msg {
                        Ok(Some(r)) => r,
                        Ok(None) => break,
                        Err(e) => {
                            tracing::warn!(error = %describe(&e), "etcd watch broke; re-establishing");
                            break;
                        }
                    };
                    if resp.compact_revision > 0 {
                        next = resp.compact_revision;
                        let _ = tx
                            .send(vec![Changed {
                                key: String::new(),
                                revision: u64::try_from(next).unwrap_or(0),
                            }])
                            .await;
                        break;
                    }
                    if resp.canceled {
                        tracing::warn!(reason = %resp.cancel_reason, "etcd cancelled the watch; re-establishing");
                        break;
                    }
                    let mut batch = Vec::new();
                    for ev in &resp.events {
                        if let Some(kv) = &ev.kv {
                            let key = kv
                                .key
                                .get(data_prefix.len()..)
                                .map(|k| String::from_utf8_lossy(k).into_owned())
                                .unwrap_or_default();
                            next = next.max(kv.mod_revision + 1);
                            batch.push(Changed {
                                key,
                                revision: u64::try_from(kv.mod_revision).unwrap_or(0),
                            });
                        }
                    }
                    if !batch.is_empty() && tx.send(batch).await.is_err() {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        rx
    }

    /// The store on this connection, its values under `dek`.
    pub fn store(&self, dek: &Secret) -> Result<EtcdStore, StoreError> {
        let key =
            sealing::derive_key(dek, b"quarry etcd values v1").map_err(StoreError::Corrupt)?;
        Ok(EtcdStore {
            conn: self.clone(),
            key,
            head: Mutex::new(None),
        })
    }
}

/// The etcd-backed [`Store`].
pub struct EtcdStore {
    conn: EtcdConn,
    key: Secret,
    head: Mutex<Option<TrackedHead>>,
}

struct TrackedHead {
    tracker: HeadTracker,
    revision: u64,
    /// Log size last written with `revision`.
    log_size: u64,
}

/// One changed store key seen by [`EtcdStore::watch`].
#[derive(Debug, Clone)]
pub struct Changed {
    /// The store key.
    pub key: String,
    /// The etcd revision of the change.
    pub revision: u64,
}

/// How a transaction attempt ended.
enum Attempt {
    Done(u64),
    /// A check failed (the key).
    Conflict(String),
    /// Only increments raced; fresh counter values to retry with.
    Raced(Vec<(String, Option<(u64, i64)>)>),
}

impl EtcdStore {
    fn data_key(&self, key: &str) -> Vec<u8> {
        format!("{}s/{key}", self.conn.prefix).into_bytes()
    }

    fn data_prefix_len(&self) -> usize {
        self.conn.prefix.len() + 2
    }

    fn aad(key: &str) -> Vec<u8> {
        [b"quarry etcd value v1 ".as_slice(), key.as_bytes()].concat()
    }

    fn encrypt(&self, key: &str, value: &[u8]) -> Result<Vec<u8>, StoreError> {
        sealing::seal(&self.key, &Self::aad(key), value).map_err(StoreError::Corrupt)
    }

    fn decrypt(&self, key: &str, value: &[u8]) -> Result<Vec<u8>, StoreError> {
        sealing::open(&self.key, &Self::aad(key), value).map_err(|e| {
            StoreError::Corrupt(format!(
                "etcd value of {key}: {e} (not written under this deployment's data key)"
            ))
        })
    }

    fn versioned(&self, kv: &pb::KeyValue) -> Result<(String, Versioned), StoreError> {
        let name = kv
            .key
            .get(self.data_prefix_len()..)
            .and_then(|k| std::str::from_utf8(k).ok())
            .ok_or_else(|| StoreError::Corrupt("an etcd key is not UTF-8".into()))?
            .to_string();
        let value = self.decrypt(&name, &kv.value)?;
        Ok((
            name,
            Versioned {
                value,
                revision: u64::try_from(kv.mod_revision).unwrap_or(0),
            },
        ))
    }

    /// The connection this store uses.
    pub fn conn(&self) -> &EtcdConn {
        &self.conn
    }

    /// Keeps the rollback evidence current after each commit (see [`super::head`]).
    pub fn track_head(&self, tracker: HeadTracker, revision: u64) {
        if let Ok(mut h) = self.head.lock() {
            let log_size = (tracker.log)().0;
            *h = Some(TrackedHead {
                tracker,
                revision,
                log_size,
            });
        }
    }

    /// The last etcd revision recorded as seen (0 before tracking starts).
    pub fn seen_revision(&self) -> u64 {
        self.head
            .lock()
            .ok()
            .and_then(|h| h.as_ref().map(|t| t.revision))
            .unwrap_or(0)
    }

    /// Records `revision` and the log's current head as seen, when either is newer than the
    /// last recorded. A commit is noted before the log publishes its entries, so the caller
    /// notes again once the log caught up (the watch does): otherwise the evidence would lag
    /// one batch behind and an etcd writer could delete the newest entries unnoticed (an
    /// etcd delete raises the revision). Published entries are committed, so a log size
    /// ahead of `revision` is never a false alarm.
    pub fn note_revision(&self, revision: u64) {
        let Ok(mut guard) = self.head.lock() else {
            return;
        };
        if let Some(t) = guard.as_mut() {
            let (log_size, log_root) = (t.tracker.log)();
            if revision > t.revision || log_size > t.log_size {
                let head = Head {
                    revision: revision.max(t.revision),
                    log_size,
                    log_root,
                };
                match t.tracker.file.write(&head) {
                    Ok(()) => {
                        t.revision = head.revision;
                        t.log_size = log_size;
                    }
                    Err(e) => tracing::warn!(error = %e, "writing the rollback evidence failed"),
                }
            }
        }
    }

    /// Gets one raw etcd key (retried across members).
    async fn raw_get(&self, key: Vec<u8>) -> Result<Option<pb::KeyValue>, StoreError> {
        let resp = retry_read("get", || self.conn.client.get(key.clone())).await?;
        Ok(resp.kvs.into_iter().next())
    }

    /// Reads counter `key`: (value, mod_revision), None when absent.
    async fn read_counter(&self, key: &str) -> Result<Option<(u64, i64)>, StoreError> {
        match self.raw_get(self.data_key(key)).await? {
            None => Ok(None),
            Some(kv) => {
                let plain = self.decrypt(key, &kv.value)?;
                Ok(Some((super::decode_counter(key, &plain)?, kv.mod_revision)))
            }
        }
    }

    /// One transaction attempt with `counters` as the increments' current values.
    async fn attempt(
        &self,
        txn: &Txn,
        counters: &[(String, Option<(u64, i64)>)],
    ) -> Result<(Attempt, Vec<(Vec<u8>, Vec<u8>)>), StoreError> {
        let mut compares = Vec::new();
        for c in &txn.checks {
            compares.push(match c {
                Check::Absent(k) => wire::version_equals(self.data_key(k), 0),
                Check::Revision(k, r) => wire::mod_revision_equals(
                    self.data_key(k),
                    i64::try_from(*r).unwrap_or(i64::MAX),
                ),
            });
        }
        // Counters: compare what was read, put the incremented values.
        let mut values: Vec<(String, u64)> = Vec::new();
        for (key, max) in &txn.increments {
            let current = match values.iter().find(|(k, _)| k == key) {
                Some((_, v)) => *v,
                None => counters
                    .iter()
                    .find(|(k, _)| k == key)
                    .and_then(|(_, v)| *v)
                    .map(|(v, _)| v)
                    .unwrap_or(0),
            };
            if current >= *max {
                // The checks come first (as in the file store): a failed check is a conflict
                // even when a counter is also at its limit.
                if let Some(k) = self.failed_check(txn).await? {
                    return Ok((Attempt::Conflict(k), Vec::new()));
                }
            }
            super::bump_counter(&mut values, key, current, *max)?;
        }
        for (key, read) in counters {
            compares.push(match read {
                None => wire::version_equals(self.data_key(key), 0),
                Some((_, rev)) => wire::mod_revision_equals(self.data_key(key), *rev),
            });
        }
        let mut ops = Vec::new();
        let mut written = Vec::new();
        for (k, v) in txn.puts.iter().map(|(k, v)| (k.clone(), v.clone())).chain(
            values
                .iter()
                .map(|(k, v)| (k.clone(), v.to_be_bytes().to_vec())),
        ) {
            let sealed = self.encrypt(&k, &v)?;
            written.push((self.data_key(&k), sealed.clone()));
            ops.push(wire::put_op(self.data_key(&k), sealed));
        }
        for k in &txn.deletes {
            ops.push(wire::delete_op(self.data_key(k)));
        }
        // On failure, read back every compared key to tell a failed check from a race.
        let mut reads = Vec::new();
        for k in txn
            .checks
            .iter()
            .map(|c| match c {
                Check::Absent(k) | Check::Revision(k, _) => k,
            })
            .chain(counters.iter().map(|(k, _)| k))
        {
            reads.push(wire::get_op(self.data_key(k)));
        }
        let etcd_txn = pb::TxnRequest {
            compare: compares,
            success: ops,
            failure: reads,
        };
        let outcome = self.send_txn(etcd_txn, &written).await?;
        let resp = match outcome {
            Sent::Applied(rev) => return Ok((Attempt::Done(rev), written)),
            Sent::Failed(resp) => resp,
        };
        // Which compare failed? Responses come in the order of `reads`.
        let got: Vec<Option<pb::KeyValue>> = resp
            .responses
            .into_iter()
            .map(|r| match r.response {
                Some(pb::response_op::Response::ResponseRange(g)) => g.kvs.into_iter().next(),
                _ => None,
            })
            .collect();
        for (i, c) in txn.checks.iter().enumerate() {
            let kv = got.get(i).cloned().flatten();
            let (key, ok) = match c {
                Check::Absent(k) => (k, kv.is_none()),
                Check::Revision(k, r) => (
                    k,
                    kv.as_ref()
                        .is_some_and(|kv| u64::try_from(kv.mod_revision).ok() == Some(*r)),
                ),
            };
            if !ok {
                return Ok((Attempt::Conflict(key.clone()), written));
            }
        }
        let mut fresh = Vec::new();
        for (j, (key, _)) in counters.iter().enumerate() {
            let value = match got.get(txn.checks.len() + j).cloned().flatten() {
                None => None,
                Some(kv) => {
                    let plain = self.decrypt(key, &kv.value)?;
                    Some((super::decode_counter(key, &plain)?, kv.mod_revision))
                }
            };
            fresh.push((key.clone(), value));
        }
        Ok((Attempt::Raced(fresh), written))
    }

    /// The first check of `txn` that fails against etcd now, if any.
    async fn failed_check(&self, txn: &Txn) -> Result<Option<String>, StoreError> {
        for c in &txn.checks {
            let (key, ok) = match c {
                Check::Absent(k) => (k, self.raw_get(self.data_key(k)).await?.is_none()),
                Check::Revision(k, r) => (
                    k,
                    self.raw_get(self.data_key(k))
                        .await?
                        .is_some_and(|kv| u64::try_from(kv.mod_revision).ok() == Some(*r)),
                ),
            };
            if !ok {
                return Ok(Some(key.clone()));
            }
        }
        Ok(None)
    }

    /// Sends `txn`; when the outcome is unknown (the request may have been applied), resends
    /// it until etcd answers, and decides from `written` whether an earlier send applied.
    async fn send_txn(
        &self,
        txn: pb::TxnRequest,
        written: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<Sent, StoreError> {
        let started = Instant::now();
        let mut uncertain = false;
        loop {
            match self.conn.client.txn(txn.clone()).await {
                Ok(resp) if resp.succeeded => {
                    let rev = wire::header_revision(resp.header.as_ref());
                    return Ok(Sent::Applied(u64::try_from(rev).unwrap_or(0)));
                }
                Ok(resp) => {
                    if uncertain {
                        if let Some(rev) = self.applied_earlier(written).await? {
                            return Ok(Sent::Applied(rev));
                        }
                    }
                    return Ok(Sent::Failed(resp));
                }
                Err(e) if !might_have_applied(&e) => {
                    return Err(StoreError::Unavailable(format!(
                        "etcd transaction: {}",
                        describe(&e)
                    )));
                }
                Err(e) => {
                    if started.elapsed() > UNKNOWN_OUTCOME_DEADLINE {
                        return Err(StoreError::Unavailable(format!(
                            "etcd transaction: {} (outcome unknown after {}s of retries: check before retrying)",
                            describe(&e),
                            UNKNOWN_OUTCOME_DEADLINE.as_secs()
                        )));
                    }
                    if written.is_empty() {
                        // Deletes only: resending is harmless, but the outcome can't be
                        // proven; report it as unavailable.
                        return Err(StoreError::Unavailable(format!(
                            "etcd transaction: {}",
                            describe(&e)
                        )));
                    }
                    uncertain = true;
                    tracing::warn!(error = %describe(&e), "etcd transaction outcome unknown; resending");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    }

    /// The revision at which a previous send of a transaction writing `written` was applied,
    /// if one was: some written key still holds exactly the ciphertext it wrote.
    async fn applied_earlier(
        &self,
        written: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<Option<u64>, StoreError> {
        for (key, sealed) in written {
            if let Some(kv) = self.raw_get(key.clone()).await? {
                if kv.value == *sealed {
                    return Ok(Some(u64::try_from(kv.mod_revision).unwrap_or(0)));
                }
            }
        }
        Ok(None)
    }
}

enum Sent {
    Applied(u64),
    Failed(pb::TxnResponse),
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        match self.raw_get(self.data_key(key)).await? {
            None => Ok(None),
            Some(kv) => Ok(Some(self.versioned(&kv)?.1)),
        }
    }

    async fn scan(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError> {
        self.scan_from(prefix, prefix).await
    }

    async fn scan_from(
        &self,
        prefix: &str,
        from: &str,
    ) -> Result<Vec<(String, Versioned)>, StoreError> {
        let end = prefix_end(&self.data_key(prefix));
        let mut from = self.data_key(from.max(prefix));
        let mut out = Vec::new();
        let mut revision = 0;
        loop {
            // Every page from the same revision: one consistent snapshot.
            let request = pb::RangeRequest {
                key: from.clone(),
                range_end: end.clone(),
                limit: SCAN_PAGE,
                revision,
                ..Default::default()
            };
            let resp = retry_read("scan", || self.conn.client.range(request.clone())).await?;
            if revision == 0 {
                revision = wire::header_revision(resp.header.as_ref());
            }
            for kv in &resp.kvs {
                out.push(self.versioned(kv)?);
            }
            match resp.kvs.last() {
                Some(last) if resp.more => {
                    from = last.key.clone();
                    from.push(0);
                }
                _ => return Ok(out),
            }
        }
    }

    async fn commit(&self, txn: Txn) -> Result<u64, StoreError> {
        let mut counters = Vec::new();
        for (key, _) in &txn.increments {
            if !counters.iter().any(|(k, _): &(String, _)| k == key) {
                counters.push((key.clone(), self.read_counter(key).await?));
            }
        }
        for _ in 0..MAX_INCREMENT_RACES {
            match self.attempt(&txn, &counters).await?.0 {
                Attempt::Done(rev) => {
                    self.note_revision(rev);
                    return Ok(rev);
                }
                Attempt::Conflict(key) => return Err(StoreError::Conflict(key)),
                Attempt::Raced(fresh) => counters = fresh,
            }
        }
        Err(StoreError::Conflict(
            txn.increments
                .first()
                .map(|(k, _)| k.clone())
                .unwrap_or_default(),
        ))
    }
}

/// Checks `found` (etcd's revision and log) against the last head this replica saw.
pub fn check_head(
    head: &Head,
    revision: u64,
    log_size: u64,
    root_at: impl Fn(u64) -> Option<quarry_api::merkle::Hash>,
) -> Result<(), String> {
    if revision < head.revision || log_size < head.log_size {
        return Err(format!(
            "ROLLBACK: etcd holds an older state than this replica last saw (etcd: revision {revision}, log size {log_size}; last seen: revision {}, log size {}). etcd was restored from an old snapshot; refusing to serve it. Restore the newest etcd state, or move {} aside in the data directory to accept this one deliberately",
            head.revision,
            head.log_size,
            super::head::HEAD_FILE
        ));
    }
    if root_at(head.log_size) != Some(head.log_root) {
        return Err(format!(
            "ROLLBACK: the transparency log in etcd differs from the one this replica saw at size {} (root {}): the etcd state is a fork of the acknowledged history; refusing to serve it. Move {} aside to accept it deliberately",
            head.log_size,
            hex::encode(head.log_root),
            super::head::HEAD_FILE
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
