//! EAT Attestation Results (EAR, draft-ietf-rats-ear-04) of the coordinator: the claims set
//! the coordinator signs for `GET /api/v2/attestation?format=ear` and the rules that map
//! Quarry's facts (claims, manifest packages) to AR4SI trustworthiness claims and tiers.
//!
//! The token is a compact JWS (ES256) over this claims set. Signing and signature checks are
//! done by the coordinator and by `quarry-trust` (this crate has no crypto); here are the
//! claims, the JWS framing (base64url segments) and the binding rules:
//! `quarry_statement_sha256` names the statement the token goes with, and a version-2
//! statement's `ear_key_sha256` names the key that signs it, so the quote covers the key.
use std::collections::BTreeMap;

use base64::Engine as _;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::manifest::Manifest;
use crate::statement::Statement;
use crate::{Claims, Package, TcbStatus, TeeKind};

/// `eat_profile` of the EAR draft the `ear` crate 0.6 implements (draft-ietf-rats-ear-04).
pub const EAR_PROFILE: &str = "tag:ietf.org,2026:rats/ear#04";
/// `ear_verifier_id.developer`.
pub const VERIFIER_DEVELOPER: &str = "Quarry";
/// Submod of the coordinator's own appraisal.
pub const COORDINATOR_SUBMOD: &str = "coordinator";
/// Prefix of the submod of each marble type (`marble/<type>`), so no type can shadow
/// `coordinator`.
pub const MARBLE_SUBMOD_PREFIX: &str = "marble/";
/// Top-level claim: hex SHA-256 of the canonical statement the token goes with.
pub const STATEMENT_CLAIM: &str = "quarry_statement_sha256";
/// Appraisal policy of the coordinator's own result.
pub const COORDINATOR_POLICY_ID: &str = "quarry:coordinator-self-appraisal:1";
/// The JOSE header: ES256 (ECDSA P-256 SHA-256, fixed-size r ‖ s signature).
pub const JWS_HEADER: &str = r#"{"alg":"ES256","typ":"JWT"}"#;
/// What the verifier-claims of a simulated result say, so no reader can miss it.
pub const SIMULATION_WARNING: &str =
    "SIMULATION: simulated TEE evidence proves nothing about confidentiality or integrity";

/// DER prefix of a P-256 `SubjectPublicKeyInfo` (id-ecPublicKey, prime256v1, uncompressed).
pub const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// AR4SI trustworthiness tiers (`ear_status`), least to most severe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tier {
    /// No claim is made.
    None,
    /// The claims are within the affirming range (2..=31).
    Affirming,
    /// Warning range (32..=95): proceed with care.
    Warning,
    /// Contraindicated range (96..=127): do not rely on it.
    Contraindicated,
}

impl Tier {
    /// Name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::None => "none",
            Tier::Affirming => "affirming",
            Tier::Warning => "warning",
            Tier::Contraindicated => "contraindicated",
        }
    }

    /// The tier of one AR4SI claim value (AR4SI §2.3.3: 0/1 none, 2-31 affirming, 32-95
    /// warning, 96-127 contraindicated; negative values are verifier errors).
    pub fn of_code(code: i8) -> Tier {
        match code {
            2..=31 => Tier::Affirming,
            32..=95 => Tier::Warning,
            96..=127 => Tier::Contraindicated,
            // 0 (no claim), 1 (unexpected evidence) and verifier errors carry no tier of their own.
            _ => Tier::None,
        }
    }
}

/// AR4SI claim values Quarry uses (draft-ietf-rats-ar4si §2.3).
pub mod ar4si {
    /// hardware: genuine hardware, no known vulnerabilities.
    pub const GENUINE_HARDWARE: i8 = 2;
    /// hardware: genuine, with known vulnerabilities (TCB not UpToDate).
    pub const UNSAFE_HARDWARE: i8 = 32;
    /// hardware: known to be compromised (TCB Revoked).
    pub const CONTRAINDICATED_HARDWARE: i8 = 96;
    /// hardware: not recognised as genuine (simulated TEE).
    pub const UNRECOGNIZED_HARDWARE: i8 = 97;
    /// configuration: known vulnerable configuration (TCB "ConfigurationNeeded").
    pub const UNSAFE_CONFIG: i8 = 32;
    /// runtime-opaque: memory encrypted by the TEE.
    pub const ENCRYPTED_MEMORY: i8 = 2;
    /// runtime-opaque: memory visible to the host (debug TEE, simulation).
    pub const VISIBLE_MEMORY: i8 = 96;
    /// storage-opaque: secrets sealed with hardware-bound keys.
    pub const HW_KEYS_ENCRYPTED_SECRETS: i8 = 2;
    /// storage-opaque: secrets encrypted with keys held in software.
    pub const SW_KEYS_ENCRYPTED_SECRETS: i8 = 32;
}

/// Everything one EAR of the coordinator is built from.
pub struct EarInput<'a> {
    /// The coordinator's claims: its own evidence, verified by its own verifier.
    pub claims: &'a Claims,
    /// The statement that evidence binds (version 2, naming the signing key).
    pub statement: &'a Statement,
    /// The deployed manifest (packages as enforced, with package-update overrides applied).
    pub manifest: Option<&'a Manifest>,
    /// `ear_verifier_id.build`, e.g. `quarry-coordinator 0.1.0`.
    pub build: &'a str,
    /// Issue time, Unix seconds (`iat`).
    pub iat: u64,
}

/// Hex SHA-256 of a DER `SubjectPublicKeyInfo`: what a version-2 statement's `ear_key_sha256`
/// holds.
pub fn key_digest(spki_der: &[u8]) -> String {
    hex::encode(Sha256::digest(spki_der))
}

/// The EAR claims set of the coordinator.
pub fn claims_set(input: &EarInput<'_>) -> Value {
    let mut submods = Map::new();
    let coordinator = coordinator_appraisal(input.claims);
    let mut worst = coordinator.0;
    submods.insert(COORDINATOR_SUBMOD.into(), coordinator.1);
    if let Some(manifest) = input.manifest {
        let fingerprint = input.statement.manifest_sha256.as_deref().unwrap_or("");
        for (marble_type, marble) in &manifest.marbles {
            let Some(package) = manifest.packages.get(&marble.package) else {
                // Validation guarantees the package exists; a result without it says nothing.
                continue;
            };
            let (tier, appraisal) = marble_appraisal(&marble.package, package, fingerprint);
            worst = worst.max(tier);
            submods.insert(format!("{MARBLE_SUBMOD_PREFIX}{marble_type}"), appraisal);
        }
    }
    let mut set = json!({
        "eat_profile": EAR_PROFILE,
        "iat": input.iat,
        "ear_verifier_id": {"build": input.build, "developer": VERIFIER_DEVELOPER},
        "ear_status": worst.as_str(),
        "submods": submods,
        STATEMENT_CLAIM: hex::encode(input.statement.digest()),
    });
    // eat_nonce must be 8..=64 bytes (EAT); the statement keeps any nonce it answered.
    if let Some(nonce) = input
        .statement
        .nonce
        .as_deref()
        .and_then(|n| hex::decode(n).ok())
        .filter(|n| (8..=64).contains(&n.len()))
    {
        set["eat_nonce"] = Value::String(b64url(&nonce));
    }
    set
}

/// The coordinator's own appraisal: trust vector from what its evidence proves, status the
/// worst claim tier, raised to contraindicated when its TCB status is outside the statuses a
/// package accepts by default (UpToDate, SWHardeningNeeded).
pub fn coordinator_appraisal(claims: &Claims) -> (Tier, Value) {
    let mut vector = BTreeMap::new();
    if claims.simulation || claims.tee == TeeKind::Simulated {
        vector.insert("hardware", ar4si::UNRECOGNIZED_HARDWARE);
        vector.insert("runtime-opaque", ar4si::VISIBLE_MEMORY);
        // Simulated sealing: AES-256-GCM under a key derived from the platform's key file.
        vector.insert("storage-opaque", ar4si::SW_KEYS_ENCRYPTED_SECRETS);
    } else {
        vector.insert("hardware", hardware_code(claims.tcb_status));
        if matches!(
            claims.tcb_status,
            TcbStatus::ConfigurationNeeded
                | TcbStatus::ConfigurationAndSWHardeningNeeded
                | TcbStatus::OutOfDateConfigurationNeeded
        ) {
            vector.insert("configuration", ar4si::UNSAFE_CONFIG);
        }
        vector.insert(
            "runtime-opaque",
            if claims.debug {
                ar4si::VISIBLE_MEMORY
            } else {
                ar4si::ENCRYPTED_MEMORY
            },
        );
        // SGX seals with the enclave's sealing key; TDX/SNP state keys are not (yet) bound to
        // hardware keys by Quarry, so no claim is made for them.
        if claims.tee == TeeKind::Sgx {
            vector.insert("storage-opaque", ar4si::HW_KEYS_ENCRYPTED_SECRETS);
        }
    }
    let mut tier = vector
        .values()
        .map(|c| Tier::of_code(*c))
        .max()
        .unwrap_or(Tier::None);
    let accepted = Package::default().effective_tcb_statuses();
    if !accepted.contains(&claims.tcb_status) {
        tier = Tier::Contraindicated;
    }
    if claims.simulation {
        // Never affirming, whatever the vector says.
        tier = tier.max(Tier::Contraindicated);
    }
    let mut verifier_claims = Map::new();
    verifier_claims.insert(
        "quarry_tcb_status_accepted_by_default".into(),
        Value::Bool(accepted.contains(&claims.tcb_status)),
    );
    if claims.simulation {
        verifier_claims.insert("quarry_simulation".into(), SIMULATION_WARNING.into());
    }
    let appraisal = json!({
        "ear_status": tier.as_str(),
        "ear_trustworthiness_vector": vector,
        "ear_appraisal_policy_ids": [COORDINATOR_POLICY_ID],
        "ear_attester_claims": attester_claims(claims),
        "ear_verifier_claims": verifier_claims,
    });
    (tier, appraisal)
}

/// A marble type's entry: the package policy the coordinator enforces at activation. No
/// marble instance is appraised here, so the status is `none`, except where the policy itself
/// is a fact about every instance: a simulated package (unrecognised hardware) or a debug one
/// (memory visible to the host) is contraindicated.
pub fn marble_appraisal(package_name: &str, package: &Package, fingerprint: &str) -> (Tier, Value) {
    let mut vector = BTreeMap::new();
    if package.tee == TeeKind::Simulated {
        vector.insert("hardware", ar4si::UNRECOGNIZED_HARDWARE);
        vector.insert("runtime-opaque", ar4si::VISIBLE_MEMORY);
    } else if package.debug {
        vector.insert("runtime-opaque", ar4si::VISIBLE_MEMORY);
    }
    let tier = vector
        .values()
        .map(|c| Tier::of_code(*c))
        .max()
        .unwrap_or(Tier::None);
    let mut verifier_claims = Map::new();
    verifier_claims.insert("quarry_package".into(), package_name.into());
    verifier_claims.insert("quarry_reference_values".into(), reference_values(package));
    if package.tee == TeeKind::Simulated {
        verifier_claims.insert("quarry_simulation".into(), SIMULATION_WARNING.into());
    }
    let mut appraisal = json!({
        "ear_status": tier.as_str(),
        "ear_appraisal_policy_ids": [format!("quarry:manifest:{fingerprint}#/Packages/{package_name}")],
        "ear_verifier_claims": verifier_claims,
    });
    if !vector.is_empty() {
        appraisal["ear_trustworthiness_vector"] = json!(vector);
    }
    (tier, appraisal)
}

/// AR4SI `hardware` from a TCB status: only UpToDate is genuine without known issues.
fn hardware_code(status: TcbStatus) -> i8 {
    match status {
        TcbStatus::UpToDate => ar4si::GENUINE_HARDWARE,
        TcbStatus::Revoked => ar4si::CONTRAINDICATED_HARDWARE,
        _ => ar4si::UNSAFE_HARDWARE,
    }
}

/// The evidence facts, as manifest-style names (the raw claims the status was judged from).
fn attester_claims(claims: &Claims) -> Value {
    let id = &claims.identity;
    let mut m = Map::new();
    m.insert("quarry_tee".into(), claims.tee.as_str().into());
    if let Some(u) = &id.unique_id {
        m.insert("quarry_unique_id".into(), hex::encode(u).into());
    }
    if let Some(s) = &id.signer_id {
        m.insert("quarry_signer_id".into(), hex::encode(s).into());
    }
    if let Some(p) = id.product_id {
        m.insert("quarry_product_id".into(), p.into());
    }
    if let Some(s) = id.security_version {
        m.insert("quarry_security_version".into(), s.into());
    }
    for (name, value) in &id.fields {
        m.insert(format!("quarry_{name}"), value.clone().into());
    }
    m.insert("quarry_debug".into(), claims.debug.into());
    m.insert(
        "quarry_tcb_status".into(),
        claims.tcb_status.as_str().into(),
    );
    if !claims.advisory_ids.is_empty() {
        m.insert("quarry_advisory_ids".into(), json!(claims.advisory_ids));
    }
    if let Some(p) = &claims.platform_id {
        m.insert("quarry_platform_id".into(), p.clone().into());
    }
    m.insert("quarry_simulation".into(), claims.simulation.into());
    Value::Object(m)
}

/// A package's reference values with the manifest's field names.
fn reference_values(p: &Package) -> Value {
    let mut m = Map::new();
    m.insert("TEE".into(), p.tee.as_str().into());
    if let Some(u) = &p.unique_id {
        m.insert("UniqueID".into(), hex::encode(u).into());
    }
    if let Some(s) = &p.signer_id {
        m.insert("SignerID".into(), hex::encode(s).into());
    }
    if let Some(v) = p.product_id {
        m.insert("ProductID".into(), v.into());
    }
    if let Some(v) = p.security_version {
        m.insert("SecurityVersion".into(), v.into());
    }
    m.insert("Debug".into(), p.debug.into());
    m.insert(
        "AcceptedTCBStatuses".into(),
        json!(p
            .effective_tcb_statuses()
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()),
    );
    if !p.accepted_advisories.is_empty() {
        m.insert("AcceptedAdvisories".into(), json!(p.accepted_advisories));
    }
    if !p.allowed_platforms.is_empty() {
        m.insert("AllowedPlatforms".into(), json!(p.allowed_platforms));
    }
    for (name, value) in &p.fields {
        m.insert(name.clone(), value.clone().into());
    }
    if let Some(tcb) = &p.minimum_tcb {
        m.insert("MinimumTCB".into(), json!(tcb));
    }
    if p.max_vmpl != 0 {
        m.insert("MaxVMPL".into(), p.max_vmpl.into());
    }
    Value::Object(m)
}

/// base64url without padding (JWS).
pub fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// `BASE64URL(header) . BASE64URL(payload)`: the bytes an ES256 signature covers.
pub fn signing_input(claims: &Value) -> String {
    // A serde_json::Value always serialises.
    let payload = serde_json::to_vec(claims).unwrap_or_default();
    format!("{}.{}", b64url(JWS_HEADER.as_bytes()), b64url(&payload))
}

/// The compact JWS from its signing input and the 64-byte `r ‖ s` signature.
pub fn compact(signing_input: &str, signature: &[u8]) -> String {
    format!("{signing_input}.{}", b64url(signature))
}

/// Why an EAR is not accepted; each names what does not match.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EarError {
    /// The token is not a compact JWS of this profile.
    #[error("EAR: {0}")]
    Malformed(String),
    /// The JOSE header names another algorithm.
    #[error("EAR header: alg must be ES256, found {0}")]
    Algorithm(String),
    /// The statement names no EAR key (version 1).
    #[error("EAR: the statement (version {0}) binds no EAR key; fetch it with format=ear")]
    Unbound(u32),
    /// The key that came with the token is not the one the statement binds.
    #[error("EAR key: SHA-256 {found} is not the key the attested statement binds ({expected})")]
    KeyNotBound {
        /// `ear_key_sha256` of the statement.
        expected: String,
        /// Digest of the key given.
        found: String,
    },
    /// The signature does not verify with the statement-bound key.
    #[error("EAR signature: does not verify with the key the attested statement binds (token altered or signed by another key)")]
    Signature,
    /// The token belongs to another statement.
    #[error("EAR claim {STATEMENT_CLAIM}: {found} is not the verified statement ({expected})")]
    Statement {
        /// Digest of the verified statement.
        expected: String,
        /// Digest the token names.
        found: String,
    },
    /// A claim has another value than the verified attestation requires.
    #[error("EAR claim {claim}: {reason}")]
    Claim {
        /// The claim.
        claim: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// The parts of a compact JWS: (signing input, decoded header, decoded payload, signature).
pub struct Parts {
    /// `header.payload` as received.
    pub signing_input: String,
    /// The JOSE header.
    pub header: Value,
    /// The claims set.
    pub payload: Value,
    /// The signature bytes (64 for ES256).
    pub signature: Vec<u8>,
}

/// Splits and decodes a compact JWS; checks the header says ES256. The signature is not
/// checked here (see `quarry_trust::ear`).
pub fn parse(token: &str) -> Result<Parts, EarError> {
    let segments: Vec<&str> = token.trim().split('.').collect();
    let [header, payload, signature] = segments[..] else {
        return Err(EarError::Malformed(format!(
            "a compact JWS has 3 dot-separated segments, found {}",
            segments.len()
        )));
    };
    let decode = |what: &str, s: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|e| EarError::Malformed(format!("{what} is not base64url: {e}")))
    };
    let json = |what: &str, bytes: Vec<u8>| {
        serde_json::from_slice::<Value>(&bytes)
            .map_err(|e| EarError::Malformed(format!("{what} is not JSON: {e}")))
    };
    let header_json = json("header", decode("header", header)?)?;
    match header_json.get("alg").and_then(Value::as_str) {
        Some("ES256") => {}
        other => {
            return Err(EarError::Algorithm(
                other.map_or_else(|| "(none)".to_string(), str::to_string),
            ))
        }
    }
    let payload_json = json("payload", decode("payload", payload)?)?;
    if !payload_json.is_object() {
        return Err(EarError::Malformed("payload is not a JSON object".into()));
    }
    Ok(Parts {
        signing_input: format!("{header}.{payload}"),
        header: header_json,
        payload: payload_json,
        signature: decode("signature", signature)?,
    })
}

/// Checks that a (signature-verified) claims set belongs to `statement`: profile, the
/// statement digest, and the nonce when the statement answered one of EAT's size.
pub fn check_binding(payload: &Value, statement: &Statement) -> Result<(), EarError> {
    match payload.get("eat_profile").and_then(Value::as_str) {
        Some(EAR_PROFILE) => {}
        other => {
            return Err(EarError::Claim {
                claim: "eat_profile",
                reason: format!(
                    "expected {EAR_PROFILE}, found {}",
                    other.unwrap_or("(none)")
                ),
            })
        }
    }
    let expected = hex::encode(statement.digest());
    let found = payload
        .get(STATEMENT_CLAIM)
        .and_then(Value::as_str)
        .unwrap_or("(none)");
    if found != expected {
        return Err(EarError::Statement {
            expected,
            found: found.to_string(),
        });
    }
    let expected_nonce = statement
        .nonce
        .as_deref()
        .and_then(|n| hex::decode(n).ok())
        .filter(|n| (8..=64).contains(&n.len()))
        .map(|n| b64url(&n));
    let found_nonce = payload
        .get("eat_nonce")
        .and_then(Value::as_str)
        .map(str::to_string);
    if expected_nonce != found_nonce {
        return Err(EarError::Claim {
            claim: "eat_nonce",
            reason: format!(
                "expected {}, found {}",
                expected_nonce.as_deref().unwrap_or("(none)"),
                found_nonce.as_deref().unwrap_or("(none)")
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
