//! The core loop end to end, with the real binaries on loopback: simulated platform,
//! coordinator, manifest over HTTPS, two sidecar-wrapped services of different types,
//! certificates checked with `openssl verify`, rendered env and files, shared and private
//! secrets, restart with state kept, and every refusal of the core-loop issue.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use quarry_attestation::simulated::{SimIdentity, SimPlatform, SimProvider};
use quarry_e2e::{bin, https, jsend, run, tls_config, Coordinator, MarbleKey};
use sha2::{Digest, Sha256};

const LIMIT: Duration = Duration::from_secs(120);

/// A service the sidecar wraps: dumps its env and a file's mode into OUT_DIR/<tag>.*.
fn write_service(dir: &Path, name: &str, tag: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\n# {tag}\nenv > \"$OUT_DIR/{tag}.env\"\necho \"$@\" > \"$OUT_DIR/{tag}.argv\"\nprintf '%s' \"$MARBLE_PREDEFINED_MARBLE_CERTIFICATE_CHAIN\" > \"$OUT_DIR/{tag}.chain\"\nprintf '%s' \"$MARBLE_PREDEFINED_ROOT_CA\" > \"$OUT_DIR/{tag}.root\"\nprintf '%s' \"$MARBLE_PREDEFINED_PRIVATE_KEY\" > \"$OUT_DIR/{tag}.key\"\nexit 0\n"
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn sha256_hex(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

fn quarry(args: &[&str]) -> std::process::Output {
    run(Command::new(bin("quarry")).args(args), LIMIT).unwrap()
}

struct Sidecar<'a> {
    mesh: String,
    platform: &'a Path,
    root: &'a Path,
    out_dir: &'a Path,
}

impl Sidecar<'_> {
    fn run(
        &self,
        marble_type: &str,
        uuid_file: &Path,
        extra: &[&str],
        cmd: &Path,
    ) -> std::process::Output {
        let mut c = Command::new(bin("marble-sidecar"));
        c.arg("run")
            .args(["--coordinator", &self.mesh])
            .args(["--marble-type", marble_type])
            .arg("--uuid-file")
            .arg(uuid_file)
            .args(["--tee", "simulated"])
            .arg("--sim-platform")
            .arg(self.platform)
            .arg("--coordinator-root-ca")
            .arg(self.root)
            .args(extra)
            .arg("--")
            .arg(cmd)
            .arg("from-args")
            .env("OUT_DIR", self.out_dir)
            .env_remove("QUARRY_MARBLE_TYPE")
            .env_remove("EDG_MARBLE_TYPE");
        run(&mut c, LIMIT).unwrap()
    }
}

fn env_of(path: &Path) -> std::collections::BTreeMap<String, String> {
    // Multi-line values (PEM) continue on lines without '='; keep the first line only for
    // simple values and reconstruct PEM values separately where needed.
    let text = std::fs::read_to_string(path).unwrap();
    let mut map = std::collections::BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match line.split_once('=') {
            Some((k, v))
                if !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
            {
                map.insert(k.to_string(), v.to_string());
                current = Some(k.to_string());
            }
            _ => {
                if let Some(k) = &current {
                    let e = map.get_mut(k).unwrap();
                    e.push('\n');
                    e.push_str(line);
                }
            }
        }
    }
    map
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn openssl_verify(root: &Path, chain_pem: &str, dir: &Path) -> bool {
    let blocks = pem::parse_many(chain_pem).unwrap();
    assert_eq!(blocks.len(), 2, "chain = leaf + mesh CA");
    let leaf = dir.join("leaf.pem");
    let mesh = dir.join("mesh.pem");
    std::fs::write(&leaf, pem::encode(&blocks[0])).unwrap();
    std::fs::write(&mesh, pem::encode(&blocks[1])).unwrap();
    let out = run(
        Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(root)
            .arg("-untrusted")
            .arg(&mesh)
            .arg(&leaf),
        LIMIT,
    )
    .unwrap();
    out.status.success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_loop_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let platform = t.join("sim");
    let data = t.join("data");
    let out_dir = t.join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let log = t.join("coordinator.log");

    // Simulated platform through the CLI; a second run refuses to overwrite it.
    let o = quarry(&["sim", "init", platform.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!quarry(&["sim", "init", platform.to_str().unwrap()])
        .status
        .success());

    let alpha = write_service(t, "alpha-svc", "alpha");
    let beta = write_service(t, "beta-svc", "beta");
    let gamma = write_service(t, "gamma-svc", "gamma");
    let alpha_id = sha256_hex(&alpha);
    let beta_id = sha256_hex(&beta);
    let info = quarry(&["package-info", "--sim", alpha.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&info.stdout).contains(&alpha_id));

    let mut coord = Coordinator::start(&data, &platform, &log).unwrap();
    let root_pem_path = t.join("root.pem");
    let o = quarry(&[
        "certificate",
        "root",
        "--coordinator",
        &coord.client.to_string(),
        "--insecure",
        "-o",
        root_pem_path.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let root_pem = std::fs::read_to_string(&root_pem_path).unwrap();
    let client = https(tls_config(&root_pem, None).unwrap()).unwrap();

    // State 2: activation before a manifest exists is refused.
    let sidecar = Sidecar {
        mesh: coord.mesh.to_string(),
        platform: &platform,
        root: &root_pem_path,
        out_dir: &out_dir,
    };
    let o = sidecar.run("alpha", &t.join("a1.uuid"), &[], &alpha);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("no manifest has been set"),
        "{}",
        stderr(&o)
    );

    // Malformed JSON and oversized bodies.
    let (code, body) = jsend(
        client
            .post(format!("{}/api/v2/manifest", coord.client_url()))
            .body("{not json")
            .send()
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["status"], "fail");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("line 1 column 2"),
        "{body}"
    );
    assert_eq!(body["data"]["code"], "bad-request", "{body}");
    // A manifest that breaks a rule: the body names the JSON pointer as a field of its own.
    let broken = serde_json::json!({
        "Packages": {"p": {"TEE": "simulated", "SignerID": "00".repeat(32)}},
        "Marbles": {"a": {"Package": "missing"}}
    });
    let (code, body) = jsend(
        client
            .post(format!("{}/api/v2/manifest", coord.client_url()))
            .json(&serde_json::json!({"manifest": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, broken.to_string())}))
            .send()
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["data"]["code"], "invalid-manifest", "{body}");
    assert_eq!(body["data"]["pointer"], "/Marbles/a/Package", "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("invalid manifest: "),
        "{body}"
    );
    let big = vec![b'a'; quarry_api::http::MAX_BODY_BYTES + 1];
    let resp = client
        .post(format!("{}/api/v2/manifest", coord.client_url()))
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 413);

    let out_file = out_dir.join("alpha-file.txt");
    let manifest = serde_json::json!({
        "Packages": {
            "alpha": {"TEE": "simulated", "UniqueID": alpha_id},
            "beta": {"TEE": "simulated", "UniqueID": beta_id},
            "gamma": {"TEE": "simulated", "SignerID": "00".repeat(32), "ProductID": 7, "SecurityVersion": 2}
        },
        "Marbles": {
            "alpha": {
                "Package": "alpha",
                "Parameters": {
                    "Files": {
                        out_file.to_str().unwrap(): "cert={{ pem .Secrets.shared_cert.Cert }}",
                    },
                    "Env": {
                        "SHARED": "{{ hex .Secrets.shared_key }}",
                        "PRIVATE": "{{ hex .Secrets.private_key }}",
                        "PLAIN": "hello"
                    },
                    "Argv": ["alpha-svc", "from-manifest"]
                }
            },
            "beta": {
                "Package": "beta",
                "MaxActivations": 1,
                "Parameters": {"Env": {
                    "SHARED": "{{ hex .Secrets.shared_key }}",
                    "PRIVATE": "{{ hex .Secrets.private_key }}"
                }}
            },
            "gamma": {"Package": "gamma"}
        },
        "Secrets": {
            "shared_key": {"Type": "symmetric-key", "Size": 256, "Shared": true},
            "private_key": {"Type": "symmetric-key", "Size": 256},
            "shared_cert": {"Type": "cert-ecdsa", "Size": 256, "Shared": true}
        }
    });
    let manifest_path = t.join("manifest.json");
    std::fs::write(
        &manifest_path,
        serde_json::to_vec_pretty(&manifest).unwrap(),
    )
    .unwrap();
    let o = quarry(&[
        "manifest",
        "set",
        manifest_path.to_str().unwrap(),
        "--coordinator",
        &coord.client.to_string(),
        "--root-ca",
        root_pem_path.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Posting again is refused (state 3).
    let o = quarry(&[
        "manifest",
        "set",
        manifest_path.to_str().unwrap(),
        "--coordinator",
        &coord.client.to_string(),
        "--root-ca",
        root_pem_path.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("already set"), "{}", stderr(&o));
    let (code, body) = jsend(
        client
            .get(format!("{}/api/v2/manifest", coord.client_url()))
            .send()
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(code, 200);
    assert_eq!(
        body["data"]["manifestFingerprint"],
        sha256_hex(&manifest_path),
        "fingerprint is SHA-256 of the exact bytes"
    );

    // Two services of different types.
    let o = sidecar.run("alpha", &t.join("a1.uuid"), &[], &alpha);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = sidecar.run("beta", &t.join("b1.uuid"), &[], &beta);
    assert!(o.status.success(), "{}", stderr(&o));
    let a = env_of(&out_dir.join("alpha.env"));
    let b = env_of(&out_dir.join("beta.env"));
    assert_eq!(a["SHARED"].len(), 64);
    assert_eq!(
        a["SHARED"], b["SHARED"],
        "shared secret equal across marbles"
    );
    assert_ne!(a["PRIVATE"], b["PRIVATE"], "private secrets differ");
    assert_eq!(a["PLAIN"], "hello");
    // Argv from the manifest replaces the command line (argv[0] included).
    assert_eq!(
        std::fs::read_to_string(out_dir.join("alpha.argv"))
            .unwrap()
            .trim(),
        "from-manifest"
    );
    assert_eq!(
        std::fs::read_to_string(out_dir.join("beta.argv"))
            .unwrap()
            .trim(),
        "from-args"
    );
    // Rendered file, mode 0600.
    let text = std::fs::read_to_string(&out_file).unwrap();
    assert!(
        text.starts_with("cert=-----BEGIN CERTIFICATE-----"),
        "{text}"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&out_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Certificates chain to the root, for openssl too.
    let read = |name: &str| std::fs::read_to_string(out_dir.join(name)).unwrap();
    assert_eq!(read("alpha.root").trim(), root_pem.trim());
    assert!(openssl_verify(&root_pem_path, &read("alpha.chain"), t));
    assert!(openssl_verify(&root_pem_path, &read("beta.chain"), t));
    assert!(read("alpha.key").contains("BEGIN PRIVATE KEY"));
    let alpha_chain = read("alpha.chain");
    let shared_cert_pem = text.trim_start_matches("cert=");
    let shared_cert_path = t.join("shared-cert.pem");
    std::fs::write(&shared_cert_path, shared_cert_pem).unwrap();

    // Refusals, each with the coordinator's reason printed by the sidecar.
    let o = sidecar.run("nosuchtype", &t.join("x.uuid"), &[], &alpha);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("unknown marble type"), "{}", stderr(&o));

    let o = sidecar.run("alpha", &t.join("x.uuid"), &[], &beta);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("UniqueID") && e.contains(&alpha_id) && e.contains(&beta_id),
        "{e}"
    );

    let o = sidecar.run("alpha", &t.join("x.uuid"), &["--sim-debug"], &alpha);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("refused [policy-mismatch] Debug: expected false, found true"),
        "{}",
        stderr(&o)
    );

    let o = sidecar.run(
        "gamma",
        &t.join("g.uuid"),
        &["--sim-product-id", "7", "--sim-svn", "1"],
        &gamma,
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("refused [policy-mismatch] SecurityVersion: expected >= 2, found 1"),
        "{}",
        stderr(&o)
    );
    let o = sidecar.run(
        "gamma",
        &t.join("g.uuid"),
        &["--sim-product-id", "8", "--sim-svn", "2"],
        &gamma,
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("refused [policy-mismatch] ProductID: expected 7, found 8"),
        "{}",
        stderr(&o)
    );
    let o = sidecar.run(
        "gamma",
        &t.join("g.uuid"),
        &["--sim-product-id", "7", "--sim-svn", "3"],
        &gamma,
    );
    assert!(o.status.success(), "{}", stderr(&o));

    let other_platform = t.join("other-sim");
    SimPlatform::create(&other_platform).unwrap();
    let o = Sidecar {
        platform: &other_platform,
        mesh: sidecar.mesh.clone(),
        ..sidecar
    }
    .run("alpha", &t.join("x.uuid"), &[], &alpha);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("untrusted platform"), "{}", stderr(&o));

    // The sidecar refuses a coordinator it cannot authenticate.
    let o = Sidecar {
        root: &shared_cert_path,
        mesh: sidecar.mesh.clone(),
        ..sidecar
    }
    .run("alpha", &t.join("x.uuid"), &[], &alpha);
    assert!(
        !o.status.success(),
        "sidecar accepted a coordinator outside the pinned root: {}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("certificate"), "{}", stderr(&o));

    // Replay: evidence binding key A presented on a connection with key B.
    replay_is_refused(&coord, &root_pem, &platform, &alpha).await;

    // MaxActivations.
    let o = sidecar.run("beta", &t.join("b2.uuid"), &[], &beta);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("MaxActivations"), "{}", stderr(&o));

    // Restart keeps root CA, shared secrets, activation counts; private secrets are stable.
    coord.stop();
    let coord = Coordinator::start(&data, &platform, &log).unwrap();
    let sidecar = Sidecar {
        mesh: coord.mesh.to_string(),
        ..sidecar
    };
    let o = quarry(&[
        "status",
        "--coordinator",
        &coord.client.to_string(),
        "--root-ca",
        root_pem_path.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains('3'));
    std::fs::remove_file(out_dir.join("alpha.env")).unwrap();
    let o = sidecar.run("alpha", &t.join("a1.uuid"), &[], &alpha);
    assert!(o.status.success(), "{}", stderr(&o));
    let a2 = env_of(&out_dir.join("alpha.env"));
    assert_eq!(a2["SHARED"], a["SHARED"]);
    assert_eq!(
        a2["PRIVATE"], a["PRIVATE"],
        "same UUID → same private key after restart"
    );
    let chain2 = std::fs::read_to_string(out_dir.join("alpha.chain")).unwrap();
    assert!(openssl_verify(&root_pem_path, &chain2, t));
    assert_ne!(chain2, alpha_chain, "a new activation gets a new leaf");
    let o = sidecar.run("beta", &t.join("b3.uuid"), &[], &beta);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("MaxActivations"),
        "budget survives restarts: {}",
        stderr(&o)
    );

    // Secrets never appear in the coordinator's log.
    let logtext = std::fs::read_to_string(&log).unwrap();
    for v in [&a["SHARED"], &a["PRIVATE"], &b["PRIVATE"]] {
        assert!(
            !logtext.contains(v.as_str()),
            "a secret value is in the log"
        );
    }
    drop(coord);

    // Tampered state → Recovery, never a silent fresh start.
    let state = data.join("state.log");
    let mut bytes = std::fs::read(&state).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x01;
    std::fs::write(&state, &bytes).unwrap();
    let coord = Coordinator::start(&data, &platform, &log).unwrap();
    let (code, body) = jsend(
        reqwest::Client::builder()
            .tls_backend_preconfigured(insecure_config())
            .build()
            .unwrap()
            .get(format!("{}/api/v2/status", coord.client_url()))
            .send()
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(code, 200);
    assert_eq!(body["data"]["code"], 1, "{body}");
    assert!(std::fs::read_to_string(&log).unwrap().contains("RECOVERY"));
    assert_eq!(
        std::fs::read(&state).unwrap(),
        bytes,
        "recovery leaves the state untouched"
    );
}

async fn replay_is_refused(coord: &Coordinator, root_pem: &str, platform: &Path, alpha: &Path) {
    let provider = SimProvider::new(
        SimPlatform::load(platform).unwrap(),
        SimIdentity {
            unique_id: Sha256::digest(std::fs::read(alpha).unwrap()).into(),
            signer_id: [0; 32],
            product_id: 0,
            security_version: 0,
            debug: false,
        },
    )
    .unwrap();
    let key_a = MarbleKey::generate().unwrap();
    let key_b = MarbleKey::generate().unwrap();
    let client_b =
        https(tls_config(root_pem, Some((key_b.cert.clone(), key_b.key.clone()))).unwrap())
            .unwrap();
    use quarry_attestation::EvidenceProvider;
    // Evidence for key A, no nonce, sent over B's connection.
    let rd = quarry_api::evidence::activation_report_data(&key_a.spki, None);
    let body = serde_json::json!({
        "marbleType": "alpha",
        "uuid": uuid::Uuid::new_v4().to_string(),
        "evidence": provider.evidence(&rd).unwrap(),
    });
    let (code, v) = jsend(
        client_b
            .post(format!("{}/api/v2/activate", coord.mesh_url()))
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(code, 403, "{v}");
    assert!(v["message"].as_str().unwrap().contains("binding"), "{v}");
    // The same evidence for B's own key (no nonce) is accepted: the refusal above was the binding.
    let rd = quarry_api::evidence::activation_report_data(&key_b.spki, None);
    let body = serde_json::json!({
        "marbleType": "alpha",
        "uuid": uuid::Uuid::new_v4().to_string(),
        "evidence": provider.evidence(&rd).unwrap(),
    });
    let (code, v) = jsend(
        client_b
            .post(format!("{}/api/v2/activate", coord.mesh_url()))
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(code, 200, "{v}");
    // A nonce issued to B cannot be used by A, and is single use.
    let (_, n) = jsend(
        client_b
            .get(format!("{}/api/v2/activate/nonce", coord.mesh_url()))
            .send()
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    let nonce_hex = n["data"]["nonce"].as_str().unwrap().to_string();
    let nonce: [u8; 32] = hex::decode(&nonce_hex).unwrap().try_into().unwrap();
    let client_a =
        https(tls_config(root_pem, Some((key_a.cert.clone(), key_a.key.clone()))).unwrap())
            .unwrap();
    let rd = quarry_api::evidence::activation_report_data(&key_a.spki, Some(&nonce));
    let body = serde_json::json!({
        "marbleType": "alpha",
        "uuid": uuid::Uuid::new_v4().to_string(),
        "evidence": provider.evidence(&rd).unwrap(),
        "nonce": nonce_hex,
    });
    let (code, v) = jsend(
        client_a
            .post(format!("{}/api/v2/activate", coord.mesh_url()))
            .json(&body)
            .send()
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(code, 403, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("another TLS key"),
        "{v}"
    );
}

fn insecure_config() -> rustls::ClientConfig {
    #[derive(Debug)]
    struct AcceptAny;
    impl rustls::client::danger::ServerCertVerifier for AcceptAny {
        fn verify_server_cert(
            &self,
            _: &rustls_pki_types::CertificateDer<'_>,
            _: &[rustls_pki_types::CertificateDer<'_>],
            _: &rustls_pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls_pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &rustls_pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Err(rustls::Error::General("TLS 1.2 not used".into()))
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &rustls_pki_types::CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                m,
                c,
                d,
                &rustls::crypto::ring::default_provider().signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(std::sync::Arc::new(AcceptAny))
    .with_no_client_auth()
}
