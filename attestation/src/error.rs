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
    /// A certificate or the evidence is not valid at the verification time.
    #[error("not valid at the verification time: {0}")]
    Expired(String),
    /// The report data does not bind what it must.
    #[error("binding mismatch: {0}")]
    Binding(String),
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
    /// An attribute or policy bit of the evidence is not acceptable (names the bit).
    #[error("attribute refused: {0}")]
    Attribute(String),
    /// A certificate does not belong to the evidence (TCB, chip ID or product line differ).
    #[error("certificate mismatch: {0}")]
    CertificateMismatch(String),
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
