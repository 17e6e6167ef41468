//! Webhook delivery through the durable outbox: retries with backoff until a 2xx,
//! delivery across a control-plane restart, dead letters past the deadline (listed,
//! retried and purged through the admin API and the CLI), and signatures during a
//! secret rotation. The API tests run against every store backend
//! (`<test>::memory|embedded|redis`) with a `FixedClock` the test moves; the receiver
//! is a real HTTP server on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use support::{receiver, Backend, Listeners, Receiver, Server};

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{Request, StatusCode};
use portcullis_control_plane::audit::AUDIT_LOG;
use portcullis_control_plane::burst::BurstConfig;
use portcullis_control_plane::clock::{Clock as _, FixedClock};
use portcullis_control_plane::metrics::Metrics;
use portcullis_control_plane::store::QueueLane;
use portcullis_control_plane::webhooks::{
    verify_signature, PreviousSecret, WebhookConfig, WebhookSecret, BACKOFF_BASE_MS, DELIVERY_ID_HEADER,
    OUTBOX, SIGNATURE_HEADER,
};
use portcullis_control_plane::{AppState, Dependencies};
use serde_json::{json, Value};

const ADMIN_TOKEN: &str = "webhooks-admin-token-0123456789";
const SECRET: &str = "webhook-secret-0123456789";
const PREVIOUS_SECRET: &str = "webhook-previous-secret-0123";
const T0: u64 = 1_700_000_000_000;

support::backends!(
    a_receiver_that_fails_the_first_attempts_gets_the_alert_after_backed_off_retries,
    an_alert_queued_while_the_receiver_is_down_is_delivered_once_after_a_restart,
    deliveries_past_their_deadline_become_dead_letters_that_can_be_retried_or_purged,
    during_a_secret_rotation_each_delivery_is_signed_with_both_secrets,
);

struct Harness {
    app: Listeners,
    state: AppState,
    metrics: Arc<Metrics>,
}

fn webhooks_to(url: &str) -> WebhookConfig {
    WebhookConfig {
        urls: vec![url.parse().unwrap()],
        secret: Some(WebhookSecret::new(SECRET).unwrap()),
        poll_interval: Duration::from_millis(50),
        ..WebhookConfig::default()
    }
}

async fn harness(backend: &Backend, clock: &Arc<FixedClock>, webhooks: WebhookConfig) -> Harness {
    let metrics = Arc::new(Metrics::new());
    let deps = Dependencies {
        clock: Arc::clone(clock) as _,
        metrics: Arc::clone(&metrics),
        ..support::dependencies(Arc::clone(&backend.store), ADMIN_TOKEN, [6; 32])
    };
    let burst = BurstConfig { threshold: 5, webhooks, ..BurstConfig::default() };
    let state = AppState::initialise(deps).await.unwrap().with_burst_config(burst).unwrap();
    Harness { app: Listeners::new(state.clone()), state, metrics }
}

impl Harness {
    /// A burst from `ip`: one alert queued.
    async fn burst(&self, ip: &str) {
        let body = json!({ "entries": [{ "ip": ip, "count": 50, "route": "/login", "method": "POST" }] });
        let request = Request::post("/v1/burst/report")
            .header(CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let response = self.app.send(request).await;
        assert_eq!(response.status(), StatusCode::OK);
    }

    async fn admin(&self, method: &str, path: &str) -> (StatusCode, Value) {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(AUTHORIZATION, format!("Bearer {ADMIN_TOKEN}"))
            .body(Body::empty())
            .unwrap();
        let response = self.app.send(request).await;
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    fn metric(&self, result: &str) -> u64 {
        let prefix = format!("portcullis_burst_alerts_total{{result=\"{result}\"}}");
        support::metric_value(&self.metrics.render().unwrap(), &prefix)
    }

    /// The pending deliveries: (id, due at).
    async fn pending(&self) -> Vec<(String, u64)> {
        let pending = self.state.store.queue_list(OUTBOX, QueueLane::Pending, 100).await.unwrap();
        pending.into_iter().map(|e| (e.id, e.at_ms)).collect()
    }

    async fn audit_actions(&self) -> Vec<String> {
        let entries = self.state.store.log_range(AUDIT_LOG, 1, 1000).await.unwrap();
        entries
            .into_iter()
            .map(|e| serde_json::from_slice::<Value>(&e.data).unwrap()["action"].as_str().unwrap().to_owned())
            .collect()
    }
}

/// Waits (bounded) until `done` holds.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn header<'a>(received: &'a support::Received, name: &str) -> &'a str {
    received.headers[name].to_str().unwrap()
}

/// Every request carries one delivery id and a signature by `secret` made when sent.
fn assert_signed_attempts_of_one_delivery(hook: &Receiver, secret: &str) -> String {
    let requests = hook.requests();
    let id = header(&requests[0], DELIVERY_ID_HEADER).to_owned();
    for request in &requests {
        assert_eq!(header(request, DELIVERY_ID_HEADER), id, "one delivery id across attempts");
        let signature = header(request, SIGNATURE_HEADER);
        let t: u64 = signature.strip_prefix("t=").unwrap().split(',').next().unwrap().parse().unwrap();
        assert_eq!(verify_signature(secret.as_bytes(), signature, &request.body, t, 0), Ok(()));
        let alert: Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(alert["ip"], "203.0.113.50");
    }
    id
}

async fn a_receiver_that_fails_the_first_attempts_gets_the_alert_after_backed_off_retries(backend: Backend) {
    const FAILURES: u32 = 3;
    let hook = receiver(StatusCode::NO_CONTENT).await;
    hook.fail_next(FAILURES);
    let clock = Arc::new(FixedClock::new(T0));
    let h = harness(&backend, &clock, webhooks_to(&hook.url)).await;
    h.burst("203.0.113.50").await;

    for attempt in 1..=FAILURES {
        eventually("the failed attempt to be settled", || h.metric("failed") == u64::from(attempt)).await;
        let pending = h.pending().await;
        assert_eq!(pending.len(), 1);
        // Exponential backoff with jitter: between half and all of 1 s, 2 s, 4 s.
        let ceiling = BACKOFF_BASE_MS << (attempt - 1);
        let wait = pending[0].1 - clock.now_ms();
        assert!((ceiling / 2..=ceiling).contains(&wait), "attempt {attempt}: retry in {wait} ms");
        assert_eq!(hook.requests().len(), attempt as usize, "nothing before the retry is due");
        clock.set(pending[0].1);
    }
    eventually("the delivery", || h.metric("sent") == 1).await;
    assert_eq!(hook.requests().len(), FAILURES as usize + 1);
    assert_eq!(hook.accepted().len(), 1);
    assert_signed_attempts_of_one_delivery(&hook, SECRET);
    assert!(h.pending().await.is_empty(), "delivered deliveries leave the outbox");
    assert_eq!(h.metric("dead_lettered"), 0);
    h.state.webhooks.stop().await;
}

/// At-least-once, and in this restart (no crash between a 2xx and its settle) exactly
/// once: the alert survives in the outbox, the restarted control plane delivers it,
/// and every attempt carries the same delivery id.
async fn an_alert_queued_while_the_receiver_is_down_is_delivered_once_after_a_restart(backend: Backend) {
    let hook = receiver(StatusCode::OK).await;
    hook.set_down(true);
    let clock = Arc::new(FixedClock::new(T0));
    let before = harness(&backend, &clock, webhooks_to(&hook.url)).await;
    before.burst("203.0.113.50").await;
    eventually("a failed attempt while the receiver is down", || before.metric("failed") == 1).await;
    let pending = before.pending().await;
    assert_eq!(pending.len(), 1);

    // The control plane stops (its delivery task first), the receiver comes back.
    before.state.webhooks.stop().await;
    drop(before);
    let backend = backend.restart();
    hook.set_down(false);
    let after = harness(&backend, &clock, webhooks_to(&hook.url)).await;
    assert_eq!(after.pending().await, pending, "the outbox survived the restart");
    clock.set(pending[0].1);
    eventually("the delivery after the restart", || hook.accepted().len() == 1).await;
    eventually("the delivery to be settled", || after.metric("sent") == 1).await;
    // More rounds change nothing: it is not delivered again.
    clock.set(pending[0].1 + 3_600_000);
    after.state.webhooks.deliver_due().await.unwrap();
    assert_eq!(hook.accepted().len(), 1, "delivered once");
    assert_eq!(hook.requests().len(), 2, "one refused attempt before, one accepted after");
    assert_signed_attempts_of_one_delivery(&hook, SECRET);
    assert!(after.pending().await.is_empty());
    let (_, dead) = after.admin("GET", "/admin/v1/webhooks/dead-letters").await;
    assert_eq!(dead["deadLetters"], json!([]));
    after.state.webhooks.stop().await;
}

async fn deliveries_past_their_deadline_become_dead_letters_that_can_be_retried_or_purged(backend: Backend) {
    let hook = receiver(StatusCode::OK).await;
    hook.set_down(true);
    let clock = Arc::new(FixedClock::new(T0));
    let h = harness(&backend, &clock, WebhookConfig { deadline_secs: 10, ..webhooks_to(&hook.url) }).await;
    // Rounds are driven by hand below, each settling before the next.
    h.state.webhooks.stop().await;
    h.burst("203.0.113.50").await;
    h.burst("203.0.113.51").await;
    // Each round settles before the clock moves to the next due retry.
    for round in 0.. {
        assert!(round < 20, "never gave up");
        h.state.webhooks.deliver_due().await.unwrap();
        let pending = h.pending().await;
        let Some(due) = pending.iter().map(|p| p.1).min() else { break };
        clock.set(due);
    }
    assert_eq!(h.metric("dead_lettered"), 2);
    let (status, listed) = h.admin("GET", "/admin/v1/webhooks/dead-letters").await;
    assert_eq!(status, StatusCode::OK);
    let dead = listed["deadLetters"].as_array().unwrap().clone();
    assert_eq!(dead.len(), 2, "{listed}");
    let attempts: Vec<u64> = dead.iter().map(|d| d["attempts"].as_u64().unwrap()).collect();
    assert_eq!(attempts.iter().sum::<u64>() as usize, hook.requests().len(), "every attempt counted");
    for letter in &dead {
        assert_eq!(
            (letter["kind"].as_str(), letter["lastError"].as_str()),
            (Some("burst"), Some("HTTP 503"))
        );
        // At 0 s, then 0.5–1 s, 1–2 s, 2–4 s and 4–8 s after each failure: the fourth
        // attempt is at 7 s at the latest, the fifth at 7.5 s at the earliest.
        assert!((4..=5).contains(&letter["attempts"].as_u64().unwrap()), "{letter}");
        assert!(letter["failedAt"].as_u64().unwrap() <= (T0 + 10_000) / 1000);
        let target = letter["webhook"].as_str().unwrap();
        assert!(target.starts_with("http://127.0.0.1:") && !target.contains("/hook"), "no path: {target}");
    }
    let ips: Vec<&str> = dead.iter().map(|d| d["payload"]["ip"].as_str().unwrap()).collect();
    assert!(ips.contains(&"203.0.113.50") && ips.contains(&"203.0.113.51"), "{ips:?}");

    // Retry one once the receiver is back: delivered, and no longer a dead letter.
    hook.set_down(false);
    let id = dead[0]["id"].as_str().unwrap().to_owned();
    let (status, retried) = h.admin("POST", &format!("/admin/v1/webhooks/dead-letters/{id}/retry")).await;
    assert_eq!((status, retried["ids"].clone()), (StatusCode::OK, json!([id])));
    h.state.webhooks.deliver_due().await.unwrap();
    assert_eq!(hook.accepted().len(), 1);
    let delivered: Value = serde_json::from_slice(&hook.accepted()[0].body).unwrap();
    assert_eq!(delivered["ip"], dead[0]["payload"]["ip"]);
    assert_eq!(hook.accepted()[0].headers[DELIVERY_ID_HEADER], id.as_str(), "the same delivery");
    let (status, problem) = h.admin("POST", &format!("/admin/v1/webhooks/dead-letters/{id}/retry")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "delivered, not dead: {problem}");

    // Purge the other one; then nothing is left.
    let other = dead[1]["id"].as_str().unwrap().to_owned();
    let (status, purged) = h.admin("DELETE", &format!("/admin/v1/webhooks/dead-letters/{other}")).await;
    assert_eq!((status, purged["ids"].clone()), (StatusCode::OK, json!([other])));
    let (status, _) = h.admin("DELETE", &format!("/admin/v1/webhooks/dead-letters/{other}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, listed) = h.admin("GET", "/admin/v1/webhooks/dead-letters").await;
    assert_eq!(listed["deadLetters"], json!([]));
    let actions = h.audit_actions().await;
    assert!(actions.contains(&"webhook.retry".to_owned()) && actions.contains(&"webhook.purge".to_owned()));
}

async fn during_a_secret_rotation_each_delivery_is_signed_with_both_secrets(backend: Backend) {
    let hook = receiver(StatusCode::OK).await;
    let clock = Arc::new(FixedClock::new(T0));
    let previous =
        PreviousSecret { secret: WebhookSecret::new(PREVIOUS_SECRET).unwrap(), until_ms: T0 + 60_000 };
    let config = WebhookConfig { previous_secret: Some(previous), ..webhooks_to(&hook.url) };
    let h = harness(&backend, &clock, config).await;
    h.burst("203.0.113.50").await;
    eventually("the first alert", || hook.accepted().len() == 1).await;
    let first = &hook.accepted()[0];
    let signature = header(first, SIGNATURE_HEADER);
    assert_eq!(signature.matches("v1=").count(), 2, "{signature}");
    // A receiver still on the old secret and one already on the new accept it.
    for secret in [SECRET, PREVIOUS_SECRET] {
        assert_eq!(verify_signature(secret.as_bytes(), signature, &first.body, T0 / 1000, 300), Ok(()));
    }
    // Once the window has closed, only the current secret signs.
    clock.set(T0 + 60_000);
    h.burst("203.0.113.51").await;
    eventually("the second alert", || hook.accepted().len() == 2).await;
    let second = &hook.accepted()[1];
    let signature = header(second, SIGNATURE_HEADER);
    assert_eq!(signature.matches("v1=").count(), 1, "{signature}");
    assert!(
        verify_signature(PREVIOUS_SECRET.as_bytes(), signature, &second.body, T0 / 1000 + 60, 300).is_err()
    );
    assert!(verify_signature(SECRET.as_bytes(), signature, &second.body, T0 / 1000 + 60, 300).is_ok());
    h.state.webhooks.stop().await;
}

// --- the binaries -------------------------------------------------------------------

fn cli_json(url: &str, args: &[&str]) -> Value {
    let output = support::cli(url, Some(ADMIN_TOKEN), args);
    assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_lists_retries_and_purges_dead_letters() {
    let hook = receiver(StatusCode::OK).await;
    hook.set_down(true);
    let server = Server::start(
        ADMIN_TOKEN,
        &[
            "--store",
            "memory",
            "--burst-threshold",
            "2",
            "--burst-webhook-url",
            &hook.url,
            "--burst-webhook-secret",
            SECRET,
            "--burst-webhook-deadline",
            "1s",
        ],
    );
    let report = |ip: &str| {
        let body = json!({ "entries": [{ "ip": ip, "count": 5 }] });
        let url = format!("{}/v1/burst/report", server.internal_url);
        async move {
            let sent =
                reqwest::Client::new().post(url).bearer_auth(support::FLEET_CREDENTIAL).json(&body).send();
            assert!(sent.await.unwrap().status().is_success())
        }
    };
    report("192.0.2.61").await;
    report("192.0.2.62").await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let dead = loop {
        let listed = cli_json(&server.url, &["webhooks", "dead-letters"]);
        if listed["deadLetters"].as_array().unwrap().len() == 2 {
            break listed["deadLetters"].as_array().unwrap().clone();
        }
        assert!(Instant::now() < deadline, "no dead letters after 15 s: {listed}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    assert_eq!(dead[0]["lastError"], "HTTP 503");
    assert!(hook.accepted().is_empty());

    // Purge one, retry the rest once the receiver is back: it is delivered.
    let id = dead[0]["id"].as_str().unwrap();
    let purged = cli_json(&server.url, &["webhooks", "purge", id]);
    assert_eq!(purged["ids"], json!([id]));
    hook.set_down(false);
    let retried = cli_json(&server.url, &["webhooks", "retry", "--all"]);
    assert_eq!(retried["ids"], json!([dead[1]["id"]]));
    let deadline = Instant::now() + Duration::from_secs(10);
    while hook.accepted().is_empty() {
        assert!(Instant::now() < deadline, "the retried alert was not delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let delivered: Value = serde_json::from_slice(&hook.accepted()[0].body).unwrap();
    assert_eq!(delivered["ip"], dead[1]["payload"]["ip"]);
    let output = support::cli(&server.url, Some(ADMIN_TOKEN), &["webhooks", "retry", id]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).starts_with("Not found:"));
    assert!(!support::cli(&server.url, Some(ADMIN_TOKEN), &["webhooks", "purge"]).status.success());
    assert_eq!(cli_json(&server.url, &["webhooks", "purge", "--all"])["ids"], json!([]));
}
