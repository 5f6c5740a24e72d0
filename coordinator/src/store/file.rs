//! The embedded store: an append-only log of sealed records in the data directory.
//!
//! File `state.log` = `"QRYLOG01"` ‖ log id (16 random bytes) ‖ records. A record is
//! `u32 BE length` ‖ AES-256-GCM(DEK, nonce ‖ ciphertext ‖ tag) with AAD = log id ‖ record
//! index (u64 BE), so records cannot be reordered, dropped from the middle, or moved between
//! logs without detection. Each commit appends one record and fsyncs before it is
//! acknowledged; the log is compacted (one full snapshot record, written to a temporary
//! file, fsynced and renamed) when it grows past twice its last snapshot. A record cut short
//! at the end of the file is what a crash during a write leaves: it was never acknowledged,
//! so it is dropped with a warning. Anything else that fails to authenticate is corruption.
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

use async_trait::async_trait;
use quarry_api::Secret;
use serde::{Deserialize, Serialize};

use super::seal;
use super::{Check, Store, StoreError, Txn, Versioned};

const MAGIC: &[u8; 8] = b"QRYLOG01";
const HEADER_LEN: usize = 8 + 16;
/// Records larger than this are refused when reading (corruption, not data).
const MAX_RECORD: usize = 512 * 1024 * 1024;
/// Never compact below this size.
const MIN_COMPACT_BYTES: u64 = 4 * 1024 * 1024;

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
    path: PathBuf,
    dek: Secret,
    writer: Mutex<Writer>,
    data: RwLock<Data>,
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
        Ok(FileStore {
            path,
            dek,
            writer: Mutex::new(Writer {
                file,
                log_id,
                next_index: 0,
                size: HEADER_LEN as u64,
                snapshot_size: 0,
            }),
            data: RwLock::new(Data {
                map: BTreeMap::new(),
                rev: 0,
            }),
        })
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
            let len = u32::from_be_bytes([bytes[off], bytes[off + 1], bytes[off + 2], bytes[off + 3]])
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
            let plain = seal::open(&dek, &aad(&log_id, index), sealed).map_err(|e| {
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
            // Cut the torn record so the next append starts on a record boundary.
            file.set_len(off as u64).map_err(&io)?;
            file.sync_all().map_err(&io)?;
        }
        file.seek(SeekFrom::End(0)).map_err(&io)?;
        Ok((
            FileStore {
                path,
                dek,
                writer: Mutex::new(Writer {
                    file,
                    log_id,
                    next_index: index,
                    size: off as u64,
                    snapshot_size,
                }),
                data: RwLock::new(Data { map, rev }),
            },
            report,
        ))
    }

    fn commit_blocking(&self, txn: Txn) -> Result<u64, StoreError> {
        let mut w = self
            .writer
            .lock()
            .map_err(|_| StoreError::Corrupt("store writer lock poisoned".into()))?;
        let rev = {
            let data = self
                .data
                .read()
                .map_err(|_| StoreError::Corrupt("store lock poisoned".into()))?;
            for check in &txn.checks {
                let ok = match check {
                    Check::Absent(k) => !data.map.contains_key(k),
                    Check::Revision(k, r) => data.map.get(k).is_some_and(|v| v.revision == *r),
                };
                if !ok {
                    let key = match check {
                        Check::Absent(k) | Check::Revision(k, _) => k.clone(),
                    };
                    return Err(StoreError::Conflict(key));
                }
            }
            data.rev + 1
        };
        let record = Record {
            rev,
            full: false,
            puts: txn
                .puts
                .iter()
                .map(|(k, v)| (k.clone(), quarry_api::bytes::b64(v), rev))
                .collect(),
            dels: txn.deletes.clone(),
        };
        self.append(&mut w, &record)?;
        {
            let mut data = self
                .data
                .write()
                .map_err(|_| StoreError::Corrupt("store lock poisoned".into()))?;
            for (k, v) in txn.puts {
                data.map.insert(
                    k,
                    Versioned {
                        value: v,
                        revision: rev,
                    },
                );
            }
            for k in txn.deletes {
                data.map.remove(&k);
            }
            data.rev = rev;
        }
        if w.size > MIN_COMPACT_BYTES.max(2 * w.snapshot_size) {
            self.compact(&mut w)?;
        }
        Ok(rev)
    }

    fn append(&self, w: &mut Writer, record: &Record) -> Result<(), StoreError> {
        let io = io_err(&self.path);
        let plain = serde_json::to_vec(record)
            .map_err(|e| StoreError::Corrupt(format!("encoding a record: {e}")))?;
        let sealed = seal::seal(&self.dek, &aad(&w.log_id, w.next_index), &plain)
            .map_err(StoreError::Corrupt)?;
        let mut buf = Vec::with_capacity(4 + sealed.len());
        buf.extend_from_slice(&(sealed.len() as u32).to_be_bytes());
        buf.extend_from_slice(&sealed);
        w.file.write_all(&buf).map_err(&io)?;
        w.file.sync_data().map_err(&io)?;
        w.next_index += 1;
        w.size += buf.len() as u64;
        Ok(())
    }

    /// Rewrites the log as one snapshot record (temporary file, fsync, rename, fsync dir).
    fn compact(&self, w: &mut Writer) -> Result<(), StoreError> {
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
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(&io)?;
        file.write_all(MAGIC).map_err(&io)?;
        file.write_all(&log_id).map_err(&io)?;
        let mut nw = Writer {
            file,
            log_id,
            next_index: 0,
            size: HEADER_LEN as u64,
            snapshot_size: 0,
        };
        let record = Record {
            rev,
            full: true,
            puts,
            dels: vec![],
        };
        self.append(&mut nw, &record)?;
        nw.file.sync_all().map_err(&io)?;
        std::fs::rename(&tmp, &self.path).map_err(&io)?;
        sync_dir(dir)?;
        nw.snapshot_size = nw.size - HEADER_LEN as u64;
        *w = nw;
        Ok(())
    }
}

#[async_trait]
impl Store for FileStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let data = self
            .data
            .read()
            .map_err(|_| StoreError::Corrupt("store lock poisoned".into()))?;
        Ok(data.map.get(key).cloned())
    }

    async fn scan(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, StoreError> {
        let data = self
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
        tokio::task::block_in_place(|| self.commit_blocking(txn))
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
