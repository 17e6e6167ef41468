//! The unauthenticated `/v1` API: the revocation feed the Envoy filter follows, the
//! per-token status it asks for on strictly checked routes, and refresh token exchange.
//! Serve it on a loopback or cluster-internal listener only: the feed reveals revoked
//! token ids and subjects, and the status endpoint answers for any id.

use axum::extract::{Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use portcullis_core::revocation::{FeedPage, TokenStatus};
use serde::Deserialize;

use super::error::ApiJson;
use super::{ApiError, AppState};
use crate::revocations;
use crate::store::MAX_PAGE_SIZE;
use crate::tokens::{IssuedToken, RefreshRequest};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/feed", get(feed))
        .route(TOKEN_STATUS_PATH, get(token_status))
        .route("/v1/token/refresh", post(refresh))
}

/// Route of the per-token status check (the filter's default `statusPath`).
pub(super) const TOKEN_STATUS_PATH: &str = "/v1/token-status";
/// Longest `jti` or `sub` the status check accepts (bytes, after percent-decoding).
const MAX_STATUS_PARAM_BYTES: usize = 512;

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
    let keys = state.keys.current(now_ms).await;
    let store = state.store.as_ref();
    let mut page = revocations::feed_page(
        store,
        query.after,
        query.limit.unwrap_or(MAX_PAGE_SIZE),
        keys.version,
        now_ms,
    )
    .await?;
    revocations::add_key_and_version_state(store, &mut page, keys.revoked_kids(), now_ms).await?;
    Ok(Json(page))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenStatusQuery {
    #[serde(default)]
    jti: Option<String>,
    #[serde(default)]
    sub: Option<String>,
}

/// An optional id parameter: absent and empty are the same (no id can be empty), longer
/// than [`MAX_STATUS_PARAM_BYTES`] is a 400.
fn status_param<'a>(name: &str, value: Option<&'a str>) -> Result<Option<&'a str>, ApiError> {
    match value {
        Some(v) if v.len() > MAX_STATUS_PARAM_BYTES => {
            Err(ApiError::InvalidRequest(format!("{name}: at most {MAX_STATUS_PARAM_BYTES} bytes")))
        }
        Some("") | None => Ok(None),
        Some(v) => Ok(Some(v)),
    }
}

/// The current revocation state for one token, read from the store (not the feed):
/// three store reads at most, run concurrently, and nothing else.
async fn token_status(
    State(state): State<AppState>,
    query: Result<Query<TokenStatusQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<TokenStatus>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::InvalidRequest(e.body_text()))?;
    let jti = status_param("jti", query.jti.as_deref())?;
    let sub = status_param("sub", query.sub.as_deref())?;
    let status = revocations::token_status(state.store.as_ref(), jti, sub, state.clock.now_ms()).await?;
    state.metrics.record_token_status(status.revoked);
    Ok(Json(status))
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
