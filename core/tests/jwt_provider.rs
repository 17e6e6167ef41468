//! Provider configuration, token extraction, token versions and upstream headers.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;

use common::*;
use portcullis_core::jwt::provider::ProviderConfig;
use portcullis_core::jwt::{KeySource, Provider, Reason, TokenLocation, VersionState};
use portcullis_core::{ConfigError, RequestParts};
use serde_json::{json, Value};

#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

const ISS: &str = "https://idp.example.com";

fn base() -> Value {
    json!({"issuer": ISS, "remoteJwks": {"cluster": "idp", "authority": "idp.example.com"}})
}

fn with(mut cfg: Value, extra: Value) -> Value {
    if let (Some(cfg), Value::Object(extra)) = (cfg.as_object_mut(), extra) {
        cfg.extend(extra);
    }
    cfg
}

fn compile_err(cfg: Value) -> ConfigError {
    let cfg: ProviderConfig = serde_json::from_value(cfg).unwrap();
    Provider::compile("p", cfg).unwrap_err()
}

fn request(path: &str, headers: &[(&str, &str)]) -> RequestParts {
    let headers = headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
    RequestParts::new("GET", "api.example.com", path, headers, &Default::default()).unwrap()
}

fn signed(claims: Value) -> String {
    sign_hs256(r#"{"alg":"HS256","kid":"oct-hs256"}"#, &claims.to_string(), HS256_SECRET)
}

fn claims(extra: Value) -> Value {
    with(json!({"iss": ISS, "sub": "alice", "exp": NOW + 600}), extra)
}

#[test]
fn documented_example_compiles_with_defaults() {
    let p = compile(json!({
        "issuer": "portcullis",
        "audiences": ["demo-api"],
        "algorithms": ["ES256", "EdDSA"],
        "remoteJwks": {"cluster": "portcullis_control_plane", "authority": "control-plane"},
        "maxLifetimeSeconds": 86400,
        "requiredClaims": {"tenant": "acme"},
        "typ": "JWT",
        "from": [
            {"header": "authorization", "prefix": "Bearer "},
            {"cookie": "session"},
            {"query": "access_token"}
        ],
        "claimToHeaders": [{"claim": "sub", "header": "x-portcullis-sub"}],
        "payloadHeader": "x-portcullis-payload",
        "tokenVersion": {"globalMinVersion": 1, "userMinVersions": {"alice": 2}}
    }));
    assert_eq!(p.name(), "test");
    assert_eq!(p.issuer(), "portcullis");
    assert_eq!(p.max_token_bytes(), 8192);
    assert!(p.forward_token());
    assert_eq!(p.locations().len(), 3);
    match p.key_source() {
        KeySource::Remote(r) => {
            assert_eq!(r.path, "/.well-known/jwks.json");
            assert_eq!(r.cache_duration_secs, 600);
            assert_eq!(r.timeout_ms, 1000);
            assert_eq!(r.unknown_kid_refetch_interval_secs, 30);
        }
        KeySource::Inline(_) => panic!("expected a remote key source"),
    }
    assert_eq!(p.managed_headers(), vec!["x-portcullis-sub", "x-portcullis-payload"]);
    let state = p.initial_version_state();
    assert_eq!(state.global_min_version, 1);
    assert_eq!(state.user_min_versions.get("alice"), Some(&2));
}

#[test]
fn default_location_is_the_bearer_authorization_header() {
    let p = compile(base());
    assert_eq!(
        p.locations(),
        &[TokenLocation::Header { name: "authorization".into(), prefix: Some("Bearer ".into()) }]
    );
}

#[test]
fn unknown_fields_are_refused() {
    let err = serde_json::from_value::<ProviderConfig>(with(base(), json!({"issuers": "x"})));
    assert!(err.is_err());
    let err = serde_json::from_value::<ProviderConfig>(with(
        base(),
        json!({"from": [{"header": "authorization", "prefx": "Bearer "}]}),
    ));
    assert!(err.is_err());
}

#[test]
fn config_errors_name_the_field_relative_to_the_provider() {
    let cases = [
        (json!({"issuer": ""}), "issuer"),
        (json!({"audiences": []}), "audiences"),
        (json!({"audiences": ["a", ""]}), "audiences[1]"),
        (json!({"algorithms": ["ES256", "none"]}), "algorithms[1]"),
        (json!({"algorithms": ["ES256", "ES384"]}), "algorithms[1]"),
        (json!({"algorithms": ["rs256"]}), "algorithms[0]"),
        (json!({"remoteJwks": {"cluster": "c", "authority": "a", "path": "jwks"}}), "remoteJwks.path"),
        (json!({"remoteJwks": {"cluster": "", "authority": "a"}}), "remoteJwks.cluster"),
        (json!({"remoteJwks": {"cluster": "c", "authority": "a", "timeoutMs": 0}}), "remoteJwks.timeoutMs"),
        (
            json!({"remoteJwks": {"cluster": "c", "authority": "a", "unknownKidRefetchIntervalSeconds": 0}}),
            "remoteJwks.unknownKidRefetchIntervalSeconds",
        ),
        (json!({"jwks": {"keys": []}}), "jwks"),
        (json!({"clockSkewSeconds": 86400}), "clockSkewSeconds"),
        (json!({"maxTokenBytes": 0}), "maxTokenBytes"),
        (json!({"maxLifetimeSeconds": 0}), "maxLifetimeSeconds"),
        (json!({"from": []}), "from"),
        (json!({"from": [{"header": "authorization"}, {"header": "X-Token"}]}), "from[1].header"),
        (json!({"from": [{"cookie": "a b"}]}), "from[0].cookie"),
        (json!({"from": [{"query": "a&b"}]}), "from[0].query"),
        (json!({"from": [{"cookie": "s", "prefix": "Bearer "}]}), "from[0].prefix"),
        (json!({"from": [{"header": "a", "prefix": ""}]}), "from[0].prefix"),
        (json!({"from": [{"header": "a", "cookie": "b"}]}), "from[0]"),
        (json!({"from": [{}]}), "from[0]"),
        (json!({"claimToHeaders": [{"claim": "sub", "header": "X-Sub"}]}), "claimToHeaders[0].header"),
        (json!({"claimToHeaders": [{"claim": "sub", "header": "host"}]}), "claimToHeaders[0].header"),
        (
            json!({"claimToHeaders": [{"claim": "sub", "header": "authorization"}]}),
            "claimToHeaders[0].header",
        ),
        (
            json!({"claimToHeaders": [{"claim": "sub", "header": "x-a"}, {"claim": "iss", "header": "x-a"}]}),
            "claimToHeaders[1].header",
        ),
        (json!({"claimToHeaders": [{"claim": "", "header": "x-a"}]}), "claimToHeaders[0].claim"),
        (json!({"from": [{"header": "x-token"}], "payloadHeader": "x-token"}), "payloadHeader"),
        (json!({"typ": ""}), "typ"),
        (json!({"tokenVersion": {"claim": ""}}), "tokenVersion.claim"),
    ];
    for (extra, field) in cases {
        let err = compile_err(with(base(), extra.clone()));
        assert_eq!(err.field, field, "{extra} -> {err}");
        assert!(err.clone().within("providers.p").field.starts_with("providers.p"));
    }
}

#[test]
fn exactly_one_key_source_is_required() {
    let none = compile_err(json!({"issuer": ISS}));
    assert_eq!(none.field, "");
    assert_eq!(none.within("providers.p").field, "providers.p");
    let both = compile_err(with(base(), json!({"jwks": {"keys": []}})));
    assert_eq!(both.field, "jwks");
}

#[test]
fn inline_jwks_is_loaded_and_checked_against_algorithms() {
    let jwks: Value = serde_json::from_str(FIXTURE_JWKS).unwrap();
    let p = compile(json!({"issuer": ISS, "jwks": jwks.clone()}));
    match p.key_source() {
        KeySource::Inline(keys) => assert_eq!(keys.len(), 11),
        KeySource::Remote(_) => panic!("expected inline keys"),
    }
    assert!(p.jwks_warnings().is_empty());
    let only_ec = json!({"keys": [jwks["keys"][6].clone()]});
    let err = compile_err(json!({"issuer": ISS, "jwks": only_ec, "algorithms": ["RS256"]}));
    assert_eq!(err.field, "jwks");
    let err = compile_err(json!({"issuer": ISS, "jwks": {"nokeys": true}}));
    assert_eq!(err.field, "jwks");
    let weak: Value = serde_json::from_str(include_str!("fixtures/jwks-rsa1024.json")).unwrap();
    let err = compile_err(json!({"issuer": ISS, "jwks": weak}));
    assert_eq!(err.field, "jwks");
    assert!(err.message.contains("2048"), "{err}");
}

#[test]
fn extract_finds_every_token_at_every_location_in_order() {
    let p = compile(with(
        base(),
        json!({"from": [
            {"header": "authorization", "prefix": "Bearer "},
            {"header": "x-jwt"},
            {"cookie": "session"},
            {"query": "access_token"}
        ]}),
    ));
    let req = request(
        "/api?x=1&access_token=q%2Etok",
        &[
            ("authorization", "Bearer h1"),
            ("authorization", "bearer h2"),
            ("authorization", "Basic Zm9vOmJhcg=="),
            ("x-jwt", "raw"),
            ("cookie", "theme=dark; session=c1"),
        ],
    );
    let found: Vec<(String, TokenLocation)> =
        p.extract(&req).into_iter().map(|t| (t.token, t.location)).collect();
    let tokens: Vec<&str> = found.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(tokens, vec!["h1", "h2", "raw", "c1", "q.tok"]);
    assert_eq!(found[3].1, TokenLocation::Cookie("session".into()));
    assert_eq!(found[4].1, TokenLocation::Query("access_token".into()));
}

#[test]
fn extract_on_a_request_without_tokens_is_empty() {
    let p = compile(base());
    assert!(p.extract(&request("/", &[("authorization", "Basic abc")])).is_empty());
    assert!(p.extract(&request("/", &[])).is_empty());
}

#[test]
fn remove_tokens_strips_every_location() {
    let p = compile(with(
        base(),
        json!({"forwardToken": false, "from": [{"header": "authorization", "prefix": "Bearer "}, {"cookie": "s"}]}),
    ));
    assert!(!p.forward_token());
    let mut req = request("/", &[("authorization", "Bearer t"), ("cookie", "s=t; k=v"), ("x-other", "1")]);
    p.remove_tokens(&mut req);
    assert!(p.extract(&req).is_empty());
    assert_eq!(req.headers.len(), 2);
}

#[test]
fn upstream_headers_render_claims() {
    let p = compile(with(
        base(),
        json!({
            "claimToHeaders": [
                {"claim": "sub", "header": "x-sub"},
                {"claim": "n", "header": "x-n"},
                {"claim": "admin", "header": "x-admin"},
                {"claim": "groups", "header": "x-groups"},
                {"claim": "org.name", "header": "x-org"},
                {"claim": "obj", "header": "x-obj"},
                {"claim": "evil", "header": "x-evil"},
                {"claim": "absent", "header": "x-absent"}
            ],
            "payloadHeader": "x-payload"
        }),
    ));
    let token = signed(claims(json!({
        "n": 42, "admin": true, "groups": ["a", "b"], "org": {"name": "acme"},
        "obj": {"k": 1}, "evil": "a\r\nx-injected: 1"
    })));
    let t = p.verify(&token, &fixture_keys(), NOW).unwrap();
    let headers = p.upstream_headers(&t);
    let payload_b64 = token.split('.').nth(1).unwrap().to_owned();
    assert_eq!(
        headers,
        vec![
            ("x-sub".to_owned(), "alice".to_owned()),
            ("x-n".to_owned(), "42".to_owned()),
            ("x-admin".to_owned(), "true".to_owned()),
            ("x-groups".to_owned(), "a,b".to_owned()),
            ("x-org".to_owned(), "acme".to_owned()),
            ("x-payload".to_owned(), payload_b64),
        ]
    );
    assert_eq!(p.managed_headers().len(), 9);
}

#[test]
fn scopes_come_from_scope_and_scp() {
    let p = compile(base());
    let t = p
        .verify(
            &signed(claims(json!({"scope": "read  write", "scp": ["write", "admin"]}))),
            &fixture_keys(),
            NOW,
        )
        .unwrap();
    assert_eq!(t.scopes(), vec!["read", "write", "admin"]);
    let t = p.verify(&signed(claims(json!({}))), &fixture_keys(), NOW).unwrap();
    assert!(t.scopes().is_empty());
}

fn versioned_provider() -> Provider {
    compile(with(
        base(),
        json!({"tokenVersion": {"globalMinVersion": 2, "rotatedAt": NOW, "graceSeconds": 100}}),
    ))
}

#[test]
fn without_version_policy_every_token_passes() {
    let p = compile(base());
    let t = p.verify(&signed(claims(json!({"ver": 0}))), &fixture_keys(), NOW).unwrap();
    let state = VersionState { global_min_version: 9, ..VersionState::default() };
    assert_eq!(p.check_version(&t, &state, NOW), Ok(()));
}

#[test]
fn old_versions_are_accepted_only_during_the_grace_period() {
    let p = versioned_provider();
    let state = p.initial_version_state();
    let old = p.verify(&signed(claims(json!({"ver": 1}))), &fixture_keys(), NOW).unwrap();
    assert_eq!(p.check_version(&old, &state, NOW + 99), Ok(()));
    assert_eq!(p.check_version(&old, &state, NOW + 100), Err(Reason::VersionTooOld));
    let missing = p.verify(&signed(claims(json!({}))), &fixture_keys(), NOW).unwrap();
    assert_eq!(p.check_version(&missing, &state, NOW + 100), Err(Reason::VersionTooOld));
    let current = p.verify(&signed(claims(json!({"ver": 2}))), &fixture_keys(), NOW).unwrap();
    assert_eq!(p.check_version(&current, &state, NOW + 100_000), Ok(()));
}

#[test]
fn user_minimum_version_revokes_immediately() {
    let p = versioned_provider();
    let mut state = p.initial_version_state();
    state.user_min_versions = HashMap::from([("alice".to_owned(), 5)]);
    let t = p.verify(&signed(claims(json!({"ver": 4}))), &fixture_keys(), NOW).unwrap();
    assert_eq!(p.check_version(&t, &state, NOW), Err(Reason::VersionTooOld));
    let bob = p.verify(&signed(claims(json!({"ver": 4, "sub": "bob"}))), &fixture_keys(), NOW).unwrap();
    assert_eq!(p.check_version(&bob, &state, NOW), Ok(()));
    let t5 = p.verify(&signed(claims(json!({"ver": 5}))), &fixture_keys(), NOW).unwrap();
    assert_eq!(p.check_version(&t5, &state, NOW), Ok(()));
}

#[test]
fn non_integer_version_claim_is_malformed() {
    let p = versioned_provider();
    let state = p.initial_version_state();
    for ver in [json!("3"), json!(-1), json!(2.5)] {
        let t = p.verify(&signed(claims(json!({ "ver": ver }))), &fixture_keys(), NOW).unwrap();
        assert_eq!(p.check_version(&t, &state, NOW), Err(Reason::Malformed), "{ver}");
    }
}

#[test]
fn version_state_round_trips_as_camel_case_json() {
    let state = VersionState {
        global_min_version: 3,
        rotated_at: 10,
        grace_seconds: 5,
        user_min_versions: HashMap::from([("u".to_owned(), 4)]),
        version_ceiling: 7,
    };
    let json = serde_json::to_value(&state).unwrap();
    assert_eq!(
        json,
        json!({"globalMinVersion": 3, "rotatedAt": 10, "graceSeconds": 5, "userMinVersions": {"u": 4},
               "versionCeiling": 7})
    );
    assert_eq!(serde_json::from_value::<VersionState>(json).unwrap(), state);
    assert_eq!(serde_json::from_value::<VersionState>(json!({})).unwrap(), VersionState::default());
}

#[test]
fn custom_version_and_subject_claims_are_used() {
    let p = compile(with(
        base(),
        json!({"tokenVersion": {"claim": "tv", "subjectClaim": "uid", "userMinVersions": {"u1": 3}}}),
    ));
    let state = p.initial_version_state();
    let t = p.verify(&signed(claims(json!({"tv": 2, "uid": "u1"}))), &fixture_keys(), NOW).unwrap();
    assert_eq!(p.check_version(&t, &state, NOW), Err(Reason::VersionTooOld));
    let t = p.verify(&signed(claims(json!({"tv": 3, "uid": "u1", "ver": 0}))), &fixture_keys(), NOW).unwrap();
    assert_eq!(p.check_version(&t, &state, NOW), Ok(()));
}
