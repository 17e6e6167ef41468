//! The public signing keys, for anyone verifying tokens (the Envoy filter).

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};

use super::AppState;
use crate::signing::JwkSet;

pub fn routes() -> Router<AppState> {
    Router::new().route("/.well-known/jwks.json", get(jwks))
}

async fn jwks(State(state): State<AppState>) -> Json<JwkSet> {
    Json(JwkSet {
        keys: vec![state.signing_key.public_jwk()],
    })
}
