//! JWT verification through a real Envoy loading the real filter, with a remote JWKS
//! served by an in-process test server that counts its fetches.

use portcullis_e2e::tokens::{claims, jwks, now, FixtureKey};
use portcullis_e2e::{http, www_authenticate, Envoy, FilterStack};
use serde_json::{json, Value};

fn plugin_config() -> Value {
    json!({
        "realm": "e2e",
        "providers": {
            "test": {
                "issuer": "https://issuer.test",
                "audiences": ["e2e"],
                "remoteJwks": {
                    "cluster": "jwks",
                    "authority": "jwks.test",
                    "path": "/.well-known/jwks.json",
                    "cacheDurationSeconds": 600,
                    "unknownKidRefetchIntervalSeconds": 30
                },
                "from": [
                    { "header": "authorization", "prefix": "Bearer " },
                    { "query": "access_token" }
                ],
                "claimToHeaders": [ { "claim": "sub", "header": "x-portcullis-sub" } ]
            }
        },
        "rules": [
            { "name": "public", "match": { "pathPrefix": "/public/" }, "requires": "none" },
            { "name": "admin", "match": { "pathPrefix": "/admin/" }, "requires": { "provider": "test" }, "scopes": ["admin"] },
            { "name": "api", "match": { "pathPrefix": "/api/" }, "requires": { "provider": "test" } }
        ]
    })
}

async fn stack(keys: &[&FixtureKey]) -> FilterStack {
    FilterStack::start(&plugin_config(), jwks(keys)).await
}

async fn get(envoy: &Envoy, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut req = http().get(envoy.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.expect("request through envoy")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_route_passes_and_protected_route_without_token_gets_a_bearer_challenge() {
    let key = FixtureKey::load("es256-a");
    let s = stack(&[&key]).await;

    let r = get(&s.envoy, "/public/hello", None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(s.server.hits(), 1);

    let r = get(&s.envoy, "/api/orders", None).await;
    assert_eq!(r.status(), 401);
    assert_eq!(www_authenticate(&r), "Bearer realm=\"e2e\"");
    let body: Value = r.json().await.expect("json body");
    assert_eq!(body["reason"], "missing_token");
    assert_eq!(s.server.hits(), 1, "a denied request must not reach the upstream");
    assert!(s.envoy.counter("wasmcustom.portcullis.requests.denied.missing_token").await >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_token_reaches_the_upstream_with_identity_headers_and_forged_ones_are_dropped() {
    let key = FixtureKey::load("es256-a");
    let s = stack(&[&key]).await;
    let token = key.sign(&claims("alice", "read"));

    let r = http()
        .get(s.envoy.url("/api/orders"))
        .bearer_auth(&token)
        .header("x-portcullis-sub", "mallory")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "body: {:?}", r.text().await);
    assert_eq!(s.server.last_header("x-portcullis-sub").as_deref(), Some("alice"));
    assert_eq!(s.server.last_header_count("x-portcullis-sub"), 1);

    // Even a public route never lets a client-supplied identity header through.
    let r = http().get(s.envoy.url("/public/x")).header("x-portcullis-sub", "mallory").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(s.server.last_header("x-portcullis-sub"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_get_invalid_token_with_a_stable_reason_and_never_reach_the_upstream() {
    let key = FixtureKey::load("es256-a");
    let other = FixtureKey::load("es256-b");
    let s = stack(&[&key]).await;
    let now = now();
    let good = key.sign(&claims("alice", "read"));
    let (head, _) = good.rsplit_once('.').unwrap();
    let forged_sig = format!("{head}.{}", other.sign(&claims("alice", "read")).rsplit_once('.').unwrap().1);

    let cases: Vec<(&str, String)> = vec![
        (
            "expired",
            key.sign(&json!({"iss": "https://issuer.test", "aud": "e2e", "sub": "a", "exp": now - 3600})),
        ),
        (
            "bad_audience",
            key.sign(&json!({"iss": "https://issuer.test", "aud": "other", "sub": "a", "exp": now + 600})),
        ),
        ("bad_signature", forged_sig),
        ("malformed", "not-a-jwt".to_string()),
        ("malformed", "a.b.c".to_string()),
    ];
    for (reason, token) in cases {
        let r = get(&s.envoy, "/api/orders", Some(&token)).await;
        assert_eq!(r.status(), 401, "case {reason}");
        assert_eq!(
            www_authenticate(&r),
            format!("Bearer realm=\"e2e\", error=\"invalid_token\", error_description=\"{reason}\""),
            "case {reason}"
        );
    }
    assert_eq!(s.server.hits(), 0);
    assert!(s.envoy.counter("wasmcustom.portcullis.provider.test.denied.expired").await >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_scope_gets_403_insufficient_scope() {
    let key = FixtureKey::load("es256-a");
    let s = stack(&[&key]).await;
    let r = get(&s.envoy, "/admin/users", Some(&key.sign(&claims("alice", "read")))).await;
    assert_eq!(r.status(), 403);
    assert_eq!(www_authenticate(&r), "Bearer realm=\"e2e\", error=\"insufficient_scope\", scope=\"admin\"");
    let r = get(&s.envoy, "/admin/users", Some(&key.sign(&claims("root", "read admin")))).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_jwks_is_fetched_once_and_shared_by_every_worker() {
    let key = FixtureKey::load("es256-a");
    let s = stack(&[&key]).await;
    // The periodic tick loads the keys shortly after start.
    s.envoy.wait_for_keys("test").await;
    let token = key.sign(&claims("alice", "read"));
    for i in 0..40 {
        // Fresh connections spread requests over both workers.
        let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
        let r = client.get(s.envoy.url("/api/x")).bearer_auth(&token).send().await.unwrap();
        assert_eq!(r.status(), 200, "request {i}");
    }
    assert_eq!(s.server.jwks_fetches(), 1, "one fetch serves both workers until the cache duration passes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_signed_by_a_rotated_key_passes_on_its_first_request() {
    let old = FixtureKey::load("es256-a");
    let new = FixtureKey::load("es256-b");
    let s = stack(&[&old]).await;
    s.envoy.wait_for_keys("test").await;
    assert_eq!(get(&s.envoy, "/api/x", Some(&old.sign(&claims("a", "")))).await.status(), 200);

    // The issuer rotates: the JWKS now also has the new key.
    s.server.set_jwks(jwks(&[&old, &new]));
    let fetches_before = s.server.jwks_fetches();
    let r = get(&s.envoy, "/api/x", Some(&new.sign(&claims("b", "")))).await;
    assert_eq!(r.status(), 200, "new-key token must pass on the first try: {:?}", r.headers());
    assert_eq!(s.server.jwks_fetches(), fetches_before + 1, "exactly one refetch for the unknown kid");

    // A kid the issuer does not have: rejected, and the refetch is rate-limited.
    let stranger = FixtureKey::load("rs256-a").sign(&claims("c", ""));
    let r = get(&s.envoy, "/api/x", Some(&stranger)).await;
    assert_eq!(r.status(), 401);
    assert!(www_authenticate(&r).contains("error_description=\"unknown_kid\""), "{}", www_authenticate(&r));
    assert_eq!(s.server.jwks_fetches(), fetches_before + 1, "no second refetch within the interval");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_bytes_that_are_not_utf8_do_not_crash_the_filter() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let key = FixtureKey::load("es256-a");
    let s = stack(&[&key]).await;
    let raw = b"GET /api/x HTTP/1.1\r\nHost: e2e\r\nAuthorization: Bearer \xff\xfe.\xc3\x28.\xa0\r\nX-Odd: \xf0\x28\x8c\x28\r\nConnection: close\r\n\r\n".to_vec();
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", s.envoy.port)).await.unwrap();
    conn.write_all(&raw).await.unwrap();
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer).await.unwrap();
    let head = String::from_utf8_lossy(&answer);
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");

    // The worker's VM is still alive: a good request passes.
    let r = get(&s.envoy, "/api/x", Some(&key.sign(&claims("a", "")))).await;
    assert_eq!(r.status(), 200);
    assert!(!s.envoy.proc.log_text().contains("panic"), "the filter panicked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_with_a_rotated_key_all_pass_with_a_single_refetch() {
    let old = FixtureKey::load("es256-a");
    let new = FixtureKey::load("es256-b");
    let s = stack(&[&old]).await;
    s.envoy.wait_for_keys("test").await;
    s.server.set_jwks(jwks(&[&old, &new]));
    let before = s.server.jwks_fetches();

    let token = new.sign(&claims("b", ""));
    let mut tasks = Vec::new();
    for _ in 0..24 {
        let url = s.envoy.url("/api/x");
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
            client.get(url).bearer_auth(token).send().await.map(|r| r.status().as_u16()).unwrap_or(0)
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert!(statuses.iter().all(|s| *s == 200), "statuses: {statuses:?}");
    assert_eq!(s.server.jwks_fetches(), before + 1, "one refetch served every waiting request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_header_token_with_a_bad_query_token_is_rejected() {
    let key = FixtureKey::load("es256-a");
    let s = stack(&[&key]).await;
    let good = key.sign(&claims("alice", ""));
    let expired =
        key.sign(&json!({"iss": "https://issuer.test", "aud": "e2e", "sub": "a", "exp": now() - 3600}));

    let r = get(&s.envoy, &format!("/api/x?access_token={good}"), None).await;
    assert_eq!(r.status(), 200, "a query token alone is accepted");
    let r = get(&s.envoy, &format!("/api/x?access_token={expired}"), Some(&good)).await;
    assert_eq!(r.status(), 401);
    assert!(www_authenticate(&r).contains("error_description=\"expired\""), "{}", www_authenticate(&r));
    assert_eq!(s.server.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_or_garbage_jwks_response_keeps_the_last_good_keys() {
    let old = FixtureKey::load("es256-a");
    let new = FixtureKey::load("es256-b");
    let s = stack(&[&old]).await;
    s.envoy.wait_for_keys("test").await;
    let old_token = old.sign(&claims("a", ""));
    assert_eq!(get(&s.envoy, "/api/x", Some(&old_token)).await.status(), 200);

    // The JWKS endpoint now answers garbage: the refetch for an unknown kid fails.
    s.server.set_jwks(json!("<html>oops</html>"));
    let r = get(&s.envoy, "/api/x", Some(&new.sign(&claims("b", "")))).await;
    assert_eq!(r.status(), 401);
    assert!(www_authenticate(&r).contains("unknown_kid"));
    assert!(s.envoy.counter("wasmcustom.portcullis.jwks.test.fetch_failed").await >= 1);
    // The keys loaded before still verify.
    assert_eq!(get(&s.envoy, "/api/x", Some(&old_token)).await.status(), 200);
    assert!(!s.envoy.proc.log_text().contains("panic"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_rules_count_but_do_not_block_and_tokens_can_be_kept_from_the_upstream() {
    let key = FixtureKey::load("es256-a");
    let config = json!({
        "realm": "e2e",
        "providers": {
            "hidden": {
                "issuer": "https://issuer.test",
                "audiences": ["e2e"],
                "jwks": jwks(&[&key]),
                "from": [ { "header": "authorization", "prefix": "Bearer " }, { "query": "access_token" } ],
                "payloadHeader": "x-jwt-payload",
                "forwardToken": false
            }
        },
        "rules": [
            { "name": "trial", "match": { "pathPrefix": "/trial/" }, "requires": { "provider": "hidden" }, "shadow": true },
            { "name": "api", "match": { "pathPrefix": "/api/" }, "requires": { "provider": "hidden" } }
        ]
    });
    let s = FilterStack::start(&config, json!({"keys": []})).await;

    // Shadow: the missing token is counted and logged, the request still goes through.
    let r = http().get(s.envoy.url("/trial/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(s.server.hits(), 1);
    assert_eq!(s.envoy.counter("wasmcustom.portcullis.requests.shadow_denied.missing_token").await, 1);
    assert_eq!(s.envoy.counter("wasmcustom.portcullis.requests.denied.missing_token").await, 0);

    // forwardToken: false — neither the header nor the query parameter reaches the upstream.
    let token = key.sign(&claims("alice", ""));
    let r =
        http().get(s.envoy.url("/api/x")).bearer_auth(&token).header("x-other", "kept").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(s.server.last_header("authorization"), None);
    assert_eq!(s.server.last_header("x-other").as_deref(), Some("kept"));
    let payload = s.server.last_header("x-jwt-payload").expect("payload header");
    assert_eq!(payload, token.split('.').nth(1).unwrap());

    let r = http().get(s.envoy.url(&format!("/api/x?a=1&access_token={token}&b=2"))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(s.server.state.last_path.lock().unwrap().as_str(), "/api/x?a=1&b=2");
}
