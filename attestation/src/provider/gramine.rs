//! Gramine SGX evidence: write REPORTDATA to `user_report_data`, read `quote`.
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use quarry_api::{Evidence, EvidenceType, REPORT_DATA_LEN};

use super::io_err;
use crate::{EvidenceProvider, ProviderError};

/// Evidence from Gramine's `/dev/attestation` (or a prepared directory with the same files).
pub struct GramineProvider {
    root: PathBuf,
    // user_report_data + quote is a two-step exchange: one request at a time.
    lock: Mutex<()>,
}

impl GramineProvider {
    /// Opens the provider; refuses unless `attestation_type` says `dcap`.
    pub fn open(root: &Path) -> Result<GramineProvider, ProviderError> {
        let path = root.join("attestation_type");
        let kind = std::fs::read_to_string(&path).map_err(io_err(path.display()))?;
        let kind = kind.trim_matches(|c: char| c.is_whitespace() || c == '\0');
        if kind != "dcap" {
            return Err(ProviderError::Key(format!(
                "{}: attestation type is {kind:?}, Quarry needs \"dcap\" (set sgx.remote_attestation = \"dcap\" in the Gramine manifest)",
                path.display()
            )));
        }
        Ok(GramineProvider {
            root: root.to_path_buf(),
            lock: Mutex::new(()),
        })
    }

    /// Gramine's sealing key bound to MRENCLAVE (16 bytes), when the file exists.
    pub fn mrenclave_seal_key(&self) -> Result<Vec<u8>, ProviderError> {
        let path = self.root.join("keys/_sgx_mrenclave");
        std::fs::read(&path).map_err(io_err(path.display()))
    }
}

impl EvidenceProvider for GramineProvider {
    fn evidence(&self, report_data: &[u8; REPORT_DATA_LEN]) -> Result<Evidence, ProviderError> {
        let _guard = self
            .lock
            .lock()
            .map_err(|_| ProviderError::Key("Gramine provider lock poisoned".into()))?;
        let urd = self.root.join("user_report_data");
        std::fs::write(&urd, report_data).map_err(io_err(urd.display()))?;
        let qpath = self.root.join("quote");
        let quote = std::fs::read(&qpath).map_err(io_err(qpath.display()))?;
        let len = crate::dcap::quote_len(&quote)
            .map_err(|e| ProviderError::Key(format!("{}: {e}", qpath.display())))?;
        Ok(Evidence {
            kind: EvidenceType::SgxDcap,
            quote: quote[..len].to_vec(),
            collateral: None,
        })
    }

    fn is_simulated(&self) -> bool {
        false
    }
}
