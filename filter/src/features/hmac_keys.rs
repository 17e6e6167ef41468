//! HMAC keys held by the control plane (`hmacKeys` section): one copy per Envoy in
//! shared data, fetched by one worker at a time, compiled once per worker per change.
//!
//! The worker holding the lease (`portcullis.v1.hmac_keys.leader`, as the API token
//! replica's) fetches the key set (`GET /v1/hmac-keys`, fleet credential) on its root
//! tick and, when the document differs from the copy, checks that it compiles and
//! writes it to `portcullis.v1.hmac_keys.set`; `portcullis.v1.hmac_keys.synced_at` is
//! set on every successful fetch. A request reads the copy (one shared-data read); the
//! worker compiles it again only when its shared-data version changed.
//!
//! Before the first successful fetch, signed rules answer 503 with `Retry-After`
//! (`signature_keys_unavailable`), not 401: a client with a valid key is not told its
//! signature is wrong. When the control plane is unreachable the copy keeps verifying
//! for `maxStalenessSeconds`; past that a rule with `onStale: deny` (the default)
//! answers 503, one with `onStale: allow` goes on with the keys as they are. A revoked
//! key stops verifying within one poll interval.
//!
//! Inline `signatureKeys` keep working next to these; an inline key id shadows a
//! control-plane key of the same id.

use std::cell::RefCell;
use std::rc::Rc;

use portcullis_core::response::Denial;
use portcullis_core::revocation::StaleAction;
use portcullis_core::route::Rule;
use portcullis_core::signature::key_set::{HmacKeySettings, KeySet};
use portcullis_core::signature::KeyRing;

use crate::host::shared::{Lease, SharedCell};
use crate::host::Host;
use crate::metrics::Metrics;

const LEADER_KEY: &str = "portcullis.v1.hmac_keys.leader";
const SET_KEY: &str = "portcullis.v1.hmac_keys.set";
const SYNCED_AT_KEY: &str = "portcullis.v1.hmac_keys.synced_at";
/// Longest wait between fetches while the control plane is unreachable.
const MAX_BACKOFF_MS: u64 = 5_000;

pub struct HmacKeySync {
    host: Rc<dyn Host>,
    pub settings: HmacKeySettings,
    /// This VM's number (unique among the VMs of this Envoy), for the lease.
    vm: u64,
    local: RefCell<Local>,
}

#[derive(Default)]
struct Local {
    next_poll_ms: u64,
    /// A fetch of this worker is outstanding until then.
    polling_until_ms: u64,
    failures: u32,
    /// The compiled keys (inline ones included) and the shared-data version of the
    /// copy they were compiled from.
    compiled: Option<(u32, Rc<KeyRing>)>,
}

impl HmacKeySync {
    pub fn new(settings: HmacKeySettings, vm: u64, host: Rc<dyn Host>) -> Self {
        HmacKeySync { host, settings, vm, local: RefCell::new(Local::default()) }
    }

    fn cell<'a>(&'a self, key: &'a str) -> SharedCell<'a> {
        SharedCell::new(&*self.host, key)
    }

    /// When a fetch last succeeded (host ms; 0: never).
    fn synced_at_ms(&self) -> u64 {
        self.cell(SYNCED_AT_KEY).get().and_then(|b| portcullis_core::codec::read_u64(&b)).unwrap_or(0)
    }

    /// The keys `rule` verifies with at `now_ms`: the control plane's (as of the last
    /// fetch) and the inline ones. A denial (503) before the first fetch, or when the
    /// copy is older than `maxStalenessSeconds` and the rule fails closed.
    pub fn keys(&self, inline: &KeyRing, rule: &Rule, now_ms: u64) -> Result<Rc<KeyRing>, Denial> {
        let at = self.synced_at_ms();
        let fresh = now_ms.saturating_sub(at) <= self.settings.max_staleness_secs.saturating_mul(1000);
        if at == 0 || (!fresh && rule.on_stale == StaleAction::Deny) {
            return Err(Denial::SignatureKeysUnavailable);
        }
        let (data, version) = self.cell(SET_KEY).read();
        let (Some(data), Some(version)) = (data, version) else {
            return Err(Denial::SignatureKeysUnavailable);
        };
        let mut local = self.local.try_borrow_mut().map_err(|_| Denial::SignatureKeysUnavailable)?;
        if let Some((compiled_from, keys)) = &local.compiled {
            if *compiled_from == version {
                return Ok(Rc::clone(keys));
            }
        }
        // Checked before it was written; a copy that does not compile fails closed.
        let (_, served) = KeySet::compile(&data).map_err(|_| Denial::SignatureKeysUnavailable)?;
        let mut keys = inline.clone();
        for key in served.keys {
            if !keys.keys.iter().any(|k| k.id == key.id) {
                keys.keys.push(key);
            }
        }
        let keys = Rc::new(keys);
        local.compiled = Some((version, Rc::clone(&keys)));
        Ok(keys)
    }

    /// Claims the next fetch for this worker (the lease); returns the path to GET when
    /// it is ours.
    pub fn claim_poll(&self, now_ms: u64) -> Option<String> {
        {
            let local = self.local.try_borrow().ok()?;
            if now_ms < local.polling_until_ms || now_ms < local.next_poll_ms {
                return None;
            }
        }
        let lease_ms =
            self.settings.poll_interval_ms.saturating_mul(3).max(self.settings.timeout_ms.saturating_mul(2));
        match self.cell(LEADER_KEY).claim_lease(self.vm, now_ms, lease_ms) {
            Lease::Ours => {}
            Lease::Lost => return None,
            Lease::Theirs => {
                if let Ok(mut l) = self.local.try_borrow_mut() {
                    l.next_poll_ms = now_ms.saturating_add(self.settings.poll_interval_ms);
                }
                return None;
            }
        }
        let mut local = self.local.try_borrow_mut().ok()?;
        local.polling_until_ms = now_ms.saturating_add(self.settings.timeout_ms).saturating_add(100);
        Some(self.settings.path.clone())
    }

    /// Applies a fetch's answer (`None`: timeout or connection error).
    pub fn complete_poll(&self, status: Option<&str>, body: Option<Vec<u8>>, now_ms: u64, metrics: &Metrics) {
        let outcome = match (status, body) {
            (Some("200"), Some(bytes)) => self.apply(&bytes, now_ms, metrics),
            (Some(code), _) => Err(format!("HTTP {code}")),
            (None, _) => Err("timeout or connection error".to_string()),
        };
        let Ok(mut local) = self.local.try_borrow_mut() else { return };
        local.polling_until_ms = 0;
        match outcome {
            Ok(()) => {
                metrics.count("portcullis.hmac_keys.poll_ok");
                if local.failures > 0 {
                    log::info!("HMAC key set reachable again");
                }
                local.failures = 0;
                local.next_poll_ms = now_ms.saturating_add(self.settings.poll_interval_ms);
            }
            Err(why) => {
                metrics.count("portcullis.hmac_keys.poll_failed");
                if local.failures % 30 == 0 {
                    log::warn!("HMAC key set fetch failed ({why}); verifying with the copy as it is");
                }
                local.failures = local.failures.saturating_add(1);
                let backoff = self.settings.poll_interval_ms.saturating_mul(u64::from(local.failures.min(5)));
                local.next_poll_ms = now_ms.saturating_add(backoff.min(MAX_BACKOFF_MS));
            }
        }
    }

    /// Writes a served set that compiles, when it differs from the copy.
    fn apply(&self, bytes: &[u8], now_ms: u64, metrics: &Metrics) -> Result<(), String> {
        let (version, ring) = KeySet::compile(bytes).map_err(|e| {
            metrics.count("portcullis.hmac_keys.set_invalid");
            format!("refused key set: {e}")
        })?;
        let set = self.cell(SET_KEY);
        if set.get().as_deref() != Some(bytes) {
            set.put(bytes).map_err(|s| format!("could not store the key set ({s:?})"))?;
            log::info!("HMAC key set version {version}: {} key(s)", ring.keys.len());
        }
        metrics.gauge("portcullis.hmac_keys.keys", ring.keys.len() as u64);
        self.cell(SYNCED_AT_KEY)
            .put(&now_ms.max(1).to_be_bytes())
            .map_err(|s| format!("could not store the sync time ({s:?})"))
    }
}
