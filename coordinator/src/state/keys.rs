//! The store's key names: one list, read by start-up, the handlers and the replica watch.

/// Root CA (cert + key).
pub const ROOT: &str = "pki/root";
/// Mesh CA (cert + key).
pub const MESH: &str = "pki/mesh";
/// 32-byte root secret for HKDF.
pub const ROOT_SECRET: &str = "root-secret";
/// The manifest as posted.
pub const MANIFEST: &str = "manifest/raw";
/// Root-key signature over the manifest.
pub const MANIFEST_SIGNATURE: &str = "manifest/signature";
/// Prefix of stored secret values.
pub const SECRET_PREFIX: &str = "secret/";
/// Prefix of secret values from before the last manifest update.
pub const PREVIOUS_SECRET_PREFIX: &str = "previous-secret/";
/// Prefix of SecurityVersion overrides from package updates.
pub const SVN_PREFIX: &str = "package-svn/";
/// The pending manifest update, if any.
pub const PENDING_UPDATE: &str = "update/pending";
/// Prefix of activation counters per marble type.
pub const ACTIVATIONS_PREFIX: &str = "activations/";

/// Store key prefix of revoked marble UUIDs.
pub const REVOKED_PREFIX: &str = "revoked/";
/// Store key prefix of revoked certificate serials (hex).
pub const REVOKED_SERIAL_PREFIX: &str = "revoked-serial/";

/// Prefix of the TCB monitor's per-marble platform records (`tcb/<uuid>`).
pub const TCB_PREFIX: &str = "tcb/";

/// Prefix of monotonic counters (`<prefix><hex SHA-256 of the counter ID>`, 8-byte big-endian
/// value); never touched by manifest updates.
pub const COUNTER_PREFIX: &str = "monotonic-counter/";

/// True for keys the in-memory deployment is built from (a change elsewhere means reload).
pub fn affects_deployment(key: &str) -> bool {
    [
        MANIFEST,
        MANIFEST_SIGNATURE,
        MESH,
        ROOT_SECRET,
        SECRET_PREFIX,
        PREVIOUS_SECRET_PREFIX,
        SVN_PREFIX,
    ]
    .iter()
    .any(|p| key.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployment_keys_are_recognised_and_counters_are_not() {
        for key in [MANIFEST, MESH, "secret/tls", "package-svn/web", ROOT_SECRET] {
            assert!(affects_deployment(key), "{key}");
        }
        for key in [
            "activations/web",
            "monotonic-counter/ab",
            PENDING_UPDATE,
            ROOT,
            "log/00000001",
        ] {
            assert!(!affects_deployment(key), "{key}");
        }
    }
}
