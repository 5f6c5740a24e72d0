//! The cluster marker: which DEK the cluster's state in etcd is under (a MAC, not the key).
use quarry_api::Secret;
use serde::{Deserialize, Serialize};

use crate::sealing;

/// Control key of the cluster marker.
pub const MARKER: &str = "cluster";
/// Control-key directory of the replicas' key-sharing addresses.
pub const PEERS: &str = "peers/";

/// The cluster marker: proves which DEK the cluster's state is under (a MAC, not the key).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Marker {
    version: u32,
    check: String,
}

fn marker_key(dek: &Secret) -> Result<ring::hmac::Key, String> {
    let k = sealing::derive_key(dek, b"quarry etcd cluster marker v1")?;
    Ok(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, k.expose()))
}

fn marker_mac(dek: &Secret) -> Result<Vec<u8>, String> {
    Ok(ring::hmac::sign(&marker_key(dek)?, b"quarry cluster")
        .as_ref()
        .to_vec())
}

/// The marker value for `dek`.
pub fn marker_for(dek: &Secret) -> Result<Vec<u8>, String> {
    serde_json::to_vec(&Marker {
        version: 1,
        check: hex::encode(marker_mac(dek)?),
    })
    .map_err(|e| e.to_string())
}

/// True when `dek` is the key the marker was made for.
pub fn marker_matches(marker: &[u8], dek: &Secret) -> bool {
    let Ok(m) = serde_json::from_slice::<Marker>(marker) else {
        return false;
    };
    let (Ok(key), Ok(found)) = (marker_key(dek), hex::decode(&m.check)) else {
        return false;
    };
    m.version == 1 && ring::hmac::verify(&key, b"quarry cluster", &found).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_identifies_the_key() {
        let dek = sealing::new_dek().unwrap();
        let m = marker_for(&dek).unwrap();
        assert!(marker_matches(&m, &dek));
        assert!(!marker_matches(&m, &sealing::new_dek().unwrap()));
        assert!(!marker_matches(b"garbage", &dek));
        // The marker does not contain the key.
        assert!(!m
            .windows(8)
            .any(|w| dek.expose().windows(8).any(|d| d == w)));
    }
}
