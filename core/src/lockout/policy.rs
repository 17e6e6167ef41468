//! The lock arithmetic (see the [module docs](super)): when a subject is locked, for how
//! long, the attempts it has left, and the key its state is stored under.

use serde::{Deserialize, Serialize};

use crate::codec::{hex, hmac_sha256, length_prefix};

/// Most failure times one state keeps; a larger `max_failures` counts as this.
pub const MAX_TRACKED_FAILURES: usize = 32;
/// `Retry-After` for an attempt refused because every attempt left is in flight: their
/// outcomes normally arrive within a login's latency.
pub const IN_FLIGHT_RETRY_MS: u64 = 1_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct LockoutPolicy {
    /// Failures within `window_ms` that lock the account (0 counts as 1).
    pub max_failures: u32,
    pub window_ms: u64,
    /// The first lock.
    pub base_lock_ms: u64,
    /// No lock is longer, the first included.
    pub max_lock_ms: u64,
}

impl Default for LockoutPolicy {
    fn default() -> Self {
        LockoutPolicy {
            max_failures: 5,
            window_ms: 15 * 60_000,
            base_lock_ms: 30_000,
            max_lock_ms: 3_600_000,
        }
    }
}

/// What is stored per account key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct LockoutState {
    /// Times (ms) of the most recent failures within the window, oldest first; at most
    /// `max_failures` of them.
    pub failures: Vec<u64>,
    pub locked_until_ms: u64,
    /// Locks in the current escalation (0: none); the next lock lasts
    /// `base_lock_ms · 2^lock_count`.
    pub lock_count: u32,
    /// Attempts in flight, oldest first; never more than the attempts left allow.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<Reservation>,
}

/// One login attempt in flight: it holds one of the attempts a subject has left until
/// it is settled, or until `expires_at_ms`, when it counts as a failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Reservation {
    pub id: String,
    pub expires_at_ms: u64,
}

impl LockoutPolicy {
    fn threshold(&self) -> usize {
        usize::try_from(self.max_failures).unwrap_or(usize::MAX).clamp(1, MAX_TRACKED_FAILURES)
    }

    /// The `n`-th lock of an escalation (n ≥ 1).
    fn lock_ms(&self, n: u32) -> u64 {
        let factor = 1u64.checked_shl(n.saturating_sub(1)).unwrap_or(u64::MAX);
        self.base_lock_ms.saturating_mul(factor).min(self.max_lock_ms)
    }

    /// The state after a failed attempt at `now_ms`.
    pub fn record_failure(&self, state: &LockoutState, now_ms: u64) -> LockoutState {
        let threshold = self.threshold();
        let recent: Vec<u64> =
            state.failures.iter().copied().filter(|t| now_ms.saturating_sub(*t) < self.window_ms).collect();
        // Keep the newest `threshold - 1`, then add this one.
        let start = recent.len().saturating_sub(threshold.saturating_sub(1));
        let mut failures = recent.get(start..).map(<[u64]>::to_vec).unwrap_or_default();
        failures.push(now_ms);

        let escalating =
            state.lock_count > 0 && now_ms < state.locked_until_ms.saturating_add(self.window_ms);
        let lock_count = if escalating {
            state.lock_count.saturating_add(1)
        } else if failures.len() >= threshold {
            1
        } else {
            0
        };
        let locked_until_ms = if lock_count > 0 {
            state.locked_until_ms.max(now_ms.saturating_add(self.lock_ms(lock_count)))
        } else {
            state.locked_until_ms
        };
        LockoutState { failures, locked_until_ms, lock_count, pending: state.pending.clone() }
    }

    /// The state after a successful login: failures, lock and escalation forgotten. Other
    /// attempts still in flight keep their reservations (each is settled by its own
    /// outcome).
    pub fn record_success(&self, state: &LockoutState) -> LockoutState {
        LockoutState { pending: state.pending.clone(), ..LockoutState::default() }
    }

    /// How many failures may still happen before the next lock, at `now_ms`: none while
    /// locked, one while an escalation is remembered (its next failure locks again),
    /// otherwise the threshold minus the failures within the window. Attempts in flight
    /// are not subtracted here.
    pub fn attempts_left(&self, state: &LockoutState, now_ms: u64) -> usize {
        if self.locked_for_ms(state, now_ms) > 0 {
            return 0;
        }
        if state.lock_count > 0 && now_ms < state.locked_until_ms.saturating_add(self.window_ms) {
            return 1;
        }
        let recent = state.failures.iter().filter(|t| now_ms.saturating_sub(**t) < self.window_ms).count();
        self.threshold().saturating_sub(recent)
    }

    /// The state with every reservation expired at `now_ms` recorded as a failure at its
    /// expiry (or at the newest failure, if later, so that failure times stay ordered).
    pub fn expire_reservations(&self, state: &LockoutState, now_ms: u64) -> LockoutState {
        if state.pending.iter().all(|r| r.expires_at_ms > now_ms) {
            return state.clone();
        }
        let (mut expired, live): (Vec<Reservation>, Vec<Reservation>) =
            state.pending.iter().cloned().partition(|r| r.expires_at_ms <= now_ms);
        expired.sort_by_key(|r| r.expires_at_ms);
        let mut next = LockoutState { pending: live, ..state.clone() };
        for r in expired {
            let at = next.failures.last().map_or(r.expires_at_ms, |last| r.expires_at_ms.max(*last));
            next = self.record_failure(&next, at);
        }
        next
    }

    /// Takes a reservation for an attempt at `now_ms`, or refuses it with the
    /// milliseconds after which to retry: until the lock ends, or
    /// [`IN_FLIGHT_RETRY_MS`] when the attempts left are all in flight. `state` must
    /// have its expired reservations settled ([`Self::expire_reservations`]).
    pub fn reserve(
        &self,
        state: &LockoutState,
        reservation: Reservation,
        now_ms: u64,
    ) -> Result<LockoutState, u64> {
        let locked_ms = self.locked_for_ms(state, now_ms);
        if locked_ms > 0 {
            return Err(locked_ms);
        }
        if state.pending.len() >= self.attempts_left(state, now_ms) {
            return Err(IN_FLIGHT_RETRY_MS);
        }
        let mut next = state.clone();
        if !next.pending.iter().any(|r| r.id == reservation.id) {
            next.pending.push(reservation);
        }
        Ok(next)
    }

    /// The state without the reservation `id`, and whether it was there.
    pub fn release(&self, state: &LockoutState, id: &str) -> (LockoutState, bool) {
        let mut next = state.clone();
        next.pending.retain(|r| r.id != id);
        let found = next.pending.len() < state.pending.len();
        (next, found)
    }

    /// How much longer the account is locked (0: not locked).
    pub fn locked_for_ms(&self, state: &LockoutState, now_ms: u64) -> u64 {
        state.locked_until_ms.saturating_sub(now_ms)
    }

    /// `Retry-After` seconds, rounded up (0: not locked).
    pub fn retry_after_secs(&self, state: &LockoutState, now_ms: u64) -> u64 {
        self.locked_for_ms(state, now_ms).div_ceil(1_000)
    }
}

/// The key lockout state is stored under: lowercase hex of
/// HMAC-SHA256(`secret`, len(kind) as 8 bytes big-endian ‖ kind ‖ value). The length
/// prefix keeps (`"ab"`, `"c"`) and (`"a"`, `"bc"`) apart. `value` is hashed byte for
/// byte: normalise it first (e.g. case-fold usernames, canonical IP form).
pub fn account_key(secret: &[u8], kind: &str, value: &str) -> String {
    hex(&hmac_sha256(secret, &[&length_prefix(kind.len()), kind.as_bytes(), value.as_bytes()]))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const SEC: u64 = 1_000;
    const MIN: u64 = 60 * SEC;

    fn fail_at(policy: &LockoutPolicy, times: &[u64]) -> LockoutState {
        times.iter().fold(LockoutState::default(), |s, t| policy.record_failure(&s, *t))
    }

    #[test]
    fn the_default_policy_is_five_failures_in_fifteen_minutes_locking_thirty_seconds_up_to_an_hour() {
        let p = LockoutPolicy::default();
        assert_eq!(
            (p.max_failures, p.window_ms, p.base_lock_ms, p.max_lock_ms),
            (5, 900_000, 30_000, 3_600_000)
        );
        let parsed: LockoutPolicy = serde_json::from_str(r#"{"maxFailures": 3}"#).unwrap();
        assert_eq!(parsed, LockoutPolicy { max_failures: 3, ..p });
        assert!(serde_json::from_str::<LockoutPolicy>(r#"{"maxFailure": 3}"#).is_err());
    }

    #[test]
    fn four_failures_do_not_lock() {
        let p = LockoutPolicy::default();
        let s = fail_at(&p, &[0, SEC, 2 * SEC, 3 * SEC]);
        assert_eq!(p.locked_for_ms(&s, 3 * SEC), 0);
        assert_eq!(p.retry_after_secs(&s, 3 * SEC), 0);
    }

    #[test]
    fn five_failures_lock_the_sixth_attempt_with_retry_after_thirty() {
        let p = LockoutPolicy::default();
        let s = fail_at(&p, &[0, SEC, 2 * SEC, 3 * SEC, 4 * SEC]);
        assert_eq!(p.retry_after_secs(&s, 4 * SEC), 30);
        assert_eq!(p.locked_for_ms(&s, 4 * SEC + 500), 29_500);
        assert_eq!(p.retry_after_secs(&s, 4 * SEC + 500), 30, "rounded up");
        assert_eq!(p.locked_for_ms(&s, 34 * SEC), 0, "the lock ends");
    }

    #[test]
    fn the_next_failure_after_the_lock_locks_for_sixty() {
        let p = LockoutPolicy::default();
        let s = fail_at(&p, &[0, 0, 0, 0, 0]);
        let s = p.record_failure(&s, 30 * SEC);
        assert_eq!(p.retry_after_secs(&s, 30 * SEC), 60);
        assert_eq!(s.lock_count, 2);
    }

    #[test]
    fn a_failure_while_locked_doubles_the_lock_from_that_failure() {
        let p = LockoutPolicy::default();
        let s = fail_at(&p, &[0, 0, 0, 0, 0]);
        let s = p.record_failure(&s, 10 * SEC);
        assert_eq!(p.retry_after_secs(&s, 10 * SEC), 60);
        assert_eq!(s.locked_until_ms, 70 * SEC);
    }

    #[test]
    fn locks_keep_doubling_up_to_one_hour() {
        let p = LockoutPolicy::default();
        let mut s = fail_at(&p, &[0, 0, 0, 0]);
        let mut now = 0;
        let mut locks = Vec::new();
        for _ in 0..10 {
            s = p.record_failure(&s, now);
            locks.push(p.retry_after_secs(&s, now));
            // Fail again one second after each lock ends.
            now = s.locked_until_ms + SEC;
        }
        assert_eq!(locks, [30, 60, 120, 240, 480, 960, 1_920, 3_600, 3_600, 3_600]);
    }

    #[test]
    fn a_success_resets_everything() {
        let p = LockoutPolicy::default();
        let s = fail_at(&p, &[0, 0, 0, 0, 0, 40 * SEC]);
        let s = p.record_success(&s);
        assert_eq!(s, LockoutState::default());
        assert_eq!(p.locked_for_ms(&s, 40 * SEC), 0);
        let s = fail_at(&p, &[41 * SEC, 42 * SEC, 43 * SEC, 44 * SEC]);
        assert_eq!(p.locked_for_ms(&s, 44 * SEC), 0, "counting starts again from zero");
    }

    #[test]
    fn failures_older_than_the_window_do_not_count() {
        let p = LockoutPolicy::default();
        let s = fail_at(&p, &[0, SEC, 2 * SEC, 3 * SEC, 15 * MIN]);
        assert_eq!(p.locked_for_ms(&s, 15 * MIN), 0, "the failure at 0 is 15 minutes old");
        assert_eq!(s.failures, [SEC, 2 * SEC, 3 * SEC, 15 * MIN]);
        // The window slides: 5 failures within 15 minutes, whenever they started.
        let s = p.record_failure(&s, 15 * MIN + 1);
        assert_eq!(p.retry_after_secs(&s, 15 * MIN + 1), 30);
    }

    #[test]
    fn the_escalation_is_forgotten_fifteen_minutes_after_the_lock_ends() {
        let p = LockoutPolicy::default();
        let s = fail_at(&p, &[0, 0, 0, 0, 0]);
        let still = p.record_failure(&s, 30 * SEC + 15 * MIN - 1);
        assert_eq!(p.retry_after_secs(&still, 30 * SEC + 15 * MIN - 1), 60);
        let fresh = p.record_failure(&s, 30 * SEC + 15 * MIN);
        assert_eq!(p.locked_for_ms(&fresh, 30 * SEC + 15 * MIN), 0);
        assert_eq!((fresh.lock_count, fresh.failures.len()), (0, 1));
    }

    #[test]
    fn the_state_stays_bounded() {
        let p = LockoutPolicy { max_failures: 1_000_000, ..LockoutPolicy::default() };
        let times: Vec<u64> = (0..500).collect();
        let s = fail_at(&p, &times);
        assert_eq!(s.failures.len(), MAX_TRACKED_FAILURES);
        assert_eq!(s.failures.last(), Some(&499));
        assert!(p.locked_for_ms(&s, 499) > 0, "the cap also lowers the threshold");

        let default = LockoutPolicy::default();
        let s = fail_at(&default, &times);
        assert!(s.failures.len() <= 5);
        // A stored state that is too long is trimmed on the next failure.
        let long = LockoutState { failures: vec![0; 10_000], ..LockoutState::default() };
        assert_eq!(default.record_failure(&long, 1).failures.len(), 5);
    }

    #[test]
    fn zero_and_extreme_policies_do_not_overflow() {
        let p = LockoutPolicy {
            max_failures: 0,
            window_ms: u64::MAX,
            base_lock_ms: u64::MAX,
            max_lock_ms: u64::MAX,
        };
        let s = p.record_failure(&LockoutState::default(), u64::MAX);
        assert_eq!(s.locked_until_ms, u64::MAX);
        let s = p.record_failure(&s, u64::MAX);
        assert_eq!((s.lock_count, s.locked_until_ms), (1, u64::MAX));
        let s = LockoutState { lock_count: u32::MAX, ..s };
        assert_eq!(p.record_failure(&s, 0).lock_count, u32::MAX);
        assert_eq!(p.retry_after_secs(&s, 0), u64::MAX.div_ceil(1_000));

        let instant = LockoutPolicy { window_ms: 0, ..LockoutPolicy::default() };
        let s = fail_at(&instant, &[0, 0, 0, 0, 0]);
        assert_eq!(instant.locked_for_ms(&s, 0), 0, "a zero window never counts past failures");
    }

    fn reservation(id: &str, expires_at_ms: u64) -> Reservation {
        Reservation { id: id.to_string(), expires_at_ms }
    }

    /// Reserves `n` attempts at `now`, each expiring `ttl` later; the ids are `r0`, `r1`…
    fn reserve_n(p: &LockoutPolicy, state: &LockoutState, n: usize, now: u64, ttl: u64) -> LockoutState {
        (0..n)
            .fold(state.clone(), |s, i| p.reserve(&s, reservation(&format!("r{i}"), now + ttl), now).unwrap())
    }

    #[test]
    fn no_more_attempts_are_in_flight_than_failures_are_left_before_a_lock() {
        let p = LockoutPolicy::default();
        let s = reserve_n(&p, &LockoutState::default(), 5, 0, MIN);
        assert_eq!(s.pending.len(), 5);
        assert_eq!(p.reserve(&s, reservation("r5", MIN), 0), Err(IN_FLIGHT_RETRY_MS));
        // Two failures recorded earlier leave room for three.
        let failed = fail_at(&p, &[0, SEC]);
        let s = reserve_n(&p, &failed, 3, 2 * SEC, MIN);
        assert_eq!(p.reserve(&s, reservation("x", 3 * MIN), 2 * SEC), Err(IN_FLIGHT_RETRY_MS));
        // Settling one frees its slot.
        let (s, found) = p.release(&s, "r1");
        assert!(found);
        assert!(p.reserve(&s, reservation("x", 3 * MIN), 2 * SEC).is_ok());
        assert_eq!(p.release(&s, "nope"), (s.clone(), false));
    }

    #[test]
    fn a_locked_subject_refuses_reservations_until_the_lock_ends() {
        let p = LockoutPolicy::default();
        let locked = fail_at(&p, &[0, 0, 0, 0, 0]);
        assert_eq!(p.attempts_left(&locked, SEC), 0);
        assert_eq!(p.reserve(&locked, reservation("r", MIN), SEC), Err(29 * SEC));
        // After the lock, within the escalation: one attempt at a time.
        assert_eq!(p.attempts_left(&locked, 30 * SEC), 1);
        let s = p.reserve(&locked, reservation("a", 31 * SEC), 30 * SEC).unwrap();
        assert_eq!(p.reserve(&s, reservation("b", 31 * SEC), 30 * SEC), Err(IN_FLIGHT_RETRY_MS));
        // Once the escalation is forgotten, the full threshold again.
        assert_eq!(p.attempts_left(&locked, 30 * SEC + 15 * MIN), 5);
    }

    #[test]
    fn settled_outcomes_keep_the_other_attempts_in_flight() {
        let p = LockoutPolicy::default();
        let s = reserve_n(&p, &LockoutState::default(), 3, 0, MIN);
        let (s, _) = p.release(&s, "r0");
        let s = p.record_failure(&s, SEC);
        assert_eq!((s.failures.len(), s.pending.len()), (1, 2));
        assert_eq!(p.attempts_left(&s, SEC), 4);
        let (s, _) = p.release(&s, "r1");
        let s = p.record_success(&s);
        assert_eq!(s.failures, Vec::<u64>::new());
        assert_eq!(s.pending, vec![reservation("r2", MIN)]);
    }

    #[test]
    fn an_expired_reservation_counts_as_a_failure_at_its_expiry() {
        let p = LockoutPolicy::default();
        let s = reserve_n(&p, &LockoutState::default(), 5, 0, 10 * SEC);
        let live = p.expire_reservations(&s, 10 * SEC - 1);
        assert_eq!(live, s, "nothing expired yet");
        let s = p.expire_reservations(&s, 10 * SEC);
        assert!(s.pending.is_empty());
        assert_eq!(s.failures, [10 * SEC; 5]);
        assert_eq!(p.locked_for_ms(&s, 10 * SEC), 30 * SEC, "five lost reports lock like five failures");
        // Failure times stay ordered when a reservation expired before a later failure.
        let s = p.reserve(&LockoutState::default(), reservation("old", 5 * SEC), 0).unwrap();
        let s = p.record_failure(&s, 8 * SEC);
        let s = p.expire_reservations(&s, 9 * SEC);
        assert_eq!(s.failures, [8 * SEC, 8 * SEC]);
    }

    #[test]
    fn reserving_the_same_id_twice_holds_one_slot() {
        let p = LockoutPolicy { max_failures: 2, ..LockoutPolicy::default() };
        let s = p.reserve(&LockoutState::default(), reservation("a", MIN), 0).unwrap();
        let again = p.reserve(&s, reservation("a", MIN), 0).unwrap();
        assert_eq!(again.pending.len(), 1);
        assert!(p.reserve(&again, reservation("b", MIN), 0).is_ok());
    }

    #[test]
    fn states_without_reservations_keep_their_stored_form() {
        let s = fail_at(&LockoutPolicy::default(), &[7]);
        let json = serde_json::to_string(&s).unwrap();
        assert!(!json.contains("pending"), "{json}");
        let old: LockoutState =
            serde_json::from_str(r#"{"failures":[7],"lockedUntilMs":0,"lockCount":0}"#).unwrap();
        assert_eq!(old, s);
    }

    #[test]
    fn account_keys_hide_the_value_and_separate_secrets_and_kinds() {
        let key = account_key(b"secret", "ip", "192.0.2.7");
        assert_eq!(key.len(), 64);
        assert!(key.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert!(!key.contains("192"));
        assert_eq!(key, account_key(b"secret", "ip", "192.0.2.7"));
        assert_ne!(key, account_key(b"other", "ip", "192.0.2.7"));
        assert_ne!(key, account_key(b"secret", "user", "192.0.2.7"));
        assert_ne!(account_key(b"s", "ab", "c"), account_key(b"s", "a", "bc"));
        let mut prefixed = 2u64.to_be_bytes().to_vec();
        prefixed.extend_from_slice(b"ip192.0.2.7");
        assert_eq!(key, hex(&hmac_sha256(b"secret", &[&prefixed])));
    }
}
