//! Errors of evidence providers and verifiers.

/// Why evidence was refused. Every variant names what failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The evidence bytes do not parse; names the part and offset where known.
    #[error("malformed evidence: {0}")]
    Malformed(String),
    /// The evidence type is not accepted here.
    #[error("unsupported evidence: {0}")]
    Unsupported(String),
    /// The evidence is signed by a platform this verifier does not trust.
    #[error("untrusted platform: {0}")]
    UntrustedPlatform(String),
    /// The signature over the evidence does not verify.
    #[error("bad signature: {0}")]
    BadSignature(String),
    /// A certificate, CRL, collateral item or the evidence is not valid at the verification
    /// time: the item, the time and the window it was compared with (Unix seconds).
    #[error("not valid at the verification time: {}", expired_text(what, *now, *not_before, *not_after))]
    Expired {
        /// What is out of its window (`PCK CRL`, `VCEK certificate SEV-VCEK`, ...).
        what: String,
        /// The verification time.
        now: i64,
        /// Start of the validity window, when the item has one.
        not_before: Option<i64>,
        /// End of the validity window, when the item has one.
        not_after: Option<i64>,
    },
    /// The report data does not bind what it must: which bytes, why, and both values (hex,
    /// in [`VerifyError::fields`]).
    #[error("binding mismatch: {part} {reason}")]
    Binding {
        /// The bytes compared (`report_data[0..32]`).
        part: &'static str,
        /// What they must be.
        reason: &'static str,
        /// The expected bytes, hex.
        expected: String,
        /// The bytes in the evidence, hex.
        found: String,
    },
    /// Collateral needed for verification is missing or unusable (names the item).
    #[error("collateral: {0}")]
    Collateral(String),
    /// The evidence comes from a debug enclave or VM and debug is not allowed.
    #[error("debug evidence refused: {0}")]
    Debug(String),
    /// The platform's TCB matches no level of the TCB info (or is below the minimum).
    #[error("TCB not supported: {0}")]
    TcbUnsupported(String),
    /// The platform, a certificate or the TCB level is revoked.
    #[error("revoked: {0}")]
    Revoked(String),
    /// An attribute or policy bit of the evidence is not acceptable: its name, its value,
    /// and what is allowed.
    #[error("attribute refused: {name} is {found} ({allowed})")]
    Attribute {
        /// The attribute (`guest policy MIGRATE_MA`, `VMPL`, a TD attribute ...).
        name: String,
        /// Its value in the evidence.
        found: String,
        /// What is accepted.
        allowed: String,
    },
    /// A certificate does not belong to the evidence (TCB, chip ID or product line differ):
    /// the field compared, what the evidence implies and what the certificate says.
    #[error("certificate mismatch: {field}: expected {expected}, found {found}")]
    CertificateMismatch {
        /// What was compared (`ARK`, `VEK issuer`, `hwID`, `REPORTED_TCB`, ...).
        field: String,
        /// The value the evidence calls for.
        expected: String,
        /// The value found.
        found: String,
    },
}

impl VerifyError {
    /// The compared values of this refusal, for the API's `fields` (empty where the
    /// refusal compares nothing).
    pub fn fields(&self) -> Vec<quarry_api::http::FieldMismatch> {
        use crate::timefmt::rfc3339;
        use quarry_api::http::FieldMismatch;
        let one = |field: &str, expected: String, found: String| {
            vec![FieldMismatch {
                field: field.to_string(),
                expected,
                found,
            }]
        };
        match self {
            VerifyError::Expired {
                what,
                now,
                not_before,
                not_after,
            } => {
                let from = not_before.map_or("-".into(), rfc3339);
                let to = not_after.map_or("-".into(), rfc3339);
                one(what, format!("valid from {from} until {to}"), rfc3339(*now))
            }
            VerifyError::Binding {
                part,
                expected,
                found,
                ..
            } => one(part, expected.clone(), found.clone()),
            VerifyError::Attribute {
                name,
                found,
                allowed,
            } => one(name, allowed.clone(), found.clone()),
            VerifyError::CertificateMismatch {
                field,
                expected,
                found,
            } => one(field, expected.clone(), found.clone()),
            _ => Vec::new(),
        }
    }
}

/// `what` against its window: "X expired at T (verification time N)" and the like.
fn expired_text(what: &str, now: i64, not_before: Option<i64>, not_after: Option<i64>) -> String {
    use crate::timefmt::rfc3339;
    let at = rfc3339(now);
    match (not_before, not_after) {
        (Some(nb), _) if now < nb => {
            format!(
                "{what} is not valid before {} (verification time {at})",
                rfc3339(nb)
            )
        }
        (_, Some(na)) if now >= na => {
            format!("{what} expired at {} (verification time {at})", rfc3339(na))
        }
        _ => format!("{what} (verification time {at})"),
    }
}

/// Why evidence could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// Reading or writing a device or key file failed.
    #[error("{what}: {source}")]
    Io {
        /// The path or device involved.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Key material is unusable.
    #[error("{0}")]
    Key(String),
}
