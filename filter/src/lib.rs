//! Portcullis as a proxy-wasm filter for Envoy.
//!
//! This crate is the only code that talks to the host. The root context compiles the
//! plugin configuration once (a bad configuration is logged with the offending field and
//! the filter refuses to start) and keeps remote JWKS fresh on a tick; each request
//! context asks `portcullis_core::authn` for a decision and carries it out.

mod guard;
mod host;
mod http;
mod metrics;
mod revocation;
mod runtime;

use std::rc::Rc;
use std::time::Duration;

use portcullis_core::jwt::provider::KeySource;
use portcullis_core::keyfetch::FetchKind;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};

use crate::runtime::Runtime;

/// How often each worker checks whether a remote JWKS is due for a refresh.
const TICK: Duration = Duration::from_millis(500);
/// With rate limits, lockout or burst reports: overdue requests and expiring leases
/// are looked at this often.
const GUARD_TICK: Duration = Duration::from_millis(250);

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    // Installed after the SDK's own hook, so ours is the one that runs.
    std::panic::set_hook(Box::new(|info| {
        host::log_critical(&format!("panic (this worker's filter is now unusable): {info}"));
    }));
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> {
        Box::new(PortcullisRoot { context_id, runtime: None, fetches: Vec::new(), feed_call: None, tick_ms: 500 })
    });
}}

struct PortcullisRoot {
    context_id: u32,
    runtime: Option<Rc<Runtime>>,
    /// Outstanding periodic JWKS fetches: call token → provider index.
    fetches: Vec<(u32, usize)>,
    /// Outstanding revocation feed poll.
    feed_call: Option<u32>,
    tick_ms: u64,
}

impl PortcullisRoot {
    fn poll_feed(&mut self, rt: &Runtime, path: String) {
        let Some(sync) = &rt.revocation else { return };
        match sync.dispatch(&path) {
            Ok(token) => self.feed_call = Some(token),
            Err(status) => {
                log::warn!(
                    "cannot call cluster `{}` for the revocation feed ({status:?}); is it defined?",
                    sync.settings.control_plane.cluster
                );
                sync.complete_poll(None, None, host::now_unix_ms(), true, &rt.metrics);
            }
        }
    }
}

impl Context for PortcullisRoot {
    fn on_http_call_response(&mut self, token_id: u32, _: usize, body_size: usize, _: usize) {
        if let Some(rt) = self.runtime.clone() {
            let root = self.context_id;
            if rt.as_root(root, || rt.on_guard_call_response(token_id, body_size, root)) {
                return;
            }
        }
        if self.feed_call == Some(token_id) {
            self.feed_call = None;
            let Some(rt) = self.runtime.clone() else { return };
            let Some(sync) = &rt.revocation else { return };
            let (status, body) = http::call_response_capped(body_size, revocation::MAX_FEED_BYTES);
            if let Some(next) =
                sync.complete_poll(status.as_deref(), body, host::now_unix_ms(), true, &rt.metrics)
            {
                self.poll_feed(&rt, next);
            }
            // Requests that waited for a fresher replica (a version above its ceiling).
            rt.wake_parked(Some(runtime::FEED_POLL), self.context_id);
            return;
        }
        let Some(pos) = self.fetches.iter().position(|(t, _)| *t == token_id) else {
            return;
        };
        let (_, provider) = self.fetches.swap_remove(pos);
        if let Some(rt) = &self.runtime {
            let (status, body) = http::call_response(body_size);
            rt.complete_fetch(provider, status.as_deref(), body, host::now_unix_ms());
            rt.wake_parked(Some(provider), self.context_id);
        }
    }
}

impl RootContext for PortcullisRoot {
    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        let Some(bytes) = host::plugin_configuration(plugin_configuration_size) else {
            log::error!("no plugin configuration; the filter needs at least `providers` and `rules`");
            return false;
        };
        match portcullis_core::config::compile_json_with(&bytes, &host::environment_variable) {
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
                let needs_tick =
                    has_remote || policy.revocation.is_some() || !policy.stateful_checks.is_empty();
                self.tick_ms = u64::try_from(tick.as_millis()).unwrap_or(500);
                let guarded = !policy.stateful_checks.is_empty();
                let vm = next_vm_number();
                let rt = Rc::new(Runtime::new(policy, vm, host::now_unix_ms()));
                if guarded {
                    // One queue per VM: the name carries a number no other VM holds.
                    let name = format!("portcullis.guard.{vm}");
                    match host::register_queue(&name) {
                        Some(q) => rt.guards.queue.set(Some(q)),
                        None => log::warn!("could not register the guard queue; calls are made by requests"),
                    }
                }
                self.runtime = Some(rt);
                if needs_tick && host::set_tick_period(tick).is_err() {
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
            rt.drain_guard_queue(self.context_id);
        }
    }

    fn on_tick(&mut self) {
        let Some(rt) = self.runtime.clone() else { return };
        // Requests waiting for a fetch that finished in another worker (or timed out).
        rt.wake_parked(None, self.context_id);
        rt.guard_tick(self.context_id, self.tick_ms);
        let now = host::now_unix_ms();
        if let Some(sync) = &rt.revocation {
            rt.metrics.gauge("portcullis.revocation.staleness_seconds", sync.staleness_secs(now));
            if self.feed_call.is_none() {
                if let Some(path) = sync.claim_poll(now) {
                    self.poll_feed(&rt, path);
                }
            }
        }
        for (p, provider) in rt.policy.providers.iter().enumerate() {
            let KeySource::Remote(remote) = provider.key_source() else {
                continue;
            };
            if self.fetches.iter().any(|(_, fp)| *fp == p) {
                continue;
            }
            if !rt.claim_fetch(p, FetchKind::Periodic, now) {
                continue;
            }
            match host::dispatch_get(
                &host::Upstream::public(&remote.cluster, &remote.authority),
                &remote.path,
                remote.timeout_ms,
            ) {
                Ok(token) => self.fetches.push((token, p)),
                Err(status) => {
                    log::warn!(
                        "provider `{}`: cannot call cluster `{}` ({status:?}); is it defined?",
                        provider.name(),
                        remote.cluster
                    );
                    rt.complete_fetch(p, None, None, now);
                }
            }
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Never `None`: the SDK panics on it. Without a configuration the context fails closed.
        Some(Box::new(http::AuthnContext::new(context_id, self.runtime.clone())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// A number no other VM of this Envoy got (a counter in shared data, bumped with
/// compare-and-swap).
fn next_vm_number() -> u64 {
    const KEY: &str = "portcullis.v1.vm_counter";
    for _ in 0..64 {
        let (data, cas) = host::shared_data(KEY);
        let n = data.and_then(|d| portcullis_core::codec::read_u64(&d)).unwrap_or(0);
        let next = n.wrapping_add(1);
        if host::set_shared_data(KEY, &next.to_be_bytes(), cas).is_ok() {
            return next;
        }
    }
    host::now_unix_ms()
}
