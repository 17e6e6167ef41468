//! JWKS documents (`core/src/jwt/jwks.rs`), as the filter reads them from a key server
//! (`filter/src/runtime.rs`) or an inline configuration: any bytes, then verification of
//! a token against whatever keys were loaded (`jwt/jws.rs`), so fuzzed key material
//! (RSA moduli and exponents, EC points, Ed25519 keys, HMAC secrets) meets the
//! signature code. Input: `JWKS [NUL token]` (a NUL cannot occur in JSON); without a
//! token, fixture tokens of several algorithms are used.
//!
//! Invariants: a key set holds at most `MAX_KEYS` keys, one algorithm per key; every
//! `kid` it reports it contains; a token verifies only with a key named by its `kid` (if
//! any) and bound to its `alg`.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use portcullis_core::jwt::jwks::MAX_KEYS;
use portcullis_core::jwt::{jws, KeySet};
use portcullis_fuzz::sign_hs256;

fn fixture_tokens() -> &'static [String] {
    static TOKENS: OnceLock<Vec<String>> = OnceLock::new();
    TOKENS.get_or_init(|| {
        let payload = br#"{"iss":"https://issuer.example","sub":"alice","exp":4102444800}"#;
        let mut tokens = vec![
            sign_hs256(br#"{"alg":"HS256","kid":"oct-hs256"}"#, payload),
            sign_hs256(br#"{"alg":"HS256"}"#, payload),
        ];
        // Right shapes, wrong signatures, so every key family's verifier runs.
        for (alg, sig_len) in [("RS256", 256), ("PS256", 256), ("RS512", 512), ("ES256", 64), ("EdDSA", 64)] {
            let header = format!(r#"{{"alg":"{alg}"}}"#);
            let sig = vec![0x5a_u8; sig_len];
            tokens.push(format!(
                "{}.{}.{}",
                portcullis_fuzz::b64(header),
                portcullis_fuzz::b64(payload),
                portcullis_fuzz::b64(sig)
            ));
        }
        tokens
    })
}

fuzz_target!(|data: &[u8]| {
    let (doc, token) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], Some(String::from_utf8_lossy(&data[i + 1..]).into_owned())),
        None => (data, None),
    };
    let Ok((keys, warnings)) = KeySet::from_jwks_json(doc) else { return };
    assert!(keys.len() <= MAX_KEYS);
    assert_eq!(keys.algorithms().len(), keys.len());
    for kid in keys.key_ids() {
        assert!(keys.contains_kid(kid));
    }
    for w in &warnings {
        assert!(!w.message.is_empty());
        let _ = w.to_string();
    }
    let _ = format!("{keys:?}");

    let tokens: Vec<String> = match token {
        Some(t) => vec![t],
        None => fixture_tokens().to_vec(),
    };
    for token in &tokens {
        let Ok(decoded) = jws::decode(token, 16 * 1024) else { continue };
        if let Ok(kid) = jws::verify_signature(&decoded, &keys, None) {
            if let Some(named) = &decoded.header.kid {
                assert_eq!(kid.as_ref(), Some(named), "verified by a key the kid does not name");
            }
        }
        let _ = jws::verify_compact(token, &keys, Some(&[decoded.header.alg]), 16 * 1024);
    }
    let _ = KeySet::empty();
});
