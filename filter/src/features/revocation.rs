//! The revocation replica inside Envoy. One worker at a time (claimed through a shared
//! schedule, compare-and-swap) polls the control plane's feed and publishes the replica
//! in shared data; every worker reads it from there, so the request path never calls
//! out for revocation.
//!
//! A snapshot (a fresh Envoy, or a cursor the control plane can no longer continue)
//! arrives in parts. The worker that receives the first part assembles the snapshot
//! privately (`FeedFollower`), polls the next part at once, and holds the assembly
//! lease meanwhile, so no other worker polls until it is done; if a poll fails it
//! retries the same part later. Only the complete, caught-up replica is published:
//! other workers keep deciding with the previous one, and staleness keeps counting from
//! when that one was last known current.
//!
//! Shared data:
//! - `portcullis.v1.revocation.replica`: the published replica
//!   (`RevocationReplica::encode`);
//! - `portcullis.v1.revocation.generation`: 8 bytes, bumped on every replica write, so
//!   workers re-read the (possibly large) replica only when it changed;
//! - `portcullis.v1.revocation.schedule`: the poll schedule;
//! - `portcullis.v1.revocation.synced_at`: 8 bytes, when the published replica was last
//!   known current (published, or confirmed by an empty delta); staleness is measured
//!   from here, never from a poll that only brought a snapshot part;
//! - `portcullis.v1.revocation.assembly`: 16 bytes, the VM number assembling a snapshot
//!   and when its lease ends.

use std::cell::{Ref, RefCell};
use std::rc::Rc;

use portcullis_core::keyfetch::{FetchKind, FetchSchedule};
use portcullis_core::revocation::RevocationSettings;
use portcullis_core::revocation::{is_cursor, Applied, FeedFollower, RevocationReplica};

use crate::calls::{Call, CallRouter};
use crate::host::shared::{SharedCell, Swap};
use crate::host::{Host, Upstream};
use crate::metrics::Metrics;

const REPLICA_KEY: &str = "portcullis.v1.revocation.replica";
const GENERATION_KEY: &str = "portcullis.v1.revocation.generation";
const SCHEDULE_KEY: &str = "portcullis.v1.revocation.schedule";
const SYNCED_AT_KEY: &str = "portcullis.v1.revocation.synced_at";
const ASSEMBLY_KEY: &str = "portcullis.v1.revocation.assembly";
/// Longest wait between polls while the control plane is unreachable.
const MAX_BACKOFF_MS: u64 = 5_000;
/// Largest feed page accepted: four times what the control plane sends
/// (`portcullis_core::revocation::MAX_PAGE_BYTES`).
pub const MAX_FEED_BYTES: usize = 4 * portcullis_core::revocation::MAX_PAGE_BYTES;
/// Entries asked for per page.
const PAGE_LIMIT: usize = 5_000;
/// How long an assembly lease lasts without progress; another worker may start over
/// after it (the assembling VM went away).
const ASSEMBLY_LEASE_MS: u64 = 30_000;

pub struct RevocationSync {
    host: Rc<dyn Host>,
    pub settings: RevocationSettings,
    /// This VM's number (unique among the VMs of this Envoy), for the assembly lease.
    vm: u64,
    local: RefCell<Local>,
}

struct Local {
    /// This worker's copy of the published replica.
    replica: RevocationReplica,
    generation: u64,
    synced_at_ms: u64,
    /// When this worker started: before the first sync, staleness counts from here.
    started_at_ms: u64,
    failures_logged: u32,
    /// A snapshot this worker is assembling.
    follower: FeedFollower,
}

/// The state the request path reads.
pub struct View<'a> {
    pub replica: Ref<'a, RevocationReplica>,
    pub stale: bool,
    /// Whether a replica for this VM's fleet credential was published (before that, the
    /// providers' configured versions apply).
    pub synced: bool,
}

impl RevocationSync {
    pub fn new(settings: RevocationSettings, vm: u64, now_ms: u64, host: Rc<dyn Host>) -> Self {
        RevocationSync {
            host,
            settings,
            vm,
            local: RefCell::new(Local {
                replica: RevocationReplica::default(),
                generation: 0,
                synced_at_ms: 0,
                started_at_ms: now_ms,
                failures_logged: 0,
                follower: FeedFollower::default(),
            }),
        }
    }

    fn upstream(&self) -> Upstream<'_> {
        Upstream::control_plane(&self.settings.control_plane)
    }

    /// Picks up what other workers stored: the sync time, and the replica when its
    /// generation changed. Called on every request (two small shared-data reads; the
    /// replica itself is read only when it changed), so all workers switch to a new
    /// replica at once.
    pub fn refresh(&self) {
        let Ok(mut local) = self.local.try_borrow_mut() else { return };
        local.synced_at_ms = self.read_u64(SYNCED_AT_KEY);
        let generation = self.read_u64(GENERATION_KEY);
        if generation == local.generation {
            return;
        }
        let Some(bytes) = self.cell(REPLICA_KEY).get() else { return };
        match RevocationReplica::decode(&bytes) {
            // A replica hashed with another credential's key (a VM of an earlier
            // configuration wrote it) is useless here: start from nothing, which the
            // next poll turns into a snapshot.
            Some(replica) if replica.key_id == self.settings.control_plane.feed_key.id() => {
                local.replica = replica;
                local.generation = generation;
            }
            Some(_) => {
                local.replica = RevocationReplica::default();
                local.generation = generation;
            }
            None => log::warn!("shared revocation replica could not be read; keeping the previous one"),
        }
    }

    pub fn view(&self, now_ms: u64) -> Option<View<'_>> {
        let local = self.local.try_borrow().ok()?;
        let max_ms = self.settings.max_staleness_secs.saturating_mul(1000);
        let since = if local.synced_at_ms == 0 { local.started_at_ms } else { local.synced_at_ms };
        let stale = now_ms.saturating_sub(since) > max_ms;
        let synced = local.synced_at_ms != 0 && !local.replica.key_id.is_empty();
        Some(View { replica: Ref::map(local, |l| &l.replica), stale, synced })
    }

    /// Seconds since the published replica was last known current (since start when
    /// never synced).
    pub fn staleness_secs(&self, now_ms: u64) -> u64 {
        let synced_at = self.read_u64(SYNCED_AT_KEY);
        let since = match self.local.try_borrow() {
            Ok(l) if synced_at == 0 => l.started_at_ms,
            _ => synced_at,
        };
        now_ms.saturating_sub(since) / 1000
    }

    /// Claims an extra poll now (a token above the replica's version ceiling): at most
    /// one per poll interval for the whole Envoy, never while a poll is in flight, and,
    /// like every poll, only by the worker assembling a snapshot while one is. Returns
    /// the path to GET when it is ours.
    pub fn claim_on_demand(&self, now_ms: u64) -> Option<String> {
        let interval = self.settings.poll_interval_ms;
        self.claim(FetchKind::OnDemand, now_ms, |s| s.on_demand_allowed(now_ms, interval))
    }

    /// Whether some worker's poll is outstanding.
    pub fn poll_in_flight(&self, now_ms: u64) -> bool {
        self.schedule().in_flight(now_ms)
    }

    /// Claims the next poll for this worker; returns the path to GET when it is ours.
    /// While another worker assembles a snapshot, nobody else polls.
    pub fn claim_poll(&self, now_ms: u64) -> Option<String> {
        let interval = self.settings.poll_interval_ms;
        self.claim(FetchKind::Periodic, now_ms, |s| s.periodic_due(now_ms, interval))
    }

    /// Starts a poll of `kind` in the shared schedule (compare-and-swap) when `allowed`
    /// and no other worker holds the assembly lease.
    fn claim(
        &self,
        kind: FetchKind,
        now_ms: u64,
        allowed: impl Fn(&FetchSchedule) -> bool,
    ) -> Option<String> {
        let schedule = self.cell(SCHEDULE_KEY);
        let (data, cas) = schedule.read();
        let current = data.map(|d| FetchSchedule::decode(&d)).unwrap_or_default();
        if !allowed(&current) {
            return None;
        }
        if let Some((vm, _)) = self.assembly_lease(now_ms) {
            if vm != self.vm {
                // Another worker took over after this one's lease ran out.
                if let Ok(mut l) = self.local.try_borrow_mut() {
                    l.follower.abandon();
                }
                return None;
            }
        }
        let next = current.started(kind, now_ms, self.settings.timeout_ms);
        schedule.put_if(&next.encode(), cas).ok()?;
        self.poll_path()
    }

    /// The feed path continuing from this worker's assembly, or from the published
    /// replica. `None` if a cursor is not fit for a query string (never sent as is).
    fn poll_path(&self) -> Option<String> {
        self.refresh();
        let local = self.local.try_borrow().ok()?;
        let cursor = local.follower.cursor(&local.replica);
        let base = &self.settings.path;
        if cursor.is_empty() {
            return Some(format!("{base}?limit={PAGE_LIMIT}"));
        }
        is_cursor(cursor).then(|| format!("{base}?cursor={cursor}&limit={PAGE_LIMIT}"))
    }

    /// Dispatches a feed poll for `requester` (`None`: the root context's periodic
    /// poll); the answer comes back through `complete_poll`.
    pub fn dispatch(
        &self,
        calls: &CallRouter,
        path: &str,
        requester: Option<u32>,
    ) -> Result<u32, proxy_wasm::types::Status> {
        calls.get(&*self.host, &self.upstream(), path, self.settings.timeout_ms, Call::Feed { requester })
    }

    /// Applies a poll's answer. With `follow_up`, returns the path of an immediate
    /// follow-up poll when more is waiting (the next part of a snapshot, or more
    /// changes); without, the next periodic poll continues.
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
            (Some("200"), Some(bytes)) => self.apply(&bytes, now_ms, metrics),
            (Some(code), _) => Err(format!("HTTP {code}")),
            (None, _) => Err("timeout or connection error".to_string()),
        };
        match outcome {
            Ok(more) => {
                self.update_schedule(|s| s.succeeded(now_ms));
                metrics.count("portcullis.revocation.poll_ok");
                if let Ok(mut l) = self.local.try_borrow_mut() {
                    if l.failures_logged > 0 {
                        log::info!("revocation feed reachable again");
                    }
                    l.failures_logged = 0;
                }
                if more && follow_up {
                    self.update_schedule(|s| {
                        s.started(FetchKind::Periodic, now_ms, self.settings.timeout_ms)
                    });
                    return self.poll_path();
                }
                None
            }
            Err(why) => {
                metrics.count("portcullis.revocation.poll_failed");
                self.update_schedule(|s| s.failed_with_cap(now_ms, MAX_BACKOFF_MS));
                if let Ok(mut l) = self.local.try_borrow_mut() {
                    // First failure after a success, then every 30th: enough to see, not a flood.
                    if l.failures_logged % 30 == 0 {
                        log::warn!(
                            "revocation feed poll failed ({why}); serving from the replica (stale for {} s)",
                            now_ms.saturating_sub(self.read_u64(SYNCED_AT_KEY).max(l.started_at_ms)) / 1000
                        );
                    }
                    l.failures_logged = l.failures_logged.saturating_add(1);
                }
                None
            }
        }
    }

    /// Applies one page; `Ok(more)`, or why it was refused (the published replica is
    /// then unchanged and any assembly abandoned).
    fn apply(&self, bytes: &[u8], now_ms: u64, metrics: &Metrics) -> Result<bool, String> {
        let Ok(mut guard) = self.local.try_borrow_mut() else {
            return Err("the replica is busy".to_string());
        };
        let local = &mut *guard;
        let key = &self.settings.control_plane.feed_key;
        let was_assembling = local.follower.assembling();
        let applied = local.follower.apply_json(&mut local.replica, bytes, key, now_ms / 1000);
        let (applied, more) = match applied {
            Ok(a) => a,
            Err(e) => {
                metrics.count("portcullis.revocation.feed_invalid");
                if was_assembling {
                    metrics.count("portcullis.revocation.snapshots_abandoned");
                    self.release_assembly_lease();
                }
                return Err(e.to_string());
            }
        };
        match applied {
            Applied::Current => self.write_u64(SYNCED_AT_KEY, now_ms),
            Applied::Changed => {
                if !self.publish(local, now_ms, metrics) {
                    return Err("could not store the revocation replica in shared data".to_string());
                }
            }
            Applied::Assembled(replica) => {
                local.replica = *replica;
                self.release_assembly_lease();
                metrics.count("portcullis.revocation.snapshots_assembled");
                if !self.publish(local, now_ms, metrics) {
                    return Err("could not store the revocation replica in shared data".to_string());
                }
            }
            Applied::Assembling => {
                metrics.count("portcullis.revocation.snapshot_pages");
                self.take_assembly_lease(now_ms);
            }
        }
        Ok(more)
    }
}

impl RevocationSync {
    /// Stores `local.replica` for every worker and marks it current. On failure, the
    /// local copy is dropped at the next refresh (its generation is forgotten), so this
    /// worker never follows a replica the others do not have.
    fn publish(&self, local: &mut Local, now_ms: u64, metrics: &Metrics) -> bool {
        let bytes = local.replica.encode();
        if self.cell(REPLICA_KEY).put(&bytes).is_err() {
            log::warn!("could not store the revocation replica ({} bytes) in shared data", bytes.len());
            local.generation = 0;
            return false;
        }
        // One attempt: a lost race means another worker published, and the next
        // refresh reads its replica.
        let generation = self.cell(GENERATION_KEY);
        let (data, cas) = generation.read();
        let next = data.map(|b| decode_u64(&b)).unwrap_or(0).wrapping_add(1);
        local.generation = if generation.put_if(&next.to_be_bytes(), cas).is_ok() { next } else { 0 };
        self.write_u64(SYNCED_AT_KEY, now_ms);
        local.synced_at_ms = now_ms;
        metrics.gauge("portcullis.revocation.revoked_entries", local.replica.revoked.len() as u64);
        metrics.gauge("portcullis.revocation.user_entries", local.replica.user_min_versions.len() as u64);
        true
    }

    fn cell<'a>(&'a self, key: &'a str) -> SharedCell<'a> {
        SharedCell::new(&*self.host, key)
    }

    /// The live assembly lease: (VM number, until).
    fn assembly_lease(&self, now_ms: u64) -> Option<(u64, u64)> {
        let bytes = self.cell(ASSEMBLY_KEY).get()?;
        let [vm, until] = portcullis_core::codec::read_u64s::<2>(&bytes)?;
        (now_ms < until && vm != 0).then_some((vm, until))
    }

    fn take_assembly_lease(&self, now_ms: u64) {
        let mut lease = [0u8; 16];
        portcullis_core::codec::write_u64s(&mut lease, &[self.vm, now_ms.saturating_add(ASSEMBLY_LEASE_MS)]);
        let _ = self.cell(ASSEMBLY_KEY).put(&lease);
    }

    /// Gives the assembly lease up if this VM holds it (one attempt: a lost race means
    /// another worker took the lease over).
    fn release_assembly_lease(&self) {
        let lease = self.cell(ASSEMBLY_KEY);
        let (data, cas) = lease.read();
        if data.and_then(|d| d.get(..8).map(decode_u64)) == Some(self.vm) {
            let _ = lease.put_if(&[0u8; 16], cas);
        }
    }

    fn schedule(&self) -> FetchSchedule {
        self.cell(SCHEDULE_KEY).get().map(|d| FetchSchedule::decode(&d)).unwrap_or_default()
    }

    /// Changes the shared poll schedule. Under constant contention the change is lost
    /// and the claim in it ends by itself once the poll's timeout passes.
    fn update_schedule(&self, change: impl Fn(FetchSchedule) -> FetchSchedule) {
        self.cell(SCHEDULE_KEY).update(|data| {
            let next = change(data.map(FetchSchedule::decode).unwrap_or_default());
            Swap::Write(next.encode(), ())
        });
    }

    fn read_u64(&self, key: &str) -> u64 {
        self.cell(key).get().map(|b| decode_u64(&b)).unwrap_or(0)
    }

    fn write_u64(&self, key: &str, value: u64) {
        let _ = self.cell(key).put(&value.to_be_bytes());
    }
}

/// A big-endian `u64` in shared data; anything malformed reads as 0.
fn decode_u64(bytes: &[u8]) -> u64 {
    portcullis_core::codec::read_u64(bytes).unwrap_or(0)
}
