//! The HTTP API, on two listeners, each built from an [`AppState`]; each resource
//! module contributes its own routes:
//!
//! - [`internal_app`], the internal listener: what Envoys call, behind the fleet
//!   credential (`fleet.rs`): the revocation feed and token status, rate-limit leases,
//!   lockout and burst reports, the API token feed and usage reports. Public there, without any credential: the JWKS, refresh
//!   token exchange, health and readiness.
//! - [`admin_app`], the admin listener: the admin API behind the admin token, metrics,
//!   health and readiness.
//!
//! A route of one listener is a 404 on the other, whatever credential is sent. The
//! routes come from the tables of [`route_groups`], which also make the OpenAPI document
//! (`openapi.rs`, served at `/openapi.json` on the admin listener).

mod admin;
mod api_tokens;
mod audit_log;
pub mod error;
mod feed;
mod fleet;
mod guard;
mod health;
mod hmac_keys;
mod jwks;
mod observe;
pub mod openapi;
mod ratelimit;
mod refresh;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::Router;
use utoipa_axum::router::OpenApiRouter;

use crate::admin_credential::{AdminCredential, FleetCredentials};
use crate::api_tokens::ApiTokenPolicy;
use crate::audit::{self, ACTOR_SYSTEM};
use crate::burst::{BurstConfig, BurstConfigError, BurstDetector};
use crate::clock::Clock;
use crate::keys::{KeyPolicy, KeyRing, KeyRingError};
use crate::lockouts::LockoutSecret;
use crate::master_key::MasterKey;
use crate::metrics::Metrics;
use crate::random::RandomSource;
use crate::revocations;
use crate::sessions::Minter;
use crate::store::{MeteredStore, Store};
use crate::tokens::TokenPolicy;
use crate::webhooks::Webhooks;

pub use admin::{
    GlobalRotateRequest, KeyList, RevocationAccepted, RevocationRequest, StatusReport, UserReport,
};
pub use api_tokens::{ApiTokenList, ApiTokensRevoked};
pub use error::{ApiError, Problem, PROBLEM_CONTENT_TYPE};
use openapi::{Credential, Listener, RouteGroup};

/// Request bodies are small JSON documents; refuse anything bigger.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// Everything the service needs, injected (time and randomness included).
#[derive(Clone)]
pub struct Dependencies {
    pub store: Arc<dyn Store>,
    pub admin: Arc<AdminCredential>,
    /// The credentials Envoys present on the internal listener.
    pub fleet: Arc<FleetCredentials>,
    pub token_policy: TokenPolicy,
    pub clock: Arc<dyn Clock>,
    pub rng: Arc<dyn RandomSource>,
    pub metrics: Arc<Metrics>,
    /// Seals private signing keys at rest.
    pub master_key: Arc<MasterKey>,
    pub key_policy: KeyPolicy,
    /// Change feed entries kept by [`AppState::maintain`].
    pub feed_keep: usize,
}

/// Shared by all handlers.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub keys: Arc<KeyRing>,
    pub admin: Arc<AdminCredential>,
    pub fleet: Arc<FleetCredentials>,
    pub token_policy: Arc<TokenPolicy>,
    pub clock: Arc<dyn Clock>,
    pub rng: Arc<dyn RandomSource>,
    pub metrics: Arc<Metrics>,
    pub feed_keep: usize,
    /// Keys the hashes lockout subjects are stored under (derived from the master key).
    pub lockout_secret: Arc<LockoutSecret>,
    /// Burst detection; [`AppState::with_burst_config`] configures it.
    pub burst: Arc<BurstDetector>,
    /// The webhook outbox, its delivery task and dead letters.
    pub webhooks: Arc<Webhooks>,
    /// API token prefix and longest lifetime; [`AppState::with_api_token_policy`] sets it.
    pub api_token_policy: Arc<ApiTokenPolicy>,
    /// Audit records older than this are purged by [`AppState::maintain`] (`None`:
    /// kept forever); [`AppState::with_audit_retention`] sets it.
    pub audit_retention_ms: Option<u64>,
    /// Seals HMAC keys' secrets at rest (derived from the master key).
    pub hmac_seal: Arc<crate::hmac_keys::SecretSeal>,
}

/// What one [`AppState::maintain`] pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Maintenance {
    pub rotated_kid: Option<String>,
    pub retired_version: Option<u64>,
    pub trimmed_feed_entries: u64,
    pub trimmed_api_token_feed_entries: u64,
    /// The periodic audit checkpoint made, if the chain had grown since the last one.
    pub audit_checkpoint_seq: Option<u64>,
    pub purged_audit_records: u64,
}

impl AppState {
    /// Wraps the store with metrics and loads (or creates) the signing key set.
    pub async fn initialise(deps: Dependencies) -> Result<Self, KeyRingError> {
        let store: Arc<dyn Store> = Arc::new(MeteredStore::new(deps.store, Arc::clone(&deps.metrics)));
        let lockout_secret = Arc::new(LockoutSecret::derive(&deps.master_key));
        let hmac_seal = Arc::new(crate::hmac_keys::SecretSeal::derive(&deps.master_key));
        let webhooks = Arc::new(Webhooks::new(
            Arc::clone(&store),
            Arc::clone(&deps.clock),
            Arc::clone(&deps.rng),
            Arc::clone(&deps.metrics),
            &deps.master_key,
        ));
        let burst =
            Arc::new(BurstDetector::new(&deps.master_key, Arc::clone(&webhooks), Arc::clone(&deps.metrics)));
        revocations::ensure_issued_version_mark(store.as_ref(), deps.clock.now_ms()).await.map_err(|e| {
            match e {
                revocations::RevocationError::Store(e) => KeyRingError::Store(e),
                revocations::RevocationError::Contended => KeyRingError::Contended,
                other => KeyRingError::Corrupt(other.to_string()),
            }
        })?;
        let keys = KeyRing::open(
            Arc::clone(&store),
            deps.master_key,
            Arc::clone(&deps.rng),
            deps.key_policy,
            deps.clock.now_ms(),
        )
        .await?;
        Ok(Self {
            store,
            keys: Arc::new(keys),
            admin: deps.admin,
            fleet: deps.fleet,
            token_policy: Arc::new(deps.token_policy),
            clock: deps.clock,
            rng: deps.rng,
            metrics: deps.metrics,
            feed_keep: deps.feed_keep,
            lockout_secret,
            burst,
            webhooks,
            api_token_policy: Arc::new(ApiTokenPolicy::default()),
            audit_retention_ms: None,
            hmac_seal,
        })
    }

    /// Replaces the API token settings (default: prefix `pct`, at most 365 days).
    pub fn with_api_token_policy(mut self, policy: ApiTokenPolicy) -> Self {
        self.api_token_policy = Arc::new(policy);
        self
    }

    /// Purges audit records older than `retention_ms` on every maintenance pass.
    pub fn with_audit_retention(mut self, retention_ms: Option<u64>) -> Self {
        self.audit_retention_ms = retention_ms;
        self
    }

    /// Replaces the burst detection settings (defaults: 50 requests per 10 s, no
    /// webhook, no blocking). With webhooks this starts their delivery task, so call it
    /// within a Tokio runtime (and [`Webhooks::stop`] it when done).
    pub fn with_burst_config(mut self, config: BurstConfig) -> Result<Self, BurstConfigError> {
        config.validate()?;
        let webhooks = self.webhooks.reconfigured(config.webhooks.clone())?;
        self.burst = Arc::new(self.burst.reconfigured(config, Arc::clone(&webhooks))?);
        self.webhooks = webhooks;
        Ok(self)
    }

    pub fn minter(&self) -> Minter<'_> {
        Minter {
            store: self.store.as_ref(),
            keys: &self.keys,
            policy: &self.token_policy,
            rng: self.rng.as_ref(),
        }
    }

    /// Periodic upkeep, safe to run on every replica at once: scheduled rotation,
    /// retiring keys past their overlap, trimming the change feed, an audit checkpoint
    /// and audit retention.
    pub async fn maintain(&self) -> Result<Maintenance, error::ApiError> {
        let now_ms = self.clock.now_ms();
        let store = self.store.as_ref();
        let mut done = Maintenance::default();
        if let Some(period) = self.keys.policy().rotate_every_ms {
            if let Some(rotation) = self.keys.rotate(now_ms, Some(period)).await? {
                revocations::record_key_set_change(store, rotation.key_set_version, now_ms).await?;
                audit::record(
                    store,
                    now_ms,
                    ACTOR_SYSTEM,
                    "keys.rotate_scheduled",
                    &rotation.kid,
                    serde_json::to_value(&rotation).ok(),
                )
                .await?;
                done.rotated_kid = Some(rotation.kid);
            }
        }
        if let Some(version) = self.keys.retire_expired(now_ms).await? {
            revocations::record_key_set_change(store, version, now_ms).await?;
            audit::record(
                store,
                now_ms,
                ACTOR_SYSTEM,
                "keys.retire",
                "signing-keys",
                Some(serde_json::json!({ "keySetVersion": version })),
            )
            .await?;
            done.retired_version = Some(version);
        }
        done.trimmed_feed_entries = revocations::trim_feed(store, self.feed_keep).await?;
        done.trimmed_api_token_feed_entries = crate::api_tokens::trim_feed(store, self.feed_keep).await?;
        let signer = Arc::clone(self.keys.current(now_ms).await.current());
        if let Some(retention_ms) = self.audit_retention_ms {
            done.purged_audit_records =
                audit::retention::purge(store, Arc::clone(&signer), retention_ms, now_ms).await?;
        }
        done.audit_checkpoint_seq = audit::checkpoint_if_due(store, signer, now_ms).await?;
        Ok(done)
    }
}

/// Every route of both listeners, by listener and credential: what the listeners serve
/// and what the OpenAPI document lists.
pub fn route_groups() -> Vec<RouteGroup> {
    let group = |listener, credential, routes| RouteGroup { listener, credential, routes };
    vec![
        group(
            Listener::Internal,
            Credential::Fleet,
            OpenApiRouter::new()
                .merge(feed::routes())
                .merge(ratelimit::routes())
                .merge(guard::routes())
                .merge(api_tokens::internal_routes())
                .merge(hmac_keys::internal_routes())
                .merge(audit_log::internal_routes()),
        ),
        group(
            Listener::Internal,
            Credential::None,
            OpenApiRouter::new().merge(health::probes()).merge(jwks::routes()).merge(refresh::routes()),
        ),
        group(
            Listener::Admin,
            Credential::Admin,
            OpenApiRouter::new().nest(
                "/admin/v1",
                admin::routes()
                    .merge(api_tokens::admin_routes())
                    .merge(hmac_keys::admin_routes())
                    .merge(audit_log::admin_routes()),
            ),
        ),
        group(
            Listener::Admin,
            Credential::None,
            OpenApiRouter::new().merge(health::probes()).merge(health::metrics()).merge(openapi::routes()),
        ),
    ]
}

/// One listener's routes from [`route_groups`], each group behind its credential.
fn listener_routes(listener: Listener, state: &AppState) -> Router<AppState> {
    let mut routes = Router::new();
    for group in route_groups().into_iter().filter(|g| g.listener == listener) {
        let (router, _) = group.routes.split_for_parts();
        routes = routes.merge(match group.credential {
            Credential::None => router,
            Credential::Fleet => router
                .route_layer(middleware::from_fn_with_state(state.clone(), fleet::require_fleet_credential)),
            Credential::Admin => {
                router.route_layer(middleware::from_fn_with_state(state.clone(), admin::require_admin_token))
            }
        });
    }
    routes
}

/// The internal listener's API: what Envoys call.
pub fn internal_app(state: AppState) -> Router {
    finish(listener_routes(Listener::Internal, &state), state)
}

/// The admin listener's API: operators and monitoring.
pub fn admin_app(state: AppState) -> Router {
    finish(listener_routes(Listener::Admin, &state), state)
}

/// What both listeners share: problem documents for every error (404s included), the
/// request log and metrics, the body limit.
fn finish(routes: Router<AppState>, state: AppState) -> Router {
    routes
        .fallback(error::not_found)
        .layer(middleware::map_response(error::problem_for_bare_errors))
        .layer(middleware::from_fn_with_state(state.clone(), observe::observe_request))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}
