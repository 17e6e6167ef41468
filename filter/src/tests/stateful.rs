//! Requests that wait for the control plane: lease spending and refill, call
//! deadlines, the circuit breaker, and answers that arrive after the request ended.

use portcullis_core::wire::{RateLimitBatch, RateLimitOp, RateLimitReply, RateLimitResult, RATE_LIMIT_PATH};
use proxy_wasm::types::Action;
use serde_json::{json, Value};

use super::*;

fn limited_config(mode: &str, on_error: &str) -> Value {
    let mut config = inline_keys_config();
    config["controlPlane"] = control_plane();
    config["rateLimits"] = json!([
        { "name": "per-user", "limit": 100, "unit": "minute", "descriptors": ["claim:sub"],
          "mode": mode, "onError": on_error }
    ]);
    config
}

fn grant(units: u64) -> Vec<u8> {
    grant_until(units, NOW_MS + 60_000)
}

/// A reply granting `units` leased until `expires_at_ms`.
fn grant_until(units: u64, expires_at_ms: u64) -> Vec<u8> {
    let result = RateLimitResult {
        granted: units,
        expires_at_ms,
        remaining: 50,
        reset_after_ms: 1_000,
        retry_after_ms: 0,
    };
    serde_json::to_vec(&RateLimitReply { results: vec![result] }).unwrap()
}

fn lease_asks(w: &Worker) -> usize {
    w.host
        .calls_to(RATE_LIMIT_PATH)
        .iter()
        .filter_map(|c| c.body.as_ref().and_then(|b| serde_json::from_slice::<RateLimitBatch>(b).ok()))
        .filter(|b| b.asks.iter().any(|a| matches!(a.op, RateLimitOp::Lease { .. })))
        .count()
}

/// A request that needs a lease: queued for the root context, which makes the call.
fn request_needing_a_call(w: &mut Worker, sub: &str) -> u32 {
    let auth = bearer(&token(sub));
    let (id, action) = w.request("/api/x", &[("authorization", &auth)], true);
    assert_eq!(action, Action::Pause, "the request waits for the control plane");
    w.queue_ready();
    id
}

#[test]
fn lease_is_asked_once_spent_locally_and_asked_again_when_empty() {
    let mut w = Worker::start(limited_config("lease", "deny"));
    let first = request_needing_a_call(&mut w, "alice");
    let call = w.last_call();
    assert_eq!(call.context, ROOT, "the root context owns the call, so its answer has a receiver");
    assert_eq!(call.timeout.as_millis(), 200, "the control plane's timeoutMs");
    assert_eq!(lease_asks(&w), 1);
    w.answer(&call, "200", &grant(3));
    assert_eq!(w.host.resumes_of(first), 1);

    // Two more units in the lease: spent from shared data, no call.
    for _ in 0..2 {
        let auth = bearer(&token("alice"));
        let (_, action) = w.request("/api/x", &[("authorization", &auth)], true);
        assert_eq!(action, Action::Continue);
    }
    assert_eq!(lease_asks(&w), 1, "the lease served both");

    // The lease is empty: the next request asks again.
    let fourth = request_needing_a_call(&mut w, "alice");
    assert_eq!(lease_asks(&w), 2, "refill");
    let call = w.last_call();
    w.answer(&call, "200", &grant(1));
    assert_eq!(w.host.resumes_of(fourth), 1);
}

#[test]
fn requests_on_one_counter_share_the_lease_call_in_flight() {
    let mut w = Worker::start(limited_config("lease", "deny"));
    let first = request_needing_a_call(&mut w, "alice");
    let second = request_needing_a_call(&mut w, "alice");
    assert_eq!(lease_asks(&w), 1, "the second request waits for the first one's call");
    let call = w.last_call();
    w.answer(&call, "200", &grant(5));
    assert_eq!(w.host.resumes_of(first), 1);
    assert_eq!(w.host.resumes_of(second), 1);
}

#[test]
fn unanswered_call_past_its_deadline_applies_the_failure_mode() {
    let mut w = Worker::start(limited_config("lease", "deny"));
    let id = request_needing_a_call(&mut w, "alice");
    w.host.advance(100);
    w.tick();
    assert!(w.host.replies_on(id).is_empty(), "before the deadline the request waits");
    w.host.advance(5_000);
    w.tick();
    let replies = w.host.replies_on(id);
    assert_eq!(replies.iter().map(|r| r.status).collect::<Vec<_>>(), vec![503], "onError: deny");
    assert_eq!(w.host.resumes_of(id), 0);
}

#[test]
fn unanswered_call_with_on_error_allow_lets_the_request_go_at_its_deadline() {
    let mut w = Worker::start(limited_config("lease", "allow"));
    let id = request_needing_a_call(&mut w, "alice");
    w.host.advance(5_000);
    w.tick();
    assert_eq!(w.host.resumes_of(id), 1);
    assert!(w.host.replies_on(id).is_empty());
}

#[test]
fn failed_call_opens_the_circuit_and_later_requests_skip_the_control_plane() {
    let mut w = Worker::start(limited_config("strict", "allow"));
    let first = request_needing_a_call(&mut w, "alice");
    let call = w.last_call();
    w.answer(&call, "500", b"");
    assert_eq!(w.host.resumes_of(first), 1, "onError: allow");
    let calls = w.call_count();

    // Within the open circuit: decided at once under the failure mode, no call.
    let auth = bearer(&token("bob"));
    let (_, action) = w.request("/api/x", &[("authorization", &auth)], true);
    assert_eq!(action, Action::Continue);
    assert_eq!(w.call_count(), calls, "no call while the circuit is open");

    // After it: the control plane is asked again.
    w.host.advance(1_500);
    request_needing_a_call(&mut w, "carol");
    assert_eq!(w.call_count(), calls + 1);
}

#[test]
fn lease_answer_after_the_request_ended_still_fills_the_lease() {
    let mut w = Worker::start(limited_config("lease", "deny"));
    let gone = request_needing_a_call(&mut w, "alice");
    let call = w.last_call();
    w.end(gone);
    w.answer(&call, "200", &grant(2));
    assert_eq!(w.host.resumes_of(gone), 0, "nobody to resume");
    assert!(w.host.replies_on(gone).is_empty());
    // The units came anyway: the next request spends one without a call.
    let auth = bearer(&token("alice"));
    let (_, action) = w.request("/api/x", &[("authorization", &auth)], true);
    assert_eq!(action, Action::Continue);
    assert_eq!(lease_asks(&w), 1);
}

#[test]
fn trailers_and_body_of_a_request_waiting_for_a_lease_are_held() {
    let mut w = Worker::start(limited_config("lease", "deny"));
    let auth = bearer(&token("alice"));
    let (id, action) = w.request("/api/x", &[("authorization", &auth)], false);
    assert_eq!(action, Action::Pause);
    assert_eq!(w.body(id, 5, false), Action::Pause);
    w.queue_ready();
    assert_eq!(w.trailers(id), Action::Pause);
    let call = w.last_call();
    w.answer(&call, "200", &grant(2));
    assert_eq!(w.host.resumes_of(id), 1);
    assert_eq!(w.trailers(id), Action::Continue);
}

fn releases(w: &Worker) -> Vec<u64> {
    w.host
        .calls_to(RATE_LIMIT_PATH)
        .iter()
        .filter_map(|c| c.body.as_ref().and_then(|b| serde_json::from_slice::<RateLimitBatch>(b).ok()))
        .flat_map(|b| b.asks)
        .filter_map(|a| if let RateLimitOp::Release { units } = a.op { Some(units) } else { None })
        .collect()
}

/// Lease asks after the first call (the tick's renewals): what each gave back.
fn renewals(w: &Worker) -> Vec<u64> {
    w.host
        .calls_to(RATE_LIMIT_PATH)
        .iter()
        .skip(1)
        .filter_map(|c| c.body.as_ref().and_then(|b| serde_json::from_slice::<RateLimitBatch>(b).ok()))
        .flat_map(|b| b.asks)
        .filter_map(|a| if let RateLimitOp::Lease { release, .. } = a.op { Some(release) } else { None })
        .collect()
}

#[test]
fn a_lease_spent_from_lately_is_renewed_on_the_tick_and_an_idle_one_released() {
    let mut config = limited_config("lease", "deny");
    config["rateLimits"][0]["leaseTtlMs"] = json!(60_000);
    let mut w = Worker::start(config);
    let first = request_needing_a_call(&mut w, "alice");
    let call = w.last_call();
    w.answer(&call, "200", &grant(100));
    assert_eq!(w.host.resumes_of(first), 1);
    let auth = bearer(&token("alice"));

    // Spent from in the last half of the TTL: near expiry the tick asks for a new lease
    // while the old one (98 units: slot and slice) keeps serving.
    w.host.advance(45_000);
    assert_eq!(w.request("/api/x", &[("authorization", &auth)], true).1, Action::Continue);
    w.host.advance(15_000 - 400);
    let calls = w.call_count();
    w.tick();
    assert_eq!(w.call_count(), calls + 1, "one batch");
    assert_eq!(renewals(&w), vec![0]);
    assert!(releases(&w).is_empty(), "renewed, not released");
    assert_eq!(w.request("/api/x", &[("authorization", &auth)], true).1, Action::Continue);
    assert_eq!(w.call_count(), calls + 1, "the old lease serves while the renewal is out");
    let renewal = w.last_call();
    w.answer(&renewal, "200", &grant_until(100, NOW_MS + 120_000));

    // The renewed lease replaced the old one, whose 97 unspent units (49 in the slot,
    // 48 in the slice the last request took) go back on the next tick. Past the old
    // lease's expiry, requests spend from the new one: no call.
    w.tick();
    assert_eq!(releases(&w), vec![49, 48]);
    let released = w.last_call();
    let results = vec![RateLimitResult::default(); 2];
    w.answer(&released, "200", &serde_json::to_vec(&RateLimitReply { results }).unwrap());
    w.host.advance(1_000);
    let calls = w.call_count();
    for _ in 0..10 {
        assert_eq!(w.request("/api/x", &[("authorization", &auth)], true).1, Action::Continue);
    }
    assert_eq!(w.call_count(), calls, "the renewed lease served them");
    assert_eq!(w.host.counter("portcullis.ratelimit.per-user.allowed"), 13);

    // Not spent from in the last 30 s before its expiry: released, not renewed.
    w.host.advance(59_000);
    w.tick();
    assert_eq!(renewals(&w), vec![0], "no second renewal");
    assert_eq!(releases(&w), vec![49, 48, 90], "then 100 - 10 spent");
}

#[test]
fn two_workers_spending_from_one_lease_renew_it_once_and_neither_releases_it_meanwhile() {
    let mut config = limited_config("lease", "deny");
    config["rateLimits"][0]["leaseTtlMs"] = json!(60_000);
    let mut a = Worker::start(config.clone());
    let mut b = Worker::start_beside(config, &a);
    let first = request_needing_a_call(&mut a, "alice");
    let call = a.last_call();
    a.answer(&call, "200", &grant(100));
    assert_eq!(a.host.resumes_of(first), 1);
    let auth = bearer(&token("alice"));
    assert_eq!(b.request("/api/x", &[("authorization", &auth)], true).1, Action::Continue);
    assert_eq!(b.call_count(), 0, "the second worker spends the same lease");

    // Both spent from it lately; near expiry both ticks run, and one renewal goes out.
    for w in [&mut a, &mut b] {
        w.host.advance(45_000);
        assert_eq!(w.request("/api/x", &[("authorization", &auth)], true).1, Action::Continue);
        w.host.advance(15_000 - 400);
    }
    a.tick();
    b.tick();
    assert_eq!(renewals(&a), vec![0], "the first tick claims the renewal");
    assert_eq!(b.call_count(), 0, "the other worker neither renews nor releases the lease");
    b.tick();
    assert_eq!(b.call_count(), 0, "nor on its next tick");
    assert_eq!(b.request("/api/x", &[("authorization", &auth)], true).1, Action::Continue);
    assert_eq!(b.call_count(), 0, "the old lease serves both workers meanwhile");

    a.answer(&a.last_call(), "200", &grant_until(100, NOW_MS + 120_000));
    // Past the old lease's expiry the second worker spends from the renewed one.
    b.host.advance(1_000);
    for _ in 0..5 {
        assert_eq!(b.request("/api/x", &[("authorization", &auth)], true).1, Action::Continue);
    }
    assert_eq!(lease_asks(&b), 0, "no lease asked by the second worker");
}

#[test]
fn a_worker_spends_its_slice_of_the_lease_without_host_calls_and_gives_it_back_before_expiry() {
    let mut w = Worker::start(limited_config("lease", "deny"));
    let first = request_needing_a_call(&mut w, "alice");
    let call = w.last_call();
    w.answer(&call, "200", &grant(100));
    assert_eq!(w.host.resumes_of(first), 1);

    // The first request took its unit and a slice of (100 - 1) / 2 = 49 units: the next
    // 49 requests on the counter read and write no shared data.
    w.host.clear_log();
    for _ in 0..49 {
        let auth = bearer(&token("alice"));
        let (_, action) = w.request("/api/x", &[("authorization", &auth)], true);
        assert_eq!(action, Action::Continue);
    }
    let shared_calls = w.host.log.borrow().iter().filter(|c| c.contains("shared_data")).count();
    assert_eq!(shared_calls, 0, "49 requests spent from the worker's slice");
    // The 51st request takes from the slot again (and a new slice), still without a call.
    let auth = bearer(&token("alice"));
    assert_eq!(w.request("/api/x", &[("authorization", &auth)], true).1, Action::Continue);
    assert!(w.host.log.borrow().iter().any(|c| c.contains("shared_data")));
    assert_eq!(lease_asks(&w), 1, "one lease served 51 requests");
    assert_eq!(w.host.counter("portcullis.ratelimit.per-user.allowed"), 51);

    // Near the lease's expiry the tick gives the slice back to the slot and releases
    // every unspent unit: 100 granted - 51 spent, none lost in the slice.
    w.tick();
    assert!(releases(&w).is_empty(), "far from expiry nothing is released");
    w.host.advance(60_000 - 400);
    w.tick();
    assert_eq!(releases(&w), vec![49], "slot and slice released together");
}
