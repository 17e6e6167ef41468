//! JSON bodies exchanged between the filter and the control plane's `/v1` API for rate
//! limits, account lockout and burst reports. Both sides use these types, so a field
//! renamed here is renamed on the wire for both.
//!
//! The control plane holds no per-limit configuration: the filter sends each limit's
//! parameters with every ask, and counters are keyed by [`counter_key`], which hashes
//! the limit's definition in, so a changed limit starts a fresh counter instead of
//! reinterpreting an old one.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::lockout::LockoutPolicy;
use crate::ratelimit::Unit;

/// `POST /v1/ratelimit`: route of the batched counter operations.
pub const RATE_LIMIT_PATH: &str = "/v1/ratelimit";
/// `POST /v1/lockout/check`.
pub const LOCKOUT_CHECK_PATH: &str = "/v1/lockout/check";
/// `POST /v1/lockout/report`.
pub const LOCKOUT_REPORT_PATH: &str = "/v1/lockout/report";
/// `POST /v1/burst/report`.
pub const BURST_REPORT_PATH: &str = "/v1/burst/report";

/// Most asks in one [`RateLimitBatch`], subjects in one lockout call, entries in one
/// burst report. The control plane refuses bigger batches (400).
pub const MAX_BATCH: usize = 256;
/// Longest counter key accepted.
pub const MAX_COUNTER_KEY_LEN: usize = 128;

/// Several counter operations in one call.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitBatch {
    pub asks: Vec<RateLimitAsk>,
}

/// One operation on one counter. (Unknown fields are ignored here: serde cannot deny
/// them next to a flattened field.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitAsk {
    /// From [`counter_key`]: `[A-Za-z0-9._:-]`, at most [`MAX_COUNTER_KEY_LEN`] bytes.
    pub key: String,
    /// Units per `unit`, ≥ 1.
    pub limit: u64,
    pub unit: Unit,
    #[serde(flatten)]
    pub op: RateLimitOp,
}

/// What to do with the counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum RateLimitOp {
    /// Grant a lease sized by `ratelimit::lease_size` (`Gcra::grant_lease`), first
    /// crediting back `release` unspent units of this holder's previous lease.
    Lease {
        #[serde(default)]
        release: u64,
        max_lease: u64,
        /// How many holders (Envoy workers × Envoys) share the counter, as the filter
        /// estimates it; sizes the lease. 0 counts as 1.
        #[serde(default)]
        holders: u64,
        ttl_ms: u64,
    },
    /// Decide one request of `cost` units now (`Gcra::check`): strict mode.
    Check { cost: u64 },
    /// Credit back `units` unspent units of a lease given up (`Gcra::refund`).
    Release { units: u64 },
}

/// The answers, in the order of the asks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitReply {
    pub results: Vec<RateLimitResult>,
}

/// The counter after one operation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RateLimitResult {
    /// `lease`: units granted (0: refused). `check`: the cost when allowed, else 0.
    /// `release`: 0.
    pub granted: u64,
    /// When a granted lease stops being spendable (control-plane clock, ms).
    pub expires_at_ms: u64,
    /// Units that would pass right now after this operation.
    pub remaining: u64,
    /// Until the counter is full again.
    pub reset_after_ms: u64,
    /// When refused: until the asked units are available (`u64::MAX`: never). 0 otherwise.
    pub retry_after_ms: u64,
}

/// The key a limit's counter is stored under: lowercase hex of SHA-256 over the limit's
/// name, limit and unit and the request's descriptor values, each length-prefixed, cut
/// to 32 bytes (64 hex digits). Raw descriptor values (addresses, subjects) never reach
/// the store.
pub fn counter_key(limit_name: &str, limit: u64, unit: Unit, values: &[&str]) -> String {
    let mut h = Sha256::new();
    let mut part = |bytes: &[u8]| {
        h.update(u64::try_from(bytes.len()).unwrap_or(u64::MAX).to_be_bytes());
        h.update(bytes);
    };
    part(b"portcullis.ratelimit.v1");
    part(limit_name.as_bytes());
    part(&limit.to_be_bytes());
    part(&unit.period_ms().to_be_bytes());
    for v in values {
        part(v.as_bytes());
    }
    hex(&h.finalize())
}

/// Whether `key` is acceptable as a counter key.
pub fn valid_counter_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_COUNTER_KEY_LEN
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

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

/// `POST /v1/burst/report`: requests per client address since the last report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BurstReport {
    pub entries: Vec<BurstEntry>,
}

/// One address's requests in one report interval, with its latest request's details
/// (for the alert).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BurstEntry {
    pub ip: String,
    pub count: u64,
    #[serde(default)]
    pub route: String,
    #[serde(default)]
    pub method: String,
    #[serde(default)]
    pub user_agent: String,
}

/// The addresses of the report that are blocked, and for how long.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BurstReply {
    pub blocked: Vec<BlockedIp>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockedIp {
    pub ip: String,
    pub blocked_for_ms: u64,
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn asks_round_trip_with_the_op_tag_inline() {
        let json = r#"{"asks":[
            {"key":"k1","limit":10,"unit":"minute","op":"lease","release":2,"maxLease":5,"holders":4,"ttlMs":2000},
            {"key":"k2","limit":3,"unit":"second","op":"check","cost":1},
            {"key":"k3","limit":3,"unit":"hour","op":"release","units":7}]}"#;
        let batch: RateLimitBatch = serde_json::from_str(json).unwrap();
        assert_eq!(
            batch.asks[0].op,
            RateLimitOp::Lease { release: 2, max_lease: 5, holders: 4, ttl_ms: 2000 }
        );
        assert_eq!(batch.asks[1].op, RateLimitOp::Check { cost: 1 });
        assert_eq!(batch.asks[2].op, RateLimitOp::Release { units: 7 });
        let back: RateLimitBatch = serde_json::from_str(&serde_json::to_string(&batch).unwrap()).unwrap();
        assert_eq!(back, batch);
        assert!(serde_json::from_str::<RateLimitBatch>(
            r#"{"asks":[{"key":"k","limit":1,"unit":"minute","op":"steal"}]}"#
        )
        .is_err());
    }

    #[test]
    fn counter_keys_separate_limits_units_and_values() {
        let a = counter_key("per-sub", 10, Unit::Minute, &["alice"]);
        assert_eq!(a.len(), 64);
        assert!(valid_counter_key(&a));
        assert_eq!(a, counter_key("per-sub", 10, Unit::Minute, &["alice"]));
        assert_ne!(a, counter_key("per-sub", 11, Unit::Minute, &["alice"]));
        assert_ne!(a, counter_key("per-sub", 10, Unit::Hour, &["alice"]));
        assert_ne!(a, counter_key("per-sub", 10, Unit::Minute, &["bob"]));
        assert_ne!(
            counter_key("l", 1, Unit::Second, &["ab", "c"]),
            counter_key("l", 1, Unit::Second, &["a", "bc"])
        );
    }

    #[test]
    fn counter_key_validation_rejects_odd_bytes_and_length() {
        assert!(!valid_counter_key(""));
        assert!(!valid_counter_key("a{b}"));
        assert!(!valid_counter_key("a b"));
        assert!(!valid_counter_key(&"a".repeat(MAX_COUNTER_KEY_LEN + 1)));
        assert!(valid_counter_key("tenant:acme.v1_x-y"));
    }

    #[test]
    fn lockout_bodies_default_the_policy() {
        let c: LockoutCheck = serde_json::from_str(
            r#"{"subjects":[{"kind":"account","value":"Alice"},{"kind":"ip","value":"10.0.0.1"}]}"#,
        )
        .unwrap();
        assert_eq!(c.policy, LockoutPolicy::default());
        assert_eq!(c.subjects[1].kind, SubjectKind::Ip);
        let r: LockoutReport =
            serde_json::from_str(r#"{"outcome":"failure","subjects":[{"kind":"account","value":"a"}]}"#)
                .unwrap();
        assert_eq!(r.outcome, LoginOutcome::Failure);
        assert_eq!((c.reservation_ttl_ms, r.reservation), (None, None), "a plain check reserves nothing");
        let reserving: LockoutCheck =
            serde_json::from_str(r#"{"subjects":[],"reservationTtlMs":60000}"#).unwrap();
        assert_eq!(reserving.reservation_ttl_ms, Some(60_000));
        let settle: LockoutReport =
            serde_json::from_str(r#"{"outcome":"abandoned","subjects":[],"reservation":"ab12"}"#).unwrap();
        assert_eq!((settle.outcome, settle.reservation.as_deref()), (LoginOutcome::Abandoned, Some("ab12")));
        // Replies from a control plane without reservations still parse.
        let reply: LockoutReply = serde_json::from_str(
            r#"{"lockedForMs":0,"subjects":[{"kind":"ip","lockedForMs":0,"failures":1}]}"#,
        )
        .unwrap();
        assert_eq!((reply.reservation, reply.retry_after_ms, reply.subjects[0].in_flight), (None, 0, 0));
    }
}
