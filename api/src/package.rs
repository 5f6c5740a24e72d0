//! A checked package: the reference values evidence must match (contract §4.6).
use serde::{Deserialize, Serialize};

use crate::claims::{SnpTcb, TcbStatus, TeeKind};

/// Reference values for one package of a manifest, after validation.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Package {
    /// Which TEE the package runs in (`TEE`, default `sgx`).
    pub tee: TeeKind,
    /// Exact measurement pin (`UniqueID`: MRENCLAVE, or the simulated executable hash).
    pub unique_id: Option<Vec<u8>>,
    /// Signer pin (`SignerID`: MRSIGNER).
    pub signer_id: Option<Vec<u8>>,
    /// Product ID, compared for equality (`ProductID`).
    pub product_id: Option<u64>,
    /// Minimum security version (`SecurityVersion`).
    pub security_version: Option<u64>,
    /// Debug flag, compared for equality (`Debug`).
    pub debug: bool,
    /// Accepted TCB statuses; empty means `UpToDate` and `SWHardeningNeeded`.
    pub accepted_tcb_statuses: Vec<TcbStatus>,
    /// Advisory IDs accepted (empty = any), compared case-insensitively.
    pub accepted_advisories: Vec<String>,
    /// Platform identities (FMSPC / CHIP_ID / simulated platform digest) allowed; empty = any.
    pub allowed_platforms: Vec<String>,
    /// TEE-specific reference values by claim field name (e.g. `MRTD`), hex, compared exactly.
    pub fields: std::collections::BTreeMap<String, String>,
    /// SEV-SNP minimum REPORTED_TCB, compared component by component (`MinimumTCB`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_tcb: Option<SnpTcb>,
    /// SEV-SNP: highest VMPL the report may be requested at (`MaxVMPL`; 0, the default, is
    /// the guest kernel itself; 1..=3 is code running under an SVSM at VMPL 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_vmpl: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Package {
    /// The TCB statuses this package accepts, with the default applied.
    pub fn effective_tcb_statuses(&self) -> Vec<TcbStatus> {
        if self.accepted_tcb_statuses.is_empty() {
            TcbStatus::DEFAULT_ACCEPTED.to_vec()
        } else {
            self.accepted_tcb_statuses.clone()
        }
    }
}
