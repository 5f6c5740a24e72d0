//! Runs the `quarry` binary: exit codes, one-line errors, `--json`, offline commands, and the
//! network commands against a small fake coordinator (TLS 1.3 on 127.0.0.1:0).
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{mpsc, Arc};

use sha2::{Digest, Sha256};

const QUARRY: &str = env!("CARGO_BIN_EXE_quarry");
const HEX64: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

/// Runs quarry with `args`, without any QUARRY_* variables from the caller's environment.
fn quarry(args: &[&str]) -> Output {
    Command::new(QUARRY)
        .args(args)
        .env_remove("QUARRY_COORDINATOR")
        .env_remove("QUARRY_ROOT_CA")
        .output()
        .expect("run quarry")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The single `error:` line of a failed run (and asserts there is exactly one).
fn error_line(o: &Output) -> String {
    let err = stderr(o);
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "expected one error line, got: {err}");
    assert!(
        err.lines().all(|l| l.starts_with("error:")
            || l.starts_with("warning:")
            || l.starts_with("note:")),
        "stderr has a stray line: {err}"
    );
    errors[0].to_owned()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn valid_manifest() -> String {
    format!(
        r#"{{"Packages":{{"p":{{"TEE":"simulated","UniqueID":"{HEX64}"}}}},"Marbles":{{"m":{{"Package":"p"}}}}}}"#
    )
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write fixture");
    path
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

// === offline commands ===

#[test]
fn sim_init_creates_a_public_ca_and_a_private_key_and_refuses_a_second_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let platform = dir.path().join("platform");
    let o = quarry(&["sim", "init", s(&platform)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ca = platform.join("platform-ca.pem");
    let key = platform.join("platform-key.pem");
    assert!(
        stdout(&o).contains(s(&ca)) && stdout(&o).contains(s(&key)),
        "{}",
        stdout(&o)
    );
    assert!(stderr(&o).contains("SIMULATED"), "{}", stderr(&o));
    let mode = std::fs::metadata(&key).expect("key").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the platform key must be private");
    let ca_pem = std::fs::read(&ca).expect("ca");

    let again = quarry(&["sim", "init", s(&platform)]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        error_line(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );
    assert_eq!(
        std::fs::read(&ca).expect("ca"),
        ca_pem,
        "the platform must not change"
    );
}

#[test]
fn package_info_sim_is_the_sha256_of_the_executable_through_symlinks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = write(dir.path(), "service.sh", "#!/bin/sh\necho marble\n");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&script, &link).expect("symlink");
    let expected = sha256_hex(b"#!/bin/sh\necho marble\n");

    let o = quarry(&["package-info", "--sim", s(&script)]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains(&format!("UniqueID: {expected}")), "{out}");
    assert!(
        out.contains(&format!(r#"{{"TEE":"simulated","UniqueID":"{expected}"}}"#)),
        "{out}"
    );

    let o = quarry(&["package-info", "--sim", s(&link), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["uniqueId"], expected.as_str());
    assert_eq!(v["package"]["UniqueID"], expected.as_str());
    let resolved = std::fs::canonicalize(&script).expect("canonical");
    assert_eq!(v["path"], s(&resolved), "the symlink must be resolved");
}

#[test]
fn package_info_of_a_missing_file_is_a_one_line_error() {
    let o = quarry(&["package-info", "--sim", "/nonexistent/quarry-test"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(error_line(&o).contains("/nonexistent/quarry-test"));
}

#[test]
fn manifest_signature_is_the_sha256_of_the_exact_file_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = valid_manifest() + "\n";
    let file = write(dir.path(), "m.json", &text);
    let o = quarry(&["manifest", "signature", s(&file)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), sha256_hex(text.as_bytes()));
    let o = quarry(&["manifest", "signature", s(&file), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["fingerprint"], sha256_hex(text.as_bytes()).as_str());
}

#[test]
fn manifest_check_accepts_a_valid_manifest_and_prints_its_fingerprint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(dir.path(), "m.json", &valid_manifest());
    let o = quarry(&["manifest", "check", s(&file)]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("OK: manifest is valid (1 packages, 1 marbles, 0 secrets)"),
        "{out}"
    );
    assert!(
        out.contains(&sha256_hex(valid_manifest().as_bytes())),
        "{out}"
    );

    let o = quarry(&["manifest", "check", s(&file), "--json"]);
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["valid"], true);
    assert_eq!(v["marbles"], 1);
}

#[test]
fn manifest_check_names_the_json_path_of_a_missing_package() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = valid_manifest().replace(r#""Package":"p""#, r#""Package":"nope""#);
    let file = write(dir.path(), "m.json", &text);
    let o = quarry(&["manifest", "check", s(&file)]);
    assert_eq!(o.status.code(), Some(1));
    let line = error_line(&o);
    assert!(line.starts_with("error: /Marbles/m/Package: "), "{line}");

    let o = quarry(&["manifest", "check", s(&file), "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["valid"], false);
    assert_eq!(v["error"]["path"], "/Marbles/m/Package");
}

#[test]
fn manifest_check_reads_yaml_and_fingerprints_the_converted_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = format!(
        "Packages:\n  p:\n    TEE: simulated\n    UniqueID: \"{HEX64}\"\nMarbles:\n  m:\n    Package: p\n"
    );
    let file = write(dir.path(), "m.yaml", &yaml);
    let o = quarry(&["manifest", "check", s(&file)]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).contains("OK: manifest is valid (1 packages, 1 marbles, 0 secrets)"));
    assert!(
        !stdout(&o).contains(&sha256_hex(yaml.as_bytes())),
        "YAML bytes are never posted"
    );

    // Content sniffing when the name says nothing.
    let sniffed = write(dir.path(), "manifest", &yaml);
    assert_eq!(
        quarry(&["manifest", "check", s(&sniffed)]).status.code(),
        Some(0)
    );
}

#[test]
fn manifest_check_warns_about_unknown_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = valid_manifest().replace(r#""Package":"p""#, r#""Package":"p","Colour":"blue""#);
    let file = write(dir.path(), "m.json", &text);
    let o = quarry(&["manifest", "check", s(&file)]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let warnings: Vec<String> = stderr(&o)
        .lines()
        .filter(|l| l.starts_with("warning: /Marbles/m/Colour: "))
        .map(str::to_owned)
        .collect();
    assert_eq!(warnings.len(), 1, "{}", stderr(&o));
}

#[test]
fn manifest_check_of_broken_json_names_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(dir.path(), "m.json", "{nope");
    let o = quarry(&["manifest", "check", s(&file)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        error_line(&o).contains("m.json: invalid JSON"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn completions_print_a_script() {
    let o = quarry(&["completions", "bash"]);
    assert!(o.status.success());
    assert!(stdout(&o).contains("quarry"));
}

#[test]
fn every_command_has_an_example_and_the_top_level_documents_exit_codes() {
    let top = quarry(&["--help"]);
    assert!(top.status.success());
    assert!(stdout(&top).contains("Exit codes:"));
    for cmd in [
        &["manifest", "check"][..],
        &["manifest", "set"],
        &["manifest", "get"],
        &["manifest", "signature"],
        &["sim", "init"],
        &["package-info"],
        &["status"],
        &["certificate", "root"],
        &["certificate", "mesh"],
        &["certificate", "chain"],
        &["completions"],
        &["evidence", "verify"],
        &["explain"],
        &["sign-quote"],
    ] {
        let mut args = cmd.to_vec();
        args.push("--help");
        let o = quarry(&args);
        assert!(o.status.success(), "{cmd:?}");
        assert!(
            stdout(&o).contains("Example"),
            "{cmd:?} --help has no example"
        );
    }
}

#[test]
fn usage_errors_exit_2_with_one_line() {
    let o = quarry(&["status", "--jsn"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(error_line(&o).contains("--jsn"));
    let o = quarry(&["manifest", "check"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(error_line(&o).contains("<FILE>"));
}

// === network commands ===

#[test]
fn network_commands_without_coordinator_trust_are_refused_in_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(dir.path(), "m.json", &valid_manifest());
    for args in [
        &["status"][..],
        &["manifest", "get"],
        &["manifest", "set", s(&file)],
        &["certificate", "root"],
        &["certificate", "chain"],
    ] {
        let o = quarry(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let line = error_line(&o);
        assert!(
            line.contains("--root-ca") && line.contains("--insecure"),
            "{line}"
        );
    }
}

#[test]
fn sign_quote_needs_a_pinned_root_to_check_the_signature_against() {
    let o = quarry(&["sign-quote", "--quote", "q.bin", "--insecure"]);
    assert_eq!(o.status.code(), Some(2));
    let line = error_line(&o);
    assert!(
        line.contains("none is pinned") && line.contains("--root-ca"),
        "{line}"
    );
}

#[test]
fn root_ca_and_insecure_together_are_refused() {
    let o = quarry(&["status", "--insecure", "--root-ca", "/nonexistent.pem"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(error_line(&o).contains("both"));
}

#[test]
fn a_closed_port_gives_a_one_line_error_naming_the_address() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    drop(listener);
    let o = quarry(&["status", "--coordinator", &addr, "--insecure"]);
    assert_eq!(o.status.code(), Some(1));
    let line = error_line(&o);
    assert!(
        line.contains(&addr) && line.contains("cannot connect"),
        "{line}"
    );
    assert!(
        stderr(&o).contains("warning: --insecure"),
        "--insecure must warn"
    );
}

#[test]
fn manifest_set_refuses_an_invalid_manifest_before_sending() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = valid_manifest().replace(r#""Package":"p""#, r#""Package":"nope""#);
    let file = write(dir.path(), "m.json", &text);
    // Port 1 is closed: a request would fail differently.
    let o = quarry(&[
        "manifest",
        "set",
        s(&file),
        "--coordinator",
        "127.0.0.1:1",
        "--insecure",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let line = error_line(&o);
    assert!(
        line.contains("/Marbles/m/Package") && line.contains("nothing was sent"),
        "{line}"
    );
}

/// A fake coordinator: root CA → server certificate for 127.0.0.1; a mesh CA in the chain.
struct Fake {
    addr: SocketAddr,
    root_pem: String,
    posted: mpsc::Receiver<Vec<u8>>,
}

/// How the fake answers `GET /api/v2/manifest` and `POST /api/v2/manifest`.
#[derive(Clone, Copy)]
enum Mode {
    Honest,
    WrongFingerprint,
    RefuseManifest,
}

fn fake_coordinator(mode: Mode) -> Fake {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca = |name: &str| {
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p
    };
    let root_key = KeyPair::generate().expect("key");
    let root_params = ca("fake root");
    let root = root_params.self_signed(&root_key).expect("root");
    let root_issuer = Issuer::new(root_params, root_key);
    let mesh_key = KeyPair::generate().expect("key");
    let mesh = ca("fake mesh")
        .signed_by(&mesh_key, &root_issuer)
        .expect("mesh");
    let leaf_key = KeyPair::generate().expect("key");
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .expect("params")
        .signed_by(&leaf_key, &root_issuer)
        .expect("leaf");

    let manifest = valid_manifest();
    let fingerprint = match mode {
        Mode::WrongFingerprint => sha256_hex(b"something else"),
        _ => sha256_hex(manifest.as_bytes()),
    };
    let b64 = |b: &[u8]| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(b)
    };
    let quote = serde_json::json!({"status":"success","data":{
        "cert": mesh.pem() + &root.pem(), "quote": "", "type": "simulated", "simulation": true}});
    let get_manifest = serde_json::json!({"status":"success","data":{
        "manifestSignatureRootECDSA": "", "manifestFingerprint": fingerprint,
        "manifest": b64(manifest.as_bytes())}});
    let set_manifest = match mode {
        Mode::RefuseManifest => (
            "500 Internal Server Error",
            serde_json::json!({"status":"error","message":"manifest already set"}),
        ),
        _ => (
            "200 OK",
            serde_json::json!({"status":"success","data":{"RecoverySecrets":{"alice":"c2VjcmV0"}}}),
        ),
    };
    let status = serde_json::json!({"status":"success","data":{
        "code":3,"message":"Coordinator is running correctly and ready to accept marbles.","simulation":true,"version":"9.8.7"}});

    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone(), root.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
    )
    .expect("server config");

    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("addr");
    let (posted_tx, posted) = mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let Ok(mut tls) = acceptor.accept(tcp).await else { continue };
                let mut req = Vec::new();
                let mut buf = [0u8; 8192];
                let head_end = loop {
                    if let Some(i) = req.windows(4).position(|w| w == b"\r\n\r\n") {
                        break Some(i + 4);
                    }
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => break None,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                };
                let Some(head_end) = head_end else { continue };
                let head = String::from_utf8_lossy(&req[..head_end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                while req.len() < head_end + length {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let (code, body) = if head.starts_with("get /api/v2/status ") {
                    ("200 OK", status.clone())
                } else if head.starts_with("get /api/v2/quote ") {
                    ("200 OK", quote.clone())
                } else if head.starts_with("get /api/v2/manifest ") {
                    ("200 OK", get_manifest.clone())
                } else if head.starts_with("post /api/v2/manifest ") {
                    let _ = posted_tx.send(req[head_end..].to_vec());
                    set_manifest.clone()
                } else {
                    ("405 Method Not Allowed", serde_json::json!({"status":"error","message":""}))
                };
                let body = body.to_string();
                let response = format!(
                    "HTTP/1.1 {code}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
            }
        });
    });
    Fake {
        addr,
        root_pem: root.pem(),
        posted,
    }
}

#[test]
fn certificate_root_on_first_use_then_pinned_status() {
    let fake = fake_coordinator(Mode::Honest);
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root.pem");
    let addr = fake.addr.to_string();

    let o = quarry(&[
        "certificate",
        "root",
        "--coordinator",
        &addr,
        "--insecure",
        "-o",
        s(&root),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("NOT verified"), "{}", stderr(&o));
    assert!(stderr(&o).contains("SIMULATION"), "{}", stderr(&o));
    let written = std::fs::read_to_string(&root).expect("root written");
    let parse = |t: &str| {
        pem::parse_many(t)
            .expect("pem")
            .into_iter()
            .map(|p| p.into_contents())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        parse(&written),
        parse(&fake.root_pem),
        "root = last certificate of the chain"
    );

    let o = quarry(&[
        "certificate",
        "chain",
        "--coordinator",
        &addr,
        "--root-ca",
        s(&root),
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["verified"], true);
    assert_eq!(parse(v["pem"].as_str().expect("pem")).len(), 2);

    let o = quarry(&["status", "--coordinator", &addr, "--root-ca", s(&root)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).starts_with("3: Coordinator is running correctly"),
        "{}",
        stdout(&o)
    );
    assert!(stderr(&o).contains("SIMULATION"), "simulation must be loud");
    assert!(
        stdout(&o).contains(&format!(
            "coordinator version 9.8.7, quarry CLI version {}",
            env!("CARGO_PKG_VERSION")
        )),
        "{}",
        stdout(&o)
    );
    let o = quarry(&["--version"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o).trim(),
        format!("quarry {}", env!("CARGO_PKG_VERSION"))
    );
    let o = quarry(&[
        "status",
        "--coordinator",
        &addr,
        "--root-ca",
        s(&root),
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["code"], 3);
    assert_eq!(v["version"], "9.8.7");
}

#[test]
fn a_pinned_root_of_another_deployment_is_a_tls_error() {
    let fake = fake_coordinator(Mode::Honest);
    let other = fake_coordinator(Mode::Honest);
    let dir = tempfile::tempdir().expect("tempdir");
    let root = write(dir.path(), "root.pem", &other.root_pem);
    let addr = fake.addr.to_string();
    let o = quarry(&["status", "--coordinator", &addr, "--root-ca", s(&root)]);
    assert_eq!(o.status.code(), Some(1));
    let line = error_line(&o);
    assert!(
        line.contains("TLS handshake") && line.contains(&addr),
        "{line}"
    );
}

#[test]
fn manifest_set_posts_the_exact_bytes_and_writes_recovery_data_0600() {
    let fake = fake_coordinator(Mode::Honest);
    let dir = tempfile::tempdir().expect("tempdir");
    let root = write(dir.path(), "root.pem", &fake.root_pem);
    let file = write(dir.path(), "m.json", &valid_manifest());
    let out = dir.path().join("recovery.json");
    let addr = fake.addr.to_string();
    let o = quarry(&[
        "manifest",
        "set",
        s(&file),
        "--coordinator",
        &addr,
        "--root-ca",
        s(&root),
        "-r",
        s(&out),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains(&sha256_hex(valid_manifest().as_bytes())));
    let posted: serde_json::Value =
        serde_json::from_slice(&fake.posted.recv().expect("posted")).expect("json body");
    let expected = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(valid_manifest())
    };
    assert_eq!(posted["manifest"], expected.as_str());
    let mode = std::fs::metadata(&out)
        .expect("recovery data")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&out).expect("read")).expect("json");
    assert_eq!(v["RecoverySecrets"]["alice"], "c2VjcmV0");

    // Recovery data is never overwritten, and nothing is sent then.
    let o = quarry(&[
        "manifest",
        "set",
        s(&file),
        "--coordinator",
        &addr,
        "--root-ca",
        s(&root),
        "-r",
        s(&out),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(error_line(&o).contains("already exists"));
}

#[test]
fn manifest_set_reports_the_coordinators_refusal() {
    let fake = fake_coordinator(Mode::RefuseManifest);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write(dir.path(), "m.json", &valid_manifest());
    let o = quarry(&[
        "manifest",
        "set",
        s(&file),
        "--coordinator",
        &fake.addr.to_string(),
        "--insecure",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let line = error_line(&o);
    assert!(
        line.starts_with("error: coordinator refused the manifest: manifest already set"),
        "{line}"
    );
}

#[test]
fn manifest_get_returns_the_bytes_and_refuses_a_wrong_fingerprint() {
    let fake = fake_coordinator(Mode::Honest);
    let dir = tempfile::tempdir().expect("tempdir");
    let root = write(dir.path(), "root.pem", &fake.root_pem);
    let o = quarry(&[
        "manifest",
        "get",
        "--coordinator",
        &fake.addr.to_string(),
        "--root-ca",
        s(&root),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(o.stdout, valid_manifest().as_bytes());

    let liar = fake_coordinator(Mode::WrongFingerprint);
    let out = dir.path().join("got.json");
    let o = quarry(&[
        "manifest",
        "get",
        "--coordinator",
        &liar.addr.to_string(),
        "--insecure",
        "-o",
        s(&out),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(error_line(&o).contains("does not match its fingerprint"));
    assert!(
        !out.exists(),
        "a manifest that fails its fingerprint must not be written"
    );
}
