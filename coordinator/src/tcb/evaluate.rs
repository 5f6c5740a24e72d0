//! Re-evaluation of stored evidence: plain functions of a verifier, the evidence, a package
//! and a time, so tests drive them with a collateral source and a clock of their own.
use std::time::SystemTime;

use quarry_api::tcb::{CollateralOrigin, TcbEntry};
use quarry_api::{Claims, Evidence, EvidenceType, Package, TcbStatus};
use quarry_attestation::{Verifier, VerifyError};

/// Verifies `evidence` at `at` with the verifier's *current* collateral: the collateral the
/// evidence carried is removed first, so TCB information published since the activation is
/// what judges it. Only when the coordinator has no collateral source (`has_source` false)
/// or the source has nothing for this platform is the embedded collateral used, and the
/// result says so ([`CollateralOrigin::Embedded`]).
pub fn verify_current(
    verifier: &dyn Verifier,
    has_source: bool,
    evidence: &Evidence,
    at: SystemTime,
) -> (Result<Claims, VerifyError>, CollateralOrigin) {
    if evidence.kind == EvidenceType::Simulated {
        return (verifier.verify(evidence, at), CollateralOrigin::Simulated);
    }
    let bare = Evidence {
        collateral: None,
        ..evidence.clone()
    };
    if !has_source {
        return match evidence.collateral {
            Some(_) => (verifier.verify(evidence, at), CollateralOrigin::Embedded),
            None => (verifier.verify(&bare, at), CollateralOrigin::None),
        };
    }
    match verifier.verify(&bare, at) {
        Err(VerifyError::Collateral(missing)) if evidence.collateral.is_some() => {
            let outcome = verifier.verify(evidence, at).map_err(|e| {
                VerifyError::Collateral(format!(
                    "{e} (the collateral source had none: {missing}; the evidence's own collateral was used)"
                ))
            });
            (outcome, CollateralOrigin::Embedded)
        }
        outcome => (outcome, CollateralOrigin::Source),
    }
}

/// The new verdict after an evaluation with `outcome`, from the previous one `prev`:
/// verified claims give the status, advisories, components to raise and the package check.
/// A refusal for a revoked TCB level is `Revoked` and out of policy; any other error (stale
/// or missing collateral: the coordinator's problem, not the platform's) keeps the previous
/// status and verdict and records the error.
pub fn judge(
    prev: &TcbEntry,
    outcome: Result<Claims, VerifyError>,
    origin: CollateralOrigin,
    package: &Package,
    now: u64,
) -> TcbEntry {
    let mut next = TcbEntry {
        checked_at: now,
        collateral: origin,
        ..prev.clone()
    };
    match outcome {
        Ok(claims) => {
            let standing = claims.tcb_standing.as_ref();
            next.status = Some(claims.tcb_status);
            next.advisories = claims.advisory_ids.clone();
            next.to_raise = standing.map(|s| s.to_raise.clone()).unwrap_or_default();
            next.evaluation_data_number = standing.map(|s| s.evaluation_data_number);
            match quarry_attestation::check_package(package, &claims) {
                Ok(()) => {
                    next.in_policy = true;
                    next.policy_fields.clear();
                }
                Err(m) => {
                    next.in_policy = false;
                    next.policy_fields = m.0;
                }
            }
            next.last_error = None;
        }
        Err(VerifyError::Revoked(reason)) => {
            next.status = Some(TcbStatus::Revoked);
            next.in_policy = false;
            next.policy_fields = vec![quarry_api::http::FieldMismatch {
                field: "AcceptedTCBStatuses".into(),
                expected: "not Revoked".into(),
                found: format!("Revoked ({reason})"),
            }];
            next.to_raise.clear();
            next.last_error = Some(format!("revoked: {reason}"));
        }
        Err(e) => next.last_error = Some(e.to_string()),
    }
    if changed(prev, &next) {
        next.previous_status = prev.status;
        next.changed_at = Some(now);
    }
    next
}

/// True when the status, the advisories or the policy verdict differ: a `tcb-change`.
pub fn changed(prev: &TcbEntry, next: &TcbEntry) -> bool {
    prev.status != next.status
        || prev.in_policy != next.in_policy
        || prev.advisories != next.advisories
}

/// True when `next` differs from `prev` in anything but the time of the check (the record
/// is written only then).
pub fn differs(prev: &TcbEntry, next: &TcbEntry) -> bool {
    let same_time = TcbEntry {
        checked_at: prev.checked_at,
        ..next.clone()
    };
    &same_time != prev
}
