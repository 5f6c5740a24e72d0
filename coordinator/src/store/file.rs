//! The embedded store: an append-only log of sealed records in the data directory.
//!
//! File `state.log` = `"QRYLOG01"` ‖ log id (16 random bytes) ‖ records. A record is
//! `u32 BE length` ‖ AES-256-GCM(DEK, nonce ‖ ciphertext ‖ tag) with AAD = log id ‖ record
//! index (u64 BE), so records cannot be reordered, dropped from the middle, or moved between
//! logs without detection. Each commit appends one record and fsyncs before it is
//! acknowledged. Commits go through one writer thread that batches whatever is queued
//! while the previous `fdatasync` runs (group commit): a batch is one `write` of several
//! records and one `fdatasync`, and no commit of a batch is acknowledged, or visible to
//! readers, before that `fdatasync` returned. A failed write is cut off the file again so
//! the log stays appendable (or, if even that fails, the store refuses further commits).
//! The log is compacted (one full snapshot record, written to a temporary
//! file, fsynced and renamed) when it grows past twice its last snapshot. A record cut short
//! at the end of the file is what a crash during a write leaves: it was never acknowledged,
//! so it is dropped with a warning. Anything else that fails to authenticate is corruption.
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;

use async_trait::async_trait;
use quarry_api::Secret;
use serde::{Deserialize, Serialize};

use super::{Check, Store, StoreError, Txn, Versioned};
use crate::sealing;

const MAGIC: &[u8; 8] = b"QRYLOG01";
const HEADER_LEN: usize = 8 + 16;
/// Records larger than this are refused when reading (corruption, not data).
const MAX_RECORD: usize = 512 * 1024 * 1024;
/// Never compact below this size.
const MIN_COMPACT_BYTES: u64 = 4 * 1024 * 1024;
/// Most commits written by one `write` + `fdatasync` (bounds the latency of a batch).
const MAX_BATCH: usize = 256;

/// The log file name inside the data directory.
pub const LOG_FILE: &str = "state.log";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    /// Revision produced by this record.
    rev: u64,
    /// True for a snapshot that replaces everything before it.
    full: bool,
    /// Key, value (base64), revision of the key (only meaningful in snapshots).
    puts: Vec<(String, String, u64)>,
    dels: Vec<String>,
}

struct Writer {
    file: File,
    log_id: [u8; 16],
    next_index: u64,
    size: u64,
    snapshot_size: u64,
}

struct Data {
    map: BTreeMap<String, Versioned>,
    rev: u64,
}

/// The embedded, sealed, append-only store.
pub struct FileStore {
    shared: Arc<Shared>,
    queue: Option<mpsc::Sender<Request>>,
    writer: Option<JoinHandle<()>>,
}

/// What the writer thread and the readers share.
struct Shared {
    path: PathBuf,
    dek: Secret,
    data: RwLock<Data>,
    head: std::sync::Mutex<Option<HeadTracker>>,
}

/// Rollback evidence kept up to date by the writer thread (see [`super::head`]).
pub struct HeadTracker {
    /// The head file.
    pub file: super::head::HeadFile,
    /// The transparency log's current (size, root); it may lag one batch behind, which only
    /// makes the evidence older, never wrong.
    pub log: Box<dyn Fn() -> (u64, quarry_api::merkle::Hash) + Send + Sync>,
}

/// One queued commit and where its outcome goes.
struct Request {
    txn: Txn,
    reply: tokio::sync::oneshot::Sender<Result<u64, StoreError>>,
}

/// What opening found, for the operator's log.
#[derive(Debug, Default)]
pub struct OpenReport {
    /// Records replayed.
    pub records: u64,
    /// Bytes of a torn final record dropped (a crash during an unacknowledged write).
    pub dropped_tail_bytes: u64,
}

impl FileStore {
    /// True if a log exists in `dir`.
    pub fn exists(dir: &Path) -> bool {
        dir.join(LOG_FILE).exists()
    }

    /// Creates a new, empty log in `dir`. Refuses to overwrite an existing one.
    pub fn create(dir: &Path, dek: Secret) -> Result<FileStore, StoreError> {
        let path = dir.join(LOG_FILE);
        let path_for_errors = path.clone();
        let io = io_err(&path_for_errors);
        let mut log_id = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut log_id)
            .map_err(|_| StoreError::Corrupt("system RNG failed".into()))?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(&io)?;
        file.write_all(MAGIC).map_err(&io)?;
        file.write_all(&log_id).map_err(&io)?;
        file.sync_all().map_err(&io)?;
        sync_dir(dir)?;
        FileStore::start(
            path,
            dek,
            Writer {
                file,
                log_id,
                next_index: 0,
                size: HEADER_LEN as u64,
                snapshot_size: 0,
            },
            Data {
                map: BTreeMap::new(),
                rev: 0,
            },
        )
    }

    /// Opens and replays the log in `dir`.
    pub fn open(dir: &Path, dek: Secret) -> Result<(FileStore, OpenReport), StoreError> {
        let path = dir.join(LOG_FILE);
        let path_for_errors = path.clone();
        let io = io_err(&path_for_errors);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(&io)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(&io)?;
        if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
            return Err(StoreError::Corrupt(format!(
                "{}: missing or wrong header (expected {:?} at byte offset 0)",
                path.display(),
                String::from_utf8_lossy(MAGIC)
            )));
        }
        let mut log_id = [0u8; 16];
        log_id.copy_from_slice(&bytes[8..HEADER_LEN]);
        let mut map = BTreeMap::new();
        let mut rev = 0u64;
        let mut off = HEADER_LEN;
        let mut index = 0u64;
        let mut report = OpenReport::default();
        let mut snapshot_size = 0u64;
        while off < bytes.len() {
            let remaining = bytes.len() - off;
            if remaining < 4 {
                report.dropped_tail_bytes = remaining as u64;
                break;
            }
            let len =
                u32::from_be_bytes([bytes[off], bytes[off + 1], bytes[off + 2], bytes[off + 3]])
                    as usize;
            if len > MAX_RECORD {
                return Err(StoreError::Corrupt(format!(
                    "{}: record {index} at byte offset {off} claims {len} bytes",
                    path.display()
                )));
            }
            if remaining - 4 < len {
                report.dropped_tail_bytes = remaining as u64;
                break;
            }
            let sealed = &bytes[off + 4..off + 4 + len];
            let plain = sealing::open(&dek, &aad(&log_id, index), sealed).map_err(|e| {
                StoreError::Corrupt(format!(
                    "{}: record {index} at byte offset {off}: {e}",
                    path.display()
                ))
            })?;
            let record: Record = serde_json::from_slice(&plain).map_err(|e| {
                StoreError::Corrupt(format!(
                    "{}: record {index} at byte offset {off} does not decode: {e}",
                    path.display()
                ))
            })?;
            if record.full {
                map.clear();
                snapshot_size = (4 + len) as u64;
            }
            apply(&mut map, &record).map_err(|e| {
                StoreError::Corrupt(format!(
                    "{}: record {index} at byte offset {off}: {e}",
                    path.display()
                ))
            })?;
            if record.rev <= rev && !(record.full && index == 0) {
                return Err(StoreError::Corrupt(format!(
                    "{}: record {index} at byte offset {off} goes back to revision {} from {rev}",
                    path.display(),
                    record.rev
                )));
            }
            rev = record.rev;
            off += 4 + len;
            index += 1;
        }
        report.records = index;
        if report.dropped_tail_bytes > 0 {
            // Cut the torn record so the next append starts on a record boundary. The cut
            // bytes are kept beside the log first: a flipped length field also looks torn,
            // and the rollback check that refuses such a state runs only after this.
            let torn = dir.join(format!("{LOG_FILE}.torn-{off}"));
            std::fs::write(&torn, &bytes[off..]).map_err(io_err(&torn))?;
            sync_dir(dir)?;
            file.set_len(off as u64).map_err(&io)?;
            file.sync_all().map_err(&io)?;
        }
        file.seek(SeekFrom::End(0)).map_err(&io)?;
        let store = FileStore::start(
            path,
            dek,
            Writer {
                file,
                log_id,
                next_index: index,
                size: off as u64,
                snapshot_size,
            },
            Data { map, rev },
        )?;
        Ok((store, report))
    }

    /// Keeps `state.head` up to date after every durable commit from now on.
    pub fn track_head(&self, tracker: HeadTracker) {
        if let Ok(mut h) = self.shared.head.lock() {
            *h = Some(tracker);
        }
    }

    /// The revision of the last commit.
    pub fn revision(&self) -> u64 {
        self.shared.data.read().map(|d| d.rev).unwrap_or(0)
    }

    /// Starts the writer thread that owns the log file.
    fn start(
        path: PathBuf,
        dek: Secret,
        writer: Writer,
        data: Data,
    ) -> Result<FileStore, StoreError> {
        let shared = Arc::new(Shared {
            path,
            dek,
            data: RwLock::new(data),
            head: std::sync::Mutex::new(None),
        });
        let (queue, requests) = mpsc::channel();
        let for_thread = shared.clone();
        let handle = std::thread::Builder::new()
            .name("quarry-store-writer".into())
            .spawn(move || for_thread.write_loop(writer, requests))
            .map_err(io_err(&shared.path))?;
        Ok(FileStore {
            shared,
            queue: Some(queue),
            writer: Some(handle),
        })
    }
}

impl Shared {
    /// The writer thread: takes the first queued commit and everything queued behind it
    /// (up to [`MAX_BATCH`]), writes them as one batch, repeats until the store is dropped.
    fn write_loop(&self, mut w: Writer, requests: mpsc::Receiver<Request>) {
        let mut broken: Option<String> = None;
        while let Ok(first) = requests.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match requests.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            let outcomes = match &broken {
                Some(reason) => batch.iter().map(|_| Err(self.broken_err(reason))).collect(),
                None => self.commit_batch(&mut w, &batch, &mut broken),
            };
            if outcomes.iter().any(Result::is_ok) {
                self.record_head();
            }
            for (req, outcome) in batch.into_iter().zip(outcomes) {
                // A caller that stopped waiting just does not hear the outcome.
                let _ = req.reply.send(outcome);
            }
            if broken.is_none() && w.size > MIN_COMPACT_BYTES.max(2 * w.snapshot_size) {
                if let Err(e) = self.compact(&mut w, &mut broken) {
                    tracing::warn!(error = %e, "state log compaction failed; still appending to the current log");
                }
            }
        }
    }

    /// Checks each commit against the state plus the earlier commits of the batch, seals
    /// the accepted ones as consecutive records, writes them with one `write` and one
    /// `fdatasync`, and only then applies them to the in-memory state.
    fn commit_batch(
        &self,
        w: &mut Writer,
        batch: &[Request],
        broken: &mut Option<String>,
    ) -> Vec<Result<u64, StoreError>> {
        let mut outcomes: Vec<Result<u64, StoreError>> = Vec::with_capacity(batch.len());
        // Counter values computed for the accepted commits, in order.
        let mut resolved: Vec<Vec<(String, Vec<u8>)>> = Vec::new();
        let mut buf = Vec::new();
        let mut index = w.next_index;
        let rev = match self.data.read() {
            Ok(data) => {
                // Keys written (Some(revision, value)) or deleted (None) earlier in this batch.
                let mut overlay: Overlay = std::collections::HashMap::new();
                let mut rev = data.rev;
                for req in batch {
                    if let Some(key) = failed_check(&data.map, &overlay, &req.txn.checks) {
                        outcomes.push(Err(StoreError::Conflict(key)));
                        continue;
                    }
                    let counted = match evaluate_increments(&data.map, &overlay, &req.txn) {
                        Ok(c) => c,
                        Err(e) => {
                            outcomes.push(Err(e));
                            continue;
                        }
                    };
                    let next = rev + 1;
                    let record = Record {
                        rev: next,
                        full: false,
                        puts: req
                            .txn
                            .puts
                            .iter()
                            .chain(&counted)
                            .map(|(k, v)| (k.clone(), quarry_api::bytes::b64(v), next))
                            .collect(),
                        dels: req.txn.deletes.clone(),
                    };
                    match self.encode(&w.log_id, index, &record, &mut buf) {
                        Ok(()) => {
                            for (k, v) in req.txn.puts.iter().chain(&counted) {
                                overlay.insert(k.clone(), Some((next, v.clone())));
                            }
                            for k in &req.txn.deletes {
                                overlay.insert(k.clone(), None);
                            }
                            rev = next;
                            index += 1;
                            outcomes.push(Ok(next));
                            resolved.push(counted);
                        }
                        Err(e) => outcomes.push(Err(e)),
                    }
                }
                rev
            }
            Err(_) => {
                return batch
                    .iter()
                    .map(|_| Err(StoreError::Corrupt("store lock poisoned".into())))
                    .collect()
            }
        };
        if buf.is_empty() {
            return outcomes;
        }
        let written = w.file.write_all(&buf).and_then(|()| w.file.sync_data());
        if let Err(e) = written {
            // Nothing of this batch is acknowledged. Cut what may have reached the file so
            // the next record starts where the log's index expects it.
            let cut = w
                .file
                .set_len(w.size)
                .and_then(|()| w.file.seek(SeekFrom::Start(w.size)).map(|_| ()))
                .and_then(|()| w.file.sync_data());
            if let Err(cut_err) = cut {
                *broken = Some(format!(
                    "a failed write ({e}) could not be cut off the log ({cut_err}); restart the coordinator to reopen the state"
                ));
            }
            let kind = e.kind();
            for outcome in outcomes.iter_mut().filter(|o| o.is_ok()) {
                *outcome = Err(StoreError::Io {
                    path: self.path.display().to_string(),
                    source: std::io::Error::new(kind, e.to_string()),
                });
            }
            return outcomes;
        }
        w.next_index = index;
        w.size += buf.len() as u64;
        let mut data = match self.data.write() {
            Ok(d) => d,
            Err(_) => {
                *broken = Some("store lock poisoned".into());
                return batch
                    .iter()
                    .map(|_| Err(StoreError::Corrupt("store lock poisoned".into())))
                    .collect();
            }
        };
        let mut counted = resolved.iter();
        for (req, outcome) in batch.iter().zip(&outcomes) {
            let Ok(r) = outcome else { continue };
            let counters = counted.next().map(Vec::as_slice).unwrap_or_default();
            for (k, v) in req.txn.puts.iter().chain(counters) {
                data.map.insert(
                    k.clone(),
                    Versioned {
                        value: v.clone(),
                        revision: *r,
                    },
                );
            }
            for k in &req.txn.deletes {
                data.map.remove(k);
            }
        }
        data.rev = rev;
        outcomes
    }

    /// Writes the rollback evidence after a durable batch (a failure only logs: the commit
    /// itself is durable, and older evidence is never a false alarm).
    fn record_head(&self) {
        let Ok(mut guard) = self.head.lock() else {
            return;
        };
        let Some(tracker) = guard.as_mut() else {
            return;
        };
        let revision = self.data.read().map(|d| d.rev).unwrap_or(0);
        let (log_size, log_root) = (tracker.log)();
        let head = super::head::Head {
            revision,
            log_size,
            log_root,
        };
        if let Err(e) = tracker.file.write(&head) {
            tracing::warn!(error = %e, "could not record the state head (rollback evidence)");
        }
    }

    fn broken_err(&self, reason: &str) -> StoreError {
        StoreError::Io {
            path: self.path.display().to_string(),
            source: std::io::Error::other(reason.to_string()),
        }
    }

    /// Appends `record` sealed as record `index` (length prefix + AES-GCM) to `buf`.
    fn encode(
        &self,
        log_id: &[u8; 16],
        index: u64,
        record: &Record,
        buf: &mut Vec<u8>,
    ) -> Result<(), StoreError> {
        let plain = serde_json::to_vec(record)
            .map_err(|e| StoreError::Corrupt(format!("encoding a record: {e}")))?;
        let sealed =
            sealing::seal(&self.dek, &aad(log_id, index), &plain).map_err(StoreError::Corrupt)?;
        let len = u32::try_from(sealed.len())
            .ok()
            .filter(|l| (*l as usize) <= MAX_RECORD)
            .ok_or_else(|| {
                StoreError::Corrupt(format!("record of {} bytes is too large", sealed.len()))
            })?;
        buf.extend_from_slice(&len.to_be_bytes());
        buf.extend_from_slice(&sealed);
        Ok(())
    }

    /// Rewrites the log as one snapshot record (temporary file, fsync, rename, fsync dir).
    /// Once the rename happened the new log is the only one; if its directory entry cannot
    /// be made durable, the store stops accepting commits (`broken`).
    fn compact(&self, w: &mut Writer, broken: &mut Option<String>) -> Result<(), StoreError> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let tmp = self.path.with_extension("log.tmp");
        let io = io_err(&tmp);
        let _ = std::fs::remove_file(&tmp);
        let (puts, rev) = {
            let data = self
                .data
                .read()
                .map_err(|_| StoreError::Corrupt("store lock poisoned".into()))?;
            (
                data.map
                    .iter()
                    .map(|(k, v)| (k.clone(), quarry_api::bytes::b64(&v.value), v.revision))
                    .collect(),
                data.rev,
            )
        };
        let mut log_id = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut log_id)
            .map_err(|_| StoreError::Corrupt("system RNG failed".into()))?;
        let record = Record {
            rev,
            full: true,
            puts,
            dels: vec![],
        };
        let mut buf = Vec::new();
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&log_id);
        self.encode(&log_id, 0, &record, &mut buf)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(&io)?;
        if let Err(e) = file.write_all(&buf).and_then(|()| file.sync_all()) {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(e));
        }
        std::fs::rename(&tmp, &self.path).map_err(&io)?;
        *w = Writer {
            file,
            log_id,
            next_index: 1,
            size: buf.len() as u64,
            snapshot_size: (buf.len() - HEADER_LEN) as u64,
        };
        if let Err(e) = sync_dir(dir) {
            *broken = Some(format!(
                "the compacted log could not be made durable ({e}); restart the coordinator"
            ));
            return Err(e);
        }
        Ok(())
    }
}

impl Drop for FileStore {
    fn drop(&mut self) {
        // Closing the queue ends the writer thread after the batch in progress.
        self.queue.take();
        if let Some(handle) = self.writer.take() {
            let _ = handle.join();
        }
    }
}

/// Keys written (`Some((revision, value))`) or deleted (`None`) by earlier commits of a batch.
type Overlay = std::collections::HashMap<String, Option<(u64, Vec<u8>)>>;

/// The key of the first check that fails against `map` with `overlay` on top.
fn failed_check(
    map: &BTreeMap<String, Versioned>,
    overlay: &Overlay,
    checks: &[Check],
) -> Option<String> {
    checks.iter().find_map(|check| {
        let (key, ok) = match check {
            Check::Absent(k) => (
                k,
                match overlay.get(k.as_str()) {
                    Some(written) => written.is_none(),
                    None => !map.contains_key(k),
                },
            ),
            Check::Revision(k, r) => (
                k,
                match overlay.get(k.as_str()) {
                    Some(written) => written.as_ref().map(|(rev, _)| *rev) == Some(*r),
                    None => map.get(k).is_some_and(|v| v.revision == *r),
                },
            ),
        };
        (!ok).then(|| key.clone())
    })
}

/// The counter values `txn`'s increments produce, as puts, against `map` with `overlay` on
/// top; several increments of one key add up in order.
fn evaluate_increments(
    map: &BTreeMap<String, Versioned>,
    overlay: &Overlay,
    txn: &Txn,
) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    let mut values: Vec<(String, u64)> = Vec::new();
    for (key, max) in &txn.increments {
        let current = match values.iter().find(|(k, _)| k == key) {
            Some((_, v)) => *v,
            None => {
                let stored = match overlay.get(key.as_str()) {
                    Some(written) => written.as_ref().map(|(_, v)| v.as_slice()),
                    None => map.get(key).map(|v| v.value.as_slice()),
                };
                match stored {
                    Some(bytes) => super::decode_counter(key, bytes)?,
                    None => 0,
                }
            }
        };
        super::bump_counter(&mut values, key, current, *max)?;
    }
    Ok(values
        .into_iter()
        .map(|(k, v)| (k, v.to_be_bytes().to_vec()))
        .collect())
}

#[async_trait]
impl Store for FileStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let data = self
            .shared
            .data
            .read()
            .map_err(|_| StoreError::Corrupt("store lock poisoned".into()))?;
        Ok(data.map.get(key).cloned())
    }

    async fn scan(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError> {
        let data = self
            .shared
            .data
            .read()
            .map_err(|_| StoreError::Corrupt("store lock poisoned".into()))?;
        Ok(data
            .map
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    async fn commit(&self, txn: Txn) -> Result<u64, StoreError> {
        let (reply, outcome) = tokio::sync::oneshot::channel();
        let queue = self
            .queue
            .as_ref()
            .ok_or_else(|| StoreError::Corrupt("the store is closed".into()))?;
        queue
            .send(Request { txn, reply })
            .map_err(|_| StoreError::Corrupt("the store writer thread has stopped".into()))?;
        outcome
            .await
            .map_err(|_| StoreError::Corrupt("the store writer thread has stopped".into()))?
    }
}

fn apply(map: &mut BTreeMap<String, Versioned>, record: &Record) -> Result<(), String> {
    for (k, v, r) in &record.puts {
        let value = quarry_api::bytes::unb64(v).map_err(|e| format!("value of {k}: {e}"))?;
        map.insert(
            k.clone(),
            Versioned {
                value,
                revision: if record.full { *r } else { record.rev },
            },
        );
    }
    for k in &record.dels {
        map.remove(k);
    }
    Ok(())
}

fn aad(log_id: &[u8; 16], index: u64) -> Vec<u8> {
    let mut a = Vec::with_capacity(24 + 14);
    a.extend_from_slice(b"quarry log v1 ");
    a.extend_from_slice(log_id);
    a.extend_from_slice(&index.to_be_bytes());
    a
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// fsync a directory so a rename or create in it is durable.
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

#[cfg(test)]
mod tests;
