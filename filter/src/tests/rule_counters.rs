//! Per-rule counters (`portcullis.rule.*.<rule>`): every final decision on a request a
//! rule matched is counted under that rule's name, stateful refusals included, whichever
//! context carries them out; decisions no rule took are counted under none.

use portcullis_core::wire::{LockoutReply, RateLimitReply, RateLimitResult};
use proxy_wasm::types::Action;
use serde_json::{json, Value};

use super::*;

/// A rule whose name has dots, under one strict rate limit and (on `/login`) a lockout.
fn config() -> Value {
    let mut config = inline_keys_config();
    config["rules"] = json!([
        { "name": "orders.v1", "match": { "pathPrefix": "/api/" }, "requires": { "provider": "test" } },
        { "name": "login", "match": { "path": "/login" }, "requires": "none" },
        { "name": "audit", "match": { "pathPrefix": "/audit/" }, "requires": { "provider": "test" },
          "shadow": true }
    ]);
    config["controlPlane"] = control_plane();
    config["rateLimits"] = json!([
        { "name": "per-user", "limit": 100, "unit": "minute", "descriptors": ["claim:sub"],
          "mode": "strict", "onError": "deny", "rules": ["orders.v1"] }
    ]);
    config["lockout"] = json!({ "routes": [{ "path": "/login" }], "account": "header:x-user" });
    config
}

fn strict_answer(granted: u64) -> Vec<u8> {
    let result = RateLimitResult {
        granted,
        expires_at_ms: 0,
        remaining: 0,
        reset_after_ms: 1_000,
        retry_after_ms: 1_000,
    };
    serde_json::to_vec(&RateLimitReply { results: vec![result] }).unwrap()
}

fn statuses(w: &Worker, id: u32) -> Vec<u16> {
    w.host.replies_on(id).iter().map(|r| r.status).collect()
}

/// A request whose stateful check needs the control plane: held, its call made by the
/// root context.
fn held_request(w: &mut Worker, path: &str, headers: &[(&str, &str)]) -> u32 {
    let (id, action) = w.request(path, headers, true);
    assert_eq!(action, Action::Pause, "the request waits for the control plane");
    w.queue_ready();
    id
}

#[test]
fn stateful_refusals_are_counted_under_the_rule_of_the_request() {
    let mut w = Worker::start(config());
    let auth = bearer(&token("alice"));
    let headers = [("authorization", auth.as_str())];

    let allowed = held_request(&mut w, "/api/x", &headers);
    let call = w.last_call();
    w.answer(&call, "200", &strict_answer(1));
    assert_eq!(w.host.resumes_of(allowed), 1);

    let limited = held_request(&mut w, "/api/x", &headers);
    let call = w.last_call();
    w.answer(&call, "200", &strict_answer(0));
    assert_eq!(statuses(&w, limited), vec![429]);

    // Refused by the failure mode once its call is overdue: carried out from the tick.
    let overdue = held_request(&mut w, "/api/x", &headers);
    w.host.advance(5_000);
    w.tick();
    assert_eq!(statuses(&w, overdue), vec![503]);

    assert_eq!(w.host.counter("portcullis.rule.allowed.orders.v1"), 1);
    assert_eq!(w.host.counter("portcullis.rule.denied.rate_limited.orders.v1"), 1);
    assert_eq!(w.host.counter("portcullis.rule.denied.rate_limit_unavailable.orders.v1"), 1);
    assert_eq!(
        w.host.counters_starting("portcullis.rule."),
        vec![
            "portcullis.rule.allowed.orders.v1",
            "portcullis.rule.denied.rate_limited.orders.v1",
            "portcullis.rule.denied.rate_limit_unavailable.orders.v1",
        ],
        "no placeholder rule name"
    );
    assert_eq!(w.host.counter("portcullis.requests.denied.rate_limited"), 1, "the totals still count");
}

#[test]
fn lockout_refusals_are_counted_under_the_login_rule() {
    let mut w = Worker::start(config());
    // No account to read: refused before the rules run, still counted under its rule.
    let (unreadable, _) = w.request("/login", &[], true);
    assert_eq!(statuses(&w, unreadable), vec![400]);

    // A locked account: refused when the control plane's answer comes.
    let locked = held_request(&mut w, "/login", &[("x-user", "carol")]);
    let call = w.last_call();
    let reply =
        LockoutReply { locked_for_ms: 60_000, subjects: vec![], reservation: None, retry_after_ms: 60_000 };
    w.answer(&call, "200", &serde_json::to_vec(&reply).unwrap());
    assert_eq!(statuses(&w, locked), vec![429]);

    assert_eq!(w.host.counter("portcullis.rule.denied.account_missing.login"), 1);
    assert_eq!(w.host.counter("portcullis.rule.denied.locked_out.login"), 1);
}

#[test]
fn shadow_rule_counts_what_it_would_deny_and_unmatched_requests_count_under_no_rule() {
    let mut config = config();
    config["onNoMatch"] = json!("deny");
    let mut w = Worker::start(config);
    let (shadowed, action) = w.request("/audit/x", &[], true);
    assert_eq!(action, Action::Continue, "a shadow rule lets the request through");
    assert!(w.host.replies_on(shadowed).is_empty());
    let (unmatched, _) = w.request("/elsewhere", &[], true);
    assert_eq!(statuses(&w, unmatched), vec![403]);

    assert_eq!(w.host.counter("portcullis.rule.shadow_denied.missing_token.audit"), 1);
    assert_eq!(w.host.counter("portcullis.requests.denied.no_matching_rule"), 1);
    assert_eq!(
        w.host.counters_starting("portcullis.rule."),
        vec!["portcullis.rule.shadow_denied.missing_token.audit"],
        "the unmatched request is under no rule"
    );
}
