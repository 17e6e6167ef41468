//! Long-lived API tokens through a real Envoy loading the real filter and the real
//! control plane (memory and Redis stores): created with the CLI, synced into the
//! filter's shared replica, decided with no per-request call, revoked within a poll
//! interval, refused with RFC 6750 reasons, usage reported back.

use std::time::{Duration, Instant};

use portcullis_core::api_token::{checksum, generate, RANDOM_BYTES};
use portcullis_e2e::secrets::{assert_absent_from_files, assert_absent_from_redis};
use portcullis_e2e::{
    control_plane_section, error_description, eventually, http, ControlPlane, CpStack as Stack, Envoy, Redis,
    StackStore as Store,
};
use serde_json::{json, Value};

/// The filter's poll interval (the default).
const POLL: Duration = Duration::from_millis(1_000);

fn plugin_config() -> Value {
    json!({
        "realm": "e2e",
        "controlPlane": control_plane_section(500),
        "apiTokens": { "pollIntervalMs": 1000 },
        "rules": [
            { "name": "api", "match": { "pathPrefix": "/api/" }, "acceptApiTokens": true, "scopes": ["deploy"] },
            { "name": "open", "match": { "pathPrefix": "/" }, "requires": "none" }
        ]
    })
}

async fn stack(store: Store) -> Stack {
    Stack::start(store, &plugin_config()).await
}

/// A token made with the CLI: (token, id).
fn create(cp: &ControlPlane, user: &str, scopes: &[&str], expires_in: &str) -> (String, String) {
    let mut args =
        vec!["api-tokens", "create", "--user", user, "--name", "e2e", "--expires-in", expires_in, "--json"];
    for s in scopes {
        args.extend(["--scope", s]);
    }
    let out: Value = serde_json::from_str(&cp.cli(&args)).expect("create prints JSON");
    (out["token"].as_str().unwrap().to_string(), out["id"].as_str().unwrap().to_string())
}

/// Status and `error_description` of a GET with `headers`.
async fn get(envoy: &Envoy, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut request = http().get(envoy.url(path));
    for (n, v) in headers {
        request = request.header(*n, *v);
    }
    let r = request.send().await.expect("request");
    (r.status().as_u16(), error_description(&r))
}

async fn with_key(envoy: &Envoy, token: &str) -> (u16, String) {
    get(envoy, "/api/x", &[("x-api-key", token)]).await
}

/// Waits until `token` is accepted (the filter synced it).
async fn synced(s: &Stack, token: &str) {
    eventually(Duration::from_secs(10), "the token to reach the filter", || async {
        with_key(&s.envoy, token).await.0 == 200
    })
    .await;
}

/// Control-plane requests other than the API token feed and usage reports (and the
/// metrics scrape itself), summed from its `portcullis_http_requests_total`.
async fn other_control_plane_requests(cp: &ControlPlane) -> u64 {
    let text = http().get(format!("{}/metrics", cp.url())).send().await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with("portcullis_http_requests_total{"))
        .filter(|l| {
            !["/v1/api-tokens/feed", "/v1/api-tokens/usage", "/metrics"]
                .iter()
                .any(|r| l.contains(&format!("route=\"{r}\"")))
        })
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.trim().parse::<f64>().ok()))
        .map(|v| v as u64)
        .sum()
}

fn last_used_at(cp: &ControlPlane, id: &str) -> Option<u64> {
    let shown: Value = serde_json::from_str(&cp.cli(&["api-tokens", "show", id])).unwrap();
    shown["lastUsedAt"].as_u64()
}

/// `n` requests with `token`, 10 at a time; how many got 200.
async fn burst(envoy: &Envoy, token: &str, n: usize) -> usize {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let (url, token) = (envoy.url("/api/burst"), token.to_string());
        tasks.spawn(async move {
            let mut ok = 0;
            for _ in 0..n / 10 {
                let r = http().get(&url).header("x-api-key", &token).send().await.expect("request");
                ok += usize::from(r.status() == 200);
            }
            ok
        });
    }
    let mut ok = 0;
    while let Some(n) = tasks.join_next().await {
        ok += n.unwrap();
    }
    ok
}

async fn create_use_and_revoke(store: Store) {
    let s = stack(store).await;
    let (token, id) = create(&s.cp, "alice", &["deploy", "read"], "90d");
    synced(&s, &token).await;

    // The identity goes upstream; the client's own copies and the token do not.
    let bearer = format!("Bearer {token}");
    let forged = [
        ("authorization", bearer.as_str()),
        ("x-portcullis-user", "mallory"),
        ("x-portcullis-scopes", "admin"),
    ];
    assert_eq!(get(&s.envoy, "/api/x", &forged).await.0, 200);
    assert_eq!(s.server.last_header("x-portcullis-user").as_deref(), Some("alice"));
    assert_eq!(s.server.last_header_count("x-portcullis-user"), 1);
    assert_eq!(s.server.last_header("x-portcullis-token-id").as_deref(), Some(id.as_str()));
    assert_eq!(s.server.last_header("x-portcullis-scopes").as_deref(), Some("deploy read"));
    assert_eq!(s.server.last_header("authorization"), None, "the token is not forwarded");
    assert_eq!(get(&s.envoy, "/open", &[("x-portcullis-user", "mallory")]).await.0, 200);
    assert_eq!(s.server.last_header("x-portcullis-user"), None, "stripped on every route");

    // 1,000 requests: no control-plane call but the feed polls and usage reports.
    let before = other_control_plane_requests(&s.cp).await;
    let started = Instant::now();
    assert_eq!(burst(&s.envoy, &token, 1_000).await, 1_000);
    let elapsed = started.elapsed();
    assert_eq!(other_control_plane_requests(&s.cp).await, before, "no per-request control-plane call");
    let usage =
        s.cp.metric(
            "portcullis_http_requests_total{route=\"/v1/api-tokens/usage\",method=\"POST\",status=\"200\"}",
        )
        .await;
    let bound = 2 * (elapsed.as_millis() as u64 / POLL.as_millis() as u64 + 3);
    assert!(usage <= bound + 4, "usage reports are batched: {usage} in {elapsed:?}");

    // lastUsedAt is written once, and not again within the minute, however busy.
    eventually(Duration::from_secs(5), "lastUsedAt to be written", || async {
        last_used_at(&s.cp, &id).is_some()
    })
    .await;
    let first = last_used_at(&s.cp, &id);
    let until = Instant::now() + 3 * POLL;
    while Instant::now() < until {
        assert_eq!(burst(&s.envoy, &token, 50).await, 50);
    }
    assert_eq!(last_used_at(&s.cp, &id), first, "at most once a minute");

    // Revoked: refused within a poll interval and a second.
    s.cp.cli(&["api-tokens", "revoke", &id]);
    let revoked_at = Instant::now();
    eventually(POLL + Duration::from_secs(1), "the revocation to reach the filter", || async {
        with_key(&s.envoy, &token).await == (401, "revoked".to_string())
    })
    .await;
    assert!(revoked_at.elapsed() <= POLL + Duration::from_secs(1));
    if let Some(redis) = &s.redis {
        secret_absent_from_redis(redis, &token);
    }
    if matches!(store, Store::Embedded) {
        secret_absent_from_files(&s.cp.data_dir, &token);
    }
}

async fn each_refusal_reason(store: Store) {
    let s = stack(store).await;
    let (token, id) = create(&s.cp, "bob", &["deploy"], "90d");
    let (narrow, _) = create(&s.cp, "carol", &["read"], "90d");
    let (short, _) = create(&s.cp, "dave", &["deploy"], "5");
    synced(&s, &token).await;

    // Right lookup, wrong secret (with a valid checksum: anyone can compute one).
    let body = format!("pct_{id}_{}", "Q".repeat(32));
    let forged = format!("{body}{}", checksum(body.as_bytes()));
    assert_eq!(with_key(&s.envoy, &forged).await, (401, "bad_secret".to_string()));
    let unknown = generate("pct", &[7u8; RANDOM_BYTES]).unwrap();
    assert_eq!(with_key(&s.envoy, unknown.expose()).await, (401, "unknown_token".to_string()));
    // One byte changed anywhere.
    for i in 0..token.len() {
        let mut bytes = token.clone().into_bytes();
        bytes[i] = if bytes[i] == b'z' { b'y' } else { b'z' };
        let changed = String::from_utf8(bytes).unwrap();
        let (status, reason) = with_key(&s.envoy, &changed).await;
        assert_eq!(status, 401, "byte {i}: {reason}");
    }
    assert_eq!(with_key(&s.envoy, "pct_nonsense").await, (401, "malformed".to_string()));
    let r = http().get(s.envoy.url("/api/x")).header("x-api-key", &narrow).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.headers()["www-authenticate"].to_str().unwrap().contains("insufficient_scope"));
    let bearer = format!("Bearer {token}");
    let two = get(&s.envoy, "/api/x", &[("authorization", bearer.as_str()), ("x-api-key", &narrow)]).await;
    assert_eq!(two.0, 400);
    let jwt = "Bearer eyJhbGciOiJIUzI1NiJ9.e30.c2ln";
    assert_eq!(get(&s.envoy, "/api/x", &[("authorization", jwt), ("x-api-key", &token)]).await.0, 400);
    assert_eq!(get(&s.envoy, "/api/x", &[]).await.0, 401);
    eventually(Duration::from_secs(10), "the short-lived token to expire", || async {
        with_key(&s.envoy, &short).await == (401, "expired".to_string())
    })
    .await;
    assert_eq!(with_key(&s.envoy, &token).await.0, 200);
}

/// The token's secret is nowhere in the embedded store's files (its lookup id is).
fn secret_absent_from_files(dir: &std::path::Path, token: &str) {
    let secret = token.rsplit('_').next().unwrap();
    let lookup = token.split('_').nth(1).unwrap();
    assert_absent_from_files(dir, &secret.as_bytes()[..32], lookup.as_bytes());
}

/// The token's secret is nowhere in Redis keys and values (its lookup id is).
fn secret_absent_from_redis(redis: &Redis, token: &str) {
    let secret = token.rsplit('_').next().unwrap();
    assert_absent_from_redis(redis, &secret[..32], token.split('_').nth(1).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_use_and_revoke_in_memory() {
    create_use_and_revoke(Store::Memory).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_use_and_revoke_on_the_embedded_store() {
    create_use_and_revoke(Store::Embedded).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_use_and_revoke_with_redis() {
    create_use_and_revoke(Store::Redis).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_refusal_reason_in_memory() {
    each_refusal_reason(Store::Memory).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_refusal_reason_with_redis() {
    each_refusal_reason(Store::Redis).await
}
