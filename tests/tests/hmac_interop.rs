//! The other direction of the HMAC fixtures: requests signed by the tests' Rust signer
//! (tests/src/signing.rs, what the end-to-end tests send through Envoy) verify in the
//! independent Python implementation (`tests/fixtures/hmac/gen.py verify`, standard
//! library only), and a changed byte does not.

use std::io::Write;
use std::process::{Command, Stdio};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use portcullis_e2e::signing::{signed, webhook, Req};
use serde_json::json;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
const PORT: u16 = 8443;

fn python_verdict(req: &Req) -> String {
    let doc = json!({
        "secret": STANDARD.encode(SECRET),
        "request": {
            "method": req.method,
            "scheme": "http",
            "authority": format!("127.0.0.1:{PORT}"),
            "path": req.path,
            "headers": req.headers,
            "body": String::from_utf8(req.body.clone()).expect("a text body"),
        },
    });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/hmac/gen.py");
    let mut child = Command::new("python3")
        .args([script, "verify"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child.stdin.take().expect("stdin").write_all(doc.to_string().as_bytes()).expect("request written");
    let out = child.wait_with_output().expect("python3 finished");
    assert!(out.status.success(), "gen.py verify failed: {out:?}");
    String::from_utf8(out.stdout).expect("utf-8").trim().to_string()
}

#[test]
fn rfc9421_requests_of_the_rust_signer_verify_in_python() {
    let components = ["@method", "@target-uri", "@authority", "content-digest", "x-tenant"];
    let req =
        signed(PORT, ("partner", SECRET), &components, 1_700_000_000, "n-1", "/partner/orders?id=7", b"{}");
    assert_eq!(python_verdict(&req), "ok");

    let other_tenant = req.clone().set("x-tenant", "green");
    assert_eq!(python_verdict(&other_tenant), "bad_signature", "a covered header changed");
    let mut other_body = req.clone();
    other_body.body = b"{\"x\":1}".to_vec();
    assert_eq!(python_verdict(&other_body), "digest_mismatch", "the body changed");
    let other_path = Req { path: "/partner/orders?id=8".into(), ..req };
    assert_eq!(python_verdict(&other_path), "bad_signature", "the query changed");
}

#[test]
fn standard_webhooks_of_the_rust_signer_verify_in_python() {
    let req = webhook("/webhooks/billing", SECRET, "msg_1", 1_700_000_000, b"{\"type\":\"invoice.paid\"}");
    assert_eq!(python_verdict(&req), "ok");
    let mut changed = req.clone();
    changed.body = b"{\"type\":\"invoice.void\"}".to_vec();
    assert_eq!(python_verdict(&changed), "bad_signature");
    assert_eq!(python_verdict(&req.set("webhook-timestamp", "1700000001")), "bad_signature");
}
