//! HTTP routes of the client API (deployers, relying parties) and the mesh API (sidecars).
//! Handlers extract, call a plain function and map the result; errors map in `error.rs`.
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Query, State};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use quarry_api::http::{
    ActivateRequest, JSend, ManifestGetResponse, ManifestSetRequest, ManifestSetResponse,
    NonceResponse, QuoteResponse, StatusResponse, MAX_BODY_BYTES,
};
use quarry_api::EvidenceType;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::core::{Core, Phase};
use crate::error::ApiError;
use crate::tls::PeerCert;

/// The client API router.
pub fn client_router(core: Arc<Core>) -> Router {
    Router::new()
        .route("/api/v2/status", get(status))
        .route("/api/v2/manifest", get(manifest_get).post(manifest_set))
        .route("/api/v2/quote", get(quote))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(core)
}

/// The mesh API router.
pub fn mesh_router(core: Arc<Core>) -> Router {
    Router::new()
        .route("/api/v2/activate/nonce", get(activate_nonce))
        .route("/api/v2/activate", post(activate))
        .route("/api/v2/status", get(status))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(core)
}

fn ok<T: serde::Serialize>(data: T) -> Response {
    (StatusCode::OK, Json(JSend::success(data))).into_response()
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint".into())
}

/// Parses a JSON body whatever its content type (curl's `-d` sends a form type); 413 for
/// bodies over the limit, 400 naming the line and column of malformed JSON.
fn json_body<T: serde::de::DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let bytes = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge(MAX_BODY_BYTES)
        } else {
            ApiError::BadRequest(format!("cannot read the request body: {}", r.body_text()))
        }
    })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::BadRequest(format!(
            "malformed request body at line {} column {}: {e}",
            e.line(),
            e.column()
        ))
    })
}

async fn status(State(core): State<Arc<Core>>) -> Response {
    let state = core.state();
    ok(StatusResponse {
        code: state.code(),
        message: state.message().to_string(),
        simulation: core.tee.simulation,
    })
}

async fn manifest_set(
    State(core): State<Arc<Core>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: ManifestSetRequest = json_body(body)?;
    let outcome = crate::manifest_ops::set_manifest(&core, req.manifest).await?;
    Ok(ok(ManifestSetResponse {
        recovery_secrets: None,
        warnings: outcome.warnings,
    }))
}

async fn manifest_get(State(core): State<Arc<Core>>) -> Result<Response, ApiError> {
    let view = core.view();
    match view.phase.as_ref() {
        Phase::Running(d) => Ok(ok(ManifestGetResponse {
            manifest_signature_root_ecdsa: quarry_api::bytes::b64(&d.signature),
            manifest_fingerprint: hex::encode(Sha256::digest(&d.raw)),
            manifest: quarry_api::bytes::b64(&d.raw),
        })),
        _ => Err(ApiError::NotFound("no manifest has been set".into())),
    }
}

#[derive(Deserialize)]
struct QuoteQuery {
    nonce: Option<String>,
}

async fn quote(
    State(core): State<Arc<Core>>,
    Query(q): Query<QuoteQuery>,
) -> Result<Response, ApiError> {
    use base64::Engine as _;
    let nonce = match q.nonce.as_deref() {
        None | Some("") => None,
        Some(text) => Some(
            base64::engine::general_purpose::URL_SAFE
                .decode(text)
                .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text))
                .map_err(|e| ApiError::BadRequest(format!("nonce is not base64url: {e}")))?,
        ),
    };
    if nonce.as_ref().is_some_and(|n| n.len() > 1024) {
        return Err(ApiError::BadRequest("nonce longer than 1024 bytes".into()));
    }
    let quote = core.quote(nonce.as_deref())?;
    let view = core.view();
    let mut chain = String::new();
    if let Phase::Running(d) = view.phase.as_ref() {
        chain.push_str(&d.mesh.cert_pem());
    }
    chain.push_str(&view.identity.root.cert_pem());
    Ok(ok(QuoteResponse {
        cert: chain,
        quote: quarry_api::bytes::b64(&quote),
        kind: if core.tee.simulation {
            EvidenceType::Simulated
        } else {
            EvidenceType::SgxDcap
        },
        simulation: core.tee.simulation,
    }))
}

fn peer_cert(peer: &PeerCert) -> Result<&[u8], ApiError> {
    peer.0
        .as_deref()
        .map(|v| v.as_slice())
        .ok_or_else(|| ApiError::Unauthorized("a TLS client certificate is required".into()))
}

async fn activate_nonce(
    State(core): State<Arc<Core>>,
    Extension(peer): Extension<PeerCert>,
) -> Result<Response, ApiError> {
    let spki = crate::activation::spki_of(peer_cert(&peer)?)?;
    let nonce = core.issue_nonce(Sha256::digest(&spki).into())?;
    Ok(ok(NonceResponse {
        nonce: hex::encode(nonce),
    }))
}

async fn activate(
    State(core): State<Arc<Core>>,
    Extension(peer): Extension<PeerCert>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: ActivateRequest = json_body(body)?;
    let cert = peer_cert(&peer)?;
    let resp = crate::activation::activate(&core, req, cert).await?;
    Ok(ok(resp))
}
