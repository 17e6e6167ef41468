//! HMAC keys over HTTP. Admin listener (admin token, under `/admin/v1`): create, list,
//! rotate, revoke; every write audited with the admin identity (ids, owners and
//! times, never a secret). Internal listener (fleet credential): the key set Envoys
//! follow, and the fleet-wide replay guard of `replay: global` (one claim per signed
//! request).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use portcullis_core::signature::key_set::{KeySet, KEY_SET_PATH};
use portcullis_core::signature::replay::{ReplayClaim, ReplayClaimAnswer, CLAIM_PATH};
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiJson;
use super::{ApiError, AppState};
use crate::audit;
use crate::hmac_keys::{self, CreateHmacKey, HmacKeyInfo, HmacKeyList, HmacKeySecret, RotateHmacKey};

/// Admin routes, relative to `/admin/v1`.
pub fn admin_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(create, list)).routes(routes!(rotate)).routes(routes!(revoke))
}

/// Internal routes (what Envoys call).
pub fn internal_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(key_set)).routes(routes!(replay_claim))
}

#[utoipa::path(
    post,
    path = "/hmac-keys",
    tag = "admin",
    summary = "Create an HMAC key for signed requests (its secret is in this response only)",
    request_body(content = CreateHmacKey, content_type = "application/json"),
    responses((status = 201, description = "The secret and the key", content_type = "application/json"))
)]
async fn create(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<CreateHmacKey>,
) -> Result<(StatusCode, Json<HmacKeySecret>), ApiError> {
    let now_ms = state.clock.now_ms();
    let store = state.store.as_ref();
    let created = hmac_keys::create(store, &state.hmac_seal, state.rng.as_ref(), &request, now_ms).await?;
    let key = &created.key;
    audit::record(
        store,
        now_ms,
        state.admin.identity(),
        "hmac_key.create",
        &key.id,
        Some(json!({ "owner": key.owner, "format": key.format })),
    )
    .await?;
    tracing::info!(id = %key.id, "created HMAC key");
    Ok((StatusCode::CREATED, Json(created)))
}

#[utoipa::path(
    get,
    path = "/hmac-keys",
    tag = "admin",
    summary = "Every HMAC key with its secrets' times (never the secrets)",
    responses((status = 200, description = "JSON document", content_type = "application/json"))
)]
async fn list(State(state): State<AppState>) -> Result<Json<HmacKeyList>, ApiError> {
    Ok(Json(hmac_keys::list(state.store.as_ref(), state.clock.now_ms()).await?))
}

#[utoipa::path(
    post,
    path = "/hmac-keys/{id}/rotate",
    tag = "admin",
    summary = "Add a new secret; the current ones keep verifying for the overlap (the new secret is in this response only)",
    params(("id" = String, Path, description = "Key id")),
    request_body(content = RotateHmacKey, content_type = "application/json"),
    responses((status = 200, description = "The new secret and the key", content_type = "application/json"))
)]
async fn rotate(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<RotateHmacKey>,
) -> Result<Json<HmacKeySecret>, ApiError> {
    let now_ms = state.clock.now_ms();
    let store = state.store.as_ref();
    let rotated =
        hmac_keys::rotate(store, &state.hmac_seal, state.rng.as_ref(), &id, &request, now_ms).await?;
    let previous_not_after = rotated.key.secrets.iter().rev().nth(1).and_then(|s| s.not_after);
    audit::record(
        store,
        now_ms,
        state.admin.identity(),
        "hmac_key.rotate",
        &rotated.key.id,
        Some(json!({ "previousNotAfter": previous_not_after, "secrets": rotated.key.secrets.len() })),
    )
    .await?;
    tracing::info!(id = %rotated.key.id, "rotated HMAC key");
    Ok(Json(rotated))
}

#[utoipa::path(
    post,
    path = "/hmac-keys/{id}/revoke",
    tag = "admin",
    summary = "Revoke an HMAC key at once (idempotent): Envoys refuse it within a poll",
    params(("id" = String, Path, description = "Key id")),
    responses((status = 200, description = "JSON document", content_type = "application/json"))
)]
async fn revoke(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<HmacKeyInfo>, ApiError> {
    let now_ms = state.clock.now_ms();
    let store = state.store.as_ref();
    let (info, changed) = hmac_keys::revoke(store, &id, now_ms).await?;
    if changed {
        audit::record(store, now_ms, state.admin.identity(), "hmac_key.revoke", &info.id, None).await?;
        tracing::info!(id = %info.id, "revoked HMAC key");
    }
    Ok(Json(info))
}

#[utoipa::path(
    get,
    path = KEY_SET_PATH,
    tag = "internal",
    summary = "The HMAC key set (live keys with their valid secrets) for the filters",
    responses((status = 200, description = "JSON document", content_type = "application/json"))
)]
async fn key_set(State(state): State<AppState>) -> Result<Json<KeySet>, ApiError> {
    Ok(Json(hmac_keys::key_set(state.store.as_ref(), &state.hmac_seal, state.clock.now_ms()).await?))
}

#[utoipa::path(
    post,
    path = CLAIM_PATH,
    tag = "internal",
    summary = "Claim a signed request's replay id across the fleet (replay: global): fresh the first time within its window",
    responses((status = 200, description = "JSON document", content_type = "application/json"))
)]
async fn replay_claim(
    State(state): State<AppState>,
    ApiJson(claim): ApiJson<ReplayClaim>,
) -> Result<Json<ReplayClaimAnswer>, ApiError> {
    let fresh = hmac_keys::claim_replay(state.store.as_ref(), &claim, state.clock.now_ms()).await?;
    Ok(Json(ReplayClaimAnswer { fresh }))
}
