//! AES-256-GCM under the data encryption key (DEK) and keys derived from it: what the
//! stores, the head file, the cluster marker and the recovery data are protected with.
use quarry_api::Secret;
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

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
    fn derived_keys_differ_by_label() {
        let dek = new_dek().unwrap();
        assert_ne!(
            derive_key(&dek, b"a").unwrap(),
            derive_key(&dek, b"b").unwrap()
        );
        assert_eq!(
            derive_key(&dek, b"a").unwrap(),
            derive_key(&dek, b"a").unwrap()
        );
    }
}
