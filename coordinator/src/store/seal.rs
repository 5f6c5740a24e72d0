//! AES-256-GCM under the data encryption key (DEK), and sealing of the DEK itself.
use quarry_api::Secret;
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

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
    k.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut buf)
        .map_err(|_| "AES-GCM seal failed")?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&buf);
    Ok(out)
}

/// Decrypts the output of [`seal`]; any change to key, AAD or bytes fails.
pub fn open(key: &Secret, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, String> {
    if sealed.len() < NONCE_LEN + aead::MAX_TAG_LEN {
        return Err(format!("sealed blob of {} bytes is too short", sealed.len()));
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

/// The sealed DEK file (`sealed-key.json`).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealedKeyFile {
    /// Format version (1).
    pub version: u32,
    /// Which sealing produced it (`simulated`).
    pub sealing: String,
    /// Hex SHA-256 of the sealing identity (platform + measurement), to explain failures.
    pub sealer_id: String,
    /// nonce || ciphertext || tag, base64.
    #[serde(with = "quarry_api::bytes::base64")]
    pub sealed: Vec<u8>,
}

const DEK_AAD: &[u8] = b"quarry sealed DEK v1";

/// Seals `dek` with `seal_key` into the file format.
pub fn seal_dek(
    dek: &Secret,
    seal_key: &Secret,
    sealing: &str,
    sealer_id: &str,
) -> Result<SealedKeyFile, String> {
    Ok(SealedKeyFile {
        version: 1,
        sealing: sealing.to_string(),
        sealer_id: sealer_id.to_string(),
        sealed: seal(seal_key, DEK_AAD, dek.expose())?,
    })
}

/// Opens a sealed DEK.
pub fn unseal_dek(file: &SealedKeyFile, seal_key: &Secret) -> Result<Secret, String> {
    if file.version != 1 {
        return Err(format!("unknown sealed key version {}", file.version));
    }
    let dek = open(seal_key, DEK_AAD, &file.sealed)?;
    if dek.len() != DEK_LEN {
        return Err(format!("sealed key holds {} bytes, expected {DEK_LEN}", dek.len()));
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

    #[test]
    fn dek_unseals_only_with_the_seal_key() {
        let dek = new_dek().unwrap();
        let sk = new_dek().unwrap();
        let f = seal_dek(&dek, &sk, "simulated", "x").unwrap();
        assert_eq!(unseal_dek(&f, &sk).unwrap(), dek);
        assert!(unseal_dek(&f, &new_dek().unwrap()).is_err());
    }
}
