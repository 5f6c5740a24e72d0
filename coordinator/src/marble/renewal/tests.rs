//! Renewal and revocation against a real coordinator core on a simulated TEE: the refusals of
//! issue 6 (revoked UUID, evidence for another key, expired or foreign leaf) and the CRL.
use quarry_api::http::{ActivateRequest, RevokeRequest};
use quarry_attestation::simulated::{SimIdentity, SimPlatform, SimProvider};
use quarry_attestation::EvidenceProvider as _;

use super::*;
use crate::tee::Tee;

struct Fixture {
    _dir: tempfile::TempDir,
    core: Core,
    provider: SimProvider,
    /// Certificate DER of `alice` (role: RevokeMarble on `web`).
    alice: Vec<u8>,
    /// Certificate DER of `bob` (role: RevokeMarble on `other` only).
    bob: Vec<u8>,
    /// Certificate DER of `owner` (UpdateManifest).
    owner: Vec<u8>,
}

fn user_cert(name: &str) -> (String, Vec<u8>) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, name.to_string());
    let cert = p.self_signed(&key).unwrap();
    (cert.pem(), cert.der().to_vec())
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let sim = dir.path().join("sim");
    SimPlatform::create(&sim).unwrap();
    let core = Core::open(
        &dir.path().join("data"),
        Tee::simulated(&sim, None).unwrap(),
    )
    .await
    .unwrap();
    let (alice_pem, alice) = user_cert("alice");
    let (bob_pem, bob) = user_cert("bob");
    let (owner_pem, owner) = user_cert("owner");
    let manifest = serde_json::json!({
        "Packages": {"any": {"TEE": "simulated", "SignerID": "00".repeat(32), "ProductID": 0, "SecurityVersion": 0}},
        "Marbles": {
            "web": {"Package": "any", "CertValidFor": "1h", "Parameters": {"Files": {
                "/tls/cert.pem": "{{ pem .MarbleRun.MarbleCert.Cert }}",
                "/tls/both.pem": "{{ pem .MarbleRun.MarbleCert.Cert }}{{ pem .MarbleRun.MarbleCert.Private }}",
                "/tls/key.pem": "{{ pem .MarbleRun.MarbleCert.Private }}",
                "/static.txt": "static"
            }}},
            "other": {"Package": "any"},
            "limited": {"Package": "any", "MaxActivations": 1}
        },
        "Users": {
            "alice": {"Certificate": alice_pem, "Roles": ["revoke-web"]},
            "bob": {"Certificate": bob_pem, "Roles": ["revoke-other"]},
            "owner": {"Certificate": owner_pem, "Roles": ["owner"]}
        },
        "Roles": {
            "revoke-web": {"ResourceType": "Marbles", "ResourceNames": ["web"], "Actions": ["RevokeMarble"]},
            "revoke-other": {"ResourceType": "Marbles", "ResourceNames": ["other"], "Actions": ["RevokeMarble"]},
            "owner": {"ResourceType": "Manifest", "Actions": ["UpdateManifest"]}
        }
    });
    crate::manifest::set::set_manifest(&core, serde_json::to_vec(&manifest).unwrap())
        .await
        .unwrap();
    let provider = SimProvider::new(
        SimPlatform::load(&sim).unwrap(),
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
        _dir: dir,
        core,
        provider,
        alice,
        bob,
        owner,
    }
}

/// A marble key with its self-signed activation certificate and SPKI.
struct Key {
    cert: Vec<u8>,
    spki: Vec<u8>,
}

fn marble_key() -> Key {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::default()
        .self_signed(&key)
        .unwrap()
        .der()
        .to_vec();
    Key {
        cert,
        spki: rcgen::PublicKeyData::subject_public_key_info(&key),
    }
}

fn first_der(pem_text: &str) -> Vec<u8> {
    pem::parse_many(pem_text).unwrap()[0].contents().to_vec()
}

fn serial_of(der: &[u8]) -> String {
    hex::encode(
        x509_parser::parse_x509_certificate(der)
            .unwrap()
            .1
            .raw_serial(),
    )
}

impl Fixture {
    fn evidence(&self, spki: &[u8], nonce: &[u8; 32]) -> quarry_api::evidence::Evidence {
        let rd = quarry_api::evidence::activation_report_data(spki, Some(nonce));
        self.provider.evidence(&rd).unwrap()
    }

    /// Activates `key` as `marble_type`/`uuid`; returns the leaf DER.
    async fn activate(
        &self,
        key: &Key,
        marble_type: &str,
        uuid: &str,
    ) -> Result<Vec<u8>, ApiError> {
        let nonce = self.core.issue_nonce(Sha256::digest(&key.spki).into())?;
        let req = ActivateRequest {
            marble_type: marble_type.into(),
            uuid: uuid.into(),
            evidence: self.evidence(&key.spki, &nonce),
            dns_names: vec![],
            nonce: Some(hex::encode(nonce)),
        };
        let resp = crate::marble::activation::activate(&self.core, req, &key.cert).await?;
        Ok(first_der(&resp.certificate_chain))
    }

    /// Renews over a connection presenting `leaf`, with evidence binding `evidence_spki`.
    async fn renew(&self, leaf: &[u8], evidence_spki: &[u8]) -> Result<RenewResponse, ApiError> {
        let spki = crate::marble::activation::spki_of(leaf)?;
        let nonce = self.core.issue_nonce(Sha256::digest(&spki).into())?;
        let req = RenewRequest {
            evidence: self.evidence(evidence_spki, &nonce),
            nonce: hex::encode(nonce),
        };
        renew(&self.core, req, leaf).await
    }

    async fn revoke(
        &self,
        user: &[u8],
        req: RevokeRequest,
    ) -> Result<quarry_api::http::RevokeResponse, ApiError> {
        crate::marble::revocation::revoke(&self.core, Some(user), req).await
    }

    /// The serials (hex) the current CRL lists.
    async fn crl_serials(&self) -> Vec<String> {
        let der = crate::marble::revocation::crl(&self.core).await.unwrap();
        let (_, crl) = x509_parser::parse_x509_crl(&der).unwrap();
        crl.iter_revoked_certificates()
            .map(|r| hex::encode(r.raw_serial()))
            .collect()
    }

    fn mesh_ca(&self) -> Vec<u8> {
        match self.core.view().phase.as_ref() {
            crate::state::Phase::Running(d) => d.mesh.cert_der().to_vec(),
            _ => panic!("not running"),
        }
    }
}

/// A user-permission 403 (revocation) whose message mentions `needle`.
fn forbidden(r: Result<impl std::fmt::Debug, ApiError>, needle: &str) {
    match r {
        Err(ApiError::Denied(crate::http::error::Denial::Forbidden(m))) => {
            assert!(m.contains(needle), "{m:?} must mention {needle:?}")
        }
        other => panic!("expected 403 mentioning {needle:?}, got {other:?}"),
    }
}

/// A marble refusal with `code` whose message mentions `needle`.
fn refused(r: Result<impl std::fmt::Debug, ApiError>, code: &str, needle: &str) {
    match r {
        Err(ApiError::Denied(crate::http::error::Denial::Refused(refusal))) => {
            assert_eq!(refusal.code(), code, "{refusal}");
            let m = refusal.to_string();
            assert!(m.contains(needle), "{m:?} must mention {needle:?}");
        }
        other => panic!("expected refusal [{code}] mentioning {needle:?}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_issues_a_new_leaf_for_the_same_key_and_logs_it() {
    let f = fixture().await;
    let key = marble_key();
    let uuid = uuid::Uuid::new_v4().to_string();
    let leaf = f.activate(&key, "web", &uuid).await.unwrap();
    let renewed = f.renew(&leaf, &key.spki).await.unwrap();
    let new_leaf = first_der(&renewed.certificate_chain);
    let (_, old) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    let (_, new) = x509_parser::parse_x509_certificate(&new_leaf).unwrap();
    assert_eq!(new.public_key().raw, key.spki.as_slice(), "same key");
    assert_ne!(old.raw_serial(), new.raw_serial(), "new serial");
    assert_eq!(renewed.serial, serial_of(&new_leaf));
    assert_eq!(
        renewed.spiffe_id,
        format!("spiffe://quarry.local/marble/web/{uuid}")
    );
    assert_eq!(renewed.not_after, new.validity().not_after.timestamp());
    let current = check_leaf(
        &new_leaf,
        &f.mesh_ca(),
        "quarry.local",
        crate::clock::now_unix() as i64,
    )
    .unwrap();
    assert_eq!(current.uuid.to_string(), uuid);
    assert_eq!(current.marble_type, "web");
    // The files that use the certificate come back rendered with the new leaf; the others not.
    assert_eq!(
        renewed.files.keys().collect::<Vec<_>>(),
        ["/tls/both.pem", "/tls/cert.pem"]
    );
    let cert_file = String::from_utf8(renewed.files["/tls/cert.pem"].assemble(&[])).unwrap();
    assert_eq!(first_der(&cert_file), new_leaf);
    assert!(renewed.files["/tls/both.pem"]
        .0
        .iter()
        .any(|s| matches!(s, quarry_api::http::Segment::MarblePrivateKey(_))));
    // The renewed leaf renews again.
    let again = f.renew(&new_leaf, &key.spki).await.unwrap();
    assert_ne!(again.serial, renewed.serial);
    // Both renewals are in the transparency log with old and new serials.
    let events: Vec<_> = f
        .core
        .view()
        .log
        .entries(0)
        .into_iter()
        .map(|e| e.event)
        .filter(|e| e["type"] == "renewal")
        .collect();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["uuid"], uuid.as_str());
    assert_eq!(events[0]["marbleType"], "web");
    assert_eq!(events[0]["oldSerial"], serial_of(&leaf).as_str());
    assert_eq!(events[0]["newSerial"], renewed.serial.as_str());
    assert_eq!(events[1]["oldSerial"], renewed.serial.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_with_evidence_for_another_key_is_refused() {
    let f = fixture().await;
    let key = marble_key();
    let leaf = f
        .activate(&key, "web", &uuid::Uuid::new_v4().to_string())
        .await
        .unwrap();
    let other = marble_key();
    refused(
        f.renew(&leaf, &other.spki).await,
        "key-binding",
        "SHA-256 of the TLS client key",
    );
    // A nonce issued to another key is refused too.
    let nonce = f
        .core
        .issue_nonce(Sha256::digest(&other.spki).into())
        .unwrap();
    let req = RenewRequest {
        evidence: f.evidence(&key.spki, &nonce),
        nonce: hex::encode(nonce),
    };
    refused(renew(&f.core, req, &leaf).await, "nonce", "another TLS key");
    // A nonce cannot be used twice.
    let nonce = f
        .core
        .issue_nonce(Sha256::digest(&key.spki).into())
        .unwrap();
    let req = RenewRequest {
        evidence: f.evidence(&key.spki, &nonce),
        nonce: hex::encode(nonce),
    };
    renew(&f.core, req.clone(), &leaf).await.unwrap();
    refused(renew(&f.core, req, &leaf).await, "nonce", "already used");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_foreign_or_self_signed_certificates_cannot_renew() {
    let f = fixture().await;
    let key = marble_key();
    let leaf = f
        .activate(&key, "web", &uuid::Uuid::new_v4().to_string())
        .await
        .unwrap();
    let now = crate::clock::now_unix() as i64;
    // Expired: the same leaf two hours later (CertValidFor is 1h).
    let err = check_leaf(&leaf, &f.mesh_ca(), "quarry.local", now + 7200).unwrap_err();
    assert!(err.contains("expired"), "{err}");
    // Another trust domain.
    let err = check_leaf(&leaf, &f.mesh_ca(), "prod.example", now).unwrap_err();
    assert!(err.contains("trust domain"), "{err}");
    // A leaf from another deployment's mesh CA (same names, other key).
    let root = crate::pki::CaKey::new_root().unwrap();
    let foreign_mesh = crate::pki::CaKey::new_mesh(&root).unwrap();
    let uuid = uuid::Uuid::new_v4();
    let foreign = foreign_mesh
        .issue_marble_leaf(&LeafRequest {
            spki_der: &key.spki,
            uuid: &uuid,
            spiffe_id: &quarry_api::spiffe::marble_id("quarry.local", "web", &uuid),
            dns_names: &[],
            valid_for: std::time::Duration::from_secs(3600),
            marble_type: "web",
            claims_digest: &[0; 32],
            simulation: true,
        })
        .unwrap();
    refused(
        f.renew(&foreign, &key.spki).await,
        "certificate",
        "not a leaf of this deployment",
    );
    // The self-signed activation certificate is no leaf either.
    refused(
        f.renew(&key.cert, &key.spki).await,
        "certificate",
        "not a leaf of this deployment",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_uuid_cannot_renew_or_activate_and_is_listed_in_the_crl() {
    let f = fixture().await;
    let key = marble_key();
    let uuid = uuid::Uuid::new_v4().to_string();
    let leaf = f.activate(&key, "web", &uuid).await.unwrap();
    let renewed = f.renew(&leaf, &key.spki).await.unwrap();
    let by_uuid = RevokeRequest {
        uuid: Some(uuid.clone()),
        serial: None,
    };
    // Authorisation: bob may revoke only `other`; no user certificate at all is a 401.
    forbidden(
        f.revoke(&f.bob, by_uuid.clone()).await,
        "may not RevokeMarble on marble type web",
    );
    assert!(matches!(
        crate::marble::revocation::revoke(&f.core, None, by_uuid.clone()).await,
        Err(ApiError::Denied(
            crate::http::error::Denial::Unauthenticated(_)
        ))
    ));
    assert!(matches!(
        f.revoke(
            &f.alice,
            RevokeRequest {
                uuid: Some(uuid::Uuid::new_v4().to_string()),
                serial: None
            }
        )
        .await,
        Err(ApiError::Request(
            crate::http::error::RequestFault::NotFound(_)
        ))
    ));
    assert!(matches!(
        f.revoke(&f.alice, RevokeRequest::default()).await,
        Err(ApiError::Request(
            crate::http::error::RequestFault::BadRequest(_)
        ))
    ));
    let resp = f.revoke(&f.alice, by_uuid.clone()).await.unwrap();
    assert_eq!(resp.marble_type, "web");
    assert!(!resp.already_revoked);
    assert_eq!(resp.serials, vec![serial_of(&leaf), renewed.serial.clone()]);
    assert!(f.revoke(&f.alice, by_uuid).await.unwrap().already_revoked);

    // Neither the current leaf nor the old one renews; the UUID cannot activate again.
    let new_leaf = first_der(&renewed.certificate_chain);
    refused(f.renew(&new_leaf, &key.spki).await, "revoked", "revoked");
    refused(f.renew(&leaf, &key.spki).await, "revoked", "revoked");
    refused(
        f.activate(&marble_key(), "web", &uuid).await,
        "revoked",
        "revoked",
    );
    // Other marbles are unaffected.
    let other_key = marble_key();
    let other = f
        .activate(&other_key, "web", &uuid::Uuid::new_v4().to_string())
        .await
        .unwrap();
    f.renew(&other, &other_key.spki).await.unwrap();

    // The CRL is signed by the mesh CA and lists both serials of the revoked UUID.
    let der = crate::marble::revocation::crl(&f.core).await.unwrap();
    let (_, crl) = x509_parser::parse_x509_crl(&der).unwrap();
    let mesh = f.mesh_ca();
    let (_, mesh) = x509_parser::parse_x509_certificate(&mesh).unwrap();
    crl.verify_signature(mesh.public_key()).unwrap();
    assert!(crl.next_update().unwrap().timestamp() > crl.last_update().timestamp());
    let listed: Vec<String> = crl
        .iter_revoked_certificates()
        .map(|r| hex::encode(r.raw_serial()))
        .collect();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(listed.contains(&serial_of(&leaf)) && listed.contains(&renewed.serial));
    assert!(!listed.contains(&serial_of(&other)));
    // The log has the revocation event.
    let log = f.core.view().log.entries(0);
    let event = &log.last().unwrap().event;
    assert!(
        log.iter().any(|e| e.event["type"] == "revocation"
            && e.event["uuid"] == uuid.as_str()
            && e.event["user"] == "alice"),
        "{event}"
    );
}

/// An etcd writer deletes the stored revocation records (`revoked/<uuid>`,
/// `revoked-serial/<hex>`): the revocations stand, because the transparency log (covered by
/// the rollback evidence) records them. Neither key comes back to life, and the CRL keeps
/// listing every revoked serial.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_deleted_from_the_store_still_refuses_and_stays_in_the_crl() {
    use crate::marble::revocation::{serial_key, uuid_key};
    let f = fixture().await;
    let (key, other_key) = (marble_key(), marble_key());
    let uuid = uuid::Uuid::new_v4();
    let leaf = f.activate(&key, "web", &uuid.to_string()).await.unwrap();
    let other_uuid = uuid::Uuid::new_v4();
    let other = f
        .activate(&other_key, "web", &other_uuid.to_string())
        .await
        .unwrap();
    let by_uuid = RevokeRequest {
        uuid: Some(uuid.to_string()),
        serial: None,
    };
    let by_serial = RevokeRequest {
        uuid: None,
        serial: Some(serial_of(&other)),
    };
    f.revoke(&f.owner, by_uuid.clone()).await.unwrap();
    f.revoke(&f.owner, by_serial.clone()).await.unwrap();
    let store = f.core.view().store.clone().unwrap();
    let records = [uuid_key(&uuid), serial_key(&serial_of(&other))];
    store
        .commit(Txn {
            deletes: records.to_vec(),
            ..Txn::default()
        })
        .await
        .unwrap();
    for k in &records {
        assert!(store.get(k).await.unwrap().is_none(), "{k} was deleted");
    }
    refused(f.renew(&leaf, &key.spki).await, "revoked", "revoked");
    refused(
        f.activate(&marble_key(), "web", &uuid.to_string()).await,
        "revoked",
        "revoked",
    );
    refused(f.renew(&other, &other_key.spki).await, "revoked", "revoked");
    // Revoking again says it already is (and writes nothing new).
    let size = f.core.view().log.head().0;
    assert!(f.revoke(&f.owner, by_uuid).await.unwrap().already_revoked);
    assert!(f.revoke(&f.owner, by_serial).await.unwrap().already_revoked);
    assert_eq!(f.core.view().log.head().0, size);
    let listed = f.crl_serials().await;
    assert!(
        listed.contains(&serial_of(&leaf)) && listed.contains(&serial_of(&other)),
        "{listed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_one_serial_refuses_that_certificate_only_and_owners_may_revoke() {
    let f = fixture().await;
    let key = marble_key();
    let uuid = uuid::Uuid::new_v4().to_string();
    let leaf = f.activate(&key, "other", &uuid).await.unwrap();
    let serial = serial_of(&leaf);
    // alice may revoke only `web`; the owner (UpdateManifest) may revoke anything.
    let req = RevokeRequest {
        uuid: None,
        serial: Some(format!("0x{}", serial.to_uppercase())),
    };
    forbidden(
        f.revoke(&f.alice, req.clone()).await,
        "may not RevokeMarble",
    );
    let resp = f.revoke(&f.owner, req).await.unwrap();
    assert_eq!(resp.serials, vec![serial.clone()]);
    assert_eq!(resp.uuid, uuid);
    refused(f.renew(&leaf, &key.spki).await, "revoked", "revoked");
    // The UUID itself is not revoked: it may activate again and renew the new leaf.
    let key2 = marble_key();
    let leaf2 = f.activate(&key2, "other", &uuid).await.unwrap();
    f.renew(&leaf2, &key2.spki).await.unwrap();
    let listed = f.crl_serials().await;
    assert_eq!(listed, vec![serial]);
    // An unknown serial is a 404.
    assert!(matches!(
        f.revoke(
            &f.owner,
            RevokeRequest {
                uuid: None,
                serial: Some("01".into())
            }
        )
        .await,
        Err(ApiError::Request(
            crate::http::error::RequestFault::NotFound(_)
        ))
    ));
}

/// An activation request for a `web` marble with `nonce` and `evidence`.
fn web_request(
    evidence: quarry_api::evidence::Evidence,
    nonce: [u8; 32],
    dns_names: &[&str],
) -> ActivateRequest {
    ActivateRequest {
        marble_type: "web".into(),
        uuid: uuid::Uuid::new_v4().to_string(),
        evidence,
        dns_names: dns_names.iter().map(|n| n.to_string()).collect(),
        nonce: Some(hex::encode(nonce)),
    }
}

/// Activation refusals in-process, each with its stable code, the compared fields where there
/// are any, and the JSend `fail` body that carries both (issue 17).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activation_refusals_carry_their_code_fields_and_body() {
    let f = fixture().await;
    let key = marble_key();
    let nonce_for = |spki: &[u8]| f.core.issue_nonce(Sha256::digest(spki).into()).unwrap();
    let activate = |req| crate::marble::activation::activate(&f.core, req, &key.cert);
    refused(
        f.activate(&key, "nope", &uuid::Uuid::new_v4().to_string())
            .await,
        "unknown-marble-type",
        "unknown marble type \"nope\"",
    );
    // A DNS name the manifest does not allow.
    let nonce = nonce_for(&key.spki);
    let req = web_request(f.evidence(&key.spki, &nonce), nonce, &["evil.example"]);
    refused(activate(req).await, "dns-name", "Marbles/web/DNSNames");
    // A nonce that was never issued.
    let req = web_request(f.evidence(&key.spki, &[9; 32]), [9; 32], &[]);
    refused(activate(req).await, "nonce", "nonce");
    // Evidence bound to another key.
    let other = marble_key();
    let nonce = nonce_for(&key.spki);
    let req = web_request(f.evidence(&other.spki, &nonce), nonce, &[]);
    refused(activate(req).await, "key-binding", "TLS client key");
    // Claims that do not match the package: every field named, expected and found.
    let wrong = SimProvider::new(
        SimPlatform::load(&f._dir.path().join("sim")).unwrap(),
        SimIdentity {
            unique_id: [7; 32],
            signer_id: [1; 32],
            product_id: 0,
            security_version: 0,
            debug: false,
        },
    )
    .unwrap();
    let nonce = nonce_for(&key.spki);
    let rd = quarry_api::evidence::activation_report_data(&key.spki, Some(&nonce));
    let req = web_request(wrong.evidence(&rd).unwrap(), nonce, &[]);
    let err = activate(req).await.unwrap_err();
    let ApiError::Denied(crate::http::error::Denial::Refused(refusal)) = &err else {
        panic!("expected a refusal, got {err:?}");
    };
    assert_eq!(refusal.code(), "policy-mismatch");
    assert_eq!(
        refusal.fields(),
        [quarry_api::http::FieldMismatch {
            field: "SignerID".into(),
            expected: "00".repeat(32),
            found: "01".repeat(32),
        }]
    );
    assert_eq!(crate::metrics::outcome(Some(&err)), "policy-mismatch");
    let data = err.fail_data();
    assert_eq!(data.code, "policy-mismatch");
    assert_eq!(data.fields, refusal.fields());
    assert_eq!(
        data.summary(),
        format!(
            "refused [policy-mismatch] SignerID: expected {}, found {}",
            "00".repeat(32),
            "01".repeat(32)
        )
    );
    // The HTTP body: 403, JSend fail with the code and fields beside the message.
    let resp = axum::response::IntoResponse::into_response(err);
    assert_eq!(resp.status(), axum::http::StatusCode::FORBIDDEN);
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["status"], "fail");
    assert_eq!(v["data"]["code"], "policy-mismatch");
    assert_eq!(v["data"]["fields"][0]["field"], "SignerID");
    assert_eq!(v["data"]["fields"][0]["found"], "01".repeat(32));
    assert!(v["message"]
        .as_str()
        .unwrap()
        .contains("package any: evidence does not match the package"));
}

/// A malicious marble with a valid mesh certificate gains nothing on the client API: user
/// requests (revocation, update cancel) authenticate the exact certificate of a manifest
/// user, so the marble's leaf is a 401 naming that, never a user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_marble_certificate_is_no_user_on_the_client_api() {
    let f = fixture().await;
    let key = marble_key();
    let uuid = uuid::Uuid::new_v4().to_string();
    let leaf = f.activate(&key, "web", &uuid).await.unwrap();
    let unauthenticated = |r: Result<(), ApiError>, what: &str| match r {
        Err(ApiError::Denied(crate::http::error::Denial::Unauthenticated(m))) => assert!(
            m.contains("belongs to no user of the manifest"),
            "{what}: {m}"
        ),
        other => panic!("{what}: expected 401, got {other:?}"),
    };
    let revoke = f
        .revoke(
            &leaf,
            RevokeRequest {
                uuid: Some(uuid.clone()),
                serial: None,
            },
        )
        .await
        .map(|_| ());
    unauthenticated(revoke, "revoke with the marble's leaf");
    unauthenticated(
        crate::manifest::update::cancel(&f.core, Some(&leaf)).await,
        "update cancel with the marble's leaf",
    );
    // The marble was not revoked by its own request: it still renews.
    f.renew(&leaf, &key.spki)
        .await
        .expect("the marble still renews");
}

/// MaxActivations never goes backwards: an etcd writer who puts an older counter value back
/// (simulated here by writing it through the store) does not grant activations again, since
/// the transparency log, which the rollback evidence covers, counts them too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_activation_counter_grants_no_activation_beyond_max_activations() {
    let f = fixture().await;
    f.activate(&marble_key(), "limited", &uuid::Uuid::new_v4().to_string())
        .await
        .expect("the first activation is within MaxActivations");
    let backend = f.core.backend().unwrap();
    let key = format!("{}limited", crate::state::keys::ACTIVATIONS_PREFIX);
    backend
        .commit(crate::store::Txn::new().put(&key, 0u64.to_be_bytes().to_vec()))
        .await
        .unwrap();
    refused(
        f.activate(&marble_key(), "limited", &uuid::Uuid::new_v4().to_string())
            .await,
        "max-activations",
        "MaxActivations of marble type limited exhausted (1 of 1 used)",
    );
}
