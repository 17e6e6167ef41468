//! Signed requests (`signature::verify`, `signature::sfv`): the structured-field parser
//! of `Signature-Input`, `Signature` and `content-digest`, RFC 9421 and Standard
//! Webhooks verification, from a request as text (see `TextRequest`; the body after
//! the empty line). Knob `:now`: seconds after a fixed time.
//!
//! Invariants: nothing panics; every dictionary member that parses serialises (inner
//! lists) to a form that parses back to the same member; a request is never accepted
//! unless it carries a MAC made with the fixture secret over what it covers (here: a
//! `webhook-signature` the target computes itself is accepted when the id and
//! timestamp are well-formed and in the window, and nothing else is).
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_core::signature::config::SignatureRuleConfig;
use portcullis_core::signature::sfv::{parse_dictionary, serialize_inner_list, Member};
use portcullis_core::signature::{
    compile_signatures, verify, webhook, KeyRing, ReplayMode, Scheme, SignatureKey, SignedRequest,
};
use portcullis_fuzz::TextRequest;

const SECRET: [u8; 32] = [0x5a; 32];
const EPOCH: u64 = 1_700_000_000;

fuzz_target!(|data: &[u8]| {
    let text = TextRequest::parse(data);
    let now = EPOCH + text.knob(":now").and_then(|n| n.parse::<u64>().ok()).unwrap_or(0) % 100_000;
    for (_, value) in &text.parts.headers {
        if let Ok(dict) = parse_dictionary(value) {
            for (key, member) in dict {
                if let Member::InnerList(items, params) = &member {
                    let again = parse_dictionary(&format!("{key}={}", serialize_inner_list(items, params)));
                    assert_eq!(
                        again.ok().and_then(|d| d.into_iter().next()).map(|(_, m)| m),
                        Some(member.clone())
                    );
                }
            }
        }
    }
    let config = SignatureRuleConfig {
        schemes: vec![Scheme::HttpMessageSignatures, Scheme::StandardWebhooks],
        components: Some(vec!["@method".into()]),
        tolerance_seconds: None,
        max_body_bytes: None,
        replay: ReplayMode::Local,
        keys: None,
        tag: None,
    };
    let policy = compile_signatures(config, &["k".to_string()]).unwrap();
    let keys = KeyRing { keys: vec![SignatureKey::new("k", None, vec![(SECRET.to_vec(), None)])] };
    let p = &text.parts;
    let request = SignedRequest {
        method: &p.method,
        scheme: "https",
        authority: &p.authority,
        path: &p.path,
        headers: &p.headers,
        body: &text.body,
    };
    // Without the secret nobody can produce a valid MAC: the fuzzer never finds one.
    assert!(verify(&policy, &keys, &request, now).is_err(), "accepted a request it did not sign");

    // With a signature made here, a well-formed webhook in its window verifies.
    let id = request.field("webhook-id").unwrap_or_default();
    let ts = request.field("webhook-timestamp").unwrap_or_default();
    let Ok(t) = ts.parse::<u64>() else { return };
    let Some(sig) = webhook::sign(&SECRET, &id, t, &text.body) else { return };
    let mut headers: Vec<(String, String)> =
        p.headers.iter().filter(|(n, _)| !n.eq_ignore_ascii_case("signature-input")).cloned().collect();
    headers.retain(|(n, _)| !n.eq_ignore_ascii_case("webhook-signature"));
    headers.push(("webhook-signature".into(), sig));
    let signed = SignedRequest { headers: &headers, ..request };
    let wellformed = !id.is_empty()
        && id.len() <= 256
        && !id.contains(['.', ',', ' '])
        && ts == t.to_string()
        && ts.len() <= 15;
    let in_window = t.abs_diff(now) <= 300;
    assert_eq!(verify(&policy, &keys, &signed, now).is_ok(), wellformed && in_window, "{id:?} {ts:?}");
});
