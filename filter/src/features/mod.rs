//! The checks that need the host, one file each: JWT verification's keys, versions and
//! cache ([`jwt`]), the revocation replica ([`revocation`]), the API token replica
//! ([`api_token`]), rate limits ([`ratelimit`]), account lockout ([`lockout`]), burst
//! reports ([`burst`]), decision records ([`audit`]), signed requests' replay guard
//! ([`signature`]) and the control plane's HMAC keys ([`hmac_keys`]). Each holds its
//! per-worker state and answers from it and shared data; none makes a call or carries a
//! decision out itself: calls leave through the router (`calls.rs`), and the pipeline
//! (`pipeline.rs`, `stateful.rs`) acts on what the checks answer.

pub mod api_token;
pub mod audit;
pub mod burst;
pub mod hmac_keys;
pub mod jwt;
pub mod lockout;
pub mod ratelimit;
pub mod revocation;
pub mod signature;

use crate::host::Host;
use crate::metrics::Metrics;

/// What a check reads its surroundings through: the host, the metrics, and the time
/// of this callback.
#[derive(Clone, Copy)]
pub struct Env<'a> {
    pub host: &'a dyn Host,
    pub metrics: &'a Metrics,
    pub now_ms: u64,
}
