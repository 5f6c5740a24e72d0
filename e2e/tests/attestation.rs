//! One attestation for the whole deployment, end to end: `quarry verify` online against a
//! real coordinator after two activations, the offline bundle verified with the coordinator
//! stopped, every tampered field refused, and the transparency log checked.
use std::path::Path;
use std::process::Command;
use std::time::Duration;

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

fn service(dir: &Path, name: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n# {name}\nexit 0\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

fn sha256_file(p: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(p).unwrap()))
}

#[test]
fn verify_online_offline_bundle_and_log() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let platform = t.join("sim");
    assert!(quarry(&["sim", "init", platform.to_str().unwrap()])
        .status
        .success());
    let coord = Coordinator::start(&t.join("data"), &platform, &t.join("c.log")).unwrap();
    let addr = coord.client.to_string();

    let web = service(t, "web-svc");
    let db = service(t, "db-svc");
    let manifest = serde_json::json!({
        "Packages": {
            "web": {"TEE": "simulated", "UniqueID": sha256_file(&web)},
            "db": {"TEE": "simulated", "UniqueID": sha256_file(&db)}
        },
        "Marbles": {"web": {"Package": "web"}, "db": {"Package": "db"}}
    });
    let manifest_path = t.join("manifest.json");
    std::fs::write(
        &manifest_path,
        serde_json::to_vec_pretty(&manifest).unwrap(),
    )
    .unwrap();
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
    for (ty, exe) in [("web", &web), ("db", &db)] {
        let o = run(
            Command::new(bin("marble-sidecar"))
                .arg("run")
                .args([
                    "--coordinator",
                    &coord.mesh.to_string(),
                    "--marble-type",
                    ty,
                ])
                .arg("--uuid-file")
                .arg(t.join(format!("{ty}.uuid")))
                .args(["--tee", "simulated"])
                .arg("--sim-platform")
                .arg(&platform)
                .arg("--coordinator-root-ca")
                .arg(&root)
                .arg("--")
                .arg(exe),
            LIMIT,
        )
        .unwrap();
        assert!(o.status.success(), "{}", text(&o));
    }

    // The coordinator policy: a simulated coordinator's UniqueID is SHA-256 of its executable.
    let policy = serde_json::json!({
        "TEE": "simulated",
        "UniqueID": sha256_file(&bin("quarry-coordinator")),
        "SimulationPlatformCA": std::fs::read_to_string(platform.join("platform-ca.pem")).unwrap(),
    });
    // The coordinator prints the same policy for itself.
    let printed = run(
        Command::new(bin("quarry-coordinator"))
            .args(["--print-policy", "--tee", "simulated", "--sim-platform"])
            .arg(&platform),
        LIMIT,
    )
    .unwrap();
    assert!(printed.status.success(), "{}", text(&printed));
    let printed: serde_json::Value = serde_json::from_slice(&printed.stdout).unwrap();
    assert_eq!(printed["UniqueID"], policy["UniqueID"]);
    assert_eq!(
        printed["SimulationPlatformCA"],
        policy["SimulationPlatformCA"]
    );
    let policy_path = t.join("policy.json");
    std::fs::write(&policy_path, serde_json::to_vec_pretty(&policy).unwrap()).unwrap();
    let p = policy_path.to_str().unwrap();
    let m = manifest_path.to_str().unwrap();

    // Simulated coordinators are refused unless explicitly allowed.
    let o = quarry(&["verify", "--coordinator", &addr, "--policy", p]);
    assert!(!o.status.success());
    assert!(text(&o).contains("SIMULATED"), "{}", text(&o));

    let bundle = t.join("bundle.json");
    let pinned = t.join("root.pem");
    let o = quarry(&[
        "verify",
        "--coordinator",
        &addr,
        "--policy",
        p,
        "--manifest",
        m,
        "--allow-simulation",
        "--save-bundle",
        bundle.to_str().unwrap(),
        "--root-out",
        pinned.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    assert!(
        out.contains("SIMULATION") && out.contains("marble web") && out.contains("marble db"),
        "{out}"
    );
    assert_eq!(
        std::fs::read(&pinned).unwrap(),
        std::fs::read(&root).unwrap(),
        "the attested root is the one served"
    );

    // A manifest differing by one byte.
    let mut other = std::fs::read(&manifest_path).unwrap();
    other.push(b'\n');
    let other_path = t.join("other.json");
    std::fs::write(&other_path, &other).unwrap();
    let o = quarry(&[
        "verify",
        "--coordinator",
        &addr,
        "--policy",
        p,
        "--allow-simulation",
        "--manifest",
        other_path.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("manifest"), "{}", text(&o));

    // A policy the coordinator does not satisfy.
    let mut wrong = policy.clone();
    wrong["UniqueID"] = serde_json::json!("11".repeat(32));
    let wrong_path = t.join("wrong-policy.json");
    std::fs::write(&wrong_path, serde_json::to_vec(&wrong).unwrap()).unwrap();
    let o = quarry(&[
        "verify",
        "--coordinator",
        &addr,
        "--policy",
        wrong_path.to_str().unwrap(),
        "--allow-simulation",
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("UniqueID"), "{}", text(&o));

    // The log holds the manifest and both activations and hashes to the attested root.
    let o = quarry(&[
        "log",
        "--coordinator",
        &addr,
        "--policy",
        p,
        "--allow-simulation",
        "--verify",
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let log: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let types: Vec<&str> = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"]["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, vec!["manifest-set", "activation", "activation"]);
    let serials: Vec<&str> = log["entries"].as_array().unwrap()[1..]
        .iter()
        .map(|e| e["event"]["certSerial"].as_str().unwrap())
        .collect();
    assert!(serials.iter().all(|s| s.len() >= 16));
    // Paged one entry per request, the same entries verify against the same root.
    let o = quarry(&[
        "log",
        "--coordinator",
        &addr,
        "--policy",
        p,
        "--allow-simulation",
        "--verify",
        "--json",
        "--page-size",
        "1",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let paged: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(paged["entries"], log["entries"]);
    assert_eq!(paged["root"], log["root"]);
    // The listing itself is bounded: `limit` entries from `from`, `next` while more remain.
    let root_pem = std::fs::read_to_string(&root).unwrap();
    let pages = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let client = quarry_e2e::https(quarry_e2e::tls_config(&root_pem, None).unwrap()).unwrap();
        let mut out = Vec::new();
        for query in [
            "from=0&limit=2",
            "from=2&limit=2",
            "from=1&limit=0",
            "limit=10001",
        ] {
            let (code, v) = quarry_e2e::jsend(
                client
                    .get(format!("{}/api/v2/log?{query}", coord.client_url()))
                    .send()
                    .await
                    .unwrap(),
            )
            .await
            .unwrap();
            out.push((code, v));
        }
        out
    });
    let entries = log["entries"].as_array().unwrap();
    assert_eq!(pages[0].0, 200, "{}", pages[0].1);
    assert_eq!(
        pages[0].1["data"]["entries"].as_array().unwrap()[..],
        entries[..2]
    );
    assert_eq!(pages[0].1["data"]["next"], 2);
    assert_eq!(pages[0].1["data"]["size"], 3);
    assert_eq!(
        pages[1].1["data"]["entries"].as_array().unwrap()[..],
        entries[2..]
    );
    assert!(pages[1].1["data"]["next"].is_null(), "{}", pages[1].1);
    assert_eq!(pages[2].1["data"]["entries"], serde_json::json!([]));
    assert_eq!(pages[3].0, 400, "{}", pages[3].1);
    assert!(
        pages[3].1["message"]
            .as_str()
            .unwrap_or_default()
            .contains("maximum of 10000"),
        "{}",
        pages[3].1
    );

    // The sidecar authenticates the coordinator by the same policy instead of a pinned root.
    let sidecar = |policy: &Path, extra: &[&str]| {
        run(
            Command::new(bin("marble-sidecar"))
                .arg("run")
                .args([
                    "--coordinator",
                    &coord.mesh.to_string(),
                    "--marble-type",
                    "web",
                ])
                .arg("--uuid-file")
                .arg(t.join("web2.uuid"))
                .args(["--tee", "simulated"])
                .arg("--sim-platform")
                .arg(&platform)
                .arg("--coordinator-policy")
                .arg(policy)
                .args(extra)
                .arg("--")
                .arg(&web),
            LIMIT,
        )
        .unwrap()
    };
    let o = sidecar(&policy_path, &["--allow-simulated-coordinator"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = sidecar(&policy_path, &[]);
    assert!(!o.status.success());
    assert!(text(&o).contains("SIMULATED"), "{}", text(&o));
    let o = sidecar(&wrong_path, &["--allow-simulated-coordinator"]);
    assert!(
        !o.status.success(),
        "a policy the coordinator does not satisfy"
    );
    assert!(text(&o).contains("UniqueID"), "{}", text(&o));

    // Offline, with the coordinator gone.
    drop(coord);
    let b = bundle.to_str().unwrap();
    let o = quarry(&[
        "verify",
        "--bundle",
        b,
        "--policy",
        p,
        "--manifest",
        m,
        "--allow-simulation",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = quarry(&[
        "verify",
        "--bundle",
        b,
        "--policy",
        p,
        "--allow-simulation",
        "--at",
        "2100-01-01T00:00:00Z",
    ]);
    assert!(!o.status.success(), "outside the platform CA's validity");
    assert!(text(&o).contains("valid"), "{}", text(&o));

    // Every field of the bundle is covered.
    let original: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&bundle).unwrap()).unwrap();
    let root_pem = original["attestation"]["rootCa"]
        .as_str()
        .unwrap()
        .to_string();
    let mesh_pem = original["attestation"]["meshCa"]
        .as_str()
        .unwrap()
        .to_string();
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let edits: Vec<(&str, Edit, &str)> = vec![
        (
            "log size",
            Box::new(|v| v["attestation"]["statement"]["log_size"] = 2.into()),
            "statement binding",
        ),
        (
            "statement manifest",
            Box::new(|v| v["attestation"]["statement"]["manifest_sha256"] = "00".repeat(32).into()),
            "statement binding",
        ),
        (
            "evidence",
            Box::new(|v| {
                let q = quarry_api::bytes::unb64(
                    v["attestation"]["evidence"]["quote"].as_str().unwrap(),
                )
                .unwrap();
                let mut env: serde_json::Value = serde_json::from_slice(&q).unwrap();
                let body = quarry_api::bytes::unb64(env["body"].as_str().unwrap()).unwrap();
                let body = String::from_utf8(body)
                    .unwrap()
                    .replace("\"debug\":false", "\"debug\":true");
                env["body"] = quarry_api::bytes::b64(body.as_bytes()).into();
                v["attestation"]["evidence"]["quote"] =
                    quarry_api::bytes::b64(&serde_json::to_vec(&env).unwrap()).into();
            }),
            "signature",
        ),
        (
            "root CA",
            Box::new(move |v| v["attestation"]["rootCa"] = mesh_pem.clone().into()),
            "root CA",
        ),
        (
            "mesh CA",
            Box::new(move |v| v["attestation"]["meshCa"] = root_pem.clone().into()),
            "mesh CA",
        ),
        (
            "manifest",
            Box::new(|v| v["attestation"]["manifest"] = quarry_api::bytes::b64(b"{}").into()),
            "manifest",
        ),
        (
            "log entry",
            Box::new(|v| v["log"][1]["event"]["marbleType"] = "intruder".into()),
            "log",
        ),
        (
            "log truncated",
            Box::new(|v| {
                v["log"].as_array_mut().unwrap().pop();
            }),
            "log",
        ),
    ];
    for (name, edit, reason) in edits {
        let mut v = original.clone();
        edit(&mut v);
        let path = t.join("tampered.json");
        std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
        let o = quarry(&[
            "verify",
            "--bundle",
            path.to_str().unwrap(),
            "--policy",
            p,
            "--allow-simulation",
        ]);
        assert!(!o.status.success(), "tampered {name} accepted");
        assert!(text(&o).contains(reason), "tampered {name}: {}", text(&o));
    }
}
