//! The authentication decision for one request under one rule: which tokens are
//! present, whether each verifies against its provider, whether the rule's
//! requirement, scopes and roles are met, and what to send upstream.
//!
//! Keys, token-version state and the verified-token cache are passed in; when the
//! decision needs keys the caller does not have yet, the answer says so
//! ([`Outcome::FetchKeys`]) and the caller asks again once it has them.

use std::sync::Arc;

use base64::Engine;

use crate::check::Verdict;
use crate::config::Policy;
use crate::jwt::cache::VerifiedTokenCache;
use crate::jwt::jwks::KeySet;
use crate::jwt::provider::TokenLocation;
use crate::jwt::reason::Reason;
use crate::jwt::versions::VersionState;
use crate::jwt::VerifiedToken;
use crate::request::RequestParts;
use crate::response::Denial;
use crate::revocation::{RevocationReplica, StaleAction};
use crate::route::{is_cors_preflight, Requirement, Rule};

/// Everything one decision reads, indexed by provider where it is per provider.
pub struct AuthnInput<'a> {
    pub policy: &'a Policy,
    pub rule: &'a Rule,
    pub request: &'a RequestParts,
    /// The provider's keys; `None` when remote keys have not been fetched yet.
    pub keys: &'a [Option<KeySet>],
    pub versions: &'a [VersionState],
    /// Whether the caller could fetch this provider's keys now (remote, not rate-limited).
    pub can_fetch_keys: &'a [bool],
    /// The revocation replica, when the policy has a revocation feed.
    pub revocation: Option<RevocationInput<'a>>,
    pub now_unix_secs: u64,
}

/// The local revocation replica, whether it is older than the policy allows, and
/// whether it was ever synced (before that, the providers' configured versions apply).
#[derive(Debug, Clone, Copy)]
pub struct RevocationInput<'a> {
    pub replica: &'a RevocationReplica,
    pub stale: bool,
    pub synced: bool,
}

/// A token that verified, with the provider that accepted it.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub provider: usize,
    pub token: Arc<VerifiedToken>,
    pub location: TokenLocation,
}

/// What the filter must do to the request before it goes upstream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamEdits {
    pub set_headers: Vec<(String, String)>,
    /// Token locations to scrub (providers with `forwardToken: false`).
    pub remove_tokens: Vec<TokenLocation>,
}

#[derive(Debug, Clone)]
pub enum Outcome {
    /// Let the request through with these edits.
    Allow {
        identities: Vec<Authenticated>,
        edits: UpstreamEdits,
    },
    Deny {
        denial: Denial,
        provider: Option<usize>,
    },
    /// Fetch this provider's keys, then decide again.
    FetchKeys(usize),
}

impl Outcome {
    /// The outcome as the authentication check's verdict ([`Phase::Authenticate`]):
    /// allowed passes (the identities and edits stay with the caller), a denial denies,
    /// missing keys wait for them.
    ///
    /// [`Phase::Authenticate`]: crate::check::Phase::Authenticate
    pub fn verdict<C>(&self) -> Verdict<C> {
        match self {
            Outcome::Allow { .. } => Verdict::Pass,
            Outcome::Deny { denial, .. } => Verdict::Deny(denial.clone()),
            Outcome::FetchKeys(p) => Verdict::WaitForKeys(*p),
        }
    }
}

/// A token found in the request: where, and which of the rule's providers may own it.
type Found = (String, TokenLocation, Vec<usize>);

/// Decides one request. The cache is updated with newly verified tokens.
pub fn authenticate(input: &AuthnInput<'_>, cache: &mut VerifiedTokenCache) -> Outcome {
    let rule = input.rule;
    let providers: &[usize] = match &rule.requirement {
        Requirement::None => {
            return Outcome::Allow { identities: Vec::new(), edits: UpstreamEdits::default() }
        }
        Requirement::AnyOf(p) | Requirement::AllOf(p) => p,
    };
    if rule.allow_cors_preflight && is_cors_preflight(input.request) {
        return Outcome::Allow { identities: Vec::new(), edits: UpstreamEdits::default() };
    }
    let found = find_tokens(input, providers);
    if found.is_empty() {
        return Outcome::Deny { denial: Denial::MissingCredentials, provider: providers.first().copied() };
    }
    if let Some(rev) = &input.revocation {
        let checked = providers.iter().any(|&p| input.policy.revocation_applies(p));
        if rev.stale && checked && rule.on_stale == StaleAction::Deny {
            return Outcome::Deny { denial: Denial::RevocationUnavailable, provider: None };
        }
    }
    let mut identities: Vec<Authenticated> = Vec::with_capacity(found.len());
    for found in &found {
        match verify_found(input, cache, found) {
            Ok(identity) => identities.push(identity),
            Err(outcome) => return outcome,
        }
    }
    if let Err(outcome) = meets_requirements(rule, &identities) {
        return outcome;
    }
    let edits = upstream_edits(input.policy, &identities);
    Outcome::Allow { identities, edits }
}

/// Every token at every location of the rule's providers; a token seen by several
/// providers (same header) is checked once, against the provider(s) it may belong to.
fn find_tokens(input: &AuthnInput<'_>, providers: &[usize]) -> Vec<Found> {
    let mut found: Vec<Found> = Vec::new();
    for &p in providers {
        let Some(provider) = input.policy.providers.get(p) else {
            continue;
        };
        for extracted in provider.extract(input.request) {
            match found.iter_mut().find(|(t, l, _)| *t == extracted.token && *l == extracted.location) {
                Some((_, _, cands)) => cands.push(p),
                None => found.push((extracted.token, extracted.location, vec![p])),
            }
        }
    }
    found
}

/// Verifies one found token against the providers that may own it: the identity, or
/// the outcome that ends the decision (a denial, or keys to fetch first).
fn verify_found(
    input: &AuthnInput<'_>,
    cache: &mut VerifiedTokenCache,
    (token, location, candidates): &Found,
) -> Result<Authenticated, Outcome> {
    // Route by the (unverified) issuer: only providers with that issuer can accept
    // the token, and only they may trigger a key fetch.
    let issuer = unverified_issuer(token);
    let matching: Vec<usize> = candidates
        .iter()
        .copied()
        .filter(|&p| input.policy.providers.get(p).is_some_and(|pr| Some(pr.issuer()) == issuer.as_deref()))
        .collect();
    let routed = if matching.is_empty() { candidates } else { &matching };

    let mut first_failure: Option<(usize, Reason)> = None;
    for &p in routed {
        match check_token(input, cache, p, token) {
            Ok(token) => return Ok(Authenticated { provider: p, token, location: location.clone() }),
            Err(reason) => {
                let wants_keys = matches!(reason, Reason::UnknownKid | Reason::NoKeys);
                if wants_keys && !matching.is_empty() && input.can_fetch_keys.get(p).copied().unwrap_or(false)
                {
                    return Err(Outcome::FetchKeys(p));
                }
                if first_failure.is_none() {
                    first_failure = Some((p, reason));
                }
            }
        }
    }
    let (p, reason) = first_failure.unwrap_or((candidates.first().copied().unwrap_or(0), Reason::Malformed));
    let denial =
        if reason == Reason::NoKeys { Denial::KeysUnavailable } else { Denial::InvalidToken(reason) };
    Err(Outcome::Deny { denial, provider: Some(p) })
}

/// The rule's demands on the verified identities: every provider of `allOf`, the
/// scopes, the roles.
fn meets_requirements(rule: &Rule, identities: &[Authenticated]) -> Result<(), Outcome> {
    if let Requirement::AllOf(required) = &rule.requirement {
        if let Some(&missing) = required.iter().find(|p| !identities.iter().any(|i| i.provider == **p)) {
            return Err(Outcome::Deny { denial: Denial::MissingCredentials, provider: Some(missing) });
        }
    }
    let first_provider = identities.first().map(|i| i.provider);
    if !rule.scopes.is_empty() {
        let granted = identities.iter().any(|i| {
            let scopes = i.token.scopes();
            rule.scopes.iter().all(|s| scopes.contains(&s.as_str()))
        });
        if !granted {
            let denial = Denial::InsufficientScope(rule.scopes.clone());
            return Err(Outcome::Deny { denial, provider: first_provider });
        }
    }
    if let Some(roles) = &rule.roles {
        let granted = identities.iter().any(|i| has_any_role(i.token.claim(&roles.claim), &roles.any_of));
        if !granted {
            return Err(Outcome::Deny { denial: Denial::InsufficientRole, provider: first_provider });
        }
    }
    Ok(())
}

/// The headers the identities' providers set upstream and the tokens they scrub.
fn upstream_edits(policy: &Policy, identities: &[Authenticated]) -> UpstreamEdits {
    let mut edits = UpstreamEdits::default();
    for identity in identities {
        if let Some(provider) = policy.providers.get(identity.provider) {
            edits.set_headers.extend(provider.upstream_headers(&identity.token));
            if !provider.forward_token() && !edits.remove_tokens.contains(&identity.location) {
                edits.remove_tokens.push(identity.location.clone());
            }
        }
    }
    edits
}

/// Signature and claims (from the cache when possible), then the version check, which
/// depends on state that changes and so runs on cache hits too.
fn check_token(
    input: &AuthnInput<'_>,
    cache: &mut VerifiedTokenCache,
    p: usize,
    token: &str,
) -> Result<Arc<VerifiedToken>, Reason> {
    let provider = input.policy.providers.get(p).ok_or(Reason::Malformed)?;
    let now = input.now_unix_secs;
    // Providers under the feed answer from the replica (subjects and token ids by their
    // feed hash) once it is synced; before that, and for the others, the configuration.
    let feed = input
        .revocation
        .as_ref()
        .filter(|_| input.policy.revocation_applies(p))
        .zip(input.policy.revocation.as_ref().map(|r| &r.control_plane.feed_key));
    // A revoked signing key: refused before anything else, so neither a key the filter
    // still holds nor an unknown-kid refetch can bring its tokens back.
    if let Some((rev, _)) = feed {
        if !rev.replica.revoked_kids.is_empty()
            && unverified_kid(token).is_some_and(|kid| rev.replica.is_key_revoked(&kid))
        {
            return Err(Reason::Revoked);
        }
    }
    let verified = match cache.get(provider.name(), token, now) {
        Some(v) => v,
        None => {
            // Without keys the token is still parsed, so a malformed one is reported as
            // such (401) rather than as missing keys.
            let empty = KeySet::empty();
            let keys = input.keys.get(p).and_then(|k| k.as_ref()).unwrap_or(&empty);
            let v = provider.verify(token, keys, now)?;
            if input.policy.cache_capacity > 0 {
                cache.insert(provider.name(), token, v, now, input.policy.cache_max_ttl_secs)
            } else {
                Arc::new(v)
            }
        }
    };
    let default_state = VersionState::default();
    match feed {
        Some((rev, key)) if rev.synced => {
            provider.check_version(&verified, &rev.replica.versions(key), now)?;
        }
        _ => provider.check_version(&verified, input.versions.get(p).unwrap_or(&default_state), now)?,
    }
    if let Some((rev, key)) = feed {
        // The key that verified (a token without `kid` names none), cache hits included.
        if verified.kid.as_deref().is_some_and(|kid| rev.replica.is_key_revoked(kid)) {
            return Err(Reason::Revoked);
        }
        let jti = verified.claim("jti").and_then(|v| v.as_str());
        if jti.is_some_and(|j| rev.replica.is_revoked(key, j, now)) {
            return Err(Reason::Revoked);
        }
    }
    Ok(verified)
}

/// A token's header (segment 0) or payload (segment 1) before verification, as `T`.
/// Oversized segments are not decoded.
fn unverified_segment<T: serde::de::DeserializeOwned>(token: &str, segment: usize) -> Option<T> {
    let part = token.split('.').nth(segment)?;
    if part.len() > 16 * 1024 {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The `iss` of a token before verification, used only to pick a provider.
fn unverified_issuer(token: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Iss {
        iss: Option<String>,
    }
    unverified_segment::<Iss>(token, 1)?.iss
}

/// The header's `kid` before verification, used only to refuse revoked keys early.
fn unverified_kid(token: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Kid {
        kid: Option<String>,
    }
    unverified_segment::<Kid>(token, 0)?.kid
}

fn has_any_role(claim: Option<&serde_json::Value>, wanted: &[String]) -> bool {
    match claim {
        Some(serde_json::Value::String(s)) => s.split_whitespace().any(|r| wanted.iter().any(|w| w == r)),
        Some(serde_json::Value::Array(items)) => {
            items.iter().filter_map(|v| v.as_str()).any(|r| wanted.iter().any(|w| w == r))
        }
        _ => false,
    }
}

/// Checks one verified token against the control plane's answer for it (strict mode).
pub fn check_token_status(
    policy: &Policy,
    identity: &Authenticated,
    status: &crate::revocation::TokenStatus,
    now_unix_secs: u64,
) -> Result<(), Reason> {
    if status.revoked {
        return Err(Reason::Revoked);
    }
    let provider = policy.providers.get(identity.provider).ok_or(Reason::Malformed)?;
    let versions = status.versions(identity.token.subject.as_deref());
    provider.check_version(&identity.token, &versions, now_unix_secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::Verdict;

    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn outcomes_answer_as_the_authentication_checks_verdict() {
        let allow = Outcome::Allow { identities: Vec::new(), edits: UpstreamEdits::default() };
        assert_eq!(allow.verdict::<()>(), Verdict::Pass);
        let deny = Outcome::Deny { denial: Denial::InvalidToken(Reason::Expired), provider: Some(1) };
        assert_eq!(deny.verdict::<()>(), Verdict::Deny(Denial::InvalidToken(Reason::Expired)));
        assert_eq!(Outcome::FetchKeys(2).verdict::<()>(), Verdict::WaitForKeys(2));
    }
}
