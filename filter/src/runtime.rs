//! Per-VM state shared by the root context and every request context of one worker:
//! the compiled policy, each provider's keys, token-version state, the verified-token
//! cache and the metrics. Remote JWKS documents live in Envoy shared data so one fetch
//! serves every worker; each worker keeps the parsed `KeySet` and re-reads shared data
//! only when its copy may be stale.
//!
//! Signing keys the revocation feed names as revoked are dropped from the keys of the
//! providers under the feed as soon as this worker picks up the replica (and from every
//! key set loaded later), and the cached tokens they signed are dropped with them.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;

use portcullis_core::authn::Authenticated;

use portcullis_core::config::Policy;
use portcullis_core::jwt::cache::VerifiedTokenCache;
use portcullis_core::jwt::jwks::KeySet;
use portcullis_core::jwt::provider::{KeySource, Provider};
use portcullis_core::jwt::versions::VersionState;
use portcullis_core::keyfetch::{FetchKind, FetchSchedule};

use crate::calls::CallRouter;
use crate::features::burst::BurstState;
use crate::features::lockout::LockoutState;
use crate::features::ratelimit::RateLimitState;
use crate::features::revocation::RevocationSync;
use crate::features::Env;
use crate::held::{Held, FEED_POLL};
use crate::host::shared::{SharedCell, Swap};
use crate::host::Host;
use crate::metrics::Metrics;

/// Largest JWKS document accepted from a remote endpoint.
pub const MAX_JWKS_BYTES: usize = 512 * 1024;
/// How often a worker re-reads shared data for keys another worker may have fetched.
const SHARED_KEYS_RECHECK_MS: u64 = 1_000;
/// Entries of the strict-check cache per worker.
const MAX_STRICT_CACHE: usize = 10_000;

pub struct Runtime {
    pub host: Rc<dyn Host>,
    pub policy: Policy,
    keys: RefCell<Vec<KeySlot>>,
    pub versions: RefCell<Vec<VersionState>>,
    pub cache: RefCell<VerifiedTokenCache>,
    pub metrics: Metrics,
    pub revocation: Option<RevocationSync>,
    /// Tokens that passed a strict revocation check recently: key → until (ms).
    strict_ok: RefCell<HashMap<String, u64>>,
    /// Every outbound call in flight, the circuit breaker and the root's call queue.
    pub calls: CallRouter,
    /// The requests this worker holds (parked, waiting, or let go).
    pub held: Held,
    pub rate_limits: RateLimitState,
    pub lockout: LockoutState,
    pub burst: BurstState,
    /// Signing keys the feed revoked: never part of the keys of providers under it.
    revoked_kids: RefCell<BTreeSet<String>>,
}

#[derive(Default)]
struct KeySlot {
    keys: Option<KeySet>,
    /// The shared-data version the parsed keys came from.
    cas: Option<u32>,
    checked_at_ms: u64,
}

impl Runtime {
    /// `vm`: this VM's number, unique among the VMs of this Envoy.
    pub fn new(policy: Policy, vm: u64, now_ms: u64, host: Rc<dyn Host>) -> Self {
        let keys = policy
            .providers
            .iter()
            .map(|p| match p.key_source() {
                KeySource::Inline(k) => KeySlot { keys: Some(k.clone()), cas: None, checked_at_ms: u64::MAX },
                KeySource::Remote(_) => KeySlot::default(),
            })
            .collect();
        let versions = policy.providers.iter().map(|p| p.initial_version_state()).collect();
        let cache = VerifiedTokenCache::new(policy.cache_capacity.max(1));
        let revocation = policy.revocation.clone().map(|r| RevocationSync::new(r, vm, now_ms, host.clone()));
        Runtime {
            revocation,
            strict_ok: RefCell::new(HashMap::new()),
            policy,
            keys: RefCell::new(keys),
            versions: RefCell::new(versions),
            cache: RefCell::new(cache),
            metrics: Metrics::new(host.clone()),
            calls: CallRouter::default(),
            held: Held::default(),
            rate_limits: RateLimitState::default(),
            lockout: LockoutState::default(),
            burst: BurstState::default(),
            revoked_kids: RefCell::new(BTreeSet::new()),
            host,
        }
    }

    /// `keys` without the revoked signing keys, for providers under the feed.
    fn without_revoked(&self, p: usize, keys: KeySet) -> KeySet {
        if !self.policy.revocation_applies(p) {
            return keys;
        }
        match self.revoked_kids.try_borrow() {
            Ok(kids) if !kids.is_empty() => keys.without_kids(&kids),
            _ => keys,
        }
    }

    /// Applies a new set of revoked signing keys: drops them from the loaded keys and
    /// their tokens from the verified-token cache.
    fn apply_revoked_kids(&self, kids: &BTreeSet<String>) {
        let Ok(mut current) = self.revoked_kids.try_borrow_mut() else { return };
        if *current == *kids {
            return;
        }
        current.clone_from(kids);
        drop(current);
        if let Ok(mut slots) = self.keys.try_borrow_mut() {
            for (p, slot) in slots.iter_mut().enumerate() {
                if let Some(keys) = slot.keys.take() {
                    slot.keys = Some(self.without_revoked(p, keys));
                }
            }
        }
        let dropped = match self.cache.try_borrow_mut() {
            Ok(mut cache) => cache.remove_where(|t| t.kid.as_deref().is_some_and(|kid| kids.contains(kid))),
            Err(_) => 0,
        };
        self.metrics.count("portcullis.revocation.keys_revoked_applied");
        log::info!(
            "revoked signing keys applied: {} key(s) refused, {dropped} cached token(s) dropped",
            kids.len()
        );
    }

    pub fn is_remote(&self, p: usize) -> bool {
        matches!(self.policy.providers.get(p).map(|pr| pr.key_source()), Some(KeySource::Remote(_)))
    }

    /// Current keys of every provider, re-reading shared data for remote providers whose
    /// copy is older than the recheck interval (or all of them when `force`).
    pub fn keys(&self, now_ms: u64, force: bool) -> Vec<Option<KeySet>> {
        let mut slots = self.keys.borrow_mut();
        for (p, slot) in slots.iter_mut().enumerate() {
            if !self.is_remote(p) {
                continue;
            }
            if force
                || slot.keys.is_none()
                || now_ms.saturating_sub(slot.checked_at_ms) >= SHARED_KEYS_RECHECK_MS
            {
                slot.checked_at_ms = now_ms;
                self.reload_slot(p, slot);
            }
        }
        slots.iter().map(|s| s.keys.clone()).collect()
    }

    fn reload_slot(&self, p: usize, slot: &mut KeySlot) {
        let Some(provider) = self.policy.providers.get(p) else {
            return;
        };
        let (data, cas) = self.host.shared_data(&jwks_key(provider));
        if cas.is_some() && cas == slot.cas {
            return;
        }
        let Some(bytes) = data else { return };
        match KeySet::from_jwks_json(&bytes) {
            Ok((keys, _)) if !keys.is_empty() => {
                slot.keys = Some(self.without_revoked(p, keys));
                slot.cas = cas;
            }
            // Only validated documents are stored, so this is another version's format:
            // keep what we have.
            _ => log::warn!("provider `{}`: shared JWKS could not be parsed", provider.name()),
        }
    }

    /// Reads this provider's fetch schedule and, if `kind` may start now, claims the fetch
    /// for this worker (compare-and-swap). True when the caller must dispatch it.
    pub fn claim_fetch(&self, p: usize, kind: FetchKind, now_ms: u64) -> bool {
        let Some(provider) = self.policy.providers.get(p) else {
            return false;
        };
        let KeySource::Remote(remote) = provider.key_source() else {
            return false;
        };
        let key = schedule_key(provider);
        let (data, cas) = self.host.shared_data(&key);
        let schedule = data.map(|d| FetchSchedule::decode(&d)).unwrap_or_default();
        let allowed = match kind {
            FetchKind::Periodic => {
                schedule.periodic_due(now_ms, remote.cache_duration_secs.saturating_mul(1000))
            }
            FetchKind::OnDemand => schedule
                .on_demand_allowed(now_ms, remote.unknown_kid_refetch_interval_secs.saturating_mul(1000)),
        };
        if !allowed {
            return false;
        }
        let next = schedule.started(kind, now_ms, remote.timeout_ms);
        self.host.set_shared_data(&key, &next.encode(), cas).is_ok()
    }

    /// Handles a JWKS fetch response: a valid document is stored for every worker; a bad
    /// one keeps the last good keys and schedules a retry with backoff.
    pub fn complete_fetch(&self, p: usize, status: Option<&str>, body: Option<Vec<u8>>, now_ms: u64) -> bool {
        let Some(provider) = self.policy.providers.get(p) else {
            return false;
        };
        let name = provider.name();
        let parsed = match (status, body) {
            (Some("200"), Some(bytes)) => match KeySet::from_jwks_json(&bytes) {
                Ok((keys, warnings)) if !keys.is_empty() => {
                    for w in warnings {
                        log::info!("provider `{name}`: JWKS key skipped: {w}");
                    }
                    Some((keys, bytes))
                }
                Ok(_) => {
                    log::warn!("provider `{name}`: JWKS has no usable keys; keeping the previous keys");
                    None
                }
                Err(e) => {
                    log::warn!("provider `{name}`: JWKS rejected ({e}); keeping the previous keys");
                    None
                }
            },
            (Some(code), _) => {
                log::warn!("provider `{name}`: JWKS fetch answered HTTP {code}");
                None
            }
            (None, _) => {
                log::warn!("provider `{name}`: JWKS fetch failed (timeout or connection error)");
                None
            }
        };
        let ok = parsed.is_some();
        if let Some((keys, bytes)) = parsed {
            if self.host.set_shared_data(&jwks_key(provider), &bytes, None).is_err() {
                log::warn!("provider `{name}`: could not store the JWKS in shared data");
            }
            let keys = self.without_revoked(p, keys);
            let mut slots = self.keys.borrow_mut();
            if let Some(slot) = slots.get_mut(p) {
                slot.keys = Some(keys);
                slot.cas = self.host.shared_data(&jwks_key(provider)).1;
                slot.checked_at_ms = now_ms;
            }
            self.metrics.count(&format!("portcullis.jwks.{name}.fetch_ok"));
        } else {
            self.metrics.count(&format!("portcullis.jwks.{name}.fetch_failed"));
        }
        // Record the outcome in the shared schedule, which other workers may be
        // updating too; under constant contention the schedule keeps its claim, which
        // ends by itself when the fetch's timeout passes.
        let key = schedule_key(provider);
        SharedCell::new(&*self.host, &key).update(|data| {
            let schedule = data.map(FetchSchedule::decode).unwrap_or_default();
            let next = if ok { schedule.succeeded(now_ms) } else { schedule.failed(now_ms) };
            Swap::Write(next.encode(), ())
        });
        ok
    }

    fn schedule(&self, p: usize) -> FetchSchedule {
        let Some(provider) = self.policy.providers.get(p) else {
            return FetchSchedule::default();
        };
        self.host
            .shared_data(&schedule_key(provider))
            .0
            .map(|d| FetchSchedule::decode(&d))
            .unwrap_or_default()
    }

    /// Whether some worker has a fetch of this provider's keys (or, for [`FEED_POLL`],
    /// a poll of the revocation feed) outstanding.
    pub fn fetch_in_flight(&self, p: usize, now_ms: u64) -> bool {
        if p == FEED_POLL {
            return self.revocation.as_ref().is_some_and(|sync| sync.poll_in_flight(now_ms));
        }
        self.schedule(p).in_flight(now_ms)
    }

    /// What checks read their surroundings through, at `now_ms`.
    pub fn env(&self, now_ms: u64) -> Env<'_> {
        Env { host: &*self.host, metrics: &self.metrics, now_ms }
    }

    /// Continues a paused request (the current effective context must be `ctx`): from
    /// now on its callbacks continue.
    pub fn resume(&self, ctx: u32) {
        self.held.release(ctx);
        if let Err(status) = self.host.resume_request() {
            log::warn!("could not resume the request ({status:?})");
        }
    }

    /// Picks up a newer revocation replica from shared data (once synced, the request
    /// path answers version and revocation questions from it, the version ceiling
    /// included); its revoked signing keys are dropped from the loaded keys at once.
    pub fn refresh_revocation(&self, now_ms: u64) {
        let Some(sync) = &self.revocation else { return };
        sync.refresh();
        let Some(view) = sync.view(now_ms) else { return };
        // Few keys are ever revoked: comparing the sets is cheap, and catches a replica
        // this worker published itself as well as one another worker did. Key ids are
        // the control plane's word whether or not the replica is synced yet.
        let changed =
            self.revoked_kids.try_borrow().is_ok_and(|current| *current != view.replica.revoked_kids);
        if !changed {
            return;
        }
        let kids = view.replica.revoked_kids.clone();
        drop(view);
        self.apply_revoked_kids(&kids);
    }

    fn strict_key(identity: &Authenticated) -> Option<String> {
        let jti = identity.token.claim("jti").and_then(|v| v.as_str())?;
        Some(format!("{}:{jti}", identity.provider))
    }

    /// Whether this token passed a strict check within the last `strictCacheMs`.
    pub fn strict_cached(&self, identity: &Authenticated, now_ms: u64) -> bool {
        let Some(key) = Self::strict_key(identity) else { return false };
        self.strict_ok.borrow().get(&key).is_some_and(|until| now_ms < *until)
    }

    pub fn strict_remember(&self, identity: &Authenticated, now_ms: u64) {
        let Some(settings) = &self.policy.revocation else { return };
        if settings.status_cache_ms == 0 {
            return;
        }
        let Some(key) = Self::strict_key(identity) else { return };
        let Ok(mut cache) = self.strict_ok.try_borrow_mut() else { return };
        if cache.len() >= MAX_STRICT_CACHE {
            cache.retain(|_, until| now_ms < *until);
            if cache.len() >= MAX_STRICT_CACHE {
                cache.clear();
            }
        }
        cache.insert(key, now_ms.saturating_add(settings.status_cache_ms));
    }

    /// Which providers' keys this request could fetch now (remote and not yet tried).
    pub fn fetchable(&self, tried: &[usize]) -> Vec<bool> {
        (0..self.policy.providers.len()).map(|p| self.is_remote(p) && !tried.contains(&p)).collect()
    }
}

/// Shared-data key of a provider's JWKS. It names the source too, so a reconfigured
/// provider (same name, another endpoint) never reads keys fetched from the old one.
fn jwks_key(provider: &Provider) -> String {
    match provider.key_source() {
        KeySource::Remote(r) => {
            format!("portcullis.v1.jwks.{}@{}/{}{}", provider.name(), r.cluster, r.authority, r.path)
        }
        KeySource::Inline(_) => format!("portcullis.v1.jwks.{}", provider.name()),
    }
}

fn schedule_key(provider: &Provider) -> String {
    format!("{}.schedule", jwks_key(provider))
}
