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
    if claims.report_data[..32] != expected[..32] {
        return Err(VerifyError::Binding(
            "report_data[0..32] is not SHA-256 of the TLS client key of this connection (evidence replayed or made for another key)".into(),
        ));
    }
    if claims.report_data[32..] != expected[32..] {
        return Err(VerifyError::Binding(match nonce {
            Some(_) => {
                "report_data[32..64] does not match the nonce issued for this activation".into()
            }
            None => "report_data[32..64] must be zero when no nonce was used".into(),
        }));
    }
    Ok(())
}
