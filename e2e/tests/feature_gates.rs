//! MarbleRun's feature-gated endpoints over TLS with the real binaries (issue 18 item 5):
//! `POST /api/v2/sign-quote` with a real SGX quote and the coordinator's offline collateral
//! cache (its signature checked with openssl and with `quarry sign-quote` against the root
//! certificate), and `POST /api/v2/monotonic-counter` for activated marbles on both
//! listeners, refused without the gates or for callers that are no marble, and kept across a
//! coordinator restart.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use quarry_attestation::simulated::{SimIdentity, SimPlatform, SimProvider};
use quarry_attestation::EvidenceProvider as _;
use quarry_e2e::{bin, https, jsend, run, tls_config, Coordinator, MarbleKey};

const LIMIT: Duration = Duration::from_secs(60);

/// Inside the collateral window of the recorded quote (PROVENANCE.md: 2025-07-01).
const RECORDED_AT: &str = "1751328000";

fn sgx_vectors() -> PathBuf {
    std::env::var_os("QUARRY_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared"))
        .join("testdata/attestation/sgx")
}

fn real_quote_path() -> PathBuf {
    let p = sgx_vectors().join("dcapqvl_sgx_quote_v3.bin");
    assert!(
        p.exists(),
        "{} missing: the shared attestation vectors are required (set QUARRY_SHARED_DIR)",
        p.display()
    );
    p
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

struct Setup {
    tmp: tempfile::TempDir,
    coord: Coordinator,
    root_pem: String,
    args: Vec<String>,
}

impl Setup {
    fn dir(&self) -> &Path {
        self.tmp.path()
    }

    fn root_file(&self) -> PathBuf {
        self.dir().join("root.pem")
    }

    /// Stops the coordinator and starts it again on the same data directory.
    fn restart(&mut self) {
        self.coord.stop();
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.coord = Coordinator::start_with(
            &self.dir().join("data"),
            &self.dir().join("sim"),
            &self.dir().join("coordinator.log"),
            &args,
        )
        .unwrap();
    }
}

/// A coordinator with the real quote's collateral in its offline cache and a manifest with
/// `gates`; `recorded`: verify at the recorded time (then simulated marbles cannot activate,
/// their platform CA is younger).
async fn setup(gates: &[&str], recorded: bool) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let o = run(
        Command::new(bin("quarry")).args(["sim", "init", dir.join("sim").to_str().unwrap()]),
        LIMIT,
    )
    .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let cache = dir.join("collateral");
    std::fs::create_dir_all(cache.join("sgx")).unwrap();
    std::fs::copy(
        sgx_vectors().join("dcapqvl_sgx_quote_v3.collateral.json"),
        cache.join("sgx/00A067110000-processor.json"),
    )
    .unwrap();
    let mut args = vec![
        "--collateral-dir".to_string(),
        cache.to_str().unwrap().to_string(),
    ];
    if recorded {
        args.extend(["--dangerous-verification-time".into(), RECORDED_AT.into()]);
    }
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let coord = Coordinator::start_with(
        &dir.join("data"),
        &dir.join("sim"),
        &dir.join("coordinator.log"),
        &arg_refs,
    )
    .unwrap();
    let root_pem = quarry_e2e::fetch_root_unverified(&coord).await.unwrap();
    std::fs::write(dir.join("root.pem"), &root_pem).unwrap();
    let manifest = serde_json::json!({
        "Packages": {"any": {"TEE": "simulated", "SignerID": "00".repeat(32), "ProductID": 0, "SecurityVersion": 0}},
        "Marbles": {"web": {"Package": "any"}, "db": {"Package": "any"}},
        "Config": {"FeatureGates": gates}
    });
    let client = https(tls_config(&root_pem, None).unwrap()).unwrap();
    let body = serde_json::json!({
        "manifest": quarry_api::bytes::b64(&serde_json::to_vec(&manifest).unwrap())
    });
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
    Setup {
        tmp,
        coord,
        root_pem,
        args,
    }
}

/// An activated marble: its key and the leaf the coordinator issued for it.
struct Marble {
    key: MarbleKey,
    leaf: Vec<u8>,
}

impl Marble {
    /// An HTTPS client presenting the marble's leaf.
    fn client(&self, root_pem: &str) -> reqwest::Client {
        https(tls_config(root_pem, Some((self.leaf.clone(), self.key.key.clone()))).unwrap())
            .unwrap()
    }
}

/// Activates a fresh key as `marble_type`/`uuid` over the mesh API, like a sidecar.
async fn activate(s: &Setup, marble_type: &str, uuid: &str) -> Marble {
    let provider = SimProvider::new(
        SimPlatform::load(&s.dir().join("sim")).unwrap(),
        SimIdentity {
            unique_id: [7; 32],
            signer_id: [0; 32],
            product_id: 0,
            security_version: 0,
            debug: false,
        },
    )
    .unwrap();
    let key = MarbleKey::generate().unwrap();
    let client =
        https(tls_config(&s.root_pem, Some((key.cert.clone(), key.key.clone()))).unwrap()).unwrap();
    let mesh = s.coord.mesh_url();
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
    let nonce_hex = n["data"]["nonce"].as_str().unwrap().to_string();
    let nonce: [u8; 32] = hex::decode(&nonce_hex).unwrap().try_into().unwrap();
    let rd = quarry_api::evidence::activation_report_data(&key.spki, Some(&nonce));
    let body = serde_json::json!({
        "marbleType": marble_type,
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
    assert_eq!(code, 200, "{v}");
    let chain = v["data"]["certificateChain"].as_str().unwrap();
    let leaf = pem::parse_many(chain).unwrap()[0].contents().to_vec();
    Marble { key, leaf }
}

/// `POST /api/v2/monotonic-counter` at `base` with `client`: (HTTP status, body).
async fn count(
    client: &reqwest::Client,
    base: &str,
    name: &str,
    value: u64,
) -> (u16, serde_json::Value) {
    jsend(
        client
            .post(format!("{base}/api/v2/monotonic-counter"))
            .json(&serde_json::json!({"name": name, "value": value}))
            .send()
            .await
            .unwrap(),
    )
    .await
    .unwrap()
}

/// Asserts a counter answer: HTTP 200 with `{"value": previous, "updated": updated}`.
fn assert_counter(answer: (u16, serde_json::Value), previous: u64, updated: bool) {
    let (code, v) = answer;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["status"], "success", "{v}");
    assert_eq!(v["data"]["value"], previous, "{v}");
    assert_eq!(v["data"]["updated"], updated, "{v}");
}

fn assert_refused(answer: (u16, serde_json::Value), status: u16, code: &str) {
    let (got, v) = answer;
    assert_eq!(got, status, "{v}");
    assert_eq!(v["status"], "fail", "{v}");
    assert_eq!(v["data"]["code"], code, "{v}");
}

async fn sign_quote(s: &Setup, quote_b64: &str) -> (u16, serde_json::Value) {
    let client = https(tls_config(&s.root_pem, None).unwrap()).unwrap();
    jsend(
        client
            .post(format!("{}/api/v2/sign-quote", s.coord.client_url()))
            .json(&serde_json::json!({ "sgxQuote": quote_b64 }))
            .send()
            .await
            .unwrap(),
    )
    .await
    .unwrap()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Checks the signature with openssl against the root certificate's public key.
fn openssl_verifies(s: &Setup, quote: &[u8], status: &str, signature_b64: &str) -> bool {
    let dir = s.dir();
    let pubkey = dir.join("root-pub.pem");
    let o = run(
        Command::new("openssl")
            .args(["x509", "-pubkey", "-noout", "-in"])
            .arg(s.root_file())
            .arg("-out")
            .arg(&pubkey),
        LIMIT,
    )
    .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    std::fs::write(dir.join("msg"), format!("{}{status}", b64(quote))).unwrap();
    std::fs::write(
        dir.join("sig.der"),
        base64::engine::general_purpose::STANDARD
            .decode(signature_b64)
            .unwrap(),
    )
    .unwrap();
    let o = run(
        Command::new("openssl")
            .args(["dgst", "-sha256", "-verify"])
            .arg(&pubkey)
            .arg("-signature")
            .arg(dir.join("sig.der"))
            .arg(dir.join("msg")),
        LIMIT,
    )
    .unwrap();
    o.status.success() && text(&o).contains("Verified OK")
}

fn quarry_sign_quote(s: &Setup, quote: &Path, extra: &[&str]) -> std::process::Output {
    run(
        Command::new(bin("quarry"))
            .arg("sign-quote")
            .arg("--quote")
            .arg(quote)
            .args(["--coordinator", &s.coord.client.to_string()])
            .arg("--root-ca")
            .arg(s.root_file())
            .args(extra)
            .env_remove("QUARRY_ROOT_CA")
            .env_remove("QUARRY_COORDINATOR"),
        LIMIT,
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_gates_off_both_endpoints_answer_403_feature_disabled() {
    let s = setup(&[], false).await;
    let quote = std::fs::read(real_quote_path()).unwrap();
    let answer = sign_quote(&s, &b64(&quote)).await;
    assert!(
        answer.1["message"]
            .as_str()
            .unwrap()
            .contains("SignQuoteEndpoint"),
        "{}",
        answer.1
    );
    assert_refused(answer, 403, "feature-disabled");
    let marble = activate(&s, "web", &uuid::Uuid::new_v4().to_string()).await;
    let client = marble.client(&s.root_pem);
    for base in [s.coord.client_url(), s.coord.mesh_url()] {
        let answer = count(&client, &base, "n", 1).await;
        assert!(
            answer.1["message"]
                .as_str()
                .unwrap()
                .contains("MonotonicCounter"),
            "{}",
            answer.1
        );
        assert_refused(answer, 403, "feature-disabled");
    }
    // The CLI says so too, with a failing exit code.
    let o = quarry_sign_quote(&s, &real_quote_path(), &[]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("feature-disabled"), "{}", text(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_sgx_quote_is_signed_and_its_signature_verifies_offline() {
    let s = setup(&["SignQuoteEndpoint"], true).await;
    let quote = std::fs::read(real_quote_path()).unwrap();
    let (code, v) = sign_quote(&s, &b64(&quote)).await;
    assert_eq!(code, 200, "{v}");
    // A status the default package policy refuses is signed all the same.
    let status = v["data"]["tcbStatus"].as_str().unwrap();
    assert_eq!(status, "ConfigurationAndSWHardeningNeeded");
    let signature = v["data"]["verificationSignature"].as_str().unwrap();
    assert!(openssl_verifies(&s, &quote, status, signature));
    assert!(
        !openssl_verifies(&s, &quote, "UpToDate", signature),
        "openssl refuses the signature for another status"
    );

    // `quarry sign-quote` checks the same signature against the pinned root.
    let o = quarry_sign_quote(&s, &real_quote_path(), &[]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(
        out.contains("TCB status: ConfigurationAndSWHardeningNeeded"),
        "{out}"
    );
    assert!(
        out.contains("signature verified against the root CA"),
        "{out}"
    );
    let o = quarry_sign_quote(&s, &real_quote_path(), &["--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["tcbStatus"], "ConfigurationAndSWHardeningNeeded");
    assert_eq!(j["signatureVerified"], true);

    // A root CA that is not the coordinator's: refused (already by the TLS pin; a signature
    // by another key is refused by quarry_api::quote_signature, see its unit tests).
    let other = MarbleKey::generate().unwrap();
    let other_root = s.dir().join("other-root.pem");
    std::fs::write(
        &other_root,
        pem::encode(&pem::Pem::new("CERTIFICATE", other.cert)),
    )
    .unwrap();
    let o = run(
        Command::new(bin("quarry"))
            .args(["sign-quote", "--quote"])
            .arg(real_quote_path())
            .args(["--coordinator", &s.coord.client.to_string(), "--root-ca"])
            .arg(&other_root)
            .env_remove("QUARRY_ROOT_CA"),
        LIMIT,
    )
    .unwrap();
    assert!(
        !o.status.success(),
        "another root must not pass: {}",
        text(&o)
    );

    // Garbage and a tampered quote: 400 naming sgxQuote; the CLI fails.
    let (code, v) = sign_quote(&s, &b64(b"certainly not a quote")).await;
    assert_eq!(code, 400, "{v}");
    assert_eq!(v["data"]["code"], "bad-request", "{v}");
    assert_eq!(v["data"]["pointer"], "/sgxQuote", "{v}");
    assert!(
        v["message"].as_str().unwrap().starts_with("sgxQuote: "),
        "{v}"
    );
    let (code, v) = sign_quote(&s, "%%% not base64").await;
    assert_eq!(code, 400, "{v}");
    assert_eq!(v["data"]["pointer"], "/sgxQuote", "{v}");
    let mut tampered = quote.clone();
    tampered[48 + 64] ^= 0xff;
    let (code, v) = sign_quote(&s, &b64(&tampered)).await;
    assert_eq!(code, 400, "{v}");
    assert_eq!(v["data"]["pointer"], "/sgxQuote", "{v}");
    let garbage = s.dir().join("garbage.quote");
    std::fs::write(&garbage, b"certainly not a quote").unwrap();
    let o = quarry_sign_quote(&s, &garbage, &[]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("sgxQuote"), "{}", text(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_rise_only_are_per_marble_refuse_strangers_and_survive_a_restart() {
    let mut s = setup(&["MonotonicCounter"], false).await;
    let a = uuid::Uuid::new_v4().to_string();
    let web_a = activate(&s, "web", &a).await;
    let web_b = activate(&s, "web", &uuid::Uuid::new_v4().to_string()).await;
    let db_a = activate(&s, "db", &a).await;
    let (client_api, mesh_api) = (s.coord.client_url(), s.coord.mesh_url());
    let ca = web_a.client(&s.root_pem);
    assert_counter(count(&ca, &client_api, "n", 5).await, 0, true);
    assert_counter(count(&ca, &mesh_api, "n", 7).await, 5, true);
    // Down: no error, the current value, nothing changed.
    assert_counter(count(&ca, &client_api, "n", 2).await, 7, false);
    assert_counter(count(&ca, &mesh_api, "n", 7).await, 7, false);
    assert_counter(count(&ca, &client_api, "n", 8).await, 7, true);
    // Other UUID, other type with the same UUID, other name: separate counters.
    let cb = web_b.client(&s.root_pem);
    assert_counter(count(&cb, &client_api, "n", 1).await, 0, true);
    let cd = db_a.client(&s.root_pem);
    assert_counter(count(&cd, &client_api, "n", 1).await, 0, true);
    assert_counter(count(&ca, &client_api, "other", 3).await, 0, true);
    let log = std::fs::read_to_string(&s.coord.log).unwrap();
    assert!(log.contains("monotonic counter not raised"), "{log}");

    // Strangers: no certificate, a user-like self-signed certificate.
    let nobody = https(tls_config(&s.root_pem, None).unwrap()).unwrap();
    assert_refused(
        count(&nobody, &client_api, "n", 100).await,
        401,
        "unauthenticated",
    );
    let stranger = MarbleKey::generate().unwrap();
    let sc = https(tls_config(&s.root_pem, Some((stranger.cert, stranger.key))).unwrap()).unwrap();
    for base in [&client_api, &mesh_api] {
        assert_refused(count(&sc, base, "n", 100).await, 401, "unauthenticated");
    }
    // A malformed body names the problem.
    let (code, v) = jsend(
        ca.post(format!("{client_api}/api/v2/monotonic-counter"))
            .json(&serde_json::json!({"name": "n", "value": -1}))
            .send()
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(code, 400, "{v}");

    // Restart: the counters are in the sealed store.
    s.restart();
    let (client_api, mesh_api) = (s.coord.client_url(), s.coord.mesh_url());
    let ca = web_a.client(&s.root_pem);
    assert_counter(count(&ca, &client_api, "n", 9).await, 8, true);
    assert_counter(count(&ca, &mesh_api, "n", 1).await, 9, false);
    let cb = web_b.client(&s.root_pem);
    assert_counter(count(&cb, &client_api, "n", 0).await, 1, false);
}
