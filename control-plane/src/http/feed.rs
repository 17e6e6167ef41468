//! The revocation feed the Envoy filter follows and the per-token status it asks for on
//! strictly checked routes: internal listener, fleet credential. The feed hashes every
//! token id and subject with the caller's feed key ([`super::fleet::FleetCaller`]).

use axum::extract::{Query, State};
use axum::{Extension, Json};
use portcullis_core::revocation::{FeedPage, TokenStatus, MAX_PAGE_ENTRIES};
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::fleet::FleetCaller;
use super::{ApiError, AppState};
use crate::revocations::{self, FeedCursor, FeedRequest};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(feed)).routes(routes!(token_status))
}

/// Route of the revocation feed (the filter's default `revocation.path`).
pub(super) const FEED_PATH: &str = "/v1/feed";
/// Entries on a page unless the follower asks for fewer or more (up to
/// [`MAX_PAGE_ENTRIES`]).
const DEFAULT_FEED_LIMIT: usize = 5_000;

/// Route of the per-token status check (the filter's default `statusPath`).
pub(super) const TOKEN_STATUS_PATH: &str = "/v1/token-status";
/// Longest `jti` or `sub` the status check accepts (bytes, after percent-decoding).
const MAX_STATUS_PARAM_BYTES: usize = 512;

/// The query of a feed page (this feed's and the API token feed's).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FeedQuery {
    #[serde(default)]
    pub cursor: Option<String>,
    #[serde(default)]
    pub limit: Option<usize>,
}

#[utoipa::path(
    get,
    path = FEED_PATH,
    tag = "internal",
    summary = "Revocation change feed (one page)",
    params(("cursor" = Option<String>, Query, description = "The previous page's cursor; none to start"), ("limit" = Option<usize>, Query, description = "Entries per page")),
    responses((status = 200, description = "JSON document", content_type = "application/json"))
)]
async fn feed(
    State(state): State<AppState>,
    Extension(caller): Extension<FleetCaller>,
    query: Result<Query<FeedQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<FeedPage>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::InvalidRequest(e.body_text()))?;
    let cursor = match query.cursor.as_deref() {
        None | Some("") => None,
        Some(text) => Some(FeedCursor::parse(text).ok_or_else(|| {
            ApiError::InvalidRequest("cursor: not a cursor this feed issued; start without one".to_owned())
        })?),
    };
    let limit = query.limit.unwrap_or(DEFAULT_FEED_LIMIT);
    if !(1..=MAX_PAGE_ENTRIES).contains(&limit) {
        return Err(ApiError::InvalidRequest(format!("limit: must be between 1 and {MAX_PAGE_ENTRIES}")));
    }
    let now_ms = state.clock.now_ms();
    let keys = state.keys.current(now_ms).await;
    let revoked_kids = keys.revoked_kids();
    let request = FeedRequest {
        cursor: cursor.as_ref(),
        limit,
        key: &caller.feed_key,
        key_set_version: keys.version,
        revoked_kids: &revoked_kids,
        now_ms,
    };
    Ok(Json(revocations::feed_page(state.store.as_ref(), state.rng.as_ref(), &request).await?))
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
#[utoipa::path(
    get,
    path = TOKEN_STATUS_PATH,
    tag = "internal",
    summary = "One token's current revocation state",
    params(("jti" = Option<String>, Query, description = "Token id"), ("sub" = Option<String>, Query, description = "Subject")),
    responses((status = 200, description = "JSON document", content_type = "application/json"))
)]
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
