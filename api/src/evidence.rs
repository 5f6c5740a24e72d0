//! Evidence as it travels on the wire (contract §4.1).
use serde::{Deserialize, Serialize};

/// Length of the report data every TEE binds into its evidence.
pub const REPORT_DATA_LEN: usize = 64;

/// The format of a piece of evidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EvidenceType {
    /// An Intel SGX DCAP quote (v3).
    #[serde(rename = "sgx-dcap")]
    SgxDcap,
    /// An Intel TDX DCAP quote (v4/v5).
    #[serde(rename = "tdx-dcap")]
    TdxDcap,
    /// An AMD SEV-SNP attestation report.
    #[serde(rename = "snp")]
    Snp,
    /// Development evidence signed by a simulated platform key (contract §4.4).
    #[serde(rename = "simulated")]
    Simulated,
}

impl EvidenceType {
    /// The wire name of this type.
    pub fn as_str(self) -> &'static str {
        match self {
            EvidenceType::SgxDcap => "sgx-dcap",
            EvidenceType::TdxDcap => "tdx-dcap",
            EvidenceType::Snp => "snp",
            EvidenceType::Simulated => "simulated",
        }
    }
}

/// Hardware (or simulated) evidence plus optional collateral.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// Format of `quote`.
    #[serde(rename = "type")]
    pub kind: EvidenceType,
    /// The quote or report bytes (base64 on the wire).
    #[serde(with = "crate::bytes::base64")]
    pub quote: Vec<u8>,
    /// Verification collateral (PCK chain, CRLs, TCB info, VCEK...), format per `kind`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collateral: Option<serde_json::Value>,
}

/// Builds the 64 report-data bytes of a marble activation (contract §4.5):
/// `SHA-256(SPKI DER) || nonce-or-zeros`.
pub fn activation_report_data(spki_der: &[u8], nonce: Option<&[u8; 32]>) -> [u8; REPORT_DATA_LEN] {
    use sha2::{Digest, Sha256};
    let mut out = [0u8; REPORT_DATA_LEN];
    out[..32].copy_from_slice(&Sha256::digest(spki_der));
    if let Some(n) = nonce {
        out[32..].copy_from_slice(n);
    }
    out
}
