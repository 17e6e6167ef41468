//! The public signing keys, for anyone verifying tokens (the Envoy filter): the
//! current key and previous keys until they retire.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};

use super::AppState;
use crate::signing::JwkSet;

pub fn routes() -> Router<AppState> {
    Router::new().route("/.well-known/jwks.json", get(jwks))
}

async fn jwks(State(state): State<AppState>) -> Json<JwkSet> {
    let now_ms = state.clock.now_ms();
    Json(state.keys.current(now_ms).await.jwks(now_ms))
}
