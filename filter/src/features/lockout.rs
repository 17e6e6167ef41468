//! Account lockout in the filter: the locks this Envoy learned from the control plane
//! (in shared data, keyed by a hash of the subject, never its value), the account of a
//! login attempt, and the bodies of lock checks and outcome reports.
//!
//! A login attempt goes upstream only with a reservation from the control plane (the
//! lock check reserves one of the attempts each subject has left, atomically, so
//! parallel attempts cannot all pass the check), unless the route's `onError: allow`
//! lets it through while the control plane cannot answer. Every reservation is settled
//! by a report: the outcome once the upstream answered, or `abandoned` when the
//! attempt never went upstream (its answer came after the request was gone) or the
//! upstream gave no verdict. A report that never arrives lets the reservation expire
//! in the control plane, where it counts as a failure.

use std::cell::RefCell;
use std::collections::HashMap;

use portcullis_core::codec::{hex, read_u64s, write_u64s};
use portcullis_core::control_plane::FailureMode;
use portcullis_core::lockout::Lockout;
use portcullis_core::response::Denial;
use portcullis_core::wire::{
    LockoutCheck, LockoutReply, LockoutReport, LockoutSubject, LoginOutcome, SubjectKind,
};
use portcullis_core::RequestParts;
use sha2::{Digest, Sha256};

use super::Env;
use crate::metrics::Metrics;

/// How long a lock learned from the control plane is trusted without asking it again;
/// after that a locked attempt is checked again, so that an admin's clear reaches this
/// Envoy within this time (the local lock still answers if the control plane cannot).
const LOCAL_LOCK_TRUST_MS: u64 = 1_000;

/// A login attempt on a lockout route.
#[derive(Debug, Clone)]
pub struct LoginAttempt {
    pub subjects: Vec<LockoutSubject>,
    /// The control plane reserved the attempt (or its failure mode let it through).
    pub checked: bool,
    /// The control plane's reservation, settled by the report.
    pub reservation: Option<String>,
}

impl LoginAttempt {
    pub fn new(subjects: Vec<LockoutSubject>) -> Self {
        LoginAttempt { subjects, checked: false, reservation: None }
    }
}

/// Per-worker lockout state: login attempts that reached the upstream, per request
/// context, until their outcome is reported.
#[derive(Default)]
pub struct LockoutState {
    logins: RefCell<HashMap<u32, LoginAttempt>>,
}

impl LockoutState {
    pub fn went_upstream(&self, ctx: u32, login: LoginAttempt) {
        self.logins.borrow_mut().insert(ctx, login);
    }

    pub fn attempt(&self, ctx: u32) -> Option<LoginAttempt> {
        self.logins.borrow().get(&ctx).cloned()
    }

    pub fn take(&self, ctx: u32) -> Option<LoginAttempt> {
        self.logins.try_borrow_mut().ok().and_then(|mut l| l.remove(&ctx))
    }
}

/// Shared-data key of a lockout subject's locally known lock: a hash, never the value.
fn lock_key(subject: &LockoutSubject) -> String {
    let mut h = Sha256::new();
    h.update(subject.kind.as_str().as_bytes());
    h.update([0u8]);
    let value = match subject.kind {
        SubjectKind::Account => subject.value.to_lowercase(),
        SubjectKind::Ip => subject.value.clone(),
    };
    h.update(value.as_bytes());
    let digest = h.finalize();
    format!("portcullis.v1.lock.{}", hex(digest.get(..16).unwrap_or_default()))
}

/// A locally known lock: (locked until, learned at), both ms; malformed reads as none.
fn decode_lock(bytes: &[u8]) -> (u64, u64) {
    read_u64s::<2>(bytes).map(|[until, learned_at]| (until, learned_at)).unwrap_or((0, 0))
}

/// The longest lock this Envoy knows of among the subjects (ms left), and whether one
/// of the locks was learned within [`LOCAL_LOCK_TRUST_MS`].
pub fn locally_locked(env: Env<'_>, subjects: &[LockoutSubject]) -> Option<(u64, bool)> {
    let now = env.now_ms;
    subjects
        .iter()
        .filter_map(|s| {
            let (data, _) = env.host.shared_data(&lock_key(s));
            let (until, learned_at) = data.map(|d| decode_lock(&d)).unwrap_or((0, 0));
            (until > now).then(|| (until - now, now.saturating_sub(learned_at) < LOCAL_LOCK_TRUST_MS))
        })
        .reduce(|(a, fa), (b, fb)| (a.max(b), fa || fb))
}

/// Stores the locks the control plane named, for every worker.
pub fn remember_locks(env: Env<'_>, subjects: &[LockoutSubject], reply: &LockoutReply) {
    let now = env.now_ms;
    for (subject, lock) in subjects.iter().zip(&reply.subjects) {
        let until = if lock.locked_for_ms > 0 { now.saturating_add(lock.locked_for_ms) } else { 0 };
        let mut value = [0u8; 16];
        write_u64s(&mut value, &[until, now]);
        let _ = env.host.set_shared_data(&lock_key(subject), &value, None);
    }
}

/// The control plane cannot answer: `Some(denial)` when the route's failure mode
/// refuses the attempt.
pub fn unavailable(env: Env<'_>, lockout: &Lockout) -> Option<Denial> {
    match lockout.on_error {
        FailureMode::Allow => {
            env.metrics.count("portcullis.lockout.unavailable_allowed");
            None
        }
        FailureMode::Deny => {
            env.metrics.count("portcullis.lockout.unavailable_denied");
            Some(Denial::LockoutUnavailable)
        }
    }
}

/// The account of a login attempt on a lockout route, read from its headers and `body`
/// (`None`: larger than `maxBodyBytes`). `Err`: the attempt is refused with this denial.
pub fn login_account(
    metrics: &Metrics,
    lockout: &Lockout,
    request: &RequestParts,
    body: Option<&[u8]>,
) -> Result<Option<String>, Denial> {
    match lockout.account_of(request, body) {
        Ok(Some(account)) => Ok(Some(account)),
        Ok(None) => {
            metrics.count("portcullis.lockout.no_account");
            Ok(None)
        }
        Err(e) => {
            metrics.count(&format!("portcullis.lockout.refused.{}", e.code()));
            Err(Denial::LoginUnreadable(e))
        }
    }
}

/// The body of a lock check reserving an attempt for `subjects`.
pub fn check_body(lockout: &Lockout, subjects: &[LockoutSubject]) -> Vec<u8> {
    let check = LockoutCheck {
        policy: lockout.policy,
        subjects: subjects.to_vec(),
        reservation_ttl_ms: Some(lockout.reservation_ttl_ms),
    };
    serde_json::to_vec(&check).unwrap_or_default()
}

/// The body of an outcome report.
pub fn report_body(
    lockout: &Lockout,
    outcome: LoginOutcome,
    subjects: Vec<LockoutSubject>,
    reservation: Option<String>,
) -> Vec<u8> {
    let report = LockoutReport { policy: lockout.policy, outcome, subjects, reservation };
    serde_json::to_vec(&report).unwrap_or_default()
}
