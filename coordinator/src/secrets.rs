//! Manifest secrets with MarbleRun semantics (reference §2.6): shared ones generated when the
//! manifest is set; private symmetric keys derived per marble by HKDF from the root secret
//! (stable across restarts); private certificates issued fresh at each activation.
use std::collections::BTreeMap;

use quarry_api::manifest::{SecretKind, SecretSpec};
use quarry_api::template::{MaterialKind, Part, Reference, SecretMaterial, TemplateContext};
use quarry_api::Secret;
use serde::{Deserialize, Serialize};

use crate::pki::{CaKey, CertKeyKind, PkiError};

/// A secret value as stored (inside the sealed store).
#[derive(Clone, Serialize, Deserialize)]
pub struct SecretValue {
    /// Wire name of the kind.
    pub kind: String,
    /// Certificate DER, for certificate kinds.
    #[serde(default, with = "quarry_api::bytes::base64_opt")]
    pub cert: Option<Vec<u8>>,
    /// Public key (SPKI DER) or the key itself.
    #[serde(with = "quarry_api::bytes::base64")]
    pub public: Vec<u8>,
    /// Private key (PKCS#8 DER) or the key itself.
    #[serde(with = "quarry_api::bytes::base64")]
    pub private: Vec<u8>,
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretValue")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl Drop for SecretValue {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.private.zeroize();
        if self.kind == SecretKind::SymmetricKey.as_str() || self.kind == SecretKind::Plain.as_str()
        {
            self.public.zeroize();
        }
    }
}

impl SecretValue {
    /// The material a template renders.
    pub fn material(&self) -> SecretMaterial {
        SecretMaterial {
            kind: MaterialKind::Secret(
                SecretKind::parse(&self.kind).unwrap_or(SecretKind::SymmetricKey),
            ),
            cert_der: self.cert.clone(),
            public: self.public.clone(),
            private: Secret::new(self.private.clone()),
        }
    }

    fn symmetric(kind: SecretKind, key: Vec<u8>) -> SecretValue {
        SecretValue {
            kind: kind.as_str().into(),
            cert: None,
            public: key.clone(),
            private: key,
        }
    }
}

/// Key kind of a certificate secret.
pub fn cert_key_kind(kind: SecretKind) -> Option<CertKeyKind> {
    match kind {
        SecretKind::CertEcdsa => Some(CertKeyKind::Ecdsa),
        SecretKind::CertRsa => Some(CertKeyKind::Rsa),
        SecretKind::CertEd25519 => Some(CertKeyKind::Ed25519),
        SecretKind::SymmetricKey | SecretKind::Plain => None,
    }
}

/// Generates a new value for `spec` (shared secrets at manifest time; private certificates
/// at activation).
pub fn generate(spec: &SecretSpec, mesh: &CaKey) -> Result<SecretValue, PkiError> {
    match cert_key_kind(spec.kind) {
        Some(k) => {
            let c =
                mesh.issue_secret_cert(k, spec.size, spec.cert.as_ref(), spec.valid_for_days)?;
            Ok(SecretValue {
                kind: spec.kind.as_str().into(),
                cert: Some(c.cert_der),
                public: c.public,
                private: c.private.expose().to_vec(),
            })
        }
        None => {
            let mut key = vec![0u8; (spec.size / 8) as usize];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
                .map_err(|_| PkiError::Key("system RNG failed".into()))?;
            Ok(SecretValue::symmetric(spec.kind, key))
        }
    }
}

/// A private symmetric key: HKDF-SHA256(ikm = root secret, salt = UUID ‖ secret name,
/// info = marble type, or empty with `DisableSecretBinding`). Deterministic, so the same
/// marble gets the same key after any restart.
pub fn derive_private_symmetric(
    root_secret: &Secret,
    uuid: &uuid::Uuid,
    name: &str,
    marble_type: &str,
    disable_binding: bool,
    size_bits: u32,
) -> Result<SecretValue, String> {
    let salt = format!("{uuid}{name}");
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(salt.as_bytes()), root_secret.expose());
    let mut out = vec![0u8; (size_bits / 8) as usize];
    let info = if disable_binding { "" } else { marble_type };
    hk.expand(info.as_bytes(), &mut out)
        .map_err(|_| format!("secret {name}: HKDF cannot produce {size_bits} bits"))?;
    Ok(SecretValue::symmetric(SecretKind::SymmetricKey, out))
}

/// Everything a marble's templates may reference.
pub struct ActivationContext<'a> {
    /// Secrets by name (shared, user-defined, and this marble's private ones).
    pub secrets: &'a BTreeMap<String, SecretValue>,
    /// Previous values (after updates); empty before any update.
    pub previous: &'a BTreeMap<String, SecretValue>,
    /// Root CA DER.
    pub root_ca: &'a [u8],
    /// Mesh CA DER.
    pub mesh_ca: &'a [u8],
    /// The marble's leaf DER.
    pub marble_cert: &'a [u8],
    /// The marble's SPKI DER.
    pub marble_public: &'a [u8],
}

impl TemplateContext for ActivationContext<'_> {
    fn lookup(&self, reference: &Reference) -> Result<SecretMaterial, String> {
        let reserved = |der: &[u8], public: &[u8]| SecretMaterial {
            kind: MaterialKind::Reserved,
            cert_der: Some(der.to_vec()),
            public: public.to_vec(),
            private: Secret::default(),
        };
        match reference {
            Reference::Secret { name, previous, .. } => {
                let (values, missing) = if *previous {
                    (
                        self.previous,
                        "no previous value (no manifest update has replaced it)",
                    )
                } else {
                    (self.secrets, "no value (user-defined secrets must be set with POST /api/v2/secrets first)")
                };
                values
                    .get(name)
                    .map(SecretValue::material)
                    .ok_or_else(|| format!("secret {name} has {missing}"))
            }
            Reference::RootCa | Reference::CoordinatorRoot => Ok(reserved(self.root_ca, &[])),
            Reference::CoordinatorIntermediate => Ok(reserved(self.mesh_ca, &[])),
            Reference::MarbleCert(Part::Cert | Part::Public | Part::Private) => {
                Ok(reserved(self.marble_cert, self.marble_public))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_symmetric_keys_are_stable_and_bound() {
        let root = Secret::new(vec![1; 32]);
        let u = uuid::Uuid::new_v4();
        let a = derive_private_symmetric(&root, &u, "k", "web", false, 256).unwrap();
        let b = derive_private_symmetric(&root, &u, "k", "web", false, 256).unwrap();
        assert_eq!(a.private, b.private);
        assert_eq!(a.private.len(), 32);
        let other_type = derive_private_symmetric(&root, &u, "k", "db", false, 256).unwrap();
        assert_ne!(a.private, other_type.private);
        let unbound = derive_private_symmetric(&root, &u, "k", "db", true, 256).unwrap();
        let unbound2 = derive_private_symmetric(&root, &u, "k", "web", true, 256).unwrap();
        assert_eq!(unbound.private, unbound2.private);
        let other_uuid =
            derive_private_symmetric(&root, &uuid::Uuid::new_v4(), "k", "web", false, 256).unwrap();
        assert_ne!(a.private, other_uuid.private);
        let other_root =
            derive_private_symmetric(&Secret::new(vec![2; 32]), &u, "k", "web", false, 256)
                .unwrap();
        assert_ne!(a.private, other_root.private);
    }

    #[test]
    fn debug_never_prints_key_bytes() {
        let v = SecretValue::symmetric(SecretKind::SymmetricKey, vec![0xAB; 16]);
        let s = format!("{v:?}");
        assert!(
            !s.contains("171") && !s.to_lowercase().contains("abab"),
            "{s}"
        );
    }
}
