//! Rate-limit counters and quota leases for the filter (`POST /v1/ratelimit`).
//!
//! The control plane holds no per-limit configuration: every ask carries its counter
//! key (`portcullis_core::wire::counter_key`, a hash), its limit and unit and the
//! operation. [`apply_batch`] validates the whole batch first (nothing is applied when
//! any ask is invalid), then applies the asks in order, each as one atomic
//! [`Store::gcra`] step on its own counter, with exactly the arithmetic of
//! `portcullis_core::ratelimit`. The batch as a whole is not atomic: when the store
//! fails on one ask, the call fails, and the asks before it stay applied (a debit the
//! filter never learns of only under-admits).

use portcullis_core::wire::{
    valid_counter_key, RateLimitAsk, RateLimitBatch, RateLimitOp, RateLimitReply, RateLimitResult, MAX_BATCH,
    MAX_COUNTER_KEY_LEN,
};

use crate::metrics::{Metrics, RateLimitOutcome};
use crate::store::{Store, StoreError};

pub use crate::store::rate_limit::MAX_LIMIT;

/// Longest lease a filter may ask for: a lease's units may be spent until it expires,
/// which loosens the limit by up to one TTL of refill (see `portcullis_core::ratelimit`).
pub const MAX_LEASE_TTL_MS: u64 = 60_000;

#[derive(Debug, thiserror::Error)]
pub enum RateLimitError {
    /// The batch is not acceptable; the message names the ask and the field
    /// (`asks[2].ttlMs: …`).
    #[error("{0}")]
    InvalidRequest(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Checks every ask; the error names the first bad one by index and field.
pub fn validate(batch: &RateLimitBatch) -> Result<(), RateLimitError> {
    if batch.asks.len() > MAX_BATCH {
        return Err(RateLimitError::InvalidRequest(format!(
            "asks: at most {MAX_BATCH} asks per call, got {}",
            batch.asks.len()
        )));
    }
    for (index, ask) in batch.asks.iter().enumerate() {
        validate_ask(ask).map_err(|(field, problem)| {
            RateLimitError::InvalidRequest(format!("asks[{index}].{field}: {problem}"))
        })?;
    }
    Ok(())
}

/// The first problem with one ask: the field's wire name and what is wrong.
fn validate_ask(ask: &RateLimitAsk) -> Result<(), (&'static str, String)> {
    if !valid_counter_key(&ask.key) {
        return Err(("key", format!("must be 1 to {MAX_COUNTER_KEY_LEN} characters of A-Z a-z 0-9 . _ : -")));
    }
    if ask.limit == 0 || ask.limit > MAX_LIMIT {
        return Err(("limit", format!("must be between 1 and {MAX_LIMIT}, got {}", ask.limit)));
    }
    match ask.op {
        RateLimitOp::Check { cost } if cost > ask.limit => {
            Err(("cost", format!("must not exceed the limit ({}), got {cost}", ask.limit)))
        }
        RateLimitOp::Lease { max_lease: 0, .. } => Err(("maxLease", "must be at least 1".to_owned())),
        RateLimitOp::Lease { ttl_ms, .. } if ttl_ms == 0 || ttl_ms > MAX_LEASE_TTL_MS => {
            Err(("ttlMs", format!("must be between 1 and {MAX_LEASE_TTL_MS}, got {ttl_ms}")))
        }
        _ => Ok(()),
    }
}

/// Validates `batch`, then applies its asks in order at `now_ms` and answers in the
/// same order. Counts every decision in `metrics`.
pub async fn apply_batch(
    store: &dyn Store,
    metrics: &Metrics,
    batch: &RateLimitBatch,
    now_ms: u64,
) -> Result<RateLimitReply, RateLimitError> {
    validate(batch)?;
    let mut results = Vec::with_capacity(batch.asks.len());
    for (index, ask) in batch.asks.iter().enumerate() {
        let result = store.gcra(&ask.key, ask.limit, ask.unit, ask.op, now_ms).await.inspect_err(|e| {
            tracing::warn!(ask = index, asks = batch.asks.len(), kind = e.kind(), "rate-limit ask failed");
        })?;
        metrics.record_rate_limit(outcome(ask, &result));
        results.push(result);
    }
    Ok(RateLimitReply { results })
}

/// What the metrics count for one answered ask.
fn outcome(ask: &RateLimitAsk, result: &RateLimitResult) -> RateLimitOutcome {
    // Every refusal carries a retry time (≥ 1 ms); allowed operations carry 0.
    let refused = result.retry_after_ms > 0;
    let (op, leased_units, released_units) = match ask.op {
        RateLimitOp::Lease { release, .. } => ("lease", result.granted, release),
        RateLimitOp::Check { .. } => ("check", 0, 0),
        RateLimitOp::Release { units } => ("release", 0, units),
    };
    RateLimitOutcome {
        op,
        refused,
        near_limit: !refused && result.remaining.saturating_mul(10) < ask.limit,
        leased_units,
        released_units,
    }
}

#[cfg(test)]
mod tests {
    use portcullis_core::ratelimit::Unit;

    use super::*;

    fn ask(op: RateLimitOp) -> RateLimitAsk {
        RateLimitAsk { key: "k".into(), limit: 10, unit: Unit::Minute, op }
    }

    fn problem(asks: Vec<RateLimitAsk>) -> String {
        match validate(&RateLimitBatch { asks }) {
            Err(RateLimitError::InvalidRequest(m)) => m,
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn validation_names_the_ask_and_the_field() {
        let lease = |max_lease, ttl_ms| RateLimitOp::Lease { release: 0, max_lease, holders: 1, ttl_ms };
        let ok = ask(RateLimitOp::Check { cost: 1 });
        assert!(validate(&RateLimitBatch { asks: vec![ok.clone(), ask(lease(5, 60_000))] }).is_ok());
        assert!(problem(vec![ok.clone(), ask(RateLimitOp::Check { cost: 11 })]).starts_with("asks[1].cost:"));
        assert!(problem(vec![ask(lease(0, 1_000))]).starts_with("asks[0].maxLease:"));
        assert!(problem(vec![ask(lease(1, 0))]).starts_with("asks[0].ttlMs:"));
        assert!(problem(vec![ask(lease(1, 60_001))]).starts_with("asks[0].ttlMs:"));
        let mut bad_key = ok.clone();
        bad_key.key = "a{b}".into();
        assert!(problem(vec![ok.clone(), ok.clone(), bad_key]).starts_with("asks[2].key:"));
        let mut zero = ok.clone();
        zero.limit = 0;
        assert!(problem(vec![zero]).starts_with("asks[0].limit:"));
        let mut huge = ok.clone();
        huge.limit = MAX_LIMIT + 1;
        assert!(problem(vec![huge]).starts_with("asks[0].limit:"));
        assert!(problem(vec![ok; MAX_BATCH + 1]).starts_with("asks:"));
    }

    #[test]
    fn outcomes_classify_refusals_near_limit_and_units() {
        let lease = ask(RateLimitOp::Lease { release: 3, max_lease: 5, holders: 1, ttl_ms: 1_000 });
        let granted = RateLimitResult { granted: 4, remaining: 0, ..Default::default() };
        let o = outcome(&lease, &granted);
        assert_eq!(
            (o.op, o.refused, o.near_limit, o.leased_units, o.released_units),
            ("lease", false, true, 4, 3)
        );
        let refused = RateLimitResult { retry_after_ms: 6_000, ..Default::default() };
        let o = outcome(&ask(RateLimitOp::Check { cost: 1 }), &refused);
        assert!(o.refused && !o.near_limit);
        let o = outcome(
            &ask(RateLimitOp::Check { cost: 1 }),
            &RateLimitResult { remaining: 1, ..Default::default() },
        );
        assert!(!o.near_limit, "1 of 10 is 10%, not below it");
    }
}
