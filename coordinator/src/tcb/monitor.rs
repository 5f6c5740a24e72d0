//! The monitor: re-evaluates every stored platform record ([`recheck`]), commits each change
//! with a `tcb-change` transparency-log event, warns, applies `Config.TCBChangeAction`, and
//! runs periodically and when the collateral directory changes ([`spawn`]). It keeps the
//! last run's verdicts in memory for the metric and the report's check times.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use quarry_api::manifest::TcbChangeAction;
use quarry_api::tcb::{TcbEntry, TcbReport};
use quarry_attestation::Verifier;

use super::evaluate;
use super::record::{self, PlatformRecord};
use crate::http::error::ApiError;
use crate::state::{keys, Core};
use crate::store::{Check, StoreError, Txn};

/// Default of `--tcb-recheck-interval`.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(3600);
/// How often the collateral directory is looked at for changes.
const COLLATERAL_POLL: Duration = Duration::from_secs(1);

/// One `tcb-change`: the new verdict and what was done about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The new verdict (with `previous_status`).
    pub entry: TcbEntry,
    /// The manifest's action.
    pub action: TcbChangeAction,
    /// True when the monitor revoked the marble.
    pub revoked: bool,
}

/// Re-evaluates every stored record with `verifier` at `at` (`has_source`: the coordinator
/// has a collateral source of its own), drops records of marbles that can no longer renew
/// (revoked, leaf of an older mesh CA, leaf expired, type removed), and commits each changed
/// verdict, with a `tcb-change` event when the status, advisories or policy verdict changed.
/// A record changed meanwhile by a renewal or another replica is left to that writer.
pub async fn recheck(
    core: &Core,
    verifier: Arc<dyn Verifier>,
    has_source: bool,
    at: SystemTime,
) -> Result<Vec<Change>, ApiError> {
    let view = core.view();
    let (deployment, store) = view.running("no TCB re-evaluation")?;
    let manifest = &deployment.manifest;
    let action = manifest.config.tcb_change_action;
    let mesh = record::mesh_digest(deployment.mesh.cert_der());
    let mut changes = Vec::new();
    let mut seen = BTreeMap::new();
    for (key, stored) in store.scan(keys::TCB_PREFIX).await? {
        let rec = match PlatformRecord::decode(&key, &stored.value) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(key, error = %e, "TCB record unreadable; skipped");
                continue;
            }
        };
        let Ok(uuid) = uuid::Uuid::parse_str(&rec.entry.uuid) else {
            tracing::error!(key, "TCB record names no UUID; skipped");
            continue;
        };
        let now = crate::clock::now_unix();
        let entry = crate::marble::activation::marble_entry(manifest, &rec.entry.marble_type, true);
        let gone = if view.log.revoked_uuid(&rec.entry.uuid).is_some()
            || store
                .get(&crate::marble::revocation::uuid_key(&uuid))
                .await?
                .is_some()
        {
            Some("the marble is revoked")
        } else if rec.mesh_ca_sha256 != mesh {
            Some("its leaf is of an older mesh CA and cannot renew")
        } else if rec.not_after < now as i64 {
            Some("its leaf expired and cannot renew")
        } else if entry.is_err() {
            Some("its marble type is no longer in the manifest")
        } else {
            None
        };
        if let Some(why) = gone {
            let txn = Txn {
                checks: vec![Check::Revision(key.clone(), stored.revision)],
                deletes: vec![key.clone()],
                ..Txn::default()
            };
            match store.commit(txn).await {
                Ok(_) | Err(StoreError::Conflict(_)) => {}
                Err(e) => return Err(e.into()),
            }
            tracing::info!(marble_type = %rec.entry.marble_type, uuid = %uuid, reason = why, "TCB monitor stops watching a marble");
            continue;
        }
        let Ok((_, package)) = entry else { continue };
        let (evidence, v) = (rec.evidence.clone(), verifier.clone());
        let (outcome, origin) = tokio::task::spawn_blocking(move || {
            evaluate::verify_current(v.as_ref(), has_source, &evidence, at)
        })
        .await
        .map_err(|e| ApiError::Internal(format!("TCB re-evaluation task: {e}")))?;
        let next = evaluate::judge(&rec.entry, outcome, origin, package, now);
        seen.insert(next.uuid.clone(), next.clone());
        if !evaluate::differs(&rec.entry, &next) {
            continue;
        }
        let significant = evaluate::changed(&rec.entry, &next);
        if let Some(error) = &next.last_error {
            if rec.entry.last_error.as_ref() != Some(error) {
                tracing::warn!(marble_type = %next.marble_type, uuid = %uuid, error = %error, "TCB re-evaluation failed; the previous verdict stands");
            }
        }
        let updated = PlatformRecord {
            entry: next.clone(),
            ..rec.clone()
        };
        let txn = Txn::new()
            .require(&key, Some(stored.revision))
            .put(&key, updated.encode()?);
        let events = if significant {
            vec![change_event(&next, action)]
        } else {
            Vec::new()
        };
        match view.log.commit_with_events(&store, txn, events).await {
            Ok(_) => {}
            Err(StoreError::Conflict(_)) => continue,
            Err(e) => return Err(e.into()),
        }
        if !significant {
            continue;
        }
        warn_change(&next, action);
        let mut revoked = false;
        if action == TcbChangeAction::Revoke && !next.in_policy {
            revoked = crate::marble::revocation::revoke_for_tcb(
                &view,
                &store,
                &next.marble_type,
                &uuid,
                &format!("tcb-out-of-policy: {}", summary(&next)),
            )
            .await?;
        }
        changes.push(Change {
            entry: next,
            action,
            revoked,
        });
    }
    let mut inner = core.tcb.lock();
    inner.entries = seen;
    inner.last_run = Some(crate::clock::now_unix());
    Ok(changes)
}

/// `TCB status OutOfDate (advisories: A,B)`, or the error when nothing was ever verified.
pub fn summary(e: &TcbEntry) -> String {
    let status = e.status.map_or("unknown", |s| s.as_str());
    let advisories = if e.advisories.is_empty() {
        "none".to_string()
    } else {
        e.advisories.join(",")
    };
    format!("TCB status {status} (advisories: {advisories})")
}

fn warn_change(e: &TcbEntry, action: TcbChangeAction) {
    let to_raise: Vec<String> = e.to_raise.iter().map(|g| g.to_string()).collect();
    tracing::warn!(
        marble_type = %e.marble_type,
        uuid = %e.uuid,
        previous_status = e.previous_status.map_or("unknown", |s| s.as_str()),
        status = e.status.map_or("unknown", |s| s.as_str()),
        advisories = %e.advisories.join(","),
        in_policy = e.in_policy,
        to_raise = %to_raise.join("; "),
        collateral = e.collateral.as_str(),
        simulation = e.simulation,
        action = action.as_str(),
        "TCB status of a running marble changed"
    );
}

/// The `tcb-change` transparency-log event: what relying parties see.
fn change_event(e: &TcbEntry, action: TcbChangeAction) -> serde_json::Value {
    serde_json::json!({
        "type": "tcb-change",
        "time": e.checked_at,
        "marbleType": e.marble_type,
        "uuid": e.uuid,
        "previousStatus": e.previous_status.map(|s| s.as_str()),
        "status": e.status.map(|s| s.as_str()),
        "advisories": e.advisories,
        "inPolicy": e.in_policy,
        "toRaise": e.to_raise.iter().map(|g| g.to_string()).collect::<Vec<_>>(),
        "collateral": e.collateral.as_str(),
        "action": action.as_str(),
        "simulation": e.simulation,
    })
}

/// `GET /api/v2/tcb`: every stored record's verdict, by marble type then UUID.
pub async fn report(core: &Core) -> Result<TcbReport, ApiError> {
    let view = core.view();
    let (deployment, store) = view.running("no TCB report")?;
    let mut marbles = Vec::new();
    for (key, stored) in store.scan(keys::TCB_PREFIX).await? {
        marbles.push(PlatformRecord::decode(&key, &stored.value)?.entry);
    }
    // One lock for the whole read (std's Mutex is not reentrant: no other Monitor method here).
    let inner = core.tcb.lock();
    for m in &mut marbles {
        // Unchanged verdicts are not written back; the memory knows when they were checked.
        if let Some(seen) = inner.entries.get(&m.uuid) {
            m.checked_at = m.checked_at.max(seen.checked_at);
        }
    }
    marbles.sort_by(|a, b| (&a.marble_type, &a.uuid).cmp(&(&b.marble_type, &b.uuid)));
    Ok(TcbReport {
        action: deployment
            .manifest
            .config
            .tcb_change_action
            .as_str()
            .to_string(),
        recheck_interval_seconds: inner.interval.unwrap_or(DEFAULT_INTERVAL).as_secs(),
        last_run: inner.last_run,
        simulation: core.tee.simulation,
        marbles,
    })
}

/// A cheap fingerprint of a directory tree: every file's path, size and modification time.
fn fingerprint(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                out.push((entry.path(), meta.len(), meta.modified().ok()));
            }
        }
    }
    out.sort();
    out
}

/// Runs the monitor until the task is aborted: once at start, every `interval`, and whenever
/// a file in the collateral directory appears, changes or goes (new TCB info, a PCCS
/// refresh written to the cache).
pub fn spawn(core: Arc<Core>, interval: Duration) -> tokio::task::JoinHandle<()> {
    core.tcb.lock().interval = Some(interval);
    tokio::spawn(async move {
        let dir = core.tee.collateral_dir.clone();
        let scan = |dir: Option<PathBuf>| async move {
            match dir {
                Some(d) => tokio::task::spawn_blocking(move || fingerprint(&d))
                    .await
                    .unwrap_or_default(),
                None => Vec::new(),
            }
        };
        let mut seen = scan(dir.clone()).await;
        let mut due = Instant::now();
        loop {
            let now = Instant::now();
            let mut why = None;
            if now >= due {
                why = Some("periodic");
            } else {
                tokio::time::sleep(COLLATERAL_POLL.min(due - now)).await;
                let current = scan(dir.clone()).await;
                if current != seen {
                    seen = current;
                    why = Some("collateral changed");
                }
            }
            let Some(why) = why else { continue };
            due = Instant::now() + interval;
            run_once(&core, why).await;
        }
    })
}

async fn run_once(core: &Core, why: &str) {
    if !matches!(core.view().phase.as_ref(), crate::state::Phase::Running(_)) {
        return;
    }
    let has_source = core.tee.collateral_dir.is_some();
    match recheck(core, core.tee.verifier.clone(), has_source, core.tee.now()).await {
        Ok(changes) => {
            tracing::debug!(
                trigger = why,
                changes = changes.len(),
                "TCB re-evaluation done"
            )
        }
        Err(e) => tracing::warn!(trigger = why, error = %e, "TCB re-evaluation failed"),
    }
}
