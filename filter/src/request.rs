//! The per-request context: builds a [`RequestParts`], strips forged identity
//! headers, counts the address for burst reports, reads a login's account (waiting for
//! its body), hands the request to the pipeline (`pipeline.rs`) and carries out what
//! comes back.
//!
//! Invariant: a request the filter has not decided never reaches the upstream. A
//! request is undecided until the filter *releases* it (`Held::release`: a callback
//! answers `Continue` with the decision, or `Runtime::resume` carries out a decision
//! taken elsewhere). Until then every request-side callback holds it, whatever the
//! frame (body chunks, trailers, an empty end of stream) and whatever it waits for (a
//! login body, keys, a parked fetch, a lock check, a strict limit or revocation call,
//! a lease): headers and the body answer `Pause`, trailers `StopIteration`. A denied
//! request is never released (its local reply ends it); a reset one is forgotten when
//! its context is dropped. The response of a login attempt is held the same way while
//! its outcome is reported.

use std::rc::Rc;

use portcullis_core::audit::config::ClientAddressMode;
use portcullis_core::audit::event::Seen;
use portcullis_core::authn::UpstreamEdits;
use portcullis_core::check::{first_verdict, Phase, Verdict};
use portcullis_core::client_addr::client_ip;
use portcullis_core::config::NoMatchAction;
use portcullis_core::response::Denial;
use portcullis_core::RequestParts;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use crate::answers::{on_answer, RequestState};
use crate::features::signature::SignedParts;
use crate::host::Host;
use crate::login;
use crate::pipeline::decide;
use crate::reply::{deny, deny_outside_rules, Next};
use crate::runtime::Runtime;
use crate::stateful;

pub struct AuthnContext {
    id: u32,
    host: Rc<dyn Host>,
    runtime: Option<Rc<Runtime>>,
    state: RequestState,
    /// The body is being buffered for the decision (a login's account, a signature).
    awaiting_body: Option<BodyWait>,
    /// When the request's headers arrived (with an `audit` section: its latency).
    started_ms: u64,
}

/// Who waits for a request's body, and how much of it may be buffered.
#[derive(Debug, Clone, Copy)]
struct BodyWait {
    cap: usize,
    /// The login's account is in the body (lockout route).
    login: bool,
    /// The rule's signature covers the body: its cap (over it: 413).
    signature: Option<usize>,
}

impl AuthnContext {
    pub fn new(context_id: u32, host: Rc<dyn Host>, runtime: Option<Rc<Runtime>>) -> Self {
        AuthnContext {
            id: context_id,
            host,
            runtime,
            state: RequestState::default(),
            awaiting_body: None,
            started_ms: 0,
        }
    }

    /// A callback of this context runs: the runtime is told whose it is.
    fn enter(&self) -> Option<Rc<Runtime>> {
        let rt = self.runtime.clone()?;
        rt.enter(self.id);
        Some(rt)
    }
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
        let Some(rt) = self.enter() else { return };
        // Not found: nobody waits for this answer any more.
        let Some(call) = rt.calls.take(token_id) else { return };
        on_answer(&rt, call, (token_id, body_size), self.id, Some(&mut self.state));
    }
}

impl Drop for AuthnContext {
    fn drop(&mut self) {
        if let Some(rt) = &self.runtime {
            rt.held.forget(self.id);
            rt.calls.forget_owner(self.id);
            rt.rate_limits.take_response_headers(self.id);
            rt.lockout.take(self.id);
            if let Some(audit) = &rt.audit {
                audit.forget(self.id);
            }
        }
    }
}

impl AuthnContext {
    /// Authenticates and checks the request (headers and, on a login route, the body
    /// are in hand).
    fn start(&mut self, rt: &Rc<Runtime>, request: RequestParts) -> Next {
        let Some(rule) = rt.policy.match_rule_index(&request) else {
            return match rt.policy.on_no_match {
                NoMatchAction::Allow => {
                    rt.metrics.count("portcullis.requests.allowed_no_rule");
                    if rt.policy.stateful_checks.is_empty() {
                        if let Some(audit) = &rt.audit {
                            audit.decided(None, None, &rt.metrics);
                        }
                        return Next::Continue;
                    }
                    let pending = stateful::pending_for(
                        rt,
                        &request,
                        UpstreamEdits::default(),
                        &[],
                        &self.state.progress.input,
                    );
                    self.state.request = Some(request);
                    stateful::run(rt, self.id, pending)
                }
                NoMatchAction::Deny => deny_outside_rules(rt, "(none)", &Denial::NoMatchingRule),
            };
        };
        self.state.rule = rule;
        self.state.progress.input.rule = Some(rule);
        let next = decide(rt, self.id, &request, rule, &mut self.state.progress);
        self.state.request = Some(request);
        next
    }

    /// Carries out a decision taken in this callback: `Continue` lets the request go
    /// (from then on every callback of it continues); anything else holds it.
    fn settle(&self, next: Next) -> Action {
        match (next, &self.runtime) {
            (Next::Continue, Some(rt)) => {
                rt.held.release(self.id);
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
            Some(rt) if rt.held.is_released(self.id) => Action::Continue,
            _ => Action::Pause,
        }
    }

    /// Headers: strip forged identity headers, refuse ambiguous paths, count the
    /// address, then decide (or wait for a login body).
    fn request_headers(&mut self, end_of_stream: bool) -> Next {
        let Some(rt) = self.enter() else {
            let reply = Denial::KeysUnavailable.render(portcullis_core::config::DEFAULT_REALM);
            let _ = self.host.send_local_reply(503, &reply.headers, "{\"error\":\"filter_not_configured\"}");
            return Next::Paused;
        };
        if rt.audit.is_some() {
            self.started_ms = rt.host.now_unix_ms();
        }
        let raw = rt.host.request_headers();
        let scheme = raw.iter().find(|(n, _)| n == ":scheme").map(|(_, v)| v.clone()).unwrap_or_default();
        let mut request = request_parts(raw);
        strip_managed_headers(&rt, &mut request);

        let guards = &rt.policy.stateful_checks;
        self.state.progress.input.ctx = self.id;
        let ip = if guards.needs_client_ip() {
            let downstream = rt.host.downstream_address();
            client_ip(&request, downstream.as_deref(), guards.trusted_hops)
        } else {
            None
        };
        // The route is normalised before the burst count, so a burst report names the
        // route the rules saw; a refused path still counts (with its raw path).
        let route = request.normalize_route(&rt.policy.paths);
        if let Some(next) = address_checks(&rt, &request, ip.as_deref()) {
            return next;
        }
        if let Err(rejection) = route {
            return deny_outside_rules(&rt, "(path)", &Denial::InvalidPath(rejection));
        }
        let mut login_body = false;
        if !guards.is_empty() {
            self.state.progress.input.client_ip = ip;
            if let Some(lockout) = guards.lockout.as_ref().filter(|l| l.matches(&request)) {
                login_body = lockout.account.needs_body() && !end_of_stream;
                if !login_body {
                    match login::login_account(&rt, &request, Some(&[])) {
                        Ok(account) => self.state.progress.input.login = Some(account),
                        Err(next) => return next,
                    }
                }
            }
        }
        // Rules with `signatures` need keys (inline or the control plane's): without
        // either, no rule is signed and there is no lookup.
        let signature = match rt.policy.signature_keys.keys.is_empty() && rt.policy.hmac_keys.is_none() {
            true => None,
            false => {
                rt.policy.match_rule(&request).and_then(|r| r.signatures.as_ref()).map(|s| s.max_body_bytes)
            }
        };
        if signature.is_some() {
            self.state.progress.signed = Some(SignedParts { scheme, body: Vec::new() });
        }
        if (login_body || signature.is_some()) && !end_of_stream {
            // Decide once the body (the account in it, what the signature covers) is here.
            let login_cap = if login_body { Self::lockout_body_cap(&rt) } else { 0 };
            let cap = login_cap.max(signature.unwrap_or(0));
            self.awaiting_body = Some(BodyWait { cap, login: login_body, signature });
            self.state.request = Some(request);
            return Next::Paused;
        }
        self.start(&rt, request)
    }

    /// The awaited body is complete (end of stream, trailers, or past the cap: `None`).
    fn body_complete(&mut self, rt: &Rc<Runtime>, wait: BodyWait, body: Option<Vec<u8>>) -> Next {
        let Some(request) = self.state.request.take() else {
            log::error!("a body arrived for a request that was not kept; holding it");
            return Next::Paused;
        };
        if let Some(cap) = wait.signature {
            match (&body, &mut self.state.progress.signed) {
                (Some(b), Some(signed)) if b.len() <= cap => signed.body = b.clone(),
                _ => {
                    rt.metrics.count("portcullis.signature.body_too_large");
                    let rule = rt.policy.match_rule(&request);
                    let (name, shadow) = rule.map_or(("(none)", false), |r| (r.name.as_str(), r.shadow));
                    return deny(rt, name, shadow, &Denial::SignedBodyTooLarge, None);
                }
            }
        }
        if wait.login {
            let cap = Self::lockout_body_cap(rt);
            let body = body.filter(|b| b.len() <= cap);
            if body.is_none() {
                rt.metrics.count("portcullis.lockout.body_too_large");
            }
            match login::login_account(rt, &request, body.as_deref()) {
                Ok(account) => self.state.progress.input.login = Some(account),
                Err(next) => return next,
            }
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
        let _ = rt.host.remove_request_header(&name);
    }
}

impl HttpContext for AuthnContext {
    fn on_http_request_headers(&mut self, _: usize, end_of_stream: bool) -> Action {
        let next = self.request_headers(end_of_stream);
        self.settle(next)
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let (Some(rt), Some(wait)) = (self.enter(), self.awaiting_body) else {
            return self.hold_unless_released();
        };
        if !end_of_stream && body_size <= wait.cap {
            return Action::Pause;
        }
        self.awaiting_body = None;
        let body = (body_size <= wait.cap).then(|| rt.host.request_body(body_size).unwrap_or_default());
        let next = self.body_complete(&rt, wait, body);
        self.settle(next)
    }

    fn on_http_request_trailers(&mut self, _: usize) -> Action {
        let (Some(rt), Some(wait)) = (self.enter(), self.awaiting_body) else {
            return self.hold_unless_released();
        };
        self.awaiting_body = None;
        // Trailers end the body: decide on what is buffered (reads are capped by the host
        // at what there is; one byte more than the cap tells a body over it).
        let body = rt.host.request_body(wait.cap.saturating_add(1)).unwrap_or_default();
        let next = self.body_complete(&rt, wait, (body.len() <= wait.cap).then_some(body));
        self.settle(next)
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        let Some(rt) = self.enter() else { return Action::Continue };
        if rt.policy.stateful_checks.is_empty() {
            return Action::Continue;
        }
        match login::on_response_headers(&rt, self.id) {
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

    /// The request is over: its decision is recorded (with an `audit` section).
    fn on_log(&mut self) {
        let Some(rt) = self.enter() else { return };
        let Some(audit) = rt.audit.as_ref().filter(|a| a.wants(self.id)) else { return };
        let request = request_parts(rt.host.request_headers());
        let client_ip = match audit.settings.client_address {
            ClientAddressMode::Omit => None,
            _ => {
                let downstream = rt.host.downstream_address();
                client_ip(&request, downstream.as_deref(), rt.policy.stateful_checks.trusted_hops)
            }
        };
        let request_id = request.header_values("x-request-id").next().map(str::to_string);
        let seen = Seen {
            request_id,
            method: request.method,
            path: request.path,
            client_ip,
            start_ms: self.started_ms,
        };
        let status = rt.host.response_status();
        audit.finish(self.id, &seen, status, rt.host.now_unix_ms(), &rt.metrics);
    }
}

impl AuthnContext {
    /// Response headers held for the login report: every later frame of the response is
    /// held too (one answered with Continue would let the held headers through before
    /// the report is in).
    fn hold_response_for_report(&self) -> Action {
        match &self.enter() {
            Some(rt) if login::report_pending(rt, self.id) => Action::Pause,
            _ => Action::Continue,
        }
    }
}

/// The checks of [`Phase::Address`] (burst): `Some` with what to answer when one does
/// not pass. They run before the path is judged, so a refused path still counts.
fn address_checks(rt: &Runtime, request: &RequestParts, ip: Option<&str>) -> Option<Next> {
    let burst = rt.policy.stateful_checks.burst.as_ref()?;
    let env = rt.env(rt.host.now_unix_ms());
    let mut burst_check = |_: &mut ()| rt.burst.check(env, burst, request, ip);
    match first_verdict(&mut (), &mut [(Phase::Address, &mut burst_check)]) {
        Verdict::Pass => None,
        Verdict::Deny(denial) => Some(deny_outside_rules(rt, "(burst)", &denial)),
        Verdict::Call(never) => match never {},
        // Nothing in this phase waits; fail closed should one ever ask to.
        Verdict::WaitForKeys(_) | Verdict::WaitForBody => {
            Some(deny_outside_rules(rt, "(burst)", &Denial::RateLimitUnavailable))
        }
    }
}
