//! Recovery with the manifest's `RecoveryKeys` (reference §4.5, §3.1): the data encryption
//! key (DEK) is wrapped with RSA-OAEP-SHA256 to one key (single), split n-of-n by XOR, or
//! t-of-n by Shamir over GF(2^8) ([`shamir`]). The secrets are returned once, at manifest set
//! or update; the holders upload them signed (RSA-PKCS1v15-SHA256) via `POST /api/v2/recover`.
//!
//! **Recovery data** ([`RecoveryData`], in `sealed-key.json` next to the sealed DEK): the
//! scheme, the number of secrets needed, and per key name the recovery public key (PEM) and
//! `SHA-256("quarry recovery secret v1\0" ‖ name ‖ "\0" ‖ secret)`. It must be readable
//! while the state is sealed (the manifest holding the keys is inside the encrypted state), so
//! it is stored in the clear and authenticated by an HMAC under a key derived from the DEK.
//! An upload is matched to the one key whose public key verifies its signature (so each key
//! counts once), then its secret must hash to that key's entry (a wrong share is named as
//! such), and a key already used in this recovery is refused. When enough secrets are in, the
//! combined DEK must verify the HMAC (catches edited public keys or hashes) and open the
//! state, whose manifest must list the same recovery keys; otherwise the uploaded secrets are
//! discarded and the coordinator stays in Recovery.
//!
//! This module is the scheme alone (it reads no coordinator state, so the state can hold its
//! session and data); [`service`] runs it against the coordinator: re-sealing for a manifest
//! and the `recover` endpoints.
pub mod service;
pub mod shamir;

use std::collections::BTreeMap;

use quarry_api::manifest::Manifest;
use quarry_api::Secret;
use rsa::pkcs8::DecodePublicKey;
use rsa::sha2::Sha256 as RsaSha256;
use rsa::{Oaep, Pkcs1v15Sign, RsaPrivateKey, RsaPublicKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::http::error::ApiError;
use crate::sealing::{self, DEK_LEN};

/// Length of a Shamir share (32 bytes + the x coordinate).
pub const SHAMIR_SHARE_LEN: usize = DEK_LEN + 1;

/// Why a recovery step failed.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// Malformed input: length, encoding, a key that is not RSA (400).
    #[error("{0}")]
    BadInput(String),
    /// Refused: wrong signature, wrong share, used twice, modified recovery data (403).
    #[error("{0}")]
    Refused(String),
    /// RNG or RSA failure (500).
    #[error("{0}")]
    Internal(String),
}

impl From<RecoveryError> for ApiError {
    fn from(e: RecoveryError) -> ApiError {
        match e {
            RecoveryError::BadInput(m) => ApiError::bad_request(m),
            RecoveryError::Refused(m) => ApiError::forbidden(m),
            RecoveryError::Internal(m) => ApiError::Internal(m),
        }
    }
}

/// How the DEK is split among the recovery keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// One key; its secret is the DEK.
    Single,
    /// n-of-n; the DEK is the XOR of all secrets.
    Xor,
    /// t-of-n Shamir shares (33 bytes each).
    Shamir,
}

/// One recovery key's entry in the recovery data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyEntry {
    /// The recovery public key, PEM `PUBLIC KEY`.
    pub public_key: String,
    /// Hex SHA-256 of the key's secret (domain-separated, bound to the key name).
    pub secret_sha256: String,
}

/// What the coordinator needs to recognise recovery secrets while the state is sealed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RecoveryData {
    /// Scheme.
    pub scheme: Scheme,
    /// Secrets needed.
    pub threshold: u64,
    /// Entries by recovery key name.
    pub keys: BTreeMap<String, KeyEntry>,
    /// Hex HMAC-SHA256 over the fields above, under a key derived from the DEK.
    pub mac: String,
}

fn secret_hash(name: &str, secret: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(b"quarry recovery secret v1\0");
    h.update(name.as_bytes());
    h.update([0u8]);
    h.update(secret);
    hex::encode(h.finalize())
}

/// The MAC key (from the DEK) and the authenticated bytes of `data`.
fn mac_input(
    data: &RecoveryData,
    dek: &Secret,
) -> Result<(ring::hmac::Key, Vec<u8>), RecoveryError> {
    let key =
        sealing::derive_key(dek, b"quarry recovery data v1").map_err(RecoveryError::Internal)?;
    let body = serde_json::to_vec(&(&data.scheme, data.threshold, &data.keys))
        .map_err(|e| RecoveryError::Internal(e.to_string()))?;
    Ok((
        ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.expose()),
        body,
    ))
}

fn mac(data: &RecoveryData, dek: &Secret) -> Result<ring::hmac::Tag, RecoveryError> {
    let (key, body) = mac_input(data, dek)?;
    Ok(ring::hmac::sign(&key, &body))
}

impl RecoveryData {
    /// True when the MAC verifies under `dek` (the data is unmodified and `dek` is the DEK).
    pub fn verify(&self, dek: &Secret) -> bool {
        match (mac_input(self, dek), hex::decode(&self.mac)) {
            (Ok((key, body)), Ok(stored)) => ring::hmac::verify(&key, &body, &stored).is_ok(),
            _ => false,
        }
    }

    /// Length of each plaintext secret in this scheme.
    pub fn secret_len(&self) -> usize {
        match self.scheme {
            Scheme::Single | Scheme::Xor => DEK_LEN,
            Scheme::Shamir => SHAMIR_SHARE_LEN,
        }
    }

    /// Checks that the manifest's recovery keys are exactly the ones of this data.
    pub fn matches_manifest(&self, manifest: &Manifest) -> Result<(), String> {
        let der = |pem_text: &str| {
            pem::parse(pem_text.trim())
                .map(|p| p.contents().to_vec())
                .ok()
        };
        let same = self.keys.len() == manifest.recovery_keys.len()
            && self.keys.iter().all(|(name, e)| {
                manifest
                    .recovery_keys
                    .get(name)
                    .is_some_and(|m| der(m).is_some() && der(m) == der(&e.public_key))
            });
        if same {
            Ok(())
        } else {
            Err("the recovery keys in sealed-key.json differ from the manifest's RecoveryKeys (an outdated or substituted sealed-key.json)".into())
        }
    }
}

fn parse_key(name: &str, pem_text: &str) -> Result<RsaPublicKey, RecoveryError> {
    RsaPublicKey::from_public_key_pem(pem_text.trim()).map_err(|e| {
        RecoveryError::BadInput(format!(
            "RecoveryKeys.{name}: not an RSA public key in PEM \"PUBLIC KEY\" form: {e}"
        ))
    })
}

fn fill_random(buf: &mut [u8]) -> Result<(), String> {
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), buf)
        .map_err(|_| "system RNG failed".to_string())
}

/// Recovery data plus the RSA-OAEP ciphertext of each key's secret, by key name.
pub type Wrapped = (RecoveryData, BTreeMap<String, Vec<u8>>);

/// Wraps `dek` for the recovery `keys` (name → PEM) with `threshold` (0 = all keys):
/// returns the recovery data to store next to the sealed key and, per key name, the
/// RSA-OAEP-SHA256 ciphertext to hand out once. `None` without keys. Manifest updates that
/// change `RecoveryKeys` or `RecoveryThreshold` call this (via [`reseal_for_manifest`]).
pub fn wrap(
    dek: &Secret,
    keys: &BTreeMap<String, String>,
    threshold: u64,
) -> Result<Option<Wrapped>, RecoveryError> {
    let n = keys.len();
    if n == 0 {
        return Ok(None);
    }
    let public: Vec<(String, RsaPublicKey)> = keys
        .iter()
        .map(|(name, p)| Ok((name.clone(), parse_key(name, p)?)))
        .collect::<Result<_, RecoveryError>>()?;
    let t = usize::try_from(threshold).unwrap_or(usize::MAX);
    let (scheme, needed, secrets): (Scheme, usize, Vec<Zeroizing<Vec<u8>>>) = if n == 1 {
        (
            Scheme::Single,
            1,
            vec![Zeroizing::new(dek.expose().to_vec())],
        )
    } else if t == 0 || t == n {
        let mut shares = Vec::with_capacity(n);
        let mut last = Zeroizing::new(dek.expose().to_vec());
        for _ in 1..n {
            let mut s = Zeroizing::new(vec![0u8; DEK_LEN]);
            fill_random(&mut s).map_err(RecoveryError::Internal)?;
            last.iter_mut().zip(s.iter()).for_each(|(a, b)| *a ^= b);
            shares.push(s);
        }
        shares.push(last);
        (Scheme::Xor, n, shares)
    } else if (2..n).contains(&t) {
        let shares =
            shamir::split(dek.expose(), t, n, &mut fill_random).map_err(RecoveryError::Internal)?;
        (Scheme::Shamir, t, shares)
    } else {
        return Err(RecoveryError::BadInput(format!(
            "RecoveryThreshold {threshold} must be 0 or from 2 to the number of RecoveryKeys ({n})"
        )));
    };
    let mut entries = BTreeMap::new();
    let mut out = BTreeMap::new();
    for ((name, key), secret) in public.iter().zip(&secrets) {
        let ct = key
            .encrypt(&mut rand_core::OsRng, Oaep::new::<RsaSha256>(), secret)
            .map_err(|e| RecoveryError::BadInput(format!("RecoveryKeys.{name}: RSA-OAEP: {e}")))?;
        out.insert(name.clone(), ct);
        entries.insert(
            name.clone(),
            KeyEntry {
                public_key: keys.get(name).cloned().unwrap_or_default(),
                secret_sha256: secret_hash(name, secret),
            },
        );
    }
    let mut data = RecoveryData {
        scheme,
        threshold: needed as u64,
        keys: entries,
        mac: String::new(),
    };
    data.mac = hex::encode(mac(&data, dek)?.as_ref());
    Ok(Some((data, out)))
}

/// Outcome of one accepted upload.
pub enum Step {
    /// More secrets are needed.
    Remaining(u64),
    /// The DEK, verified against the recovery data.
    Complete(Secret),
}

/// The secrets uploaded so far in Recovery (memory only) and the ephemeral key.
#[derive(Default)]
pub struct Session {
    data: Option<RecoveryData>,
    accepted: BTreeMap<String, Zeroizing<Vec<u8>>>,
    ephemeral: Option<RsaPrivateKey>,
}

impl Session {
    /// Forgets the uploaded secrets (and the ephemeral key when `all`).
    pub fn reset(&mut self, all: bool) {
        self.accepted.clear();
        self.data = None;
        if all {
            self.ephemeral = None;
        }
    }

    /// Secrets still needed under `data`.
    pub fn remaining(&self, data: &RecoveryData) -> u64 {
        data.threshold.saturating_sub(self.accepted.len() as u64)
    }

    /// Installs the ephemeral key unless one exists; returns the key in use.
    pub fn ephemeral(&mut self, fresh: RsaPrivateKey) -> &RsaPrivateKey {
        self.ephemeral.get_or_insert(fresh)
    }

    /// Handles one upload against `data`.
    pub fn submit(
        &mut self,
        data: &RecoveryData,
        secret: &[u8],
        signature: &[u8],
    ) -> Result<Step, RecoveryError> {
        if self.data.as_ref() != Some(data) {
            // First upload, or sealed-key.json changed underneath: start over.
            self.accepted.clear();
            self.data = Some(data.clone());
        }
        let want = data.secret_len();
        let plain: Zeroizing<Vec<u8>> = if secret.len() == DEK_LEN
            || secret.len() == SHAMIR_SHARE_LEN
        {
            Zeroizing::new(secret.to_vec())
        } else {
            let key = self.ephemeral.as_ref().ok_or_else(|| {
                RecoveryError::BadInput(format!(
                    "the recovery secret has {} bytes, not {want}; an encrypted secret must be encrypted to the key of GET /api/v2/recover/public-key (fetch it first)",
                    secret.len()
                ))
            })?;
            Zeroizing::new(key.decrypt_blinded(&mut rand_core::OsRng, Oaep::new::<RsaSha256>(), secret).map_err(|_| {
                RecoveryError::BadInput(
                    "the recovery secret does not decrypt with the ephemeral key (RSA-OAEP-SHA256); fetch the current key from GET /api/v2/recover/public-key".into(),
                )
            })?)
        };
        if plain.len() != want {
            return Err(RecoveryError::BadInput(format!(
                "the recovery secret has {} bytes; this state's {:?} scheme uses {want}-byte secrets",
                plain.len(),
                data.scheme
            )));
        }
        let digest = Sha256::digest(plain.as_slice());
        let signer = data.keys.iter().find(|(_, e)| {
            RsaPublicKey::from_public_key_pem(e.public_key.trim()).is_ok_and(|k| {
                k.verify(Pkcs1v15Sign::new::<RsaSha256>(), &digest, signature)
                    .is_ok()
            })
        });
        let Some((name, entry)) = signer else {
            return Err(RecoveryError::Refused(format!(
                "the signature does not verify with any recovery key ({}); sign the secret (RSA-PKCS1v15-SHA256) with the private key of your RecoveryKeys entry",
                data.keys.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        };
        if self.accepted.contains_key(name) {
            return Err(RecoveryError::Refused(format!(
                "the secret of recovery key {name:?} was already uploaded; {} more from other keys needed",
                self.remaining(data)
            )));
        }
        if secret_hash(name, &plain) != entry.secret_sha256 {
            return Err(RecoveryError::Refused(format!(
                "this is not the recovery secret issued to key {name:?} (a wrong share, or one from another deployment or manifest version)"
            )));
        }
        self.accepted.insert(name.clone(), plain);
        let remaining = self.remaining(data);
        if remaining > 0 {
            return Ok(Step::Remaining(remaining));
        }
        let dek = match data.scheme {
            Scheme::Single => self
                .accepted
                .values()
                .next()
                .map(|s| Secret::new(s.to_vec()))
                .ok_or_else(|| RecoveryError::Internal("no secret".into()))?,
            Scheme::Xor => {
                let mut k = vec![0u8; DEK_LEN];
                for s in self.accepted.values() {
                    k.iter_mut().zip(s.iter()).for_each(|(a, b)| *a ^= b);
                }
                Secret::new(k)
            }
            Scheme::Shamir => {
                let shares: Vec<&[u8]> = self.accepted.values().map(|s| s.as_slice()).collect();
                Secret::new(
                    shamir::combine(&shares)
                        .map_err(RecoveryError::Internal)?
                        .to_vec(),
                )
            }
        };
        if !data.verify(&dek) {
            self.reset(false);
            return Err(RecoveryError::Refused(
                "the combined secrets do not match the recovery data in sealed-key.json (it was modified); the uploaded secrets were discarded".into(),
            ));
        }
        Ok(Step::Complete(dek))
    }
}

#[cfg(test)]
mod tests;
