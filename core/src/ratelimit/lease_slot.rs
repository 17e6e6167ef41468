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

const SLOT_LEN: usize = 40;

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
            };
        }
        LeaseSlot {
            units: live.saturating_add(result.granted),
            expires_at_ms: result.expires_at_ms.max(self.expires_at_ms),
            refused_until_ms: 0,
            remaining: result.remaining,
            reset_at_ms,
        }
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
            &[self.units, self.expires_at_ms, self.refused_until_ms, self.remaining, self.reset_at_ms],
        );
        out
    }

    /// Anything malformed (or empty) reads as an empty slot.
    pub fn decode(bytes: &[u8]) -> Self {
        match read_u64s::<5>(bytes) {
            Some([units, expires_at_ms, refused_until_ms, remaining, reset_at_ms]) => {
                LeaseSlot { units, expires_at_ms, refused_until_ms, remaining, reset_at_ms }
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
}
