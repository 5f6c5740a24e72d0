//! MarbleRun's feature-gated endpoints against a real `Core` on a simulated TEE (issue 18
//! item 5): `sign-quote` with a real SGX quote and the coordinator's offline collateral, its
//! signature checked with ring against the root certificate's key; monotonic counters per
//! marble type, UUID and name, their refusals, and that they survive restarts, manifest
//! updates and an older value put back into the store.
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use quarry_api::http::{ActivateRequest, CounterRequest, CounterResponse, SignQuoteRequest};
use quarry_attestation::simulated::{SimIdentity, SimPlatform, SimProvider};
use quarry_attestation::EvidenceProvider as _;
use quarry_coordinator::http::error::{ApiError, Denial, RequestFault};
use quarry_coordinator::marble::{activation, counter};
use quarry_coordinator::state::{Core, Phase};
use quarry_coordinator::store::Txn;
use quarry_coordinator::tee::Tee;
use sha2::{Digest, Sha256};

/// Inside the collateral window of the recorded SGX quote (PROVENANCE.md: 2025-07-01).
const RECORDED_AT: u64 = 1_751_328_000;

fn sgx_vectors() -> PathBuf {
    if let Some(dir) = std::env::var_os("QUARRY_SHARED_DIR") {
        return PathBuf::from(dir).join("testdata/attestation/sgx");
    }
    let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    loop {
        let p = dir.join("shared/testdata/attestation/sgx");
        if p.is_dir() {
            return p;
        }
        assert!(
            dir.pop(),
            "shared/testdata/attestation not found; set QUARRY_SHARED_DIR"
        );
    }
}

fn real_quote() -> Vec<u8> {
    std::fs::read(sgx_vectors().join("dcapqvl_sgx_quote_v3.bin")).unwrap()
}

/// A collateral cache holding the real quote's collateral (FMSPC 00A067110000, Processor CA).
fn collateral_cache(dir: &Path) -> PathBuf {
    let cache = dir.join("collateral");
    std::fs::create_dir_all(cache.join("sgx")).unwrap();
    std::fs::copy(
        sgx_vectors().join("dcapqvl_sgx_quote_v3.collateral.json"),
        cache.join("sgx/00A067110000-processor.json"),
    )
    .unwrap();
    cache
}

fn user_cert(name: &str) -> (String, Vec<u8>) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, name.to_string());
    let cert = p.self_signed(&key).unwrap();
    (cert.pem(), cert.der().to_vec())
}

struct Fixture {
    dir: tempfile::TempDir,
    core: Core,
    provider: SimProvider,
    owner_pem: String,
    owner: Vec<u8>,
}

/// The simulated TEE with the real quote's collateral; `recorded`: verify at the recorded
/// time (the real quote's collateral window, before the simulated platform CA was made), else
/// at the clock (for simulated marbles).
fn open_tee(dir: &Path, recorded: bool) -> Tee {
    let mut tee = Tee::simulated(&dir.join("sim"), Some(&collateral_cache(dir))).unwrap();
    if recorded {
        tee.verification_time = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(RECORDED_AT));
    }
    tee
}

/// `gates`: the `Config.FeatureGates` of the manifest; `version` changes the manifest bytes.
fn manifest(owner_pem: &str, gates: &[&str], version: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "Packages": {"any": {"TEE": "simulated", "SignerID": "00".repeat(32), "ProductID": 0, "SecurityVersion": 0}},
        "Marbles": {
            "web": {"Package": "any", "Parameters": {"Env": {"VERSION": version}}},
            "db": {"Package": "any"}
        },
        "Users": {"owner": {"Certificate": owner_pem, "Roles": ["owner"]}},
        "Roles": {"owner": {"ResourceType": "Manifest", "Actions": ["UpdateManifest"]}},
        "Config": {"FeatureGates": gates}
    }))
    .unwrap()
}

/// A running deployment with `gates`; `recorded` as for [`open_tee`].
async fn fixture_at(gates: &[&str], recorded: bool) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    SimPlatform::create(&dir.path().join("sim")).unwrap();
    let core = Core::open(&dir.path().join("data"), open_tee(dir.path(), recorded))
        .await
        .unwrap();
    let (owner_pem, owner) = user_cert("owner");
    quarry_coordinator::manifest::set::set_manifest(&core, manifest(&owner_pem, gates, "1"))
        .await
        .unwrap();
    let provider = SimProvider::new(
        SimPlatform::load(&dir.path().join("sim")).unwrap(),
        SimIdentity {
            unique_id: [7; 32],
            signer_id: [0; 32],
            product_id: 0,
            security_version: 0,
            debug: false,
        },
    )
    .unwrap();
    Fixture {
        dir,
        core,
        provider,
        owner_pem,
        owner,
    }
}

/// A running deployment with `gates` whose marbles activate at the clock.
async fn fixture(gates: &[&str]) -> Fixture {
    fixture_at(gates, false).await
}

/// A running deployment with `gates` that verifies quotes at the recorded time.
async fn sign_fixture(gates: &[&str]) -> Fixture {
    fixture_at(gates, true).await
}

impl Fixture {
    /// Activates a fresh key as `marble_type`/`uuid`; returns the issued leaf (DER).
    async fn activate(&self, marble_type: &str, uuid: &str) -> Vec<u8> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::default()
            .self_signed(&key)
            .unwrap()
            .der()
            .to_vec();
        let spki = rcgen::PublicKeyData::subject_public_key_info(&key);
        let nonce = self.core.issue_nonce(Sha256::digest(&spki).into()).unwrap();
        let rd = quarry_api::evidence::activation_report_data(&spki, Some(&nonce));
        let req = ActivateRequest {
            marble_type: marble_type.into(),
            uuid: uuid.into(),
            evidence: self.provider.evidence(&rd).unwrap(),
            dns_names: vec![],
            nonce: Some(hex::encode(nonce)),
        };
        let resp = activation::activate(&self.core, req, &cert)
            .await
            .expect("activation");
        pem::parse_many(&resp.certificate_chain).unwrap()[0]
            .contents()
            .to_vec()
    }

    async fn count(
        &self,
        leaf: Option<&[u8]>,
        name: &str,
        value: u64,
    ) -> Result<CounterResponse, ApiError> {
        counter::set(
            &self.core,
            leaf,
            CounterRequest {
                name: name.into(),
                value,
            },
        )
        .await
    }

    fn root_der(&self) -> Vec<u8> {
        self.core.view().identity.root.cert_der().to_vec()
    }
}

fn sign_request(quote: &[u8]) -> SignQuoteRequest {
    SignQuoteRequest {
        sgx_quote: base64::engine::general_purpose::STANDARD.encode(quote),
    }
}

/// Checks the signature with ring alone, against the public key of the root certificate.
fn ring_verifies(root_der: &[u8], quote: &[u8], status: &str, signature_b64: &str) -> bool {
    let (_, root) = x509_parser::parse_x509_certificate(root_der).unwrap();
    let key = ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P256_SHA256_ASN1,
        root.public_key().subject_public_key.data.to_vec(),
    );
    let mut message = base64::engine::general_purpose::STANDARD
        .encode(quote)
        .into_bytes();
    message.extend_from_slice(status.as_bytes());
    let signature = base64::engine::general_purpose::STANDARD
        .decode(signature_b64)
        .unwrap();
    key.verify(&message, &signature).is_ok()
}

fn assert_feature_disabled(err: &ApiError, gate: &str) {
    assert!(
        matches!(err, ApiError::Denied(Denial::FeatureDisabled(m)) if m.contains(gate)),
        "{err:?}"
    );
    assert_eq!(err.code(), "feature-disabled");
    assert_eq!(err.status(), 403);
    assert_eq!(err.fail_data().code, "feature-disabled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_gates_off_both_endpoints_refuse_with_feature_disabled() {
    let f = sign_fixture(&[]).await;
    let err = quarry_coordinator::sign_quote::sign(&f.core, sign_request(&real_quote()))
        .await
        .expect_err("sign-quote is off without SignQuoteEndpoint");
    assert_feature_disabled(&err, "SignQuoteEndpoint");
    let f = fixture(&[]).await;
    let leaf = f.activate("web", &uuid::Uuid::new_v4().to_string()).await;
    let err = f
        .count(Some(&leaf), "n", 1)
        .await
        .expect_err("counters are off without MonotonicCounter");
    assert_feature_disabled(&err, "MonotonicCounter");

    // One gate does not open the other endpoint.
    let f = sign_fixture(&["MonotonicCounter"]).await;
    let err = quarry_coordinator::sign_quote::sign(&f.core, sign_request(&real_quote()))
        .await
        .expect_err("MonotonicCounter does not enable sign-quote");
    assert_feature_disabled(&err, "SignQuoteEndpoint");
    let f = fixture(&["SignQuoteEndpoint"]).await;
    let leaf = f.activate("web", &uuid::Uuid::new_v4().to_string()).await;
    let err = f.count(Some(&leaf), "n", 1).await.expect_err("off");
    assert_feature_disabled(&err, "MonotonicCounter");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_manifest_sign_quote_is_feature_disabled() {
    let dir = tempfile::tempdir().unwrap();
    SimPlatform::create(&dir.path().join("sim")).unwrap();
    let core = Core::open(&dir.path().join("data"), open_tee(dir.path(), true))
        .await
        .unwrap();
    assert!(matches!(
        core.view().phase.as_ref(),
        Phase::AcceptingManifest
    ));
    let err = quarry_coordinator::sign_quote::sign(&core, sign_request(&real_quote()))
        .await
        .expect_err("no manifest, no gate");
    assert_feature_disabled(&err, "SignQuoteEndpoint");
    assert!(err.to_string().contains("no manifest is set"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_sgx_quote_is_signed_with_its_tcb_status_by_the_root_key() {
    let f = sign_fixture(&["SignQuoteEndpoint"]).await;
    let quote = real_quote();
    let resp = quarry_coordinator::sign_quote::sign(&f.core, sign_request(&quote))
        .await
        .expect("the real quote verifies at the recorded time");
    // Not a status the default policy accepts, and signed all the same (PROVENANCE.md).
    assert_eq!(resp.tcb_status, "ConfigurationAndSWHardeningNeeded");
    let root = f.root_der();
    assert!(ring_verifies(
        &root,
        &quote,
        &resp.tcb_status,
        &resp.verification_signature
    ));
    assert!(
        !ring_verifies(&root, &quote, "UpToDate", &resp.verification_signature),
        "the signature covers the status"
    );
    let mut other = quote.clone();
    other[200] ^= 1;
    assert!(
        !ring_verifies(
            &root,
            &other,
            &resp.tcb_status,
            &resp.verification_signature
        ),
        "the signature covers the quote"
    );
    let (_, stranger) = user_cert("not the root");
    assert!(
        !ring_verifies(
            &stranger,
            &quote,
            &resp.tcb_status,
            &resp.verification_signature
        ),
        "only the root key's signature"
    );
    // The library check a relying party (and `quarry sign-quote`) uses agrees.
    quarry_api::quote_signature::verify(
        &root,
        &quote,
        &resp.tcb_status,
        &resp.verification_signature,
    )
    .unwrap();

    // A debug enclave's quote is signed too: the signature covers the verification and the
    // TCB status, never the enclave's identity or mode, which the relying party reads from
    // the quote itself (as with MarbleRun).
    let debug = std::fs::read(sgx_vectors().join("automata_sgx_quote_v3_DEBUG.bin")).unwrap();
    let resp = quarry_coordinator::sign_quote::sign(&f.core, sign_request(&debug))
        .await
        .expect("a debug quote verifies");
    assert_eq!(resp.tcb_status, "ConfigurationAndSWHardeningNeeded");
    assert!(ring_verifies(
        &root,
        &debug,
        &resp.tcb_status,
        &resp.verification_signature
    ));

    // With an Open Enclave report header (MarbleRun clients send one) the same quote
    // verifies; the signature is over the bytes as posted.
    let mut with_header = vec![1, 0, 0, 0, 2, 0, 0, 0];
    with_header.extend_from_slice(&(quote.len() as u64).to_le_bytes());
    with_header.extend_from_slice(&quote);
    let resp = quarry_coordinator::sign_quote::sign(&f.core, sign_request(&with_header))
        .await
        .expect("an OE header is accepted");
    assert_eq!(resp.tcb_status, "ConfigurationAndSWHardeningNeeded");
    assert!(ring_verifies(
        &root,
        &with_header,
        &resp.tcb_status,
        &resp.verification_signature
    ));
}

fn assert_sgx_quote_refused(
    result: Result<quarry_api::http::SignQuoteResponse, ApiError>,
) -> String {
    let err = result.expect_err("refused");
    assert!(
        matches!(
            &err,
            ApiError::Request(RequestFault::InvalidField {
                field: "sgxQuote",
                ..
            })
        ),
        "{err:?}"
    );
    assert_eq!(err.status(), 400);
    assert_eq!(err.code(), "bad-request");
    assert_eq!(err.fail_data().pointer.as_deref(), Some("/sgxQuote"));
    let message = err.to_string();
    assert!(message.starts_with("sgxQuote: "), "{message}");
    message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unverifiable_quotes_are_400_naming_sgx_quote() {
    let f = sign_fixture(&["SignQuoteEndpoint"]).await;
    let sign = |q: SignQuoteRequest| quarry_coordinator::sign_quote::sign(&f.core, q);
    let m = assert_sgx_quote_refused(sign(sign_request(b"not a quote at all")).await);
    assert!(m.contains("does not verify"), "{m}");
    let m = assert_sgx_quote_refused(
        sign(SignQuoteRequest {
            sgx_quote: "***".into(),
        })
        .await,
    );
    assert!(m.contains("base64"), "{m}");
    let m = assert_sgx_quote_refused(sign(SignQuoteRequest::default()).await);
    assert!(m.contains("empty"), "{m}");
    // A real quote with one byte of its enclave report changed: the QE signature fails.
    let mut tampered = real_quote();
    tampered[48 + 64] ^= 0xff;
    assert_sgx_quote_refused(sign(sign_request(&tampered)).await);
    // Outside the collateral window the same real quote does not verify either.
    let dir = tempfile::tempdir().unwrap();
    SimPlatform::create(&dir.path().join("sim")).unwrap();
    let tee = open_tee(dir.path(), false);
    let core = Core::open(&dir.path().join("data"), tee).await.unwrap();
    quarry_coordinator::manifest::set::set_manifest(
        &core,
        manifest(&f.owner_pem, &["SignQuoteEndpoint"], "1"),
    )
    .await
    .unwrap();
    let m = assert_sgx_quote_refused(
        quarry_coordinator::sign_quote::sign(&core, sign_request(&real_quote())).await,
    );
    assert!(m.contains("expired") || m.contains("not valid"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_only_rises_and_each_type_uuid_and_name_has_its_own() {
    let f = fixture(&["MonotonicCounter"]).await;
    let a = uuid::Uuid::new_v4().to_string();
    let b = uuid::Uuid::new_v4().to_string();
    let web_a = f.activate("web", &a).await;
    let web_b = f.activate("web", &b).await;
    let db_a = f.activate("db", &a).await;
    let r = f.count(Some(&web_a), "n", 5).await.unwrap();
    assert_eq!((r.value, r.updated), (0, true), "a new counter starts at 0");
    let r = f.count(Some(&web_a), "n", 7).await.unwrap();
    assert_eq!((r.value, r.updated), (5, true));
    // Lower and equal values leave it: the answer is the current value, not an error.
    let r = f.count(Some(&web_a), "n", 3).await.unwrap();
    assert_eq!((r.value, r.updated), (7, false));
    let r = f.count(Some(&web_a), "n", 7).await.unwrap();
    assert_eq!((r.value, r.updated), (7, false));
    let r = f.count(Some(&web_a), "n", 8).await.unwrap();
    assert_eq!((r.value, r.updated), (7, true), "3 was not stored");
    // Another UUID of the type, the same UUID under another type, another name: all new.
    let r = f.count(Some(&web_b), "n", 1).await.unwrap();
    assert_eq!((r.value, r.updated), (0, true));
    let r = f.count(Some(&db_a), "n", 2).await.unwrap();
    assert_eq!((r.value, r.updated), (0, true));
    let r = f.count(Some(&web_a), "m", 2).await.unwrap();
    assert_eq!((r.value, r.updated), (0, true));
    // A second instance under the same UUID (a restarted marble) shares the counter.
    let web_a_again = f.activate("web", &a).await;
    let r = f.count(Some(&web_a_again), "n", 9).await.unwrap();
    assert_eq!((r.value, r.updated), (8, true));
    let r = f.count(Some(&web_b), "n", u64::MAX).await.unwrap();
    assert_eq!((r.value, r.updated), (1, true));
    let r = f.count(Some(&web_b), "n", 0).await.unwrap();
    assert_eq!((r.value, r.updated), (u64::MAX, false));
    // Every raise is in the transparency log, by counter digest, never by name.
    let entries = f.core.view().log.entries(0);
    let raises: Vec<_> = entries
        .iter()
        .filter(|e| e.event["type"] == "monotonic-counter")
        .collect();
    assert_eq!(
        raises.len(),
        8,
        "one entry per raise, none for a refusal to lower"
    );
    let digest = counter::counter_digest("web", &uuid::Uuid::parse_str(&a).unwrap(), "n");
    let values: Vec<_> = raises
        .iter()
        .filter(|e| e.event["counter"] == digest.as_str())
        .map(|e| e.event["value"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(values, ["5", "7", "8", "9"]);
    assert!(!serde_json::to_string(&entries).unwrap().contains("\"n\""));

    let err = f
        .count(Some(&web_a), &"x".repeat(counter::MAX_NAME_BYTES + 1), 1)
        .await
        .expect_err("an overlong name is refused");
    assert!(
        matches!(
            &err,
            ApiError::Request(RequestFault::InvalidField { field: "name", .. })
        ),
        "{err:?}"
    );
    assert_eq!(err.fail_data().pointer.as_deref(), Some("/name"));
}

fn assert_unauthenticated(result: Result<CounterResponse, ApiError>, what: &str) {
    let err = result.err().unwrap_or_else(|| panic!("{what}: accepted"));
    assert!(
        matches!(&err, ApiError::Denied(Denial::Unauthenticated(_))),
        "{what}: {err:?}"
    );
    assert_eq!(err.code(), "unauthenticated", "{what}");
    assert_eq!(err.status(), 401, "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_current_marble_certificate_may_use_a_counter() {
    let f = fixture(&["MonotonicCounter"]).await;
    assert_unauthenticated(f.count(None, "n", 1).await, "no client certificate");
    assert_unauthenticated(
        f.count(Some(&f.owner), "n", 1).await,
        "a user's certificate",
    );
    // A self-signed certificate that copies a marble's SPIFFE ID is no marble.
    let uuid = uuid::Uuid::new_v4();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.subject_alt_names = vec![rcgen::SanType::URI(
        rcgen::string::Ia5String::try_from(quarry_api::spiffe::marble_id(
            "quarry.local",
            "web",
            &uuid,
        ))
        .unwrap(),
    )];
    let forged = p.self_signed(&key).unwrap().der().to_vec();
    assert_unauthenticated(f.count(Some(&forged), "n", 1).await, "a forged leaf");
    assert_unauthenticated(f.count(Some(b"junk"), "n", 1).await, "garbage");

    // A revoked marble is refused with the revocation code.
    let leaf = f.activate("web", &uuid.to_string()).await;
    f.count(Some(&leaf), "n", 1).await.unwrap();
    quarry_coordinator::marble::revocation::revoke(
        &f.core,
        Some(&f.owner),
        quarry_api::http::RevokeRequest {
            uuid: Some(uuid.to_string()),
            serial: None,
        },
    )
    .await
    .unwrap();
    let err = f.count(Some(&leaf), "n", 2).await.expect_err("revoked");
    assert_eq!(err.code(), "revoked", "{err:?}");
    assert_eq!(err.status(), 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_survive_a_restart_a_manifest_update_and_an_older_stored_value() {
    let f = fixture(&["MonotonicCounter"]).await;
    let a = uuid::Uuid::new_v4().to_string();
    let leaf = f.activate("web", &a).await;
    assert_eq!(f.count(Some(&leaf), "n", 5).await.unwrap().value, 0);
    assert_eq!(f.count(Some(&leaf), "n", 9).await.unwrap().value, 5);

    // Restart: a new Core on the same data directory.
    let Fixture {
        dir,
        core,
        provider,
        owner_pem,
        owner,
    } = f;
    drop(core);
    let core = Core::open(&dir.path().join("data"), open_tee(dir.path(), false))
        .await
        .unwrap();
    let f = Fixture {
        dir,
        core,
        provider,
        owner_pem,
        owner,
    };
    // The leaf is still current (same mesh CA after a restart).
    let r = f.count(Some(&leaf), "n", 10).await.unwrap();
    assert_eq!(
        (r.value, r.updated),
        (9, true),
        "the value survived the restart"
    );

    // A manifest update rotates the mesh CA; the counter is kept for the re-activated marble.
    let update = quarry_coordinator::manifest::update::propose(
        &f.core,
        Some(&f.owner),
        manifest(&f.owner_pem, &["MonotonicCounter"], "2"),
    )
    .await
    .unwrap();
    assert_eq!(update.missing_acknowledgments, 0, "{}", update.message);
    assert_unauthenticated(
        f.count(Some(&leaf), "n", 11).await,
        "a leaf of the mesh CA before the update",
    );
    let leaf = f.activate("web", &a).await;
    let r = f.count(Some(&leaf), "n", 11).await.unwrap();
    assert_eq!((r.value, r.updated), (10, true), "not reset by the update");

    // An older value put back into the store (what an etcd writer could replay) does not
    // lower the counter: the transparency log's value holds.
    let digest = counter::counter_digest("web", &uuid::Uuid::parse_str(&a).unwrap(), "n");
    let store = f.core.view().store.clone().unwrap();
    store
        .commit(Txn::new().put(
            &format!("monotonic-counter/{digest}"),
            3u64.to_be_bytes().to_vec(),
        ))
        .await
        .unwrap();
    let r = f.count(Some(&leaf), "n", 4).await.unwrap();
    assert_eq!(
        (r.value, r.updated),
        (11, false),
        "the log's 11 outvotes the stored 3"
    );
    let r = f.count(Some(&leaf), "n", 12).await.unwrap();
    assert_eq!((r.value, r.updated), (11, true));
}

/// Concurrent raises of one counter serialise on the compare-and-swap: every raise that
/// reports `updated` saw a smaller previous value, no two saw the same one, and the counter
/// ends at the highest value asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_raises_of_one_counter_never_lose_the_highest_value() {
    let f = std::sync::Arc::new(fixture(&["MonotonicCounter"]).await);
    let leaf = std::sync::Arc::new(f.activate("web", &uuid::Uuid::new_v4().to_string()).await);
    let mut tasks = Vec::new();
    for value in 1..=24u64 {
        let (f, leaf) = (f.clone(), leaf.clone());
        tasks.push(tokio::spawn(async move {
            (value, f.count(Some(&leaf), "n", value).await.unwrap())
        }));
    }
    let mut seen = std::collections::BTreeSet::new();
    for t in tasks {
        let (value, r) = t.await.unwrap();
        if r.updated {
            assert!(r.value < value, "raised {value} over {}", r.value);
            assert!(seen.insert(r.value), "two raises from {}", r.value);
        } else {
            assert!(r.value >= value, "{value} refused below {}", r.value);
        }
    }
    let r = f.count(Some(&leaf), "n", 0).await.unwrap();
    assert_eq!((r.value, r.updated), (24, false));
}
