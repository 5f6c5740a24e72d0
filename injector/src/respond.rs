//! AdmissionResponses: admit (with a patch) or refuse.
use base64::Engine as _;

use crate::patch::Patch;
use crate::review::{AdmissionResponse, AdmissionReview, Status, API_VERSION};

/// Admit, with the patch when it has operations.
pub(crate) fn allow(uid: String, patch: Option<Patch>, warnings: Vec<String>) -> AdmissionResponse {
    let patch = patch
        .filter(|p| !p.is_empty())
        .map(|p| base64::engine::general_purpose::STANDARD.encode(p.to_json().to_string()));
    AdmissionResponse {
        uid,
        allowed: true,
        status: None,
        patch_type: patch.as_ref().map(|_| "JSONPatch".to_string()),
        patch,
        warnings,
    }
}

/// Refuse with a 403 status naming the reason.
pub(crate) fn deny(uid: String, message: String) -> AdmissionResponse {
    AdmissionResponse {
        uid,
        allowed: false,
        status: Some(Status {
            code: 403,
            message: format!("quarry-injector: {message}"),
        }),
        patch_type: None,
        patch: None,
        warnings: Vec::new(),
    }
}

/// Wrap a response in an AdmissionReview v1.
pub(crate) fn answer(response: AdmissionResponse) -> AdmissionReview {
    AdmissionReview {
        api_version: API_VERSION.to_string(),
        kind: "AdmissionReview".to_string(),
        request: None,
        response: Some(response),
    }
}
