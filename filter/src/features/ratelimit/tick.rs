//! The tick's side of rate limits: leases about to expire are renewed (counters spent
//! from lately) or released, replaced leases' units are given back, and the grants of
//! renewals go into the slots.

use portcullis_core::ratelimit::{AppliedLimit, LeaseSlot, RateLimit};
use portcullis_core::wire::{RateLimitAsk, RateLimitOp, RateLimitReply};

use super::{slot_key, RateLimitState, MAX_KNOWN_SLOTS};
use crate::features::Env;
use crate::host::shared::{SharedCell, Swap};

impl RateLimitState {
    /// Stores the leases granted by the tick's renewal asks: `renewals` are (position in
    /// the batch, counter).
    pub fn apply_renewals(&self, env: Env<'_>, renewals: &[(usize, AppliedLimit)], reply: &RateLimitReply) {
        for (pos, applied) in renewals {
            let Some(result) = reply.results.get(*pos) else { continue };
            if result.granted == 0 {
                self.merge_grant(env, applied, result);
                continue;
            }
            env.metrics.count("portcullis.ratelimit.lease_grants");
            // The new lease replaces the old one, whose unspent units go back on the next
            // tick: no unit outlives the lease it came with. Under constant contention
            // the grant is lost (its units come back when it expires in the control plane).
            let replaced = SharedCell::new(env.host, &slot_key(&applied.key)).update(|data| {
                let slot = data.map(LeaseSlot::decode).unwrap_or_default();
                let next = LeaseSlot::default().granted(result, env.now_ms);
                Swap::Write(next.encode(), slot.live_units(env.now_ms))
            });
            self.leftover(applied, replaced.unwrap_or(0));
            self.remember(applied);
        }
    }

    fn leftover(&self, applied: &AppliedLimit, units: u64) {
        let mut leftovers = self.leftovers.borrow_mut();
        if units > 0 && leftovers.len() < MAX_KNOWN_SLOTS {
            leftovers.push((applied.clone(), units));
        }
    }

    /// The renewal ask for `applied`, when this worker spent from it in the last half of
    /// the lease TTL and the slot is not refused.
    fn renewal(
        &self,
        applied: &AppliedLimit,
        limits: &[RateLimit],
        slot: &LeaseSlot,
        now: u64,
    ) -> Option<RateLimitAsk> {
        let limit = limits.get(applied.index)?;
        let last = self.last_spent.borrow().get(&applied.key).copied()?;
        if now.saturating_sub(last) > limit.lease_ttl_ms / 2 || now < slot.refused_until_ms {
            return None;
        }
        Some(RateLimitAsk {
            key: applied.key.clone(),
            limit: applied.limit,
            unit: applied.unit,
            op: RateLimitOp::Lease {
                release: 0,
                max_lease: limit.max_lease,
                holders: limit.expected_holders,
                ttl_ms: limit.lease_ttl_ms,
            },
        })
    }

    /// Gives this worker's slice of `key` back to its shared slot; a slice whose lease
    /// has expired is forfeited. One attempt per tick: false when another worker wrote
    /// the slot in between (the slice is kept for the next tick).
    fn give_back_slice(&self, cell: &SharedCell<'_>, applied: &AppliedLimit, now_ms: u64) -> bool {
        let Some(slice) = self.slices.borrow().get(&applied.key).copied() else { return true };
        let (data, cas) = cell.read();
        let slot = data.map(|d| LeaseSlot::decode(&d)).unwrap_or_default();
        if slice.expires_at_ms != slot.expires_at_ms {
            // The slot holds another lease now: the slice goes back to the control plane.
            self.leftover(applied, slice.live_units(now_ms));
        } else if let Some(back) = slot.give_back(&slice, now_ms) {
            if cell.put_if(&back.encode(), cas).is_err() {
                return false;
            }
        }
        self.slices.borrow_mut().remove(&applied.key);
        true
    }

    /// The asks for leases that expire before the next tick (in about `tick_ms`): a
    /// renewal for counters spent from lately, else a release of the unspent units (the
    /// slot emptied); and releases of replaced leases' units. At most `max` asks.
    pub fn expiring_asks(&self, env: Env<'_>, tick_ms: u64, max: usize, limits: &[RateLimit]) -> TickAsks {
        let now = env.now_ms;
        let known: Vec<AppliedLimit> = self.known.borrow().values().cloned().collect();
        let mut asks = Vec::new();
        let mut renewals = Vec::new();
        let mut forget = Vec::new();
        for applied in known {
            let key = slot_key(&applied.key);
            let cell = SharedCell::new(env.host, &key);
            let slice_due = self.slices.borrow().get(&applied.key).is_some_and(|s| {
                s.units == 0 || s.expires_at_ms.saturating_sub(now) <= tick_ms.saturating_mul(2)
            });
            if slice_due && !self.give_back_slice(&cell, &applied, now) {
                continue; // another worker wrote the slot in between: next tick
            }
            let (data, cas) = cell.read();
            let slot = data.map(|d| LeaseSlot::decode(&d)).unwrap_or_default();
            if now >= slot.expires_at_ms {
                forget.push(applied.key.clone());
                continue;
            }
            if slot.expires_at_ms.saturating_sub(now) > tick_ms.saturating_mul(2) || slot.renewing(now) {
                // Not due yet, or a worker (maybe this one) is renewing it.
                continue;
            }
            let renewal = self.renewal(&applied, limits, &slot, now);
            // One attempt each: a worker that wrote in between spent from it, and the
            // next tick looks again.
            let emptied = LeaseSlot { units: 0, ..slot };
            if let Some(ask) = renewal {
                // One worker claims the renewal, so the lease is renewed once per Envoy;
                // the slot keeps serving requests until the new lease replaces it.
                if cell.put_if(&slot.claimed_for_renewal().encode(), cas).is_err() {
                    continue;
                }
                renewals.push((asks.len(), applied.clone()));
                asks.push(ask);
            } else if slot.units > 0 && cell.put_if(&emptied.encode(), cas).is_ok() {
                asks.push(RateLimitAsk {
                    key: applied.key.clone(),
                    limit: applied.limit,
                    unit: applied.unit,
                    op: RateLimitOp::Release { units: slot.units },
                });
                forget.push(applied.key.clone());
            }
            if asks.len() >= max {
                break;
            }
        }
        // Replaced leases' units, including slices given back above.
        let leftovers = {
            let mut all = self.leftovers.borrow_mut();
            let now_sent = all.len().min(max.saturating_sub(asks.len()));
            let later = all.split_off(now_sent);
            std::mem::replace(&mut *all, later)
        };
        asks.extend(leftovers.into_iter().map(|(applied, units)| RateLimitAsk {
            key: applied.key,
            limit: applied.limit,
            unit: applied.unit,
            op: RateLimitOp::Release { units },
        }));
        let mut known = self.known.borrow_mut();
        let mut slices = self.slices.borrow_mut();
        for key in forget {
            slices.remove(&key);
            known.remove(&key);
        }
        TickAsks { asks, renewals }
    }
}

/// What the tick sends: release and renewal asks, and which of them are renewals
/// (position in `asks`, counter) whose grants go back into the slots.
#[derive(Default)]
pub struct TickAsks {
    pub asks: Vec<RateLimitAsk>,
    pub renewals: Vec<(usize, AppliedLimit)>,
}
