//! JSON bodies exchanged between the filter and the control plane's `/v1` API for rate
//! limits, account lockout and burst reports. Both sides use these types, so a field
//! renamed here is renamed on the wire for both.
//!
//! The control plane holds no per-limit configuration: the filter sends each limit's
//! parameters with every ask, and counters are keyed by [`counter_key`], which hashes
//! the limit's definition in, so a changed limit starts a fresh counter instead of
//! reinterpreting an old one.
//!
//! Each check owns its bodies ([`crate::ratelimit::wire`], [`crate::lockout::wire`],
//! [`crate::burst::wire`]); this module gathers them, with the bounds they share.

pub use crate::burst::wire::{BlockedIp, BurstEntry, BurstReply, BurstReport, BURST_REPORT_PATH};
pub use crate::lockout::wire::{
    LockoutCheck, LockoutReply, LockoutReport, LockoutSubject, LoginOutcome, SubjectKind, SubjectLock,
    LOCKOUT_CHECK_PATH, LOCKOUT_REPORT_PATH,
};
pub use crate::ratelimit::wire::{
    counter_key, valid_counter_key, RateLimitAsk, RateLimitBatch, RateLimitOp, RateLimitReply,
    RateLimitResult, MAX_COUNTER_KEY_LEN, RATE_LIMIT_PATH,
};

/// Most asks in one [`RateLimitBatch`], subjects in one lockout call, entries in one
/// burst report. The control plane refuses bigger batches (400).
pub const MAX_BATCH: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lockout::LockoutPolicy;
    use crate::ratelimit::Unit;
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
