use super::format::{checksum, push_base62};
use super::*;
use sha2::{Digest, Sha256};
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

fn random(seed: u8) -> [u8; RANDOM_BYTES] {
    let mut out = [0u8; RANDOM_BYTES];
    for (i, b) in out.iter_mut().enumerate() {
        *b = seed.wrapping_mul(31).wrapping_add(u8::try_from(i).unwrap().wrapping_mul(97));
    }
    out
}

fn entry(token: &NewToken, expires_at: u64, revoked_at: Option<u64>) -> ApiTokenEntry {
    ApiTokenEntry {
        lookup: token.lookup().to_owned(),
        verifier: token.verifier().encode(),
        user: "alice".to_owned(),
        scopes: vec!["deploy".to_owned()],
        expires_at,
        revoked_at,
    }
}

#[test]
fn generated_tokens_have_the_documented_shape_and_parse_back() {
    let token = generate("pct", &random(1)).unwrap();
    let text = token.expose();
    assert_eq!(text.len(), 3 + 1 + LOOKUP_LEN + 1 + SECRET_LEN + CHECKSUM_LEN);
    let parts: Vec<&str> = text.split('_').collect();
    assert_eq!(parts.len(), 3, "{text}");
    assert_eq!(parts[0], "pct");
    assert_eq!(parts[1], token.lookup());
    assert!(parts[1..].iter().all(|p| p.bytes().all(|b| b.is_ascii_alphanumeric())));
    let parsed = parse(text, "pct").unwrap();
    assert_eq!(parsed.lookup, token.lookup());
    assert!(verify(&parsed, &token.verifier()));
    assert!(!format!("{token:?}{parsed:?}").contains(&parts[2][..SECRET_LEN]), "Debug hides the secret");
}

#[test]
fn different_randomness_gives_different_lookups_and_secrets() {
    let a = generate("pct", &random(1)).unwrap();
    let b = generate("pct", &random(2)).unwrap();
    assert_ne!(a.lookup(), b.lookup());
    assert_ne!(a.verifier(), b.verifier());
    assert_eq!(a, generate("pct", &random(1)).unwrap(), "deterministic in its input");
}

#[test]
fn base62_digits_are_the_low_digits_of_the_number() {
    let mut out = String::new();
    push_base62(&mut out, &[0, 0, 1, 0], 3); // 256 = 4*62 + 8
    assert_eq!(out, "048");
    let mut all = String::new();
    push_base62(&mut all, &[0xff; 32], SECRET_LEN);
    assert_eq!(all.len(), SECRET_LEN);
}

#[test]
fn malformed_tokens_are_refused_with_the_reason() {
    let token = generate("pct", &random(3)).unwrap();
    let text = token.expose();
    assert_eq!(parse(text, "abc"), Err(FormatError::WrongPrefix));
    assert_eq!(parse(&format!("{text}A"), "pct"), Err(FormatError::Malformed));
    assert_eq!(parse(&text[..text.len() - 1], "pct"), Err(FormatError::Malformed));
    assert_eq!(parse(&"a".repeat(10_000), "pct"), Err(FormatError::TooLong));
    assert_eq!(parse("pct_", "pct"), Err(FormatError::Malformed));
    assert_eq!(parse("pct_abc_def", "pct"), Err(FormatError::Malformed));
    assert_eq!(parse("", "pct"), Err(FormatError::WrongPrefix));
    let with_dash = format!("{}-{}", &text[..12], &text[13..]);
    assert_eq!(parse(&with_dash, "pct"), Err(FormatError::Malformed));
    // One character of the secret changed: the checksum catches it offline.
    let mut bytes = text.as_bytes().to_vec();
    bytes[20] = if bytes[20] == b'a' { b'b' } else { b'a' };
    let typo = String::from_utf8(bytes).unwrap();
    assert_eq!(parse(&typo, "pct"), Err(FormatError::BadChecksum));
    // Multi-byte characters never split a char boundary.
    assert!(parse(&format!("pct_{}_{}", "é".repeat(4), "ü".repeat(19)), "pct").is_err());
}

#[test]
fn prefixes_are_lowercase_alphanumerics_up_to_sixteen() {
    assert!(validate_prefix("pct").is_ok());
    assert!(validate_prefix("acme2").is_ok());
    for bad in ["", "PCT", "p_t", "p-t", &"a".repeat(17)] {
        assert_eq!(validate_prefix(bad), Err(FormatError::BadPrefix), "{bad:?}");
        assert!(generate(bad, &random(0)).is_err());
    }
    let long = generate(&"z".repeat(MAX_PREFIX_LEN), &random(4)).unwrap();
    assert_eq!(long.expose().len(), MAX_TOKEN_LEN);
    assert!(parse(long.expose(), &"z".repeat(MAX_PREFIX_LEN)).is_ok());
}

#[test]
fn the_verifier_is_the_documented_sha256_and_binds_the_lookup() {
    let v = verifier("abcdEFGH", "s");
    let mut h = Sha256::new();
    for part in [&b"portcullis api token v1"[..], b"abcdEFGH", b"s"] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    assert_eq!(v.0, <[u8; 32]>::from(h.finalize()));
    assert_ne!(verifier("abcdEFGI", "s"), v);
    assert_eq!(Verifier::decode(&v.encode()), Some(v));
    assert_eq!(v.encode().len(), 43);
    assert_eq!(Verifier::decode("short"), None);
    assert!(!format!("{v:?}").contains(&v.encode()));
}

#[test]
fn the_replica_answers_each_refusal_reason() {
    let live = generate("pct", &random(5)).unwrap();
    let revoked = generate("pct", &random(6)).unwrap();
    let mut replica = ApiTokenReplica::default();
    let page = ApiTokenFeedPage {
        cursor: "d.1".to_owned(),
        snapshot: Some(ApiTokenSnapshotPart { id: "s".into(), part: 0, last: true }),
        tokens: vec![entry(&live, 2_000, None), entry(&revoked, 2_000, Some(1_000))],
        more: false,
    };
    replica.apply(&page).unwrap();
    assert_eq!((replica.len(), replica.cursor()), (2, "d.1"));
    let (lookup, token) = replica.check(live.expose(), "pct", 1_500).unwrap();
    assert_eq!((lookup, &*token.user), (live.lookup(), "alice"));
    assert_eq!(replica.check(live.expose(), "pct", 2_000).unwrap_err(), Refusal::Expired);
    assert_eq!(replica.check(revoked.expose(), "pct", 1_500).unwrap_err(), Refusal::Revoked);
    let unknown = generate("pct", &random(7)).unwrap();
    assert_eq!(replica.check(unknown.expose(), "pct", 1_500).unwrap_err(), Refusal::UnknownToken);
    assert_eq!(replica.check("garbage", "pct", 1_500).unwrap_err(), Refusal::UnknownToken);
    // Right lookup, wrong secret (with a valid checksum: an attacker can compute one).
    let forged_body = format!("pct_{}_{}", live.lookup(), "A".repeat(SECRET_LEN));
    let forged = format!("{forged_body}{}", checksum(forged_body.as_bytes()));
    assert_eq!(replica.check(&forged, "pct", 1_500).unwrap_err(), Refusal::BadSecret);
    assert_eq!(Refusal::BadSecret.as_str(), "bad_secret");

    // A delta revokes the live one.
    replica
        .apply(&ApiTokenFeedPage {
            cursor: "d.2".into(),
            tokens: vec![entry(&live, 2_000, Some(1_600))],
            ..ApiTokenFeedPage::default()
        })
        .unwrap();
    assert_eq!(replica.check(live.expose(), "pct", 1_700).unwrap_err(), Refusal::Revoked);
    replica.prune(2_000);
    assert!(replica.is_empty());
}

#[test]
fn a_snapshot_is_published_only_when_complete_and_bad_parts_leave_the_replica_alone() {
    let a = generate("pct", &random(8)).unwrap();
    let b = generate("pct", &random(9)).unwrap();
    let mut replica = ApiTokenReplica::default();
    let part = |n, last, token: &NewToken, cursor: &str| ApiTokenFeedPage {
        cursor: cursor.to_owned(),
        snapshot: Some(ApiTokenSnapshotPart { id: "s1".into(), part: n, last }),
        tokens: vec![entry(token, 9_000, None)],
        more: !last,
    };
    replica.apply(&part(0, false, &a, "s.1")).unwrap();
    assert!(replica.is_empty(), "nothing published mid-snapshot");
    assert_eq!(replica.cursor(), "s.1");
    assert_eq!(replica.apply(&part(2, true, &b, "d.9")), Err(ApiTokenFeedError::OutOfOrder));
    assert_eq!(replica.cursor(), "", "an abandoned assembly restarts from the published cursor");
    replica.apply(&part(0, false, &a, "s.1")).unwrap();
    replica.apply(&part(1, true, &b, "d.9")).unwrap();
    assert_eq!((replica.len(), replica.cursor()), (2, "d.9"));
    let mut bad = part(0, true, &a, "x");
    bad.tokens[0].verifier = "nope".into();
    assert_eq!(replica.apply(&bad), Err(ApiTokenFeedError::BadEntry));
    assert_eq!(replica.len(), 2);
}

#[test]
fn feed_pages_ignore_unknown_fields_and_use_the_documented_names() {
    let json = r#"{"cursor":"d.x.1","tokens":[{"lookup":"abcdEFGH","verifier":"v","user":"u",
        "scopes":["a"],"expiresAt":5,"revokedAt":4,"later":1}],"more":true,"later":2}"#;
    let page: ApiTokenFeedPage = serde_json::from_str(json).unwrap();
    assert_eq!(page.tokens[0].revoked_at, Some(4));
    assert!(page.more);
    let usage: UsageReport = serde_json::from_str(r#"{"used":["abcdEFGH"]}"#).unwrap();
    assert_eq!(usage.used.len(), 1);
}
