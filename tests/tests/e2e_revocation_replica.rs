//! The filter's revocation replica through a real Envoy, fed by a scripted feed (the
//! in-process test server plays the control plane's `/v1/feed`): revoked jtis, user and
//! global minimum versions, staleness and failure modes, malformed pages.

use std::time::Duration;

use portcullis_e2e::tokens::{claims, jwks, now, FixtureKey};
use portcullis_e2e::{eventually, http, Envoy, FilterStack};
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
        "revocation": {
            "cluster": "jwks", "authority": "cp.test", "path": "/v1/feed",
            "pollIntervalMs": 200, "maxStalenessSeconds": 2
        },
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

fn snapshot(cursor: u64, revoked: &[(&str, u64)], users: &[(&str, u64)], global: (u64, u64, u64)) -> Value {
    json!({
        "cursor": cursor, "snapshot": true,
        "revoked": revoked.iter().map(|(j, e)| json!({"jti": j, "exp": e})).collect::<Vec<_>>(),
        "userMinVersions": users.iter().map(|(s, v)| json!({"sub": s, "minVersion": v})).collect::<Vec<_>>(),
        "global": { "minVersion": global.0, "rotatedAt": global.1, "graceSeconds": global.2 },
        "keySetVersion": 1
    })
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
    for garbage in [
        "not json".to_string(),
        json!({"cursor": "x"}).to_string(),
        json!({"cursor": 9, "revoked": [{"jti": 5}]}).to_string(),
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
    assert!(s.envoy.counter("wasmcustom.portcullis.revocation.feed_invalid").await >= 4);
    assert!(!s.envoy.proc.log_text().contains("panic"));
}
