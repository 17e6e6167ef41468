//! Vectors from the specifications, and the attacks: a narrower component list, a
//! changed byte, an old secret after its window, empty and truncated signatures.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use super::config::{
    compile_keys, compile_signatures, SecretConfig, SignatureKeyConfig, SignatureRuleConfig,
};
use super::replay::{fingerprint, remember, Remember};
use super::rfc9421::content_digest;
use super::*;
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
use wasm_bindgen_test::wasm_bindgen_test as test;

/// RFC 9421 Appendix B.1.5, `test-shared-secret`.
const RFC_SECRET: &str =
    "uzvJfB4u3N0Jy4T7NZ75MDVcr8zSTInedJtkgcu46YW4XByzNJjxBdtjUkdJPBtbmHhIDi6pcl8jsasjlTMtDQ==";
/// The Standard Webhooks specification's example secret.
const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect()
}

fn policy(schemes: Vec<Scheme>, components: &[&str], replay: ReplayMode) -> SignaturePolicy {
    let config = SignatureRuleConfig {
        schemes,
        components: Some(components.iter().map(|c| c.to_string()).collect()),
        tolerance_seconds: None,
        max_body_bytes: None,
        replay,
        on_replay_guard_unavailable: Default::default(),
        keys: None,
        tag: None,
    };
    compile_signatures(config, &["k".to_string()], false).unwrap()
}

#[test]
fn accept_signature_names_what_the_rule_requires() {
    let p = policy(vec![Scheme::HttpMessageSignatures], &["@method", "content-digest"], ReplayMode::Local);
    assert_eq!(
        p.accept_signature.as_deref(),
        Some("sig1=(\"@method\" \"content-digest\");created;nonce;alg=\"hmac-sha256\"")
    );
    let p = policy(vec![Scheme::HttpMessageSignatures], &["@path"], ReplayMode::None);
    assert_eq!(p.accept_signature.as_deref(), Some("sig1=(\"@path\");created;alg=\"hmac-sha256\""));
    let mut config = SignatureRuleConfig {
        schemes: vec![Scheme::HttpMessageSignatures],
        components: Some(vec!["@method".into()]),
        tolerance_seconds: None,
        max_body_bytes: None,
        replay: ReplayMode::Global,
        on_replay_guard_unavailable: Default::default(),
        keys: None,
        tag: Some("app-1".into()),
    };
    let tagged = compile_signatures(config.clone(), &["k".to_string()], false).unwrap();
    assert!(tagged.accept_signature.unwrap().ends_with(";nonce;alg=\"hmac-sha256\";tag=\"app-1\""));
    config.tag = Some("bad\"tag".into());
    let unsafe_tag = compile_signatures(config, &["k".to_string()], false).unwrap();
    assert!(!unsafe_tag.accept_signature.unwrap().contains("tag="));
    assert_eq!(policy(vec![Scheme::StandardWebhooks], &[], ReplayMode::Local).accept_signature, None);
}

fn ring(id: &str, secrets: &[(&str, Option<u64>)]) -> KeyRing {
    let secrets =
        secrets.iter().map(|(s, n)| SecretConfig { secret: s.to_string(), not_after: *n }).collect();
    compile_keys(vec![SignatureKeyConfig { id: id.into(), owner: Some("acme".into()), secrets }]).unwrap()
}

fn rfc_request(headers: &[(String, String)]) -> SignedRequest<'_> {
    SignedRequest {
        method: "POST",
        scheme: "https",
        authority: "example.com",
        path: "/foo?param=Value&Pet=dog",
        headers,
        body: br#"{"hello": "world"}"#,
    }
}

#[test]
fn the_rfc_9421_appendix_b_2_5_hmac_vector_verifies_with_the_clock_pinned() {
    let headers = h(&[
        ("date", "Tue, 20 Apr 2021 02:07:55 GMT"),
        ("content-type", "application/json"),
        (
            "signature-input",
            r#"sig-b25=("date" "@authority" "content-type");created=1618884473;keyid="test-shared-secret""#,
        ),
        ("signature", "sig-b25=:pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8=:"),
    ]);
    let p = policy(vec![Scheme::HttpMessageSignatures], &["@authority", "date"], ReplayMode::None);
    let keys = ring("test-shared-secret", &[(RFC_SECRET, None)]);
    let verified = verify(&p, &keys, &rfc_request(&headers), 1618884473).unwrap();
    assert_eq!((verified.key_id.as_str(), verified.owner.as_deref()), ("test-shared-secret", Some("acme")));

    // The same request an hour later is stale; one changed header byte fails.
    assert_eq!(verify(&p, &keys, &rfc_request(&headers), 1618884473 + 3600), Err(Reason::Stale));
    let mut changed = headers.clone();
    changed[1].1 = "application/jsoN".into();
    assert_eq!(verify(&p, &keys, &rfc_request(&changed), 1618884473), Err(Reason::BadSignature));
    // A rule demanding @method refuses it: the signature covers less.
    let strict = policy(vec![Scheme::HttpMessageSignatures], &["@method", "@authority"], ReplayMode::None);
    assert_eq!(verify(&strict, &keys, &rfc_request(&headers), 1618884473), Err(Reason::MissingComponent));
}

#[test]
fn the_standard_webhooks_published_example_verifies() {
    let headers = h(&[
        ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
        ("webhook-timestamp", "1614265330"),
        ("webhook-signature", "v1,bm9wZQ== v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="),
    ]);
    let req = SignedRequest {
        method: "POST",
        scheme: "https",
        authority: "example.com",
        path: "/webhook",
        headers: &headers,
        body: br#"{"test": 2432232314}"#,
    };
    let p = policy(vec![Scheme::StandardWebhooks], &[], ReplayMode::Local);
    let keys = ring("k", &[(WHSEC, None)]);
    let verified = verify(&p, &keys, &req, 1614265330).unwrap();
    assert_eq!(verified.key_id, "k");
    assert_eq!(verified.replay.as_ref().map(|r| r.1), Some(1614265330 + 300));
    let secret = STANDARD.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
    assert_eq!(
        webhook::sign(&secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, req.body).unwrap(),
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    );
    // Empty, truncated and other-version signatures never verify.
    for (bad, reason) in [
        ("v1,", Reason::BadSignature),
        ("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ", Reason::BadSignature),
        ("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1O==", Reason::Malformed),
        ("v1a,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=", Reason::BadSignature),
        ("v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=,", Reason::Malformed),
    ] {
        let mut headers = headers.clone();
        headers[2].1 = bad.into();
        let req = SignedRequest { headers: &headers, ..req };
        assert_eq!(verify(&p, &keys, &req, 1614265330), Err(reason), "{bad}");
    }
    let body = br#"{"test": 2432232315}"#;
    assert_eq!(verify(&p, &keys, &SignedRequest { body, ..req }, 1614265330), Err(Reason::BadSignature));
    assert_eq!(verify(&p, &keys, &req, 1614265330 + 301), Err(Reason::Stale));
    assert_eq!(verify(&p, &keys, &req, 1614265330 - 301), Err(Reason::Stale), "from the future");
}

/// Signs an RFC 9421 request the way a client would.
fn sign_rfc(secret: &[u8], components: &str, params: &str, req: &SignedRequest<'_>) -> String {
    let list: Vec<&str> = components.split(' ').filter(|c| !c.is_empty()).collect();
    let mut base = String::new();
    for c in &list {
        let name = c.trim_matches('"');
        base.push_str(&format!("\"{name}\": {}\n", rfc9421::component_value(req, name).unwrap()));
    }
    base.push_str(&format!("\"@signature-params\": ({components}){params}"));
    format!("sig1=:{}:", STANDARD.encode(hmac_sha256(secret, &[base.as_bytes()]).unwrap()))
}

fn signed(
    secret: &[u8],
    components: &str,
    params: &str,
    body: &'static [u8],
) -> (Vec<(String, String)>, &'static [u8]) {
    let digest = content_digest(body);
    let mut headers = h(&[("content-digest", digest.as_str()), ("x-tenant", "blue")]);
    let req = SignedRequest {
        method: "POST",
        scheme: "https",
        authority: "api.example.com",
        path: "/orders?id=7",
        headers: &headers,
        body,
    };
    let signature = sign_rfc(secret, components, params, &req);
    headers.push(("signature-input".into(), format!("sig1=({components}){params}")));
    headers.push(("signature".into(), signature));
    (headers, body)
}

fn req<'a>(headers: &'a [(String, String)], body: &'a [u8]) -> SignedRequest<'a> {
    SignedRequest {
        method: "POST",
        scheme: "https",
        authority: "api.example.com",
        path: "/orders?id=7",
        headers,
        body,
    }
}

const ALL: &str = r#""@method" "@target-uri" "@authority" "content-digest" "x-tenant""#;
const NOW: u64 = 1_700_000_000;

#[test]
fn a_full_signature_verifies_and_every_changed_part_fails() {
    let secret = [7u8; 32];
    let keys = KeyRing { keys: vec![SignatureKey::new("k", None, vec![(secret.to_vec(), None)])] };
    let p = policy(
        vec![Scheme::HttpMessageSignatures],
        &["@method", "@target-uri", "@authority", "content-digest"],
        ReplayMode::Local,
    );
    let params = format!(r#";created={NOW};keyid="k";nonce="n-1""#);
    let (headers, body) = signed(&secret, ALL, &params, b"{\"qty\":1}");
    let ok = verify(&p, &keys, &req(&headers, body), NOW).unwrap();
    assert_eq!(ok.replay, Some(("rfc9421\nk\nn-1".to_string(), NOW + 300)));

    let base = req(&headers, body);
    assert_eq!(verify(&p, &keys, &SignedRequest { method: "PUT", ..base }, NOW), Err(Reason::BadSignature));
    assert_eq!(
        verify(&p, &keys, &SignedRequest { path: "/orders?id=8", ..base }, NOW),
        Err(Reason::BadSignature)
    );
    assert_eq!(
        verify(&p, &keys, &SignedRequest { path: "/orderz?id=7", ..base }, NOW),
        Err(Reason::BadSignature)
    );
    assert_eq!(
        verify(&p, &keys, &SignedRequest { body: b"{\"qty\":9}", ..base }, NOW),
        Err(Reason::DigestMismatch)
    );
    let mut tenant = headers.clone();
    tenant[1].1 = "blue2".into();
    assert_eq!(verify(&p, &keys, &req(&tenant, body), NOW), Err(Reason::BadSignature));
    assert_eq!(verify(&p, &keys, &req(&headers, body), NOW + 301), Err(Reason::Stale));
    assert_eq!(verify(&p, &keys, &req(&headers, body), NOW - 301), Err(Reason::Stale));

    let other = KeyRing { keys: vec![SignatureKey::new("other", None, vec![(secret.to_vec(), None)])] };
    assert_eq!(verify(&p, &other, &req(&headers, body), NOW), Err(Reason::UnknownKey));
}

#[test]
fn narrower_lists_missing_nonces_truncated_and_empty_signatures_are_refused() {
    let secret = [9u8; 32];
    let keys = KeyRing { keys: vec![SignatureKey::new("k", None, vec![(secret.to_vec(), None)])] };
    let p = policy(
        vec![Scheme::HttpMessageSignatures],
        &["@method", "@target-uri", "content-digest"],
        ReplayMode::Local,
    );
    let params = format!(r#";created={NOW};keyid="k";nonce="n""#);
    let (headers, body) = signed(&secret, r#""@method" "@target-uri""#, &params, b"x");
    assert_eq!(verify(&p, &keys, &req(&headers, body), NOW), Err(Reason::MissingComponent));

    let no_nonce = format!(r#";created={NOW};keyid="k""#);
    let (headers, body) = signed(&secret, ALL, &no_nonce, b"x");
    assert_eq!(verify(&p, &keys, &req(&headers, body), NOW), Err(Reason::MissingComponent));

    let (mut headers, body) = signed(&secret, ALL, &params, b"x");
    let good = headers[3].1.clone();
    for bad in ["sig1=::", "sig1=:AAAA:", &good[..good.len() - 6], "sig1=:", "sig2=:AAAA:"] {
        headers[3].1 = bad.to_string();
        let got = verify(&p, &keys, &req(&headers, body), NOW);
        assert!(matches!(got, Err(Reason::BadSignature | Reason::Malformed)), "{bad}: {got:?}");
    }
    let expired = format!(r#";created={NOW};expires={};keyid="k";nonce="n""#, NOW - 1);
    let (headers, body) = signed(&secret, ALL, &expired, b"x");
    assert_eq!(verify(&p, &keys, &req(&headers, body), NOW), Err(Reason::Expired));
    let headers = h(&[]);
    assert_eq!(verify(&p, &keys, &req(&headers, b""), NOW), Err(Reason::MissingSignature));
}

#[test]
fn an_old_secret_verifies_during_its_window_and_not_after() {
    let (old, new) = ([1u8; 32], [2u8; 32]);
    let keys = KeyRing {
        keys: vec![SignatureKey::new("k", None, vec![(old.to_vec(), Some(NOW + 60)), (new.to_vec(), None)])],
    };
    let p = policy(vec![Scheme::HttpMessageSignatures], &["@method"], ReplayMode::None);
    for (secret, at, want) in
        [(old, NOW, true), (new, NOW, true), (old, NOW + 61, false), (new, NOW + 61, true)]
    {
        let (headers, body) = signed(&secret, ALL, &format!(r#";created={at};keyid="k""#), b"x");
        let got = verify(&p, &keys, &req(&headers, body), at);
        assert_eq!(got.is_ok(), want, "{at} {got:?}");
    }
}

#[test]
fn secrets_shorter_than_the_minimum_are_refused_at_configuration() {
    let short = STANDARD.encode([0u8; 31]);
    let cfg = |s: &str| SignatureKeyConfig {
        id: "k".into(),
        owner: None,
        secrets: vec![SecretConfig { secret: s.to_string(), not_after: None }],
    };
    let err = compile_keys(vec![cfg(&short)]).unwrap_err();
    assert_eq!(err.field, "signatureKeys[0].secrets[0].secret");
    assert!(compile_keys(vec![cfg(&STANDARD.encode([0u8; 32]))]).is_ok());
    assert!(compile_keys(vec![cfg(&format!("whsec_{}", STANDARD.encode([0u8; 23])))]).is_err());
    assert!(compile_keys(vec![cfg(WHSEC)]).is_ok());
}

#[test]
fn the_replay_guard_accepts_an_id_once_within_its_window() {
    let (print, _) = fingerprint("webhook\nk\nmsg_1");
    let Remember::Write(cell) = remember(None, &print, NOW + 300, NOW) else { panic!("first sight") };
    assert_eq!(remember(Some(&cell), &print, NOW + 300, NOW + 10), Remember::Seen);
    let Remember::Write(after) = remember(Some(&cell), &print, NOW + 700, NOW + 301) else {
        panic!("expired")
    };
    assert_eq!(after.len(), cell.len(), "the expired entry was dropped");
    let mut full = None;
    for i in 0..replay::CELL_ENTRIES {
        let (p, _) = fingerprint(&format!("id{i}"));
        let Remember::Write(next) = remember(full.as_deref(), &p, NOW + 300, NOW) else { panic!("room") };
        full = Some(next);
    }
    assert_eq!(remember(full.as_deref(), &print, NOW + 300, NOW), Remember::Full);
}

/// Requests signed by an independent implementation (`tests/fixtures/hmac/gen.py`,
/// Python's standard library) verify here, and its negative cases fail for the reason
/// it names.
#[test]
fn fixtures_signed_by_the_python_generator_verify_with_the_expected_outcome() {
    let doc: serde_json::Value =
        serde_json::from_str(include_str!("../../../tests/fixtures/hmac/fixtures.json")).unwrap();
    let text = |v: &serde_json::Value| v.as_str().unwrap().to_string();
    let (secret, whsec) = (text(&doc["secret"]), text(&doc["whsec"]));
    let keys = ring(&text(&doc["keyId"]), &[(secret.as_str(), None), (whsec.as_str(), None)]);
    let components: Vec<String> = doc["components"].as_array().unwrap().iter().map(text).collect();
    let now = doc["now"].as_u64().unwrap();
    let cases = doc["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    for case in cases {
        let scheme: Scheme = serde_json::from_value(case["scheme"].clone()).unwrap();
        let refs: Vec<&str> = components.iter().map(String::as_str).collect();
        let p = policy(vec![scheme], &refs, ReplayMode::Local);
        let r = &case["request"];
        let headers: Vec<(String, String)> =
            r["headers"].as_array().unwrap().iter().map(|h| (text(&h[0]), text(&h[1]))).collect();
        let (method, scheme, authority, path, body) = (
            text(&r["method"]),
            text(&r["scheme"]),
            text(&r["authority"]),
            text(&r["path"]),
            text(&r["body"]),
        );
        let req = SignedRequest {
            method: &method,
            scheme: &scheme,
            authority: &authority,
            path: &path,
            headers: &headers,
            body: body.as_bytes(),
        };
        let got = match verify(&p, &keys, &req, now) {
            Ok(v) => {
                assert_eq!(v.key_id, "partner");
                "ok"
            }
            Err(reason) => reason.as_str(),
        };
        assert_eq!(got, text(&case["expect"]), "{}", case["name"]);
    }
}
