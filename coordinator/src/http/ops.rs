//! The plain-HTTP operations listener of `--metrics-addr`: `/metrics` (Prometheus text
//! format, with the gauges read from the coordinator's state at each scrape), `/healthz` and
//! `/readyz`. The metrics themselves live in [`crate::metrics`], which knows no state.
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use crate::http::error::ApiError;
use crate::metrics::{self, Gauges};
use crate::state::{Core, Phase};

/// Binds the operations listener when `--metrics-addr` is set.
pub async fn bind(addr: Option<SocketAddr>) -> anyhow::Result<Option<TcpListener>> {
    match addr {
        None => Ok(None),
        Some(a) => Ok(Some(TcpListener::bind(a).await.map_err(|e| {
            anyhow::anyhow!("binding the metrics listener to {a}: {e}")
        })?)),
    }
}

/// Serves [`router`] over plain HTTP on `listener` (returns at once without one).
pub async fn serve(listener: Option<TcpListener>, core: Arc<Core>) {
    let Some(listener) = listener else { return };
    if let Err(e) = axum::serve(listener, router(core)).await {
        tracing::error!(error = %e, "the metrics listener failed");
    }
}

/// `/metrics` (Prometheus text format), `/healthz` (the process answers) and `/readyz`
/// (200 whenever the APIs serve: in Recovery too, since recovery and a new manifest go
/// through the client API — a Kubernetes readiness probe must keep routing to it; alert on
/// `quarry_coordinator_state == 1` instead).
pub fn router(core: Arc<Core>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(core)
}

/// Every metric in the Prometheus text format, with the gauges of `core` as they are now.
pub fn render(core: &Core) -> String {
    let view = core.view();
    let mesh_ca = match view.phase.as_ref() {
        Phase::Running(d) => Some(d.mesh.cert_der()),
        _ => None,
    };
    metrics::render(&Gauges {
        state: i64::from(view.phase.state().code()),
        simulation: core.tee.simulation,
        log_entries: view.log.head().0,
        root_ca: view.identity.root.cert_der(),
        mesh_ca,
        collateral_dir: core.tee.collateral_dir.as_deref(),
        tcb_out_of_policy: core.tcb.out_of_policy(),
    })
}

/// Records an activation's outcome; its marble-type label is the type only when the current
/// manifest defines it.
pub fn record_activation(core: &Core, marble_type: &str, error: Option<&ApiError>) {
    let known = matches!(core.view().phase.as_ref(),
        Phase::Running(d) if d.manifest.marbles.contains_key(marble_type));
    metrics::activation(known, marble_type, error);
}

async fn metrics_text(State(core): State<Arc<Core>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render(&core),
    )
        .into_response()
}

async fn readyz(State(core): State<Arc<Core>>) -> Response {
    let view = core.view();
    let code = view.phase.state().code();
    match view.phase.as_ref() {
        Phase::Recovery { reason } => axum::Json(serde_json::json!({
            "ready": true,
            "state": code,
            "recoveryReason": reason.code(),
            "recovery": format!("the coordinator is in recovery (state 1): {reason}"),
        }))
        .into_response(),
        _ => axum::Json(serde_json::json!({"ready": true, "state": code})).into_response(),
    }
}
