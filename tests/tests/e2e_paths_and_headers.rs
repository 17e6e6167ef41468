//! Paths and header names an upstream may read differently from the rules. The test
//! upstream routes like a lenient framework (escapes decoded, `\` as `/`, `;parameters`
//! and NULs dropped, dot segments resolved): every path below would reach its protected
//! `/api/` handler or its `POST /login` if the filter decided on the raw `:path`.
//! Each is sent behind the hardened connection manager every shipped configuration
//! uses, and behind Envoy's permissive defaults, where only the filter stands in the way.
//! Requests are written byte for byte on a socket: no client library normalises them.

use portcullis_e2e::frames::{http1, Answer};
use portcullis_e2e::{control_plane_section, GuardStack, Hcm};
use serde_json::{json, Value};

fn config() -> Value {
    json!({
        "realm": "e2e",
        "providers": {
            "portcullis": {
                "issuer": "portcullis",
                "audiences": ["portcullis"],
                "remoteJwks": { "cluster": "portcullis_control_plane", "authority": "control-plane" },
                "claimToHeaders": [{ "claim": "sub", "header": "x-portcullis-sub" }]
            }
        },
        "controlPlane": control_plane_section(2000),
        "lockout": {
            "routes": [{ "path": "/login", "methods": ["POST"] }],
            "account": "json:username",
            "byIp": false,
            "timeoutMs": 2000,
            "policy": { "maxFailures": 3, "baseLockMs": 600000, "maxLockMs": 600000 }
        },
        "rules": [
            { "name": "api", "match": { "pathPrefix": "/api/" }, "requires": { "provider": "portcullis" } },
            { "name": "login", "match": { "path": "/login", "methods": ["POST"] }, "requires": "none" },
            { "name": "site", "match": { "pathPrefix": "/" }, "requires": "none" }
        ]
    })
}

/// Paths that a lenient upstream routes to `/api/orders`.
const PROTECTED_ALIASES: &[&str] = &[
    "/public/../api/orders",
    "/public/./../api/orders",
    "/public/%2e%2e/api/orders",
    "/public/%2E%2E/api/orders",
    "/public/%2e%2E/api/orders",
    "/public/.%2e/api/orders",
    "/public/..%2f/api/orders",
    "/public/..%2F..%2Fapi/orders",
    "/public/..%5c/api/orders",
    "/public/..%5C/api/orders",
    "/public\\..\\api\\orders",
    "/public/..;/api/orders",
    "/public/.;x/../api/orders",
    "/public;x/../api/orders",
    "/api;jsessionid=x/orders",
    "//api//orders",
    "/%61pi/orders",
    "/%41PI/../api/orders",
    "/api%00/orders",
    "/public/%00/../../api/orders",
];

async fn check_no_alias_reaches_the_protected_handler(hcm: Hcm) {
    let s = GuardStack::start(&config(), hcm).await;
    for path in PROTECTED_ALIASES {
        let a = http1(s.envoy.port, "GET", path, &[], b"").await;
        let status = a.status.unwrap_or_else(|| panic!("{path}: no answer: {a:?}"));
        assert!(status == 400 || status == 401, "{hcm:?} {path}: {a:?}");
        if hcm == Hcm::Permissive {
            // Envoy let it through as sent: the filter itself refused it.
            let reason = a.reason();
            assert!(reason == "missing_token" || reason.starts_with("path_"), "{path}: {a:?}");
        }
    }
    assert_eq!(s.server.protected_hits(), 0, "{hcm:?}: a protected handler was served without a token");

    // The protected handler is reachable with a token, and public paths stay public.
    let token = format!("Bearer {}", s.cp.issue_token("alice", &[]).await);
    let a = http1(s.envoy.port, "GET", "/public/../api/orders", &[("authorization", &token)], b"").await;
    assert_eq!(a.status, Some(200), "{a:?}");
    assert_eq!(s.server.protected_hits(), 1);
    assert_eq!(http1(s.envoy.port, "GET", "/public/a/../b;v=1", &[], b"").await.status, Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_tricks_never_reach_a_protected_handler_without_a_token_behind_the_hardened_envoy() {
    check_no_alias_reaches_the_protected_handler(Hcm::Hardened).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_tricks_never_reach_a_protected_handler_without_a_token_behind_a_permissive_envoy() {
    check_no_alias_reaches_the_protected_handler(Hcm::Permissive).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_paths_get_400_with_a_stable_reason() {
    let s = GuardStack::start(&config(), Hcm::Permissive).await;
    for (path, reason) in [
        ("/public/..%2f/api/orders", "path_encoded_slash"),
        ("/public/..%5C/api/orders", "path_encoded_backslash"),
        ("/public/..;/api/orders", "path_dot_segment_parameters"),
        ("/api%00/orders", "path_nul"),
        ("/files/%zz", "path_invalid_encoding"),
        ("/files/%252e%252e/x", "path_double_encoding"),
    ] {
        let a: Answer = http1(s.envoy.port, "GET", path, &[], b"").await;
        assert_eq!((a.status, a.reason()), (Some(400), reason.to_string()), "{path}: {a:?}");
        let body: Value = serde_json::from_str(&a.body).expect("json body");
        assert_eq!(body["error"], "invalid_request");
    }
    assert_eq!(s.server.hits(), 0);
}

async fn check_login_aliases_are_lockout_routes(hcm: Hcm) {
    let s = GuardStack::start(&config(), hcm).await;
    let body = |password: &str| json!({ "username": "bob", "password": password }).to_string().into_bytes();
    let ct = [("content-type", "application/json")];
    for path in ["/public/../login", "/./login", "/login;jsessionid=1"] {
        let a = http1(s.envoy.port, "POST", path, &ct, &body("wrong")).await;
        assert_eq!(a.status, Some(401), "{hcm:?} {path}: {a:?}");
    }
    for path in ["/public/../login", "/login;x", "/login/", "/login"] {
        let a = http1(s.envoy.port, "POST", path, &ct, &body("correct")).await;
        assert_eq!((a.status, a.reason()), (Some(429), "locked_out".to_string()), "{hcm:?} {path}: {a:?}");
    }
    assert_eq!(s.server.login_hits(), 3, "{hcm:?}: three guesses, then the lock");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aliases_of_the_login_route_are_locked_out_like_it_behind_the_hardened_envoy() {
    check_login_aliases_are_lockout_routes(Hcm::Hardened).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aliases_of_the_login_route_are_locked_out_like_it_behind_a_permissive_envoy() {
    check_login_aliases_are_lockout_routes(Hcm::Permissive).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_headers_spelled_with_underscores_never_reach_the_upstream() {
    let forged = [("x_portcullis_sub", "admin"), ("X_Portcullis_Sub", "root"), ("X-PORTCULLIS-SUB", "sudo")];

    // Envoy's default lets header names with underscores through: the filter drops them.
    let s = GuardStack::start(&config(), Hcm::Permissive).await;
    let token = format!("Bearer {}", s.cp.issue_token("alice", &[]).await);
    let mut headers = vec![("authorization", token.as_str())];
    headers.extend(forged);
    let a = http1(s.envoy.port, "GET", "/api/orders", &headers, b"").await;
    assert_eq!(a.status, Some(200), "{a:?}");
    assert_eq!(s.server.last_header("x-portcullis-sub").as_deref(), Some("alice"));
    assert_eq!(s.server.last_header_count("x-portcullis-sub"), 1);
    assert_eq!(s.server.last_header("x_portcullis_sub"), None);
    let a = http1(s.envoy.port, "GET", "/public/x", &forged, b"").await;
    assert_eq!(a.status, Some(200), "{a:?}");
    assert_eq!(s.server.last_header("x_portcullis_sub"), None);
    assert_eq!(s.server.last_header("x-portcullis-sub"), None);

    // The hardened connection manager refuses such names before any filter runs.
    let s = GuardStack::start(&config(), Hcm::Hardened).await;
    let a = http1(s.envoy.port, "GET", "/public/x", &[("x_portcullis_sub", "admin")], b"").await;
    assert_eq!(a.status, Some(400), "{a:?}");
    assert_eq!(s.server.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_rule_holds_for_the_absolute_form_of_its_host_with_a_trailing_dot() {
    // Only requests for admin.example.com need a token; everything else is public. DNS
    // reads `admin.example.com.` (and any case of it) as the same host, and so may the
    // upstream's virtual hosting: none of these spellings may pass without a token.
    let config = json!({
        "realm": "e2e",
        "providers": config()["providers"].clone(),
        "controlPlane": control_plane_section(2000),
        "rules": [
            { "name": "admin", "match": { "hosts": ["admin.example.com"] }, "requires": { "provider": "portcullis" } },
            { "name": "site", "match": { "pathPrefix": "/" }, "requires": "none" }
        ]
    });
    let s = GuardStack::start(&config, Hcm::Hardened).await;
    for host in ["admin.example.com", "admin.example.com.", "ADMIN.Example.COM.", "admin.example.com.:80"] {
        let a = http1(s.envoy.port, "GET", "/api/orders", &[("host", host)], b"").await;
        assert_eq!((a.status, a.reason()), (Some(401), "missing_token".to_string()), "Host: {host}: {a:?}");
    }
    assert_eq!(s.server.protected_hits(), 0, "a spelling of the admin host passed without a token");

    // Other hosts stay public, and the admin host passes with a token.
    for host in ["www.example.com", "admin.example.com.evil"] {
        let a = http1(s.envoy.port, "GET", "/api/orders", &[("host", host)], b"").await;
        assert_eq!(a.status, Some(200), "Host: {host}: {a:?}");
    }
    let token = format!("Bearer {}", s.cp.issue_token("alice", &[]).await);
    let a = http1(
        s.envoy.port,
        "GET",
        "/api/orders",
        &[("host", "admin.example.com."), ("authorization", &token)],
        b"",
    )
    .await;
    assert_eq!(a.status, Some(200), "{a:?}");
    assert_eq!(s.server.protected_hits(), 3);
}
