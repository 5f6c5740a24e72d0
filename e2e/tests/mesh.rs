//! The transparent mesh end to end (issue 6), with the real binaries on loopback: a real
//! HTTP server (`python3 -m http.server` on 127.0.0.1) wrapped by `marble-sidecar run` behind
//! an ingress that allows only type `app`; an `app` marble (`marble-sidecar proxy`) reaching it
//! through its egress port; an `intruder` marble refused; plain TCP and TLS without a client
//! certificate to the mesh port refused; egress to a valid mesh server of the wrong type
//! refused. The server's own request log proves refused clients never reached it.
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use quarry_e2e::{bin, run, Coordinator};

const LIMIT: Duration = Duration::from_secs(60);
const PYTHON: &str = "/usr/bin/python3";

/// A long-running sidecar process, stopped (SIGTERM, then SIGKILL) on drop.
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

struct Env<'a> {
    coordinator: String,
    platform: &'a Path,
    root: &'a Path,
    dir: &'a Path,
}

impl Env<'_> {
    fn sidecar(&self, mode: &str, marble_type: &str) -> Command {
        let mut c = Command::new(bin("marble-sidecar"));
        c.arg(mode)
            .args(["--coordinator", &self.coordinator])
            .args(["--marble-type", marble_type])
            .arg("--uuid-file")
            .arg(self.dir.join(format!("{marble_type}.uuid")))
            .args(["--tee", "simulated"])
            .arg("--sim-platform")
            .arg(self.platform)
            .arg("--coordinator-root-ca")
            .arg(self.root)
            .env_remove("QUARRY_MARBLE_TYPE")
            .env_remove("EDG_MARBLE_TYPE")
            .env("RUST_LOG", "info");
        c
    }

    fn spawn(&self, mut c: Command, name: &str) -> Running {
        let stderr = self.dir.join(format!("{name}.log"));
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

    /// `marble-sidecar proxy` for `marble_type`.
    fn proxy(&self, marble_type: &str) -> Running {
        let mut c = self.sidecar("proxy", marble_type);
        c.args(["--sim-measure", "/bin/sh"]);
        self.spawn(c, marble_type)
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_listening(port: u16, procs: &mut [(&str, &mut Running)]) {
    let deadline = Instant::now() + LIMIT;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        for (what, p) in procs.iter_mut() {
            p.assert_alive(what);
        }
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One HTTP/1.0 request over plain TCP to `port`; returns the whole response ("" when the
/// connection was closed or reset without one).
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

#[test]
fn mesh_end_to_end() {
    assert!(
        Path::new(PYTHON).exists(),
        "{PYTHON} is needed to run the real HTTP server of this test"
    );
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let platform = t.join("sim");
    let o = run(
        Command::new(bin("quarry")).args(["sim", "init", platform.to_str().unwrap()]),
        LIMIT,
    )
    .unwrap();
    assert!(o.status.success());
    let coord = Coordinator::start(&t.join("data"), &platform, &t.join("coordinator.log")).unwrap();
    let root = t.join("root.pem");
    let o = run(
        Command::new(bin("quarry")).args([
            "certificate",
            "root",
            "--coordinator",
            &coord.client.to_string(),
            "--insecure",
            "-o",
            root.to_str().unwrap(),
        ]),
        LIMIT,
    )
    .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let http_port = free_port();
    let server_mesh = free_port();
    let fake_mesh = free_port();
    let app_egress = free_port();
    let app_wrong_egress = free_port();
    let intruder_egress = free_port();
    // Any simulated marble (zero SignerID, as the sidecar claims by default).
    let package = serde_json::json!({"TEE": "simulated", "SignerID": "00".repeat(32), "ProductID": 0, "SecurityVersion": 0});
    let manifest = serde_json::json!({
        "Packages": {"any": package},
        "Marbles": {
            "server": {"Package": "any", "Mesh": {"Inbound": [
                {"Port": server_mesh, "Forward": format!("127.0.0.1:{http_port}"), "AllowFrom": ["app"]}
            ]}},
            "fake": {"Package": "any", "Mesh": {"Inbound": [
                {"Port": fake_mesh, "Forward": format!("127.0.0.1:{http_port}")}
            ]}},
            "app": {"Package": "any", "Mesh": {"Outbound": [
                {"Listen": format!("127.0.0.1:{app_egress}"), "Marble": "server", "Address": format!("localhost:{server_mesh}")},
                {"Listen": format!("127.0.0.1:{app_wrong_egress}"), "Marble": "server", "Address": format!("127.0.0.1:{fake_mesh}")}
            ]}},
            "intruder": {"Package": "any", "Mesh": {"Outbound": [
                {"Listen": format!("127.0.0.1:{intruder_egress}"), "Marble": "server", "Address": format!("localhost:{server_mesh}")}
            ]}}
        }
    });
    let manifest_path = t.join("manifest.json");
    std::fs::write(&manifest_path, manifest.to_string()).unwrap();
    let o = run(
        Command::new(bin("quarry")).args([
            "manifest",
            "set",
            manifest_path.to_str().unwrap(),
            "--coordinator",
            &coord.client.to_string(),
            "--root-ca",
            root.to_str().unwrap(),
        ]),
        LIMIT,
    )
    .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let env = Env {
        coordinator: coord.mesh.to_string(),
        platform: &platform,
        root: &root,
        dir: t,
    };
    let www = t.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("hello.txt"), "hello through the mesh\n").unwrap();
    // The real server, wrapped by `run`; its request log goes to the sidecar's stderr.
    let mut c = env.sidecar("run", "server");
    c.arg("--")
        .arg(PYTHON)
        .args(["-m", "http.server", "--bind", "127.0.0.1", "--directory"])
        .arg(&www)
        .arg(http_port.to_string());
    let mut server = env.spawn(c, "server");
    let mut fake = env.proxy("fake");
    let mut app = env.proxy("app");
    let mut intruder = env.proxy("intruder");
    for port in [
        http_port,
        server_mesh,
        fake_mesh,
        app_egress,
        app_wrong_egress,
        intruder_egress,
    ] {
        wait_listening(
            port,
            &mut [
                ("server", &mut server),
                ("fake", &mut fake),
                ("app", &mut app),
                ("intruder", &mut intruder),
            ],
        );
    }

    // The allowed path, many times: no failures.
    for i in 0..20 {
        let resp = http_get(app_egress, &format!("/hello.txt?from=app&i={i}"));
        assert!(
            resp.starts_with("HTTP/1.0 200") && resp.ends_with("hello through the mesh\n"),
            "request {i} through app's egress failed: {resp:?}\napp log:\n{}\nserver log:\n{}",
            app.log(),
            server.log()
        );
    }

    // An intruder marble: refused by AllowFrom, gets nothing.
    let resp = http_get(intruder_egress, "/hello.txt?from=intruder");
    assert_eq!(resp, "", "the intruder got a response");
    // Plain TCP to the mesh port.
    let resp = http_get(server_mesh, "/hello.txt?from=plain");
    assert!(!resp.contains("200"), "plain TCP got through: {resp:?}");
    // TLS without a client certificate.
    let o = run(
        Command::new("sh").arg("-c").arg(format!(
            "printf 'GET /hello.txt?from=nocert HTTP/1.0\\r\\n\\r\\n' | openssl s_client -connect 127.0.0.1:{server_mesh} -tls1_3 -quiet 2>&1"
        )),
        LIMIT,
    )
    .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        !text.contains("200 OK"),
        "TLS without a client cert got through: {text}"
    );
    // Egress to a valid mesh server of the wrong type: nothing is sent to it.
    let resp = http_get(app_wrong_egress, "/hello.txt?from=wrongtype");
    assert_eq!(resp, "", "egress accepted a server of the wrong type");

    // The server saw the allowed requests and none of the refused ones.
    std::thread::sleep(Duration::from_millis(200));
    let served = server.log();
    assert_eq!(served.matches("from=app").count(), 20, "{served}");
    for refused in [
        "from=intruder",
        "from=plain",
        "from=nocert",
        "from=wrongtype",
    ] {
        assert!(
            !served.contains(refused),
            "{refused} reached the server:\n{served}"
        );
    }
    assert!(
        server.log().contains("peer refused by AllowFrom"),
        "the refusal is logged:\n{}",
        server.log()
    );
    assert!(
        app.log().contains("server refused"),
        "the wrong-type server is logged:\n{}",
        app.log()
    );
    for (what, p) in [
        ("server", &mut server),
        ("app", &mut app),
        ("intruder", &mut intruder),
    ] {
        p.assert_alive(what);
    }
}

/// `AllowFrom: ["*external*"]` with a `Cert` secret: an external TLS 1.3 client without a
/// client certificate reaches the service, authenticating the port by the certificate secret
/// (which chains to the deployment root and names the secret's DNS name); an egress expecting
/// the marble refuses the port (the secret is no marble identity), and plain TCP never
/// reaches the service.
#[test]
fn external_clients_reach_an_external_port_without_a_client_certificate() {
    assert!(
        Path::new(PYTHON).exists(),
        "{PYTHON} is needed to run the real HTTP server of this test"
    );
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let platform = t.join("sim");
    let o = run(
        Command::new(bin("quarry")).args(["sim", "init", platform.to_str().unwrap()]),
        LIMIT,
    )
    .unwrap();
    assert!(o.status.success());
    let coord = Coordinator::start(&t.join("data"), &platform, &t.join("coordinator.log")).unwrap();
    let root = t.join("root.pem");
    let o = run(
        Command::new(bin("quarry")).args([
            "certificate",
            "root",
            "--coordinator",
            &coord.client.to_string(),
            "--insecure",
            "-o",
            root.to_str().unwrap(),
        ]),
        LIMIT,
    )
    .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let http_port = free_port();
    let web_port = free_port();
    let app_egress = free_port();
    let package = serde_json::json!({"TEE": "simulated", "SignerID": "00".repeat(32), "ProductID": 0, "SecurityVersion": 0});
    let manifest = serde_json::json!({
        "Packages": {"any": package},
        "Marbles": {
            "web": {"Package": "any", "Mesh": {"Inbound": [
                {"Port": web_port, "Forward": format!("127.0.0.1:{http_port}"),
                 "AllowFrom": ["*external*"], "Cert": "web_cert"}
            ]}},
            "app": {"Package": "any", "Mesh": {"Outbound": [
                {"Listen": format!("127.0.0.1:{app_egress}"), "Marble": "web", "Address": format!("127.0.0.1:{web_port}")}
            ]}}
        },
        "Secrets": {"web_cert": {"Type": "cert-ecdsa", "Size": 256, "Shared": true,
                                 "Cert": {"DNSNames": ["web.example"], "Subject": {"CommonName": "web.example"}}}}
    });
    let manifest_path = t.join("manifest.json");
    std::fs::write(&manifest_path, manifest.to_string()).unwrap();
    let o = run(
        Command::new(bin("quarry")).args([
            "manifest",
            "set",
            manifest_path.to_str().unwrap(),
            "--coordinator",
            &coord.client.to_string(),
            "--root-ca",
            root.to_str().unwrap(),
        ]),
        LIMIT,
    )
    .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let env = Env {
        coordinator: coord.mesh.to_string(),
        platform: &platform,
        root: &root,
        dir: t,
    };
    let www = t.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("hello.txt"), "hello, outside world\n").unwrap();
    let mut c = env.sidecar("run", "web");
    c.arg("--")
        .arg(PYTHON)
        .args(["-m", "http.server", "--bind", "127.0.0.1", "--directory"])
        .arg(&www)
        .arg(http_port.to_string());
    let mut web = env.spawn(c, "web");
    let mut app = env.proxy("app");
    for port in [http_port, web_port, app_egress] {
        wait_listening(port, &mut [("web", &mut web), ("app", &mut app)]);
    }

    // An external client: TLS 1.3, no client certificate, the port's certificate verified
    // against the deployment root and the secret's DNS name.
    let o = run(
        Command::new("sh").arg("-c").arg(format!(
            "printf 'GET /hello.txt?from=external HTTP/1.0\\r\\n\\r\\n' | openssl s_client -connect 127.0.0.1:{web_port} -tls1_3 \
             -CAfile '{}' -verify_return_error -verify_hostname web.example -servername web.example -ign_eof 2>&1",
            root.display()
        )),
        LIMIT,
    )
    .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("Verify return code: 0 (ok)")
            && text.contains("200 OK")
            && text.contains("hello, outside world"),
        "the external client was not served over a verified TLS connection:\n{text}\nweb log:\n{}",
        web.log()
    );
    assert!(
        text.contains("CN = web.example") || text.contains("CN=web.example"),
        "the port did not serve the certificate secret:\n{text}"
    );
    // An egress expecting marble `web` refuses this port: the certificate secret carries no
    // marble identity (an external port is for clients outside the mesh).
    let resp = http_get(app_egress, "/hello.txt?from=app");
    assert_eq!(
        resp, "",
        "egress accepted the certificate secret as a marble identity"
    );
    // Plain TCP gets nothing from the service.
    let resp = http_get(web_port, "/hello.txt?from=plain");
    assert!(!resp.contains("200"), "plain TCP got through: {resp:?}");

    std::thread::sleep(Duration::from_millis(200));
    let served = web.log();
    assert_eq!(served.matches("from=external").count(), 1, "{served}");
    for refused in ["from=plain", "from=app"] {
        assert!(
            !served.contains(refused),
            "{refused} reached the server:\n{served}"
        );
    }
    web.assert_alive("web");
    app.assert_alive("app");
}
