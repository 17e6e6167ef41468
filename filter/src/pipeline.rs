//! The decision for one request: the authentication phases run as checks of
//! `portcullis_core::check` in phase order (the JWT check, then the strict revocation
//! check), and this module acts on the first verdict that does not pass: keys to wait
//! for (re-read them, fetch them, or park behind a fetch another context started), the
//! version ceiling's on-demand feed poll, the strict check's call, a denial. When they
//! pass, the stateful checks follow (`stateful.rs`). What the answers to its calls
//! continue is in `answers.rs`.
//!
//! When the decision needs keys this worker does not have (a rotated key's `kid`, or
//! keys not loaded yet) the request pauses while the JWKS is fetched, then is decided
//! again. Likewise a token whose version is above the replica's ceiling
//! (`version_unknown`) may be newer than the replica rather than forged (right after a
//! breach rotation): the request pauses while the feed is polled once, then is decided
//! again.

use portcullis_core::api_auth::ApiAuth;
use portcullis_core::audit::SubjectKind;
use portcullis_core::authn::{
    authenticate, check_token_status, Authenticated, AuthnInput, Outcome, RevocationInput, UpstreamEdits,
};
use portcullis_core::check::{first_verdict, CheckFn, Phase, Verdict};
use portcullis_core::codec::percent_encode_query_value;
use portcullis_core::jwt::{Reason, VerifiedToken};
use portcullis_core::response::Denial;
use portcullis_core::revocation::{RevocationCheck, StaleAction, TokenStatus};
use portcullis_core::route::Rule;
use portcullis_core::RequestParts;

use crate::calls::Call;
use crate::features::jwt::fetchable;
use crate::features::signature::{self, PendingClaim};
use crate::held::{CheckInput, FEED_POLL};
use crate::host::Upstream;
use crate::key_wait::{park, wait_for_keys};
use crate::replay_claim;
use crate::reply::{apply_edits, count_allowed, deny, Next};
use crate::runtime::Runtime;
use crate::stateful;

pub use crate::progress::{Progress, StrictCheck};

/// Bound on decide → fetch → decide rounds for one request.
const MAX_ROUNDS: usize = 4;
/// Largest answer to a strict revocation check read.
const MAX_STATUS_BYTES: usize = 64 * 1024;

/// The calls the authentication phases may need.
enum AuthCall {
    /// The token's version is above the replica's ceiling: poll the feed, then decide
    /// again (the denial stands if that cannot be done).
    FeedPoll(Denial),
    /// Ask the control plane about these verified tokens (strict revocation check).
    TokenStatus(Vec<Authenticated>),
    /// Claim a verified signature's replay id across the fleet (`replay: global`).
    ReplayClaim(PendingClaim),
}

/// One round of the authentication phases: what they read, and what they found.
struct Round<'a> {
    rule: &'a Rule,
    request: &'a RequestParts,
    progress: &'a mut Progress,
    now_ms: u64,
    /// Set when the JWT check passes.
    identities: Vec<Authenticated>,
    edits: UpstreamEdits,
    /// The provider a denial names.
    provider: Option<usize>,
    /// An API token decided the request (the JWT check then has nothing to do).
    api_token: bool,
}

/// Decides `request` under rule `rule` and carries the decision out on the current
/// (effective) request context: the authentication phases ([`Phase::Authenticate`]:
/// JWT; [`Phase::Revocation`]: the strict check), then, when they pass, the stateful
/// checks (`stateful.rs`). `Paused`: a call was dispatched from this context (its
/// answer continues in `answers.rs`), the request was parked behind a fetch another
/// context started, or it was refused.
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
        let now_ms = rt.host.now_unix_ms();
        // The replica first: keys it revokes are dropped before the keys are read.
        rt.refresh_revocation(now_ms);
        let mut round = Round {
            rule,
            request,
            progress: &mut *progress,
            now_ms,
            identities: Vec::new(),
            edits: UpstreamEdits::default(),
            provider: None,
            api_token: false,
        };
        let mut signed = |r: &mut Round<'_>| signature_check(rt, r);
        let mut api = |r: &mut Round<'_>| api_token_check(rt, r);
        let mut jwt = |r: &mut Round<'_>| jwt_check(rt, r);
        let mut strict = |r: &mut Round<'_>| strict_revocation_check(rt, r);
        // The signature first: it runs once, and a JWT round may start again.
        let checks: &mut [(Phase, CheckFn<'_, Round<'_>, AuthCall>)] = &mut [
            (Phase::Authenticate, &mut signed),
            (Phase::Authenticate, &mut api),
            (Phase::Authenticate, &mut jwt),
            (Phase::Revocation, &mut strict),
        ];
        let verdict = first_verdict(&mut round, checks);
        let Round { identities, mut edits, provider, .. } = round;
        signature::upstream_headers(progress.input.signer.as_ref(), &mut edits);
        match verdict {
            Verdict::Pass => return allow(rt, request, &identities, &edits, &progress.input),
            Verdict::Deny(denial) => return refuse(rt, rule, &denial, provider),
            Verdict::Call(AuthCall::TokenStatus(unchecked)) => {
                return start_strict_check(rt, rule, request, unchecked, identities, edits, progress)
            }
            Verdict::Call(AuthCall::ReplayClaim(pending)) => {
                if replay_claim::start(rt, context_id, &pending, progress) {
                    progress.replay = Some(pending);
                    return Next::Paused;
                }
                match replay_claim::unavailable(rt, pending) {
                    Ok(pending) => progress.input.signer = Some(pending.signer),
                    Err(denial) => return refuse(rt, rule, &denial, None),
                }
            }
            Verdict::Call(AuthCall::FeedPoll(denial)) => {
                progress.feed_refreshed = true;
                let polled = refresh_feed(rt, context_id, request, rule_index, progress, now_ms);
                return polled.unwrap_or_else(|| refuse(rt, rule, &denial, provider));
            }
            Verdict::WaitForKeys(p) => {
                if let Some(next) = wait_for_keys(rt, context_id, (request, rule_index), p, progress, now_ms)
                {
                    return next;
                }
            }
            // The body is in hand before authentication runs; fail closed anyway.
            Verdict::WaitForBody => return refuse(rt, rule, &Denial::KeysUnavailable, None),
        }
    }
    // Only reachable if core keeps asking for keys it cannot get.
    deny(rt, rule.name.as_str(), rule.shadow, &Denial::KeysUnavailable, None)
}

/// Refuses under `rule`, naming the provider the denial concerns.
fn refuse(rt: &Runtime, rule: &Rule, denial: &Denial, provider: Option<usize>) -> Next {
    let provider_name = provider.and_then(|p| rt.policy.providers.get(p)).map(|p| p.name());
    deny(rt, rule.name.as_str(), rule.shadow, denial, provider_name)
}

/// The signature check ([`Phase::Authenticate`]) of a rule with `signatures`.
fn signature_check(rt: &Runtime, round: &mut Round<'_>) -> Verdict<AuthCall> {
    let (env, p) = (rt.env(round.now_ms), &mut *round.progress);
    match signature::check_once(
        env,
        &rt.policy,
        round.rule,
        round.request,
        p.signed.as_ref(),
        &mut p.input.signer,
        rt.hmac_keys.as_ref(),
    ) {
        Ok(pending) => {
            if let (Some(audit), Some(signer)) = (&rt.audit, &p.input.signer) {
                audit.subject(p.input.ctx, SubjectKind::HmacKey, &signer.key_id);
            }
            match pending {
                None => Verdict::Pass,
                Some(pending) => Verdict::Call(AuthCall::ReplayClaim(pending)),
            }
        }
        Err(denial) => Verdict::Deny(denial),
    }
}

/// The JWT check ([`Phase::Authenticate`]): core's decision with this worker's keys.
/// A token above the replica's version ceiling asks for one feed poll first.
fn jwt_check(rt: &Runtime, round: &mut Round<'_>) -> Verdict<AuthCall> {
    if round.api_token {
        return Verdict::Pass;
    }
    let outcome = authenticate_now(rt, round.rule, round.request, round.progress, round.now_ms);
    let verdict = outcome.verdict();
    match outcome {
        Outcome::Allow { identities, edits } => {
            let sub = identities.iter().find_map(|i| i.token.subject.as_deref());
            if let (Some(audit), Some(sub)) = (&rt.audit, sub) {
                audit.subject(round.progress.input.ctx, SubjectKind::Jwt, sub);
            }
            round.identities = identities;
            round.edits = edits;
        }
        Outcome::Deny { denial, provider } => {
            round.provider = provider;
            if denial == Denial::InvalidToken(Reason::VersionUnknown)
                && provider.is_some_and(|p| rt.policy.revocation_applies(p))
                && !round.progress.feed_refreshed
            {
                return Verdict::Call(AuthCall::FeedPoll(denial));
            }
        }
        Outcome::FetchKeys(_) => {}
    }
    verdict
}

/// The API token check ([`Phase::Authenticate`], before the JWT check): on a rule
/// taking API tokens, a request carrying one is decided by it from the shared replica
/// (no call); one without leaves the decision to the JWT check.
fn api_token_check(rt: &Runtime, round: &mut Round<'_>) -> Verdict<AuthCall> {
    let Some(sync) = &rt.api_tokens else { return Verdict::Pass };
    match sync.authenticate(rt.env(round.now_ms), &rt.policy.providers, round.rule, round.request) {
        ApiAuth::Absent => Verdict::Pass,
        ApiAuth::Deny(denial) => Verdict::Deny(denial),
        ApiAuth::Allow(identity) => {
            if let Some(audit) = &rt.audit {
                audit.subject(round.progress.input.ctx, SubjectKind::ApiToken, &identity.lookup);
            }
            round.api_token = true;
            round.edits = UpstreamEdits {
                set_headers: identity.set_headers,
                remove_tokens: identity.remove.into_iter().collect(),
            };
            Verdict::Pass
        }
    }
}

/// The strict revocation check ([`Phase::Revocation`]): under `revocationCheck:
/// strict`, the verified tokens under the feed not checked recently are asked about.
fn strict_revocation_check(rt: &Runtime, round: &mut Round<'_>) -> Verdict<AuthCall> {
    if round.rule.revocation_check != RevocationCheck::PerRequest || round.progress.no_callouts {
        return Verdict::Pass;
    }
    let unchecked: Vec<Authenticated> = round
        .identities
        .iter()
        .filter(|i| rt.policy.revocation_applies(i.provider) && !rt.strict_cached(i, round.now_ms))
        .cloned()
        .collect();
    if unchecked.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Call(AuthCall::TokenStatus(unchecked))
    }
}

/// Core's decision with this worker's keys, versions, replica and cache at `now_ms`.
fn authenticate_now(
    rt: &Runtime,
    rule: &Rule,
    request: &RequestParts,
    progress: &Progress,
    now_ms: u64,
) -> Outcome {
    let keys = rt.jwt.keys(rt.env(now_ms), &rt.policy, false);
    let can_fetch = fetchable(&rt.policy, &progress.tried);
    let view = rt.revocation.as_ref().and_then(|r| r.view(now_ms));
    let revocation =
        view.as_ref().map(|v| RevocationInput { replica: &v.replica, stale: v.stale, synced: v.synced });
    let versions = rt.jwt.versions.borrow();
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
    authenticate(&input, &mut rt.jwt.cache.borrow_mut())
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
        match sync.dispatch(&rt.calls, &path, Some(context_id)) {
            Ok(_) => {
                rt.metrics.count("portcullis.revocation.poll_on_demand");
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
    if sync.poll_in_flight(now_ms) && park(rt, context_id, FEED_POLL, rule_index, request, progress) {
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
    input: &CheckInput,
) -> Next {
    for i in identities {
        if let Some(p) = rt.policy.providers.get(i.provider) {
            rt.metrics.count(&format!("portcullis.provider.{}.allowed", p.name()));
        }
    }
    if rt.policy.stateful_checks.rate_limits.is_empty() && input.login.is_none() {
        // Nothing stateful to check: no need to keep the request.
        count_allowed(rt, input.rule);
        apply_edits(&*rt.host, request, edits);
        return Next::Continue;
    }
    let tokens: Vec<&VerifiedToken> = identities.iter().map(|i| i.token.as_ref()).collect();
    stateful::run(rt, input.ctx, stateful::pending_for(rt, request, edits.clone(), &tokens, input))
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
        return allow(rt, request, &identities, &edits, &progress.input);
    };
    if unchecked.is_empty() {
        return allow(rt, request, &identities, &edits, &progress.input);
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
    let call = Call::StrictRevocation { requester: progress.input.ctx };
    let upstream = Upstream::control_plane(&settings.control_plane);
    match rt.calls.get(&*rt.host, &upstream, &path, settings.status_timeout_ms, call) {
        Ok(_) => {
            progress.strict = Some(StrictCheck { current, rest: unchecked, identities, edits });
            Next::Paused
        }
        Err(status) => {
            log::warn!(
                "cannot call cluster `{}` for a strict revocation check ({status:?})",
                settings.control_plane.cluster
            );
            strict_unavailable(rt, rule, request, &identities, &edits, &progress.input)
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
    input: &CheckInput,
) -> Next {
    rt.metrics.count("portcullis.revocation.strict_unavailable");
    match rule.on_stale {
        // The replica already had its say when the token verified.
        StaleAction::Allow => allow(rt, request, identities, edits, input),
        StaleAction::Deny => deny(rt, &rule.name, rule.shadow, &Denial::RevocationUnavailable, None),
    }
}

/// Handles the answer to a strict check: deny, check the next token, or allow.
pub fn complete_strict_check(
    rt: &Runtime,
    rule: &Rule,
    request: &RequestParts,
    check: StrictCheck,
    body_size: usize,
    progress: &mut Progress,
) -> Next {
    let (status, body) = rt.host.call_response(body_size, MAX_STATUS_BYTES);
    let answer = match (status.as_deref(), body) {
        (Some("200"), Some(bytes)) => serde_json::from_slice::<TokenStatus>(&bytes).ok(),
        _ => None,
    };
    let Some(answer) = answer else {
        return strict_unavailable(rt, rule, request, &check.identities, &check.edits, &progress.input);
    };
    let now_ms = rt.host.now_unix_ms();
    if let Err(reason) = check_token_status(&rt.policy, &check.current, &answer, now_ms / 1000) {
        let provider = rt.policy.providers.get(check.current.provider).map(|p| p.name());
        return deny(rt, &rule.name, rule.shadow, &Denial::InvalidToken(reason), provider);
    }
    rt.strict_remember(&check.current, now_ms);
    start_strict_check(rt, rule, request, check.rest, check.identities, check.edits, progress)
}
