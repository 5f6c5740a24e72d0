//! Replicas (contract §8): coordinator replicas sharing one etcd store.
//!
//! - Startup: the first replica of a fresh cluster creates the data encryption key (DEK) and
//!   claims the cluster with a create-if-absent of the marker key; a later replica unseals its
//!   own sealed copy, or obtains the DEK from a running replica over mutually attested TLS
//!   ([`exchange`]) and seals its own copy; neither → Recovery.
//! - Key sharing: both sides present an ephemeral self-signed TLS certificate and evidence
//!   whose report data binds both TLS keys; each verifies the other's evidence with the
//!   coordinator's own verifier and compares the identity with its own ([`exchange::check_peer`]): same
//!   measurement for `UniqueKey` (and `Disabled`), same signer and product with a security
//!   version at least its own for `ProductKey`.
//! - Serving: an etcd watch on the prefix keeps the in-memory deployment and transparency log
//!   current ([`watch`]); everything that must hold across replicas is decided
//!   by etcd transactions (create-if-absent manifest, bounded counters, create-if-absent log
//!   indices).
//! - Rollback: `state.head` in the data directory keeps the last etcd revision and log head
pub mod exchange;
pub mod heads;
pub mod marker;
pub mod watch;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quarry_api::{Claims, Secret};

pub use self::exchange::{check_peer, fetch_dek, own_claims, serve_peers};
use self::marker::{marker_for, marker_matches};
use crate::sealing;
use crate::state::Core;
use crate::store::etcd::EtcdConn;
use crate::tee::Tee;

/// Control key of the cluster marker.
pub const MARKER: &str = "cluster";
/// Control-key directory of the replicas' key-sharing addresses.
pub const PEERS: &str = "peers/";
/// Lease of a replica's announcement.
const ANNOUNCE_TTL: Duration = Duration::from_secs(6);

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

/// Announces this replica's key-sharing address, serves key sharing and log-head requests
/// on `listener`, and every `fork_check` (zero: never) compares log heads with the other
/// replicas ([`heads`]).
pub fn start_peer_service(
    core: Arc<Core>,
    conn: &EtcdConn,
    listener: tokio::net::TcpListener,
    advertise: String,
    own: Arc<Claims>,
    fork_check: Duration,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut id = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut id);
    let name = format!("{PEERS}{}", hex::encode(id));
    tracing::info!(address = %advertise, "announcing the key-sharing listener in etcd");
    let mut tasks = vec![
        tokio::spawn(serve_peers(core.clone(), listener, own.clone())),
        conn.announce(&name, advertise.clone().into_bytes(), ANNOUNCE_TTL),
    ];
    if !fork_check.is_zero() {
        tasks.push(tokio::spawn(heads::watch_for_forks(
            core,
            conn.clone(),
            own,
            advertise,
            fork_check,
        )));
    }
    tasks
}

/// Binds the key-sharing listener.
pub async fn bind_peer(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding the key-sharing listener to {addr}: {e}"))
}
