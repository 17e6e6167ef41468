//! The filter's revocation replica through a real Envoy, fed by a scripted feed (the
//! in-process test server plays the control plane's `/v1/feed`, hashing as the control
//! plane does for the fleet credential): revoked jtis, user and global minimum
//! versions, snapshots in parts, staleness and failure modes, malformed pages, and the
//! credential on the calls.

use std::time::Duration;

use portcullis_core::fleet::{encode_hash, FeedKey, FleetCredential};
use portcullis_core::revocation::{FeedPage, GlobalMinVersion, RevokedToken, SnapshotPart, UserMinVersion};
use portcullis_e2e::tokens::{claims, jwks, now, FixtureKey};
use portcullis_e2e::{eventually, http, Envoy, FilterStack, FLEET_CREDENTIAL, FLEET_CREDENTIAL_ENV};
use serde_json::{json, Value};

fn plugin_config() -> Value {
    json!({
        "realm": "e2e",
        "providers": {
            "test": {
                "issuer": "https://issuer.test",
                "audiences": ["e2e"],
                "remoteJwks": { "cluster": "jwks", "authority": "jwks.test" },
                "tokenVersion": { "claim": "ver" }
            }
        },
        // The test server plays the control plane too, on the JWKS cluster.
        "controlPlane": { "cluster": "jwks", "authority": "cp.test", "credential": { "env": FLEET_CREDENTIAL_ENV } },
        "revocation": { "path": "/v1/feed", "pollIntervalMs": 200, "maxStalenessSeconds": 2 },
        "rules": [
            { "name": "lenient", "match": { "pathPrefix": "/lenient/" }, "requires": { "provider": "test" }, "onStale": "allow" },
            { "name": "api", "match": { "pathPrefix": "/api/" }, "requires": { "provider": "test" } }
        ]
    })
}

async fn stack(key: &FixtureKey, feed: Value) -> FilterStack {
    let s = FilterStack::start_with(&plugin_config(), jwks(&[key]), |server| {
        server.set_feed(200, feed.to_string())
    })
    .await;
    eventually(Duration::from_secs(10), "first feed poll", || async { s.server.feed_polls() >= 1 }).await;
    s
}

fn feed_key() -> FeedKey {
    FleetCredential::new(FLEET_CREDENTIAL).unwrap().feed_key()
}

/// One part of snapshot `id`: what the control plane would send, hashed for the
/// fleet credential.
fn part(id: u64, part: u32, last: bool, revoked: &[(&str, u64)], users: &[(&str, u64)]) -> FeedPage {
    let key = feed_key();
    FeedPage {
        cursor: format!("s{id}.{part}"),
        key_id: key.id().to_string(),
        snapshot: Some(SnapshotPart { id: format!("fake.{id}"), part, last }),
        revoked: revoked
            .iter()
            .map(|(j, exp)| RevokedToken { jti_hash: encode_hash(&key.token_id(j)), exp: *exp })
            .collect(),
        user_min_versions: users
            .iter()
            .map(|(s, v)| UserMinVersion { sub_hash: encode_hash(&key.subject(s)), min_version: *v })
            .collect(),
        global: (part == 0).then_some(GlobalMinVersion::default()),
        key_set_version: 1,
        revoked_kids: Vec::new(),
        version_ceiling: 0,
        more: true,
    }
}

/// A whole snapshot in one part; `global` is (min version, rotated at, grace).
fn snapshot(id: u64, revoked: &[(&str, u64)], users: &[(&str, u64)], global: (u64, u64, u64)) -> Value {
    let mut page = part(id, 0, true, revoked, users);
    page.global =
        Some(GlobalMinVersion { min_version: global.0, rotated_at: global.1, grace_seconds: global.2 });
    serde_json::to_value(page).unwrap()
}

fn token(key: &FixtureKey, sub: &str, jti: &str, ver: u64) -> String {
    let mut c = claims(sub, "");
    c["jti"] = json!(jti);
    c["ver"] = json!(ver);
    key.sign(&c)
}

async fn status(envoy: &Envoy, path: &str, token: &str) -> (u16, String) {
    let r = http().get(envoy.url(path)).bearer_auth(token).send().await.unwrap();
    let www = r.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    (r.status().as_u16(), www)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_jti_is_rejected_within_a_poll_and_other_tokens_pass() {
    let key = FixtureKey::load("es256-a");
    let s = stack(&key, snapshot(1, &[], &[], (0, 0, 0))).await;
    let victim = token(&key, "alice", "jti-1", 1);
    let other = token(&key, "alice", "jti-2", 1);
    assert_eq!(status(&s.envoy, "/api/x", &victim).await.0, 200);

    s.server.set_feed(200, snapshot(2, &[("jti-1", now() + 600)], &[], (0, 0, 0)).to_string());
    eventually(Duration::from_secs(2), "the revocation to reach the filter", || async {
        status(&s.envoy, "/api/x", &victim).await
            == (
                401,
                "Bearer realm=\"e2e\", error=\"invalid_token\", error_description=\"revoked\"".to_string(),
            )
    })
    .await;
    assert_eq!(status(&s.envoy, "/api/x", &other).await.0, 200);
    assert!(s.envoy.counter("wasmcustom.portcullis.requests.denied.revoked").await >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raising_a_user_minimum_version_rejects_that_users_older_tokens_only() {
    let key = FixtureKey::load("es256-a");
    let s = stack(&key, snapshot(1, &[], &[], (0, 0, 0))).await;
    let old_alice = token(&key, "alice", "a1", 1);
    let new_alice = token(&key, "alice", "a2", 2);
    let bob = token(&key, "bob", "b1", 1);
    s.server.set_feed(200, snapshot(2, &[], &[("alice", 2)], (0, 0, 0)).to_string());
    eventually(Duration::from_secs(2), "alice's old token to fail", || async {
        status(&s.envoy, "/api/x", &old_alice).await.1.contains("version_too_old")
    })
    .await;
    assert_eq!(status(&s.envoy, "/api/x", &new_alice).await.0, 200);
    assert_eq!(status(&s.envoy, "/api/x", &bob).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_rotation_lets_old_tokens_through_only_during_the_grace() {
    let key = FixtureKey::load("es256-a");
    let s = stack(&key, snapshot(1, &[], &[], (0, 0, 0))).await;
    let old = token(&key, "alice", "o1", 1);
    let current = token(&key, "alice", "n1", 2);
    let rotated_at = now();
    s.server.set_feed(200, snapshot(2, &[], &[], (2, rotated_at, 3)).to_string());
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(status(&s.envoy, "/api/x", &old).await.0, 200, "inside the grace period");
    // The grace ends at rotated_at + 3 s.
    let wait = (rotated_at + 3).saturating_sub(now()) + 1;
    tokio::time::sleep(Duration::from_secs(wait)).await;
    assert!(status(&s.envoy, "/api/x", &old).await.1.contains("version_too_old"));
    assert_eq!(status(&s.envoy, "/api/x", &current).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_feed_serves_from_the_replica_then_applies_each_rules_failure_mode() {
    let key = FixtureKey::load("es256-a");
    let s = stack(&key, snapshot(1, &[("gone", now() + 600)], &[], (0, 0, 0))).await;
    let t = token(&key, "alice", "ok", 1);
    let revoked = token(&key, "alice", "gone", 1);
    eventually(Duration::from_secs(2), "replica loaded", || async {
        status(&s.envoy, "/api/x", &revoked).await.0 == 401
    })
    .await;

    s.server.set_feed(503, "");
    // Within the max staleness the replica still answers.
    assert_eq!(status(&s.envoy, "/api/x", &t).await.0, 200);
    assert_eq!(status(&s.envoy, "/api/x", &revoked).await.0, 401);
    // Past it: the default rule fails closed, the lenient one keeps using the replica.
    eventually(Duration::from_secs(6), "the fail-closed rule to answer 503", || async {
        status(&s.envoy, "/api/x", &t).await.0 == 503
    })
    .await;
    assert_eq!(status(&s.envoy, "/lenient/x", &t).await.0, 200);
    assert_eq!(status(&s.envoy, "/lenient/x", &revoked).await.0, 401, "still revoked from the replica");
    // The gauge is sampled on the filter's tick, in whole seconds.
    eventually(Duration::from_secs(3), "the staleness gauge to rise", || async {
        s.envoy.counter("wasmcustom.portcullis.revocation.staleness_seconds").await >= 2
    })
    .await;
    assert!(s.envoy.counter("wasmcustom.portcullis.revocation.poll_failed").await >= 1);

    // Recovery.
    s.server.set_feed(200, snapshot(3, &[("gone", now() + 600)], &[], (0, 0, 0)).to_string());
    eventually(Duration::from_secs(8), "recovery after the feed returns", || async {
        status(&s.envoy, "/api/x", &t).await.0 == 200
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_feed_pages_keep_the_last_good_state() {
    let key = FixtureKey::load("es256-a");
    let s = stack(&key, snapshot(1, &[("gone", now() + 600)], &[], (0, 0, 0))).await;
    let revoked = token(&key, "alice", "gone", 1);
    let t = token(&key, "alice", "ok", 1);
    eventually(Duration::from_secs(2), "replica loaded", || async {
        status(&s.envoy, "/api/x", &revoked).await.0 == 401
    })
    .await;
    let id = feed_key().id().to_string();
    for garbage in [
        "not json".to_string(),
        json!({"cursor": "x"}).to_string(),
        json!({"cursor": 9, "revoked": [{"jti": 5}]}).to_string(),
        // Raw names instead of hashes, as a feed of an older control plane had them.
        json!({"cursor": "c", "keyId": id, "revoked": [{"jtiHash": "ok", "exp": now() + 600}]}).to_string(),
        // Hashed with another fleet's key.
        json!({"cursor": "c", "keyId": "AAAAAAAAAAAA"}).to_string(),
        // A cursor that is not fit for a query string.
        json!({"cursor": "a&b=c", "keyId": id}).to_string(),
        "[".repeat(100_000),
    ] {
        let polls = s.server.feed_polls();
        s.server.set_feed(200, garbage);
        eventually(Duration::from_secs(8), "a poll of the bad page", || async {
            s.server.feed_polls() > polls
        })
        .await;
        // Bad pages count as failed polls (the replica goes stale, so fail-closed rules
        // answer 503); the last good state is what the lenient rule still decides with.
        assert_eq!(status(&s.envoy, "/lenient/x", &revoked).await.0, 401);
        assert_eq!(status(&s.envoy, "/lenient/x", &t).await.0, 200);
    }
    assert!(s.envoy.counter("wasmcustom.portcullis.revocation.feed_invalid").await >= 6);
    assert!(!s.envoy.proc.log_text().contains("panic"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_polls_carry_the_fleet_credential_and_jwks_fetches_do_not() {
    let key = FixtureKey::load("es256-a");
    let s = stack(&key, snapshot(1, &[("gone", now() + 600)], &[], (0, 0, 0))).await;
    let revoked = token(&key, "alice", "gone", 1);
    eventually(Duration::from_secs(5), "replica loaded", || async {
        status(&s.envoy, "/api/x", &revoked).await.0 == 401
    })
    .await;
    let expected = format!("Bearer {FLEET_CREDENTIAL}");
    let polls = s.server.feed_requests();
    assert!(
        polls.len() >= 2 && polls.iter().all(|(authorization, _)| *authorization == expected),
        "{polls:?}"
    );
    // The JWKS is public and may be a third party's: no credential, even on the same cluster.
    let fetches = s.server.jwks_authorizations();
    assert!(!fetches.is_empty() && fetches.iter().all(String::is_empty), "{fetches:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_in_parts_is_published_only_once_every_part_has_arrived() {
    let key = FixtureKey::load("es256-a");
    let s = stack(&key, snapshot(1, &[("old", now() + 600)], &[], (0, 0, 0))).await;
    let (old, a, b) = (token(&key, "u", "old", 1), token(&key, "u", "a", 1), token(&key, "u", "b", 1));
    eventually(Duration::from_secs(5), "the first snapshot", || async {
        status(&s.envoy, "/lenient/x", &old).await.0 == 401
    })
    .await;

    // A new snapshot in two parts, the second held back.
    s.server.hold_feed_part(Some(1));
    let parts =
        json!([part(2, 0, false, &[("a", now() + 600)], &[]), part(2, 1, true, &[("b", now() + 600)], &[]),]);
    s.server.set_feed(200, parts.to_string());
    eventually(Duration::from_secs(5), "the second part to be asked for", || async {
        s.server.feed_requests().iter().any(|(_, cursor)| cursor == "s2.0")
    })
    .await;
    // Part 0 is in, but nothing of it is visible: the previous replica still decides.
    for _ in 0..3 {
        assert_eq!(status(&s.envoy, "/lenient/x", &old).await.0, 401, "the previous replica");
        assert_eq!(status(&s.envoy, "/lenient/x", &a).await.0, 200, "part 0 is not published alone");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    s.server.hold_feed_part(None);
    eventually(Duration::from_secs(10), "the whole snapshot", || async {
        status(&s.envoy, "/lenient/x", &b).await.0 == 401
    })
    .await;
    assert_eq!(status(&s.envoy, "/lenient/x", &a).await.0, 401);
    assert_eq!(status(&s.envoy, "/lenient/x", &old).await.0, 200, "the snapshot replaced the replica");
    assert!(s.envoy.counter("wasmcustom.portcullis.revocation.snapshots_assembled").await >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_keys_the_version_ceiling_and_hashed_minimums_are_assembled_across_snapshot_parts() {
    let (leaked, kept) = (FixtureKey::load("es256-a"), FixtureKey::load("es256-b"));
    let s = FilterStack::start_with(&plugin_config(), jwks(&[&leaked, &kept]), |server| {
        server.set_feed(200, snapshot(1, &[], &[], (0, 0, 0)).to_string())
    })
    .await;
    let by_leaked = token(&leaked, "alice", "l1", 5);
    let above = token(&kept, "bob", "k1", 11);
    eventually(Duration::from_secs(10), "the first snapshot", || async {
        status(&s.envoy, "/api/x", &by_leaked).await.0 == 200
            && status(&s.envoy, "/api/x", &above).await.0 == 200
    })
    .await;

    // A snapshot in two parts: the revoked key in the first, a user's minimum (by its
    // hash) in the second, the ceiling on both, as the control plane pages them.
    let mut first = part(2, 0, false, &[], &[]);
    first.revoked_kids = vec![leaked.kid.clone()];
    first.version_ceiling = 10;
    let mut last = part(2, 1, true, &[], &[("carol", 3)]);
    last.version_ceiling = 10;
    s.server.set_feed(200, json!([first, last]).to_string());
    eventually(Duration::from_secs(5), "the leaked key's tokens to be refused", || async {
        status(&s.envoy, "/api/x", &by_leaked).await.1.contains("error_description=\"revoked\"")
    })
    .await;
    // Published together: the ceiling and the minimum came with the same replica.
    assert!(status(&s.envoy, "/api/x", &above).await.1.contains("version_unknown"));
    assert!(status(&s.envoy, "/api/x", &token(&kept, "carol", "k2", 2)).await.1.contains("version_too_old"));
    assert_eq!(status(&s.envoy, "/api/x", &token(&kept, "carol", "k3", 3)).await.0, 200);
    assert_eq!(status(&s.envoy, "/api/x", &token(&kept, "bob", "k4", 10)).await.0, 200, "at the ceiling");
    assert_eq!(
        status(&s.envoy, "/api/x", &token(&leaked, "dave", "l2", 1)).await.0,
        401,
        "never seen before, signed by the revoked key"
    );
}
