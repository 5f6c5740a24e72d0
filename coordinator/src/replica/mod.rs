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
pub mod join;
pub mod marker;
pub mod serve;
pub mod watch;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quarry_api::Claims;

pub use self::exchange::{check_peer, fetch_dek, own_claims};
use self::marker::PEERS;
use self::serve::serve_peers;
use crate::state::Core;
use crate::store::etcd::EtcdConn;

/// Lease of a replica's announcement.
const ANNOUNCE_TTL: Duration = Duration::from_secs(6);

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
