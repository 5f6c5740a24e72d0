//! The monitor on a real coordinator core, driven by the real TDX TCB recovery of the shared
//! data: `dcapqvl_tdx_quote_v4.bin` is UpToDate under its evaluation-17 collateral
//! (2025-07-01) and OutOfDate under the evaluation-20 TCB info of the v5 quote's collateral
//! (2026-10-20). The collateral source (an offline cache directory, as `--collateral-dir`)
//! changes between the two runs and the clock is ours.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use quarry_api::manifest::TcbChangeAction;
use quarry_api::tcb::CollateralOrigin;
use quarry_api::{Evidence, EvidenceType, TcbStatus};
use quarry_attestation::collateral::{CollateralCache, DcapKey, PckCaType};
use quarry_attestation::simulated::SimPlatform;
use quarry_attestation::{Verifier, VerifierSet, VerifyError};

use super::evaluate;
use super::monitor::{recheck, report};
use super::record::{self, PlatformRecord};
use crate::state::Core;
use crate::store::Txn;
use crate::tee::Tee;

const T_2025_07_01: u64 = 1_751_328_000;
const T_2026_10_20: u64 = 1_792_454_400;
const ADVISORIES: [&str; 4] = [
    "INTEL-SA-01192",
    "INTEL-SA-01245",
    "INTEL-SA-01312",
    "INTEL-SA-01313",
];

fn at(unix: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(unix)
}

/// `shared/testdata/attestation/tdx` above this crate, or under `$QUARRY_SHARED_DIR`.
fn tdx_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("QUARRY_SHARED_DIR") {
        return PathBuf::from(dir).join("testdata/attestation/tdx");
    }
    let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    loop {
        let p = dir.join("shared/testdata/attestation/tdx");
        if p.is_dir() {
            return p;
        }
        assert!(dir.pop(), "shared/testdata/attestation/tdx not found");
    }
}

fn collateral_json(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(tdx_dir().join(name)).expect("collateral");
    serde_json::from_str(&text).expect("collateral is JSON")
}

/// Puts `name` into the cache directory as the collateral of the v4 quote's platform (FMSPC
/// B0C06F000000, either PCK CA), as a PCCS refresh or an operator would. The cache drops a
/// per-quote PCK chain (the v5 quote's collateral carries that other platform's).
fn publish(cache: &CollateralCache, name: &str) {
    let text = std::fs::read_to_string(tdx_dir().join(name)).expect("collateral");
    let c = quarry_attestation::dcap::parse_collateral(&text).expect("collateral parses");
    for ca in [PckCaType::Processor, PckCaType::Platform] {
        let key = DcapKey {
            tee: quarry_api::TeeKind::Tdx,
            fmspc: "B0C06F000000".into(),
            ca,
        };
        cache.store_dcap(&key, &c).expect("stores");
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    data: PathBuf,
    sim: PathBuf,
    core: Core,
    cache: CollateralCache,
    verifier: Arc<dyn Verifier>,
    uuid: uuid::Uuid,
}

async fn fixture(action: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (data, sim) = (dir.path().join("data"), dir.path().join("sim"));
    SimPlatform::create(&sim).unwrap();
    let core = Core::open(&data, Tee::simulated(&sim, None).unwrap())
        .await
        .unwrap();
    let coll = dir.path().join("collateral");
    let cache = CollateralCache::offline(&coll);
    publish(&cache, "dcapqvl_tdx_quote_v4.collateral.json");
    let verifier: Arc<dyn Verifier> = Arc::new(VerifierSet::hardware(Some(Arc::new(
        CollateralCache::offline(&coll),
    ))));
    // The evidence as a sidecar with `--collateral` sends it: the activation-time collateral
    // travels inside, which the monitor must not rely on.
    let evidence = Evidence {
        kind: EvidenceType::TdxDcap,
        quote: std::fs::read(tdx_dir().join("dcapqvl_tdx_quote_v4.bin")).unwrap(),
        collateral: Some(collateral_json("dcapqvl_tdx_quote_v4.collateral.json")),
    };
    let claims = verifier
        .verify(&evidence, at(T_2025_07_01))
        .expect("the v4 quote verifies at its recorded time");
    assert_eq!(claims.tcb_status, TcbStatus::UpToDate);
    let manifest = serde_json::json!({
        "Packages": {"td": {"TEE": "tdx", "MRTD": claims.identity.fields["MRTD"], "Debug": claims.debug}},
        "Marbles": {"td-app": {"Package": "td"}},
        "Config": {"TCBChangeAction": action}
    });
    crate::manifest::set::set_manifest(&core, serde_json::to_vec(&manifest).unwrap())
        .await
        .unwrap();
    // What activation stores (the binding to a TLS key cannot hold for a recorded quote, so
    // the record is written as activation writes it).
    let uuid = uuid::Uuid::new_v4();
    let view = core.view();
    let (deployment, store) = view.running("test").unwrap();
    let now = crate::clock::now_unix();
    let rec = PlatformRecord::accepted(
        "td-app",
        &uuid,
        &evidence,
        &claims,
        deployment.mesh.cert_der(),
        now as i64 + 3600,
        now,
        None,
    );
    store
        .commit(Txn::new().put(&record::key(&uuid), rec.encode().unwrap()))
        .await
        .unwrap();
    Fixture {
        _dir: dir,
        data,
        sim,
        core,
        cache,
        verifier,
        uuid,
    }
}

fn tcb_events(core: &Core) -> Vec<serde_json::Value> {
    core.view()
        .log
        .entries(0)
        .into_iter()
        .map(|e| e.event)
        .filter(|e| e["type"] == "tcb-change")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_tcb_info_turns_a_running_marble_out_of_policy_with_components_to_raise() {
    let f = fixture("refuse-renewal").await;
    let core = &f.core;

    // Unchanged collateral: the verdict stands, nothing is logged.
    let changes = recheck(core, f.verifier.clone(), true, at(T_2025_07_01))
        .await
        .unwrap();
    assert!(changes.is_empty(), "{changes:?}");
    let before = report(core).await.unwrap();
    assert_eq!(before.action, "refuse-renewal");
    let e = &before.marbles[0];
    assert_eq!(
        (e.status, e.in_policy, e.previous_status),
        (Some(TcbStatus::UpToDate), true, None)
    );
    assert_eq!(e.collateral, CollateralOrigin::Source);
    assert!(tcb_events(core).is_empty());
    assert!(core.tcb.out_of_policy().is_empty());

    // Intel publishes evaluation 20; it lands in the coordinator's collateral directory.
    publish(&f.cache, "dcapqvl_tdx_quote_v5_td15ex.collateral.json");
    let changes = recheck(core, f.verifier.clone(), true, at(T_2026_10_20))
        .await
        .unwrap();
    assert_eq!(changes.len(), 1, "{changes:?}");
    let c = &changes[0];
    assert_eq!(c.action, TcbChangeAction::RefuseRenewal);
    assert!(!c.revoked);
    let e = &c.entry;
    assert_eq!(e.uuid, f.uuid.to_string());
    assert_eq!(e.previous_status, Some(TcbStatus::UpToDate));
    assert_eq!(e.status, Some(TcbStatus::OutOfDate));
    assert_eq!(e.advisories, ADVISORIES);
    assert!(!e.in_policy);
    assert_eq!(e.policy_fields.len(), 1, "{:?}", e.policy_fields);
    assert_eq!(e.policy_fields[0].field, "AcceptedTCBStatuses");
    assert!(e.policy_fields[0].found.starts_with("OutOfDate"));
    // Judged by the source's evaluation-20 TCB info, not the evaluation-17 copy inside.
    assert_eq!(e.collateral, CollateralOrigin::Source);
    assert_eq!(e.evaluation_data_number, Some(20));
    let gaps: Vec<(&str, u16, u16)> = e
        .to_raise
        .iter()
        .map(|g| (g.component.as_str(), g.found, g.required))
        .collect();
    assert_eq!(
        gaps,
        [
            ("CPUSVN[0]", 3, 4),
            ("CPUSVN[1]", 3, 4),
            ("TEE_TCB_SVN[2]", 3, 4),
            ("TDX_MODULE_ISVSVN", 6, 11)
        ]
    );
    assert!(e.last_error.is_none() && e.changed_at.is_some() && !e.simulation);

    // Relying parties see it in the log, once.
    let events = tcb_events(core);
    assert_eq!(events.len(), 1, "{events:?}");
    let ev = &events[0];
    assert_eq!(ev["uuid"], f.uuid.to_string());
    assert_eq!(ev["marbleType"], "td-app");
    assert_eq!(ev["previousStatus"], "UpToDate");
    assert_eq!(ev["status"], "OutOfDate");
    assert_eq!(ev["inPolicy"], false);
    assert_eq!(ev["action"], "refuse-renewal");
    assert_eq!(ev["advisories"], serde_json::json!(ADVISORIES));
    assert_eq!(ev["toRaise"].as_array().unwrap().len(), 4);

    // The report, the metric and the renewal gate agree.
    let after = report(core).await.unwrap();
    assert_eq!(after.marbles.len(), 1);
    assert_eq!(&after.marbles[0], e);
    assert_eq!(
        core.tcb.out_of_policy().into_iter().collect::<Vec<_>>(),
        [(("td-app".to_string(), "OutOfDate".to_string()), 1)]
    );
    let metrics = crate::http::ops::render(core);
    assert!(
        metrics.contains(
            "quarry_tcb_marbles_out_of_policy{marble_type=\"td-app\",status=\"OutOfDate\"} 1"
        ),
        "{metrics}"
    );
    let refusal =
        crate::marble::renewal::refuse_out_of_policy(TcbChangeAction::RefuseRenewal, Some(e))
            .unwrap_err();
    assert_eq!(refusal.code(), "tcb-out-of-policy");
    assert!(refusal.to_string().contains("TCB status OutOfDate (advisories: INTEL-SA-01192,INTEL-SA-01245,INTEL-SA-01312,INTEL-SA-01313)"), "{refusal}");
    assert_eq!(refusal.fields()[0].field, "AcceptedTCBStatuses");
    assert!(
        crate::marble::renewal::refuse_out_of_policy(TcbChangeAction::Warn, Some(e)).is_ok(),
        "warn never refuses"
    );

    // The same collateral again: no new change, no new event.
    let again = recheck(core, f.verifier.clone(), true, at(T_2026_10_20))
        .await
        .unwrap();
    assert!(again.is_empty(), "{again:?}");
    assert_eq!(tcb_events(core).len(), 1);

    // The record survives a restart of the coordinator.
    let (data, sim) = (f.data.clone(), f.sim.clone());
    drop(f.core);
    let reopened = Core::open(&data, Tee::simulated(&sim, None).unwrap())
        .await
        .unwrap();
    let kept = report(&reopened).await.unwrap();
    assert_eq!(kept.marbles.len(), 1);
    assert_eq!(kept.marbles[0].status, Some(TcbStatus::OutOfDate));
    assert_eq!(kept.marbles[0].previous_status, Some(TcbStatus::UpToDate));
    assert_eq!(kept.marbles[0].to_raise.len(), 4);
}

/// `Config.TCBChangeAction: revoke`: the marble that falls out of policy is revoked by the
/// monitor (a `revocation` event naming the monitor and the reason beside the `tcb-change`
/// event), can neither renew nor activate again, and is revoked once only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_revoke_action_a_marble_out_of_policy_is_revoked_once() {
    let f = fixture("revoke").await;
    let core = &f.core;
    let untouched = recheck(core, f.verifier.clone(), true, at(T_2025_07_01))
        .await
        .unwrap();
    assert!(untouched.is_empty(), "in policy: nothing to do");
    publish(&f.cache, "dcapqvl_tdx_quote_v5_td15ex.collateral.json");
    let changes = recheck(core, f.verifier.clone(), true, at(T_2026_10_20))
        .await
        .unwrap();
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0].action, TcbChangeAction::Revoke);
    assert!(changes[0].revoked, "the monitor revoked the marble");
    assert_eq!(changes[0].entry.status, Some(TcbStatus::OutOfDate));
    let events: Vec<serde_json::Value> = core
        .view()
        .log
        .entries(0)
        .into_iter()
        .map(|e| e.event)
        .filter(|e| e["type"] == "revocation")
        .collect();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["uuid"], f.uuid.to_string());
    assert_eq!(
        events[0]["user"],
        crate::marble::revocation::TCB_MONITOR_USER
    );
    assert!(
        events[0]["reason"].as_str().unwrap().contains("OutOfDate"),
        "{}",
        events[0]
    );
    assert_eq!(tcb_events(core)[0]["action"], "revoke");
    let view = core.view();
    let (_, store) = view.running("test").unwrap();
    let refused =
        crate::marble::revocation::ensure_not_revoked(store.as_ref(), &view.log, &f.uuid, None)
            .await
            .unwrap_err();
    assert!(refused.to_string().contains("is revoked"), "{refused}");
    // The next pass stops watching the revoked marble and revokes nothing again.
    let again = recheck(core, f.verifier.clone(), true, at(T_2026_10_20))
        .await
        .unwrap();
    assert!(again.iter().all(|c| !c.revoked), "{again:?}");
    let revocations = core
        .view()
        .log
        .entries(0)
        .into_iter()
        .filter(|e| e.event["type"] == "revocation")
        .count();
    assert_eq!(revocations, 1);
}

#[test]
fn without_a_collateral_source_the_embedded_collateral_is_used_and_said() {
    let evidence = Evidence {
        kind: EvidenceType::TdxDcap,
        quote: std::fs::read(tdx_dir().join("dcapqvl_tdx_quote_v4.bin")).unwrap(),
        collateral: Some(collateral_json("dcapqvl_tdx_quote_v4.collateral.json")),
    };
    let bare = VerifierSet::hardware(None);
    let (outcome, origin) = evaluate::verify_current(&bare, false, &evidence, at(T_2025_07_01));
    assert_eq!(origin, CollateralOrigin::Embedded);
    assert_eq!(outcome.expect("verifies").tcb_status, TcbStatus::UpToDate);

    // A source that has nothing for the platform: the embedded copy, said so, and its
    // expiry at a later date is an error that keeps the previous verdict.
    let empty = tempfile::tempdir().unwrap();
    let offline = VerifierSet::hardware(Some(Arc::new(CollateralCache::offline(empty.path()))));
    let (outcome, origin) = evaluate::verify_current(&offline, true, &evidence, at(T_2026_10_20));
    assert_eq!(origin, CollateralOrigin::Embedded);
    let err = outcome.unwrap_err();
    assert!(matches!(err, VerifyError::Collateral(_)), "{err}");
    assert!(err.to_string().contains("own collateral was used"), "{err}");

    let prev = quarry_api::tcb::TcbEntry {
        marble_type: "t".into(),
        uuid: "u".into(),
        evidence_type: EvidenceType::TdxDcap,
        previous_status: None,
        status: Some(TcbStatus::UpToDate),
        advisories: vec![],
        in_policy: true,
        policy_fields: vec![],
        to_raise: vec![],
        evaluation_data_number: Some(17),
        collateral: CollateralOrigin::Source,
        evidence_at: 1,
        checked_at: 1,
        changed_at: None,
        last_error: None,
        simulation: false,
    };
    let pkg = quarry_api::Package::default();
    let next = evaluate::judge(&prev, Err(err), origin, &pkg, 2);
    assert_eq!(
        (next.status, next.in_policy),
        (Some(TcbStatus::UpToDate), true)
    );
    assert!(!evaluate::changed(&prev, &next));
    assert!(evaluate::differs(&prev, &next), "the error is recorded");
    assert!(next.last_error.as_deref().unwrap().contains("collateral"));
    let _ = bare;
}
