//! The SPIFFE Workload API end to end, with the real binaries on loopback: a simulated
//! `quarry-coordinator` with a manifest whose marble `svc` has leaves valid for 9 s
//! (`CertValidFor`, so its sidecar renews after ~6 s) in the trust domain
//! `e2e-workload.quarry.test` (`Config.TrustDomain`), and `marble-sidecar proxy --workload-api
//! unix://…` for it. Everything the test believes is checked with code that is not Quarry's:
//! rust-spiffe (`spiffe` crate) fetches the X.509-SVID and the bundles and follows the stream,
//! rustls-webpki validates the chain against the fetched bundle (and refuses it against a root
//! that looks the same but has another key), x509-parser reads SPIFFE IDs and serials, and the
//! coordinator's own log says which serials it issued. A raw gRPC client, with message types
//! written here from the Workload API specification, sends what rust-spiffe never would: a
//! request without the `workload.spiffe.io` header.
use std::collections::HashMap;
use std::os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use quarry_e2e::{bin, run, Coordinator};
use rustls_pki_types::{CertificateDer, UnixTime};
use tokio_stream::StreamExt as _;

/// Bound on every command and on waiting for the sidecar's socket.
const LIMIT: Duration = Duration::from_secs(60);
/// The manifest's `Config.TrustDomain` (not the default, so the ID is the coordinator's).
const TRUST_DOMAIN: &str = "e2e-workload.quarry.test";
/// The marble's `CertValidFor`: the sidecar renews at 2/3 of it, leaving 4 s of slack before
/// the first leaf's notAfter for the renewed SVID to reach the stream on a loaded machine.
const CERT_VALID_FOR: &str = "12s";
const MARBLE: &str = "svc";

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

    /// SIGTERM, then SIGKILL after 10 s; true when it stopped on SIGTERM.
    fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

fn quarry(args: &[&str]) -> std::process::Output {
    run(Command::new(bin("quarry")).args(args), LIMIT).unwrap()
}

/// How the sidecar runs.
enum How {
    /// `marble-sidecar proxy --workload-api`, the socket in a private directory of the test.
    Proxy,
    /// As the injector wires a pod with `quarry/workload-api: "true"`: `marble-sidecar run
    /// --settings-from-args … --workload-api unix://<open dir>/agent/agent.sock -- SERVICE` with
    /// `SPIFFE_ENDPOINT_SOCKET` set to the same address, where the open directory is 0777
    /// like a Kubernetes emptyDir and `agent` does not exist yet. The service writes
    /// `present` or `absent` (is the socket there when it starts?) and the address it was
    /// given to `service.out`, then sleeps.
    RunAsInjected,
}

/// A coordinator with the manifest set, and one sidecar serving the Workload API.
struct Deployment {
    tmp: tempfile::TempDir,
    coord: Coordinator,
    /// The deployment root CA (DER), as `quarry certificate root` fetched it.
    root_der: Vec<u8>,
    sidecar: Running,
    socket: PathBuf,
}

impl Deployment {
    /// Starts the coordinator, sets the manifest, starts the sidecar with `--workload-api`
    /// and waits (bounded) until the socket answers.
    fn start(how: How) -> Deployment {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path();
        let platform = t.join("sim");
        let o = quarry(&["sim", "init", platform.to_str().unwrap()]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let coord =
            Coordinator::start(&t.join("data"), &platform, &t.join("coordinator.log")).unwrap();
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
        let root_der = pem::parse(std::fs::read_to_string(&root).unwrap().trim())
            .unwrap()
            .contents()
            .to_vec();

        let package = serde_json::json!({"TEE": "simulated", "SignerID": "00".repeat(32), "ProductID": 0, "SecurityVersion": 0});
        // No Mesh section: the sidecar serves only the Workload API (and renews).
        let manifest = serde_json::json!({
            "Packages": {"any": package},
            "Marbles": {MARBLE: {"Package": "any", "CertValidFor": CERT_VALID_FOR}},
            "Config": {"TrustDomain": TRUST_DOMAIN}
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

        let socket = match how {
            // The socket's directory must be the sidecar's user's and closed to others.
            How::Proxy => {
                let dir = t.join("agent");
                std::fs::DirBuilder::new().mode(0o700).create(&dir).unwrap();
                dir.join("agent.sock")
            }
            // The sidecar creates `agent` itself, inside the open directory.
            How::RunAsInjected => {
                let open = t.join("spiffe");
                std::fs::create_dir(&open).unwrap();
                std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
                open.join("agent").join("agent.sock")
            }
        };
        let address = format!("unix://{}", socket.display());
        let stderr = t.join("sidecar.log");
        let mut command = Command::new(bin("marble-sidecar"));
        match how {
            How::Proxy => command.args(["proxy", "--sim-measure", "/bin/sh"]),
            // The injector's command line puts every setting behind --settings-from-args.
            How::RunAsInjected => command.args(["run", "--settings-from-args"]),
        };
        command
            .args(["--coordinator", &coord.mesh.to_string()])
            .args(["--marble-type", MARBLE])
            .arg("--uuid-file")
            .arg(t.join("svc.uuid"))
            .args(["--tee", "simulated"])
            .arg("--sim-platform")
            .arg(&platform)
            .arg("--coordinator-root-ca")
            .arg(&root)
            .args(["--workload-api", &address])
            .env_remove("QUARRY_MARBLE_TYPE")
            .env_remove("EDG_MARBLE_TYPE")
            .env_remove("QUARRY_WORKLOAD_API")
            .env("RUST_LOG", "info");
        if let How::RunAsInjected = how {
            // The service: is the socket there when it starts, under the address it is given?
            const SERVICE: &str = r#"p="${SPIFFE_ENDPOINT_SOCKET#unix://}"
if [ -S "$p" ]; then s=present; else s=absent; fi
printf '%s %s\n' "$s" "$SPIFFE_ENDPOINT_SOCKET" > "$1.tmp" && mv "$1.tmp" "$1"
exec sleep 300"#;
            command
                .env("SPIFFE_ENDPOINT_SOCKET", &address)
                .args(["--", "/bin/sh", "-c", SERVICE, "service"])
                .arg(t.join("service.out"));
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let mut sidecar = Running {
            child: Some(child),
            stderr,
        };
        let deadline = Instant::now() + LIMIT;
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            sidecar.assert_alive("marble-sidecar");
            assert!(
                Instant::now() < deadline,
                "the sidecar did not serve {} within {LIMIT:?}; log:\n{}",
                socket.display(),
                sidecar.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Deployment {
            tmp,
            coord,
            root_der,
            sidecar,
            socket,
        }
    }

    /// The marble's UUID, as the sidecar kept it from its activation.
    fn uuid(&self) -> String {
        std::fs::read_to_string(self.tmp.path().join("svc.uuid"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// The SPIFFE ID the coordinator issues for this marble (docs/spiffe.md).
    fn expected_id(&self) -> String {
        format!("spiffe://{TRUST_DOMAIN}/marble/{MARBLE}/{}", self.uuid())
    }

    /// The coordinator's JSON log lines with `message`.
    fn coordinator_events(&self, message: &str) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.coord.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|v| v["fields"].clone())
            .filter(|f| f["message"] == message)
            .collect()
    }
}

/// The URI SANs of a certificate.
fn uri_sans(der: &[u8]) -> Vec<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    let san = cert
        .subject_alternative_name()
        .unwrap()
        .expect("an X.509-SVID has a subjectAltName");
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        })
        .collect()
}

/// Serial (hex, as the coordinator logs it) and notAfter of a certificate.
fn serial_and_expiry(der: &[u8]) -> (String, SystemTime) {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    let not_after = UNIX_EPOCH + Duration::from_secs(cert.validity().not_after.timestamp() as u64);
    (hex::encode(cert.raw_serial()), not_after)
}

/// The public key (uncompressed point) in a certificate.
fn leaf_public_key(der: &[u8]) -> Vec<u8> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    cert.public_key().subject_public_key.data.to_vec()
}

/// The public key of a PKCS#8 private key.
fn public_key_of(pkcs8: &[u8]) -> Vec<u8> {
    rcgen::KeyPair::try_from(pkcs8)
        .expect("the SVID key is an unencrypted PKCS#8 key")
        .public_key_raw()
        .to_vec()
}

/// rustls-webpki's path validation of `chain` (leaf first) against `bundle`, for TLS client
/// and TLS server use, at the current time.
fn validates(chain: &[&[u8]], bundle: &[&[u8]]) -> Result<(), webpki::Error> {
    let anchors = bundle
        .iter()
        .map(|der| {
            webpki::anchor_from_trusted_cert(&CertificateDer::from(*der)).map(|a| a.to_owned())
        })
        .collect::<Result<Vec<_>, _>>()?;
    let leaf = CertificateDer::from(chain[0]);
    let leaf = webpki::EndEntityCert::try_from(&leaf)?;
    let intermediates: Vec<CertificateDer<'_>> = chain[1..]
        .iter()
        .map(|c| CertificateDer::from(*c))
        .collect();
    for usage in [
        webpki::KeyUsage::client_auth(),
        webpki::KeyUsage::server_auth(),
    ] {
        leaf.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &intermediates,
            UnixTime::now(),
            usage,
            None,
            None,
        )?;
    }
    Ok(())
}

/// A self-signed CA with the same subject as `root_der` but another key: what anyone can make
/// without the deployment's root key.
fn look_alike_root(root_der: &[u8]) -> Vec<u8> {
    let (_, root) = x509_parser::parse_x509_certificate(root_der).unwrap();
    let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
    for attr in root.subject().iter_attributes() {
        let oid: Vec<u64> = attr.attr_type().iter().unwrap().collect();
        params.distinguished_name.push(
            rcgen::DnType::from_oid(&oid),
            attr.as_str().unwrap().to_string(),
        );
    }
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let der = params.self_signed(&key).unwrap().der().to_vec();
    let (_, made) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert_eq!(
        made.subject(),
        root.subject(),
        "the look-alike has the root's name"
    );
    der
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_spiffe_gets_the_coordinators_svid_from_the_real_sidecar_and_sees_it_rotate() {
    let mut d = Deployment::start(How::Proxy);
    let meta = std::fs::symlink_metadata(&d.socket).unwrap();
    assert!(meta.file_type().is_socket(), "{meta:?}");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "socket mode");

    let client = spiffe::WorkloadApiClient::connect_to(format!("unix:{}", d.socket.display()))
        .await
        .unwrap();
    let svid = tokio::time::timeout(LIMIT, client.fetch_x509_svid())
        .await
        .expect("an SVID within the time bound")
        .unwrap();
    let expected = d.expected_id();
    assert_eq!(svid.spiffe_id().to_string(), expected);
    assert_eq!(
        d.coordinator_events("marble activated")
            .iter()
            .filter(|f| f["uuid"] == d.uuid() && f["marble_type"] == MARBLE)
            .count(),
        1,
        "the coordinator activated this marble once"
    );
    let chain: Vec<&[u8]> = svid.cert_chain().iter().map(|c| c.as_bytes()).collect();
    assert_eq!(chain.len(), 2, "leaf and mesh CA");
    assert_eq!(uri_sans(chain[0]), vec![expected.clone()]);
    assert_eq!(
        public_key_of(svid.private_key().as_bytes()),
        leaf_public_key(chain[0]),
        "the key is the leaf's"
    );

    // The bundle is the deployment root, and the chain validates against it.
    let bundles = tokio::time::timeout(LIMIT, client.fetch_x509_bundles())
        .await
        .expect("bundles within the time bound")
        .unwrap();
    let td = spiffe::TrustDomain::new(TRUST_DOMAIN).unwrap();
    let bundle = bundles
        .get(&td)
        .expect("a bundle for the manifest's trust domain");
    let anchors: Vec<&[u8]> = bundle.authorities().iter().map(|c| c.as_bytes()).collect();
    assert_eq!(anchors, vec![d.root_der.as_slice()], "bundle = root CA");
    validates(&chain, &anchors).expect("the SVID chains to the fetched bundle");
    // ... and not to another root, even one with the same name and extensions.
    let look_alike = look_alike_root(&d.root_der);
    let refused = validates(&chain, &[look_alike.as_slice()]);
    assert!(
        refused.is_err(),
        "a look-alike root with another key was accepted"
    );

    // Rotation: the open stream delivers a renewed SVID before the first one's notAfter.
    let mut stream = client.stream_x509_svids().await.unwrap();
    let first = tokio::time::timeout(LIMIT, stream.next())
        .await
        .expect("the stream's first SVID")
        .unwrap()
        .unwrap();
    let (first_serial, first_expiry) = serial_and_expiry(first.leaf().as_bytes());
    let left = first_expiry
        .duration_since(SystemTime::now())
        .expect("the first SVID is still valid");
    let second = tokio::time::timeout(left, stream.next())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no renewed SVID on the open stream before the first one's notAfter; sidecar log:\n{}",
                d.sidecar.log()
            )
        })
        .expect("the stream stays open")
        .unwrap();
    assert!(SystemTime::now() < first_expiry);
    let (second_serial, second_expiry) = serial_and_expiry(second.leaf().as_bytes());
    assert_ne!(second_serial, first_serial, "a new certificate");
    assert!(second_expiry >= first_expiry);
    assert_eq!(second.spiffe_id().to_string(), expected);
    let second_chain: Vec<&[u8]> = second.cert_chain().iter().map(|c| c.as_bytes()).collect();
    assert_eq!(uri_sans(second_chain[0]), vec![expected.clone()]);
    validates(&second_chain, &anchors).expect("the renewed SVID chains to the bundle");
    assert!(validates(&second_chain, &[look_alike.as_slice()]).is_err());
    assert_eq!(
        public_key_of(second.private_key().as_bytes()),
        leaf_public_key(second_chain[0])
    );
    assert_eq!(
        leaf_public_key(second_chain[0]),
        leaf_public_key(chain[0]),
        "renewal keeps the marble's key"
    );
    // The coordinator issued exactly this renewal, for this marble, replacing the first leaf.
    // It logs before it answers, so the line is there; the bound only covers file buffering.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let issued = d
            .coordinator_events("marble certificate renewed")
            .iter()
            .any(|f| {
                f["uuid"] == d.uuid()
                    && f["old_serial"] == first_serial.as_str()
                    && f["new_serial"] == second_serial.as_str()
            });
        if issued {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the coordinator did not log renewing {first_serial} to {second_serial} for {}; log:\n{}",
            d.uuid(),
            std::fs::read_to_string(&d.coord.log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The sidecar removes its socket when it stops.
    d.sidecar.assert_alive("marble-sidecar");
    drop(stream);
    drop(client);
    assert!(d.sidecar.stop(), "the sidecar stops on SIGTERM");
    assert!(
        !d.socket.exists(),
        "socket left behind; log:\n{}",
        d.sidecar.log()
    );
}

// The Workload API messages this test sends and reads, from the SPIFFE Workload API
// specification's workload.proto (field numbers as there), not from Quarry's code.

#[derive(Clone, PartialEq, prost::Message)]
struct X509SvidRequest {}

#[derive(Clone, PartialEq, prost::Message)]
struct X509SvidResponse {
    #[prost(message, repeated, tag = "1")]
    svids: Vec<X509Svid>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct X509Svid {
    #[prost(string, tag = "1")]
    spiffe_id: String,
    #[prost(bytes = "vec", tag = "2")]
    x509_svid: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct X509BundlesRequest {}

#[derive(Clone, PartialEq, prost::Message)]
struct X509BundlesResponse {
    #[prost(map = "string, bytes", tag = "2")]
    bundles: HashMap<String, Vec<u8>>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct JwtSvidRequest {
    #[prost(string, repeated, tag = "1")]
    audience: Vec<String>,
    #[prost(string, tag = "2")]
    spiffe_id: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct JwtSvidResponse {}

/// A raw gRPC client over the Unix socket, adding nothing rust-spiffe would.
async fn raw_client(socket: &Path) -> tonic::client::Grpc<tonic::transport::Channel> {
    let socket = socket.to_path_buf();
    let channel = tonic::transport::Endpoint::from_static("http://workload.invalid")
        .connect_with_connector(tower::service_fn(move |_| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .unwrap();
    tonic::client::Grpc::new(channel)
}

fn request<T>(message: T, header: bool) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(LIMIT);
    if header {
        request
            .metadata_mut()
            .insert("workload.spiffe.io", "true".parse().unwrap());
    }
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_sidecar_refuses_requests_without_the_workload_header() {
    use tonic::codegen::http::uri::PathAndQuery;
    let mut d = Deployment::start(How::Proxy);
    let mut grpc = raw_client(&d.socket).await;

    let svid_path = PathAndQuery::from_static("/SpiffeWorkloadAPI/FetchX509SVID");
    let svid_codec = || tonic_prost::ProstCodec::<X509SvidRequest, X509SvidResponse>::default();
    grpc.ready().await.unwrap();
    let refused = grpc
        .server_streaming(
            request(X509SvidRequest {}, false),
            svid_path.clone(),
            svid_codec(),
        )
        .await
        .expect_err("FetchX509SVID without the workload.spiffe.io header");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");

    grpc.ready().await.unwrap();
    let refused = grpc
        .server_streaming(
            request(X509BundlesRequest {}, false),
            PathAndQuery::from_static("/SpiffeWorkloadAPI/FetchX509Bundles"),
            tonic_prost::ProstCodec::<X509BundlesRequest, X509BundlesResponse>::default(),
        )
        .await
        .expect_err("FetchX509Bundles without the workload.spiffe.io header");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");

    // The same request with the header is answered on the same connection: the refusal was
    // the header's, and the answer is the coordinator's SVID for this marble.
    grpc.ready().await.unwrap();
    let mut stream = grpc
        .server_streaming(request(X509SvidRequest {}, true), svid_path, svid_codec())
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(LIMIT, stream.message())
        .await
        .expect("an answer within the time bound")
        .unwrap()
        .expect("one X509SVIDResponse");
    assert_eq!(first.svids.len(), 1);
    assert_eq!(first.svids[0].spiffe_id, d.expected_id());
    // x509_svid is the chain's DER certificates one after the other, the leaf first.
    let chain = &first.svids[0].x509_svid;
    let (rest, _) = x509_parser::parse_x509_certificate(chain).unwrap();
    let leaf = &chain[..chain.len() - rest.len()];
    assert_eq!(uri_sans(leaf), vec![d.expected_id()]);

    // Quarry issues no JWT-SVIDs: an honest UNIMPLEMENTED, not an empty answer.
    grpc.ready().await.unwrap();
    let jwt = grpc
        .unary(
            request(
                JwtSvidRequest {
                    audience: vec!["db".into()],
                    spiffe_id: String::new(),
                },
                true,
            ),
            PathAndQuery::from_static("/SpiffeWorkloadAPI/FetchJWTSVID"),
            tonic_prost::ProstCodec::<JwtSvidRequest, JwtSvidResponse>::default(),
        )
        .await
        .expect_err("FetchJWTSVID");
    assert_eq!(jwt.code(), tonic::Code::Unimplemented, "{jwt:?}");
    d.sidecar.assert_alive("marble-sidecar");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_wired_as_the_injector_does_serves_the_service_below_an_open_directory() {
    let mut d = Deployment::start(How::RunAsInjected);
    let address = format!("unix://{}", d.socket.display());
    // The service saw the socket when it started, at the address in SPIFFE_ENDPOINT_SOCKET.
    let out = d.tmp.path().join("service.out");
    let deadline = Instant::now() + LIMIT;
    let seen = loop {
        if let Ok(text) = std::fs::read_to_string(&out) {
            break text;
        }
        d.sidecar.assert_alive("marble-sidecar");
        assert!(
            Instant::now() < deadline,
            "the service did not start within {LIMIT:?}; log:\n{}",
            d.sidecar.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(seen, format!("present {address}\n"));

    // The open (emptyDir-like) directory stays as it was; the sidecar's own one is private.
    let dir = d.socket.parent().unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(dir.parent().unwrap()), 0o777);
    assert_eq!(mode(dir), 0o700, "the socket's directory");
    let meta = std::fs::symlink_metadata(&d.socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "socket mode");

    // rust-spiffe's long-running source, at the address the service was given.
    let source = tokio::time::timeout(
        LIMIT,
        spiffe::X509Source::builder().endpoint(&address).build(),
    )
    .await
    .expect("an X509Source within the time bound")
    .unwrap();
    let svid = source.svid().unwrap();
    assert_eq!(svid.spiffe_id().to_string(), d.expected_id());
    let chain: Vec<&[u8]> = svid.cert_chain().iter().map(|c| c.as_bytes()).collect();
    validates(&chain, &[d.root_der.as_slice()]).expect("the SVID chains to the root");
    source.shutdown().await;
    d.sidecar.assert_alive("marble-sidecar");
}
