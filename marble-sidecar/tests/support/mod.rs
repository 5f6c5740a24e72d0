//! A tiny in-process mesh API over real TLS 1.3 (rcgen certificates, client certificate
//! required, any client certificate accepted as the coordinator does) that checks the
//! evidence binding like the coordinator and answers as a test asks. Its leaves are shaped
//! like the coordinator's X.509-SVIDs (one SPIFFE URI SAN, cA=false, digitalSignature only,
//! random serial, issued by a mesh CA that the root CA signed), and it renews them.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use quarry_api::http::{
    ActivateRequest, ActivateResponse, JSend, NonceResponse, Parameters, RenewRequest,
    RenewResponse, Value,
};
use quarry_attestation::simulated::{SimIdentity, SimPlatform, SimProvider, SimVerifier};
use quarry_attestation::Verifier as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

/// Path of the nonce endpoint.
pub const NONCE_PATH: &str = "/api/v2/activate/nonce";
/// Path of the activation endpoint.
pub const ACTIVATE_PATH: &str = "/api/v2/activate";
/// Path of the renewal endpoint.
pub const RENEW_PATH: &str = "/api/v2/renew";
/// Trust domain of the fake coordinator's SPIFFE IDs.
pub const TRUST_DOMAIN: &str = "quarry.local";

// === impl Ca ===

/// A CA made with rcgen.
pub struct Ca {
    pub cert: rcgen::Certificate,
    key: rcgen::KeyPair,
    params: rcgen::CertificateParams,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key, params }
    }

    pub fn issue(
        &self,
        params: rcgen::CertificateParams,
        public: &impl rcgen::PublicKeyData,
    ) -> rcgen::Certificate {
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        params.signed_by(public, &issuer).unwrap()
    }

    /// An intermediate CA signed by this one.
    pub fn intermediate(&self, name: &str) -> Ca {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let cert = self.issue(params.clone(), &key);
        Ca { cert, key, params }
    }

    /// Writes the CA certificate as PEM into `dir` and returns the path.
    pub fn write_pem(&self, dir: &Path) -> PathBuf {
        let path = dir.join(format!("ca-{}.pem", uuid::Uuid::new_v4().simple()));
        std::fs::write(&path, self.cert.pem()).unwrap();
        path
    }

    /// A server certificate chain for `names` and its key.
    pub fn server_identity(
        &self,
        names: &[&str],
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = self.issue(params, &key);
        (
            vec![cert.der().clone(), self.cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
    }
}

// === impl Fixture ===

/// A temporary directory with a simulated platform.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub platform_dir: PathBuf,
    pub platform: SimPlatform,
}

impl Fixture {
    pub fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let platform_dir = dir.path().join("platform");
        SimPlatform::create(&platform_dir).unwrap();
        let platform = SimPlatform::load_ca(&platform_dir.join("platform-ca.pem")).unwrap();
        Fixture {
            dir,
            platform_dir,
            platform,
        }
    }

    /// A simulated evidence provider on this platform.
    pub fn provider(&self) -> SimProvider {
        SimProvider::new(
            SimPlatform::load(&self.platform_dir).unwrap(),
            SimIdentity {
                unique_id: [7; 32],
                signer_id: [0; 32],
                product_id: 0,
                security_version: 0,
                debug: false,
            },
        )
        .unwrap()
    }
}

// === impl FakeCoordinator ===

/// How the fake coordinator answers activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Verify the evidence binding and issue a leaf for the connection's key.
    Activate,
    /// Issue a leaf for some other key.
    WrongKey,
    /// Answer with a JSend fail (HTTP 403) whose message has two lines.
    Refuse,
    /// Answer with a non-JSend error body (HTTP 415).
    PlainError,
}

/// The refusal message of [`Behaviour::Refuse`].
pub const REFUSAL: &str = "package web: SecurityVersion 1 < 2\nsecond line";

/// What the fake coordinator serves.
pub struct Options {
    pub names: Vec<&'static str>,
    pub behaviour: Behaviour,
    pub parameters: Parameters,
    pub listener: Option<TcpListener>,
    /// Validity of issued leaves from the moment they are issued; `None`: rcgen's default
    /// (decades).
    pub leaf_valid_for: Option<std::time::Duration>,
}

impl Default for Options {
    fn default() -> Options {
        let mut env = BTreeMap::new();
        env.insert("GREETING".to_string(), Value::data(b"hi".to_vec()));
        Options {
            names: vec!["localhost", "127.0.0.1"],
            behaviour: Behaviour::Activate,
            parameters: Parameters {
                files: BTreeMap::new(),
                env,
                argv: vec![],
            },
            listener: None,
            leaf_valid_for: None,
        }
    }
}

/// A running fake coordinator.
pub struct FakeCoordinator {
    pub addr: SocketAddr,
    /// SPKI of each client certificate seen, in connection order.
    pub client_keys: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Activation requests received.
    pub activations: Arc<Mutex<Vec<ActivateRequest>>>,
    /// Serials (hex) of the leaves issued by renewals, in order.
    pub renewals: Arc<Mutex<Vec<String>>>,
    /// Failures of the coordinator-side checks (empty when all passed).
    pub failures: Arc<Mutex<Vec<String>>>,
}

impl FakeCoordinator {
    /// Serves the mesh API with a server certificate from `root`, trusting `platform`.
    pub async fn start(root: &Ca, platform: &SimPlatform, opts: Options) -> FakeCoordinator {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (chain, key) = root.server_identity(&opts.names);
        let config = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_client_cert_verifier(Arc::new(quarry_trust::tls::AnyClientCert::new(true)))
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = match opts.listener {
            Some(l) => l,
            None => TcpListener::bind("127.0.0.1:0").await.unwrap(),
        };
        let fake = FakeCoordinator {
            addr: listener.local_addr().unwrap(),
            client_keys: Arc::default(),
            activations: Arc::default(),
            renewals: Arc::default(),
            failures: Arc::default(),
        };
        let server = Server {
            behaviour: opts.behaviour,
            parameters: opts.parameters,
            verifier: SimVerifier::new(std::slice::from_ref(platform)).unwrap(),
            mesh_ca: root.intermediate("mesh CA"),
            root_pem: root.cert.pem(),
            leaf_valid_for: opts.leaf_valid_for,
            nonces: Mutex::default(),
            marbles: Mutex::default(),
            client_keys: fake.client_keys.clone(),
            activations: fake.activations.clone(),
            renewals: fake.renewals.clone(),
            failures: fake.failures.clone(),
        };
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    continue;
                };
                let spki = {
                    let (_, conn) = tls.get_ref();
                    let cert = conn.peer_certificates().unwrap()[0].clone();
                    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).unwrap();
                    parsed.public_key().raw.to_vec()
                };
                server.client_keys.lock().unwrap().push(spki.clone());
                let (method, path, body) = read_request(&mut tls).await;
                let (status, json) = server.answer(&method, &path, &body, &spki);
                let head = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    json.len()
                );
                let _ = tls.write_all(head.as_bytes()).await;
                let _ = tls.write_all(json.as_bytes()).await;
                let _ = tls.shutdown().await;
            }
        });
        fake
    }
}

struct Server {
    behaviour: Behaviour,
    parameters: Parameters,
    verifier: SimVerifier,
    mesh_ca: Ca,
    root_pem: String,
    leaf_valid_for: Option<std::time::Duration>,
    nonces: Mutex<HashMap<String, Vec<u8>>>,
    /// SPIFFE ID of each activated key (SPKI), for renewals.
    marbles: Mutex<HashMap<Vec<u8>, String>>,
    client_keys: Arc<Mutex<Vec<Vec<u8>>>>,
    activations: Arc<Mutex<Vec<ActivateRequest>>>,
    renewals: Arc<Mutex<Vec<String>>>,
    failures: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn answer(&self, method: &str, path: &str, body: &[u8], spki: &[u8]) -> (u16, String) {
        match (method, path, self.behaviour) {
            ("GET", NONCE_PATH, _) => {
                let nonce = hex::encode(uuid::Uuid::new_v4().as_bytes().repeat(2));
                self.nonces
                    .lock()
                    .unwrap()
                    .insert(nonce.clone(), spki.to_vec());
                let body = JSend::success(NonceResponse { nonce });
                (200, serde_json::to_string(&body).unwrap())
            }
            ("POST", ACTIVATE_PATH, Behaviour::Refuse) => {
                let body = serde_json::json!({"status": "fail", "message": REFUSAL});
                (403, body.to_string())
            }
            ("POST", ACTIVATE_PATH, Behaviour::PlainError) => (
                415,
                "Expected request with `Content-Type: application/json`".to_string(),
            ),
            ("POST", RENEW_PATH, _) => match self.renew(body, spki) {
                Ok(response) => (
                    200,
                    serde_json::to_string(&JSend::success(response)).unwrap(),
                ),
                Err(message) => {
                    self.failures.lock().unwrap().push(message.clone());
                    let body = serde_json::json!({"status": "fail", "message": message});
                    (403, body.to_string())
                }
            },
            ("POST", ACTIVATE_PATH, _) => match self.activate(body, spki) {
                Ok(response) => (
                    200,
                    serde_json::to_string(&JSend::success(response)).unwrap(),
                ),
                Err(message) => {
                    self.failures.lock().unwrap().push(message.clone());
                    let body = serde_json::json!({"status": "fail", "message": message});
                    (403, body.to_string())
                }
            },
            _ => (
                404,
                r#"{"status":"fail","message":"not found"}"#.to_string(),
            ),
        }
    }

    /// The coordinator's checks: nonce issued to this connection's key, evidence binding.
    fn activate(&self, body: &[u8], spki: &[u8]) -> Result<ActivateResponse, String> {
        let request: ActivateRequest =
            serde_json::from_slice(body).map_err(|e| format!("bad body: {e}"))?;
        self.activations.lock().unwrap().push(request.clone());
        let nonce_hex = request.nonce.clone().ok_or("no nonce")?;
        self.check_binding(&request.evidence, &nonce_hex, spki)?;
        let leaf_key = if self.behaviour == Behaviour::WrongKey {
            let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let der = rcgen::PublicKeyData::subject_public_key_info(&other);
            rcgen::SubjectPublicKeyInfo::from_der(&der).unwrap()
        } else {
            rcgen::SubjectPublicKeyInfo::from_der(spki).map_err(|e| e.to_string())?
        };
        let spiffe_id = format!(
            "spiffe://{TRUST_DOMAIN}/marble/{}/{}",
            request.marble_type, request.uuid
        );
        let (leaf, _) = self.issue_leaf(&request.uuid, &spiffe_id, &leaf_key);
        self.marbles
            .lock()
            .unwrap()
            .insert(spki.to_vec(), spiffe_id.clone());
        Ok(ActivateResponse {
            certificate_chain: format!("{}{}", leaf.pem(), self.mesh_ca.cert.pem()),
            root_ca: self.root_pem.clone(),
            spiffe_id,
            parameters: self.parameters.clone(),
            simulation: true,
            mesh: None,
        })
    }

    /// A renewal: the key must have been activated, the evidence binds it to a fresh nonce.
    fn renew(&self, body: &[u8], spki: &[u8]) -> Result<RenewResponse, String> {
        let request: RenewRequest =
            serde_json::from_slice(body).map_err(|e| format!("bad body: {e}"))?;
        self.check_binding(&request.evidence, &request.nonce, spki)?;
        let spiffe_id = self
            .marbles
            .lock()
            .unwrap()
            .get(spki)
            .cloned()
            .ok_or("renewal for a key that was never activated")?;
        let uuid = spiffe_id.rsplit('/').next().unwrap_or_default().to_string();
        let key = rcgen::SubjectPublicKeyInfo::from_der(spki).map_err(|e| e.to_string())?;
        let (leaf, serial) = self.issue_leaf(&uuid, &spiffe_id, &key);
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf.der()).unwrap();
        self.renewals.lock().unwrap().push(serial.clone());
        Ok(RenewResponse {
            certificate_chain: format!("{}{}", leaf.pem(), self.mesh_ca.cert.pem()),
            root_ca: self.root_pem.clone(),
            spiffe_id,
            serial,
            not_after: parsed.validity().not_after.timestamp(),
            files: BTreeMap::new(),
        })
    }

    /// The nonce was issued to this connection's key and the evidence binds key and nonce.
    fn check_binding(
        &self,
        evidence: &quarry_api::Evidence,
        nonce_hex: &str,
        spki: &[u8],
    ) -> Result<(), String> {
        if self.nonces.lock().unwrap().remove(nonce_hex).as_deref() != Some(spki) {
            return Err("nonce was not issued to this key".into());
        }
        let nonce: [u8; 32] = hex::decode(nonce_hex)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or("bad nonce")?;
        let claims = self
            .verifier
            .verify(evidence, SystemTime::now())
            .map_err(|e| e.to_string())?;
        if claims.report_data != quarry_api::evidence::activation_report_data(spki, Some(&nonce)) {
            return Err("binding mismatch".into());
        }
        Ok(())
    }

    /// A leaf shaped like the coordinator's X.509-SVID for `key`; returns it with its serial
    /// (hex).
    fn issue_leaf(
        &self,
        uuid: &str,
        spiffe_id: &str,
        key: &impl rcgen::PublicKeyData,
    ) -> (rcgen::Certificate, String) {
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, uuid.to_string());
        params.subject_alt_names = vec![rcgen::SanType::URI(
            rcgen::string::Ia5String::try_from(spiffe_id.to_string()).unwrap(),
        )];
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        // Random, so a renewed leaf for the same key has a new serial.
        let mut serial = *uuid::Uuid::new_v4().as_bytes();
        // Positive, and no leading zero byte (DER integers are minimal).
        serial[0] = (serial[0] & 0x7f) | 0x40;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        if let Some(valid_for) = self.leaf_valid_for {
            let now = SystemTime::now();
            params.not_before = (now - std::time::Duration::from_secs(1)).into();
            params.not_after = (now + valid_for).into();
        }
        (self.mesh_ca.issue(params, key), hex::encode(serial))
    }
}

async fn read_request<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> (String, String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await.unwrap_or(0) == 0 {
            break;
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let mut first = head.lines().next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_string();
    let path = first.next().unwrap_or("").to_string();
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    let _ = s.read_exact(&mut body).await;
    (method, path, body)
}
