//! The per-request context: builds a [`RequestParts`], asks core for a decision, and
//! carries it out (continue with upstream edits, or a local reply). When the decision
//! needs keys this worker does not have (a rotated key's `kid`, or keys not loaded yet)
//! the request pauses while the JWKS is fetched, then is decided again. Likewise a
//! token whose version is above the replica's ceiling (`version_unknown`) may be newer
//! than the replica rather than forged (right after a breach rotation): the request
//! pauses while the feed is polled once, then is decided again.
//!
//! Invariant: a request the filter has not decided never reaches the upstream. A
//! request is undecided until the filter *releases* it ([`Runtime::release`]: a
//! callback answers `Continue` with the decision, or [`Runtime::resume`] carries out a
//! decision taken elsewhere). Until then every request-side callback holds it, whatever
//! the frame (body chunks, trailers, an empty end of stream) and whatever it waits for
//! (a login body, keys, a parked fetch, a lock check, a strict limit or revocation
//! call, a lease): headers and the body answer `Pause`, trailers `StopIteration`. A
//! denied request is never released (its local reply ends it); a reset one is
//! forgotten when its context is dropped. The response of a login attempt is held the
//! same way while its outcome is reported.

use std::rc::Rc;

use portcullis_core::authn::{
    authenticate, check_token_status, Authenticated, AuthnInput, Outcome, RevocationInput, UpstreamEdits,
};
use portcullis_core::client_addr::client_ip;
use portcullis_core::codec::percent_encode_query_value;
use portcullis_core::config::NoMatchAction;
use portcullis_core::jwt::provider::{KeySource, TokenLocation};
use portcullis_core::jwt::{Reason, VerifiedToken};
use portcullis_core::keyfetch::FetchKind;
use portcullis_core::ratelimit::LimitContext;
use portcullis_core::response::Denial;
use portcullis_core::revocation::TokenStatus;
use portcullis_core::revocation::{RevocationCheck, StaleAction};
use portcullis_core::route::Rule;
use portcullis_core::RequestParts;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use crate::guard::{LoginAttempt, Pending};
use crate::host;
use crate::revocation::MAX_FEED_BYTES;
use crate::runtime::{Runtime, FEED_POLL, MAX_JWKS_BYTES};

/// Bound on decide → fetch → decide rounds for one request.
const MAX_ROUNDS: usize = 4;

pub struct AuthnContext {
    id: u32,
    runtime: Option<Rc<Runtime>>,
    request: Option<RequestParts>,
    rule: usize,
    progress: Progress,
    /// A login attempt whose account is in the body: the body is being buffered.
    awaiting_body: bool,
}

/// What one request has already tried while waiting for keys.
#[derive(Default)]
pub struct Progress {
    /// Providers whose keys were already re-read from shared data for this request.
    reloaded: Vec<usize>,
    /// Providers whose keys this request fetched or could not fetch.
    tried: Vec<usize>,
    /// Outstanding JWKS fetch: call token → provider index.
    fetch: Option<(u32, usize)>,
    /// Outstanding strict revocation check.
    strict: Option<StrictCheck>,
    /// Outstanding feed poll this request started (a version above the ceiling).
    feed_poll: Option<u32>,
    /// The feed was polled (or waited for) on this request's behalf already.
    feed_refreshed: bool,
    /// Decided from another context's callback: no calls may be started for it (their
    /// answers would reach that other context).
    no_callouts: bool,
    /// What the stateful checks after authentication need.
    pub(crate) guard: GuardInput,
}

/// What a request brings to the stateful checks: its context, rule, address and (on a
/// login route) the account it names.
#[derive(Debug, Clone, Default)]
pub struct GuardInput {
    pub ctx: u32,
    pub rule: Option<usize>,
    pub client_ip: Option<String>,
    /// On a lockout route: `Some(account)`, or `Some(None)` when none could be read and
    /// the lockout counts such attempts by address only.
    pub login: Option<Option<String>>,
}

impl Progress {
    /// For a parked request decided from another context: its keys were waited for
    /// already, and no call may be started on its behalf.
    pub(crate) fn for_parked(remote_providers: Vec<usize>, guard: GuardInput) -> Self {
        Progress {
            reloaded: remote_providers.clone(),
            tried: remote_providers,
            fetch: None,
            strict: None,
            feed_poll: None,
            feed_refreshed: true,
            no_callouts: true,
            guard,
        }
    }
}

/// A request whose tokens verified, waiting for the control plane's word on them.
struct StrictCheck {
    token_id: u32,
    current: Authenticated,
    rest: Vec<Authenticated>,
    identities: Vec<Authenticated>,
    edits: UpstreamEdits,
}

/// How the decided request continues.
pub enum Next {
    Continue,
    Paused,
}

impl AuthnContext {
    pub fn new(context_id: u32, runtime: Option<Rc<Runtime>>) -> Self {
        AuthnContext {
            id: context_id,
            runtime,
            request: None,
            rule: 0,
            progress: Progress::default(),
            awaiting_body: false,
        }
    }
}

/// Decides `request` under rule `rule` and carries the decision out on the current
/// (effective) request context. `Paused` with `progress.fetch` set means a JWKS fetch
/// was dispatched from this context; `Paused` after parking means the request waits for
/// a fetch another context started ([`Runtime::park`]).
pub fn decide(
    rt: &Runtime,
    context_id: u32,
    request: &RequestParts,
    rule_index: usize,
    progress: &mut Progress,
) -> Next {
    let Some(rule) = rt.policy.rules.get(rule_index) else {
        return Next::Continue;
    };
    for _ in 0..MAX_ROUNDS {
        let now_ms = host::now_unix_ms();
        // The replica first: keys it revokes are dropped before the keys are read.
        rt.refresh_revocation(now_ms);
        let keys = rt.keys(now_ms, false);
        let can_fetch = rt.fetchable(&progress.tried);
        let outcome = {
            let view = rt.revocation.as_ref().and_then(|r| r.view(now_ms));
            let revocation = view.as_ref().map(|v| RevocationInput {
                replica: &v.replica,
                stale: v.stale,
                synced: v.synced,
            });
            let versions = rt.versions.borrow();
            let input = AuthnInput {
                policy: &rt.policy,
                rule,
                request,
                keys: &keys,
                versions: &versions,
                can_fetch_keys: &can_fetch,
                revocation,
                now_unix_secs: now_ms / 1000,
            };
            authenticate(&input, &mut rt.cache.borrow_mut())
        };
        match outcome {
            Outcome::Allow { identities, edits } => {
                if rule.revocation_check == RevocationCheck::PerRequest && !progress.no_callouts {
                    let unchecked: Vec<Authenticated> = identities
                        .iter()
                        .filter(|i| rt.policy.revocation_applies(i.provider) && !rt.strict_cached(i, now_ms))
                        .cloned()
                        .collect();
                    if !unchecked.is_empty() {
                        return start_strict_check(rt, rule, request, unchecked, identities, edits, progress);
                    }
                }
                return allow(rt, request, &identities, &edits, &progress.guard);
            }
            Outcome::Deny { denial, provider } => {
                if denial == Denial::InvalidToken(Reason::VersionUnknown)
                    && provider.is_some_and(|p| rt.policy.revocation_applies(p))
                    && !progress.feed_refreshed
                {
                    progress.feed_refreshed = true;
                    if let Some(next) = refresh_feed(rt, context_id, request, rule_index, progress, now_ms) {
                        return next;
                    }
                }
                let provider_name = provider.and_then(|p| rt.policy.providers.get(p)).map(|p| p.name());
                return deny(rt, rule.name.as_str(), rule.shadow, &denial, provider_name);
            }
            Outcome::FetchKeys(p) => {
                // Another worker may already have fetched the new keys.
                if !progress.reloaded.contains(&p) {
                    progress.reloaded.push(p);
                    rt.keys(now_ms, true);
                    continue;
                }
                progress.tried.push(p);
                if let Some(token) = start_fetch(rt, p, now_ms) {
                    progress.fetch = Some((token, p));
                    return Next::Paused;
                }
                // A fetch some context already started will answer soon: wait for it
                // rather than reject a token signed by a key just rotated in.
                if rt.fetch_in_flight(p, now_ms)
                    && rt.park(context_id, p, rule_index, request.clone(), progress.guard.clone())
                {
                    rt.metrics.count("portcullis.requests.parked");
                    return Next::Paused;
                }
                // A fetch may have finished between the reload above and now: decide
                // once more with whatever shared data holds.
                rt.keys(now_ms, true);
            }
        }
    }
    // Only reachable if core keeps asking for keys it cannot get.
    deny(rt, rule.name.as_str(), rule.shadow, &Denial::KeysUnavailable, None)
}

/// A token's version is above the replica's ceiling: polls the feed now (at most once
/// per poll interval for the whole Envoy) or waits for the poll in flight, so a token
/// minted after a breach rotation is not refused for the replica being a poll behind.
/// `None`: neither is possible, decide with the replica as it is.
fn refresh_feed(
    rt: &Runtime,
    context_id: u32,
    request: &RequestParts,
    rule_index: usize,
    progress: &mut Progress,
    now_ms: u64,
) -> Option<Next> {
    let sync = rt.revocation.as_ref()?;
    if progress.no_callouts {
        return None;
    }
    if let Some(path) = sync.claim_on_demand(now_ms) {
        match sync.dispatch(&path) {
            Ok(token) => {
                rt.metrics.count("portcullis.revocation.poll_on_demand");
                progress.feed_poll = Some(token);
                return Some(Next::Paused);
            }
            Err(status) => {
                log::warn!(
                    "cannot call cluster `{}` for the revocation feed ({status:?})",
                    sync.settings.control_plane.cluster
                );
                sync.complete_poll(None, None, now_ms, false, &rt.metrics);
                return None;
            }
        }
    }
    if sync.poll_in_flight(now_ms)
        && rt.park(context_id, FEED_POLL, rule_index, request.clone(), progress.guard.clone())
    {
        rt.metrics.count("portcullis.requests.parked");
        return Some(Next::Paused);
    }
    None
}

/// Authentication passed: the stateful checks (rate limits, lockout) decide the rest.
fn allow(
    rt: &Runtime,
    request: &RequestParts,
    identities: &[Authenticated],
    edits: &UpstreamEdits,
    guard: &GuardInput,
) -> Next {
    for i in identities {
        if let Some(p) = rt.policy.providers.get(i.provider) {
            rt.metrics.count(&format!("portcullis.provider.{}.allowed", p.name()));
        }
    }
    if rt.policy.stateful_checks.rate_limits.is_empty() && guard.login.is_none() {
        // Nothing stateful to check: no need to keep the request.
        rt.metrics.count("portcullis.requests.allowed");
        apply_edits(request, edits);
        return Next::Continue;
    }
    let tokens: Vec<&VerifiedToken> = identities.iter().map(|i| i.token.as_ref()).collect();
    rt.guard(guard.ctx, pending_for(rt, request, edits.clone(), &tokens, guard))
}

/// The stateful checks a request goes through.
pub(crate) fn pending_for(
    rt: &Runtime,
    request: &RequestParts,
    edits: UpstreamEdits,
    tokens: &[&VerifiedToken],
    guard: &GuardInput,
) -> Pending {
    let guards = &rt.policy.stateful_checks;
    let rule_name = guard.rule.and_then(|r| rt.policy.rules.get(r)).map(|r| r.name.as_str());
    let ctx = LimitContext { request, rule: rule_name, tokens, client_ip: guard.client_ip.as_deref() };
    let limits = guards.applicable(guard.rule, &ctx);
    let login = match (&guard.login, &guards.lockout) {
        (Some(account), Some(lockout)) => {
            Some(LoginAttempt::new(lockout.subjects(account.as_deref(), guard.client_ip.as_deref())))
        }
        _ => None,
    };
    Pending::new(request.clone(), edits, limits, login)
}

/// Asks the control plane about the first unchecked token; the rest follow one by one.
fn start_strict_check(
    rt: &Runtime,
    rule: &Rule,
    request: &RequestParts,
    mut unchecked: Vec<Authenticated>,
    identities: Vec<Authenticated>,
    edits: UpstreamEdits,
    progress: &mut Progress,
) -> Next {
    let Some(settings) = rt.policy.revocation.as_ref() else {
        return allow(rt, request, &identities, &edits, &progress.guard);
    };
    if unchecked.is_empty() {
        return allow(rt, request, &identities, &edits, &progress.guard);
    }
    let current = unchecked.remove(0);
    let jti = current.token.claim("jti").and_then(|v| v.as_str()).unwrap_or("");
    let sub = current.token.subject.as_deref().unwrap_or("");
    let path = format!(
        "{}?jti={}&sub={}",
        settings.status_path,
        percent_encode_query_value(jti),
        percent_encode_query_value(sub)
    );
    rt.metrics.count("portcullis.revocation.strict_checks");
    match host::dispatch_get(
        &host::Upstream::control_plane(&settings.control_plane),
        &path,
        settings.status_timeout_ms,
    ) {
        Ok(token_id) => {
            progress.strict = Some(StrictCheck { token_id, current, rest: unchecked, identities, edits });
            Next::Paused
        }
        Err(status) => {
            log::warn!(
                "cannot call cluster `{}` for a strict revocation check ({status:?})",
                settings.control_plane.cluster
            );
            strict_unavailable(rt, rule, request, &identities, &edits, &progress.guard)
        }
    }
}

/// The control plane did not answer a strict check: the rule's failure mode decides.
fn strict_unavailable(
    rt: &Runtime,
    rule: &Rule,
    request: &RequestParts,
    identities: &[Authenticated],
    edits: &UpstreamEdits,
    guard: &GuardInput,
) -> Next {
    rt.metrics.count("portcullis.revocation.strict_unavailable");
    match rule.on_stale {
        // The replica already had its say when the token verified.
        StaleAction::Allow => allow(rt, request, identities, edits, guard),
        StaleAction::Deny => deny(rt, &rule.name, rule.shadow, &Denial::RevocationUnavailable, None),
    }
}

/// Handles the answer to a strict check: deny, check the next token, or allow.
fn complete_strict_check(
    rt: &Runtime,
    rule: &Rule,
    request: &RequestParts,
    check: StrictCheck,
    body_size: usize,
    progress: &mut Progress,
) -> Next {
    let (status, body) = call_response_capped(body_size, 64 * 1024);
    let answer = match (status.as_deref(), body) {
        (Some("200"), Some(bytes)) => serde_json::from_slice::<TokenStatus>(&bytes).ok(),
        _ => None,
    };
    let Some(answer) = answer else {
        return strict_unavailable(rt, rule, request, &check.identities, &check.edits, &progress.guard);
    };
    let now_ms = host::now_unix_ms();
    if let Err(reason) = check_token_status(&rt.policy, &check.current, &answer, now_ms / 1000) {
        let provider = rt.policy.providers.get(check.current.provider).map(|p| p.name());
        return deny(rt, &rule.name, rule.shadow, &Denial::InvalidToken(reason), provider);
    }
    rt.strict_remember(&check.current, now_ms);
    start_strict_check(rt, rule, request, check.rest, check.identities, check.edits, progress)
}

/// Claims and dispatches an on-demand JWKS fetch; `None` when rate-limited or failed.
fn start_fetch(rt: &Runtime, p: usize, now_ms: u64) -> Option<u32> {
    let provider = rt.policy.providers.get(p)?;
    let KeySource::Remote(remote) = provider.key_source() else {
        return None;
    };
    if !rt.claim_fetch(p, FetchKind::OnDemand, now_ms) {
        return None;
    }
    match host::dispatch_get(
        &host::Upstream::public(&remote.cluster, &remote.authority),
        &remote.path,
        remote.timeout_ms,
    ) {
        Ok(token) => {
            rt.metrics.count(&format!("portcullis.jwks.{}.fetch_on_demand", provider.name()));
            Some(token)
        }
        Err(status) => {
            log::warn!(
                "provider `{}`: cannot call cluster `{}` ({status:?})",
                provider.name(),
                remote.cluster
            );
            rt.complete_fetch(p, None, None, now_ms);
            None
        }
    }
}

pub(crate) fn deny(rt: &Runtime, rule: &str, shadow: bool, denial: &Denial, provider: Option<&str>) -> Next {
    let code = denial.code();
    if let Some(name) = provider {
        rt.metrics.count(&format!("portcullis.provider.{name}.denied.{code}"));
    }
    if shadow {
        rt.metrics.count(&format!("portcullis.requests.shadow_denied.{code}"));
        log::info!("rule `{rule}` (shadow) would deny: {code}");
        return Next::Continue;
    }
    rt.metrics.count(&format!("portcullis.requests.denied.{code}"));
    log::debug!("rule `{rule}` denied: {code}");
    let reply = denial.render(&rt.policy.realm);
    if let Err(status) = host::send_local_reply(reply.status, &reply.headers, &reply.body) {
        log::error!("could not send the local reply ({status:?})");
    }
    Next::Paused
}

pub(crate) fn apply_edits(request: &RequestParts, edits: &UpstreamEdits) {
    for (name, value) in &edits.set_headers {
        let _ = host::set_request_header(name, value);
    }
    if edits.remove_tokens.is_empty() {
        return;
    }
    // Core computes the request without the tokens; copy the affected parts back.
    let mut scrubbed = request.clone();
    for location in &edits.remove_tokens {
        location.remove_from(&mut scrubbed);
    }
    for location in &edits.remove_tokens {
        match location {
            TokenLocation::Header { name, .. } => replace_header(&scrubbed, name),
            TokenLocation::Cookie(_) => replace_header(&scrubbed, "cookie"),
            TokenLocation::Query(_) => {
                let _ = host::set_request_header(":path", &scrubbed.path);
            }
        }
    }
}

/// Replaces every value of `name` with the values it has in `scrubbed`.
fn replace_header(scrubbed: &RequestParts, name: &str) {
    let _ = host::remove_request_header(name);
    for value in scrubbed.header_values(name) {
        let _ = host::add_request_header(name, value);
    }
}

/// Status and body of the JWKS call whose response is being delivered.
pub fn call_response(body_size: usize) -> (Option<String>, Option<Vec<u8>>) {
    call_response_capped(body_size, MAX_JWKS_BYTES)
}

/// Status and body (`None` when larger than `cap`) of the call being delivered.
pub fn call_response_capped(body_size: usize, cap: usize) -> (Option<String>, Option<Vec<u8>>) {
    let status = host::http_call_response_headers().into_iter().find(|(n, _)| n == ":status").map(|(_, v)| v);
    (status, host::http_call_response_body(body_size, cap))
}

fn request_parts(headers: Vec<(String, String)>) -> RequestParts {
    let mut parts = RequestParts::default();
    for (name, value) in headers {
        match name.as_str() {
            ":method" => parts.method = value,
            ":authority" => parts.authority = value,
            ":path" => parts.path = value,
            n if n.starts_with(':') => {}
            _ => parts.headers.push((name, value)),
        }
    }
    parts
}

impl Context for AuthnContext {
    fn on_http_call_response(&mut self, token_id: u32, _: usize, body_size: usize, _: usize) {
        let Some(rt) = self.runtime.clone() else { return };
        if rt.on_guard_call_response(token_id, body_size, self.id) {
            return;
        }
        if self.progress.strict.as_ref().is_some_and(|c| c.token_id == token_id) {
            let Some(check) = self.progress.strict.take() else { return };
            let (Some(request), Some(rule)) = (self.request.as_ref(), rt.policy.rules.get(self.rule)) else {
                return;
            };
            if let Next::Continue =
                complete_strict_check(&rt, rule, request, check, body_size, &mut self.progress)
            {
                rt.resume(self.id);
            }
            return;
        }
        if self.progress.feed_poll == Some(token_id) {
            self.progress.feed_poll = None;
            let (status, body) = call_response_capped(body_size, MAX_FEED_BYTES);
            if let Some(sync) = &rt.revocation {
                // One page is enough: every page carries the current ceiling.
                sync.complete_poll(status.as_deref(), body, host::now_unix_ms(), false, &rt.metrics);
            }
            let Some(request) = self.request.take() else { return };
            let next = decide(&rt, self.id, &request, self.rule, &mut self.progress);
            self.request = Some(request);
            if let Next::Continue = next {
                rt.resume(self.id);
            }
            rt.wake_parked(Some(FEED_POLL), self.id);
            return;
        }
        let Some((token, provider)) = self.progress.fetch else {
            return;
        };
        if token != token_id {
            return;
        }
        self.progress.fetch = None;
        let (status, body) = call_response(body_size);
        rt.complete_fetch(provider, status.as_deref(), body, host::now_unix_ms());
        let Some(request) = self.request.take() else {
            return;
        };
        let next = decide(&rt, self.id, &request, self.rule, &mut self.progress);
        self.request = Some(request);
        if let Next::Continue = next {
            rt.resume(self.id);
        }
        // Requests of this worker that waited for the same keys.
        rt.wake_parked(Some(provider), self.id);
    }
}

impl Drop for AuthnContext {
    fn drop(&mut self) {
        if let Some(rt) = &self.runtime {
            rt.unpark(self.id);
            rt.forget_guarded(self.id);
            rt.forget_released(self.id);
        }
    }
}

impl AuthnContext {
    /// Authenticates and checks the request (headers and, on a login route, the body
    /// are in hand).
    fn start(&mut self, rt: &Rc<Runtime>, request: RequestParts) -> Next {
        let Some(rule) = rt.policy.rules.iter().position(|r| r.matcher.matches(&request)) else {
            return match rt.policy.on_no_match {
                NoMatchAction::Allow => {
                    rt.metrics.count("portcullis.requests.allowed_no_rule");
                    if rt.policy.stateful_checks.is_empty() {
                        return Next::Continue;
                    }
                    let pending =
                        pending_for(rt, &request, UpstreamEdits::default(), &[], &self.progress.guard);
                    self.request = Some(request);
                    rt.guard(self.id, pending)
                }
                NoMatchAction::Deny => deny(rt, "(none)", false, &Denial::NoMatchingRule, None),
            };
        };
        self.rule = rule;
        self.progress.guard.rule = Some(rule);
        let next = decide(rt, self.id, &request, rule, &mut self.progress);
        self.request = Some(request);
        next
    }

    /// Carries out a decision taken in this callback: `Continue` lets the request go
    /// (from then on every callback of it continues); anything else holds it.
    fn settle(&self, next: Next) -> Action {
        match (next, &self.runtime) {
            (Next::Continue, Some(rt)) => {
                rt.release(self.id);
                Action::Continue
            }
            _ => Action::Pause,
        }
    }

    /// The answer of a request-side callback that decides nothing itself (a body chunk,
    /// trailers): continue once the filter has let the request go, hold it before. This
    /// one check is what keeps an undecided request from the upstream, whichever frame
    /// arrives while the decision waits (for its body, keys, the control plane).
    fn hold_unless_released(&self) -> Action {
        match &self.runtime {
            Some(rt) if rt.is_released(self.id) => Action::Continue,
            _ => Action::Pause,
        }
    }

    /// Headers: strip forged identity headers, refuse ambiguous paths, count the
    /// address, then decide (or wait for a login body).
    fn request_headers(&mut self, end_of_stream: bool) -> Next {
        let Some(rt) = self.runtime.clone() else {
            let reply = Denial::KeysUnavailable.render(portcullis_core::config::DEFAULT_REALM);
            let _ = host::send_local_reply(503, &reply.headers, "{\"error\":\"filter_not_configured\"}");
            return Next::Paused;
        };
        let mut request = request_parts(host::request_headers());
        strip_managed_headers(&rt, &mut request);

        let guards = &rt.policy.stateful_checks;
        self.progress.guard.ctx = self.id;
        let ip = if guards.needs_client_ip() {
            let downstream = host::downstream_address();
            client_ip(&request, downstream.as_deref(), guards.trusted_hops)
        } else {
            None
        };
        // The route is normalised before the burst count, so a burst report names the
        // route the rules saw; a refused path still counts (with its raw path).
        let route = request.normalize_route(&rt.policy.paths);
        if !guards.is_empty() {
            if let Some(denial) = rt.burst_check(&request, ip.as_deref(), host::now_unix_ms()) {
                return deny(&rt, "(burst)", false, &denial, None);
            }
        }
        if let Err(rejection) = route {
            return deny(&rt, "(path)", false, &Denial::InvalidPath(rejection), None);
        }
        if !guards.is_empty() {
            self.progress.guard.client_ip = ip;
            if let Some(lockout) = guards.lockout.as_ref().filter(|l| l.matches(&request)) {
                if lockout.account.needs_body() && !end_of_stream {
                    // Decide once the body (and the account in it) is here.
                    self.awaiting_body = true;
                    self.request = Some(request);
                    return Next::Paused;
                }
                match rt.login_account(&request, Some(&[])) {
                    Ok(account) => self.progress.guard.login = Some(account),
                    Err(next) => return next,
                }
            }
        }
        self.start(&rt, request)
    }

    /// The login body is complete (end of stream, trailers, or past the cap: `None`).
    fn login_body_complete(&mut self, rt: &Rc<Runtime>, body: Option<Vec<u8>>) -> Next {
        self.awaiting_body = false;
        let Some(request) = self.request.take() else {
            log::error!("a login body arrived for a request that was not kept; holding it");
            return Next::Paused;
        };
        if body.is_none() {
            rt.metrics.count("portcullis.lockout.body_too_large");
        }
        match rt.login_account(&request, body.as_deref()) {
            Ok(account) => self.progress.guard.login = Some(account),
            Err(next) => return next,
        }
        self.start(rt, request)
    }

    fn lockout_body_cap(rt: &Runtime) -> usize {
        rt.policy.stateful_checks.lockout.as_ref().map(|l| l.max_body_bytes).unwrap_or(0)
    }
}

/// Identity headers are ours to set: drops every header the client sent whose name is a
/// managed one, also when spelled with `_` for `-` (CGI/WSGI-style upstreams merge
/// `x_portcullis_sub` into `x-portcullis-sub`), from the request and from what the
/// decision reads.
fn strip_managed_headers(rt: &Runtime, request: &mut RequestParts) {
    let mut forged: Vec<String> = Vec::new();
    request.headers.retain(|(name, _)| {
        let managed = rt.policy.is_managed_header(name);
        if managed && !forged.contains(name) {
            forged.push(name.clone());
        }
        !managed
    });
    for name in forged {
        let _ = host::remove_request_header(&name);
    }
}

impl HttpContext for AuthnContext {
    fn on_http_request_headers(&mut self, _: usize, end_of_stream: bool) -> Action {
        let next = self.request_headers(end_of_stream);
        self.settle(next)
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(rt) = self.runtime.clone().filter(|_| self.awaiting_body) else {
            return self.hold_unless_released();
        };
        let cap = Self::lockout_body_cap(&rt);
        if !end_of_stream && body_size <= cap {
            return Action::Pause;
        }
        let body = (body_size <= cap).then(|| host::request_body(body_size).unwrap_or_default());
        let next = self.login_body_complete(&rt, body);
        self.settle(next)
    }

    fn on_http_request_trailers(&mut self, _: usize) -> Action {
        let Some(rt) = self.runtime.clone().filter(|_| self.awaiting_body) else {
            return self.hold_unless_released();
        };
        // Trailers end the body: decide on what is buffered (reads are capped by the host
        // at what there is; one byte more than the cap tells a body over it).
        let cap = Self::lockout_body_cap(&rt);
        let body = host::request_body(cap.saturating_add(1)).unwrap_or_default();
        let next = self.login_body_complete(&rt, (body.len() <= cap).then_some(body));
        self.settle(next)
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        let Some(rt) = self.runtime.clone() else { return Action::Continue };
        if rt.policy.stateful_checks.is_empty() {
            return Action::Continue;
        }
        match rt.on_guarded_response(self.id) {
            Next::Continue => Action::Continue,
            Next::Paused => Action::Pause,
        }
    }

    fn on_http_response_body(&mut self, _: usize, _: bool) -> Action {
        self.hold_response_for_report()
    }

    fn on_http_response_trailers(&mut self, _: usize) -> Action {
        self.hold_response_for_report()
    }
}

impl AuthnContext {
    /// Response headers held for the login report: every later frame of the response is
    /// held too (one answered with Continue would let the held headers through before
    /// the report is in).
    fn hold_response_for_report(&self) -> Action {
        match &self.runtime {
            Some(rt) if rt.report_pending(self.id) => Action::Pause,
            _ => Action::Continue,
        }
    }
}
