//! The limiter's arithmetic, and leases spent by several holders.

use super::*;
use crate::ratelimit::{LeaseSlot, SlotSpend};
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

const MIN: u64 = 60_000;

/// Runs `n` unit requests at `now_ms`, returning the state and the last decision.
fn burst(g: &Gcra, mut state: GcraState, now_ms: u64, n: u64) -> (GcraState, Vec<GcraDecision>) {
    let mut out = Vec::new();
    for _ in 0..n {
        let d = g.check(state, now_ms, 1);
        state = d.new_state;
        out.push(d);
    }
    (state, out)
}

#[test]
fn units_serialize_in_lowercase_and_know_their_period() {
    assert_eq!(serde_json::to_string(&Unit::Minute).unwrap(), "\"minute\"");
    assert_eq!(serde_json::from_str::<Unit>("\"day\"").unwrap(), Unit::Day);
    assert!(serde_json::from_str::<Unit>("\"Minute\"").is_err());
    let periods: Vec<u64> = [Unit::Second, Unit::Minute, Unit::Hour, Unit::Day].map(Unit::period_ms).into();
    assert_eq!(periods, [1_000, 60_000, 3_600_000, 86_400_000]);
}

#[test]
fn ten_per_minute_passes_ten_back_to_back_and_refuses_the_eleventh_for_six_seconds() {
    let g = Gcra::new(10, Unit::Minute);
    let t = 1_000_000;
    let (state, ds) = burst(&g, GcraState::default(), t, 10);
    assert!(ds.iter().all(|d| d.allowed && d.retry_after_ms == 0));
    let remaining: Vec<u64> = ds.iter().map(|d| d.remaining).collect();
    assert_eq!(remaining, [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]);
    assert_eq!(ds[0].reset_after_ms, 6_000);
    assert_eq!(ds[9].reset_after_ms, 60_000);

    let eleventh = g.check(state, t, 1);
    assert!(!eleventh.allowed);
    assert_eq!(eleventh.retry_after_ms, 6_000);
    assert_eq!(eleventh.remaining, 0);
    assert_eq!(eleventh.reset_after_ms, 60_000);
    assert_eq!(eleventh.new_state, state, "a refusal does not change the state");
}

#[test]
fn one_unit_comes_back_every_emission_interval() {
    let g = Gcra::new(10, Unit::Minute);
    let (state, _) = burst(&g, GcraState::default(), 0, 10);
    assert_eq!(g.check(state, 5_999, 1).retry_after_ms, 1);
    let d = g.check(state, 6_000, 1);
    assert!(d.allowed);
    assert_eq!(d.remaining, 0);
    let again = g.check(d.new_state, 6_000, 1);
    assert!(!again.allowed);
    assert_eq!(again.retry_after_ms, 6_000);
    // Two intervals later, two units.
    assert_eq!(g.check(d.new_state, 18_000, 0).remaining, 2);
}

#[test]
fn there_is_no_reset_at_a_minute_boundary() {
    let g = Gcra::new(10, Unit::Minute);
    let (state, _) = burst(&g, GcraState::default(), 59_900, 10);
    let d = g.check(state, 60_100, 1);
    assert!(!d.allowed);
    assert_eq!(d.retry_after_ms, 5_800);
}

#[test]
fn a_full_bucket_does_not_save_up_idle_time() {
    let g = Gcra::new(10, Unit::Minute);
    let (state, _) = burst(&g, GcraState::default(), 0, 10);
    assert_eq!(g.check(state, MIN, 0).remaining, 10);
    let (_, ds) = burst(&g, state, 10 * MIN, 11);
    assert_eq!(ds.iter().filter(|d| d.allowed).count(), 10);
}

#[test]
fn a_full_bucket_then_steady_traffic_passes_at_most_twice_the_limit_less_one_per_period() {
    let g = Gcra::new(10, Unit::Minute);
    let mut state = GcraState::default();
    let mut admitted = 0;
    // Offer one request every 100 ms through [0, 60 s).
    for now in (0..MIN).step_by(100) {
        let d = g.check(state, now, 1);
        if d.allowed {
            admitted += 1;
            state = d.new_state;
        }
    }
    assert_eq!(admitted, 19);
}

#[test]
fn a_request_costing_several_units_waits_until_all_of_them_are_back() {
    let g = Gcra::new(10, Unit::Minute);
    let (state, _) = burst(&g, GcraState::default(), 0, 8);
    let d = g.check(state, 0, 3);
    assert!(!d.allowed);
    assert_eq!(d.remaining, 2);
    assert_eq!(d.retry_after_ms, 6_000);
    assert!(g.check(state, 6_000, 3).allowed);
}

#[test]
fn a_cost_above_the_limit_never_passes_and_a_zero_limit_refuses_everything() {
    let g = Gcra::new(10, Unit::Minute);
    let d = g.check(GcraState::default(), 0, 11);
    assert!(!d.allowed);
    assert_eq!(d.retry_after_ms, u64::MAX);
    assert_eq!(d.remaining, 10);

    let zero = Gcra::new(0, Unit::Second);
    let d = zero.check(GcraState::default(), 0, 1);
    assert!(!d.allowed);
    assert_eq!(d.remaining, 0);
    assert_eq!(d.retry_after_ms, u64::MAX);
}

#[test]
fn limits_above_a_thousand_per_second_are_exact() {
    let g = Gcra::new(5_000, Unit::Second);
    let (state, ds) = burst(&g, GcraState::default(), 0, 5_001);
    assert_eq!(ds.iter().filter(|d| d.allowed).count(), 5_000);
    assert_eq!(ds[5_000].retry_after_ms, 1, "0.2 ms, rounded up");
    assert_eq!(g.check(state, 1_000, 0).remaining, 5_000);
}

#[test]
fn uneven_intervals_round_towards_admitting_less() {
    // 7 per minute: T = 8571.43 ms, rounded up to 8571.429 ms.
    let g = Gcra::new(7, Unit::Minute);
    let (state, ds) = burst(&g, GcraState::default(), 0, 8);
    assert_eq!(ds.iter().filter(|d| d.allowed).count(), 7);
    assert_eq!(ds[7].retry_after_ms, 8_572);
    assert!(!g.check(state, 8_571, 1).allowed);
    assert!(g.check(state, 8_572, 1).allowed);
}

#[test]
fn extreme_inputs_saturate_instead_of_overflowing() {
    for limit in [0, 1, u64::MAX] {
        for unit in [Unit::Second, Unit::Day] {
            let g = Gcra::new(limit, unit);
            for tat in [0, u64::MAX] {
                for now in [0, u64::MAX] {
                    for cost in [0, 1, u64::MAX] {
                        let d = g.check(GcraState { tat_us: tat }, now, cost);
                        assert!(d.remaining <= limit);
                        let _ = g.refund(GcraState { tat_us: tat }, now, cost);
                        let _ = g.grant_lease(GcraState { tat_us: tat }, now, cost, cost, now);
                    }
                }
            }
        }
    }
}

#[test]
fn lease_size_is_large_far_from_the_limit_and_shrinks_to_one_near_it() {
    assert_eq!(lease_size(1_000, 1_000, 50, 4), 50);
    assert_eq!(lease_size(1_000, 80, 50, 4), 10);
    assert_eq!(lease_size(1_000, 7, 50, 4), 1);
    assert_eq!(lease_size(1_000, 1, 50, 4), 1);
    assert_eq!(lease_size(1_000, 0, 50, 4), 0);
    assert_eq!(lease_size(10, 1_000, 50, 0), 5, "remaining is at most the limit; 0 holders count as 1");
    assert_eq!(lease_size(10, 10, 0, 1), 1);
    assert_eq!(lease_size(0, 0, 50, 1), 0);
    assert_eq!(lease_size(u64::MAX, u64::MAX, u64::MAX, u64::MAX), 1);
}

#[test]
fn leases_sized_from_the_same_stale_remaining_all_fit() {
    let g = Gcra::new(100, Unit::Minute);
    let (state, _) = burst(&g, GcraState::default(), 0, 37);
    let stale = g.check(state, 0, 0).remaining;
    let mut state = state;
    for _ in 0..4 {
        let d = g.check(state, 0, lease_size(100, stale, 50, 4));
        assert!(d.allowed);
        state = d.new_state;
    }
}

#[test]
fn holders_spending_leases_never_admit_more_than_the_limit() {
    let g = Gcra::new(100, Unit::Minute);
    let mut state = GcraState::default();
    let mut slots = [LeaseSlot::default(); 4];
    let mut admitted = 0u64;
    let mut grants = 0;
    // Every holder wants far more than the limit; all at one instant.
    for round in 0..1_000 {
        let holder = &mut slots[round % 4];
        if let SlotSpend::Spent(next) = holder.spend(1, 0) {
            *holder = next;
            admitted += 1;
            continue;
        }
        let grant = g.grant_lease(state, 0, 20, 4, 10_000);
        state = grant.decision.new_state;
        match grant.lease {
            Some(lease) => {
                assert!(lease.units <= 20);
                grants += 1;
                *holder = slot_of(lease);
            }
            None => assert!(grant.decision.retry_after_ms > 0),
        }
    }
    assert_eq!(admitted, 100, "the whole budget, and not one unit more");
    assert!(grants > 4, "leases shrink near the limit, so more of them are granted");
    assert_eq!(g.check(state, 0, 0).remaining, 0);
}

/// A holder's slot holding nothing but `lease`.
fn slot_of(lease: Lease) -> LeaseSlot {
    LeaseSlot { units: lease.units, expires_at_ms: lease.expires_at_ms, ..LeaseSlot::default() }
}

#[test]
fn released_units_are_credited_back_and_expired_ones_are_forfeited() {
    let g = Gcra::new(10, Unit::Minute);
    let grant = g.grant_lease(GcraState::default(), 0, 4, 1, 5_000);
    let state = grant.decision.new_state;
    let slot = slot_of(grant.lease.unwrap());
    assert_eq!(slot.units, 4);
    let SlotSpend::Spent(slot) = slot.spend(1, 100) else { panic!("a live lease spends") };
    assert_eq!(g.check(state, 100, 0).remaining, 6);

    let units = slot.live_units(100);
    assert_eq!(units, 3);
    let released = LeaseSlot { units: 0, ..slot };
    assert_eq!(released.spend(1, 100), SlotSpend::NeedLease, "a released lease is empty");
    let refunded = g.refund(state, 100, units);
    assert_eq!(g.check(refunded, 100, 0).remaining, 9);

    assert_eq!(slot.live_units(5_000), 0, "expired: nothing to give back");
    // The bucket never fills beyond the limit.
    assert_eq!(g.check(g.refund(refunded, 100, 1_000), 100, 0).remaining, 10);
}

#[test]
fn a_lease_slot_spends_only_whole_costs_before_it_expires() {
    let slot = LeaseSlot { units: 3, expires_at_ms: 1_000, ..LeaseSlot::default() };
    assert_eq!(slot.spend(4, 0), SlotSpend::NeedLease, "a failed spend takes nothing");
    let SlotSpend::Spent(slot) = slot.spend(2, 0) else { panic!("two of three units") };
    assert_eq!(slot.units, 1);
    assert_eq!(slot.spend(1, 1_000), SlotSpend::NeedLease, "expired");
    let SlotSpend::Spent(slot) = slot.spend(1, 999) else { panic!("the last unit") };
    assert_eq!(slot.spend(1, 999), SlotSpend::NeedLease);
}

#[test]
fn nothing_left_means_no_lease_and_a_retry_time() {
    let g = Gcra::new(10, Unit::Minute);
    let (state, _) = burst(&g, GcraState::default(), 0, 10);
    let grant = g.grant_lease(state, 1_000, 5, 2, 10_000);
    assert_eq!(grant.lease, None);
    assert!(!grant.decision.allowed);
    assert_eq!(grant.decision.new_state, state);
    assert_eq!(grant.decision.retry_after_ms, 5_000);
}

#[test]
fn lease_slot_encoding_round_trips_and_garbage_decodes_to_empty() {
    let slot = LeaseSlot { units: 7, expires_at_ms: u64::MAX, reset_at_ms: 1, ..LeaseSlot::default() };
    assert_eq!(LeaseSlot::decode(&slot.encode()), slot);
    assert_eq!(LeaseSlot::decode(b"short"), LeaseSlot::default());
    assert_eq!(LeaseSlot::decode(&[0xff; 41]), LeaseSlot::default());
}

#[cfg(not(target_arch = "wasm32"))]
mod properties {
    use super::super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any run of requests, however spaced, admits at most `limit + ⌊d / T⌋`
        /// units over the `d` milliseconds it spans.
        #[test]
        fn admitted_units_never_exceed_the_burst_plus_the_refill(
            limit in 1u64..200,
            steps in proptest::collection::vec((0u64..5_000, 0u64..5), 1..200),
        ) {
            let g = Gcra::new(limit, Unit::Minute);
            let interval_us = Unit::Minute.period_ms() * 1_000 / limit;
            let start = 1_000_000u64;
            let (mut now, mut state, mut admitted) = (start, GcraState::default(), 0u64);
            for (dt, cost) in steps {
                now += dt;
                let d = g.check(state, now, cost);
                if d.allowed {
                    admitted += cost;
                    state = d.new_state;
                } else {
                    prop_assert_eq!(d.new_state, state);
                    prop_assert!(d.retry_after_ms > 0);
                    if cost <= limit {
                        // Waiting as told is enough.
                        prop_assert!(g.check(state, now + d.retry_after_ms, cost).allowed);
                    }
                }
            }
            prop_assert!(admitted <= limit + (now - start) * 1_000 / interval_us);
        }
    }
}
