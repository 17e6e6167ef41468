//! The stateful checks after authentication: rate limits (leased quota spent from
//! shared data, or one strict call per request), the lock check before a login attempt
//! and the outcome report after it, and per-address burst reports.
//!
//! A login attempt goes upstream only with a reservation from the control plane (the
//! lock check reserves one of the attempts each subject has left, atomically, so
//! parallel attempts cannot all pass the check), unless the route's `onError: allow`
//! lets it through while the control plane cannot answer. Every reservation is settled
//! by a report: the outcome once the upstream answered, or `abandoned` when the
//! attempt never went upstream (its answer came after the request was gone) or the
//! upstream gave no verdict. A report that never arrives lets the reservation expire
//! in the control plane, where it counts as a failure.
//!
//! Requests that wait for the control plane are kept here, per worker, keyed by their
//! context id, and calls are keyed by their token: whichever context receives a call's
//! answer hands it to [`GuardState::on_call_response`], which finishes every request
//! waiting for it on that request's own context. A request whose call never answers
//! (its receiving context went away) is finished by the tick once its deadline passes,
//! under its limits' failure modes.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use portcullis_core::authn::UpstreamEdits;
use portcullis_core::codec::{hex, read_u64s, write_u64s};
use portcullis_core::control_plane::{ControlPlane, FailureMode};
use portcullis_core::lockout::login_outcome;
use portcullis_core::ratelimit::{
    rate_limit_headers, retry_after_secs, AppliedLimit, HeaderMode, LeaseSlot, LimitMode, RateLimit,
    SlotSpend,
};
use portcullis_core::response::Denial;
use portcullis_core::wire::{
    BlockedIp, BurstEntry, BurstReply, BurstReport, LockoutCheck, LockoutReply, LockoutReport,
    LockoutSubject, LoginOutcome, RateLimitAsk, RateLimitBatch, RateLimitOp, RateLimitReply, RateLimitResult,
    BURST_REPORT_PATH, LOCKOUT_CHECK_PATH, LOCKOUT_REPORT_PATH, RATE_LIMIT_PATH,
};
use portcullis_core::RequestParts;
use sha2::{Digest, Sha256};

use crate::host::{self, Upstream};
use crate::http::{apply_edits, Next};
use crate::runtime::Runtime;

/// After a failed call, limits use their failure mode without calling for this long.
const CIRCUIT_OPEN_MS: u64 = 1_000;
/// Rounds of lease asks for one request (another worker may spend a fresh lease first).
const MAX_LEASE_ROUNDS: u8 = 4;
/// Most requests one worker holds waiting for the control plane.
const MAX_WAITERS: usize = 4096;
/// Most distinct addresses counted between two burst reports (more are not counted).
const MAX_BURST_ENTRIES: usize = 10_000;
/// Most counters one worker remembers for releasing leases.
const MAX_KNOWN_SLOTS: usize = 10_000;
/// How often the blocked-address list is re-read from shared data.
const BLOCKED_RECHECK_MS: u64 = 250;
/// How long a lock learned from the control plane is trusted without asking it again;
/// after that a locked attempt is checked again, so that an admin's clear reaches this
/// Envoy within this time (the local lock still answers if the control plane cannot).
const LOCAL_LOCK_TRUST_MS: u64 = 1_000;
/// How long past its deadline a lock check's answer is still awaited, to give back the
/// reservation it may bring (Envoy answers every call by its timeout, unless the
/// context that made it is gone).
const FORGET_UNANSWERED_MS: u64 = 10_000;
/// Largest control-plane answer read.
const MAX_REPLY_BYTES: usize = 256 * 1024;

const BLOCKED_KEY: &str = "portcullis.v1.burst.blocked";

fn slot_key(counter: &str) -> String {
    format!("portcullis.v1.rl.{counter}")
}

/// Shared-data key of a lockout subject's locally known lock: a hash, never the value.
fn lock_key(subject: &LockoutSubject) -> String {
    let mut h = Sha256::new();
    h.update(subject.kind.as_str().as_bytes());
    h.update([0u8]);
    let value = match subject.kind {
        portcullis_core::wire::SubjectKind::Account => subject.value.to_lowercase(),
        portcullis_core::wire::SubjectKind::Ip => subject.value.clone(),
    };
    h.update(value.as_bytes());
    let digest = h.finalize();
    format!("portcullis.v1.lock.{}", hex(digest.get(..16).unwrap_or_default()))
}

/// A login attempt on a lockout route.
#[derive(Debug, Clone)]
pub struct LoginAttempt {
    pub subjects: Vec<LockoutSubject>,
    /// The control plane reserved the attempt (or its failure mode let it through).
    checked: bool,
    /// The control plane's reservation, settled by the report.
    reservation: Option<String>,
}

impl LoginAttempt {
    pub fn new(subjects: Vec<LockoutSubject>) -> Self {
        LoginAttempt { subjects, checked: false, reservation: None }
    }
}

/// An authenticated request going through the stateful checks.
pub struct Pending {
    pub request: RequestParts,
    pub edits: UpstreamEdits,
    pub limits: Vec<AppliedLimit>,
    /// Per limit: decided (spent, refused in shadow, or let through by failure mode).
    done: Vec<bool>,
    /// Strict answers, per limit.
    strict: Vec<Option<RateLimitResult>>,
    /// Headers of the most restrictive limit that passed (for `responseHeaders: always`).
    headers: Option<(u64, Vec<(String, String)>)>,
    pub login: Option<LoginAttempt>,
    lease_rounds: u8,
    /// The control plane could not answer for this request: failure modes apply.
    unavailable: bool,
    deadline_ms: u64,
}

impl Pending {
    pub fn new(
        request: RequestParts,
        edits: UpstreamEdits,
        limits: Vec<AppliedLimit>,
        login: Option<LoginAttempt>,
    ) -> Self {
        let n = limits.len();
        Pending {
            request,
            edits,
            limits,
            done: vec![false; n],
            strict: vec![None; n],
            headers: None,
            login,
            lease_rounds: 0,
            unavailable: false,
            deadline_ms: 0,
        }
    }
}

enum CallKind {
    /// Lease and strict asks: `asks[i]` is limit `limit_of[i]` of the waiter `owner`
    /// (strict) or a shared lease (every waiter on the counter).
    Limits {
        owner: u32,
        asks: Vec<(usize, AppliedLimit, bool)>,
        waiters: Vec<u32>,
    },
    /// A lock check reserving `subjects` for the attempt of `owner`. Forgotten after
    /// `forget_at_ms` if its answer never comes (its receiving context went away).
    LockCheck {
        owner: u32,
        subjects: Vec<LockoutSubject>,
        forget_at_ms: u64,
    },
    LockReport {
        owner: u32,
    },
    /// A report settling a reservation nobody waits for.
    LockRelease,
    Release,
    Burst,
}

#[derive(Default)]
pub struct GuardState {
    calls: RefCell<HashMap<u32, CallKind>>,
    waiters: RefCell<HashMap<u32, Pending>>,
    /// Counter key → the call asking for its lease.
    inflight: RefCell<HashMap<String, u32>>,
    /// Counters this worker leased from, for releasing unspent units.
    known: RefCell<HashMap<String, AppliedLimit>>,
    circuit_open_until: Cell<u64>,
    /// Per request context: `RateLimit-*` headers for the response.
    response_headers: RefCell<HashMap<u32, Vec<(String, String)>>>,
    /// Per request context: a login attempt that reached the upstream.
    logins: RefCell<HashMap<u32, LoginAttempt>>,
    burst: RefCell<HashMap<String, BurstEntry>>,
    burst_call: Cell<Option<u32>>,
    last_burst_report_ms: Cell<u64>,
    release_call: Cell<Option<u32>>,
    blocked: RefCell<BlockedCache>,
    /// This VM's queue: requests that need a call are handed to the root context, which
    /// makes the call, so that its answer always has a live receiver (an answer goes to
    /// the context that was running when the call was made, and dies with it).
    pub queue: Cell<Option<u32>>,
    /// While the root context works through the queue: its id.
    root_dispatch: Cell<Option<u32>>,
    /// Metric names per (limit, outcome).
    metric_names: RefCell<HashMap<(usize, &'static str), String>>,
}

#[derive(Default)]
struct BlockedCache {
    cas: Option<u32>,
    checked_at_ms: u64,
    until: HashMap<String, u64>,
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

/// How one limit came out for one request in this round.
enum LimitStep {
    Done(Option<(u64, Vec<(String, String)>)>),
    Deny(Denial),
    Ask(RateLimitOp),
    Wait(u32),
}

impl Runtime {
    /// `portcullis.ratelimit.<name>.<what>`, with the name built once per limit.
    fn count_limit(&self, index: usize, limit: &RateLimit, what: &'static str) {
        let key = (index, what);
        if let Some(name) = self.guards.metric_names.borrow().get(&key) {
            self.metrics.count(name);
            return;
        }
        let name = format!("portcullis.ratelimit.{}.{what}", limit.name);
        self.metrics.count(&name);
        self.guards.metric_names.borrow_mut().insert(key, name);
    }

    fn rate_limit(&self, index: usize) -> Option<&RateLimit> {
        self.policy.stateful_checks.rate_limits.get(index)
    }

    /// Runs the stateful checks of an authenticated request on the current context.
    pub fn guard(&self, ctx: u32, mut pending: Pending) -> Next {
        let now = host::now_unix_ms();
        if pending.deadline_ms == 0 {
            let timeout = self.policy.control_plane.as_ref().map(|c| c.timeout_ms).unwrap_or(200);
            pending.deadline_ms = now.saturating_add(timeout.saturating_mul(2)).saturating_add(1_000);
        }
        // Rate limits.
        let mut asks: Vec<(usize, AppliedLimit, bool, RateLimitOp)> = Vec::new();
        let mut wait_on: Option<u32> = None;
        // Taken out while stepping through them, so each can be lent without a copy.
        let limits = std::mem::take(&mut pending.limits);
        for (i, applied) in limits.iter().enumerate() {
            if pending.done.get(i).copied().unwrap_or(true) {
                continue;
            }
            let Some(limit) = self.rate_limit(applied.index) else {
                mark(&mut pending.done, i);
                continue;
            };
            match self.limit_step(&mut pending, i, applied, limit, now) {
                LimitStep::Done(headers) => {
                    mark(&mut pending.done, i);
                    if let Some((remaining, h)) = headers {
                        if limit.response_headers == HeaderMode::Always
                            && pending.headers.as_ref().is_none_or(|(r, _)| remaining < *r)
                        {
                            pending.headers = Some((remaining, h));
                        }
                    }
                }
                LimitStep::Deny(denial) => {
                    if limit.shadow {
                        self.count_limit(applied.index, limit, "shadow_denied");
                        log::info!("rate limit `{}` (shadow) would deny", limit.name);
                        mark(&mut pending.done, i);
                        continue;
                    }
                    self.count_limit(applied.index, limit, "denied");
                    return self.reply(&denial);
                }
                LimitStep::Ask(op) => {
                    let strict = matches!(op, RateLimitOp::Check { .. });
                    asks.push((i, applied.clone(), strict, op));
                }
                LimitStep::Wait(token) => wait_on = Some(token),
            }
        }
        pending.limits = limits;
        if !asks.is_empty() {
            return self.ask_limits(ctx, pending, asks, now);
        }
        if let Some(token) = wait_on {
            return self.wait(ctx, pending, token);
        }

        // Lockout.
        if let Some(login) = pending.login.as_mut() {
            if !login.checked {
                let unavailable = pending.unavailable || now < self.guards.circuit_open_until.get();
                if let Some((retry_ms, fresh)) = self.locally_locked(&login.subjects, now) {
                    if fresh || unavailable {
                        self.metrics.count("portcullis.lockout.denied");
                        return self.reply(&Denial::LockedOut { retry_after_secs: retry_ms.div_ceil(1000) });
                    }
                }
                if unavailable {
                    login.checked = true;
                    if let Some(next) = self.lockout_unavailable() {
                        return next;
                    }
                } else if login.subjects.is_empty() {
                    login.checked = true;
                } else {
                    return self.ask_lockout(ctx, pending, now);
                }
            }
        }

        // Allowed.
        if let Some((_, headers)) = pending.headers.take() {
            self.guards.response_headers.borrow_mut().insert(ctx, headers);
        }
        if let Some(login) = pending.login.take() {
            self.guards.logins.borrow_mut().insert(ctx, login);
        }
        self.metrics.count("portcullis.requests.allowed");
        apply_edits(&pending.request, &pending.edits);
        Next::Continue
    }

    fn limit_step(
        &self,
        pending: &mut Pending,
        i: usize,
        applied: &AppliedLimit,
        limit: &RateLimit,
        now: u64,
    ) -> LimitStep {
        if let Some(answer) = pending.strict.get(i).copied().flatten() {
            return if answer.granted > 0 {
                self.count_limit(applied.index, limit, "allowed");
                LimitStep::Done(headers_if_wanted(limit, || {
                    (
                        answer.remaining,
                        limit_headers(
                            applied,
                            answer.remaining,
                            now.saturating_add(answer.reset_after_ms),
                            now,
                        ),
                    )
                }))
            } else {
                LimitStep::Deny(self.rate_limited(
                    applied,
                    answer.retry_after_ms,
                    answer.remaining,
                    answer.reset_after_ms,
                    now,
                ))
            };
        }
        if pending.unavailable || now < self.guards.circuit_open_until.get() {
            return match limit.on_error {
                FailureMode::Allow => {
                    self.count_limit(applied.index, limit, "unavailable_allowed");
                    LimitStep::Done(None)
                }
                FailureMode::Deny => {
                    self.count_limit(applied.index, limit, "unavailable_denied");
                    LimitStep::Deny(Denial::RateLimitUnavailable)
                }
            };
        }
        match limit.mode {
            LimitMode::PerRequest => LimitStep::Ask(RateLimitOp::Check { cost: 1 }),
            LimitMode::Lease => {
                let key = slot_key(&applied.key);
                for _ in 0..8 {
                    let (data, cas) = host::shared_data(&key);
                    let slot = data.map(|d| LeaseSlot::decode(&d)).unwrap_or_default();
                    match slot.spend(1, now) {
                        SlotSpend::Spent(next) => {
                            if host::set_shared_data(&key, &next.encode(), cas).is_err() {
                                continue;
                            }
                            self.count_limit(applied.index, limit, "allowed");
                            return LimitStep::Done(headers_if_wanted(limit, || {
                                let remaining = next.visible_remaining(now);
                                (remaining, limit_headers(applied, remaining, next.reset_at_ms, now))
                            }));
                        }
                        SlotSpend::Refused { retry_after_ms } => {
                            return LimitStep::Deny(self.rate_limited(
                                applied,
                                retry_after_ms,
                                0,
                                slot.reset_at_ms.saturating_sub(now),
                                now,
                            ));
                        }
                        SlotSpend::NeedLease => {
                            if let Some(token) = self.guards.inflight.borrow().get(&applied.key).copied() {
                                return LimitStep::Wait(token);
                            }
                            if pending.lease_rounds >= MAX_LEASE_ROUNDS {
                                pending.unavailable = true;
                                return self.limit_step(pending, i, applied, limit, now);
                            }
                            return LimitStep::Ask(RateLimitOp::Lease {
                                release: 0,
                                max_lease: limit.max_lease,
                                holders: limit.expected_holders,
                                ttl_ms: limit.lease_ttl_ms,
                            });
                        }
                    }
                }
                // Constant contention on the slot: let the control plane decide.
                LimitStep::Ask(RateLimitOp::Check { cost: 1 })
            }
        }
    }

    fn rate_limited(
        &self,
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

    /// Refuses the request on the current context.
    fn reply(&self, denial: &Denial) -> Next {
        crate::http::deny(self, "(guard)", false, denial, None)
    }

    fn store_waiter(&self, ctx: u32, pending: Pending) -> bool {
        let mut waiters = self.guards.waiters.borrow_mut();
        if waiters.len() >= MAX_WAITERS && !waiters.contains_key(&ctx) {
            return false;
        }
        waiters.insert(ctx, pending);
        true
    }

    fn wait(&self, ctx: u32, mut pending: Pending, token: u32) -> Next {
        let registered = match self.guards.calls.borrow_mut().get_mut(&token) {
            Some(CallKind::Limits { waiters, .. }) => {
                if !waiters.contains(&ctx) {
                    waiters.push(ctx);
                }
                true
            }
            _ => false,
        };
        if !registered {
            // The call is gone: try again without it.
            self.guards.inflight.borrow_mut().retain(|_, t| *t != token);
            pending.lease_rounds = pending.lease_rounds.saturating_add(1);
            return self.guard(ctx, pending);
        }
        if !self.store_waiter(ctx, pending) {
            return self.reply(&Denial::RateLimitUnavailable);
        }
        Next::Paused
    }

    fn ask_limits(
        &self,
        ctx: u32,
        mut pending: Pending,
        asks: Vec<(usize, AppliedLimit, bool, RateLimitOp)>,
        now: u64,
    ) -> Next {
        let Some(cp) = self.policy.control_plane.as_ref() else {
            pending.unavailable = true;
            return self.guard(ctx, pending);
        };
        if let Some(next) = self.hand_to_root(ctx, &mut pending) {
            return next;
        }
        let strict_only = asks.iter().all(|(_, _, strict, _)| *strict);
        let timeout = asks
            .iter()
            .filter(|(_, _, strict, _)| *strict)
            .filter_map(|(_, a, _, _)| self.rate_limit(a.index).map(|l| l.timeout_ms))
            .min()
            .filter(|_| strict_only)
            .unwrap_or(cp.timeout_ms);
        let batch = RateLimitBatch {
            asks: asks
                .iter()
                .map(|(_, a, _, op)| RateLimitAsk {
                    key: a.key.clone(),
                    limit: a.limit,
                    unit: a.unit,
                    op: *op,
                })
                .collect(),
        };
        let Ok(body) = serde_json::to_vec(&batch) else {
            pending.unavailable = true;
            return self.guard(ctx, pending);
        };
        match self.dispatch(ctx, cp, RATE_LIMIT_PATH, &body, timeout) {
            Ok(token) => {
                self.metrics.count("portcullis.ratelimit.calls");
                let mut inflight = self.guards.inflight.borrow_mut();
                for (_, a, strict, _) in &asks {
                    if !*strict {
                        inflight.insert(a.key.clone(), token);
                    }
                }
                drop(inflight);
                pending.lease_rounds = pending.lease_rounds.saturating_add(1);
                pending.deadline_ms = now.saturating_add(timeout).saturating_add(1_000);
                let call_asks = asks.into_iter().map(|(i, a, strict, _)| (i, a, strict)).collect();
                self.guards
                    .calls
                    .borrow_mut()
                    .insert(token, CallKind::Limits { owner: ctx, asks: call_asks, waiters: vec![ctx] });
                if !self.store_waiter(ctx, pending) {
                    return self.reply(&Denial::RateLimitUnavailable);
                }
                Next::Paused
            }
            Err(status) => {
                log::warn!(
                    "cannot call cluster `{}` for rate limits ({status:?}); is it defined?",
                    cp.cluster
                );
                self.open_circuit(now);
                pending.unavailable = true;
                self.guard(ctx, pending)
            }
        }
    }

    /// Outside the root context: queue the request for the root context, which makes
    /// its call. `None`: make the call here (in the root context, or without a queue).
    fn hand_to_root(&self, ctx: u32, pending: &mut Pending) -> Option<Next> {
        if self.guards.root_dispatch.get().is_some() {
            return None;
        }
        let queue = self.guards.queue.get()?;
        if host::enqueue(queue, &ctx.to_be_bytes()).is_err() {
            return None;
        }
        let taken = std::mem::replace(
            pending,
            Pending::new(RequestParts::default(), UpstreamEdits::default(), Vec::new(), None),
        );
        if !self.store_waiter(ctx, taken) {
            return Some(self.reply(&Denial::RateLimitUnavailable));
        }
        Some(Next::Paused)
    }

    /// Runs `f` as the root context's work: calls it makes are owned by `root`.
    pub fn as_root<T>(&self, root: u32, f: impl FnOnce() -> T) -> T {
        let before = self.guards.root_dispatch.replace(Some(root));
        let out = f();
        self.guards.root_dispatch.set(before);
        out
    }

    /// Root context, `on_queue_ready`: makes the calls of the queued requests.
    pub fn drain_guard_queue(&self, root: u32) {
        let Some(queue) = self.guards.queue.get() else { return };
        self.guards.root_dispatch.set(Some(root));
        while let Some(bytes) = host::dequeue(queue) {
            let Ok(id) = <[u8; 4]>::try_from(bytes.as_slice()) else { continue };
            let ctx = u32::from_be_bytes(id);
            let Some(pending) = self.guards.waiters.borrow_mut().remove(&ctx) else { continue };
            self.finish_on(ctx, pending);
        }
        self.guards.root_dispatch.set(None);
        let _ = host::set_effective_context(root);
    }

    /// Makes a call owned by the root context when it is the one working (so the call
    /// outlives the request that needed it).
    fn dispatch(
        &self,
        ctx: u32,
        cp: &ControlPlane,
        path: &str,
        body: &[u8],
        timeout_ms: u64,
    ) -> Result<u32, proxy_wasm::types::Status> {
        let Some(root) = self.guards.root_dispatch.get() else {
            return host::dispatch_post_json(&Upstream::control_plane(cp), path, body, timeout_ms);
        };
        let _ = host::set_effective_context(root);
        let result = host::dispatch_post_json(&Upstream::control_plane(cp), path, body, timeout_ms);
        let _ = host::set_effective_context(ctx);
        result
    }

    fn open_circuit(&self, now: u64) {
        self.guards.circuit_open_until.set(now.saturating_add(CIRCUIT_OPEN_MS));
        self.metrics.count("portcullis.guard.control_plane_unavailable");
    }

    fn lockout_unavailable(&self) -> Option<Next> {
        let lockout = self.policy.stateful_checks.lockout.as_ref()?;
        match lockout.on_error {
            FailureMode::Allow => {
                self.metrics.count("portcullis.lockout.unavailable_allowed");
                None
            }
            FailureMode::Deny => {
                self.metrics.count("portcullis.lockout.unavailable_denied");
                Some(self.reply(&Denial::LockoutUnavailable))
            }
        }
    }

    /// The longest lock this Envoy knows of among the subjects (ms left), and whether
    /// one of the locks was learned within [`LOCAL_LOCK_TRUST_MS`].
    fn locally_locked(&self, subjects: &[LockoutSubject], now: u64) -> Option<(u64, bool)> {
        subjects
            .iter()
            .filter_map(|s| {
                let (data, _) = host::shared_data(&lock_key(s));
                let (until, learned_at) = data.map(|d| decode_lock(&d)).unwrap_or((0, 0));
                (until > now).then(|| (until - now, now.saturating_sub(learned_at) < LOCAL_LOCK_TRUST_MS))
            })
            .reduce(|(a, fa), (b, fb)| (a.max(b), fa || fb))
    }

    fn remember_locks(&self, subjects: &[LockoutSubject], reply: &LockoutReply, now: u64) {
        for (subject, lock) in subjects.iter().zip(&reply.subjects) {
            let until = if lock.locked_for_ms > 0 { now.saturating_add(lock.locked_for_ms) } else { 0 };
            let mut value = [0u8; 16];
            write_u64s(&mut value, &[until, now]);
            let _ = host::set_shared_data(&lock_key(subject), &value, None);
        }
    }

    fn ask_lockout(&self, ctx: u32, mut pending: Pending, now: u64) -> Next {
        let (Some(cp), Some(lockout), Some(login)) = (
            self.policy.control_plane.as_ref(),
            self.policy.stateful_checks.lockout.as_ref(),
            pending.login.as_ref(),
        ) else {
            pending.unavailable = true;
            return self.guard(ctx, pending);
        };
        let check = LockoutCheck {
            policy: lockout.policy,
            subjects: login.subjects.clone(),
            reservation_ttl_ms: Some(lockout.reservation_ttl_ms),
        };
        let subjects = login.subjects.clone();
        let body = serde_json::to_vec(&check).unwrap_or_default();
        if let Some(next) = self.hand_to_root(ctx, &mut pending) {
            return next;
        }
        match self.dispatch(ctx, cp, LOCKOUT_CHECK_PATH, &body, lockout.timeout_ms) {
            Ok(token) => {
                self.metrics.count("portcullis.lockout.checks");
                pending.deadline_ms = now.saturating_add(lockout.timeout_ms).saturating_add(1_000);
                let forget_at_ms = pending.deadline_ms.saturating_add(FORGET_UNANSWERED_MS);
                self.guards
                    .calls
                    .borrow_mut()
                    .insert(token, CallKind::LockCheck { owner: ctx, subjects, forget_at_ms });
                if !self.store_waiter(ctx, pending) {
                    return self.reply(&Denial::LockoutUnavailable);
                }
                Next::Paused
            }
            Err(status) => {
                log::warn!("cannot call cluster `{}` for a lock check ({status:?})", cp.cluster);
                self.open_circuit(now);
                pending.unavailable = true;
                self.guard(ctx, pending)
            }
        }
    }

    /// Whether this token belongs to a guard call (then it was handled).
    pub fn on_guard_call_response(&self, token: u32, body_size: usize, current: u32) -> bool {
        let Some(call) = self.guards.calls.borrow_mut().remove(&token) else {
            return false;
        };
        let (status, body) = crate::http::call_response_capped(body_size, MAX_REPLY_BYTES);
        let ok_body = match (status.as_deref(), body) {
            (Some("200"), Some(b)) => Some(b),
            (s, _) => {
                log::warn!(
                    "control plane answered {} to a guard call",
                    s.unwrap_or("nothing (timeout or reset)")
                );
                None
            }
        };
        let now = host::now_unix_ms();
        match call {
            CallKind::Limits { owner, asks, waiters } => {
                self.guards.inflight.borrow_mut().retain(|_, t| *t != token);
                let reply = ok_body.and_then(|b| serde_json::from_slice::<RateLimitReply>(&b).ok());
                let reply = reply.filter(|r| r.results.len() == asks.len());
                match &reply {
                    Some(r) => self.apply_limit_results(owner, &asks, r, now),
                    None => self.open_circuit(now),
                }
                for ctx in waiters {
                    let Some(mut pending) = self.guards.waiters.borrow_mut().remove(&ctx) else { continue };
                    if reply.is_none() {
                        pending.unavailable = true;
                    }
                    self.finish_on(ctx, pending);
                }
            }
            CallKind::LockCheck { owner, subjects, .. } => {
                let reply = ok_body.and_then(|b| serde_json::from_slice::<LockoutReply>(&b).ok());
                let Some(mut pending) = self.guards.waiters.borrow_mut().remove(&owner) else {
                    // The attempt is gone (or was decided without this answer): it will
                    // not go upstream, so its reservation is given back at once.
                    if let Some(id) = reply.and_then(|r| r.reservation) {
                        self.release_reservation(subjects, id);
                    }
                    let _ = host::set_effective_context(current);
                    return true;
                };
                match reply {
                    Some(r) => {
                        if let Some(login) = pending.login.as_mut() {
                            self.remember_locks(&login.subjects, &r, now);
                            match r.reservation {
                                Some(id) if r.locked_for_ms == 0 => {
                                    login.reservation = Some(id);
                                    login.checked = true;
                                }
                                reservation => {
                                    if let Some(id) = reservation {
                                        self.release_reservation(subjects, id);
                                    }
                                    self.metrics.count("portcullis.lockout.denied");
                                    if r.locked_for_ms == 0 {
                                        self.metrics.count("portcullis.lockout.denied_in_flight");
                                    }
                                    let retry_ms = r.retry_after_ms.max(r.locked_for_ms);
                                    if host::set_effective_context(owner).is_ok() {
                                        self.reply(&Denial::LockedOut {
                                            retry_after_secs: retry_ms.div_ceil(1000),
                                        });
                                    }
                                    let _ = host::set_effective_context(current);
                                    return true;
                                }
                            }
                        }
                    }
                    None => {
                        self.open_circuit(now);
                        pending.unavailable = true;
                    }
                }
                self.finish_on(owner, pending);
            }
            CallKind::LockReport { owner } => {
                let reply = ok_body.and_then(|b| serde_json::from_slice::<LockoutReply>(&b).ok());
                if let Some(r) = reply {
                    if let Some(login) = self.guards.logins.borrow_mut().remove(&owner) {
                        self.remember_locks(&login.subjects, &r, now);
                    }
                }
                self.guards.logins.borrow_mut().remove(&owner);
                if host::set_effective_context(owner).is_ok() {
                    if let Err(status) = host::resume_response() {
                        log::warn!("could not resume the response ({status:?})");
                    }
                }
            }
            CallKind::Release => self.guards.release_call.set(None),
            CallKind::LockRelease => {}
            CallKind::Burst => {
                self.guards.burst_call.set(None);
                if let Some(r) = ok_body.and_then(|b| serde_json::from_slice::<BurstReply>(&b).ok()) {
                    self.store_blocked(&r.blocked, now);
                }
            }
        }
        let _ = host::set_effective_context(current);
        true
    }

    fn apply_limit_results(
        &self,
        owner: u32,
        asks: &[(usize, AppliedLimit, bool)],
        reply: &RateLimitReply,
        now: u64,
    ) {
        for ((i, applied, strict), result) in asks.iter().zip(&reply.results) {
            if *strict {
                if let Some(p) = self.guards.waiters.borrow_mut().get_mut(&owner) {
                    if let Some(s) = p.strict.get_mut(*i) {
                        *s = Some(*result);
                    }
                }
                continue;
            }
            if result.granted > 0 {
                self.metrics.count("portcullis.ratelimit.lease_grants");
            }
            let key = slot_key(&applied.key);
            for _ in 0..8 {
                let (data, cas) = host::shared_data(&key);
                let slot = data.map(|d| LeaseSlot::decode(&d)).unwrap_or_default();
                if host::set_shared_data(&key, &slot.granted(result, now).encode(), cas).is_ok() {
                    break;
                }
            }
            let mut known = self.guards.known.borrow_mut();
            if known.len() >= MAX_KNOWN_SLOTS {
                known.clear();
            }
            known.insert(applied.key.clone(), applied.clone());
        }
    }

    /// Re-runs the checks of a waiting request on its own context and carries out the
    /// outcome.
    fn finish_on(&self, ctx: u32, pending: Pending) {
        if host::set_effective_context(ctx).is_err() {
            return;
        }
        if let Next::Continue = self.guard(ctx, pending) {
            self.resume(ctx);
        }
    }

    /// Continues a paused request (the current effective context must be `ctx`).
    pub fn resume(&self, ctx: u32) {
        self.release(ctx);
        if let Err(status) = host::resume_request() {
            log::warn!("could not resume the request ({status:?})");
        }
    }

    /// Finishes requests whose calls are overdue (their answer went to a context that
    /// ended), under their failure modes.
    pub fn expire_guard_waiters(&self, current: u32) {
        let now = host::now_unix_ms();
        self.guards
            .calls
            .borrow_mut()
            .retain(|_, c| !matches!(c, CallKind::LockCheck { forget_at_ms, .. } if now > *forget_at_ms));
        let overdue: Vec<u32> = self
            .guards
            .waiters
            .borrow()
            .iter()
            .filter(|(_, p)| p.deadline_ms > 0 && now > p.deadline_ms)
            .map(|(ctx, _)| *ctx)
            .collect();
        for ctx in overdue {
            let Some(mut pending) = self.guards.waiters.borrow_mut().remove(&ctx) else { continue };
            self.guards.calls.borrow_mut().retain(|_, c| match c {
                CallKind::Limits { waiters, .. } => {
                    waiters.retain(|w| *w != ctx);
                    true
                }
                // Kept: its answer may still bring a reservation to release.
                _ => true,
            });
            pending.unavailable = true;
            if let Some(login) = pending.login.as_mut() {
                login.checked = false;
            }
            self.metrics.count("portcullis.guard.overdue");
            self.finish_on(ctx, pending);
        }
        let _ = host::set_effective_context(current);
    }

    /// Whether the response of this request context is held for its login report.
    pub fn report_pending(&self, ctx: u32) -> bool {
        self.guards.calls.try_borrow().is_ok_and(|calls| {
            calls.values().any(|c| matches!(c, CallKind::LockReport { owner } if *owner == ctx))
        })
    }

    /// A request context ended: forget what was kept for it.
    pub fn forget_guarded(&self, ctx: u32) {
        if let Ok(mut w) = self.guards.waiters.try_borrow_mut() {
            w.remove(&ctx);
        }
        if let Ok(mut h) = self.guards.response_headers.try_borrow_mut() {
            h.remove(&ctx);
        }
        if let Ok(mut l) = self.guards.logins.try_borrow_mut() {
            l.remove(&ctx);
        }
    }

    /// Response headers: `RateLimit-*` headers, and the outcome report of a login
    /// attempt (the response waits for it, so the next attempt sees the new lock).
    pub fn on_guarded_response(&self, ctx: u32) -> Next {
        if let Some(headers) = self.guards.response_headers.borrow_mut().remove(&ctx) {
            for (n, v) in headers {
                let _ = host::add_response_header(&n, &v);
            }
        }
        let Some(lockout) = self.policy.stateful_checks.lockout.as_ref() else {
            return Next::Continue;
        };
        let Some(login) = self.guards.logins.borrow().get(&ctx).cloned() else {
            return Next::Continue;
        };
        // No verdict from the upstream (neither a failure nor a success status): the
        // reservation is only given back.
        let outcome = host::response_status()
            .and_then(|s| login_outcome(lockout, s))
            .or(login.reservation.as_ref().map(|_| LoginOutcome::Abandoned));
        let Some(outcome) = outcome.filter(|_| !login.subjects.is_empty()) else {
            self.guards.logins.borrow_mut().remove(&ctx);
            return Next::Continue;
        };
        if self.report_login(outcome, login.subjects, login.reservation, CallKind::LockReport { owner: ctx })
        {
            return Next::Paused;
        }
        self.guards.logins.borrow_mut().remove(&ctx);
        Next::Continue
    }

    /// Gives back the reservation of an attempt that will not go upstream (from the
    /// current context; nobody waits for the answer). If the call fails, the
    /// reservation expires in the control plane and counts as a failure then.
    fn release_reservation(&self, subjects: Vec<LockoutSubject>, reservation: String) {
        self.report_login(LoginOutcome::Abandoned, subjects, Some(reservation), CallKind::LockRelease);
    }

    /// Sends a login's outcome report from the current context; its answer is handled
    /// as `kind`. Whether the call was made (a failure is logged).
    fn report_login(
        &self,
        outcome: LoginOutcome,
        subjects: Vec<LockoutSubject>,
        reservation: Option<String>,
        kind: CallKind,
    ) -> bool {
        let (Some(lockout), Some(cp)) =
            (self.policy.stateful_checks.lockout.as_ref(), self.policy.control_plane.as_ref())
        else {
            return false;
        };
        let report = LockoutReport { policy: lockout.policy, outcome, subjects, reservation };
        let body = serde_json::to_vec(&report).unwrap_or_default();
        match host::dispatch_post_json(
            &Upstream::control_plane(cp),
            LOCKOUT_REPORT_PATH,
            &body,
            lockout.timeout_ms,
        ) {
            Ok(token) => {
                self.metrics.count(&format!("portcullis.lockout.reports.{}", outcome.as_str()));
                self.guards.calls.borrow_mut().insert(token, kind);
                true
            }
            Err(status) => {
                log::warn!("cannot call cluster `{}` to report a login ({status:?})", cp.cluster);
                false
            }
        }
    }

    /// The account of a login attempt on a lockout route, read from its headers and
    /// `body` (`None`: larger than `maxBodyBytes`). `Err`: the attempt was refused (the
    /// reply is sent); carry out the returned [`Next`].
    pub fn login_account(&self, request: &RequestParts, body: Option<&[u8]>) -> Result<Option<String>, Next> {
        let Some(lockout) = self.policy.stateful_checks.lockout.as_ref() else { return Ok(None) };
        match lockout.account_of(request, body) {
            Ok(Some(account)) => Ok(Some(account)),
            Ok(None) => {
                self.metrics.count("portcullis.lockout.no_account");
                Ok(None)
            }
            Err(e) => {
                self.metrics.count(&format!("portcullis.lockout.refused.{}", e.code()));
                Err(self.reply(&Denial::LoginUnreadable(e)))
            }
        }
    }

    /// Counts a request for the burst report and answers whether its address is blocked.
    pub fn burst_check(&self, request: &RequestParts, ip: Option<&str>, now: u64) -> Option<Denial> {
        let burst = self.policy.stateful_checks.burst.as_ref()?;
        let ip = ip?;
        let route = if request.route_path.is_empty() { request.path_only() } else { &request.route_path };
        {
            let mut counts = self.guards.burst.borrow_mut();
            let len = counts.len();
            match counts.get_mut(ip) {
                Some(e) => {
                    e.count = e.count.saturating_add(1);
                    e.route = route.chars().take(256).collect();
                    e.method = request.method.clone();
                }
                None if len < MAX_BURST_ENTRIES => {
                    let user_agent =
                        request.header_values("user-agent").next().unwrap_or("").chars().take(256).collect();
                    counts.insert(
                        ip.to_string(),
                        BurstEntry {
                            ip: ip.to_string(),
                            count: 1,
                            route: route.chars().take(256).collect(),
                            method: request.method.clone(),
                            user_agent,
                        },
                    );
                }
                None => self.metrics.count("portcullis.burst.untracked"),
            }
        }
        if !burst.enforce_blocks {
            return None;
        }
        let mut cache = self.guards.blocked.borrow_mut();
        if now.saturating_sub(cache.checked_at_ms) >= BLOCKED_RECHECK_MS {
            cache.checked_at_ms = now;
            let (data, cas) = host::shared_data(BLOCKED_KEY);
            if cas != cache.cas {
                cache.cas = cas;
                cache.until = data.and_then(|d| serde_json::from_slice(&d).ok()).unwrap_or_default();
            }
        }
        let until = cache.until.get(ip).copied().unwrap_or(0);
        (until > now).then(|| {
            self.metrics.count("portcullis.burst.blocked_requests");
            Denial::AddressBlocked { retry_after_secs: (until - now).div_ceil(1000) }
        })
    }

    fn store_blocked(&self, blocked: &[BlockedIp], now: u64) {
        if blocked.is_empty() {
            return;
        }
        for _ in 0..8 {
            let (data, cas) = host::shared_data(BLOCKED_KEY);
            let mut map: HashMap<String, u64> =
                data.and_then(|d| serde_json::from_slice(&d).ok()).unwrap_or_default();
            map.retain(|_, until| *until > now);
            for b in blocked {
                map.insert(b.ip.clone(), now.saturating_add(b.blocked_for_ms));
            }
            let Ok(bytes) = serde_json::to_vec(&map) else { return };
            if host::set_shared_data(BLOCKED_KEY, &bytes, cas).is_ok() {
                return;
            }
        }
    }

    /// Root tick: overdue waiters, burst report, release of leases about to expire.
    pub fn guard_tick(&self, current: u32, tick_ms: u64) {
        if self.policy.stateful_checks.is_empty() {
            return;
        }
        self.expire_guard_waiters(current);
        let now = host::now_unix_ms();
        let Some(cp) = self.policy.control_plane.as_ref() else { return };
        if let Some(burst) = self.policy.stateful_checks.burst.as_ref() {
            let due = now.saturating_sub(self.guards.last_burst_report_ms.get()) >= burst.report_interval_ms;
            if due && self.guards.burst_call.get().is_none() {
                let entries: Vec<BurstEntry> =
                    self.guards.burst.borrow_mut().drain().map(|(_, e)| e).collect();
                self.guards.last_burst_report_ms.set(now);
                if !entries.is_empty() {
                    for chunk in entries.chunks(portcullis_core::wire::MAX_BATCH) {
                        let report = BurstReport { entries: chunk.to_vec() };
                        let body = serde_json::to_vec(&report).unwrap_or_default();
                        match host::dispatch_post_json(
                            &Upstream::control_plane(cp),
                            BURST_REPORT_PATH,
                            &body,
                            cp.timeout_ms,
                        ) {
                            Ok(token) => {
                                self.guards.calls.borrow_mut().insert(token, CallKind::Burst);
                                self.guards.burst_call.set(Some(token));
                            }
                            Err(status) => log::warn!("cannot send the burst report ({status:?})"),
                        }
                    }
                }
            }
        }
        if self.guards.release_call.get().is_none() {
            self.release_expiring(cp, now, tick_ms);
        }
    }

    /// Gives back the unspent units of leases that will expire before the next tick.
    fn release_expiring(&self, cp: &ControlPlane, now: u64, tick_ms: u64) {
        let known: Vec<AppliedLimit> = self.guards.known.borrow().values().cloned().collect();
        let mut asks = Vec::new();
        let mut forget = Vec::new();
        for applied in known {
            let key = slot_key(&applied.key);
            let (data, cas) = host::shared_data(&key);
            let slot = data.map(|d| LeaseSlot::decode(&d)).unwrap_or_default();
            if now >= slot.expires_at_ms {
                forget.push(applied.key.clone());
                continue;
            }
            if slot.units == 0 || slot.expires_at_ms.saturating_sub(now) > tick_ms.saturating_mul(2) {
                continue;
            }
            let emptied = LeaseSlot { units: 0, ..slot };
            if host::set_shared_data(&key, &emptied.encode(), cas).is_ok() {
                asks.push(RateLimitAsk {
                    key: applied.key.clone(),
                    limit: applied.limit,
                    unit: applied.unit,
                    op: RateLimitOp::Release { units: slot.units },
                });
                forget.push(applied.key.clone());
            }
            if asks.len() >= portcullis_core::wire::MAX_BATCH {
                break;
            }
        }
        {
            let mut k = self.guards.known.borrow_mut();
            for key in forget {
                k.remove(&key);
            }
        }
        if asks.is_empty() {
            return;
        }
        let units: u64 =
            asks.iter().map(|a| if let RateLimitOp::Release { units } = a.op { units } else { 0 }).sum();
        let body = serde_json::to_vec(&RateLimitBatch { asks }).unwrap_or_default();
        match host::dispatch_post_json(&Upstream::control_plane(cp), RATE_LIMIT_PATH, &body, cp.timeout_ms) {
            Ok(token) => {
                self.metrics.count("portcullis.ratelimit.release_calls");
                log::debug!("releasing {units} unspent leased unit(s)");
                self.guards.calls.borrow_mut().insert(token, CallKind::Release);
                self.guards.release_call.set(Some(token));
            }
            Err(status) => log::warn!("cannot release leased units ({status:?})"),
        }
    }
}

/// A locally known lock: (locked until, learned at), both ms; malformed reads as none.
fn decode_lock(bytes: &[u8]) -> (u64, u64) {
    read_u64s::<2>(bytes).map(|[until, learned_at]| (until, learned_at)).unwrap_or((0, 0))
}

/// Builds the `RateLimit-*` headers of an allowed request only when they will be sent.
fn headers_if_wanted(
    limit: &RateLimit,
    build: impl FnOnce() -> (u64, Vec<(String, String)>),
) -> Option<(u64, Vec<(String, String)>)> {
    (limit.response_headers == HeaderMode::Always).then(build)
}

fn mark(done: &mut [bool], i: usize) {
    if let Some(d) = done.get_mut(i) {
        *d = true;
    }
}
