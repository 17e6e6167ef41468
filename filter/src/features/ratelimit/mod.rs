//! Rate limits in the filter: quota leased from the control plane is kept in Envoy
//! shared data (one slot per counter, spent by every worker with compare-and-swap);
//! each worker moves a slice of a slot into its own memory when it spends from it, so
//! most requests spend without a host call (`LocalSlice`: the units were taken from
//! the slot, so none is spent twice). `mode: strict` limits and empty slots ask the
//! control plane. Requests on one counter share the lease ask in flight. On the tick,
//! leases about to expire (slices first given back to their slots) are renewed when
//! the counter was spent from in the last half of the lease TTL (the new lease
//! replaces the old one, whose unspent units go back on the next tick), and otherwise
//! released; the asks of one tick go in batches, so many counters cost a few calls per
//! TTL instead of one each.

use std::cell::RefCell;
use std::collections::HashMap;

use portcullis_core::control_plane::FailureMode;
use portcullis_core::ratelimit::{
    rate_limit_headers, retry_after_secs, AppliedLimit, HeaderMode, LeaseSlot, LimitMode, LocalSlice,
    RateLimit, SliceTake,
};
use portcullis_core::response::Denial;
use portcullis_core::wire::{RateLimitOp, RateLimitReply, RateLimitResult};

use super::Env;
use crate::host::shared::{SharedCell, Swap};

mod tick;

/// Rounds of lease asks for one request (another worker may spend a fresh lease first).
pub const MAX_LEASE_ROUNDS: u8 = 4;
/// Most counters one worker remembers for releasing leases.
const MAX_KNOWN_SLOTS: usize = 10_000;

fn slot_key(counter: &str) -> String {
    format!("portcullis.v1.rl.{counter}")
}

/// The rate limits of one request and how far they got.
#[derive(Default)]
pub struct LimitsProgress {
    pub limits: Vec<AppliedLimit>,
    /// Per limit: decided (spent, refused in shadow, or let through by failure mode).
    done: Vec<bool>,
    /// Strict answers, per limit.
    strict: Vec<Option<RateLimitResult>>,
    /// Headers of the most restrictive limit that passed (for `responseHeaders: always`).
    pub headers: Option<(u64, Vec<(String, String)>)>,
    pub lease_rounds: u8,
}

impl LimitsProgress {
    pub fn new(limits: Vec<AppliedLimit>) -> Self {
        let n = limits.len();
        LimitsProgress { limits, done: vec![false; n], strict: vec![None; n], headers: None, lease_rounds: 0 }
    }

    pub fn is_done(&self, i: usize) -> bool {
        self.done.get(i).copied().unwrap_or(true)
    }

    pub fn mark_done(&mut self, i: usize) {
        if let Some(d) = self.done.get_mut(i) {
            *d = true;
        }
    }

    pub fn strict_answer(&self, i: usize) -> Option<RateLimitResult> {
        self.strict.get(i).copied().flatten()
    }

    pub fn set_strict_answer(&mut self, i: usize, answer: RateLimitResult) {
        if let Some(s) = self.strict.get_mut(i) {
            *s = Some(answer);
        }
    }

    /// Keeps the headers of the most restrictive limit that passed.
    pub fn keep_headers(&mut self, limit: &RateLimit, headers: Option<(u64, Vec<(String, String)>)>) {
        if let Some((remaining, h)) = headers {
            if limit.response_headers == HeaderMode::Always
                && self.headers.as_ref().is_none_or(|(r, _)| remaining < *r)
            {
                self.headers = Some((remaining, h));
            }
        }
    }
}

/// How one limit came out for one request in this round.
pub enum LimitStep {
    /// Passed (with its headers when they are sent).
    Done(Option<(u64, Vec<(String, String)>)>),
    Deny(Denial),
    /// Ask the control plane.
    Ask(RateLimitOp),
    /// Wait for the lease ask in flight (its call token).
    Wait(u32),
    /// Lease asks ran out for this request: decide under the failure mode.
    Exhausted,
}

/// Per-worker rate-limit state.
#[derive(Default)]
pub struct RateLimitState {
    /// Counter key → the call asking for its lease.
    inflight: RefCell<HashMap<String, u32>>,
    /// Counters this worker leased from, for releasing unspent units.
    known: RefCell<HashMap<String, AppliedLimit>>,
    /// Counter key → the slice of its lease this worker spends from.
    slices: RefCell<HashMap<String, LocalSlice>>,
    /// Counter key → when this worker last spent a unit of it (ms): whether its lease is
    /// renewed or released on the tick.
    last_spent: RefCell<HashMap<String, u64>>,
    /// Unspent units of replaced leases (a renewed lease, a slice of an older lease), to
    /// give back on the next tick.
    leftovers: RefCell<Vec<(AppliedLimit, u64)>>,
    /// Metric names per (limit, outcome).
    metric_names: RefCell<HashMap<(usize, &'static str), String>>,
    /// Per request context: `RateLimit-*` headers for the response.
    response_headers: RefCell<HashMap<u32, Vec<(String, String)>>>,
}

impl RateLimitState {
    /// Keeps the `RateLimit-*` headers for the response of request `ctx`.
    pub fn response_headers(&self, ctx: u32, headers: Vec<(String, String)>) {
        self.response_headers.borrow_mut().insert(ctx, headers);
    }

    pub fn take_response_headers(&self, ctx: u32) -> Vec<(String, String)> {
        self.response_headers.try_borrow_mut().ok().and_then(|mut h| h.remove(&ctx)).unwrap_or_default()
    }
    /// `portcullis.ratelimit.<name>.<what>`, with the name built once per limit.
    pub fn count(&self, env: Env<'_>, index: usize, limit: &RateLimit, what: &'static str) {
        let key = (index, what);
        if let Some(name) = self.metric_names.borrow().get(&key) {
            env.metrics.count(name);
            return;
        }
        let name = format!("portcullis.ratelimit.{}.{what}", limit.name);
        env.metrics.count(&name);
        self.metric_names.borrow_mut().insert(key, name);
    }

    /// One limit of a request: its strict answer, its failure mode while the control
    /// plane is `unavailable`, or a unit spent from the shared lease.
    pub fn step(
        &self,
        env: Env<'_>,
        progress: &LimitsProgress,
        i: usize,
        applied: &AppliedLimit,
        limit: &RateLimit,
        unavailable: bool,
    ) -> LimitStep {
        let now = env.now_ms;
        if let Some(answer) = progress.strict_answer(i) {
            return if answer.granted > 0 {
                self.count(env, applied.index, limit, "allowed");
                LimitStep::Done(headers_if_wanted(limit, || {
                    let reset_at = now.saturating_add(answer.reset_after_ms);
                    (answer.remaining, limit_headers(applied, answer.remaining, reset_at, now))
                }))
            } else {
                LimitStep::Deny(rate_limited(
                    applied,
                    answer.retry_after_ms,
                    answer.remaining,
                    answer.reset_after_ms,
                    now,
                ))
            };
        }
        if unavailable {
            return self.failure_mode(env, applied, limit);
        }
        match limit.mode {
            LimitMode::PerRequest => LimitStep::Ask(RateLimitOp::Check { cost: 1 }),
            LimitMode::Lease => self.spend(env, progress, applied, limit),
        }
    }

    fn failure_mode(&self, env: Env<'_>, applied: &AppliedLimit, limit: &RateLimit) -> LimitStep {
        match limit.on_error {
            FailureMode::Allow => {
                self.count(env, applied.index, limit, "unavailable_allowed");
                LimitStep::Done(None)
            }
            FailureMode::Deny => {
                self.count(env, applied.index, limit, "unavailable_denied");
                LimitStep::Deny(Denial::RateLimitUnavailable)
            }
        }
    }

    /// Spends one unit of this worker's slice or of the shared lease (taking a new
    /// slice), or says what to do without one.
    fn spend(
        &self,
        env: Env<'_>,
        progress: &LimitsProgress,
        applied: &AppliedLimit,
        limit: &RateLimit,
    ) -> LimitStep {
        let now = env.now_ms;
        let from_slice =
            self.slices.borrow_mut().get_mut(&applied.key).and_then(|slice| {
                slice.spend(1, now).then(|| (slice.visible_remaining(now), slice.reset_at_ms))
            });
        if let Some((remaining, reset_at_ms)) = from_slice {
            self.spent(&applied.key, now);
            self.count(env, applied.index, limit, "allowed");
            return LimitStep::Done(headers_if_wanted(limit, || {
                (remaining, limit_headers(applied, remaining, reset_at_ms, now))
            }));
        }
        let key = slot_key(&applied.key);
        let room = self.slice_room(now);
        let take = SharedCell::new(env.host, &key).update(|data| {
            let slot = data.map(LeaseSlot::decode).unwrap_or_default();
            match slot.take_slice(1, now) {
                SliceTake::Taken { slot: next, slice } if room || slice.units == 0 => {
                    Swap::Write(next.encode(), (slot, SliceTake::Taken { slot: next, slice }))
                }
                SliceTake::Taken { .. } => {
                    // No room for another slice: spend the request's unit only.
                    let next = LeaseSlot { units: slot.units.saturating_sub(1), ..slot };
                    let slice = LocalSlice::default();
                    Swap::Write(next.encode(), (slot, SliceTake::Taken { slot: next, slice }))
                }
                other => Swap::Keep((slot, other)),
            }
        });
        match take {
            Some((_, SliceTake::Taken { slot: next, slice })) => {
                self.spent(&applied.key, now);
                self.count(env, applied.index, limit, "allowed");
                if slice.units > 0 {
                    self.slices.borrow_mut().insert(applied.key.clone(), slice);
                    self.remember(applied);
                }
                LimitStep::Done(headers_if_wanted(limit, || {
                    let remaining = next.visible_remaining(now).saturating_add(slice.units);
                    (remaining, limit_headers(applied, remaining, next.reset_at_ms, now))
                }))
            }
            Some((slot, SliceTake::Refused { retry_after_ms })) => LimitStep::Deny(rate_limited(
                applied,
                retry_after_ms,
                0,
                slot.reset_at_ms.saturating_sub(now),
                now,
            )),
            Some((_, SliceTake::NeedLease)) => {
                if let Some(token) = self.inflight.borrow().get(&applied.key).copied() {
                    return LimitStep::Wait(token);
                }
                if progress.lease_rounds >= MAX_LEASE_ROUNDS {
                    return LimitStep::Exhausted;
                }
                LimitStep::Ask(RateLimitOp::Lease {
                    release: 0,
                    max_lease: limit.max_lease,
                    holders: limit.expected_holders,
                    ttl_ms: limit.lease_ttl_ms,
                })
            }
            // Constant contention on the slot: let the control plane decide.
            None => LimitStep::Ask(RateLimitOp::Check { cost: 1 }),
        }
    }

    /// The lease asks of call `token` are in flight for these counters.
    pub fn asking(&self, keys: impl Iterator<Item = String>, token: u32) {
        let mut inflight = self.inflight.borrow_mut();
        for key in keys {
            inflight.insert(key, token);
        }
    }

    /// Call `token` ended (answered, or gone).
    pub fn call_ended(&self, token: u32) {
        self.inflight.borrow_mut().retain(|_, t| *t != token);
    }

    /// Stores the leases granted in `reply` for every worker; strict answers go to
    /// `strict` (ask index, result).
    pub fn apply_results(
        &self,
        env: Env<'_>,
        asks: &[(usize, AppliedLimit, bool)],
        reply: &RateLimitReply,
        mut strict: impl FnMut(usize, RateLimitResult),
    ) {
        for ((i, applied, is_strict), result) in asks.iter().zip(&reply.results) {
            if *is_strict {
                strict(*i, *result);
                continue;
            }
            self.merge_grant(env, applied, result);
        }
    }

    fn merge_grant(&self, env: Env<'_>, applied: &AppliedLimit, result: &RateLimitResult) {
        if result.granted > 0 {
            env.metrics.count("portcullis.ratelimit.lease_grants");
        }
        // Under constant contention the grant is lost here; its units come back to
        // the counter when the lease expires in the control plane.
        let key = slot_key(&applied.key);
        SharedCell::new(env.host, &key).update(|data| {
            let slot = data.map(LeaseSlot::decode).unwrap_or_default();
            Swap::Write(slot.granted(result, env.now_ms).encode(), ())
        });
        self.remember(applied);
    }

    fn spent(&self, key: &str, now_ms: u64) {
        let mut last = self.last_spent.borrow_mut();
        if let Some(t) = last.get_mut(key) {
            *t = now_ms;
            return;
        }
        if last.len() >= MAX_KNOWN_SLOTS {
            last.clear();
        }
        last.insert(key.to_string(), now_ms);
    }

    /// Remembers a counter this worker holds units of, to release them before they expire.
    fn remember(&self, applied: &AppliedLimit) {
        let mut known = self.known.borrow_mut();
        if known.contains_key(&applied.key) {
            return;
        }
        if known.len() >= MAX_KNOWN_SLOTS {
            known.clear();
        }
        known.insert(applied.key.clone(), applied.clone());
    }

    /// Whether this worker may keep one more slice: slices are bounded like the known
    /// counters; when full, the spent ones are forgotten first, and if none is, the
    /// request spends its unit from the shared slot without taking a slice.
    fn slice_room(&self, now_ms: u64) -> bool {
        let mut slices = self.slices.borrow_mut();
        if slices.len() < MAX_KNOWN_SLOTS {
            return true;
        }
        slices.retain(|_, s| s.live_units(now_ms) > 0);
        slices.len() < MAX_KNOWN_SLOTS
    }
}

pub fn rate_limited(
    applied: &AppliedLimit,
    retry_ms: u64,
    remaining: u64,
    reset_after_ms: u64,
    now: u64,
) -> Denial {
    Denial::RateLimited {
        retry_after_secs: retry_after_secs(retry_ms.min(86_400_000)),
        headers: limit_headers(applied, remaining, now.saturating_add(reset_after_ms), now),
    }
}

fn limit_headers(
    limit: &AppliedLimit,
    remaining: u64,
    reset_at_ms: u64,
    now_ms: u64,
) -> Vec<(String, String)> {
    let reset_secs = reset_at_ms.saturating_sub(now_ms).div_ceil(1000);
    rate_limit_headers(limit.limit, remaining, reset_secs, &limit.gcra().policy())
}

/// Builds the `RateLimit-*` headers of an allowed request only when they will be sent.
fn headers_if_wanted(
    limit: &RateLimit,
    build: impl FnOnce() -> (u64, Vec<(String, String)>),
) -> Option<(u64, Vec<(String, String)>)> {
    (limit.response_headers == HeaderMode::Always).then(build)
}
