//! The API token decision for one request under one rule.

use crate::api_token::{parse, verify, Refusal, ReplicaToken};
use crate::jwt::provider::{Provider, TokenLocation};
use crate::request::RequestParts;
use crate::response::Denial;
use crate::route::{Requirement, Rule};

use super::ApiTokenSettings;

/// What the request path reads.
pub struct ApiAuthInput<'a> {
    pub settings: &'a ApiTokenSettings,
    pub rule: &'a Rule,
    /// The policy's JWT providers (a JWT next to an API token is refused).
    pub providers: &'a [Provider],
    pub request: &'a RequestParts,
    /// Whether the replica was ever synced (before that, tokens cannot be checked).
    pub synced: bool,
    pub now_unix_secs: u64,
}

/// A token that passed, and what goes upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiIdentity {
    /// The token's public lookup id (for the usage report and the token-id header).
    pub lookup: String,
    pub user: String,
    pub scopes: Vec<String>,
    pub set_headers: Vec<(String, String)>,
    /// The token's location, when it is not forwarded.
    pub remove: Option<TokenLocation>,
}

/// The decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiAuth {
    /// The rule takes no API tokens, or the request carries none: the JWT check decides.
    Absent,
    Allow(ApiIdentity),
    Deny(Denial),
}

/// The API tokens in the request: at an `authorization` location only values with the
/// token prefix; elsewhere (`x-api-key`) every value. Second: whether an
/// `authorization` location carries another bearer credential (a JWT).
fn candidates(settings: &ApiTokenSettings, request: &RequestParts) -> (Vec<(String, TokenLocation)>, bool) {
    let prefix = settings.prefix.as_str();
    let mut others = false;
    let mut found: Vec<(String, TokenLocation)> = Vec::new();
    for location in &settings.locations {
        let shared = matches!(location, TokenLocation::Header { name, .. } if name.eq_ignore_ascii_case("authorization"));
        for value in location.extract(request) {
            let marked = value.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('_'));
            if shared && !marked {
                others = true;
                continue;
            }
            if !found.iter().any(|(v, l)| *v == value && l == location) {
                found.push((value, location.clone()));
            }
        }
    }
    (found, others)
}

/// Whether the request carries a credential of the rule's JWT providers other than
/// `api_token`.
fn other_credential(input: &ApiAuthInput<'_>, api_token: &str) -> bool {
    let providers: &[usize] = match &input.rule.requirement {
        Requirement::None => &[],
        Requirement::AnyOf(p) | Requirement::AllOf(p) => p,
    };
    providers
        .iter()
        .filter_map(|p| input.providers.get(*p))
        .flat_map(|p| p.extract(input.request))
        .any(|t| t.token != api_token)
}

/// Header values from the control plane's records: printable ASCII only.
fn header_safe(text: &str) -> String {
    text.chars().filter(|c| c.is_ascii() && !c.is_ascii_control()).collect()
}

/// Decides the request's API token (if any) with `lookup` reading the replica: the
/// identity, or the denial (RFC 6750 reasons; malformed tokens are refused before
/// `lookup` is called).
pub fn authenticate_api_token(
    input: &ApiAuthInput<'_>,
    lookup: &mut dyn FnMut(&str) -> Option<ReplicaToken>,
) -> ApiAuth {
    if !input.rule.accept_api_tokens {
        return ApiAuth::Absent;
    }
    let (found, other_bearer) = candidates(input.settings, input.request);
    let (presented, location) = match found.as_slice() {
        [] => return ApiAuth::Absent,
        [one] => one,
        _ => return ApiAuth::Deny(Denial::MultipleCredentials),
    };
    if other_bearer || other_credential(input, presented) {
        return ApiAuth::Deny(Denial::MultipleCredentials);
    }
    let Ok(parsed) = parse(presented, &input.settings.prefix) else {
        return ApiAuth::Deny(Denial::InvalidApiToken(Refusal::Malformed));
    };
    if !input.synced {
        return ApiAuth::Deny(Denial::ApiTokensUnavailable);
    }
    let refuse = |r: Refusal| ApiAuth::Deny(Denial::InvalidApiToken(r));
    let Some(token) = lookup(parsed.lookup) else { return refuse(Refusal::UnknownToken) };
    if !verify(&parsed, &token.verifier) {
        return refuse(Refusal::BadSecret);
    }
    if token.revoked {
        return refuse(Refusal::Revoked);
    }
    if input.now_unix_secs >= token.expires_at {
        return refuse(Refusal::Expired);
    }
    let rule_scopes = &input.rule.scopes;
    if !rule_scopes.iter().all(|s| token.scopes.iter().any(|t| **t == **s)) {
        return ApiAuth::Deny(Denial::InsufficientScope(rule_scopes.clone()));
    }
    let settings = input.settings;
    let scopes: Vec<String> = token.scopes.iter().map(|s| s.to_string()).collect();
    let set_headers = vec![
        (settings.user_header.clone(), header_safe(&token.user)),
        (settings.token_id_header.clone(), parsed.lookup.to_string()),
        (settings.scopes_header.clone(), header_safe(&scopes.join(" "))),
    ];
    ApiAuth::Allow(ApiIdentity {
        lookup: parsed.lookup.to_string(),
        user: token.user.to_string(),
        scopes,
        set_headers,
        remove: (!settings.forward_token).then(|| location.clone()),
    })
}
