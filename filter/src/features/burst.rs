//! Burst reports in the filter: requests are counted per client address between two
//! reports (at most `MAX_BURST_ENTRIES` addresses), and the addresses the control
//! plane blocks are kept in shared data for every worker.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::convert::Infallible;

use portcullis_core::burst::Burst;
use portcullis_core::check::Verdict;
use portcullis_core::response::Denial;
use portcullis_core::wire::{BlockedIp, BurstEntry, BurstReport};
use portcullis_core::RequestParts;

use super::Env;
use crate::host::shared::{SharedCell, Swap};

/// Most distinct addresses counted between two burst reports (more are not counted).
const MAX_BURST_ENTRIES: usize = 10_000;
/// How often the blocked-address list is re-read from shared data.
const BLOCKED_RECHECK_MS: u64 = 250;
const BLOCKED_KEY: &str = "portcullis.v1.burst.blocked";

#[derive(Default)]
struct BlockedCache {
    cas: Option<u32>,
    checked_at_ms: u64,
    until: HashMap<String, u64>,
}

/// Per-worker burst state.
#[derive(Default)]
pub struct BurstState {
    counts: RefCell<HashMap<String, BurstEntry>>,
    last_report_ms: Cell<u64>,
    blocked: RefCell<BlockedCache>,
}

impl BurstState {
    /// The burst check (`Phase::Address`): counts a request for the burst report and
    /// denies it when its address is blocked. It never needs a call.
    pub fn check(
        &self,
        env: Env<'_>,
        burst: &Burst,
        request: &RequestParts,
        ip: Option<&str>,
    ) -> Verdict<Infallible> {
        let Some(ip) = ip else { return Verdict::Pass };
        self.count(env, request, ip);
        if !burst.enforce_blocks {
            return Verdict::Pass;
        }
        let now = env.now_ms;
        let mut cache = self.blocked.borrow_mut();
        if now.saturating_sub(cache.checked_at_ms) >= BLOCKED_RECHECK_MS {
            cache.checked_at_ms = now;
            let (data, cas) = env.host.shared_data(BLOCKED_KEY);
            if cas != cache.cas {
                cache.cas = cas;
                cache.until = data.and_then(|d| serde_json::from_slice(&d).ok()).unwrap_or_default();
            }
        }
        let until = cache.until.get(ip).copied().unwrap_or(0);
        if until <= now {
            return Verdict::Pass;
        }
        env.metrics.count("portcullis.burst.blocked_requests");
        Verdict::Deny(Denial::AddressBlocked { retry_after_secs: (until - now).div_ceil(1000) })
    }

    fn count(&self, env: Env<'_>, request: &RequestParts, ip: &str) {
        let route = if request.route_path.is_empty() { request.path_only() } else { &request.route_path };
        let mut counts = self.counts.borrow_mut();
        let len = counts.len();
        match counts.get_mut(ip) {
            Some(e) => {
                e.count = e.count.saturating_add(1);
                e.route = route.chars().take(256).collect();
                e.method = request.method.clone();
            }
            None if len < MAX_BURST_ENTRIES => {
                let user_agent =
                    request.header_values("user-agent").next().unwrap_or("").chars().take(256).collect();
                counts.insert(
                    ip.to_string(),
                    BurstEntry {
                        ip: ip.to_string(),
                        count: 1,
                        route: route.chars().take(256).collect(),
                        method: request.method.clone(),
                        user_agent,
                    },
                );
            }
            None => env.metrics.count("portcullis.burst.untracked"),
        }
    }

    /// When a report is due: the bodies of the reports of what was counted since the
    /// last one (the counts start over).
    pub fn due_reports(&self, env: Env<'_>, burst: &Burst, max_batch: usize) -> Option<Vec<Vec<u8>>> {
        let now = env.now_ms;
        if now.saturating_sub(self.last_report_ms.get()) < burst.report_interval_ms {
            return None;
        }
        let entries: Vec<BurstEntry> = self.counts.borrow_mut().drain().map(|(_, e)| e).collect();
        self.last_report_ms.set(now);
        Some(
            entries
                .chunks(max_batch.max(1))
                .map(|chunk| serde_json::to_vec(&BurstReport { entries: chunk.to_vec() }).unwrap_or_default())
                .collect(),
        )
    }

    /// Stores the addresses the control plane blocked, for every worker. Under constant
    /// contention the list is left as it is: the next report names them again while
    /// they stay blocked.
    pub fn store_blocked(&self, env: Env<'_>, blocked: &[BlockedIp]) {
        if blocked.is_empty() {
            return;
        }
        let now = env.now_ms;
        SharedCell::new(env.host, BLOCKED_KEY).update(|data| {
            let mut map: HashMap<String, u64> =
                data.and_then(|d| serde_json::from_slice(d).ok()).unwrap_or_default();
            map.retain(|_, until| *until > now);
            for b in blocked {
                map.insert(b.ip.clone(), now.saturating_add(b.blocked_for_ms));
            }
            match serde_json::to_vec(&map) {
                Ok(bytes) => Swap::Write(bytes, ()),
                Err(_) => Swap::Keep(()),
            }
        });
    }
}
