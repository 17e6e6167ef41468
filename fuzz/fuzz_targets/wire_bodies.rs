//! Bodies the filter reads from the control plane (`core/src/wire.rs`,
//! `core/src/revocation/`): rate-limit, lockout and burst answers, token status, feed
//! pages applied to the revocation replica, and the fixed-size records the filter keeps
//! in Envoy shared data (lease slots, fetch schedules). A control plane that is wrong,
//! compromised or impersonated must not be able to crash the filter.
//!
//! Invariants: whatever parses survives a serialise/parse round trip unchanged; a feed
//! page that is refused leaves the replica as it was, and an applied one leaves no
//! expired revocation and the page's cursor; merging a lease answer never loses the
//! units of a live lease; shared-data records decode(encode) to themselves and any
//! other bytes decode to the empty record.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_core::keyfetch::FetchSchedule;
use portcullis_core::ratelimit::{rate_limit_headers, retry_after_secs, LeaseSlot};
use portcullis_core::response::Denial;
use portcullis_core::revocation::{FeedPage, RevocationReplica, TokenStatus};
use portcullis_core::wire::{BurstReply, LockoutReply, RateLimitReply};
use serde::de::DeserializeOwned;
use serde::Serialize;

const NOW_MS: u64 = 1_700_000_000_000;

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(bytes: &[u8]) -> Option<T> {
    let value: T = serde_json::from_slice(bytes).ok()?;
    let Ok(again) = serde_json::to_vec(&value) else { panic!("{value:?} does not serialise") };
    let Ok(back) = serde_json::from_slice::<T>(&again) else { panic!("{value:?} does not parse back") };
    assert_eq!(back, value, "round trip changed the value");
    Some(value)
}

fn replica() -> RevocationReplica {
    let mut r = RevocationReplica::default();
    let page = br#"{"cursor":7,"snapshot":true,"revoked":[{"jti":"a","exp":1700000500}],
        "userMinVersions":[{"sub":"alice","minVersion":3}],
        "global":{"minVersion":2,"rotatedAt":1699999000,"graceSeconds":600},"keySetVersion":4}"#;
    let applied = r.apply_json(page, NOW_MS / 1000);
    assert_eq!(applied, Ok(false));
    r
}

fuzz_target!(|data: &[u8]| {
    let now_s = NOW_MS / 1000;
    if let Some(reply) = round_trip::<RateLimitReply>(data) {
        let live = LeaseSlot { units: 5, expires_at_ms: NOW_MS + 1_000, ..LeaseSlot::default() };
        for result in &reply.results {
            for slot in [LeaseSlot::default(), live] {
                let merged = slot.granted(result, NOW_MS);
                let live_units = if NOW_MS < slot.expires_at_ms { slot.units } else { 0 };
                assert!(merged.units >= live_units, "merging an answer lost a live lease's units");
                assert_eq!(LeaseSlot::decode(&merged.encode()), merged);
                let _ = merged.spend(1, NOW_MS);
                let _ = merged.visible_remaining(NOW_MS);
            }
            let h = rate_limit_headers(10, result.remaining, result.reset_after_ms.div_ceil(1000), "10;w=1");
            assert!(h.iter().all(|(_, v)| portcullis_fuzz::header_safe(v)));
            assert!(retry_after_secs(result.retry_after_ms) >= 1);
        }
    }
    if let Some(reply) = round_trip::<LockoutReply>(data) {
        let retry_ms = reply.retry_after_ms.max(reply.locked_for_ms);
        let _ = Denial::LockedOut { retry_after_secs: retry_ms.div_ceil(1000) }.render("api");
    }
    let _ = round_trip::<BurstReply>(data);
    if let Some(status) = round_trip::<TokenStatus>(data) {
        let versions = status.versions(Some("alice"));
        let _ = versions.accepts(Some("alice"), 3, now_s);
    }
    let _ = round_trip::<FeedPage>(data);

    for mut r in [RevocationReplica::default(), replica()] {
        let before = r.clone();
        match r.apply_json(data, now_s) {
            Err(e) => {
                assert_eq!(r, before, "a refused page changed the replica");
                assert!(!e.to_string().is_empty());
            }
            Ok(_) => {
                let Ok(page) = serde_json::from_slice::<FeedPage>(data) else {
                    panic!("applied a page that does not parse")
                };
                assert_eq!(r.cursor, page.cursor);
                assert!(r.revoked.values().all(|exp| *exp > now_s), "an expired revocation was kept");
                assert!(r.key_set_version >= page.key_set_version);
            }
        }
    }
    // The replica as another worker stored it in shared data.
    if let Ok(r) = serde_json::from_slice::<RevocationReplica>(data) {
        let _ = r.is_revoked("a", now_s);
    }

    let slot = LeaseSlot::decode(data);
    let schedule = FetchSchedule::decode(data);
    if data.len() == 40 {
        assert_eq!(slot.encode().as_slice(), data);
    } else {
        assert_eq!(slot, LeaseSlot::default());
    }
    if data.len() == schedule.encode().len() {
        assert_eq!(schedule.encode().as_slice(), data);
    } else {
        assert_eq!(schedule, FetchSchedule::default());
    }
});
