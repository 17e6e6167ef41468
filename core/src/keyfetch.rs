//! When to fetch a remote JWKS. One schedule per provider is shared by every worker
//! (the filter keeps it in Envoy shared data and updates it with compare-and-swap), so
//! the whole Envoy makes at most one fetch at a time per provider:
//!
//! - periodic refresh once the cached keys are older than the cache duration, with
//!   exponential backoff (1 s doubling to 60 s) after failures;
//! - on-demand refetch when a token names an unknown `kid` (key rotation), at most once
//!   per `unknownKidRefetchIntervalSeconds`, or whenever no keys were ever loaded.

use crate::codec::{read_u64s, write_u64s};

/// Longest wait between attempts after repeated failures.
pub const MAX_BACKOFF_MS: u64 = 60_000;
const BASE_BACKOFF_MS: u64 = 1_000;
/// Encoded size of [`FetchSchedule`].
pub const ENCODED_LEN: usize = 36;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FetchSchedule {
    /// A fetch started by some worker is outstanding until then.
    pub in_flight_until_ms: u64,
    /// No periodic fetch before this (set after failures).
    pub retry_not_before_ms: u64,
    /// When the last on-demand (unknown kid) fetch started.
    pub last_on_demand_ms: u64,
    /// When keys were last stored (0: never).
    pub fetched_at_ms: u64,
    /// Consecutive failures, for the backoff.
    pub failures: u32,
}

/// Why a fetch is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchKind {
    Periodic,
    OnDemand,
}

impl FetchSchedule {
    pub fn in_flight(&self, now_ms: u64) -> bool {
        now_ms < self.in_flight_until_ms
    }

    /// Whether a periodic refresh is due.
    pub fn periodic_due(&self, now_ms: u64, cache_duration_ms: u64) -> bool {
        if self.in_flight(now_ms) || now_ms < self.retry_not_before_ms {
            return false;
        }
        self.fetched_at_ms == 0 || now_ms.saturating_sub(self.fetched_at_ms) >= cache_duration_ms
    }

    /// Whether an on-demand refetch may start now.
    pub fn on_demand_allowed(&self, now_ms: u64, interval_ms: u64) -> bool {
        if self.in_flight(now_ms) {
            return false;
        }
        if self.fetched_at_ms == 0 {
            // Nothing loaded yet: every request would fail; retry on the backoff only.
            return now_ms >= self.retry_not_before_ms;
        }
        self.last_on_demand_ms == 0 || now_ms.saturating_sub(self.last_on_demand_ms) >= interval_ms
    }

    /// The schedule after a fetch of `kind` starts.
    pub fn started(mut self, kind: FetchKind, now_ms: u64, timeout_ms: u64) -> Self {
        self.in_flight_until_ms = now_ms.saturating_add(timeout_ms).saturating_add(500);
        // Loading keys for the first time is not a refetch for an unknown kid, so it does
        // not use up the rate limit that a key rotation right after start will need.
        if kind == FetchKind::OnDemand && self.fetched_at_ms != 0 {
            self.last_on_demand_ms = now_ms;
        }
        self
    }

    pub fn succeeded(mut self, now_ms: u64) -> Self {
        self.in_flight_until_ms = 0;
        self.retry_not_before_ms = 0;
        self.failures = 0;
        self.fetched_at_ms = now_ms;
        self
    }

    pub fn failed(self, now_ms: u64) -> Self {
        self.failed_with_cap(now_ms, MAX_BACKOFF_MS)
    }

    /// A failure, backing off from 1 s doubling up to `cap_ms`.
    pub fn failed_with_cap(mut self, now_ms: u64, cap_ms: u64) -> Self {
        self.in_flight_until_ms = 0;
        self.failures = self.failures.saturating_add(1);
        let shift = self.failures.saturating_sub(1).min(16);
        let backoff = BASE_BACKOFF_MS.saturating_mul(1u64 << shift).min(cap_ms);
        self.retry_not_before_ms = now_ms.saturating_add(backoff);
        self
    }

    pub fn encode(&self) -> [u8; ENCODED_LEN] {
        let mut out = [0u8; ENCODED_LEN];
        write_u64s(
            &mut out,
            &[self.in_flight_until_ms, self.retry_not_before_ms, self.last_on_demand_ms, self.fetched_at_ms],
        );
        if let Some(tail) = out.get_mut(32..36) {
            tail.copy_from_slice(&self.failures.to_be_bytes());
        }
        out
    }

    /// Decodes; anything malformed reads as the empty schedule.
    pub fn decode(bytes: &[u8]) -> Self {
        let times = bytes.get(..32).and_then(read_u64s::<4>);
        let failures = bytes.get(32..).and_then(|b| <[u8; 4]>::try_from(b).ok()).map(u32::from_be_bytes);
        match (times, failures) {
            (Some([a, b, c, d]), Some(f)) => FetchSchedule {
                in_flight_until_ms: a,
                retry_not_before_ms: b,
                last_on_demand_ms: c,
                fetched_at_ms: d,
                failures: f,
            },
            _ => FetchSchedule::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn nothing_loaded_means_a_periodic_fetch_is_due() {
        assert!(FetchSchedule::default().periodic_due(1_000, 600_000));
    }

    #[test]
    fn periodic_refresh_waits_for_the_cache_duration() {
        let s = FetchSchedule::default().started(FetchKind::Periodic, 1_000, 1_000).succeeded(1_200);
        assert!(!s.periodic_due(1_200 + 599_999, 600_000));
        assert!(s.periodic_due(1_200 + 600_000, 600_000));
    }

    #[test]
    fn only_one_fetch_is_in_flight_at_a_time() {
        let s = FetchSchedule::default().started(FetchKind::Periodic, 1_000, 1_000);
        assert!(s.in_flight(1_100));
        assert!(!s.periodic_due(1_100, 0));
        assert!(!s.on_demand_allowed(1_100, 0));
        // A lost response does not block fetching forever.
        assert!(!s.in_flight(2_600));
    }

    #[test]
    fn unknown_kid_refetch_is_rate_limited() {
        let s = FetchSchedule::default().succeeded(1_000);
        assert!(s.on_demand_allowed(2_000, 30_000));
        let s = s.started(FetchKind::OnDemand, 2_000, 1_000).succeeded(2_100);
        assert!(!s.on_demand_allowed(31_999, 30_000));
        assert!(s.on_demand_allowed(32_000, 30_000));
    }

    #[test]
    fn the_first_load_does_not_use_up_the_unknown_kid_rate_limit() {
        let s = FetchSchedule::default().started(FetchKind::OnDemand, 1_000, 1_000).succeeded(1_100);
        assert!(s.on_demand_allowed(1_200, 30_000), "a rotation right after start is still picked up");
    }

    #[test]
    fn failures_back_off_exponentially_up_to_a_cap() {
        let mut s = FetchSchedule::default();
        let mut waits = Vec::new();
        for _ in 0..10 {
            s = s.started(FetchKind::Periodic, 0, 10).failed(0);
            waits.push(s.retry_not_before_ms);
        }
        assert_eq!(&waits[..7], &[1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000]);
        assert_eq!(waits[9], MAX_BACKOFF_MS);
        assert!(!s.periodic_due(59_999, 0));
        assert!(s.periodic_due(60_000, 0));
        assert_eq!(s.succeeded(70_000).failures, 0);
        let capped = FetchSchedule::default().failed_with_cap(0, 5_000).failed_with_cap(0, 5_000);
        assert_eq!(capped.failed_with_cap(0, 5_000).failed_with_cap(0, 5_000).retry_not_before_ms, 5_000);
    }

    #[test]
    fn encoding_round_trips_and_garbage_decodes_to_default() {
        let s = FetchSchedule {
            in_flight_until_ms: 1,
            retry_not_before_ms: 2,
            last_on_demand_ms: 3,
            fetched_at_ms: u64::MAX,
            failures: 7,
        };
        assert_eq!(FetchSchedule::decode(&s.encode()), s);
        assert_eq!(FetchSchedule::decode(b"short"), FetchSchedule::default());
        assert_eq!(FetchSchedule::decode(&[0xff; 40]), FetchSchedule::default());
    }
}
