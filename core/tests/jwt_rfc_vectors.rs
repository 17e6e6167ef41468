//! The RFC 7515 Appendix A.1–A.3 and RFC 8037 Appendix A.4 examples, verified at the JWS
//! layer with a fixed clock, then mutated. The JWKs are the RFCs' own, plus the `alg`
//! member our strict key binding requires for `oct` and `RSA` keys.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::*;
use portcullis_core::jwt::jws::{self, verify_compact};
use portcullis_core::jwt::{Algorithm, KeySet, Reason};
use serde_json::json;

#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

const PAYLOAD_B64: &str =
    "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ";
const PAYLOAD: &str = "{\"iss\":\"joe\",\r\n \"exp\":1300819380,\r\n \"http://example.com/is_root\":true}";

// RFC 7515 A.1 (HMAC SHA-256).
const A1_TOKEN: &str = concat!(
    "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9",
    ".eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ",
    ".dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
);
const A1_K: &str = "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow";

// RFC 7515 A.2 (RSASSA-PKCS1-v1_5 SHA-256).
const A2_TOKEN: &str = concat!(
    "eyJhbGciOiJSUzI1NiJ9",
    ".eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ",
    ".cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7",
    "AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4",
    "BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K",
    "0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqv",
    "hJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrB",
    "p0igcN_IoypGlUPQGe77Rw"
);
const A2_N: &str = concat!(
    "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddx",
    "HmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMs",
    "D1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSH",
    "SXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdV",
    "MTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8",
    "NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ"
);

// RFC 7515 A.3 (ECDSA P-256 SHA-256).
const A3_TOKEN: &str = concat!(
    "eyJhbGciOiJFUzI1NiJ9",
    ".eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ",
    ".DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q"
);
const A3_X: &str = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
const A3_Y: &str = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";

// RFC 8037 A.4 (Ed25519); its payload is text, not a JWT claims set.
const ED_TOKEN: &str = concat!(
    "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc",
    ".hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
);
const ED_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";

fn a1_keys() -> KeySet {
    keyset(&json!({"keys": [{"kty": "oct", "alg": "HS256", "k": A1_K}]}).to_string())
}
fn a2_keys() -> KeySet {
    keyset(&json!({"keys": [{"kty": "RSA", "alg": "RS256", "n": A2_N, "e": "AQAB"}]}).to_string())
}
fn a3_keys() -> KeySet {
    keyset(&json!({"keys": [{"kty": "EC", "crv": "P-256", "x": A3_X, "y": A3_Y}]}).to_string())
}
fn ed_keys() -> KeySet {
    keyset(&json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": ED_X}]}).to_string())
}

fn all_vectors() -> Vec<(&'static str, KeySet, Algorithm)> {
    vec![
        (A1_TOKEN, a1_keys(), Algorithm::HS256),
        (A2_TOKEN, a2_keys(), Algorithm::RS256),
        (A3_TOKEN, a3_keys(), Algorithm::ES256),
        (ED_TOKEN, ed_keys(), Algorithm::EdDSA),
    ]
}

#[test]
fn rfc7515_a1_hs256_example_is_accepted() {
    let v = verify_compact(A1_TOKEN, &a1_keys(), None, 8192).unwrap();
    assert_eq!(v.header.alg, Algorithm::HS256);
    assert_eq!(v.header.typ.as_deref(), Some("JWT"));
    assert_eq!(v.payload, PAYLOAD.as_bytes());
    assert_eq!(v.payload_b64, PAYLOAD_B64);
}

#[test]
fn rfc7515_a2_rs256_example_is_accepted() {
    let v = verify_compact(A2_TOKEN, &a2_keys(), None, 8192).unwrap();
    assert_eq!(v.header.alg, Algorithm::RS256);
    assert_eq!(v.payload, PAYLOAD.as_bytes());
}

#[test]
fn rfc7515_a3_es256_example_is_accepted() {
    let v = verify_compact(A3_TOKEN, &a3_keys(), None, 8192).unwrap();
    assert_eq!(v.header.alg, Algorithm::ES256);
    assert_eq!(v.payload, PAYLOAD.as_bytes());
}

#[test]
fn rfc8037_a4_ed25519_example_is_accepted() {
    let v = verify_compact(ED_TOKEN, &ed_keys(), None, 8192).unwrap();
    assert_eq!(v.header.alg, Algorithm::EdDSA);
    assert_eq!(v.payload, b"Example of Ed25519 signing");
}

#[test]
fn rfc_examples_pass_the_full_provider_checks_before_exp_and_expire_after() {
    for (token, keys, alg) in all_vectors().into_iter().take(3) {
        let provider = compile(json!({
            "issuer": "joe",
            "clockSkewSeconds": 0,
            "remoteJwks": {"cluster": "idp", "authority": "idp.example.com"},
        }));
        let t = provider.verify(token, &keys, NOW).unwrap();
        assert_eq!(t.alg, alg);
        assert_eq!(t.expires_at, Some(1_300_819_380));
        assert_eq!(t.claim("http://example.com/is_root"), Some(&json!(true)));
        assert_eq!(provider.verify(token, &keys, 1_300_819_380).err(), Some(Reason::Expired));
        assert_eq!(provider.verify(token, &keys, 1_300_819_379).err(), None);
    }
}

#[test]
fn every_flipped_signature_bit_is_rejected_as_bad_signature() {
    for (token, keys, _) in all_vectors() {
        let (_, sig_b64) = token.rsplit_once('.').unwrap();
        let sig = unb64(sig_b64);
        for byte in 0..sig.len() {
            for bit in 0..8 {
                let mut bad = sig.clone();
                bad[byte] ^= 1 << bit;
                let mutated = with_signature(token, &bad);
                assert_eq!(
                    verify_compact(&mutated, &keys, None, 8192).err(),
                    Some(Reason::BadSignature),
                    "byte {byte} bit {bit} of {token:.20}"
                );
            }
        }
    }
}

#[test]
fn edited_payload_with_original_signature_is_bad_signature() {
    let edited = b64(PAYLOAD.replace("joe", "eve"));
    for (token, keys, _) in all_vectors() {
        let parts: Vec<&str> = token.split('.').collect();
        let mutated = format!("{}.{}.{}", parts[0], edited, parts[2]);
        assert_eq!(verify_compact(&mutated, &keys, None, 8192).err(), Some(Reason::BadSignature));
    }
}

#[test]
fn truncated_or_extended_signatures_are_bad_signature() {
    for (token, keys, _) in all_vectors() {
        let (_, sig_b64) = token.rsplit_once('.').unwrap();
        let sig = unb64(sig_b64);
        let mut longer = sig.clone();
        longer.push(0);
        for bad in [&sig[..sig.len() - 1], &longer[..], &[][..]] {
            let mutated = with_signature(token, bad);
            assert_eq!(verify_compact(&mutated, &keys, None, 8192).err(), Some(Reason::BadSignature));
        }
    }
}

#[test]
fn rfc_token_checked_against_another_vectors_key_is_unsupported_algorithm() {
    // Keys are bound to one algorithm: an RS256 token finds no RS256 key in the EC set.
    assert_eq!(verify_compact(A2_TOKEN, &a3_keys(), None, 8192).err(), Some(Reason::UnsupportedAlgorithm));
    assert_eq!(verify_compact(A3_TOKEN, &ed_keys(), None, 8192).err(), Some(Reason::UnsupportedAlgorithm));
}

#[test]
fn rs256_public_key_used_as_hs256_secret_is_rejected() {
    // The classic key-confusion forgery: HMAC over the input with the RSA public key.
    let n = unb64(A2_N);
    let header = r#"{"alg":"HS256"}"#;
    for secret in [&n[..], A2_N.as_bytes()] {
        let forged = sign_hs256(header, PAYLOAD, secret);
        assert_eq!(verify_compact(&forged, &a2_keys(), None, 8192).err(), Some(Reason::UnsupportedAlgorithm));
        // Same with a kid that names the RSA key.
        let with_kid = keyset(
            &json!({"keys": [{"kty": "RSA", "alg": "RS256", "kid": "rsa", "n": A2_N, "e": "AQAB"}]})
                .to_string(),
        );
        let forged = sign_hs256(r#"{"alg":"HS256","kid":"rsa"}"#, PAYLOAD, secret);
        assert_eq!(verify_compact(&forged, &with_kid, None, 8192).err(), Some(Reason::UnsupportedAlgorithm));
    }
}

#[test]
fn es256_zero_signatures_are_bad_signature() {
    let der_zero = unb64("MAYCAQACAQA");
    assert_eq!(der_zero, [0x30, 0x06, 0x02, 0x01, 0x00, 0x02, 0x01, 0x00]);
    let mut r_zero = unb64(A3_TOKEN.rsplit_once('.').unwrap().1);
    r_zero[..32].fill(0);
    let mut s_zero = unb64(A3_TOKEN.rsplit_once('.').unwrap().1);
    s_zero[32..].fill(0);
    for sig in [der_zero, vec![0u8; 64], r_zero, s_zero] {
        let token = with_signature(A3_TOKEN, &sig);
        assert_eq!(verify_compact(&token, &a3_keys(), None, 8192).err(), Some(Reason::BadSignature));
    }
}

/// The order `n` of the P-256 group, big-endian.
const P256_N: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xbc,
    0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];

/// `a - b` on 32-byte big-endian numbers, `a ≥ b`.
fn sub(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; 32];
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let v = i16::from(a[i]) - i16::from(b[i]) - borrow;
        out[i] = v.rem_euclid(256) as u8;
        borrow = i16::from(v < 0);
    }
    out
}

/// `R` or `S` of `n` or more is refused, not reduced mod n (`n + 1` would name 1).
#[test]
fn es256_scalars_not_below_the_order_are_bad_signature() {
    let sig = unb64(A3_TOKEN.rsplit_once('.').unwrap().1);
    let (r, s) = sig.split_at(32);
    let mut n_plus_1 = P256_N;
    n_plus_1[31] += 1;
    let zero = [0u8; 32];
    for bad in [
        [&P256_N[..], s].concat(),
        [r, &P256_N[..]].concat(),
        [r, &n_plus_1[..]].concat(),
        [&n_plus_1[..], s].concat(),
        [r, &[0xff; 32][..]].concat(),
        [&zero[..], s].concat(),
        [r, &zero[..]].concat(),
    ] {
        let token = with_signature(A3_TOKEN, &bad);
        assert_eq!(verify_compact(&token, &a3_keys(), None, 8192).err(), Some(Reason::BadSignature));
    }
}

/// ECDSA on P-256 has no low-S rule: `(R, n - S)` is as valid as `(R, S)`, and it is
/// accepted (as it was with the previous P-256 implementation).
#[test]
fn es256_high_s_twin_of_a_valid_signature_is_accepted() {
    let (signed, sig_b64) = A3_TOKEN.rsplit_once('.').unwrap();
    let sig = unb64(sig_b64);
    let (r, s) = sig.split_at(32);
    let twin = [r, &sub(&P256_N, s)[..]].concat();
    assert_ne!(twin, sig);
    let token = format!("{signed}.{}", b64(&twin));
    assert!(verify_compact(&token, &a3_keys(), None, 8192).is_ok());
}

/// An EC key whose point is off the curve, or the identity written as (0, 0), is not loaded.
#[test]
fn es256_off_curve_or_identity_key_is_not_loaded() {
    let mut y = unb64(A3_Y);
    y[31] ^= 1;
    for (x, y) in [(A3_X.to_owned(), b64(&y)), (b64([0u8; 32]), b64([0u8; 32]))] {
        let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "k", "x": x, "y": y}]});
        let (set, warnings) = KeySet::from_jwks_json(jwks.to_string().as_bytes()).unwrap();
        assert!(set.is_empty());
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].message.contains("not a valid P-256 public key"), "{}", warnings[0]);
        assert_eq!(verify_compact(A3_TOKEN, &set, None, 8192).err(), Some(Reason::NoKeys));
    }
}

#[test]
fn allow_list_excluding_the_algorithm_is_unsupported_algorithm() {
    let only_es = [Algorithm::ES256];
    assert_eq!(
        verify_compact(A1_TOKEN, &a1_keys(), Some(&only_es), 8192).err(),
        Some(Reason::UnsupportedAlgorithm)
    );
    assert!(verify_compact(A3_TOKEN, &a3_keys(), Some(&only_es), 8192).is_ok());
}

#[test]
fn decode_exposes_kid_and_signing_input() {
    let jws = jws::decode(A2_TOKEN, 8192).unwrap();
    assert_eq!(jws.signing_input, format!("eyJhbGciOiJSUzI1NiJ9.{PAYLOAD_B64}"));
    assert_eq!(jws.header.kid, None);
    assert_eq!(jws.signature.len(), 256);
}

/// `S + L` (L the order of the Ed25519 base point) in the RFC 8037 A.4 signature: the same
/// signature to a verifier that reduces `S`, refused by one that demands `S < L`.
#[test]
fn ed25519_signature_with_a_non_canonical_s_is_refused() {
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let (signed, sig) = ED_TOKEN.rsplit_once('.').unwrap();
    let mut sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
    let mut carry = 0u16;
    for (s, l) in sig[32..].iter_mut().zip(L) {
        let sum = u16::from(*s) + u16::from(l) + carry;
        *s = sum as u8;
        carry = sum >> 8;
    }
    assert_eq!(carry, 0, "S + L still fits in 32 bytes for this vector");
    let forged = format!("{signed}.{}", URL_SAFE_NO_PAD.encode(&sig));
    assert!(verify_compact(&forged, &ed_keys(), None, 8192).is_err());
    assert!(verify_compact(ED_TOKEN, &ed_keys(), None, 8192).is_ok(), "the canonical one verifies");
}

/// A small-order public key (here the identity point) verifies signatures nobody made
/// under a lax verifier: it is not loaded.
#[test]
fn weak_ed25519_public_key_is_not_loaded() {
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let jwks = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode(identity)}]});
    let (set, warnings) = KeySet::from_jwks_json(jwks.to_string().as_bytes()).unwrap();
    assert!(set.is_empty());
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].message.contains("weak"), "{}", warnings[0]);
}
