//! The peer proxies, each as the same two-process mTLS hop as the Quarry sidecars: a client
//! side (plaintext in on loopback, TLS 1.3 out with the client certificate, the server's
//! certificate verified against the CA and the host name) and a server side (TLS 1.3 in,
//! client certificate required and verified against the CA, plaintext to the backend). Both
//! are L4 (TCP) proxies, limited to one worker where the software has the knob (the sidecar
//! runs a single-threaded runtime), with TLS session resumption off on both sides (the
//! sidecar never resumes: every connection is a full handshake).
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use anyhow::Context as _;

use crate::pki::{Pki, SERVER_NAME};
use crate::procs::{free_port, wait_listening, Proc};

/// Path of nginx' stream module (Debian package `libnginx-mod-stream`).
pub const NGINX_STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

/// A running two-process hop.
pub struct Hop {
    /// Display name.
    pub name: &'static str,
    /// Where the load generator connects (client side, plaintext).
    pub entry: SocketAddr,
    /// The server side's TLS port.
    pub mesh: SocketAddr,
    /// The client-side and server-side processes.
    pub procs: Vec<Proc>,
}

impl Hop {
    /// Process ids of both sides (top-level processes).
    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(Proc::pid).collect()
    }
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn finish(name: &'static str, entry: u16, mesh: u16, mut procs: Vec<Proc>) -> anyhow::Result<Hop> {
    {
        let mut refs: Vec<&mut Proc> = procs.iter_mut().collect();
        wait_listening(addr(mesh), &mut refs)?;
        wait_listening(addr(entry), &mut refs)?;
    }
    Ok(Hop {
        name,
        entry: addr(entry),
        mesh: addr(mesh),
        procs,
    })
}

/// stunnel4: two processes (`client = yes` and the server side).
pub fn stunnel(dir: &Path, pki: &Pki, backend: SocketAddr) -> anyhow::Result<Hop> {
    let (entry, mesh) = (free_port()?, free_port()?);
    let common = "foreground = yes\npid =\ndebug = err\nsyslog = no\nsocket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\n";
    let client = format!(
        "{common}[egress]\nclient = yes\naccept = 127.0.0.1:{entry}\nconnect = 127.0.0.1:{mesh}\n\
         cert = {}\nkey = {}\nCAfile = {}\nverifyChain = yes\ncheckHost = {SERVER_NAME}\n\
         sni = {SERVER_NAME}\nsslVersionMin = TLSv1.3\nsessionResume = no\n",
        pki.client.cert.display(),
        pki.client.key.display(),
        pki.ca.display()
    );
    let server = format!(
        "{common}[ingress]\naccept = 127.0.0.1:{mesh}\nconnect = {backend}\n\
         cert = {}\nkey = {}\nCAfile = {}\nrequireCert = yes\nverifyChain = yes\n\
         sslVersionMin = TLSv1.3\noptions = NO_TICKET\nsessionResume = no\n",
        pki.server.cert.display(),
        pki.server.key.display(),
        pki.ca.display()
    );
    let c = dir.join("stunnel-client.conf");
    let s = dir.join("stunnel-server.conf");
    std::fs::write(&c, client)?;
    std::fs::write(&s, server)?;
    let procs = vec![
        Proc::spawn("stunnel-server", Command::new("stunnel4").arg(&s), dir)?,
        Proc::spawn("stunnel-client", Command::new("stunnel4").arg(&c), dir)?,
    ];
    finish("stunnel", entry, mesh, procs)
}

/// HAProxy: two processes in `mode tcp`, `nbthread 1`.
pub fn haproxy(dir: &Path, pki: &Pki, backend: SocketAddr) -> anyhow::Result<Hop> {
    let (entry, mesh) = (free_port()?, free_port()?);
    let common = "global\n    nbthread 1\n    maxconn 4000\n    log stderr format raw local0 err\n\
                  defaults\n    mode tcp\n    log global\n    timeout connect 5s\n    timeout client 60s\n    timeout server 60s\n";
    let client = format!(
        "{common}frontend egress\n    bind 127.0.0.1:{entry}\n    default_backend mesh\n\
         backend mesh\n    server s1 127.0.0.1:{mesh} ssl crt {} ca-file {} verify required \
         verifyhost {SERVER_NAME} sni str({SERVER_NAME}) ssl-min-ver TLSv1.3 no-ssl-reuse\n",
        pki.client.combined.display(),
        pki.ca.display()
    );
    let server = format!(
        "{common}frontend ingress\n    bind 127.0.0.1:{mesh} ssl crt {} ca-file {} verify required \
         ssl-min-ver TLSv1.3 no-tls-tickets\n    default_backend service\n\
         backend service\n    server s1 {backend}\n",
        pki.server.combined.display(),
        pki.ca.display()
    );
    let c = dir.join("haproxy-client.cfg");
    let s = dir.join("haproxy-server.cfg");
    std::fs::write(&c, client)?;
    std::fs::write(&s, server)?;
    let procs = vec![
        Proc::spawn(
            "haproxy-server",
            Command::new("haproxy").arg("-db").arg("-f").arg(&s),
            dir,
        )?,
        Proc::spawn(
            "haproxy-client",
            Command::new("haproxy").arg("-db").arg("-f").arg(&c),
            dir,
        )?,
    ];
    finish("haproxy", entry, mesh, procs)
}

/// nginx: two instances of the stream module, `worker_processes 1` each.
pub fn nginx(dir: &Path, pki: &Pki, backend: SocketAddr) -> anyhow::Result<Hop> {
    let (entry, mesh) = (free_port()?, free_port()?);
    let prefix = dir.join("nginx");
    std::fs::create_dir_all(&prefix).context("nginx prefix")?;
    let head = |name: &str| {
        format!(
            "load_module {NGINX_STREAM_MODULE};\nworker_processes 1;\ndaemon off;\nuser root;\n\
             pid {p}/{name}.pid;\nerror_log {p}/{name}-error.log error;\n\
             events {{ worker_connections 4096; }}\n",
            p = prefix.display()
        )
    };
    let client = format!(
        "{}stream {{\n  server {{\n    listen 127.0.0.1:{entry};\n    tcp_nodelay on;\n    proxy_pass 127.0.0.1:{mesh};\n\
         proxy_ssl on;\n    proxy_ssl_protocols TLSv1.3;\n    proxy_ssl_certificate {};\n    proxy_ssl_certificate_key {};\n\
         proxy_ssl_trusted_certificate {};\n    proxy_ssl_verify on;\n    proxy_ssl_name {SERVER_NAME};\n\
         proxy_ssl_server_name on;\n    proxy_ssl_session_reuse off;\n  }}\n}}\n",
        head("client"),
        pki.client.cert.display(),
        pki.client.key.display(),
        pki.ca.display()
    );
    let server = format!(
        "{}stream {{\n  server {{\n    listen 127.0.0.1:{mesh} ssl;\n    tcp_nodelay on;\n    ssl_protocols TLSv1.3;\n\
         ssl_certificate {};\n    ssl_certificate_key {};\n    ssl_client_certificate {};\n    ssl_verify_client on;\n\
         ssl_session_cache off;\n    ssl_session_tickets off;\n    proxy_pass {backend};\n  }}\n}}\n",
        head("server"),
        pki.server.cert.display(),
        pki.server.key.display(),
        pki.ca.display()
    );
    let c = prefix.join("client.conf");
    let s = prefix.join("server.conf");
    std::fs::write(&c, client)?;
    std::fs::write(&s, server)?;
    let run = |conf: &Path, name: &str| -> anyhow::Result<Proc> {
        let mut cmd = Command::new("nginx");
        cmd.arg("-p")
            .arg(&prefix)
            .arg("-e")
            .arg(prefix.join(format!("{name}-startup.log")))
            .arg("-c")
            .arg(conf);
        Proc::spawn(&format!("nginx-{name}"), &mut cmd, dir)
    };
    let procs = vec![run(&s, "server")?, run(&c, "client")?];
    finish("nginx", entry, mesh, procs)
}

/// One HTTP/1.0 GET over TLS 1.3 to `mesh` with `openssl s_client`, with the client
/// certificate or without any; returns what came back.
fn tls_get(
    mesh: SocketAddr,
    client: Option<&crate::pki::Leaf>,
    ca: &Path,
) -> anyhow::Result<String> {
    use std::io::Write as _;
    let mut cmd = Command::new("timeout");
    cmd.args(["10", "openssl", "s_client", "-tls1_3", "-quiet", "-ign_eof"])
        .args(["-connect", &mesh.to_string(), "-servername", SERVER_NAME])
        .arg("-CAfile")
        .arg(ca);
    if let Some(leaf) = client {
        cmd.arg("-cert").arg(&leaf.cert).arg("-key").arg(&leaf.key);
    }
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("running openssl s_client")?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n");
    }
    let out = child.wait_with_output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Checks that the server side of a hop serves a client with the client certificate and
/// refuses TLS without one (so every peer really is an mTLS hop). `pki` is `None` for the
/// Quarry hop, whose client certificates only the coordinator issues: only the refusal is
/// checked there.
pub fn check_mtls(
    name: &str,
    mesh: SocketAddr,
    pki: Option<&Pki>,
    ca: &Path,
) -> anyhow::Result<()> {
    if let Some(pki) = pki {
        let ok = tls_get(mesh, Some(&pki.client), ca)?;
        if !ok.contains(" 200 ") {
            anyhow::bail!(
                "{name}: a TLS 1.3 client with the client certificate was not served: {ok:?}"
            );
        }
    }
    let refused = tls_get(mesh, None, ca)?;
    if refused.contains(" 200 ") {
        anyhow::bail!("{name}: a TLS client without a client certificate was served");
    }
    Ok(())
}
