//! Crash safety of the sealed state (contract §8, issue 9): activations while the
//! coordinator is SIGKILLed at random moments, then a full disk and a read-only data
//! directory. Invariants: every acknowledged activation is still in the state after any
//! crash, no counter goes backwards, the state always opens (status 3), and a storage
//! failure is a clear error that damages nothing.
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quarry_attestation::simulated::{SimIdentity, SimPlatform, SimProvider};
use quarry_e2e::{activate, fetch_root_unverified, https, jsend, tls_config, Coordinator};

/// SIGKILLs the crash test performs.
const KILLS: usize = 50;
/// MaxActivations of the limited marble type: small enough to be exhausted mid-run.
const LIMIT: u64 = 40;
/// Sidecars running at once while the coordinator is killed.
const WORKERS: usize = 4;

struct Deployment {
    platform: std::path::PathBuf,
    data: std::path::PathBuf,
    provider: Arc<SimProvider>,
    _tmp: tempfile::TempDir,
}

fn deployment() -> Deployment {
    let tmp = tempfile::tempdir().unwrap();
    let platform = tmp.path().join("sim");
    SimPlatform::create(&platform).unwrap();
    let provider = SimProvider::new(
        SimPlatform::load(&platform).unwrap(),
        SimIdentity {
            unique_id: [0x42; 32],
            signer_id: [0; 32],
            product_id: 1,
            security_version: 1,
            debug: false,
        },
    )
    .unwrap();
    Deployment {
        data: tmp.path().join("data"),
        platform,
        provider: Arc::new(provider),
        _tmp: tmp,
    }
}

async fn set_manifest(coord: &Coordinator, root_pem: &str) {
    let manifest = serde_json::json!({
        "Packages": {"pkg": {"TEE": "simulated", "UniqueID": hex::encode([0x42u8; 32])}},
        "Marbles": {
            "free": {"Package": "pkg", "MaxActivations": 1_000_000},
            "limited": {"Package": "pkg", "MaxActivations": LIMIT}
        }
    });
    let body = serde_json::json!({
        "manifest": quarry_api::bytes::b64(&serde_json::to_vec(&manifest).unwrap())
    });
    let client = https(tls_config(root_pem, None).unwrap()).unwrap();
    let (code, v) = jsend(
        client
            .post(format!("{}/api/v2/manifest", coord.client_url()))
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(code, 200, "{v}");
}

/// Status code and the UUIDs of the activation events in the transparency log.
async fn state_of(coord: &Coordinator, root_pem: &str) -> (u64, u64, BTreeSet<String>) {
    let client = https(tls_config(root_pem, None).unwrap()).unwrap();
    let (code, status) = jsend(
        client
            .get(format!("{}/api/v2/status", coord.client_url()))
            .send()
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(code, 200, "{status}");
    let (code, log) = jsend(
        client
            .get(format!("{}/api/v2/log?limit=10000", coord.client_url()))
            .send()
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(code, 200, "{log}");
    assert!(
        log["data"]["next"].is_null(),
        "the log spans more than one page"
    );
    let uuids = log["data"]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"]["type"] == "activation")
        .filter_map(|e| e["event"]["uuid"].as_str().map(str::to_string))
        .collect();
    (
        status["data"]["code"].as_u64().unwrap(),
        log["data"]["size"].as_u64().unwrap(),
        uuids,
    )
}

#[derive(Default)]
struct Acked {
    /// UUIDs whose activation was answered 200.
    uuids: BTreeSet<String>,
    /// Acknowledged activations of the limited type.
    limited: u64,
    /// Set once the limited type was refused as exhausted.
    exhausted: bool,
    /// Limited activations started after exhaustion was reported, yet acknowledged.
    after_exhaustion: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_activations_survive_sigkill_at_random_moments() {
    let d = deployment();
    let log = d.data.with_extension("log");
    let mut coord = Coordinator::start(&d.data, &d.platform, &log).unwrap();
    let root_pem = fetch_root_unverified(&coord).await.unwrap();
    set_manifest(&coord, &root_pem).await;
    let acked = Arc::new(Mutex::new(Acked::default()));
    let root = Arc::new(root_pem.clone());
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut last_log_size = 0u64;
    for kill in 0..KILLS {
        assert!(Instant::now() < deadline, "took too long: {kill} kills");
        let mesh_url = Arc::new(coord.mesh_url());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut workers = Vec::new();
        for w in 0..WORKERS {
            let (mesh_url, root, provider, acked, stop) = (
                mesh_url.clone(),
                root.clone(),
                d.provider.clone(),
                acked.clone(),
                stop.clone(),
            );
            workers.push(tokio::spawn(async move {
                let mut n = 0usize;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let kind = if (n + w).is_multiple_of(2) {
                        "limited"
                    } else {
                        "free"
                    };
                    n += 1;
                    // Exhaustion seen before this activation started is durable: it must
                    // be refused (one that raced with the last unit may still succeed).
                    let exhausted_before = acked.lock().unwrap().exhausted;
                    // Errors (connection cut by the kill) leave the outcome unknown: fine.
                    let Ok((code, v, uuid)) = activate(&mesh_url, &root, &provider, kind).await
                    else {
                        continue;
                    };
                    let mut a = acked.lock().unwrap();
                    match code {
                        200 => {
                            if kind == "limited" {
                                a.limited += 1;
                                if exhausted_before {
                                    a.after_exhaustion.push(uuid.clone());
                                }
                            }
                            a.uuids.insert(uuid);
                        }
                        403 if v["message"].as_str().unwrap_or("").contains("exhausted") => {
                            a.exhausted = true;
                        }
                        _ => {}
                    }
                }
            }));
        }
        // A random moment 20–300 ms into the run (UUID v4 bits as the random source).
        let r = uuid::Uuid::new_v4().as_u128();
        tokio::time::sleep(Duration::from_millis(20 + (r % 280) as u64)).await;
        coord.kill();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for w in workers {
            w.await.unwrap();
        }
        coord = Coordinator::start(&d.data, &d.platform, &log)
            .unwrap_or_else(|e| panic!("restart after kill {kill}: {e}"));
        let (code, size, uuids) = state_of(&coord, &root_pem).await;
        assert_eq!(
            code, 3,
            "after kill {kill} the state did not open as running"
        );
        assert!(
            size >= last_log_size,
            "after kill {kill} the log went back from {last_log_size} to {size} entries"
        );
        last_log_size = size;
        let a = acked.lock().unwrap();
        let lost: Vec<_> = a.uuids.difference(&uuids).collect();
        assert!(
            lost.is_empty(),
            "after kill {kill}: {} acknowledged activations are missing, e.g. {:?}",
            lost.len(),
            lost.first()
        );
    }
    let a = acked.lock().unwrap();
    assert!(
        a.limited <= LIMIT,
        "{} activations of a type with MaxActivations {LIMIT} were acknowledged: a counter went backwards",
        a.limited
    );
    assert!(
        a.after_exhaustion.is_empty(),
        "activations acknowledged after the budget was reported exhausted: {:?}",
        a.after_exhaustion
    );
    assert!(
        a.uuids.len() > 50,
        "too few activations to mean anything: {}",
        a.uuids.len()
    );
    eprintln!(
        "{KILLS} kills, {} acknowledged activations ({} limited, exhausted: {}), log size {last_log_size}",
        a.uuids.len(),
        a.limited,
        a.exhausted
    );
}

/// Names and contents of every file under `dir`.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            out.extend(snapshot(&p));
        } else {
            out.push((p.display().to_string(), std::fs::read(&p).unwrap()));
        }
    }
    out.sort();
    out
}

/// A running deployment with `n` acknowledged activations; returns their UUIDs.
async fn running_with(d: &Deployment, log: &Path, n: usize) -> (String, BTreeSet<String>) {
    let mut coord = Coordinator::start(&d.data, &d.platform, log).unwrap();
    let root = fetch_root_unverified(&coord).await.unwrap();
    set_manifest(&coord, &root).await;
    let mut uuids = BTreeSet::new();
    for _ in 0..n {
        let (code, v, uuid) = activate(&coord.mesh_url(), &root, &d.provider, "free")
            .await
            .unwrap();
        assert_eq!(code, 200, "{v}");
        uuids.insert(uuid);
    }
    coord.stop();
    (root, uuids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_commits_clearly_and_corrupts_nothing() {
    let d = deployment();
    let (root, mut acked) = running_with(&d, &d.data.with_extension("log"), 3).await;
    // The file size limit (RLIMIT_FSIZE) stands in for a full disk: writes past it fail with
    // EFBIG, partially. SIGXFSZ is ignored so the write returns the error instead.
    let state_log = d.data.join("state.log");
    let limit_blocks = (std::fs::metadata(&state_log).unwrap().len() + 3000) / 512;
    let script = format!("trap '' XFSZ; ulimit -f {limit_blocks}; exec \"$@\"");
    let full_log = d.data.with_extension("full.log");
    let mut coord = Coordinator::start_wrapped(
        &["sh", "-c", &script, "sh"],
        &d.data,
        &d.platform,
        &full_log,
    )
    .unwrap();
    let mut refused = 0;
    for _ in 0..20 {
        let (code, v, uuid) = activate(&coord.mesh_url(), &root, &d.provider, "free")
            .await
            .unwrap();
        match code {
            200 => {
                acked.insert(uuid);
            }
            500 | 503 => refused += 1,
            other => panic!("unexpected HTTP {other}: {v}"),
        }
    }
    assert!(refused > 0, "the size limit was never reached");
    // Still responsive, and the cause is in the coordinator's log.
    let (code, _, _) = state_of(&coord, &root).await;
    assert_eq!(code, 3);
    let text = std::fs::read_to_string(&full_log).unwrap();
    assert!(
        text.contains("File too large"),
        "no clear storage error logged:\n{text}"
    );
    coord.kill();
    // With space again the state opens with every acknowledged activation, and grows.
    let coord = Coordinator::start(&d.data, &d.platform, &d.data.with_extension("log")).unwrap();
    let (code, _, uuids) = state_of(&coord, &root).await;
    assert_eq!(code, 3);
    assert!(
        acked.is_subset(&uuids),
        "acknowledged activations lost after the disk was full"
    );
    let (code, v, _) = activate(&coord.mesh_url(), &root, &d.provider, "free")
        .await
        .unwrap();
    assert_eq!(code, 200, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_data_dir_is_a_clear_error_and_changes_nothing() {
    let d = deployment();
    let (root, acked) = running_with(&d, &d.data.with_extension("log"), 3).await;
    let before = snapshot(&d.data);
    let ro_log = d.data.with_extension("ro.log");
    let data = d.data.display().to_string();
    // As root, permissions do not stop writes: bind-mount the directory read-only in a
    // private mount namespace of the coordinator instead.
    let as_root = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "true"])
        .status()
        .is_ok_and(|s| s.success());
    let script = "mount --bind -o ro \"$0\" \"$0\" && exec \"$@\"";
    let wrapper: Vec<&str> = if as_root {
        vec![
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            &data,
        ]
    } else {
        std::process::Command::new("chmod")
            .args(["-R", "a-w", &data])
            .status()
            .unwrap();
        vec![]
    };
    let started = Coordinator::start_wrapped(&wrapper, &d.data, &d.platform, &ro_log);
    let text = std::fs::read_to_string(&ro_log).unwrap_or_default();
    let cause = if as_root {
        "Read-only file system"
    } else {
        "Permission denied"
    };
    assert!(
        text.contains(cause),
        "the read-only data directory is not named as the cause:\n{text}"
    );
    // An unusable directory is an operator problem, not damaged state: the coordinator
    // refuses to start (it used to enter Recovery, which invites a new deployment).
    if let Ok(mut coord) = started {
        coord.kill();
        panic!("a coordinator that cannot write its state started:\n{text}");
    }
    assert!(
        text.contains("is not writable") && text.contains("the stored state was not touched"),
        "the refusal says what to fix:\n{text}"
    );
    if !as_root {
        std::process::Command::new("chmod")
            .args(["-R", "u+w", &data])
            .status()
            .unwrap();
    }
    assert!(
        before == snapshot(&d.data),
        "the data directory was modified"
    );
    let coord = Coordinator::start(&d.data, &d.platform, &d.data.with_extension("log")).unwrap();
    let (code, _, uuids) = state_of(&coord, &root).await;
    assert_eq!(code, 3);
    assert!(acked.is_subset(&uuids));
}
