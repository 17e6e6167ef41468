//! A request the filter has not decided never reaches the upstream, whatever frames the
//! client sends while the decision waits: HTTP/2 DATA then trailers, an empty DATA
//! frame with END_STREAM, a reset, or an HTTP/1.1 chunked body with trailers. Each
//! point where the filter waits is tried: a login body, a JWKS refetch for an unknown
//! `kid` (and a request parked behind it), a lock check, a strict rate-limit call, a
//! lease call and a strict revocation check. The waits on the control plane and on the
//! JWKS endpoint are stretched (a delaying proxy, a slow JWKS answer) so that the
//! client's last frames always arrive while the decision is pending.

use std::time::Duration;

use portcullis_e2e::frames::{h2, http1_chunked_with_trailers, Answer, Ending};
use portcullis_e2e::tokens::{claims, jwks, FixtureKey};
use portcullis_e2e::{control_plane_section, eventually, http, GuardStack, Hcm};
use serde_json::{json, Value};

/// How long a stretched call to the control plane or the JWKS endpoint takes.
const STRETCH: Duration = Duration::from_millis(1500);

/// Login bodies are read only when they say they are JSON.
const JSON: &[(&str, &str)] = &[("content-type", "application/json")];

const ENDINGS: [Ending; 3] = [Ending::Trailers, Ending::EmptyData, Ending::EndStream];

fn login_body(user: &str, password: &str) -> Vec<u8> {
    json!({ "username": user, "password": password }).to_string().into_bytes()
}

/// Records a refusal that did not come (every case is tried before the test fails).
fn expect_refused(failures: &mut Vec<String>, a: &Answer, status: u16, reason: &str, what: &str) {
    if a.status != Some(status) || a.reason() != reason {
        failures.push(format!("{what}: expected {status} {reason}, got {a:?}"));
    }
}

// ---------------------------------------------------------------------------------
// waiting for a login body

fn body_lockout_config() -> Value {
    json!({
        "realm": "e2e",
        "onNoMatch": "allow",
        "controlPlane": control_plane_section(5000),
        "lockout": {
            "routes": [{ "path": "/login", "methods": ["POST"] }],
            "account": "json:username",
            "byIp": false,
            "timeoutMs": 5000,
            "policy": { "maxFailures": 2, "baseLockMs": 600000, "maxLockMs": 600000 }
        },
        "rules": [{ "name": "login", "match": { "path": "/login", "methods": ["POST"] }, "requires": "none" }]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_login_is_refused_however_its_body_ends_and_never_reaches_the_upstream() {
    let s = GuardStack::start(&body_lockout_config(), Hcm::Hardened).await;
    for _ in 0..2 {
        let r = http().post(s.envoy.url("/login")).json(&json!({"username": "bob", "password": "x"})).send();
        assert_eq!(r.await.unwrap().status(), 401);
    }
    assert_eq!(s.server.login_hits(), 2);

    let mut failures = Vec::new();
    for ending in ENDINGS {
        let a = h2(s.envoy.port, "POST", "/login", JSON, &login_body("bob", "correct"), ending).await;
        expect_refused(&mut failures, &a, 429, "locked_out", &format!("HTTP/2 {ending:?}"));
    }
    let a = http1_chunked_with_trailers(s.envoy.port, "POST", "/login", JSON, &login_body("bob", "correct"))
        .await;
    expect_refused(&mut failures, &a, 429, "locked_out", "HTTP/1.1 chunked with trailers");
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(s.server.login_hits(), 2, "no attempt on a locked account reached the upstream");

    // An account that is not locked gets through with every ending, decided on its body.
    for ending in ENDINGS {
        let a = h2(s.envoy.port, "POST", "/login", JSON, &login_body("alice", "correct"), ending).await;
        assert_eq!(a.status, Some(200), "HTTP/2 {ending:?}: {a:?}");
    }
    let a =
        http1_chunked_with_trailers(s.envoy.port, "POST", "/login", JSON, &login_body("alice", "correct"))
            .await;
    assert_eq!(a.status, Some(200), "{a:?}");
    assert_eq!(s.server.login_hits(), 6);
}

// ---------------------------------------------------------------------------------
// waiting for keys

fn jwks_config() -> Value {
    json!({
        "realm": "e2e",
        "providers": {
            "test": {
                "issuer": "https://issuer.test",
                "audiences": ["e2e"],
                "remoteJwks": {
                    "cluster": "jwks", "authority": "jwks.test", "path": "/.well-known/jwks.json",
                    "cacheDurationSeconds": 600, "unknownKidRefetchIntervalSeconds": 1, "timeoutMs": 5000
                }
            }
        },
        "rules": [{ "name": "api", "match": { "pathPrefix": "/api/" }, "requires": { "provider": "test" } }]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_token_waiting_for_a_refetch_is_refused_even_when_the_client_sends_trailers() {
    let known = FixtureKey::load("es256-a");
    let s = GuardStack::start(&jwks_config(), Hcm::Hardened).await;
    s.server.set_jwks(jwks(&[&known]));
    s.envoy.wait_for_keys("test").await;
    s.server.set_jwks_delay(STRETCH);
    let fetches = s.server.jwks_fetches();

    // Signed by a key the issuer does not have: its `kid` triggers a refetch; a second
    // request with the same `kid` waits for that refetch (parked) instead of starting one.
    let forged = format!("Bearer {}", FixtureKey::load("es256-b").sign(&claims("mallory", "write")));
    let headers = [("authorization", forged.as_str())];
    let first = h2(s.envoy.port, "POST", "/api/orders", &headers, b"{\"drop\":\"all\"}", Ending::Trailers);
    let parked = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        h2(s.envoy.port, "POST", "/api/orders", &headers, b"{\"drop\":\"all\"}", Ending::Trailers).await
    };
    let (first, parked) = tokio::join!(first, parked);
    let mut failures = Vec::new();
    expect_refused(&mut failures, &first, 401, "unknown_kid", "the request that started the refetch");
    expect_refused(&mut failures, &parked, 401, "unknown_kid", "the request waiting for it (parked)");
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(s.server.jwks_fetches(), fetches + 1, "one refetch");
    assert_eq!(s.server.hits(), 0, "the upstream never saw a forged request");

    // A token signed by a key rotated in passes once its keys arrive, trailers and all
    // (after the refetch interval of one second).
    let rotated = FixtureKey::load("rs256-a");
    s.server.set_jwks(jwks(&[&known, &rotated]));
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let good = format!("Bearer {}", rotated.sign(&claims("alice", "write")));
    let a =
        h2(s.envoy.port, "POST", "/api/orders", &[("authorization", &good)], b"{}", Ending::Trailers).await;
    assert_eq!(a.status, Some(200), "{a:?}");
    assert_eq!(s.server.jwks_fetches(), fetches + 2);
    assert_eq!(s.server.protected_hits(), 1);
}

// ---------------------------------------------------------------------------------
// waiting for the control plane

fn control_plane_config() -> Value {
    json!({
        "realm": "e2e",
        "onNoMatch": "allow",
        "providers": {
            "portcullis": {
                "issuer": "portcullis",
                "audiences": ["portcullis"],
                "remoteJwks": { "cluster": "portcullis_control_plane", "authority": "control-plane", "timeoutMs": 5000 }
            }
        },
        "revocation": {
            "pollIntervalMs": 60000, "maxStalenessSeconds": 600, "strictTimeoutMs": 5000, "strictCacheMs": 0
        },
        "controlPlane": control_plane_section(5000),
        "rateLimits": [
            { "name": "strict-one", "limit": 1, "unit": "minute", "mode": "strict", "timeoutMs": 5000, "rules": ["strict"] },
            { "name": "lease-one", "limit": 1, "unit": "minute", "rules": ["leased"] }
        ],
        "lockout": {
            "routes": [{ "path": "/login", "methods": ["POST"] }],
            "account": "header:x-username",
            "byIp": false,
            "timeoutMs": 5000,
            "policy": { "maxFailures": 1, "baseLockMs": 600000, "maxLockMs": 600000 }
        },
        "rules": [
            { "name": "login", "match": { "path": "/login", "methods": ["POST"] }, "requires": "none" },
            { "name": "strict", "match": { "pathPrefix": "/strict/" }, "requires": "none" },
            { "name": "leased", "match": { "pathPrefix": "/leased/" }, "requires": "none" },
            { "name": "account", "match": { "pathPrefix": "/api/" }, "requires": { "provider": "portcullis" },
              "revocationCheck": "strict" }
        ]
    })
}

/// A request that waits for the control plane, and the refusal it must end in.
struct Waiting<'a> {
    what: &'a str,
    path: &'a str,
    headers: &'a [(&'a str, &'a str)],
    refusal: (u16, &'a str),
}

/// Status of a plain HTTP/1.1 request, with the control plane answering at once.
async fn plain(s: &GuardStack, path: &str, headers: &[(&str, &str)], body: &[u8]) -> u16 {
    let mut r = http().post(s.envoy.url(path)).body(body.to_vec());
    for (n, v) in headers {
        r = r.header(*n, *v);
    }
    r.send().await.expect("request through envoy").status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_waiting_for_the_control_plane_are_held_until_decided_whatever_frames_follow() {
    let s = GuardStack::start(&control_plane_config(), Hcm::Hardened).await;

    // Set up with the control plane answering at once: bob and eve locked after one
    // failure each, the strict and the leased limit spent, a token revoked after a
    // first good call with another one.
    for user in ["bob", "eve"] {
        assert_eq!(plain(&s, "/login", &[("x-username", user)], &login_body(user, "x")).await, 401);
    }
    assert_eq!(plain(&s, "/strict/x", &[], b"").await, 200);
    assert_eq!(plain(&s, "/leased/x", &[], b"").await, 200);
    let kept = format!("Bearer {}", s.cp.issue_token("alice", &[]).await);
    let revoked = s.cp.issue_token("alice", &[]).await;
    assert_eq!(plain(&s, "/api/x", &[("authorization", &kept)], b"").await, 200);
    // The replica is synced (a snapshot and its catch-up: the polls of the first minute,
    // at one poll a minute, and the only ones): the revocation below reaches this Envoy
    // through the strict check alone.
    eventually(Duration::from_secs(10), "the first revocation feed sync", || async {
        s.envoy.counter("wasmcustom.portcullis.revocation.snapshots_assembled").await >= 1
    })
    .await;
    let polls = s.envoy.counter("wasmcustom.portcullis.revocation.poll_ok").await;
    s.cp.cli(&["revoke", "token", &revoked]);
    let revoked = format!("Bearer {revoked}");
    // A lock this Envoy learned within the last second answers without a call: wait
    // past it, so that the lock checks below are calls.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let (logins, upstream) = (s.server.login_hits(), s.server.hits());

    s.proxy.set_delay(STRETCH);
    let mut failures = Vec::new();
    let body = login_body("bob", "correct");
    let a = h2(s.envoy.port, "POST", "/login", &[("x-username", "bob")], &body, Ending::Trailers).await;
    expect_refused(&mut failures, &a, 429, "locked_out", "lock check, HTTP/2 with trailers");
    let a =
        http1_chunked_with_trailers(s.envoy.port, "POST", "/login", &[("x-username", "eve")], &body).await;
    expect_refused(&mut failures, &a, 429, "locked_out", "lock check, HTTP/1.1 chunked with trailers");
    let auth = [("authorization", revoked.as_str())];
    let cases = [
        Waiting {
            what: "strict rate limit",
            path: "/strict/x",
            headers: &[],
            refusal: (429, "rate_limited"),
        },
        Waiting { what: "lease", path: "/leased/x", headers: &[], refusal: (429, "rate_limited") },
        Waiting {
            what: "strict revocation check",
            path: "/api/x",
            headers: &auth,
            refusal: (401, "revoked"),
        },
    ];
    for c in &cases {
        let (status, reason) = c.refusal;
        let a = h2(s.envoy.port, "POST", c.path, c.headers, b"{}", Ending::Trailers).await;
        expect_refused(&mut failures, &a, status, reason, &format!("{}, HTTP/2 with trailers", c.what));
        let a = http1_chunked_with_trailers(s.envoy.port, "POST", c.path, c.headers, b"{}").await;
        let what = format!("{}, HTTP/1.1 chunked with trailers", c.what);
        expect_refused(&mut failures, &a, status, reason, &what);
    }
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(s.envoy.counter("wasmcustom.portcullis.revocation.poll_ok").await, polls, "no later poll");
    assert_eq!(s.server.login_hits(), logins, "no attempt on a locked account reached the upstream");
    assert_eq!(s.server.hits(), upstream, "no refused request reached the upstream");

    // Allowed after the wait: the held request goes on with its body and trailers.
    let a = h2(s.envoy.port, "POST", "/api/x", &[("authorization", &kept)], b"{}", Ending::Trailers).await;
    assert_eq!(a.status, Some(200), "{a:?}");
    assert_eq!(s.server.hits(), upstream + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_resets_while_its_request_waits_sends_nothing_upstream() {
    let s = GuardStack::start(&control_plane_config(), Hcm::Hardened).await;
    const OPEN_CHECKS: &str = "portcullis_lockout_checks_total{result=\"open\"}";
    let before = s.cp.metric(OPEN_CHECKS).await;
    s.proxy.set_delay(STRETCH);
    let carol = [("x-username", "carol")];
    let reset = Ending::ResetAfter(Duration::from_millis(300));
    let a = h2(s.envoy.port, "POST", "/login", &carol, &login_body("carol", "correct"), reset).await;
    assert_eq!(a.status, None);
    // The lock check it waited for has been answered (carol is not locked)...
    eventually(Duration::from_secs(15), "the lock check to be answered", || async {
        s.cp.metric(OPEN_CHECKS).await > before
    })
    .await;
    // ...and a later request made its whole round trip: the reset one went nowhere.
    s.proxy.set_delay(Duration::ZERO);
    let dave = [("x-username", "dave")];
    let a = h2(s.envoy.port, "POST", "/login", &dave, &login_body("dave", "correct"), Ending::Trailers).await;
    assert_eq!(a.status, Some(200), "{a:?}");
    assert_eq!(s.server.login_hits(), 1, "only dave's attempt reached the upstream");
}
