//! Deployment-wide attestation for relying parties (contract §7): the wire types of
//! `/api/v2/attestation`, `/api/v2/log` and the offline bundle, the coordinator policy file,
//! and [`verify_attestation`], the one function a Rust relying party calls.
//!
//! Evidence verification itself lives in `quarry-attestation`; this crate does no I/O, so the
//! caller passes it in as a closure that verifies the evidence *and* checks the claims against
//! the policy's package:
//!
//! ```ignore
//! let check = |ev: &Evidence, now| {
//!     let claims = verifiers.verify(ev, now).map_err(|e| e.to_string())?;
//!     quarry_attestation::check_package(&policy.package, &claims).map_err(|e| e.to_string())?;
//!     Ok(claims)
//! };
//! let verified = verify_attestation(&response, &options, &check)?;
//! ```
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::merkle::{self, Hash};
use crate::statement::{canonical_json, Statement};
use crate::{Claims, Evidence, Package};

/// `GET /api/v2/attestation?nonce=HEX`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttestationResponse {
    /// The statement the evidence binds.
    pub statement: Statement,
    /// The coordinator's evidence (with collateral when the coordinator has it).
    pub evidence: Evidence,
    /// Root CA, PEM.
    pub root_ca: String,
    /// Current mesh CA, PEM (absent before a manifest is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh_ca: Option<String>,
    /// The manifest bytes as posted, base64 (absent before a manifest is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
    /// `format=ear` only: the coordinator's EAR (compact JWS, ES256), see [`crate::ear`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ear: Option<String>,
    /// `format=ear` only: PEM `PUBLIC KEY` of the EAR signing key; the version-2 statement
    /// names its SHA-256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ear_key: Option<String>,
}

/// One transparency log entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogEntry {
    /// Position in the log (0-based).
    pub index: u64,
    /// The event; its leaf hash is `SHA-256(0x00 ‖ canonical JSON of event)`.
    pub event: serde_json::Value,
}

impl LogEntry {
    /// The RFC 6962 leaf hash of this entry.
    pub fn leaf_hash(&self) -> Result<Hash, String> {
        Ok(merkle::leaf_hash(canonical_json(&self.event)?.as_bytes()))
    }
}

/// Entries of one `GET /api/v2/log` page when the request names no `limit`.
pub const LOG_PAGE_DEFAULT: u64 = 1000;
/// Most entries one `GET /api/v2/log` page may ask for (`limit`).
pub const LOG_PAGE_MAX: u64 = 10_000;

/// `GET /api/v2/log?from=N&limit=L`: one page of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogResponse {
    /// Current number of entries.
    pub size: u64,
    /// Current root (hex).
    pub root: String,
    /// Entries from `from`, at most `limit` of them, none at or past `size`.
    pub entries: Vec<LogEntry>,
    /// `from` of the next page when entries below `size` remain after this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<u64>,
}

/// `GET /api/v2/log/proof?index=I&size=S` and `GET /api/v2/log/consistency?from=M&to=N`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProofResponse {
    /// Audit path or consistency proof, hex hashes.
    pub proof: Vec<String>,
}

/// An offline bundle: everything `quarry verify --bundle` needs, with no network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Bundle {
    /// Format version (1).
    pub version: u32,
    /// Unix seconds when the bundle was captured (verification time by default).
    pub captured_at: u64,
    /// The attestation as fetched (statement, evidence + collateral, CAs, manifest).
    pub attestation: AttestationResponse,
    /// The whole transparency log at capture time.
    pub log: Vec<LogEntry>,
}

/// What a relying party expects of the coordinator (like MarbleRun's era config): the fields
/// of a manifest package, plus `SimulationPlatformCA` (PEM) for a simulated coordinator.
#[derive(Debug, Clone)]
pub struct CoordinatorPolicy {
    /// Reference values for the coordinator's evidence.
    pub package: Package,
    /// The simulated platform CA (PEM) a simulated coordinator's evidence must chain to.
    pub simulation_platform_ca: Option<String>,
}

impl CoordinatorPolicy {
    /// Parses a policy file (JSON); errors name the field as a JSON pointer.
    pub fn parse(bytes: &[u8]) -> Result<CoordinatorPolicy, crate::manifest::ManifestError> {
        use crate::manifest::ManifestError;
        let mut value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
            ManifestError::new(
                "",
                format!("not JSON (line {} column {}): {e}", e.line(), e.column()),
            )
        })?;
        let obj = value
            .as_object_mut()
            .ok_or_else(|| ManifestError::new("", "the policy must be a JSON object"))?;
        let ca_key = obj
            .keys()
            .find(|k| k.eq_ignore_ascii_case("SimulationPlatformCA"))
            .cloned();
        let simulation_platform_ca = match ca_key.and_then(|k| obj.remove(&k)) {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s),
            Some(_) => {
                return Err(ManifestError::new(
                    "/SimulationPlatformCA",
                    "must be a PEM string",
                ))
            }
        };
        // Reuse the manifest's package rules (hex lengths, TEE names, TCB statuses...).
        let wrapper = serde_json::json!({
            "Packages": {"coordinator": value},
            "Marbles": {"coordinator": {"Package": "coordinator"}},
        });
        let bytes =
            serde_json::to_vec(&wrapper).map_err(|e| ManifestError::new("", e.to_string()))?;
        let checked = crate::manifest::parse(&bytes).map_err(|e| ManifestError {
            path: e
                .path
                .strip_prefix("/Packages/coordinator")
                .unwrap_or(&e.path)
                .to_string(),
            message: e.message,
        })?;
        let package = checked
            .manifest
            .packages
            .get("coordinator")
            .cloned()
            .ok_or_else(|| ManifestError::new("", "no package"))?;
        if package.tee == crate::TeeKind::Simulated && simulation_platform_ca.is_none() {
            return Err(ManifestError::new(
                "/SimulationPlatformCA",
                "a simulated coordinator policy needs the simulated platform CA (PEM)",
            ));
        }
        Ok(CoordinatorPolicy {
            package,
            simulation_platform_ca,
        })
    }
}

/// What the relying party checks besides the evidence.
pub struct VerifyOptions<'a> {
    /// The nonce sent with the request (online) — `None` for a bundle.
    pub nonce: Option<&'a [u8]>,
    /// The manifest the relying party expects (exact bytes).
    pub manifest: Option<&'a [u8]>,
    /// Accept a simulated coordinator.
    pub allow_simulation: bool,
    /// The certificate chain the TLS server presented (leaf first), online only.
    pub presented_chain: Option<&'a [Vec<u8>]>,
    /// Log entries to check against the attested log root (all of them, from 0).
    pub log: Option<&'a [LogEntry]>,
    /// Verification time.
    pub now: SystemTime,
}

/// What a successful verification established.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The verified statement.
    pub statement: Statement,
    /// Claims of the coordinator's evidence.
    pub claims: Claims,
    /// Root CA DER (pin it).
    pub root_ca_der: Vec<u8>,
    /// The manifest bytes, if the coordinator has one.
    pub manifest: Option<Vec<u8>>,
}

/// Why verification failed; each names what no longer matches.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttestationError {
    /// A simulated coordinator without `allow_simulation`.
    #[error("the coordinator runs on a SIMULATED TEE; refusing (pass --allow-simulation for development)")]
    Simulation,
    /// The evidence does not verify or does not satisfy the policy.
    #[error("coordinator evidence: {0}")]
    Evidence(String),
    /// The evidence does not bind this statement.
    #[error("statement binding: the evidence's report data is not SHA-256 of this statement (statement or evidence altered)")]
    StatementBinding,
    /// The statement carries another nonce.
    #[error("nonce: the statement answers nonce {actual}, expected {expected}")]
    Nonce {
        /// Nonce sent.
        expected: String,
        /// Nonce in the statement.
        actual: String,
    },
    /// A certificate does not match the statement or does not chain.
    #[error("certificates: {0}")]
    Certificates(String),
    /// The manifest differs.
    #[error("manifest: {0}")]
    Manifest(String),
    /// The log does not hash to the attested root.
    #[error("transparency log: {0}")]
    Log(String),
    /// Malformed input.
    #[error("malformed: {0}")]
    Malformed(String),
}

/// Verifies a coordinator's attestation: evidence (via `check`), statement binding, nonce,
/// root and mesh CA against the statement and the TLS chain, manifest, log.
pub fn verify_attestation(
    resp: &AttestationResponse,
    opts: &VerifyOptions<'_>,
    check: &dyn Fn(&Evidence, SystemTime) -> Result<Claims, String>,
) -> Result<Verified, AttestationError> {
    let st = &resp.statement;
    let simulated = st.simulation || resp.evidence.kind == crate::EvidenceType::Simulated;
    if simulated && !opts.allow_simulation {
        return Err(AttestationError::Simulation);
    }
    st.check_version().map_err(AttestationError::Malformed)?;
    let claims = check(&resp.evidence, opts.now).map_err(AttestationError::Evidence)?;
    if claims.simulation != st.simulation {
        return Err(AttestationError::Evidence(format!(
            "the statement says simulation={} but the evidence says simulation={}",
            st.simulation, claims.simulation
        )));
    }
    if claims.report_data != st.report_data() {
        return Err(AttestationError::StatementBinding);
    }
    let expected_nonce = opts.nonce.map(hex::encode);
    if expected_nonce != st.nonce {
        return Err(AttestationError::Nonce {
            expected: expected_nonce.unwrap_or_else(|| "(none)".into()),
            actual: st.nonce.clone().unwrap_or_else(|| "(none)".into()),
        });
    }
    let root_der = pem_der(&resp.root_ca, "root CA")?;
    if hex::encode(Sha256::digest(&root_der)) != st.root_ca_sha256 {
        return Err(AttestationError::Certificates(
            "the root CA is not the one the statement names".into(),
        ));
    }
    let root = parse_cert(&root_der, "root CA")?;
    match (&resp.mesh_ca, &st.mesh_ca_sha256) {
        (None, None) => {}
        (Some(pem), Some(digest)) => {
            let der = pem_der(pem, "mesh CA")?;
            if hex::encode(Sha256::digest(&der)) != *digest {
                return Err(AttestationError::Certificates(
                    "the mesh CA is not the one the statement names".into(),
                ));
            }
            parse_cert(&der, "mesh CA")?
                .verify_signature(Some(root.public_key()))
                .map_err(|_| {
                    AttestationError::Certificates(
                        "the mesh CA is not signed by the root CA".into(),
                    )
                })?;
        }
        _ => {
            return Err(AttestationError::Certificates(
                "mesh CA present in only one of statement and response".into(),
            ))
        }
    }
    if let Some(chain) = opts.presented_chain {
        let leaf = chain.first().ok_or_else(|| {
            AttestationError::Certificates("the TLS server presented no certificate".into())
        })?;
        parse_cert(leaf, "TLS server certificate")?
            .verify_signature(Some(root.public_key()))
            .map_err(|_| {
                AttestationError::Certificates(
                    "the TLS server certificate is not issued by the attested root CA".into(),
                )
            })?;
    }
    let manifest = match &resp.manifest {
        None => None,
        Some(b64) => Some(
            crate::bytes::unb64(b64)
                .map_err(|e| AttestationError::Malformed(format!("manifest: {e}")))?,
        ),
    };
    let manifest_digest = manifest.as_ref().map(|m| hex::encode(Sha256::digest(m)));
    if manifest_digest != st.manifest_sha256 {
        return Err(AttestationError::Manifest(
            "the manifest returned is not the one the statement names".into(),
        ));
    }
    if let Some(local) = opts.manifest {
        let local_digest = hex::encode(Sha256::digest(local));
        match &st.manifest_sha256 {
            None => {
                return Err(AttestationError::Manifest(
                    "the coordinator has no manifest yet".into(),
                ))
            }
            Some(d) if *d != local_digest => {
                return Err(AttestationError::Manifest(format!(
                "the local manifest (SHA-256 {local_digest}) differs from the deployed one ({d})"
            )))
            }
            Some(_) => {}
        }
    }
    if let Some(entries) = opts.log {
        verify_log(entries, st)?;
    }
    Ok(Verified {
        statement: st.clone(),
        claims,
        root_ca_der: root_der,
        manifest,
    })
}

/// Checks that `entries` (the whole log, from index 0) hash to the statement's log root.
pub fn verify_log(entries: &[LogEntry], st: &Statement) -> Result<(), AttestationError> {
    if entries.len() as u64 != st.log_size {
        return Err(AttestationError::Log(format!(
            "{} entries given, the statement attests {}",
            entries.len(),
            st.log_size
        )));
    }
    let mut leaves = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        if e.index != i as u64 {
            return Err(AttestationError::Log(format!(
                "entry at position {i} claims index {}",
                e.index
            )));
        }
        leaves.push(e.leaf_hash().map_err(AttestationError::Log)?);
    }
    if hex::encode(merkle::root(&leaves)) != st.log_root {
        return Err(AttestationError::Log(
            "the entries do not hash to the attested log root".into(),
        ));
    }
    Ok(())
}

fn pem_der(text: &str, what: &str) -> Result<Vec<u8>, AttestationError> {
    let p = pem::parse(text.trim())
        .map_err(|e| AttestationError::Malformed(format!("{what}: not PEM: {e}")))?;
    Ok(p.contents().to_vec())
}

fn parse_cert<'a>(
    der: &'a [u8],
    what: &str,
) -> Result<x509_parser::certificate::X509Certificate<'a>, AttestationError> {
    x509_parser::parse_x509_certificate(der)
        .map(|(_, c)| c)
        .map_err(|e| AttestationError::Malformed(format!("{what}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::claims::Identity;

    fn cert_pem() -> (String, Vec<u8>) {
        // A fixed self-signed P-256 certificate is not needed: only digests are compared
        // before parsing, so use a real one generated at test time by the coordinator tests;
        // here a minimal DER is enough for the digest checks that run first.
        let der = vec![0x30, 0x03, 0x02, 0x01, 0x01];
        (crate::bytes::encode_pem("CERTIFICATE", &der), der)
    }

    fn response(nonce: Option<&[u8]>) -> AttestationResponse {
        let (root_pem, root_der) = cert_pem();
        AttestationResponse {
            statement: Statement {
                version: 1,
                root_ca_sha256: hex::encode(Sha256::digest(&root_der)),
                mesh_ca_sha256: None,
                manifest_sha256: None,
                log_size: 0,
                log_root: hex::encode(merkle::root(&[])),
                simulation: true,
                nonce: nonce.map(hex::encode),
                ear_key_sha256: None,
            },
            evidence: Evidence {
                kind: crate::EvidenceType::Simulated,
                quote: vec![],
                collateral: None,
            },
            root_ca: root_pem,
            mesh_ca: None,
            manifest: None,
            ear: None,
            ear_key: None,
        }
    }

    fn claims_for(st: &Statement) -> Claims {
        Claims {
            tee: crate::TeeKind::Simulated,
            identity: Identity::default(),
            debug: false,
            report_data: st.report_data(),
            tcb_status: crate::TcbStatus::UpToDate,
            advisory_ids: vec![],
            platform_id: None,
            simulation: true,
            reported_tcb: None,
            tcb_standing: None,
        }
    }

    fn opts<'a>(nonce: Option<&'a [u8]>, allow: bool) -> VerifyOptions<'a> {
        VerifyOptions {
            nonce,
            manifest: None,
            allow_simulation: allow,
            presented_chain: None,
            log: None,
            now: SystemTime::now(),
        }
    }

    #[test]
    fn simulation_is_refused_unless_allowed() {
        let r = response(None);
        let st = r.statement.clone();
        let check = move |_: &Evidence, _| Ok(claims_for(&st));
        assert_eq!(
            verify_attestation(&r, &opts(None, false), &check).unwrap_err(),
            AttestationError::Simulation
        );
    }

    #[test]
    fn a_statement_for_another_nonce_is_refused() {
        let r = response(Some(b"old"));
        let st = r.statement.clone();
        let check = move |_: &Evidence, _| Ok(claims_for(&st));
        let err = verify_attestation(&r, &opts(Some(b"new"), true), &check).unwrap_err();
        assert!(matches!(err, AttestationError::Nonce { .. }), "{err}");
    }

    #[test]
    fn evidence_over_another_statement_is_refused() {
        let r = response(Some(b"n"));
        let mut other = r.statement.clone();
        other.log_size = 1;
        let check = move |_: &Evidence, _| Ok(claims_for(&other));
        assert_eq!(
            verify_attestation(&r, &opts(Some(b"n"), true), &check).unwrap_err(),
            AttestationError::StatementBinding
        );
    }

    #[test]
    fn log_entries_must_hash_to_the_attested_root() {
        let entries = vec![LogEntry {
            index: 0,
            event: serde_json::json!({"type": "manifest-set"}),
        }];
        let mut st = response(None).statement;
        st.log_size = 1;
        st.log_root = hex::encode(merkle::root(&[entries[0].leaf_hash().unwrap()]));
        verify_log(&entries, &st).unwrap();
        let mut forged = entries.clone();
        forged[0].event = serde_json::json!({"type": "manifest-set", "x": 1});
        assert!(matches!(
            verify_log(&forged, &st),
            Err(AttestationError::Log(_))
        ));
        assert!(matches!(
            verify_log(&[], &st),
            Err(AttestationError::Log(_))
        ));
    }
}
