//! Readiness against a real redis-server that goes away and comes back.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::header::CONTENT_TYPE;
use axum::http::{Request, StatusCode};
use axum::Router;
use portcullis_control_plane::store::redis::RedisTimeouts;
use portcullis_control_plane::store::{RedisStore, Store};
use portcullis_control_plane::tokens::TokenPolicy;
use portcullis_control_plane::{admin_app, AppState, Dependencies};
use support::RedisServer;
use tower::ServiceExt as _;

fn dependencies(store: Arc<dyn Store>) -> Dependencies {
    Dependencies {
        token_policy: TokenPolicy {
            default_audience: "portcullis".into(),
            refresh_ttl_seconds: 604_800,
            ..support::token_policy()
        },
        ..support::dependencies(store, "readiness-admin-token-123", [7; 32])
    }
}

fn redis_store(url: &str) -> Arc<dyn Store> {
    Arc::new(RedisStore::new(url, RedisTimeouts::default()).unwrap())
}

async fn readyz(app: &Router) -> (StatusCode, Option<String>) {
    let response = app.clone().oneshot(Request::get("/readyz").body(Body::empty()).unwrap()).await.unwrap();
    let content_type = response.headers().get(CONTENT_TYPE).map(|v| v.to_str().unwrap().to_owned());
    (response.status(), content_type)
}

/// Polls /readyz until it answers `want`, failing after `within`.
async fn wait_for_readyz(app: &Router, want: StatusCode, within: Duration) -> Option<String> {
    let deadline = Instant::now() + within;
    loop {
        let (status, content_type) = readyz(app).await;
        if status == want {
            return content_type;
        }
        assert!(Instant::now() < deadline, "/readyz stayed {status} instead of {want} for {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_fails_while_redis_is_down_and_recovers_when_it_returns() {
    let mut redis = RedisServer::start();
    let state = AppState::initialise(dependencies(redis_store(&redis.url(0)))).await.unwrap();
    let kid = state.keys.current(0).await.current().kid().to_owned();
    let app = admin_app(state.clone());
    assert_eq!(readyz(&app).await.0, StatusCode::OK);

    redis.stop();
    let content_type = wait_for_readyz(&app, StatusCode::SERVICE_UNAVAILABLE, Duration::from_secs(10)).await;
    assert_eq!(content_type.as_deref(), Some("application/problem+json"));
    let metrics = state.metrics.render().unwrap();
    assert!(
        metrics.contains(r#"portcullis_store_errors_total{operation="ping",kind="unavailable"}"#)
            || metrics.contains(r#"portcullis_store_errors_total{operation="ping",kind="timeout"}"#),
        "{metrics}"
    );

    redis.start_again();
    wait_for_readyz(&app, StatusCode::OK, Duration::from_secs(15)).await;

    // This Redis came back empty (no persistence): a replica starting now creates a
    // new key set, and the running process adopts it on its next re-read of the store.
    let replica = AppState::initialise(dependencies(redis_store(&redis.url(0)))).await.unwrap();
    let new_kid = replica.keys.current(0).await.current().kid().to_owned();
    assert_ne!(new_kid, kid);
    assert_eq!(state.keys.reload(0).await.unwrap().current().kid(), new_kid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_at_once_on_redis_share_one_signing_key() {
    let redis = RedisServer::start();
    let replicas: Vec<_> = (0..8)
        .map(|_| tokio::spawn(AppState::initialise(dependencies(redis_store(&redis.url(1))))))
        .collect();
    let mut kids = std::collections::BTreeSet::new();
    for replica in replicas {
        kids.insert(replica.await.unwrap().unwrap().keys.current(0).await.current().kid().to_owned());
    }
    assert_eq!(kids.len(), 1, "{kids:?}");
}

#[tokio::test]
async fn startup_reports_a_transient_error_while_redis_is_unreachable() {
    let url = format!("redis://127.0.0.1:{}/0", support::free_port());
    let error = AppState::initialise(dependencies(redis_store(&url))).await.err().unwrap();
    assert!(error.is_transient(), "{error}");
}
