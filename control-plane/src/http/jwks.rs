//! The public signing keys, for anyone verifying tokens (the Envoy filter): the
//! current key and previous keys until they retire.

use axum::extract::State;
use axum::Json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use crate::signing::JwkSet;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(jwks))
}

#[utoipa::path(
    get,
    path = "/.well-known/jwks.json",
    tag = "internal",
    summary = "The public signing keys (JWKS)",
    responses((status = 200, description = "JSON Web Key Set", content_type = "application/json"))
)]
async fn jwks(State(state): State<AppState>) -> Json<JwkSet> {
    let now_ms = state.clock.now_ms();
    Json(state.keys.current(now_ms).await.jwks(now_ms))
}
