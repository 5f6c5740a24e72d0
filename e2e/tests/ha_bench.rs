//! Benchmark (issue 8): activation throughput with 1 and with 3 coordinator replicas on one
//! 3-member etcd cluster (real etcd on loopback). Not part of the test suite (ignored); run
//! it in release mode and read the printed table:
//!
//! ```sh
//! cargo build --release -p quarry-coordinator
//! cargo test --release -p quarry-e2e --test ha_bench -- --ignored --nocapture
//! ```
//!
//! Every activation is a full sidecar-like activation (fresh key, mTLS connection, nonce,
//! simulated evidence) of a marble type with `MaxActivations` 10⁹, so each one is a bounded
//! increment plus a transparency-log entry in one etcd transaction. Clients spread round-robin
//! over the replicas; clients, replicas and etcd members share the machine's cores.
use std::sync::Arc;
use std::time::{Duration, Instant};

use quarry_attestation::simulated::{SimIdentity, SimPlatform, SimProvider};
use quarry_e2e::etcd::{free_port, EtcdCluster};
use quarry_e2e::{activate, fetch_root_unverified, https, jsend, tls_config, Coordinator};

const MARBLE_ID: [u8; 32] = [9; 32];
const ACTIVATIONS: usize = 600;
const CONCURRENCY: usize = 20;

struct Figures {
    replicas: usize,
    per_second: f64,
    p50: Duration,
    p99: Duration,
}

async fn measure(replicas: usize) -> Figures {
    let tmp = tempfile::tempdir().unwrap();
    let platform = tmp.path().join("sim");
    SimPlatform::create(&platform).unwrap();
    let etcd = EtcdCluster::start(3);
    etcd.wait_healthy().await;
    let mut coords = Vec::new();
    for i in 0..replicas {
        let peer = format!("127.0.0.1:{}", free_port());
        let args = [
            "--store",
            "etcd",
            "--etcd-endpoints",
            &etcd.endpoints(),
            "--peer-addr",
            &peer,
        ];
        coords.push(
            Coordinator::start_with(
                &tmp.path().join(format!("r{i}")),
                &platform,
                &tmp.path().join(format!("r{i}.log")),
                &args,
            )
            .unwrap(),
        );
    }
    let root = fetch_root_unverified(&coords[0]).await.unwrap();
    let manifest = serde_json::json!({
        "Packages": {"app": {"TEE": "simulated", "UniqueID": hex::encode(MARBLE_ID)}},
        "Marbles": {"app": {"Package": "app", "MaxActivations": 1_000_000_000u64}}
    });
    let client = https(tls_config(&root, None).unwrap()).unwrap();
    let (code, body) = jsend(
        client
            .post(format!("{}/api/v2/manifest", coords[0].client_url()))
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
    // Every replica serves the manifest before the clock starts.
    for c in &coords {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (code, body) = jsend(
                client
                    .get(format!("{}/api/v2/status", c.client_url()))
                    .send()
                    .await
                    .unwrap(),
            )
            .await
            .unwrap();
            if code == 200 && body["data"]["code"] == 3 {
                break;
            }
            assert!(Instant::now() < deadline, "replica without the manifest");
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
    let urls: Arc<Vec<String>> = Arc::new(coords.iter().map(|c| c.mesh_url()).collect());
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (urls, next, provider, root) =
            (urls.clone(), next.clone(), provider.clone(), root.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if i >= ACTIVATIONS {
                    return latencies;
                }
                let t = Instant::now();
                let (code, body, _) = activate(&urls[i % urls.len()], &root, &provider, "app")
                    .await
                    .unwrap();
                assert_eq!(code, 200, "{body}");
                latencies.push(t.elapsed());
            }
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    Figures {
        replicas,
        per_second: ACTIVATIONS as f64 / elapsed.as_secs_f64(),
        p50: at(0.5),
        p99: at(0.99),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --release -- --ignored --nocapture"]
async fn activation_throughput_one_vs_three_replicas() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut rows = Vec::new();
    for replicas in [1, 3] {
        rows.push(measure(replicas).await);
    }
    println!("\n| replicas | etcd members | activations | concurrency | act/s | p50 ms | p99 ms |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for f in &rows {
        println!(
            "| {} | 3 | {ACTIVATIONS} | {CONCURRENCY} | {:.0} | {:.1} | {:.1} |",
            f.replicas,
            f.per_second,
            f.p50.as_secs_f64() * 1000.0,
            f.p99.as_secs_f64() * 1000.0
        );
    }
}
