//! The signature check's host side: the body is buffered before the decision (every
//! frame held until then, trailers included), a body over the cap is refused with 413,
//! the signer reaches the upstream, and the replay guard in shared data refuses a
//! second use of a message id; under `replay: global` the request is held while its id
//! is claimed at the control plane, whose answer (or silence) decides.

use base64::Engine as _;
use portcullis_core::signature::webhook::sign;
use proxy_wasm::types::Action;
use serde_json::{json, Value};

use super::{Worker, NOW_MS};

const SECRET: [u8; 24] = [0x42; 24];

fn config() -> Value {
    let secret = format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(SECRET));
    json!({
        "realm": "unit",
        "signatureKeys": [ { "id": "hooks", "owner": "billing", "secrets": [ { "secret": secret } ] } ],
        "rules": [
            { "name": "hooks", "match": { "pathPrefix": "/hooks/" }, "requires": "none",
              "signatures": { "schemes": ["standardWebhooks"], "maxBodyBytes": 64 } },
            { "name": "site", "match": { "pathPrefix": "/" }, "requires": "none" }
        ]
    })
}

/// A webhook request whose headers arrived (more frames follow), signed over `signed_body`.
fn webhook(w: &mut Worker, id: &str, signed_body: &[u8]) -> (u32, Action) {
    let ts = (NOW_MS / 1000).to_string();
    let signature = sign(&SECRET, id, NOW_MS / 1000, signed_body).unwrap();
    let headers = [
        (":method", "POST"),
        (":scheme", "https"),
        ("webhook-id", id),
        ("webhook-timestamp", ts.as_str()),
        ("webhook-signature", signature.as_str()),
        ("x-portcullis-signature-key", "forged"),
    ];
    w.request("/hooks/in", &headers, false)
}

fn send_body(w: &mut Worker, id: u32, body: &[u8]) {
    w.host.request_bodies.borrow_mut().insert(id, body.to_vec());
}

fn header(w: &Worker, id: u32, name: &str) -> Option<String> {
    w.host
        .request_headers
        .borrow()
        .get(&id)
        .and_then(|h| h.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone()))
}

#[test]
fn a_signed_request_is_held_until_its_body_is_in_and_passes_with_the_signer_upstream() {
    let mut w = Worker::start(config());
    let body = br#"{"paid":true}"#;
    let (id, action) = webhook(&mut w, "msg_1", body);
    assert_eq!(action, Action::Pause, "nothing decided before the body");
    send_body(&mut w, id, &body[..5]);
    assert_eq!(w.body(id, 5, false), Action::Pause);
    send_body(&mut w, id, body);
    assert_eq!(w.body(id, body.len(), true), Action::Continue);
    assert_eq!(header(&w, id, "x-portcullis-signature-key").as_deref(), Some("hooks"));
    assert_eq!(header(&w, id, "x-portcullis-signature-owner").as_deref(), Some("billing"));

    // The same message id again: refused, and never released by later frames.
    let (again, _) = webhook(&mut w, "msg_1", body);
    send_body(&mut w, again, body);
    assert_eq!(w.body(again, body.len(), true), Action::Pause);
    assert_eq!(w.host.replies_on(again).iter().map(|r| r.status).collect::<Vec<_>>(), vec![401]);
    assert_eq!(w.host.counter("portcullis.signature.refused.replayed"), 1);
}

#[test]
fn trailers_end_the_body_and_a_refused_request_stays_held() {
    let mut w = Worker::start(config());
    let (id, _) = webhook(&mut w, "msg_2", b"signed body");
    send_body(&mut w, id, b"other body!");
    assert_eq!(w.body(id, 11, false), Action::Pause);
    assert_eq!(w.trailers(id), Action::Pause, "decided on the buffered body: refused");
    assert_eq!(w.host.replies_on(id).iter().map(|r| r.status).collect::<Vec<_>>(), vec![401]);
    assert_eq!(w.body(id, 11, true), Action::Pause, "a later frame does not release it");
    assert_eq!(w.trailers(id), Action::Pause);
    assert_eq!(w.host.resumes_of(id), 0);

    let (ok, _) = webhook(&mut w, "msg_3", b"signed body");
    send_body(&mut w, ok, b"signed body");
    assert_eq!(w.body(ok, 11, false), Action::Pause);
    assert_eq!(w.trailers(ok), Action::Continue);
}

#[test]
fn a_body_over_the_cap_is_refused_with_413_before_the_end_of_the_stream() {
    let mut w = Worker::start(config());
    let big = vec![b'x'; 65];
    let (id, _) = webhook(&mut w, "msg_4", &big);
    send_body(&mut w, id, &big);
    assert_eq!(w.body(id, big.len(), false), Action::Pause);
    assert_eq!(w.host.replies_on(id).iter().map(|r| r.status).collect::<Vec<_>>(), vec![413]);
    assert_eq!(w.body(id, big.len(), true), Action::Pause);
}

fn global_config(on_unavailable: &str) -> Value {
    let mut config = config();
    config["controlPlane"] = super::control_plane();
    config["rules"][0]["signatures"]["replay"] = json!("global");
    config["rules"][0]["signatures"]["onReplayGuardUnavailable"] = json!(on_unavailable);
    config
}

/// A webhook whose whole body arrived: (context, the claim call it made).
fn claimed(w: &mut Worker, id: &str) -> (u32, super::Dispatched) {
    let body = br#"{"paid":true}"#;
    let (ctx, _) = webhook(w, id, body);
    send_body(w, ctx, body);
    assert_eq!(w.body(ctx, body.len(), true), Action::Pause, "held for the claim");
    let call = w.last_call();
    assert_eq!((call.context, call.path.as_str()), (ctx, "/v1/signature-replay"));
    let claim: Value = serde_json::from_slice(call.body.as_deref().unwrap()).unwrap();
    assert_eq!(claim["id"].as_str().map(str::len), Some(64), "a hash, not the client's id");
    assert!(!call.body.as_deref().unwrap().windows(id.len()).any(|w| w == id.as_bytes()));
    (ctx, call)
}

#[test]
fn global_replay_claims_each_id_at_the_control_plane_holding_the_request_meanwhile() {
    let mut w = Worker::start(global_config("deny"));
    let (first, call) = claimed(&mut w, "msg_g1");
    // Trailers or another frame while the claim is out do not release the request.
    assert_eq!(w.trailers(first), Action::Pause);
    assert_eq!(w.body(first, 13, true), Action::Pause);
    assert_eq!(w.host.resumes_of(first), 0);
    w.answer(&call, "200", br#"{"fresh":true}"#);
    assert_eq!(w.host.resumes_of(first), 1);
    assert_eq!(header(&w, first, "x-portcullis-signature-key").as_deref(), Some("hooks"));

    // The control plane saw the id before (another Envoy): a replay.
    let (second, call) = claimed(&mut w, "msg_g1");
    w.answer(&call, "200", br#"{"fresh":false}"#);
    assert_eq!(w.host.replies_on(second).iter().map(|r| r.status).collect::<Vec<_>>(), vec![401]);
    assert_eq!(w.host.resumes_of(second), 0);

    // No answer: 503, never released.
    let (third, call) = claimed(&mut w, "msg_g2");
    w.fail(&call);
    assert_eq!(w.host.replies_on(third).iter().map(|r| r.status).collect::<Vec<_>>(), vec![503]);
    assert_eq!(w.host.resumes_of(third), 0);
    // A garbled answer is no answer.
    let (fourth, call) = claimed(&mut w, "msg_g3");
    w.answer(&call, "200", b"fresh");
    assert_eq!(w.host.replies_on(fourth).iter().map(|r| r.status).collect::<Vec<_>>(), vec![503]);
}

#[test]
fn global_replay_may_let_requests_through_when_the_control_plane_does_not_answer() {
    let mut w = Worker::start(global_config("allow"));
    let (ctx, call) = claimed(&mut w, "msg_a1");
    w.fail(&call);
    assert_eq!(w.host.resumes_of(ctx), 1);
    assert!(w.host.replies_on(ctx).is_empty());
    assert_eq!(w.host.counter("portcullis.signature.replay_guard_unavailable"), 1);
}
