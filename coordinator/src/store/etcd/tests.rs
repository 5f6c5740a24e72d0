//! Tests of the etcd store against a real etcd (`/usr/bin/etcd`, Debian `etcd-server`; `.ci/run`
//! installs it). A missing etcd fails the tests: they never skip.
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use super::*;

/// etcd's `--max-txn-ops` for Quarry (etcd's default of 128 is below one group commit).
pub(crate) const MAX_TXN_OPS: &str = "4096";

/// One etcd member on free loopback ports, killed (and its data removed) on drop.
pub(crate) struct TestEtcd {
    child: Child,
    _dir: tempfile::TempDir,
    /// Client URL.
    pub url: String,
}

impl Drop for TestEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// PEM files of a test PKI for etcd over TLS: CA, server and client certificates.
pub(crate) struct TestPki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TestPki {
    fn create(dir: &std::path::Path) -> TestPki {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair,
        };
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "quarry test etcd CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, &ca_key);
        let leaf = |names: Vec<String>, usage: Vec<ExtendedKeyUsagePurpose>| {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(names).unwrap();
            p.extended_key_usages = usage;
            let cert = p.signed_by(&key, &issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server, server_key) = leaf(
            vec!["127.0.0.1".into(), "localhost".into()],
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        );
        let (client, client_key) = leaf(
            vec!["quarry".into()],
            vec![ExtendedKeyUsagePurpose::ClientAuth],
        );
        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        TestPki {
            ca: write("ca.pem", &ca_cert.pem()),
            server_cert: write("server.pem", &server),
            server_key: write("server-key.pem", &server_key),
            client_cert: write("client.pem", &client),
            client_key: write("client-key.pem", &client_key),
        }
    }
}

impl TestEtcd {
    /// Starts etcd and waits until it answers.
    pub(crate) async fn start() -> TestEtcd {
        TestEtcd::start_with(None).await
    }

    /// Starts etcd, serving its clients over TLS with client-certificate authentication when
    /// `pki` is given.
    pub(crate) async fn start_with(pki: Option<&TestPki>) -> TestEtcd {
        let bin = std::env::var("QUARRY_ETCD_BIN").unwrap_or_else(|_| "etcd".into());
        let dir = tempfile::tempdir().expect("temp dir");
        let (client, peer) = (free_port(), free_port());
        let scheme = if pki.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let mut tls_args: Vec<String> = Vec::new();
        if let Some(p) = pki {
            for (flag, path) in [
                ("--cert-file", &p.server_cert),
                ("--key-file", &p.server_key),
                ("--trusted-ca-file", &p.ca),
            ] {
                tls_args.push(flag.into());
                tls_args.push(path.display().to_string());
            }
            tls_args.push("--client-cert-auth".into());
        }
        let child = Command::new(&bin)
            .args(&tls_args)
            .args([
                "--name",
                "t",
                "--data-dir",
                &dir.path().join("etcd").display().to_string(),
                "--listen-client-urls",
                &url,
                "--advertise-client-urls",
                &url,
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
                "--initial-cluster",
                &format!("t={peer_url}"),
                "--max-txn-ops",
                MAX_TXN_OPS,
                "--log-level",
                "error",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run {bin} ({e}): the etcd tests need a real etcd; install Debian's etcd-server (.ci/run does)")
            });
        let etcd = TestEtcd {
            child,
            _dir: dir,
            url,
        };
        let conn = etcd.conn_with("/probe/", pki).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        while conn.revision().await.is_err() {
            assert!(Instant::now() < deadline, "etcd did not start within 20 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        etcd
    }

    pub(crate) async fn conn(&self, prefix: &str) -> EtcdConn {
        self.conn_with(prefix, None).await
    }

    async fn conn_with(&self, prefix: &str, pki: Option<&TestPki>) -> EtcdConn {
        EtcdConn::connect(&EtcdConfig {
            endpoints: vec![self.url.clone()],
            prefix: prefix.into(),
            ca: pki.map(|p| p.ca.clone()),
            cert: pki.map(|p| p.client_cert.clone()),
            key: pki.map(|p| p.client_key.clone()),
        })
        .await
        .expect("connect")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_compare_on_revisions_and_values_are_encrypted() {
    let etcd = TestEtcd::start().await;
    let conn = etcd.conn("/q1/").await;
    let dek = sealing::new_dek().unwrap();
    let store = conn.store(&dek).unwrap();
    let r1 = store
        .commit(Txn::new().require_absent("a").put("a", b"one".to_vec()))
        .await
        .unwrap();
    let got = store.get("a").await.unwrap().unwrap();
    assert_eq!(got.value, b"one");
    assert_eq!(got.revision, r1);
    // Create-if-absent refuses the second writer.
    let again = store
        .commit(Txn::new().require_absent("a").put("a", b"two".to_vec()))
        .await;
    assert!(matches!(again, Err(StoreError::Conflict(k)) if k == "a"));
    // A stale-revision write is refused and overwrites nothing.
    let r2 = store
        .commit(Txn::new().require("a", Some(r1)).put("a", b"two".to_vec()))
        .await
        .unwrap();
    assert!(r2 > r1);
    let stale = store
        .commit(
            Txn::new()
                .require("a", Some(r1))
                .put("a", b"stale".to_vec()),
        )
        .await;
    assert!(matches!(stale, Err(StoreError::Conflict(k)) if k == "a"));
    assert_eq!(store.get("a").await.unwrap().unwrap().value, b"two");
    // The raw etcd value is ciphertext bound to its key.
    let raw_client = etcd.conn("/").await.client;
    let raw = raw_client.get(b"/q1/s/a".to_vec()).await.unwrap();
    let raw = raw.kvs[0].value.clone();
    assert!(!raw.windows(3).any(|w| w == b"two"));
    raw_client.put(b"/q1/s/b".to_vec(), raw, 0).await.unwrap();
    let moved = store.get("b").await;
    assert!(matches!(moved, Err(StoreError::Corrupt(_))), "{moved:?}");
    // Another DEK cannot read the values.
    let other = conn.store(&sealing::new_dek().unwrap()).unwrap();
    assert!(matches!(other.get("a").await, Err(StoreError::Corrupt(_))));
    // Deletes, and scans stay within the prefix, sorted.
    store
        .commit(
            Txn::new()
                .put("p/2", b"x".to_vec())
                .put("p/1", b"y".to_vec())
                .put("q", b"z".to_vec()),
        )
        .await
        .unwrap();
    store
        .commit(Txn {
            deletes: vec!["b".into()],
            ..Txn::new()
        })
        .await
        .unwrap();
    assert!(store.get("b").await.unwrap().is_none());
    let keys: Vec<String> = store
        .scan("p/")
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(keys, ["p/1", "p/2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_stale_writers_retry_and_never_overwrite() {
    let etcd = TestEtcd::start().await;
    let dek = sealing::new_dek().unwrap();
    // Two "replicas" (separate connections) add to one list with read-modify-CAS.
    let mut tasks = Vec::new();
    for w in 0..4u8 {
        let store = Arc::new(etcd.conn("/q2/").await.store(&dek).unwrap());
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0;
            for i in 0..25u8 {
                loop {
                    let cur = store.get("list").await.unwrap();
                    let mut v = cur.as_ref().map(|c| c.value.clone()).unwrap_or_default();
                    v.push(w * 25 + i);
                    match store
                        .commit(
                            Txn::new()
                                .require("list", cur.map(|c| c.revision))
                                .put("list", v),
                        )
                        .await
                    {
                        Ok(_) => break,
                        Err(StoreError::Conflict(_)) => conflicts += 1,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
            conflicts
        }));
    }
    let mut conflicts = 0;
    for t in tasks {
        conflicts += t.await.unwrap();
    }
    let store = etcd.conn("/q2/").await.store(&dek).unwrap();
    let list = store.get("list").await.unwrap().unwrap().value;
    assert_eq!(list.len(), 100, "every acknowledged write is kept");
    let mut sorted = list.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 100);
    assert!(
        conflicts > 0,
        "the writers did race (stale revisions refused)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_increments_hold_exactly_across_connections() {
    let etcd = TestEtcd::start().await;
    let dek = sealing::new_dek().unwrap();
    let mut tasks = Vec::new();
    for w in 0..4 {
        let store = Arc::new(etcd.conn("/q3/").await.store(&dek).unwrap());
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            for i in 0..20 {
                let k = format!("log/{w}-{i}");
                match store
                    .commit(
                        Txn::new()
                            .require_absent(&k)
                            .put(&k, vec![1])
                            .increment("count", 30),
                    )
                    .await
                {
                    Ok(_) => ok += 1,
                    Err(StoreError::LimitReached { max: 30, .. }) => {}
                    Err(e) => panic!("{e}"),
                }
            }
            ok
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap();
    }
    assert_eq!(ok, 30);
    let store = etcd.conn("/q3/").await.store(&dek).unwrap();
    let v = store.get("count").await.unwrap().unwrap().value;
    assert_eq!(super::super::decode_counter("count", &v).unwrap(), 30);
    assert_eq!(store.scan("log/").await.unwrap().len(), 30);
    // A failing check wins over the increment and nothing is written.
    store.commit(Txn::new().put("x", vec![1])).await.unwrap();
    let r = store
        .commit(Txn::new().require_absent("x").increment("other", 5))
        .await;
    assert!(matches!(r, Err(StoreError::Conflict(k)) if k == "x"));
    assert!(store.get("other").await.unwrap().is_none());
    // Also when the counter is at its limit: the check is reported, as in the file store.
    let r = store
        .commit(Txn::new().require_absent("x").increment("count", 30))
        .await;
    assert!(
        matches!(r, Err(StoreError::Conflict(ref k)) if k == "x"),
        "{r:?}"
    );
    let r = store.commit(Txn::new().increment("count", 30)).await;
    assert!(
        matches!(r, Err(StoreError::LimitReached { max: 30, .. })),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scans_page_through_many_keys() {
    let etcd = TestEtcd::start().await;
    let store = etcd
        .conn("/q4/")
        .await
        .store(&sealing::new_dek().unwrap())
        .unwrap();
    for chunk in 0..5 {
        let mut t = Txn::new();
        for i in 0..500 {
            t = t.put(&format!("k/{:05}", chunk * 500 + i), vec![7; 10]);
        }
        store.commit(t).await.unwrap();
    }
    let all = store.scan("k/").await.unwrap();
    assert_eq!(all.len(), 2500);
    assert!(all.windows(2).all(|w| w[0].0 < w[1].0));
    // A range read of the tail (how a replica catches up with the log).
    let tail = store.scan_from("k/", "k/02400").await.unwrap();
    assert_eq!(tail.len(), 100);
    assert_eq!(tail[0].0, "k/02400");
    assert!(store.scan_from("k/", "k/9").await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_etcd_is_unavailable_not_corrupt() {
    let port = free_port();
    let conn = EtcdConn::connect(&EtcdConfig {
        endpoints: vec![format!("http://127.0.0.1:{port}")],
        prefix: "/q/".into(),
        ca: None,
        cert: None,
        key: None,
    })
    .await
    .unwrap();
    let store = conn.store(&sealing::new_dek().unwrap()).unwrap();
    let started = Instant::now();
    let e = store.get("a").await.unwrap_err();
    assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
    assert!(e.to_string().contains("unavailable"), "{e}");
    let e = store
        .commit(Txn::new().put("a", vec![1]))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(60));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_reports_changes_and_control_keys_stay_apart() {
    let etcd = TestEtcd::start().await;
    let conn = etcd.conn("/q5/").await;
    let store = Arc::new(conn.store(&sealing::new_dek().unwrap()).unwrap());
    assert!(!conn.has_state().await.unwrap());
    assert!(conn.create_control("cluster", b"m".to_vec()).await.unwrap());
    assert!(!conn.create_control("cluster", b"n".to_vec()).await.unwrap());
    assert_eq!(conn.get_control("cluster").await.unwrap().unwrap().0, b"m");
    assert!(!conn.has_state().await.unwrap());
    let start = conn.revision().await.unwrap() + 1;
    let mut rx = conn.watch(start);
    store
        .commit(Txn::new().put("manifest/raw", vec![1]))
        .await
        .unwrap();
    let batch = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a watch event within 10 s")
        .unwrap();
    assert_eq!(batch[0].key, "manifest/raw");
    assert!(conn.has_state().await.unwrap());
    let announced = conn.announce("peers/r1", b"127.0.0.1:1".to_vec(), Duration::from_secs(3));
    let deadline = Instant::now() + Duration::from_secs(10);
    while conn.scan_control("peers/").await.unwrap().is_empty() {
        assert!(Instant::now() < deadline, "announcement missing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        conn.scan_control("peers/").await.unwrap(),
        vec![("r1".to_string(), b"127.0.0.1:1".to_vec())]
    );
    announced.abort();
    // The lease lapses once nobody keeps it alive.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !conn.scan_control("peers/").await.unwrap().is_empty() {
        assert!(Instant::now() < deadline, "announcement did not expire");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn rollback_is_detected_against_the_last_seen_head() {
    let root = [7u8; 32];
    let head = Head {
        revision: 10,
        log_size: 3,
        log_root: root,
    };
    assert!(check_head(&head, 10, 3, |_| Some(root)).is_ok());
    assert!(check_head(&head, 12, 5, |_| Some(root)).is_ok());
    let e = check_head(&head, 9, 3, |_| Some(root)).unwrap_err();
    assert!(e.contains("ROLLBACK") && e.contains("revision 9"), "{e}");
    assert!(check_head(&head, 11, 2, |_| Some(root)).is_err());
    assert!(check_head(&head, 11, 3, |_| Some([0; 32])).is_err());
}

#[test]
fn prefix_ends_cover_the_prefix() {
    assert_eq!(prefix_end(b"/q/s/"), b"/q/s0");
    assert_eq!(prefix_end(b"a\xff"), b"b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::create(dir.path());
    let etcd = TestEtcd::start_with(Some(&pki)).await;
    assert!(etcd.url.starts_with("https://"));
    let dek = sealing::new_dek().unwrap();
    let store = etcd
        .conn_with("/tls/", Some(&pki))
        .await
        .store(&dek)
        .unwrap();
    store
        .commit(Txn::new().require_absent("k").put("k", b"v".to_vec()))
        .await
        .unwrap();
    assert_eq!(store.get("k").await.unwrap().unwrap().value, b"v");
    // Without a client certificate etcd refuses the connection: unavailable, not corrupt.
    let anonymous = EtcdConn::connect(&EtcdConfig {
        endpoints: vec![etcd.url.clone()],
        prefix: "/tls/".into(),
        ca: Some(pki.ca.clone()),
        cert: None,
        key: None,
    })
    .await
    .unwrap()
    .store(&dek)
    .unwrap();
    assert!(matches!(
        anonymous.get("k").await,
        Err(StoreError::Unavailable(_))
    ));
    // A key without its certificate is a configuration error naming the flags.
    let half = EtcdConn::connect(&EtcdConfig {
        endpoints: vec![etcd.url.clone()],
        prefix: "/tls/".into(),
        ca: Some(pki.ca.clone()),
        cert: None,
        key: Some(pki.client_key.clone()),
    })
    .await;
    assert!(half.err().unwrap().to_string().contains("--etcd-cert"));
}

/// The store alone does not see an older ciphertext put back at its own key (a value's AEAD
/// binds the key name only): a bounded counter can be spent again at this level. That is why
/// the layers above never trust a stored value on its own: activation counts the log's events
/// (`an_older_activation_counter_grants_no_activation_beyond_max_activations`) and every other
/// replay-sensitive key is checked against the log's value digests
/// (`older_values_replayed_at_their_own_keys_are_refused_running_and_at_restart`). What the
/// store refuses itself: the same bytes under another key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_counter_ciphertext_is_not_seen_by_the_store_alone() {
    let etcd = TestEtcd::start().await;
    let dek = sealing::new_dek().unwrap();
    let store = etcd.conn("/q9/").await.store(&dek).unwrap();
    let raw_client = etcd.conn("/").await.client;
    store
        .commit(Txn::new().increment("count", 2))
        .await
        .unwrap();
    let at_one = raw_client.get(b"/q9/s/count".to_vec()).await.unwrap().kvs[0]
        .value
        .clone();
    store
        .commit(Txn::new().increment("count", 2))
        .await
        .unwrap();
    let spent = store.commit(Txn::new().increment("count", 2)).await;
    assert!(
        matches!(spent, Err(StoreError::LimitReached { max: 2, .. })),
        "{spent:?}"
    );
    raw_client
        .put(b"/q9/s/other".to_vec(), at_one.clone(), 0)
        .await
        .unwrap();
    assert!(matches!(
        store.get("other").await,
        Err(StoreError::Corrupt(_))
    ));
    raw_client
        .put(b"/q9/s/count".to_vec(), at_one, 0)
        .await
        .unwrap();
    let v = store.get("count").await.unwrap().unwrap().value;
    assert_eq!(super::super::decode_counter("count", &v).unwrap(), 1);
    store
        .commit(Txn::new().increment("count", 2))
        .await
        .expect("the store alone spends the replayed counter again");
}

/// An etcd writer who deletes the manifest key must not turn a running deployment into one
/// that accepts a new manifest under the same identity (manifest injection): the log records
/// the manifest, so its absence is Recovery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_manifest_key_is_recovery_not_a_new_manifest_under_the_same_identity() {
    use crate::state::{keys, Phase};
    let etcd = TestEtcd::start().await;
    let lab = EtcdLab::bare(&etcd, "/q10/");
    let open = || lab.open();
    let core = open().await;
    let manifest = serde_json::json!({
        "Packages": {"web": {"TEE": "simulated", "SignerID": "00".repeat(32), "ProductID": 1, "SecurityVersion": 1}},
        "Marbles": {"web": {"Package": "web"}}
    });
    crate::manifest::set::set_manifest(&core, serde_json::to_vec(&manifest).unwrap())
        .await
        .unwrap();
    drop(core);
    let raw_client = etcd.conn("/").await.client;
    raw_client
        .txn(pb::TxnRequest {
            success: vec![wire::delete_op(
                format!("/q10/s/{}", keys::MANIFEST).into_bytes(),
            )],
            ..Default::default()
        })
        .await
        .unwrap();
    let core = open().await;
    match core.view().phase.as_ref() {
        Phase::Recovery { reason } => {
            assert_eq!(reason.code(), "unreadable", "{reason}");
            assert!(reason.to_string().contains(keys::MANIFEST), "{reason}");
        }
        Phase::AcceptingManifest => panic!("a deleted manifest key reopened as a fresh deployment"),
        Phase::Running(_) => panic!("the deleted manifest is still served"),
    }
}

/// An etcd writer who puts the older ciphertext of `manifest/raw` back after an update (its
/// AEAD binds the key name, not the version) gets Recovery, not the older manifest: the
/// transparency log, covered by the rollback evidence, names the manifest the store must hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_manifest_ciphertext_replayed_at_its_own_key_is_recovery() {
    use crate::state::{keys, Phase};
    let etcd = TestEtcd::start().await;
    let lab = EtcdLab::bare(&etcd, "/q12/");
    let open = || lab.open();
    let owner = user_cert("owner");
    let manifest = |version: &str| {
        serde_json::to_vec(&serde_json::json!({
            "Packages": {"web": {"TEE": "simulated", "SignerID": "00".repeat(32), "ProductID": 1, "SecurityVersion": 1}},
            "Marbles": {"web": {"Package": "web", "Parameters": {"Env": {"VERSION": version}}}},
            "Users": {"owner": {"Certificate": owner.pem(), "Roles": ["owner"]}},
            "Roles": {"owner": {"ResourceType": "Manifest", "Actions": ["UpdateManifest"]}}
        }))
        .unwrap()
    };
    let core = open().await;
    crate::manifest::set::set_manifest(&core, manifest("1"))
        .await
        .unwrap();
    let raw_client = etcd.conn("/").await.client;
    let etcd_key = format!("/q12/s/{}", keys::MANIFEST).into_bytes();
    let first = raw_client.get(etcd_key.clone()).await.unwrap().kvs[0]
        .value
        .clone();
    let applied = crate::manifest::update::propose(&core, Some(owner.der()), manifest("2"))
        .await
        .expect("the owner updates alone");
    assert_eq!(applied.missing_acknowledgments, 0, "{}", applied.message);
    let second = raw_client.get(etcd_key.clone()).await.unwrap().kvs[0]
        .value
        .clone();
    assert_ne!(first, second, "the update rewrote manifest/raw");
    drop(core);
    // The honest store reopens with the update.
    let core = open().await;
    assert!(matches!(core.view().phase.as_ref(), Phase::Running(_)));
    drop(core);
    raw_client.put(etcd_key, first, 0).await.unwrap();
    let core = open().await;
    match core.view().phase.as_ref() {
        Phase::Recovery { reason } => {
            assert_eq!(reason.code(), "unreadable", "{reason}");
            assert!(
                reason
                    .to_string()
                    .contains("not the one the transparency log last recorded"),
                "{reason}"
            );
        }
        Phase::AcceptingManifest => panic!("the replayed manifest reopened as fresh"),
        Phase::Running(_) => panic!("the older manifest is served"),
    }
}

/// An etcd writer puts back an older ciphertext of each replay-sensitive key class that
/// changes while the deployment runs (a user secret, a package's SecurityVersion, the pending
/// update): a running replica refuses to load or act on it, a restart is Recovery naming the
/// key, and the newest value put back is accepted again. The transparency log records a
/// keyed digest of every value written ([`crate::translog::binding`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_values_replayed_at_their_own_keys_are_refused_running_and_at_restart() {
    use crate::manifest::update;
    use crate::state::{keys, Core, Phase};
    use sha2::Digest;
    let etcd = TestEtcd::start().await;
    let lab = EtcdLab::bare(&etcd, "/q13/");
    let open = || lab.open();
    let (owner, second) = (user_cert("owner"), user_cert("second"));
    let manifest = |version: &str| {
        serde_json::to_vec(&serde_json::json!({
            "Packages": {"web": {"TEE": "simulated", "SignerID": "00".repeat(32), "ProductID": 1, "SecurityVersion": 1}},
            "Marbles": {"web": {"Package": "web", "Parameters": {"Env": {"VERSION": version}}}},
            "Secrets": {"pw": {"Type": "plain", "UserDefined": true}},
            "Users": {
                "owner": {"Certificate": owner.pem(), "Roles": ["updater", "pw", "pkg"]},
                "second": {"Certificate": second.pem(), "Roles": ["updater"]}
            },
            "Roles": {
                "updater": {"ResourceType": "Manifest", "Actions": ["UpdateManifest"]},
                "pw": {"ResourceType": "Secrets", "ResourceNames": ["pw"], "Actions": ["WriteSecret", "ReadSecret"]},
                "pkg": {"ResourceType": "Packages", "ResourceNames": ["web"], "Actions": ["UpdateSecurityVersion"]}
            }
        }))
        .unwrap()
    };
    async fn set_pw(core: &Core, owner: &[u8], value: &[u8]) {
        let req = serde_json::from_value(serde_json::json!({
            "secrets": {"pw": {"Key": quarry_api::bytes::b64(value)}}
        }))
        .unwrap();
        crate::users::secrets::write(core, Some(owner), req)
            .await
            .unwrap()
    }
    let raise = |svn: u64| {
        serde_json::to_vec(&serde_json::json!({"Packages": {"web": {"SecurityVersion": svn}}}))
            .unwrap()
    };
    let served_pw = |core: &Core| match core.view().phase.as_ref() {
        Phase::Running(d) => d.secrets["pw"].private.clone(),
        _ => panic!("the deployment runs"),
    };
    let raw_client = etcd.conn("/").await.client;
    let etcd_key = |k: &str| format!("/q13/s/{k}").into_bytes();
    let get = |k: &str| {
        let (c, key) = (raw_client.clone(), etcd_key(k));
        async move { c.get(key).await.unwrap().kvs[0].value.clone() }
    };
    let put = |k: &str, v: Vec<u8>| {
        let (c, key) = (raw_client.clone(), etcd_key(k));
        async move { c.put(key, v, 0).await.unwrap() }
    };
    let pw_key = format!("{}pw", keys::SECRET_PREFIX);
    let svn_key = format!("{}web", keys::SVN_PREFIX);

    let core = open().await;
    crate::manifest::set::set_manifest(&core, manifest("1"))
        .await
        .unwrap();
    set_pw(&core, owner.der(), b"one").await;
    let pw_one = get(&pw_key).await;
    set_pw(&core, owner.der(), b"two").await;
    let pw_two = get(&pw_key).await;
    for svn in [2, 3] {
        update::propose(&core, Some(owner.der()), raise(svn))
            .await
            .unwrap();
    }
    let svn_three = get(&svn_key).await;
    update::propose(&core, Some(owner.der()), raise(4))
        .await
        .unwrap();
    let svn_four = get(&svn_key).await;
    // A lower SecurityVersion put back while this replica runs (no watch here): found at
    // the restart below.
    put(&svn_key, svn_three).await;
    let proposed = update::propose(&core, Some(owner.der()), manifest("2"))
        .await
        .unwrap();
    assert_eq!(proposed.missing_acknowledgments, 1, "{}", proposed.message);
    let pending_value = get(keys::PENDING_UPDATE).await;
    update::cancel(&core, Some(owner.der())).await.unwrap();

    // Running: the cancelled update put back is neither shown nor acknowledged into force.
    put(keys::PENDING_UPDATE, pending_value).await;
    let shown = update::get_pending(&core).await;
    assert!(
        format!("{:?}", shown.as_ref().err()).contains("records as deleted"),
        "{:?}",
        shown.map(|p| p.message)
    );
    let acked = update::acknowledge(&core, Some(second.der()), manifest("2")).await;
    assert!(
        acked.is_err(),
        "a cancelled update was acknowledged into force"
    );
    assert!(
        core.view().log.last_manifest_sha256()
            == Some(hex::encode(sha2::Sha256::digest(manifest("1")))),
        "the manifest stayed"
    );
    // Running: the older secret put back is not loaded; the served value stays.
    put(&pw_key, pw_one.clone()).await;
    let refreshed = core.refresh(true, true).await;
    assert!(
        matches!(&refreshed, Err(StoreError::Corrupt(m)) if m.contains(&pw_key) && m.contains("older value")),
        "{refreshed:?}"
    );
    assert_eq!(served_pw(&core), b"two");
    drop(core);

    // Restart: each older value is Recovery naming its key; the newest one put back opens.
    let reopened = || async {
        match open().await.view().phase.as_ref() {
            Phase::Recovery { reason } => format!("recovery:{}: {reason}", reason.code()),
            Phase::AcceptingManifest => "accepting".into(),
            Phase::Running(_) => "running".into(),
        }
    };
    put(&pw_key, pw_two.clone()).await;
    let phase = reopened().await;
    assert!(
        phase.starts_with("recovery:unreadable") && phase.contains(&svn_key),
        "a lower SecurityVersion put back: {phase}"
    );
    put(&svn_key, svn_four).await;
    put(&pw_key, pw_one).await;
    let phase = reopened().await;
    assert!(
        phase.starts_with("recovery:unreadable") && phase.contains(&pw_key),
        "an older secret put back: {phase}"
    );
    put(&pw_key, pw_two).await;
    // The pending key is not read at start-up; the deployment opens with the newest values.
    let core = open().await;
    assert_eq!(served_pw(&core), b"two");
    match core.view().phase.as_ref() {
        Phase::Running(d) => assert_eq!(d.manifest.packages["web"].security_version, Some(4)),
        _ => panic!("the deployment runs"),
    }
}

/// One coordinator's state in etcd under its own prefix, stopped, for an attacker to edit.
struct EtcdLab<'a> {
    etcd: &'a TestEtcd,
    dir: tempfile::TempDir,
    prefix: String,
}

/// A self-signed user certificate named `name` (P-256).
fn user_cert(name: &str) -> rcgen::Certificate {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, name.to_string());
    p.self_signed(&key).unwrap()
}

impl EtcdLab<'_> {
    /// A data directory and simulated TEE for one replica under `prefix`, nothing opened yet.
    fn bare<'a>(etcd: &'a TestEtcd, prefix: &str) -> EtcdLab<'a> {
        let dir = tempfile::tempdir().unwrap();
        quarry_attestation::simulated::SimPlatform::create(&dir.path().join("sim")).unwrap();
        EtcdLab {
            etcd,
            dir,
            prefix: prefix.into(),
        }
    }

    async fn new<'a>(etcd: &'a TestEtcd, prefix: &str) -> EtcdLab<'a> {
        let lab = EtcdLab::bare(etcd, prefix);
        // A serving replica: the core and its etcd watch, as `lib.rs` runs them.
        let core = Arc::new(lab.open().await);
        let seen = core.backend().unwrap().seen_revision();
        let watch = tokio::spawn(crate::replica::watch::refresh_from_watch(
            core.clone(),
            etcd.conn(prefix).await.watch(seen + 1),
        ));
        let manifest = serde_json::json!({
            "Packages": {"web": {"TEE": "simulated", "SignerID": "00".repeat(32), "ProductID": 1, "SecurityVersion": 1}},
            "Marbles": {"web": {"Package": "web"}},
            "Secrets": {"k": {"Type": "symmetric-key", "Size": 256, "Shared": true}}
        });
        crate::manifest::set::set_manifest(&core, serde_json::to_vec(&manifest).unwrap())
            .await
            .unwrap();
        // The watch records the log's new size in the rollback evidence soon after.
        let dek = core.dek().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while crate::store::head::read(&lab.dir.path().join("data"), &dek)
            .unwrap()
            .is_none_or(|h| h.log_size == 0)
        {
            assert!(Instant::now() < deadline, "the head never recorded the log");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        watch.abort();
        lab
    }

    async fn open(&self) -> crate::state::Core {
        crate::state::Core::open_etcd(
            &self.dir.path().join("data"),
            crate::tee::Tee::simulated(&self.dir.path().join("sim"), None).unwrap(),
            self.etcd.conn(&self.prefix).await,
            Duration::from_secs(1),
        )
        .await
        .unwrap()
    }

    /// Every raw key and value under the prefix.
    async fn kvs(&self) -> Vec<pb::KeyValue> {
        let start = self.prefix.clone().into_bytes();
        let client = self.etcd.conn("/").await.client;
        client
            .range(pb::RangeRequest {
                key: start.clone(),
                range_end: prefix_end(&start),
                ..Default::default()
            })
            .await
            .unwrap()
            .kvs
    }

    fn key(&self, store_key: &str) -> Vec<u8> {
        format!("{}s/{store_key}", self.prefix).into_bytes()
    }

    async fn raw_txn(&self, ops: Vec<pb::RequestOp>) {
        let client = self.etcd.conn("/").await.client;
        client
            .txn(pb::TxnRequest {
                success: ops,
                ..Default::default()
            })
            .await
            .unwrap();
    }

    async fn value(&self, store_key: &str) -> Vec<u8> {
        let client = self.etcd.conn("/").await.client;
        client.get(self.key(store_key)).await.unwrap().kvs[0]
            .value
            .clone()
    }

    /// The phase after a restart: `recovery:<code>`, `accepting` or `running`.
    async fn reopened(&self) -> String {
        match self.open().await.view().phase.as_ref() {
            crate::state::Phase::Recovery { reason } => format!("recovery:{}", reason.code()),
            crate::state::Phase::AcceptingManifest => "accepting".into(),
            crate::state::Phase::Running(_) => "running".into(),
        }
    }
}

/// An etcd writer deletes, overwrites with garbage, or swaps stored values while the
/// coordinator is down: each restart is Recovery naming why, never a fresh start or a
/// silently different state. And no value in etcd holds a secret in plaintext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_etcd_keys_are_recovery_and_no_secret_is_stored_in_plaintext() {
    use crate::state::keys;
    let etcd = TestEtcd::start().await;
    // Plaintext scan: the shared secret's bytes (and their base64) appear in no raw value.
    let lab = EtcdLab::new(&etcd, "/t0/").await;
    let core = lab.open().await;
    let secret = match core.view().phase.as_ref() {
        crate::state::Phase::Running(d) => d.secrets["k"].private.clone(),
        _ => panic!("the deployment runs"),
    };
    drop(core);
    let b64 = quarry_api::bytes::b64(&secret).into_bytes();
    for kv in lab.kvs().await {
        for needle in [&secret, &b64] {
            assert!(
                !kv.value
                    .windows(needle.len())
                    .any(|w| w == needle.as_slice()),
                "{} holds the secret in plaintext",
                String::from_utf8_lossy(&kv.key)
            );
        }
    }
    let cases = [
        ("delete the newest log entry", "recovery:rollback"),
        ("garbage in the manifest", "recovery:unreadable"),
        ("manifest and its signature swapped", "recovery:unreadable"),
        ("shared secret deleted", "recovery:unreadable"),
    ];
    for (i, (what, want)) in cases.into_iter().enumerate() {
        let lab = EtcdLab::new(&etcd, &format!("/t{}/", i + 1)).await;
        match i {
            0 => {
                let newest = lab
                    .kvs()
                    .await
                    .into_iter()
                    .map(|kv| kv.key)
                    .filter(|k| k.starts_with(&lab.key(crate::translog::PREFIX)))
                    .max()
                    .unwrap();
                lab.raw_txn(vec![wire::delete_op(newest)]).await;
            }
            1 => {
                lab.raw_txn(vec![wire::put_op(lab.key(keys::MANIFEST), vec![7; 64])])
                    .await
            }
            2 => {
                let (m, s) = (
                    lab.value(keys::MANIFEST).await,
                    lab.value(keys::MANIFEST_SIGNATURE).await,
                );
                lab.raw_txn(vec![
                    wire::put_op(lab.key(keys::MANIFEST), s),
                    wire::put_op(lab.key(keys::MANIFEST_SIGNATURE), m),
                ])
                .await;
            }
            _ => {
                lab.raw_txn(vec![wire::delete_op(
                    lab.key(&format!("{}k", keys::SECRET_PREFIX)),
                )])
                .await
            }
        }
        assert_eq!(lab.reopened().await, want, "{what}");
    }
}

/// A split view: etcd cluster B is a copy of cluster A (a backup restored twice), replica R1
/// serves A, replica R2 joins B (R1 shares the key: it cannot tell), and each side then
/// commits something the other does not see. Each replica's own rollback evidence is happy
/// with its fork; comparing log heads over the attested peer channel is not: R2's periodic
/// check finds R1's log is another history, and both replicas stop serving (Recovery
/// `split-view`). Before the histories diverge, and while one only lags, heads agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_view_is_detected_by_comparing_log_heads_and_both_replicas_stop() {
    use crate::replica::heads::{self, Comparison};
    use crate::state::{Core, Phase};
    let (etcd_a, etcd_b) = (TestEtcd::start().await, TestEtcd::start().await);
    let dir = tempfile::tempdir().unwrap();
    let sim = dir.path().join("sim");
    quarry_attestation::simulated::SimPlatform::create(&sim).unwrap();
    let tee = || crate::tee::Tee::simulated(&sim, None).unwrap();
    let r1 = Arc::new(
        Core::open_etcd(
            &dir.path().join("r1"),
            tee(),
            etcd_a.conn("/sv/").await,
            Duration::from_secs(1),
        )
        .await
        .unwrap(),
    );
    let manifest = serde_json::json!({
        "Packages": {"web": {"TEE": "simulated", "SignerID": "00".repeat(32), "ProductID": 1, "SecurityVersion": 1}},
        "Marbles": {"web": {"Package": "web"}}
    });
    crate::manifest::set::set_manifest(&r1, serde_json::to_vec(&manifest).unwrap())
        .await
        .unwrap();
    let own = Arc::new(crate::replica::own_claims(&r1.tee).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let r1_addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(crate::replica::serve::serve_peers(
        r1.clone(),
        listener,
        own.clone(),
    ));

    // The attacker copies every key of A to B and announces R1 there.
    let (raw_a, raw_b) = (etcd_a.conn("/").await.client, etcd_b.conn("/").await.client);
    let all = raw_a
        .range(pb::RangeRequest {
            key: b"/sv/".to_vec(),
            range_end: prefix_end(b"/sv/"),
            ..Default::default()
        })
        .await
        .unwrap()
        .kvs;
    assert!(all.len() > 3, "the deployment is in etcd");
    for kv in all {
        raw_b.put(kv.key, kv.value, 0).await.unwrap();
    }
    raw_b
        .put(b"/sv/c/peers/r1".to_vec(), r1_addr.clone().into_bytes(), 0)
        .await
        .unwrap();
    let r2 = Arc::new(
        Core::open_etcd(
            &dir.path().join("r2"),
            tee(),
            etcd_b.conn("/sv/").await,
            Duration::from_secs(10),
        )
        .await
        .unwrap(),
    );
    assert!(
        matches!(r2.view().phase.as_ref(), Phase::Running(_)),
        "R2 joined cluster B with R1's key"
    );
    // Same history so far; R1 ahead by one entry is lag, not a fork.
    assert_eq!(
        heads::ask(&r2, &own, &r1_addr).await.unwrap(),
        Comparison::Consistent
    );
    let append = |core: &Arc<Core>, what: &str| {
        let view = core.view();
        let store = view.store.clone().unwrap();
        let event = serde_json::json!({"type": "replica-joined", "time": 1, "address": what});
        async move {
            view.log
                .commit_with_events(&store, Txn::new(), vec![event])
                .await
                .unwrap()
        }
    };
    append(&r1, "r1-side").await;
    assert_eq!(
        heads::ask(&r2, &own, &r1_addr).await.unwrap(),
        Comparison::Consistent
    );
    for core in [&r1, &r2] {
        assert!(matches!(core.view().phase.as_ref(), Phase::Running(_)));
    }
    // R2's periodic check records R2 in its log (on B only: the histories now differ) and
    // then compares with R1, which it finds in B's announcements.
    let check = tokio::spawn(heads::watch_for_forks(
        r2.clone(),
        etcd_b.conn("/sv/").await,
        own.clone(),
        "127.0.0.1:1".into(),
        Duration::from_millis(100),
    ));
    let deadline = Instant::now() + Duration::from_secs(20);
    let stopped = |core: &Core| match core.view().phase.as_ref() {
        Phase::Recovery { reason } => Some((reason.code(), reason.to_string())),
        _ => None,
    };
    while stopped(&r2).is_none() || stopped(&r1).is_none() {
        assert!(
            Instant::now() < deadline,
            "the fork was not detected: R1 {:?}, R2 {:?}",
            stopped(&r1),
            stopped(&r2)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (name, core) in [("R1", &r1), ("R2", &r2)] {
        let (code, message) = stopped(core).unwrap();
        assert_eq!(code, "split-view", "{name}: {message}");
        assert!(
            message.contains("the transparency log forked"),
            "{name}: {message}"
        );
    }
    assert!(check.await.is_ok(), "the check ends once it stopped R2");
    // A replica that stopped no longer answers head requests or shares the key.
    let after = heads::ask(&r2, &own, &r1_addr).await;
    assert!(after.is_err(), "{after:?}");
    assert!(crate::replica::fetch_dek(&r2.tee, &own, &r1_addr)
        .await
        .is_err());
}
