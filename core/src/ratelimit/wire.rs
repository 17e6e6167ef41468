//! The rate-limit calls' bodies (`POST /v1/ratelimit`) and the key a counter is stored
//! under (see [`crate::wire`] for what the filter and the control plane share).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::gcra::Unit;
use crate::codec::{hex, length_prefix};

/// `POST /v1/ratelimit`: route of the batched counter operations.
pub const RATE_LIMIT_PATH: &str = "/v1/ratelimit";
/// Longest counter key accepted.
pub const MAX_COUNTER_KEY_LEN: usize = 128;

/// Several counter operations in one call.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitBatch {
    pub asks: Vec<RateLimitAsk>,
}

/// One operation on one counter. (Unknown fields are ignored here: serde cannot deny
/// them next to a flattened field.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitAsk {
    /// From [`counter_key`]: `[A-Za-z0-9._:-]`, at most [`MAX_COUNTER_KEY_LEN`] bytes.
    pub key: String,
    /// Units per `unit`, ≥ 1.
    pub limit: u64,
    pub unit: Unit,
    #[serde(flatten)]
    pub op: RateLimitOp,
}

/// What to do with the counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum RateLimitOp {
    /// Grant a lease sized by `ratelimit::lease_size` (`Gcra::grant_lease`), first
    /// crediting back `release` unspent units of this holder's previous lease.
    Lease {
        #[serde(default)]
        release: u64,
        max_lease: u64,
        /// How many holders (Envoy workers × Envoys) share the counter, as the filter
        /// estimates it; sizes the lease. 0 counts as 1.
        #[serde(default)]
        holders: u64,
        ttl_ms: u64,
    },
    /// Decide one request of `cost` units now (`Gcra::check`): strict mode.
    Check { cost: u64 },
    /// Credit back `units` unspent units of a lease given up (`Gcra::refund`).
    Release { units: u64 },
}

/// The answers, in the order of the asks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitReply {
    pub results: Vec<RateLimitResult>,
}

/// The counter after one operation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RateLimitResult {
    /// `lease`: units granted (0: refused). `check`: the cost when allowed, else 0.
    /// `release`: 0.
    pub granted: u64,
    /// When a granted lease stops being spendable (control-plane clock, ms).
    pub expires_at_ms: u64,
    /// Units that would pass right now after this operation.
    pub remaining: u64,
    /// Until the counter is full again.
    pub reset_after_ms: u64,
    /// When refused: until the asked units are available (`u64::MAX`: never). 0 otherwise.
    pub retry_after_ms: u64,
}

/// The key a limit's counter is stored under: lowercase hex of SHA-256 over the limit's
/// name, limit and unit and the request's descriptor values, each length-prefixed, cut
/// to 32 bytes (64 hex digits). Raw descriptor values (addresses, subjects) never reach
/// the store.
pub fn counter_key(limit_name: &str, limit: u64, unit: Unit, values: &[&str]) -> String {
    let mut h = Sha256::new();
    let mut part = |bytes: &[u8]| {
        h.update(length_prefix(bytes.len()));
        h.update(bytes);
    };
    part(b"portcullis.ratelimit.v1");
    part(limit_name.as_bytes());
    part(&limit.to_be_bytes());
    part(&unit.period_ms().to_be_bytes());
    for v in values {
        part(v.as_bytes());
    }
    hex(&h.finalize())
}

/// Whether `key` is acceptable as a counter key.
pub fn valid_counter_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_COUNTER_KEY_LEN
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}
