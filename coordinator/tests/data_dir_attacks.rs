//! An attacker who owns the data directory (issue 20, contract §12): older copies of
//! `state.log`, `state.head` and `sealed-key.json` swapped in, in every combination, a byte
//! flipped anywhere, files truncated or deleted. Each case reopens a real `Core` on real files
//! and pins the outcome: the newest state, or Recovery with the named reason; never a fresh
//! start, never silently older state, except the one combination the data directory alone
//! cannot detect (the log and its head rolled back together, see docs/SECURITY.md).
use std::path::{Path, PathBuf};

use quarry_attestation::simulated::SimPlatform;
use quarry_coordinator::manifest::set as manifest_ops;
use quarry_coordinator::state::{Core, Phase};
use quarry_coordinator::tee::Tee;
use quarry_coordinator::users::secrets::{self as secrets_api, SetSecretsRequest};

const LOG: &str = "state.log";
const HEAD: &str = "state.head";
const KEY: &str = "sealed-key.json";

/// What a reopened coordinator serves.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Running, with this value of the user secret `note`.
    Serving(Vec<u8>),
    /// Waiting for a manifest: a fresh start (or a state without one).
    Fresh,
    /// Recovery, with the reason's code.
    Recovery(&'static str),
}

struct Lab {
    dir: tempfile::TempDir,
    cert: (String, Vec<u8>),
    /// Copies of the three files after step A (note = "A").
    old: Vec<(&'static str, Vec<u8>)>,
    /// Copies after step B (note = "B"), the newest acknowledged state.
    new: Vec<(&'static str, Vec<u8>)>,
}

fn sim_tee(dir: &Path) -> Tee {
    Tee::simulated(&dir.join("sim"), None).unwrap()
}

fn data(dir: &Path) -> PathBuf {
    dir.join("data")
}

fn snapshot(dir: &Path) -> Vec<(&'static str, Vec<u8>)> {
    [LOG, HEAD, KEY]
        .into_iter()
        .map(|f| (f, std::fs::read(data(dir).join(f)).unwrap()))
        .collect()
}

async fn write_note(core: &Core, cert: &[u8], value: &[u8]) {
    let req: SetSecretsRequest = serde_json::from_value(serde_json::json!({
        "secrets": {"note": {"Key": quarry_api::bytes::b64(value)}}
    }))
    .unwrap();
    secrets_api::write(core, Some(cert), req)
        .await
        .expect("alice writes the note");
}

/// Step A: a manifest and note "A"; snapshot; step B: note "B"; snapshot; coordinator stopped.
async fn lab() -> Lab {
    let dir = tempfile::tempdir().unwrap();
    SimPlatform::create(&dir.path().join("sim")).unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "alice".to_string());
    let c = p.self_signed(&key).unwrap();
    let cert = (c.pem(), c.der().to_vec());
    let manifest = serde_json::to_vec(&serde_json::json!({
        "Packages": {"web": {"TEE": "simulated", "SignerID": "00".repeat(32), "ProductID": 1, "SecurityVersion": 1}},
        "Marbles": {"web": {"Package": "web"}},
        "Secrets": {"note": {"Type": "plain", "UserDefined": true}},
        "Users": {"alice": {"Certificate": cert.0, "Roles": ["notes"]}},
        "Roles": {"notes": {"ResourceType": "Secrets", "ResourceNames": ["note"], "Actions": ["ReadSecret", "WriteSecret"]}}
    }))
    .unwrap();
    let core = Core::open(&data(dir.path()), sim_tee(dir.path()))
        .await
        .unwrap();
    manifest_ops::set_manifest(&core, manifest)
        .await
        .expect("the manifest is accepted");
    write_note(&core, &cert.1, b"A").await;
    drop(core);
    let old = snapshot(dir.path());
    let core = Core::open(&data(dir.path()), sim_tee(dir.path()))
        .await
        .unwrap();
    write_note(&core, &cert.1, b"B").await;
    drop(core);
    let new = snapshot(dir.path());
    let lab = Lab {
        dir,
        cert,
        old,
        new,
    };
    assert_eq!(lab.open().await, Outcome::Serving(b"B".to_vec()));
    lab
}

impl Lab {
    fn path(&self, file: &str) -> PathBuf {
        data(self.dir.path()).join(file)
    }

    /// Puts the files back as they were after step B, with `older` taken from step A.
    fn restore(&self, older: &[&str]) {
        for ((name, new), (_, old)) in self.new.iter().zip(&self.old) {
            let bytes = if older.contains(name) { old } else { new };
            std::fs::write(self.path(name), bytes).unwrap();
        }
    }

    fn new_bytes(&self, file: &str) -> &[u8] {
        &self.new.iter().find(|(n, _)| *n == file).unwrap().1
    }

    async fn open(&self) -> Outcome {
        let core = Core::open(&data(self.dir.path()), sim_tee(self.dir.path()))
            .await
            .expect("an attacked data directory is Recovery, never a start-up error");
        let view = core.view();
        match view.phase.as_ref() {
            Phase::Recovery { reason } => Outcome::Recovery(reason.code()),
            Phase::AcceptingManifest => Outcome::Fresh,
            Phase::Running(_) => {
                let mut out = secrets_api::read(&core, Some(&self.cert.1), &["note".into()])
                    .expect("the note is readable");
                let note = out.remove("note").unwrap();
                Outcome::Serving(quarry_api::bytes::unb64(&note.private).unwrap())
            }
        }
    }
}

fn newest() -> Outcome {
    Outcome::Serving(b"B".to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_combination_of_older_files_is_the_newest_state_or_rollback() {
    let lab = lab().await;
    let rollback = Outcome::Recovery("rollback");
    let older = Outcome::Serving(b"A".to_vec());
    // (older files, outcome). An older head or sealed key alone opens the newest state (a
    // crash can leave the head behind; the DEK never changes); an older log is refused by
    // the head. The log and its head rolled back together are consistent with each other:
    // only evidence outside the directory (etcd's split, a pinned log root) detects that.
    let cases: [(&[&str], Outcome); 8] = [
        (&[], newest()),
        (&[KEY], newest()),
        (&[HEAD], newest()),
        (&[HEAD, KEY], newest()),
        (&[LOG], rollback.clone()),
        (&[LOG, KEY], rollback.clone()),
        (&[LOG, HEAD], older.clone()),
        (&[LOG, HEAD, KEY], older.clone()),
    ];
    for (files, want) in cases {
        lab.restore(files);
        assert_eq!(lab.open().await, want, "older copies of {files:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_byte_flipped_anywhere_never_opens_older_or_fresh_state() {
    let lab = lab().await;
    for file in [LOG, HEAD, KEY] {
        let bytes = lab.new_bytes(file).to_vec();
        // Every eighth byte of the first 96 (headers, the head's first slot), then 16 evenly
        // spread positions (a full sweep is ~100 s; these cover every field kind).
        let step = (bytes.len() / 16).max(1);
        let positions = (0..96.min(bytes.len()))
            .step_by(8)
            .chain((96..bytes.len()).step_by(step))
            .chain([4096 + 20, 4096 + 90].into_iter().filter(|_| file == HEAD));
        for i in positions {
            lab.restore(&[]);
            let mut flipped = bytes.clone();
            flipped[i] ^= 0x01;
            std::fs::write(lab.path(file), &flipped).unwrap();
            let got = lab.open().await;
            match file {
                // Every record is sealed under the DEK bound to its index: a flip is a record
                // that does not open, or a torn tail that the head shows was acknowledged.
                LOG => assert!(
                    matches!(got, Outcome::Recovery("unreadable" | "rollback")),
                    "{file} byte {i}: {got:?}"
                ),
                // A flip breaks one slot's MAC; the other slot is the same or an older head.
                HEAD => assert_eq!(got, newest(), "{file} byte {i}"),
                // JSON that no longer parses, a sealed DEK that does not open, or a flip in
                // the informational sealer_id: never another key.
                _ => assert!(
                    got == newest() || matches!(got, Outcome::Recovery("unreadable" | "unseal")),
                    "{file} byte {i}: {got:?}"
                ),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_head_slots_damaged_is_rollback_not_a_new_head() {
    let lab = lab().await;
    lab.restore(&[]);
    let mut head = lab.new_bytes(HEAD).to_vec();
    head[20] ^= 1;
    head[4096 + 20] ^= 1;
    std::fs::write(lab.path(HEAD), &head).unwrap();
    assert_eq!(lab.open().await, Outcome::Recovery("rollback"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_log_is_refused() {
    let lab = lab().await;
    let log = lab.new_bytes(LOG).to_vec();
    for len in [0, 8, 24, 25, log.len() / 2, log.len() - 1] {
        lab.restore(&[]);
        std::fs::write(lab.path(LOG), &log[..len]).unwrap();
        let got = lab.open().await;
        assert!(
            matches!(got, Outcome::Recovery("unreadable" | "rollback")),
            "{LOG} cut to {len} bytes: {got:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_log_is_not_cut_by_the_coordinator() {
    // A flipped length field makes the rest of the log look like a torn final record. The
    // state behind it is gone, so this is Recovery; the bytes behind the flip must
    // still be on disk for the operator to restore (the torn-tail repair must not destroy them).
    let lab = lab().await;
    lab.restore(&[]);
    let mut log = lab.new_bytes(LOG).to_vec();
    let claimed = (log.len() - 24 - 4 + 1) as u32;
    log[24..28].copy_from_slice(&claimed.to_be_bytes());
    std::fs::write(lab.path(LOG), &log).unwrap();
    // Without its records the state has no root CA: unreadable, not a fresh start.
    assert_eq!(lab.open().await, Outcome::Recovery("unreadable"));
    let on_disk = std::fs::read(lab.path(LOG)).unwrap();
    let kept: Vec<PathBuf> = std::fs::read_dir(data(lab.dir.path()))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().contains("torn"))
        .collect();
    let saved: usize = kept.iter().map(|p| std::fs::read(p).unwrap().len()).sum();
    assert_eq!(
        on_disk.len() + saved,
        log.len(),
        "every byte of the refused log is still in the data directory ({kept:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_files_are_recovery_or_the_newest_state() {
    let lab = lab().await;
    let cases: [(&[&str], &[&str], Outcome); 5] = [
        (&[LOG], &[], Outcome::Recovery("state-missing")),
        (&[KEY], &[], Outcome::Recovery("key-missing")),
        (&[KEY], &[LOG], Outcome::Recovery("key-missing")),
        // No head: no evidence (a directory from before the head, or moved aside on purpose).
        (&[HEAD], &[], newest()),
        // ...which is why an older log without its head is the documented limit.
        (&[HEAD], &[LOG], Outcome::Serving(b"A".to_vec())),
    ];
    for (deleted, older, want) in cases {
        lab.restore(older);
        for f in deleted {
            std::fs::remove_file(lab.path(f)).unwrap();
        }
        assert_eq!(
            lab.open().await,
            want,
            "deleted {deleted:?}, older {older:?}"
        );
    }
}

/// A seeded random walk (fixed seed, so a failure reproduces): note writes, restarts, older
/// copies of random file subsets swapped in, and byte flips, each attack undone after its
/// restart. Invariants after every restart: an attacked directory never opens older or fresh
/// state (only the documented log+head pair may), and the honest directory opens the newest
/// note with a log that never shrank.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_random_walk_of_writes_restarts_and_attacks_keeps_the_invariants() {
    let lab = lab().await;
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let mut note = b"B".to_vec();
    let mut snapshots = vec![lab.old.clone()];
    let mut log_size = 0u64;
    for step in 0..16 {
        let current = snapshot(lab.dir.path());
        match next(4) {
            0 => {
                let core = Core::open(&data(lab.dir.path()), sim_tee(lab.dir.path()))
                    .await
                    .unwrap();
                note = format!("note {step}").into_bytes();
                write_note(&core, &lab.cert.1, &note).await;
                drop(core);
                snapshots.push(current);
                continue;
            }
            1 => {}
            2 => {
                let old = &snapshots[next(snapshots.len() as u64) as usize];
                let subset: Vec<&str> = [LOG, HEAD, KEY]
                    .into_iter()
                    .filter(|_| next(2) == 1)
                    .collect();
                for (name, bytes) in old.iter().filter(|(n, _)| subset.contains(n)) {
                    std::fs::write(data(lab.dir.path()).join(name), bytes).unwrap();
                }
                let got = lab.open().await;
                let older_log = subset.contains(&LOG)
                    && old.iter().find(|(n, _)| *n == LOG)
                        != current.iter().find(|(n, _)| *n == LOG);
                let want_ok = if !older_log {
                    got == Outcome::Serving(note.clone())
                } else if subset.contains(&HEAD) {
                    matches!(got, Outcome::Serving(_)) // the documented limit
                } else {
                    got == Outcome::Recovery("rollback")
                };
                assert!(want_ok, "step {step}: older {subset:?}: {got:?}");
            }
            _ => {
                let (name, bytes) = &current[next(3) as usize];
                let mut flipped = bytes.clone();
                let i = next(flipped.len() as u64) as usize;
                flipped[i] ^= 1 << next(8);
                std::fs::write(data(lab.dir.path()).join(name), &flipped).unwrap();
                let got = lab.open().await;
                assert!(
                    got == Outcome::Serving(note.clone())
                        || matches!(got, Outcome::Recovery("unreadable" | "rollback" | "unseal")),
                    "step {step}: {name} byte {i}: {got:?}"
                );
            }
        }
        // Undo the attack; the honest directory opens the newest state, its log never shorter.
        for (name, bytes) in &current {
            std::fs::write(data(lab.dir.path()).join(name), bytes).unwrap();
        }
        for f in std::fs::read_dir(data(lab.dir.path())).unwrap() {
            let p = f.unwrap().path();
            if p.to_string_lossy().contains(".torn-") {
                std::fs::remove_file(p).unwrap();
            }
        }
        let core = Core::open(&data(lab.dir.path()), sim_tee(lab.dir.path()))
            .await
            .unwrap();
        let size = core.view().log.head().0;
        assert!(
            size >= log_size,
            "step {step}: log shrank {log_size} -> {size}"
        );
        log_size = size;
        drop(core);
        assert_eq!(
            lab.open().await,
            Outcome::Serving(note.clone()),
            "step {step}"
        );
    }
}
