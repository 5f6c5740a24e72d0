//! High availability (issue 8) with a real 3-member etcd cluster on loopback (Debian
//! `etcd-server`; `.ci/run` installs it: a missing etcd fails this test, it never skips) and
//! coordinator replicas with `--store etcd`: a manifest set through one replica, 200
//! concurrent activations spread over the replicas with `MaxActivations` held exactly while
//! one etcd member and one coordinator are killed, zero acknowledged loss, a fourth replica
//! joining by attested key sharing, a replica of another build refused the key, and etcd
//! down answered with 503.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quarry_attestation::simulated::{SimIdentity, SimPlatform, SimProvider};
use quarry_e2e::etcd::{free_port, EtcdCluster};
use quarry_e2e::{activate, fetch_root_unverified, https, jsend, tls_config, Coordinator};

const MARBLE_ID: [u8; 32] = [7; 32];

/// The scenarios run one at a time: each starts etcd members and coordinators on two cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
const LIMIT: usize = 50;

struct Replica {
    coord: Coordinator,
}

fn replica_args(etcd: &str, peer_port: u16, wait: &str) -> Vec<String> {
    vec![
        "--store".into(),
        "etcd".into(),
        "--etcd-endpoints".into(),
        etcd.into(),
        "--etcd-prefix".into(),
        "/ha-test/".into(),
        "--peer-addr".into(),
        format!("127.0.0.1:{peer_port}"),
        "--peer-wait".into(),
        wait.into(),
    ]
}

fn start_replica(
    tmp: &Path,
    platform: &Path,
    name: &str,
    etcd: &str,
    wrapper: &[&str],
    wait: &str,
) -> anyhow::Result<Replica> {
    let args = replica_args(etcd, free_port(), wait);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let data = tmp.join(name);
    let log = tmp.join(format!("{name}.log"));
    let coord = Coordinator::start_wrapped_with(wrapper, &data, platform, &log, &args)?;
    Ok(Replica { coord })
}

async fn status_code(root: &str, coord: &Coordinator) -> Option<u64> {
    let client = https(tls_config(root, None).ok()?).ok()?;
    let (code, body) = jsend(
        client
            .get(format!("{}/api/v2/status", coord.client_url()))
            .send()
            .await
            .ok()?,
    )
    .await
    .ok()?;
    (code == 200)
        .then(|| body["data"]["code"].as_u64())
        .flatten()
}

/// All log entries of a replica (paged).
async fn log_entries(root: &str, coord: &Coordinator) -> Vec<serde_json::Value> {
    let client = https(tls_config(root, None).unwrap()).unwrap();
    let mut out = Vec::new();
    let mut from = 0u64;
    loop {
        let (code, body) = jsend(
            client
                .get(format!("{}/api/v2/log?from={from}", coord.client_url()))
                .send()
                .await
                .unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(code, 200, "{body}");
        for e in body["data"]["entries"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            out.push(e);
        }
        match body["data"]["next"].as_u64() {
            Some(n) => from = n,
            None => return out,
        }
    }
}

fn logged_activations(entries: &[serde_json::Value]) -> BTreeMap<String, String> {
    entries
        .iter()
        .filter(|e| e["event"]["type"] == "activation")
        .map(|e| {
            (
                e["event"]["uuid"].as_str().unwrap_or_default().to_string(),
                e["event"]["marbleType"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect()
}

fn other_build(tmp: &Path) -> PathBuf {
    let copy = tmp.join("quarry-coordinator-other-build");
    let mut bytes = std::fs::read(quarry_e2e::bin("quarry-coordinator")).unwrap();
    bytes.extend_from_slice(b"another build");
    std::fs::write(&copy, bytes).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    copy
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_on_etcd_hold_limits_survive_failures_and_share_the_key_only_when_attested() {
    let _one_at_a_time = SERIAL.lock().await;
    tokio::time::timeout(Duration::from_secs(420), scenario())
        .await
        .expect("the HA scenario must finish within 420 s");
}

async fn scenario() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let platform = tmp.path().join("sim");
    SimPlatform::create(&platform).unwrap();
    let mut etcd = EtcdCluster::start(3);
    etcd.wait_healthy().await;
    let endpoints = etcd.endpoints();
    eprintln!("etcd cluster healthy after {:?}", started.elapsed());

    // Replica 0 creates the cluster; 1 and 2 start together and obtain the key from it.
    let r0 = start_replica(tmp.path(), &platform, "r0", &endpoints, &[], "30s").unwrap();
    let (p, e) = (platform.clone(), endpoints.clone());
    let t = tmp.path().to_path_buf();
    let r1 = tokio::task::spawn_blocking(move || start_replica(&t, &p, "r1", &e, &[], "30s"));
    let (p, e) = (platform.clone(), endpoints.clone());
    let t = tmp.path().to_path_buf();
    let r2 = tokio::task::spawn_blocking(move || start_replica(&t, &p, "r2", &e, &[], "30s"));
    let r1 = r1.await.unwrap().unwrap();
    let mut r2 = r2.await.unwrap().unwrap();
    let root = fetch_root_unverified(&r0.coord).await.unwrap();
    for r in [&r0, &r1, &r2] {
        assert_eq!(
            fetch_root_unverified(&r.coord).await.unwrap(),
            root,
            "one root CA for all replicas"
        );
        assert_eq!(status_code(&root, &r.coord).await, Some(2));
    }
    eprintln!("3 replicas up after {:?}", started.elapsed());

    // The manifest through replica 1; every replica serves it (etcd watch).
    let manifest = serde_json::json!({
        "Packages": {"app": {"TEE": "simulated", "UniqueID": hex::encode(MARBLE_ID)}},
        "Marbles": {
            "limited": {"Package": "app", "MaxActivations": LIMIT},
            "free": {"Package": "app"}
        },
        "Secrets": {"shared_key": {"Type": "symmetric-key", "Size": 128, "Shared": true}},
        "Config": {"SealMode": "UniqueKey"}
    });
    let client = https(tls_config(&root, None).unwrap()).unwrap();
    let (code, body) = jsend(
        client
            .post(format!("{}/api/v2/manifest", r1.coord.client_url()))
            .json(&serde_json::json!({
                "manifest": quarry_api::bytes::b64(&serde_json::to_vec(&manifest).unwrap())
            }))
            .send()
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(code, 200, "{body}");
    // A second manifest set through another replica is refused (create-if-absent).
    let (code, _) = jsend(
        client
            .post(format!("{}/api/v2/manifest", r2.coord.client_url()))
            .json(&serde_json::json!({
                "manifest": quarry_api::bytes::b64(&serde_json::to_vec(&manifest).unwrap())
            }))
            .send()
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(code, 409, "a second manifest set must be refused");
    let deadline = Instant::now() + Duration::from_secs(20);
    for r in [&r0, &r1, &r2] {
        while status_code(&root, &r.coord).await != Some(3) {
            assert!(
                Instant::now() < deadline,
                "a replica did not pick up the manifest within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    let provider = Arc::new(
        SimProvider::new(
            SimPlatform::load(&platform).unwrap(),
            SimIdentity {
                unique_id: MARBLE_ID,
                signer_id: [0; 32],
                product_id: 0,
                security_version: 0,
                debug: false,
            },
        )
        .unwrap(),
    );

    // 200 activations (120 of the limited type), 12 at a time, round-robin over the
    // replicas; a failed connection moves on to the next replica like a load balancer would.
    let urls: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(
        [&r0, &r1, &r2].iter().map(|r| r.coord.mesh_url()).collect(),
    ));
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::new(Mutex::new(Vec::new()));
    let refused = Arc::new(AtomicUsize::new(0));
    let transport_failures = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(12));
    let run_started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..200usize {
        let marble_type = if i % 5 < 3 { "limited" } else { "free" };
        let (urls, acked, refused, failures, done, gate, provider, root) = (
            urls.clone(),
            acked.clone(),
            refused.clone(),
            transport_failures.clone(),
            done.clone(),
            gate.clone(),
            provider.clone(),
            root.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.unwrap();
            for attempt in 0..30usize {
                let url = {
                    let u = urls.lock().unwrap();
                    u[(i + attempt) % u.len()].clone()
                };
                match activate(&url, &root, &provider, marble_type).await {
                    Ok((200, _, uuid)) => {
                        acked.lock().unwrap().push((uuid, marble_type.to_string()));
                        done.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    Ok((403, body, _)) if body.to_string().contains("MaxActivations") => {
                        refused.fetch_add(1, Ordering::SeqCst);
                        done.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    Ok((503, _, _)) => {}
                    Ok((code, body, _)) => panic!("activation {i}: HTTP {code}: {body}"),
                    Err(_) => {
                        failures.fetch_add(1, Ordering::SeqCst);
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            panic!("activation {i} never succeeded");
        }));
    }
    // Mid-run: one etcd member and one coordinator die (SIGKILL).
    while done.load(Ordering::SeqCst) < 70 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    etcd.kill(0);
    r2.coord.kill();
    let dead = r2.coord.mesh_url();
    urls.lock().unwrap().retain(|u| *u != dead);
    eprintln!(
        "killed etcd member 0 and replica 2 after {} activations",
        done.load(Ordering::SeqCst)
    );
    for t in tasks {
        t.await.unwrap();
    }
    let run_time = run_started.elapsed();
    let acked = acked.lock().unwrap().clone();
    let limited_acked = acked.iter().filter(|(_, t)| t == "limited").count();
    let failures = transport_failures.load(Ordering::SeqCst);
    eprintln!(
        "200 activations in {run_time:?}: {} acknowledged ({limited_acked} limited), {} refused, {failures} failed connections",
        acked.len(),
        refused.load(Ordering::SeqCst)
    );
    assert_eq!(acked.len() + refused.load(Ordering::SeqCst), 200);
    assert!(
        limited_acked <= LIMIT,
        "MaxActivations exceeded: {limited_acked}"
    );

    // Zero acknowledged loss: every acknowledged activation is in the log of every live
    // replica; the limited type has exactly LIMIT logged activations (its counter).
    let mut logged_by = Vec::new();
    for r in [&r0, &r1] {
        let deadline = Instant::now() + Duration::from_secs(20);
        let logged = loop {
            let logged = logged_activations(&log_entries(&root, &r.coord).await);
            if acked.iter().all(|(u, _)| logged.contains_key(u)) || Instant::now() > deadline {
                break logged;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        for (uuid, t) in &acked {
            assert_eq!(
                logged.get(uuid),
                Some(t),
                "acknowledged activation {uuid} missing from the log"
            );
        }
        logged_by.push(logged);
    }
    assert_eq!(logged_by[0], logged_by[1], "replicas serve the same log");
    let limited_logged = logged_by[0].values().filter(|t| *t == "limited").count();
    assert_eq!(
        limited_logged, LIMIT,
        "the limited type's budget is spent exactly"
    );
    // Only an activation in flight on the killed replica may be logged without an ack.
    assert!(
        limited_logged - limited_acked <= failures,
        "{limited_logged} logged vs {limited_acked} acknowledged"
    );
    if failures == 0 {
        assert_eq!(limited_acked, LIMIT);
    }

    // A fourth replica joins through attested key sharing and serves.
    let r3 = start_replica(tmp.path(), &platform, "r3", &endpoints, &[], "30s").unwrap();
    let st = status_code(&root, &r3.coord).await;
    assert_eq!(
        st,
        Some(3),
        "{}",
        std::fs::read_to_string(&r3.coord.log).unwrap()
    );
    let (code, body, uuid) = activate(&r3.coord.mesh_url(), &root, &provider, "free")
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    let (code, body, _) = activate(&r3.coord.mesh_url(), &root, &provider, "limited")
        .await
        .unwrap();
    assert_eq!(code, 403, "{body}");
    assert!(body.to_string().contains("MaxActivations"), "{body}");
    let r3_log = std::fs::read_to_string(&r3.coord.log).unwrap();
    assert!(
        r3_log.contains("data encryption key obtained from an attested replica"),
        "{r3_log}"
    );
    assert!(
        logged_activations(&log_entries(&root, &r0.coord).await).contains_key(&uuid) || {
            tokio::time::sleep(Duration::from_secs(2)).await;
            logged_activations(&log_entries(&root, &r0.coord).await).contains_key(&uuid)
        }
    );

    // A replica of another build (other measurement; the manifest seals with UniqueKey) gets
    // no key and stays in Recovery.
    let other = other_build(tmp.path());
    let script = format!("shift; exec {} \"$@\"", other.display());
    let wrapper = ["sh", "-c", script.as_str(), "sh"];
    let intruder = start_replica(
        tmp.path(),
        &platform,
        "intruder",
        &endpoints,
        &wrapper,
        "3s",
    )
    .unwrap();
    // In Recovery it has no deployment identity (an ephemeral TLS root only).
    let intruder_root = fetch_root_unverified(&intruder.coord).await.unwrap();
    assert_ne!(intruder_root, root);
    assert_eq!(
        status_code(&intruder_root, &intruder.coord).await,
        Some(1),
        "an unattested replica must not serve"
    );
    let mut shown = String::new();
    for r in [&r0, &r1, &r3] {
        shown.push_str(&std::fs::read_to_string(&r.coord.log).unwrap());
    }
    assert!(
        shown.contains("key sharing refused") && shown.contains("UniqueID"),
        "no refusal logged"
    );
    let intruder_log = std::fs::read_to_string(&intruder.coord.log).unwrap();
    assert!(
        intruder_log.contains("refused by the peer"),
        "{intruder_log}"
    );

    // etcd down: requests that need the state fail with 503 and say why.
    drop(intruder);
    etcd.kill(1);
    etcd.kill(2);
    let t = Instant::now();
    let (code, body, _) = activate(&r0.coord.mesh_url(), &root, &provider, "free")
        .await
        .unwrap();
    assert_eq!(code, 503, "{body}");
    let msg = body["message"].as_str().unwrap_or_default();
    assert!(msg.contains("state store is unavailable"), "{body}");
    assert!(t.elapsed() < Duration::from_secs(30));
    eprintln!("HA scenario finished in {:?}", started.elapsed());
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

async fn set_manifest(root: &str, coord: &Coordinator) {
    let manifest = serde_json::json!({
        "Packages": {"app": {"TEE": "simulated", "UniqueID": hex::encode(MARBLE_ID)}},
        "Marbles": {"free": {"Package": "app"}}
    });
    let client = https(tls_config(root, None).unwrap()).unwrap();
    let (code, body) = jsend(
        client
            .post(format!("{}/api/v2/manifest", coord.client_url()))
            .json(&serde_json::json!({
                "manifest": quarry_api::bytes::b64(&serde_json::to_vec(&manifest).unwrap())
            }))
            .send()
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(code, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_refuses_an_etcd_restored_from_an_old_backup_or_wiped() {
    let _one_at_a_time = SERIAL.lock().await;
    tokio::time::timeout(Duration::from_secs(240), rollback_scenario())
        .await
        .expect("the rollback scenario must finish within 240 s");
}

async fn rollback_scenario() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tmp = tempfile::tempdir().unwrap();
    let platform = tmp.path().join("sim");
    SimPlatform::create(&platform).unwrap();
    let mut etcd = EtcdCluster::start(1);
    etcd.wait_healthy().await;
    let endpoints = etcd.endpoints();
    let mut r0 = start_replica(tmp.path(), &platform, "r0", &endpoints, &[], "5s").unwrap();
    let root = fetch_root_unverified(&r0.coord).await.unwrap();
    set_manifest(&root, &r0.coord).await;
    r0.coord.stop();
    // A backup of etcd's data directory, taken now.
    etcd.kill(0);
    let backup = tmp.path().join("etcd-backup");
    copy_dir(&etcd.data_dir(0), &backup);
    etcd.run(0);
    etcd.wait_healthy().await;
    // The deployment goes on: activations grow the log and the revision.
    let mut r0 = start_replica(tmp.path(), &platform, "r0", &endpoints, &[], "5s").unwrap();
    assert_eq!(status_code(&root, &r0.coord).await, Some(3));
    let provider = SimProvider::new(
        SimPlatform::load(&platform).unwrap(),
        SimIdentity {
            unique_id: MARBLE_ID,
            signer_id: [0; 32],
            product_id: 0,
            security_version: 0,
            debug: false,
        },
    )
    .unwrap();
    for _ in 0..3 {
        let (code, body, _) = activate(&r0.coord.mesh_url(), &root, &provider, "free")
            .await
            .unwrap();
        assert_eq!(code, 200, "{body}");
    }
    r0.coord.stop();
    // etcd is restored from the old backup: the replica refuses to serve it.
    etcd.kill(0);
    std::fs::remove_dir_all(etcd.data_dir(0)).unwrap();
    copy_dir(&backup, &etcd.data_dir(0));
    etcd.run(0);
    etcd.wait_healthy().await;
    let r0 = start_replica(tmp.path(), &platform, "r0", &endpoints, &[], "5s").unwrap();
    let ephemeral = fetch_root_unverified(&r0.coord).await.unwrap();
    assert_ne!(
        ephemeral, root,
        "a refused state must not be served with its identity"
    );
    assert_eq!(status_code(&ephemeral, &r0.coord).await, Some(1));
    let text = std::fs::read_to_string(&r0.coord.log).unwrap();
    assert!(
        text.contains("ROLLBACK: etcd holds an older state"),
        "{text}"
    );
    drop(r0);
    // etcd wiped (a new, empty cluster): no new deployment silently starts over it.
    etcd.kill(0);
    std::fs::remove_dir_all(etcd.data_dir(0)).unwrap();
    etcd.run(0);
    etcd.wait_healthy().await;
    let r0 = start_replica(tmp.path(), &platform, "r0", &endpoints, &[], "5s").unwrap();
    let ephemeral = fetch_root_unverified(&r0.coord).await.unwrap();
    assert_eq!(status_code(&ephemeral, &r0.coord).await, Some(1));
    let text = std::fs::read_to_string(&r0.coord.log).unwrap();
    assert!(text.contains("etcd was wiped or replaced"), "{text}");
}
