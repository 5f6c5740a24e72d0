//! `sealed-key.json`, the data encryption key (DEK) sealed to this TEE: the one place that
//! reads and writes it. Start-up unseals it, manifest set/update re-seals it with the
//! manifest's SealMode and recovery data, recovery re-seals it for this TEE, a replica seals
//! its own copy.
use std::path::{Path, PathBuf};

use quarry_api::manifest::{Manifest, SealMode};
use quarry_api::Secret;
use serde::{Deserialize, Serialize};

use super::fs::write_atomic;
use crate::recovery::RecoveryData;
use crate::sealing::{self, SealKeys, DEK_LEN};
use crate::tee::Tee;

/// File name of the sealed DEK in the data directory.
pub const SEALED_KEY_FILE: &str = "sealed-key.json";

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
    pub recovery: Option<RecoveryData>,
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
    recovery: Option<RecoveryData>,
) -> Result<SealedKeyFile, String> {
    let sealed = match keys.key(mode) {
        Some(k) => sealing::seal(k, &aad_v2(mode), dek.expose())?,
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
    let dek = sealing::open(key, &aad, &file.sealed)?;
    if dek.len() != DEK_LEN {
        return Err(format!(
            "sealed key holds {} bytes, expected {DEK_LEN}",
            dek.len()
        ));
    }
    Ok(Secret::new(dek))
}

/// The sealed key file of one data directory.
#[derive(Debug, Clone)]
pub struct SealedKey {
    path: PathBuf,
}

/// The SealMode the state asks for: the manifest's, ProductKey (MarbleRun's default) before one.
pub fn mode_for(manifest: Option<&Manifest>) -> SealMode {
    manifest.map_or(SealMode::ProductKey, |m| m.config.seal_mode)
}

impl SealedKey {
    /// The sealed key file in `data_dir`.
    pub fn in_dir(data_dir: &Path) -> SealedKey {
        SealedKey {
            path: data_dir.join(SEALED_KEY_FILE),
        }
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True when the file exists.
    pub fn exists(&self) -> bool {
        self.path.exists()
    }

    /// The exact bytes on disk, to put back with [`SealedKey::restore`].
    pub fn snapshot(&self) -> Option<Vec<u8>> {
        std::fs::read(&self.path).ok()
    }

    /// Puts back bytes taken with [`SealedKey::snapshot`] (a commit the new sealing belonged
    /// to failed).
    pub fn restore(&self, bytes: &[u8]) {
        if let Err(e) = write_atomic(&self.path, bytes) {
            tracing::error!(error = %e, path = %self.path.display(), "could not restore the sealed key file after a failed commit");
        }
    }

    /// Reads and parses the file; `Ok(None)` when there is none.
    pub fn read(&self) -> Result<Option<SealedKeyFile>, String> {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", self.path.display())),
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            format!(
                "{}: not a sealed key file (line {} column {}): {e}",
                self.path.display(),
                e.line(),
                e.column()
            )
        })
    }

    /// Unseals `file` with this TEE's keys, explaining a mismatch of sealer or mode.
    pub fn unseal(&self, file: &SealedKeyFile, tee: &Tee) -> Result<Secret, String> {
        let mode = file
            .mode()
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        unseal_dek(file, &tee.seal_keys).map_err(|e| {
            format!(
                "cannot unseal the data encryption key in {}: {e}; it was sealed by {} ({}, {}), this coordinator is {} ({}); recover with the RecoveryKeys (POST /api/v2/recover) or set a new manifest",
                self.path.display(),
                file.sealer_id,
                file.sealing,
                mode.as_str(),
                tee.seal_keys.sealer_id(mode),
                tee.sealing
            )
        })
    }

    /// A replica's view of its own copy: None without a file, else the unsealed DEK (or why
    /// not) and the parsed file when it parses.
    pub fn read_own_copy(
        &self,
        tee: &Tee,
    ) -> Option<(Result<Secret, String>, Option<SealedKeyFile>)> {
        match self.read() {
            Ok(None) => None,
            Err(e) => Some((Err(e), None)),
            Ok(Some(file)) => Some((unseal_dek(&file, &tee.seal_keys), Some(file))),
        }
    }

    /// The recovery data stored beside the sealed DEK, if any.
    pub fn recovery_data(&self) -> Result<Option<RecoveryData>, String> {
        Ok(self.read()?.and_then(|f| f.recovery))
    }

    /// Seals `dek` for this TEE with `mode` and `recovery` and writes the file atomically.
    pub fn write(
        &self,
        dek: &Secret,
        tee: &Tee,
        mode: SealMode,
        recovery: Option<RecoveryData>,
    ) -> Result<(), String> {
        let file = seal_dek(dek, &tee.seal_keys, tee.sealing, mode, recovery)?;
        let bytes = serde_json::to_vec_pretty(&file).map_err(|e| e.to_string())?;
        write_atomic(&self.path, &bytes).map_err(|e| format!("{}: {e}", self.path.display()))
    }

    /// After the state opened, re-seals `dek` when `existing` does not match what the state
    /// asks for: `manifest`'s SealMode, this TEE, the current format. Recovery data without a
    /// manifest is from a manifest whose commit never happened: dropped. Returns whether it wrote.
    pub fn normalize(
        &self,
        dek: &Secret,
        tee: &Tee,
        manifest: Option<&Manifest>,
        existing: Option<&SealedKeyFile>,
    ) -> Result<bool, String> {
        let mode = mode_for(manifest);
        let recovery = manifest.and(existing.and_then(|f| f.recovery.clone()));
        if let (Some(data), Some(m)) = (&recovery, manifest) {
            if let Err(e) = data.matches_manifest(m) {
                tracing::warn!(error = %e, "recovery data does not match the manifest; recovery with these secrets will be refused");
            }
        }
        if manifest.is_some_and(|m| !m.recovery_keys.is_empty()) && recovery.is_none() {
            tracing::warn!("the manifest has RecoveryKeys but sealed-key.json has no recovery data (a crash during manifest set?): this state cannot be recovered with recovery secrets");
        }
        let current = existing.is_some_and(|file| {
            file.version == 2
                && file.mode().ok() == Some(mode)
                && file.sealing == tee.sealing
                && file.sealer_id == tee.seal_keys.sealer_id(mode)
                && file.recovery == recovery
        });
        if current {
            return Ok(false);
        }
        self.write(dek, tee, mode, recovery)?;
        tracing::info!(
            seal_mode = mode.as_str(),
            "data encryption key sealed for this TEE"
        );
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tee(dir: &Path) -> Tee {
        let sim = dir.join("sim");
        quarry_attestation::simulated::SimPlatform::create(&sim).unwrap();
        Tee::simulated(&sim, None).unwrap()
    }

    #[test]
    fn written_keys_unseal_and_a_fresh_directory_has_none() {
        let dir = tempfile::tempdir().unwrap();
        let sealed = SealedKey::in_dir(dir.path());
        assert!(sealed.read().unwrap().is_none());
        let tee = tee(dir.path());
        let dek = sealing::new_dek().unwrap();
        sealed
            .write(&dek, &tee, SealMode::ProductKey, None)
            .unwrap();
        let file = sealed.read().unwrap().unwrap();
        assert_eq!(sealed.unseal(&file, &tee).unwrap().expose(), dek.expose());
        assert!(!sealed.normalize(&dek, &tee, None, Some(&file)).unwrap());
    }

    #[test]
    fn garbage_names_the_file_and_position() {
        let dir = tempfile::tempdir().unwrap();
        let sealed = SealedKey::in_dir(dir.path());
        std::fs::write(sealed.path(), b"{\n  \"version\": }").unwrap();
        let err = sealed.read().unwrap_err();
        assert!(
            err.contains(SEALED_KEY_FILE) && err.contains("line 2"),
            "{err}"
        );
    }

    #[test]
    fn snapshot_and_restore_put_back_the_exact_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let sealed = SealedKey::in_dir(dir.path());
        let tee = tee(dir.path());
        let dek = sealing::new_dek().unwrap();
        sealed
            .write(&dek, &tee, SealMode::ProductKey, None)
            .unwrap();
        let before = sealed.snapshot().unwrap();
        sealed.write(&dek, &tee, SealMode::UniqueKey, None).unwrap();
        assert_ne!(sealed.snapshot().unwrap(), before);
        sealed.restore(&before);
        assert_eq!(sealed.snapshot().unwrap(), before);
    }

    fn keys() -> SealKeys {
        SealKeys::new(
            sealing::new_dek().unwrap(),
            "u".into(),
            sealing::new_dek().unwrap(),
            "p".into(),
        )
    }

    #[test]
    fn dek_unseals_only_with_the_seal_key_of_its_mode() {
        let dek = sealing::new_dek().unwrap();
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
        let dek = sealing::new_dek().unwrap();
        let sk = keys();
        let v1 = serde_json::json!({
            "version": 1, "sealing": "simulated", "sealer_id": "x",
            "sealed": quarry_api::bytes::b64(&sealing::seal(sk.key(SealMode::UniqueKey).unwrap(), DEK_AAD_V1, dek.expose()).unwrap()),
        });
        let f: SealedKeyFile = serde_json::from_value(v1).unwrap();
        assert_eq!(f.mode().unwrap(), SealMode::UniqueKey);
        assert_eq!(unseal_dek(&f, &sk).unwrap(), dek);
    }
}
