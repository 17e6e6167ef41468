//! Liveness, readiness and metrics.

use std::time::Duration;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiError, AppState};

/// A store that does not answer a ping within this long is not ready.
const READINESS_TIMEOUT: Duration = Duration::from_secs(2);
const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Liveness and readiness, on both listeners.
pub fn probes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(healthz)).routes(routes!(readyz))
}

/// Prometheus metrics, on the admin listener.
pub fn metrics() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(render_metrics))
}

/// The process is up and serving HTTP.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "probes",
    summary = "Liveness: the process serves HTTP",
    responses((status = 200, description = "Alive", content_type = "application/json"))
)]
async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "alive" }))
}

/// Whether the store answers, i.e. whether requests can be served.
pub(super) async fn store_is_ready(state: &AppState) -> Result<(), String> {
    match tokio::time::timeout(READINESS_TIMEOUT, state.store.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => {
            tracing::warn!(error = %error, kind = error.kind(), "readiness: store ping failed");
            Err(format!("the {} store is not reachable", state.store.backend()))
        }
        Err(_) => {
            tracing::warn!("readiness: store ping timed out");
            Err(format!("the {} store did not answer in time", state.store.backend()))
        }
    }
}

#[utoipa::path(
    get,
    path = "/readyz",
    tag = "probes",
    summary = "Readiness: the store answers",
    responses((status = 200, description = "Ready; otherwise a 503 problem", content_type = "application/json"))
)]
async fn readyz(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    store_is_ready(&state).await.map_err(ApiError::NotReady)?;
    Ok(Json(json!({
        "status": "ready",
        "store": state.store.backend().as_str(),
    })))
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "admin",
    summary = "Metrics (OpenMetrics text)",
    responses((status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8"))
)]
async fn render_metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    super::observe::sample_state(&state).await;
    let body =
        state.metrics.render().map_err(|e| ApiError::Internal(format!("cannot render metrics: {e}")))?;
    Ok(([(CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], body))
}
