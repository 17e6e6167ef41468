//! Tokens minted by an independent implementation (the `jsonwebtoken` crate, ring-based)
//! with the test-only fixture keys are accepted, with every supported algorithm.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg(not(target_arch = "wasm32"))]

mod common;

use common::*;
use jsonwebtoken::{encode, Algorithm as JwtAlg, EncodingKey, Header};
use portcullis_core::jwt::{Algorithm, Reason};
use serde_json::json;

const RSA_PEM: &[u8] = include_bytes!("fixtures/rsa2048.pem");
const EC_PEM: &[u8] = include_bytes!("fixtures/ec-p256.pem");
const ED_PEM: &[u8] = include_bytes!("fixtures/ed25519.pem");
const HS384_SECRET: &[u8] = include_bytes!("fixtures/hs384.secret");
const HS512_SECRET: &[u8] = include_bytes!("fixtures/hs512.secret");

const ISS: &str = "https://interop.example.com";

fn cases() -> Vec<(JwtAlg, Algorithm, &'static str, EncodingKey)> {
    let rsa = || EncodingKey::from_rsa_pem(RSA_PEM).unwrap();
    vec![
        (JwtAlg::HS256, Algorithm::HS256, "oct-hs256", EncodingKey::from_secret(HS256_SECRET)),
        (JwtAlg::HS384, Algorithm::HS384, "oct-hs384", EncodingKey::from_secret(HS384_SECRET)),
        (JwtAlg::HS512, Algorithm::HS512, "oct-hs512", EncodingKey::from_secret(HS512_SECRET)),
        (JwtAlg::RS256, Algorithm::RS256, "rsa-rs256", rsa()),
        (JwtAlg::RS384, Algorithm::RS384, "rsa-rs384", rsa()),
        (JwtAlg::RS512, Algorithm::RS512, "rsa-rs512", rsa()),
        (JwtAlg::PS256, Algorithm::PS256, "rsa-ps256", rsa()),
        (JwtAlg::PS384, Algorithm::PS384, "rsa-ps384", rsa()),
        (JwtAlg::PS512, Algorithm::PS512, "rsa-ps512", rsa()),
        (JwtAlg::ES256, Algorithm::ES256, "ec-p256", EncodingKey::from_ec_pem(EC_PEM).unwrap()),
        (JwtAlg::EdDSA, Algorithm::EdDSA, "ed25519", EncodingKey::from_ed_pem(ED_PEM).unwrap()),
    ]
}

fn provider() -> portcullis_core::jwt::Provider {
    compile(json!({
        "issuer": ISS,
        "audiences": ["api"],
        "jwks": serde_json::from_str::<serde_json::Value>(FIXTURE_JWKS).unwrap(),
        "typ": "JWT",
    }))
}

fn claims() -> serde_json::Value {
    json!({"iss": ISS, "aud": ["other", "api"], "sub": "interop", "iat": NOW, "exp": NOW + 300, "scope": "read"})
}

#[test]
fn jsonwebtoken_tokens_with_kid_are_accepted_for_every_algorithm() {
    let p = provider();
    for (jwt_alg, alg, kid, key) in cases() {
        let mut header = Header::new(jwt_alg);
        header.kid = Some(kid.to_owned());
        let token = encode(&header, &claims(), &key).unwrap();
        let t = p.verify(&token, &fixture_keys(), NOW).unwrap_or_else(|r| panic!("{alg}: {r}"));
        assert_eq!(t.alg, alg);
        assert_eq!(t.kid.as_deref(), Some(kid));
        assert_eq!(t.subject.as_deref(), Some("interop"));
        assert_eq!(t.scopes(), vec!["read"]);
    }
}

#[test]
fn jsonwebtoken_tokens_without_kid_are_accepted_for_every_algorithm() {
    let p = provider();
    for (jwt_alg, alg, kid, key) in cases() {
        let token = encode(&Header::new(jwt_alg), &claims(), &key).unwrap();
        let t = p.verify(&token, &fixture_keys(), NOW).unwrap_or_else(|r| panic!("{alg}: {r}"));
        assert_eq!(t.kid.as_deref(), Some(kid));
    }
}

#[test]
fn jsonwebtoken_tokens_with_a_foreign_kid_are_unknown_kid() {
    let p = provider();
    for (jwt_alg, _, _, key) in cases() {
        let mut header = Header::new(jwt_alg);
        header.kid = Some("rotated-away".to_owned());
        let token = encode(&header, &claims(), &key).unwrap();
        assert_eq!(p.verify(&token, &fixture_keys(), NOW).err(), Some(Reason::UnknownKid));
    }
}

#[test]
fn jsonwebtoken_tokens_expire_at_the_skew_edge() {
    let p = provider();
    for (jwt_alg, _, _, key) in cases() {
        let token = encode(&Header::new(jwt_alg), &claims(), &key).unwrap();
        assert!(p.verify(&token, &fixture_keys(), NOW + 300 + 59).is_ok());
        assert_eq!(p.verify(&token, &fixture_keys(), NOW + 300 + 60).err(), Some(Reason::Expired));
    }
}

#[test]
fn tokens_signed_with_another_key_of_the_same_algorithm_are_bad_signature() {
    let p = provider();
    let mut header = Header::new(JwtAlg::HS256);
    header.kid = Some("oct-hs256".to_owned());
    let token = encode(&header, &claims(), &EncodingKey::from_secret(HS512_SECRET)).unwrap();
    assert_eq!(p.verify(&token, &fixture_keys(), NOW).err(), Some(Reason::BadSignature));
    // An RS256 token presented under the PS256 key id.
    let mut header = Header::new(JwtAlg::RS256);
    header.kid = Some("rsa-ps256".to_owned());
    let token = encode(&header, &claims(), &EncodingKey::from_rsa_pem(RSA_PEM).unwrap()).unwrap();
    assert_eq!(p.verify(&token, &fixture_keys(), NOW).err(), Some(Reason::UnsupportedAlgorithm));
}
