//! The simulated measurement of an executable: SHA-256 of its bytes, after resolving PATH
//! and symlinks (contract §4.4).
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Finds `program` the way `execvp` would: as given if it contains a `/`, else on `PATH`.
/// The result is canonical (symlinks resolved).
pub fn resolve_executable(program: &str) -> std::io::Result<PathBuf> {
    let not_found = || {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("executable {program:?} not found on PATH"),
        )
    };
    if program.is_empty() {
        return Err(not_found());
    }
    if program.contains('/') {
        return std::fs::canonicalize(program);
    }
    let path = std::env::var_os("PATH").ok_or_else(not_found)?;
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(program);
        if is_executable_file(&candidate) {
            return std::fs::canonicalize(candidate);
        }
    }
    Err(not_found())
}

fn is_executable_file(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// SHA-256 of the file at `path` (streamed).
pub fn file_sha256(path: &Path) -> std::io::Result<[u8; 32]> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().into())
}

/// The simulated `UniqueID` of an executable named as on a command line.
pub fn simulated_unique_id(program: &str) -> std::io::Result<(PathBuf, [u8; 32])> {
    let path = resolve_executable(program)?;
    let digest = file_sha256(&path)?;
    Ok((path, digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measurement_follows_symlinks_and_path() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("tool");
        std::fs::write(&exe, b"#!/bin/sh\necho hi\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&exe, &link).unwrap();
        let (p1, d1) = simulated_unique_id(exe.to_str().unwrap()).unwrap();
        let (p2, d2) = simulated_unique_id(link.to_str().unwrap()).unwrap();
        assert_eq!(p1, p2);
        assert_eq!(d1, d2);
        let expected: [u8; 32] = Sha256::digest(b"#!/bin/sh\necho hi\n").into();
        assert_eq!(d1, expected);
    }

    #[test]
    fn missing_executable_is_an_error() {
        assert!(resolve_executable("quarry-no-such-program-xyz").is_err());
        assert!(resolve_executable("").is_err());
    }
}
