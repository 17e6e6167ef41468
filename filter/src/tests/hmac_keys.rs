//! The control plane's HMAC keys in the filter: 503 until the first fetch, one fetch
//! at a time on the root tick, a new key set takes effect at once (a removed key stops
//! verifying), an invalid set is refused, and a copy too old fails closed unless the
//! rule says `onStale: allow`.

use base64::Engine as _;
use portcullis_core::signature::webhook::sign;
use proxy_wasm::types::Action;
use serde_json::{json, Value};

use super::*;

const SECRET: [u8; 32] = [0x24; 32];

fn config(on_stale: &str) -> Value {
    json!({
        "realm": "unit",
        "controlPlane": control_plane(),
        "hmacKeys": { "pollIntervalMs": 1000, "maxStalenessSeconds": 5 },
        "rules": [
            { "name": "hooks", "match": { "pathPrefix": "/hooks/" }, "requires": "none", "onStale": on_stale,
              "signatures": { "schemes": ["standardWebhooks"], "keys": ["hooks"] } }
        ]
    })
}

fn key_set(version: u64, secret: Option<&str>) -> Vec<u8> {
    let keys = match secret {
        Some(s) => json!([ { "id": "hooks", "owner": "billing", "secrets": [ { "secret": s } ] } ]),
        None => json!([]),
    };
    serde_json::to_vec(&json!({ "version": version, "keys": keys })).unwrap()
}

fn whsec() -> String {
    format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(SECRET))
}

/// A signed webhook with its body; the status of the reply (200: let through).
fn webhook(w: &mut Worker, id: &str) -> u16 {
    let body = b"{}";
    let now = w.host.now_ms.get() / 1000;
    let ts = now.to_string();
    let signature = sign(&SECRET, id, now, body).unwrap();
    let headers = [
        (":method", "POST"),
        (":scheme", "https"),
        ("webhook-id", id),
        ("webhook-timestamp", ts.as_str()),
        ("webhook-signature", signature.as_str()),
    ];
    let (ctx, _) = w.request("/hooks/in", &headers, false);
    w.host.request_bodies.borrow_mut().insert(ctx, body.to_vec());
    match w.body(ctx, body.len(), true) {
        Action::Continue => 200,
        _ => w.host.replies_on(ctx).first().map_or(0, |r| r.status),
    }
}

#[test]
fn signed_routes_answer_503_until_the_first_fetch_then_follow_the_key_set() {
    let mut w = Worker::start(config("deny"));
    let status = webhook(&mut w, "m1");
    assert_eq!(status, 503, "{:?}", w.host.counters_starting("portcullis"));
    assert_eq!(w.host.counter("portcullis.rule.denied.signature_keys_unavailable.hooks"), 1);
    assert_eq!(w.call_count(), 0, "no call on the request path");

    w.tick();
    let fetch = w.last_call();
    assert_eq!((fetch.context, fetch.path.as_str()), (ROOT, "/v1/hmac-keys"));
    w.tick();
    assert_eq!(w.call_count(), 1, "one fetch at a time");
    w.answer(&fetch, "200", &key_set(1, Some(&whsec())));
    assert_eq!(webhook(&mut w, "m2"), 200);

    // The key is revoked: the next fetch removes it.
    w.host.advance(1_000);
    w.tick();
    let next = w.last_call();
    assert_ne!(next.token, fetch.token);
    w.answer(&next, "200", &key_set(2, None));
    assert_eq!(webhook(&mut w, "m3"), 401);
}

#[test]
fn an_invalid_key_set_is_refused_and_the_copy_kept() {
    let mut w = Worker::start(config("deny"));
    w.tick();
    let fetch = w.last_call();
    w.answer(&fetch, "200", &key_set(1, Some("whsec_c2hvcnQ=")));
    assert_eq!(webhook(&mut w, "m1"), 503, "never synced");
    assert_eq!(w.host.counter("portcullis.hmac_keys.set_invalid"), 1);
    w.host.advance(1_000);
    w.tick();
    let next = w.last_call();
    w.answer(&next, "200", &key_set(2, Some(&whsec())));
    assert_eq!(webhook(&mut w, "m2"), 200);
    w.host.advance(1_000);
    w.tick();
    let bad = w.last_call();
    w.answer(&bad, "200", b"{\"version\":3,\"keys\":[{\"id\":\"x y\",\"secrets\":[]}]}");
    assert_eq!(webhook(&mut w, "m3"), 200, "the previous copy still verifies");
}

fn stale_after_failures(on_stale: &str) -> u16 {
    let mut w = Worker::start(config(on_stale));
    w.tick();
    let fetch = w.last_call();
    w.answer(&fetch, "200", &key_set(1, Some(&whsec())));
    assert_eq!(webhook(&mut w, "m1"), 200);
    for _ in 0..7 {
        w.host.advance(1_000);
        w.tick();
        let call = w.last_call();
        if call.token != fetch.token {
            w.fail(&call);
        }
    }
    webhook(&mut w, "m2")
}

#[test]
fn a_copy_older_than_max_staleness_fails_closed_unless_the_rule_allows_it() {
    assert_eq!(stale_after_failures("deny"), 503);
    assert_eq!(stale_after_failures("allow"), 200);
}
