//! The decision for one request: config compile errors name their field, rules match
//! as documented, and `authenticate` handles token sets, requirements, scopes, roles,
//! preflight, edits for the upstream and requests for keys.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use portcullis_core::authn::{authenticate, AuthnInput, Outcome};
use portcullis_core::config::{compile_json, Policy};
use portcullis_core::jwt::provider::TokenLocation;
use portcullis_core::jwt::{KeySet, Reason, VerifiedTokenCache, VersionState};
use portcullis_core::response::Denial;
use portcullis_core::RequestParts;
use serde_json::{json, Value};

#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

const ISS_A: &str = "https://a.example";
const ISS_B: &str = "https://b.example";

fn policy(rules: Value) -> Policy {
    let jwks: Value = serde_json::from_str(FIXTURE_JWKS).unwrap();
    let config = json!({
        "realm": "t",
        "providers": {
            "a": {
                "issuer": ISS_A, "jwks": jwks.clone(),
                "from": [ {"header": "authorization", "prefix": "Bearer "}, {"query": "access_token"}, {"cookie": "session"} ],
                "claimToHeaders": [ {"claim": "sub", "header": "x-sub"} ],
                "tokenVersion": { "claim": "ver" }
            },
            "b": {
                "issuer": ISS_B, "jwks": jwks,
                "forwardToken": false,
                "claimToHeaders": [ {"claim": "sub", "header": "x-sub-b"} ]
            },
            "remote": {
                "issuer": "https://remote.example",
                "remoteJwks": { "cluster": "idp", "authority": "idp" }
            }
        },
        "rules": rules
    });
    compile_json(config.to_string().as_bytes()).unwrap()
}

fn token(iss: &str, sub: &str, extra: Value) -> String {
    let mut claims = json!({ "iss": iss, "sub": sub, "exp": NOW + 600, "iat": NOW });
    if let (Some(c), Value::Object(e)) = (claims.as_object_mut(), extra) {
        c.extend(e);
    }
    sign_hs256(r#"{"alg":"HS256","kid":"oct-hs256"}"#, &claims.to_string(), HS256_SECRET)
}

fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> RequestParts {
    let headers = headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
    RequestParts::new(method, "api.example.com:8443", path, headers, &Default::default()).unwrap()
}

fn decide_with(
    policy: &Policy,
    req: &RequestParts,
    keys: Vec<Option<KeySet>>,
    can_fetch: Vec<bool>,
) -> Outcome {
    let rule = policy.match_rule(req).expect("a rule matches");
    let versions: Vec<VersionState> = policy.providers.iter().map(|p| p.initial_version_state()).collect();
    let input = AuthnInput {
        policy,
        rule,
        request: req,
        keys: &keys,
        versions: &versions,
        can_fetch_keys: &can_fetch,
        revocation: None,
        now_unix_secs: NOW,
    };
    authenticate(&input, &mut VerifiedTokenCache::new(16))
}

fn decide(policy: &Policy, req: &RequestParts) -> Outcome {
    let keys = policy
        .providers
        .iter()
        .map(|p| if p.name() == "remote" { None } else { Some(fixture_keys()) })
        .collect();
    decide_with(policy, req, keys, vec![false; policy.providers.len()])
}

fn denial(o: &Outcome) -> Denial {
    match o {
        Outcome::Deny { denial, .. } => denial.clone(),
        other => panic!("expected a denial, got {other:?}"),
    }
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

#[test]
fn config_errors_name_the_offending_field() {
    let cases = [
        (json!({"rules": [{"requires": {"provider": "x"}}]}), "rules[0].requires.provider"),
        (json!({"rules": [{"requires": "none", "match": {"pathRegex": "("}}]}), "rules[0].match.pathRegex"),
        (
            json!({"rules": [{"requires": "none", "match": {"path": "/a", "pathPrefix": "/b"}}]}),
            "rules[0].match.path",
        ),
        (
            json!({"rules": [{"requires": "none", "match": {"methods": ["get"]}}]}),
            "rules[0].match.methods[0]",
        ),
        (json!({"rules": [{"requires": "none", "scopes": ["a"]}]}), "rules[0].scopes"),
        (json!({"rules": [{"requires": "sometimes"}]}), "rules[0].requires"),
        (json!({"rules": [], "extra": 1}), ""),
        (json!({"realm": "bad\"realm", "rules": []}), "realm"),
        (json!({"rules": [{"requires": "none", "revocationCheck": "strict"}]}), "rules[0].revocationCheck"),
        (json!({"providers": {"p": {"issuer": ""}}}), "providers.p"),
        (
            json!({"rules": [{"name": "x", "requires": "none"}, {"name": "x", "requires": "none"}]}),
            "rules[1].name",
        ),
        (
            json!({"rules": [{"requires": "none", "match": {"pathPrefix": "/a/../b"}}]}),
            "rules[0].match.pathPrefix",
        ),
        (json!({"rules": [{"requires": "none", "match": {"path": "/a%2fb"}}]}), "rules[0].match.path"),
        (json!({"rules": [], "paths": {"parameters": "allow"}}), "paths.parameters"),
    ];
    for (config, field) in cases {
        let err = compile_json(config.to_string().as_bytes()).expect_err(&config.to_string());
        assert!(err.field.starts_with(field), "{config}: got field `{}` ({})", err.field, err.message);
        assert!(err.to_string().contains("invalid configuration"), "{err}");
    }
    assert!(compile_json(b"").is_err());
    assert!(compile_json(b"{} trailing").is_err());
}

#[test]
fn rules_match_by_host_path_and_method_first_match_wins() {
    let p = policy(json!([
        { "name": "exact", "match": { "path": "/health" }, "requires": "none" },
        { "name": "host", "match": { "hosts": ["*.example.com"], "pathPrefix": "/h/" }, "requires": "none" },
        { "name": "regex", "match": { "pathRegex": "^/v[0-9]+/", "methods": ["GET"] }, "requires": "none" },
        { "name": "rest", "match": { "pathPrefix": "/" }, "requires": { "provider": "a" } }
    ]));
    let name = |m: &str, path: &str| p.match_rule(&request(m, path, &[])).map(|r| r.name.clone());
    assert_eq!(name("GET", "/health?x=1").as_deref(), Some("exact"));
    assert_eq!(name("GET", "/healthz").as_deref(), Some("rest"));
    assert_eq!(name("GET", "/h/x").as_deref(), Some("host"));
    assert_eq!(name("GET", "/v2/items").as_deref(), Some("regex"));
    assert_eq!(name("POST", "/v2/items").as_deref(), Some("rest"));
    let mut other_host = request("GET", "/h/x", &[]);
    other_host.authority = "example.com".into();
    assert_eq!(p.match_rule(&other_host).map(|r| r.name.as_str()), Some("rest"));
}

#[test]
fn a_host_rule_holds_for_the_absolute_form_and_any_case_of_its_host() {
    let p = policy(json!([
        { "name": "admin", "match": { "hosts": ["admin.example.com"] }, "requires": { "provider": "a" } },
        { "name": "public", "match": { "pathPrefix": "/" }, "requires": "none" }
    ]));
    for authority in
        ["admin.example.com", "admin.example.com.", "ADMIN.example.com.:443", "admin.example.com:8080"]
    {
        let mut r = request("GET", "/users", &[]);
        r.authority = authority.into();
        assert_eq!(p.match_rule(&r).map(|r| r.name.as_str()), Some("admin"), "{authority}");
    }
    let mut other = request("GET", "/users", &[]);
    other.authority = "admin.example.com.evil".into();
    assert_eq!(p.match_rule(&other).map(|r| r.name.as_str()), Some("public"));
}

#[test]
fn rules_decide_on_the_normalised_path_not_the_raw_one() {
    let p = policy(json!([
        { "name": "login", "match": { "path": "/login", "methods": ["POST"] }, "requires": "none" },
        { "name": "api", "match": { "pathPrefix": "/api/" }, "requires": { "provider": "a" } },
        { "name": "public", "match": { "pathPrefix": "/" }, "requires": "none" }
    ]));
    let name = |m: &str, path: &str| p.match_rule(&request(m, path, &[])).map(|r| r.name.clone());
    for path in [
        "/public/../api/orders",
        "/public/%2e%2e/api/orders",
        "/public/%2E%2e/api/orders",
        "/public/./../api/orders",
        "/public;x/../api/orders",
        "/api;x/orders",
        "//api//orders",
        "/%61pi/orders",
    ] {
        assert_eq!(name("GET", path).as_deref(), Some("api"), "{path}");
    }
    for path in ["/public/../login", "/login;jsessionid=1", "/login/", "/./login?next=/"] {
        assert_eq!(name("POST", path).as_deref(), Some("login"), "{path}");
    }
    assert_eq!(name("GET", "/public/api/orders").as_deref(), Some("public"));
    // Ambiguous paths never get this far: the request is refused with 400.
    let refused = RequestParts::new("GET", "h", "/public/..%2fapi/orders", vec![], &p.paths);
    assert_eq!(refused.unwrap_err().code(), "path_encoded_slash");
}

#[test]
fn identity_headers_are_recognised_under_any_spelling_an_upstream_merges() {
    let p = policy(json!([{ "match": {}, "requires": { "provider": "a" } }]));
    assert!(p.managed_headers.contains(&"x-sub".to_string()));
    for forged in ["x-sub", "X-Sub", "x_sub", "X_SUB", "x-SUB", "x_sub_b"] {
        assert!(p.is_managed_header(forged), "{forged}");
    }
    for other in ["x-sub2", "xsub", "x--sub", "x-su", "x.sub"] {
        assert!(!p.is_managed_header(other), "{other}");
    }
}

#[test]
fn valid_token_is_allowed_with_identity_headers() {
    let p = policy(json!([{ "match": {}, "requires": { "provider": "a" } }]));
    let t = token(ISS_A, "alice", json!({}));
    match decide(&p, &request("GET", "/x", &[("authorization", &bearer(&t))])) {
        Outcome::Allow { identities, edits } => {
            assert_eq!(identities.len(), 1);
            assert_eq!(edits.set_headers, vec![("x-sub".to_string(), "alice".to_string())]);
            assert!(edits.remove_tokens.is_empty());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn no_token_is_missing_credentials() {
    let p = policy(json!([{ "match": {}, "requires": { "provider": "a" } }]));
    assert_eq!(denial(&decide(&p, &request("GET", "/x", &[]))), Denial::MissingCredentials);
    // Another auth scheme is not a bearer token.
    let basic = request("GET", "/x", &[("authorization", "Basic dXNlcjpwYXNz")]);
    assert_eq!(denial(&decide(&p, &basic)), Denial::MissingCredentials);
}

#[test]
fn a_good_header_token_plus_a_bad_query_token_is_rejected() {
    let p = policy(json!([{ "match": {}, "requires": { "provider": "a" } }]));
    let good = token(ISS_A, "alice", json!({}));
    let expired = sign_hs256(
        r#"{"alg":"HS256","kid":"oct-hs256"}"#,
        &json!({"iss": ISS_A, "sub": "x", "exp": NOW - 3600}).to_string(),
        HS256_SECRET,
    );
    let req = request("GET", &format!("/x?access_token={expired}"), &[("authorization", &bearer(&good))]);
    assert_eq!(denial(&decide(&p, &req)), Denial::InvalidToken(Reason::Expired));
    let req = request("GET", "/x?access_token=garbage", &[("authorization", &bearer(&good))]);
    assert_eq!(denial(&decide(&p, &req)), Denial::InvalidToken(Reason::Malformed));
}

#[test]
fn any_of_routes_the_token_to_the_provider_of_its_issuer() {
    let p = policy(json!([{ "match": {}, "requires": { "anyOf": ["a", "b"] } }]));
    let t = token(ISS_B, "bob", json!({}));
    match decide(&p, &request("GET", "/x", &[("authorization", &bearer(&t))])) {
        Outcome::Allow { identities, edits } => {
            assert_eq!(p.providers[identities[0].provider].name(), "b");
            assert_eq!(edits.set_headers, vec![("x-sub-b".to_string(), "bob".to_string())]);
            // b has forwardToken: false.
            assert_eq!(
                edits.remove_tokens,
                vec![TokenLocation::Header { name: "authorization".into(), prefix: Some("Bearer ".into()) }]
            );
        }
        other => panic!("{other:?}"),
    }
    // An issuer neither provider has is rejected by the first candidate.
    let stranger = token("https://evil.example", "eve", json!({}));
    assert_eq!(
        denial(&decide(&p, &request("GET", "/x", &[("authorization", &bearer(&stranger))]))),
        Denial::InvalidToken(Reason::BadIssuer)
    );
}

#[test]
fn all_of_needs_a_token_from_every_provider() {
    let p = policy(json!([{ "match": {}, "requires": { "allOf": ["a", "b"] } }]));
    let a = token(ISS_A, "alice", json!({}));
    let only_a = request("GET", "/x", &[("authorization", &bearer(&a))]);
    assert_eq!(denial(&decide(&p, &only_a)), Denial::MissingCredentials);

    let b = token(ISS_B, "svc", json!({}));
    let both = request("GET", &format!("/x?access_token={a}"), &[("authorization", &bearer(&b))]);
    match decide(&p, &both) {
        Outcome::Allow { identities, .. } => assert_eq!(identities.len(), 2),
        other => panic!("{other:?}"),
    }
}

#[test]
fn scopes_must_all_be_in_one_token() {
    let p = policy(json!([{ "match": {}, "requires": { "provider": "a" }, "scopes": ["read", "write"] }]));
    let partial = token(ISS_A, "a", json!({"scope": "read"}));
    assert_eq!(
        denial(&decide(&p, &request("GET", "/x", &[("authorization", &bearer(&partial))]))),
        Denial::InsufficientScope(vec!["read".into(), "write".into()])
    );
    let scp = token(ISS_A, "a", json!({"scp": ["write", "read"]}));
    assert!(matches!(
        decide(&p, &request("GET", "/x", &[("authorization", &bearer(&scp))])),
        Outcome::Allow { .. }
    ));
}

#[test]
fn roles_are_read_from_a_claim_path() {
    let p = policy(json!([{
        "match": {}, "requires": { "provider": "a" },
        "roles": { "claim": "realm_access.roles", "anyOf": ["ops", "admin"] }
    }]));
    let dev = token(ISS_A, "a", json!({"realm_access": {"roles": ["dev"]}}));
    assert_eq!(
        denial(&decide(&p, &request("GET", "/x", &[("authorization", &bearer(&dev))]))),
        Denial::InsufficientRole
    );
    let ops = token(ISS_A, "a", json!({"realm_access": {"roles": ["dev", "ops"]}}));
    assert!(matches!(
        decide(&p, &request("GET", "/x", &[("authorization", &bearer(&ops))])),
        Outcome::Allow { .. }
    ));
}

#[test]
fn cors_preflight_passes_only_when_allowed() {
    let preflight = request(
        "OPTIONS",
        "/x",
        &[("origin", "https://app.example"), ("access-control-request-method", "POST")],
    );
    let allowed =
        policy(json!([{ "match": {}, "requires": { "provider": "a" }, "allowCorsPreflight": true }]));
    assert!(matches!(decide(&allowed, &preflight), Outcome::Allow { .. }));
    let strict = policy(json!([{ "match": {}, "requires": { "provider": "a" } }]));
    assert_eq!(denial(&decide(&strict, &preflight)), Denial::MissingCredentials);
    // A bare OPTIONS without the preflight headers is not a preflight.
    assert_eq!(denial(&decide(&allowed, &request("OPTIONS", "/x", &[]))), Denial::MissingCredentials);
}

#[test]
fn cookie_and_query_tokens_are_found() {
    let p = policy(json!([{ "match": {}, "requires": { "provider": "a" } }]));
    let t = token(ISS_A, "alice", json!({}));
    let cookie = format!("theme=dark; session={t}");
    assert!(matches!(decide(&p, &request("GET", "/x", &[("cookie", &cookie)])), Outcome::Allow { .. }));
    assert!(matches!(
        decide(&p, &request("GET", &format!("/x?a=1&access_token={t}"), &[])),
        Outcome::Allow { .. }
    ));
}

#[test]
fn unknown_kid_asks_for_keys_only_when_a_fetch_is_possible() {
    let p = policy(json!([{ "match": {}, "requires": { "provider": "remote" } }]));
    let t = sign_hs256(
        r#"{"alg":"HS256","kid":"new-key"}"#,
        &json!({"iss": "https://remote.example", "sub": "x", "exp": NOW + 60}).to_string(),
        HS256_SECRET,
    );
    let req = request("GET", "/x", &[("authorization", &bearer(&t))]);
    let remote = p.provider_index("remote").unwrap();
    let n = p.providers.len();
    let mut can_fetch = vec![false; n];
    can_fetch[remote] = true;

    // No keys loaded yet and a fetch is possible: fetch.
    assert!(
        matches!(decide_with(&p, &req, vec![None; n], can_fetch.clone()), Outcome::FetchKeys(i) if i == remote)
    );
    // Keys loaded but the kid is unknown: fetch again (rotation).
    let mut keys = vec![None; n];
    keys[remote] = Some(fixture_keys());
    assert!(matches!(decide_with(&p, &req, keys.clone(), can_fetch), Outcome::FetchKeys(i) if i == remote));
    // Rate-limited: the token is rejected with the reason.
    assert_eq!(
        denial(&decide_with(&p, &req, keys, vec![false; n])),
        Denial::InvalidToken(Reason::UnknownKid)
    );
    // No keys and no fetch possible: the service cannot check tokens (503), not 401.
    assert_eq!(denial(&decide_with(&p, &req, vec![None; n], vec![false; n])), Denial::KeysUnavailable);
    // Garbage is malformed whether or not keys exist.
    let garbage = request("GET", "/x", &[("authorization", "Bearer x.y")]);
    assert_eq!(
        denial(&decide_with(&p, &garbage, vec![None; n], vec![false; n])),
        Denial::InvalidToken(Reason::Malformed)
    );
}

#[test]
fn cached_tokens_are_still_checked_against_current_versions() {
    let p = policy(json!([{ "match": {}, "requires": { "provider": "a" } }]));
    let t = token(ISS_A, "alice", json!({"ver": 1}));
    let req = request("GET", "/x", &[("authorization", &bearer(&t))]);
    let rule = p.match_rule(&req).unwrap();
    let keys: Vec<Option<KeySet>> = vec![Some(fixture_keys()); p.providers.len()];
    let fetch = vec![false; p.providers.len()];
    let mut cache = VerifiedTokenCache::new(16);
    let mut versions: Vec<VersionState> = p.providers.iter().map(|p| p.initial_version_state()).collect();
    let run = |versions: &[VersionState], cache: &mut VerifiedTokenCache| {
        let input = AuthnInput {
            policy: &p,
            rule,
            request: &req,
            keys: &keys,
            versions,
            can_fetch_keys: &fetch,
            revocation: None,
            now_unix_secs: NOW,
        };
        authenticate(&input, cache)
    };
    assert!(matches!(run(&versions, &mut cache), Outcome::Allow { .. }));
    assert_eq!(cache.len(), 1);
    // The minimum is raised after the token was cached: the cache hit must not bypass it.
    let a = p.provider_index("a").unwrap();
    versions[a].global_min_version = 2;
    assert_eq!(denial(&run(&versions, &mut cache)), Denial::InvalidToken(Reason::VersionTooOld));
    // During a grace period the old token still passes.
    versions[a].rotated_at = NOW - 10;
    versions[a].grace_seconds = 60;
    assert!(matches!(run(&versions, &mut cache), Outcome::Allow { .. }));
}

const FLEET_CREDENTIAL: &str = "authn-test-fleet-credential-0123456789";

/// A replica holding what one delta page of the feed said, hashed as the control plane
/// hashes for [`FLEET_CREDENTIAL`].
fn replica_with(revoked: &[&str], users: &[(&str, u64)]) -> portcullis_core::revocation::RevocationReplica {
    use portcullis_core::fleet::{encode_hash, FleetCredential};
    use portcullis_core::revocation::{
        FeedFollower, FeedPage, RevocationReplica, RevokedToken, UserMinVersion,
    };
    let key = FleetCredential::new(FLEET_CREDENTIAL).unwrap().feed_key();
    let page = FeedPage {
        cursor: "c1".into(),
        key_id: key.id().into(),
        revoked: revoked
            .iter()
            .map(|j| RevokedToken { jti_hash: encode_hash(&key.token_id(j)), exp: NOW + 600 })
            .collect(),
        user_min_versions: users
            .iter()
            .map(|(s, v)| UserMinVersion { sub_hash: encode_hash(&key.subject(s)), min_version: *v })
            .collect(),
        ..Default::default()
    };
    let mut replica = RevocationReplica::default();
    FeedFollower::default().apply(&mut replica, page, &key, NOW).unwrap();
    replica
}

fn feed_config(provider_a: Value) -> Value {
    let jwks: Value = serde_json::from_str(FIXTURE_JWKS).unwrap();
    let mut a = json!({ "issuer": ISS_A, "jwks": jwks.clone() });
    for (k, v) in provider_a.as_object().unwrap() {
        a[k] = v.clone();
    }
    json!({
        "providers": { "a": a, "b": { "issuer": ISS_B, "jwks": jwks } },
        "controlPlane": { "cluster": "cp", "authority": "cp", "credential": { "inline": FLEET_CREDENTIAL } },
        "revocation": { "maxStalenessSeconds": 5, "providers": ["a"] },
        "rules": [
            { "name": "open", "match": { "pathPrefix": "/open" }, "requires": { "anyOf": ["a", "b"] }, "onStale": "allow" },
            { "name": "strict", "match": {}, "requires": { "anyOf": ["a", "b"] } }
        ]
    })
}

#[test]
fn revoked_jti_and_stale_replica_follow_the_rule() {
    use portcullis_core::authn::RevocationInput;
    let p = compile_json(feed_config(json!({})).to_string().as_bytes()).unwrap();
    let replica = replica_with(&["bad"], &[]);
    let keys: Vec<Option<KeySet>> = vec![Some(fixture_keys()); 2];
    let versions = vec![VersionState::default(); 2];
    let run = |path: &str, t: &str, stale: bool| {
        let req = request("GET", path, &[("authorization", &bearer(t))]);
        let rule = p.match_rule(&req).unwrap();
        let input = AuthnInput {
            policy: &p,
            rule,
            request: &req,
            keys: &keys,
            versions: &versions,
            can_fetch_keys: &[false, false],
            revocation: Some(RevocationInput { replica: &replica, stale, synced: true }),
            now_unix_secs: NOW,
        };
        authenticate(&input, &mut VerifiedTokenCache::new(4))
    };
    let revoked = token(ISS_A, "alice", json!({"jti": "bad"}));
    let fine = token(ISS_A, "alice", json!({"jti": "good"}));
    assert_eq!(denial(&run("/x", &revoked, false)), Denial::InvalidToken(Reason::Revoked));
    assert!(matches!(run("/x", &fine, false), Outcome::Allow { .. }));
    // Provider b is not under the feed: its jti is not looked up.
    assert!(matches!(run("/x", &token(ISS_B, "svc", json!({"jti": "bad"})), false), Outcome::Allow { .. }));
    // A stale replica: fail closed by default, or keep using the last replica.
    assert_eq!(denial(&run("/x", &fine, true)), Denial::RevocationUnavailable);
    assert!(matches!(run("/open", &fine, true), Outcome::Allow { .. }));
    assert_eq!(denial(&run("/open", &revoked, true)), Denial::InvalidToken(Reason::Revoked));
}

#[test]
fn user_minimums_come_from_the_configuration_until_the_replica_is_synced_then_from_the_replica() {
    use portcullis_core::authn::RevocationInput;
    let config = feed_config(json!({"tokenVersion": {"claim": "ver", "userMinVersions": {"alice": 5}}}));
    let p = compile_json(config.to_string().as_bytes()).unwrap();
    let replica = replica_with(&[], &[("bob", 3)]);
    let keys: Vec<Option<KeySet>> = vec![Some(fixture_keys()); 2];
    let versions: Vec<VersionState> = p.providers.iter().map(|p| p.initial_version_state()).collect();
    let run = |sub: &str, ver: u64, synced: bool| {
        let t = token(ISS_A, sub, json!({"ver": ver}));
        let req = request("GET", "/x", &[("authorization", &bearer(&t))]);
        let input = AuthnInput {
            policy: &p,
            rule: p.match_rule(&req).unwrap(),
            request: &req,
            keys: &keys,
            versions: &versions,
            can_fetch_keys: &[false, false],
            revocation: Some(RevocationInput { replica: &replica, stale: false, synced }),
            now_unix_secs: NOW,
        };
        authenticate(&input, &mut VerifiedTokenCache::new(4))
    };
    // Not synced yet: the configured minimum (alice: 5) decides.
    assert_eq!(denial(&run("alice", 4, false)), Denial::InvalidToken(Reason::VersionTooOld));
    assert!(matches!(run("bob", 1, false), Outcome::Allow { .. }));
    // Synced: the replica's minimums, looked up by the subject's feed hash.
    assert!(matches!(run("alice", 4, true), Outcome::Allow { .. }));
    assert_eq!(denial(&run("bob", 2, true)), Denial::InvalidToken(Reason::VersionTooOld));
    assert!(matches!(run("bob", 3, true), Outcome::Allow { .. }));
    assert!(matches!(run("bobby", 1, true), Outcome::Allow { .. }), "another subject's hash");
}

#[test]
fn strict_answers_from_the_control_plane_decide_revocation_and_versions() {
    use portcullis_core::authn::check_token_status;
    use portcullis_core::revocation::{GlobalMinVersion, TokenStatus};
    let p = policy(json!([{ "match": {}, "requires": { "provider": "a" } }]));
    let t = token(ISS_A, "alice", json!({"ver": 3, "jti": "j"}));
    let identity = match decide(&p, &request("GET", "/x", &[("authorization", &bearer(&t))])) {
        Outcome::Allow { mut identities, .. } => identities.remove(0),
        other => panic!("{other:?}"),
    };
    let status = |revoked, user_min, global_min| TokenStatus {
        revoked,
        user_min_version: user_min,
        global: GlobalMinVersion { min_version: global_min, rotated_at: NOW - 100, grace_seconds: 10 },
    };
    assert_eq!(check_token_status(&p, &identity, &status(false, 0, 0), NOW), Ok(()));
    assert_eq!(check_token_status(&p, &identity, &status(true, 0, 0), NOW), Err(Reason::Revoked));
    assert_eq!(check_token_status(&p, &identity, &status(false, 4, 0), NOW), Err(Reason::VersionTooOld));
    assert_eq!(check_token_status(&p, &identity, &status(false, 3, 4), NOW), Err(Reason::VersionTooOld));
    assert_eq!(check_token_status(&p, &identity, &status(false, 3, 3), NOW), Ok(()));
}

#[test]
fn revoked_signing_keys_and_versions_above_the_ceiling_are_refused_cached_tokens_included() {
    use portcullis_core::authn::RevocationInput;
    use portcullis_core::fleet::{encode_hash, FleetCredential};
    use portcullis_core::revocation::{FeedFollower, FeedPage, RevocationReplica, UserMinVersion};
    // Two providers with one key set; only provider `a` follows the control plane's feed.
    let config = feed_config(json!({ "tokenVersion": { "claim": "ver" } }));
    let mut config = config;
    config["providers"]["b"]["tokenVersion"] = json!({ "claim": "ver" });
    let p = compile_json(config.to_string().as_bytes()).unwrap();
    let keys: Vec<Option<KeySet>> = vec![Some(fixture_keys()); 2];
    let versions = vec![VersionState::default(); 2];
    let run =
        |t: &str, replica: &RevocationReplica, keys: &[Option<KeySet>], cache: &mut VerifiedTokenCache| {
            let req = request("GET", "/x", &[("authorization", &bearer(t))]);
            let rule = p.match_rule(&req).unwrap();
            let input = AuthnInput {
                policy: &p,
                rule,
                request: &req,
                keys,
                versions: &versions,
                // A fetch is possible: a revoked kid must not trigger one.
                can_fetch_keys: &[true, true],
                revocation: Some(RevocationInput { replica, stale: false, synced: true }),
                now_unix_secs: NOW,
            };
            authenticate(&input, cache)
        };
    // The feed as the control plane sends it: subjects hashed, the ceiling beside them.
    let key = FleetCredential::new(FLEET_CREDENTIAL).unwrap().feed_key();
    let page =
        |cursor: &str| FeedPage { cursor: cursor.into(), key_id: key.id().into(), ..Default::default() };
    let (mut follower, mut replica) = (FeedFollower::default(), RevocationReplica::default());
    let first = FeedPage {
        version_ceiling: 110,
        user_min_versions: vec![UserMinVersion {
            sub_hash: encode_hash(&key.subject("alice")),
            min_version: 100,
        }],
        ..page("c1")
    };
    follower.apply(&mut replica, first, &key, NOW).unwrap();
    let old = token(ISS_A, "alice", json!({"ver": 99}));
    assert_eq!(
        denial(&run(&old, &replica, &keys, &mut VerifiedTokenCache::new(4))),
        Denial::InvalidToken(Reason::VersionTooOld),
        "the hashed subject's minimum applies beside the ceiling"
    );
    let mut cache = VerifiedTokenCache::new(16);
    let t = token(ISS_A, "alice", json!({"ver": 110, "jti": "j"}));
    assert!(matches!(run(&t, &replica, &keys, &mut cache), Outcome::Allow { .. }));
    assert_eq!(cache.len(), 1);
    // A version nobody issued: forged with a leaked key to outlive the next rotation.
    let future = token(ISS_A, "admin", json!({"ver": 1000}));
    assert_eq!(
        denial(&run(&future, &replica, &keys, &mut cache)),
        Denial::InvalidToken(Reason::VersionUnknown)
    );
    // Provider b is not under the feed: its versions are its own.
    assert!(matches!(
        run(&token(ISS_B, "svc", json!({"ver": 1000})), &replica, &keys, &mut cache),
        Outcome::Allow { .. }
    ));

    // The key is revoked: the cached token is refused on its next hit, and so is a
    // token signed by it that was never seen, with or without the key still loaded.
    let revoking = FeedPage { revoked_kids: vec!["oct-hs256".into()], ..page("c2") };
    follower.apply(&mut replica, revoking, &key, NOW).unwrap();
    assert_eq!(denial(&run(&t, &replica, &keys, &mut cache)), Denial::InvalidToken(Reason::Revoked));
    let fresh = token(ISS_A, "bob", json!({"ver": 1}));
    assert_eq!(denial(&run(&fresh, &replica, &keys, &mut cache)), Denial::InvalidToken(Reason::Revoked));
    let dropped: Vec<Option<KeySet>> =
        keys.iter().map(|k| k.as_ref().map(|k| k.without_kids(&replica.revoked_kids))).collect();
    assert!(!dropped[0].as_ref().unwrap().contains_kid("oct-hs256"));
    assert_eq!(
        denial(&run(&fresh, &replica, &dropped, &mut cache)),
        Denial::InvalidToken(Reason::Revoked),
        "no unknown-kid refetch for a revoked key"
    );
    // A token without `kid` that verifies with the revoked key is refused too.
    let claims = json!({ "iss": ISS_A, "sub": "carol", "exp": NOW + 600, "iat": NOW }).to_string();
    let no_kid = sign_hs256(r#"{"alg":"HS256"}"#, &claims, HS256_SECRET);
    assert_eq!(denial(&run(&no_kid, &replica, &keys, &mut cache)), Denial::InvalidToken(Reason::Revoked));
    // Provider b does not follow the feed: the same key still verifies its tokens.
    assert!(matches!(
        run(&token(ISS_B, "svc", json!({})), &replica, &keys, &mut cache),
        Outcome::Allow { .. }
    ));
}
