//! Split-view detection: replicas compare their transparency-log heads over the attested
//! peer channel.
//!
//! etcd can show two replicas two forks of one history (two clusters restored from one
//! backup, or a proxy answering each replica differently). Each replica checks etcd only
//! against its own rollback evidence, so each would accept its own fork. The log is where a
//! fork shows: two honest views of one deployment's log are always one a prefix of the
//! other, so a peer whose root over the shorter of the two sizes differs serves another
//! history. The replica that sees this stops serving (Recovery `split-view`), and so does the
//! peer it asked when that peer can see it too.
//!
//! Who is asked: the replicas announced in etcd and every key-sharing address the log
//! records (`replica-joined` events, appended once per address by a running replica; an etcd
//! writer cannot remove them, the log being covered by the rollback evidence). An attacker
//! who also cuts the network between the replicas hides a fork: an unreachable peer is
//! evidence of nothing (docs/SECURITY.md).
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use quarry_api::manifest::SealMode;
use quarry_api::{Claims, Evidence};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use super::exchange::{connect_peer, read_msg, report_data, verify_peer, write_msg, LogHead};
use crate::state::{Core, Phase, RecoveryReason};
use crate::store::etcd::EtcdConn;

/// Addresses from the log asked per pass (the newest ones).
const MAX_LOGGED_PEERS: usize = 16;
/// Time limit of one head comparison.
const ASK_TIMEOUT: Duration = Duration::from_secs(10);

/// The answer to a head request.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct HeadAnswer {
    #[serde(default)]
    evidence: Option<Evidence>,
    #[serde(default)]
    head: Option<LogHead>,
    /// The answerer's root over the asker's size, when its log is at least that long.
    #[serde(default)]
    root_at_your_size: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

/// What comparing this replica's log with a peer's head shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Comparison {
    /// One log is a prefix of the other.
    Consistent,
    /// The logs differ within their common size: another history.
    Fork(String),
    /// The answer lacks what the comparison needs.
    Inconclusive(String),
}

/// Compares `own` (with `own_root_at`, this log's root over a smaller size) with `peer`'s
/// head and `peer_root_at_own`, the peer's root over `own.size` when its log is as long.
pub fn judge(
    own: &LogHead,
    own_root_at: &dyn Fn(u64) -> Option<String>,
    peer: &LogHead,
    peer_root_at_own: Option<&str>,
) -> Comparison {
    if peer.size == own.size {
        return if peer.root.eq_ignore_ascii_case(&own.root) {
            Comparison::Consistent
        } else {
            Comparison::Fork(format!(
                "its log of {} entries has root {}, ours is {}",
                peer.size, peer.root, own.root
            ))
        };
    }
    if peer.size > own.size {
        return match peer_root_at_own {
            Some(r) if r.eq_ignore_ascii_case(&own.root) => Comparison::Consistent,
            Some(r) => Comparison::Fork(format!(
                "its log (size {}) has root {r} over our {} entries, ours is {}",
                peer.size, own.size, own.root
            )),
            None => Comparison::Inconclusive(format!(
                "its log is longer than ours ({} > {}) but it sent no root over our size",
                peer.size, own.size
            )),
        };
    }
    match own_root_at(peer.size) {
        Some(r) if r.eq_ignore_ascii_case(&peer.root) => Comparison::Consistent,
        Some(r) => Comparison::Fork(format!(
            "its log (size {}) has root {}, ours over those entries is {r}",
            peer.size, peer.root
        )),
        None => Comparison::Inconclusive("our log has no root at its size".into()),
    }
}

/// This replica's head and a root function over its log.
fn own_head(core: &Core) -> (LogHead, impl Fn(u64) -> Option<String>) {
    let log = core.view().log.clone();
    let (size, root) = log.head();
    (
        LogHead {
            size,
            root: hex::encode(root),
        },
        move |n| log.root_at(n).map(hex::encode),
    )
}

/// The seal mode peers are compared under (the running manifest's, else the lenient rule).
fn mode_of(core: &Core) -> SealMode {
    match core.view().phase.as_ref() {
        Phase::Running(d) => d.manifest.config.seal_mode,
        _ => SealMode::ProductKey,
    }
}

/// Asks the replica at `addr` for its head over mutually attested TLS and compares.
pub async fn ask(core: &Core, own: &Claims, addr: &str) -> Result<Comparison, String> {
    tokio::time::timeout(ASK_TIMEOUT, ask_inner(core, own, addr))
        .await
        .map_err(|_| format!("no answer within {}s", ASK_TIMEOUT.as_secs()))?
}

async fn ask_inner(core: &Core, own: &Claims, addr: &str) -> Result<Comparison, String> {
    let (mut tls, spki, server_spki) = connect_peer(addr).await?;
    let evidence = core
        .tee
        .provider
        .evidence(&report_data("head-asker", &spki, &server_spki))
        .map_err(|e| format!("own evidence: {e}"))?;
    let (head, root_at) = own_head(core);
    let req = serde_json::json!({"evidence": evidence, "head": head});
    write_msg(&mut tls, req.to_string().as_bytes())
        .await
        .map_err(|e| format!("sending the request: {e}"))?;
    let body = read_msg(&mut tls)
        .await
        .map_err(|e| format!("reading the answer: {e}"))?;
    let answer: HeadAnswer =
        serde_json::from_slice(&body).map_err(|e| format!("malformed answer: {e}"))?;
    if let Some(e) = answer.error {
        return Err(format!("refused by the peer: {e}"));
    }
    verify_peer(
        &core.tee,
        own,
        answer.evidence.ok_or("the answer has no evidence")?,
        report_data("head-answerer", &server_spki, &spki),
        mode_of(core),
        false,
    )
    .await
    .map_err(|e| format!("the peer is not a coordinator we trust: {e}"))?;
    let peer = answer.head.ok_or("the answer has no head")?;
    Ok(judge(
        &head,
        &root_at,
        &peer,
        answer.root_at_your_size.as_deref(),
    ))
}

/// Answers a head request on an accepted peer connection (the asker's evidence must bind
/// this connection and be a coordinator's we would share the key with), then stops serving
/// when the asker's head shows a fork this replica can see itself.
pub(super) async fn answer<S>(
    core: &Core,
    tls: &mut S,
    evidence: Evidence,
    asker: LogHead,
    client_spki: &[u8],
    spki: &[u8],
    own: &Claims,
) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let checked = verify_peer(
        &core.tee,
        own,
        evidence,
        report_data("head-asker", client_spki, spki),
        mode_of(core),
        false,
    )
    .await;
    let (head, root_at) = own_head(core);
    let serving = core.dek().is_some();
    let answer = match (&checked, serving) {
        (Err(e), _) => HeadAnswer {
            evidence: None,
            head: None,
            root_at_your_size: None,
            error: Some(format!("this replica does not match the coordinator: {e}")),
        },
        (Ok(()), false) => HeadAnswer {
            evidence: None,
            head: None,
            root_at_your_size: None,
            error: Some("this replica serves no state (Recovery)".into()),
        },
        (Ok(()), true) => HeadAnswer {
            evidence: Some(
                core.tee
                    .provider
                    .evidence(&report_data("head-answerer", spki, client_spki))
                    .map_err(|e| format!("own evidence: {e}"))?,
            ),
            root_at_your_size: (asker.size <= head.size)
                .then(|| root_at(asker.size))
                .flatten(),
            head: Some(head.clone()),
            error: None,
        },
    };
    let bytes = serde_json::to_vec(&answer).map_err(|e| e.to_string())?;
    write_msg(tls, &bytes)
        .await
        .map_err(|e| format!("sending the answer: {e}"))?;
    let _ = tls.shutdown().await;
    checked?;
    if serving && asker.size <= head.size {
        if let Comparison::Fork(why) = judge(&head, &root_at, &asker, None) {
            stop(core, &format!("a replica that asked for our head: {why}"));
        }
    }
    Ok(())
}

/// Stops serving: this replica and a peer hold different histories of one deployment.
fn stop(core: &Core, why: &str) {
    let reason = RecoveryReason::SplitView(format!(
        "the transparency log forked: {why}. etcd shows replicas different histories; stop every replica, find the etcd cluster that holds the history relying parties saw (GET /api/v2/log/consistency against the last head they kept), and restart the replicas on it alone"
    ));
    tracing::error!(reason = %reason, "split view detected; this replica stops serving");
    core.stop_serving(reason);
}

/// The key-sharing addresses the log records, newest first, without `own`.
fn logged_addresses(core: &Core, own: &str) -> Vec<String> {
    core.view()
        .log
        .replica_addresses()
        .into_iter()
        .rev()
        .filter(|a| a != own)
        .take(MAX_LOGGED_PEERS)
        .collect()
}

/// Appends this replica's `replica-joined` event unless the log has one for `advertise`.
async fn record_joined(core: &Core, advertise: &str) -> Result<(), String> {
    let view = core.view();
    let Some(store) = view.store.clone() else {
        return Ok(());
    };
    if view.log.replica_addresses().iter().any(|a| a == advertise) {
        return Ok(());
    }
    let event = serde_json::json!({
        "type": crate::translog::JOINED_EVENT,
        "time": crate::clock::now_unix(),
        "address": advertise,
    });
    view.log
        .commit_with_events(&store, crate::store::Txn::new(), vec![event])
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Every `interval`, while a deployment runs: records this replica's address in the log
/// once, then compares heads with every announced and logged replica; a fork stops this
/// replica (and the task).
pub async fn watch_for_forks(
    core: Arc<Core>,
    conn: EtcdConn,
    own: Arc<Claims>,
    advertise: String,
    interval: Duration,
) {
    let mut recorded = false;
    loop {
        tokio::time::sleep(interval).await;
        if !matches!(core.view().phase.as_ref(), Phase::Running(_)) {
            continue;
        }
        if !recorded {
            match record_joined(&core, &advertise).await {
                Ok(()) => recorded = true,
                Err(e) => {
                    tracing::warn!(error = %e, "recording this replica in the log failed; retrying")
                }
            }
        }
        let mut addresses: Vec<String> = match conn.scan_control(super::marker::PEERS).await {
            Ok(peers) => peers
                .into_iter()
                .map(|(_, a)| String::from_utf8_lossy(&a).into_owned())
                .collect(),
            Err(e) => {
                tracing::debug!(error = %e, "listing the announced replicas failed");
                Vec::new()
            }
        };
        addresses.extend(logged_addresses(&core, &advertise));
        let mut asked = BTreeSet::new();
        for addr in addresses {
            if addr == advertise || !asked.insert(addr.clone()) {
                continue;
            }
            match ask(&core, &own, &addr).await {
                Ok(Comparison::Consistent) => {}
                Ok(Comparison::Fork(why)) => {
                    stop(&core, &format!("the replica at {addr}: {why}"));
                    return;
                }
                Ok(Comparison::Inconclusive(why)) => {
                    tracing::warn!(peer = %addr, reason = %why, "log head comparison inconclusive")
                }
                // A replica that is gone, restarting or in Recovery: nothing to compare.
                Err(e) => tracing::debug!(peer = %addr, error = %e, "log head comparison skipped"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(size: u64, root: &str) -> LogHead {
        LogHead {
            size,
            root: root.into(),
        }
    }

    #[test]
    fn a_prefix_either_way_is_consistent_and_a_different_root_is_a_fork() {
        // Our log: roots "r1".."r5" at sizes 1..5.
        let roots = |n: u64| (1..=5).contains(&n).then(|| format!("r{n}"));
        let own = head(5, "r5");
        assert_eq!(
            judge(&own, &roots, &head(3, "r3"), None),
            Comparison::Consistent
        );
        assert_eq!(
            judge(&own, &roots, &head(7, "x7"), Some("r5")),
            Comparison::Consistent
        );
        assert!(matches!(
            judge(&own, &roots, &head(3, "f3"), None),
            Comparison::Fork(m) if m.contains("f3") && m.contains("r3")
        ));
        assert!(matches!(
            judge(&own, &roots, &head(7, "x7"), Some("f5")),
            Comparison::Fork(_)
        ));
        assert_eq!(
            judge(&own, &roots, &head(5, "r5"), None),
            Comparison::Consistent
        );
        assert!(matches!(
            judge(&own, &roots, &head(5, "f5"), Some("f5")),
            Comparison::Fork(_)
        ));
        assert!(matches!(
            judge(&own, &roots, &head(6, "x6"), None),
            Comparison::Inconclusive(_)
        ));
    }
}
