//! The audit log over HTTP. Admin listener (admin token, under `/admin/v1`): query it
//! newest first with filters and cursor paging, verify the chain, make a checkpoint.
//! Internal listener (fleet credential): the filters' decision batches.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::Json;
use portcullis_core::audit::{Decision, DecisionBatch, DecisionBatchReply, DECISIONS_PATH};
use portcullis_core::fleet::CLIENT_PREFIX;
use portcullis_core::jwt::KeySet;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiJson;
use super::{ApiError, AppState};
use crate::audit::decisions::{self, DecisionsError};
use crate::audit::query::{self, AuditPage, AuditQuery};
use crate::audit::verify::{self, Verification};
use crate::audit::{self, AuditRecord};
use crate::store::StoreError;

/// Admin routes, relative to `/admin/v1`.
pub fn admin_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list)).routes(routes!(verify_chain)).routes(routes!(checkpoint))
}

/// Internal routes (what Envoys call).
pub fn internal_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(decision_batch))
        .route_layer(axum::extract::DefaultBodyLimit::max(MAX_BATCH_BYTES))
}

/// Largest decision batch body: [`portcullis_core::audit::MAX_DECISIONS_PER_BATCH`]
/// records of bounded fields.
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

impl From<DecisionsError> for ApiError {
    fn from(e: DecisionsError) -> Self {
        match e {
            DecisionsError::InvalidRequest(m) => ApiError::InvalidRequest(m),
            DecisionsError::InFlight => ApiError::Store(StoreError::Busy(e.to_string())),
            DecisionsError::Store(e) => ApiError::Store(e),
        }
    }
}

#[utoipa::path(
    get,
    path = "/audit",
    tag = "admin",
    summary = "Audit records, newest first (oldest first with order=asc), filtered, one page",
    params(
        ("subject" = Option<String>, Query, description = "Token subject of a decision, or target of an admin record"),
        ("ip" = Option<String>, Query, description = "Client address of a decision (an address is also matched in its keyed-hash form)"),
        ("requestId" = Option<String>, Query, description = "x-request-id of a decision"),
        ("rule" = Option<String>, Query, description = "Rule of a decision"),
        ("decision" = Option<String>, Query, description = "allow, deny or shadow_deny"),
        ("reason" = Option<String>, Query, description = "Reason of a decision"),
        ("action" = Option<String>, Query, description = "Action, or its prefix up to a dot"),
        ("actor" = Option<String>, Query, description = "Actor, or its kind (admin, system, fleet)"),
        ("since" = Option<u64>, Query, description = "At or after this Unix millisecond"),
        ("until" = Option<u64>, Query, description = "Before this Unix millisecond"),
        ("limit" = Option<usize>, Query, description = "Records per page (1 to 1000, default 100)"),
        ("cursor" = Option<u64>, Query, description = "The previous page's nextCursor"),
        ("order" = Option<String>, Query, description = "desc (default) or asc"),
    ),
    responses((status = 200, description = "records and nextCursor", content_type = "application/json"))
)]
async fn list(
    State(state): State<AppState>,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<AuditPage>, ApiError> {
    let Query(mut query) = query.map_err(|e| ApiError::InvalidRequest(e.body_text()))?;
    if let Some(ip) = query.ip.as_deref().filter(|ip| !ip.starts_with(CLIENT_PREFIX)) {
        query.ip_hashes = state.fleet.feed_keys().map(|k| k.client_address(ip)).collect();
    }
    if let Some(limit) = query.limit {
        if !(1..=query::MAX_LIMIT).contains(&limit) {
            return Err(ApiError::InvalidRequest(format!(
                "limit: must be between 1 and {}",
                query::MAX_LIMIT
            )));
        }
    }
    if let Some(decision) = query.decision.as_deref() {
        if Decision::parse(decision).is_none() {
            return Err(ApiError::InvalidRequest("decision: must be allow, deny or shadow_deny".to_owned()));
        }
    }
    Ok(Json(query::list(state.store.as_ref(), &query).await?))
}

/// The keys checkpoints verify against (see [`crate::audit::checkpoint`]).
async fn checkpoint_keys(state: &AppState) -> Result<KeySet, ApiError> {
    let jwks = state.keys.current(state.clock.now_ms()).await.audit_jwks();
    let bytes = serde_json::to_vec(&jwks).map_err(|e| ApiError::Internal(e.to_string()))?;
    let (keys, _) = KeySet::from_jwks_json(&bytes).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(keys)
}

#[utoipa::path(
    get,
    path = "/audit/verify",
    tag = "admin",
    summary = "Walk the chain and its checkpoints: intact through record N, or the first record that fails",
    responses((status = 200, description = "intact, intactThrough, signedThrough and the first failure", content_type = "application/json"))
)]
async fn verify_chain(State(state): State<AppState>) -> Result<Json<Verification>, ApiError> {
    let keys = checkpoint_keys(&state).await?;
    let verification = verify::verify(state.store.as_ref(), &keys).await?;
    if let Some(failure) = &verification.failure {
        tracing::error!(seq = failure.seq, kind = ?failure.kind, "audit chain verification failed");
    }
    Ok(Json(verification))
}

#[utoipa::path(
    post,
    path = "/audit/checkpoint",
    tag = "admin",
    summary = "Append a checkpoint signed with the current signing key over the chain's head",
    responses((status = 200, description = "The checkpoint record", content_type = "application/json"))
)]
async fn checkpoint(State(state): State<AppState>) -> Result<Json<AuditRecord>, ApiError> {
    let now_ms = state.clock.now_ms();
    let signer = Arc::clone(state.keys.current(now_ms).await.current());
    Ok(Json(audit::checkpoint(state.store.as_ref(), signer, state.admin.identity(), now_ms).await?))
}

#[utoipa::path(
    post,
    path = DECISIONS_PATH,
    tag = "internal",
    summary = "A batch of the filter's decisions for the audit log (a resent batch id is stored once)",
    request_body(content = Object, content_type = "application/json"),
    responses((status = 200, description = "JSON document", content_type = "application/json"))
)]
async fn decision_batch(
    State(state): State<AppState>,
    ApiJson(batch): ApiJson<DecisionBatch>,
) -> Result<Json<DecisionBatchReply>, ApiError> {
    Ok(Json(decisions::ingest(state.store.as_ref(), &batch, state.clock.now_ms()).await?))
}
