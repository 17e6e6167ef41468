//! The Portcullis control plane: owns the signing keys and shared state (in Redis or
//! an embedded database) and serves the JWKS and the admin API the Envoy filter and
//! operators use.
//!
//! - [`store`]: the storage primitives and their backends.
//! - [`http`]: the HTTP API on two listeners: [`internal_app`] (what Envoys call,
//!   behind the fleet credential) and [`admin_app`] (the admin API and metrics).
//! - [`master_key`], [`signing`], [`keys`]: signing keys (ES256, EdDSA, RS256),
//!   sealed at rest, rotated with an overlap; [`tokens`]: token minting.
//! - [`sessions`]: refresh token families; [`revocations`]: revoked jtis, token
//!   versions and the change feed the filter follows; [`audit`]: the audit log.
//! - [`lockouts`]: failed logins and locks per account and address; [`burst`]:
//!   per-address request bursts, alerts and optional blocks; [`webhooks`]: the durable
//!   outbox that delivers alerts (retries, dead letters, signatures).
//! - [`ratelimits`]: rate-limit counters and quota leases for the filter.
//! - [`admin_credential`]: the admin token and the fleet credentials, compared in
//!   constant time.
//! - [`server`]: process startup and graceful shutdown; [`client`]: the admin API
//!   client behind the `portcullis` CLI; [`config_check`]: `portcullis config check`,
//!   offline checks of plugin configurations.
//! - [`tls`]: rustls for every outbound connection (Redis, webhooks, the CLI).
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod admin_credential;
pub mod api_tokens;
pub mod audit;
pub mod burst;
pub mod client;
pub mod clock;
pub mod config;
pub mod config_check;
pub mod hmac_keys;
pub mod http;
pub mod keys;
pub mod lockouts;
pub mod master_key;
pub mod metrics;
pub mod random;
pub mod ratelimits;
pub mod revocations;
pub mod server;
pub mod sessions;
pub mod signing;
pub mod store;
pub mod tls;
pub mod tokens;
pub mod webhooks;

pub use http::{admin_app, internal_app, AppState, Dependencies};
