//! Requests whose keys must be fetched: pause, parking, resume; frames that arrive
//! while a request is paused; the host calls of the cached-token path.

use proxy_wasm::types::Action;
use serde_json::{json, Value};

use super::*;

fn remote_keys_config() -> Value {
    json!({
        "realm": "unit",
        "providers": { "test": {
            "issuer": ISSUER,
            "remoteJwks": { "cluster": "idp", "authority": "idp", "path": "/jwks", "timeoutMs": 500 }
        } },
        "rules": [ { "name": "api", "match": { "pathPrefix": "/api/" }, "requires": { "provider": "test" } } ]
    })
}

#[test]
fn request_waiting_for_keys_is_held_whatever_frame_arrives_and_resumed_when_they_come() {
    let mut w = Worker::start(remote_keys_config());
    let auth = bearer(&token("alice"));
    let (id, action) = w.request("/api/x", &[("authorization", &auth)], false);
    assert_eq!(action, Action::Pause, "no keys yet: the request waits for the fetch");
    let fetch = w.last_call();
    assert_eq!((fetch.cluster.as_str(), fetch.path.as_str(), fetch.context), ("idp", "/jwks", id));
    // Body and trailers while the request waits: all held.
    assert_eq!(w.body(id, 10, false), Action::Pause);
    assert_eq!(w.body(id, 0, true), Action::Pause);
    assert_eq!(w.trailers(id), Action::Pause);
    assert_eq!(w.host.resumes_of(id), 0);

    w.answer(&fetch, "200", FIXTURE_JWKS.as_bytes());
    assert_eq!(w.host.resumes_of(id), 1, "the keys came: the request goes on");
    assert!(w.host.replies_on(id).is_empty());
    // Released: later frames pass.
    assert_eq!(w.body(id, 0, true), Action::Continue);
    assert_eq!(w.trailers(id), Action::Continue);
}

#[test]
fn second_request_parks_during_the_fetch_and_is_decided_when_it_ends() {
    let mut w = Worker::start(remote_keys_config());
    let auth = bearer(&token("alice"));
    let (first, _) = w.request("/api/x", &[("authorization", &auth)], true);
    let fetch = w.last_call();
    let (second, action) = w.request("/api/y", &[("authorization", &auth)], true);
    assert_eq!(action, Action::Pause, "parked behind the fetch in flight");
    assert_eq!(w.call_count(), 1, "one fetch for both requests");
    assert_eq!(w.trailers(second), Action::Pause, "a parked request is held");

    w.answer(&fetch, "200", FIXTURE_JWKS.as_bytes());
    assert_eq!(w.host.resumes_of(first), 1);
    assert_eq!(w.host.resumes_of(second), 1, "the parked request is decided on its own context");
}

#[test]
fn parked_request_whose_client_left_is_not_resumed() {
    let mut w = Worker::start(remote_keys_config());
    let auth = bearer(&token("alice"));
    let (first, _) = w.request("/api/x", &[("authorization", &auth)], true);
    let fetch = w.last_call();
    let (second, _) = w.request("/api/y", &[("authorization", &auth)], true);
    w.end(second);
    w.answer(&fetch, "200", FIXTURE_JWKS.as_bytes());
    assert_eq!(w.host.resumes_of(first), 1);
    assert_eq!(w.host.resumes_of(second), 0);
}

#[test]
fn failed_fetch_denies_the_waiting_request_with_keys_unavailable() {
    let mut w = Worker::start(remote_keys_config());
    let auth = bearer(&token("alice"));
    let (id, _) = w.request("/api/x", &[("authorization", &auth)], true);
    let fetch = w.last_call();
    w.fail(&fetch);
    assert_eq!(w.host.resumes_of(id), 0);
    let replies = w.host.replies_on(id);
    assert_eq!(replies.len(), 1, "one local reply");
    assert_ne!(replies.first().map(|r| r.status), Some(200));
}

/// Every host call of a request whose token is in the verified-token cache, from its
/// headers to its release (inline keys, no stateful checks). The list is the budget:
/// a new per-request host call fails this test.
#[test]
fn cached_token_request_makes_a_fixed_set_of_host_calls() {
    let mut w = Worker::start(inline_keys_config());
    let auth = bearer(&token("alice"));
    let (first, action) = w.request("/api/x", &[("authorization", &auth)], true);
    assert_eq!(action, Action::Continue);
    assert!(w.host.replies_on(first).is_empty());
    w.host.clear_log();
    let (_, action) = w.request("/api/x", &[("authorization", &auth)], true);
    assert_eq!(action, Action::Continue);
    let log = w.host.log.borrow().clone();
    // The counters: the provider's `allowed`, `requests.allowed` and the rule's `allowed`.
    assert_eq!(
        log,
        vec![
            "get_request_headers",
            "get_current_time",
            "increment_metric",
            "increment_metric",
            "increment_metric"
        ],
        "host calls of one cached-token request"
    );
}
