//! Following the feed: deltas, paged snapshots, bad pages, the shared encoding.

use super::*;
use crate::fleet::{encode_hash, FeedKey, FleetCredential};
use crate::jwt::versions::MinimumVersions;
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

fn key() -> FeedKey {
    FleetCredential::new("fleet-credential-0123456789abcdef0123").unwrap().feed_key()
}

fn revoked(jti: &str, exp: u64) -> RevokedToken {
    RevokedToken { jti_hash: encode_hash(&key().token_id(jti)), exp }
}

fn user(sub: &str, min_version: u64) -> UserMinVersion {
    UserMinVersion { sub_hash: encode_hash(&key().subject(sub)), min_version }
}

fn delta(cursor: &str) -> FeedPage {
    FeedPage { cursor: cursor.into(), key_id: key().id().into(), ..FeedPage::default() }
}

fn part(cursor: &str, id: &str, n: u32, last: bool) -> FeedPage {
    FeedPage { snapshot: Some(SnapshotPart { id: id.into(), part: n, last }), more: true, ..delta(cursor) }
}

/// Applies pages in order, returning each outcome.
fn follow(
    follower: &mut FeedFollower,
    published: &mut RevocationReplica,
    pages: Vec<FeedPage>,
) -> Vec<Result<Applied, FeedError>> {
    pages
        .into_iter()
        .map(|p| {
            follower.apply(published, p, &key(), 100).map(|(applied, _)| match applied {
                Applied::Assembled(r) => {
                    *published = (*r).clone();
                    Applied::Assembled(r)
                }
                other => other,
            })
        })
        .collect()
}

#[test]
fn deltas_accumulate_in_the_published_replica() {
    let (mut f, mut r) = (FeedFollower::default(), RevocationReplica::default());
    let mut d1 = delta("d1");
    d1.revoked.push(revoked("a", 200));
    let mut d2 = delta("d2");
    d2.revoked.push(revoked("b", 300));
    d2.user_min_versions.push(user("alice", 2));
    assert_eq!(follow(&mut f, &mut r, vec![d1, d2]), vec![Ok(Applied::Changed), Ok(Applied::Changed)]);
    assert!(r.is_revoked(&key(), "a", 100) && r.is_revoked(&key(), "b", 100));
    assert!(!r.is_revoked(&key(), "c", 100));
    assert_eq!(r.versions(&key()).user_min_version("alice"), Some(2));
    assert_eq!(r.cursor, "d2");
    assert_eq!(follow(&mut f, &mut r, vec![delta("d2")]), vec![Ok(Applied::Current)]);
}

#[test]
fn a_paged_snapshot_is_published_only_once_complete_and_caught_up() {
    let (mut f, mut r) = (FeedFollower::default(), RevocationReplica::default());
    let mut old = delta("d0");
    old.revoked.push(revoked("old", 500));
    follow(&mut f, &mut r, vec![old]);

    let mut p0 = part("s0", "e.7", 0, false);
    p0.revoked.push(revoked("a", 200));
    p0.global = Some(GlobalMinVersion { min_version: 2, rotated_at: 10, grace_seconds: 5 });
    let mut p1 = part("s1", "e.7", 1, true);
    p1.user_min_versions.push(user("alice", 3));
    let mut catch_up = delta("d8");
    catch_up.more = true;
    catch_up.revoked.push(revoked("late", 200));
    let outcomes = follow(&mut f, &mut r, vec![p0, p1, catch_up]);
    assert_eq!(outcomes, vec![Ok(Applied::Assembling); 3]);
    assert_eq!(f.cursor(&r), "d8", "polls continue the assembly");
    assert!(r.is_revoked(&key(), "old", 100) && !r.is_revoked(&key(), "a", 100), "nothing published yet");

    let outcome = follow(&mut f, &mut r, vec![delta("d9")]);
    assert!(matches!(outcome[0], Ok(Applied::Assembled(_))));
    assert!(!f.assembling());
    assert!(!r.is_revoked(&key(), "old", 100), "a snapshot replaces the replica");
    assert!(r.is_revoked(&key(), "a", 100) && r.is_revoked(&key(), "late", 100));
    assert_eq!(r.versions(&key()).user_min_version("alice"), Some(3));
    assert_eq!(r.global.min_version, 2);
    assert_eq!((r.cursor.as_str(), r.key_id.as_str()), ("d9", key().id()));
}

#[test]
fn a_part_that_does_not_continue_the_assembly_abandons_it() {
    let cases: Vec<(&str, Vec<FeedPage>)> = vec![
        ("a gap", vec![part("s0", "x", 0, false), part("s2", "x", 2, true)]),
        ("a repeat", vec![part("s0", "x", 0, false), part("s1", "x", 1, false), part("s1", "x", 1, true)]),
        ("another snapshot", vec![part("s0", "x", 0, false), part("s1", "y", 1, true)]),
        ("a continuation without a start", vec![part("s1", "x", 1, true)]),
        ("a delta before the last part", vec![part("s0", "x", 0, false), delta("d1")]),
        ("a part after the last", vec![part("s0", "x", 0, true), part("s1", "x", 1, true)]),
    ];
    for (what, pages) in cases {
        let (mut f, mut r) = (FeedFollower::default(), RevocationReplica::default());
        let before = r.clone();
        let outcomes = follow(&mut f, &mut r, pages);
        assert!(matches!(outcomes.last(), Some(Err(FeedError::SnapshotBroken(_)))), "{what}: {outcomes:?}");
        assert!(!f.assembling(), "{what}: the assembly is abandoned");
        assert_eq!(r, before, "{what}: nothing was published");
    }
}

#[test]
fn a_new_first_part_restarts_the_assembly() {
    let (mut f, mut r) = (FeedFollower::default(), RevocationReplica::default());
    let mut first = part("s0", "x", 0, false);
    first.revoked.push(revoked("from-x", 200));
    let mut restart = part("t0", "y", 0, true);
    restart.revoked.push(revoked("from-y", 200));
    follow(&mut f, &mut r, vec![first, restart, delta("d1")]);
    assert!(r.is_revoked(&key(), "from-y", 100));
    assert!(!r.is_revoked(&key(), "from-x", 100), "the abandoned snapshot's parts are gone");
}

#[test]
fn revocations_end_with_the_token_and_user_minimums_never_go_down() {
    let (mut f, mut r) = (FeedFollower::default(), RevocationReplica::default());
    let mut d1 = delta("d1");
    d1.revoked = vec![revoked("a", 200), revoked("expired", 50)];
    d1.user_min_versions.push(user("u", 5));
    let mut d2 = delta("d2");
    d2.user_min_versions.push(user("u", 3));
    follow(&mut f, &mut r, vec![d1, d2]);
    assert_eq!(r.revoked.len(), 1, "an expired token's revocation is not kept");
    assert!(r.is_revoked(&key(), "a", 199) && !r.is_revoked(&key(), "a", 200));
    assert_eq!(r.versions(&key()).user_min_version("u"), Some(5));
    r.prune(200);
    assert!(r.revoked.is_empty());
}

#[test]
fn bad_pages_leave_the_replica_unchanged() {
    let (mut f, mut r) = (FeedFollower::default(), RevocationReplica::default());
    let mut d = delta("d1");
    d.revoked.push(revoked("a", 200));
    follow(&mut f, &mut r, vec![d]);
    let before = r.clone();
    let k = key();
    let mut apply_json = |bytes: &[u8]| f.apply_json(&mut r, bytes, &k, 100);
    assert!(matches!(apply_json(b"{not json"), Err(FeedError::NotJson(_))));
    assert!(matches!(
        apply_json(br#"{"cursor": "c", "keyId": "k", "bogus": 1}"#),
        Err(FeedError::NotJson(_))
    ));
    let other = FleetCredential::new("another-fleet-credential-0123456789ab").unwrap().feed_key();
    let foreign = format!(r#"{{"cursor": "c2", "keyId": "{}"}}"#, other.id());
    assert!(matches!(apply_json(foreign.as_bytes()), Err(FeedError::KeyMismatch { .. })));
    let id = key().id().to_string();
    for (what, body) in [
        ("cursor with a slash", format!(r#"{{"cursor": "a/b", "keyId": "{id}"}}"#)),
        ("empty cursor", format!(r#"{{"cursor": "", "keyId": "{id}"}}"#)),
        (
            "raw jti",
            format!(r#"{{"cursor": "c", "keyId": "{id}", "revoked": [{{"jtiHash": "alice", "exp": 500}}]}}"#),
        ),
    ] {
        assert!(matches!(apply_json(body.as_bytes()), Err(FeedError::Malformed(_))), "{what}");
    }
    let huge = FeedPage { revoked: vec![revoked("x", 500); MAX_PAGE_ENTRIES + 1], ..delta("d2") };
    assert_eq!(f.apply(&mut r, huge, &key(), 100), Err(FeedError::TooLarge));
    assert_eq!(r, before);
}

#[test]
fn the_shared_encoding_round_trips_and_rejects_garbage() {
    let (mut f, mut r) = (FeedFollower::default(), RevocationReplica::default());
    let mut d = delta("d1.cursor_-");
    d.revoked = (0..50).map(|i| revoked(&format!("j{i}"), 1_000 + i)).collect();
    d.user_min_versions = (0..20).map(|i| user(&format!("u{i}"), i + 1)).collect();
    d.global = Some(GlobalMinVersion { min_version: 4, rotated_at: 9, grace_seconds: 60 });
    d.key_set_version = 7;
    d.revoked_kids = vec!["old-key".into(), "kid-é".into()];
    d.version_ceiling = 1_000_000;
    follow(&mut f, &mut r, vec![d]);
    let bytes = r.encode();
    assert_eq!(RevocationReplica::decode(&bytes), Some(r.clone()));
    assert_eq!(
        RevocationReplica::decode(&RevocationReplica::default().encode()),
        Some(RevocationReplica::default())
    );
    assert_eq!(RevocationReplica::decode(b"{\"cursor\":1}"), None);
    for cut in [5, 10, bytes.len() - 1] {
        assert_eq!(RevocationReplica::decode(&bytes[..cut]), None, "truncated at {cut}");
    }
    let mut with_unknown = bytes.clone();
    with_unknown.extend_from_slice(&[99, 0, 0, 0, 2, 1, 2]);
    assert_eq!(RevocationReplica::decode(&with_unknown), Some(r), "unknown sections are skipped");
}

#[test]
fn revoked_keys_accumulate_and_the_ceiling_only_rises_until_a_snapshot() {
    let (mut f, mut r) = (FeedFollower::default(), RevocationReplica::default());
    let page = |mut page: FeedPage, kids: &[&str], ceiling| {
        page.revoked_kids = kids.iter().map(|k| k.to_string()).collect();
        page.version_ceiling = ceiling;
        page
    };
    follow(&mut f, &mut r, vec![page(delta("d1"), &["k1"], 101), page(delta("d2"), &["k2"], 90)]);
    assert!(r.is_key_revoked("k1") && r.is_key_revoked("k2") && !r.is_key_revoked("k3"));
    assert_eq!(r.version_ceiling, 101, "a lower ceiling in a delta never lowers it");
    assert_eq!(follow(&mut f, &mut r, vec![page(delta("d3"), &["k1"], 0)]), vec![Ok(Applied::Changed)]);
    assert_eq!(r.version_ceiling, 101, "a page without a ceiling keeps it");
    assert_eq!(r.versions(&key()).check(None, 102, 0), Err(crate::jwt::reason::Reason::VersionUnknown));
    // A snapshot in two parts, the revoked keys spread over both: the whole state.
    let parts = vec![
        page(part("s1", "e.1", 0, false), &["k2"], 50),
        page(part("s2", "e.1", 1, true), &["k4"], 50),
        page(delta("s3"), &[], 50),
    ];
    let outcomes = follow(&mut f, &mut r, parts);
    assert!(matches!(outcomes.last(), Some(Ok(Applied::Assembled(_)))), "{outcomes:?}");
    assert!(!r.is_key_revoked("k1") && r.is_key_revoked("k2") && r.is_key_revoked("k4"));
    assert_eq!(r.version_ceiling, 50, "a snapshot is the whole state");
    let before = r.clone();
    let huge = FeedPage { revoked_kids: vec!["k".into(); MAX_PAGE_ENTRIES + 1], ..delta("d9") };
    assert_eq!(f.apply(&mut r, huge, &key(), 100), Err(FeedError::TooLarge));
    let long = FeedPage { revoked_kids: vec!["k".repeat(MAX_KID_LEN + 1)], ..delta("d9") };
    assert!(matches!(f.apply(&mut r, long, &key(), 100), Err(FeedError::Malformed(_))));
    assert_eq!(r, before);
}

#[test]
fn wire_format_is_camel_case() {
    let page: FeedPage = serde_json::from_str(
        r#"{"cursor":"c7","keyId":"k","snapshot":{"id":"e.1","part":2,"last":true},
            "revoked":[{"jtiHash":"j","exp":9}],
            "userMinVersions":[{"subHash":"s","minVersion":2}],
            "global":{"minVersion":3,"rotatedAt":4,"graceSeconds":5},"keySetVersion":6,
            "revokedKids":["k"],"versionCeiling":8,"more":false}"#,
    )
    .unwrap();
    assert_eq!(page.snapshot, Some(SnapshotPart { id: "e.1".into(), part: 2, last: true }));
    assert_eq!((page.revoked_kids.as_slice(), page.version_ceiling), (&["k".to_string()][..], 8));
    assert_eq!(page.user_min_versions[0].min_version, 2);
    assert_eq!(page.global.unwrap().grace_seconds, 5);
    assert_eq!(page.key_set_version, 6);
    assert_eq!(page.entries(), 3);
}
