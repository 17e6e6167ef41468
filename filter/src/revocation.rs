//! The revocation replica inside Envoy. One worker at a time (claimed through a shared
//! schedule, compare-and-swap) polls the control plane's feed and stores the replica in
//! shared data; every worker reads it from there, so the request path never calls out
//! for revocation.
//!
//! Shared data:
//! - `portcullis.v1.revocation.replica`: the replica as JSON;
//! - `portcullis.v1.revocation.generation`: 8 bytes, bumped on every replica write, so
//!   workers re-read the (possibly large) replica only when it changed;
//! - `portcullis.v1.revocation.schedule`: the poll schedule; its `fetched_at_ms` is the
//!   time of the last successful poll, from which staleness is measured.

use std::cell::{Ref, RefCell};

use portcullis_core::config::RevocationSettings;
use portcullis_core::keyfetch::{FetchKind, FetchSchedule};
use portcullis_core::revocation::RevocationReplica;

use crate::host;
use crate::metrics::Metrics;

const REPLICA_KEY: &str = "portcullis.v1.revocation.replica";
const GENERATION_KEY: &str = "portcullis.v1.revocation.generation";
const SCHEDULE_KEY: &str = "portcullis.v1.revocation.schedule";
/// Longest wait between polls while the control plane is unreachable.
const MAX_BACKOFF_MS: u64 = 5_000;
/// Largest feed page accepted.
pub const MAX_FEED_BYTES: usize = 4 * 1024 * 1024;
/// Entries fetched per poll.
const PAGE_LIMIT: usize = 1_000;

pub struct RevocationSync {
    pub settings: RevocationSettings,
    local: RefCell<Local>,
}

struct Local {
    replica: RevocationReplica,
    generation: u64,
    synced_at_ms: u64,
    /// When this worker started: before the first sync, staleness counts from here.
    started_at_ms: u64,
    failures_logged: u32,
}

/// The state the request path reads.
pub struct View<'a> {
    pub replica: Ref<'a, RevocationReplica>,
    pub stale: bool,
    /// Whether the replica was synced at least once (before that, config versions apply).
    pub synced: bool,
}

impl RevocationSync {
    pub fn new(settings: RevocationSettings, now_ms: u64) -> Self {
        RevocationSync {
            settings,
            local: RefCell::new(Local {
                replica: RevocationReplica::default(),
                generation: 0,
                synced_at_ms: 0,
                started_at_ms: now_ms,
                failures_logged: 0,
            }),
        }
    }

    /// Picks up what other workers stored: the sync time, and the replica when its
    /// generation changed. Called on every request (two small shared-data reads; the
    /// replica itself is read only when it changed), so all workers switch to a new
    /// replica at once. Returns true when the replica changed.
    pub fn refresh(&self) -> bool {
        let Ok(mut local) = self.local.try_borrow_mut() else { return false };
        local.synced_at_ms = schedule().fetched_at_ms;
        let generation = host::shared_data(GENERATION_KEY).0.map(|b| decode_u64(&b)).unwrap_or(0);
        if generation == local.generation {
            return false;
        }
        let Some(bytes) = host::shared_data(REPLICA_KEY).0 else { return false };
        match serde_json::from_slice::<RevocationReplica>(&bytes) {
            Ok(replica) => {
                local.replica = replica;
                local.generation = generation;
                true
            }
            Err(_) => {
                log::warn!("shared revocation replica could not be parsed; keeping the previous one");
                false
            }
        }
    }

    pub fn view(&self, now_ms: u64) -> Option<View<'_>> {
        let local = self.local.try_borrow().ok()?;
        let max_ms = self.settings.max_staleness_secs.saturating_mul(1000);
        let since = if local.synced_at_ms == 0 { local.started_at_ms } else { local.synced_at_ms };
        let stale = now_ms.saturating_sub(since) > max_ms;
        let synced = local.synced_at_ms != 0;
        Some(View { replica: Ref::map(local, |l| &l.replica), stale, synced })
    }

    /// Seconds since the last successful poll (since start when never synced).
    pub fn staleness_secs(&self, now_ms: u64) -> u64 {
        let synced_at = schedule().fetched_at_ms;
        let since = match self.local.try_borrow() {
            Ok(l) if synced_at == 0 => l.started_at_ms,
            _ => synced_at,
        };
        now_ms.saturating_sub(since) / 1000
    }

    /// Claims an extra poll now (a token above the replica's version ceiling): at most
    /// one per poll interval for the whole Envoy, never while a poll is in flight.
    /// Returns the path to GET when it is ours.
    pub fn claim_on_demand(&self, now_ms: u64) -> Option<String> {
        let interval = self.settings.poll_interval_ms;
        self.claim(FetchKind::OnDemand, now_ms, |s| s.on_demand_allowed(now_ms, interval))
    }

    /// Whether some worker's poll is outstanding.
    pub fn poll_in_flight(&self, now_ms: u64) -> bool {
        schedule().in_flight(now_ms)
    }

    /// Claims the next poll for this worker; returns the path to GET when it is ours.
    pub fn claim_poll(&self, now_ms: u64) -> Option<String> {
        let interval = self.settings.poll_interval_ms;
        self.claim(FetchKind::Periodic, now_ms, |s| s.periodic_due(now_ms, interval))
    }

    /// Starts a poll of `kind` in the shared schedule (compare-and-swap) when `allowed`.
    fn claim(
        &self,
        kind: FetchKind,
        now_ms: u64,
        allowed: impl Fn(&FetchSchedule) -> bool,
    ) -> Option<String> {
        let (data, cas) = host::shared_data(SCHEDULE_KEY);
        let current = data.map(|d| FetchSchedule::decode(&d)).unwrap_or_default();
        if !allowed(&current) {
            return None;
        }
        let next = current.started(kind, now_ms, self.settings.timeout_ms);
        host::set_shared_data(SCHEDULE_KEY, &next.encode(), cas).ok()?;
        Some(self.poll_path())
    }

    fn poll_path(&self) -> String {
        self.refresh();
        let cursor = self.local.try_borrow().map(|l| l.replica.cursor).unwrap_or(0);
        format!("{}?after={cursor}&limit={PAGE_LIMIT}", self.settings.path)
    }

    /// Applies a poll's answer. With `follow_up`, returns the path of an immediate
    /// follow-up poll when the control plane says more changes are waiting (without,
    /// the next periodic poll continues).
    pub fn complete_poll(
        &self,
        status: Option<&str>,
        body: Option<Vec<u8>>,
        now_ms: u64,
        follow_up: bool,
        metrics: &Metrics,
    ) -> Option<String> {
        self.refresh();
        let outcome = match (status, body) {
            (Some("200"), Some(bytes)) => {
                let mut replica = self.local.try_borrow().map(|l| l.replica.clone()).unwrap_or_default();
                match replica.apply_json(&bytes, now_ms / 1000) {
                    Ok(more) => Ok((replica, more)),
                    Err(e) => {
                        metrics.count("portcullis.revocation.feed_invalid");
                        Err(format!("{e}"))
                    }
                }
            }
            (Some(code), _) => Err(format!("HTTP {code}")),
            (None, _) => Err("timeout or connection error".to_string()),
        };
        match outcome {
            Ok((replica, more)) => {
                self.store(&replica, now_ms);
                update_schedule(|s| s.succeeded(now_ms));
                metrics.count("portcullis.revocation.poll_ok");
                if let Ok(mut l) = self.local.try_borrow_mut() {
                    if l.failures_logged > 0 {
                        log::info!("revocation feed reachable again");
                    }
                    l.failures_logged = 0;
                }
                if more && follow_up {
                    update_schedule(|s| s.started(FetchKind::Periodic, now_ms, self.settings.timeout_ms));
                    return Some(self.poll_path());
                }
                None
            }
            Err(why) => {
                metrics.count("portcullis.revocation.poll_failed");
                update_schedule(|s| s.failed_with_cap(now_ms, MAX_BACKOFF_MS));
                if let Ok(mut l) = self.local.try_borrow_mut() {
                    // First failure after a success, then every 30th: enough to see, not a flood.
                    if l.failures_logged % 30 == 0 {
                        log::warn!(
                            "revocation feed poll failed ({why}); serving from the replica (stale for {} s)",
                            now_ms.saturating_sub(schedule().fetched_at_ms.max(l.started_at_ms)) / 1000
                        );
                    }
                    l.failures_logged = l.failures_logged.saturating_add(1);
                }
                None
            }
        }
    }

    fn store(&self, replica: &RevocationReplica, now_ms: u64) {
        let Ok(json) = serde_json::to_vec(replica) else { return };
        if host::set_shared_data(REPLICA_KEY, &json, None).is_err() {
            log::warn!("could not store the revocation replica in shared data");
            return;
        }
        let (data, cas) = host::shared_data(GENERATION_KEY);
        let next = data.map(|b| decode_u64(&b)).unwrap_or(0).wrapping_add(1);
        let _ = host::set_shared_data(GENERATION_KEY, &next.to_be_bytes(), cas);
        // The local copy is left for `refresh` to pick up like any other worker does, so
        // the runtime sees the change and applies the new token versions.
        if let Ok(mut l) = self.local.try_borrow_mut() {
            l.synced_at_ms = now_ms;
        }
    }
}

fn schedule() -> FetchSchedule {
    host::shared_data(SCHEDULE_KEY).0.map(|d| FetchSchedule::decode(&d)).unwrap_or_default()
}

fn update_schedule(change: impl Fn(FetchSchedule) -> FetchSchedule) {
    for _ in 0..4 {
        let (data, cas) = host::shared_data(SCHEDULE_KEY);
        let next = change(data.map(|d| FetchSchedule::decode(&d)).unwrap_or_default());
        if host::set_shared_data(SCHEDULE_KEY, &next.encode(), cas).is_ok() {
            return;
        }
    }
}

fn decode_u64(bytes: &[u8]) -> u64 {
    <[u8; 8]>::try_from(bytes).map(u64::from_be_bytes).unwrap_or(0)
}
