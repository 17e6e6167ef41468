//! The lease a holder spends, as kept in Envoy shared data (one slot per counter, read
//! and written by every worker of the Envoy): spending, merging the control plane's
//! answers, and the fixed-size encoding.

use super::wire::RateLimitResult;
use crate::codec::{read_u64s, write_u64s};

/// A holder's view of one counter, kept in Envoy shared data so every worker spends the
/// same lease: the unspent units of the current lease, and what the control plane last
/// said about the counter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeaseSlot {
    /// Unspent units of the lease.
    pub units: u64,
    /// When the lease stops being spendable (ms).
    pub expires_at_ms: u64,
    /// Refused by the control plane: no unit is available before this time (ms).
    pub refused_until_ms: u64,
    /// Units the control plane had left after the last answer (for `RateLimit-Remaining`).
    pub remaining: u64,
    /// When the counter is full again, per the last answer (ms).
    pub reset_at_ms: u64,
    /// One worker is renewing this lease until then (ms): the others neither renew nor
    /// release it meanwhile. Cleared by the grant that replaces the lease.
    pub renewing_until_ms: u64,
}

/// The result of [`LeaseSlot::spend`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotSpend {
    /// One unit spent; the slot to store.
    Spent(LeaseSlot),
    /// Refused until `refused_until_ms`.
    Refused { retry_after_ms: u64 },
    /// No live lease with units: ask the control plane.
    NeedLease,
}

/// The result of [`LeaseSlot::take_slice`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SliceTake {
    /// The request's unit and the worker's slice were taken; the slot to store and the
    /// slice the worker keeps in its own memory (possibly empty).
    Taken { slot: LeaseSlot, slice: LocalSlice },
    /// Refused until `refused_until_ms`.
    Refused { retry_after_ms: u64 },
    /// No live lease with units: ask the control plane.
    NeedLease,
}

/// Most units one worker moves from a shared slot into its own memory at a time.
pub const MAX_SLICE: u64 = 64;

/// Units of a lease one worker took from the shared slot into its own memory, so that
/// its next requests on the counter spend without touching shared data. They were
/// already taken from the shared slot, so no unit is ever spent twice: the lease bound
/// (and with it the limit) holds exactly. What a slice costs is reach, not accuracy:
/// its units serve only this worker (at most [`MAX_SLICE`], and never more than half of
/// what the slot held beyond the request's own unit), and are given back to the slot
/// before the lease expires so that they are released with it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LocalSlice {
    pub units: u64,
    /// The lease's expiry: the slice is not spendable after it.
    pub expires_at_ms: u64,
    /// What the control plane had left, per the slot when the slice was taken.
    pub remaining: u64,
    pub reset_at_ms: u64,
}

impl LocalSlice {
    /// Spends `cost` units if the slice is live and holds them.
    pub fn spend(&mut self, cost: u64, now_ms: u64) -> bool {
        if now_ms < self.expires_at_ms && self.units >= cost {
            self.units -= cost;
            return true;
        }
        false
    }

    pub fn live_units(&self, now_ms: u64) -> u64 {
        if now_ms < self.expires_at_ms {
            self.units
        } else {
            0
        }
    }

    /// `RateLimit-Remaining` as this worker sees it after spending from the slice.
    pub fn visible_remaining(&self, now_ms: u64) -> u64 {
        self.live_units(now_ms).saturating_add(self.remaining)
    }
}

const SLOT_LEN: usize = 48;

impl LeaseSlot {
    pub fn spend(&self, cost: u64, now_ms: u64) -> SlotSpend {
        if now_ms < self.refused_until_ms {
            return SlotSpend::Refused { retry_after_ms: self.refused_until_ms - now_ms };
        }
        if now_ms < self.expires_at_ms && self.units >= cost {
            return SlotSpend::Spent(LeaseSlot { units: self.units - cost, ..*self });
        }
        SlotSpend::NeedLease
    }

    /// Spends `cost` units for the request at hand and moves up to half of the units
    /// left beyond them (at most [`MAX_SLICE`]) into a slice for the taking worker.
    pub fn take_slice(&self, cost: u64, now_ms: u64) -> SliceTake {
        match self.spend(cost, now_ms) {
            SlotSpend::Refused { retry_after_ms } => SliceTake::Refused { retry_after_ms },
            SlotSpend::NeedLease => SliceTake::NeedLease,
            SlotSpend::Spent(after) => {
                let units = (after.units / 2).min(MAX_SLICE);
                let slot = LeaseSlot { units: after.units - units, ..after };
                let slice = LocalSlice {
                    units,
                    expires_at_ms: after.expires_at_ms,
                    remaining: after.remaining,
                    reset_at_ms: after.reset_at_ms,
                };
                SliceTake::Taken { slot, slice }
            }
        }
    }

    /// Gives a worker's slice back to the slot, if it belongs to the slot's live lease
    /// (a lease merged with a newer grant keeps the later expiry, so a slice of it is
    /// still taken back). Returns the slot to store, or `None` when the slice is
    /// forfeited (its lease has expired, or the slot holds no live lease).
    pub fn give_back(&self, slice: &LocalSlice, now_ms: u64) -> Option<LeaseSlot> {
        let units = slice.live_units(now_ms);
        if units == 0 || now_ms >= self.expires_at_ms || slice.expires_at_ms > self.expires_at_ms {
            return None;
        }
        Some(LeaseSlot { units: self.units.saturating_add(units), ..*self })
    }

    /// Merges a control-plane answer to a lease ask received at `now_ms`. Units of a
    /// still-live lease are kept (and live until the new lease's expiry); a refusal
    /// closes the slot until the answer's retry time.
    pub fn granted(&self, result: &RateLimitResult, now_ms: u64) -> LeaseSlot {
        let live = self.live_units(now_ms);
        let reset_at_ms = now_ms.saturating_add(result.reset_after_ms);
        if result.granted == 0 {
            return LeaseSlot {
                units: live,
                expires_at_ms: self.expires_at_ms,
                refused_until_ms: now_ms.saturating_add(result.retry_after_ms.max(1)),
                remaining: result.remaining,
                reset_at_ms,
                renewing_until_ms: 0,
            };
        }
        LeaseSlot {
            units: live.saturating_add(result.granted),
            expires_at_ms: result.expires_at_ms.max(self.expires_at_ms),
            refused_until_ms: 0,
            remaining: result.remaining,
            reset_at_ms,
            renewing_until_ms: 0,
        }
    }

    /// Whether a worker is renewing this lease at `now_ms`.
    pub fn renewing(&self, now_ms: u64) -> bool {
        now_ms < self.renewing_until_ms
    }

    /// The slot claimed for one worker's renewal: until the lease expires, when the
    /// claim dies with it (a renewal that failed leaves requests to ask themselves).
    pub fn claimed_for_renewal(&self) -> LeaseSlot {
        LeaseSlot { renewing_until_ms: self.expires_at_ms, ..*self }
    }

    /// `RateLimit-Remaining` as this holder sees it: its unspent units plus what the
    /// control plane had left (other holders' unspent units are not known here).
    pub fn visible_remaining(&self, now_ms: u64) -> u64 {
        self.live_units(now_ms).saturating_add(self.remaining)
    }

    /// The unspent units of a lease still live at `now_ms` (what a holder gives back when
    /// it returns the lease); 0 once it has expired, when they are forfeited.
    pub fn live_units(&self, now_ms: u64) -> u64 {
        if now_ms < self.expires_at_ms {
            self.units
        } else {
            0
        }
    }

    pub fn encode(&self) -> [u8; SLOT_LEN] {
        let mut out = [0u8; SLOT_LEN];
        write_u64s(
            &mut out,
            &[
                self.units,
                self.expires_at_ms,
                self.refused_until_ms,
                self.remaining,
                self.reset_at_ms,
                self.renewing_until_ms,
            ],
        );
        out
    }

    /// Anything malformed (or empty) reads as an empty slot.
    pub fn decode(bytes: &[u8]) -> Self {
        match read_u64s::<6>(bytes) {
            Some([units, expires_at_ms, refused_until_ms, remaining, reset_at_ms, renewing_until_ms]) => {
                LeaseSlot {
                    units,
                    expires_at_ms,
                    refused_until_ms,
                    remaining,
                    reset_at_ms,
                    renewing_until_ms,
                }
            }
            None => LeaseSlot::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn a_slot_spends_grants_and_refuses() {
        let empty = LeaseSlot::default();
        assert_eq!(empty.spend(1, 100), SlotSpend::NeedLease);
        let grant = RateLimitResult {
            granted: 3,
            expires_at_ms: 2_100,
            remaining: 5,
            reset_after_ms: 30_000,
            retry_after_ms: 0,
        };
        let s = empty.granted(&grant, 100);
        assert_eq!((s.units, s.expires_at_ms, s.reset_at_ms), (3, 2_100, 30_100));
        assert_eq!(s.visible_remaining(100), 8);
        let SlotSpend::Spent(s2) = s.spend(1, 200) else { panic!("expected a spend") };
        assert_eq!(s2.units, 2);
        assert_eq!(s2.spend(1, 2_100), SlotSpend::NeedLease, "expired");
        assert_eq!(s2.visible_remaining(2_100), 5);
        let refusal = RateLimitResult {
            granted: 0,
            retry_after_ms: 6_000,
            reset_after_ms: 60_000,
            ..Default::default()
        };
        let r = s2.granted(&refusal, 300);
        assert_eq!(r.spend(1, 300), SlotSpend::Refused { retry_after_ms: 6_000 });
        assert_eq!(r.units, 2, "live units survive a refusal");
        assert_eq!(LeaseSlot::decode(&r.encode()), r);
        assert_eq!(LeaseSlot::decode(b"short"), LeaseSlot::default());
    }

    fn live(units: u64) -> LeaseSlot {
        LeaseSlot { units, expires_at_ms: 5_000, remaining: 7, reset_at_ms: 9_000, ..LeaseSlot::default() }
    }

    #[test]
    fn a_renewal_claim_lasts_until_the_lease_expires_and_a_grant_clears_it() {
        let slot = live(10);
        assert!(!slot.renewing(100));
        let claimed = slot.claimed_for_renewal();
        assert!(claimed.renewing(100) && claimed.renewing(4_999));
        assert!(!claimed.renewing(5_000), "the claim dies with the lease");
        assert_eq!(LeaseSlot::decode(&claimed.encode()), claimed);
        assert_eq!(
            claimed.spend(1, 100),
            SlotSpend::Spent(LeaseSlot { units: 9, ..claimed }),
            "it still serves"
        );
        let grant = RateLimitResult { granted: 5, expires_at_ms: 7_000, ..Default::default() };
        assert!(!claimed.granted(&grant, 200).renewing(200));
        assert!(!LeaseSlot::default().granted(&grant, 200).renewing(200));
        assert_eq!(
            LeaseSlot::decode(&[0u8; 40]),
            LeaseSlot::default(),
            "a slot of another layout reads as empty"
        );
    }

    #[test]
    fn a_slice_takes_at_most_half_of_what_is_left_and_never_a_unit_twice() {
        for units in [1u64, 2, 3, 10, 129, 1_000] {
            let SliceTake::Taken { slot, slice } = live(units).take_slice(1, 100) else {
                panic!("a live slot with units gives a slice")
            };
            assert_eq!(slot.units + slice.units + 1, units, "the request's unit + slot + slice");
            assert_eq!(slice.units, ((units - 1) / 2).min(MAX_SLICE));
            assert!(slice.units <= slot.units, "the slot keeps at least as much as the slice");
            assert_eq!((slice.expires_at_ms, slice.remaining), (5_000, 7));
        }
        assert_eq!(
            live(1).take_slice(1, 100),
            SliceTake::Taken {
                slot: live(0),
                slice: LocalSlice { units: 0, expires_at_ms: 5_000, remaining: 7, reset_at_ms: 9_000 }
            }
        );
        assert_eq!(live(0).take_slice(1, 100), SliceTake::NeedLease);
        assert_eq!(live(5).take_slice(1, 5_000), SliceTake::NeedLease, "expired");
        let refused = LeaseSlot { refused_until_ms: 700, ..live(5) };
        assert_eq!(refused.take_slice(1, 100), SliceTake::Refused { retry_after_ms: 600 });
    }

    #[test]
    fn a_slice_spends_until_empty_or_expired_and_goes_back_to_its_lease() {
        let SliceTake::Taken { slot, mut slice } = live(200).take_slice(1, 100) else { panic!("taken") };
        assert_eq!(slice.units, MAX_SLICE);
        assert!(slice.spend(1, 200));
        assert_eq!(slice.visible_remaining(200), MAX_SLICE - 1 + 7);
        let back = slot.give_back(&slice, 300).expect("the lease is live");
        assert_eq!(back.units, slot.units + MAX_SLICE - 1);
        assert_eq!(slot.give_back(&slice, 5_000), None, "the lease expired: forfeited");
        let newer = LeaseSlot { expires_at_ms: 4_000, ..slot };
        assert_eq!(newer.give_back(&slice, 300), None, "not this slot's lease");
        let mut empty = LocalSlice { units: 1, ..slice };
        assert!(empty.spend(1, 300));
        assert!(!empty.spend(1, 300), "empty");
        assert!(!LocalSlice { units: 5, ..slice }.spend(1, 5_000), "expired");
    }
}
