//! Users, roles, the secrets API and manifest updates (package-only and k-of-n full updates),
//! end to end with the real binaries and users whose certificates are made by the test.
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use quarry_e2e::{bin, run, Coordinator};
use sha2::{Digest, Sha256};

const LIMIT: Duration = Duration::from_secs(120);

struct Ctx {
    dir: PathBuf,
    addr: String,
    root: PathBuf,
}

impl Ctx {
    fn q(&self, user: Option<&str>, args: &[&str]) -> (bool, String, String) {
        let mut c = Command::new(bin("quarry"));
        c.args(args)
            .args(["--coordinator", &self.addr])
            .arg("--root-ca")
            .arg(&self.root);
        if let Some(u) = user {
            c.arg("-c")
                .arg(self.dir.join(format!("{u}.crt")))
                .arg("-k")
                .arg(self.dir.join(format!("{u}.key")));
        }
        let o = run(&mut c, LIMIT).unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into(),
            String::from_utf8_lossy(&o.stderr).into(),
        )
    }

    fn write(&self, name: &str, v: &serde_json::Value) -> String {
        let p = self.dir.join(name);
        std::fs::write(&p, serde_json::to_vec_pretty(v).unwrap()).unwrap();
        p.to_str().unwrap().to_string()
    }
}

fn user(dir: &Path, name: &str) -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.join(format!("{name}.crt")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    cert.pem()
}

fn manifest(web_id: &str, users: &[(&str, String)], extra_env: bool) -> serde_json::Value {
    let mut env = serde_json::json!({
        "API_KEY": "{{ hex .Secrets.api_key }}",
        "SHARED": "{{ hex .Secrets.shared }}",
        "TLS": "{{ pem .Secrets.tls.Cert }}"
    });
    if extra_env {
        env["VERSION"] = "2".into();
        env["OLD_SHARED"] = "{{ hex .Previous.Secrets.shared }}".into();
    }
    serde_json::json!({
        "Packages": {
            "web": {"TEE": "simulated", "UniqueID": web_id},
            "svc": {"TEE": "simulated", "SignerID": "00".repeat(32), "ProductID": 1, "SecurityVersion": 2}
        },
        "Marbles": {
            "web": {"Package": "web", "Parameters": {"Env": env}},
            "svc": {"Package": "svc"}
        },
        "Secrets": {
            "api_key": {"Type": "symmetric-key", "Size": 128, "UserDefined": true},
            "note": {"Type": "plain", "UserDefined": true},
            "shared": {"Type": "symmetric-key", "Size": 256, "Shared": true},
            "tls": {"Type": "cert-ecdsa", "Size": 256, "Shared": true},
            "private_k": {"Type": "symmetric-key", "Size": 256}
        },
        "Users": {
            "alice": {"Certificate": users[0].1, "Roles": ["writer", "reader", "updater", "pkg"]},
            "bob": {"Certificate": users[1].1, "Roles": ["reader", "updater"]},
            "eve": {"Certificate": users[2].1, "Roles": ["note-reader"]}
        },
        "Roles": {
            "writer": {"ResourceType": "Secrets", "ResourceNames": ["api_key", "note"], "Actions": ["WriteSecret"]},
            "reader": {"ResourceType": "Secrets", "ResourceNames": ["api_key", "shared"], "Actions": ["ReadSecret"]},
            "note-reader": {"ResourceType": "Secrets", "ResourceNames": ["note"], "Actions": ["ReadSecret"]},
            "updater": {"ResourceType": "Manifest", "Actions": ["UpdateManifest"]},
            "pkg": {"ResourceType": "Packages", "ResourceNames": ["svc"], "Actions": ["UpdateSecurityVersion"]}
        },
        "Config": {"UpdateThreshold": 2}
    })
}

fn activate_web(
    ctx: &Ctx,
    mesh: &str,
    platform: &Path,
    web: &Path,
) -> std::collections::BTreeMap<String, String> {
    let out = ctx.dir.join("web.env");
    let o = run(
        Command::new(bin("marble-sidecar"))
            .arg("run")
            .args(["--coordinator", mesh, "--marble-type", "web"])
            .arg("--uuid-file")
            .arg(ctx.dir.join("web.uuid"))
            .args(["--tee", "simulated"])
            .arg("--sim-platform")
            .arg(platform)
            .arg("--coordinator-root-ca")
            .arg(&ctx.root)
            .arg("--")
            .arg(web)
            .env("OUT", &out),
        LIMIT,
    )
    .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(&out).unwrap();
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn users_roles_secrets_and_updates() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let platform = t.join("sim");
    assert!(run(
        Command::new(bin("quarry"))
            .args(["sim", "init"])
            .arg(&platform),
        LIMIT
    )
    .unwrap()
    .status
    .success());
    let coord = Coordinator::start(&t.join("data"), &platform, &t.join("c.log")).unwrap();
    let root = t.join("root.pem");
    assert!(run(
        Command::new(bin("quarry"))
            .args([
                "certificate",
                "root",
                "--coordinator",
                &coord.client.to_string(),
                "--insecure",
                "-o"
            ])
            .arg(&root),
        LIMIT
    )
    .unwrap()
    .status
    .success());
    let ctx = Ctx {
        dir: t.to_path_buf(),
        addr: coord.client.to_string(),
        root,
    };
    let web = t.join("web-svc");
    std::fs::write(
        &web,
        "#!/bin/sh\nenv | grep -E '^(API_KEY|SHARED|VERSION|OLD_SHARED)=' > \"$OUT\"\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&web, std::fs::Permissions::from_mode(0o755)).unwrap();
    let web_id = hex::encode(Sha256::digest(std::fs::read(&web).unwrap()));
    let users = vec![
        ("alice", user(t, "alice")),
        ("bob", user(t, "bob")),
        ("eve", user(t, "eve")),
    ];
    let _intruder = user(t, "mallory");
    let m1 = ctx.write("m1.json", &manifest(&web_id, &users, false));
    let (ok, _, e) = ctx.q(None, &["manifest", "set", &m1]);
    assert!(ok, "{e}");

    // Authentication: no certificate, unknown certificate.
    let (ok, _, e) = ctx.q(None, &["secret", "get", "api_key"]);
    assert!(!ok && e.contains("certificate"), "{e}");
    let (ok, _, e) = ctx.q(Some("mallory"), &["secret", "get", "api_key"]);
    assert!(!ok && e.contains("no user"), "{e}");
    // Roles.
    let (ok, _, e) = ctx.q(Some("eve"), &["secret", "get", "api_key"]);
    assert!(!ok && e.contains("may not ReadSecret on api_key"), "{e}");
    let (ok, _, e) = ctx.q(Some("bob"), &["secret", "get", "private_k"]);
    assert!(!ok && e.contains("private_k"), "{e}");
    let key = [7u8; 16];
    let wrong = ctx.write(
        "wrong.json",
        &serde_json::json!({"api_key": {"Key": quarry_api::bytes::b64(&key[..8])}}),
    );
    let (ok, _, e) = ctx.q(Some("alice"), &["secret", "set", &wrong]);
    assert!(!ok && e.contains("exactly 16 bytes"), "{e}");
    let generated = ctx.write(
        "gen.json",
        &serde_json::json!({"shared": {"Key": quarry_api::bytes::b64(&[0u8; 32])}}),
    );
    let (ok, _, e) = ctx.q(Some("alice"), &["secret", "set", &generated]);
    assert!(!ok && e.contains("shared"), "{e}");
    let (ok, _, e) = ctx.q(Some("bob"), &["secret", "set", &wrong]);
    assert!(!ok && e.contains("may not WriteSecret"), "{e}");
    let good = ctx.write("good.json", &serde_json::json!({"api_key": {"Key": quarry_api::bytes::b64(&key)}, "note": {"Key": quarry_api::bytes::b64(b"hi")}}));
    let (ok, _, e) = ctx.q(Some("alice"), &["secret", "set", &good]);
    assert!(ok, "{e}");
    let (ok, out, e) = ctx.q(Some("bob"), &["secret", "get", "api_key", "shared"]);
    assert!(ok, "{e}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["api_key"]["Private"], quarry_api::bytes::b64(&key));
    let shared_before = v["shared"]["Private"].as_str().unwrap().to_string();

    // The marble gets the user-defined value.
    let env1 = activate_web(&ctx, &coord.mesh.to_string(), &platform, &web);
    assert_eq!(env1["API_KEY"], hex::encode(key));

    // Package update: lower refused, identity fields refused, role enforced, raise applied.
    let lower = ctx.write(
        "lower.json",
        &serde_json::json!({"Packages": {"svc": {"SecurityVersion": 1}}}),
    );
    let (ok, _, e) = ctx.q(Some("alice"), &["manifest", "update", "apply", &lower]);
    assert!(!ok && e.contains("lower"), "{e}");
    let ident = ctx.write(
        "ident.json",
        &serde_json::json!({"Packages": {"svc": {"SecurityVersion": 5, "ProductID": 9}}}),
    );
    let (ok, _, e) = ctx.q(Some("alice"), &["manifest", "update", "apply", &ident]);
    assert!(!ok && e.contains("ProductID"), "{e}");
    let raise = ctx.write(
        "raise.json",
        &serde_json::json!({"Packages": {"svc": {"SecurityVersion": 3}}}),
    );
    let (ok, _, e) = ctx.q(Some("bob"), &["manifest", "update", "apply", &raise]);
    assert!(!ok && e.contains("UpdateSecurityVersion"), "{e}");
    let (ok, _, e) = ctx.q(Some("alice"), &["manifest", "update", "apply", &raise]);
    assert!(ok, "{e}");
    // A svc marble at SVN 2 is now refused.
    let svc = t.join("svc-svc");
    std::fs::write(&svc, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&svc, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = run(
        Command::new(bin("marble-sidecar"))
            .arg("run")
            .args([
                "--coordinator",
                &coord.mesh.to_string(),
                "--marble-type",
                "svc",
            ])
            .arg("--uuid-file")
            .arg(t.join("svc.uuid"))
            .args([
                "--tee",
                "simulated",
                "--sim-product-id",
                "1",
                "--sim-svn",
                "2",
            ])
            .arg("--sim-platform")
            .arg(&platform)
            .arg("--coordinator-root-ca")
            .arg(&ctx.root)
            .arg("--")
            .arg(&svc),
        LIMIT,
    )
    .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr)
        .contains("refused [policy-mismatch] SecurityVersion: expected >= 3, found 2"));

    // Full update, 2 of 2 acknowledgements.
    let m2_value = manifest(&web_id, &users, true);
    let m2 = ctx.write("m2.json", &m2_value);
    let (ok, out, e) = ctx.q(Some("alice"), &["manifest", "update", "apply", &m2]);
    assert!(ok, "{e}");
    assert!(out.contains("bob"), "{out}");
    let (ok, _, e) = ctx.q(Some("alice"), &["manifest", "update", "apply", &m2]);
    assert!(!ok && e.contains("already pending"), "{e}");
    let mut almost = std::fs::read(&m2).unwrap();
    almost.push(b' ');
    let almost_path = t.join("m2-almost.json");
    std::fs::write(&almost_path, &almost).unwrap();
    let (ok, _, e) = ctx.q(
        Some("bob"),
        &[
            "manifest",
            "update",
            "acknowledge",
            almost_path.to_str().unwrap(),
        ],
    );
    assert!(!ok && e.contains("differs"), "{e}");
    let (ok, _, e) = ctx.q(Some("eve"), &["manifest", "update", "acknowledge", &m2]);
    assert!(!ok, "{e}");
    let (ok, _, e) = ctx.q(Some("bob"), &["manifest", "update", "acknowledge", &m2]);
    assert!(ok, "{e}");
    let (ok, out, _) = ctx.q(None, &["manifest", "get", "--json"]);
    assert!(ok);
    let got: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        got["manifestFingerprint"],
        hex::encode(Sha256::digest(std::fs::read(&m2).unwrap()))
    );
    // Shared symmetric key kept, previous values visible, user-defined value kept.
    let env2 = activate_web(&ctx, &coord.mesh.to_string(), &platform, &web);
    assert_eq!(env2["VERSION"], "2");
    assert_eq!(env2["SHARED"], env1["SHARED"]);
    assert_eq!(env2["OLD_SHARED"], env1["SHARED"]);
    assert_eq!(env2["API_KEY"], hex::encode(key));
    let (ok, out, _) = ctx.q(Some("bob"), &["secret", "get", "shared"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["shared"]["Private"], shared_before);

    // Cancel.
    let m3 = ctx.write("m3.json", &manifest(&web_id, &users, false));
    let (ok, _, e) = ctx.q(Some("alice"), &["manifest", "update", "apply", &m3]);
    assert!(ok, "{e}");
    let (ok, _, e) = ctx.q(Some("eve"), &["manifest", "update", "cancel"]);
    assert!(!ok && e.contains("UpdateManifest"), "{e}");
    let (ok, _, e) = ctx.q(Some("bob"), &["manifest", "update", "cancel"]);
    assert!(ok, "{e}");
    let (ok, _, e) = ctx.q(None, &["manifest", "update", "get"]);
    assert!(!ok && e.contains("no update is pending"), "{e}");

    // Everything is in the update log.
    let (ok, out, _) = ctx.q(None, &["manifest", "log"]);
    assert!(ok);
    for kind in [
        "secret-set",
        "package-update",
        "manifest-update-proposed",
        "manifest-update-acknowledged",
        "\"manifest-update\"",
        "manifest-update-cancelled",
    ] {
        assert!(out.contains(kind), "{kind} missing from:\n{out}");
    }
    // Secrets never reach the log.
    let log = std::fs::read_to_string(t.join("c.log")).unwrap();
    assert!(!log.contains(&hex::encode(key)) && !log.contains(&quarry_api::bytes::b64(&key)));
}
