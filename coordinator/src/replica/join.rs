//! How a starting replica obtains the cluster's data encryption key: it creates the key for a
//! new cluster (and claims the cluster marker), unseals its own sealed copy, or fetches the key
//! from a running replica over mutually attested TLS ([`super::exchange`]). It reads no
//! coordinator state: the state's start-up calls it before there is one.
use std::time::{Duration, Instant};

use quarry_api::{Claims, Secret};

use super::exchange::fetch_dek;
use super::marker::{marker_for, marker_matches, MARKER, PEERS};
use crate::sealing;
use crate::store::etcd::EtcdConn;
use crate::tee::Tee;

/// How a replica of an etcd cluster obtained its DEK.
pub enum Obtained {
    /// The DEK, and whether it was created now (a new cluster).
    Key(Secret, bool),
    /// No way to the key: why (→ Recovery).
    None(String),
}

/// Finds the DEK for the cluster behind `conn`: creates it for a new cluster, unseals the
/// replica's own copy (`sealed`), or fetches it from an announced replica; waits up to
/// `wait` for a replica to announce itself.
pub async fn obtain_dek(
    conn: &EtcdConn,
    tee: &Tee,
    own: &Claims,
    sealed: Option<Result<Secret, String>>,
    wait: Duration,
) -> Result<Obtained, String> {
    let deadline = Instant::now() + wait;
    loop {
        let marker = conn.get_control(MARKER).await.map_err(|e| e.to_string())?;
        let Some((marker, _)) = marker else {
            if sealed.is_some() {
                return Ok(Obtained::None(
                    "etcd holds no Quarry cluster under this prefix, but this replica's data directory has a sealed key of one: etcd was wiped or replaced (a rollback to an empty state); refusing to start a new cluster over it. Restore etcd, or move the data directory aside to start a new cluster".into(),
                ));
            }
            if conn.has_state().await.map_err(|e| e.to_string())? {
                return Ok(Obtained::None(
                    "etcd holds Quarry state without a cluster marker: the state cannot be attributed to a key".into(),
                ));
            }
            let dek = sealing::new_dek()?;
            if conn
                .create_control(MARKER, marker_for(&dek)?)
                .await
                .map_err(|e| e.to_string())?
            {
                return Ok(Obtained::Key(dek, true));
            }
            // Another first replica won: join its cluster.
            continue;
        };
        if let Some(Ok(dek)) = &sealed {
            if marker_matches(&marker, dek) {
                return Ok(Obtained::Key(dek.clone(), false));
            }
            tracing::warn!("the sealed key in the data directory is not this cluster's; asking the running replicas");
        }
        let peers = conn.scan_control(PEERS).await.map_err(|e| e.to_string())?;
        let mut reasons = Vec::new();
        for (name, addr) in &peers {
            let addr = String::from_utf8_lossy(addr).into_owned();
            match fetch_dek(tee, own, &addr).await {
                Ok(dek) if marker_matches(&marker, &dek) => {
                    tracing::info!(peer = %name, %addr, "data encryption key obtained from an attested replica");
                    return Ok(Obtained::Key(dek, false));
                }
                Ok(_) => reasons.push(format!("{name} ({addr}): its key is not this cluster's")),
                Err(e) => {
                    tracing::warn!(peer = %name, %addr, error = %e, "key sharing failed");
                    reasons.push(format!("{name} ({addr}): {e}"));
                }
            }
        }
        if Instant::now() >= deadline {
            let sealed_note = match &sealed {
                None => "no sealed key in the data directory".to_string(),
                Some(Ok(_)) => "the sealed key in the data directory is another cluster's".into(),
                Some(Err(e)) => format!("the sealed key does not unseal: {e}"),
            };
            return Ok(Obtained::None(if reasons.is_empty() {
                format!("no running replica announced a key-sharing address within {}s, and {sealed_note}; start a replica that holds the key, or recover with the RecoveryKeys", wait.as_secs())
            } else {
                format!(
                    "no running replica shared the data encryption key ({}), and {sealed_note}",
                    reasons.join("; ")
                )
            }));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
