//! Turning activation parameters into the service's world: files on disk (directories 0700,
//! files 0600, replaced atomically), the environment, and for `activate --out` an env file
//! plus the marble's certificate, key and root CA. Values are secret: only names and paths
//! are ever logged.
use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Component, Path, PathBuf};

use quarry_api::http::{ActivateResponse, Value};
use zeroize::Zeroizing;

use crate::identity::MarbleKey;

/// Name of the variable carrying the marble's private key.
pub const PRIVATE_KEY_VAR: &str = "MARBLE_PREDEFINED_PRIVATE_KEY";
/// File names written by `activate --out DIR`.
pub const ENV_FILE: &str = "env";
/// Leaf certificate + mesh CA.
pub const CERT_FILE: &str = "marble-cert.pem";
/// The marble's private key, PKCS#8 PEM.
pub const KEY_FILE: &str = "marble-key.pem";
/// The deployment root CA.
pub const ROOT_CA_FILE: &str = "root-ca.pem";
/// The manifest's Argv as a JSON array.
pub const ARGV_FILE: &str = "argv.json";

/// Mode of every directory the sidecar creates.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every secret file the sidecar writes.
pub const SECRET_FILE_MODE: u32 = 0o600;
/// Mode of public certificate files in the output directory.
pub const PUBLIC_FILE_MODE: u32 = 0o644;

/// Environment variables for the service: name → value bytes (no NUL anywhere).
pub type Environment = Vec<(String, Zeroizing<Vec<u8>>)>;

/// Why files or the environment could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum MaterialiseError {
    /// A manifest file path is unsafe or unusable.
    #[error("refusing to write file {path:?}: {reason}")]
    UnsafePath {
        /// The path as the manifest gave it.
        path: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// Writing a file or creating a directory failed.
    #[error("writing {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An environment variable name or value cannot be passed to a process.
    #[error("environment variable {name:?}: {reason}")]
    InvalidEnv {
        /// The variable name (never the value).
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },
}

/// Checks a manifest file path: not empty, no NUL, no `..` component, names a file.
pub fn check_path(path: &str) -> Result<&Path, MaterialiseError> {
    let refuse = |reason| MaterialiseError::UnsafePath {
        path: path.to_string(),
        reason,
    };
    if path.is_empty() {
        return Err(refuse("empty path"));
    }
    if path.contains('\0') {
        return Err(refuse("the path contains NUL"));
    }
    let p = Path::new(path);
    if p.components().any(|c| c == Component::ParentDir) {
        return Err(refuse("the path contains a `..` component"));
    }
    if path.ends_with('/') || p.file_name().is_none() {
        return Err(refuse("the path names a directory, not a file"));
    }
    Ok(p)
}

/// Writes the manifest files. Relative paths resolve against `base` (or the working directory
/// when `None`). Every path is checked before anything is written.
pub fn write_files(
    files: &BTreeMap<String, Value>,
    base: Option<&Path>,
    key: &MarbleKey,
) -> Result<Vec<PathBuf>, MaterialiseError> {
    let mut targets = Vec::with_capacity(files.len());
    for (name, value) in files {
        let p = check_path(name)?;
        let target = match base {
            Some(base) if p.is_relative() => base.join(p),
            _ => p.to_path_buf(),
        };
        targets.push((target, value));
    }
    let mut written = Vec::with_capacity(targets.len());
    for (target, value) in targets {
        let bytes = Zeroizing::new(value.assemble(key.pkcs8_der()));
        write_file(&target, &bytes, SECRET_FILE_MODE)?;
        tracing::info!(path = %target.display(), "wrote file");
        written.push(target);
    }
    Ok(written)
}

/// Creates `path`'s missing parent directories (0700) and replaces `path` atomically with
/// `bytes` at exactly `mode`. An existing symlink at `path` is replaced, not followed.
pub fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), MaterialiseError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| MaterialiseError::Io { path, source }
    };
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(parent)
        .map_err(io(parent))?;
    let file_name = path
        .file_name()
        .ok_or_else(|| MaterialiseError::UnsafePath {
            path: path.display().to_string(),
            reason: "the path names a directory, not a file",
        })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(file_name);
    tmp_name.push(format!(".quarry-tmp-{}", uuid::Uuid::new_v4().simple()));
    let tmp = parent.join(tmp_name);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(path)(e));
    }
    Ok(())
}

/// The service environment: the parameters' Env assembled with the marble key, plus
/// `MARBLE_PREDEFINED_PRIVATE_KEY` when the coordinator did not set it.
pub fn environment(
    env: &BTreeMap<String, Value>,
    key: &MarbleKey,
) -> Result<Environment, MaterialiseError> {
    let mut out: Environment = Vec::with_capacity(env.len() + 1);
    for (name, value) in env {
        check_env_name(name)?;
        let bytes = Zeroizing::new(value.assemble(key.pkcs8_der()));
        if bytes.contains(&0) {
            return Err(MaterialiseError::InvalidEnv {
                name: name.clone(),
                reason: "the value contains NUL",
            });
        }
        out.push((name.clone(), bytes));
    }
    if !env.contains_key(PRIVATE_KEY_VAR) {
        let pem = key.private_key_pem();
        out.push((
            PRIVATE_KEY_VAR.to_string(),
            Zeroizing::new(pem.as_bytes().to_vec()),
        ));
    }
    Ok(out)
}

fn check_env_name(name: &str) -> Result<(), MaterialiseError> {
    let refuse = |reason| MaterialiseError::InvalidEnv {
        name: name.to_string(),
        reason,
    };
    if name.is_empty() {
        return Err(refuse("empty name"));
    }
    if name.contains(['=', '\0']) {
        return Err(refuse("the name contains '=' or NUL"));
    }
    Ok(())
}

/// A POSIX shell env file: one `export NAME='value'` line per variable, `'` written as
/// `'\''`. Names must be shell identifiers.
pub fn env_file(env: &Environment) -> Result<Zeroizing<Vec<u8>>, MaterialiseError> {
    let mut out = Zeroizing::new(Vec::new());
    for (name, value) in env {
        let identifier = name
            .chars()
            .next()
            .is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
            && name.chars().all(|c| c == '_' || c.is_ascii_alphanumeric());
        if !identifier {
            return Err(MaterialiseError::InvalidEnv {
                name: name.clone(),
                reason: "not a shell identifier, cannot be written to an env file",
            });
        }
        if value.contains(&0) {
            return Err(MaterialiseError::InvalidEnv {
                name: name.clone(),
                reason: "the value contains NUL",
            });
        }
        out.extend_from_slice(b"export ");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"='");
        for &b in value.iter() {
            if b == b'\'' {
                out.extend_from_slice(b"'\\''");
            } else {
                out.push(b);
            }
        }
        out.extend_from_slice(b"'\n");
    }
    Ok(out)
}

/// `activate --out DIR`: writes the manifest files (relative ones under DIR), then DIR/env,
/// DIR/marble-cert.pem, DIR/marble-key.pem, DIR/root-ca.pem and DIR/argv.json.
pub fn write_activation_dir(
    out: &Path,
    response: &ActivateResponse,
    key: &MarbleKey,
) -> Result<(), MaterialiseError> {
    let env = environment(&response.parameters.env, key)?;
    let env_bytes = env_file(&env)?;
    let argv = serde_json::to_vec(&response.parameters.argv).map_err(|e| MaterialiseError::Io {
        path: out.join(ARGV_FILE),
        source: std::io::Error::other(e),
    })?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(out)
        .map_err(|source| MaterialiseError::Io {
            path: out.to_path_buf(),
            source,
        })?;
    write_files(&response.parameters.files, Some(out), key)?;
    let key_pem = key.private_key_pem();
    let outputs: [(&str, &[u8], u32); 5] = [
        (ENV_FILE, &env_bytes, SECRET_FILE_MODE),
        (
            CERT_FILE,
            response.certificate_chain.as_bytes(),
            PUBLIC_FILE_MODE,
        ),
        (KEY_FILE, key_pem.as_bytes(), SECRET_FILE_MODE),
        (ROOT_CA_FILE, response.root_ca.as_bytes(), PUBLIC_FILE_MODE),
        (ARGV_FILE, &argv, SECRET_FILE_MODE),
    ];
    for (name, bytes, mode) in outputs {
        let path = out.join(name);
        write_file(&path, bytes, mode)?;
        tracing::info!(path = %path.display(), "wrote file");
    }
    Ok(())
}

#[cfg(test)]
mod tests;
