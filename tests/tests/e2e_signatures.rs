//! Signed requests through a real Envoy: RFC 9421 (`hmac-sha256`) and Standard
//! Webhooks. Requests are signed here with `hmac`/`sha2` from the RFC text, written
//! byte for byte on a socket, and every attack is one request: a changed byte in the
//! method, path, query, a covered header or the body, a stale or future time, a
//! replay, a narrower component list, an unknown key, a secret past its window, an
//! oversize body, an empty or truncated signature, a body ended by trailers.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use portcullis_e2e::frames::{h2, http1, http1_chunked_with_trailers, Answer, Ending};
use portcullis_e2e::signing::{digest, mac, signed, Req};
use portcullis_e2e::{http, www_authenticate, FilterStack};
use serde_json::{json, Value};

const CURRENT: [u8; 32] = [0x11; 32];
const OLD: [u8; 32] = [0x22; 32];
const RETIRED: [u8; 32] = [0x33; 32];
const WEBHOOK: [u8; 24] = [0x44; 24];
const COVERED: &[&str] = &["@method", "@target-uri", "@authority", "content-digest", "x-tenant"];

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn config() -> Value {
    let at = now();
    json!({
        "realm": "e2e",
        "signatureKeys": [
            { "id": "partner", "owner": "acme", "secrets": [
                { "secret": STANDARD.encode(OLD), "notAfter": at + 3600 },
                { "secret": STANDARD.encode(CURRENT) } ] },
            { "id": "rotated", "secrets": [
                { "secret": STANDARD.encode(RETIRED), "notAfter": at - 10 },
                { "secret": STANDARD.encode(CURRENT) } ] },
            { "id": "hooks", "owner": "billing", "secrets": [
                { "secret": format!("whsec_{}", STANDARD.encode(WEBHOOK)) } ] }
        ],
        "rules": [
            { "name": "signed", "match": { "pathPrefix": "/signed/" }, "requires": "none",
              "signatures": { "schemes": ["httpMessageSignatures"], "components": COVERED,
                              "maxBodyBytes": 1024, "keys": ["partner", "rotated"] } },
            { "name": "hooks", "match": { "pathPrefix": "/webhooks/" }, "requires": "none",
              "signatures": { "schemes": ["standardWebhooks"], "keys": ["hooks"] } },
            { "name": "site", "match": { "pathPrefix": "/" }, "requires": "none" }
        ]
    })
}

fn refused(a: &Answer, reason: &str, what: &str) {
    assert_eq!((a.status, a.reason().as_str()), (Some(401), reason), "{what}: {a:?}");
}

#[tokio::test]
async fn signed_requests_pass_and_every_changed_byte_stale_time_and_replay_is_refused() {
    let s = FilterStack::start(&config(), json!({ "keys": [] })).await;
    let port = s.envoy.port;
    let body = br#"{"order":7}"#;
    let partner = ("partner", &CURRENT[..]);
    let sign = |nonce: &str| signed(port, partner, COVERED, now(), nonce, "/signed/orders?id=7", body);

    // A valid request passes with the signer named upstream; a forged copy is dropped.
    let a = sign("n-ok").set("x-portcullis-signature-key", "forged").send(port).await;
    assert_eq!(a.status, Some(200), "{a:?}");
    assert_eq!(s.server.last_header("x-portcullis-signature-key").as_deref(), Some("partner"));
    assert_eq!(s.server.last_header("x-portcullis-signature-owner").as_deref(), Some("acme"));
    assert_eq!(s.server.last_header_count("x-portcullis-signature-key"), 1);
    // The same request again is a replay.
    refused(&sign("n-ok").send(port).await, "replayed", "replay");

    let hits = s.server.hits();
    let mut method = sign("n-method");
    method.method = "PUT".into();
    refused(&method.send(port).await, "bad_signature", "method");
    let mut path = sign("n-path");
    path.path = "/signed/orderz?id=7".into();
    refused(&path.send(port).await, "bad_signature", "path");
    let mut query = sign("n-query");
    query.path = "/signed/orders?id=8".into();
    refused(&query.send(port).await, "bad_signature", "query");
    refused(&sign("n-header").set("x-tenant", "bluf").send(port).await, "bad_signature", "covered header");
    let mut changed = sign("n-body");
    changed.body = br#"{"order":8}"#.to_vec();
    refused(&changed.send(port).await, "digest_mismatch", "body");
    let redigested = changed.clone().set("content-digest", &digest(&changed.body));
    refused(&redigested.send(port).await, "bad_signature", "body with a new digest");

    let stale = signed(port, partner, COVERED, now() - 400, "n-stale", "/signed/orders?id=7", body);
    refused(&stale.send(port).await, "stale", "stale");
    let future = signed(port, partner, COVERED, now() + 400, "n-future", "/signed/orders?id=7", body);
    refused(&future.send(port).await, "stale", "future");
    let narrow = signed(port, partner, &COVERED[..4], now(), "n-narrow", "/signed/orders?id=7", body);
    refused(&narrow.send(port).await, "missing_component", "narrower list");
    let unknown = signed(port, ("hooks", &CURRENT[..]), COVERED, now(), "n-key", "/signed/orders?id=7", body);
    refused(&unknown.send(port).await, "unknown_key", "a key of another rule");
    let missing =
        signed(port, ("nobody", &CURRENT[..]), COVERED, now(), "n-nobody", "/signed/orders?id=7", body);
    refused(&missing.send(port).await, "unknown_key", "no such key");
    for (bad, reason) in
        [("sig1=::", "bad_signature"), ("sig1=:AAAA:", "bad_signature"), ("sig1=:", "malformed")]
    {
        refused(&sign("n-empty").set("signature", bad).send(port).await, reason, bad);
    }
    let truncated = sign("n-trunc");
    let sig = truncated.headers.iter().find(|(n, _)| n == "signature").unwrap().1.clone();
    let cut = format!("{}:", &sig[..sig.len() - 8]);
    let a = truncated.set("signature", &cut).send(port).await;
    assert!(a.status == Some(401) && ["bad_signature", "malformed"].contains(&a.reason().as_str()), "{a:?}");
    assert_eq!(s.server.hits(), hits, "no refused request reached the upstream");

    // The old secret verifies inside its window, not after it.
    let old = signed(port, ("partner", &OLD[..]), COVERED, now(), "n-old", "/signed/orders?id=7", body);
    assert_eq!(old.send(port).await.status, Some(200));
    let retired =
        signed(port, ("rotated", &RETIRED[..]), COVERED, now(), "n-retired", "/signed/orders?id=7", body);
    refused(&retired.send(port).await, "bad_signature", "secret past its window");
    let rotated =
        signed(port, ("rotated", &CURRENT[..]), COVERED, now(), "n-rotated", "/signed/orders?id=7", body);
    assert_eq!(rotated.send(port).await.status, Some(200));

    // The challenge names the scheme and the reason, nothing more.
    let unsigned =
        http().post(format!("http://127.0.0.1:{port}/signed/orders")).body("{}").send().await.unwrap();
    assert_eq!(unsigned.status(), 401);
    assert_eq!(www_authenticate(&unsigned), "Signature realm=\"e2e\", error=\"missing_signature\"");
    // RFC 9421 §5.1: what a signature must cover and carry here.
    let accept = unsigned.headers().get("accept-signature").and_then(|v| v.to_str().ok()).map(str::to_string);
    let expected = "sig1=(\"@method\" \"@target-uri\" \"@authority\" \"content-digest\" \"x-tenant\");created;nonce;alg=\"hmac-sha256\"";
    assert_eq!(accept.as_deref(), Some(expected));
    let hook =
        http().post(format!("http://127.0.0.1:{port}/webhooks/billing")).body("{}").send().await.unwrap();
    assert_eq!(hook.status(), 401);
    assert!(hook.headers().get("accept-signature").is_none(), "not for Standard Webhooks rules");
}

#[tokio::test]
async fn a_body_over_the_cap_is_413_and_trailers_do_not_release_a_refused_request() {
    let s = FilterStack::start(&config(), json!({ "keys": [] })).await;
    let port = s.envoy.port;
    let partner = ("partner", &CURRENT[..]);
    let big = vec![b'x'; 2048];
    let a = signed(port, partner, COVERED, now(), "n-big", "/signed/upload", &big).send(port).await;
    assert_eq!((a.status, a.reason().as_str()), (Some(413), "body_too_large"), "{a:?}");

    // Bodies ended by trailers (HTTP/1.1 chunked and HTTP/2) are decided on the whole body.
    let body = br#"{"chunked":true}"#;
    for (i, tamper) in [false, true, false, true].into_iter().enumerate() {
        let nonce = format!("n-trailers-{i}");
        let mut req = signed(port, partner, COVERED, now(), &nonce, "/signed/chunked", body);
        if tamper {
            req.body = br#"{"chunked":fals}"#.to_vec();
        }
        let hits = s.server.hits();
        let headers: Vec<(&str, &str)> = req.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        let a = if i < 2 {
            http1_chunked_with_trailers(port, "POST", &req.path, &headers, &req.body).await
        } else {
            h2(port, "POST", &req.path, &headers, &req.body, Ending::Trailers).await
        };
        if tamper {
            refused(&a, "digest_mismatch", "tampered body with trailers");
            assert_eq!(s.server.hits(), hits, "a refused request reached the upstream");
        } else {
            assert_eq!(a.status, Some(200), "{a:?}");
        }
    }
}

#[tokio::test]
async fn standard_webhooks_pass_once_and_stale_replayed_or_empty_signatures_are_refused() {
    let s = FilterStack::start(&config(), json!({ "keys": [] })).await;
    let port = s.envoy.port;
    let body = br#"{"type":"invoice.paid"}"#;
    let hook = |id: &str, ts: i64, signature: Option<&str>| {
        let ts_text = ts.to_string();
        let parts: [&[u8]; 5] = [id.as_bytes(), b".", ts_text.as_bytes(), b".", body];
        let content = parts.concat();
        let sig = signature.map(str::to_string).unwrap_or_else(|| format!("v1,{}", mac(&WEBHOOK, &content)));
        Req { method: "POST".into(), path: "/webhooks/billing".into(), headers: vec![], body: body.to_vec() }
            .set("webhook-id", id)
            .set("webhook-timestamp", &ts.to_string())
            .set("webhook-signature", &sig)
    };
    let a = hook("msg_1", now(), None).send(port).await;
    assert_eq!(a.status, Some(200), "{a:?}");
    assert_eq!(s.server.last_header("x-portcullis-signature-key").as_deref(), Some("hooks"));
    assert_eq!(s.server.last_header("x-portcullis-signature-owner").as_deref(), Some("billing"));
    refused(&hook("msg_1", now(), None).send(port).await, "replayed", "same message id");
    refused(&hook("msg_2", now() - 400, None).send(port).await, "stale", "stale");
    refused(&hook("msg_3", now() + 400, None).send(port).await, "stale", "future");
    refused(&hook("msg_4", now(), Some("v1,")).send(port).await, "bad_signature", "empty v1");
    let mut changed = hook("msg_5", now(), None);
    changed.body = br#"{"type":"invoice.paie"}"#.to_vec();
    refused(&changed.send(port).await, "bad_signature", "body");
    // Unsigned requests elsewhere are untouched by the signature rules.
    assert_eq!(http1(port, "GET", "/public", &[], b"").await.status, Some(200));
}
