//! Account lockout after repeated failed logins: when an account (or a client address)
//! is locked, for how long, and the keys it is tracked under.
//!
//! With the default [`LockoutPolicy`]:
//!
//! - 5 failures within any 15 minutes (a sliding window over the last 5 failure times)
//!   lock for 30 s;
//! - every further failure while locked, or within 15 minutes after the lock ended,
//!   locks again for twice as long, from that failure: 60 s, 120 s, … capped at 1 h;
//! - 15 minutes after the lock ended without a failure, the escalation is forgotten and
//!   counting starts again from zero; a success forgets everything at once.
//!
//! Callers refuse attempts while [`LockoutPolicy::locked_for_ms`] is non-zero without
//! checking the credentials. Whether such a refused attempt is recorded as a failure is
//! the caller's choice: recording it doubles the lock, which punishes clients that
//! ignore `Retry-After` (and lets an attacker keep a victim locked for up to
//! `max_lock_ms` at a time, as any lockout does).
//!
//! # Attempts in flight
//!
//! Checking the lock before an attempt and recording its failure after it leaves a gap:
//! attempts made in parallel would all pass the check. So an attempt first takes a
//! [`Reservation`] ([`LockoutPolicy::reserve`]), which counts against the threshold like
//! a failure until it is settled:
//!
//! - at most [`LockoutPolicy::attempts_left`] attempts may be in flight at once: the
//!   failures still allowed before a lock (`max_failures` minus the recent failures; one
//!   while an escalation is remembered; none while locked). So whatever the
//!   concurrency, failures plus attempts in flight never exceed the threshold;
//! - the outcome settles it: [`LockoutPolicy::release`] removes it, and the caller then
//!   records the failure or success (or nothing, for an attempt that ended without a
//!   verdict);
//! - a reservation never settled (its report was lost) counts as a failure at its expiry
//!   ([`LockoutPolicy::expire_reservations`]): the attempt reached the credentials check
//!   and its outcome is unknown, so it is treated as the worst case, never as a free
//!   attempt. The expiry bounds how long a lost report can hold a slot.
//!
//! State is stored under [`account_key`], a keyed hash, so that the store never holds
//! raw usernames or client addresses.
//!
//! - [`policy`]: the lock arithmetic and the stored state (shared with the control
//!   plane);
//! - [`config`]: the `lockout` section, compiled into a [`Lockout`], and what the filter
//!   asks of it per request;
//! - [`wire`]: the lock check's and the outcome report's bodies.

pub mod config;
pub mod policy;
pub mod wire;

pub(crate) use config::compile_lockout;
pub use config::{login_outcome, Lockout, LockoutConfig, NoAccountAction};
pub use policy::{
    account_key, LockoutPolicy, LockoutState, Reservation, IN_FLIGHT_RETRY_MS, MAX_TRACKED_FAILURES,
};
