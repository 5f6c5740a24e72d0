//! Resource limits of the HTTPS listeners (issue 9): TLS handshake, HTTP/1 header and
//! request body deadlines, an idle bound per connection, a cap on concurrent connections per
//! listener, HTTP/2 stream and header limits, and per-route request body caps enforced before
//! a handler runs. Every limit is a flag with a `QUARRY_*` environment equivalent; the
//! defaults are documented in `docs/OPERATIONS.md`.
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;

use crate::http::error::ApiError;

/// Body cap of routes that take a manifest or user secrets (`MAX_BODY_BYTES`, 2 MiB).
pub const MANIFEST_BODY_BYTES: usize = quarry_api::http::MAX_BODY_BYTES;
/// Body cap of activation and renewal (evidence with its collateral), 1 MiB.
pub const EVIDENCE_BODY_BYTES: usize = 1024 * 1024;
/// Body cap of every other route (recovery secrets, revocations, and bodies sent with GET), 64 KiB.
pub const SMALL_BODY_BYTES: usize = 64 * 1024;
// Manifests may be larger than activation bodies, which are larger than everything else.
const _: () =
    assert!(SMALL_BODY_BYTES < EVIDENCE_BODY_BYTES && EVIDENCE_BODY_BYTES < MANIFEST_BODY_BYTES);

/// Bytes of an over-cap body read and discarded before the 413 is sent, so that a client
/// still writing its body can read the answer (closing a socket with unread data resets the
/// connection and loses the response). A body that announces or reaches more than this is
/// answered at once and its connection closed.
pub const DRAIN_BYTES: u64 = 4 * 1024 * 1024;

/// Connection and request limits of both HTTPS listeners (flags of `quarry-coordinator`).
#[derive(Debug, Clone, clap::Args)]
pub struct Limits {
    /// Time a client has to complete the TLS handshake after connecting.
    #[arg(long, env = "QUARRY_TLS_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub tls_handshake_timeout: Duration,
    /// Time a client has to send a complete HTTP/1 request head; it also bounds how long a
    /// keep-alive connection may wait for its next request.
    #[arg(long, env = "QUARRY_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,
    /// Time a client has to send a whole request body once its head is read (408 after it).
    #[arg(long, env = "QUARRY_BODY_READ_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub body_read_timeout: Duration,
    /// A connection that moves no byte in either direction for this long is shut down
    /// (idle HTTP/2 connections, clients that stop reading a response).
    #[arg(long, env = "QUARRY_IDLE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
    /// Connections served at once per listener (client and mesh API each); at the cap the
    /// listener stops accepting and new connections wait in the kernel's accept backlog.
    #[arg(long, env = "QUARRY_MAX_CONNECTIONS", default_value_t = 2048, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,
    /// HTTP/2 streams a client may have open at once on one connection.
    #[arg(long, env = "QUARRY_HTTP2_MAX_CONCURRENT_STREAMS", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub http2_max_concurrent_streams: u32,
    /// Largest request head in bytes: the HTTP/2 header list size, and the HTTP/1 read buffer
    /// a request head must fit in (at least 8192).
    #[arg(long, env = "QUARRY_MAX_HEADER_BYTES", default_value_t = 64 * 1024, value_parser = clap::value_parser!(u32).range(8192..=16 * 1024 * 1024))]
    pub max_header_bytes: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            tls_handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 2048,
            http2_max_concurrent_streams: 64,
            max_header_bytes: 64 * 1024,
        }
    }
}

/// The body cap of a request to `path` with `method`.
pub fn body_limit(method: &Method, path: &str) -> usize {
    if method != Method::POST && method != Method::PUT && method != Method::PATCH {
        return SMALL_BODY_BYTES;
    }
    match path {
        "/api/v2/manifest" | "/api/v2/update" | "/api/v2/update-manifest" | "/api/v2/secrets" => {
            MANIFEST_BODY_BYTES
        }
        "/api/v2/activate" | "/api/v2/renew" => EVIDENCE_BODY_BYTES,
        _ => SMALL_BODY_BYTES,
    }
}

/// axum middleware reading the request body before the handler runs: 413 when a declared
/// `content-length` exceeds the route's cap (nothing is read) or the body grows past it,
/// 408 when it is not complete within `body_read_timeout`, 400 when reading fails.
pub async fn read_body(State(timeout): State<Duration>, req: Request, next: Next) -> Response {
    let limit = body_limit(req.method(), req.uri().path());
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let (parts, body) = req.into_parts();
    if declared.is_some_and(|n| n > limit as u64) {
        if declared.is_some_and(|n| n <= DRAIN_BYTES) {
            let _ = tokio::time::timeout(timeout, drain(body, DRAIN_BYTES)).await;
        }
        return ApiError::too_large(limit).into_response();
    }
    let bytes = match tokio::time::timeout(timeout, collect(body, limit)).await {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => return e.into_response(),
        Err(_) => {
            return ApiError::timeout(format!(
                "the request body was not received within {}",
                humantime::format_duration(timeout)
            ))
            .into_response()
        }
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// Reads `body` whole, refusing it once it exceeds `limit` bytes (after draining up to
/// [`DRAIN_BYTES`] of it).
async fn collect(mut body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|e| ApiError::bad_request(format!("cannot read the request body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > limit {
                let seen = (out.len() + data.len()) as u64;
                drop(out);
                drain(body, DRAIN_BYTES.saturating_sub(seen)).await;
                return Err(ApiError::too_large(limit));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(out))
}

/// Reads and discards `body` until it ends, fails, or more than `max` bytes were read.
async fn drain(mut body: Body, max: u64) {
    let mut read = 0u64;
    while read <= max {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    read += data.len() as u64;
                }
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, read, "draining an over-cap request body failed");
                return;
            }
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Flags {
        #[command(flatten)]
        limits: Limits,
    }

    #[test]
    fn the_flag_defaults_are_the_documented_defaults() {
        let parsed = Flags::try_parse_from(["x"]).expect("defaults parse").limits;
        let d = Limits::default();
        assert_eq!(parsed.tls_handshake_timeout, d.tls_handshake_timeout);
        assert_eq!(parsed.header_read_timeout, d.header_read_timeout);
        assert_eq!(parsed.body_read_timeout, d.body_read_timeout);
        assert_eq!(parsed.idle_timeout, d.idle_timeout);
        assert_eq!(parsed.max_connections, d.max_connections);
        assert_eq!(
            parsed.http2_max_concurrent_streams,
            d.http2_max_concurrent_streams
        );
        assert_eq!(parsed.max_header_bytes, d.max_header_bytes);
        let set =
            Flags::try_parse_from(["x", "--idle-timeout", "1500ms", "--max-connections", "7"])
                .expect("parses")
                .limits;
        assert_eq!(set.idle_timeout, Duration::from_millis(1500));
        assert_eq!(set.max_connections, 7);
        assert!(Flags::try_parse_from(["x", "--max-connections", "0"]).is_err());
        assert!(Flags::try_parse_from(["x", "--max-header-bytes", "100"]).is_err());
    }

    #[test]
    fn manifests_may_be_larger_than_evidence_and_everything_else_is_small() {
        for (method, path, limit) in [
            (Method::POST, "/api/v2/manifest", MANIFEST_BODY_BYTES),
            (Method::POST, "/api/v2/update-manifest", MANIFEST_BODY_BYTES),
            (Method::POST, "/api/v2/activate", EVIDENCE_BODY_BYTES),
            (Method::POST, "/api/v2/recover", SMALL_BODY_BYTES),
            (Method::GET, "/api/v2/manifest", SMALL_BODY_BYTES),
        ] {
            assert_eq!(body_limit(&method, path), limit, "{method} {path}");
        }
    }

    #[tokio::test]
    async fn a_body_over_the_cap_is_refused_and_one_under_it_is_kept() {
        let ok = collect(Body::from(vec![1u8; 10]), 10).await.expect("fits");
        assert_eq!(ok.len(), 10);
        let err = collect(Body::from(vec![1u8; 11]), 10)
            .await
            .expect_err("over the cap");
        assert!(
            matches!(
                err,
                ApiError::Request(crate::http::error::RequestFault::TooLarge(10))
            ),
            "{err:?}"
        );
    }
}
