//! The root context of one worker: compiles the plugin configuration once (a bad
//! configuration is logged with the offending field and the filter refuses to start),
//! creates the request contexts, and on its tick refreshes remote JWKS, polls the
//! revocation feed and runs the stateful checks' housekeeping. Answers to the calls it
//! made come back here and go to the pipeline like any other.

use std::rc::Rc;
use std::time::Duration;

use portcullis_core::jwt::provider::KeySource;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;

use crate::answers;
use crate::calls::Call;
use crate::host::shared::{SharedCell, Swap};
use crate::host::Host;
use crate::request::AuthnContext;
use crate::runtime::Runtime;
use crate::stateful;

/// How often each worker checks whether a remote JWKS is due for a refresh.
const TICK: Duration = Duration::from_millis(500);
/// With rate limits, lockout or burst reports: overdue requests and expiring leases
/// are looked at this often.
const GUARD_TICK: Duration = Duration::from_millis(250);

pub struct PortcullisRoot {
    host: Rc<dyn Host>,
    context_id: u32,
    runtime: Option<Rc<Runtime>>,
    tick_ms: u64,
}

impl PortcullisRoot {
    pub fn new(context_id: u32, host: Rc<dyn Host>) -> Self {
        PortcullisRoot { host, context_id, runtime: None, tick_ms: 500 }
    }

    pub fn new_request_context(&self, context_id: u32) -> AuthnContext {
        AuthnContext::new(context_id, self.host.clone(), self.runtime.clone())
    }
}

impl Context for PortcullisRoot {
    fn on_http_call_response(&mut self, token_id: u32, _: usize, body_size: usize, _: usize) {
        let Some(rt) = self.runtime.clone() else { return };
        rt.enter(self.context_id);
        // Not found: nobody waits for this answer any more.
        let Some(call) = rt.calls.take(token_id) else { return };
        answers::on_answer(&rt, call, (token_id, body_size), self.context_id, None);
    }
}

impl RootContext for PortcullisRoot {
    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        let Some(bytes) = self.host.plugin_configuration(plugin_configuration_size) else {
            log::error!("no plugin configuration; the filter needs at least `providers` and `rules`");
            return false;
        };
        match portcullis_core::config::compile_json_with(&bytes, &|name: &str| {
            self.host.environment_variable(name)
        }) {
            Ok(policy) => {
                log::info!(
                    "configured {} provider(s), {} rule(s)",
                    policy.providers.len(),
                    policy.rules.len()
                );
                let has_remote =
                    policy.providers.iter().any(|p| matches!(p.key_source(), KeySource::Remote(_)));
                let tick = match &policy.revocation {
                    Some(r) => TICK.min(Duration::from_millis((r.poll_interval_ms / 2).max(100))),
                    None => TICK,
                };
                let tick = match &policy.api_tokens {
                    Some(a) => tick.min(Duration::from_millis((a.poll_interval_ms / 4).max(50))),
                    None => tick,
                };
                let tick = match &policy.hmac_keys {
                    Some(h) => tick.min(Duration::from_millis((h.poll_interval_ms / 4).max(50))),
                    None => tick,
                };
                let tick = if policy.stateful_checks.is_empty() {
                    tick
                } else {
                    let report = policy
                        .stateful_checks
                        .burst
                        .as_ref()
                        .map(|b| b.report_interval_ms)
                        .unwrap_or(u64::MAX);
                    tick.min(GUARD_TICK).min(Duration::from_millis(report.max(100)))
                };
                let tick = match &policy.audit {
                    Some(a) => tick.min(Duration::from_millis((a.flush_interval_ms / 4).clamp(50, 250))),
                    None => tick,
                };
                let needs_tick = has_remote
                    || policy.audit.is_some()
                    || policy.revocation.is_some()
                    || policy.api_tokens.is_some()
                    || policy.hmac_keys.is_some()
                    || !policy.stateful_checks.is_empty();
                self.tick_ms = u64::try_from(tick.as_millis()).unwrap_or(500);
                let guarded = !policy.stateful_checks.is_empty();
                let vm = next_vm_number(&*self.host);
                let rt = Rc::new(Runtime::new(policy, vm, self.host.now_unix_ms(), self.host.clone()));
                if guarded {
                    // One queue per VM: the name carries a number no other VM holds.
                    let name = format!("portcullis.guard.{vm}");
                    match self.host.register_queue(&name) {
                        Some(q) => rt.calls.queue.set(Some(q)),
                        None => log::warn!("could not register the guard queue; calls are made by requests"),
                    }
                }
                self.runtime = Some(rt);
                if needs_tick && self.host.set_tick_period(tick).is_err() {
                    log::warn!("could not set the tick period; remote keys refresh on demand only");
                }
                true
            }
            Err(e) => {
                log::error!("{e}");
                false
            }
        }
    }

    fn on_queue_ready(&mut self, _queue_id: u32) {
        if let Some(rt) = self.runtime.clone() {
            rt.enter(self.context_id);
            stateful::drain_queue(&rt, self.context_id);
        }
    }

    fn on_tick(&mut self) {
        let Some(rt) = self.runtime.clone() else { return };
        rt.enter(self.context_id);
        // Requests waiting for a fetch that finished in another worker (or timed out).
        answers::wake_parked(&rt, None, self.context_id);
        stateful::tick(&rt, self.context_id, self.tick_ms);
        let now = self.host.now_unix_ms();
        if let Some(sync) = &rt.revocation {
            rt.metrics.gauge("portcullis.revocation.staleness_seconds", sync.staleness_secs(now));
            if !rt.calls.in_flight(|c| matches!(c, Call::Feed { requester: None })) {
                if let Some(path) = sync.claim_poll(now) {
                    answers::poll_feed(&rt, path);
                }
            }
        }
        answers::api_token_tick(&rt, now);
        answers::audit_tick(&rt, now);
        answers::hmac_keys_tick(&rt, now);
        answers::refresh_keys(&rt, now);
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Never `None`: the SDK panics on it. Without a configuration the context fails closed.
        Some(Box::new(self.new_request_context(context_id)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// A number no other VM of this Envoy got (a counter in shared data, bumped with
/// compare-and-swap). Under constant contention, the clock stands in: VMs start
/// milliseconds apart.
fn next_vm_number(host: &dyn Host) -> u64 {
    SharedCell::new(host, "portcullis.v1.vm_counter")
        .update(|data| {
            let n = data.and_then(portcullis_core::codec::read_u64).unwrap_or(0);
            let next = n.wrapping_add(1);
            Swap::Write(next.to_be_bytes(), next)
        })
        .unwrap_or_else(|| host.now_unix_ms())
}
