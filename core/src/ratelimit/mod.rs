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
//! few units and spends it locally ([`LeaseSlot::spend`]). The control plane grants
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
//! - **Returned leases.** A holder that no longer needs a live lease empties its slot and
//!   gives back the unspent units ([`LeaseSlot::live_units`]); the control
//!   plane credits them back with [`Gcra::refund`] (moving TAT back by `units·T`, never
//!   below `now`). This is exact as long as each release is applied once. A holder
//!   still spending renews instead: it asks for a new lease before the old one expires,
//!   and when the new lease replaces the old one it releases the old one's unspent
//!   units, so no unit outlives the TTL of the lease it came with.
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
//!
//! # Where things are
//!
//! - [`gcra`]: the limiter and lease sizing (shared with the control plane);
//! - [`config`]: the `rateLimits` section and its compiled form, [`RateLimit`];
//! - [`descriptor`]: which counter a request touches ([`AppliedLimit`]);
//! - [`lease_slot`]: the lease a holder spends, as kept in Envoy shared data;
//! - [`wire`]: the calls' bodies and the key a counter is stored under.

pub mod config;
pub mod descriptor;
pub mod gcra;
pub mod lease_slot;
pub mod wire;

pub(crate) use config::compile_limits;
pub use config::{HeaderMode, LimitMode, Override, OverrideConfig, RateLimit, RateLimitConfig, MAX_LIMITS};
pub use descriptor::{AppliedLimit, Descriptor, LimitContext, MAX_DESCRIPTOR_VALUE};
pub use gcra::{lease_size, Gcra, GcraDecision, GcraState, Lease, LeaseGrant, Unit};
pub use lease_slot::{LeaseSlot, LocalSlice, SliceTake, SlotSpend, MAX_SLICE};

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
}
