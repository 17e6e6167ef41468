//! `GET /metrics` on the admin listener, through `oneshot`: the latency histograms, the
//! build and backend info, and the state gauges sampled from the store on each scrape
//! (signing key age, change feed, webhook outbox), with values the test controls.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;

use axum::body::Body;
use axum::http::header::AUTHORIZATION;
use axum::http::{Request, StatusCode};
use axum::Router;
use portcullis_control_plane::clock::FixedClock;
use portcullis_control_plane::revocations::FEED;
use portcullis_control_plane::store::{MemoryStore, QueueOutcome, Store};
use portcullis_control_plane::webhooks::OUTBOX;
use portcullis_control_plane::{admin_app, AppState, Dependencies};
use tower::ServiceExt as _;

const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
const START_MS: u64 = 1_700_000_000_000;

async fn state(clock: Arc<FixedClock>, store: Arc<dyn Store>) -> AppState {
    AppState::initialise(Dependencies { clock, ..support::dependencies(store, ADMIN_TOKEN, [7; 32]) })
        .await
        .unwrap()
}

async fn call(app: &Router, method: &str, path: &str) -> StatusCode {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(AUTHORIZATION, format!("Bearer {ADMIN_TOKEN}"))
        .body(Body::empty())
        .unwrap();
    app.clone().oneshot(request).await.unwrap().status()
}

async fn scrape(app: &Router) -> String {
    let response = app.clone().oneshot(Request::get("/metrics").body(Body::empty()).unwrap()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// The value of one series, written exactly as the exposition writes it.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.split(' ').next()?.parse().ok())
}

fn expect(text: &str, series: &str) -> f64 {
    sample(text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

#[tokio::test]
async fn metrics_carry_build_info_backend_key_age_and_request_and_store_latency() {
    let clock = Arc::new(FixedClock::new(START_MS));
    let state = state(Arc::clone(&clock), Arc::new(MemoryStore::new())).await;
    let app = admin_app(state);
    clock.set(START_MS + 3_600_000);
    assert_eq!(call(&app, "GET", "/admin/v1/keys").await, StatusCode::OK);
    assert_eq!(call(&app, "GET", "/admin/v1/keys").await, StatusCode::OK);
    assert_eq!(call(&app, "GET", "/no/such/route/42").await, StatusCode::NOT_FOUND);

    let text = scrape(&app).await;
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(expect(&text, &format!("portcullis_build_info{{version=\"{version}\"}}")), 1.0);
    assert_eq!(expect(&text, r#"portcullis_store_backend{backend="memory"}"#), 1.0);
    assert_eq!(expect(&text, "portcullis_signing_key_age_seconds"), 3600.0, "the key was made an hour ago");

    // Two requests on one route template; the 404 under `unmatched`, never its path.
    let route = r#"route="/admin/v1/keys",method="GET""#;
    assert_eq!(expect(&text, &format!("portcullis_http_request_duration_seconds_count{{{route}}}")), 2.0);
    assert_eq!(
        expect(&text, &format!("portcullis_http_request_duration_seconds_bucket{{le=\"+Inf\",{route}}}")),
        2.0
    );
    let sum = expect(&text, &format!("portcullis_http_request_duration_seconds_sum{{{route}}}"));
    assert!((0.0..10.0).contains(&sum), "latency sum {sum}");
    assert!(text.contains(r#"route="unmatched""#));
    assert!(!text.contains("/no/such/route"), "a raw path became a label value");

    // Initialising the state read the store: those reads were timed.
    assert!(
        expect(&text, r#"portcullis_store_operation_duration_seconds_count{operation="record_get"}"#) >= 1.0
    );
    assert!(text
        .contains(r#"portcullis_store_operation_duration_seconds_bucket{le="+Inf",operation="record_get"}"#));

    // Families with known label values are there at zero before any event.
    assert_eq!(expect(&text, r#"portcullis_lockouts_started_total{kind="ip"}"#), 0.0);
    assert_eq!(expect(&text, r#"portcullis_burst_alerts_total{result="dead_lettered"}"#), 0.0);
    assert_eq!(expect(&text, r#"portcullis_maintenance_runs_total{result="failed"}"#), 0.0);
    assert_eq!(expect(&text, "portcullis_maintenance_last_success_timestamp_seconds"), 0.0);
}

#[tokio::test]
async fn state_gauges_count_kept_feed_entries_and_the_outbox_lanes() {
    let clock = Arc::new(FixedClock::new(START_MS));
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let state = state(Arc::clone(&clock), Arc::clone(&store)).await;
    let app = admin_app(state);
    let before = scrape(&app).await;
    let head = expect(&before, "portcullis_revocation_feed_head");
    assert_eq!(expect(&before, "portcullis_revocation_feed_entries"), head, "nothing trimmed yet");
    assert_eq!(expect(&before, "portcullis_webhook_outbox_pending"), 0.0);
    assert_eq!(expect(&before, "portcullis_webhook_dead_letters"), 0.0);

    for i in 0..37u8 {
        store.feed_append(FEED, vec![i], START_MS).await.unwrap();
    }
    store.feed_trim(FEED, 5).await.unwrap();
    for id in ["a", "b", "c"] {
        assert!(store.queue_push(OUTBOX, id, b"x".to_vec(), START_MS, 100).await.unwrap());
    }
    let claimed = store.queue_claim(OUTBOX, START_MS, 1000, 1).await.unwrap();
    let dead = QueueOutcome::Dead { data: b"x".to_vec(), at_ms: START_MS, max_dead: 10 };
    store.queue_settle(OUTBOX, &claimed[0].id, claimed[0].at_ms, dead).await.unwrap();

    let after = scrape(&app).await;
    assert_eq!(expect(&after, "portcullis_revocation_feed_head"), head + 37.0);
    assert_eq!(expect(&after, "portcullis_revocation_feed_entries"), 5.0, "trimmed to the newest 5");
    assert_eq!(expect(&after, "portcullis_webhook_outbox_pending"), 2.0);
    assert_eq!(expect(&after, "portcullis_webhook_dead_letters"), 1.0);
}
