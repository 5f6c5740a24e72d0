//! Request bodies and JSend answers where axum's own would be plain text or empty: a JSON
//! body reader for any content type, a query-string extractor whose rejection is a JSend 400,
//! and a JSend 405 for a method a route does not serve.
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::http::error::ApiError;

/// The request's query string deserialized into `T`; 400 naming the problem otherwise.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parse(parts.uri.query().unwrap_or("")).map(Query)
    }
}

/// The method-not-allowed fallback of both routers (axum keeps the `Allow` header).
pub async fn method_not_allowed(method: axum::http::Method) -> ApiError {
    ApiError::method_not_allowed(format!("method {method} is not allowed on this endpoint"))
}

fn parse<T: DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    serde_urlencoded::from_str(query)
        .map_err(|e| ApiError::bad_request(format!("malformed query string: {e}")))
}

/// Parses a JSON body whatever its content type (curl's `-d` sends a form type); 413 for
/// bodies over the limit, 400 naming the line and column of malformed JSON.
pub fn json_body<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let bytes = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(quarry_api::http::MAX_BODY_BYTES)
        } else {
            ApiError::bad_request(format!("cannot read the request body: {}", r.body_text()))
        }
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(format!(
            "malformed request body at line {} column {}: {e}",
            e.line(),
            e.column()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    struct Proof {
        index: u64,
        #[allow(dead_code)]
        size: u64,
    }

    #[test]
    fn a_malformed_or_missing_parameter_is_a_json_bad_request() {
        assert_eq!(parse::<Proof>("index=1&size=2").expect("parses").index, 1);
        for bad in ["index=x&size=2", "size=2", ""] {
            let err = parse::<Proof>(bad).expect_err("must be refused");
            assert!(
                matches!(err, ApiError::Request(crate::http::error::RequestFault::BadRequest(ref m)) if m.starts_with("malformed query string")),
                "{bad}: {err:?}"
            );
        }
    }
}
