//! The rate-limit counter primitive ([`super::Store::gcra`]): one GCRA step of
//! `portcullis_core::ratelimit` on one counter, applied atomically by every backend.
//!
//! A counter's whole state is its theoretical arrival time in microseconds
//! ([`GcraState::tat_us`]); an absent counter is a full bucket. `apply` is the one
//! place that maps a [`RateLimitOp`] onto the core arithmetic; the memory and embedded
//! backends call it under their lock or write transaction, and the Redis script
//! (`redis/scripts.rs`, `GCRA`) mirrors it line by line.
//!
//! # Exactness in Lua
//!
//! Lua numbers are doubles, exact for integers up to 2⁵³. Microseconds since the epoch
//! stay below that until the year 2255, so every backend refuses (with
//! [`StoreError::InvalidArgument`], identically) a `now_ms` above [`MAX_NOW_MS`] and a
//! `limit` above [`MAX_LIMIT`]. With both bounds every value the script computes (a TAT,
//! `now + 2·limit·T`, a remaining count) is an integer below 2⁵³, so the script's
//! arithmetic is the same integer arithmetic as the core's.

use portcullis_core::ratelimit::{Gcra, GcraState, Unit};
use portcullis_core::wire::{RateLimitOp, RateLimitResult};

use super::StoreError;

/// The largest `limit` a counter accepts (10¹²: beyond any real limit, far below the
/// point where `limit·T` could stop being exact in Lua).
pub const MAX_LIMIT: u64 = 1_000_000_000_000;

/// The latest `now_ms` a counter accepts: 9·10¹² ms, in the year 2255. Above it,
/// `now` in microseconds plus two bursts could exceed 2⁵³.
pub const MAX_NOW_MS: u64 = 9_000_000_000_000;

/// The largest integer a double holds exactly, and the clamp for values passed to Lua
/// that only need to be "at least this big" (credits of huge refunds).
pub(crate) const MAX_EXACT: u64 = (1 << 53) - 1;

/// How long a counter is kept after its bucket is full again (TAT ≤ now), then
/// dropped, so idle counters vanish. A full bucket and an absent counter are the same
/// state for every caller whose clock is not behind the writer's by more than this;
/// keeping the TAT that long makes the backends agree exactly with the core under
/// that much clock skew between replicas (and Redis' own clock, which runs `PX`).
pub const FORGET_AFTER_FULL_MS: u64 = 1_000;

/// Refuses what the backends cannot compute exactly: a zero or huge limit, or a clock
/// past [`MAX_NOW_MS`]. Every backend calls this first, so they fail alike.
pub(crate) fn check_arguments(limit: u64, now_ms: u64) -> Result<(), StoreError> {
    if limit == 0 || limit > MAX_LIMIT {
        return Err(StoreError::InvalidArgument(format!(
            "a rate limit must be between 1 and {MAX_LIMIT}, got {limit}"
        )));
    }
    if now_ms > MAX_NOW_MS {
        return Err(StoreError::InvalidArgument(format!(
            "now_ms {now_ms} is past the last instant rate-limit counters support ({MAX_NOW_MS})"
        )));
    }
    Ok(())
}

/// Applies `op` to a counter in `state` at `now_ms` exactly as the core defines it:
///
/// - `lease`: when `release > 0`, [`Gcra::refund`] those units first; then
///   [`Gcra::grant_lease`]. `granted` is the lease size (0: refused) and
///   `expires_at_ms` its expiry (0 when refused).
/// - `check`: [`Gcra::check`] of `cost`; `granted` is `cost` when allowed, else 0.
/// - `release`: [`Gcra::refund`] of `units`; `granted` is 0, `remaining` and
///   `reset_after_ms` describe the counter afterwards.
///
/// Returns the state to store and the answer.
pub(crate) fn apply(
    limit: u64,
    unit: Unit,
    op: RateLimitOp,
    state: GcraState,
    now_ms: u64,
) -> (GcraState, RateLimitResult) {
    let gcra = Gcra::new(limit, unit);
    match op {
        RateLimitOp::Lease { release, max_lease, holders, ttl_ms } => {
            let state = if release > 0 { gcra.refund(state, now_ms, release) } else { state };
            let grant = gcra.grant_lease(state, now_ms, max_lease, holders, ttl_ms);
            let d = grant.decision;
            let result = RateLimitResult {
                granted: grant.lease.map_or(0, |l| l.units),
                expires_at_ms: grant.lease.map_or(0, |l| l.expires_at_ms),
                remaining: d.remaining,
                reset_after_ms: d.reset_after_ms,
                retry_after_ms: d.retry_after_ms,
            };
            (d.new_state, result)
        }
        RateLimitOp::Check { cost } => {
            let d = gcra.check(state, now_ms, cost);
            let result = RateLimitResult {
                granted: if d.allowed { cost } else { 0 },
                expires_at_ms: 0,
                remaining: d.remaining,
                reset_after_ms: d.reset_after_ms,
                retry_after_ms: d.retry_after_ms,
            };
            (d.new_state, result)
        }
        RateLimitOp::Release { units } => {
            let state = gcra.refund(state, now_ms, units);
            let d = gcra.check(state, now_ms, 0);
            let result = RateLimitResult {
                granted: 0,
                expires_at_ms: 0,
                remaining: d.remaining,
                reset_after_ms: d.reset_after_ms,
                retry_after_ms: 0,
            };
            (state, result)
        }
    }
}

/// Whether a counter in `state` can be dropped at `now_ms`: its bucket has been full
/// for [`FORGET_AFTER_FULL_MS`]. Backends delete it instead of storing it (Redis: the
/// key expires then).
pub(crate) fn is_forgettable(state: GcraState, now_ms: u64) -> bool {
    state.tat_us.saturating_add(FORGET_AFTER_FULL_MS * 1_000) <= now_ms.saturating_mul(1_000)
}

/// The emission interval `T` in µs, exactly as [`Gcra::new`] computes it.
pub(crate) fn interval_us(limit: u64, unit: Unit) -> u64 {
    let period_us = unit.period_ms().saturating_mul(1_000);
    if limit == 0 {
        0
    } else {
        period_us.div_ceil(limit).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_with_a_release_refunds_before_granting() {
        let now = 1_000;
        let (state, first) = apply(
            10,
            Unit::Minute,
            RateLimitOp::Lease { release: 0, max_lease: 10, holders: 1, ttl_ms: 5_000 },
            GcraState::default(),
            now,
        );
        assert_eq!(first.granted, 5);
        assert_eq!(first.expires_at_ms, 6_000);
        assert_eq!(first.remaining, 5);
        // Giving 5 back and asking again sees a full bucket.
        let (_, second) = apply(
            10,
            Unit::Minute,
            RateLimitOp::Lease { release: 5, max_lease: 10, holders: 1, ttl_ms: 5_000 },
            state,
            now,
        );
        assert_eq!(second.granted, 5);
        assert_eq!(second.remaining, 5);
    }

    #[test]
    fn refused_checks_keep_the_state_and_a_cost_above_the_limit_never_passes() {
        let (state, _) = apply(1, Unit::Second, RateLimitOp::Check { cost: 1 }, GcraState::default(), 0);
        let (after, refused) = apply(1, Unit::Second, RateLimitOp::Check { cost: 1 }, state, 0);
        assert_eq!(after, state);
        assert_eq!((refused.granted, refused.retry_after_ms), (0, 1_000));
        let (_, never) = apply(1, Unit::Second, RateLimitOp::Check { cost: 2 }, GcraState::default(), 0);
        assert_eq!(never.retry_after_ms, u64::MAX);
    }

    #[test]
    fn arguments_outside_the_exact_range_are_refused() {
        assert!(check_arguments(0, 0).is_err());
        assert!(check_arguments(MAX_LIMIT + 1, 0).is_err());
        assert!(check_arguments(MAX_LIMIT, MAX_NOW_MS).is_ok());
        assert!(check_arguments(1, MAX_NOW_MS + 1).is_err());
        // The largest values the script can meet stay exact.
        let burst = interval_us(MAX_LIMIT, Unit::Day) * MAX_LIMIT;
        assert!(MAX_NOW_MS * 1_000 + 4 * burst <= MAX_EXACT);
        let burst = interval_us(1, Unit::Day);
        assert!(MAX_NOW_MS * 1_000 + 4 * burst <= MAX_EXACT);
    }

    #[test]
    fn interval_matches_the_core() {
        for (limit, unit) in
            [(7, Unit::Minute), (5_000, Unit::Second), (1, Unit::Day), (MAX_LIMIT, Unit::Second)]
        {
            let g = Gcra::new(limit, unit);
            let d = g.check(GcraState::default(), 0, 1);
            assert_eq!(d.new_state.tat_us, interval_us(limit, unit), "{limit} per {unit:?}");
        }
    }
}
