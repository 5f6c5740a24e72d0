//! The deployment manifest (contract §5): parsing, key normalisation, JSON Schema check,
//! conversion to the checked model, MarbleRun's validation rules and the template dry run.
//!
//! [`parse`] runs, in order, and stops at the first error:
//! 1. JSON decoding; the top level must be an object;
//! 2. key normalisation: known keys are matched case-insensitively (Go `encoding/json`) and
//!    rewritten to their canonical spelling, case-insensitive enum values (`TEE`, `Encoding`,
//!    `Actions`, `FeatureGates`, `AcceptedTCBStatuses`) are canonicalised, and every unknown
//!    key becomes a [`Warning`] and is dropped. Map keys that are names (packages, marbles,
//!    secrets, file paths, env names…) are left alone;
//! 3. placeholders (`<replace …>`, `<GENERATED-AT-TEST-RUNTIME …>`) are refused;
//! 4. the JSON Schema [`SCHEMA`] (draft 2020-12) is checked;
//! 5. conversion to [`Manifest`]: encodings, hex lengths, enums, TEE-specific fields, template
//!    syntax and where each template function may be used;
//! 6. semantic checks: MarbleRun's checklist, secret definitions, users' certificates,
//!    roles, thresholds, recovery keys and the template dry run.
mod cert;
mod convert;
mod error;
mod fields;
mod keys;
mod mesh;
mod model;
mod package;
#[cfg(test)]
mod tests;
mod update;
mod validate;

use std::sync::OnceLock;

pub use error::{ManifestError, Warning};
pub use mesh::{AllowFrom, Mesh, MeshInbound, MeshOutbound, EXTERNAL_CLIENTS};
pub use model::*;
pub use update::{is_package_update, parse_package_update, PackageUpdate};
pub use validate::check_cert_key_size;

use error::Ptr;

/// The JSON Schema (draft 2020-12) of the canonical-cased manifest.
pub const SCHEMA: &str = include_str!("../../manifests/manifest.schema.json");

/// A manifest that passed every check, with the warnings found on the way.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedManifest {
    /// The manifest.
    pub manifest: Manifest,
    /// Unknown keys and ignored fields, in the order found.
    pub warnings: Vec<Warning>,
}

/// Parse and fully validate manifest JSON bytes.
pub fn parse(bytes: &[u8]) -> Result<CheckedManifest, ManifestError> {
    let mut warnings = Vec::new();
    let value = normalised(bytes, &mut warnings)?;
    check_schema(&value)?;
    let manifest = convert::manifest(&value, &mut warnings)?;
    validate::check(&manifest, &mut warnings)?;
    Ok(CheckedManifest { manifest, warnings })
}

/// Convert a YAML manifest to JSON bytes (the CLI accepts YAML, as MarbleRun's does).
pub fn yaml_to_json(text: &str) -> Result<Vec<u8>, ManifestError> {
    let value: serde_json::Value = serde_yaml_ng::from_str(text)
        .map_err(|e| ManifestError::new("", format!("invalid YAML: {e}")))?;
    serde_json::to_vec_pretty(&value)
        .map_err(|e| ManifestError::new("", format!("cannot convert YAML to JSON: {e}")))
}

/// Decode, normalise keys and refuse placeholders (steps 1–3 of [`parse`]).
fn normalised(
    bytes: &[u8],
    warnings: &mut Vec<Warning>,
) -> Result<serde_json::Value, ManifestError> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ManifestError::new("", format!("invalid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ManifestError::new("", "a manifest must be a JSON object"));
    }
    let value = keys::normalise(value, warnings)?;
    keys::find_placeholder(&value, &Ptr::root())?;
    Ok(value)
}

fn check_schema(value: &serde_json::Value) -> Result<(), ManifestError> {
    static VALIDATOR: OnceLock<Result<jsonschema::Validator, String>> = OnceLock::new();
    let validator = VALIDATOR
        .get_or_init(|| {
            let schema: serde_json::Value =
                serde_json::from_str(SCHEMA).map_err(|e| e.to_string())?;
            jsonschema::draft202012::new(&schema).map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| {
            ManifestError::new("", format!("internal: manifest schema is invalid: {e}"))
        })?;
    let Err(error) = validator.validate(value) else {
        return Ok(());
    };
    let mut path = error.instance_path().as_str().to_string();
    if let jsonschema::error::ValidationErrorKind::Required { property } = error.kind() {
        if let Some(p) = property.as_str() {
            path = Ptr::from_pointer(path).join(p).as_str().to_string();
        }
    }
    // The masked form never echoes the offending value (which might be secret).
    Err(ManifestError::new(
        path,
        format!("schema: {}", error.masked()),
    ))
}
