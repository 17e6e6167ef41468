//! Account lockout (`/v1/lockout/*`, the admin API and CLI) and burst alerts
//! (`/v1/burst/report`, signed webhooks, blocks). The API tests run against every
//! store backend like the store suite (`<test>::memory|embedded|redis`) with a
//! `FixedClock`; webhooks go to a real HTTP receiver on 127.0.0.1 (also behind TLS
//! with a certificate of a CA made by the test). The last tests drive the built
//! binaries.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use support::pki::{tls_proxy, TestPki};
use support::{command, metric_value, receiver, Backend, Receiver, Server, SERVER};

use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::body::Body;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{Request, StatusCode};
use axum::response::Response;
use hmac::{Hmac, Mac as _};
use portcullis_control_plane::audit::AUDIT_LOG;
use portcullis_control_plane::burst::BurstConfig;
use portcullis_control_plane::clock::{Clock as _, FixedClock};
use portcullis_control_plane::metrics::Metrics;
use portcullis_control_plane::store::{
    FeedPage, LogAppendError, LogEntry, QueueEntry, QueueLane, QueueOutcome, QueueRevive, SetMember, Store,
    StoreBackend, StoreError,
};
use portcullis_control_plane::webhooks::{
    verify_signature, WebhookConfig, WebhookSecret, DELIVERY_ID_HEADER, SIGNATURE_HEADER,
};
use portcullis_control_plane::{AppState, Dependencies};
use portcullis_core::ratelimit::Unit;
use portcullis_core::wire::{BurstReply, LockoutReply, RateLimitOp, RateLimitResult, MAX_BATCH};
use serde_json::{json, Value};
use sha2::Sha256;

const ADMIN_TOKEN: &str = "guard-admin-token-0123456789";
const WEBHOOK_SECRET: &str = "webhook-secret-0123456789";
const T0: u64 = 1_700_000_000_000;
const SEC: u64 = 1000;
const ALICE_IP: &str = "198.51.100.23";

// --- backends -------------------------------------------------------------------

support::backends!(
    five_failures_lock_the_sixth_attempt_for_thirty_seconds_then_sixty,
    a_success_resets_the_account_but_not_the_address,
    the_address_dimension_locks_across_accounts,
    raw_values_never_reach_the_store_or_the_audit_log,
    admin_lists_shows_and_clears_lockouts_with_an_audit_entry,
    bad_policies_batches_and_values_are_problems,
    concurrent_checks_on_every_replica_reserve_at_most_the_attempts_left,
    concurrent_checks_from_one_address_reserve_at_most_its_attempts_left,
    reports_settle_their_reservations,
    a_reservation_without_a_report_counts_as_a_failure_when_it_expires,
    reservation_lifetimes_and_ids_are_validated,
    one_alert_per_cooldown_with_a_valid_signature_across_replicas,
    no_alert_at_or_below_the_threshold,
    webhook_failures_are_counted_and_do_not_fail_the_report,
    bursting_addresses_are_blocked_and_answered,
);

/// A store that remembers every name and value it was handed.
struct Recording {
    inner: Arc<dyn Store>,
    seen: Mutex<Vec<String>>,
}

impl Recording {
    fn note(&self, parts: &[&str]) {
        self.seen.lock().unwrap().extend(parts.iter().map(|p| (*p).to_owned()));
    }

    fn note_bytes(&self, bytes: &[u8]) {
        self.seen.lock().unwrap().push(String::from_utf8_lossy(bytes).into_owned());
    }

    fn contains_any(&self, needles: &[&str]) -> Option<String> {
        let seen = self.seen.lock().unwrap();
        seen.iter().find(|s| needles.iter().any(|n| s.to_lowercase().contains(&n.to_lowercase()))).cloned()
    }
}

#[async_trait]
impl Store for Recording {
    fn backend(&self) -> StoreBackend {
        self.inner.backend()
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
    async fn incr_counter(&self, key: &str, delta: i64, ttl_ms: u64, now_ms: u64) -> Result<i64, StoreError> {
        self.note(&[key]);
        self.inner.incr_counter(key, delta, ttl_ms, now_ms).await
    }
    async fn get_counter(&self, key: &str, now_ms: u64) -> Result<i64, StoreError> {
        self.note(&[key]);
        self.inner.get_counter(key, now_ms).await
    }
    async fn set_add(&self, set: &str, member: &str, at: u64, now_ms: u64) -> Result<bool, StoreError> {
        self.note(&[set, member]);
        self.inner.set_add(set, member, at, now_ms).await
    }
    async fn set_remove(&self, set: &str, member: &str) -> Result<(), StoreError> {
        self.note(&[set, member]);
        self.inner.set_remove(set, member).await
    }
    async fn set_contains(&self, set: &str, member: &str, now_ms: u64) -> Result<bool, StoreError> {
        self.note(&[set, member]);
        self.inner.set_contains(set, member, now_ms).await
    }
    async fn set_members(&self, set: &str, now_ms: u64) -> Result<Vec<SetMember>, StoreError> {
        self.note(&[set]);
        self.inner.set_members(set, now_ms).await
    }
    async fn set_scan(
        &self,
        set: &str,
        after: Option<&SetMember>,
        limit: usize,
        now_ms: u64,
    ) -> Result<Vec<SetMember>, StoreError> {
        self.note(&[set]);
        self.inner.set_scan(set, after, limit, now_ms).await
    }
    async fn record_get(&self, key: &str, now_ms: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.note(&[key]);
        self.inner.record_get(key, now_ms).await
    }
    async fn record_put(
        &self,
        key: &str,
        value: Vec<u8>,
        at: Option<u64>,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.note(&[key]);
        self.note_bytes(&value);
        self.inner.record_put(key, value, at, now_ms).await
    }
    async fn record_delete(&self, key: &str) -> Result<(), StoreError> {
        self.note(&[key]);
        self.inner.record_delete(key).await
    }
    async fn record_compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<Vec<u8>>,
        at: Option<u64>,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        self.note(&[key]);
        if let Some(new) = &new {
            self.note_bytes(new);
        }
        self.inner.record_compare_and_swap(key, expected, new, at, now_ms).await
    }
    async fn feed_append(&self, feed: &str, entry: Vec<u8>, now_ms: u64) -> Result<u64, StoreError> {
        self.note(&[feed]);
        self.note_bytes(&entry);
        self.inner.feed_append(feed, entry, now_ms).await
    }
    async fn feed_read(&self, feed: &str, after: u64, limit: usize) -> Result<FeedPage, StoreError> {
        self.inner.feed_read(feed, after, limit).await
    }
    async fn feed_trim(&self, feed: &str, keep_last: usize) -> Result<u64, StoreError> {
        self.inner.feed_trim(feed, keep_last).await
    }
    async fn log_append(&self, log: &str, entry: Vec<u8>) -> Result<u64, StoreError> {
        self.note(&[log]);
        self.note_bytes(&entry);
        self.inner.log_append(log, entry).await
    }
    async fn log_append_if_last(
        &self,
        log: &str,
        last: Option<u64>,
        entry: Vec<u8>,
    ) -> Result<u64, LogAppendError> {
        self.note(&[log]);
        self.note_bytes(&entry);
        self.inner.log_append_if_last(log, last, entry).await
    }
    async fn log_append_batch_if_last(
        &self,
        log: &str,
        last: Option<u64>,
        entries: Vec<Vec<u8>>,
    ) -> Result<u64, LogAppendError> {
        self.inner.log_append_batch_if_last(log, last, entries).await
    }
    async fn log_range(&self, log: &str, from_seq: u64, limit: usize) -> Result<Vec<LogEntry>, StoreError> {
        self.inner.log_range(log, from_seq, limit).await
    }
    async fn log_last(&self, log: &str) -> Result<Option<LogEntry>, StoreError> {
        self.inner.log_last(log).await
    }
    async fn log_trim(&self, log: &str, before_seq: u64) -> Result<u64, StoreError> {
        self.inner.log_trim(log, before_seq).await
    }
    async fn claim_once(&self, key: &str, expires_at_ms: u64, now_ms: u64) -> Result<bool, StoreError> {
        self.note(&[key]);
        self.inner.claim_once(key, expires_at_ms, now_ms).await
    }
    async fn gcra(
        &self,
        key: &str,
        limit: u64,
        unit: Unit,
        op: RateLimitOp,
        now_ms: u64,
    ) -> Result<RateLimitResult, StoreError> {
        self.note(&[key]);
        self.inner.gcra(key, limit, unit, op, now_ms).await
    }
    async fn queue_push(
        &self,
        queue: &str,
        id: &str,
        data: Vec<u8>,
        due_at_ms: u64,
        max_pending: usize,
    ) -> Result<bool, StoreError> {
        self.note(&[queue, id]);
        self.note_bytes(&data);
        self.inner.queue_push(queue, id, data, due_at_ms, max_pending).await
    }
    async fn queue_claim(
        &self,
        queue: &str,
        now_ms: u64,
        lease_ms: u64,
        limit: usize,
    ) -> Result<Vec<QueueEntry>, StoreError> {
        self.inner.queue_claim(queue, now_ms, lease_ms, limit).await
    }
    async fn queue_settle(
        &self,
        queue: &str,
        id: &str,
        claimed_until_ms: u64,
        outcome: QueueOutcome,
    ) -> Result<Option<u64>, StoreError> {
        if let QueueOutcome::Retry { data, .. } | QueueOutcome::Dead { data, .. } = &outcome {
            self.note_bytes(data);
        }
        self.inner.queue_settle(queue, id, claimed_until_ms, outcome).await
    }
    async fn queue_list(
        &self,
        queue: &str,
        lane: QueueLane,
        limit: usize,
    ) -> Result<Vec<QueueEntry>, StoreError> {
        self.inner.queue_list(queue, lane, limit).await
    }
    async fn queue_revive(
        &self,
        queue: &str,
        id: &str,
        data: Vec<u8>,
        due_at_ms: u64,
        max_pending: usize,
    ) -> Result<QueueRevive, StoreError> {
        self.note_bytes(&data);
        self.inner.queue_revive(queue, id, data, due_at_ms, max_pending).await
    }
    async fn queue_delete(&self, queue: &str, lane: QueueLane, id: &str) -> Result<bool, StoreError> {
        self.inner.queue_delete(queue, lane, id).await
    }
}

// --- harness ----------------------------------------------------------------------

struct Harness {
    app: support::Listeners,
    state: AppState,
    clock: Arc<FixedClock>,
    metrics: Arc<Metrics>,
    recording: Arc<Recording>,
}

fn dependencies(store: Arc<dyn Store>, clock: Arc<FixedClock>, metrics: Arc<Metrics>) -> Dependencies {
    Dependencies { clock, metrics, ..support::dependencies(store, ADMIN_TOKEN, [5; 32]) }
}

async fn harness(backend: &Backend) -> Harness {
    harness_with(backend, BurstConfig::default(), Arc::new(FixedClock::new(T0))).await
}

async fn harness_with(backend: &Backend, burst: BurstConfig, clock: Arc<FixedClock>) -> Harness {
    harness_on(Arc::clone(&backend.store), burst, clock).await
}

/// Another replica of the control plane on the same data, with its own clock handle.
async fn replica(backend: &Backend, clock: Arc<FixedClock>) -> Harness {
    harness_on(backend.replica(), BurstConfig::default(), clock).await
}

async fn harness_on(store: Arc<dyn Store>, burst: BurstConfig, clock: Arc<FixedClock>) -> Harness {
    let recording = Arc::new(Recording { inner: store, seen: Mutex::new(Vec::new()) });
    let metrics = Arc::new(Metrics::new());
    let state = AppState::initialise(dependencies(
        Arc::clone(&recording) as Arc<dyn Store>,
        Arc::clone(&clock),
        Arc::clone(&metrics),
    ))
    .await
    .unwrap()
    .with_burst_config(burst)
    .unwrap();
    Harness { app: support::Listeners::new(state.clone()), state, clock, metrics, recording }
}

impl Harness {
    async fn send(&self, request: Request<Body>) -> Response {
        self.app.send(request).await
    }

    async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        let request = Request::post(path)
            .header(CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let response = self.send(request).await;
        (response.status(), body_json(response).await)
    }

    async fn admin(&self, method: &str, path: &str) -> (StatusCode, Value) {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(AUTHORIZATION, format!("Bearer {ADMIN_TOKEN}"))
            .body(Body::empty())
            .unwrap();
        let response = self.send(request).await;
        (response.status(), body_json(response).await)
    }

    async fn lockout(&self, path: &str, body: Value) -> LockoutReply {
        let (status, reply) = self.post(path, &body).await;
        assert_eq!(status, StatusCode::OK, "{path}: {reply}");
        // Exactly the filter's wire type.
        serde_json::from_value(reply).unwrap()
    }

    async fn check(&self, subjects: Value) -> LockoutReply {
        self.lockout("/v1/lockout/check", json!({ "subjects": subjects })).await
    }

    async fn fail(&self, subjects: Value) -> LockoutReply {
        self.lockout("/v1/lockout/report", json!({ "outcome": "failure", "subjects": subjects })).await
    }

    async fn succeed(&self, subjects: Value) -> LockoutReply {
        self.lockout("/v1/lockout/report", json!({ "outcome": "success", "subjects": subjects })).await
    }

    /// A check that reserves the attempt for [`RESERVATION_TTL_MS`].
    async fn reserve(&self, subjects: Value) -> LockoutReply {
        self.lockout("/v1/lockout/check", reserving(subjects)).await
    }

    /// Reports `outcome` for the attempt holding `reservation`.
    async fn settle(&self, outcome: &str, subjects: Value, reservation: &str) -> LockoutReply {
        let body = json!({ "outcome": outcome, "subjects": subjects, "reservation": reservation });
        self.lockout("/v1/lockout/report", body).await
    }

    async fn burst(&self, entries: Value) -> BurstReply {
        let (status, reply) = self.post("/v1/burst/report", &json!({ "entries": entries })).await;
        assert_eq!(status, StatusCode::OK, "{reply}");
        serde_json::from_value(reply).unwrap()
    }

    fn advance(&self, ms: u64) {
        self.clock.set(self.clock.now_ms() + ms);
    }

    async fn audit(&self) -> Vec<Value> {
        self.state
            .store
            .log_range(AUDIT_LOG, 1, 1000)
            .await
            .unwrap()
            .into_iter()
            .map(|e| serde_json::from_slice(&e.data).unwrap())
            .collect()
    }

    fn metric(&self, line_prefix: &str) -> u64 {
        support::metric_value(&self.metrics.render().unwrap(), line_prefix)
    }
}

async fn body_json(response: Response) -> Value {
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 22).await.unwrap();
    if bytes.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
}

const RESERVATION_TTL_MS: u64 = 10_000;

fn reserving(subjects: Value) -> Value {
    json!({ "subjects": subjects, "reservationTtlMs": RESERVATION_TTL_MS })
}

/// `n` lock checks reserving `subjects(i)`, all started at once, spread over `replicas`.
async fn concurrent_reservations(
    replicas: &[&Harness],
    n: usize,
    subjects: impl Fn(usize) -> Value,
) -> Vec<LockoutReply> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let app = replicas[i % replicas.len()].app.clone();
            let body = reserving(subjects(i));
            tokio::spawn(async move {
                let request = Request::post("/v1/lockout/check")
                    .header(CONTENT_TYPE, "application/json")
                    .body(Body::from(body.to_string()))
                    .unwrap();
                let response = app.send(request).await;
                assert_eq!(response.status(), StatusCode::OK);
                serde_json::from_value::<LockoutReply>(body_json(response).await).unwrap()
            })
        })
        .collect();
    let mut replies = Vec::with_capacity(n);
    for task in tasks {
        replies.push(task.await.unwrap());
    }
    replies
}

fn account(name: &str) -> Value {
    json!([{ "kind": "account", "value": name }])
}

fn alice() -> Value {
    json!([{ "kind": "account", "value": "Alice" }, { "kind": "ip", "value": ALICE_IP }])
}

// --- lockout ----------------------------------------------------------------------

async fn five_failures_lock_the_sixth_attempt_for_thirty_seconds_then_sixty(backend: Backend) {
    let h = harness(&backend).await;
    assert_eq!(h.check(alice()).await.locked_for_ms, 0);
    for i in 1..=5u32 {
        let reply = h.fail(alice()).await;
        assert_eq!(reply.subjects[0].failures, i);
        h.advance(SEC);
    }
    // The 6th attempt: checked before it reaches the upstream.
    let reply = h.check(alice()).await;
    assert_eq!(reply.locked_for_ms, 29_000, "locked at the 5th failure, one second ago");
    h.clock.set(T0 + 4 * SEC);
    let reply = h.check(json!([{ "kind": "account", "value": " ALICE " }])).await;
    assert_eq!(reply.locked_for_ms, 30_000, "the 6th check right at the 5th failure");
    assert_eq!((reply.subjects[0].locked_for_ms, reply.subjects[0].failures), (30_000, 5));
    assert_eq!(h.metric(r#"portcullis_lockout_checks_total{result="locked"}"#), 2);
    assert_eq!(h.metric(r#"portcullis_lockout_reports_total{outcome="failure"}"#), 5);
    assert_eq!(h.metric(r#"portcullis_lockouts_started_total{kind="account"}"#), 1);

    // The lock ends; the next failure locks twice as long.
    h.clock.set(T0 + 34 * SEC);
    assert_eq!(h.check(alice()).await.locked_for_ms, 0);
    let reply = h.fail(alice()).await;
    assert_eq!(reply.locked_for_ms, 60_000);
    assert_eq!(h.check(alice()).await.locked_for_ms, 60_000);
    assert_eq!(h.metric(r#"portcullis_lockouts_started_total{kind="account"}"#), 2);
}

async fn a_success_resets_the_account_but_not_the_address(backend: Backend) {
    let h = harness(&backend).await;
    for _ in 0..4 {
        h.fail(alice()).await;
    }
    let reply = h.succeed(alice()).await;
    assert_eq!(reply.subjects[0].failures, 0, "the account is forgotten");
    assert_eq!(reply.subjects[1].failures, 4, "the address is not washed by one valid account");
    // Counting for the account starts again from zero; the address locks at its 5th.
    let reply = h.fail(alice()).await;
    assert_eq!((reply.subjects[0].failures, reply.subjects[0].locked_for_ms), (1, 0));
    assert_eq!((reply.subjects[1].failures, reply.subjects[1].locked_for_ms), (5, 30_000));
    assert_eq!(reply.locked_for_ms, 30_000);
    // A success on a locked account (after an admin let it through) forgets its lock.
    for _ in 0..4 {
        h.fail(json!([{ "kind": "account", "value": "alice" }])).await;
    }
    assert_eq!(h.check(json!([{ "kind": "account", "value": "alice" }])).await.locked_for_ms, 30_000);
    h.succeed(json!([{ "kind": "account", "value": "alice" }])).await;
    assert_eq!(h.check(json!([{ "kind": "account", "value": "alice" }])).await.locked_for_ms, 0);
    assert_eq!(h.metric(r#"portcullis_lockout_reports_total{outcome="success"}"#), 2);
}

async fn the_address_dimension_locks_across_accounts(backend: Backend) {
    let h = harness(&backend).await;
    for account in ["alice", "bob", "carol", "dave"] {
        h.fail(json!([{ "kind": "account", "value": account }, { "kind": "ip", "value": ALICE_IP }])).await;
    }
    // The IPv4-mapped spelling is the same address.
    h.fail(json!([{ "kind": "account", "value": "eve" }, { "kind": "ip", "value": format!("::ffff:{ALICE_IP}") }]))
        .await;
    let reply =
        h.check(json!([{ "kind": "account", "value": "frank" }, { "kind": "ip", "value": ALICE_IP }])).await;
    assert_eq!(reply.subjects[0].locked_for_ms, 0, "frank never failed");
    assert_eq!((reply.subjects[1].locked_for_ms, reply.subjects[1].failures), (30_000, 5));
    assert_eq!(reply.locked_for_ms, 30_000);
    let other_ip = h.check(json!([{ "kind": "ip", "value": "198.51.100.24" }])).await;
    assert_eq!(other_ip.locked_for_ms, 0);
    assert_eq!(h.metric(r#"portcullis_lockouts_started_total{kind="ip"}"#), 1);
}

async fn raw_values_never_reach_the_store_or_the_audit_log(backend: Backend) {
    // With a webhook, so the alert about the address goes through the outbox.
    let hook = receiver(StatusCode::SERVICE_UNAVAILABLE).await;
    let h = harness_with(&backend, config_for(&[&hook.url]), Arc::new(FixedClock::new(T0))).await;
    for _ in 0..5 {
        h.fail(json!([{ "kind": "account", "value": "Alice.Secret@example.org" }, { "kind": "ip", "value": ALICE_IP }]))
            .await;
    }
    h.succeed(json!([{ "kind": "account", "value": "alice.secret@example.org" }])).await;
    let (status, _) = h.admin("DELETE", &format!("/admin/v1/lockouts/ip/{ALICE_IP}")).await;
    assert_eq!(status, StatusCode::OK);
    h.burst(json!([{ "ip": ALICE_IP, "count": 100, "route": "/login", "method": "POST", "userAgent": "x" }]))
        .await;

    // The delivery was attempted (and failed), so the outbox entry was written twice.
    eventually("the failed delivery", || h.metric(r#"portcullis_burst_alerts_total{result="failed"}"#) == 1)
        .await;
    assert!(String::from_utf8_lossy(&hook.requests()[0].body).contains(ALICE_IP), "the receiver gets it");
    let needles = ["alice.secret", "example.org", ALICE_IP, "198.51.100", "/hook"];
    assert_eq!(
        h.recording.contains_any(&needles),
        None,
        "a raw value (or the webhook's path) reached the store"
    );
    let audit = serde_json::to_string(&h.audit().await).unwrap();
    for needle in needles {
        assert!(!audit.contains(needle), "{needle} in the audit log: {audit}");
    }
}

async fn admin_lists_shows_and_clears_lockouts_with_an_audit_entry(backend: Backend) {
    let h = harness(&backend).await;
    for _ in 0..5 {
        h.fail(alice()).await;
    }
    h.fail(json!([{ "kind": "account", "value": "bob" }])).await;

    let (status, list) = h.admin("GET", "/admin/v1/lockouts").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let entries = list["lockouts"].as_array().unwrap();
    assert_eq!(entries.len(), 3, "{list}");
    assert_eq!(list["truncated"], false);
    // Locked first; only hashes identify subjects.
    assert_eq!(entries[0]["lockedForMs"], 30_000);
    assert_eq!(entries[0]["lockedUntil"], (T0 + 30 * SEC) / 1000);
    assert_eq!(entries[2]["failures"], 1);
    assert!(entries[2].get("lockedUntil").is_none());
    assert!(!list.to_string().contains("alice") && !list.to_string().contains(ALICE_IP));

    let (status, shown) = h.admin("GET", "/admin/v1/lockouts/account/%20ALICE").await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    assert_eq!((shown["kind"].as_str(), shown["failures"].as_u64()), (Some("account"), Some(5)));
    assert_eq!(shown["lockedForMs"], 30_000);
    let hash = shown["keyHash"].as_str().unwrap().to_owned();
    assert_eq!(hash.len(), 64);
    assert!(entries.iter().any(|e| e["keyHash"] == hash.as_str()));
    let (status, shown_ip) = h.admin("GET", "/admin/v1/lockouts/ip/%3A%3Affff%3A198.51.100.23").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown_ip["lockedForMs"], 30_000);

    let (status, cleared) = h.admin("DELETE", "/admin/v1/lockouts/account/alice").await;
    assert_eq!(status, StatusCode::OK, "{cleared}");
    assert_eq!(cleared["keyHash"], hash.as_str());
    assert_eq!(h.check(alice()).await.subjects[0].locked_for_ms, 0);
    let (status, problem) = h.admin("GET", "/admin/v1/lockouts/account/alice").await;
    assert_eq!(
        (status, problem["type"].as_str()),
        (StatusCode::NOT_FOUND, Some("urn:portcullis:problem:not-found"))
    );
    let (status, _) = h.admin("DELETE", "/admin/v1/lockouts/account/alice").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, list) = h.admin("GET", "/admin/v1/lockouts").await;
    assert_eq!(list["lockouts"].as_array().unwrap().len(), 2);

    let audit = h.audit().await;
    let entry = audit.iter().find(|e| e["action"] == "lockout.clear").unwrap();
    assert_eq!(
        (entry["kind"].as_str(), entry["actor"].as_str().unwrap().strip_prefix("admin:").map(str::len)),
        (Some("admin"), Some(16))
    );
    assert_eq!(entry["target"], format!("account:{hash}"));
    assert_eq!(entry["detail"]["keyHash"], hash.as_str());
    assert_eq!(audit.iter().filter(|e| e["action"] == "lockout.clear").count(), 1, "a 404 is not audited");

    // Bearer-protected like the rest of the admin API.
    let response = h.send(Request::get("/admin/v1/lockouts").body(Body::empty()).unwrap()).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

async fn bad_policies_batches_and_values_are_problems(backend: Backend) {
    let h = harness(&backend).await;
    let cases = [
        (json!({ "policy": { "maxFailures": 0 }, "subjects": [] }), "policy.maxFailures"),
        (json!({ "policy": { "windowMs": 0 }, "subjects": [] }), "policy.windowMs"),
        (
            json!({ "policy": { "baseLockMs": 90000, "maxLockMs": 60000 }, "subjects": [] }),
            "policy.baseLockMs",
        ),
        (json!({ "policy": { "maxLockMs": 31u64 * 86_400_000 }, "subjects": [] }), "policy.maxLockMs"),
        (
            json!({ "subjects": [{ "kind": "account", "value": "a" }, { "kind": "ip", "value": "1.2.3.999" }] }),
            "subjects[1].value",
        ),
        (json!({ "subjects": [{ "kind": "account", "value": "a".repeat(513) }] }), "subjects[0].value"),
        (json!({ "subjects": [{ "kind": "account", "value": "   " }] }), "subjects[0].value"),
        (
            json!({ "subjects": vec![json!({ "kind": "ip", "value": "192.0.2.1" }); MAX_BATCH + 1] }),
            "subjects",
        ),
    ];
    for (body, field) in cases {
        for path in ["/v1/lockout/check", "/v1/lockout/report"] {
            let mut body = body.clone();
            if path.ends_with("report") {
                body["outcome"] = json!("failure");
            }
            let (status, problem) = h.post(path, &body).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {body}: {problem}");
            assert_eq!(problem["type"], "urn:portcullis:problem:invalid-request");
            assert!(problem["detail"].as_str().unwrap().starts_with(field), "{problem}");
        }
    }
    let (status, _) = h.post("/v1/lockout/report", &json!({ "outcome": "maybe", "subjects": [] })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = h.post("/v1/burst/report", &json!({ "entries": [{ "ip": "nope", "count": 1 }] })).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, problem) = h.admin("GET", "/admin/v1/lockouts/user/alice").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
    let (status, _) = h.admin("GET", "/admin/v1/lockouts/ip/not-an-ip").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(h.recording.contains_any(&["lockout/"]), None, "nothing was written or read");
}

// --- burst alerts -----------------------------------------------------------------

fn config_for(urls: &[&str]) -> BurstConfig {
    let webhooks = WebhookConfig {
        urls: urls.iter().map(|u| u.parse().unwrap()).collect(),
        secret: Some(WebhookSecret::new(WEBHOOK_SECRET).unwrap()),
        poll_interval: Duration::from_millis(50),
        ..WebhookConfig::default()
    };
    BurstConfig { webhooks, ..BurstConfig::default() }
}

/// Waits (bounded) until `done` holds.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn entry(ip: &str, count: u64) -> Value {
    json!({ "ip": ip, "count": count, "route": "/login", "method": "POST", "userAgent": "curl/8.0" })
}

async fn one_alert_per_cooldown_with_a_valid_signature_across_replicas(backend: Backend) {
    let hook = receiver(StatusCode::OK).await;
    let clock = Arc::new(FixedClock::new(T0 + 500));
    let h = harness_with(&backend, config_for(&[&hook.url]), Arc::clone(&clock)).await;
    // A second replica on the same store.
    let replica = harness_with(&backend, config_for(&[&hook.url]), Arc::clone(&clock)).await;

    assert!(h.burst(json!([entry("203.0.113.5", 30)])).await.blocked.is_empty());
    clock.set(T0 + 1_500);
    h.burst(json!([entry("203.0.113.5", 30), entry("203.0.113.6", 3)])).await; // 60 > 50
    clock.set(T0 + 2_500);
    h.burst(json!([entry("203.0.113.5", 60)])).await;
    replica.burst(json!([entry("203.0.113.5", 60)])).await;
    let sent = || {
        h.metric(r#"portcullis_burst_alerts_total{result="sent"}"#)
            + replica.metric(r#"portcullis_burst_alerts_total{result="sent"}"#)
    };
    // Either replica's delivery task may deliver it: the outbox is shared.
    eventually("the alert", || sent() == 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let got = hook.requests();
    assert_eq!(got.len(), 1, "one alert per cooldown, whichever replica saw the burst");
    assert_eq!(sent(), 1);

    let (headers, body) = (&got[0].headers, &got[0].body);
    assert!(!headers[DELIVERY_ID_HEADER].is_empty());
    assert_eq!(headers[CONTENT_TYPE], "application/json");
    let signature = headers[SIGNATURE_HEADER].to_str().unwrap();
    // `t` is when the delivery was sent: the clock may have moved on since the burst.
    let t: u64 = signature.strip_prefix("t=").unwrap().split(',').next().unwrap().parse().unwrap();
    assert!(((T0 + 1_500) / 1000..=(T0 + 2_500) / 1000).contains(&t), "{signature}");
    // Verified independently of the crate's helper: HMAC-SHA256(secret, "<t>." + body).
    let mut mac = <Hmac<Sha256> as hmac::Mac>::new_from_slice(WEBHOOK_SECRET.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    let expected: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(signature, format!("t={t},v1={expected}"));
    assert!(verify_signature(WEBHOOK_SECRET.as_bytes(), signature, body, t + 10, 300).is_ok());
    let alert: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(
        alert,
        json!({
            "ip": "203.0.113.5", "count": 60, "windowSeconds": 10, "threshold": 50,
            "route": "/login", "method": "POST", "userAgent": "curl/8.0",
            "timestamp": "2023-11-14T22:13:21.500Z", "timestampMs": T0 + 1_500,
        })
    );

    // After the cooldown, the next burst alerts again.
    clock.set(T0 + 62_000);
    replica.burst(json!([entry("203.0.113.5", 51)])).await;
    eventually("the second alert", || hook.requests().len() == 2).await;
    let second: Value = serde_json::from_slice(&hook.requests()[1].body).unwrap();
    assert_eq!((second["count"].as_u64(), second["timestampMs"].as_u64()), (Some(51), Some(T0 + 62_000)));
}

async fn no_alert_at_or_below_the_threshold(backend: Backend) {
    let hook = receiver(StatusCode::OK).await;
    let clock = Arc::new(FixedClock::new(T0));
    let h = harness_with(&backend, config_for(&[&hook.url]), Arc::clone(&clock)).await;
    for i in 0..5 {
        clock.set(T0 + i * SEC);
        h.burst(json!([entry("203.0.113.7", 10)])).await; // 50 within 10 s at most
    }
    // 25 s later the old windows no longer count.
    clock.set(T0 + 25 * SEC);
    h.burst(json!([entry("203.0.113.7", 50)])).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(hook.requests().is_empty());
    // The alert counters are exported from the start, at zero; none may have moved.
    let text = h.metrics.render().unwrap();
    let alerts: Vec<&str> =
        text.lines().filter(|l| l.starts_with("portcullis_burst_alerts_total{")).collect();
    assert!(!alerts.is_empty(), "{text}");
    assert!(alerts.iter().all(|l| l.ends_with(" 0")), "{alerts:?}");
    // The sliding estimate: 50 in the previous window, 3 s into the next → 50·0.7 + 20 = 55.
    clock.set(T0 + 33 * SEC);
    h.burst(json!([entry("203.0.113.7", 20)])).await;
    eventually("the alert", || hook.requests().len() == 1).await;
    let alert: Value = serde_json::from_slice(&hook.requests()[0].body).unwrap();
    assert_eq!(alert["count"], 55);
}

async fn webhook_failures_are_counted_and_do_not_fail_the_report(backend: Backend) {
    let refusing = receiver(StatusCode::INTERNAL_SERVER_ERROR).await;
    let accepting = receiver(StatusCode::NO_CONTENT).await;
    let closed = format!("http://127.0.0.1:{}/hook", support::free_port());
    let clock = Arc::new(FixedClock::new(T0));
    let h = harness_with(&backend, config_for(&[&refusing.url, &closed, &accepting.url]), clock).await;
    let started = Instant::now();
    let reply = h.burst(json!([entry("203.0.113.8", 500)])).await;
    assert!(reply.blocked.is_empty());
    assert!(started.elapsed() < Duration::from_secs(2), "the report never waits for webhooks");
    eventually("two failures", || h.metric(r#"portcullis_burst_alerts_total{result="failed"}"#) == 2).await;
    eventually("one delivery", || h.metric(r#"portcullis_burst_alerts_total{result="sent"}"#) == 1).await;
    // The clock stands still: the failed deliveries wait for their retry.
    assert_eq!(refusing.requests().len(), 1);
    assert_eq!(accepting.requests().len(), 1);
}

async fn bursting_addresses_are_blocked_and_answered(backend: Backend) {
    let clock = Arc::new(FixedClock::new(T0));
    let config = BurstConfig { block_secs: Some(300), ..BurstConfig::default() };
    let h = harness_with(&backend, config, Arc::clone(&clock)).await;
    let reply = h.burst(json!([entry("203.0.113.9", 80), entry("203.0.113.10", 5)])).await;
    assert_eq!(
        serde_json::to_value(&reply).unwrap(),
        json!({ "blocked": [{ "ip": "203.0.113.9", "blockedForMs": 300_000 }] })
    );
    assert_eq!(h.metric("portcullis_burst_ips_blocked_total"), 1);
    // Answered for every reported address currently blocked, in the spelling reported.
    clock.set(T0 + 100 * SEC);
    let reply = h.burst(json!([entry("::ffff:203.0.113.9", 0), entry("203.0.113.10", 1)])).await;
    assert_eq!(
        serde_json::to_value(&reply).unwrap(),
        json!({ "blocked": [{ "ip": "::ffff:203.0.113.9", "blockedForMs": 200_000 }] })
    );
    clock.set(T0 + 300 * SEC);
    assert!(h.burst(json!([entry("203.0.113.9", 1)])).await.blocked.is_empty());
    // Without blocking configured, nothing is blocked.
    let plain = harness(&backend).await;
    plain.clock.set(T0);
    assert!(plain.burst(json!([entry("203.0.113.11", 500)])).await.blocked.is_empty());
}

// --- the binaries -------------------------------------------------------------------

fn cli(url: &str, args: &[&str]) -> Output {
    support::cli(url, Some(ADMIN_TOKEN), args)
}

/// A control plane process on the memory store.
fn start(args: &[&str]) -> Server {
    Server::start(ADMIN_TOKEN, &[&["--store", "memory"], args].concat())
}

fn cli_json(url: &str, args: &[&str]) -> Value {
    let output = cli(url, args);
    assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

/// A POST to the internal listener, as Envoy sends it.
async fn post(url: &str, body: Value) -> Value {
    let response = reqwest::Client::new()
        .post(url)
        .bearer_auth(support::FLEET_CREDENTIAL)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{url}: {}", response.status());
    response.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_lists_shows_and_clears_lockouts() {
    let server = start(&[]);
    for _ in 0..5 {
        post(
            &format!("{}/v1/lockout/report", server.internal_url),
            json!({ "outcome": "failure", "subjects": [
                { "kind": "account", "value": "alice" }, { "kind": "ip", "value": "1.2.3.4" }] }),
        )
        .await;
    }
    let list = cli_json(&server.url, &["lockouts", "list"]);
    assert_eq!(list["lockouts"].as_array().unwrap().len(), 2, "{list}");
    let shown = cli_json(&server.url, &["lockouts", "show", "--account", "Alice"]);
    assert_eq!(shown["failures"], 5);
    assert!((20_000..=30_000).contains(&shown["lockedForMs"].as_u64().unwrap()), "{shown}");
    let shown_ip = cli_json(&server.url, &["lockouts", "show", "--ip", "1.2.3.4"]);
    assert_eq!(shown_ip["kind"], "ip");
    let cleared = cli_json(&server.url, &["lockouts", "clear", "--account", "alice"]);
    assert_eq!(cleared["keyHash"], shown["keyHash"]);

    let output = cli(&server.url, &["lockouts", "show", "--account", "alice"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.starts_with("Not found: "), "{stderr}");
    let output = cli(&server.url, &["lockouts", "clear", "--ip", "not-an-ip"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("value: not an IPv4 or IPv6 address"));
    let output = cli(&server.url, &["lockouts", "show"]);
    assert!(!output.status.success(), "--account or --ip is required");
    let list = cli_json(&server.url, &["lockouts", "list"]);
    assert_eq!(list["lockouts"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_posts_signed_alerts_configured_by_flags() {
    let hook = receiver(StatusCode::OK).await;
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("webhook-secret");
    std::fs::write(&secret_file, format!("{WEBHOOK_SECRET}\n")).unwrap();
    let server = start(&[
        "--burst-threshold",
        "5",
        "--burst-window",
        "1m",
        "--burst-block",
        "2m",
        "--burst-webhook-url",
        &hook.url,
        "--burst-webhook-secret-file",
        secret_file.to_str().unwrap(),
    ]);
    let reply = post(
        &format!("{}/v1/burst/report", server.internal_url),
        json!({ "entries": [entry("192.0.2.44", 6)] }),
    )
    .await;
    let blocked_for = reply["blocked"][0]["blockedForMs"].as_u64().unwrap();
    assert!((110_000..=120_000).contains(&blocked_for), "{reply}");
    eventually("the alert", || hook.requests().len() == 1).await;
    let delivered = &hook.requests()[0];
    let (headers, body) = (&delivered.headers, &delivered.body);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let signature = headers[SIGNATURE_HEADER].to_str().unwrap();
    assert!(verify_signature(WEBHOOK_SECRET.as_bytes(), signature, body, now, 300).is_ok());
    let alert: Value = serde_json::from_slice(body).unwrap();
    assert_eq!((alert["windowSeconds"].as_u64(), alert["threshold"].as_u64()), (Some(60), Some(5)));
}

#[test]
fn server_refuses_a_webhook_without_a_secret() {
    let output = command(SERVER)
        .args(["--store", "memory", "--admin-listen", "127.0.0.1:0", "--internal-listen", "127.0.0.1:0"])
        .args(["--burst-webhook-url", "https://hooks.example/burst"])
        .env("PORTCULLIS_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("PORTCULLIS_FLEET_CREDENTIAL", support::FLEET_CREDENTIAL)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--burst-webhook-url needs a signing secret"), "{stderr}");
    assert!(stderr.contains("--burst-webhook-secret-file"), "{stderr}");
}

// --- reservations -----------------------------------------------------------------

async fn concurrent_checks_on_every_replica_reserve_at_most_the_attempts_left(backend: Backend) {
    let clock = Arc::new(FixedClock::new(T0));
    let h = harness_with(&backend, BurstConfig::default(), Arc::clone(&clock)).await;
    let (r2, r3) = (replica(&backend, Arc::clone(&clock)).await, replica(&backend, Arc::clone(&clock)).await);
    // Two earlier failures leave three attempts.
    h.fail(alice()).await;
    h.fail(alice()).await;
    let replies = concurrent_reservations(&[&h, &r2, &r3], 60, |_| alice()).await;
    let mut ids: Vec<&str> = replies.iter().filter_map(|r| r.reservation.as_deref()).collect();
    assert_eq!(ids.len(), 3, "60 parallel checks on three replicas reserve exactly the three attempts left");
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 3, "every reservation has its own id");
    for refused in replies.iter().filter(|r| r.reservation.is_none()) {
        assert_eq!((refused.locked_for_ms, refused.retry_after_ms), (0, 1_000), "{refused:?}");
        // A check reserves on the account and the address in turn, so a refusal may read
        // one of them while a competing check still holds (or is giving back) a slot on it:
        // what holds is that some subject had no attempt left and none had more than three.
        assert!(
            refused.subjects.iter().any(|s| (s.failures, s.in_flight) == (2, 3)),
            "a refusal names a subject with no attempt left: {refused:?}"
        );
        assert!(refused.subjects.iter().all(|s| s.failures == 2 && s.in_flight <= 3), "{refused:?}");
    }
    let now = h.check(alice()).await;
    assert_eq!((now.subjects[0].in_flight, now.subjects[1].in_flight), (3, 3));
    assert_eq!(
        h.metric(r#"portcullis_lockout_checks_total{result="in_flight"}"#)
            + r2.metric(r#"portcullis_lockout_checks_total{result="in_flight"}"#)
            + r3.metric(r#"portcullis_lockout_checks_total{result="in_flight"}"#),
        57
    );
    // Their three failures lock; nothing more was ever let through.
    for id in ids {
        h.settle("failure", alice(), id).await;
    }
    let locked = h.reserve(alice()).await;
    assert_eq!((locked.reservation, locked.locked_for_ms, locked.retry_after_ms), (None, 30_000, 30_000));
}

async fn concurrent_checks_from_one_address_reserve_at_most_its_attempts_left(backend: Backend) {
    let clock = Arc::new(FixedClock::new(T0));
    let h = harness_with(&backend, BurstConfig::default(), Arc::clone(&clock)).await;
    let r2 = replica(&backend, Arc::clone(&clock)).await;
    let subjects = |i: usize| json!([{ "kind": "account", "value": format!("user{i}") }, { "kind": "ip", "value": ALICE_IP }]);
    let replies = concurrent_reservations(&[&h, &r2], 40, subjects).await;
    let granted: Vec<usize> = (0..40).filter(|i| replies[*i].reservation.is_some()).collect();
    assert_eq!(granted.len(), 5, "one address, forty accounts: five attempts in flight");
    // A refused attempt gives its account's reservation back at once.
    for i in 0..40 {
        let held = h.check(account(&format!("user{i}"))).await.subjects[0].in_flight;
        assert_eq!(held, u32::from(granted.contains(&i)), "user{i}");
    }
    assert_eq!(h.check(json!([{ "kind": "ip", "value": ALICE_IP }])).await.subjects[0].in_flight, 5);
}

async fn reports_settle_their_reservations(backend: Backend) {
    let h = harness(&backend).await;
    let mut ids = Vec::new();
    for i in 1..=5u32 {
        let reply = h.reserve(alice()).await;
        assert_eq!((reply.subjects[0].in_flight, reply.subjects[1].in_flight), (i, i));
        ids.push(reply.reservation.expect("an attempt is left"));
    }
    let full = h.reserve(alice()).await;
    assert_eq!((full.reservation, full.retry_after_ms), (None, 1_000));

    // A failure turns its reservation into the failure: still no attempt left.
    let reply = h.settle("failure", alice(), &ids[0]).await;
    assert_eq!((reply.subjects[0].failures, reply.subjects[0].in_flight), (1, 4));
    assert_eq!(h.reserve(alice()).await.reservation, None);
    // An abandoned attempt only gives its reservation back.
    let reply = h.settle("abandoned", alice(), &ids[1]).await;
    assert_eq!((reply.subjects[0].failures, reply.subjects[0].in_flight), (1, 3));
    let id = h.reserve(alice()).await.reservation.expect("the freed attempt");
    assert_eq!(h.reserve(alice()).await.reservation, None);
    // A success forgets the account's failures, not the address's, and keeps the
    // reservations of the other attempts in flight.
    let reply = h.settle("success", alice(), &ids[2]).await;
    assert_eq!((reply.subjects[0].failures, reply.subjects[0].in_flight), (0, 3));
    assert_eq!((reply.subjects[1].failures, reply.subjects[1].in_flight), (1, 3));
    // The address has one attempt left, the account two: the address decides, and the
    // refused attempt's account reservation is given back.
    assert!(h.reserve(alice()).await.reservation.is_some());
    let refused = h.reserve(alice()).await;
    assert_eq!(refused.reservation, None);
    assert_eq!((refused.subjects[0].in_flight, refused.subjects[1].in_flight), (4, 4), "{refused:?}");
    // Settling a reservation twice changes nothing the second time.
    h.settle("abandoned", alice(), &id).await;
    let again = h.settle("abandoned", alice(), &id).await;
    assert_eq!(again.subjects[0].in_flight, 3);
    assert_eq!(h.metric(r#"portcullis_lockout_reports_total{outcome="abandoned"}"#), 3);
}

async fn a_reservation_without_a_report_counts_as_a_failure_when_it_expires(backend: Backend) {
    let h = harness(&backend).await;
    for _ in 0..5 {
        assert!(h.reserve(alice()).await.reservation.is_some());
    }
    h.advance(RESERVATION_TTL_MS - 1);
    let before = h.check(alice()).await;
    assert_eq!((before.locked_for_ms, before.subjects[0].in_flight, before.subjects[0].failures), (0, 5, 0));
    // Five lost reports: the attempts reached the upstream and nobody knows how they
    // ended, so they count as the failures they may have been.
    h.advance(1);
    let after = h.check(alice()).await;
    assert_eq!(
        (after.locked_for_ms, after.subjects[0].in_flight, after.subjects[0].failures),
        (30_000, 0, 5)
    );
    let (status, shown) = h.admin("GET", "/admin/v1/lockouts/account/alice").await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    assert_eq!((shown["failures"].as_u64(), shown["inFlight"].as_u64()), (Some(5), Some(0)), "{shown}");
    assert_eq!(shown["lockedForMs"], 30_000);
    // A lost report never locks for longer than a failure would.
    h.advance(30_000);
    assert_eq!(h.check(alice()).await.locked_for_ms, 0);
    assert!(h.reserve(alice()).await.reservation.is_some());
}

async fn reservation_lifetimes_and_ids_are_validated(backend: Backend) {
    let h = harness(&backend).await;
    for ttl in [0, 600_001] {
        let body = json!({ "subjects": alice(), "reservationTtlMs": ttl });
        let (status, problem) = h.post("/v1/lockout/check", &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
        assert!(problem["detail"].as_str().unwrap().starts_with("reservationTtlMs"), "{problem}");
    }
    for id in ["", "a b", "../x", &"a".repeat(65)] {
        let body = json!({ "outcome": "failure", "subjects": alice(), "reservation": id });
        let (status, problem) = h.post("/v1/lockout/report", &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{id:?}: {problem}");
        assert!(problem["detail"].as_str().unwrap().starts_with("reservation"), "{problem}");
    }
    assert_eq!(h.recording.contains_any(&["lockout/"]), None, "nothing was written or read");
}

// --- webhooks over TLS --------------------------------------------------------------

/// A webhook receiver behind a TLS proxy whose certificate comes from a CA of the
/// test, and a server posting its alerts there (`extra` flags added).
struct HttpsHook {
    hook: Receiver,
    server: Server,
    /// Its files stay until the test ends.
    _pki: TestPki,
}

async fn https_hook(extra: impl FnOnce(&TestPki) -> Vec<String>, logged: bool) -> HttpsHook {
    let hook = receiver(StatusCode::OK).await;
    let pki = TestPki::generate();
    let plain = hook.url.strip_prefix("http://").unwrap().strip_suffix("/hook").unwrap();
    let url = format!("https://{}/hook", tls_proxy(&pki, plain.parse().unwrap()).await);
    let secret_file = pki.dir().join("webhook-secret");
    std::fs::write(&secret_file, WEBHOOK_SECRET).unwrap();
    let extra = extra(&pki);
    let args = [
        &["--store", "memory", "--burst-threshold", "5"][..],
        &["--burst-webhook-url", &url, "--burst-webhook-secret-file", secret_file.to_str().unwrap()],
        &extra.iter().map(String::as_str).collect::<Vec<_>>(),
    ]
    .concat();
    let server =
        if logged { Server::start_logged(ADMIN_TOKEN, &args) } else { Server::start(ADMIN_TOKEN, &args) };
    HttpsHook { hook, server, _pki: pki }
}

impl HttpsHook {
    /// Reports a burst from `ip` that raises an alert.
    async fn burst(&self, ip: &str) {
        post(&format!("{}/v1/burst/report", self.server.internal_url), json!({ "entries": [entry(ip, 6)] }))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_posts_alerts_to_an_https_webhook_it_trusts_through_the_ca_flag() {
    let https =
        https_hook(|pki| vec!["--webhook-ca-file".into(), pki.ca_file().to_str().unwrap().into()], false)
            .await;
    https.burst("192.0.2.45").await;
    eventually("the alert over https", || https.hook.accepted().len() == 1).await;
    let received = &https.hook.accepted()[0];
    let (headers, body) = (&received.headers, &received.body);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let signature = headers[SIGNATURE_HEADER].to_str().unwrap();
    assert!(verify_signature(WEBHOOK_SECRET.as_bytes(), signature, body, now, 300).is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_webhook_with_an_untrusted_certificate_fails_with_the_cause_logged() {
    // No --webhook-ca-file: the built-in roots do not know the test CA.
    let https = https_hook(|_| vec!["--log-format".into(), "json".into()], true).await;
    https.burst("192.0.2.46").await;
    eventually("the failed delivery in the log", || https.server.log().contains("webhook delivery failed"))
        .await;
    let log = https.server.log();
    assert!(log.contains("invalid peer certificate: UnknownIssuer"), "{log}");
    assert!(log.contains(r#""reason":"tls""#), "{log}");
    assert!(!log.contains("/hook"), "the webhook's path stays out of the log: {log}");
    let metrics = reqwest::get(format!("{}/metrics", https.server.url)).await.unwrap().text().await.unwrap();
    // Every attempt fails the same way (the outbox retries it): at least the logged one.
    assert!(metric_value(&metrics, r#"portcullis_burst_alerts_total{result="failed"}"#) >= 1, "{metrics}");
    assert!(https.hook.requests().is_empty(), "no request gets past the TLS handshake");
}
