//! Property tests: the plugin configuration compiler and the request decision return a
//! result, never panic, on any input (a panic would kill an Envoy worker's VM).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg(not(target_arch = "wasm32"))]

mod common;

use common::*;
use portcullis_core::authn::{authenticate, AuthnInput};
use portcullis_core::config::compile_json;
use portcullis_core::jwt::{VerifiedTokenCache, VersionState};
use portcullis_core::RequestParts;
use proptest::prelude::*;
use serde_json::json;

/// JSON-ish text built from configuration vocabulary, so the fuzzer reaches deep fields.
fn config_text() -> impl Strategy<Value = String> {
    let words = prop_oneof![
        Just("{".to_string()),
        Just("}".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just(",".to_string()),
        Just(":".to_string()),
        Just("\"rules\"".to_string()),
        Just("\"providers\"".to_string()),
        Just("\"match\"".to_string()),
        Just("\"requires\"".to_string()),
        Just("\"none\"".to_string()),
        Just("\"pathRegex\"".to_string()),
        Just("\"hosts\"".to_string()),
        Just("\"issuer\"".to_string()),
        Just("\"jwks\"".to_string()),
        Just("\"keys\"".to_string()),
        Just("\"p\"".to_string()),
        Just("\"provider\"".to_string()),
        Just("\"anyOf\"".to_string()),
        Just("\"*.é\"".to_string()),
        Just("\"(\"".to_string()),
        Just("1e999".to_string()),
        Just("-1".to_string()),
        Just("null".to_string()),
        Just("true".to_string()),
        any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap()),
    ];
    proptest::collection::vec(words, 0..60).prop_map(|w| w.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn compiling_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = compile_json(&bytes);
    }

    #[test]
    fn compiling_config_shaped_text_never_panics(text in config_text()) {
        let _ = compile_json(text.as_bytes());
    }

    #[test]
    fn deciding_arbitrary_requests_never_panics(
        method in "[A-Z]{0,8}",
        authority in any::<String>(),
        path in any::<String>(),
        headers in proptest::collection::vec((prop_oneof![
            Just("authorization".to_string()), Just("cookie".to_string()), Just("origin".to_string()),
            Just("access-control-request-method".to_string()), "[a-z-]{1,12}"
        ], any::<String>()), 0..6),
    ) {
        let jwks: serde_json::Value = serde_json::from_str(FIXTURE_JWKS).unwrap();
        let config = json!({
            "providers": { "a": { "issuer": "i", "jwks": jwks,
                "from": [{"header": "authorization", "prefix": "Bearer "}, {"cookie": "s"}, {"query": "t"}] } },
            "rules": [
                { "match": { "hosts": ["*.example.com"], "pathRegex": "^/v[0-9]+" }, "requires": { "anyOf": ["a"] },
                  "scopes": ["x"], "roles": { "claim": "r.s", "anyOf": ["y"] }, "allowCorsPreflight": true },
                { "match": {}, "requires": { "allOf": ["a"] } }
            ]
        });
        let policy = compile_json(config.to_string().as_bytes()).unwrap();
        let Ok(req) = RequestParts::new(method, authority, path, headers, &policy.paths) else { return Ok(()) };
        if let Some(rule) = policy.match_rule(&req) {
            let keys = vec![Some(fixture_keys())];
            let versions = vec![VersionState::default()];
            let input = AuthnInput {
                policy: &policy, rule, request: &req, keys: &keys, versions: &versions,
                can_fetch_keys: &[true], revocation: None, now_unix_secs: NOW,
            };
            let _ = authenticate(&input, &mut VerifiedTokenCache::new(4));
        }
    }
}
