//! The simulated TEE (contract §4.4): a platform CA and key created by `quarry sim init`,
//! evidence = claims signed by that key. For development and CI only; everything verified
//! from it carries `simulation: true`.
//!
//! Quote format (JSON): `{"version":1,"body":b64(body JSON),"signature":b64(ECDSA P-256
//! SHA-256, ASN.1 DER, over the body bytes)}`. Body: `{"platform": hex SHA-256(platform CA
//! DER), "unique_id", "signer_id" (hex 32 bytes), "product_id", "security_version", "debug",
//! "report_data" (hex 64 bytes), "issued_at" (unix seconds)}`, plus `"tcb_svn"` when the
//! platform has one.
//!
//! Simulated TCB (development only, so the coordinator's TCB monitor can run without
//! hardware): a platform directory may hold [`TCB_SVN_FILE`] (a decimal SVN the evidence
//! reports), and a verifier given a [`SIM_TCB_FILE`] (`{"minimumSvn": N, "advisories": [...]}`)
//! reports `OutOfDate` with those advisories below `minimumSvn`, else `UpToDate`. The file is
//! read at every verification, like collateral that changes. Without it every platform is
//! `UpToDate`, as before.
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use quarry_api::claims::{ComponentGap, Identity, TcbStanding};
use quarry_api::{Claims, Evidence, EvidenceType, Secret, TcbStatus, TeeKind, REPORT_DATA_LEN};
use ring::signature::{self, EcdsaKeyPair, KeyPair as _};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{EvidenceProvider, ProviderError, Verifier, VerifyError};

/// File name of the public platform CA certificate in a platform directory.
pub const CA_FILE: &str = "platform-ca.pem";
/// File name of the private platform key in a platform directory.
pub const KEY_FILE: &str = "platform-key.pem";
/// Optional file in a platform directory: the platform's simulated TCB SVN (decimal).
pub const TCB_SVN_FILE: &str = "platform-tcb-svn";
/// File in a collateral directory that decides simulated TCB statuses (see the module doc).
pub const SIM_TCB_FILE: &str = "simulated-tcb.json";
/// The component name of the simulated TCB SVN in `tcb_standing`.
pub const SIM_TCB_COMPONENT: &str = "SIMULATED_TCB_SVN";
/// How far in the future evidence may claim to be issued (clock skew).
const MAX_SKEW: Duration = Duration::from_secs(300);

/// A simulated platform: its CA certificate and, when loaded for signing, its key.
pub struct SimPlatform {
    ca_der: Vec<u8>,
    key_pkcs8: Option<Secret>,
    /// The simulated TCB SVN from [`TCB_SVN_FILE`], when the directory has one.
    tcb_svn: Option<u16>,
}

impl std::fmt::Debug for SimPlatform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimPlatform")
            .field("ca_sha256", &hex::encode(self.ca_digest()))
            .field("has_key", &self.key_pkcs8.is_some())
            .finish()
    }
}

impl SimPlatform {
    /// Creates a new platform in `dir` (created if missing). Refuses to overwrite one.
    pub fn create(dir: &Path) -> Result<SimPlatform, ProviderError> {
        let io = |what: &Path| {
            let what = what.display().to_string();
            move |source| ProviderError::Io { what, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let ca_path = dir.join(CA_FILE);
        let key_path = dir.join(KEY_FILE);
        for p in [&ca_path, &key_path] {
            if p.exists() {
                return Err(ProviderError::Key(format!(
                    "{} already exists; refusing to overwrite a simulated platform",
                    p.display()
                )));
            }
        }
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| ProviderError::Key(format!("generating the platform key: {e}")))?;
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            "Quarry SIMULATED TEE platform (development only, not a real TEE)",
        );
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + time::Duration::days(3650);
        let cert = params
            .self_signed(&key)
            .map_err(|e| ProviderError::Key(format!("self-signing the platform CA: {e}")))?;
        write_file(&key_path, key.serialize_pem().as_bytes(), 0o600).map_err(io(&key_path))?;
        write_file(&ca_path, cert.pem().as_bytes(), 0o644).map_err(io(&ca_path))?;
        Ok(SimPlatform {
            ca_der: cert.der().to_vec(),
            key_pkcs8: Some(Secret::new(key.serialize_der())),
            tcb_svn: None,
        })
    }

    /// Loads the CA and the key from `dir` (for parties that sign evidence).
    pub fn load(dir: &Path) -> Result<SimPlatform, ProviderError> {
        let mut p = SimPlatform::load_ca(&dir.join(CA_FILE))?;
        let key_path = dir.join(KEY_FILE);
        let text = std::fs::read_to_string(&key_path).map_err(|source| ProviderError::Io {
            what: key_path.display().to_string(),
            source,
        })?;
        let der = pem::parse(text.trim())
            .map_err(|e| ProviderError::Key(format!("{}: not PEM: {e}", key_path.display())))?;
        let rng = ring::rand::SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            der.contents(),
            &rng,
        )
        .map_err(|e| {
            ProviderError::Key(format!(
                "{}: not a PKCS#8 ECDSA P-256 key: {e}",
                key_path.display()
            ))
        })?;
        if platform_public_key(&p.ca_der)
            .map_err(ProviderError::Key)?
            .as_slice()
            != pair.public_key().as_ref()
        {
            return Err(ProviderError::Key(format!(
                "{} does not belong to {}",
                key_path.display(),
                dir.join(CA_FILE).display()
            )));
        }
        p.key_pkcs8 = Some(Secret::new(der.contents().to_vec()));
        p.tcb_svn = read_tcb_svn(&dir.join(TCB_SVN_FILE))?;
        Ok(p)
    }

    /// Loads only the public CA certificate (for verifiers).
    pub fn load_ca(path: &Path) -> Result<SimPlatform, ProviderError> {
        let text = std::fs::read_to_string(path).map_err(|source| ProviderError::Io {
            what: path.display().to_string(),
            source,
        })?;
        SimPlatform::from_ca_pem(&text)
            .map_err(|e| ProviderError::Key(format!("{}: {e}", path.display())))
    }

    /// A platform from the PEM of its CA certificate.
    pub fn from_ca_pem(text: &str) -> Result<SimPlatform, String> {
        let der = pem::parse(text.trim()).map_err(|e| format!("not PEM: {e}"))?;
        if der.tag() != "CERTIFICATE" {
            return Err(format!("expected a CERTIFICATE, found {}", der.tag()));
        }
        platform_public_key(der.contents())?;
        Ok(SimPlatform {
            ca_der: der.contents().to_vec(),
            key_pkcs8: None,
            tcb_svn: None,
        })
    }

    /// The simulated TCB SVN this platform's evidence reports (from [`TCB_SVN_FILE`]).
    pub fn tcb_svn(&self) -> Option<u16> {
        self.tcb_svn
    }

    /// SHA-256 of the CA certificate: the platform's identity in claims.
    pub fn ca_digest(&self) -> [u8; 32] {
        Sha256::digest(&self.ca_der).into()
    }

    /// The CA certificate, DER.
    pub fn ca_der(&self) -> &[u8] {
        &self.ca_der
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> String {
        quarry_api::bytes::encode_pem("CERTIFICATE", &self.ca_der)
    }

    /// A 32-byte key bound to this platform's private key and a measurement: the simulated
    /// equivalent of an SGX sealing key (only the same code on the same platform gets it).
    pub fn derive_seal_key(&self, measurement: &[u8; 32]) -> Result<Secret, ProviderError> {
        self.derive_seal_key_info(measurement)
    }

    /// A 32-byte key = HKDF-SHA256(platform key, `info`): `info` = measurement for
    /// `UniqueKey` sealing, signer ‖ product id (u64 BE) for `ProductKey` sealing.
    pub fn derive_seal_key_info(&self, info: &[u8]) -> Result<Secret, ProviderError> {
        let key = self
            .key_pkcs8
            .as_ref()
            .ok_or_else(|| ProviderError::Key("the platform key is not loaded".into()))?;
        let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"quarry simulated seal key v1");
        let prk = salt.extract(key.expose());
        let info = [info];
        let okm = prk
            .expand(&info, ring::hkdf::HKDF_SHA256)
            .map_err(|_| ProviderError::Key("HKDF expand failed".into()))?;
        let mut out = vec![0u8; 32];
        okm.fill(&mut out)
            .map_err(|_| ProviderError::Key("HKDF fill failed".into()))?;
        Ok(Secret::new(out))
    }
}

/// The SVN in a platform's [`TCB_SVN_FILE`]; `None` when there is no such file.
fn read_tcb_svn(path: &Path) -> Result<Option<u16>, ProviderError> {
    match std::fs::read_to_string(path) {
        Ok(text) => text.trim().parse().map(Some).map_err(|e| {
            ProviderError::Key(format!(
                "{}: not a simulated TCB SVN (0..=65535): {e}",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ProviderError::Io {
            what: path.display().to_string(),
            source,
        }),
    }
}

/// What [`SIM_TCB_FILE`] holds: the lowest simulated TCB SVN that is `UpToDate` and the
/// advisories of the platforms below it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SimTcbInfo {
    /// The lowest SVN that is `UpToDate`.
    pub minimum_svn: u16,
    /// Advisories of platforms below `minimum_svn` (e.g. `SIM-SA-0001`).
    #[serde(default)]
    pub advisories: Vec<String>,
}

impl SimTcbInfo {
    /// Reads `path`; `None` when the file does not exist (every platform is `UpToDate`).
    pub fn read(path: &Path) -> Result<Option<SimTcbInfo>, VerifyError> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                VerifyError::Collateral(format!(
                    "simulated TCB info {}: {e} (expected {{\"minimumSvn\": N, \"advisories\": [..]}})",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(VerifyError::Collateral(format!(
                "reading simulated TCB info {}: {e}",
                path.display()
            ))),
        }
    }

    /// Status, advisories and standing of a platform at `svn` (absent = 0).
    fn judge(&self, svn: Option<u16>) -> (TcbStatus, Vec<String>, TcbStanding) {
        let found = svn.unwrap_or(0);
        let low = found < self.minimum_svn;
        let standing = TcbStanding {
            evaluation_data_number: 0,
            matched_date: "simulation".into(),
            target_date: None,
            target_status: Some(TcbStatus::UpToDate),
            to_raise: low
                .then(|| ComponentGap {
                    component: SIM_TCB_COMPONENT.into(),
                    label: Some("simulated platform TCB (SIMULATION, not hardware)".into()),
                    found,
                    required: self.minimum_svn,
                })
                .into_iter()
                .collect(),
        };
        if low {
            (TcbStatus::OutOfDate, self.advisories.clone(), standing)
        } else {
            (TcbStatus::UpToDate, Vec::new(), standing)
        }
    }
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// The uncompressed P-256 point of a platform CA certificate.
fn platform_public_key(ca_der: &[u8]) -> Result<Vec<u8>, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(ca_der)
        .map_err(|e| format!("platform CA is not an X.509 certificate: {e}"))?;
    Ok(cert.public_key().subject_public_key.data.to_vec())
}

/// The identity a simulated provider claims (what `--sim-*` flags set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimIdentity {
    /// SHA-256 of the measured executable.
    pub unique_id: [u8; 32],
    /// Signer (default 32 zero bytes).
    pub signer_id: [u8; 32],
    /// Product ID (default 0).
    pub product_id: u64,
    /// Security version (default 0).
    pub security_version: u64,
    /// Debug flag.
    pub debug: bool,
}

#[derive(Serialize, Deserialize)]
struct Envelope {
    version: u32,
    body: String,
    signature: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    platform: String,
    unique_id: String,
    signer_id: String,
    product_id: u64,
    security_version: u64,
    debug: bool,
    report_data: String,
    issued_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tcb_svn: Option<u16>,
}

/// Produces simulated evidence for a fixed identity.
pub struct SimProvider {
    platform: SimPlatform,
    identity: SimIdentity,
}

impl SimProvider {
    /// A provider signing with `platform` (which must have its key loaded).
    pub fn new(platform: SimPlatform, identity: SimIdentity) -> Result<SimProvider, ProviderError> {
        if platform.key_pkcs8.is_none() {
            return Err(ProviderError::Key(
                "a simulated provider needs the platform key".into(),
            ));
        }
        Ok(SimProvider { platform, identity })
    }

    /// The identity this provider claims.
    pub fn identity(&self) -> &SimIdentity {
        &self.identity
    }

    /// The platform this provider signs with.
    pub fn platform(&self) -> &SimPlatform {
        &self.platform
    }

    /// Evidence as of `now` (tests use fixed times).
    pub fn evidence_at(
        &self,
        report_data: &[u8; REPORT_DATA_LEN],
        now: SystemTime,
    ) -> Result<Evidence, ProviderError> {
        let body = Body {
            platform: hex::encode(self.platform.ca_digest()),
            unique_id: hex::encode(self.identity.unique_id),
            signer_id: hex::encode(self.identity.signer_id),
            product_id: self.identity.product_id,
            security_version: self.identity.security_version,
            debug: self.identity.debug,
            report_data: hex::encode(report_data),
            issued_at: now
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            tcb_svn: self.platform.tcb_svn,
        };
        let body = serde_json::to_vec(&body)
            .map_err(|e| ProviderError::Key(format!("encoding evidence: {e}")))?;
        let key = self
            .platform
            .key_pkcs8
            .as_ref()
            .ok_or_else(|| ProviderError::Key("the platform key is not loaded".into()))?;
        let rng = ring::rand::SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            key.expose(),
            &rng,
        )
        .map_err(|e| ProviderError::Key(format!("platform key: {e}")))?;
        let sig = pair
            .sign(&rng, &body)
            .map_err(|e| ProviderError::Key(format!("signing evidence: {e}")))?;
        let envelope = Envelope {
            version: 1,
            body: quarry_api::bytes::b64(&body),
            signature: quarry_api::bytes::b64(sig.as_ref()),
        };
        let quote = serde_json::to_vec(&envelope)
            .map_err(|e| ProviderError::Key(format!("encoding evidence: {e}")))?;
        Ok(Evidence {
            kind: EvidenceType::Simulated,
            quote,
            collateral: None,
        })
    }
}

impl EvidenceProvider for SimProvider {
    fn evidence(&self, report_data: &[u8; REPORT_DATA_LEN]) -> Result<Evidence, ProviderError> {
        self.evidence_at(report_data, SystemTime::now())
    }

    fn is_simulated(&self) -> bool {
        true
    }
}

/// Verifies simulated evidence against a set of trusted platform CAs.
pub struct SimVerifier {
    platforms: Vec<(Vec<u8>, [u8; 32], Vec<u8>)>, // (CA DER, digest, public point)
    /// The [`SIM_TCB_FILE`] that decides TCB statuses, when configured.
    tcb_file: Option<PathBuf>,
}

impl SimVerifier {
    /// Trust the given platforms.
    pub fn new(platforms: &[SimPlatform]) -> Result<SimVerifier, String> {
        let mut out = Vec::new();
        for p in platforms {
            out.push((
                p.ca_der.clone(),
                p.ca_digest(),
                platform_public_key(&p.ca_der)?,
            ));
        }
        Ok(SimVerifier {
            platforms: out,
            tcb_file: None,
        })
    }

    /// Decide TCB statuses with the simulated TCB info at `path` (read at every
    /// verification; a missing file means `UpToDate`).
    pub fn with_tcb_file(mut self, path: PathBuf) -> SimVerifier {
        self.tcb_file = Some(path);
        self
    }

    /// Convenience: trust the platform whose CA certificate is at `path`.
    pub fn from_ca_file(path: &Path) -> Result<SimVerifier, ProviderError> {
        let p = SimPlatform::load_ca(path)?;
        SimVerifier::new(&[p]).map_err(ProviderError::Key)
    }

    /// Default CA path inside a platform directory.
    pub fn ca_path(dir: &Path) -> PathBuf {
        dir.join(CA_FILE)
    }
}

impl Verifier for SimVerifier {
    fn verify(&self, evidence: &Evidence, now: SystemTime) -> Result<Claims, VerifyError> {
        crate::expect_kind(evidence, EvidenceType::Simulated)?;
        let env: Envelope = serde_json::from_slice(&evidence.quote).map_err(|e| {
            VerifyError::Malformed(format!(
                "simulated quote envelope at line {} column {}: {e}",
                e.line(),
                e.column()
            ))
        })?;
        if env.version != 1 {
            return Err(VerifyError::Malformed(format!(
                "simulated quote version {} (only 1 is known)",
                env.version
            )));
        }
        let body_bytes = quarry_api::bytes::unb64(&env.body)
            .map_err(|e| VerifyError::Malformed(format!("simulated quote body: {e}")))?;
        let sig = quarry_api::bytes::unb64(&env.signature)
            .map_err(|e| VerifyError::Malformed(format!("simulated quote signature: {e}")))?;
        let body: Body = serde_json::from_slice(&body_bytes)
            .map_err(|e| VerifyError::Malformed(format!("simulated quote body: {e}")))?;
        let platform = hex32(&body.platform, "platform")?;
        let (ca_der, _, public) = self
            .platforms
            .iter()
            .find(|(_, d, _)| *d == platform)
            .ok_or_else(|| {
                VerifyError::UntrustedPlatform(format!(
                    "evidence is signed by simulated platform {}, which this verifier was not configured with",
                    body.platform
                ))
            })?;
        check_validity(ca_der, now)?;
        signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, public)
            .verify(&body_bytes, &sig)
            .map_err(|_| {
                VerifyError::BadSignature(
                    "simulated evidence signature does not verify with the platform key".into(),
                )
            })?;
        let now_s = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if body.issued_at > now_s + MAX_SKEW.as_secs() {
            return Err(VerifyError::Expired {
                what: format!("simulated evidence issued at {}", body.issued_at),
                now: i64::try_from(now_s).unwrap_or(i64::MAX),
                not_before: i64::try_from(body.issued_at.saturating_sub(MAX_SKEW.as_secs())).ok(),
                not_after: None,
            });
        }
        let report_data: [u8; REPORT_DATA_LEN] = hex::decode(&body.report_data)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| VerifyError::Malformed("report_data must be 64 bytes of hex".into()))?;
        let info = match &self.tcb_file {
            Some(path) => SimTcbInfo::read(path)?,
            None => None,
        };
        let (tcb_status, advisory_ids, tcb_standing) = match info {
            Some(info) => {
                let (s, a, standing) = info.judge(body.tcb_svn);
                (s, a, Some(standing))
            }
            None => (TcbStatus::UpToDate, Vec::new(), None),
        };
        Ok(Claims {
            tee: TeeKind::Simulated,
            identity: Identity {
                unique_id: Some(hex32(&body.unique_id, "unique_id")?.to_vec()),
                signer_id: Some(hex32(&body.signer_id, "signer_id")?.to_vec()),
                product_id: Some(body.product_id),
                security_version: Some(body.security_version),
                fields: Default::default(),
            },
            debug: body.debug,
            report_data,
            tcb_status,
            advisory_ids,
            platform_id: Some(body.platform),
            simulation: true,
            reported_tcb: None,
            tcb_standing,
        })
    }
}

fn hex32(text: &str, field: &str) -> Result<[u8; 32], VerifyError> {
    hex::decode(text)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| VerifyError::Malformed(format!("{field} must be 32 bytes of hex")))
}

fn check_validity(ca_der: &[u8], now: SystemTime) -> Result<(), VerifyError> {
    let (_, cert) = x509_parser::parse_x509_certificate(ca_der)
        .map_err(|e| VerifyError::Malformed(format!("platform CA: {e}")))?;
    let now_s = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let v = cert.validity();
    let (from, to) = (v.not_before.timestamp(), v.not_after.timestamp());
    if now_s < from || now_s > to {
        return Err(VerifyError::Expired {
            what: "simulated platform CA".into(),
            now: now_s,
            not_before: Some(from),
            not_after: Some(to.saturating_add(1)),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
