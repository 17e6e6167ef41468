//! The whole stack: the control plane (each store backend, Redis a real redis-server)
//! issues tokens and publishes its JWKS; Envoy with the filter fetches the JWKS through
//! the `portcullis_control_plane` cluster and admits those tokens.

use std::process::Command;
use std::time::Duration;

use portcullis_e2e::{
    eventually, http, ControlPlane, Envoy, EnvoyClusters, Redis, StoreKind, TestServer, Workdir,
};
use serde_json::{json, Value};

fn plugin_config() -> Value {
    json!({
        "realm": "stack",
        "providers": {
            "portcullis": {
                "issuer": "portcullis",
                "audiences": ["portcullis"],
                "remoteJwks": { "cluster": "portcullis_control_plane", "authority": "control-plane" },
                "claimToHeaders": [ { "claim": "sub", "header": "x-portcullis-sub" } ]
            }
        },
        "rules": [ { "name": "api", "match": { "pathPrefix": "/api/" }, "requires": { "provider": "portcullis" } } ]
    })
}

async fn control_plane_token_is_admitted_by_envoy(store: StoreKind, dir: &Workdir) {
    let cp = ControlPlane::start(dir.path(), store).await;
    let server = TestServer::start(json!({"keys": []})).await;
    let clusters = EnvoyClusters::beside(server.port, &cp);
    let envoy = Envoy::start(dir.path(), &plugin_config(), &clusters).await;

    let r = http().get(envoy.url("/api/me")).send().await.unwrap();
    assert_eq!(r.status(), 401);

    let token = cp.issue_token("alice", &["read"]).await;
    let r = http().get(envoy.url("/api/me")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    assert_eq!(server.last_header("x-portcullis-sub").as_deref(), Some("alice"));

    // The admin API is not reachable without the admin token, and says so in problem+json.
    let r =
        http().post(format!("{}/admin/v1/tokens", cp.url())).json(&json!({"sub": "x"})).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["content-type"], "application/problem+json");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_token_is_admitted_by_envoy_with_the_embedded_store() {
    let dir = Workdir::new();
    control_plane_token_is_admitted_by_envoy(StoreKind::Embedded, &dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_token_is_admitted_by_envoy_with_the_redis_store() {
    let dir = Workdir::new();
    let redis = Redis::start(dir.path()).await;
    control_plane_token_is_admitted_by_envoy(StoreKind::Redis(redis.url()), &dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_keeps_the_signing_key_across_restarts() {
    let dir = Workdir::new();
    let mut cp = ControlPlane::start(dir.path(), StoreKind::Embedded).await;
    let jwks = |url: String| async move {
        http()
            .get(format!("{url}/.well-known/jwks.json"))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    let before = jwks(cp.internal_url()).await;
    cp.restart().await;
    let after = jwks(cp.internal_url()).await;
    assert!(before["keys"].as_array().is_some_and(|k| !k.is_empty()));
    assert_eq!(before, after, "the same key set after a restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_fails_when_redis_dies_and_recovers_when_it_returns() {
    let dir = Workdir::new();
    let mut redis = Redis::start(dir.path()).await;
    let cp = ControlPlane::start(dir.path(), StoreKind::Redis(redis.url())).await;
    let url = cp.url();
    assert_eq!(readyz(&url).await, 200);

    redis.stop();
    eventually(Duration::from_secs(15), "/readyz to fail", || async { readyz(&url).await == 503 }).await;
    let r = http().get(format!("{}/readyz", cp.url())).send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "application/problem+json");

    redis.restart().await;
    eventually(Duration::from_secs(30), "/readyz to recover", || async { readyz(&url).await == 200 }).await;
}

async fn readyz(url: &str) -> u16 {
    http().get(format!("{url}/readyz")).send().await.map(|r| r.status().as_u16()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_issues_a_token_that_envoy_admits() {
    let dir = Workdir::new();
    let cp = ControlPlane::start(dir.path(), StoreKind::Memory).await;
    let server = TestServer::start(json!({"keys": []})).await;
    let clusters = EnvoyClusters::beside(server.port, &cp);
    let envoy = Envoy::start(dir.path(), &plugin_config(), &clusters).await;

    let out = Command::new(portcullis_e2e::bin("portcullis"))
        .args(["--url", &cp.url(), "token", "issue", "--sub", "bob", "--scope", "read"])
        .env("PORTCULLIS_ADMIN_TOKEN", &cp.admin_token)
        .output()
        .expect("run the CLI");
    assert!(out.status.success(), "CLI failed: {}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(token.split('.').count(), 3, "the CLI prints just the token");

    let r = http().get(envoy.url("/api/me")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(server.last_header("x-portcullis-sub").as_deref(), Some("bob"));

    let out = Command::new(portcullis_e2e::bin("portcullis"))
        .args(["--url", &cp.url(), "token", "issue", "--sub", "bob"])
        .env("PORTCULLIS_ADMIN_TOKEN", "wrong")
        .output()
        .expect("run the CLI");
    assert!(!out.status.success(), "a wrong admin token must fail");
}
