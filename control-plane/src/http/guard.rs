//! The filter's login guard calls, unauthenticated like `/v1/feed` (serve them on a
//! loopback or cluster-internal listener only: anyone who can reach them can lock an
//! account or read whether it is locked):
//!
//! - `POST /v1/lockout/check` ([`LockoutCheck`]) before a login attempt, which with
//!   `reservationTtlMs` also reserves the attempt (see [`lockouts::reserve`]), and
//!   `POST /v1/lockout/report` ([`LockoutReport`]) after the upstream answered, which
//!   settles the reservation; both answer [`LockoutReply`];
//! - `POST /v1/burst/report` ([`BurstReport`]): per-address request counts, answering
//!   the blocked addresses ([`BurstReply`]).

use axum::extract::State;
use axum::Json;
use portcullis_core::wire::{
    BurstReply, BurstReport, LockoutCheck, LockoutReply, LockoutReport, BURST_REPORT_PATH,
    LOCKOUT_CHECK_PATH, LOCKOUT_REPORT_PATH,
};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiJson;
use super::{ApiError, AppState};
use crate::burst::BurstError;
use crate::lockouts::{self, LockoutError};
use crate::store::StoreError;
use portcullis_core::codec::hex;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(lockout_check))
        .routes(routes!(lockout_report))
        .routes(routes!(burst_report))
}

/// Routes logged at debug, not info: the filter calls them on every login and every
/// second.
pub(super) fn quiet_route(route: &str) -> bool {
    matches!(route, LOCKOUT_CHECK_PATH | LOCKOUT_REPORT_PATH | BURST_REPORT_PATH)
}

impl From<LockoutError> for ApiError {
    fn from(e: LockoutError) -> Self {
        match e {
            LockoutError::InvalidRequest(m) => ApiError::InvalidRequest(m),
            LockoutError::Store(e) => ApiError::Store(e),
            LockoutError::Contended => ApiError::Store(StoreError::Busy(e.to_string())),
        }
    }
}

impl From<BurstError> for ApiError {
    fn from(e: BurstError) -> Self {
        match e {
            BurstError::InvalidRequest(m) => ApiError::InvalidRequest(m),
            BurstError::Store(e) => ApiError::Store(e),
        }
    }
}

#[utoipa::path(
    post,
    path = LOCKOUT_CHECK_PATH,
    tag = "internal",
    summary = "Is an account or address locked; reserve an attempt",
    request_body(content = Object, content_type = "application/json"),
    responses((status = 200, description = "JSON document", content_type = "application/json"))
)]
async fn lockout_check(
    State(state): State<AppState>,
    ApiJson(check): ApiJson<LockoutCheck>,
) -> Result<Json<LockoutReply>, ApiError> {
    let keys = lockouts::subject_keys(&state.lockout_secret, &check.subjects)?;
    let store = state.store.as_ref();
    let now_ms = state.clock.now_ms();
    let reply = match check.reservation_ttl_ms {
        None => lockouts::check(store, &check.policy, &keys, now_ms).await?,
        Some(ttl_ms) => {
            let id = reservation_id(&state)?;
            lockouts::reserve(store, &check.policy, &keys, &id, ttl_ms, now_ms).await?
        }
    };
    let result = if reply.locked_for_ms > 0 {
        "locked"
    } else if check.reservation_ttl_ms.is_some() && reply.reservation.is_none() {
        "in_flight"
    } else {
        "open"
    };
    state.metrics.record_lockout_check(result);
    Ok(Json(reply))
}

/// A fresh reservation id: 16 random bytes in hex.
fn reservation_id(state: &AppState) -> Result<String, ApiError> {
    let mut bytes = [0u8; 16];
    state.rng.fill(&mut bytes).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(hex(&bytes))
}

#[utoipa::path(
    post,
    path = LOCKOUT_REPORT_PATH,
    tag = "internal",
    summary = "Record a login attempt's outcome",
    request_body(content = Object, content_type = "application/json"),
    responses((status = 200, description = "JSON document", content_type = "application/json"))
)]
async fn lockout_report(
    State(state): State<AppState>,
    ApiJson(report): ApiJson<LockoutReport>,
) -> Result<Json<LockoutReply>, ApiError> {
    let keys = lockouts::subject_keys(&state.lockout_secret, &report.subjects)?;
    let result = lockouts::report(
        state.store.as_ref(),
        &report.policy,
        report.outcome,
        &keys,
        report.reservation.as_deref(),
        state.clock.now_ms(),
    )
    .await?;
    state.metrics.record_lockout_report(report.outcome.as_str());
    for key in &result.locks_started {
        state.metrics.record_lockout_started(key.kind.as_str());
        let locked_for_ms = result
            .reply
            .subjects
            .iter()
            .zip(&keys)
            .find(|(_, k)| *k == key)
            .map_or(0, |(s, _)| s.locked_for_ms);
        // The hash identifies the subject for an admin; the raw value is never logged.
        tracing::info!(kind = key.kind.as_str(), key_hash = %key.hash, locked_for_ms, "login lockout started");
    }
    Ok(Json(result.reply))
}

#[utoipa::path(
    post,
    path = BURST_REPORT_PATH,
    tag = "internal",
    summary = "Per-address request counts; answers blocked addresses",
    request_body(content = Object, content_type = "application/json"),
    responses((status = 200, description = "JSON document", content_type = "application/json"))
)]
async fn burst_report(
    State(state): State<AppState>,
    ApiJson(report): ApiJson<BurstReport>,
) -> Result<Json<BurstReply>, ApiError> {
    Ok(Json(state.burst.report(state.store.as_ref(), &report, state.clock.now_ms()).await?))
}
