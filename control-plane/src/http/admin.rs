//! The admin API (`/admin/v1`): token minting and status, behind the admin token.

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::error::ApiJson;
use super::health::store_is_ready;
use super::{ApiError, AppState};
use crate::tokens::{mint_access_token, IssuedToken, TokenError, TokenRequest};

pub fn routes(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/tokens", post(issue_token))
        .route("/status", get(status))
        .route_layer(middleware::from_fn_with_state(state, require_admin_token))
}

/// The bearer token of an `Authorization` header; `None` when there is no bearer
/// credential at all (missing header, another scheme).
fn bearer_token(request: &Request) -> Option<&str> {
    let value = request.headers().get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

async fn require_admin_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let token = bearer_token(&request).ok_or(ApiError::MissingAdminToken)?;
    if !state.admin.verify(token) {
        tracing::warn!("admin request with a wrong token");
        return Err(ApiError::InvalidAdminToken);
    }
    Ok(next.run(request).await)
}

async fn issue_token(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<TokenRequest>,
) -> Result<Json<IssuedToken>, ApiError> {
    let issued = mint_access_token(
        &request,
        &state.token_policy,
        &state.signing_key,
        state.clock.now_ms(),
        state.rng.as_ref(),
    )
    .map_err(|e| match e {
        TokenError::InvalidRequest(message) => ApiError::InvalidRequest(message),
        other => ApiError::Internal(other.to_string()),
    })?;
    state.metrics.record_token_issued();
    tracing::info!(sub = %request.sub, jti = %issued.jti, expires_in = issued.expires_in, "issued access token");
    Ok(Json(issued))
}

/// Response of `GET /admin/v1/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    pub version: String,
    pub store: String,
    pub ready: bool,
    pub current_kid: String,
    pub issuer: String,
    pub audience: String,
}

async fn status(State(state): State<AppState>) -> Json<StatusReport> {
    Json(StatusReport {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        store: state.store.backend().as_str().to_owned(),
        ready: store_is_ready(&state).await.is_ok(),
        current_kid: state.signing_key.kid().to_owned(),
        issuer: state.token_policy.issuer.clone(),
        audience: state.token_policy.default_audience.clone(),
    })
}
