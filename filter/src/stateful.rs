//! The stateful checks after authentication, in a fixed order: rate limits (leased
//! quota spent from shared data, or one strict call per request), then the lock check
//! before a login attempt; after the response, the outcome report of the attempt.
//! Burst counting happens earlier, on the request headers (`request.rs`).
//!
//! Requests that wait for the control plane are held per worker, keyed by their
//! context id (`held.rs`); their calls go through the router (`calls.rs`), and
//! whichever context receives an answer hands it to [`on_answer`], which finishes
//! every request waiting for it on that request's own context. A request whose call
//! never answers (its receiving context went away) is finished by the tick once its
//! deadline passes, under its checks' failure modes.

use portcullis_core::authn::UpstreamEdits;
use portcullis_core::check::{first_verdict, CheckFn, Phase, Verdict};
use portcullis_core::jwt::VerifiedToken;
use portcullis_core::ratelimit::{AppliedLimit, LimitContext};
use portcullis_core::response::Denial;
use portcullis_core::wire::{
    BurstReply, LockoutReply, RateLimitAsk, RateLimitBatch, RateLimitOp, RateLimitReply, BURST_REPORT_PATH,
    LOCKOUT_CHECK_PATH, MAX_BATCH, RATE_LIMIT_PATH,
};
use portcullis_core::RequestParts;

use crate::calls::{Ask, Call};
use crate::features::lockout::{self, LoginAttempt};
use crate::features::ratelimit::{LimitStep, LimitsProgress};
use crate::held::{CheckInput, Pending};
use crate::host::Upstream;
use crate::login;
use crate::reply::{apply_edits, count_allowed, refuse, Next};
use crate::runtime::Runtime;

/// How long past its deadline a lock check's answer is still awaited, to give back the
/// reservation it may bring (Envoy answers every call by its timeout, unless the
/// context that made it is gone).
const FORGET_UNANSWERED_MS: u64 = 10_000;
/// Largest control-plane answer read.
const MAX_REPLY_BYTES: usize = 256 * 1024;
/// Most batches of lease releases and renewals one tick sends.
const MAX_TICK_BATCHES: usize = 4;

/// The stateful checks a request goes through.
pub fn pending_for(
    rt: &Runtime,
    request: &RequestParts,
    edits: UpstreamEdits,
    tokens: &[&VerifiedToken],
    input: &CheckInput,
) -> Pending {
    let guards = &rt.policy.stateful_checks;
    let rule_name = input.rule.and_then(|r| rt.policy.rules.get(r)).map(|r| r.name.as_str());
    let ctx = LimitContext { request, rule: rule_name, tokens, client_ip: input.client_ip.as_deref() };
    let limits = guards.applicable(input.rule, &ctx);
    let login = match (&input.login, &guards.lockout) {
        (Some(account), Some(lockout)) => {
            Some(LoginAttempt::new(lockout.subjects(account.as_deref(), input.client_ip.as_deref())))
        }
        _ => None,
    };
    Pending::new(input.rule, request.clone(), edits, LimitsProgress::new(limits), login)
}

/// Runs the stateful checks of an authenticated request on the current context.
pub fn run(rt: &Runtime, ctx: u32, mut pending: Pending) -> Next {
    let now = rt.host.now_unix_ms();
    if pending.deadline_ms == 0 {
        let timeout = rt.policy.control_plane.as_ref().map(|c| c.timeout_ms).unwrap_or(200);
        pending.deadline_ms = now.saturating_add(timeout.saturating_mul(2)).saturating_add(1_000);
    }
    let mut limits = |p: &mut Pending| rate_limits(rt, p, now);
    let mut lock = |p: &mut Pending| login::lock_check(rt, p, now);
    let checks: &mut [(Phase, CheckFn<'_, Pending, Ask>)] =
        &mut [(Phase::RateLimit, &mut limits), (Phase::Lockout, &mut lock)];
    match first_verdict(&mut pending, checks) {
        Verdict::Pass => {}
        Verdict::Deny(denial) => return refuse(rt, pending.rule, &denial),
        Verdict::Call(Ask::Limits(asks)) => return ask_limits(rt, ctx, pending, asks, now),
        Verdict::Call(Ask::JoinLease(token)) => return wait(rt, ctx, pending, token),
        Verdict::Call(Ask::LockCheck) => return ask_lockout(rt, ctx, pending, now),
        // Keys and the body are in hand before these checks run; fail closed anyway.
        Verdict::WaitForKeys(_) | Verdict::WaitForBody => {
            return refuse(rt, pending.rule, &Denial::RateLimitUnavailable)
        }
    }
    // Allowed.
    if let Some((_, headers)) = pending.limits.headers.take() {
        rt.rate_limits.response_headers(ctx, headers);
    }
    if let Some(login) = pending.login.take() {
        rt.lockout.went_upstream(ctx, login);
    }
    count_allowed(rt, pending.rule);
    apply_edits(&*rt.host, &pending.request, &pending.edits);
    Next::Continue
}

/// The rate-limit check: steps through the request's limits not decided yet.
fn rate_limits(rt: &Runtime, pending: &mut Pending, now: u64) -> Verdict<Ask> {
    let env = rt.env(now);
    let mut asks = Vec::new();
    let mut wait_on = None;
    // Taken out while stepping through them, so each can be lent without a copy.
    let limits = std::mem::take(&mut pending.limits.limits);
    let mut outcome = None;
    for (i, applied) in limits.iter().enumerate() {
        if pending.limits.is_done(i) {
            continue;
        }
        let Some(limit) = rt.policy.stateful_checks.rate_limits.get(applied.index) else {
            pending.limits.mark_done(i);
            continue;
        };
        let unavailable = pending.unavailable || rt.calls.circuit_open(now);
        let mut step = rt.rate_limits.step(env, &pending.limits, i, applied, limit, unavailable);
        if let LimitStep::Exhausted = step {
            pending.unavailable = true;
            step = rt.rate_limits.step(env, &pending.limits, i, applied, limit, true);
        }
        match step {
            LimitStep::Done(headers) => {
                pending.limits.mark_done(i);
                pending.limits.keep_headers(limit, headers);
            }
            LimitStep::Deny(denial) => {
                if limit.shadow {
                    rt.rate_limits.count(env, applied.index, limit, "shadow_denied");
                    log::info!("rate limit `{}` (shadow) would deny", limit.name);
                    pending.limits.mark_done(i);
                    continue;
                }
                rt.rate_limits.count(env, applied.index, limit, "denied");
                outcome = Some(Verdict::Deny(denial));
                break;
            }
            LimitStep::Ask(op) => {
                let strict = matches!(op, RateLimitOp::Check { .. });
                asks.push((i, applied.clone(), strict, op));
            }
            LimitStep::Wait(token) => wait_on = Some(token),
            LimitStep::Exhausted => {}
        }
    }
    pending.limits.limits = limits;
    if let Some(outcome) = outcome {
        return outcome;
    }
    if !asks.is_empty() {
        return Verdict::Call(Ask::Limits(asks));
    }
    wait_on.map_or(Verdict::Pass, |token| Verdict::Call(Ask::JoinLease(token)))
}

/// Outside the root context: holds the request for the root context, which makes its
/// call. `None`: make the call here (in the root context, or without a queue).
fn hand_to_root(rt: &Runtime, ctx: u32, pending: &mut Pending, denial: Denial) -> Option<Next> {
    if !rt.calls.hand_to_root(&*rt.host, ctx) {
        return None;
    }
    let rule = pending.rule;
    let taken = std::mem::replace(
        pending,
        Pending::new(
            rule,
            RequestParts::default(),
            UpstreamEdits::default(),
            LimitsProgress::default(),
            None,
        ),
    );
    if !rt.held.wait(ctx, taken) {
        return Some(refuse(rt, rule, &denial));
    }
    Some(Next::Paused)
}

fn wait(rt: &Runtime, ctx: u32, mut pending: Pending, token: u32) -> Next {
    if !rt.calls.wait_for(token, ctx) {
        // The call is gone: try again without it.
        rt.rate_limits.call_ended(token);
        pending.limits.lease_rounds = pending.limits.lease_rounds.saturating_add(1);
        return run(rt, ctx, pending);
    }
    let rule = pending.rule;
    if !rt.held.wait(ctx, pending) {
        return refuse(rt, rule, &Denial::RateLimitUnavailable);
    }
    Next::Paused
}

fn ask_limits(
    rt: &Runtime,
    ctx: u32,
    mut pending: Pending,
    asks: Vec<(usize, AppliedLimit, bool, RateLimitOp)>,
    now: u64,
) -> Next {
    let Some(cp) = rt.policy.control_plane.as_ref() else {
        pending.unavailable = true;
        return run(rt, ctx, pending);
    };
    if let Some(next) = hand_to_root(rt, ctx, &mut pending, Denial::RateLimitUnavailable) {
        return next;
    }
    let strict_only = asks.iter().all(|(_, _, strict, _)| *strict);
    let timeout = asks
        .iter()
        .filter(|(_, _, strict, _)| *strict)
        .filter_map(|(_, a, _, _)| rt.policy.stateful_checks.rate_limits.get(a.index).map(|l| l.timeout_ms))
        .min()
        .filter(|_| strict_only)
        .unwrap_or(cp.timeout_ms);
    let batch = RateLimitBatch {
        asks: asks
            .iter()
            .map(|(_, a, _, op)| RateLimitAsk { key: a.key.clone(), limit: a.limit, unit: a.unit, op: *op })
            .collect(),
    };
    let Ok(body) = serde_json::to_vec(&batch) else {
        pending.unavailable = true;
        return run(rt, ctx, pending);
    };
    let leases: Vec<String> =
        asks.iter().filter(|(_, _, strict, _)| !*strict).map(|(_, a, _, _)| a.key.clone()).collect();
    let call_asks = asks.into_iter().map(|(i, a, strict, _)| (i, a, strict)).collect();
    let call = Call::Limits { owner: ctx, asks: call_asks, waiters: vec![ctx] };
    match rt.calls.post_json(
        &*rt.host,
        ctx,
        &Upstream::control_plane(cp),
        (RATE_LIMIT_PATH, &body),
        timeout,
        call,
    ) {
        Ok(token) => {
            rt.metrics.count("portcullis.ratelimit.calls");
            rt.rate_limits.asking(leases.into_iter(), token);
            pending.limits.lease_rounds = pending.limits.lease_rounds.saturating_add(1);
            pending.deadline_ms = now.saturating_add(timeout).saturating_add(1_000);
            let rule = pending.rule;
            if !rt.held.wait(ctx, pending) {
                return refuse(rt, rule, &Denial::RateLimitUnavailable);
            }
            Next::Paused
        }
        Err(status) => {
            log::warn!("cannot call cluster `{}` for rate limits ({status:?}); is it defined?", cp.cluster);
            rt.calls.open_circuit(now, &rt.metrics);
            pending.unavailable = true;
            run(rt, ctx, pending)
        }
    }
}

fn ask_lockout(rt: &Runtime, ctx: u32, mut pending: Pending, now: u64) -> Next {
    let (Some(cp), Some(lockout), Some(login)) = (
        rt.policy.control_plane.as_ref(),
        rt.policy.stateful_checks.lockout.as_ref(),
        pending.login.as_ref(),
    ) else {
        pending.unavailable = true;
        return run(rt, ctx, pending);
    };
    let subjects = login.subjects.clone();
    let body = lockout::check_body(lockout, &subjects);
    if let Some(next) = hand_to_root(rt, ctx, &mut pending, Denial::RateLimitUnavailable) {
        return next;
    }
    let deadline_ms = now.saturating_add(lockout.timeout_ms).saturating_add(1_000);
    let forget_at_ms = deadline_ms.saturating_add(FORGET_UNANSWERED_MS);
    let call = Call::LockCheck { owner: ctx, subjects, forget_at_ms };
    let upstream = Upstream::control_plane(cp);
    match rt.calls.post_json(&*rt.host, ctx, &upstream, (LOCKOUT_CHECK_PATH, &body), lockout.timeout_ms, call)
    {
        Ok(_) => {
            rt.metrics.count("portcullis.lockout.checks");
            pending.deadline_ms = deadline_ms;
            let rule = pending.rule;
            if !rt.held.wait(ctx, pending) {
                return refuse(rt, rule, &Denial::LockoutUnavailable);
            }
            Next::Paused
        }
        Err(status) => {
            log::warn!("cannot call cluster `{}` for a lock check ({status:?})", cp.cluster);
            rt.calls.open_circuit(now, &rt.metrics);
            pending.unavailable = true;
            run(rt, ctx, pending)
        }
    }
}

/// Re-runs the checks of a waiting request on its own context and carries out the
/// outcome.
fn finish_on(rt: &Runtime, ctx: u32, pending: Pending) {
    if rt.switch_context(ctx).is_err() {
        return;
    }
    if let Next::Continue = run(rt, ctx, pending) {
        rt.resume(ctx);
    }
}

/// Root context, `on_queue_ready`: makes the calls of the queued requests.
pub fn drain_queue(rt: &Runtime, root: u32) {
    rt.calls.as_root(root, || {
        while let Some(ctx) = rt.calls.next_queued(&*rt.host) {
            if let Some(pending) = rt.held.take_waiter(ctx) {
                finish_on(rt, ctx, pending);
            }
        }
    });
    let _ = rt.switch_context(root);
}

/// The answer to a stateful check's call (taken from the router), on context `current`.
pub fn on_answer(rt: &Runtime, call: Call, token: u32, body_size: usize, current: u32) {
    let (status, body) = rt.host.call_response(body_size, MAX_REPLY_BYTES);
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
    let now = rt.host.now_unix_ms();
    match call {
        Call::Limits { owner, asks, waiters } => {
            rt.rate_limits.call_ended(token);
            let reply = ok_body.and_then(|b| serde_json::from_slice::<RateLimitReply>(&b).ok());
            let reply = reply.filter(|r| r.results.len() == asks.len());
            match &reply {
                Some(r) => rt.rate_limits.apply_results(rt.env(now), &asks, r, |i, result| {
                    rt.held.with_waiter(owner, |p| p.limits.set_strict_answer(i, result));
                }),
                None => rt.calls.open_circuit(now, &rt.metrics),
            }
            for ctx in waiters {
                let Some(mut pending) = rt.held.take_waiter(ctx) else { continue };
                if reply.is_none() {
                    pending.unavailable = true;
                }
                finish_on(rt, ctx, pending);
            }
        }
        Call::LockCheck { owner, subjects, .. } => {
            let reply = ok_body.and_then(|b| serde_json::from_slice::<LockoutReply>(&b).ok());
            if let Some(pending) = login::lock_check_answered(rt, (owner, current), subjects, reply, now) {
                finish_on(rt, owner, pending);
            }
        }
        Call::LockReport { owner } => {
            let reply = ok_body.and_then(|b| serde_json::from_slice::<LockoutReply>(&b).ok());
            let login = rt.lockout.take(owner);
            if let (Some(r), Some(login)) = (reply, login) {
                lockout::remember_locks(rt.env(now), &login.subjects, &r);
            }
            if rt.switch_context(owner).is_ok() {
                if let Err(status) = rt.host.resume_response() {
                    log::warn!("could not resume the response ({status:?})");
                }
            }
        }
        Call::Release { asks, renewals } => {
            let reply = ok_body.and_then(|b| serde_json::from_slice::<RateLimitReply>(&b).ok());
            if let Some(r) = reply.filter(|r| r.results.len() == asks) {
                rt.rate_limits.apply_renewals(rt.env(now), &renewals, &r);
            }
        }
        Call::Burst => {
            if let Some(r) = ok_body.and_then(|b| serde_json::from_slice::<BurstReply>(&b).ok()) {
                rt.burst.store_blocked(rt.env(now), &r.blocked);
            }
        }
        _ => {}
    }
    let _ = rt.switch_context(current);
}

/// Finishes requests whose calls are overdue (their answer went to a context that
/// ended), under their failure modes.
fn expire_overdue(rt: &Runtime, current: u32) {
    let now = rt.host.now_unix_ms();
    rt.calls.forget_unanswered(now);
    for ctx in rt.held.overdue(now) {
        let Some(mut pending) = rt.held.take_waiter(ctx) else { continue };
        rt.calls.stop_waiting(ctx);
        pending.unavailable = true;
        if let Some(login) = pending.login.as_mut() {
            login.checked = false;
        }
        rt.metrics.count("portcullis.guard.overdue");
        finish_on(rt, ctx, pending);
    }
    let _ = rt.switch_context(current);
}

/// Root tick: overdue waiters, burst report, release of leases about to expire.
pub fn tick(rt: &Runtime, current: u32, tick_ms: u64) {
    if rt.policy.stateful_checks.is_empty() {
        return;
    }
    expire_overdue(rt, current);
    let now = rt.host.now_unix_ms();
    let Some(cp) = rt.policy.control_plane.as_ref() else { return };
    let upstream = Upstream::control_plane(cp);
    if let Some(burst) = rt.policy.stateful_checks.burst.as_ref() {
        if !rt.calls.in_flight(|c| matches!(c, Call::Burst)) {
            for body in rt.burst.due_reports(rt.env(now), burst, MAX_BATCH).unwrap_or_default() {
                let sent = rt.calls.post_json(
                    &*rt.host,
                    current,
                    &upstream,
                    (BURST_REPORT_PATH, &body),
                    cp.timeout_ms,
                    Call::Burst,
                );
                if let Err(status) = sent {
                    log::warn!("cannot send the burst report ({status:?})");
                }
            }
        }
    }
    if rt.calls.in_flight(|c| matches!(c, Call::Release { .. })) {
        return;
    }
    let limits = &rt.policy.stateful_checks.rate_limits;
    let due = rt.rate_limits.expiring_asks(rt.env(now), tick_ms, MAX_BATCH * MAX_TICK_BATCHES, limits);
    let mut renewals = due.renewals.into_iter().peekable();
    for (n, chunk) in due.asks.chunks(MAX_BATCH).enumerate() {
        let first = n * MAX_BATCH;
        let mut mine = Vec::new();
        while let Some((pos, applied)) = renewals.next_if(|(pos, _)| *pos < first + chunk.len()) {
            mine.push((pos - first, applied));
        }
        let renewed = mine.len();
        let body = serde_json::to_vec(&RateLimitBatch { asks: chunk.to_vec() }).unwrap_or_default();
        let call = Call::Release { asks: chunk.len(), renewals: mine };
        match rt.calls.post_json(&*rt.host, current, &upstream, (RATE_LIMIT_PATH, &body), cp.timeout_ms, call)
        {
            Ok(_) => {
                rt.metrics.count("portcullis.ratelimit.release_calls");
                log::debug!("{} lease(s) released, {renewed} renewed", chunk.len() - renewed);
            }
            Err(status) => {
                log::warn!("cannot release or renew leases ({status:?})");
                break;
            }
        }
    }
}
