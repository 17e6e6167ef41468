//! `POST /v1/ratelimit`: the filter's batched rate-limit counter operations (quota
//! leases, strict checks, releases), answered in order; see [`crate::ratelimits`].
//!
//! Unauthenticated, like the rest of the `/v1` API the filter calls (`/v1/feed`): serve
//! it on a loopback or cluster-internal listener only. Anyone who can reach it can
//! spend or refund any counter, i.e. lock clients out of a limit or lift it.
//!
//! Invalid batches are `400 invalid-request` problems naming the ask and field
//! (`asks[2].ttlMs: …`), and nothing is applied. A store failure on any ask fails the
//! whole call (`503 store-unavailable` when transient, else `500`), so the filter
//! applies its failure mode instead of trusting a partial answer.

use axum::extract::State;
use axum::Json;
use portcullis_core::wire::{RateLimitBatch, RateLimitReply, RATE_LIMIT_PATH};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiJson;
use super::{ApiError, AppState};
use crate::ratelimits::{self, RateLimitError};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(rate_limit))
}

#[utoipa::path(
    post,
    path = RATE_LIMIT_PATH,
    tag = "internal",
    summary = "Batched rate-limit counter operations",
    request_body(content = Object, content_type = "application/json"),
    responses((status = 200, description = "JSON document", content_type = "application/json"))
)]
async fn rate_limit(
    State(state): State<AppState>,
    ApiJson(batch): ApiJson<RateLimitBatch>,
) -> Result<Json<RateLimitReply>, ApiError> {
    let now_ms = state.clock.now_ms();
    let reply = ratelimits::apply_batch(state.store.as_ref(), &state.metrics, &batch, now_ms).await?;
    Ok(Json(reply))
}

impl From<RateLimitError> for ApiError {
    fn from(e: RateLimitError) -> Self {
        match e {
            RateLimitError::InvalidRequest(m) => ApiError::InvalidRequest(m),
            RateLimitError::Store(e) => ApiError::Store(e),
        }
    }
}
