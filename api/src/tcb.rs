//! Wire types of the coordinator's TCB monitor (`GET /api/v2/tcb`, `quarry tcb report`):
//! per running marble, the TCB status its platform had and has now under the coordinator's
//! current collateral, and whether the marble's package still accepts it.
use serde::{Deserialize, Serialize};

use crate::claims::{ComponentGap, TcbStatus};
use crate::evidence::EvidenceType;
use crate::http::FieldMismatch;

/// Where the collateral of a re-evaluation came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CollateralOrigin {
    /// The coordinator's current collateral source (`--collateral-dir`, PCCS / KDS).
    Source,
    /// Only the collateral the evidence carried at activation: it may be stale, so a status
    /// from it says nothing about TCB information published since.
    Embedded,
    /// The simulated TCB info (`simulated-tcb.json`): SIMULATION, not hardware.
    Simulated,
    /// None could be used (see `lastError`).
    None,
}

impl CollateralOrigin {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            CollateralOrigin::Source => "source",
            CollateralOrigin::Embedded => "embedded",
            CollateralOrigin::Simulated => "simulated",
            CollateralOrigin::None => "none",
        }
    }
}

/// One running marble's platform as the TCB monitor last judged it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TcbEntry {
    /// Marble type.
    pub marble_type: String,
    /// Marble UUID.
    pub uuid: String,
    /// Evidence type the marble activated with.
    pub evidence_type: EvidenceType,
    /// Status before the last change (absent until the status changed once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_status: Option<TcbStatus>,
    /// Status now (absent when no evaluation has succeeded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<TcbStatus>,
    /// Advisories that apply now.
    #[serde(default)]
    pub advisories: Vec<String>,
    /// True while the marble's current package accepts the platform.
    pub in_policy: bool,
    /// The package fields the platform fails (empty while in policy).
    #[serde(default)]
    pub policy_fields: Vec<FieldMismatch>,
    /// Components to raise to reach the newest UpToDate level (DCAP, simulated).
    #[serde(default)]
    pub to_raise: Vec<ComponentGap>,
    /// `tcbEvaluationDataNumber` of the TCB information that judged the platform.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluation_data_number: Option<u32>,
    /// Where the collateral of the last evaluation came from.
    pub collateral: CollateralOrigin,
    /// When the marble activated (or last renewed its evidence), Unix seconds.
    pub evidence_at: u64,
    /// When the platform was last evaluated, Unix seconds.
    pub checked_at: u64,
    /// When the status or policy verdict last changed, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_at: Option<u64>,
    /// The last evaluation's error (the status above is then the one before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// True for simulated evidence (the status is simulated too).
    pub simulation: bool,
}

/// `GET /api/v2/tcb`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TcbReport {
    /// `Config.TCBChangeAction` of the manifest (`warn`, `refuse-renewal`, `revoke`).
    pub action: String,
    /// Seconds between periodic re-evaluations (`--tcb-recheck-interval`).
    pub recheck_interval_seconds: u64,
    /// When the last re-evaluation of all marbles finished, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<u64>,
    /// True on a simulated coordinator.
    pub simulation: bool,
    /// One entry per running marble, by marble type then UUID.
    pub marbles: Vec<TcbEntry>,
}
