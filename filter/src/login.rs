//! The login side of the stateful checks: the lock check of an attempt (from the
//! locks this Envoy knows, or its failure mode), what the control plane's answer to a
//! lock check means for the attempt, and the outcome report once the upstream answered
//! (the response waits for it, so the next attempt sees the new lock). The call of a
//! lock check is made by `stateful.rs`, which holds the attempt meanwhile.

use portcullis_core::check::Verdict;
use portcullis_core::lockout::login_outcome;
use portcullis_core::response::Denial;
use portcullis_core::wire::{LockoutReply, LockoutSubject, LoginOutcome, LOCKOUT_REPORT_PATH};
use portcullis_core::RequestParts;

use crate::calls::{Ask, Call};
use crate::features::lockout;
use crate::held::Pending;
use crate::host::Upstream;
use crate::reply::{refuse, Next};
use crate::runtime::Runtime;

/// The lock check of a login attempt not checked yet (passes without one).
pub fn lock_check(rt: &Runtime, pending: &mut Pending, now: u64) -> Verdict<Ask> {
    let unavailable = pending.unavailable || rt.calls.circuit_open(now);
    let Some(login) = pending.login.as_mut().filter(|l| !l.checked) else { return Verdict::Pass };
    let env = rt.env(now);
    if let Some((retry_ms, fresh)) = lockout::locally_locked(env, &login.subjects) {
        if fresh || unavailable {
            rt.metrics.count("portcullis.lockout.denied");
            let denial = Denial::LockedOut { retry_after_secs: retry_ms.div_ceil(1000) };
            return Verdict::Deny(denial);
        }
    }
    if unavailable {
        login.checked = true;
        let denial = rt.policy.stateful_checks.lockout.as_ref().and_then(|l| lockout::unavailable(env, l));
        return denial.map_or(Verdict::Pass, Verdict::Deny);
    }
    if login.subjects.is_empty() {
        login.checked = true;
        return Verdict::Pass;
    }
    Verdict::Call(Ask::LockCheck)
}

/// A lock check's answer: the attempt goes on with its reservation (the pending
/// request to finish is returned), is refused, or (the attempt is gone) its
/// reservation is given back at once.
pub fn lock_check_answered(
    rt: &Runtime,
    (owner, current): (u32, u32),
    subjects: Vec<LockoutSubject>,
    reply: Option<LockoutReply>,
    now: u64,
) -> Option<Pending> {
    let Some(mut pending) = rt.held.take_waiter(owner) else {
        // The attempt is gone (or was decided without this answer): it will not go
        // upstream, so its reservation is given back at once.
        if let Some(id) = reply.and_then(|r| r.reservation) {
            release_reservation(rt, current, subjects, id);
        }
        return None;
    };
    match reply {
        Some(r) => {
            if let Some(login) = pending.login.as_mut() {
                lockout::remember_locks(rt.env(now), &login.subjects, &r);
                match r.reservation {
                    Some(id) if r.locked_for_ms == 0 => {
                        login.reservation = Some(id);
                        login.checked = true;
                    }
                    reservation => {
                        if let Some(id) = reservation {
                            release_reservation(rt, current, subjects, id);
                        }
                        rt.metrics.count("portcullis.lockout.denied");
                        if r.locked_for_ms == 0 {
                            rt.metrics.count("portcullis.lockout.denied_in_flight");
                        }
                        let retry_ms = r.retry_after_ms.max(r.locked_for_ms);
                        if rt.switch_context(owner).is_ok() {
                            let denial = Denial::LockedOut { retry_after_secs: retry_ms.div_ceil(1000) };
                            refuse(rt, pending.rule, &denial);
                        }
                        return None;
                    }
                }
            }
        }
        None => {
            rt.calls.open_circuit(now, &rt.metrics);
            pending.unavailable = true;
        }
    }
    Some(pending)
}

/// Gives back the reservation of an attempt that will not go upstream (from the
/// current context; nobody waits for the answer). If the call fails, the reservation
/// expires in the control plane and counts as a failure then.
fn release_reservation(rt: &Runtime, current: u32, subjects: Vec<LockoutSubject>, reservation: String) {
    report_login(rt, current, LoginOutcome::Abandoned, subjects, Some(reservation), Call::LockRelease);
}

/// Sends a login's outcome report from the current context; its answer continues
/// `call`. Whether the call was made (a failure is logged).
fn report_login(
    rt: &Runtime,
    current: u32,
    outcome: LoginOutcome,
    subjects: Vec<LockoutSubject>,
    reservation: Option<String>,
    call: Call,
) -> bool {
    let (Some(lockout), Some(cp)) =
        (rt.policy.stateful_checks.lockout.as_ref(), rt.policy.control_plane.as_ref())
    else {
        return false;
    };
    let body = lockout::report_body(lockout, outcome, subjects, reservation);
    let upstream = Upstream::control_plane(cp);
    match rt.calls.post_json(
        &*rt.host,
        current,
        &upstream,
        (LOCKOUT_REPORT_PATH, &body),
        lockout.timeout_ms,
        call,
    ) {
        Ok(_) => {
            rt.metrics.count(&format!("portcullis.lockout.reports.{}", outcome.as_str()));
            true
        }
        Err(status) => {
            log::warn!("cannot call cluster `{}` to report a login ({status:?})", cp.cluster);
            false
        }
    }
}

/// Whether the response of this request context is held for its login report.
pub fn report_pending(rt: &Runtime, ctx: u32) -> bool {
    rt.calls.in_flight(|c| matches!(c, Call::LockReport { owner } if *owner == ctx))
}

/// Response headers: `RateLimit-*` headers, and the outcome report of a login attempt
/// (the response waits for it, so the next attempt sees the new lock).
pub fn on_response_headers(rt: &Runtime, ctx: u32) -> Next {
    for (n, v) in rt.rate_limits.take_response_headers(ctx) {
        let _ = rt.host.add_response_header(&n, &v);
    }
    let Some(lockout) = rt.policy.stateful_checks.lockout.as_ref() else {
        return Next::Continue;
    };
    let Some(login) = rt.lockout.attempt(ctx) else {
        return Next::Continue;
    };
    // No verdict from the upstream (neither a failure nor a success status): the
    // reservation is only given back.
    let outcome = rt
        .host
        .response_status()
        .and_then(|s| login_outcome(lockout, s))
        .or(login.reservation.as_ref().map(|_| LoginOutcome::Abandoned));
    let Some(outcome) = outcome.filter(|_| !login.subjects.is_empty()) else {
        rt.lockout.take(ctx);
        return Next::Continue;
    };
    if report_login(rt, ctx, outcome, login.subjects, login.reservation, Call::LockReport { owner: ctx }) {
        return Next::Paused;
    }
    rt.lockout.take(ctx);
    Next::Continue
}

/// The account of a login attempt on a lockout route (see
/// [`lockout::login_account`]); `Err`: the attempt was refused, carry out the
/// returned [`Next`].
pub fn login_account(
    rt: &Runtime,
    request: &RequestParts,
    body: Option<&[u8]>,
) -> Result<Option<String>, Next> {
    let Some(lockout) = rt.policy.stateful_checks.lockout.as_ref() else { return Ok(None) };
    lockout::login_account(&rt.metrics, lockout, request, body)
        .map_err(|denial| refuse(rt, rt.policy.match_rule_index(request), &denial))
}
