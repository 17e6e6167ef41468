//! Per-VM state shared by the root context and every request context of one worker:
//! the compiled policy, the metrics, the call router, the requests held, and each
//! check's per-worker state (`features/`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use portcullis_core::authn::Authenticated;

use portcullis_core::config::Policy;

use crate::calls::CallRouter;
use crate::features::api_token::ApiTokenSync;
use crate::features::audit::AuditState;
use crate::features::burst::BurstState;
use crate::features::hmac_keys::HmacKeySync;
use crate::features::jwt::JwtState;
use crate::features::lockout::LockoutState;
use crate::features::ratelimit::RateLimitState;
use crate::features::revocation::RevocationSync;
use crate::features::Env;
use crate::held::{Held, FEED_POLL};
use crate::host::Host;
use crate::metrics::Metrics;

/// Entries of the strict-check cache per worker.
const MAX_STRICT_CACHE: usize = 10_000;

pub struct Runtime {
    pub host: Rc<dyn Host>,
    pub policy: Policy,
    /// Keys, token versions and the verified-token cache.
    pub jwt: JwtState,
    pub metrics: Metrics,
    pub revocation: Option<RevocationSync>,
    /// The API token replica, with an `apiTokens` section.
    pub api_tokens: Option<ApiTokenSync>,
    /// The control plane's HMAC keys, with an `hmacKeys` section.
    pub hmac_keys: Option<HmacKeySync>,
    /// Tokens that passed a strict revocation check recently: key → until (ms).
    strict_ok: RefCell<HashMap<String, u64>>,
    /// Every outbound call in flight, the circuit breaker and the root's call queue.
    pub calls: CallRouter,
    /// The requests this worker holds (parked, waiting, or let go).
    pub held: Held,
    pub rate_limits: RateLimitState,
    pub lockout: LockoutState,
    pub burst: BurstState,
    /// Decision records, with an `audit` section.
    pub audit: Option<AuditState>,
}

impl Runtime {
    /// `vm`: this VM's number, unique among the VMs of this Envoy.
    pub fn new(policy: Policy, vm: u64, now_ms: u64, host: Rc<dyn Host>) -> Self {
        let revocation = policy.revocation.clone().map(|r| RevocationSync::new(r, vm, now_ms, host.clone()));
        let api_tokens = policy.api_tokens.clone().map(|s| ApiTokenSync::new(s, vm, host.clone()));
        let audit =
            policy.audit.clone().map(|s| AuditState::new(s, vm, random_seed(vm, now_ms), host.clone()));
        let hmac_keys = policy.hmac_keys.clone().map(|s| HmacKeySync::new(s, vm, host.clone()));
        Runtime {
            audit,
            revocation,
            api_tokens,
            hmac_keys,
            strict_ok: RefCell::new(HashMap::new()),
            jwt: JwtState::new(&policy),
            policy,
            metrics: Metrics::new(host.clone()),
            calls: CallRouter::default(),
            held: Held::default(),
            rate_limits: RateLimitState::default(),
            lockout: LockoutState::default(),
            burst: BurstState::default(),
            host,
        }
    }

    /// Whether some worker has a fetch of this provider's keys (or, for [`FEED_POLL`],
    /// a poll of the revocation feed) outstanding.
    pub fn fetch_in_flight(&self, p: usize, now_ms: u64) -> bool {
        if p == FEED_POLL {
            return self.revocation.as_ref().is_some_and(|sync| sync.poll_in_flight(now_ms));
        }
        self.jwt.fetch_in_flight(self.env(now_ms), &self.policy, p)
    }

    /// What checks read their surroundings through, at `now_ms`.
    pub fn env(&self, now_ms: u64) -> Env<'_> {
        Env { host: &*self.host, metrics: &self.metrics, now_ms }
    }

    /// A callback of context `ctx` runs: what is decided now is decided for it.
    pub fn enter(&self, ctx: u32) {
        if let Some(audit) = &self.audit {
            audit.enter(ctx);
        }
    }

    /// Makes `ctx` the effective context (to decide or resume the request on it from a
    /// callback of another context).
    pub fn switch_context(&self, ctx: u32) -> Result<(), proxy_wasm::types::Status> {
        self.host.set_effective_context(ctx)?;
        self.enter(ctx);
        Ok(())
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
        let changed = self.jwt.revoked_kids_differ(&view.replica.revoked_kids);
        if !changed {
            return;
        }
        let kids = view.replica.revoked_kids.clone();
        drop(view);
        self.jwt.apply_revoked_kids(self.env(now_ms), &self.policy, &kids);
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
}

/// Random bits from the system (WASI `random_get` inside Envoy), or, should there be
/// none, from this VM's number and the clock.
fn random_seed(vm: u64, now_ms: u64) -> u64 {
    let mut bytes = [0u8; 8];
    match getrandom::getrandom(&mut bytes) {
        Ok(()) => u64::from_be_bytes(bytes),
        Err(_) => now_ms.rotate_left(17) ^ vm.wrapping_mul(0x9e37_79b9_7f4a_7c15),
    }
}
