//! The HTTP API through `oneshot`, without a socket: both listeners
//! (`internal_app`, `admin_app`), the fleet credential gate and which routes each
//! listener serves, then the admin API and the rate-limit route.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use support::{Backend, Listeners, FLEET_CREDENTIAL};

use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::http::header::{ALLOW, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::http::{Request, StatusCode};
use axum::response::Response;
use axum::Router;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use portcullis_control_plane::admin_credential::FleetCredentials;
use portcullis_control_plane::store::{MemoryStore, Store};
use portcullis_control_plane::tokens::TokenPolicy;
use portcullis_control_plane::{admin_app, internal_app, AppState, Dependencies};
use portcullis_core::fleet::{encode_hash, FleetCredential};
use portcullis_core::revocation::FeedPage;
use serde_json::{json, Value};
use tower::ServiceExt as _;

const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

fn dependencies(store: Arc<dyn Store>) -> Dependencies {
    Dependencies {
        token_policy: TokenPolicy {
            issuer: "portcullis-test".into(),
            refresh_ttl_seconds: 604_800,
            ..support::token_policy()
        },
        ..support::dependencies(store, ADMIN_TOKEN, [7; 32])
    }
}

async fn test_state() -> AppState {
    AppState::initialise(dependencies(Arc::new(MemoryStore::new()))).await.unwrap()
}

async fn send(app: &Listeners, request: Request<Body>) -> Response {
    app.send(request).await
}

async fn oneshot(router: &Router, request: Request<Body>) -> Response {
    router.clone().oneshot(request).await.unwrap()
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

fn admin_post(path: &str, body: &Value) -> Request<Body> {
    Request::post(path)
        .header(AUTHORIZATION, format!("Bearer {ADMIN_TOKEN}"))
        .header(CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

async fn body_json(response: Response) -> Value {
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
}

/// Asserts an RFC 9457 problem response and returns its body.
async fn assert_problem(response: Response, status: StatusCode) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(response.headers().get(CONTENT_TYPE).unwrap(), "application/problem+json");
    let problem = body_json(response).await;
    assert_eq!(problem["status"], status.as_u16());
    assert!(problem["type"].as_str().unwrap().starts_with("urn:portcullis:problem:"));
    assert!(!problem["title"].as_str().unwrap().is_empty());
    assert!(!problem["detail"].as_str().unwrap().is_empty());
    problem
}

// --- the two listeners and the fleet credential ---------------------------------------

const PREVIOUS_FLEET_CREDENTIAL: &str = "previous-fleet-credential-0123456789abcdef";

/// Every route Envoys call, with a body they would send.
fn internal_requests() -> Vec<(&'static str, &'static str, Option<Value>)> {
    let subjects = json!([{"kind": "account", "value": "alice"}]);
    vec![
        ("GET", "/v1/feed", None),
        ("GET", "/v1/token-status?jti=j1&sub=alice", None),
        (
            "POST",
            "/v1/ratelimit",
            Some(json!({"asks": [{"key": "k", "limit": 10, "unit": "minute", "op": "check", "cost": 1}]})),
        ),
        ("POST", "/v1/lockout/check", Some(json!({ "subjects": subjects }))),
        ("POST", "/v1/lockout/report", Some(json!({ "outcome": "failure", "subjects": subjects }))),
        ("POST", "/v1/burst/report", Some(json!({"entries": [{"ip": "192.0.2.1", "count": 1}]}))),
        ("GET", "/v1/api-tokens/feed", None),
        ("POST", "/v1/api-tokens/usage", Some(json!({"used": ["abcdEFGH"]}))),
        (
            "POST",
            "/v1/audit/decisions",
            Some(json!({"batchId": "b1", "decisions": [{"timeMs": 1, "decision": "deny"}]})),
        ),
        ("GET", "/v1/hmac-keys", None),
        ("POST", "/v1/signature-replay", Some(json!({"id": "ab".repeat(32), "until": 1}))),
    ]
}

fn request(method: &str, path: &str, body: Option<&Value>, authorization: Option<&str>) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(path);
    if let Some(value) = authorization {
        builder = builder.header(AUTHORIZATION, value);
    }
    match body {
        Some(b) => builder.header(CONTENT_TYPE, "application/json").body(Body::from(b.to_string())),
        None => builder.body(Body::empty()),
    }
    .unwrap()
}

fn bearer(secret: &str) -> String {
    format!("Bearer {secret}")
}

/// A state on `backend` accepting [`FLEET_CREDENTIAL`] and, during a rotation,
/// `previous` too.
async fn state_on(backend: &Backend, previous: Option<&str>) -> AppState {
    let mut deps = dependencies(Arc::clone(&backend.store));
    let previous = previous.map(|p| FleetCredential::new(p).unwrap());
    deps.fleet = Arc::new(FleetCredentials::new(&support::fleet_credential(), previous.as_ref()).unwrap());
    AppState::initialise(deps).await.unwrap()
}

async fn assert_unauthorized(response: Response, challenge: &str, what: &str) {
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{what}");
    assert_eq!(response.headers().get(WWW_AUTHENTICATE).unwrap(), challenge, "{what}");
    assert_problem(response, StatusCode::UNAUTHORIZED).await;
}

support::backends!(
    every_internal_route_needs_the_current_or_during_a_rotation_the_previous_fleet_credential,
    a_login_report_without_the_fleet_credential_cannot_unlock_an_account,
    the_feed_hashes_ids_with_the_key_of_the_credential_presented,
);

async fn every_internal_route_needs_the_current_or_during_a_rotation_the_previous_fleet_credential(
    backend: Backend,
) {
    // During a rotation both credentials pass; once it is over (the control plane
    // restarted without the previous one) only the current one does.
    let during = internal_app(state_on(&backend, Some(PREVIOUS_FLEET_CREDENTIAL)).await);
    let after = internal_app(state_on(&backend, None).await);
    let missing = r#"Bearer realm="portcullis-internal""#;
    let invalid = r#"Bearer realm="portcullis-internal", error="invalid_token""#;
    for (method, path, body) in internal_requests() {
        let body = body.as_ref();
        for (app, credential) in
            [(&during, FLEET_CREDENTIAL), (&during, PREVIOUS_FLEET_CREDENTIAL), (&after, FLEET_CREDENTIAL)]
        {
            let response = oneshot(app, request(method, path, body, Some(&bearer(credential)))).await;
            assert_eq!(response.status(), StatusCode::OK, "{method} {path} with an accepted credential");
        }
        for app in [&during, &after] {
            let what = format!("{method} {path} without a credential");
            assert_unauthorized(oneshot(app, request(method, path, body, None)).await, missing, &what).await;
            let basic = Some("Basic Zm9vOmJhcg==");
            let what = format!("{method} {path} with another scheme");
            assert_unauthorized(oneshot(app, request(method, path, body, basic)).await, missing, &what).await;
            for wrong in ["x".repeat(40), ADMIN_TOKEN.to_owned(), format!("{FLEET_CREDENTIAL}x")] {
                let response = oneshot(app, request(method, path, body, Some(&bearer(&wrong)))).await;
                assert_unauthorized(response, invalid, &format!("{method} {path} with a wrong credential"))
                    .await;
            }
        }
        let old = Some(bearer(PREVIOUS_FLEET_CREDENTIAL));
        let what = format!("{method} {path} with the previous credential after the rotation");
        assert_unauthorized(
            oneshot(&after, request(method, path, body, old.as_deref())).await,
            invalid,
            &what,
        )
        .await;
    }
}

async fn a_login_report_without_the_fleet_credential_cannot_unlock_an_account(backend: Backend) {
    let app = internal_app(state_on(&backend, None).await);
    let subjects = json!([{"kind": "account", "value": "victim"}]);
    let report = |outcome: &str| json!({ "outcome": outcome, "subjects": subjects });
    let fleet = bearer(FLEET_CREDENTIAL);
    for _ in 0..5 {
        let response =
            oneshot(&app, request("POST", "/v1/lockout/report", Some(&report("failure")), Some(&fleet)))
                .await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    // The attack: a success report (which forgets the account's failures), unauthenticated.
    let response = oneshot(&app, request("POST", "/v1/lockout/report", Some(&report("success")), None)).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let check = json!({ "subjects": subjects });
    let response = oneshot(&app, request("POST", "/v1/lockout/check", Some(&check), Some(&fleet))).await;
    assert!(body_json(response).await["lockedForMs"].as_u64().unwrap() > 0, "still locked");
}

async fn the_feed_hashes_ids_with_the_key_of_the_credential_presented(backend: Backend) {
    let state = state_on(&backend, Some(PREVIOUS_FLEET_CREDENTIAL)).await;
    let (admin, internal) = (admin_app(state.clone()), internal_app(state));
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 3600;
    let revoke = json!({"jti": "jti-of-alice", "exp": exp});
    let response = oneshot(&admin, admin_post("/admin/v1/revocations", &revoke)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let response =
        oneshot(&admin, admin_post("/admin/v1/users/alice@example.com/revoke-all", &json!({}))).await;
    assert_eq!(response.status(), StatusCode::OK);
    for credential in [FLEET_CREDENTIAL, PREVIOUS_FLEET_CREDENTIAL] {
        let key = FleetCredential::new(credential).unwrap().feed_key();
        let response = oneshot(&internal, request("GET", "/v1/feed", None, Some(&bearer(credential)))).await;
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        assert!(
            !text.contains("jti-of-alice") && !text.contains("alice@example.com"),
            "names in clear: {text}"
        );
        let page: FeedPage = serde_json::from_str(&text).unwrap();
        assert_eq!(page.key_id, key.id());
        assert_eq!(page.revoked[0].jti_hash, encode_hash(&key.token_id("jti-of-alice")));
        assert_eq!(page.user_min_versions[0].sub_hash, encode_hash(&key.subject("alice@example.com")));
    }
}

#[tokio::test]
async fn each_listener_answers_404_for_the_other_listeners_routes_whatever_the_credential() {
    let state = test_state().await;
    let (admin, internal) = (admin_app(state.clone()), internal_app(state));
    let credentials = [None, Some(bearer(ADMIN_TOKEN)), Some(bearer(FLEET_CREDENTIAL))];
    let admin_only = [
        ("GET", "/admin/v1/status", None),
        ("GET", "/admin/v1/keys", None),
        ("POST", "/admin/v1/tokens", Some(json!({"sub": "mallory"}))),
        ("POST", "/admin/v1/global/rotate", Some(json!({"reason": "x", "graceSeconds": 0}))),
        // The breach response: key revocation, user revocation, the webhook dead letters.
        ("POST", "/admin/v1/keys/some-kid/revoke", None),
        ("POST", "/admin/v1/keys/revoke-all", None),
        ("POST", "/admin/v1/users/alice/revoke-all", Some(json!({}))),
        ("GET", "/admin/v1/users/alice/sessions", None),
        ("GET", "/admin/v1/webhooks/dead-letters", None),
        ("DELETE", "/admin/v1/webhooks/dead-letters", None),
        ("POST", "/admin/v1/webhooks/dead-letters/retry", None),
        ("POST", "/admin/v1/webhooks/dead-letters/some-id/retry", None),
        ("DELETE", "/admin/v1/webhooks/dead-letters/some-id", None),
        ("GET", "/admin/v1/lockouts", None),
        ("POST", "/admin/v1/api-tokens", Some(json!({}))),
        ("GET", "/admin/v1/api-tokens/abcdEFGH", None),
        ("POST", "/admin/v1/api-tokens/abcdEFGH/revoke", None),
        ("GET", "/admin/v1/users/alice/api-tokens", None),
        ("POST", "/admin/v1/users/alice/api-tokens/revoke-all", None),
        ("GET", "/admin/v1/audit", None),
        ("GET", "/admin/v1/audit/verify", None),
        ("POST", "/admin/v1/audit/checkpoint", None),
        ("GET", "/metrics", None),
    ];
    let mut internal_only = internal_requests();
    internal_only.push(("GET", "/.well-known/jwks.json", None));
    internal_only.push(("POST", "/v1/token/refresh", Some(json!({"refreshToken": "r"}))));
    for (app, routes, listener) in
        [(&internal, &admin_only[..], "internal"), (&admin, &internal_only[..], "admin")]
    {
        for (method, path, body) in routes {
            for credential in &credentials {
                let response =
                    oneshot(app, request(method, path, body.as_ref(), credential.as_deref())).await;
                let what = format!("{method} {path} on the {listener} listener");
                assert_eq!(response.status(), StatusCode::NOT_FOUND, "{what}");
                let problem = assert_problem(response, StatusCode::NOT_FOUND).await;
                assert_eq!(problem["type"], "urn:portcullis:problem:not-found", "{what}");
            }
        }
    }
    // Health and readiness are on both; the JWKS and refresh need no credential.
    for app in [&admin, &internal] {
        for path in ["/healthz", "/readyz"] {
            assert_eq!(oneshot(app, get(path)).await.status(), StatusCode::OK, "{path}");
        }
    }
    assert_eq!(oneshot(&internal, get("/.well-known/jwks.json")).await.status(), StatusCode::OK);
    let refresh = request("POST", "/v1/token/refresh", Some(&json!({"refreshToken": "r"})), None);
    assert_eq!(oneshot(&internal, refresh).await.status(), StatusCode::BAD_REQUEST, "invalid_grant, not 401");
}

#[tokio::test]
async fn healthz_and_readyz_answer_with_a_healthy_store() {
    let app = Listeners::new(test_state().await);
    let response = send(&app, get("/healthz")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body_json(response).await["status"], "alive");
    let response = send(&app, get("/readyz")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body_json(response).await, json!({"status": "ready", "store": "memory"}));
}

#[tokio::test]
async fn jwks_publishes_the_current_es256_key() {
    let state = test_state().await;
    let app = Listeners::new(state.clone());
    let response = send(&app, get("/.well-known/jwks.json")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let jwks = body_json(response).await;
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["kty"], "EC");
    assert_eq!(keys[0]["crv"], "P-256");
    assert_eq!(keys[0]["alg"], "ES256");
    assert_eq!(keys[0]["use"], "sig");
    assert_eq!(keys[0]["kid"], state.keys.current(0).await.current().kid());
    assert!(keys[0].get("d").is_none(), "the private key must never be published");
}

#[tokio::test]
async fn admin_request_without_a_token_gets_a_bearer_challenge() {
    let app = Listeners::new(test_state().await);
    let request = Request::post("/admin/v1/tokens")
        .header(CONTENT_TYPE, "application/json")
        .body(Body::from(r#"{"sub":"alice"}"#))
        .unwrap();
    let response = send(&app, request).await;
    assert_eq!(response.headers().get(WWW_AUTHENTICATE).unwrap(), r#"Bearer realm="portcullis-admin""#);
    let problem = assert_problem(response, StatusCode::UNAUTHORIZED).await;
    assert_eq!(problem["type"], "urn:portcullis:problem:missing-credentials");
}

#[tokio::test]
async fn admin_request_with_another_scheme_counts_as_missing_credentials() {
    let app = Listeners::new(test_state().await);
    let request = Request::get("/admin/v1/status")
        .header(AUTHORIZATION, format!("Basic {ADMIN_TOKEN}"))
        .body(Body::empty())
        .unwrap();
    let response = send(&app, request).await;
    assert_eq!(response.headers().get(WWW_AUTHENTICATE).unwrap(), r#"Bearer realm="portcullis-admin""#);
    assert_problem(response, StatusCode::UNAUTHORIZED).await;
}

#[tokio::test]
async fn admin_request_with_a_wrong_token_is_rejected_as_invalid_token() {
    let app = Listeners::new(test_state().await);
    for wrong in ["wrong-token", &format!("{ADMIN_TOKEN}x"), &ADMIN_TOKEN[1..]] {
        let request = Request::get("/admin/v1/status")
            .header(AUTHORIZATION, format!("Bearer {wrong}"))
            .body(Body::empty())
            .unwrap();
        let response = send(&app, request).await;
        assert_eq!(
            response.headers().get(WWW_AUTHENTICATE).unwrap(),
            r#"Bearer realm="portcullis-admin", error="invalid_token""#
        );
        let problem = assert_problem(response, StatusCode::UNAUTHORIZED).await;
        assert_eq!(problem["type"], "urn:portcullis:problem:invalid-token");
    }
}

#[tokio::test]
async fn minted_token_verifies_against_the_jwks_with_an_independent_library() {
    let state = test_state().await;
    let app = Listeners::new(state.clone());
    let response = send(
        &app,
        admin_post(
            "/admin/v1/tokens",
            &json!({
                "sub": "alice",
                "scopes": ["read", "write"],
                "ttlSeconds": 120,
                "claims": {"tenant": "acme", "roles": ["ops"]}
            }),
        ),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let issued = body_json(response).await;
    assert_eq!(issued["tokenType"], "Bearer");
    assert_eq!(issued["expiresIn"], 120);
    let token = issued["accessToken"].as_str().unwrap();

    let jwks: JwkSet =
        serde_json::from_value(body_json(send(&app, get("/.well-known/jwks.json")).await).await).unwrap();
    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(header.alg, Algorithm::ES256);
    let kid = header.kid.unwrap();
    assert_eq!(kid, state.keys.current(0).await.current().kid());
    let jwk = jwks.find(&kid).expect("the token's kid is in the JWKS");
    let key = DecodingKey::from_jwk(jwk).unwrap();

    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(&["demo-api"]);
    validation.set_issuer(&["portcullis-test"]);
    validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
    let claims = jsonwebtoken::decode::<Value>(token, &key, &validation).unwrap().claims;
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["scope"], "read write");
    assert_eq!(claims["ver"], 1);
    assert!(claims["sid"].is_string());
    assert_eq!(claims["tenant"], "acme");
    assert_eq!(claims["roles"], json!(["ops"]));
    assert_eq!(claims["jti"], issued["jti"]);
    assert_eq!(claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(), 120);

    // A flipped signature byte must not verify.
    let mut forged = token.to_owned();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    assert!(jsonwebtoken::decode::<Value>(&forged, &key, &validation).is_err());
}

#[tokio::test]
async fn token_defaults_come_from_the_policy() {
    let app = Listeners::new(test_state().await);
    let response = send(&app, admin_post("/admin/v1/tokens", &json!({"sub": "bob"}))).await;
    assert_eq!(response.status(), StatusCode::OK);
    let issued = body_json(response).await;
    assert_eq!(issued["expiresIn"], 900);
    let payload = issued["accessToken"].as_str().unwrap().split('.').nth(1).unwrap();
    use base64::Engine as _;
    let claims: Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap())
            .unwrap();
    assert_eq!(claims["aud"], "demo-api");
    assert!(claims.get("scope").is_none());
}

#[tokio::test]
async fn malformed_or_invalid_token_requests_are_400_problems() {
    let app = Listeners::new(test_state().await);
    let raw = |body: &'static str| {
        Request::post("/admin/v1/tokens")
            .header(AUTHORIZATION, format!("Bearer {ADMIN_TOKEN}"))
            .header(CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .unwrap()
    };
    for body in
        ["{not json", r#"{"scopes": ["read"]}"#, r#"{"sub": "alice", "unexpected": 1}"#, r#"{"sub": 42}"#]
    {
        assert_problem(send(&app, raw(body)).await, StatusCode::BAD_REQUEST).await;
    }
    let problem = assert_problem(
        send(&app, admin_post("/admin/v1/tokens", &json!({"sub": "a", "ttlSeconds": 0}))).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(problem["detail"].as_str().unwrap().starts_with("ttlSeconds"));
    let problem = assert_problem(
        send(&app, admin_post("/admin/v1/tokens", &json!({"sub": "a", "claims": {"iss": "evil"}}))).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(problem["detail"].as_str().unwrap().contains("iss"));
}

#[tokio::test]
async fn a_body_that_is_not_json_is_a_415_problem() {
    let app = Listeners::new(test_state().await);
    let request = Request::post("/admin/v1/tokens")
        .header(AUTHORIZATION, format!("Bearer {ADMIN_TOKEN}"))
        .header(CONTENT_TYPE, "text/plain")
        .body(Body::from(r#"{"sub":"alice"}"#))
        .unwrap();
    assert_problem(send(&app, request).await, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
}

#[tokio::test]
async fn an_oversized_body_is_a_413_problem() {
    let app = Listeners::new(test_state().await);
    let body = json!({"sub": "a", "claims": {"blob": "x".repeat(100_000)}});
    assert_problem(send(&app, admin_post("/admin/v1/tokens", &body)).await, StatusCode::PAYLOAD_TOO_LARGE)
        .await;
}

#[tokio::test]
async fn unknown_paths_are_404_problems() {
    let app = Listeners::new(test_state().await);
    let problem = assert_problem(send(&app, get("/nope")).await, StatusCode::NOT_FOUND).await;
    assert_eq!(problem["type"], "urn:portcullis:problem:not-found");
}

#[tokio::test]
async fn wrong_methods_are_405_problems_that_keep_the_allow_header() {
    let app = Listeners::new(test_state().await);
    let request = Request::delete("/healthz").body(Body::empty()).unwrap();
    let response = send(&app, request).await;
    let allow = response.headers().get(ALLOW).unwrap().to_str().unwrap().to_owned();
    assert!(allow.contains("GET"), "{allow}");
    assert_problem(response, StatusCode::METHOD_NOT_ALLOWED).await;
}

#[tokio::test]
async fn status_reports_the_backend_readiness_and_current_kid() {
    let state = test_state().await;
    let app = Listeners::new(state.clone());
    let request = Request::get("/admin/v1/status")
        .header(AUTHORIZATION, format!("Bearer {ADMIN_TOKEN}"))
        .body(Body::empty())
        .unwrap();
    let response = send(&app, request).await;
    assert_eq!(response.status(), StatusCode::OK);
    let status = body_json(response).await;
    assert_eq!(status["store"], "memory");
    assert_eq!(status["ready"], true);
    assert_eq!(status["currentKid"], state.keys.current(0).await.current().kid());
    assert_eq!(status["issuer"], "portcullis-test");
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status_and_issued_tokens() {
    let app = Listeners::new(test_state().await);
    send(&app, admin_post("/admin/v1/tokens", &json!({"sub": "alice"}))).await;
    send(&app, get("/nope")).await;
    send(&app, get("/healthz")).await;
    let response = send(&app, get("/metrics")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response
        .headers()
        .get(CONTENT_TYPE)
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    assert!(text.contains("portcullis_tokens_issued_total 1"), "{text}");
    assert!(
        text.contains(
            r#"portcullis_http_requests_total{route="/admin/v1/tokens",method="POST",status="200"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"portcullis_http_requests_total{route="unmatched",method="GET",status="404"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"portcullis_http_requests_total{route="/healthz",method="GET",status="200"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn replicas_starting_at_once_share_one_signing_key() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let replicas: Vec<_> =
        (0..10).map(|_| tokio::spawn(AppState::initialise(dependencies(Arc::clone(&store))))).collect();
    let mut kids = std::collections::BTreeSet::new();
    for replica in replicas {
        kids.insert(replica.await.unwrap().unwrap().keys.current(0).await.current().kid().to_owned());
    }
    assert_eq!(kids.len(), 1, "{kids:?}");
}

// --- POST /v1/ratelimit ------------------------------------------------------------

const T0: u64 = 1_700_000_000_000;

/// A state on a memory store whose clock the test sets.
async fn rate_limit_state() -> (AppState, Arc<portcullis_control_plane::clock::FixedClock>) {
    let clock = Arc::new(portcullis_control_plane::clock::FixedClock::new(T0));
    let mut deps = dependencies(Arc::new(MemoryStore::new()));
    deps.clock = clock.clone();
    (AppState::initialise(deps).await.unwrap(), clock)
}

/// No `Authorization`: [`Listeners::send`] adds the fleet credential, as Envoy does.
fn rate_limit_post(body: &Value) -> Request<Body> {
    Request::post("/v1/ratelimit")
        .header(CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

fn result(
    granted: u64,
    expires_at_ms: u64,
    remaining: u64,
    reset_after_ms: u64,
    retry_after_ms: u64,
) -> Value {
    json!({
        "granted": granted,
        "expiresAtMs": expires_at_ms,
        "remaining": remaining,
        "resetAfterMs": reset_after_ms,
        "retryAfterMs": retry_after_ms,
    })
}

#[tokio::test]
async fn a_mixed_rate_limit_batch_is_answered_in_order() {
    let (state, _clock) = rate_limit_state().await;
    let app = Listeners::new(state);
    let batch = json!({"asks": [
        {"key": "per-sub:alice", "limit": 10, "unit": "minute", "op": "lease", "maxLease": 4, "holders": 1, "ttlMs": 5000},
        {"key": "per-sub:alice", "limit": 10, "unit": "minute", "op": "check", "cost": 3},
        {"key": "per-sub:alice", "limit": 10, "unit": "minute", "op": "release", "units": 2},
        {"key": "per-sub:alice", "limit": 10, "unit": "minute", "op": "lease", "release": 2, "maxLease": 4, "ttlMs": 5000},
        {"key": "per-ip:10.0.0.1", "limit": 1, "unit": "second", "op": "check", "cost": 1},
        {"key": "per-ip:10.0.0.1", "limit": 1, "unit": "second", "op": "check", "cost": 1},
    ]});
    let response = send(&app, rate_limit_post(&batch)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        body_json(response).await,
        json!({"results": [
            // 10 left, half of it capped at 4.
            result(4, T0 + 5_000, 6, 24_000, 0),
            result(3, 0, 3, 42_000, 0),
            result(0, 0, 5, 30_000, 0),
            // 2 credited back first (7 left), then half of 7 is 3.
            result(3, T0 + 5_000, 4, 36_000, 0),
            result(1, 0, 0, 1_000, 0),
            result(0, 0, 0, 1_000, 1_000),
        ]})
    );
}

#[tokio::test]
async fn rate_limit_refusals_carry_retry_remaining_and_reset() {
    let (state, clock) = rate_limit_state().await;
    let app = Listeners::new(state);
    let one = json!({"asks": [{"key": "k", "limit": 10, "unit": "minute", "op": "check", "cost": 1}]});
    for _ in 0..10 {
        let body = body_json(send(&app, rate_limit_post(&one)).await).await;
        assert_eq!(body["results"][0]["granted"], 1);
    }
    let body = body_json(send(&app, rate_limit_post(&one)).await).await;
    assert_eq!(body["results"][0], result(0, 0, 0, 60_000, 6_000));
    clock.set(T0 + 6_000);
    let body = body_json(send(&app, rate_limit_post(&one)).await).await;
    assert_eq!(body["results"][0], result(1, 0, 0, 60_000, 0));

    // A lease on a spent counter is refused the same way.
    let lease = json!({"asks": [{"key": "k", "limit": 10, "unit": "minute", "op": "lease", "maxLease": 5, "ttlMs": 1000}]});
    let body = body_json(send(&app, rate_limit_post(&lease)).await).await;
    assert_eq!(body["results"][0], result(0, 0, 0, 60_000, 6_000));

    // An empty batch is an empty answer.
    let body = body_json(send(&app, rate_limit_post(&json!({"asks": []}))).await).await;
    assert_eq!(body, json!({"results": []}));
}

#[tokio::test]
async fn invalid_rate_limit_asks_are_400_problems_naming_the_ask_and_field() {
    let (state, _clock) = rate_limit_state().await;
    let app = Listeners::new(state);
    let good = json!({"key": "k", "limit": 10, "unit": "minute", "op": "check", "cost": 1});
    let lease = |max_lease: u64, ttl_ms: u64| {
        let mut ask = json!({"key": "k", "limit": 10, "unit": "minute", "op": "lease"});
        ask["maxLease"] = max_lease.into();
        ask["ttlMs"] = ttl_ms.into();
        ask
    };
    let cases = [
        (json!({"key": "k", "limit": 10, "unit": "minute", "op": "check", "cost": 11}), "asks[1].cost:"),
        (json!({"key": "k", "limit": 0, "unit": "minute", "op": "check", "cost": 0}), "asks[1].limit:"),
        (json!({"key": "a b", "limit": 10, "unit": "minute", "op": "check", "cost": 1}), "asks[1].key:"),
        (
            json!({"key": "x".repeat(129), "limit": 10, "unit": "minute", "op": "check", "cost": 1}),
            "asks[1].key:",
        ),
        (lease(0, 1_000), "asks[1].maxLease:"),
        (lease(5, 0), "asks[1].ttlMs:"),
        (lease(5, 60_001), "asks[1].ttlMs:"),
    ];
    for (bad, prefix) in cases {
        let response = send(&app, rate_limit_post(&json!({"asks": [good, bad]}))).await;
        let problem = assert_problem(response, StatusCode::BAD_REQUEST).await;
        assert_eq!(problem["type"], "urn:portcullis:problem:invalid-request");
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.starts_with(prefix), "{detail} should start with {prefix}");
    }
    // Nothing of an invalid batch was applied: the valid first ask never spent a unit.
    let peek = json!({"asks": [{"key": "k", "limit": 10, "unit": "minute", "op": "check", "cost": 0}]});
    let body = body_json(send(&app, rate_limit_post(&peek)).await).await;
    assert_eq!(body["results"][0]["remaining"], 10);

    let too_many = json!({"asks": vec![good.clone(); 257]});
    let problem = assert_problem(send(&app, rate_limit_post(&too_many)).await, StatusCode::BAD_REQUEST).await;
    assert!(problem["detail"].as_str().unwrap().starts_with("asks:"), "{problem}");
    // Unknown ops, missing fields and wrong types are 400s too (not axum's 422).
    for bad in [
        json!({"asks": [{"key": "k", "limit": 10, "unit": "minute", "op": "steal"}]}),
        json!({"asks": [{"key": "k", "limit": 10, "unit": "minute", "op": "lease", "maxLease": 1}]}),
        json!({"asks": [{"key": "k", "limit": 10, "unit": "fortnight", "op": "check", "cost": 1}]}),
        json!({"asks": [{"key": "k", "limit": -1, "unit": "minute", "op": "check", "cost": 1}]}),
        json!({"asks": [], "extra": true}),
    ] {
        assert_problem(send(&app, rate_limit_post(&bad)).await, StatusCode::BAD_REQUEST).await;
    }
}

#[tokio::test]
async fn a_store_failure_fails_the_whole_rate_limit_call_with_a_503_problem() {
    let (mut state, _clock) = rate_limit_state().await;
    // Nothing listens there: every store call fails as unavailable.
    let url = format!("redis://127.0.0.1:{}/0", support::free_port());
    state.store = Arc::new(
        portcullis_control_plane::store::RedisStore::new(
            &url,
            portcullis_control_plane::store::redis::RedisTimeouts::default(),
        )
        .unwrap(),
    );
    let app = Listeners::new(state);
    let batch = json!({"asks": [
        {"key": "k", "limit": 10, "unit": "minute", "op": "check", "cost": 1},
        {"key": "k", "limit": 10, "unit": "minute", "op": "release", "units": 1},
    ]});
    let problem =
        assert_problem(send(&app, rate_limit_post(&batch)).await, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(problem["type"], "urn:portcullis:problem:store-unavailable");
}

#[tokio::test]
async fn rate_limit_metrics_count_decisions_leases_and_releases() {
    let (state, _clock) = rate_limit_state().await;
    let app = Listeners::new(state);
    let batch = json!({"asks": [
        {"key": "m", "limit": 10, "unit": "minute", "op": "lease", "maxLease": 5, "ttlMs": 1000},
        {"key": "m", "limit": 10, "unit": "minute", "op": "check", "cost": 5},
        {"key": "m", "limit": 10, "unit": "minute", "op": "check", "cost": 1},
        {"key": "m", "limit": 10, "unit": "minute", "op": "release", "units": 2},
        {"key": "m", "limit": 10, "unit": "minute", "op": "lease", "release": 1, "maxLease": 5, "ttlMs": 1000},
    ]});
    assert_eq!(send(&app, rate_limit_post(&batch)).await.status(), StatusCode::OK);
    let response = send(&app, get("/metrics")).await;
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    for line in [
        r#"portcullis_rate_limit_decisions_total{op="lease",result="granted"} 2"#,
        r#"portcullis_rate_limit_decisions_total{op="check",result="granted"} 1"#,
        r#"portcullis_rate_limit_decisions_total{op="check",result="refused"} 1"#,
        r#"portcullis_rate_limit_decisions_total{op="release",result="granted"} 1"#,
        // The 5-unit check left 0 of 10 (the last lease leaves 2: not below 10%).
        r#"portcullis_rate_limit_near_limit_total{op="check"} 1"#,
        r#"portcullis_rate_limit_over_limit_total{op="check"} 1"#,
        "portcullis_rate_limit_leases_granted_total 2",
        // 5, then (2 + 1 credited) / 2 = 1.
        "portcullis_rate_limit_lease_units_granted_total 6",
        "portcullis_rate_limit_units_released_total 3",
        r#"portcullis_http_requests_total{route="/v1/ratelimit",method="POST",status="200"} 1"#,
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
    assert!(!text.contains(r#"portcullis_rate_limit_near_limit_total{op="lease"}"#), "{text}");
}

// --- the OpenAPI document ----------------------------------------------------------------

const OPENAPI_FILE: &str = "docs/openapi.json";
const HTTP_METHODS: [&str; 7] = ["get", "put", "post", "delete", "options", "patch", "trace"];

fn openapi() -> Value {
    serde_json::to_value(portcullis_control_plane::http::openapi::document()).unwrap()
}

/// Every documented operation: (path, method, listeners serving it, secured).
fn documented_operations(document: &Value) -> Vec<(String, String, Vec<String>, bool)> {
    let mut operations = Vec::new();
    for (path, item) in document["paths"].as_object().unwrap() {
        let servers: Vec<String> = item["servers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["url"].as_str().unwrap().to_owned())
            .collect();
        for method in HTTP_METHODS {
            if let Some(operation) = item.get(method) {
                let secured = operation.get("security").is_some();
                operations.push((path.clone(), method.to_uppercase(), servers.clone(), secured));
            }
        }
    }
    operations
}

/// A documented path with its parameters filled in.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|segment| if segment.starts_with('{') { "x" } else { segment })
        .collect::<Vec<_>>()
        .join("/")
}

#[test]
fn committed_openapi_document_is_what_the_handlers_generate() {
    let committed =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(OPENAPI_FILE))
            .unwrap_or_default();
    assert!(
        committed == portcullis_control_plane::http::openapi::document_text(),
        "{OPENAPI_FILE} is not what the handlers generate: run `make schema` and commit it"
    );
}

#[test]
fn cli_prints_the_openapi_document() {
    let output = support::command(support::CLI).arg("openapi").output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        portcullis_control_plane::http::openapi::document_text()
    );
}

#[tokio::test]
async fn the_admin_listener_serves_the_openapi_document_without_a_token_and_the_internal_one_does_not() {
    let state = test_state().await;
    let response = oneshot(&admin_app(state.clone()), get("/openapi.json")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body_json(response).await, openapi());
    assert_problem(oneshot(&internal_app(state), get("/openapi.json")).await, StatusCode::NOT_FOUND).await;
}

#[test]
fn the_openapi_document_is_3_1_with_problem_errors_and_credentials_on_every_operation() {
    let document = openapi();
    assert_eq!(document["openapi"], "3.1.0");
    let problem = &document["components"]["schemas"]["Problem"];
    assert_eq!(problem["required"], json!(["type", "title", "status", "detail"]), "{problem}");
    let schemes = &document["components"]["securitySchemes"];
    for scheme in ["adminToken", "fleetCredential"] {
        assert_eq!(schemes[scheme]["scheme"], "bearer", "{scheme}");
    }
    for (path, method, servers, secured) in documented_operations(&document) {
        let operation = &document["paths"][&path][method.to_lowercase()];
        let at = format!("{method} {path}");
        for status in ["4XX", "5XX"].iter().chain(if secured { ["401"].iter() } else { [].iter() }) {
            let content = &operation["responses"][status]["content"]["application/problem+json"];
            assert_eq!(content["schema"]["$ref"], "#/components/schemas/Problem", "{at} {status}");
        }
        let admin = path.starts_with("/admin/v1/");
        let fleet = [
            "/v1/feed",
            "/v1/token-status",
            "/v1/ratelimit",
            "/v1/lockout/check",
            "/v1/lockout/report",
            "/v1/burst/report",
            "/v1/api-tokens/feed",
            "/v1/api-tokens/usage",
            "/v1/audit/decisions",
            "/v1/hmac-keys",
            "/v1/signature-replay",
        ]
        .contains(&path.as_str());
        let scheme = operation["security"][0].as_object().and_then(|s| s.keys().next().cloned());
        match (admin, fleet) {
            (true, _) => assert_eq!(scheme.as_deref(), Some("adminToken"), "{at}"),
            (_, true) => assert_eq!(scheme.as_deref(), Some("fleetCredential"), "{at}"),
            _ => assert_eq!(scheme, None, "{at}: public"),
        }
        assert!(!operation["summary"].as_str().unwrap_or("").is_empty(), "{at}: summary");
        assert!(!servers.is_empty(), "{at}: which listener");
    }
}

/// Both directions: every documented operation is answered by the listeners its
/// `servers` name (a secured one with its credential's 401, which only a matched route
/// gives) and by no other; on a documented path every undocumented method is a 405. And
/// no route is registered around the document: the route tables use `routes!` only.
#[tokio::test]
async fn every_route_is_documented_and_every_documented_route_is_served() {
    let state = test_state().await;
    let admin = admin_app(state.clone());
    let internal = internal_app(state);
    let listeners = [("http://127.0.0.1:9091", &internal), ("http://127.0.0.1:9090", &admin)];
    let document = openapi();
    let operations = documented_operations(&document);
    assert!(operations.len() >= 30, "only {} operations documented", operations.len());
    for (path, method, servers, secured) in &operations {
        for (server, app) in listeners {
            let request =
                Request::builder().method(method.as_str()).uri(concrete(path)).body(Body::empty()).unwrap();
            let response = oneshot(app, request).await;
            let at = format!("{method} {path} on {server}");
            if !servers.contains(&server.to_owned()) {
                assert_problem(response, StatusCode::NOT_FOUND).await;
                continue;
            }
            let status = response.status();
            if *secured {
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{at}");
            } else if status == StatusCode::NOT_FOUND {
                let problem = assert_problem(response, StatusCode::NOT_FOUND).await;
                assert_ne!(problem["detail"], "There is no resource at this path.", "{at}: not served");
            } else {
                assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{at}: not served");
            }
        }
    }
    // The methods a documented path does not document are refused by the router.
    for (path, item) in document["paths"].as_object().unwrap() {
        let server = item["servers"][0]["url"].as_str().unwrap();
        let app = listeners.iter().find(|(s, _)| *s == server).unwrap().1;
        // The credential layer answers before the method does: present the right one.
        let operation = HTTP_METHODS.iter().find_map(|m| item.get(*m)).unwrap();
        let credential = match operation["security"][0].as_object().and_then(|s| s.keys().next().cloned()) {
            Some(scheme) if scheme == "adminToken" => Some(bearer(ADMIN_TOKEN)),
            Some(_) => Some(bearer(FLEET_CREDENTIAL)),
            None => None,
        };
        for method in ["get", "post", "put", "delete", "patch"] {
            if item.get(method).is_none() {
                let mut request =
                    Request::builder().method(method.to_uppercase().as_str()).uri(concrete(path));
                if let Some(credential) = &credential {
                    request = request.header(AUTHORIZATION, credential);
                }
                let request = request.body(Body::empty()).unwrap();
                let response = oneshot(app, request).await;
                assert_eq!(
                    response.status(),
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path}: served but not documented"
                );
            }
        }
    }
    // Routes registered with plain axum calls would be served without being documented.
    let sources = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http");
    for entry in std::fs::read_dir(&sources).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let code = text.lines().filter(|l| !l.trim_start().starts_with("//"));
        for line in code {
            for call in [".route(", ".route_service(", ".nest_service("] {
                assert!(
                    !line.contains(call),
                    "{}: `{call}` registers a route the OpenAPI document does not see: {line}",
                    path.display()
                );
            }
        }
    }
}
