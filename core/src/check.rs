//! The interface of a request check: when it runs ([`Phase`]), and what it answers for
//! one request ([`Verdict`]): pass, deny with a [`Denial`], make a call and resume with
//! its answer, wait for keys, or wait for the body. [`first_verdict`] runs a rule's
//! checks in phase order and stops at the first that does not pass.
//!
//! The interface knows nothing of hosts or calls: a check names the call it needs with
//! its own type (`C`), the filter makes it and runs the check again with the answer in
//! hand. Checks depend on this module; the pipelines that run them depend on the
//! checks; nothing here points back.

use crate::response::Denial;

/// Where a check runs; a rule's checks run in this order. A new check takes the phase
/// of what it decides (an API key or a signed request: [`Phase::Authenticate`]; a check
/// that needs the body answers [`Verdict::WaitForBody`] until it is there); a check that
/// only records (an audit) passes in the phase whose outcome it records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// Before anything is read from the request beyond its address (burst reports,
    /// blocked addresses).
    Address,
    /// The credentials: JWT verification (with the revocation replica's word on the
    /// token).
    Authenticate,
    /// The control plane's word on a verified token, per request
    /// (`revocationCheck: strict`): after authentication, which says which tokens to ask
    /// about.
    Revocation,
    /// Rate limits.
    RateLimit,
    /// The lock check of a login attempt (last: it reserves an attempt, which only a
    /// request that passed everything else may spend).
    Lockout,
}

/// A check's answer for one request, at one point of its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict<C> {
    /// This check lets the request go on to the next.
    Pass,
    /// Refuse the request.
    Deny(Denial),
    /// Make (or join) this call; run the check again with its answer.
    Call(C),
    /// This provider's keys are needed first.
    WaitForKeys(usize),
    /// The request body is needed first.
    WaitForBody,
}

impl<C> Verdict<C> {
    pub fn is_pass(&self) -> bool {
        matches!(self, Verdict::Pass)
    }
}

/// One check of a request: it reads and updates the request's state `S`.
pub type CheckFn<'a, S, C> = &'a mut dyn FnMut(&mut S) -> Verdict<C>;

/// Runs `checks` in phase order (their order in the slice does not matter) and answers
/// the first verdict that is not [`Verdict::Pass`]; `Pass` when all pass. A check runs
/// only when every check of an earlier phase passed.
pub fn first_verdict<C, S>(state: &mut S, checks: &mut [(Phase, CheckFn<'_, S, C>)]) -> Verdict<C> {
    checks.sort_by_key(|(phase, _)| *phase);
    for (_, check) in checks.iter_mut() {
        let verdict = check(state);
        if !verdict.is_pass() {
            return verdict;
        }
    }
    Verdict::Pass
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn checks_run_in_phase_order_and_stop_at_the_first_that_does_not_pass() {
        let mut ran: Vec<Phase> = Vec::new();
        let mut lockout = |ran: &mut Vec<Phase>| {
            ran.push(Phase::Lockout);
            Verdict::<u8>::Pass
        };
        let mut limits = |ran: &mut Vec<Phase>| {
            ran.push(Phase::RateLimit);
            Verdict::Call(7)
        };
        let mut address = |ran: &mut Vec<Phase>| {
            ran.push(Phase::Address);
            Verdict::Pass
        };
        let verdict = first_verdict(
            &mut ran,
            &mut [
                (Phase::Lockout, &mut lockout),
                (Phase::RateLimit, &mut limits),
                (Phase::Address, &mut address),
            ],
        );
        assert_eq!(verdict, Verdict::Call(7));
        assert_eq!(ran, vec![Phase::Address, Phase::RateLimit], "the lock check never ran");
    }

    #[test]
    fn the_strict_revocation_check_runs_after_authentication_and_before_the_stateful_checks() {
        let mut ran: Vec<Phase> = Vec::new();
        let record = |phase: Phase| {
            move |ran: &mut Vec<Phase>| {
                ran.push(phase);
                Verdict::<()>::Pass
            }
        };
        let (mut limits, mut strict, mut jwt) =
            (record(Phase::RateLimit), record(Phase::Revocation), record(Phase::Authenticate));
        let verdict = first_verdict(
            &mut ran,
            &mut [
                (Phase::RateLimit, &mut limits),
                (Phase::Revocation, &mut strict),
                (Phase::Authenticate, &mut jwt),
            ],
        );
        assert_eq!(verdict, Verdict::Pass);
        assert_eq!(ran, vec![Phase::Authenticate, Phase::Revocation, Phase::RateLimit]);
    }

    #[test]
    fn all_passing_checks_pass_and_a_denial_stops_the_rest() {
        let mut count = 0u32;
        let mut pass = |n: &mut u32| {
            *n += 1;
            Verdict::<()>::Pass
        };
        assert_eq!(first_verdict(&mut count, &mut [(Phase::RateLimit, &mut pass)]), Verdict::Pass);
        let mut deny = |n: &mut u32| {
            *n += 1;
            Verdict::<()>::Deny(Denial::RateLimitUnavailable)
        };
        let mut never = |n: &mut u32| {
            *n += 100;
            Verdict::<()>::Pass
        };
        let verdict =
            first_verdict(&mut count, &mut [(Phase::Lockout, &mut never), (Phase::RateLimit, &mut deny)]);
        assert_eq!(verdict, Verdict::Deny(Denial::RateLimitUnavailable));
        assert_eq!(count, 2);
    }
}
