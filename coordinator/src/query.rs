//! A query-string extractor whose rejection is the API's JSend 400 (axum's own `Query`
//! answers malformed or missing parameters with a plain-text body).
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

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

fn parse<T: DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    serde_urlencoded::from_str(query)
        .map_err(|e| ApiError::BadRequest(format!("malformed query string: {e}")))
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
                matches!(err, ApiError::BadRequest(ref m) if m.starts_with("malformed query string")),
                "{bad}: {err:?}"
            );
        }
    }
}
