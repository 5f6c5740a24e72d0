//! A stateful property test of the coordinator core (issue 20 item 3): a seeded random walk
//! of manifest updates, activations (with and without an activation budget), renewals,
//! revocations, secret writes, restarts and byte flips in the data directory, against a real
//! `Core` on real files and a simulated TEE. After every step the invariants are checked:
//!
//! * the transparency log never shrinks and every new head is consistent with the previous
//!   one (RFC 9162 consistency proof from the coordinator, verified with quarry-api's code);
//! * `MaxActivations` is never exceeded, and is not reset by updates or restarts;
//! * a revoked UUID never activates or renews again;
//! * a damaged data directory opens as Recovery or as exactly the newest state (same note,
//!   same log head), never as older or fresh state; the honest directory always reopens
//!   with the newest state.
//!
//! CI runs a short walk. Longer walks: `QUARRY_WALK_SECS=600` (runs until then),
//! `QUARRY_WALK_STEPS=N`, `QUARRY_WALK_SEED=N`; the seed and the step count are printed, so
//! a failure reproduces.
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use quarry_api::http::{ActivateRequest, RenewRequest, RevokeRequest};
use quarry_attestation::simulated::{SimIdentity, SimPlatform, SimProvider};
use quarry_attestation::EvidenceProvider as _;
use quarry_coordinator::http::error::{ApiError, Denial};
use quarry_coordinator::manifest::{set as manifest_ops, update};
use quarry_coordinator::marble::{activation, renewal, revocation};
use quarry_coordinator::state::{Core, Phase};
use quarry_coordinator::tee::Tee;
use quarry_coordinator::users::secrets::{self as secrets_api, SetSecretsRequest};
use sha2::{Digest, Sha256};

/// Activation budget of the `limited` marble type.
const BUDGET: u64 = 3;
const FILES: [&str; 3] = ["state.log", "state.head", "sealed-key.json"];

/// A small xorshift generator: deterministic for a seed, no dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }
}

fn user_cert(name: &str) -> (String, Vec<u8>) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, name.to_string());
    let cert = p.self_signed(&key).unwrap();
    (cert.pem(), cert.der().to_vec())
}

/// One marble instance as the walk knows it.
#[derive(Clone)]
struct Instance {
    marble_type: &'static str,
    uuid: String,
    cert: Vec<u8>,
    spki: Vec<u8>,
    /// The leaf from the last activation or renewal.
    leaf: Vec<u8>,
    /// Issued under the current manifest (an update rotates the mesh CA).
    current: bool,
}

/// What the coordinator must serve, according to the walk.
struct Model {
    note: Vec<u8>,
    version: u32,
    limited_activations: u64,
    active: Vec<Instance>,
    revoked: Vec<Instance>,
    /// The last log head seen: (size, root).
    head: (u64, [u8; 32]),
}

struct Walk {
    dir: tempfile::TempDir,
    provider: SimProvider,
    alice: (String, Vec<u8>),
    core: Option<Core>,
    model: Model,
}

fn data(dir: &Path) -> PathBuf {
    dir.join("data")
}

fn manifest(alice_pem: &str, version: u32) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "Packages": {"any": {"TEE": "simulated", "SignerID": "00".repeat(32), "ProductID": 0, "SecurityVersion": 0}},
        "Marbles": {
            "web": {"Package": "any", "Parameters": {"Env": {"VERSION": version.to_string()}}},
            "limited": {"Package": "any", "MaxActivations": BUDGET}
        },
        "Secrets": {"note": {"Type": "plain", "UserDefined": true}},
        "Users": {"alice": {"Certificate": alice_pem, "Roles": ["notes", "revoke", "owner"]}},
        "Roles": {
            "notes": {"ResourceType": "Secrets", "ResourceNames": ["note"], "Actions": ["ReadSecret", "WriteSecret"]},
            "revoke": {"ResourceType": "Marbles", "ResourceNames": ["web", "limited"], "Actions": ["RevokeMarble"]},
            "owner": {"ResourceType": "Manifest", "Actions": ["UpdateManifest"]}
        }
    }))
    .unwrap()
}

/// The refusal code of a marble refusal, or a description of what came instead.
fn refusal_code<T: std::fmt::Debug>(r: &Result<T, ApiError>) -> String {
    match r {
        Err(ApiError::Denied(Denial::Refused(refusal))) => refusal.code().to_string(),
        other => format!("not a refusal: {other:?}"),
    }
}

fn first_der(pem_text: &str) -> Vec<u8> {
    pem::parse_many(pem_text).unwrap()[0].contents().to_vec()
}

impl Walk {
    async fn new() -> Walk {
        let dir = tempfile::tempdir().unwrap();
        let sim = dir.path().join("sim");
        SimPlatform::create(&sim).unwrap();
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
        let alice = user_cert("alice");
        let core = Core::open(&data(dir.path()), Walk::tee(dir.path()))
            .await
            .unwrap();
        manifest_ops::set_manifest(&core, manifest(&alice.0, 0))
            .await
            .expect("the manifest is accepted");
        let head = core.view().log.head();
        let mut walk = Walk {
            dir,
            provider,
            alice,
            core: Some(core),
            model: Model {
                note: Vec::new(),
                version: 0,
                limited_activations: 0,
                active: Vec::new(),
                revoked: Vec::new(),
                head,
            },
        };
        walk.write_note(b"first").await;
        walk
    }

    fn tee(dir: &Path) -> Tee {
        Tee::simulated(&dir.join("sim"), None).unwrap()
    }

    fn core(&self) -> &Core {
        self.core.as_ref().expect("the coordinator runs")
    }

    async fn write_note(&mut self, value: &[u8]) {
        let req: SetSecretsRequest = serde_json::from_value(serde_json::json!({
            "secrets": {"note": {"Key": quarry_api::bytes::b64(value)}}
        }))
        .unwrap();
        secrets_api::write(self.core(), Some(&self.alice.1), req)
            .await
            .expect("alice writes the note");
        self.model.note = value.to_vec();
    }

    fn evidence(&self, spki: &[u8], nonce: &[u8; 32]) -> quarry_api::Evidence {
        let rd = quarry_api::evidence::activation_report_data(spki, Some(nonce));
        self.provider.evidence(&rd).unwrap()
    }

    async fn activate(&self, i: &Instance) -> Result<Vec<u8>, ApiError> {
        let nonce = self.core().issue_nonce(Sha256::digest(&i.spki).into())?;
        let req = ActivateRequest {
            marble_type: i.marble_type.into(),
            uuid: i.uuid.clone(),
            evidence: self.evidence(&i.spki, &nonce),
            dns_names: vec![],
            nonce: Some(hex::encode(nonce)),
        };
        let resp = activation::activate(self.core(), req, &i.cert).await?;
        Ok(first_der(&resp.certificate_chain))
    }

    async fn renew(&self, i: &Instance) -> Result<Vec<u8>, ApiError> {
        let nonce = self.core().issue_nonce(Sha256::digest(&i.spki).into())?;
        let req = RenewRequest {
            evidence: self.evidence(&i.spki, &nonce),
            nonce: hex::encode(nonce),
        };
        let resp = renewal::renew(self.core(), req, &i.leaf).await?;
        Ok(first_der(&resp.certificate_chain))
    }

    fn new_instance(marble_type: &'static str) -> Instance {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::default()
            .self_signed(&key)
            .unwrap()
            .der()
            .to_vec();
        Instance {
            marble_type,
            uuid: uuid::Uuid::new_v4().to_string(),
            cert,
            spki: rcgen::PublicKeyData::subject_public_key_info(&key),
            leaf: Vec::new(),
            current: true,
        }
    }

    fn snapshot(&self) -> Vec<(&'static str, Vec<u8>)> {
        FILES
            .into_iter()
            .map(|f| (f, std::fs::read(data(self.dir.path()).join(f)).unwrap()))
            .collect()
    }

    fn put_back(&self, files: &[(&'static str, Vec<u8>)]) {
        for (name, bytes) in files {
            std::fs::write(data(self.dir.path()).join(name), bytes).unwrap();
        }
        for f in std::fs::read_dir(data(self.dir.path())).unwrap() {
            let p = f.unwrap().path();
            if p.to_string_lossy().contains(".torn-") {
                std::fs::remove_file(p).unwrap();
            }
        }
    }

    /// Stops the coordinator and starts it again on the same directory.
    async fn restart(&mut self) {
        drop(self.core.take());
        self.core = Some(
            Core::open(&data(self.dir.path()), Walk::tee(self.dir.path()))
                .await
                .expect("an honest data directory opens"),
        );
    }

    /// The note a core serves, or the phase it is in instead.
    fn served(core: &Core, alice: &[u8]) -> Result<Vec<u8>, String> {
        match core.view().phase.as_ref() {
            Phase::Running(_) => {
                let mut out = secrets_api::read(core, Some(alice), &["note".into()])
                    .map_err(|e| format!("note unreadable: {e:?}"))?;
                let note = out.remove("note").ok_or("no note")?;
                Ok(quarry_api::bytes::unb64(&note.private).unwrap())
            }
            Phase::Recovery { reason } => Err(format!("recovery:{}", reason.code())),
            Phase::AcceptingManifest => Err("fresh".into()),
        }
    }

    /// The invariants that hold after every step.
    fn check(&mut self, step: usize, what: &str) {
        let core = self.core();
        let served = Walk::served(core, &self.alice.1);
        assert_eq!(
            served.as_deref(),
            Ok(self.model.note.as_slice()),
            "step {step} ({what}): the newest note"
        );
        let log = &core.view().log;
        let (size, root) = log.head();
        let (old_size, old_root) = self.model.head;
        assert!(
            size >= old_size,
            "step {step} ({what}): log shrank {old_size} -> {size}"
        );
        if size > old_size && old_size > 0 {
            let proof = log
                .consistency(old_size, size)
                .expect("a consistency proof between two sizes of the log");
            assert!(
                quarry_api::merkle::verify_consistency(old_size, size, &old_root, &root, &proof),
                "step {step} ({what}): head {size} is not an extension of {old_size}"
            );
        } else if size == old_size {
            assert_eq!(
                root, old_root,
                "step {step} ({what}): same size, other root"
            );
        }
        self.model.head = (size, root);
        let logged = log.activations("limited");
        assert!(
            logged <= BUDGET && logged == self.model.limited_activations,
            "step {step} ({what}): {logged} logged activations of limited, model {}",
            self.model.limited_activations
        );
    }

    async fn step(&mut self, step: usize, rng: &mut Rng) -> &'static str {
        match rng.below(10) {
            0 => {
                self.write_note(format!("note {step}").as_bytes()).await;
                "note"
            }
            1 | 2 => {
                let mut i = Walk::new_instance("web");
                i.leaf = self.activate(&i).await.expect("web activates");
                self.model.active.push(i);
                "activate web"
            }
            3 => {
                let mut i = Walk::new_instance("limited");
                let r = self.activate(&i).await;
                if self.model.limited_activations < BUDGET {
                    i.leaf = r.expect("within the budget");
                    self.model.limited_activations += 1;
                    self.model.active.push(i);
                } else {
                    assert_eq!(refusal_code(&r), "max-activations", "step {step}");
                }
                "activate limited"
            }
            4 if !self.model.active.is_empty() => {
                let at = rng.below(self.model.active.len());
                let i = self.model.active[at].clone();
                let r = self.renew(&i).await;
                if i.current {
                    self.model.active[at].leaf = r.expect("a current marble renews");
                } else {
                    assert!(r.is_err(), "step {step}: a leaf of the old mesh CA renewed");
                    // It activates again under the new manifest (budget permitting).
                    let again = self.activate(&i).await;
                    if i.marble_type == "limited" && self.model.limited_activations >= BUDGET {
                        assert_eq!(refusal_code(&again), "max-activations", "step {step}");
                        self.model.active.remove(at);
                    } else {
                        let m = &mut self.model.active[at];
                        m.leaf = again.expect("re-activation after an update");
                        m.current = true;
                        if i.marble_type == "limited" {
                            self.model.limited_activations += 1;
                        }
                    }
                }
                "renew"
            }
            5 if !self.model.active.is_empty() => {
                let at = rng.below(self.model.active.len());
                let i = self.model.active.remove(at);
                revocation::revoke(
                    self.core(),
                    Some(&self.alice.1),
                    RevokeRequest {
                        uuid: Some(i.uuid.clone()),
                        serial: None,
                    },
                )
                .await
                .expect("alice revokes");
                self.model.revoked.push(i);
                "revoke"
            }
            6 if !self.model.revoked.is_empty() => {
                let i = self.model.revoked[rng.below(self.model.revoked.len())].clone();
                let renewed = self.renew(&i).await;
                assert!(renewed.is_err(), "step {step}: a revoked marble renewed");
                let again = self.activate(&i).await;
                assert_eq!(refusal_code(&again), "revoked", "step {step}");
                "revoked stays revoked"
            }
            7 => {
                self.model.version += 1;
                let raw = manifest(&self.alice.0, self.model.version);
                update::propose(self.core(), Some(&self.alice.1), raw)
                    .await
                    .expect("alice updates the manifest");
                for i in &mut self.model.active {
                    i.current = false;
                }
                "update"
            }
            8 => {
                self.restart().await;
                "restart"
            }
            _ => {
                // Damage one byte of one file with the coordinator stopped, reopen, undo.
                drop(self.core.take());
                let honest = self.snapshot();
                let (name, bytes) = &honest[rng.below(honest.len())];
                let mut flipped = bytes.clone();
                let at = rng.below(flipped.len());
                flipped[at] ^= 1 << rng.below(8);
                std::fs::write(data(self.dir.path()).join(name), &flipped).unwrap();
                let attacked = Core::open(&data(self.dir.path()), Walk::tee(self.dir.path()))
                    .await
                    .expect("a damaged directory is Recovery, never a start-up error");
                match Walk::served(&attacked, &self.alice.1) {
                    Ok(note) => {
                        assert_eq!(note, self.model.note, "step {step}: {name}@{at}");
                        assert_eq!(
                            attacked.view().log.head(),
                            self.model.head,
                            "step {step}: {name}@{at} opened another log"
                        );
                    }
                    Err(e) => assert!(
                        e.starts_with("recovery:"),
                        "step {step}: {name}@{at} opened {e}"
                    ),
                }
                drop(attacked);
                self.put_back(&honest);
                self.restart().await;
                "byte flip"
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_random_walk_of_operations_restarts_and_damage_keeps_every_invariant() {
    let env = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    let seed = env("QUARRY_WALK_SEED").unwrap_or(0x5eed_2026_1203);
    let steps = env("QUARRY_WALK_STEPS").unwrap_or(60) as usize;
    let until = env("QUARRY_WALK_SECS").map(|s| Instant::now() + Duration::from_secs(s));
    let mut rng = Rng(seed | 1);
    let mut walk = Walk::new().await;
    walk.check(0, "start");
    let mut counts = std::collections::BTreeMap::<&str, u64>::new();
    let mut step = 1;
    while match until {
        Some(t) => Instant::now() < t,
        None => step <= steps,
    } {
        let what = walk.step(step, &mut rng).await;
        *counts.entry(what).or_default() += 1;
        walk.check(step, what);
        step += 1;
    }
    println!(
        "walk seed {seed:#x}: {} steps, log size {}, {counts:?}",
        step - 1,
        walk.model.head.0
    );
    assert!(
        counts.len() >= 8,
        "the walk exercised too few operations: {counts:?}"
    );
}
