//! Rate-limit arithmetic shared by the control plane (which owns the counters) and the
//! filter (which spends leased quota locally and writes the response headers).
//!
//! # The limiter: GCRA
//!
//! A limit of `limit` per `unit` is enforced with the generic cell rate algorithm: one
//! unit is worth an emission interval `T = period / limit`, and the whole state is one
//! number, the theoretical arrival time (TAT) — the instant at which the bucket would
//! be full again. A request of `cost` units at `now` is admitted when
//! `max(TAT, now) + cost·T − now ≤ limit·T`, and then TAT becomes `max(TAT, now) +
//! cost·T`. A refused request leaves the state as it was, so clients hammering a
//! closed limit do not push their own recovery further away.
//!
//! It behaves as a token bucket of `limit` units refilled continuously at one unit per
//! `T`; there are no fixed windows. Exactly, for 10 per minute (`T` = 6 s):
//!
//! - 10 requests back to back at `t` all pass; the 11th at `t` is refused with
//!   `retry_after_ms` = 6 000, `remaining` = 0 and `reset_after_ms` = 60 000;
//! - one unit comes back every 6 s after that: one request passes at `t + 6 s`, a second
//!   one at `t + 6 s` is refused with `retry_after_ms` = 6 000 again;
//! - nothing happens at a minute (or any other clock) boundary: 10 requests at 00:59.9
//!   leave the 11th at 01:00.1 refused with `retry_after_ms` = 5 800. A fixed-window
//!   counter would have let 20 through in 0.2 s;
//! - after 60 s without traffic the bucket is full (10 again), and idle time beyond that
//!   is not saved up;
//! - it is *not* "at most `limit` in every sliding period": any interval of length `d`
//!   admits at most `limit + ⌊d / T⌋` units, so a full bucket followed by steady traffic
//!   passes up to `2·limit − 1` units within one period (10 at `t`, then 9 more at
//!   `t + 6 s … t + 54 s`). The long-run rate is `limit / period`.
//!
//! The state is kept in microseconds ([`GcraState::tat_us`]) so that limits above 1000
//! per second are exact: `T` is `period / limit` rounded *up* to a whole microsecond,
//! which never admits more than the limit (at most 1 µs per unit less). Limits finer than
//! one unit per microsecond (above 10⁶ per second) run at 10⁶ per second.
//!
//! A `cost` above `limit` can never pass (`retry_after_ms` = `u64::MAX`); a limit of 0
//! refuses everything. Configuration should reject both. A `cost` of 0 is a free look at
//! the state (always allowed, state unchanged).
//!
//! # Quota leases
//!
//! The filter does not ask the control plane per request: it takes a [`Lease`] of a
//! few units and spends it locally ([`LocalLease::try_spend`]). The control plane grants
//! a lease by admitting the lease's size as the cost of one GCRA request
//! ([`Gcra::grant_lease`]), atomically in its store. Hence:
//!
//! - **No over-admission while the store is reachable.** Every unit a filter spends was
//!   debited before it was handed out, so with `H` holders each holding unspent leases,
//!   `units admitted + units still leased ≤ what the limiter admitted` — at one instant,
//!   at most `limit`. Lease size does not affect this bound.
//! - **Lease size is about fairness, not safety.** [`lease_size`] grants
//!   `min(max_lease, remaining / (2·holders))`, at least 1 while anything remains: large
//!   far from the limit (few store round trips), 1 near it (little budget stranded in an
//!   idle holder). If all `H` holders size their lease from the same stale `remaining`,
//!   together they ask for at most half of it, so none of them is refused for asking too
//!   much.
//! - **Time.** Units are debited when the lease is granted but may be spent until it
//!   expires, so the per-interval bound above becomes: any interval `[a, b)` admits at
//!   most the units granted in `[a − ttl, b)`, i.e. `limit + ⌊(b − a + ttl) / T⌋`.
//! - **Returned leases.** A holder that no longer needs a live lease calls
//!   [`LocalLease::release`], which empties it and yields the unspent units; the control
//!   plane credits them back with [`Gcra::refund`] (moving TAT back by `units·T`, never
//!   below `now`). This is exact as long as each release is applied once.
//! - **Expired leases** release nothing: their unspent units are forfeited, which
//!   under-admits by at most one lease per holder per TTL and never over-admits. A
//!   holder that cannot reach the store therefore stops at the end of its lease; whether
//!   it then fails open (unbounded) or closed is the caller's policy, not this module's.
//!   `expires_at_ms` is compared with the holder's clock: clock skew shifts when a lease
//!   stops being spendable, never how many units it holds.
//!
//! # Response headers
//!
//! [`rate_limit_headers`] writes the `RateLimit-*` fields of the IETF httpapi draft in
//! their widely deployed form (`RateLimit-Limit`, `-Remaining`, `-Reset` in seconds,
//! `-Policy` as `10;w=60`); [`retry_after_secs`] gives the `Retry-After` of a refusal.

use serde::{Deserialize, Serialize};

const US_PER_MS: u64 = 1_000;

/// The period a limit is counted over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    Second,
    Minute,
    Hour,
    Day,
}

impl Unit {
    pub fn period_ms(self) -> u64 {
        match self {
            Unit::Second => 1_000,
            Unit::Minute => 60_000,
            Unit::Hour => 3_600_000,
            Unit::Day => 86_400_000,
        }
    }

    pub fn period_secs(self) -> u64 {
        self.period_ms() / 1_000
    }
}

/// A limiter of `limit` units per `unit`, with a burst of `limit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    limit: u64,
    unit: Unit,
    /// `T`: what one unit is worth, in microseconds (0 when `limit` is 0).
    interval_us: u64,
}

/// The stored state of one limited key: its theoretical arrival time. The default (0)
/// is a full bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GcraState {
    /// Microseconds since the epoch of the `now_ms` clock.
    pub tat_us: u64,
}

/// The answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcraDecision {
    pub allowed: bool,
    /// The state to store: advanced when allowed, the state passed in when refused.
    pub new_state: GcraState,
    /// Units that would pass right now after this decision.
    pub remaining: u64,
    /// Until the bucket is full again (`limit` remaining).
    pub reset_after_ms: u64,
    /// 0 when allowed; when refused, until `cost` units are available (`u64::MAX`:
    /// never, the cost exceeds the limit).
    pub retry_after_ms: u64,
}

impl Gcra {
    pub fn new(limit: u64, unit: Unit) -> Self {
        let period_us = unit.period_ms().saturating_mul(US_PER_MS);
        let interval_us = if limit == 0 { 0 } else { period_us.div_ceil(limit).max(1) };
        Gcra { limit, unit, interval_us }
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    pub fn unit(&self) -> Unit {
        self.unit
    }

    /// The `RateLimit-Policy` value, e.g. `10;w=60`.
    pub fn policy(&self) -> String {
        format!("{};w={}", self.limit, self.unit.period_secs())
    }

    /// `limit · T`: how far ahead of `now` the TAT may run.
    fn burst_us(&self) -> u64 {
        self.interval_us.saturating_mul(self.limit)
    }

    /// Decides a request of `cost` units at `now_ms`.
    pub fn check(&self, state: GcraState, now_ms: u64, cost: u64) -> GcraDecision {
        let now = now_ms.saturating_mul(US_PER_MS);
        let tat = state.tat_us.max(now);
        if cost > self.limit {
            return self.decision(false, state, tat, now, u64::MAX);
        }
        let new_tat = tat.saturating_add(self.interval_us.saturating_mul(cost));
        let allow_at = new_tat.saturating_sub(self.burst_us());
        if cost == 0 || now >= allow_at {
            self.decision(true, GcraState { tat_us: new_tat }, new_tat, now, 0)
        } else {
            self.decision(false, state, tat, now, ceil_ms(allow_at.saturating_sub(now)))
        }
    }

    fn decision(&self, allowed: bool, new_state: GcraState, tat: u64, now: u64, retry: u64) -> GcraDecision {
        let debt = tat.saturating_sub(now);
        let free = self.burst_us().saturating_sub(debt);
        GcraDecision {
            allowed,
            new_state,
            remaining: free.checked_div(self.interval_us).unwrap_or(0),
            reset_after_ms: ceil_ms(debt),
            retry_after_ms: retry,
        }
    }

    /// Credits back `units` that were debited but will never be spent (a released
    /// lease). The bucket never fills beyond `limit`.
    pub fn refund(&self, state: GcraState, now_ms: u64, units: u64) -> GcraState {
        let now = now_ms.saturating_mul(US_PER_MS);
        let credit = self.interval_us.saturating_mul(units);
        GcraState { tat_us: state.tat_us.saturating_sub(credit).max(now) }
    }

    /// Grants a lease sized by [`lease_size`] from what remains now, debiting it. With
    /// nothing left, no lease and a refusal saying when one unit will be available.
    pub fn grant_lease(
        &self,
        state: GcraState,
        now_ms: u64,
        max_lease: u64,
        holders: u64,
        ttl_ms: u64,
    ) -> LeaseGrant {
        let remaining = self.check(state, now_ms, 0).remaining;
        let units = lease_size(self.limit, remaining, max_lease, holders);
        let decision = self.check(state, now_ms, units.max(1));
        let lease = (decision.allowed && units > 0)
            .then(|| Lease { units, expires_at_ms: now_ms.saturating_add(ttl_ms) });
        LeaseGrant { decision, lease }
    }
}

/// Milliseconds, rounded up, so that waiting that long is always enough.
fn ceil_ms(us: u64) -> u64 {
    us.div_ceil(US_PER_MS)
}

/// The outcome of [`Gcra::grant_lease`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseGrant {
    /// The debit of the lease (store `decision.new_state`), or the refusal.
    pub decision: GcraDecision,
    pub lease: Option<Lease>,
}

/// Units handed to one holder, already debited from the limiter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Lease {
    pub units: u64,
    pub expires_at_ms: u64,
}

/// How many units to lease to one of `holders` holders when `remaining` of `limit` are
/// left: `min(max_lease, remaining / (2·holders))`, at least 1 while `remaining ≥ 1`,
/// 0 when nothing is left. Never more than `remaining` (taken as at most `limit`).
/// `holders` of 0 counts as 1; `max_lease` of 0 as 1.
pub fn lease_size(limit: u64, remaining: u64, max_lease: u64, holders: u64) -> u64 {
    let remaining = remaining.min(limit);
    if remaining == 0 {
        return 0;
    }
    let share = remaining.checked_div(holders.max(1).saturating_mul(2)).unwrap_or(0);
    share.min(max_lease).max(1)
}

/// A holder's lease being spent (the filter keeps it in shared data).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LocalLease {
    /// Units not yet spent.
    pub units: u64,
    pub expires_at_ms: u64,
}

/// Encoded size of [`LocalLease`].
pub const LOCAL_LEASE_ENCODED_LEN: usize = 16;

impl From<Lease> for LocalLease {
    fn from(lease: Lease) -> Self {
        LocalLease { units: lease.units, expires_at_ms: lease.expires_at_ms }
    }
}

impl LocalLease {
    pub fn is_expired(&self, now_ms: u64) -> bool {
        now_ms >= self.expires_at_ms
    }

    /// Spends `cost` units if the lease is live and holds them all; otherwise spends
    /// nothing and returns false (ask the control plane for a new lease).
    pub fn try_spend(&mut self, cost: u64, now_ms: u64) -> bool {
        if self.is_expired(now_ms) || cost > self.units {
            return false;
        }
        self.units = self.units.saturating_sub(cost);
        true
    }

    /// Empties the lease and returns the units to credit back with [`Gcra::refund`]:
    /// the unspent units of a live lease, 0 for an expired one (forfeited).
    pub fn release(&mut self, now_ms: u64) -> u64 {
        let units = if self.is_expired(now_ms) { 0 } else { self.units };
        self.units = 0;
        units
    }

    pub fn encode(&self) -> [u8; LOCAL_LEASE_ENCODED_LEN] {
        let mut out = [0u8; LOCAL_LEASE_ENCODED_LEN];
        for (chunk, v) in out.chunks_exact_mut(8).zip([self.units, self.expires_at_ms]) {
            chunk.copy_from_slice(&v.to_be_bytes());
        }
        out
    }

    /// Decodes; anything malformed reads as an empty lease.
    pub fn decode(bytes: &[u8]) -> Self {
        let u64_at = |i: usize| -> Option<u64> {
            let b: [u8; 8] = bytes.get(i..i.checked_add(8)?)?.try_into().ok()?;
            Some(u64::from_be_bytes(b))
        };
        match (u64_at(0), u64_at(8), bytes.len() == LOCAL_LEASE_ENCODED_LEN) {
            (Some(units), Some(expires_at_ms), true) => LocalLease { units, expires_at_ms },
            _ => LocalLease::default(),
        }
    }
}

/// The `RateLimit-*` response headers (lowercase names). `reset_secs` is the time until
/// the quota is full again (`ceil(reset_after_ms / 1000)`). `policy` is left out when it
/// is empty or holds anything but visible ASCII and spaces, so it cannot break the
/// header block.
pub fn rate_limit_headers(
    limit: u64,
    remaining: u64,
    reset_secs: u64,
    policy: &str,
) -> Vec<(String, String)> {
    let mut headers = vec![
        ("ratelimit-limit".to_string(), limit.to_string()),
        ("ratelimit-remaining".to_string(), remaining.min(limit).to_string()),
        ("ratelimit-reset".to_string(), reset_secs.to_string()),
    ];
    if !policy.is_empty() && policy.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
        headers.push(("ratelimit-policy".to_string(), policy.to_string()));
    }
    headers
}

/// `Retry-After` seconds for a refusal: rounded up, at least 1.
pub fn retry_after_secs(retry_after_ms: u64) -> u64 {
    retry_after_ms.div_ceil(1_000).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const MIN: u64 = 60_000;

    /// Runs `n` unit requests at `now_ms`, returning the state and the last decision.
    fn burst(g: &Gcra, mut state: GcraState, now_ms: u64, n: u64) -> (GcraState, Vec<GcraDecision>) {
        let mut out = Vec::new();
        for _ in 0..n {
            let d = g.check(state, now_ms, 1);
            state = d.new_state;
            out.push(d);
        }
        (state, out)
    }

    #[test]
    fn units_serialize_in_lowercase_and_know_their_period() {
        assert_eq!(serde_json::to_string(&Unit::Minute).unwrap(), "\"minute\"");
        assert_eq!(serde_json::from_str::<Unit>("\"day\"").unwrap(), Unit::Day);
        assert!(serde_json::from_str::<Unit>("\"Minute\"").is_err());
        let periods: Vec<u64> =
            [Unit::Second, Unit::Minute, Unit::Hour, Unit::Day].map(Unit::period_ms).into();
        assert_eq!(periods, [1_000, 60_000, 3_600_000, 86_400_000]);
    }

    #[test]
    fn ten_per_minute_passes_ten_back_to_back_and_refuses_the_eleventh_for_six_seconds() {
        let g = Gcra::new(10, Unit::Minute);
        let t = 1_000_000;
        let (state, ds) = burst(&g, GcraState::default(), t, 10);
        assert!(ds.iter().all(|d| d.allowed && d.retry_after_ms == 0));
        let remaining: Vec<u64> = ds.iter().map(|d| d.remaining).collect();
        assert_eq!(remaining, [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]);
        assert_eq!(ds[0].reset_after_ms, 6_000);
        assert_eq!(ds[9].reset_after_ms, 60_000);

        let eleventh = g.check(state, t, 1);
        assert!(!eleventh.allowed);
        assert_eq!(eleventh.retry_after_ms, 6_000);
        assert_eq!(eleventh.remaining, 0);
        assert_eq!(eleventh.reset_after_ms, 60_000);
        assert_eq!(eleventh.new_state, state, "a refusal does not change the state");
    }

    #[test]
    fn one_unit_comes_back_every_emission_interval() {
        let g = Gcra::new(10, Unit::Minute);
        let (state, _) = burst(&g, GcraState::default(), 0, 10);
        assert_eq!(g.check(state, 5_999, 1).retry_after_ms, 1);
        let d = g.check(state, 6_000, 1);
        assert!(d.allowed);
        assert_eq!(d.remaining, 0);
        let again = g.check(d.new_state, 6_000, 1);
        assert!(!again.allowed);
        assert_eq!(again.retry_after_ms, 6_000);
        // Two intervals later, two units.
        assert_eq!(g.check(d.new_state, 18_000, 0).remaining, 2);
    }

    #[test]
    fn there_is_no_reset_at_a_minute_boundary() {
        let g = Gcra::new(10, Unit::Minute);
        let (state, _) = burst(&g, GcraState::default(), 59_900, 10);
        let d = g.check(state, 60_100, 1);
        assert!(!d.allowed);
        assert_eq!(d.retry_after_ms, 5_800);
    }

    #[test]
    fn a_full_bucket_does_not_save_up_idle_time() {
        let g = Gcra::new(10, Unit::Minute);
        let (state, _) = burst(&g, GcraState::default(), 0, 10);
        assert_eq!(g.check(state, MIN, 0).remaining, 10);
        let (_, ds) = burst(&g, state, 10 * MIN, 11);
        assert_eq!(ds.iter().filter(|d| d.allowed).count(), 10);
    }

    #[test]
    fn a_full_bucket_then_steady_traffic_passes_at_most_twice_the_limit_less_one_per_period() {
        let g = Gcra::new(10, Unit::Minute);
        let mut state = GcraState::default();
        let mut admitted = 0;
        // Offer one request every 100 ms through [0, 60 s).
        for now in (0..MIN).step_by(100) {
            let d = g.check(state, now, 1);
            if d.allowed {
                admitted += 1;
                state = d.new_state;
            }
        }
        assert_eq!(admitted, 19);
    }

    #[test]
    fn a_request_costing_several_units_waits_until_all_of_them_are_back() {
        let g = Gcra::new(10, Unit::Minute);
        let (state, _) = burst(&g, GcraState::default(), 0, 8);
        let d = g.check(state, 0, 3);
        assert!(!d.allowed);
        assert_eq!(d.remaining, 2);
        assert_eq!(d.retry_after_ms, 6_000);
        assert!(g.check(state, 6_000, 3).allowed);
    }

    #[test]
    fn a_cost_above_the_limit_never_passes_and_a_zero_limit_refuses_everything() {
        let g = Gcra::new(10, Unit::Minute);
        let d = g.check(GcraState::default(), 0, 11);
        assert!(!d.allowed);
        assert_eq!(d.retry_after_ms, u64::MAX);
        assert_eq!(d.remaining, 10);

        let zero = Gcra::new(0, Unit::Second);
        let d = zero.check(GcraState::default(), 0, 1);
        assert!(!d.allowed);
        assert_eq!(d.remaining, 0);
        assert_eq!(d.retry_after_ms, u64::MAX);
    }

    #[test]
    fn limits_above_a_thousand_per_second_are_exact() {
        let g = Gcra::new(5_000, Unit::Second);
        let (state, ds) = burst(&g, GcraState::default(), 0, 5_001);
        assert_eq!(ds.iter().filter(|d| d.allowed).count(), 5_000);
        assert_eq!(ds[5_000].retry_after_ms, 1, "0.2 ms, rounded up");
        assert_eq!(g.check(state, 1_000, 0).remaining, 5_000);
    }

    #[test]
    fn uneven_intervals_round_towards_admitting_less() {
        // 7 per minute: T = 8571.43 ms, rounded up to 8571.429 ms.
        let g = Gcra::new(7, Unit::Minute);
        let (state, ds) = burst(&g, GcraState::default(), 0, 8);
        assert_eq!(ds.iter().filter(|d| d.allowed).count(), 7);
        assert_eq!(ds[7].retry_after_ms, 8_572);
        assert!(!g.check(state, 8_571, 1).allowed);
        assert!(g.check(state, 8_572, 1).allowed);
    }

    #[test]
    fn extreme_inputs_saturate_instead_of_overflowing() {
        for limit in [0, 1, u64::MAX] {
            for unit in [Unit::Second, Unit::Day] {
                let g = Gcra::new(limit, unit);
                for tat in [0, u64::MAX] {
                    for now in [0, u64::MAX] {
                        for cost in [0, 1, u64::MAX] {
                            let d = g.check(GcraState { tat_us: tat }, now, cost);
                            assert!(d.remaining <= limit);
                            let _ = g.refund(GcraState { tat_us: tat }, now, cost);
                            let _ = g.grant_lease(GcraState { tat_us: tat }, now, cost, cost, now);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn lease_size_is_large_far_from_the_limit_and_shrinks_to_one_near_it() {
        assert_eq!(lease_size(1_000, 1_000, 50, 4), 50);
        assert_eq!(lease_size(1_000, 80, 50, 4), 10);
        assert_eq!(lease_size(1_000, 7, 50, 4), 1);
        assert_eq!(lease_size(1_000, 1, 50, 4), 1);
        assert_eq!(lease_size(1_000, 0, 50, 4), 0);
        assert_eq!(lease_size(10, 1_000, 50, 0), 5, "remaining is at most the limit; 0 holders count as 1");
        assert_eq!(lease_size(10, 10, 0, 1), 1);
        assert_eq!(lease_size(0, 0, 50, 1), 0);
        assert_eq!(lease_size(u64::MAX, u64::MAX, u64::MAX, u64::MAX), 1);
    }

    #[test]
    fn leases_sized_from_the_same_stale_remaining_all_fit() {
        let g = Gcra::new(100, Unit::Minute);
        let (state, _) = burst(&g, GcraState::default(), 0, 37);
        let stale = g.check(state, 0, 0).remaining;
        let mut state = state;
        for _ in 0..4 {
            let d = g.check(state, 0, lease_size(100, stale, 50, 4));
            assert!(d.allowed);
            state = d.new_state;
        }
    }

    #[test]
    fn holders_spending_leases_never_admit_more_than_the_limit() {
        let g = Gcra::new(100, Unit::Minute);
        let mut state = GcraState::default();
        let mut leases = [LocalLease::default(); 4];
        let mut admitted = 0u64;
        let mut grants = 0;
        // Every holder wants far more than the limit; all at one instant.
        for round in 0..1_000 {
            let holder = &mut leases[round % 4];
            if holder.try_spend(1, 0) {
                admitted += 1;
                continue;
            }
            let grant = g.grant_lease(state, 0, 20, 4, 10_000);
            state = grant.decision.new_state;
            match grant.lease {
                Some(lease) => {
                    assert!(lease.units <= 20);
                    grants += 1;
                    *holder = lease.into();
                }
                None => assert!(grant.decision.retry_after_ms > 0),
            }
        }
        assert_eq!(admitted, 100, "the whole budget, and not one unit more");
        assert!(grants > 4, "leases shrink near the limit, so more of them are granted");
        assert_eq!(g.check(state, 0, 0).remaining, 0);
    }

    #[test]
    fn released_units_are_credited_back_and_expired_ones_are_forfeited() {
        let g = Gcra::new(10, Unit::Minute);
        let grant = g.grant_lease(GcraState::default(), 0, 4, 1, 5_000);
        let state = grant.decision.new_state;
        let mut lease = LocalLease::from(grant.lease.unwrap());
        assert_eq!(lease.units, 4);
        assert!(lease.try_spend(1, 100));
        assert_eq!(g.check(state, 100, 0).remaining, 6);

        let mut live = lease;
        let units = live.release(100);
        assert_eq!(units, 3);
        assert!(!live.try_spend(1, 100), "a released lease is empty");
        let refunded = g.refund(state, 100, units);
        assert_eq!(g.check(refunded, 100, 0).remaining, 9);

        assert_eq!(lease.release(5_000), 0, "expired: nothing to give back");
        // The bucket never fills beyond the limit.
        assert_eq!(g.check(g.refund(refunded, 100, 1_000), 100, 0).remaining, 10);
    }

    #[test]
    fn a_local_lease_spends_only_whole_costs_before_it_expires() {
        let mut lease = LocalLease { units: 3, expires_at_ms: 1_000 };
        assert!(!lease.try_spend(4, 0));
        assert_eq!(lease.units, 3, "a failed spend takes nothing");
        assert!(lease.try_spend(2, 0));
        assert!(!lease.try_spend(1, 1_000), "expired");
        assert!(lease.try_spend(1, 999));
        assert!(!lease.try_spend(1, 999));
    }

    #[test]
    fn nothing_left_means_no_lease_and_a_retry_time() {
        let g = Gcra::new(10, Unit::Minute);
        let (state, _) = burst(&g, GcraState::default(), 0, 10);
        let grant = g.grant_lease(state, 1_000, 5, 2, 10_000);
        assert_eq!(grant.lease, None);
        assert!(!grant.decision.allowed);
        assert_eq!(grant.decision.new_state, state);
        assert_eq!(grant.decision.retry_after_ms, 5_000);
    }

    #[test]
    fn local_lease_encoding_round_trips_and_garbage_decodes_to_empty() {
        let lease = LocalLease { units: 7, expires_at_ms: u64::MAX };
        assert_eq!(LocalLease::decode(&lease.encode()), lease);
        assert_eq!(LocalLease::decode(b"short"), LocalLease::default());
        assert_eq!(LocalLease::decode(&[0xff; 17]), LocalLease::default());
    }

    #[test]
    fn headers_follow_the_ratelimit_draft() {
        let g = Gcra::new(10, Unit::Minute);
        assert_eq!(g.policy(), "10;w=60");
        let d = g.check(GcraState::default(), 0, 1);
        let headers =
            rate_limit_headers(g.limit(), d.remaining, d.reset_after_ms.div_ceil(1_000), &g.policy());
        let expected = [
            ("ratelimit-limit", "10"),
            ("ratelimit-remaining", "9"),
            ("ratelimit-reset", "6"),
            ("ratelimit-policy", "10;w=60"),
        ];
        let expected: Vec<(String, String)> =
            expected.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert_eq!(headers, expected);
    }

    #[test]
    fn a_policy_that_could_break_the_header_block_is_left_out() {
        for policy in ["", "10;w=60\r\nx-injected: 1", "10;w=60\0"] {
            let headers = rate_limit_headers(10, 0, 60, policy);
            assert!(headers.iter().all(|(k, _)| k != "ratelimit-policy"), "{policy:?}");
        }
        let headers = rate_limit_headers(10, 99, 60, "10;w=60");
        assert_eq!(headers[1].1, "10", "remaining never exceeds the limit");
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds_and_is_at_least_one() {
        assert_eq!(retry_after_secs(6_000), 6);
        assert_eq!(retry_after_secs(5_800), 6);
        assert_eq!(retry_after_secs(6_001), 7);
        assert_eq!(retry_after_secs(1), 1);
        assert_eq!(retry_after_secs(0), 1);
        assert_eq!(retry_after_secs(u64::MAX), u64::MAX.div_ceil(1_000));
    }

    #[cfg(not(target_arch = "wasm32"))]
    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            /// Any run of requests, however spaced, admits at most `limit + ⌊d / T⌋`
            /// units over the `d` milliseconds it spans.
            #[test]
            fn admitted_units_never_exceed_the_burst_plus_the_refill(
                limit in 1u64..200,
                steps in proptest::collection::vec((0u64..5_000, 0u64..5), 1..200),
            ) {
                let g = Gcra::new(limit, Unit::Minute);
                let interval_us = Unit::Minute.period_ms() * 1_000 / limit;
                let start = 1_000_000u64;
                let (mut now, mut state, mut admitted) = (start, GcraState::default(), 0u64);
                for (dt, cost) in steps {
                    now += dt;
                    let d = g.check(state, now, cost);
                    if d.allowed {
                        admitted += cost;
                        state = d.new_state;
                    } else {
                        prop_assert_eq!(d.new_state, state);
                        prop_assert!(d.retry_after_ms > 0);
                        if cost <= limit {
                            // Waiting as told is enough.
                            prop_assert!(g.check(state, now + d.retry_after_ms, cost).allowed);
                        }
                    }
                }
                prop_assert!(admitted <= limit + (now - start) * 1_000 / interval_us);
            }
        }
    }
}
