//! The signature of `POST /api/v2/sign-quote` (MarbleRun's `SignQuoteEndpoint`): the
//! coordinator's root CA key signs, with ECDSA P-256 over SHA-256, the text
//! `base64std(quote) ‖ tcbStatus`. A relying party that pinned the root certificate from an
//! attested statement checks it offline with [`verify`].
use base64::Engine as _;
use x509_parser::der_parser::asn1_rs::BitString;
use x509_parser::x509::AlgorithmIdentifier;

/// The signed text: standard base64 of the quote exactly as posted, then the TCB status.
/// Base64 text never starts like a manifest (`{`) or a DER structure (`0x30`), the other
/// things the root key signs, so a signature here cannot be taken for one of those.
pub fn message(quote: &[u8], tcb_status: &str) -> Vec<u8> {
    let mut m = base64::engine::general_purpose::STANDARD
        .encode(quote)
        .into_bytes();
    m.extend_from_slice(tcb_status.as_bytes());
    m
}

/// Why a sign-quote signature does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The root certificate does not parse.
    #[error("root certificate: {0}")]
    RootCertificate(String),
    /// `verificationSignature` is not standard base64.
    #[error("verificationSignature is not base64: {0}")]
    Encoding(String),
    /// The signature is not the root key's over this quote and status.
    #[error("verificationSignature is not the root CA key's signature over this quote and TCB status {0:?}")]
    Mismatch(String),
}

/// Checks `signature_b64` (the response's `verificationSignature`) over `quote` and
/// `tcb_status` against the public key of `root_der`, the coordinator's root certificate.
pub fn verify(
    root_der: &[u8],
    quote: &[u8],
    tcb_status: &str,
    signature_b64: &str,
) -> Result<(), SignatureError> {
    let signature = base64::engine::general_purpose::STANDARD
        .decode(signature_b64.trim())
        .map_err(|e| SignatureError::Encoding(e.to_string()))?;
    let (_, root) = x509_parser::parse_x509_certificate(root_der)
        .map_err(|e| SignatureError::RootCertificate(e.to_string()))?;
    let algorithm =
        AlgorithmIdentifier::new(x509_parser::oid_registry::OID_SIG_ECDSA_WITH_SHA256, None);
    x509_parser::verify::verify_signature(
        root.public_key(),
        &algorithm,
        &BitString::new(0, &signature),
        &message(quote, tcb_status),
    )
    .map_err(|_| SignatureError::Mismatch(tcb_status.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh P-256 root certificate and its key's signature over `quote` and `status`.
    fn signed(quote: &[u8], status: &str) -> (Vec<u8>, String) {
        use rcgen::SigningKey as _;
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec![])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let sig = key.sign(&message(quote, status)).unwrap();
        (
            cert.der().to_vec(),
            base64::engine::general_purpose::STANDARD.encode(sig),
        )
    }

    #[test]
    fn the_message_is_base64_of_the_quote_then_the_status() {
        assert_eq!(
            message(b"\x03\x00\x02\x00", "UpToDate"),
            b"AwACAA==UpToDate"
        );
    }

    #[test]
    fn a_signature_verifies_only_for_its_quote_status_and_key() {
        let (root, sig) = signed(b"quote bytes", "OutOfDate");
        assert_eq!(verify(&root, b"quote bytes", "OutOfDate", &sig), Ok(()));
        assert_eq!(
            verify(&root, b"quote bytes", "UpToDate", &sig),
            Err(SignatureError::Mismatch("UpToDate".into())),
            "a changed status is refused"
        );
        assert!(matches!(
            verify(&root, b"quote byteS", "OutOfDate", &sig),
            Err(SignatureError::Mismatch(_))
        ));
        let (other_root, _) = signed(b"x", "y");
        assert!(matches!(
            verify(&other_root, b"quote bytes", "OutOfDate", &sig),
            Err(SignatureError::Mismatch(_))
        ));
        assert!(matches!(
            verify(&root, b"quote bytes", "OutOfDate", "not base64!"),
            Err(SignatureError::Encoding(_))
        ));
        assert!(matches!(
            verify(b"junk", b"quote bytes", "OutOfDate", &sig),
            Err(SignatureError::RootCertificate(_))
        ));
    }
}
