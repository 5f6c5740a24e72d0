//! Rollback evidence: `<data-dir>/state.head` keeps the last acknowledged (store revision,
//! transparency-log size, log root), MAC'ed with a key derived from the DEK.
//!
//! The file has two 4 KiB slots written alternately in place (`pwrite`, no fsync) by the
//! store's writer thread, after a batch's `fdatasync` returned. So the head never names a
//! state that is not durable in `state.log`; a crash can only leave it behind (an older slot,
//! or a torn slot that fails its MAC while the other slot still verifies), which is never a
//! false alarm. At startup a state older than the head (lower revision, shorter log, or a log
//! whose first `size` entries have another root) is refused: the coordinator enters Recovery
//! and names both. A missing file is only a warning (the data directory predates it, or it
//! was removed deliberately to accept a restored backup); the same directory cannot protect
//! against a host that rolls back every file together, which needs a second place outside it.
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use quarry_api::merkle::Hash;
use quarry_api::Secret;

use crate::sealing;

/// File name inside the data directory.
pub const HEAD_FILE: &str = "state.head";
const MAGIC: &[u8; 8] = b"QRYHEAD1";
const SLOT_SIZE: u64 = 4096;
const BODY_LEN: usize = 8 + 8 + 8 + 8 + 32;
const SLOT_LEN: usize = BODY_LEN + 32;

/// One acknowledged state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Store revision (strictly increasing across commits, kept by compaction).
    pub revision: u64,
    /// Transparency-log size.
    pub log_size: u64,
    /// Transparency-log root at that size.
    pub log_root: Hash,
}

/// The open head file, written after each durable commit batch.
pub struct HeadFile {
    file: File,
    key: ring::hmac::Key,
    seq: u64,
}

fn mac_key(dek: &Secret) -> Result<ring::hmac::Key, String> {
    let k = sealing::derive_key(dek, b"quarry state head v1")?;
    Ok(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, k.expose()))
}

fn encode(key: &ring::hmac::Key, seq: u64, head: &Head) -> Vec<u8> {
    let mut b = Vec::with_capacity(SLOT_LEN);
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&seq.to_be_bytes());
    b.extend_from_slice(&head.revision.to_be_bytes());
    b.extend_from_slice(&head.log_size.to_be_bytes());
    b.extend_from_slice(&head.log_root);
    let tag = ring::hmac::sign(key, &b);
    b.extend_from_slice(tag.as_ref());
    b
}

fn decode(key: &ring::hmac::Key, slot: &[u8]) -> Option<(u64, Head)> {
    let slot = slot.get(..SLOT_LEN)?;
    let (body, tag) = slot.split_at(BODY_LEN);
    if &body[..8] != MAGIC || ring::hmac::verify(key, body, tag).is_err() {
        return None;
    }
    let u = |i: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&body[i..i + 8]);
        u64::from_be_bytes(a)
    };
    let mut log_root = [0u8; 32];
    log_root.copy_from_slice(&body[32..64]);
    Some((
        u(8),
        Head {
            revision: u(16),
            log_size: u(24),
            log_root,
        },
    ))
}

/// Reads the newest slot that verifies. `Ok(None)`: no file. `Err`: a file in which no slot
/// verifies under this DEK (replaced or tampered; a crash tears at most one slot).
pub fn read(dir: &Path, dek: &Secret) -> Result<Option<Head>, String> {
    let path = dir.join(HEAD_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let key = mac_key(dek)?;
    let best = [0usize, SLOT_SIZE as usize]
        .iter()
        .filter_map(|off| decode(&key, bytes.get(*off..)?))
        .max_by_key(|(seq, _)| *seq);
    match best {
        Some((_, head)) => Ok(Some(head)),
        None => Err(format!(
            "{}: no slot authenticates under this state's key (the file was modified or belongs to another state)",
            path.display()
        )),
    }
}

/// Compares the opened state with the acknowledged head; `root_at(n)` is the log root over
/// the first `n` entries (None if the log is shorter).
pub fn check(
    head: &Head,
    revision: u64,
    log_size: u64,
    root_at: impl Fn(u64) -> Option<Hash>,
) -> Result<(), String> {
    if revision < head.revision || log_size < head.log_size {
        return Err(format!(
            "ROLLBACK: the state in state.log is older than the last acknowledged one (state.log: revision {revision}, log size {log_size}; state.head: revision {}, log size {}). An older copy of the state was restored; refusing to serve it. Restore the newest state, or move {HEAD_FILE} aside to accept this one deliberately",
            head.revision, head.log_size
        ));
    }
    if root_at(head.log_size) != Some(head.log_root) {
        return Err(format!(
            "ROLLBACK: the transparency log in state.log differs from the acknowledged one at size {} (state.head root {}): this state is a fork of the acknowledged history; refusing to serve it. Move {HEAD_FILE} aside to accept it deliberately",
            head.log_size,
            hex::encode(head.log_root)
        ));
    }
    Ok(())
}

impl HeadFile {
    /// Opens (or creates) the head file and records `current` durably in it.
    pub fn open(dir: &Path, dek: &Secret, current: &Head) -> Result<HeadFile, String> {
        let path = dir.join(HEAD_FILE);
        let key = mac_key(dek)?;
        let seq = std::fs::read(&path)
            .ok()
            .and_then(|bytes| {
                [0usize, SLOT_SIZE as usize]
                    .iter()
                    .filter_map(|off| decode(&key, bytes.get(*off..)?))
                    .map(|(s, _)| s)
                    .max()
            })
            .unwrap_or(0);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let mut h = HeadFile { file, key, seq };
        // Both slots hold `current` now, so a torn later write always leaves a valid one.
        h.write(current)
            .and_then(|()| h.write(current))
            .and_then(|()| h.file.set_len(2 * SLOT_SIZE))
            .and_then(|()| h.file.sync_all())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        super::file::sync_dir(dir).map_err(|e| e.to_string())?;
        Ok(h)
    }

    /// Records `head` in the older slot (no fsync: see the module docs).
    pub fn write(&mut self, head: &Head) -> std::io::Result<()> {
        self.seq += 1;
        let slot = self.seq % 2;
        self.file
            .write_all_at(&encode(&self.key, self.seq, head), slot * SLOT_SIZE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(revision: u64, log_size: u64, root: u8) -> Head {
        Head {
            revision,
            log_size,
            log_root: [root; 32],
        }
    }

    #[test]
    fn newest_slot_wins_and_a_torn_slot_falls_back() {
        let d = tempfile::tempdir().unwrap();
        let dek = sealing::new_dek().unwrap();
        assert_eq!(read(d.path(), &dek).unwrap(), None);
        let mut f = HeadFile::open(d.path(), &dek, &h(1, 0, 0)).unwrap();
        f.write(&h(5, 2, 7)).unwrap();
        assert_eq!(read(d.path(), &dek).unwrap(), Some(h(5, 2, 7)));
        f.write(&h(6, 3, 8)).unwrap();
        assert_eq!(read(d.path(), &dek).unwrap(), Some(h(6, 3, 8)));
        // Tear the newest slot: the previous head is still there.
        let path = d.path().join(HEAD_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let newest = (f.seq % 2 * SLOT_SIZE) as usize;
        bytes[newest + 20] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read(d.path(), &dek).unwrap(), Some(h(5, 2, 7)));
        // Reopening continues after the highest sequence number.
        drop(f);
        let mut g = HeadFile::open(d.path(), &dek, &h(7, 3, 8)).unwrap();
        g.write(&h(8, 4, 9)).unwrap();
        assert_eq!(read(d.path(), &dek).unwrap(), Some(h(8, 4, 9)));
        // Another DEK, or both slots damaged: an error, not "no evidence".
        assert!(read(d.path(), &sealing::new_dek().unwrap()).is_err());
        std::fs::write(&path, vec![0u8; 8192]).unwrap();
        assert!(read(d.path(), &dek).is_err());
    }

    #[test]
    fn older_or_forked_states_are_refused() {
        let head = h(10, 3, 1);
        let root = |n: u64| (n <= 4).then_some([1u8; 32]);
        assert!(check(&head, 10, 3, root).is_ok());
        assert!(check(&head, 12, 4, root).is_ok());
        let e = check(&head, 9, 3, root).unwrap_err();
        assert!(e.contains("ROLLBACK") && e.contains("revision 9"), "{e}");
        assert!(check(&head, 10, 2, root).is_err());
        let other = |_: u64| Some([2u8; 32]);
        assert!(check(&head, 11, 4, other).unwrap_err().contains("fork"));
    }
}
