//! API tokens over HTTP. Admin listener (admin token, under `/admin/v1`): create, show,
//! revoke, list and revoke all of a user; every write audited (ids, names and scopes,
//! never the token). Internal listener (fleet credential): the feed Envoys keep a
//! replica from and the batched usage reports they send back.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use portcullis_core::api_token::{ApiTokenFeedPage, UsageReply, UsageReport, FEED_PATH, USAGE_PATH};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiJson;
use super::feed::FeedQuery;
use super::{ApiError, AppState};
use crate::api_tokens::{self, ApiTokenCursor, ApiTokenInfo, CreateApiToken, CreatedApiToken};
use crate::audit;

/// Admin routes, relative to `/admin/v1`.
pub fn admin_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create))
        .routes(routes!(show))
        .routes(routes!(revoke))
        .routes(routes!(list))
        .routes(routes!(revoke_all))
}

/// Internal routes (what Envoys call).
pub fn internal_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(feed)).routes(routes!(usage))
}

#[utoipa::path(
    post,
    path = "/api-tokens",
    tag = "admin",
    summary = "Create an API token for a user (the token is in this response only)",
    request_body(content = CreateApiToken, content_type = "application/json"),
    responses((status = 201, description = "The token and its record", content_type = "application/json"))
)]
async fn create(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<CreateApiToken>,
) -> Result<(StatusCode, Json<CreatedApiToken>), ApiError> {
    let now_ms = state.clock.now_ms();
    let store = state.store.as_ref();
    let created =
        api_tokens::create(store, state.rng.as_ref(), &state.api_token_policy, &request, now_ms).await?;
    let info = &created.info;
    audit::record(
        store,
        now_ms,
        state.admin.identity(),
        "api_token.create",
        &info.id,
        Some(json!({ "user": info.user, "name": info.name, "scopes": info.scopes, "expiresAt": info.expires_at })),
    )
    .await?;
    tracing::info!(id = %info.id, user = %info.user, expires_at = info.expires_at, "created API token");
    Ok((StatusCode::CREATED, Json(created)))
}

#[utoipa::path(
    get,
    path = "/api-tokens/{id}",
    tag = "admin",
    summary = "One API token (never its secret)",
    params(("id" = String, Path, description = "Token id (the lookup part)")),
    responses((status = 200, description = "JSON document", content_type = "application/json"))
)]
async fn show(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<ApiTokenInfo>, ApiError> {
    Ok(Json(api_tokens::show(state.store.as_ref(), &id, state.clock.now_ms()).await?))
}

#[utoipa::path(
    post,
    path = "/api-tokens/{id}/revoke",
    tag = "admin",
    summary = "Revoke one API token (idempotent)",
    params(("id" = String, Path, description = "Token id")),
    responses((status = 200, description = "JSON document", content_type = "application/json"))
)]
async fn revoke(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ApiTokenInfo>, ApiError> {
    let now_ms = state.clock.now_ms();
    let store = state.store.as_ref();
    let (info, changed) = api_tokens::revoke(store, &id, now_ms).await?;
    if changed {
        audit::record(
            store,
            now_ms,
            state.admin.identity(),
            "api_token.revoke",
            &info.id,
            Some(json!({ "user": info.user })),
        )
        .await?;
        tracing::info!(id = %info.id, user = %info.user, "revoked API token");
    }
    Ok(Json(info))
}

/// Response of `GET /admin/v1/users/{user}/api-tokens`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiTokenList {
    pub tokens: Vec<ApiTokenInfo>,
}

#[utoipa::path(
    get,
    path = "/users/{user}/api-tokens",
    tag = "admin",
    summary = "A user's API tokens, newest first (never their secrets)",
    params(("user" = String, Path, description = "User")),
    responses((status = 200, description = "JSON document", content_type = "application/json"))
)]
async fn list(
    State(state): State<AppState>,
    Path(user): Path<String>,
) -> Result<Json<ApiTokenList>, ApiError> {
    Ok(Json(ApiTokenList {
        tokens: api_tokens::list(state.store.as_ref(), &user, state.clock.now_ms()).await?,
    }))
}

/// Response of `POST /admin/v1/users/{user}/api-tokens/revoke-all`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiTokensRevoked {
    pub user: String,
    /// Ids of the tokens this call revoked.
    pub revoked: Vec<String>,
}

#[utoipa::path(
    post,
    path = "/users/{user}/api-tokens/revoke-all",
    tag = "admin",
    summary = "Revoke every API token of a user",
    params(("user" = String, Path, description = "User")),
    responses((status = 200, description = "JSON document", content_type = "application/json"))
)]
async fn revoke_all(
    State(state): State<AppState>,
    Path(user): Path<String>,
) -> Result<Json<ApiTokensRevoked>, ApiError> {
    let now_ms = state.clock.now_ms();
    let store = state.store.as_ref();
    let revoked = api_tokens::revoke_all_of_user(store, &user, now_ms).await?;
    audit::record(
        store,
        now_ms,
        state.admin.identity(),
        "api_token.revoke_user",
        &user,
        Some(json!({ "revoked": revoked })),
    )
    .await?;
    tracing::info!(%user, count = revoked.len(), "revoked the API tokens of a user");
    Ok(Json(ApiTokensRevoked { user, revoked }))
}

#[utoipa::path(
    get,
    path = FEED_PATH,
    tag = "internal",
    summary = "API token change feed (one page): hashed records for the filter's replica",
    params(("cursor" = Option<String>, Query, description = "The previous page's cursor; none to start"), ("limit" = Option<usize>, Query, description = "Entries per page (1 to 1000)")),
    responses((status = 200, description = "JSON document", content_type = "application/json"))
)]
async fn feed(
    State(state): State<AppState>,
    query: Result<Query<FeedQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ApiTokenFeedPage>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::InvalidRequest(e.body_text()))?;
    let cursor = match query.cursor.as_deref() {
        None | Some("") => None,
        Some(text) => Some(ApiTokenCursor::parse(text).ok_or_else(|| {
            ApiError::InvalidRequest("cursor: not a cursor this feed issued; start without one".to_owned())
        })?),
    };
    let limit = query.limit.unwrap_or(api_tokens::DEFAULT_FEED_LIMIT);
    if !(1..=api_tokens::MAX_FEED_LIMIT).contains(&limit) {
        return Err(ApiError::InvalidRequest(format!(
            "limit: must be between 1 and {}",
            api_tokens::MAX_FEED_LIMIT
        )));
    }
    let now_ms = state.clock.now_ms();
    let page =
        api_tokens::feed_page(state.store.as_ref(), state.rng.as_ref(), cursor.as_ref(), limit, now_ms)
            .await?;
    Ok(Json(page))
}

#[utoipa::path(
    post,
    path = USAGE_PATH,
    tag = "internal",
    summary = "Tokens used since the last report (lastUsedAt is written at most once a minute each)",
    responses((status = 200, description = "JSON document", content_type = "application/json"))
)]
async fn usage(
    State(state): State<AppState>,
    ApiJson(report): ApiJson<UsageReport>,
) -> Result<Json<UsageReply>, ApiError> {
    let updated = api_tokens::record_usage(state.store.as_ref(), &report, state.clock.now_ms()).await?;
    Ok(Json(UsageReply { updated }))
}
