//! The unauthenticated `/v1` API: the revocation feed the Envoy filter follows, and
//! refresh token exchange. Serve it on a loopback or cluster-internal listener only:
//! the feed reveals revoked token ids and subjects.

use axum::extract::{Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use portcullis_core::revocation::FeedPage;
use serde::Deserialize;

use super::error::ApiJson;
use super::{ApiError, AppState};
use crate::revocations;
use crate::store::MAX_PAGE_SIZE;
use crate::tokens::{IssuedToken, RefreshRequest};

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/feed", get(feed)).route("/v1/token/refresh", post(refresh))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedQuery {
    #[serde(default)]
    after: u64,
    #[serde(default)]
    limit: Option<usize>,
}

async fn feed(
    State(state): State<AppState>,
    query: Result<Query<FeedQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<FeedPage>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::InvalidRequest(e.body_text()))?;
    let now_ms = state.clock.now_ms();
    let key_set_version = state.keys.current(now_ms).await.version;
    let page = revocations::feed_page(
        state.store.as_ref(),
        query.after,
        query.limit.unwrap_or(MAX_PAGE_SIZE),
        key_set_version,
        now_ms,
    )
    .await?;
    Ok(Json(page))
}

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
