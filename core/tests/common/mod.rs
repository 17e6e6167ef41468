//! Helpers shared by the JWT integration tests (native and wasm32-unknown-unknown).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use base64::Engine as _;
use hmac::{Hmac, Mac};
use portcullis_core::jwt::{KeySet, Provider, ProviderConfig};
use serde_json::Value;
use sha2::Sha256;

/// A fixed clock just before the RFC 7515 example tokens expire (exp 1300819380).
pub const NOW: u64 = 1_300_819_000;

/// Test-only JWKS: see `tests/fixtures/README.md`.
pub const FIXTURE_JWKS: &str = include_str!("../fixtures/jwks.json");
pub const HS256_SECRET: &[u8] = include_bytes!("../fixtures/hs256.secret");

pub fn b64(bytes: impl AsRef<[u8]>) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub fn unb64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s).unwrap()
}

pub fn hmac_sha256(secret: &[u8], input: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(input);
    mac.finalize().into_bytes().to_vec()
}

/// Mints an HS256 compact JWS over arbitrary header and payload bytes.
pub fn sign_hs256(header: &str, payload: &str, secret: &[u8]) -> String {
    let input = format!("{}.{}", b64(header), b64(payload));
    let sig = hmac_sha256(secret, input.as_bytes());
    format!("{input}.{}", b64(sig))
}

pub fn keyset(json: &str) -> KeySet {
    let (set, _warnings) = KeySet::from_jwks_json(json.as_bytes()).unwrap();
    set
}

pub fn fixture_keys() -> KeySet {
    keyset(FIXTURE_JWKS)
}

pub fn compile(cfg: Value) -> Provider {
    let cfg: ProviderConfig = serde_json::from_value(cfg).unwrap();
    Provider::compile("test", cfg).unwrap()
}

/// Replaces the signature segment with `sig` (raw bytes).
pub fn with_signature(token: &str, sig: &[u8]) -> String {
    let (input, _) = token.rsplit_once('.').unwrap();
    format!("{input}.{}", b64(sig))
}
