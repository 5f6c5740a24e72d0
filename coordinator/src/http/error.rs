//! The one mapping from failures to HTTP status codes and JSend bodies, grouped by who must
//! act: the caller's request ([`RequestFault`]), the caller's rights ([`Denial`], marble
//! refusals included), the coordinator's current phase or store ([`NotNow`]), or the
//! coordinator itself (`Internal`). Only client errors echo their message; internal failures
//! are logged and answered generically.
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::marble::refusal::Refusal;

/// Every way a request can fail, by who must act.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is wrong: the caller must change it.
    #[error("{0}")]
    Request(RequestFault),
    /// The caller may not do this (not authenticated, not permitted, a refused marble).
    #[error("{0}")]
    Denied(Denial),
    /// A valid request the coordinator cannot serve now: retry later or in another phase.
    #[error("{0}")]
    NotNow(NotNow),
    /// A bug or an environment failure (500); details only in the log.
    #[error("internal error: {0}")]
    Internal(String),
}

/// What is wrong with a request.
#[derive(Debug, thiserror::Error)]
pub enum RequestFault {
    /// Malformed input (400).
    #[error("{0}")]
    BadRequest(String),
    /// A manifest that breaks a rule, with the JSON pointer of the offending part (400).
    #[error("invalid manifest: {message}")]
    InvalidManifest {
        /// JSON pointer of the offending part (`/Secrets/tls/Size`; empty for the whole).
        pointer: String,
        /// What is wrong.
        message: String,
    },
    /// One field of the request body is wrong (400); `field` is its JSON name.
    #[error("{field}: {message}")]
    InvalidField {
        /// The body field (`sgxQuote`, `name`).
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// Nothing there (404).
    #[error("{0}")]
    NotFound(String),
    /// The endpoint exists but not with this method (405).
    #[error("{0}")]
    MethodNotAllowed(String),
    /// Body over the size limit (413).
    #[error("request body exceeds {0} bytes")]
    TooLarge(usize),
    /// The client did not send its request in time (408).
    #[error("{0}")]
    Timeout(String),
}

/// Why the caller may not do this.
#[derive(Debug, thiserror::Error)]
pub enum Denial {
    /// Not authenticated (401).
    #[error("{0}")]
    Unauthenticated(String),
    /// Refused by policy: user permissions, recovery, updates (403).
    #[error("{0}")]
    Forbidden(String),
    /// A marble refused (activation, renewal), with its stable code (403).
    #[error("{0}")]
    Refused(Refusal),
    /// The endpoint is behind a `Config.FeatureGates` gate the manifest does not enable (403).
    #[error("{0}")]
    FeatureDisabled(String),
}

/// Why a valid request cannot be served now.
#[derive(Debug, thiserror::Error)]
pub enum NotNow {
    /// The coordinator is not in a state that allows this (409).
    #[error("{0}")]
    WrongState(String),
    /// Temporarily unable: the store is down, a table is full (503).
    #[error("{0}")]
    Unavailable(String),
}

/// One constructor per failure, named after it (`ApiError::bad_request(message)`), so that
/// call sites say what failed rather than which group it belongs to.
macro_rules! constructors {
    ($($(#[$doc:meta])* $name:ident($arg:ident: $ty:ty) => $group:ident($kind:ident::$variant:ident);)*) => {
        impl ApiError {
            $($(#[$doc])* pub fn $name($arg: $ty) -> ApiError {
                ApiError::$group($kind::$variant($arg))
            })*
        }
    };
}

constructors! {
    /// Malformed input (400).
    bad_request(message: String) => Request(RequestFault::BadRequest);
    /// Nothing there (404).
    not_found(message: String) => Request(RequestFault::NotFound);
    /// Wrong method for an existing endpoint (405).
    method_not_allowed(message: String) => Request(RequestFault::MethodNotAllowed);
    /// Body over `limit` bytes (413).
    too_large(limit: usize) => Request(RequestFault::TooLarge);
    /// The request did not arrive in time (408).
    timeout(message: String) => Request(RequestFault::Timeout);
    /// Not authenticated (401).
    unauthorized(message: String) => Denied(Denial::Unauthenticated);
    /// Refused by policy (403).
    forbidden(message: String) => Denied(Denial::Forbidden);
    /// A refused marble (403).
    refused(refusal: Refusal) => Denied(Denial::Refused);
    /// The manifest does not enable the endpoint's feature gate (403).
    feature_disabled(message: String) => Denied(Denial::FeatureDisabled);
    /// Not in this phase (409).
    wrong_state(message: String) => NotNow(NotNow::WrongState);
    /// Temporarily unable (503).
    unavailable(message: String) => NotNow(NotNow::Unavailable);
}

impl ApiError {
    /// One body field is wrong (400, code `bad-request`, `pointer` = `/<field>`).
    pub fn invalid_field(field: &'static str, message: String) -> ApiError {
        ApiError::Request(RequestFault::InvalidField { field, message })
    }

    /// The marble refusal, when this is one.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            ApiError::Denied(Denial::Refused(r)) => Some(r),
            _ => None,
        }
    }

    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Request(f) => match f {
                RequestFault::BadRequest(_)
                | RequestFault::InvalidField { .. }
                | RequestFault::InvalidManifest { .. } => StatusCode::BAD_REQUEST,
                RequestFault::NotFound(_) => StatusCode::NOT_FOUND,
                RequestFault::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
                RequestFault::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
                RequestFault::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            },
            ApiError::Denied(Denial::Unauthenticated(_)) => StatusCode::UNAUTHORIZED,
            ApiError::Denied(_) => StatusCode::FORBIDDEN,
            ApiError::NotNow(NotNow::WrongState(_)) => StatusCode::CONFLICT,
            ApiError::NotNow(NotNow::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable code of this failure, carried in the JSend `fail` body, the refusal log
    /// lines and the metrics (docs/OPERATIONS.md, "Refusal codes").
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Request(f) => match f {
                RequestFault::InvalidManifest { .. } => "invalid-manifest",
                RequestFault::BadRequest(_) | RequestFault::InvalidField { .. } => "bad-request",
                RequestFault::NotFound(_) => "not-found",
                RequestFault::MethodNotAllowed(_) => "method-not-allowed",
                RequestFault::TooLarge(_) => "too-large",
                RequestFault::Timeout(_) => "timeout",
            },
            ApiError::Denied(d) => match d {
                Denial::Refused(r) => r.code(),
                Denial::Unauthenticated(_) => "unauthenticated",
                Denial::Forbidden(_) => "forbidden",
                Denial::FeatureDisabled(_) => "feature-disabled",
            },
            ApiError::NotNow(n) => match n {
                NotNow::WrongState(_) => "wrong-state",
                NotNow::Unavailable(_) => "unavailable",
            },
            ApiError::Internal(_) => "internal",
        }
    }

    /// The codes of failures that are not marble refusals (those are
    /// [`crate::marble::refusal::Refusal::CODES`]).
    pub const REQUEST_CODES: [&'static str; 12] = [
        "invalid-manifest",
        "bad-request",
        "unauthenticated",
        "forbidden",
        "feature-disabled",
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
            fields: self.refusal().map(Refusal::fields).unwrap_or_default(),
            pointer: match self {
                ApiError::Request(RequestFault::InvalidManifest { pointer, .. }) => {
                    Some(pointer.clone())
                }
                ApiError::Request(RequestFault::InvalidField { field, .. }) => {
                    Some(format!("/{field}"))
                }
                _ => None,
            },
        }
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> ApiError {
        ApiError::refused(r)
    }
}

impl From<quarry_api::manifest::ManifestError> for ApiError {
    fn from(e: quarry_api::manifest::ManifestError) -> ApiError {
        ApiError::Request(RequestFault::InvalidManifest {
            pointer: e.path.clone(),
            message: e.to_string(),
        })
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> ApiError {
        match e {
            crate::store::StoreError::Unavailable(_) => ApiError::unavailable(format!(
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
