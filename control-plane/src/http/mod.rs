//! The HTTP API: [`app`] builds the router from an [`AppState`]; each resource module
//! contributes its own routes.

mod admin;
pub mod error;
mod health;
mod jwks;
mod observe;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::Router;

use crate::admin_credential::AdminCredential;
use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::random::RandomSource;
use crate::signing::{ensure_current_signing_key, SigningKeyError, SigningKeyPair};
use crate::store::{MeteredStore, Store};
use crate::tokens::TokenPolicy;

pub use admin::StatusReport;
pub use error::{ApiError, Problem, PROBLEM_CONTENT_TYPE};

/// Request bodies are small JSON documents; refuse anything bigger.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// Everything the service needs, injected (time and randomness included).
#[derive(Clone)]
pub struct Dependencies {
    pub store: Arc<dyn Store>,
    pub admin: Arc<AdminCredential>,
    pub token_policy: TokenPolicy,
    pub clock: Arc<dyn Clock>,
    pub rng: Arc<dyn RandomSource>,
    pub metrics: Arc<Metrics>,
}

/// Shared by all handlers.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub signing_key: Arc<SigningKeyPair>,
    pub admin: Arc<AdminCredential>,
    pub token_policy: Arc<TokenPolicy>,
    pub clock: Arc<dyn Clock>,
    pub rng: Arc<dyn RandomSource>,
    pub metrics: Arc<Metrics>,
}

impl AppState {
    /// Wraps the store with metrics and makes sure a current signing key exists.
    pub async fn initialise(deps: Dependencies) -> Result<Self, SigningKeyError> {
        let store: Arc<dyn Store> = Arc::new(MeteredStore::new(deps.store, Arc::clone(&deps.metrics)));
        let signing_key =
            ensure_current_signing_key(store.as_ref(), deps.rng.as_ref(), deps.clock.now_ms()).await?;
        Ok(Self {
            store,
            signing_key: Arc::new(signing_key),
            admin: deps.admin,
            token_policy: Arc::new(deps.token_policy),
            clock: deps.clock,
            rng: deps.rng,
            metrics: deps.metrics,
        })
    }
}

/// The whole API.
pub fn app(state: AppState) -> Router {
    Router::new()
        .merge(health::routes())
        .merge(jwks::routes())
        .nest("/admin/v1", admin::routes(state.clone()))
        .fallback(error::not_found)
        .layer(middleware::map_response(error::problem_for_bare_errors))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            observe::observe_request,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}
