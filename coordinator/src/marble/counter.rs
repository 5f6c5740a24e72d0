//! Monotonic counters (MarbleRun's `MonotonicCounter` feature gate):
//! `POST /api/v2/monotonic-counter`, asked by a marble with its current mesh leaf as TLS
//! client certificate (identified exactly as for renewal). One counter per marble type, UUID
//! and name; a request raises it to `value` when that is greater and answers the value before
//! the request. A value that is not greater is no error (MarbleRun's behaviour): the counter
//! stays, the answer says `updated: false` and the log line `monotonic counter not raised`.
//!
//! Each raise is one store transaction with a compare-and-swap on the counter key and one
//! transparency-log event carrying the new value, so the value survives restarts like the
//! rest of the state and an older counter value put back into etcd is outvoted by the log
//! (which the rollback evidence covers). Manifest updates never touch the counters.
use base64::Engine as _;
use quarry_api::http::{CounterRequest, CounterResponse};
use quarry_api::manifest::FeatureGate;
use sha2::{Digest, Sha256};

use crate::http::error::{ApiError, Denial};
use crate::marble::refusal::Refusal;
use crate::state::{keys, Core};
use crate::store::{decode_counter, StoreError, Txn};
use crate::translog::COUNTER_EVENT;

/// Longest counter name accepted, in bytes (it is hashed, so this only bounds the work).
pub const MAX_NAME_BYTES: usize = 1024;

/// How often a compare-and-swap on one counter is retried under contention.
const MAX_CAS_RETRIES: usize = 64;

/// MarbleRun's counter ID: `b64(type):b64(uuid bytes):b64(name)`, standard base64, so no
/// two (type, UUID, name) triples share a counter whatever characters the name holds.
pub fn counter_id(marble_type: &str, uuid: &uuid::Uuid, name: &str) -> String {
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    format!(
        "{}:{}:{}",
        b64(marble_type.as_bytes()),
        b64(uuid.as_bytes()),
        b64(name.as_bytes())
    )
}

/// Hex SHA-256 of the counter ID: the store key's suffix and the log event's `counter`, so
/// neither etcd's key space nor the public log shows counter names.
pub fn counter_digest(marble_type: &str, uuid: &uuid::Uuid, name: &str) -> String {
    hex::encode(Sha256::digest(counter_id(marble_type, uuid, name)))
}

/// `POST /api/v2/monotonic-counter`. `peer_cert` is the TLS client certificate, if any.
pub async fn set(
    core: &Core,
    peer_cert: Option<&[u8]>,
    req: CounterRequest,
) -> Result<CounterResponse, ApiError> {
    let view = core.view();
    let (deployment, store) = view.running("monotonic counters need a running deployment")?;
    let manifest = &deployment.manifest;
    if !manifest
        .config
        .feature_enabled(FeatureGate::MonotonicCounter)
    {
        return Err(ApiError::feature_disabled(
            "the manifest does not enable the MonotonicCounter feature gate (Config.FeatureGates), so POST /api/v2/monotonic-counter is off".into(),
        ));
    }
    let cert = peer_cert.ok_or_else(|| {
        ApiError::unauthorized(
            "the monotonic counter needs the marble's mesh certificate as TLS client certificate"
                .into(),
        )
    })?;
    let now = crate::clock::now_unix() as i64;
    let leaf = crate::marble::renewal::check_leaf(
        cert,
        deployment.mesh.cert_der(),
        &manifest.config.trust_domain,
        now,
    )
    .map_err(|e| {
        ApiError::unauthorized(format!(
            "the TLS client certificate is not a current marble certificate of this deployment: {e}"
        ))
    })?;
    let marble_type = leaf.marble_type.as_str();
    crate::marble::activation::marble_entry(manifest, marble_type, true)?;
    crate::marble::revocation::ensure_not_revoked(
        store.as_ref(),
        &view.log,
        &leaf.uuid,
        Some(&leaf.serial),
    )
    .await
    .map_err(|e| match e {
        ApiError::Denied(Denial::Forbidden(m)) => ApiError::refused(Refusal::Revoked(m)),
        other => other,
    })?;
    if req.name.len() > MAX_NAME_BYTES {
        return Err(ApiError::invalid_field(
            "name",
            format!(
                "{} bytes, at most {MAX_NAME_BYTES} are accepted",
                req.name.len()
            ),
        ));
    }
    let digest = counter_digest(marble_type, &leaf.uuid, &req.name);
    let key = format!("{}{digest}", keys::COUNTER_PREFIX);
    let uuid_text = leaf.uuid.hyphenated().to_string();
    for _ in 0..MAX_CAS_RETRIES {
        let stored = store.get(&key).await?;
        let stored_value = match &stored {
            Some(v) => decode_counter(&key, &v.value)?,
            None => 0,
        };
        // The log's value is a floor the rollback evidence covers; the store's decides races.
        let logged = view.log.counter(&digest);
        if stored_value < logged {
            tracing::warn!(marble_type, uuid = %uuid_text, counter = %digest, stored = stored_value, logged, "stored monotonic counter is below the transparency log's value (an older value was put back into the store); the log's value holds");
        }
        let previous = stored_value.max(logged);
        if req.value <= previous {
            tracing::info!(marble_type, uuid = %uuid_text, counter = %digest, current = previous, requested = req.value, "monotonic counter not raised: the requested value is not greater");
            return Ok(CounterResponse {
                value: previous,
                updated: false,
            });
        }
        let event = serde_json::json!({
            "type": COUNTER_EVENT,
            "time": crate::clock::now_unix(),
            "marbleType": marble_type,
            "uuid": uuid_text,
            "counter": digest,
            "value": req.value.to_string(),
        });
        let txn = Txn::new()
            .require(&key, stored.as_ref().map(|v| v.revision))
            .require_absent(&crate::marble::revocation::uuid_key(&leaf.uuid))
            .require_absent(&crate::marble::revocation::serial_key(&leaf.serial))
            .put(&key, req.value.to_be_bytes().to_vec());
        match view.log.commit_with_events(&store, txn, vec![event]).await {
            Ok(_) => {
                tracing::info!(marble_type, uuid = %uuid_text, counter = %digest, previous, value = req.value, "monotonic counter raised");
                return Ok(CounterResponse {
                    value: previous,
                    updated: true,
                });
            }
            // Another request raised this counter first: decide again on the new value.
            Err(StoreError::Conflict(k)) if k == key => continue,
            Err(StoreError::Conflict(_)) => {
                return Err(ApiError::refused(Refusal::Revoked(format!(
                    "marble {uuid_text} was revoked while its counter request was in progress"
                ))))
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::unavailable(format!(
        "monotonic counter of marble {uuid_text} is under heavy contention; retry"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counter_id_is_marbleruns_and_separates_every_part() {
        let uuid = uuid::Uuid::from_bytes([0x11; 16]);
        assert_eq!(
            counter_id("web", &uuid, "n"),
            "d2Vi:EREREREREREREREREREREQ==:bg=="
        );
        // A separator inside a name cannot make two triples collide.
        assert_ne!(
            counter_digest("a", &uuid, "b:c"),
            counter_digest("a:b", &uuid, "c")
        );
        assert_ne!(
            counter_digest("web", &uuid, "n"),
            counter_digest("web", &uuid::Uuid::from_bytes([0x12; 16]), "n")
        );
    }
}
