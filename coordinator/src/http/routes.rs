//! HTTP routes of the client API (deployers, relying parties) and the mesh API (sidecars).
//! Handlers extract, call a plain function and map the result; errors map in `error.rs`.
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use quarry_api::http::{
    ActivateRequest, JSend, ManifestGetResponse, ManifestSetRequest, ManifestSetResponse,
    NonceResponse, QuoteResponse, StatusResponse, MAX_BODY_BYTES,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::http::error::ApiError;
use crate::http::extract::Query;
use crate::http::limits::Limits;
use crate::http::tls::PeerCert;
use crate::state::{Core, Phase};
use quarry_api::attestation::{LOG_PAGE_DEFAULT, LOG_PAGE_MAX};

/// The client API router; request bodies are read within `limits` before a handler runs.
pub fn client_router(core: Arc<Core>, limits: &Limits) -> Router {
    let routes = Router::new()
        .route("/api/v2/status", get(status))
        .route("/api/v2/manifest", get(manifest_get).post(manifest_set))
        .route("/api/v2/quote", get(quote))
        .route("/api/v2/recover", post(recover))
        .route("/api/v2/recover/public-key", get(recover_public_key))
        .route("/api/v2/attestation", get(attestation))
        .route("/api/v2/secrets", get(secrets_get).post(secrets_set))
        .route("/api/v2/update", get(update_log).post(update_propose))
        .route(
            "/api/v2/update-manifest",
            get(update_pending).post(update_acknowledge),
        )
        .route("/api/v2/update-cancel", post(update_cancel))
        .route("/api/v2/log", get(log_entries))
        .route("/api/v2/log/proof", get(log_proof))
        .route("/api/v2/log/consistency", get(log_consistency))
        .route("/api/v2/tcb", get(tcb_report))
        .route("/api/v2/openapi.json", get(crate::http::openapi::document))
        .route("/api/v2/revoke", post(revoke))
        .route("/api/v2/crl", get(crl))
        .route("/api/v2/sign-quote", post(sign_quote))
        .route("/api/v2/monotonic-counter", post(monotonic_counter));
    serve(routes, "client", core, limits)
}

/// The mesh API router; request bodies are read within `limits` before a handler runs.
pub fn mesh_router(core: Arc<Core>, limits: &Limits) -> Router {
    let routes = Router::new()
        .route("/api/v2/activate/nonce", get(activate_nonce))
        .route("/api/v2/activate", post(activate))
        .route("/api/v2/attestation", get(attestation))
        .route("/api/v2/status", get(status))
        .route("/api/v2/renew", post(renew))
        .route("/api/v2/crl", get(crl))
        .route("/api/v2/monotonic-counter", post(monotonic_counter));
    serve(routes, "mesh", core, limits)
}

/// What both listeners share around their routes: JSend 404/405, the body read deadline,
/// the request metrics under `listener`, and the body size cap.
fn serve(
    routes: Router<Arc<Core>>,
    listener: &'static str,
    core: Arc<Core>,
    limits: &Limits,
) -> Router {
    routes
        .fallback(not_found)
        .method_not_allowed_fallback(crate::http::extract::method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            limits.body_read_timeout,
            crate::http::limits::read_body,
        ))
        .layer(axum::middleware::from_fn_with_state(
            listener,
            crate::metrics::track_http,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(core)
}

fn ok<T: serde::Serialize>(data: T) -> Response {
    (StatusCode::OK, Json(JSend::success(data))).into_response()
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint".into())
}

async fn status(State(core): State<Arc<Core>>) -> Response {
    let view = core.view();
    let state = view.phase.state();
    let recovery_reason = match view.phase.as_ref() {
        Phase::Recovery { reason } => Some(reason.code().to_string()),
        _ => None,
    };
    ok(StatusResponse {
        code: state.code(),
        message: state.message().to_string(),
        simulation: core.tee.simulation,
        version: Some(env!("CARGO_PKG_VERSION").to_string()),
        recovery_reason,
    })
}

async fn manifest_set(
    State(core): State<Arc<Core>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: ManifestSetRequest = crate::http::extract::json_body(body)?;
    let outcome = crate::manifest::set::set_manifest(&core, req.manifest).await?;
    Ok(ok(ManifestSetResponse {
        recovery_secrets: outcome.recovery_secrets,
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
        _ => Err(ApiError::not_found("no manifest has been set".into())),
    }
}

async fn quote(
    State(core): State<Arc<Core>>,
    Query(q): Query<NonceQuery>,
) -> Result<Response, ApiError> {
    use base64::Engine as _;
    let nonce = match q.nonce.as_deref() {
        None | Some("") => None,
        Some(text) => Some(
            base64::engine::general_purpose::URL_SAFE
                .decode(text)
                .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text))
                .map_err(|e| ApiError::bad_request(format!("nonce is not base64url: {e}")))?,
        ),
    };
    if nonce.as_ref().is_some_and(|n| n.len() > 1024) {
        return Err(ApiError::bad_request("nonce longer than 1024 bytes".into()));
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
        quote: quarry_api::bytes::b64(&quote.quote),
        kind: quote.kind,
        simulation: core.tee.simulation,
    }))
}

fn peer_cert(peer: &PeerCert) -> Result<&[u8], ApiError> {
    peer.0
        .as_deref()
        .map(|v| v.as_slice())
        .ok_or_else(|| ApiError::unauthorized("a TLS client certificate is required".into()))
}

async fn activate_nonce(
    State(core): State<Arc<Core>>,
    Extension(peer): Extension<PeerCert>,
) -> Result<Response, ApiError> {
    let spki = crate::marble::activation::spki_of(peer_cert(&peer)?)?;
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
    let req: ActivateRequest = crate::http::extract::json_body(body)?;
    let cert = peer_cert(&peer)?;
    let marble_type = req.marble_type.clone();
    let result = crate::marble::activation::activate(&core, req, cert).await;
    crate::http::ops::record_activation(&core, &marble_type, result.as_ref().err());
    Ok(ok(result?))
}

/// `?nonce=`: base64url on `/quote` (MarbleRun's); `/attestation` takes hex
/// ([`AttestationQuery`]).
#[derive(Deserialize)]
struct NonceQuery {
    nonce: Option<String>,
}

/// `GET /api/v2/attestation?nonce=HEX&format=ear`.
#[derive(Deserialize)]
struct AttestationQuery {
    nonce: Option<String>,
    format: Option<String>,
}

/// `GET /api/v2/attestation?nonce=HEX`: statement, evidence binding it, CAs, manifest. With
/// `format=ear` the statement is version 2 (it binds the EAR key) and the answer carries the
/// coordinator's EAR and that key.
async fn attestation(
    State(core): State<Arc<Core>>,
    Query(q): Query<AttestationQuery>,
) -> Result<Response, ApiError> {
    let nonce = match q.nonce.as_deref() {
        None | Some("") => None,
        Some(text) => {
            let n = hex::decode(text)
                .map_err(|e| ApiError::bad_request(format!("nonce is not hex: {e}")))?;
            if n.len() > 64 {
                return Err(ApiError::bad_request("nonce longer than 64 bytes".into()));
            }
            Some(n)
        }
    };
    let want_ear = match q.format.as_deref() {
        None | Some("json") => false,
        Some("ear") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "format: unknown value {other:?}; use ear, or leave it out for the statement alone"
            )))
        }
    };
    Ok(ok(crate::attestation::answer(
        &core,
        nonce.as_deref(),
        want_ear,
    )
    .await?))
}

#[derive(Deserialize)]
struct LogQuery {
    from: Option<u64>,
    limit: Option<u64>,
}

/// `GET /api/v2/log?from=N&limit=L`: one page of at most `limit` entries (default
/// [`LOG_PAGE_DEFAULT`], at most [`LOG_PAGE_MAX`]) from index `from`; `next` names the
/// following page.
async fn log_entries(
    State(core): State<Arc<Core>>,
    Query(q): Query<LogQuery>,
) -> Result<Response, ApiError> {
    let limit = q.limit.unwrap_or(LOG_PAGE_DEFAULT);
    if limit > LOG_PAGE_MAX {
        return Err(ApiError::bad_request(format!(
            "limit {limit} exceeds the maximum of {LOG_PAGE_MAX} entries per page; page with from and limit"
        )));
    }
    let view = core.view();
    let (size, root) = view.log.head();
    let from = q.from.unwrap_or(0);
    let to = from.saturating_add(limit).min(size);
    let entries = view.log.entries_range(from, to);
    Ok(ok(quarry_api::attestation::LogResponse {
        size,
        root: hex::encode(root),
        entries,
        next: (from < to && to < size).then_some(to),
    }))
}

/// `GET /api/v2/tcb`: the TCB monitor's verdict per running marble. Public like the log,
/// which carries every change as a `tcb-change` event anyway.
async fn tcb_report(State(core): State<Arc<Core>>) -> Result<Response, ApiError> {
    Ok(ok(crate::tcb::monitor::report(&core).await?))
}

#[derive(Deserialize)]
struct ProofQuery {
    index: u64,
    size: u64,
}

/// `GET /api/v2/log/proof?index=I&size=S`: inclusion proof.
async fn log_proof(
    State(core): State<Arc<Core>>,
    Query(q): Query<ProofQuery>,
) -> Result<Response, ApiError> {
    let proof = core.view().log.inclusion(q.index, q.size);
    proof_response(proof, || {
        format!(
            "no inclusion proof for index {} in a tree of size {}",
            q.index, q.size
        )
    })
}

#[derive(Deserialize)]
struct ConsistencyQuery {
    from: u64,
    to: u64,
}

/// `GET /api/v2/log/consistency?from=M&to=N`: consistency proof.
async fn log_consistency(
    State(core): State<Arc<Core>>,
    Query(q): Query<ConsistencyQuery>,
) -> Result<Response, ApiError> {
    let proof = core.view().log.consistency(q.from, q.to);
    proof_response(proof, || {
        format!("no consistency proof from size {} to size {}", q.from, q.to)
    })
}

/// A proof as hex hashes, or 400 saying which proof does not exist.
fn proof_response(
    proof: Option<Vec<quarry_api::merkle::Hash>>,
    missing: impl FnOnce() -> String,
) -> Result<Response, ApiError> {
    let proof = proof.ok_or_else(|| ApiError::bad_request(missing()))?;
    Ok(ok(quarry_api::attestation::ProofResponse {
        proof: proof.iter().map(hex::encode).collect(),
    }))
}

/// `POST /api/v2/renew` (mesh API): the marble's current leaf is its TLS client certificate.
async fn renew(
    State(core): State<Arc<Core>>,
    Extension(peer): Extension<PeerCert>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req = crate::http::extract::json_body(body)?;
    let cert = peer_der(&peer).ok_or_else(|| {
        ApiError::unauthorized(
            "renewal needs the marble's current leaf certificate as TLS client certificate".into(),
        )
    })?;
    Ok(ok(crate::marble::renewal::renew(&core, req, cert).await?))
}

/// `POST /api/v2/sign-quote` (client API, feature gate `SignQuoteEndpoint`).
async fn sign_quote(
    State(core): State<Arc<Core>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req = crate::http::extract::json_body(body)?;
    Ok(ok(crate::sign_quote::sign(&core, req).await?))
}

/// `POST /api/v2/monotonic-counter` (client API as in MarbleRun, and mesh API; feature gate
/// `MonotonicCounter`): the marble's current leaf is its TLS client certificate.
async fn monotonic_counter(
    State(core): State<Arc<Core>>,
    Extension(peer): Extension<PeerCert>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req = crate::http::extract::json_body(body)?;
    Ok(ok(
        crate::marble::counter::set(&core, peer_der(&peer), req).await?
    ))
}

/// `POST /api/v2/revoke` (client API).
async fn revoke(
    State(core): State<Arc<Core>>,
    Extension(peer): Extension<PeerCert>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req = crate::http::extract::json_body(body)?;
    Ok(ok(crate::marble::revocation::revoke(
        &core,
        peer_der(&peer),
        req,
    )
    .await?))
}

/// `GET /api/v2/crl`: the DER CRL of the current mesh CA.
async fn crl(State(core): State<Arc<Core>>) -> Result<Response, ApiError> {
    let der = crate::marble::revocation::crl(&core).await?;
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/pkix-crl"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        der,
    )
        .into_response())
}

fn peer_der(peer: &PeerCert) -> Option<&[u8]> {
    peer.0.as_deref().map(|v| v.as_slice())
}

/// `GET /api/v2/secrets?s=a&s=b`.
async fn secrets_get(
    State(core): State<Arc<Core>>,
    Extension(peer): Extension<PeerCert>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query.as_deref().unwrap_or(""))
            .map_err(|e| ApiError::bad_request(format!("malformed query: {e}")))?;
    let names: Vec<String> = pairs
        .into_iter()
        .filter(|(k, _)| k == "s")
        .map(|(_, v)| v)
        .collect();
    let secrets = crate::users::secrets::read(&core, peer_der(&peer), &names)?;
    Ok(ok(serde_json::json!({ "secrets": secrets })))
}

/// `POST /api/v2/secrets`.
async fn secrets_set(
    State(core): State<Arc<Core>>,
    Extension(peer): Extension<PeerCert>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: crate::users::secrets::SetSecretsRequest = crate::http::extract::json_body(body)?;
    crate::users::secrets::write(&core, peer_der(&peer), req).await?;
    Ok(ok(serde_json::Value::Null))
}

/// `GET /api/v2/update`.
async fn update_log(State(core): State<Arc<Core>>) -> Result<Response, ApiError> {
    Ok(ok(
        serde_json::json!({ "updateLog": crate::manifest::update::update_log(&core) }),
    ))
}

/// `POST /api/v2/update`.
async fn update_propose(
    State(core): State<Arc<Core>>,
    Extension(peer): Extension<PeerCert>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: ManifestSetRequest = crate::http::extract::json_body(body)?;
    Ok(ok(crate::manifest::update::propose(
        &core,
        peer_der(&peer),
        req.manifest,
    )
    .await?))
}

/// `GET /api/v2/update-manifest`.
async fn update_pending(State(core): State<Arc<Core>>) -> Result<Response, ApiError> {
    Ok(ok(crate::manifest::update::get_pending(&core).await?))
}

/// `POST /api/v2/update-manifest`.
async fn update_acknowledge(
    State(core): State<Arc<Core>>,
    Extension(peer): Extension<PeerCert>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: ManifestSetRequest = crate::http::extract::json_body(body)?;
    Ok(ok(crate::manifest::update::acknowledge(
        &core,
        peer_der(&peer),
        req.manifest,
    )
    .await?))
}

/// `POST /api/v2/update-cancel`.
async fn update_cancel(
    State(core): State<Arc<Core>>,
    Extension(peer): Extension<PeerCert>,
) -> Result<Response, ApiError> {
    crate::manifest::update::cancel(&core, peer_der(&peer)).await?;
    Ok(ok(
        serde_json::json!({"message": "Update successfully cancelled"}),
    ))
}

/// `POST /api/v2/recover`: one signed recovery secret (Recovery only).
async fn recover(
    State(core): State<Arc<Core>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: quarry_api::http::RecoverRequest = crate::http::extract::json_body(body)?;
    Ok(ok(crate::recovery::service::recover(&core, req).await?))
}

/// `GET /api/v2/recover/public-key`: the ephemeral key for the air-gapped flow.
async fn recover_public_key(State(core): State<Arc<Core>>) -> Result<Response, ApiError> {
    let der = crate::recovery::service::ephemeral_public_key(&core).await?;
    Ok(ok(quarry_api::http::RecoverPublicKeyResponse {
        algorithm: "RSA".into(),
        ephemeral_public_key: der,
    }))
}
