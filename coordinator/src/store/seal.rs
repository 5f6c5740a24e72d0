//! AES-256-GCM under the data encryption key (DEK), and sealing of the DEK itself.
use quarry_api::manifest::SealMode;
use quarry_api::Secret;
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

use crate::sealing::SealKeys;

/// Length of a DEK.
pub const DEK_LEN: usize = 32;

/// Encrypts `plaintext` with `key`; output = nonce || ciphertext || tag.
pub fn seal(key: &Secret, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, String> {
    let k = LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, key.expose()).map_err(|_| "bad AES-256 key length")?,
    );
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| "system RNG failed")?;
    let mut buf = plaintext.to_vec();
    k.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad),
        &mut buf,
    )
    .map_err(|_| "AES-GCM seal failed")?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&buf);
    Ok(out)
}

/// Decrypts the output of [`seal`]; any change to key, AAD or bytes fails.
pub fn open(key: &Secret, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, String> {
    if sealed.len() < NONCE_LEN + aead::MAX_TAG_LEN {
        return Err(format!(
            "sealed blob of {} bytes is too short",
            sealed.len()
        ));
    }
    let k = LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, key.expose()).map_err(|_| "bad AES-256 key length")?,
    );
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| "bad nonce")?;
    let mut buf = ct.to_vec();
    let plain = k
        .open_in_place(nonce, Aad::from(aad), &mut buf)
        .map_err(|_| "authentication failed (wrong key or modified data)".to_string())?;
    Ok(plain.to_vec())
}

/// A fresh random DEK.
pub fn new_dek() -> Result<Secret, String> {
    let mut k = vec![0u8; DEK_LEN];
    SystemRandom::new()
        .fill(&mut k)
        .map_err(|_| "system RNG failed".to_string())?;
    Ok(Secret::new(k))
}

/// A 32-byte key for one purpose derived from the DEK: HKDF-SHA256(DEK, info = `label`).
pub fn derive_key(dek: &Secret, label: &[u8]) -> Result<Secret, String> {
    let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"quarry DEK subkey v1")
        .extract(dek.expose());
    let info = [label];
    let okm = prk
        .expand(&info, ring::hkdf::HKDF_SHA256)
        .map_err(|_| "HKDF expand failed".to_string())?;
    let mut out = vec![0u8; 32];
    okm.fill(&mut out)
        .map_err(|_| "HKDF fill failed".to_string())?;
    Ok(Secret::new(out))
}

/// The sealed DEK file (`sealed-key.json`). Version 1 (no `seal_mode`) was sealed with the
/// measurement-bound key; version 2 records the mode (bound as associated data) and may carry
/// the recovery data (public, integrity-protected by a MAC under the DEK).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedKeyFile {
    /// Format version (1 or 2).
    pub version: u32,
    /// Which sealing produced it (`simulated`, `gramine-sgx`, `cvm-data-dir`).
    pub sealing: String,
    /// `ProductKey`, `UniqueKey` or `Disabled` (version 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal_mode: Option<String>,
    /// Hex SHA-256 of the sealing identity (platform + measurement or signer), to explain failures.
    pub sealer_id: String,
    /// nonce || ciphertext || tag, base64; empty when the mode is `Disabled`.
    #[serde(with = "quarry_api::bytes::base64")]
    pub sealed: Vec<u8>,
    /// Recovery data of the manifest's `RecoveryKeys` (none without keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<crate::recovery::RecoveryData>,
}

const DEK_AAD_V1: &[u8] = b"quarry sealed DEK v1";

fn aad_v2(mode: SealMode) -> Vec<u8> {
    [
        b"quarry sealed DEK v2 ".as_slice(),
        mode.as_str().as_bytes(),
    ]
    .concat()
}

impl SealedKeyFile {
    /// The mode the DEK was sealed with (version 1 = `UniqueKey`).
    pub fn mode(&self) -> Result<SealMode, String> {
        match (self.version, &self.seal_mode) {
            (1, None) => Ok(SealMode::UniqueKey),
            (2, Some(m)) => crate::sealing::parse_mode(m),
            (v, _) => Err(format!("unknown sealed key format version {v}")),
        }
    }
}

/// Seals `dek` with the key of `mode` into the file format (`Disabled`: not sealed at all).
pub fn seal_dek(
    dek: &Secret,
    keys: &SealKeys,
    sealing: &str,
    mode: SealMode,
    recovery: Option<crate::recovery::RecoveryData>,
) -> Result<SealedKeyFile, String> {
    let sealed = match keys.key(mode) {
        Some(k) => seal(k, &aad_v2(mode), dek.expose())?,
        None => Vec::new(),
    };
    Ok(SealedKeyFile {
        version: 2,
        sealing: sealing.to_string(),
        seal_mode: Some(mode.as_str().to_string()),
        sealer_id: keys.sealer_id(mode).to_string(),
        sealed,
        recovery,
    })
}

/// Opens a sealed DEK with the key of the mode it records.
pub fn unseal_dek(file: &SealedKeyFile, keys: &SealKeys) -> Result<Secret, String> {
    let mode = file.mode()?;
    let aad = if file.version == 1 {
        DEK_AAD_V1.to_vec()
    } else {
        aad_v2(mode)
    };
    let key = keys.key(mode).ok_or(
        "the manifest's SealMode is Disabled: the data encryption key was never sealed to a TEE, so only the RecoveryKeys can open this state",
    )?;
    let dek = open(key, &aad, &file.sealed)?;
    if dek.len() != DEK_LEN {
        return Err(format!(
            "sealed key holds {} bytes, expected {DEK_LEN}",
            dek.len()
        ));
    }
    Ok(Secret::new(dek))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_bytes_round_trip_and_refuse_any_change() {
        let key = new_dek().unwrap();
        let s = seal(&key, b"ad", b"hello").unwrap();
        assert_eq!(open(&key, b"ad", &s).unwrap(), b"hello");
        assert!(open(&key, b"other", &s).is_err());
        let mut t = s.clone();
        let last = t.len() - 1;
        t[last] ^= 1;
        assert!(open(&key, b"ad", &t).is_err());
        assert!(open(&new_dek().unwrap(), b"ad", &s).is_err());
        assert!(open(&key, b"ad", &s[..10]).is_err());
    }

    fn keys() -> SealKeys {
        SealKeys::new(
            new_dek().unwrap(),
            "u".into(),
            new_dek().unwrap(),
            "p".into(),
        )
    }

    #[test]
    fn dek_unseals_only_with_the_seal_key_of_its_mode() {
        let dek = new_dek().unwrap();
        let sk = keys();
        for mode in [SealMode::ProductKey, SealMode::UniqueKey] {
            let f = seal_dek(&dek, &sk, "simulated", mode, None).unwrap();
            assert_eq!(unseal_dek(&f, &sk).unwrap(), dek);
            assert!(unseal_dek(&f, &keys()).is_err());
            // The mode is bound: relabelling the file does not select another key.
            let mut g = f.clone();
            g.seal_mode = Some(
                if mode == SealMode::UniqueKey {
                    "ProductKey"
                } else {
                    "UniqueKey"
                }
                .into(),
            );
            assert!(unseal_dek(&g, &sk).is_err());
        }
        let f = seal_dek(&dek, &sk, "simulated", SealMode::Disabled, None).unwrap();
        assert!(f.sealed.is_empty());
        assert!(unseal_dek(&f, &sk).unwrap_err().contains("Disabled"));
    }

    #[test]
    fn version_1_files_open_with_the_unique_key() {
        let dek = new_dek().unwrap();
        let sk = keys();
        let v1 = serde_json::json!({
            "version": 1, "sealing": "simulated", "sealer_id": "x",
            "sealed": quarry_api::bytes::b64(&seal(sk.key(SealMode::UniqueKey).unwrap(), DEK_AAD_V1, dek.expose()).unwrap()),
        });
        let f: SealedKeyFile = serde_json::from_value(v1).unwrap();
        assert_eq!(f.mode().unwrap(), SealMode::UniqueKey);
        assert_eq!(unseal_dek(&f, &sk).unwrap(), dek);
    }
}
