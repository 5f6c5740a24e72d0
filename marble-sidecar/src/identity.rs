//! The marble's identity: its UUID (kept in a file across restarts) and the key generated in
//! memory at every start, with the self-signed certificate used as TLS client certificate
//! during activation (contract §3, §4.5).
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use uuid::Uuid;
use zeroize::Zeroizing;

/// Why the identity could not be established.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The UUID file could not be read or created.
    #[error("UUID file {path}: {source}")]
    UuidFileIo {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The UUID file exists but does not hold a UUID. It is never replaced silently.
    #[error("UUID file {path} is corrupt ({reason}); fix or remove it to get a new identity")]
    UuidFileCorrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Generating the key or the certificate failed.
    #[error("generating the marble key: {0}")]
    Key(String),
}

/// Reads the marble UUID from `path`, or creates the file (mode 0600) with a fresh v4 UUID.
pub fn load_or_create_uuid(path: &Path) -> Result<Uuid, IdentityError> {
    let io = |source| IdentityError::UuidFileIo {
        path: path.to_path_buf(),
        source,
    };
    let fresh = Uuid::new_v4();
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(mut file) => {
            file.write_all(fresh.hyphenated().to_string().as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(io)?;
            tracing::info!(path = %path.display(), uuid = %fresh, "created a new marble UUID");
            Ok(fresh)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_uuid(path),
        Err(e) => Err(io(e)),
    }
}

fn read_uuid(path: &Path) -> Result<Uuid, IdentityError> {
    let corrupt = |reason: String| IdentityError::UuidFileCorrupt {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|source| IdentityError::UuidFileIo {
        path: path.to_path_buf(),
        source,
    })?;
    let text = std::str::from_utf8(&bytes).map_err(|_| corrupt("not UTF-8 text".into()))?;
    let text = text.trim();
    if text.is_empty() {
        return Err(corrupt("empty".into()));
    }
    let uuid = Uuid::parse_str(text).map_err(|e| corrupt(format!("not a UUID: {e}")))?;
    if uuid.is_nil() {
        return Err(corrupt("the nil UUID is not an identity".into()));
    }
    Ok(uuid)
}

/// The marble's ECDSA P-256 key and its self-signed activation certificate (CN = UUID).
/// The private key lives in zeroizing memory and is never printed.
pub struct MarbleKey {
    pkcs8: Zeroizing<Vec<u8>>,
    spki_der: Vec<u8>,
    cert_der: Vec<u8>,
}

impl MarbleKey {
    /// Generates a key in memory and self-signs a certificate for `uuid`.
    pub fn generate(uuid: &Uuid) -> Result<MarbleKey, IdentityError> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| IdentityError::Key(e.to_string()))?;
        let mut params = rcgen::CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, uuid.hyphenated().to_string());
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params
            .self_signed(&key)
            .map_err(|e| IdentityError::Key(format!("self-signing: {e}")))?;
        Ok(MarbleKey {
            pkcs8: Zeroizing::new(key.serialized_der().to_vec()),
            spki_der: rcgen::PublicKeyData::subject_public_key_info(&key),
            cert_der: cert.der().to_vec(),
        })
    }

    /// DER SubjectPublicKeyInfo of the key (what the evidence binds).
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// The private key, PKCS#8 DER. Secret: callers must not log it.
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The private key, PKCS#8 PEM. Secret: callers must not log it.
    pub fn private_key_pem(&self) -> Zeroizing<String> {
        Zeroizing::new(pem::encode_config(
            &pem::Pem::new("PRIVATE KEY", self.pkcs8.as_slice()),
            pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
        ))
    }

    /// The self-signed activation certificate, DER.
    pub fn cert_der(&self) -> CertificateDer<'static> {
        CertificateDer::from(self.cert_der.clone())
    }

    /// The private key in the form rustls takes.
    pub fn private_key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.pkcs8.to_vec()))
    }
}

impl std::fmt::Debug for MarbleKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MarbleKey")
            .field("spki_sha256", &hex::encode(sha256(&self.spki_der)))
            .finish_non_exhaustive()
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).into()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn uuid_file_is_created_with_mode_0600_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("uuid");
        let first = load_or_create_uuid(&path).unwrap();
        assert_eq!(first.get_version_num(), 4);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), first.to_string());
        let second = load_or_create_uuid(&path).unwrap();
        assert_eq!(first, second, "an existing UUID file must be reused");
    }

    #[test]
    fn uuid_file_written_by_marblerun_with_newline_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("uuid");
        std::fs::write(&path, "0f8d2a8e-33a4-4c5e-9d6b-2b1f3c4d5e6f\n").unwrap();
        let id = load_or_create_uuid(&path).unwrap();
        assert_eq!(id.to_string(), "0f8d2a8e-33a4-4c5e-9d6b-2b1f3c4d5e6f");
    }

    #[test]
    fn corrupt_uuid_file_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("uuid");
        for content in [
            &b"not-a-uuid"[..],
            b"",
            b"\xff\xfe",
            b"00000000-0000-0000-0000-000000000000",
        ] {
            std::fs::write(&path, content).unwrap();
            let err = load_or_create_uuid(&path).expect_err("a corrupt UUID file must be refused");
            assert!(
                matches!(&err, IdentityError::UuidFileCorrupt { path: p, .. } if p == &path),
                "{err:?}"
            );
            assert!(err.to_string().contains(&path.display().to_string()));
            assert_eq!(
                std::fs::read(&path).unwrap(),
                content,
                "file must not be replaced"
            );
        }
    }

    #[test]
    fn uuid_file_in_missing_directory_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing/uuid");
        let err = load_or_create_uuid(&path).unwrap_err();
        assert!(matches!(err, IdentityError::UuidFileIo { .. }));
        assert!(err.to_string().contains("missing/uuid"));
    }

    #[test]
    fn key_certificate_carries_the_uuid_and_the_same_public_key() {
        let id = Uuid::new_v4();
        let key = MarbleKey::generate(&id).unwrap();
        let der = key.cert_der();
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
        assert_eq!(cert.public_key().raw, key.spki_der());
        let cn = cert.subject().iter_common_name().next().unwrap();
        assert_eq!(cn.as_str().unwrap(), id.to_string());
        let pem = key.private_key_pem();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert!(!pem.contains('\r'), "PEM uses LF line endings");
        let debug = format!("{key:?}");
        assert!(!debug.contains(&hex::encode(key.pkcs8_der())));
    }
}
