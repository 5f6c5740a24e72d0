//! Value binding: the log event of every commit that writes a replay-sensitive key carries a
//! keyed digest of each value written (or `null` for a delete), so a value put back into the
//! store later is told apart from the one the log last recorded.
//!
//! Why: an etcd value's AEAD binds its key name, not its version, so an etcd writer can put
//! an older ciphertext of the same key back at a new revision and every revision check still
//! passes. The log is different: its size and root are in the rollback evidence, and its
//! entries are write-once, so what the log last recorded for a key is the truth. The digest
//! is an HMAC under a key derived from the DEK, so the public log says nothing about the
//! values (not even whether two writes wrote the same bytes: every commit has its own salt).
use std::collections::HashMap;

use quarry_api::Secret;
use ring::hmac;
use ring::rand::SecureRandom;

use crate::state::keys;
use crate::store::Txn;

/// Field of a log event holding its commit's value digests:
/// `{"salt": hex, "keys": {"<store key>": hex | null}}`.
pub const FIELD: &str = "boundValues";

/// Bytes of the per-commit salt.
const SALT_BYTES: usize = 16;

/// Store keys (and prefixes) whose value must be the one the log last recorded. Counters
/// are not here: their floor is the log's count of their events (see `TransLog::activations`).
/// `tcb/<uuid>` is not either: the TCB monitor deletes records without a log event.
const BOUND: &[&str] = &[
    keys::MANIFEST,
    keys::MANIFEST_SIGNATURE,
    keys::MESH,
    keys::ROOT_SECRET,
    keys::SECRET_PREFIX,
    keys::PREVIOUS_SECRET_PREFIX,
    keys::SVN_PREFIX,
    keys::PENDING_UPDATE,
    keys::REVOKED_PREFIX,
    keys::REVOKED_SERIAL_PREFIX,
];

/// True for a key whose writes the log binds.
pub fn is_bound(key: &str) -> bool {
    BOUND.iter().any(|p| key.starts_with(p))
}

/// What the log last recorded for a bound key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// Written with this salt and digest.
    Written {
        /// The commit's salt.
        salt: [u8; SALT_BYTES],
        /// HMAC-SHA256 of the value.
        digest: [u8; 32],
    },
    /// Deleted.
    Deleted,
}

/// The HMAC key of the value digests (derived from the DEK, so every replica has it).
pub struct BindingKey(hmac::Key);

impl BindingKey {
    /// The binding key of the deployment whose data encryption key is `dek`.
    pub fn derive(dek: &Secret) -> Result<BindingKey, String> {
        let k = crate::sealing::derive_key(dek, b"quarry log value binding v1")?;
        Ok(BindingKey(hmac::Key::new(hmac::HMAC_SHA256, k.expose())))
    }

    fn input(salt: &[u8; SALT_BYTES], key: &str, value: &[u8]) -> Vec<u8> {
        let mut m = Vec::with_capacity(64 + key.len() + value.len());
        m.extend_from_slice(b"quarry bound value v1\0");
        m.extend_from_slice(salt);
        m.extend_from_slice(&(key.len() as u64).to_be_bytes());
        m.extend_from_slice(key.as_bytes());
        m.extend_from_slice(value);
        m
    }

    /// The record of `txn`'s writes to bound keys for its log event (None when it has none).
    pub fn record(&self, txn: &Txn) -> Result<Option<serde_json::Value>, String> {
        let mut salt = [0u8; SALT_BYTES];
        ring::rand::SystemRandom::new()
            .fill(&mut salt)
            .map_err(|_| "no randomness for the log binding salt".to_string())?;
        let mut out = serde_json::Map::new();
        for (k, v) in txn.puts.iter().filter(|(k, _)| is_bound(k)) {
            let tag = hmac::sign(&self.0, &Self::input(&salt, k, v));
            out.insert(k.clone(), hex::encode(tag.as_ref()).into());
        }
        for k in txn.deletes.iter().filter(|k| is_bound(k)) {
            out.insert(k.clone(), serde_json::Value::Null);
        }
        if out.is_empty() {
            return Ok(None);
        }
        Ok(Some(
            serde_json::json!({"salt": hex::encode(salt), "keys": out}),
        ))
    }

    /// Whether `value` is the value `recorded` (constant time in the digest).
    fn matches(&self, recorded: &Recorded, key: &str, value: &[u8]) -> bool {
        match recorded {
            Recorded::Written { salt, digest } => {
                hmac::verify(&self.0, &Self::input(salt, key, value), digest).is_ok()
            }
            Recorded::Deleted => false,
        }
    }
}

/// The bound writes `event` records (none for an event without [`FIELD`]). A record that does
/// not parse is an error, never "nothing recorded": the log is ours and write-once, so a
/// malformed record is damage, and reading it as absent would switch the check off.
pub fn parse(event: &serde_json::Value) -> Result<Vec<(String, Recorded)>, String> {
    let Some(field) = event.get(FIELD) else {
        return Ok(Vec::new());
    };
    let bad = |what: &str| format!("{FIELD} of a log event: {what}");
    let salt: [u8; SALT_BYTES] = field["salt"]
        .as_str()
        .and_then(|s| hex::decode(s).ok())
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| bad("salt is not 16 hex-encoded bytes"))?;
    let entries = field["keys"]
        .as_object()
        .ok_or_else(|| bad("keys is not an object"))?;
    entries
        .iter()
        .map(|(k, v)| {
            let recorded = match v {
                serde_json::Value::Null => Recorded::Deleted,
                v => Recorded::Written {
                    salt,
                    digest: v
                        .as_str()
                        .and_then(|s| hex::decode(s).ok())
                        .and_then(|b| b.try_into().ok())
                        .ok_or_else(|| bad(&format!("the digest of {k} is not 32 hex bytes")))?,
                },
            };
            Ok((k.clone(), recorded))
        })
        .collect()
}

/// Checks the stored `value` of `key` (None: absent) against what the log last recorded.
/// Keys the log never recorded (written before binding existed, or only at identity
/// creation) pass: there is nothing older for them to be confused with in this log.
pub fn check(
    binding: Option<&BindingKey>,
    recorded: &HashMap<String, Recorded>,
    key: &str,
    value: Option<&[u8]>,
) -> Result<(), String> {
    let Some(r) = recorded.get(key) else {
        return Ok(());
    };
    let Some(b) = binding else {
        return Err(format!(
            "the transparency log binds {key} but this coordinator holds no binding key"
        ));
    };
    match (r, value) {
        (Recorded::Deleted, None) => Ok(()),
        (Recorded::Deleted, Some(_)) => Err(format!(
            "the store holds {key}, which the transparency log records as deleted: an older value was put back into the store"
        )),
        (Recorded::Written { .. }, None) => Err(format!(
            "the store lacks {key}, which the transparency log records as written: it was deleted outside the coordinator"
        )),
        (r, Some(v)) if b.matches(r, key, v) => Ok(()),
        (_, Some(_)) => Err(format!(
            "the stored value of {key} is not the one the transparency log last recorded: an older value was put back into the store"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> BindingKey {
        BindingKey::derive(&Secret::new(vec![9; 32])).unwrap()
    }

    fn recorded(txn: &Txn, b: &BindingKey) -> HashMap<String, Recorded> {
        let event = serde_json::json!({"type": "t", FIELD: b.record(txn).unwrap().unwrap()});
        parse(&event).unwrap().into_iter().collect()
    }

    #[test]
    fn only_bound_keys_are_recorded() {
        let b = key();
        let txn = Txn::new()
            .put("secret/a", b"one".to_vec())
            .put("activations/web", vec![0; 8])
            .put("tcb/x", b"r".to_vec());
        let r = recorded(&txn, &b);
        assert_eq!(r.keys().collect::<Vec<_>>(), ["secret/a"]);
        assert!(b
            .record(&Txn::new().put("log/1", b"e".to_vec()))
            .unwrap()
            .is_none());
    }

    #[test]
    fn the_recorded_value_passes_and_any_other_state_is_refused() {
        let b = key();
        let mut txn = Txn::new()
            .put("secret/a", b"new".to_vec())
            .put(keys::PENDING_UPDATE, b"p".to_vec());
        txn.deletes.push("previous-secret/a".into());
        let r = recorded(&txn, &b);
        let ok = |k: &str, v: Option<&[u8]>| check(Some(&b), &r, k, v);
        assert_eq!(ok("secret/a", Some(b"new")), Ok(()));
        assert_eq!(ok("previous-secret/a", None), Ok(()));
        assert_eq!(ok("secret/unrecorded", Some(b"x")), Ok(()));
        let older = ok("secret/a", Some(b"old")).unwrap_err();
        assert!(older.contains("an older value was put back"), "{older}");
        let back = ok("previous-secret/a", Some(b"x")).unwrap_err();
        assert!(back.contains("records as deleted"), "{back}");
        let gone = ok(keys::PENDING_UPDATE, None).unwrap_err();
        assert!(gone.contains("deleted outside the coordinator"), "{gone}");
        // A value moved to another bound key does not match there either.
        assert!(ok(keys::PENDING_UPDATE, Some(b"new")).is_err());
    }

    #[test]
    fn digests_need_the_deployments_key_and_differ_per_commit() {
        let b = key();
        let txn = Txn::new().put("secret/a", b"same".to_vec());
        let (one, two) = (recorded(&txn, &b), recorded(&txn, &b));
        assert_ne!(
            one["secret/a"], two["secret/a"],
            "each commit has its own salt"
        );
        let other = BindingKey::derive(&Secret::new(vec![8; 32])).unwrap();
        assert!(check(Some(&other), &one, "secret/a", Some(b"same")).is_err());
        assert!(check(None, &one, "secret/a", Some(b"same")).is_err());
    }

    #[test]
    fn malformed_records_are_errors_not_absent() {
        for field in [
            serde_json::json!({"salt": "zz", "keys": {"secret/a": "00".repeat(32)}}),
            serde_json::json!({"salt": "00".repeat(16), "keys": {"secret/a": "0"}}),
            serde_json::json!({"salt": "00".repeat(16), "keys": {"secret/a": 7}}),
            serde_json::json!({"keys": {"secret/a": "00".repeat(32)}}),
            serde_json::json!({"salt": "00".repeat(16), "keys": []}),
            serde_json::json!("x"),
        ] {
            let parsed = parse(&serde_json::json!({FIELD: field.clone()}));
            assert!(parsed.is_err(), "{field} parsed as {parsed:?}");
        }
        assert_eq!(parse(&serde_json::json!({"type": "old"})), Ok(vec![]));
    }
}
