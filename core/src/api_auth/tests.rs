use std::collections::HashMap;

use super::cells::{decode_cell, encode_cell, find_in_cell, upsert, Lookup};
use super::*;
use crate::api_token::{
    generate, ApiTokenEntry, ApiTokenFeedError, ApiTokenFeedPage, ApiTokenSnapshotPart, NewToken, Refusal,
    ReplicaToken, RANDOM_BYTES,
};
use crate::config::{compile_json_with, Policy};
use crate::response::Denial;
use crate::RequestParts;
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

fn random(seed: u32) -> [u8; RANDOM_BYTES] {
    let mut out = [0u8; RANDOM_BYTES];
    let mut state = u64::from(seed).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for b in out.iter_mut() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *b = (state >> 24) as u8;
    }
    out
}

fn entry(
    token: &NewToken,
    user: &str,
    scopes: &[&str],
    expires_at: u64,
    revoked_at: Option<u64>,
) -> ApiTokenEntry {
    ApiTokenEntry {
        lookup: token.lookup().to_owned(),
        verifier: token.verifier().encode(),
        user: user.to_owned(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        expires_at,
        revoked_at,
    }
}

const CONFIG: &str = r#"{
  "controlPlane": {"cluster": "cp", "authority": "cp", "credential": {"inline": "api-auth-test-fleet-credential-0123456789"}},
  "providers": {"idp": {"issuer": "https://idp", "remoteJwks": {"cluster": "idp", "authority": "idp"}}},
  "apiTokens": {},
  "rules": [
    {"name": "api", "match": {"pathPrefix": "/api/"}, "acceptApiTokens": true, "scopes": ["deploy"]},
    {"name": "both", "match": {"pathPrefix": "/both/"}, "requires": {"provider": "idp"}, "acceptApiTokens": true},
    {"name": "jwt", "match": {"pathPrefix": "/"}, "requires": {"provider": "idp"}}
  ]
}"#;

fn policy() -> Policy {
    compile_json_with(CONFIG.as_bytes(), &|_| None).unwrap()
}

fn request(path: &str, headers: &[(&str, &str)]) -> RequestParts {
    let headers = headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
    RequestParts::new("GET", "h", path, headers, &crate::path::PathOptions::default()).unwrap()
}

/// Decides `req` against a replica holding `entries`, counting lookups.
fn decide(policy: &Policy, req: &RequestParts, entries: &[ApiTokenEntry], now: u64) -> (ApiAuth, usize) {
    let mut cells: HashMap<usize, Vec<u8>> = HashMap::new();
    for e in entries {
        let (lookup, token) = crate::api_token::replica_entry(e).unwrap();
        let cell = cell_of(&lookup);
        let next = upsert(cells.get(&cell).map(Vec::as_slice), &[(lookup, token)], 0);
        cells.insert(cell, next);
    }
    let rule = policy.match_rule(req).unwrap();
    let input = ApiAuthInput {
        settings: policy.api_tokens.as_ref().unwrap(),
        rule,
        providers: &policy.providers,
        request: req,
        synced: true,
        now_unix_secs: now,
    };
    let mut calls = 0;
    let mut lookup = |l: &str| {
        calls += 1;
        let key = crate::api_token::lookup_key(l)?;
        find_in_cell(cells.get(&cell_of(&key))?, l)
    };
    (authenticate_api_token(&input, &mut lookup), calls)
}

fn denial(outcome: &ApiAuth) -> Option<&Denial> {
    match outcome {
        ApiAuth::Deny(d) => Some(d),
        _ => None,
    }
}

#[test]
fn a_valid_token_passes_with_identity_headers_and_is_stripped() {
    let policy = policy();
    let token = generate("pct", &random(1)).unwrap();
    let entries = [entry(&token, "alice", &["deploy", "read"], 2_000, None)];
    for header in
        [("authorization", format!("Bearer {}", token.expose())), ("x-api-key", token.expose().to_string())]
    {
        let req = request("/api/x", &[(header.0, header.1.as_str())]);
        let (outcome, calls) = decide(&policy, &req, &entries, 1_000);
        let ApiAuth::Allow(identity) = outcome else { panic!("{outcome:?}") };
        assert_eq!(calls, 1);
        assert_eq!(identity.lookup, token.lookup());
        assert_eq!(
            identity.set_headers,
            vec![
                ("x-portcullis-user".to_string(), "alice".to_string()),
                ("x-portcullis-token-id".to_string(), token.lookup().to_string()),
                ("x-portcullis-scopes".to_string(), "deploy read".to_string()),
            ]
        );
        assert!(identity.remove.is_some(), "not forwarded by default");
    }
    assert!(policy.is_managed_header("x-portcullis-user") && policy.is_managed_header("X_Portcullis_Scopes"));
}

#[test]
fn each_refusal_has_its_stable_reason() {
    let policy = policy();
    let live = generate("pct", &random(2)).unwrap();
    let revoked = generate("pct", &random(3)).unwrap();
    let unknown = generate("pct", &random(4)).unwrap();
    let narrow = generate("pct", &random(5)).unwrap();
    let entries = [
        entry(&live, "alice", &["deploy"], 2_000, None),
        entry(&revoked, "bob", &["deploy"], 2_000, Some(900)),
        entry(&narrow, "carol", &["read"], 2_000, None),
    ];
    let at = |token: &str, now: u64| {
        let req = request("/api/x", &[("x-api-key", token)]);
        decide(&policy, &req, &entries, now)
    };
    let expect = |token: &str, now: u64, want: Denial, lookups: usize| {
        let (outcome, calls) = at(token, now);
        assert_eq!((denial(&outcome), calls), (Some(&want), lookups), "{token:.12}…");
        assert_eq!(
            want.render("r").status,
            if matches!(want, Denial::InsufficientScope(_)) { 403 } else { 401 }
        );
    };
    expect(revoked.expose(), 1_000, Denial::InvalidApiToken(Refusal::Revoked), 1);
    expect(live.expose(), 2_000, Denial::InvalidApiToken(Refusal::Expired), 1);
    expect(unknown.expose(), 1_000, Denial::InvalidApiToken(Refusal::UnknownToken), 1);
    expect(narrow.expose(), 1_000, Denial::InsufficientScope(vec!["deploy".into()]), 1);
    // Right lookup, wrong secret, with a checksum an attacker can compute.
    let body = format!("pct_{}_{}", live.lookup(), "B".repeat(32));
    let forged = format!("{body}{}", crate::api_token::checksum(body.as_bytes()));
    expect(&forged, 1_000, Denial::InvalidApiToken(Refusal::BadSecret), 1);
    // One byte changed anywhere: refused, and never looked up when the checksum catches it.
    let text = live.expose();
    for i in 0..text.len() {
        let mut bytes = text.as_bytes().to_vec();
        bytes[i] = if bytes[i] == b'x' { b'y' } else { b'x' };
        let changed = String::from_utf8(bytes).unwrap();
        let (outcome, _) = at(&changed, 1_000);
        assert!(matches!(denial(&outcome), Some(Denial::InvalidApiToken(_))), "byte {i}: {outcome:?}");
    }
    expect("pct_garbage", 1_000, Denial::InvalidApiToken(Refusal::Malformed), 0);
    expect("not-a-token", 1_000, Denial::InvalidApiToken(Refusal::Malformed), 0);
}

#[test]
fn two_credentials_are_refused_and_a_rule_without_api_tokens_ignores_them() {
    let policy = policy();
    let a = generate("pct", &random(6)).unwrap();
    let b = generate("pct", &random(7)).unwrap();
    let entries = [entry(&a, "alice", &["deploy"], 2_000, None), entry(&b, "bob", &["deploy"], 2_000, None)];
    let bearer = format!("Bearer {}", a.expose());
    let two = request("/api/x", &[("authorization", &bearer), ("x-api-key", b.expose())]);
    assert_eq!(denial(&decide(&policy, &two, &entries, 1_000).0), Some(&Denial::MultipleCredentials));
    let with_jwt =
        request("/both/x", &[("authorization", "Bearer eyJhbGciOi.x.y"), ("x-api-key", a.expose())]);
    assert_eq!(denial(&decide(&policy, &with_jwt, &entries, 1_000).0), Some(&Denial::MultipleCredentials));
    // On a rule taking API tokens only, a bearer JWT beside an API token is two too.
    let api_only =
        request("/api/x", &[("authorization", "Bearer eyJhbGciOi.x.y"), ("x-api-key", a.expose())]);
    assert_eq!(denial(&decide(&policy, &api_only, &entries, 1_000).0), Some(&Denial::MultipleCredentials));
    // The API token in the JWT provider's own location is the same credential, not two.
    let same = request("/both/x", &[("authorization", &bearer)]);
    assert!(matches!(decide(&policy, &same, &entries, 1_000).0, ApiAuth::Allow(_)));
    // A JWT alone: the JWT check decides.
    let jwt = request("/both/x", &[("authorization", "Bearer eyJhbGciOi.x.y")]);
    assert_eq!(decide(&policy, &jwt, &entries, 1_000).0, ApiAuth::Absent);
    let elsewhere = request("/other", &[("x-api-key", a.expose())]);
    assert_eq!(decide(&policy, &elsewhere, &entries, 1_000).0, ApiAuth::Absent);
}

#[test]
fn before_the_first_sync_well_formed_tokens_fail_closed() {
    let policy = policy();
    let a = generate("pct", &random(8)).unwrap();
    let req = request("/api/x", &[("x-api-key", a.expose())]);
    let input = ApiAuthInput {
        settings: policy.api_tokens.as_ref().unwrap(),
        rule: policy.match_rule(&req).unwrap(),
        providers: &policy.providers,
        request: &req,
        synced: false,
        now_unix_secs: 1,
    };
    let outcome = authenticate_api_token(&input, &mut |_| panic!("no lookup before the sync"));
    assert_eq!(outcome, ApiAuth::Deny(Denial::ApiTokensUnavailable));
    assert_eq!(Denial::ApiTokensUnavailable.render("r").status, 503);
}

#[test]
fn configuration_errors_name_the_field() {
    let bad = |json: &str| compile_json_with(json.as_bytes(), &|_| None).unwrap_err();
    let err = bad(r#"{"rules": [{"match": {"pathPrefix": "/"}, "acceptApiTokens": true}]}"#);
    assert_eq!(err.field, "rules[0].acceptApiTokens");
    let err = bad(r#"{"apiTokens": {}}"#);
    assert_eq!(err.field, "apiTokens");
    let err = bad(r#"{"rules": [{"match": {"pathPrefix": "/"}}]}"#);
    assert_eq!(err.field, "rules[0].requires");
    let cp = r#""controlPlane": {"cluster": "cp", "authority": "cp", "credential": {"inline": "api-auth-test-fleet-credential-0123456789"}}"#;
    let err = bad(&format!(r#"{{{cp}, "apiTokens": {{"prefix": "Bad_"}}}}"#));
    assert_eq!(err.field, "apiTokens.prefix");
    let err = bad(&format!(r#"{{{cp}, "apiTokens": {{"pollIntervalMs": 5}}}}"#));
    assert_eq!(err.field, "apiTokens.pollIntervalMs");
    let err = bad(&format!(r#"{{{cp}, "apiTokens": {{"pollIntervalMs": 2000, "maxStalenessSeconds": 1}}}}"#));
    assert_eq!(err.field, "apiTokens.maxStalenessSeconds");
    let err = bad(&format!(r#"{{{cp}, "apiTokens": {{"userHeader": "authorization"}}}}"#));
    assert_eq!(err.field, "apiTokens.userHeader");
    let settings = policy().api_tokens.unwrap();
    assert_eq!(
        (settings.prefix.as_str(), settings.poll_interval_ms, settings.locations.len()),
        ("pct", 1_000, 2)
    );
}

fn replica_token(user: &str, expires_at: u64) -> ReplicaToken {
    let e = entry(&generate("pct", &random(9)).unwrap(), user, &["a", "b"], expires_at, None);
    crate::api_token::replica_entry(&e).unwrap().1
}

#[test]
fn cells_round_trip_find_one_record_and_drop_expired_ones() {
    let records: Vec<(Lookup, ReplicaToken)> = (0..5u8)
        .map(|i| {
            (
                b"abcdEFG0".map(|c| if c == b'0' { b'0' + i } else { c }),
                replica_token("u", 100 + u64::from(i)),
            )
        })
        .collect();
    let bytes = encode_cell(&records);
    assert_eq!(decode_cell(&bytes), records);
    assert_eq!(find_in_cell(&bytes, "abcdEFG3"), Some(records[3].1.clone()));
    assert_eq!(find_in_cell(&bytes, "abcdEFG9"), None);
    assert_eq!(find_in_cell(&bytes, "bad"), None);
    let pruned = upsert(Some(&bytes), &[], 102);
    assert_eq!(decode_cell(&pruned).len(), 2, "only those expiring after 102 stay");
    // Truncated or foreign bytes read as an empty cell, never panic.
    for cut in 0..bytes.len() {
        let _ = find_in_cell(&bytes[..cut], "abcdEFG4");
        let _ = decode_cell(&bytes[..cut]);
    }
    assert!(decode_cell(&[9, 9, 9]).is_empty());
}

#[test]
fn the_cell_feed_writes_deltas_at_once_and_snapshots_only_when_complete() {
    let a = generate("pct", &random(10)).unwrap();
    let b = generate("pct", &random(11)).unwrap();
    let mut feed = CellFeed::default();
    let part = |n, last, t: &NewToken| ApiTokenFeedPage {
        cursor: format!("s.{n}"),
        snapshot: Some(ApiTokenSnapshotPart { id: "s".into(), part: n, last }),
        tokens: vec![entry(t, "u", &[], 9_000, None)],
        more: !last,
    };
    assert_eq!(feed.apply(&part(0, false, &a)).unwrap(), (CellWrites::Assembling, None));
    assert_eq!(feed.cursor("published"), "s.0");
    let (writes, cursor) = feed.apply(&part(1, true, &b)).unwrap();
    let CellWrites::Snapshot(cells) = writes else { panic!() };
    assert_eq!(cells.values().map(Vec::len).sum::<usize>(), 2);
    assert_eq!(cursor.as_deref(), Some("s.1"));
    assert_eq!(feed.cursor("published"), "published");
    assert_eq!(feed.apply(&part(3, true, &b)), Err(ApiTokenFeedError::OutOfOrder));
    let delta = ApiTokenFeedPage {
        cursor: "d.2".into(),
        tokens: vec![entry(&a, "u", &[], 9_000, Some(5))],
        ..ApiTokenFeedPage::default()
    };
    let (writes, cursor) = feed.apply(&delta).unwrap();
    let key = crate::api_token::lookup_key(a.lookup()).unwrap();
    assert!(
        matches!(&writes, CellWrites::Delta(d) if d.len() == 1 && d[0].0 == cell_of(&key) && d[0].1[0].1.revoked)
    );
    assert_eq!(cursor.as_deref(), Some("d.2"));
}

/// The replica's size in shared data per 100 000 tokens (one user, two scopes each):
/// printed for the docs (`cargo test -p portcullis-core replica_memory -- --nocapture`).
#[test]
fn replica_memory_per_100k_tokens() {
    let mut cells: HashMap<usize, Vec<(Lookup, ReplicaToken)>> = HashMap::new();
    for i in 0..100_000u32 {
        let token = generate("pct", &random(i)).unwrap();
        let e = entry(&token, &format!("user-{:05}", i % 20_000), &["deploy", "read"], 2_000_000_000, None);
        let (lookup, record) = crate::api_token::replica_entry(&e).unwrap();
        cells.entry(cell_of(&lookup)).or_default().push((lookup, record));
    }
    let encoded: usize = cells.values().map(|c| encode_cell(c).len()).sum();
    let keys: usize = cells.keys().map(|i| cell_key(*i).len()).sum();
    let largest = cells.values().map(Vec::len).max().unwrap_or(0);
    println!(
        "API token replica: {} bytes of cell values + {} bytes of keys for 100000 tokens in {} cells \
         (largest cell {} records, {} bytes)",
        encoded,
        keys,
        cells.len(),
        largest,
        cells.values().map(|c| encode_cell(c).len()).max().unwrap_or(0)
    );
    assert!(encoded < 12_000_000, "{encoded}");
    assert!(largest < 80, "cells fill evenly: {largest}");
}
