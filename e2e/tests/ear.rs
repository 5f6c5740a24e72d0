//! EAR attestation results end to end: `quarry verify --format ear` against a real simulated
//! coordinator prints its EAR, which Veraison's `ear` crate verifies with the key the quote
//! binds; the same from an offline bundle with the coordinator gone; every tampered or
//! re-signed EAR in a bundle is refused; `GET /api/v2/attestation` keeps answering version 1
//! unless `format=ear` is asked for.
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ::ear::{Algorithm, Ear, TrustTier};
use quarry_e2e::{bin, run, Coordinator};
use sha2::{Digest, Sha256};

const LIMIT: Duration = Duration::from_secs(120);

fn quarry(args: &[&str]) -> std::process::Output {
    run(Command::new(bin("quarry")).args(args), LIMIT).unwrap()
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn sha256_file(p: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(p).unwrap()))
}

/// The JWK of a PEM P-256 `PUBLIC KEY` (its last 65 bytes are the uncompressed point).
fn jwk(pem_text: &str) -> Vec<u8> {
    let der = pem::parse(pem_text).unwrap().into_contents();
    assert_eq!(der.len(), 91, "a P-256 SubjectPublicKeyInfo");
    let point = &der[26..];
    serde_json::to_vec(&serde_json::json!({
        "kty": "EC", "crv": "P-256", "x": b64url(&point[1..33]), "y": b64url(&point[33..]),
    }))
    .unwrap()
}

/// `token` with one character of segment `segment` changed (still base64url).
fn flip(token: &str, segment: usize, index: usize) -> String {
    let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
    let mut b = parts[segment].clone().into_bytes();
    b[index] = if b[index] == b'A' { b'B' } else { b'A' };
    parts[segment] = String::from_utf8(b).unwrap();
    parts.join(".")
}

/// The token's claims re-signed by a new key: (token, PEM of that key).
fn resign_with_new_key(token: &str) -> (String, String) {
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let input = token.rsplit_once('.').unwrap().0;
    let sig = pair.sign(&rng, input.as_bytes()).unwrap();
    let spki = [
        &quarry_api::ear::P256_SPKI_PREFIX[..],
        pair.public_key().as_ref(),
    ]
    .concat();
    (
        format!("{input}.{}", b64url(sig.as_ref())),
        quarry_api::bytes::encode_pem("PUBLIC KEY", &spki),
    )
}

#[test]
fn verify_format_ear_online_and_from_a_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let platform = t.join("sim");
    assert!(quarry(&["sim", "init", platform.to_str().unwrap()])
        .status
        .success());
    let coord = Coordinator::start(&t.join("data"), &platform, &t.join("c.log")).unwrap();
    let addr = coord.client.to_string();

    // One simulated package and one SGX package: the EAR names both policies.
    let manifest = serde_json::json!({
        "Packages": {
            "web": {"TEE": "simulated", "UniqueID": "ab".repeat(32)},
            "hw": {"TEE": "sgx", "SignerID": "cd".repeat(32), "ProductID": 7, "SecurityVersion": 3}
        },
        "Marbles": {"web": {"Package": "web"}, "backend": {"Package": "hw"}}
    });
    let manifest_path = t.join("manifest.json");
    std::fs::write(&manifest_path, serde_json::to_vec(&manifest).unwrap()).unwrap();
    let root = t.join("root-tofu.pem");
    assert!(quarry(&[
        "certificate",
        "root",
        "--coordinator",
        &addr,
        "--insecure",
        "-o",
        root.to_str().unwrap()
    ])
    .status
    .success());
    let o = quarry(&[
        "manifest",
        "set",
        manifest_path.to_str().unwrap(),
        "--coordinator",
        &addr,
        "--root-ca",
        root.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let policy = serde_json::json!({
        "TEE": "simulated",
        "UniqueID": sha256_file(&bin("quarry-coordinator")),
        "SimulationPlatformCA": std::fs::read_to_string(platform.join("platform-ca.pem")).unwrap(),
    });
    let policy_path = t.join("policy.json");
    std::fs::write(&policy_path, serde_json::to_vec(&policy).unwrap()).unwrap();
    let p = policy_path.to_str().unwrap();
    let m = manifest_path.to_str().unwrap();

    // Online: the EAR on stdout, the simulation warning on stderr.
    let bundle = t.join("bundle.json");
    let o = quarry(&[
        "verify",
        "--coordinator",
        &addr,
        "--policy",
        p,
        "--manifest",
        m,
        "--allow-simulation",
        "--format",
        "ear",
        "--save-bundle",
        bundle.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("SIMULATION"),
        "{}",
        text(&o)
    );
    let online_token = String::from_utf8(o.stdout.clone())
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(online_token.split('.').count(), 3, "{online_token}");

    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&bundle).unwrap()).unwrap();
    let att = &saved["attestation"];
    assert_eq!(att["ear"], online_token.as_str());
    let key_pem = att["earKey"].as_str().unwrap().to_string();
    let st = &att["statement"];
    assert_eq!(st["version"], 2);
    let spki = pem::parse(&key_pem).unwrap().into_contents();
    assert_eq!(st["ear_key_sha256"], hex::encode(Sha256::digest(&spki)));

    // Veraison's reader, with the key the quote binds.
    let ear = Ear::from_jwt_jwk(&online_token, Algorithm::ES256, &jwk(&key_pem)).unwrap();
    assert_eq!(ear.profile, ::ear::EAR_PROFILE);
    assert_eq!(ear.vid.developer, "Quarry");
    assert!(
        ear.vid.build.starts_with("quarry-coordinator "),
        "{}",
        ear.vid.build
    );
    let names: Vec<&str> = ear.submods.keys().map(String::as_str).collect();
    assert_eq!(names, ["coordinator", "marble/backend", "marble/web"]);
    let c = &ear.submods["coordinator"];
    assert_eq!(
        c.status,
        TrustTier::Contraindicated,
        "simulation is never affirming"
    );
    assert_eq!(c.trust_vector.hardware.get(), 97);
    assert_eq!(c.trust_vector.runtime_opaque.get(), 96);
    assert!(!c.trust_vector.executables.is_set());
    assert!(c.verifier_claims.contains_key("quarry_simulation"));
    assert_eq!(ear.submods["marble/web"].status, TrustTier::Contraindicated);
    assert_eq!(ear.submods["marble/backend"].status, TrustTier::None);
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            online_token.split('.').nth(1).unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    let backend = &claims["submods"]["marble/backend"]["ear_verifier_claims"];
    assert_eq!(backend["quarry_package"], "hw");
    assert_eq!(
        backend["quarry_reference_values"]["SignerID"],
        "cd".repeat(32)
    );
    assert_eq!(backend["quarry_reference_values"]["SecurityVersion"], 3);
    assert_eq!(
        claims["eat_nonce"],
        b64url(&hex::decode(st["nonce"].as_str().unwrap()).unwrap())
    );

    // The API: version 1 unless format=ear; the EAR key is the same for every request.
    let root_pem = std::fs::read_to_string(&root).unwrap();
    let answers = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let client = quarry_e2e::https(quarry_e2e::tls_config(&root_pem, None).unwrap()).unwrap();
        let mut out = Vec::new();
        for query in [
            "",
            "?format=ear",
            "?format=ear&nonce=0102030405060708",
            "?format=cbor",
        ] {
            out.push(
                quarry_e2e::jsend(
                    client
                        .get(format!("{}/api/v2/attestation{query}", coord.client_url()))
                        .send()
                        .await
                        .unwrap(),
                )
                .await
                .unwrap(),
            );
        }
        out
    });
    let plain = &answers[0].1["data"];
    assert_eq!(plain["statement"]["version"], 1, "{plain}");
    assert!(plain["statement"].get("ear_key_sha256").is_none());
    assert!(plain.get("ear").is_none() && plain.get("earKey").is_none());
    for (code, v) in &answers[1..3] {
        assert_eq!(*code, 200, "{v}");
        assert_eq!(v["data"]["earKey"], key_pem.as_str());
        assert_eq!(v["data"]["statement"]["version"], 2);
    }
    let with_nonce = Ear::from_jwt_jwk(
        answers[2].1["data"]["ear"].as_str().unwrap(),
        Algorithm::ES256,
        &jwk(&key_pem),
    )
    .unwrap();
    assert!(with_nonce.nonce.is_some());
    assert_eq!(answers[3].0, 400, "{}", answers[3].1);
    assert!(answers[3].1["message"].as_str().unwrap().contains("format"));

    // A bundle saved without --format ear has no EAR to print.
    let plain_bundle = t.join("plain.json");
    let o = quarry(&[
        "verify",
        "--coordinator",
        &addr,
        "--policy",
        p,
        "--allow-simulation",
        "--save-bundle",
        plain_bundle.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));

    // Offline, with the coordinator gone: the bundle's EAR, checked again.
    drop(coord);
    let verify_bundle = |path: &Path| {
        quarry(&[
            "verify",
            "--bundle",
            path.to_str().unwrap(),
            "--policy",
            p,
            "--manifest",
            m,
            "--allow-simulation",
            "--format",
            "ear",
        ])
    };
    let o = verify_bundle(&bundle);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), online_token);
    let o = verify_bundle(&plain_bundle);
    assert!(!o.status.success());
    assert!(text(&o).contains("carries no EAR"), "{}", text(&o));

    let (impostor_token, impostor_key) = resign_with_new_key(&online_token);
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let token = online_token.clone();
    let (t1, t2, t3) = (token.clone(), token.clone(), impostor_token.clone());
    let edits: Vec<(&str, Edit, &str)> = vec![
        (
            "a payload byte",
            Box::new(move |v| v["attestation"]["ear"] = flip(&t1, 1, 30).into()),
            "EAR signature",
        ),
        (
            "a signature byte",
            Box::new(move |v| v["attestation"]["ear"] = flip(&t2, 2, 10).into()),
            "EAR signature",
        ),
        (
            "signed by another key",
            Box::new(move |v| v["attestation"]["ear"] = t3.clone().into()),
            "EAR signature",
        ),
        (
            "another key, presented as the EAR key",
            Box::new(move |v| {
                v["attestation"]["ear"] = impostor_token.clone().into();
                v["attestation"]["earKey"] = impostor_key.clone().into();
            }),
            "EAR key",
        ),
        (
            "the statement's key digest",
            Box::new(|v| v["attestation"]["statement"]["ear_key_sha256"] = "00".repeat(32).into()),
            "statement binding",
        ),
    ];
    for (name, edit, reason) in edits {
        let mut v = saved.clone();
        edit(&mut v);
        let path = t.join("tampered.json");
        std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
        let o = verify_bundle(&path);
        assert!(!o.status.success(), "tampered {name} accepted");
        assert!(text(&o).contains(reason), "tampered {name}: {}", text(&o));
        assert!(o.stdout.is_empty(), "tampered {name}: printed {}", text(&o));
    }
    // The ear crate refuses the altered tokens too.
    for bad in [flip(&token, 1, 30), flip(&token, 2, 10)] {
        assert!(Ear::from_jwt_jwk(&bad, Algorithm::ES256, &jwk(&key_pem)).is_err());
    }
}
