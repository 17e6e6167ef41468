//! API tokens (`core/src/api_token.rs`): `parse` of any presented string under a few
//! prefixes, `ApiTokenReplica::check`, and feed pages into the replica.
//!
//! Input: raw bytes. Up to the first NUL they are a presented token (decoded lossily, as
//! a header value is); after it, a feed page as JSON.
//!
//! Invariants: a parsed token's lookup is 8 base62 characters and the input is at most
//! `MAX_TOKEN_LEN` bytes; parse is a function of the input only (a second parse agrees);
//! a generated token parses to its own lookup and verifies; a page the replica refuses
//! leaves its tokens and cursor as they were; a token the replica accepts was on the
//! page and its secret matches the stored verifier. The whole input read as a shared
//! replica cell (`api_auth::cells`) never panics, and what decodes re-encodes to a
//! cell that decodes the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_core::api_auth::cells;
use portcullis_core::api_token::{
    generate, is_lookup, parse, verify, ApiTokenFeedPage, ApiTokenReplica, MAX_TOKEN_LEN, RANDOM_BYTES,
};

fuzz_target!(|data: &[u8]| {
    let records = cells::decode_cell(data);
    assert_eq!(cells::decode_cell(&cells::encode_cell(&records)), records);
    let _ = cells::find_in_cell(data, "abcdEFGH");
    let (presented, page) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    let presented = String::from_utf8_lossy(presented);
    for prefix in ["pct", "a", "zzzzzzzzzzzzzzzz"] {
        match parse(&presented, prefix) {
            Ok(parsed) => {
                assert!(is_lookup(parsed.lookup));
                assert!(presented.len() <= MAX_TOKEN_LEN);
                assert_eq!(parse(&presented, prefix).map(|p| p.lookup), Ok(parsed.lookup));
            }
            Err(e) => assert_eq!(parse(&presented, prefix).err(), Some(e)),
        }
    }
    let mut random = [0u8; RANDOM_BYTES];
    for (r, b) in random.iter_mut().zip(data.iter().cycle()) {
        *r = *b;
    }
    let token = generate("pct", &random).unwrap();
    let parsed = parse(token.expose(), "pct").unwrap();
    assert_eq!(parsed.lookup, token.lookup());
    assert!(verify(&parsed, &token.verifier()));

    let Some(page) = page else { return };
    let Ok(page) = serde_json::from_slice::<ApiTokenFeedPage>(page) else { return };
    let mut replica = ApiTokenReplica::default();
    let before = (replica.len(), replica.cursor().to_owned());
    if replica.apply(&page).is_err() {
        assert_eq!((replica.len(), replica.cursor().to_owned()), before);
    }
    if let Ok((lookup, record)) = replica.check(&presented, "pct", 0) {
        let parsed = parse(&presented, "pct").unwrap();
        assert_eq!(lookup, parsed.lookup);
        assert!(verify(&parsed, &record.verifier));
        assert!(page.tokens.iter().any(|t| t.lookup == lookup), "accepted a token the page did not carry");
    }
});
