//! `POST /api/v2/sign-quote` (MarbleRun's `SignQuoteEndpoint` feature gate): anyone may
//! have the coordinator verify an SGX (or TDX) DCAP quote with its own verifiers and
//! collateral source, and gets the TCB status back signed by the root CA key
//! ([`quarry_api::quote_signature`]). The quote is not checked against the manifest, and a
//! quote whose TCB status no package would accept is still signed, with that status: the
//! signature vouches for the verification, the relying party decides what to accept.
use quarry_api::http::{SignQuoteRequest, SignQuoteResponse};
use quarry_api::manifest::FeatureGate;
use quarry_api::{Evidence, EvidenceType};
use sha2::{Digest, Sha256};

use crate::http::error::ApiError;
use crate::state::{Core, Phase};

/// The Open Enclave report header MarbleRun clients may put before the quote: version 1,
/// type 2 (remote), then the quote's length (little endian).
const OE_HEADER_LEN: usize = 16;

/// The quote without an Open Enclave report header, if it has one. A raw DCAP quote starts
/// with its version (3, 4 or 5) as a 16-bit value, never with the header's 32-bit 1.
pub fn strip_oe_header(quote: &[u8]) -> &[u8] {
    let header = |a: usize, b: usize| quote.get(a..b).unwrap_or_default();
    let size = header(8, 16)
        .try_into()
        .map(u64::from_le_bytes)
        .unwrap_or(u64::MAX);
    if header(0, 4) == [1, 0, 0, 0]
        && header(4, 8) == [2, 0, 0, 0]
        && usize::try_from(size).ok() == Some(quote.len().saturating_sub(OE_HEADER_LEN))
    {
        &quote[OE_HEADER_LEN..]
    } else {
        quote
    }
}

/// SGX or TDX, from the quote header's TEE type (bytes 4..8: 0 = SGX, 0x81 = TDX).
fn evidence_type(quote: &[u8]) -> EvidenceType {
    match quote.get(4..8) {
        Some([0x81, 0, 0, 0]) => EvidenceType::TdxDcap,
        _ => EvidenceType::SgxDcap,
    }
}

/// `POST /api/v2/sign-quote`.
pub async fn sign(core: &Core, req: SignQuoteRequest) -> Result<SignQuoteResponse, ApiError> {
    let view = core.view();
    let enabled = match view.phase.as_ref() {
        Phase::Running(d) => d
            .manifest
            .config
            .feature_enabled(FeatureGate::SignQuoteEndpoint),
        _ => false,
    };
    if !enabled {
        return Err(ApiError::feature_disabled(format!(
            "{} the SignQuoteEndpoint feature gate (Config.FeatureGates), so POST /api/v2/sign-quote is off",
            match view.phase.as_ref() {
                Phase::Running(_) => "the manifest does not enable",
                _ => "no manifest is set to enable",
            }
        )));
    }
    let posted = quarry_api::bytes::unb64(req.sgx_quote.trim())
        .map_err(|e| ApiError::invalid_field("sgxQuote", format!("not standard base64: {e}")))?;
    if posted.is_empty() {
        return Err(ApiError::invalid_field(
            "sgxQuote",
            "missing or empty: send the quote as standard base64".into(),
        ));
    }
    let quote = strip_oe_header(&posted).to_vec();
    let evidence = Evidence {
        kind: evidence_type(&quote),
        quote,
        collateral: None,
    };
    let verifier = core.tee.verifier.clone();
    let at = core.tee.now();
    let claims = tokio::task::spawn_blocking(move || verifier.verify(&evidence, at))
        .await
        .map_err(|e| ApiError::Internal(format!("verification task: {e}")))?
        .map_err(|e| ApiError::invalid_field("sgxQuote", format!("does not verify: {e}")))?;
    let tcb_status = claims.tcb_status.as_str();
    let signature = view
        .identity
        .root
        .sign(&quarry_api::quote_signature::message(&posted, tcb_status))?;
    tracing::info!(
        tee = %claims.tee,
        tcb_status,
        debug = claims.debug,
        quote_sha256 = %hex::encode(Sha256::digest(&posted)),
        "quote verified and signed"
    );
    Ok(SignQuoteResponse {
        tcb_status: tcb_status.to_string(),
        verification_signature: quarry_api::bytes::b64(&signature),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_enclave_header_is_removed_and_nothing_else_is() {
        let raw = [3u8, 0, 2, 0, 0, 0, 0, 0, 9, 9];
        assert_eq!(strip_oe_header(&raw), raw);
        let mut with = vec![1, 0, 0, 0, 2, 0, 0, 0];
        with.extend_from_slice(&(raw.len() as u64).to_le_bytes());
        with.extend_from_slice(&raw);
        assert_eq!(strip_oe_header(&with), raw);
        // A header whose length does not match is not a header.
        with[8] = 99;
        assert_eq!(strip_oe_header(&with), with.as_slice());
        assert_eq!(strip_oe_header(&[1, 0]), [1, 0]);
        assert_eq!(
            evidence_type(&[4, 0, 2, 0, 0x81, 0, 0, 0]),
            EvidenceType::TdxDcap
        );
        assert_eq!(evidence_type(&raw), EvidenceType::SgxDcap);
    }
}
