//! JWT verification's per-worker state: each provider's keys, token-version state and
//! the verified-token cache. Remote JWKS documents live in Envoy shared data so one
//! fetch serves every worker; each worker keeps the parsed `KeySet` and re-reads shared
//! data only when its copy may be stale. Which worker fetches, and when, is a schedule
//! in shared data claimed by compare-and-swap.
//!
//! Signing keys the revocation feed names as revoked are dropped from the keys of the
//! providers under the feed as soon as this worker picks up the replica (and from every
//! key set loaded later), and the cached tokens they signed are dropped with them.

use std::cell::RefCell;
use std::collections::BTreeSet;

use portcullis_core::config::Policy;
use portcullis_core::jwt::cache::VerifiedTokenCache;
use portcullis_core::jwt::jwks::KeySet;
use portcullis_core::jwt::provider::{KeySource, Provider};
use portcullis_core::jwt::versions::VersionState;
use portcullis_core::keyfetch::{FetchKind, FetchSchedule};

use super::Env;
use crate::host::shared::{SharedCell, Swap};

/// Largest JWKS document accepted from a remote endpoint.
pub const MAX_JWKS_BYTES: usize = 512 * 1024;
/// How often a worker re-reads shared data for keys another worker may have fetched.
const SHARED_KEYS_RECHECK_MS: u64 = 1_000;

pub struct JwtState {
    keys: RefCell<Vec<KeySlot>>,
    pub versions: RefCell<Vec<VersionState>>,
    pub cache: RefCell<VerifiedTokenCache>,
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

impl JwtState {
    pub fn new(policy: &Policy) -> Self {
        let keys = policy
            .providers
            .iter()
            .map(|p| match p.key_source() {
                KeySource::Inline(k) => KeySlot { keys: Some(k.clone()), cas: None, checked_at_ms: u64::MAX },
                KeySource::Remote(_) => KeySlot::default(),
            })
            .collect();
        JwtState {
            keys: RefCell::new(keys),
            versions: RefCell::new(policy.providers.iter().map(|p| p.initial_version_state()).collect()),
            cache: RefCell::new(VerifiedTokenCache::new(policy.cache_capacity.max(1))),
            revoked_kids: RefCell::new(BTreeSet::new()),
        }
    }

    /// `keys` without the revoked signing keys, for providers under the feed.
    fn without_revoked(&self, policy: &Policy, p: usize, keys: KeySet) -> KeySet {
        if !policy.revocation_applies(p) {
            return keys;
        }
        match self.revoked_kids.try_borrow() {
            Ok(kids) if !kids.is_empty() => keys.without_kids(&kids),
            _ => keys,
        }
    }

    /// Whether `kids` differ from the revoked signing keys this worker applied.
    pub fn revoked_kids_differ(&self, kids: &BTreeSet<String>) -> bool {
        self.revoked_kids.try_borrow().is_ok_and(|current| *current != *kids)
    }

    /// Applies a new set of revoked signing keys: drops them from the loaded keys and
    /// their tokens from the verified-token cache.
    pub fn apply_revoked_kids(&self, env: Env<'_>, policy: &Policy, kids: &BTreeSet<String>) {
        let Ok(mut current) = self.revoked_kids.try_borrow_mut() else { return };
        if *current == *kids {
            return;
        }
        current.clone_from(kids);
        drop(current);
        if let Ok(mut slots) = self.keys.try_borrow_mut() {
            for (p, slot) in slots.iter_mut().enumerate() {
                if let Some(keys) = slot.keys.take() {
                    slot.keys = Some(self.without_revoked(policy, p, keys));
                }
            }
        }
        let dropped = match self.cache.try_borrow_mut() {
            Ok(mut cache) => cache.remove_where(|t| t.kid.as_deref().is_some_and(|kid| kids.contains(kid))),
            Err(_) => 0,
        };
        env.metrics.count("portcullis.revocation.keys_revoked_applied");
        log::info!(
            "revoked signing keys applied: {} key(s) refused, {dropped} cached token(s) dropped",
            kids.len()
        );
    }

    /// Current keys of every provider, re-reading shared data for remote providers whose
    /// copy is older than the recheck interval (or all of them when `force`).
    pub fn keys(&self, env: Env<'_>, policy: &Policy, force: bool) -> Vec<Option<KeySet>> {
        let mut slots = self.keys.borrow_mut();
        for (p, slot) in slots.iter_mut().enumerate() {
            if !is_remote(policy, p) {
                continue;
            }
            if force
                || slot.keys.is_none()
                || env.now_ms.saturating_sub(slot.checked_at_ms) >= SHARED_KEYS_RECHECK_MS
            {
                slot.checked_at_ms = env.now_ms;
                self.reload_slot(env, policy, p, slot);
            }
        }
        slots.iter().map(|s| s.keys.clone()).collect()
    }

    fn reload_slot(&self, env: Env<'_>, policy: &Policy, p: usize, slot: &mut KeySlot) {
        let Some(provider) = policy.providers.get(p) else {
            return;
        };
        let (data, cas) = env.host.shared_data(&jwks_key(provider));
        if cas.is_some() && cas == slot.cas {
            return;
        }
        let Some(bytes) = data else { return };
        match KeySet::from_jwks_json(&bytes) {
            Ok((keys, _)) if !keys.is_empty() => {
                slot.keys = Some(self.without_revoked(policy, p, keys));
                slot.cas = cas;
            }
            // Only validated documents are stored, so this is another version's format:
            // keep what we have.
            _ => log::warn!("provider `{}`: shared JWKS could not be parsed", provider.name()),
        }
    }

    /// Reads this provider's fetch schedule and, if `kind` may start now, claims the fetch
    /// for this worker (compare-and-swap). True when the caller must dispatch it.
    pub fn claim_fetch(&self, env: Env<'_>, policy: &Policy, p: usize, kind: FetchKind) -> bool {
        let Some(provider) = policy.providers.get(p) else {
            return false;
        };
        let KeySource::Remote(remote) = provider.key_source() else {
            return false;
        };
        let key = schedule_key(provider);
        let (data, cas) = env.host.shared_data(&key);
        let schedule = data.map(|d| FetchSchedule::decode(&d)).unwrap_or_default();
        let allowed = match kind {
            FetchKind::Periodic => {
                schedule.periodic_due(env.now_ms, remote.cache_duration_secs.saturating_mul(1000))
            }
            FetchKind::OnDemand => schedule
                .on_demand_allowed(env.now_ms, remote.unknown_kid_refetch_interval_secs.saturating_mul(1000)),
        };
        if !allowed {
            return false;
        }
        let next = schedule.started(kind, env.now_ms, remote.timeout_ms);
        env.host.set_shared_data(&key, &next.encode(), cas).is_ok()
    }

    /// Handles a JWKS fetch response: a valid document is stored for every worker; a bad
    /// one keeps the last good keys and schedules a retry with backoff.
    pub fn complete_fetch(
        &self,
        env: Env<'_>,
        policy: &Policy,
        p: usize,
        (status, body): (Option<&str>, Option<Vec<u8>>),
    ) -> bool {
        let Some(provider) = policy.providers.get(p) else {
            return false;
        };
        let name = provider.name();
        let parsed = validated_jwks(name, status, body);
        let ok = parsed.is_some();
        if let Some((keys, bytes)) = parsed {
            if env.host.set_shared_data(&jwks_key(provider), &bytes, None).is_err() {
                log::warn!("provider `{name}`: could not store the JWKS in shared data");
            }
            let keys = self.without_revoked(policy, p, keys);
            let mut slots = self.keys.borrow_mut();
            if let Some(slot) = slots.get_mut(p) {
                slot.keys = Some(keys);
                slot.cas = env.host.shared_data(&jwks_key(provider)).1;
                slot.checked_at_ms = env.now_ms;
            }
            env.metrics.count(&format!("portcullis.jwks.{name}.fetch_ok"));
        } else {
            env.metrics.count(&format!("portcullis.jwks.{name}.fetch_failed"));
        }
        // Record the outcome in the shared schedule, which other workers may be
        // updating too; under constant contention the schedule keeps its claim, which
        // ends by itself when the fetch's timeout passes.
        let key = schedule_key(provider);
        SharedCell::new(env.host, &key).update(|data| {
            let schedule = data.map(FetchSchedule::decode).unwrap_or_default();
            let next = if ok { schedule.succeeded(env.now_ms) } else { schedule.failed(env.now_ms) };
            Swap::Write(next.encode(), ())
        });
        ok
    }

    /// Whether some worker has a fetch of this provider's keys outstanding.
    pub fn fetch_in_flight(&self, env: Env<'_>, policy: &Policy, p: usize) -> bool {
        let Some(provider) = policy.providers.get(p) else {
            return false;
        };
        env.host
            .shared_data(&schedule_key(provider))
            .0
            .map(|d| FetchSchedule::decode(&d))
            .unwrap_or_default()
            .in_flight(env.now_ms)
    }
}

/// A fetched JWKS document with at least one usable key, and its bytes to share;
/// `None` (logged) for anything else.
fn validated_jwks(name: &str, status: Option<&str>, body: Option<Vec<u8>>) -> Option<(KeySet, Vec<u8>)> {
    match (status, body) {
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
    }
}

/// Whether provider `p` fetches its keys (rather than having them inline).
pub fn is_remote(policy: &Policy, p: usize) -> bool {
    matches!(policy.providers.get(p).map(|pr| pr.key_source()), Some(KeySource::Remote(_)))
}

/// Which providers' keys a request could fetch now (remote and not yet tried).
pub fn fetchable(policy: &Policy, tried: &[usize]) -> Vec<bool> {
    (0..policy.providers.len()).map(|p| is_remote(policy, p) && !tried.contains(&p)).collect()
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
