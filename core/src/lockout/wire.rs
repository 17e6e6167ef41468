//! The lockout calls' bodies (`POST /v1/lockout/check`, `/v1/lockout/report`): the
//! subjects of a login attempt, its outcome, and each subject's lock.

use serde::{Deserialize, Serialize};

use super::policy::LockoutPolicy;

/// `POST /v1/lockout/check`.
pub const LOCKOUT_CHECK_PATH: &str = "/v1/lockout/check";
/// `POST /v1/lockout/report`.
pub const LOCKOUT_REPORT_PATH: &str = "/v1/lockout/report";

/// What a lockout subject is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SubjectKind {
    /// An account identifier (username, email), compared case-insensitively.
    Account,
    /// A client address.
    Ip,
}

impl SubjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SubjectKind::Account => "account",
            SubjectKind::Ip => "ip",
        }
    }
}

/// One account or address whose failed logins are counted. The control plane stores
/// only a keyed hash of `value`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LockoutSubject {
    pub kind: SubjectKind,
    pub value: String,
}

/// `POST /v1/lockout/check`: are any of these locked? With `reservation_ttl_ms`, the
/// check also reserves the attempt on every subject, atomically against concurrent
/// checks (see [`crate::lockout`]): the answer then carries a reservation id, or none
/// when the attempt is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LockoutCheck {
    #[serde(default)]
    pub policy: LockoutPolicy,
    pub subjects: Vec<LockoutSubject>,
    /// Reserve the attempt for this long (ms). Absent: only read the locks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation_ttl_ms: Option<u64>,
}

/// How a login attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoginOutcome {
    /// Counts towards a lock (and doubles a lock in force).
    Failure,
    /// Forgets the account's failures and lock. Address subjects are left as they are:
    /// one valid account must not wash an address that is trying many others.
    Success,
    /// The attempt ended without a verdict (the upstream answered neither a failure nor
    /// a success, or the attempt never reached it): its reservation is freed and
    /// nothing is counted.
    Abandoned,
}

impl LoginOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            LoginOutcome::Failure => "failure",
            LoginOutcome::Success => "success",
            LoginOutcome::Abandoned => "abandoned",
        }
    }
}

/// `POST /v1/lockout/report`: the outcome of a login attempt that reached the upstream
/// (or, for [`LoginOutcome::Abandoned`], of one that was reserved and ended without
/// a verdict).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LockoutReport {
    #[serde(default)]
    pub policy: LockoutPolicy,
    pub outcome: LoginOutcome,
    pub subjects: Vec<LockoutSubject>,
    /// The reservation the check answered, settled by this report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation: Option<String>,
}

/// The answer to a check or a report: each subject's lock after it, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LockoutReply {
    /// The longest of the subjects' locks (0: none locked).
    pub locked_for_ms: u64,
    pub subjects: Vec<SubjectLock>,
    /// A check that asked for a reservation and got it: its id, for the report. Absent
    /// when the attempt is refused (or no reservation was asked for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reservation: Option<String>,
    /// A refused reservation: when to try again (ms; at least `locked_for_ms`). 0
    /// otherwise.
    #[serde(default)]
    pub retry_after_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubjectLock {
    pub kind: SubjectKind,
    pub locked_for_ms: u64,
    /// Failures counted in the current window.
    pub failures: u32,
    /// Attempts in flight (reserved, not settled yet).
    #[serde(default)]
    pub in_flight: u32,
}
