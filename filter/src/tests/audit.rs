//! Decision records: noted while the request is decided, built when it ends, batched
//! by the worker holding the lease on its tick, resent with the same id until the
//! control plane acknowledges them, dropped oldest first (and counted) when the
//! buffer is full.

use portcullis_core::audit::{Decision, DecisionBatch, SubjectKind};
use portcullis_core::fleet::FleetCredential;
use serde_json::{json, Value};

use super::*;

fn config(audit: Value) -> Value {
    let mut config = inline_keys_config();
    config["controlPlane"] = control_plane();
    config["audit"] = audit;
    config
}

fn batch_of(call: &Dispatched) -> DecisionBatch {
    serde_json::from_slice(call.body.as_deref().expect("a body")).expect("a decision batch")
}

#[test]
fn decisions_are_batched_resent_with_their_id_and_acknowledged() {
    let mut w = Worker::start(config(json!({ "allowSampleRate": 1, "batchSize": 2, "retryInitialMs": 100 })));
    let (denied, _) = w.request("/api/x?secret=1", &[("x-request-id", "req-1")], true);
    assert_eq!(w.host.replies_on(denied)[0].status, 401);
    let bearer = bearer(&token("alice"));
    let (allowed, action) =
        w.request("/api/y", &[("authorization", &bearer), ("x-request-id", "req-2")], true);
    assert_eq!(action, Action::Continue);
    assert_eq!(w.call_count(), 0, "nothing leaves on the request path");
    w.log(denied, 401);
    w.log(allowed, 200);
    assert_eq!(w.host.counter("portcullis.audit.recorded"), 2);

    w.tick();
    let call = w.last_call();
    assert_eq!((call.context, call.path.as_str()), (ROOT, "/v1/audit/decisions"));
    let batch = batch_of(&call);
    let [deny, allow] = &batch.decisions[..] else { panic!("two decisions: {batch:?}") };
    assert_eq!((deny.decision, deny.reason.as_deref()), (Decision::Deny, Some("missing_token")));
    assert_eq!((deny.request_id.as_deref(), deny.path.as_deref()), (Some("req-1"), Some("/api/x")));
    assert_eq!(
        (deny.status, deny.rule.as_deref(), deny.method.as_deref()),
        (Some(401), Some("api"), Some("GET"))
    );
    let key = FleetCredential::new("unit-test-fleet-credential-0123456789abcdef").unwrap().feed_key();
    assert_eq!(deny.client, Some(key.client_address("192.0.2.7")), "the address is hashed");
    assert_eq!((allow.decision, allow.subject.as_deref()), (Decision::Allow, Some("alice")));
    assert_eq!(allow.subject_kind, Some(SubjectKind::Jwt));

    // No answer: kept, retried after the backoff with the same id.
    w.fail(&call);
    assert_eq!(w.host.counter("portcullis.audit.send_failed"), 1);
    w.tick();
    assert_eq!(w.call_count(), 1, "not before the backoff");
    w.host.advance(100);
    w.tick();
    let again = w.last_call();
    assert_eq!((w.call_count(), batch_of(&again)), (2, batch.clone()));
    w.answer(&again, "200", br#"{"stored":2}"#);
    assert_eq!(w.host.counter("portcullis.audit.sent"), 2);
    w.host.advance(5_000);
    w.tick();
    assert_eq!(w.call_count(), 2, "an acknowledged batch is not sent again");

    // A batch refused as invalid would be refused forever: dropped, counted.
    let (id, _) = w.request("/api/z", &[], true);
    w.log(id, 401);
    w.host.advance(5_000);
    w.tick();
    w.answer(&w.last_call(), "400", b"{}");
    assert_eq!(w.host.counter("portcullis.audit.dropped"), 1);
    w.host.advance(60_000);
    w.tick();
    assert_eq!(w.call_count(), 3, "not sent again");
}

#[test]
fn allows_are_sampled_and_denials_always_recorded() {
    let mut w = Worker::start(config(json!({ "allowSampleRate": 0 })));
    let bearer = bearer(&token("alice"));
    for _ in 0..5 {
        let (id, _) = w.request("/api/y", &[("authorization", &bearer)], true);
        w.log(id, 200);
    }
    let (denied, _) = w.request("/api/y", &[], true);
    w.log(denied, 401);
    assert_eq!(w.host.counter("portcullis.audit.sampled_out"), 5);
    assert_eq!(w.host.counter("portcullis.audit.recorded"), 1);
    w.host.advance(1_000);
    w.tick();
    assert_eq!(batch_of(&w.last_call()).decisions.len(), 1);
}

#[test]
fn a_full_buffer_drops_the_oldest_and_counts_them_exactly() {
    let mut w = Worker::start(config(json!({ "bufferEvents": 3, "batchSize": 1, "allowSampleRate": 1 })));
    w.tick();
    let mut first = None;
    for i in 0..6 {
        let (id, _) = w.request("/api/y", &[("x-request-id", &format!("r{i}"))], true);
        assert_eq!(w.host.replies_on(id)[0].status, 401, "requests are decided as usual");
        w.log(id, 401);
        if i == 0 {
            w.tick();
            first = Some(w.last_call());
        }
    }
    w.tick();
    // The batch in flight (r0) is kept; r1 to r3 made way for r4 and r5.
    assert_eq!(w.host.counter("portcullis.audit.dropped"), 3);
    let first = first.unwrap();
    w.answer(&first, "200", b"{}");
    w.tick();
    let ids: Vec<_> =
        batch_of(&w.last_call()).decisions.iter().map(|d| d.request_id.clone().unwrap()).collect();
    assert_eq!(ids, ["r4"]);
}

#[test]
fn a_worker_stages_at_most_the_buffer_and_a_shadow_denial_is_recorded_as_one() {
    let mut config = config(json!({ "bufferEvents": 2, "allowSampleRate": 0 }));
    config["rules"][0]["shadow"] = json!(true);
    let mut w = Worker::start(config);
    for i in 0..4 {
        let (id, action) = w.request("/api/y", &[("x-request-id", &format!("s{i}"))], true);
        assert_eq!(action, Action::Continue, "a shadow rule lets the request go");
        w.log(id, 200);
    }
    assert_eq!(w.host.counter("portcullis.audit.dropped"), 2, "the two oldest, before any tick");
    assert_eq!(w.host.counter("portcullis.audit.sampled_out"), 0, "a shadow denial is not an allow");
    w.host.advance(1_000);
    w.tick();
    let batch = batch_of(&w.last_call());
    let ids: Vec<_> = batch.decisions.iter().map(|d| d.request_id.clone().unwrap()).collect();
    assert_eq!(ids, ["s2", "s3"]);
    assert!(batch.decisions.iter().all(|d| d.decision == Decision::ShadowDeny && d.status == Some(200)));
    assert_eq!(w.host.counter("portcullis.audit.dropped"), 2);
}
