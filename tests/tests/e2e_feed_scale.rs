//! A large revocation state on Redis, 100,000 revoked token ids and 100,000 revoked
//! users (seeded in bulk): the real control plane pages its snapshot within the page
//! bounds, and a fresh Envoy assembles the pages into one replica and enforces it.
//! Timings and memory are measured in `bench/` (`make bench`), not asserted here.

use std::time::Duration;

use portcullis_core::fleet::FleetCredential;
use portcullis_core::revocation::{
    Applied, FeedFollower, FeedPage, RevocationReplica, MAX_PAGE_BYTES, MAX_PAGE_ENTRIES,
};
use portcullis_e2e::tokens::now;
use portcullis_e2e::{
    control_plane_section, eventually, http, www_authenticate, ControlPlane, Envoy, EnvoyClusters, Redis,
    RevocationSeed, StoreKind, TestServer, Workdir, FLEET_CREDENTIAL,
};
use serde_json::{json, Value};

const REVOKED: usize = 100_000;
const USERS: usize = 100_000;

/// 100,000 of each, `jti` and `sub` among them.
fn seed(jti: &str, sub: &str) -> RevocationSeed {
    let exp = now() + 3_600;
    let mut revoked: Vec<(String, u64)> = (1..REVOKED).map(|i| (format!("seed-jti-{i:06}"), exp)).collect();
    revoked.push((jti.to_string(), exp));
    let mut users: Vec<(String, u64)> =
        (1..USERS).map(|i| (format!("seed-user-{i:06}@example.com"), 2)).collect();
    users.push((sub.to_string(), 2));
    RevocationSeed { revoked, users }
}

// Fields drop in order: processes first, the work directory (with their logs) last.
struct Stack {
    cp: ControlPlane,
    redis: Redis,
    dir: Workdir,
}

async fn stack() -> Stack {
    let dir = Workdir::new();
    let redis = Redis::start(dir.path()).await;
    let cp = ControlPlane::start(dir.path(), StoreKind::Redis(redis.url())).await;
    Stack { cp, redis, dir }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_pages_a_snapshot_of_100k_ids_and_100k_users_within_its_bounds() {
    let s = stack().await;
    s.redis.seed_revocations(&seed("seed-jti-000000", "seed-user-000000@example.com")).await;
    let key = FleetCredential::new(FLEET_CREDENTIAL).unwrap().feed_key();
    let (mut follower, mut published) = (FeedFollower::default(), RevocationReplica::default());
    let mut parts = 0;
    for _ in 0..1_000 {
        let cursor = follower.cursor(&published).to_string();
        let query = if cursor.is_empty() { String::new() } else { format!("cursor={cursor}&") };
        let response = http()
            .get(format!("{}/v1/feed?{query}limit={MAX_PAGE_ENTRIES}", s.cp.internal_url()))
            .bearer_auth(FLEET_CREDENTIAL)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let bytes = response.bytes().await.unwrap();
        assert!(bytes.len() <= MAX_PAGE_BYTES, "a page of {} bytes", bytes.len());
        let page: FeedPage = serde_json::from_slice(&bytes).unwrap();
        assert!(page.entries() <= MAX_PAGE_ENTRIES);
        parts += usize::from(page.snapshot.is_some());
        if let (Applied::Assembled(replica), _) = follower.apply(&mut published, page, &key, now()).unwrap() {
            published = *replica;
            break;
        }
    }
    assert_eq!((published.revoked.len(), published.user_min_versions.len()), (REVOKED, USERS));
    assert!(parts >= (REVOKED + USERS) / MAX_PAGE_ENTRIES, "{parts} parts");
    assert!(published.is_revoked(&key, "seed-jti-054321", now()));
    assert!(!published.is_revoked(&key, "seed-jti-154321", now()));
    use portcullis_core::jwt::MinimumVersions as _;
    assert_eq!(published.versions(&key).user_min_version("seed-user-099999@example.com"), Some(2));
    assert_eq!(published.versions(&key).user_min_version("someone-else"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_envoy_syncs_100k_revoked_ids_and_100k_revoked_users_and_enforces_them() {
    let s = stack().await;
    let issue = |sub: &'static str| {
        let cp = &s.cp;
        async move { serde_json::from_str::<Value>(&cp.cli(&["token", "issue", "--sub", sub, "--json"])).unwrap() }
    };
    // Minted before the state below exists: version 1, each with its own jti.
    let revoked_token = issue("carol").await;
    let revoked_user_token = issue("seed-user-000000@example.com").await;
    let fine_token = issue("dave").await;
    s.redis
        .seed_revocations(&seed(revoked_token["jti"].as_str().unwrap(), "seed-user-000000@example.com"))
        .await;

    let upstream = TestServer::start(json!({"keys": []})).await;
    let config = json!({
        "realm": "e2e",
        "providers": { "portcullis": {
            "issuer": "portcullis", "audiences": ["portcullis"],
            "remoteJwks": { "cluster": "portcullis_control_plane", "authority": "control-plane" },
            "tokenVersion": { "claim": "ver" }
        } },
        "controlPlane": control_plane_section(1_000),
        "revocation": { "pollIntervalMs": 500, "timeoutMs": 5_000, "maxStalenessSeconds": 600 },
        "rules": [ { "name": "api", "match": { "pathPrefix": "/api/" }, "requires": { "provider": "portcullis" } } ]
    });
    let clusters = EnvoyClusters {
        upstream_port: upstream.port,
        jwks_port: None,
        control_plane_port: Some(s.cp.internal_port),
    };
    let envoy = Envoy::start(s.dir.path(), &config, &clusters).await;
    eventually(Duration::from_secs(120), "the replica of 100k + 100k entries", || async {
        envoy.counter("wasmcustom.portcullis.revocation.revoked_entries").await == REVOKED as u64
            && envoy.counter("wasmcustom.portcullis.revocation.user_entries").await == USERS as u64
    })
    .await;
    let call = |token: &Value| {
        let token = token["accessToken"].as_str().unwrap().to_string();
        let envoy = &envoy;
        async move {
            let r = http().get(envoy.url("/api/orders")).bearer_auth(token).send().await.unwrap();
            (r.status().as_u16(), www_authenticate(&r))
        }
    };
    let (code, www) = call(&revoked_token).await;
    assert!(code == 401 && www.contains("error_description=\"revoked\""), "{code} {www}");
    let (code, www) = call(&revoked_user_token).await;
    assert!(code == 401 && www.contains("version_too_old"), "{code} {www}");
    assert_eq!(call(&fine_token).await.0, 200);
    assert!(envoy.counter("wasmcustom.portcullis.revocation.snapshot_pages").await >= 20);
}
