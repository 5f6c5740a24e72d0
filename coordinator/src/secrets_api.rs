//! `GET/POST /api/v2/secrets`: users read shared and user-defined secrets and write
//! user-defined ones, within their roles. Private (per-marble) secrets are never readable.
use std::collections::BTreeMap;

use quarry_api::manifest::{SecretKind, SecretSpec};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::secrets::SecretValue;
use crate::state::{keys, Core, Phase};
use crate::users::{authenticate, authorize, Action};

/// One secret as returned to users (MarbleRun's `Secret` JSON).
#[derive(Debug, Serialize)]
pub struct SecretOut {
    /// Type.
    #[serde(rename = "Type")]
    pub kind: String,
    /// Size in bits.
    #[serde(rename = "Size")]
    pub size: u32,
    /// Shared.
    #[serde(rename = "Shared")]
    pub shared: bool,
    /// User-defined.
    #[serde(rename = "UserDefined")]
    pub user_defined: bool,
    /// Certificate DER, base64.
    #[serde(rename = "Cert", skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    /// Validity in days.
    #[serde(rename = "ValidFor")]
    pub valid_for: u32,
    /// Private key or key, base64.
    #[serde(rename = "Private")]
    pub private: String,
    /// Public key or key, base64.
    #[serde(rename = "Public")]
    pub public: String,
}

/// A secret value uploaded by a user.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserSecret {
    /// Certificate DER, base64 (certificate secrets).
    #[serde(rename = "Cert", alias = "cert", default)]
    pub cert: Option<String>,
    /// PKCS#8 private key DER, base64 (certificate secrets, optional).
    #[serde(rename = "Private", alias = "private", default)]
    pub private: Option<String>,
    /// Key bytes, base64 (symmetric-key and plain).
    #[serde(rename = "Key", alias = "key", default)]
    pub key: Option<String>,
}

/// Body of `POST /api/v2/secrets`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetSecretsRequest {
    /// Secrets by name.
    pub secrets: BTreeMap<String, UserSecret>,
}

/// Largest user-defined value accepted (bytes).
const MAX_SECRET_BYTES: usize = 256 * 1024;

fn running(core: &Core) -> Result<std::sync::Arc<crate::state::Deployment>, ApiError> {
    match core.view().phase.as_ref() {
        Phase::Running(d) => Ok(d.clone()),
        _ => Err(ApiError::wrong_state(
            "the coordinator has no manifest (state 3 required)".into(),
        )),
    }
}

/// `GET /api/v2/secrets?s=a&s=b`.
pub fn read(
    core: &Core,
    peer: Option<&[u8]>,
    names: &[String],
) -> Result<BTreeMap<String, SecretOut>, ApiError> {
    let d = running(core)?;
    let user = authenticate(&d.manifest, peer)?;
    if names.is_empty() || names.iter().any(|n| n.is_empty()) {
        return Err(ApiError::bad_request(
            "name the secrets to read: ?s=NAME (repeatable)".into(),
        ));
    }
    authorize(&d.manifest, &user, Action::ReadSecret, names)?;
    let mut out = BTreeMap::new();
    for name in names {
        let spec = d
            .manifest
            .secrets
            .get(name)
            .ok_or_else(|| ApiError::not_found(format!("no secret {name} in the manifest")))?;
        if !spec.shared && !spec.user_defined {
            return Err(ApiError::forbidden(format!(
                "secret {name} is private to each marble and never readable"
            )));
        }
        let value = d.secrets.get(name).ok_or_else(|| {
            ApiError::not_found(format!("user-defined secret {name} has not been set yet"))
        })?;
        out.insert(name.clone(), secret_out(spec, value));
    }
    tracing::info!(user, secrets = ?names, "secrets read");
    Ok(out)
}

fn secret_out(spec: &SecretSpec, v: &SecretValue) -> SecretOut {
    SecretOut {
        kind: spec.kind.as_str().into(),
        size: spec.size,
        shared: spec.shared,
        user_defined: spec.user_defined,
        cert: v.cert.as_ref().map(|c| quarry_api::bytes::b64(c)),
        valid_for: spec.valid_for_days.unwrap_or(0),
        private: quarry_api::bytes::b64(&v.private),
        public: quarry_api::bytes::b64(&v.public),
    }
}

/// `POST /api/v2/secrets`.
pub async fn write(
    core: &Core,
    peer: Option<&[u8]>,
    req: SetSecretsRequest,
) -> Result<(), ApiError> {
    let _guard = core.manifest_lock.lock().await;
    let d = running(core)?;
    let user = authenticate(&d.manifest, peer)?;
    let names: Vec<String> = req.secrets.keys().cloned().collect();
    if names.is_empty() {
        return Err(ApiError::bad_request("no secrets in the request".into()));
    }
    authorize(&d.manifest, &user, Action::WriteSecret, &names)?;
    let mut values = BTreeMap::new();
    for (name, s) in &req.secrets {
        let spec = d
            .manifest
            .secrets
            .get(name)
            .ok_or_else(|| ApiError::not_found(format!("no secret {name} in the manifest")))?;
        if !spec.user_defined {
            return Err(ApiError::forbidden(format!(
                "secret {name} is generated by the coordinator; only user-defined secrets can be written"
            )));
        }
        values.insert(name.clone(), check_value(name, spec, s)?);
    }
    let view = core.view();
    let store = view
        .store
        .clone()
        .ok_or_else(|| ApiError::Internal("no store in state 3".into()))?;
    let mut txn = crate::store::Txn::new();
    let mut events = Vec::new();
    for (name, v) in &values {
        txn = txn.put(
            &format!("{}{name}", keys::SECRET_PREFIX),
            serde_json::to_vec(v).map_err(|e| ApiError::Internal(e.to_string()))?,
        );
        events.push(serde_json::json!({
            "type": "secret-set",
            "time": crate::translog::now_unix(),
            "name": name,
            "user": user,
        }));
    }
    view.log.commit_with_events(&store, txn, events).await?;
    let mut next = (*d).clone();
    next.secrets.extend(values);
    core.set_running(next);
    tracing::info!(user, secrets = ?names, "user-defined secrets set");
    Ok(())
}

fn check_value(name: &str, spec: &SecretSpec, s: &UserSecret) -> Result<SecretValue, ApiError> {
    let bad = |m: String| ApiError::bad_request(format!("secrets/{name}: {m}"));
    let decode = |field: &str, v: &str| {
        quarry_api::bytes::unb64(v).map_err(|e| bad(format!("{field} is not base64: {e}")))
    };
    match spec.kind {
        SecretKind::SymmetricKey | SecretKind::Plain => {
            if s.cert.is_some() || s.private.is_some() {
                return Err(bad(format!(
                    "a {} secret takes only Key",
                    spec.kind.as_str()
                )));
            }
            let key = decode(
                "Key",
                s.key
                    .as_deref()
                    .ok_or_else(|| bad("Key is required".into()))?,
            )?;
            if key.is_empty() || key.len() > MAX_SECRET_BYTES {
                return Err(bad(format!(
                    "Key must be 1..={MAX_SECRET_BYTES} bytes, got {}",
                    key.len()
                )));
            }
            if spec.kind == SecretKind::SymmetricKey && key.len() * 8 != spec.size as usize {
                return Err(bad(format!(
                    "symmetric-key of Size {} needs exactly {} bytes, got {}",
                    spec.size,
                    spec.size / 8,
                    key.len()
                )));
            }
            Ok(SecretValue {
                kind: spec.kind.as_str().into(),
                cert: None,
                public: key.clone(),
                private: key,
            })
        }
        SecretKind::CertEcdsa | SecretKind::CertRsa | SecretKind::CertEd25519 => {
            if s.key.is_some() {
                return Err(bad(
                    "a certificate secret takes Cert and Private, not Key".into()
                ));
            }
            let cert = decode(
                "Cert",
                s.cert
                    .as_deref()
                    .ok_or_else(|| bad("Cert is required".into()))?,
            )?;
            let (_, parsed) = x509_parser::parse_x509_certificate(&cert)
                .map_err(|e| bad(format!("Cert is not a DER X.509 certificate: {e}")))?;
            let spki = parsed.public_key().raw.to_vec();
            let private = match &s.private {
                None => Vec::new(),
                Some(p) => {
                    let der = decode("Private", p)?;
                    let key = rcgen::KeyPair::try_from(der.as_slice())
                        .map_err(|e| bad(format!("Private is not a PKCS#8 key: {e}")))?;
                    if rcgen::PublicKeyData::subject_public_key_info(&key) != spki {
                        return Err(bad("Private does not belong to Cert".into()));
                    }
                    der
                }
            };
            Ok(SecretValue {
                kind: spec.kind.as_str().into(),
                cert: Some(cert),
                public: spki,
                private,
            })
        }
    }
}
