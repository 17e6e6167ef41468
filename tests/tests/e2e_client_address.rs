//! The client address behind per-address limits and locks is the TCP peer (or, with
//! `clientIp.trustedHops`, the address a trusted proxy in front of Envoy saw), never an
//! address the client wrote into `x-forwarded-for`. The Envoy in front of the filter is
//! configured as every shipped configuration is (`use_remote_address: true`,
//! `xff_num_trusted_hops` equal to `trustedHops`); all clients here connect from
//! 127.0.0.1.

use portcullis_e2e::{control_plane_section, http, GuardStack, Hcm};
use serde_json::{json, Value};

fn config(trusted_hops: u32) -> Value {
    json!({
        "realm": "e2e",
        "onNoMatch": "allow",
        "clientIp": { "trustedHops": trusted_hops },
        "controlPlane": control_plane_section(2000),
        "rateLimits": [{
            "name": "per-address", "limit": 5, "unit": "minute", "mode": "strict", "timeoutMs": 2000,
            "descriptors": ["clientIp"], "rules": ["limited"]
        }],
        "lockout": {
            "routes": [{ "path": "/login", "methods": ["POST"] }],
            "account": "json:username",
            "byIp": true,
            "timeoutMs": 2000,
            "policy": { "maxFailures": 3, "baseLockMs": 600000, "maxLockMs": 600000 }
        },
        "rules": [
            { "name": "login", "match": { "path": "/login", "methods": ["POST"] }, "requires": "none" },
            { "name": "limited", "match": { "pathPrefix": "/limited/" }, "requires": "none" }
        ]
    })
}

/// Status and `reason` of a login attempt sent with `x-forwarded-for: xff`.
async fn login(s: &GuardStack, user: &str, password: &str, xff: &str) -> (u16, String) {
    let r = http()
        .post(s.envoy.url("/login"))
        .header("x-forwarded-for", xff)
        .json(&json!({ "username": user, "password": password }))
        .send()
        .await
        .expect("request through envoy");
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    (status, body["reason"].as_str().unwrap_or_default().to_string())
}

/// Failures the control plane holds for an address (0 when it has none on record).
async fn failures_of(s: &GuardStack, ip: &str) -> u64 {
    let r = http()
        .get(format!("{}/admin/v1/lockouts/ip/{ip}", s.cp.url()))
        .bearer_auth(&s.cp.admin_token)
        .send()
        .await
        .expect("lockout show");
    if r.status() == 404 {
        return 0;
    }
    let shown: Value = r.json().await.expect("lockout json");
    shown["failures"].as_u64().expect("failures")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_x_forwarded_for_from_one_peer_cannot_escape_the_per_address_limit() {
    let s = GuardStack::start(&config(0), Hcm::Hardened).await;
    let mut passed = 0;
    for i in 0..10 {
        let r = http()
            .get(s.envoy.url("/limited/x"))
            .header("x-forwarded-for", format!("198.51.100.{i}"))
            .send()
            .await
            .expect("request through envoy");
        match r.status().as_u16() {
            200 => passed += 1,
            429 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(passed, 5, "one peer, one counter, whatever x-forwarded-for says");
    assert_eq!(s.server.hits(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_x_forwarded_for_cannot_escape_the_address_lock_nor_lock_the_address_it_names() {
    let s = GuardStack::start(&config(0), Hcm::Hardened).await;
    const VICTIM: &str = "203.0.113.7";
    for i in 0..3 {
        let (status, _) = login(&s, &format!("user{i}"), "wrong", VICTIM).await;
        assert_eq!(status, 401, "failure {i}");
    }
    for i in 3..8 {
        let xff = format!("198.51.100.{i}, {VICTIM}");
        assert_eq!(login(&s, &format!("user{i}"), "correct", &xff).await, (429, "locked_out".to_string()));
    }
    assert_eq!(s.server.login_hits(), 3, "the peer's address is locked after three failures");
    assert_eq!(failures_of(&s, "127.0.0.1").await, 3);
    assert_eq!(failures_of(&s, VICTIM).await, 0, "the address in x-forwarded-for was never counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_the_address_it_appended_is_the_client_and_a_spoofed_one_is_not() {
    // One trusted proxy in front of Envoy appends the address it saw. The victim's
    // requests arrive as `victim`; the attacker writes the victim's address itself, and
    // the proxy appends the attacker's.
    let s = GuardStack::start(&config(1), Hcm::Hardened).await;
    const VICTIM: &str = "203.0.113.7";
    const ATTACKER: &str = "198.51.100.9";
    let spoofed = format!("{VICTIM}, {ATTACKER}");
    for i in 0..3 {
        assert_eq!(login(&s, &format!("user{i}"), "wrong", &spoofed).await.0, 401);
    }
    assert_eq!(login(&s, "user9", "correct", &spoofed).await, (429, "locked_out".to_string()));
    assert_eq!(login(&s, "alice", "correct", VICTIM).await, (200, String::new()), "the victim is not locked");
    assert_eq!(failures_of(&s, ATTACKER).await, 3);
    assert_eq!(failures_of(&s, VICTIM).await, 0);
}
