//! The TCB event monitor end to end (issue 18 item 2), with the real coordinator on loopback
//! and the simulated TEE's TCB notion: the platform reports TCB SVN 3 (`platform-tcb-svn`),
//! and `simulated-tcb.json` in the coordinator's `--collateral-dir` says which SVN is
//! UpToDate. A marble activates in policy and renews; then new "TCB info" raises the minimum
//! to 4. With the periodic re-check an hour away, the collateral directory's change alone
//! must make the monitor re-evaluate: the marble shows out of policy in `GET /api/v2/tcb`,
//! in `quarry_tcb_marbles_out_of_policy`, as a `tcb-change` event in the transparency log and
//! as a WARN line in the coordinator's log; with `TCBChangeAction: refuse-renewal` its next
//! renewal is refused with `tcb-out-of-policy` naming the status and advisories. The verdict
//! survives a restart. Everything it reports says simulation.
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use quarry_attestation::simulated::{SimIdentity, SimPlatform, SimProvider};
use quarry_attestation::EvidenceProvider as _;
use quarry_e2e::{
    bin, fetch_root_unverified, https, jsend, run, tls_config, Coordinator, MarbleKey,
};

const UNIQUE_ID: [u8; 32] = [0x42; 32];
const DEADLINE: Duration = Duration::from_secs(30);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Plain HTTP GET of the metrics listener; (status, body).
async fn get_plain(addr: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.unwrap();
        String::from_utf8(raw).unwrap()
    };
    let text = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .unwrap_or_else(|_| panic!("GET {path} timed out"));
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    (code, body.to_string())
}

fn write_tcb_info(collateral: &Path, minimum_svn: u16) {
    let info = serde_json::json!({"minimumSvn": minimum_svn, "advisories": ["SIM-SA-0001", "SIM-SA-0002"]});
    // Written whole and renamed, as a PCCS refresh of the cache is.
    let tmp = collateral.join(".simulated-tcb.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(&info).unwrap()).unwrap();
    std::fs::rename(&tmp, collateral.join("simulated-tcb.json")).unwrap();
}

/// A marble like a sidecar: its key, and after activation its leaf.
struct Marble {
    key: MarbleKey,
    uuid: String,
    leaf: Vec<u8>,
}

async fn nonce(client: &reqwest::Client, mesh: &str) -> (String, [u8; 32]) {
    let (code, n) = jsend(
        client
            .get(format!("{mesh}/api/v2/activate/nonce"))
            .send()
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(code, 200, "{n}");
    let text = n["data"]["nonce"].as_str().unwrap().to_string();
    let bytes: [u8; 32] = hex::decode(&text).unwrap().try_into().unwrap();
    (text, bytes)
}

fn first_der(chain: &str) -> Vec<u8> {
    pem::parse_many(chain).unwrap()[0].contents().to_vec()
}

async fn activate(coord: &Coordinator, root: &str, provider: &SimProvider) -> Marble {
    let key = MarbleKey::generate().unwrap();
    let client =
        https(tls_config(root, Some((key.cert.clone(), key.key.clone()))).unwrap()).unwrap();
    let mesh = coord.mesh_url();
    let (nonce_hex, nonce) = nonce(&client, &mesh).await;
    let rd = quarry_api::evidence::activation_report_data(&key.spki, Some(&nonce));
    let uuid = uuid::Uuid::new_v4().to_string();
    let body = serde_json::json!({
        "marbleType": "web",
        "uuid": uuid,
        "evidence": provider.evidence(&rd).unwrap(),
        "nonce": nonce_hex,
    });
    let (code, v) = jsend(
        client
            .post(format!("{mesh}/api/v2/activate"))
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(code, 200, "activation: {v}");
    let leaf = first_der(v["data"]["certificateChain"].as_str().unwrap());
    Marble { key, uuid, leaf }
}

/// One renewal on a connection authenticated by the marble's current leaf; (status, body).
async fn renew(
    coord: &Coordinator,
    root: &str,
    provider: &SimProvider,
    m: &mut Marble,
) -> (u16, serde_json::Value) {
    let client =
        https(tls_config(root, Some((m.leaf.clone(), m.key.key.clone()))).unwrap()).unwrap();
    let mesh = coord.mesh_url();
    let (nonce_hex, nonce) = nonce(&client, &mesh).await;
    let rd = quarry_api::evidence::activation_report_data(&m.key.spki, Some(&nonce));
    let body = serde_json::json!({"evidence": provider.evidence(&rd).unwrap(), "nonce": nonce_hex});
    let (code, v) = jsend(
        client
            .post(format!("{mesh}/api/v2/renew"))
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    if code == 200 {
        m.leaf = first_der(v["data"]["certificateChain"].as_str().unwrap());
    }
    (code, v)
}

async fn get(client: &reqwest::Client, url: String) -> serde_json::Value {
    let (code, v) = jsend(client.get(url).send().await.unwrap()).await.unwrap();
    assert_eq!(code, 200, "{v}");
    v["data"].clone()
}

/// The report's entry of `uuid`.
fn entry<'a>(report: &'a serde_json::Value, uuid: &str) -> Option<&'a serde_json::Value> {
    report["marbles"]
        .as_array()?
        .iter()
        .find(|m| m["uuid"] == uuid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_tcb_info_puts_a_running_marble_out_of_policy_and_refuses_its_renewal() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (platform, collateral) = (t.join("sim"), t.join("collateral"));
    SimPlatform::create(&platform).unwrap();
    std::fs::write(platform.join("platform-tcb-svn"), "3\n").unwrap();
    std::fs::create_dir_all(&collateral).unwrap();
    write_tcb_info(&collateral, 3);
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let log = t.join("coordinator.log");
    let args = [
        "--collateral-dir",
        collateral.to_str().unwrap(),
        "--metrics-addr",
        &metrics_addr,
        // The change must be found by watching the collateral, not by the periodic run.
        "--tcb-recheck-interval",
        "1h",
    ];
    let mut coord = Coordinator::start_with(&t.join("data"), &platform, &log, &args).unwrap();
    let root = fetch_root_unverified(&coord).await.unwrap();
    let client = https(tls_config(&root, None).unwrap()).unwrap();
    let manifest = serde_json::json!({
        "Packages": {"pkg": {"TEE": "simulated", "UniqueID": hex::encode(UNIQUE_ID)}},
        "Marbles": {"web": {"Package": "pkg"}},
        "Config": {"TCBChangeAction": "refuse-renewal"}
    });
    let (code, v) = jsend(
        client
            .post(format!("{}/api/v2/manifest", coord.client_url()))
            .json(&serde_json::json!({"manifest": quarry_api::bytes::b64(&serde_json::to_vec(&manifest).unwrap())}))
            .send()
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(code, 200, "manifest: {v}");
    let provider = SimProvider::new(
        SimPlatform::load(&platform).unwrap(),
        SimIdentity {
            unique_id: UNIQUE_ID,
            signer_id: [0; 32],
            product_id: 0,
            security_version: 0,
            debug: false,
        },
    )
    .unwrap();
    assert_eq!(provider.platform().tcb_svn(), Some(3));

    // In policy: recorded at activation, and it renews.
    let mut m = activate(&coord, &root, &provider).await;
    let tcb_url = format!("{}/api/v2/tcb", coord.client_url());
    let report = get(&client, tcb_url.clone()).await;
    assert_eq!(report["action"], "refuse-renewal");
    assert_eq!(report["simulation"], true);
    assert_eq!(report["recheckIntervalSeconds"], 3600);
    let e = entry(&report, &m.uuid).unwrap_or_else(|| panic!("{report}"));
    assert_eq!(e["marbleType"], "web");
    assert_eq!(e["status"], "UpToDate");
    assert_eq!(e["inPolicy"], true);
    assert_eq!(e["collateral"], "simulated");
    assert_eq!(e["simulation"], true);
    assert_eq!(e["toRaise"], serde_json::json!([]));
    let (code, v) = renew(&coord, &root, &provider, &mut m).await;
    assert_eq!(code, 200, "renewal while in policy: {v}");

    // New TCB info: SVN 4 is the minimum now.
    write_tcb_info(&collateral, 4);
    let deadline = Instant::now() + DEADLINE;
    let e = loop {
        let report = get(&client, tcb_url.clone()).await;
        if let Some(e) = entry(&report, &m.uuid).filter(|e| e["inPolicy"] == false) {
            break e.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the monitor did not notice the collateral change within {DEADLINE:?}: {report}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(e["previousStatus"], "UpToDate");
    assert_eq!(e["status"], "OutOfDate");
    assert_eq!(
        e["advisories"],
        serde_json::json!(["SIM-SA-0001", "SIM-SA-0002"])
    );
    assert_eq!(e["policyFields"][0]["field"], "AcceptedTCBStatuses");
    assert_eq!(e["toRaise"][0]["component"], "SIMULATED_TCB_SVN");
    assert_eq!(e["toRaise"][0]["found"], 3);
    assert_eq!(e["toRaise"][0]["required"], 4);
    assert!(e["toRaise"][0]["label"]
        .as_str()
        .unwrap()
        .contains("SIMULATION"));
    assert!(
        e["checkedAt"].as_u64().unwrap() > 0 && e["changedAt"].is_u64(),
        "{e}"
    );

    // The metric.
    let (code, metrics) = get_plain(&metrics_addr, "/metrics").await;
    assert_eq!(code, 200);
    assert!(
        metrics.contains(
            "quarry_tcb_marbles_out_of_policy{marble_type=\"web\",status=\"OutOfDate\"} 1"
        ),
        "{metrics}"
    );

    // The transparency log: exactly one tcb-change for the marble, and what it says.
    let log_page = get(&client, format!("{}/api/v2/log", coord.client_url())).await;
    let changes: Vec<&serde_json::Value> = log_page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["event"])
        .filter(|e| e["type"] == "tcb-change")
        .collect();
    assert_eq!(changes.len(), 1, "{log_page}");
    let ev = changes[0];
    assert_eq!(ev["uuid"], m.uuid.as_str());
    assert_eq!(ev["marbleType"], "web");
    assert_eq!(ev["previousStatus"], "UpToDate");
    assert_eq!(ev["status"], "OutOfDate");
    assert_eq!(ev["inPolicy"], false);
    assert_eq!(ev["action"], "refuse-renewal");
    assert_eq!(ev["simulation"], true);
    assert_eq!(
        ev["advisories"],
        serde_json::json!(["SIM-SA-0001", "SIM-SA-0002"])
    );

    // The coordinator's WARN line.
    let text = std::fs::read_to_string(&log).unwrap();
    let warned = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| {
            l["fields"]["message"] == "TCB status of a running marble changed"
                && l["fields"]["uuid"] == m.uuid.as_str()
        });
    let warned = warned.unwrap_or_else(|| panic!("no WARN line for the change:\n{text}"));
    assert_eq!(warned["level"], "WARN");
    assert_eq!(warned["fields"]["status"], "OutOfDate");
    assert_eq!(warned["fields"]["previous_status"], "UpToDate");
    assert_eq!(warned["fields"]["simulation"], true);

    // The next renewal is refused, naming the status and advisories.
    let (code, v) = renew(&coord, &root, &provider, &mut m).await;
    assert_eq!(code, 403, "{v}");
    assert_eq!(v["status"], "fail");
    assert_eq!(v["data"]["code"], "tcb-out-of-policy", "{v}");
    let message = v["data"]["message"].as_str().unwrap();
    assert!(
        message.contains("TCB status OutOfDate (advisories: SIM-SA-0001,SIM-SA-0002)"),
        "{message}"
    );
    assert_eq!(
        v["data"]["fields"][0]["field"], "AcceptedTCBStatuses",
        "{v}"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.lines()
            .any(|l| l.contains("renewal refused") && l.contains("tcb-out-of-policy")),
        "no refusal log line:\n{text}"
    );

    // The CLI: the table and the JSON.
    let root_file = t.join("root.pem");
    std::fs::write(&root_file, &root).unwrap();
    let quarry = |json: bool| {
        let mut c = Command::new(bin("quarry"));
        c.args(["tcb", "report", "--coordinator", &coord.client.to_string()])
            .arg("--root-ca")
            .arg(&root_file)
            .env_remove("QUARRY_ROOT_CA");
        if json {
            c.arg("--json");
        }
        let o = run(&mut c, Duration::from_secs(60)).unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        (
            String::from_utf8(o.stdout).unwrap(),
            String::from_utf8(o.stderr).unwrap(),
        )
    };
    let (table, stderr) = quarry(false);
    let row = table
        .lines()
        .find(|l| l.contains(&m.uuid))
        .unwrap_or_else(|| panic!("no row for the marble:\n{table}"));
    for needle in [
        "web",
        "UpToDate -> OutOfDate",
        "NO",
        "SIM-SA-0001,SIM-SA-0002",
        "simulated",
    ] {
        assert!(row.contains(needle), "{row} must show {needle}");
    }
    assert!(
        table.contains("raise SIMULATED_TCB_SVN (simulated platform TCB (SIMULATION, not hardware)): found 3, required 4"),
        "{table}"
    );
    assert!(stderr.contains("SIMULATION"), "{stderr}");
    let (json, _) = quarry(true);
    let cli: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        entry(&cli, &m.uuid).unwrap()["status"],
        "OutOfDate",
        "{cli}"
    );

    // A restart keeps the verdict (the record is in the sealed store).
    coord.stop();
    let coord = Coordinator::start_with(&t.join("data"), &platform, &log, &args).unwrap();
    let client = https(tls_config(&root, None).unwrap()).unwrap();
    let report = get(&client, format!("{}/api/v2/tcb", coord.client_url())).await;
    let e = entry(&report, &m.uuid).unwrap_or_else(|| panic!("{report}"));
    assert_eq!(
        (e["status"].as_str(), e["inPolicy"].as_bool()),
        (Some("OutOfDate"), Some(false))
    );
    assert_eq!(e["previousStatus"], "UpToDate");
}
