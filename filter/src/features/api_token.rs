//! API tokens inside Envoy: one replica per Envoy in shared data, followed by one
//! worker at a time, read by every worker on the request path.
//!
//! The replica is [`CELLS`] shared-data values (`portcullis.v1.api_tokens.cell.<n>`),
//! a token in the cell its lookup id hashes to (`portcullis_core::api_auth::cells`).
//! A request reads the sync mark and its token's one cell (two host calls), never the
//! control plane. Memory is per Envoy, not per worker.
//!
//! The worker holding the lease (`portcullis.v1.api_tokens.leader`: VM number and
//! until when, taken with compare-and-swap, renewed on each poll) polls the feed on its
//! root tick: a delta rewrites the cells it touches (each with compare-and-swap), a
//! snapshot is assembled privately and then written over every cell. The cursor of
//! what the cells hold is in `portcullis.v1.api_tokens.cursor`, so another worker can
//! take over when the lease runs out. `portcullis.v1.api_tokens.synced_at` is set once
//! the cells hold a complete snapshot, and again on every successful poll: before the
//! first, API tokens are refused with 503 (fail closed). When the control plane is
//! unreachable the cells keep deciding (expiry is checked against the host's clock on
//! every request) for `maxStalenessSeconds`; past that a rule with `onStale: deny`
//! (the default) answers 503, one with `onStale: allow` goes on deciding.
//!
//! Usage goes back off the request path: each worker remembers the lookup ids it let
//! through and posts them at most once per poll interval.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;

use portcullis_core::api_auth::cells::{encode_cell, find_in_cell, upsert};
use portcullis_core::api_auth::{
    authenticate_api_token, cell_key, cell_of, ApiAuth, ApiAuthInput, ApiTokenSettings, CellFeed, CellWrites,
    CELLS,
};
use portcullis_core::api_token::{lookup_key, ApiTokenFeedPage, ReplicaToken, UsageReport, MAX_USAGE_BATCH};
use portcullis_core::codec::percent_encode_query_value;
use portcullis_core::jwt::provider::Provider;
use portcullis_core::revocation::StaleAction;
use portcullis_core::route::Rule;
use portcullis_core::RequestParts;

use super::Env;
use crate::host::shared::{Lease, SharedCell, Swap};
use crate::host::Host;
use crate::metrics::Metrics;

const LEADER_KEY: &str = "portcullis.v1.api_tokens.leader";
const CURSOR_KEY: &str = "portcullis.v1.api_tokens.cursor";
const SYNCED_AT_KEY: &str = "portcullis.v1.api_tokens.synced_at";
/// Largest feed page read (a page holds at most [`PAGE_LIMIT`] entries of a few
/// hundred bytes).
pub const MAX_FEED_BYTES: usize = 4 * 1024 * 1024;
/// Entries asked for per page (the control plane's maximum).
const PAGE_LIMIT: usize = 1_000;
/// Longest wait between polls while the control plane is unreachable.
const MAX_BACKOFF_MS: u64 = 5_000;
/// Expired records stay this long (answering `expired`, not `unknown_token`) before a
/// write to their cell drops them.
const EXPIRED_KEPT_SECS: u64 = 86_400;
/// Lookup ids remembered for the next usage report, at most.
const MAX_PENDING_USAGE: usize = MAX_USAGE_BATCH;

pub struct ApiTokenSync {
    host: Rc<dyn Host>,
    pub settings: ApiTokenSettings,
    /// This VM's number (unique among the VMs of this Envoy), for the lease.
    vm: u64,
    local: RefCell<Local>,
}

#[derive(Default)]
struct Local {
    /// A snapshot this worker is assembling.
    feed: CellFeed,
    next_poll_ms: u64,
    /// A poll of this worker is outstanding until then.
    polling_until_ms: u64,
    failures: u32,
    /// Lookup ids let through since the last report.
    used: BTreeSet<String>,
    next_report_ms: u64,
}

impl ApiTokenSync {
    pub fn new(settings: ApiTokenSettings, vm: u64, host: Rc<dyn Host>) -> Self {
        ApiTokenSync { host, settings, vm, local: RefCell::new(Local::default()) }
    }

    fn cell<'a>(&'a self, key: &'a str) -> SharedCell<'a> {
        SharedCell::new(&*self.host, key)
    }

    /// When a poll last succeeded (host ms; 0: the cells never held a complete
    /// snapshot). One shared-data read.
    fn synced_at_ms(&self) -> u64 {
        self.cell(SYNCED_AT_KEY).get().and_then(|b| portcullis_core::codec::read_u64(&b)).unwrap_or(0)
    }

    /// Whether the cells ever held a complete snapshot (one shared-data read).
    pub fn synced(&self) -> bool {
        self.synced_at_ms() != 0
    }

    /// Whether `rule` may decide from the cells at `now_ms`: they hold a snapshot, and
    /// the last successful poll is within `maxStalenessSeconds` or the rule's `onStale`
    /// is `allow`. Otherwise API tokens get 503, so a token revoked while the control
    /// plane is unreachable stops passing after at most the staleness bound.
    fn usable(&self, rule: &Rule, now_ms: u64) -> bool {
        let at = self.synced_at_ms();
        if at == 0 {
            return false;
        }
        let fresh = now_ms.saturating_sub(at) <= self.settings.max_staleness_secs.saturating_mul(1000);
        fresh || rule.on_stale == StaleAction::Allow
    }

    /// The record of `lookup`, from its cell (one shared-data read).
    pub fn lookup(&self, lookup: &str) -> Option<ReplicaToken> {
        let key = lookup_key(lookup)?;
        let name = cell_key(cell_of(&key));
        find_in_cell(&self.cell(&name).get()?, lookup)
    }

    /// Decides the API token of `request` under `rule` from the shared replica (no
    /// call): `Absent` when the rule takes none or the request carries none. A token let
    /// through is remembered for the next usage report.
    pub fn authenticate(
        &self,
        env: Env<'_>,
        providers: &[Provider],
        rule: &Rule,
        request: &RequestParts,
    ) -> ApiAuth {
        if !rule.accept_api_tokens {
            return ApiAuth::Absent;
        }
        let input = ApiAuthInput {
            settings: &self.settings,
            rule,
            providers,
            request,
            synced: self.usable(rule, env.now_ms),
            now_unix_secs: env.now_ms / 1000,
        };
        let outcome = authenticate_api_token(&input, &mut |lookup| self.lookup(lookup));
        if let ApiAuth::Allow(identity) = &outcome {
            self.record_use(&identity.lookup);
            env.metrics.count("portcullis.api_tokens.allowed");
        }
        outcome
    }

    /// Remembers a token let through, for the next usage report.
    fn record_use(&self, lookup: &str) {
        let Ok(mut local) = self.local.try_borrow_mut() else { return };
        if local.used.len() < MAX_PENDING_USAGE && !local.used.contains(lookup) {
            local.used.insert(lookup.to_string());
        }
    }

    /// The usage report due now, if any (at most one per poll interval per worker).
    pub fn take_usage_report(&self, now_ms: u64) -> Option<Vec<u8>> {
        let mut local = self.local.try_borrow_mut().ok()?;
        if local.used.is_empty() || now_ms < local.next_report_ms {
            return None;
        }
        local.next_report_ms = now_ms.saturating_add(self.settings.poll_interval_ms);
        let used: Vec<String> = std::mem::take(&mut local.used).into_iter().collect();
        serde_json::to_vec(&UsageReport { used }).ok()
    }

    /// Claims the next poll for this worker (the lease, compare-and-swap); returns the
    /// path to GET when it is ours.
    pub fn claim_poll(&self, now_ms: u64) -> Option<String> {
        {
            let local = self.local.try_borrow().ok()?;
            if now_ms < local.polling_until_ms || now_ms < local.next_poll_ms {
                return None;
            }
        }
        match self.cell(LEADER_KEY).claim_lease(self.vm, now_ms, self.lease_ms()) {
            Lease::Ours => {}
            Lease::Lost => return None,
            Lease::Theirs => {
                // Another worker follows the feed; a snapshot half read here is void.
                if let Ok(mut l) = self.local.try_borrow_mut() {
                    l.feed.abandon();
                    l.next_poll_ms = now_ms.saturating_add(self.settings.poll_interval_ms);
                }
                return None;
            }
        }
        let mut local = self.local.try_borrow_mut().ok()?;
        local.polling_until_ms = now_ms.saturating_add(self.settings.timeout_ms).saturating_add(100);
        let published =
            self.cell(CURSOR_KEY).get().and_then(|b| String::from_utf8(b).ok()).unwrap_or_default();
        let cursor = local.feed.cursor(&published);
        let base = &self.settings.feed_path;
        Some(if cursor.is_empty() {
            format!("{base}?limit={PAGE_LIMIT}")
        } else {
            format!("{base}?cursor={}&limit={PAGE_LIMIT}", percent_encode_query_value(cursor))
        })
    }

    /// The lease outlives a few polls, so the leader keeps it while it answers.
    fn lease_ms(&self) -> u64 {
        self.settings.poll_interval_ms.saturating_mul(3).max(self.settings.timeout_ms.saturating_mul(2))
    }

    /// Applies a poll's answer; `true` when more is waiting (poll again at once).
    pub fn complete_poll(
        &self,
        status: Option<&str>,
        body: Option<Vec<u8>>,
        now_ms: u64,
        metrics: &Metrics,
    ) -> bool {
        let outcome = match (status, body) {
            (Some("200"), Some(bytes)) => self.apply(&bytes, now_ms, metrics),
            (Some("400"), _) => {
                // A cursor the control plane no longer knows (it restarted without its
                // store): start over with a snapshot.
                let _ = self.cell(CURSOR_KEY).put(b"");
                Err("HTTP 400; starting over with a snapshot".to_string())
            }
            (Some(code), _) => Err(format!("HTTP {code}")),
            (None, _) => Err("timeout or connection error".to_string()),
        };
        let Ok(mut local) = self.local.try_borrow_mut() else { return false };
        local.polling_until_ms = 0;
        match outcome {
            Ok(more) => {
                metrics.count("portcullis.api_tokens.poll_ok");
                if local.failures > 0 {
                    log::info!("API token feed reachable again");
                }
                local.failures = 0;
                local.next_poll_ms =
                    if more { now_ms } else { now_ms.saturating_add(self.settings.poll_interval_ms) };
                more
            }
            Err(why) => {
                metrics.count("portcullis.api_tokens.poll_failed");
                if local.failures % 30 == 0 {
                    log::warn!("API token feed poll failed ({why}); deciding from the replica as it is");
                }
                local.failures = local.failures.saturating_add(1);
                let backoff = self.settings.poll_interval_ms.saturating_mul(u64::from(local.failures.min(5)));
                local.next_poll_ms = now_ms.saturating_add(backoff.min(MAX_BACKOFF_MS));
                false
            }
        }
    }

    /// Applies one page to the cells; `Ok(more)`.
    fn apply(&self, bytes: &[u8], now_ms: u64, metrics: &Metrics) -> Result<bool, String> {
        let page: ApiTokenFeedPage =
            serde_json::from_slice(bytes).map_err(|e| format!("unreadable page: {e}"))?;
        let applied = {
            let mut local = self.local.try_borrow_mut().map_err(|_| "the follower is busy".to_string())?;
            local.feed.apply(&page)
        };
        let (writes, cursor) = applied.map_err(|e| {
            metrics.count("portcullis.api_tokens.feed_invalid");
            format!("refused page: {e:?}")
        })?;
        let prune_before = (now_ms / 1000).saturating_sub(EXPIRED_KEPT_SECS);
        match writes {
            CellWrites::Assembling => metrics.count("portcullis.api_tokens.snapshot_pages"),
            CellWrites::Delta(cells) => {
                for (index, entries) in cells {
                    let name = cell_key(index);
                    let written =
                        self.cell(&name).update(|data| Swap::Write(upsert(data, &entries, prune_before), ()));
                    if written.is_none() {
                        return Err("could not write a replica cell (contention)".to_string());
                    }
                }
            }
            CellWrites::Snapshot(mut cells) => {
                let mut tokens = 0usize;
                for index in 0..CELLS {
                    let name = cell_key(index);
                    let records = cells.remove(&index).unwrap_or_default();
                    tokens = tokens.saturating_add(records.len());
                    if records.is_empty() && self.cell(&name).get().is_none() {
                        continue;
                    }
                    self.cell(&name)
                        .put(&encode_cell(&records))
                        .map_err(|s| format!("could not write a replica cell ({s:?})"))?;
                }
                metrics.count("portcullis.api_tokens.snapshots_written");
                metrics.gauge("portcullis.api_tokens.tokens", tokens as u64);
            }
        }
        if let Some(cursor) = cursor {
            self.cell(CURSOR_KEY)
                .put(cursor.as_bytes())
                .map_err(|s| format!("could not store the cursor ({s:?})"))?;
            if !self.synced() {
                log::info!("API token replica synced");
            }
            let _ = self.cell(SYNCED_AT_KEY).put(&now_ms.max(1).to_be_bytes());
        }
        Ok(page.more)
    }
}
