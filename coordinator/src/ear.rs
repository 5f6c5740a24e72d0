//! The coordinator's EAR (`GET /api/v2/attestation?format=ear`): its own evidence, appraised
//! by its own verifier, as an EAT Attestation Result signed with a dedicated ES256 key.
//!
//! The key is derived from the sealed root secret (HKDF-SHA256, its own label), so it is the
//! same across restarts and on every replica of a deployment, is never stored anywhere
//! else, and exists only where the root secret is unsealed. The version-2 statement names the
//! key's SHA-256, so the quote over that statement binds the key; a relying party checks the
//! token with the key the quote binds (`quarry_trust::ear`).

use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use quarry_api::ear::{self, EarInput, P256_SPKI_PREFIX};
use quarry_api::manifest::Manifest;
use quarry_api::statement::Statement;
use quarry_api::Claims;
use ring::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};

/// HKDF salt of the EAR key. Private secrets use the salt `<hyphenated UUID><name>`, which
/// starts with 36 hex digits and hyphens; this text does not, so no secret shares its key.
const SALT: &[u8] = b"quarry ear signing key";
/// HKDF info; a new version means a new key.
const INFO: &[u8] = b"v1";

/// `ear_verifier_id.build`.
pub const BUILD: &str = concat!("quarry-coordinator ", env!("CARGO_PKG_VERSION"));

/// The EAR signing key (ECDSA P-256). Debug prints the key's digest only.
pub struct EarKey {
    pair: EcdsaKeyPair,
    spki: Vec<u8>,
}

impl std::fmt::Debug for EarKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EarKey(sha256 {})", ear::key_digest(&self.spki))
    }
}

impl EarKey {
    /// The deployment's EAR key, derived from its root secret.
    pub fn derive(root_secret: &[u8]) -> Result<EarKey, String> {
        if root_secret.len() < 32 {
            // Recovery's placeholder identity has no root secret; a key from it would be
            // guessable.
            return Err("no root secret to derive the EAR key from".into());
        }
        let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(SALT), root_secret);
        // A candidate scalar is out of range with probability about 2^-32; the counter
        // makes the next candidate deterministic too.
        for counter in 0u8..=255 {
            let mut okm = zeroize::Zeroizing::new([0u8; 32]);
            hk.expand(&[INFO, &[counter]].concat(), okm.as_mut())
                .map_err(|_| "HKDF expand failed".to_string())?;
            let Ok(secret) = p256::SecretKey::from_slice(okm.as_ref()) else {
                continue;
            };
            let point = secret.public_key().to_encoded_point(false);
            let pair = EcdsaKeyPair::from_private_key_and_public_key(
                &ECDSA_P256_SHA256_FIXED_SIGNING,
                okm.as_ref(),
                point.as_bytes(),
                &ring::rand::SystemRandom::new(),
            )
            .map_err(|e| format!("EAR key rejected: {e}"))?;
            return Ok(EarKey::from_pair(pair));
        }
        Err("no EAR key candidate in range".into())
    }

    fn from_pair(pair: EcdsaKeyPair) -> EarKey {
        let spki = [&P256_SPKI_PREFIX[..], pair.public_key().as_ref()].concat();
        EarKey { pair, spki }
    }

    /// DER SubjectPublicKeyInfo of the key.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki
    }

    /// Hex SHA-256 of the SPKI: the statement's `ear_key_sha256`.
    pub fn digest(&self) -> String {
        ear::key_digest(&self.spki)
    }

    /// PEM `PUBLIC KEY`.
    pub fn public_pem(&self) -> String {
        quarry_api::bytes::encode_pem("PUBLIC KEY", &self.spki)
    }

    /// Signs a claims set: the compact JWS (ES256).
    pub fn sign(&self, claims: &serde_json::Value) -> Result<String, String> {
        let input = ear::signing_input(claims);
        let sig = self
            .pair
            .sign(&ring::rand::SystemRandom::new(), input.as_bytes())
            .map_err(|_| "EAR signing failed".to_string())?;
        Ok(ear::compact(&input, sig.as_ref()))
    }
}

/// The signed EAR of `claims` (the coordinator's own evidence, verified) for `statement`.
pub fn issue(
    key: &EarKey,
    claims: &Claims,
    statement: &Statement,
    manifest: Option<&Manifest>,
) -> Result<String, String> {
    let iat = crate::clock::now_unix();
    let set = ear::claims_set(&EarInput {
        claims,
        statement,
        manifest,
        build: BUILD,
        iat,
    });
    key.sign(&set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_a_function_of_the_root_secret_and_nothing_else() {
        let a = EarKey::derive(&[1; 32]).unwrap();
        let b = EarKey::derive(&[1; 32]).unwrap();
        let c = EarKey::derive(&[2; 32]).unwrap();
        assert_eq!(a.spki_der(), b.spki_der());
        assert_ne!(a.spki_der(), c.spki_der());
        assert_eq!(a.spki_der().len(), 91);
        assert!(a.public_pem().starts_with("-----BEGIN PUBLIC KEY-----"));
        assert!(EarKey::derive(&[]).is_err());
        assert_eq!(format!("{a:?}"), format!("EarKey(sha256 {})", a.digest()));
    }

    #[test]
    fn a_signature_verifies_with_the_public_key_and_not_after_a_change() {
        let key = EarKey::derive(&[3; 32]).unwrap();
        let token = key.sign(&serde_json::json!({"a": 1})).unwrap();
        let parts = ear::parse(&token).unwrap();
        let public = ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_FIXED,
            &key.spki_der()[P256_SPKI_PREFIX.len()..],
        );
        public
            .verify(parts.signing_input.as_bytes(), &parts.signature)
            .unwrap();
        assert!(public.verify(b"other", &parts.signature).is_err());
    }
}
