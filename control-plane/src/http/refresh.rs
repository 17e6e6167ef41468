//! `POST /v1/token/refresh`: refresh token exchange. Public, on the internal listener:
//! the refresh token is its own credential, and clients (not Envoys) call it.

use axum::extract::State;
use axum::Json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiJson;
use super::{ApiError, AppState};
use crate::tokens::{IssuedToken, RefreshRequest};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(refresh))
}

#[utoipa::path(
    post,
    path = "/v1/token/refresh",
    tag = "internal",
    summary = "Exchange a refresh token for new tokens",
    request_body(content = RefreshRequest, content_type = "application/json"),
    responses((status = 200, description = "New access and refresh tokens", content_type = "application/json"))
)]
async fn refresh(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<RefreshRequest>,
) -> Result<Json<IssuedToken>, ApiError> {
    let now_ms = state.clock.now_ms();
    let issued = state.minter().refresh(&request.refresh_token, now_ms).await?;
    state.metrics.record_token_issued();
    tracing::info!(
        sid = issued.session_id.as_deref().unwrap_or_default(),
        jti = %issued.jti,
        "refreshed access token"
    );
    Ok(Json(issued))
}
