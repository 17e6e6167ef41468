//! The generic cell rate algorithm and quota leases (see the [module docs](super) for
//! the guarantees): one limiter state per counter, shared by the control plane's stores
//! and its tests.

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

#[cfg(test)]
mod tests;
