//! The internal listener's gate: every route Envoys call needs the fleet credential as
//! `Authorization: Bearer <credential>`, the current one or, during a rotation, the
//! previous one (compared in constant time, see [`crate::admin_credential`]). Without
//! it: `401` with `WWW-Authenticate: Bearer realm="portcullis-internal"`; with a wrong
//! one, `error="invalid_token"` too. The request then carries [`FleetCaller`]: the
//! feed key its credential gives, under which the feed hashes ids for it.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use portcullis_core::fleet::FeedKey;

use super::admin::bearer_token;
use super::{ApiError, AppState};

/// The authenticated caller of an internal route.
#[derive(Clone, Debug)]
pub struct FleetCaller {
    pub feed_key: Arc<FeedKey>,
}

pub async fn require_fleet_credential(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = bearer_token(&request).ok_or(ApiError::MissingFleetCredential)?;
    let Some(feed_key) = state.fleet.verify(presented) else {
        tracing::warn!("internal request with a wrong fleet credential");
        return Err(ApiError::InvalidFleetCredential);
    };
    request.extensions_mut().insert(FleetCaller { feed_key });
    Ok(next.run(request).await)
}
