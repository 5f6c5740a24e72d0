//! What the coordinator keeps per active marble to re-evaluate its platform: the evidence
//! (quote bytes, type, and the collateral it carried, used only when the coordinator has no
//! collateral of its own), the mesh CA and expiry of its current leaf (a leaf of an older
//! mesh CA or past its expiry can never renew, so its record is dropped) and the last
//! verdict. Stored sealed at `tcb/<uuid>`, written in the activation's and renewal's
//! transactions, so it survives restarts and replicas share it.
use quarry_api::tcb::{CollateralOrigin, TcbEntry};
use quarry_api::{Claims, Evidence};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::http::error::ApiError;
use crate::state::keys;
use crate::store::{Store, StoreError};

/// One marble's stored platform evidence and verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlatformRecord {
    /// The evidence of the last activation or renewal.
    pub evidence: Evidence,
    /// SHA-256 (hex) of the mesh CA that issued the marble's current leaf.
    pub mesh_ca_sha256: String,
    /// `notAfter` of the marble's current leaf, Unix seconds.
    pub not_after: i64,
    /// The last verdict.
    pub entry: TcbEntry,
}

/// The store key of a marble's record.
pub fn key(uuid: &uuid::Uuid) -> String {
    format!("{}{}", keys::TCB_PREFIX, uuid.hyphenated())
}

/// SHA-256 (hex) of a mesh CA certificate, as records name it.
pub fn mesh_digest(mesh_ca_der: &[u8]) -> String {
    hex::encode(Sha256::digest(mesh_ca_der))
}

impl PlatformRecord {
    /// The record of evidence that just passed activation or renewal (so the package
    /// accepted `claims`): `previous` is the marble's earlier verdict, if any.
    #[allow(clippy::too_many_arguments)]
    pub fn accepted(
        marble_type: &str,
        uuid: &uuid::Uuid,
        evidence: &Evidence,
        claims: &Claims,
        mesh_ca_der: &[u8],
        not_after: i64,
        now: u64,
        previous: Option<&TcbEntry>,
    ) -> PlatformRecord {
        let standing = claims.tcb_standing.as_ref();
        let origin = if claims.simulation {
            CollateralOrigin::Simulated
        } else if evidence.collateral.is_some() {
            CollateralOrigin::Embedded
        } else {
            CollateralOrigin::Source
        };
        let mut entry = TcbEntry {
            marble_type: marble_type.to_string(),
            uuid: uuid.hyphenated().to_string(),
            evidence_type: evidence.kind,
            previous_status: previous.and_then(|p| p.previous_status),
            status: Some(claims.tcb_status),
            advisories: claims.advisory_ids.clone(),
            in_policy: true,
            policy_fields: Vec::new(),
            to_raise: standing.map(|s| s.to_raise.clone()).unwrap_or_default(),
            evaluation_data_number: standing.map(|s| s.evaluation_data_number),
            collateral: origin,
            evidence_at: now,
            checked_at: now,
            changed_at: previous.and_then(|p| p.changed_at),
            last_error: None,
            simulation: claims.simulation,
        };
        if let Some(p) = previous {
            if p.status != entry.status || !p.in_policy {
                entry.previous_status = p.status;
                entry.changed_at = Some(now);
            }
        }
        PlatformRecord {
            evidence: evidence.clone(),
            mesh_ca_sha256: mesh_digest(mesh_ca_der),
            not_after,
            entry,
        }
    }

    /// The stored bytes.
    pub fn encode(&self) -> Result<Vec<u8>, ApiError> {
        serde_json::to_vec(self)
            .map_err(|e| ApiError::Internal(format!("encoding the TCB record: {e}")))
    }

    /// Decodes the record stored at `key`.
    pub fn decode(key: &str, bytes: &[u8]) -> Result<PlatformRecord, StoreError> {
        serde_json::from_slice(bytes)
            .map_err(|e| StoreError::Corrupt(format!("TCB record {key}: {e}")))
    }
}

/// The marble's record and its revision, when it has one.
pub async fn load(
    store: &dyn Store,
    uuid: &uuid::Uuid,
) -> Result<Option<(PlatformRecord, u64)>, StoreError> {
    let key = key(uuid);
    match store.get(&key).await? {
        Some(v) => Ok(Some((PlatformRecord::decode(&key, &v.value)?, v.revision))),
        None => Ok(None),
    }
}
