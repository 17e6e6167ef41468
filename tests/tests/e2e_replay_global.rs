//! `replay: global` through two real Envoys sharing one real control plane: a signed
//! request's replay id is claimed there, so the same webhook sent to the second Envoy
//! is refused as `replayed`; with the control plane down a rule answers 503 with
//! `Retry-After` (`onReplayGuardUnavailable: deny`) or lets the request through
//! (`allow`). The claim is a pause point: replays ended by trailers or an empty DATA
//! frame are held until its answer and refused, and a stream reset before its body
//! ends claims nothing.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use portcullis_e2e::frames::{h2, http1_chunked_with_trailers, Ending};
use portcullis_e2e::signing::webhook;
use portcullis_e2e::{
    control_plane_section, ControlPlane, Envoy, EnvoyClusters, StoreKind, TestServer, Workdir,
};
use serde_json::{json, Value};

const SECRET: [u8; 24] = [0x5a; 24];

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn plugin_config() -> Value {
    let signatures = |on_unavailable: &str| json!({ "schemes": ["standardWebhooks"], "replay": "global", "onReplayGuardUnavailable": on_unavailable });
    json!({
        "realm": "e2e",
        "controlPlane": control_plane_section(500),
        "signatureKeys": [ { "id": "hooks", "secrets": [ { "secret": format!("whsec_{}", STANDARD.encode(SECRET)) } ] } ],
        "rules": [
            { "name": "strict", "match": { "pathPrefix": "/strict/" }, "requires": "none",
              "signatures": signatures("deny") },
            { "name": "lenient", "match": { "pathPrefix": "/lenient/" }, "requires": "none",
              "signatures": signatures("allow") },
            { "name": "open", "match": { "pathPrefix": "/" }, "requires": "none" }
        ]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_to_another_envoy_is_refused_and_an_unreachable_guard_follows_the_rule() {
    let dir = Workdir::new();
    let mut cp = ControlPlane::start(dir.path(), StoreKind::Memory).await;
    let server = TestServer::start(json!({"keys": []})).await;
    let clusters = EnvoyClusters::beside(server.port, &cp);
    let a = Envoy::start(dir.path(), &plugin_config(), &clusters).await;
    let b = Envoy::start(dir.path(), &plugin_config(), &clusters).await;
    let body = br#"{"type":"invoice.paid"}"#;

    let first = webhook("/strict/billing", &SECRET, "msg_1", now(), body);
    let answer = first.send(a.port).await;
    assert_eq!(answer.status, Some(200), "{answer:?}");
    let hits = server.hits();
    let replayed = first.send(b.port).await;
    assert_eq!((replayed.status, replayed.reason().as_str()), (Some(401), "replayed"), "{replayed:?}");
    let again = first.send(a.port).await;
    assert_eq!((again.status, again.reason().as_str()), (Some(401), "replayed"), "{again:?}");
    assert_eq!(server.hits(), hits, "no replay reached the upstream");
    let other = webhook("/strict/billing", &SECRET, "msg_2", now(), body).send(b.port).await;
    assert_eq!(other.status, Some(200), "{other:?}");

    // Replays ending in trailers, HTTP/1.1 chunked trailers or an empty DATA frame: the
    // request waits for the claim's answer whatever the client sends after its body.
    let hits = server.hits();
    let headers: Vec<(&str, &str)> = first.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    for ending in [Ending::Trailers, Ending::EmptyData] {
        let held = h2(b.port, "POST", &first.path, &headers, &first.body, ending).await;
        assert_eq!((held.status, held.reason().as_str()), (Some(401), "replayed"), "{ending:?}: {held:?}");
    }
    let chunked = http1_chunked_with_trailers(b.port, "POST", &first.path, &headers, &first.body).await;
    assert_eq!((chunked.status, chunked.reason().as_str()), (Some(401), "replayed"), "{chunked:?}");
    // A fresh id ended by trailers passes once, on either Envoy.
    let fresh = webhook("/strict/billing", &SECRET, "msg_t", now(), body);
    let fresh_headers: Vec<(&str, &str)> =
        fresh.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let once = h2(a.port, "POST", &fresh.path, &fresh_headers, &fresh.body, Ending::Trailers).await;
    assert_eq!(once.status, Some(200), "{once:?}");
    let twice = h2(b.port, "POST", &fresh.path, &fresh_headers, &fresh.body, Ending::Trailers).await;
    assert_eq!((twice.status, twice.reason().as_str()), (Some(401), "replayed"), "{twice:?}");
    assert_eq!(server.hits(), hits + 1, "only the first delivery of msg_t reached the upstream");
    // A stream reset before its body ends is never claimed: the id stays usable.
    let reset = webhook("/strict/billing", &SECRET, "msg_r", now(), body);
    let reset_headers: Vec<(&str, &str)> =
        reset.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let gone = h2(
        a.port,
        "POST",
        &reset.path,
        &reset_headers,
        &reset.body,
        Ending::ResetAfter(Duration::from_millis(200)),
    )
    .await;
    assert!(gone.status.is_none(), "{gone:?}");
    let later = reset.send(b.port).await;
    assert_eq!(later.status, Some(200), "{later:?}");
    // A bad signature is refused before any claim: it cannot burn an id.
    let mut forged = webhook("/strict/billing", &[0x11; 24], "msg_3", now(), body);
    assert_eq!(forged.send(a.port).await.status, Some(401));
    forged = webhook("/strict/billing", &SECRET, "msg_3", now(), body);
    assert_eq!(forged.send(b.port).await.status, Some(200));

    cp.proc.terminate();
    let down = webhook("/strict/billing", &SECRET, "msg_4", now(), body).send(a.port).await;
    assert_eq!((down.status, down.reason().as_str()), (Some(503), "replay_guard_unavailable"), "{down:?}");
    let signed = webhook("/strict/billing", &SECRET, "msg_5", now(), body);
    let mut request = portcullis_e2e::http().post(a.url("/strict/billing")).body(body.to_vec());
    for (name, value) in &signed.headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let r = request.send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    let lenient = webhook("/lenient/billing", &SECRET, "msg_6", now(), body).send(a.port).await;
    assert_eq!(lenient.status, Some(200), "onReplayGuardUnavailable: allow: {lenient:?}");
}
