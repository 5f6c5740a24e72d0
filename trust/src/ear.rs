//! The relying party's check of a coordinator's EAR (`format=ear`): after
//! [`crate::relying_party::verify`] accepted the attestation, the EAR must be signed by the
//! key the verified statement binds (`ear_key_sha256`, so the one quote covers it) and name
//! that statement. Only then is its appraisal worth printing.
use quarry_api::attestation::{AttestationResponse, Verified};
use quarry_api::ear::{self, EarError, P256_SPKI_PREFIX};
use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};

/// Checks `attestation.ear` against the key in `attestation.ear_key`, which must be the one
/// `verified.statement` binds, and the token's claims against that statement. Returns the
/// verified claims set.
pub fn verify_ear(
    attestation: &AttestationResponse,
    verified: &Verified,
) -> Result<serde_json::Value, EarError> {
    let st = &verified.statement;
    let bound = st
        .ear_key_sha256
        .as_deref()
        .ok_or(EarError::Unbound(st.version))?;
    let token = attestation
        .ear
        .as_deref()
        .ok_or_else(|| EarError::Malformed("the attestation carries no EAR (field ear)".into()))?;
    let key_pem = attestation.ear_key.as_deref().ok_or_else(|| {
        EarError::Malformed("the attestation carries no EAR key (field earKey)".into())
    })?;
    let spki = pem::parse(key_pem.trim())
        .map_err(|e| EarError::Malformed(format!("earKey is not PEM: {e}")))?
        .into_contents();
    verify_token(token, &spki, bound, st)
}

/// Checks one token: `spki` (DER) must hash to `bound`, the ES256 signature must verify with
/// it, and the claims must belong to `statement`.
pub fn verify_token(
    token: &str,
    spki: &[u8],
    bound: &str,
    statement: &quarry_api::statement::Statement,
) -> Result<serde_json::Value, EarError> {
    let found = ear::key_digest(spki);
    if !found.eq_ignore_ascii_case(bound) {
        return Err(EarError::KeyNotBound {
            expected: bound.to_string(),
            found,
        });
    }
    let point = spki
        .strip_prefix(&P256_SPKI_PREFIX[..])
        .filter(|p| p.len() == 65)
        .ok_or_else(|| EarError::Malformed("earKey is not an uncompressed P-256 key".into()))?;
    let parts = ear::parse(token)?;
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
        .verify(parts.signing_input.as_bytes(), &parts.signature)
        .map_err(|_| EarError::Signature)?;
    ear::check_binding(&parts.payload, statement)?;
    Ok(parts.payload)
}

#[cfg(test)]
mod tests;
