//! What the answer to each outbound call continues. Whichever context receives an
//! answer takes its call from the router (`calls.rs`) and hands it to [`on_answer`]:
//! keys and feed pages are stored for every worker, the request that waited on this
//! context is decided again, requests parked behind the same fetch are woken on their
//! own contexts, and the stateful checks' answers go to `stateful.rs`. The root
//! context's periodic fetches and polls start here too.

use portcullis_core::jwt::provider::KeySource;
use portcullis_core::keyfetch::FetchKind;
use portcullis_core::signature::key_set::MAX_KEY_SET_BYTES;
use portcullis_core::RequestParts;

use crate::calls::Call;
use crate::features::api_token::MAX_FEED_BYTES as MAX_API_TOKEN_FEED_BYTES;
use crate::features::jwt::{is_remote, MAX_JWKS_BYTES};
use crate::features::revocation::MAX_FEED_BYTES;
use crate::held::FEED_POLL;
use crate::host::Upstream;
use crate::pipeline::{complete_strict_check, decide, Progress};
use crate::replay_claim;
use crate::reply::{deny, Next};
use crate::runtime::Runtime;
use crate::stateful;

/// Decides parked requests whose wait is over: those of `provider` when given (its
/// fetch just completed in this worker), otherwise those whose provider has no fetch
/// in flight any more (completed in another worker, or timed out). Each is decided on
/// its own context; `current` is the context to switch back to.
pub fn wake_parked(rt: &Runtime, provider: Option<usize>, current: u32) {
    let now_ms = rt.host.now_unix_ms();
    let mut in_flight: Vec<(usize, bool)> = Vec::new();
    let ready = rt.held.unpark_where(|waiter| match provider {
        Some(done) => waiter.provider == done,
        None => match in_flight.iter().find(|(q, _)| *q == waiter.provider) {
            Some((_, flying)) => !*flying,
            None => {
                let flying = rt.fetch_in_flight(waiter.provider, now_ms);
                in_flight.push((waiter.provider, flying));
                !flying
            }
        },
    });
    if ready.is_empty() {
        return;
    }
    rt.jwt.keys(rt.env(now_ms), &rt.policy, true);
    let remote: Vec<usize> = (0..rt.policy.providers.len()).filter(|p| is_remote(&rt.policy, *p)).collect();
    for waiter in ready {
        if rt.switch_context(waiter.context_id).is_err() {
            continue;
        }
        // No further fetching for a parked request: decide with the keys there are.
        let mut progress = Progress::for_parked(remote.clone(), waiter.input);
        if let Next::Continue = decide(rt, waiter.context_id, &waiter.request, waiter.rule, &mut progress) {
            rt.resume(waiter.context_id);
        }
    }
    let _ = rt.switch_context(current);
}

/// What a request context keeps between its callbacks.
#[derive(Default)]
pub struct RequestState {
    /// The request as the decision reads it (kept while it may be decided again).
    pub request: Option<RequestParts>,
    pub rule: usize,
    pub progress: Progress,
}

impl RequestState {
    /// Decides the request again (after the keys or the feed it waited for came) and
    /// resumes it when it may go on. False when no request was kept.
    fn decide_again(&mut self, rt: &Runtime, ctx: u32) -> bool {
        let Some(request) = self.request.take() else { return false };
        let next = decide(rt, ctx, &request, self.rule, &mut self.progress);
        self.request = Some(request);
        if let Next::Continue = next {
            rt.resume(ctx);
        }
        true
    }
}

/// The answer to call `token` (taken from the router) arrived on context `current`;
/// `state` is that context's request, `None` on the root context.
pub fn on_answer(
    rt: &Runtime,
    call: Call,
    (token, body_size): (u32, usize),
    current: u32,
    state: Option<&mut RequestState>,
) {
    match call {
        Call::Jwks { provider, requester } => {
            let (status, body) = rt.host.call_response(body_size, MAX_JWKS_BYTES);
            rt.jwt.complete_fetch(
                rt.env(rt.host.now_unix_ms()),
                &rt.policy,
                provider,
                (status.as_deref(), body),
            );
            if let (Some(_), Some(state)) = (requester, state) {
                if !state.decide_again(rt, current) {
                    return;
                }
            }
            // Requests of this worker that waited for the same keys.
            wake_parked(rt, Some(provider), current);
        }
        Call::Feed { requester } => {
            let (status, body) = rt.host.call_response(body_size, MAX_FEED_BYTES);
            let Some(sync) = &rt.revocation else { return };
            let now = rt.host.now_unix_ms();
            match (requester, state) {
                (None, _) => {
                    if let Some(next) = sync.complete_poll(status.as_deref(), body, now, true, &rt.metrics) {
                        poll_feed(rt, next);
                    }
                }
                (Some(_), state) => {
                    // One page is enough: every page carries the current ceiling.
                    sync.complete_poll(status.as_deref(), body, now, false, &rt.metrics);
                    if !state.is_some_and(|s| s.decide_again(rt, current)) {
                        return;
                    }
                }
            }
            // Requests that waited for a fresher replica (a version above its ceiling).
            wake_parked(rt, Some(FEED_POLL), current);
        }
        Call::ApiTokenFeed => api_token_feed_answer(rt, body_size),
        Call::AuditBatch { id } => audit_answer(rt, &id, body_size),
        Call::HmacKeys => hmac_keys_answer(rt, body_size),
        Call::ApiTokenUsage => {
            let (status, _) = rt.host.call_response(body_size, 4096);
            if status.as_deref() != Some("200") {
                rt.metrics.count("portcullis.api_tokens.usage_failed");
            }
        }
        Call::ReplayClaim { .. } => replay_claim_answer(rt, body_size, state, current),
        Call::StrictRevocation { .. } => {
            let Some(state) = state else { return };
            let Some(check) = state.progress.strict.take() else { return };
            let (Some(request), Some(rule)) = (state.request.as_ref(), rt.policy.rules.get(state.rule))
            else {
                return;
            };
            if let Next::Continue =
                complete_strict_check(rt, rule, request, check, body_size, &mut state.progress)
            {
                rt.resume(current);
            }
        }
        // A stateful check's call: on the root context, calls its answer leads to are
        // the root's too.
        call if state.is_none() => {
            rt.calls.as_root(current, || stateful::on_answer(rt, call, token, body_size, current))
        }
        call => stateful::on_answer(rt, call, token, body_size, current),
    }
}

/// Root context: a page of the API token feed arrived; poll again at once when more waits.
fn api_token_feed_answer(rt: &Runtime, body_size: usize) {
    let (status, body) = rt.host.call_response(body_size, MAX_API_TOKEN_FEED_BYTES);
    let Some(sync) = &rt.api_tokens else { return };
    if sync.complete_poll(status.as_deref(), body, rt.host.now_unix_ms(), &rt.metrics) {
        api_token_tick(rt, rt.host.now_unix_ms());
    }
}

/// Root context: the HMAC key set fetched.
fn hmac_keys_answer(rt: &Runtime, body_size: usize) {
    let (status, body) = rt.host.call_response(body_size, MAX_KEY_SET_BYTES);
    if let Some(sync) = &rt.hmac_keys {
        sync.complete_poll(status.as_deref(), body, rt.host.now_unix_ms(), &rt.metrics);
    }
}

/// The claim of the replay id of the request on `current` answered: decide it again
/// with its signer, or refuse it.
fn replay_claim_answer(rt: &Runtime, body_size: usize, state: Option<&mut RequestState>, current: u32) {
    let Some(state) = state else { return };
    let Some(pending) = state.progress.replay.take() else { return };
    match replay_claim::complete(rt, body_size, pending) {
        Ok(signer) => {
            state.progress.input.signer = Some(signer);
            state.decide_again(rt, current);
        }
        Err(denial) => {
            let rule = rt.policy.rules.get(state.rule);
            let (name, shadow) = rule.map_or(("(none)", false), |r| (r.name.as_str(), r.shadow));
            if let Next::Continue = deny(rt, name, shadow, &denial, None) {
                rt.resume(current);
            }
        }
    }
}

/// Root context: polls the revocation feed at `path`.
pub fn poll_feed(rt: &Runtime, path: String) {
    let Some(sync) = &rt.revocation else { return };
    if let Err(status) = sync.dispatch(&rt.calls, &path, None) {
        log::warn!(
            "cannot call cluster `{}` for the revocation feed ({status:?}); is it defined?",
            sync.settings.control_plane.cluster
        );
        sync.complete_poll(None, None, rt.host.now_unix_ms(), true, &rt.metrics);
    }
}

/// Root tick: starts the periodic JWKS fetches that are due (one per provider for the
/// whole Envoy, claimed in shared data).
pub fn refresh_keys(rt: &Runtime, now: u64) {
    for (p, provider) in rt.policy.providers.iter().enumerate() {
        let KeySource::Remote(remote) = provider.key_source() else {
            continue;
        };
        let fetching = |c: &Call| matches!(c, Call::Jwks { provider, requester: None } if *provider == p);
        if rt.calls.in_flight(fetching)
            || !rt.jwt.claim_fetch(rt.env(now), &rt.policy, p, FetchKind::Periodic)
        {
            continue;
        }
        let upstream = Upstream::public(&remote.cluster, &remote.authority);
        let call = Call::Jwks { provider: p, requester: None };
        if let Err(status) = rt.calls.get(&*rt.host, &upstream, &remote.path, remote.timeout_ms, call) {
            log::warn!(
                "provider `{}`: cannot call cluster `{}` ({status:?}); is it defined?",
                provider.name(),
                remote.cluster
            );
            rt.jwt.complete_fetch(rt.env(now), &rt.policy, p, (None, None));
        }
    }
}

/// Root tick: the API token feed poll when this worker holds the lease and one is due,
/// and this worker's usage report when one is due. Neither is on a request's path.
pub fn api_token_tick(rt: &Runtime, now: u64) {
    let Some(sync) = &rt.api_tokens else { return };
    let upstream = Upstream::control_plane(&sync.settings.control_plane);
    if !rt.calls.in_flight(|c| matches!(c, Call::ApiTokenFeed)) {
        if let Some(path) = sync.claim_poll(now) {
            let timeout = sync.settings.timeout_ms;
            if let Err(status) = rt.calls.get(&*rt.host, &upstream, &path, timeout, Call::ApiTokenFeed) {
                log::warn!(
                    "cannot call cluster `{}` for the API token feed ({status:?}); is it defined?",
                    sync.settings.control_plane.cluster
                );
                sync.complete_poll(None, None, now, &rt.metrics);
            }
        }
    }
    if let Some(body) = sync.take_usage_report(now) {
        let path = sync.settings.usage_path.as_str();
        let timeout = sync.settings.timeout_ms;
        if rt
            .calls
            .post_json(&*rt.host, 0, &upstream, (path, body.as_slice()), timeout, Call::ApiTokenUsage)
            .is_err()
        {
            rt.metrics.count("portcullis.api_tokens.usage_failed");
        }
    }
}

/// The control plane's answer to audit batch `id`.
fn audit_answer(rt: &Runtime, id: &str, body_size: usize) {
    let (status, _) = rt.host.call_response(body_size, 4096);
    if let Some(audit) = &rt.audit {
        audit.complete_send(id, status.as_deref(), rt.host.now_unix_ms(), &rt.metrics);
    }
}

/// Root context: moves this worker's staged decision records to the shared buffer and,
/// when this worker sends and a batch is due, posts it.
pub fn audit_tick(rt: &Runtime, now: u64) {
    let Some(audit) = &rt.audit else { return };
    audit.flush_staged(&rt.metrics);
    if rt.calls.in_flight(|c| matches!(c, Call::AuditBatch { .. })) {
        return;
    }
    let Some(batch) = audit.claim_send(now) else { return };
    let settings = &audit.settings;
    let upstream = Upstream::control_plane(&settings.control_plane);
    let call = Call::AuditBatch { id: batch.id.clone() };
    let sent = rt.calls.post_json(
        &*rt.host,
        0,
        &upstream,
        (settings.path.as_str(), batch.body.as_slice()),
        settings.timeout_ms,
        call,
    );
    if let Err(status) = sent {
        log::warn!(
            "cannot call cluster `{}` for audit batches ({status:?}); is it defined?",
            settings.control_plane.cluster
        );
        audit.complete_send(&batch.id, None, now, &rt.metrics);
    }
}

/// Root tick: the HMAC key set fetch, when this worker holds the lease and one is due.
pub fn hmac_keys_tick(rt: &Runtime, now: u64) {
    let Some(sync) = &rt.hmac_keys else { return };
    if rt.calls.in_flight(|c| matches!(c, Call::HmacKeys)) {
        return;
    }
    let Some(path) = sync.claim_poll(now) else { return };
    let upstream = Upstream::control_plane(&sync.settings.control_plane);
    if let Err(status) = rt.calls.get(&*rt.host, &upstream, &path, sync.settings.timeout_ms, Call::HmacKeys) {
        log::warn!(
            "cannot call cluster `{}` for the HMAC key set ({status:?}); is it defined?",
            sync.settings.control_plane.cluster
        );
        sync.complete_poll(None, None, now, &rt.metrics);
    }
}
