//! Seal keys per `Config.SealMode` (reference §2.9, §4.1): `UniqueKey` is bound to the
//! coordinator's measurement, `ProductKey` (the default, also before any manifest exists) to
//! its signer and product. Sources: the simulated platform key, Gramine's SGX sealing keys
//! (`/dev/attestation/keys/_sgx_mrenclave`, `_sgx_mrsigner`), or a key file in the data
//! directory of a confidential VM (both modes use the same key there).
//!
//! `Disabled` has no seal key: the data encryption key is never sealed, so the state stays
//! encrypted on disk but a restarted coordinator always comes up in Recovery (recover with
//! the `RecoveryKeys`, or set a new manifest). It never starts fresh over existing state.
pub mod aead;

pub use self::aead::{derive_key, new_dek, open, seal, DEK_LEN};

use std::path::Path;

use quarry_api::manifest::SealMode;
use quarry_api::Secret;
use sha2::{Digest, Sha256};

/// The seal keys of one TEE instance, one per sealing mode.
pub struct SealKeys {
    unique: Secret,
    unique_id: String,
    product: Secret,
    product_id: String,
}

impl SealKeys {
    /// Keys with the hex identities that explain unseal failures.
    pub fn new(unique: Secret, unique_id: String, product: Secret, product_id: String) -> SealKeys {
        SealKeys {
            unique,
            unique_id,
            product,
            product_id,
        }
    }

    /// The key for `mode`; `None` for `Disabled`.
    pub fn key(&self, mode: SealMode) -> Option<&Secret> {
        match mode {
            SealMode::UniqueKey => Some(&self.unique),
            SealMode::ProductKey => Some(&self.product),
            SealMode::Disabled => None,
        }
    }

    /// Hex digest of who can unseal in `mode` (platform + measurement, or platform + signer).
    pub fn sealer_id(&self, mode: SealMode) -> &str {
        match mode {
            SealMode::UniqueKey => &self.unique_id,
            SealMode::ProductKey => &self.product_id,
            SealMode::Disabled => "none",
        }
    }
}

/// Parses the recorded spelling of a seal mode (case-insensitive like MarbleRun's runtime).
pub fn parse_mode(text: &str) -> Result<SealMode, String> {
    match text.to_ascii_lowercase().as_str() {
        "" | "productkey" => Ok(SealMode::ProductKey),
        "uniquekey" => Ok(SealMode::UniqueKey),
        "disabled" => Ok(SealMode::Disabled),
        other => Err(format!(
            "unknown seal mode {other:?} (ProductKey, UniqueKey, Disabled)"
        )),
    }
}

/// `SHA-256("quarry seal key v1" ‖ ikm ‖ context)`: a 32-byte key from a TEE key of any length.
pub fn expand(ikm: &[u8], context: &[u8]) -> Secret {
    let mut h = Sha256::new();
    h.update(b"quarry seal key v1");
    h.update(ikm);
    h.update(context);
    Secret::new(h.finalize().to_vec())
}

/// Gramine SGX sealing keys read from `<root>/keys/_sgx_mrenclave` (UniqueKey) and
/// `<root>/keys/_sgx_mrsigner` (ProductKey); `root` is `/dev/attestation` in an enclave.
pub struct GramineSealing;

impl GramineSealing {
    /// Reads both keys; either missing or empty is an error naming the file.
    pub fn open(root: &Path, measurement: &[u8; 32]) -> Result<SealKeys, String> {
        let read = |name: &str| -> Result<Secret, String> {
            let path = root.join("keys").join(name);
            let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            if bytes.len() < 16 {
                return Err(format!(
                    "{}: {} bytes, expected a 16-byte SGX sealing key",
                    path.display(),
                    bytes.len()
                ));
            }
            Ok(Secret::new(bytes))
        };
        let mrenclave = read("_sgx_mrenclave")?;
        let mrsigner = read("_sgx_mrsigner")?;
        Ok(SealKeys::new(
            // Unchanged from earlier releases, so their sealed keys still open.
            expand(mrenclave.expose(), measurement),
            hex::encode(measurement),
            expand(mrsigner.expose(), b"ProductKey"),
            hex::encode(Sha256::digest(
                [b"mrsigner".as_slice(), mrsigner.expose()].concat(),
            )),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prepared(dir: &Path, enclave: &[u8], signer: &[u8]) {
        std::fs::create_dir_all(dir.join("keys")).unwrap();
        std::fs::write(dir.join("keys/_sgx_mrenclave"), enclave).unwrap();
        std::fs::write(dir.join("keys/_sgx_mrsigner"), signer).unwrap();
    }

    #[test]
    fn gramine_keys_follow_the_mode_and_the_files() {
        let d = tempfile::tempdir().unwrap();
        prepared(d.path(), &[1; 16], &[2; 16]);
        let m = [9u8; 32];
        let a = GramineSealing::open(d.path(), &m).unwrap();
        let unique = a.key(SealMode::UniqueKey).unwrap().clone();
        let product = a.key(SealMode::ProductKey).unwrap().clone();
        assert_ne!(unique, product);
        assert!(a.key(SealMode::Disabled).is_none());
        assert_eq!(unique, expand(&[1; 16], &m));
        // A new enclave build of the same signer: same ProductKey, other UniqueKey.
        let e = tempfile::tempdir().unwrap();
        prepared(e.path(), &[3; 16], &[2; 16]);
        let b = GramineSealing::open(e.path(), &[8; 32]).unwrap();
        assert_eq!(b.key(SealMode::ProductKey), Some(&product));
        assert_ne!(b.key(SealMode::UniqueKey), Some(&unique));
        assert_eq!(
            a.sealer_id(SealMode::ProductKey),
            b.sealer_id(SealMode::ProductKey)
        );
    }

    #[test]
    fn gramine_missing_or_short_keys_are_errors() {
        let d = tempfile::tempdir().unwrap();
        let err = GramineSealing::open(d.path(), &[0; 32]).err().unwrap();
        assert!(err.contains("_sgx_mrenclave"), "{err}");
        prepared(d.path(), &[1; 16], &[2; 4]);
        let err = GramineSealing::open(d.path(), &[0; 32]).err().unwrap();
        assert!(
            err.contains("_sgx_mrsigner") && err.contains("4 bytes"),
            "{err}"
        );
    }

    #[test]
    fn modes_parse_case_insensitively() {
        assert_eq!(parse_mode("").unwrap(), SealMode::ProductKey);
        assert_eq!(parse_mode("uniqueKEY").unwrap(), SealMode::UniqueKey);
        assert_eq!(parse_mode("Disabled").unwrap(), SealMode::Disabled);
        assert!(parse_mode("Other").is_err());
    }
}
