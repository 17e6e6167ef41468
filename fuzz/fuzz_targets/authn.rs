//! The authentication decision as the filter makes it (`filter/src/http.rs`): a request
//! is normalised, matched to a rule, and `authn::authenticate` extracts its tokens and
//! runs them through the JWS parser (`jwt/jws.rs`), the claims parser and checks
//! (`jwt/claims.rs`), versions, scopes and roles. Input: a request as text (see
//! `TextRequest`) with tokens written into it as they are, plus knobs: `:sign-header`
//! and `:sign-payload` (a token signed with the fixture HS256 secret over these bytes, so
//! the fuzzer reaches past the signature), `:valid-sub` (a token `hs` must accept, for
//! this subject, alone in the request), `:token-at` (`bearer`, `cookie`, `query` or
//! `x-token`: where those tokens go) and `:now` (seconds after a fixed time).
//!
//! Invariants: a token the provider must accept (right issuer, audience, times, version,
//! key) is accepted wherever the provider looks for it; an allowed request's identities
//! belong to the rule's providers; headers sent upstream carry no control characters and
//! are the provider's managed ones; removed token locations yield no token; every local
//! reply's headers are safe.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use portcullis_core::authn::{authenticate, AuthnInput, Outcome, UpstreamEdits};
use portcullis_core::config::{compile_json, Policy};
use portcullis_core::route::Requirement;
use portcullis_core::jwt::provider::KeySource;
use portcullis_core::jwt::{KeySet, VerifiedTokenCache, VersionState};
use portcullis_core::response::Denial;
use portcullis_fuzz::{header_safe, sign_hs256, TextRequest, FIXTURE_JWKS};
use serde_json::{json, Value};

const ISSUER: &str = "https://issuer.example";
const NOW: u64 = 1_700_000_000;

fn policy() -> &'static Policy {
    static POLICY: OnceLock<Policy> = OnceLock::new();
    POLICY.get_or_init(|| {
        let Ok(jwks) = serde_json::from_str::<Value>(FIXTURE_JWKS) else { panic!("fixture JWKS") };
        let config = json!({
            "providers": {
                "hs": {
                    "issuer": ISSUER,
                    "audiences": ["api"],
                    "jwks": jwks,
                    "from": [
                        {"header": "authorization", "prefix": "Bearer "},
                        {"cookie": "session"},
                        {"query": "access_token"}
                    ],
                    "claimToHeaders": [
                        {"claim": "sub", "header": "x-user"},
                        {"claim": "org.name", "header": "x-org"},
                        {"claim": "roles", "header": "x-roles"}
                    ],
                    "payloadHeader": "x-jwt-payload",
                    "forwardToken": false,
                    "maxLifetimeSeconds": 86400,
                    "tokenVersion": {"globalMinVersion": 1, "userMinVersions": {"locked": 50}}
                },
                "other": {
                    "issuer": "https://other.example",
                    "jwks": jwks,
                    "typ": "at+jwt",
                    "requiredClaims": {"tenant": "acme"},
                    "from": [{"header": "x-token"}]
                }
            },
            "rules": [
                {"name": "public", "match": {"pathPrefix": "/public"}, "requires": "none"},
                {
                    "name": "admin",
                    "match": {"pathPrefix": "/admin", "hosts": ["admin.example.com", "*.corp.example"]},
                    "requires": {"allOf": ["hs", "other"]},
                    "scopes": ["admin"]
                },
                {
                    "name": "roles",
                    "match": {"pathRegex": "^/r/[a-z]+/?$", "methods": ["POST"]},
                    "requires": {"provider": "hs"},
                    "roles": {"claim": "roles", "anyOf": ["editor"]}
                },
                {
                    "name": "api",
                    "match": {"pathPrefix": "/api"},
                    "requires": {"anyOf": ["hs", "other"]},
                    "allowCorsPreflight": true
                }
            ],
            "onNoMatch": "deny"
        });
        match compile_json(config.to_string().as_bytes()) {
            Ok(policy) => policy,
            Err(e) => panic!("fuzz policy does not compile: {e:?}"),
        }
    })
}

/// Where a token built from the knobs goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Bearer,
    Cookie,
    Query,
    XToken,
}

fn place(parts: &mut portcullis_core::RequestParts, place: Place, token: &str) {
    match place {
        Place::Bearer => parts.headers.push(("authorization".into(), format!("Bearer {token}"))),
        Place::Cookie => parts.headers.push(("cookie".into(), format!("a=1; session={token}"))),
        Place::Query => {
            let sep = if parts.path.contains('?') { '&' } else { '?' };
            parts.path = format!("{}{sep}access_token={token}", parts.path);
        }
        Place::XToken => parts.headers.push(("x-token".into(), token.to_owned())),
    }
}

/// What a decision comes to, for comparing two of them.
fn summary(outcome: &Outcome) -> (Option<Denial>, Option<UpstreamEdits>, Vec<usize>) {
    match outcome {
        Outcome::Allow { identities, edits } => {
            (None, Some(edits.clone()), identities.iter().map(|i| i.provider).collect())
        }
        Outcome::Deny { denial, .. } => (Some(denial.clone()), None, Vec::new()),
        Outcome::FetchKeys(p) => (None, None, vec![*p]),
    }
}

fuzz_target!(|data: &[u8]| {
    let policy = policy();
    let text = TextRequest::parse(data);
    let now = NOW + text.knob(":now").and_then(|n| n.parse::<u32>().ok()).map_or(0, u64::from);
    let mut request = text.parts.clone();
    let at = match text.knob(":token-at") {
        Some("cookie") => Place::Cookie,
        Some("query") => Place::Query,
        Some("x-token") => Place::XToken,
        _ => Place::Bearer,
    };

    if let Some(payload) = text.knob(":sign-payload") {
        let header = text.knob(":sign-header").unwrap_or(r#"{"alg":"HS256","kid":"oct-hs256"}"#);
        place(&mut request, at, &sign_hs256(header.as_bytes(), payload.as_bytes()));
    }
    let mut must_accept = None;
    if let Some(sub) = text.knob(":valid-sub") {
        // Alone: no other token anywhere the providers look.
        request.headers.retain(|(n, _)| {
            !["authorization", "cookie", "x-token"].iter().any(|h| n.eq_ignore_ascii_case(h))
        });
        if let Some(i) = request.path.find('?') {
            request.path.truncate(i);
        }
        let n = i64::try_from(now).unwrap_or(i64::MAX);
        let claims = json!({
            "iss": ISSUER, "aud": "api", "sub": sub, "roles": ["editor"], "ver": 2,
            "iat": n - 10, "nbf": n - 10, "exp": n + 600,
        });
        let token =
            sign_hs256(br#"{"alg":"HS256","kid":"oct-hs256","typ":"JWT"}"#, claims.to_string().as_bytes());
        if at != Place::XToken && sub != "locked" && token.len() <= 8192 {
            must_accept = Some(sub.to_owned());
        }
        place(&mut request, at, &token);
    }

    if request.normalize_route(&policy.paths).is_err() {
        return;
    }
    let Some(rule) = policy.match_rule(&request) else { return };

    let keys: Vec<Option<KeySet>> = policy
        .providers
        .iter()
        .map(|p| match p.key_source() {
            KeySource::Inline(keys) => Some(keys.clone()),
            KeySource::Remote(_) => None,
        })
        .collect();
    let versions: Vec<VersionState> = policy.providers.iter().map(|p| p.initial_version_state()).collect();
    let can_fetch = vec![false; policy.providers.len()];
    let authn = AuthnInput {
        policy,
        rule,
        request: &request,
        keys: &keys,
        versions: &versions,
        can_fetch_keys: &can_fetch,
        revocation: None,
        now_unix_secs: now,
    };
    let mut cache = VerifiedTokenCache::new(policy.cache_capacity);
    let outcome = authenticate(&authn, &mut cache);
    // The same decision again, now from the verified-token cache.
    let again = authenticate(&authn, &mut cache);
    assert_eq!(summary(&again), summary(&outcome), "a cached token is decided differently");

    match &outcome {
        Outcome::Allow { identities, edits } => {
            let allowed: &[usize] = match &rule.requirement {
                Requirement::None => &[],
                Requirement::AnyOf(p) | Requirement::AllOf(p) => p,
            };
            for identity in identities {
                assert!(
                    allowed.contains(&identity.provider),
                    "identity of a provider the rule does not name"
                );
                let sub = identity.token.claim("sub").and_then(Value::as_str);
                assert_eq!(identity.token.subject.as_deref(), sub);
            }
            for (name, value) in &edits.set_headers {
                assert!(policy.is_managed_header(name), "{name} is not a managed header");
                assert!(header_safe(value), "{name}: {value:?} carries a control character");
            }
            let mut scrubbed = request.clone();
            for location in &edits.remove_tokens {
                location.remove_from(&mut scrubbed);
            }
            for location in &edits.remove_tokens {
                assert!(location.extract(&scrubbed).is_empty(), "{location:?} still holds a token");
            }
            if let (Some(sub), true) = (&must_accept, rule.name == "api") {
                let preflight = identities.is_empty();
                if !preflight {
                    let user = edits.set_headers.iter().find(|(n, _)| n == "x-user").map(|(_, v)| v.as_str());
                    let expected = header_safe(sub).then_some(sub.as_str());
                    assert_eq!(user, expected, "x-user is not the token's subject");
                }
            }
        }
        Outcome::Deny { denial, .. } => {
            assert!(
                must_accept.is_none() || rule.name != "api",
                "a valid token was refused on `api`: {denial:?}"
            );
            let reply = denial.render(&policy.realm);
            for (name, value) in &reply.headers {
                assert!(header_safe(name) && header_safe(value), "unsafe reply header {name}: {value:?}");
            }
            assert!(serde_json::from_str::<Value>(&reply.body).is_ok(), "reply body is not JSON");
        }
        Outcome::FetchKeys(_) => panic!("inline keys never need a fetch"),
    }
});
