//! Property tests: verification and JWKS loading return a result, never panic, on any input.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg(not(target_arch = "wasm32"))]

mod common;

use common::*;
use portcullis_core::jwt::{KeySet, Provider};
use proptest::prelude::*;
use serde_json::json;

fn provider() -> Provider {
    compile(json!({
        "issuer": "https://idp.example.com",
        "audiences": ["api"],
        "remoteJwks": {"cluster": "idp", "authority": "idp.example.com"},
        "maxLifetimeSeconds": 3600,
        "requiredClaims": {"tenant": "acme"},
        "typ": "JWT",
    }))
}

/// Characters that make up compact tokens, plus a few that must not.
fn token_chars() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            8 => proptest::char::range('a', 'z'),
            4 => proptest::char::range('A', 'Z'),
            2 => proptest::char::range('0', '9'),
            2 => Just('.'),
            1 => Just('-'),
            1 => Just('_'),
            1 => Just('='),
            1 => any::<char>(),
        ],
        0..400,
    )
    .prop_map(|chars| chars.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn verify_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048), now in any::<u64>()) {
        let token = String::from_utf8_lossy(&bytes);
        let _ = provider().verify(&token, &fixture_keys(), now);
    }

    #[test]
    fn verify_never_panics_on_token_shaped_strings(token in token_chars(), now in any::<u64>()) {
        let _ = provider().verify(&token, &fixture_keys(), now);
    }

    #[test]
    fn verify_never_panics_on_arbitrary_segments(
        header in proptest::collection::vec(any::<u8>(), 0..200),
        payload in proptest::collection::vec(any::<u8>(), 0..400),
        sig in proptest::collection::vec(any::<u8>(), 0..600),
        now in any::<u64>(),
    ) {
        let token = format!("{}.{}.{}", b64(&header), b64(&payload), b64(&sig));
        let _ = provider().verify(&token, &fixture_keys(), now);
    }

    #[test]
    fn verify_never_panics_on_signed_arbitrary_claims(
        exp in any::<i64>(), iat in any::<f64>(), nbf in any::<u64>(), aud in ".{0,8}", now in any::<u64>(),
    ) {
        let claims = json!({"iss": "https://idp.example.com", "aud": aud, "exp": exp, "iat": iat, "nbf": nbf, "tenant": "acme"});
        for alg in ["HS256", "RS256", "ES256", "EdDSA"] {
            let header = json!({"alg": alg, "typ": "JWT"}).to_string();
            let token = sign_hs256(&header, &claims.to_string(), HS256_SECRET);
            let _ = provider().verify(&token, &fixture_keys(), now);
        }
    }

    #[test]
    fn jwks_loading_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = KeySet::from_jwks_json(&bytes);
    }

    #[test]
    fn jwks_loading_never_panics_on_arbitrary_jwk_members(
        kty in prop_oneof![Just("RSA".to_owned()), Just("EC".to_owned()), Just("OKP".to_owned()), Just("oct".to_owned()), ".{0,4}"],
        crv in prop_oneof![Just("P-256".to_owned()), Just("Ed25519".to_owned()), ".{0,6}"],
        alg in prop_oneof![Just("RS256".to_owned()), Just("ES256".to_owned()), Just("EdDSA".to_owned()), Just("HS256".to_owned()), ".{0,6}"],
        n in proptest::collection::vec(any::<u8>(), 0..600),
        e in proptest::collection::vec(any::<u8>(), 0..10),
        x in proptest::collection::vec(any::<u8>(), 0..40),
        y in proptest::collection::vec(any::<u8>(), 0..40),
    ) {
        let doc = json!({"keys": [{"kty": kty, "crv": crv, "alg": alg, "n": b64(&n), "e": b64(&e), "x": b64(&x), "y": b64(&y), "k": b64(&n)}]});
        let _ = KeySet::from_jwks_json(doc.to_string().as_bytes());
    }
}
