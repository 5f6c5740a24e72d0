//! Revocation (contract §3, invariant 11): users with `RevokeMarble` on a marble type (or the
//! manifest owners, who hold `UpdateManifest`) revoke a marble instance by UUID or one of its
//! certificates by serial. Revocations are kept in the sealed store (`revoked/<uuid>`,
//! `revoked-serial/<hex>`) and in the transparency log; revoked UUIDs can neither activate
//! nor renew, and the mesh CA publishes every revoked serial in a CRL (`GET /api/v2/crl`) that
//! the sidecar proxies enforce.
//!
//! Which serials belong to which instance comes from the transparency log: every `activation`
//! and `renewal` event names the marble's UUID and the serial issued. The CRL is derived on
//! demand, so a certificate issued to a revoked UUID in a race with its revocation is listed
//! as well.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use quarry_api::http::{RevokeRequest, RevokeResponse};
use quarry_api::manifest::{Manifest, ResourceType};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::http::error::ApiError;
use crate::state::keys::{REVOKED_PREFIX, REVOKED_SERIAL_PREFIX};
use crate::state::{Core, View};
use crate::store::{Store, StoreError, Txn};
use crate::translog::TransLog;
use crate::users::{self, Action};

/// The role action that allows revocation (on `ResourceType: Marbles`).
pub const REVOKE_ACTION: &str = "RevokeMarble";
/// `nextUpdate - thisUpdate` of every CRL: how long a sidecar may rely on one.
pub const CRL_VALIDITY: Duration = Duration::from_secs(3600);
/// A cached CRL is re-signed at least this often even when nothing changed.
const CRL_MAX_AGE: Duration = Duration::from_secs(60);
/// Longest serial accepted (RFC 5280: at most 20 octets).
const MAX_SERIAL_BYTES: usize = 20;

/// Store key of a revoked UUID.
pub fn uuid_key(uuid: &uuid::Uuid) -> String {
    format!("{REVOKED_PREFIX}{}", uuid.hyphenated())
}

/// Store key of a revoked serial (normalised lowercase hex).
pub fn serial_key(serial_hex: &str) -> String {
    format!("{REVOKED_SERIAL_PREFIX}{serial_hex}")
}

/// What the store keeps per revocation.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    /// Unix seconds of the revocation.
    time: u64,
    /// The user who revoked.
    user: String,
    /// Marble type of the instance.
    marble_type: String,
    /// The instance.
    uuid: String,
}

/// One certificate the coordinator issued, as the transparency log records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    /// The marble instance.
    pub uuid: String,
    /// Its type.
    pub marble_type: String,
    /// The leaf serial, lowercase hex.
    pub serial: String,
}

/// Every marble leaf issued so far (activations and renewals), in log order.
pub fn issued(view: &View) -> Vec<Issued> {
    view.log
        .entries(0)
        .into_iter()
        .filter_map(|e| {
            let ev = &e.event;
            let serial = match ev.get("type")?.as_str()? {
                "activation" => ev.get("certSerial")?,
                "renewal" => ev.get("newSerial")?,
                _ => return None,
            };
            Some(Issued {
                uuid: ev.get("uuid")?.as_str()?.to_string(),
                marble_type: ev.get("marbleType")?.as_str()?.to_string(),
                serial: serial.as_str()?.to_ascii_lowercase(),
            })
        })
        .collect()
}

/// Refuses (403) a revoked UUID or, when given, a revoked certificate serial. Revoked is what
/// the store holds **or** the transparency log records: the log is covered by the rollback
/// evidence, so an etcd writer deleting `revoked/<uuid>` un-revokes nothing.
pub async fn ensure_not_revoked(
    store: &dyn Store,
    log: &TransLog,
    uuid: &uuid::Uuid,
    serial_hex: Option<&str>,
) -> Result<(), ApiError> {
    let uuid_text = uuid.hyphenated().to_string();
    if log.revoked_uuid(&uuid_text).is_some() || store.get(&uuid_key(uuid)).await?.is_some() {
        return Err(ApiError::forbidden(format!(
            "marble {uuid} is revoked: it can neither activate nor renew"
        )));
    }
    if let Some(serial) = serial_hex {
        if log.revoked_serial(serial).is_some() || store.get(&serial_key(serial)).await?.is_some() {
            return Err(ApiError::forbidden(format!(
                "certificate {serial} is revoked"
            )));
        }
    }
    Ok(())
}

/// Normalises a serial given by a user: hex digits, optional `0x` prefix and `:` separators,
/// leading zero octets dropped (as the certificate's DER INTEGER content has none).
pub fn normalize_serial(text: &str) -> Result<String, ApiError> {
    let bad = |why: &str| ApiError::bad_request(format!("serial {text:?} {why}"));
    let cleaned: String = text
        .trim()
        .trim_start_matches("0x")
        .chars()
        .filter(|c| *c != ':')
        .collect();
    let padded = if cleaned.len() % 2 == 1 {
        format!("0{cleaned}")
    } else {
        cleaned
    };
    let bytes = hex::decode(&padded).map_err(|_| bad("is not hex"))?;
    let mut bytes = bytes.as_slice();
    // A DER INTEGER keeps one 0x00 octet only before a high bit; ours never need it, but
    // accept serials written either way.
    while bytes.len() > 1 && bytes[0] == 0 && bytes[1] & 0x80 == 0 {
        bytes = &bytes[1..];
    }
    if bytes.is_empty() || bytes.len() > MAX_SERIAL_BYTES + 1 {
        return Err(bad("must be 1 to 20 octets"));
    }
    Ok(hex::encode(bytes))
}

/// Whether `user` may revoke marbles of `marble_type`: a role with `ResourceType: Marbles`,
/// action `RevokeMarble` and the type among its `ResourceNames`, or `UpdateManifest` (the
/// manifest owners).
pub fn may_revoke(manifest: &Manifest, user: &str, marble_type: &str) -> bool {
    let Some(u) = manifest.users.get(user) else {
        return false;
    };
    let by_role = u
        .roles
        .iter()
        .filter_map(|r| manifest.roles.get(r))
        .any(|role| {
            role.resource_type == ResourceType::Marbles
                && role
                    .actions
                    .iter()
                    .any(|a| a.eq_ignore_ascii_case(REVOKE_ACTION))
                && role.resource_names.iter().any(|n| n == marble_type)
        });
    by_role || users::authorize(manifest, user, Action::UpdateManifest, &[]).is_ok()
}

/// `POST /api/v2/revoke`.
pub async fn revoke(
    core: &Core,
    peer: Option<&[u8]>,
    req: RevokeRequest,
) -> Result<RevokeResponse, ApiError> {
    let view = core.view();
    let (deployment, store) =
        view.running("nothing to revoke: the coordinator runs no deployment")?;
    let manifest = &deployment.manifest;
    let user = users::authenticate(manifest, peer)?;
    let issued = issued(&view);
    // What is revoked: (store key, marble type, uuid, serials the CRL gains, serial if by serial).
    let (key, marble_type, uuid, serials, by_serial) = match (&req.uuid, &req.serial) {
        (Some(text), None) => {
            let uuid = uuid::Uuid::parse_str(text.trim())
                .map_err(|e| ApiError::bad_request(format!("uuid {text:?} is not a UUID: {e}")))?;
            let mine: Vec<&Issued> = issued
                .iter()
                .filter(|i| i.uuid.eq_ignore_ascii_case(&uuid.hyphenated().to_string()))
                .collect();
            let last = mine.last().ok_or_else(|| {
                ApiError::not_found(format!("no marble with UUID {uuid} was ever activated"))
            })?;
            let serials = mine.iter().map(|i| i.serial.clone()).collect();
            (
                uuid_key(&uuid),
                last.marble_type.clone(),
                uuid.hyphenated().to_string(),
                serials,
                None,
            )
        }
        (None, Some(text)) => {
            let serial = normalize_serial(text)?;
            let cert = issued.iter().find(|i| i.serial == serial).ok_or_else(|| {
                ApiError::not_found(format!(
                    "no marble certificate with serial {serial} was issued by this deployment"
                ))
            })?;
            (
                serial_key(&serial),
                cert.marble_type.clone(),
                cert.uuid.clone(),
                vec![serial.clone()],
                Some(serial),
            )
        }
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of {\"uuid\": …} and {\"serial\": hex}".into(),
            ))
        }
    };
    if !may_revoke(manifest, &user, &marble_type) {
        return Err(ApiError::forbidden(format!(
            "user {user} may not {REVOKE_ACTION} on marble type {marble_type} (needs a role with ResourceType Marbles, Actions [{REVOKE_ACTION}], ResourceNames [{marble_type}], or UpdateManifest)"
        )));
    }
    let response = |already_revoked| RevokeResponse {
        marble_type: marble_type.clone(),
        uuid: uuid.clone(),
        serials: serials.clone(),
        already_revoked,
    };
    let logged = match &by_serial {
        Some(serial) => view.log.revoked_serial(serial),
        None => view.log.revoked_uuid(&uuid),
    };
    if logged.is_some() || store.get(&key).await?.is_some() {
        return Ok(response(true));
    }
    let now = crate::clock::now_unix();
    let record = Record {
        time: now,
        user: user.clone(),
        marble_type: marble_type.clone(),
        uuid: uuid.clone(),
    };
    let mut event = serde_json::json!({
        "type": "revocation",
        "time": now,
        "user": user,
        "marbleType": marble_type,
        "uuid": uuid,
    });
    if let Some(s) = &by_serial {
        event["serial"] = s.clone().into();
    }
    let value = serde_json::to_vec(&record).map_err(|e| ApiError::Internal(e.to_string()))?;
    let txn = Txn::new().require_absent(&key).put(&key, value);
    match view.log.commit_with_events(&store, txn, vec![event]).await {
        Ok(_) => {}
        // Revoked concurrently by someone else: same outcome.
        Err(StoreError::Conflict(_)) if store.get(&key).await?.is_some() => {
            return Ok(response(true))
        }
        Err(e) => return Err(e.into()),
    }
    tracing::warn!(
        user,
        marble_type,
        uuid,
        serial = by_serial.as_deref().unwrap_or("all"),
        "marble revoked"
    );
    Ok(response(false))
}

/// The `user` a revocation by the TCB monitor records (no manifest user can have a name
/// with parentheses and spaces in a certificate's place, and it says who acted).
pub const TCB_MONITOR_USER: &str = "(tcb monitor)";

/// Revokes marble `uuid` of `marble_type` on behalf of the TCB monitor
/// (`Config.TCBChangeAction: revoke`): the same stored record and `revocation` log event as
/// an operator's revocation by UUID, with `reason` added to the event. Returns false when the
/// UUID was already revoked.
pub async fn revoke_for_tcb(
    view: &View,
    store: &std::sync::Arc<dyn Store>,
    marble_type: &str,
    uuid: &uuid::Uuid,
    reason: &str,
) -> Result<bool, ApiError> {
    let key = uuid_key(uuid);
    if view
        .log
        .revoked_uuid(&uuid.hyphenated().to_string())
        .is_some()
        || store.get(&key).await?.is_some()
    {
        return Ok(false);
    }
    let now = crate::clock::now_unix();
    let uuid_text = uuid.hyphenated().to_string();
    let record = Record {
        time: now,
        user: TCB_MONITOR_USER.into(),
        marble_type: marble_type.to_string(),
        uuid: uuid_text.clone(),
    };
    let event = serde_json::json!({
        "type": "revocation",
        "time": now,
        "user": TCB_MONITOR_USER,
        "marbleType": marble_type,
        "uuid": uuid_text,
        "reason": reason,
    });
    let value = serde_json::to_vec(&record).map_err(|e| ApiError::Internal(e.to_string()))?;
    let txn = Txn::new().require_absent(&key).put(&key, value);
    match view.log.commit_with_events(store, txn, vec![event]).await {
        Ok(_) => {}
        Err(StoreError::Conflict(_)) if store.get(&key).await?.is_some() => return Ok(false),
        Err(e) => return Err(e.into()),
    }
    tracing::warn!(
        user = TCB_MONITOR_USER,
        marble_type,
        uuid = %uuid_text,
        reason,
        "marble revoked"
    );
    Ok(true)
}

/// A signed CRL and what it was made from.
struct Cached {
    mesh_sha256: [u8; 32],
    log_size: u64,
    made: Instant,
    number: u64,
    der: Vec<u8>,
}

fn cache() -> &'static Mutex<Vec<Cached>> {
    static CACHE: OnceLock<Mutex<Vec<Cached>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(Vec::new()))
}

/// `GET /api/v2/crl`: DER CRL signed by the current mesh CA listing every revoked serial,
/// re-signed whenever the log grows (every revocation is logged) and at least every minute.
pub async fn crl(core: &Core) -> Result<Vec<u8>, ApiError> {
    let view = core.view();
    let (deployment, store) = view.running("no CRL: the coordinator runs no deployment")?;
    let mesh_sha256: [u8; 32] = Sha256::digest(deployment.mesh.cert_der()).into();
    let (log_size, _) = view.log.head();
    let mut last_number = 0;
    if let Ok(c) = cache().lock() {
        if let Some(hit) = c.iter().find(|c| c.mesh_sha256 == mesh_sha256) {
            if hit.log_size == log_size && hit.made.elapsed() < CRL_MAX_AGE {
                return Ok(hit.der.clone());
            }
            last_number = hit.number;
        }
    }
    let revoked = revoked_serials(store.as_ref(), &view).await?;
    let now = time::OffsetDateTime::now_utc();
    let this_update = now.replace_nanosecond(0).unwrap_or(now);
    let millis = u64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    let number = millis.max(last_number + 1);
    let params = rcgen::CertificateRevocationListParams {
        this_update,
        next_update: this_update
            + time::Duration::try_from(CRL_VALIDITY)
                .map_err(|e| ApiError::Internal(format!("CRL validity: {e}")))?,
        crl_number: rcgen::SerialNumber::from(number),
        issuing_distribution_point: None,
        revoked_certs: revoked
            .iter()
            .filter_map(|(serial, time)| {
                Some(rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from_slice(&hex::decode(serial).ok()?),
                    revocation_time: time::OffsetDateTime::from_unix_timestamp(*time as i64)
                        .unwrap_or(this_update),
                    reason_code: None,
                    invalidity_date: None,
                })
            })
            .collect(),
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    };
    let der = deployment.mesh.sign_crl(&params)?;
    if let Ok(mut c) = cache().lock() {
        c.retain(|c| c.mesh_sha256 != mesh_sha256);
        // Bounded: one entry per deployment a process served (tests run several).
        if c.len() >= 16 {
            c.remove(0);
        }
        c.push(Cached {
            mesh_sha256,
            log_size,
            made: Instant::now(),
            number,
            der: der.clone(),
        });
    }
    Ok(der)
}

/// Every revoked serial (hex) with its revocation time: those revoked one by one, and every
/// certificate ever issued to a revoked UUID.
pub async fn revoked_serials(
    store: &dyn Store,
    view: &View,
) -> Result<BTreeMap<String, u64>, ApiError> {
    let time_of = |bytes: &[u8]| {
        serde_json::from_slice::<Record>(bytes)
            .map(|r| r.time)
            .unwrap_or(0)
    };
    let mut out = BTreeMap::new();
    for (key, v) in store.scan(REVOKED_SERIAL_PREFIX).await? {
        let serial = key.trim_start_matches(REVOKED_SERIAL_PREFIX).to_string();
        out.insert(serial, time_of(&v.value));
    }
    let mut uuids = BTreeMap::new();
    for (key, v) in store.scan(REVOKED_PREFIX).await? {
        let uuid = key.trim_start_matches(REVOKED_PREFIX).to_ascii_lowercase();
        uuids.insert(uuid, time_of(&v.value));
    }
    // The log's revocations too: a stored record deleted in etcd must not leave the CRL.
    let (logged_uuids, logged_serials) = view.log.revocations();
    uuids.extend(logged_uuids);
    for (serial, t) in logged_serials {
        out.entry(serial).or_insert(t);
    }
    let mut seen = BTreeSet::new();
    for i in issued(view) {
        if let Some(t) = uuids.get(&i.uuid.to_ascii_lowercase()) {
            if seen.insert(i.serial.clone()) {
                out.entry(i.serial).or_insert(*t);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_normalise_to_der_integer_hex() {
        assert_eq!(normalize_serial("0x01AB").unwrap(), "01ab");
        assert_eq!(normalize_serial("00:7f:01").unwrap(), "7f01");
        assert_eq!(normalize_serial("00ff").unwrap(), "00ff");
        assert_eq!(normalize_serial("abc").unwrap(), "0abc");
        assert!(normalize_serial("xyz").is_err());
        assert!(normalize_serial("").is_err());
        assert!(normalize_serial(&"11".repeat(30)).is_err());
    }
}
