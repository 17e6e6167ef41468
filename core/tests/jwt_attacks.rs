//! Hostile and broken tokens, each rejected with its exact reason, and the clock edges.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use portcullis_core::jwt::{KeySet, Provider, Reason};
use serde_json::{json, Value};

#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

const ISS: &str = "https://idp.example.com";
const HEADER: &str = r#"{"alg":"HS256","kid":"oct-hs256"}"#;

fn provider_with(extra: Value) -> Provider {
    let mut cfg = json!({
        "issuer": ISS,
        "audiences": ["api"],
        "remoteJwks": {"cluster": "idp", "authority": "idp.example.com"},
        "clockSkewSeconds": 60,
    });
    if let (Some(cfg), Value::Object(extra)) = (cfg.as_object_mut(), extra) {
        cfg.extend(extra);
    }
    compile(cfg)
}

fn provider() -> Provider {
    provider_with(json!({}))
}

fn claims(extra: Value) -> String {
    let mut c = json!({"iss": ISS, "aud": "api", "sub": "alice", "iat": NOW - 10, "exp": NOW + 300});
    if let (Some(c), Value::Object(extra)) = (c.as_object_mut(), extra) {
        for (k, v) in extra {
            if v.is_null() {
                c.remove(&k);
            } else {
                c.insert(k, v);
            }
        }
    }
    c.to_string()
}

fn token(extra: Value) -> String {
    sign_hs256(HEADER, &claims(extra), HS256_SECRET)
}

fn verify(p: &Provider, token: &str, now: u64) -> Result<(), Reason> {
    p.verify(token, &fixture_keys(), now).map(|_| ())
}

#[test]
fn well_formed_token_is_accepted() {
    let t = provider().verify(&token(json!({})), &fixture_keys(), NOW).unwrap();
    assert_eq!(t.subject.as_deref(), Some("alice"));
    assert_eq!(t.kid.as_deref(), Some("oct-hs256"));
    assert_eq!(t.expires_at, Some(NOW + 300));
}

#[test]
fn alg_none_in_any_spelling_is_unsupported_algorithm() {
    let payload = claims(json!({}));
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = format!(r#"{{"alg":"{alg}"}}"#);
        let unsigned = format!("{}.{}.", b64(&header), b64(&payload));
        assert_eq!(verify(&provider(), &unsigned, NOW), Err(Reason::UnsupportedAlgorithm), "{alg}");
        // Even with a valid HMAC over the input.
        let signed = sign_hs256(&header, &payload, HS256_SECRET);
        assert_eq!(verify(&provider(), &signed, NOW), Err(Reason::UnsupportedAlgorithm), "{alg}");
    }
}

#[test]
fn missing_or_non_string_alg_is_malformed() {
    for header in [r#"{"kid":"oct-hs256"}"#, r#"{"alg":null}"#, r#"{"alg":256}"#] {
        let t = sign_hs256(header, &claims(json!({})), HS256_SECRET);
        assert_eq!(verify(&provider(), &t, NOW), Err(Reason::Malformed), "{header}");
    }
}

#[test]
fn empty_signature_is_bad_signature() {
    let t = token(json!({}));
    let (input, _) = t.rsplit_once('.').unwrap();
    assert_eq!(verify(&provider(), &format!("{input}."), NOW), Err(Reason::BadSignature));
}

#[test]
fn wrong_segment_counts_are_malformed() {
    let t = token(json!({}));
    let (input, _) = t.rsplit_once('.').unwrap();
    for bad in
        [input.to_owned(), format!("{t}.x"), format!("{t}."), String::new(), "..".into(), ".a.b".into()]
    {
        assert_eq!(verify(&provider(), &bad, NOW), Err(Reason::Malformed), "{bad:.30}");
    }
}

#[test]
fn injection_strings_as_kid_are_unknown_kid() {
    for kid in ["../../etc/passwd", "' OR 1=1 --", "$(rm -rf /)", "", "oct-hs256\u{0}", "OCT-HS256"] {
        let header = json!({"alg": "HS256", "kid": kid}).to_string();
        let t = sign_hs256(&header, &claims(json!({})), HS256_SECRET);
        assert_eq!(verify(&provider(), &t, NOW), Err(Reason::UnknownKid), "{kid:?}");
    }
}

#[test]
fn header_supplied_keys_are_never_used() {
    let attacker_secret = b"attacker-controlled-secret-attacker-controlled-secret-0123456789";
    let header = json!({
        "alg": "HS256",
        "jwk": {"kty": "oct", "alg": "HS256", "k": b64(attacker_secret)},
        "jku": "https://evil.example/jwks.json",
        "x5u": "https://evil.example/cert.pem",
        "x5c": ["MIIB"],
    })
    .to_string();
    let forged = sign_hs256(&header, &claims(json!({})), attacker_secret);
    assert_eq!(verify(&provider(), &forged, NOW), Err(Reason::BadSignature));
    // The parameters are ignored, not refused: a genuine token carrying them still passes.
    let genuine = sign_hs256(&header, &claims(json!({})), HS256_SECRET);
    assert_eq!(verify(&provider(), &genuine, NOW), Ok(()));
}

#[test]
fn crit_header_is_malformed() {
    for crit in [json!(["exp"]), json!(["b64"]), json!([]), json!("x")] {
        let header = json!({"alg": "HS256", "kid": "oct-hs256", "crit": crit, "exp": 1}).to_string();
        let t = sign_hs256(&header, &claims(json!({})), HS256_SECRET);
        assert_eq!(verify(&provider(), &t, NOW), Err(Reason::Malformed));
    }
}

#[test]
fn expiry_is_enforced_exactly_at_the_skew_edge() {
    let exp = NOW + 300;
    let t = token(json!({"exp": exp}));
    assert_eq!(verify(&provider(), &t, exp + 60 - 1), Ok(()));
    assert_eq!(verify(&provider(), &t, exp + 60), Err(Reason::Expired));
    assert_eq!(verify(&provider(), &t, u64::MAX), Err(Reason::Expired));
}

#[test]
fn not_before_is_enforced_exactly_at_the_skew_edge() {
    let nbf = NOW + 100;
    let t = token(json!({"nbf": nbf, "iat": null}));
    assert_eq!(verify(&provider(), &t, nbf - 60), Ok(()));
    assert_eq!(verify(&provider(), &t, nbf - 60 - 1), Err(Reason::NotYetValid));
}

#[test]
fn issued_in_the_future_beyond_skew_is_not_yet_valid() {
    assert_eq!(verify(&provider(), &token(json!({"iat": NOW + 60})), NOW), Ok(()));
    assert_eq!(verify(&provider(), &token(json!({"iat": NOW + 61})), NOW), Err(Reason::NotYetValid));
}

#[test]
fn missing_exp_is_missing_claim_unless_expiration_is_optional() {
    let t = token(json!({"exp": null}));
    assert_eq!(verify(&provider(), &t, NOW), Err(Reason::MissingClaim));
    let lax = provider_with(json!({"requireExpiration": false}));
    let verified = lax.verify(&t, &fixture_keys(), NOW).unwrap();
    assert_eq!(verified.expires_at, None);
}

#[test]
fn non_numeric_dates_are_malformed() {
    for claim in ["exp", "nbf", "iat"] {
        for bad in [json!("1300819500"), json!(true), json!([1]), json!({"t": 1})] {
            let t = token(json!({ claim: bad }));
            assert_eq!(verify(&provider(), &t, NOW), Err(Reason::Malformed), "{claim}={bad}");
        }
    }
}

#[test]
fn fractional_dates_are_accepted() {
    let t = token(json!({"exp": (NOW + 300) as f64 + 0.5, "iat": NOW as f64 - 0.25}));
    assert_eq!(provider().verify(&t, &fixture_keys(), NOW).unwrap().expires_at, Some(NOW + 301));
}

#[test]
fn missing_or_wrong_issuer_is_bad_issuer() {
    for iss in [Value::Null, json!("https://evil.example.com"), json!("https://IDP.example.com"), json!(7)] {
        let t = token(json!({ "iss": iss }));
        assert_eq!(verify(&provider(), &t, NOW), Err(Reason::BadIssuer), "{iss}");
    }
}

#[test]
fn audience_must_contain_a_configured_one() {
    assert_eq!(verify(&provider(), &token(json!({"aud": ["x", "api"]})), NOW), Ok(()));
    for aud in [Value::Null, json!("other"), json!(["x", "y"]), json!([])] {
        let t = token(json!({ "aud": aud }));
        assert_eq!(verify(&provider(), &t, NOW), Err(Reason::BadAudience), "{aud}");
    }
    for aud in [json!(5), json!(["api", 5])] {
        let t = token(json!({ "aud": aud }));
        assert_eq!(verify(&provider(), &t, NOW), Err(Reason::Malformed), "{aud}");
    }
    // Without `audiences`, `aud` is not checked.
    let p = compile(json!({"issuer": ISS, "remoteJwks": {"cluster": "c", "authority": "a"}}));
    assert_eq!(verify(&p, &token(json!({"aud": "anything"})), NOW), Ok(()));
}

#[test]
fn lifetime_over_the_maximum_is_rejected() {
    let p = provider_with(json!({"maxLifetimeSeconds": 3600}));
    assert_eq!(verify(&p, &token(json!({"iat": NOW - 10, "exp": NOW + 3590})), NOW), Ok(()));
    assert_eq!(
        verify(&p, &token(json!({"iat": NOW - 10, "exp": NOW + 3591})), NOW),
        Err(Reason::LifetimeTooLong)
    );
    // Without iat the remaining lifetime counts.
    assert_eq!(verify(&p, &token(json!({"iat": null, "exp": NOW + 3600})), NOW), Ok(()));
    assert_eq!(
        verify(&p, &token(json!({"iat": null, "exp": NOW + 3601})), NOW),
        Err(Reason::LifetimeTooLong)
    );
    let lax = provider_with(json!({"maxLifetimeSeconds": 3600, "requireExpiration": false}));
    assert_eq!(verify(&lax, &token(json!({"exp": null})), NOW), Err(Reason::LifetimeTooLong));
}

#[test]
fn required_claims_are_checked() {
    let p = provider_with(json!({"requiredClaims": {"tenant": "acme", "roles": "admin", "org.id": 7}}));
    let ok = token(json!({"tenant": "acme", "roles": ["user", "admin"], "org": {"id": 7}}));
    assert_eq!(verify(&p, &ok, NOW), Ok(()));
    let missing = token(json!({"roles": ["admin"], "org": {"id": 7}}));
    assert_eq!(verify(&p, &missing, NOW), Err(Reason::MissingClaim));
    let mismatch = token(json!({"tenant": "evil", "roles": ["admin"], "org": {"id": 7}}));
    assert_eq!(verify(&p, &mismatch, NOW), Err(Reason::ClaimMismatch));
    let not_in_array = token(json!({"tenant": "acme", "roles": ["user"], "org": {"id": 7}}));
    assert_eq!(verify(&p, &not_in_array, NOW), Err(Reason::ClaimMismatch));
}

#[test]
fn typ_is_compared_case_insensitively_with_optional_application_prefix() {
    let p = provider_with(json!({"typ": "at+jwt"}));
    let c = claims(json!({}));
    for typ in ["at+jwt", "AT+JWT", "application/at+jwt"] {
        let header = json!({"alg": "HS256", "typ": typ}).to_string();
        assert_eq!(verify(&p, &sign_hs256(&header, &c, HS256_SECRET), NOW), Ok(()), "{typ}");
    }
    for header in [json!({"alg": "HS256", "typ": "JWT"}), json!({"alg": "HS256"})] {
        let t = sign_hs256(&header.to_string(), &c, HS256_SECRET);
        assert_eq!(verify(&p, &t, NOW), Err(Reason::BadType));
    }
    let header = json!({"alg": "HS256", "typ": 1}).to_string();
    assert_eq!(verify(&p, &sign_hs256(&header, &c, HS256_SECRET), NOW), Err(Reason::Malformed));
}

#[test]
fn non_base64_segments_are_malformed() {
    let t = token(json!({}));
    let parts: Vec<&str> = t.split('.').collect();
    for bad in [
        format!("{}!.{}.{}", parts[0], parts[1], parts[2]),
        format!("{}.{}=.{}", parts[0], parts[1], parts[2]),
        format!("{}.{}.{}+", parts[0], parts[1], parts[2]),
        format!("{}.{}.{}", parts[0], "a", parts[2]),
    ] {
        assert_eq!(verify(&provider(), &bad, NOW), Err(Reason::Malformed));
    }
}

#[test]
fn non_json_header_or_payload_is_malformed() {
    let c = claims(json!({}));
    for (header, payload) in [
        ("not json", c.as_str()),
        ("", c.as_str()),
        (r#"{"alg":"HS256""#, c.as_str()),
        (HEADER, "not json"),
        (HEADER, "[1,2]"),
        (HEADER, "\"a string\""),
        (HEADER, r#"{"sub":"a","sub":"b","iss":"x"}"#),
        (HEADER, "{\"iss\":\"\u{fffd}\"}\u{0}"),
    ] {
        let t = sign_hs256(header, payload, HS256_SECRET);
        assert_eq!(verify(&provider(), &t, NOW), Err(Reason::Malformed), "{header} / {payload}");
    }
    // Invalid UTF-8 in the payload.
    let input = format!("{}.{}", b64(HEADER), b64([0x7b, 0x22, 0xff, 0x22, 0x3a, 0x31, 0x7d]));
    let t = format!("{input}.{}", b64(hmac_sha256(HS256_SECRET, input.as_bytes())));
    assert_eq!(verify(&provider(), &t, NOW), Err(Reason::Malformed));
}

#[test]
fn deeply_nested_json_is_malformed_not_a_crash() {
    let big = provider_with(json!({"maxTokenBytes": 1_048_576}));
    let deep = "[".repeat(100_000);
    // In the header (unsigned: parsing fails first).
    let t = format!("{}.{}.", b64(&deep), b64(claims(json!({}))));
    assert_eq!(verify(&big, &t, NOW), Err(Reason::Malformed));
    // In a correctly signed payload.
    let nested = format!("{{\"iss\":\"{ISS}\",\"x\":{deep}");
    let t = sign_hs256(HEADER, &nested, HS256_SECRET);
    assert_eq!(verify(&big, &t, NOW), Err(Reason::Malformed));
    let objects = format!("{}1{}", "{\"a\":".repeat(50_000), "}".repeat(50_000));
    let t = sign_hs256(HEADER, &objects, HS256_SECRET);
    assert_eq!(verify(&big, &t, NOW), Err(Reason::Malformed));
}

#[test]
fn oversized_token_is_too_large_before_parsing() {
    let p = provider();
    let huge = "a".repeat(8193);
    assert_eq!(verify(&p, &huge, NOW), Err(Reason::TooLarge));
    let padded = token(json!({"pad": "x".repeat(7000)}));
    assert!(padded.len() > 8192);
    assert_eq!(verify(&p, &padded, NOW), Err(Reason::TooLarge));
    assert_eq!(verify(&provider_with(json!({"maxTokenBytes": 16384})), &padded, NOW), Ok(()));
}

#[test]
fn empty_key_set_is_no_keys() {
    assert_eq!(provider().verify(&token(json!({})), &KeySet::empty(), NOW).err(), Some(Reason::NoKeys));
}

#[test]
fn algorithm_outside_the_allow_list_is_unsupported() {
    let p = provider_with(json!({"algorithms": ["ES256", "EdDSA"]}));
    assert_eq!(verify(&p, &token(json!({})), NOW), Err(Reason::UnsupportedAlgorithm));
}

#[test]
fn token_without_kid_tries_keys_of_the_header_algorithm() {
    let t = sign_hs256(r#"{"alg":"HS256"}"#, &claims(json!({})), HS256_SECRET);
    let verified = provider().verify(&t, &fixture_keys(), NOW).unwrap();
    assert_eq!(verified.kid.as_deref(), Some("oct-hs256"));
    let wrong = sign_hs256(
        r#"{"alg":"HS256"}"#,
        &claims(json!({})),
        b"another-secret-another-secret-another-secret!",
    );
    assert_eq!(verify(&provider(), &wrong, NOW), Err(Reason::BadSignature));
}

#[test]
fn kid_naming_a_key_of_another_algorithm_is_unsupported_algorithm() {
    let header = r#"{"alg":"HS256","kid":"oct-hs512"}"#;
    let t = sign_hs256(header, &claims(json!({})), HS256_SECRET);
    assert_eq!(verify(&provider(), &t, NOW), Err(Reason::UnsupportedAlgorithm));
}

#[test]
fn weak_rsa_key_is_not_loaded() {
    let (set, warnings) =
        KeySet::from_jwks_json(include_str!("fixtures/jwks-rsa1024.json").as_bytes()).unwrap();
    assert!(set.is_empty());
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].message.contains("2048"), "{}", warnings[0]);
}

#[test]
fn rejection_reasons_never_echo_token_contents() {
    let t = token(json!({"iss": "secret-issuer-value"}));
    let reason = provider().verify(&t, &fixture_keys(), NOW).unwrap_err();
    assert!(!reason.to_string().contains("secret"));
    assert!(!reason.description().contains("secret"));
}
