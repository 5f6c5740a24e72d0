//! The one mapping from failures to HTTP status codes and JSend bodies. Only client errors
//! echo their message; internal failures are logged and answered generically.
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// Every way a request can fail.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed input (400).
    #[error("{0}")]
    BadRequest(String),
    /// Not authenticated (401).
    #[error("{0}")]
    Unauthorized(String),
    /// A marble refused (activation, renewal), with its stable code (403).
    #[error("{0}")]
    Refused(crate::refusal::Refusal),
    /// A manifest that breaks a rule, with the JSON pointer of the offending part (400).
    #[error("invalid manifest: {message}")]
    InvalidManifest {
        /// JSON pointer of the offending part (`/Secrets/tls/Size`; empty for the whole).
        pointer: String,
        /// What is wrong.
        message: String,
    },
    /// Refused by policy: user permissions, recovery, updates (403).
    #[error("{0}")]
    Forbidden(String),
    /// Nothing there (404).
    #[error("{0}")]
    NotFound(String),
    /// The endpoint exists but not with this method (405).
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The coordinator is not in a state that allows this (409).
    #[error("{0}")]
    WrongState(String),
    /// Body over the size limit (413).
    #[error("request body exceeds {0} bytes")]
    TooLarge(usize),
    /// The client did not send its request in time (408).
    #[error("{0}")]
    Timeout(String),
    /// Temporarily unable (503).
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an environment failure (500); details only in the log.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) | ApiError::InvalidManifest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Refused(_) => StatusCode::FORBIDDEN,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::WrongState(_) => StatusCode::CONFLICT,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl ApiError {
    /// The stable code of this failure, carried in the JSend `fail` body, the refusal log
    /// lines and the metrics (docs/OPERATIONS.md, "Refusal codes").
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Refused(r) => r.code(),
            ApiError::InvalidManifest { .. } => "invalid-manifest",
            ApiError::BadRequest(_) => "bad-request",
            ApiError::Unauthorized(_) => "unauthenticated",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not-found",
            ApiError::MethodNotAllowed(_) => "method-not-allowed",
            ApiError::WrongState(_) => "wrong-state",
            ApiError::TooLarge(_) => "too-large",
            ApiError::Timeout(_) => "timeout",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    /// The codes of failures that are not marble refusals (those are
    /// [`crate::refusal::Refusal::CODES`]).
    pub const REQUEST_CODES: [&'static str; 11] = [
        "invalid-manifest",
        "bad-request",
        "unauthenticated",
        "forbidden",
        "not-found",
        "method-not-allowed",
        "wrong-state",
        "too-large",
        "timeout",
        "unavailable",
        "internal",
    ];

    /// The JSend `fail` details of a client error.
    pub fn fail_data(&self) -> quarry_api::http::FailData {
        quarry_api::http::FailData {
            code: self.code().to_string(),
            message: self.to_string(),
            fields: match self {
                ApiError::Refused(r) => r.fields(),
                _ => Vec::new(),
            },
            pointer: match self {
                ApiError::InvalidManifest { pointer, .. } => Some(pointer.clone()),
                _ => None,
            },
        }
    }
}

impl From<crate::refusal::Refusal> for ApiError {
    fn from(r: crate::refusal::Refusal) -> ApiError {
        ApiError::Refused(r)
    }
}

impl From<quarry_api::manifest::ManifestError> for ApiError {
    fn from(e: quarry_api::manifest::ManifestError) -> ApiError {
        ApiError::InvalidManifest {
            pointer: e.path.clone(),
            message: e.to_string(),
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> ApiError {
        match e {
            crate::store::StoreError::Unavailable(_) => ApiError::Unavailable(format!(
                "{e}; the request was not carried out, retry when the store is back"
            )),
            e => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<crate::pki::PkiError> for ApiError {
    fn from(e: crate::pki::PkiError) -> ApiError {
        ApiError::Internal(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = match &self {
            ApiError::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                json!({"status": "error", "message": "internal error; see the coordinator log"})
            }
            other if status.is_server_error() => {
                json!({"status": "error", "message": other.to_string()})
            }
            other => {
                json!({"status": "fail", "data": other.fail_data(), "message": other.to_string()})
            }
        };
        (status, Json(body)).into_response()
    }
}
