//! Certificate renewal and revocation in the transparent mesh end to end (issue 6, "Done
//! when"), with the real binaries on loopback: a real HTTP server (`python3 -m http.server`)
//! wrapped by `marble-sidecar run` behind an ingress allowing only `app`, and an `app` marble
//! (`marble-sidecar proxy`) reaching it through its egress port. Both leaves are valid for 6 s
//! (`CertValidFor`), so the sidecars renew every ~4 s: a steady stream of requests across
//! several renewals must see zero failures. Then `quarry revoke --uuid` revokes `app`, and its
//! requests must be refused within one CRL interval (`--crl-interval 2s`); its next renewal
//! is refused by the coordinator. The server's manifest `Files` include one rendered from
//! `.MarbleRun.MarbleCert.Cert`: after the renewals it must hold a renewed certificate
//! (replaced atomically, still 0600), while a file without the certificate stays as written.
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use quarry_e2e::{bin, run, Coordinator};

const LIMIT: Duration = Duration::from_secs(60);
const PYTHON: &str = "/usr/bin/python3";
/// The sidecars' CRL refresh interval in this test.
const CRL_INTERVAL: Duration = Duration::from_secs(2);
/// How long the steady stream runs: at least three 6 s leaves' worth of renewals.
const STREAM: Duration = Duration::from_secs(14);

/// A long-running process, stopped (SIGTERM, then SIGKILL) on drop.
struct Running {
    child: Option<Child>,
    stderr: PathBuf,
}

impl Running {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn assert_alive(&mut self, what: &str) {
        if let Some(status) = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            panic!("{what} exited with {status}; log:\n{}", self.log());
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.0 request over plain TCP to `port`; the whole response, "" when refused.
fn http_get(port: u16, path: &str) -> String {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
        return String::new();
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes());
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn ok(resp: &str) -> bool {
    resp.starts_with("HTTP/1.0 200") && resp.ends_with("renewed mesh\n")
}

fn spawn(mut c: Command, dir: &Path, name: &str) -> Running {
    let stderr = dir.join(format!("{name}.log"));
    let file = std::fs::File::create(&stderr).unwrap();
    let child = c
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .unwrap();
    Running {
        child: Some(child),
        stderr,
    }
}

/// Serial of the first certificate in the PEM file `path` (`openssl x509`), lowercase hex
/// without leading zeros.
fn pem_serial(path: &Path) -> String {
    let o = run(
        Command::new("openssl")
            .args(["x509", "-noout", "-serial", "-in"])
            .arg(path),
        LIMIT,
    )
    .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8_lossy(&o.stdout);
    normal_serial(text.trim().trim_start_matches("serial="))
}

fn normal_serial(hex: &str) -> String {
    hex.trim()
        .to_ascii_lowercase()
        .trim_start_matches('0')
        .to_string()
}

/// Serials the sidecar log reports as renewed ("marble certificate renewed … serial=…").
fn renewed_serials(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("marble certificate renewed"))
        .filter_map(|l| l.split("serial=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(normal_serial)
        .collect()
}

fn quarry(args: &[&str]) -> std::process::Output {
    run(Command::new(bin("quarry")).args(args), LIMIT).unwrap()
}

#[test]
fn renewal_under_traffic_and_revocation_within_one_crl_interval() {
    assert!(
        Path::new(PYTHON).exists(),
        "{PYTHON} is needed to run the real HTTP server of this test"
    );
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let platform = t.join("sim");
    assert!(quarry(&["sim", "init", platform.to_str().unwrap()])
        .status
        .success());
    let coord = Coordinator::start(&t.join("data"), &platform, &t.join("coordinator.log")).unwrap();
    let root = t.join("root.pem");
    let o = quarry(&[
        "certificate",
        "root",
        "--coordinator",
        &coord.client.to_string(),
        "--insecure",
        "-o",
        root.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    // The user who may revoke `app`.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "operator");
    let cert = params.self_signed(&key).unwrap();
    let (crt, key_file) = (t.join("operator.crt"), t.join("operator.key"));
    std::fs::write(&crt, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();

    let http_port = free_port();
    let server_mesh = free_port();
    let app_egress = free_port();
    // Files the server's sidecar writes: one with its certificate, one without.
    let files = t.join("server-files");
    let cert_file = files.join("tls").join("cert.pem");
    let plain_file = files.join("static.txt");
    let package = serde_json::json!({"TEE": "simulated", "SignerID": "00".repeat(32), "ProductID": 0, "SecurityVersion": 0});
    let manifest = serde_json::json!({
        "Packages": {"any": package},
        "Marbles": {
            "server": {"Package": "any", "CertValidFor": "6s",
                "Parameters": {"Files": {
                    cert_file.to_str().unwrap(): "{{ pem .MarbleRun.MarbleCert.Cert }}",
                    plain_file.to_str().unwrap(): "not renewed\n"
                }},
                "Mesh": {"Inbound": [
                {"Port": server_mesh, "Forward": format!("127.0.0.1:{http_port}"), "AllowFrom": ["app"]}
            ]}},
            "app": {"Package": "any", "CertValidFor": "6s", "Mesh": {"Outbound": [
                {"Listen": format!("127.0.0.1:{app_egress}"), "Marble": "server", "Address": format!("localhost:{server_mesh}")}
            ]}}
        },
        "Users": {"operator": {"Certificate": cert.pem(), "Roles": ["revoker"]}},
        "Roles": {"revoker": {"ResourceType": "Marbles", "ResourceNames": ["app"], "Actions": ["RevokeMarble"]}}
    });
    let manifest_path = t.join("manifest.json");
    std::fs::write(&manifest_path, manifest.to_string()).unwrap();
    let o = quarry(&[
        "manifest",
        "set",
        manifest_path.to_str().unwrap(),
        "--coordinator",
        &coord.client.to_string(),
        "--root-ca",
        root.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let sidecar = |mode: &str, marble_type: &str| {
        let mut c = Command::new(bin("marble-sidecar"));
        c.arg(mode)
            .args(["--coordinator", &coord.mesh.to_string()])
            .args(["--marble-type", marble_type])
            .arg("--uuid-file")
            .arg(t.join(format!("{marble_type}.uuid")))
            .args(["--tee", "simulated"])
            .arg("--sim-platform")
            .arg(&platform)
            .arg("--coordinator-root-ca")
            .arg(&root)
            .env(
                "QUARRY_CRL_INTERVAL",
                format!("{}s", CRL_INTERVAL.as_secs()),
            )
            .env_remove("QUARRY_MARBLE_TYPE")
            .env_remove("EDG_MARBLE_TYPE")
            .env("RUST_LOG", "info");
        c
    };
    let www = t.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("hello.txt"), "hello through the renewed mesh\n").unwrap();
    let mut c = sidecar("run", "server");
    c.arg("--")
        .arg(PYTHON)
        .args(["-m", "http.server", "--bind", "127.0.0.1", "--directory"])
        .arg(&www)
        .arg(http_port.to_string());
    let mut server = spawn(c, t, "server");
    let mut c = sidecar("proxy", "app");
    c.args(["--sim-measure", "/bin/sh"]);
    let mut app = spawn(c, t, "app");
    let deadline = Instant::now() + LIMIT;
    for port in [http_port, server_mesh, app_egress] {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            server.assert_alive("server");
            app.assert_alive("app");
            assert!(Instant::now() < deadline, "nothing listens on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    let first_serial = pem_serial(&cert_file);
    let plain_written = std::fs::metadata(&plain_file).unwrap().modified().unwrap();

    // A steady stream across several renewals of both leaves: zero failed requests.
    let started = Instant::now();
    let mut sent = 0;
    while started.elapsed() < STREAM {
        let resp = http_get(app_egress, &format!("/hello.txt?from=app&i={sent}"));
        assert!(
            ok(&resp),
            "request {sent} at {:?} failed: {resp:?}\napp log:\n{}\nserver log:\n{}",
            started.elapsed(),
            app.log(),
            server.log()
        );
        sent += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    for (what, p) in [("app", &app), ("server", &server)] {
        let renewals = p.log().matches("marble certificate renewed").count();
        assert!(
            renewals >= 2,
            "{what} renewed {renewals} times in {STREAM:?} with 6 s leaves; log:\n{}",
            p.log()
        );
    }
    let coordinator_log = std::fs::read_to_string(t.join("coordinator.log")).unwrap_or_default();
    assert!(
        coordinator_log
            .matches("marble certificate renewed")
            .count()
            >= 4,
        "{coordinator_log}"
    );
    assert!(sent > 50, "only {sent} requests in {STREAM:?}");

    // The file rendered from the certificate now holds a renewed one, written atomically at
    // 0600; the file without it was not touched.
    let now_serial = pem_serial(&cert_file);
    assert_ne!(
        now_serial, first_serial,
        "the certificate file was not replaced"
    );
    let renewed = renewed_serials(&server.log());
    assert!(
        renewed.contains(&now_serial),
        "the file's serial {now_serial} is not one the server renewed to {renewed:?}; log:\n{}",
        server.log()
    );
    assert!(
        server
            .log()
            .contains("replaced file with the renewed certificate"),
        "{}",
        server.log()
    );
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&cert_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "mode of the replaced file");
    assert_eq!(
        std::fs::metadata(&plain_file).unwrap().modified().unwrap(),
        plain_written,
        "a file without the certificate was rewritten"
    );
    assert_eq!(
        std::fs::read_to_string(&plain_file).unwrap(),
        "not renewed\n"
    );
    let leftovers: Vec<_> = std::fs::read_dir(cert_file.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().contains("quarry-tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

    // Revoke `app` by UUID.
    let app_uuid = std::fs::read_to_string(t.join("app.uuid")).unwrap();
    let o = quarry(&[
        "revoke",
        "--uuid",
        app_uuid.trim(),
        "--coordinator",
        &coord.client.to_string(),
        "--root-ca",
        root.to_str().unwrap(),
        "-c",
        crt.to_str().unwrap(),
        "-k",
        key_file.to_str().unwrap(),
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let revoked = Instant::now();
    let answer: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(answer["marbleType"], "app");
    assert!(answer["serials"].as_array().unwrap().len() >= 3, "{answer}");

    // Refused within one CRL interval (plus scheduling slack), and from then on.
    let mut first_refusal = None;
    while revoked.elapsed() < CRL_INTERVAL * 3 {
        if !ok(&http_get(app_egress, "/hello.txt?from=revoked")) {
            first_refusal = Some(revoked.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = first_refusal.unwrap_or_else(|| {
        panic!(
            "app was still served {:?} after its revocation\nserver log:\n{}",
            revoked.elapsed(),
            server.log()
        )
    });
    assert!(
        took <= CRL_INTERVAL + Duration::from_millis(1500),
        "revocation took {took:?}, more than one CRL interval ({CRL_INTERVAL:?})"
    );
    eprintln!("{sent} requests across renewals, all served; revocation effective after {took:?}");
    for i in 0..5 {
        let resp = http_get(app_egress, &format!("/hello.txt?from=revoked&n={i}"));
        assert!(!ok(&resp), "revoked app served again: {resp:?}");
    }
    assert!(
        server.log().contains("certificate revoked"),
        "the refusal is logged:\n{}",
        server.log()
    );
    // Its renewals are refused by the coordinator from now on (the next is due within ~4 s).
    let deadline = Instant::now() + Duration::from_secs(15);
    while !app.log().contains("is revoked") {
        assert!(
            Instant::now() < deadline,
            "app's renewal after revocation was not refused:\n{}",
            app.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(app.log().contains("certificate renewal failed"));
    server.assert_alive("server");
    app.assert_alive("app");
}
