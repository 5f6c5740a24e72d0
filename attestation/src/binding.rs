//! Report-data binding checks (contract §4.5).
use quarry_api::evidence::activation_report_data;
use quarry_api::Claims;

use crate::VerifyError;

/// Checks that the claims bind the activation key (`SHA-256(SPKI)`) and the nonce, if any.
pub fn check_activation_binding(
    claims: &Claims,
    spki_der: &[u8],
    nonce: Option<&[u8; 32]>,
) -> Result<(), VerifyError> {
    let expected = activation_report_data(spki_der, nonce);
    let refuse = |part, reason, range: std::ops::Range<usize>| VerifyError::Binding {
        part,
        reason,
        expected: hex::encode(&expected[range.clone()]),
        found: hex::encode(&claims.report_data[range]),
    };
    if claims.report_data[..32] != expected[..32] {
        return Err(refuse(
            "report_data[0..32]",
            "is not SHA-256 of the TLS client key of this connection (evidence replayed or made for another key)",
            0..32,
        ));
    }
    if claims.report_data[32..] != expected[32..] {
        return Err(refuse(
            "report_data[32..64]",
            match nonce {
                Some(_) => "does not match the nonce issued for this activation",
                None => "must be zero when no nonce was used",
            },
            32..64,
        ));
    }
    Ok(())
}
