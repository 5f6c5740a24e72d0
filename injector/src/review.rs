//! The `admission.k8s.io/v1` AdmissionReview wire types (the subset a mutating webhook uses).
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// API version of every review this webhook reads and writes.
pub const API_VERSION: &str = "admission.k8s.io/v1";

/// An AdmissionReview: the API server sends `request`, the webhook answers with `response`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct AdmissionReview {
    /// Always `admission.k8s.io/v1`.
    pub api_version: String,
    /// Always `AdmissionReview`.
    pub kind: String,
    /// What the API server asks about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<AdmissionRequest>,
    /// The webhook's decision.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<AdmissionResponse>,
}

/// `AdmissionReview.request` (fields the injector reads; others are ignored).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionRequest {
    /// Identifies this request; echoed in the response.
    pub uid: String,
    /// Kind of the object (`{"group":"","version":"v1","kind":"Pod"}` for pods).
    #[serde(default)]
    pub kind: GroupVersionKind,
    /// Namespace of the object.
    #[serde(default)]
    pub namespace: String,
    /// Name of the object (often empty for pods created from a template).
    #[serde(default)]
    pub name: String,
    /// `CREATE`, `UPDATE`, `DELETE` or `CONNECT`.
    #[serde(default)]
    pub operation: String,
    /// The object as the API server will store it (before this webhook's patch).
    #[serde(default)]
    pub object: Option<Value>,
    /// True when the request will not be persisted.
    #[serde(default)]
    pub dry_run: Option<bool>,
}

/// A group/version/kind triple.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GroupVersionKind {
    /// API group (`""` for core).
    pub group: String,
    /// API version.
    pub version: String,
    /// Kind.
    pub kind: String,
}

/// `AdmissionReview.response`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionResponse {
    /// The request's `uid`.
    pub uid: String,
    /// Whether the object is admitted.
    pub allowed: bool,
    /// Why it was refused (denials only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// `JSONPatch` when `patch` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<String>,
    /// Base64 of the RFC 6902 JSON patch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
    /// Warnings shown to the client (kubectl prints them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// A `metav1.Status` for refusals.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Status {
    /// HTTP-like status code (403 for refusals).
    pub code: u16,
    /// The reason, shown to the user by kubectl.
    pub message: String,
}
