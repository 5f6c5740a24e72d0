//! Operability end to end (issue 10): a coordinator with `--metrics-addr` runs a manifest, an
//! activation and refusals; `/metrics` then shows the activation counters (bounded labels,
//! no UUIDs) and the histograms, `/healthz` and `/readyz` answer, the OpenAPI document is
//! served, and no generated secret value appears anywhere in the JSON log.
use std::time::Duration;

use base64::Engine as _;
use quarry_attestation::simulated::{SimIdentity, SimPlatform, SimProvider};
use quarry_e2e::{activate, fetch_root_unverified, https, jsend, tls_config, Coordinator};
use rsa::pkcs8::{EncodePublicKey, LineEnding};
use rsa::sha2::Sha256;
use rsa::RsaPrivateKey;

const UNIQUE_ID: [u8; 32] = [0x51; 32];

fn provider(platform: &std::path::Path, unique_id: [u8; 32]) -> SimProvider {
    SimProvider::new(
        SimPlatform::load(platform).unwrap(),
        SimIdentity {
            unique_id,
            signer_id: [0; 32],
            product_id: 0,
            security_version: 0,
            debug: false,
        },
    )
    .unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plain HTTP/1.1 GET of `path` at `addr`: (status, body).
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

/// The value of the sample of `name` whose labels include every `labels` pair.
fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let (label_text, value) = match rest.strip_prefix('{') {
            Some(r) => r.split_once("} ")?,
            None => ("", rest.strip_prefix(' ')?),
        };
        labels
            .iter()
            .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\"")))
            .then(|| value.trim().parse().ok())?
    })
}

/// Every textual form a secret value may take in a log line.
fn forms(bytes: &[u8]) -> Vec<String> {
    let mut out = vec![
        hex::encode(bytes),
        base64::engine::general_purpose::STANDARD.encode(bytes),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes),
    ];
    if let Ok(text) = std::str::from_utf8(bytes) {
        out.push(text.to_string());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_logs_after_an_end_to_end_run() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let platform = t.join("sim");
    SimPlatform::create(&platform).unwrap();
    let port = free_port().to_string();
    let metrics_addr = format!("127.0.0.1:{port}");
    let log = t.join("coordinator.log");
    let coord = Coordinator::start_with(
        &t.join("data"),
        &platform,
        &log,
        &["--metrics-addr", &metrics_addr],
    )
    .unwrap();
    let ops = metrics_addr.clone();

    assert_eq!(get_plain(&ops, "/healthz").await.0, 200);
    let (code, ready) = get_plain(&ops, "/readyz").await;
    assert_eq!(code, 200, "{ready}");
    assert!(ready.contains("\"state\":2"), "{ready}");

    // A manifest with generated secrets and a recovery key we hold.
    let recovery_key = RsaPrivateKey::new(&mut rand_core::OsRng, 2048).unwrap();
    let manifest = serde_json::json!({
        "Packages": {"pkg": {"TEE": "simulated", "UniqueID": hex::encode(UNIQUE_ID)}},
        "Marbles": {"web": {"Package": "pkg", "Parameters": {
            "Files": {
                "/srv/cert.pem": "{{ pem .Secrets.shared_cert.Cert }}{{ pem .Secrets.shared_cert.Private }}",
                "/srv/raw.key": "{{ raw .Secrets.private_key }}"
            },
            "Env": {
                "SHARED": "{{ hex .Secrets.shared_key }}",
                "PRIVATE": "{{ base64 .Secrets.private_key }}"
            }
        }}},
        "Secrets": {
            "shared_key": {"Type": "symmetric-key", "Size": 256, "Shared": true},
            "private_key": {"Type": "symmetric-key", "Size": 128},
            "shared_cert": {"Type": "cert-ecdsa", "Size": 256, "Shared": true}
        },
        "RecoveryKeys": {"ops": recovery_key.to_public_key().to_public_key_pem(LineEnding::LF).unwrap()}
    });
    let root = fetch_root_unverified(&coord).await.unwrap();
    let client = https(tls_config(&root, None).unwrap()).unwrap();
    let (code, set) = jsend(
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
    assert_eq!(code, 200, "{set}");
    let mut secrets: Vec<Vec<u8>> = Vec::new();
    let sealed = set["data"]["RecoverySecrets"]["ops"]
        .as_str()
        .expect("a recovery secret for our key");
    secrets.push(
        recovery_key
            .decrypt(
                rsa::Oaep::new::<Sha256>(),
                &quarry_api::bytes::unb64(sealed).unwrap(),
            )
            .expect("the recovery secret decrypts with our key"),
    );

    // One activation, and refusals of three kinds.
    let good = provider(&platform, UNIQUE_ID);
    let (code, act, good_uuid) = activate(&coord.mesh_url(), &root, &good, "web")
        .await
        .unwrap();
    assert_eq!(code, 200, "{act}");
    let (code, refused, unknown_uuid) = activate(&coord.mesh_url(), &root, &good, "no-such-type")
        .await
        .unwrap();
    assert_eq!(code, 403, "{refused}");
    let wrong = provider(&platform, [0x99; 32]);
    let (code, refused, wrong_uuid) = activate(&coord.mesh_url(), &root, &wrong, "web")
        .await
        .unwrap();
    assert_eq!(code, 403, "{refused}");
    assert!(
        refused["message"].as_str().unwrap().contains("UniqueID"),
        "{refused}"
    );

    // Every rendered parameter value holds secret material (or is derived from it).
    let params: quarry_api::http::Parameters =
        serde_json::from_value(act["data"]["parameters"].clone()).unwrap();
    for name in ["SHARED", "PRIVATE"] {
        secrets.push(params.env[name].assemble(b""));
    }
    secrets.push(params.files["/srv/raw.key"].assemble(b""));
    let pem_file = params.files["/srv/cert.pem"].assemble(b"");
    let key = pem::parse_many(&pem_file)
        .unwrap()
        .into_iter()
        .find(|p| p.tag() != "CERTIFICATE")
        .expect("the certificate secret's private key");
    secrets.push(key.contents().to_vec());
    secrets.push(hex::decode(params.env["SHARED"].assemble(b"")).unwrap());
    secrets.push(
        base64::engine::general_purpose::STANDARD
            .decode(params.env["PRIVATE"].assemble(b""))
            .unwrap(),
    );

    // The OpenAPI document is served and parses.
    let (code, doc) = jsend(
        client
            .get(format!("{}/api/v2/openapi.json", coord.client_url()))
            .send()
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(code, 200);
    assert_eq!(doc["openapi"], "3.1.0");

    // Metrics.
    let (code, metrics) = get_plain(&ops, "/metrics").await;
    assert_eq!(code, 200);
    let expect = |name: &str, labels: &[(&str, &str)]| {
        sample(&metrics, name, labels)
            .unwrap_or_else(|| panic!("no {name} {labels:?} in:\n{metrics}"))
    };
    let act_total = "quarry_activations_total";
    assert_eq!(
        expect(act_total, &[("marble_type", "web"), ("outcome", "ok")]),
        1.0
    );
    assert_eq!(
        expect(
            act_total,
            &[("marble_type", "web"), ("outcome", "policy-mismatch")]
        ),
        1.0
    );
    assert_eq!(
        expect(
            act_total,
            &[
                ("marble_type", "unknown"),
                ("outcome", "unknown-marble-type")
            ]
        ),
        1.0
    );
    assert!(
        !metrics.contains("no-such-type"),
        "a client-chosen type became a label"
    );
    for uuid in [&good_uuid, &unknown_uuid, &wrong_uuid] {
        assert!(!metrics.contains(uuid.as_str()), "a UUID became a label");
    }
    assert_eq!(
        expect(
            "quarry_evidence_verification_seconds_count",
            &[("tee", "simulated")]
        ),
        2.0
    );
    assert!(
        expect(
            "quarry_evidence_verification_seconds_bucket",
            &[("tee", "simulated"), ("le", "+Inf")]
        ) >= 2.0
    );
    assert!(expect("quarry_store_commit_seconds_count", &[]) >= 2.0);
    assert_eq!(expect("quarry_coordinator_state", &[]), 3.0);
    assert!(expect("quarry_transparency_log_entries", &[]) >= 2.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as f64;
    assert!(expect("quarry_mesh_ca_expiry_timestamp_seconds", &[]) > now);
    assert!(expect("quarry_root_ca_expiry_timestamp_seconds", &[]) > now);
    // A simulated coordinator holds no attestation collateral.
    assert!(expect("quarry_collateral_expiry_seconds", &[]).is_nan());
    assert!(expect("quarry_http_open_connections", &[("api", "client")]) >= 0.0);
    assert!(
        expect(
            "quarry_http_requests_total",
            &[
                ("api", "mesh"),
                ("route", "/api/v2/activate"),
                ("method", "POST"),
                ("code", "403")
            ]
        ) >= 2.0
    );
    assert_eq!(
        expect(
            "quarry_http_requests_total",
            &[
                ("api", "client"),
                ("route", "/api/v2/manifest"),
                ("method", "POST"),
                ("code", "200")
            ]
        ),
        1.0
    );
    let (code, ready) = get_plain(&ops, "/readyz").await;
    assert_eq!(code, 200, "{ready}");

    // The log: every refusal names type, UUID and reason; the package mismatch is
    // field-level; no secret value in any form.
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let refusals: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|v| v["fields"]["message"] == "activation refused")
        .collect();
    assert_eq!(refusals.len(), 2, "{text}");
    for (uuid, code) in [
        (&unknown_uuid, "unknown-marble-type"),
        (&wrong_uuid, "policy-mismatch"),
    ] {
        let line = refusals
            .iter()
            .find(|v| v["fields"]["uuid"] == uuid.as_str())
            .unwrap_or_else(|| panic!("no refusal line for {uuid}:\n{text}"));
        assert_eq!(line["fields"]["code"], code, "{line}");
        assert!(line["fields"]["marble_type"].is_string(), "{line}");
        assert!(line["fields"]["reason"].is_string(), "{line}");
    }
    assert!(
        lines
            .iter()
            .any(|v| v["fields"]["message"] == "package field mismatch"
                && v["fields"]["field"] == "UniqueID"
                && v["fields"]["found"] == hex::encode([0x99u8; 32])),
        "no field-level mismatch line:\n{text}"
    );
    for secret in &secrets {
        assert!(secret.len() >= 16, "a secret too short to grep for");
        for form in forms(secret) {
            assert!(
                !text.contains(&form),
                "a generated secret value appears in the log"
            );
        }
    }
}
