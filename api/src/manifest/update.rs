//! Package-only update manifests (MarbleRun §5.1): `{"Packages": {"x": {"SecurityVersion": 5}}}`.
use std::collections::BTreeMap;

use super::error::{ManifestError, Ptr, Warning};
use super::fields::Obj;

/// Sections whose presence makes a manifest a full manifest rather than a package update.
const FULL_SECTIONS: [&str; 7] = [
    "Infrastructures",
    "Marbles",
    "Users",
    "RecoveryKeys",
    "Roles",
    "Secrets",
    "TLS",
];

/// A checked package update: new minimum security versions by package name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageUpdate {
    /// Package name → new `SecurityVersion`.
    pub security_versions: BTreeMap<String, u64>,
    /// Unknown keys and ignored fields.
    pub warnings: Vec<Warning>,
}

/// True when the bytes are a package-only update manifest (only `Packages`, optionally
/// `Config`, set), as MarbleRun's `IsUpdateManifest`.
pub fn is_package_update(bytes: &[u8]) -> bool {
    let mut warnings = Vec::new();
    let Ok(value) = super::normalised(bytes, &mut warnings) else {
        return false;
    };
    let has = |key: &str| {
        value.get(key).is_some_and(|v| match v {
            serde_json::Value::Object(m) => !m.is_empty(),
            serde_json::Value::Null => false,
            _ => true,
        })
    };
    has("Packages") && !FULL_SECTIONS.iter().any(|s| has(s))
}

/// Parse a package-only update: each package sets `SecurityVersion` and none of `UniqueID`,
/// `SignerID`, `ProductID` or `Debug: true`. Existence of the packages and the "not lower
/// than the current version" rule are the coordinator's (they need the current state).
pub fn parse_package_update(bytes: &[u8]) -> Result<PackageUpdate, ManifestError> {
    if !is_package_update(bytes) {
        return Err(ManifestError::new(
            "",
            "not a package update: it must set only Packages",
        ));
    }
    let mut warnings = Vec::new();
    let value = super::normalised(bytes, &mut warnings)?;
    let top = Obj::new(&value, Ptr::root())?;
    let mut security_versions = BTreeMap::new();
    for (name, v, ptr) in top.entries("Packages")? {
        let o = Obj::new(v, ptr)?;
        for field in ["UniqueID", "SignerID", "ProductID", "TEE"] {
            if o.get(field).is_some_and(|v| !super::fields::is_zero(v)) {
                return Err(o
                    .at(field)
                    .err(format!("{field} cannot be changed by a package update")));
            }
        }
        if o.bool("Debug")? {
            return Err(o
                .at("Debug")
                .err("Debug cannot be changed by a package update"));
        }
        let svn = o
            .u64("SecurityVersion")?
            .ok_or_else(|| o.at("SecurityVersion").err("SecurityVersion is required"))?;
        for (key, _) in o.map.iter() {
            if !matches!(key.as_str(), "SecurityVersion" | "Debug") {
                warnings.push(o.at(key).warn("ignored by a package update"));
            }
        }
        security_versions.insert(name.clone(), svn);
    }
    Ok(PackageUpdate {
        security_versions,
        warnings,
    })
}
