//! API tokens: the store-backed operations over every backend (`support::backends!`),
//! the secret's absence from what the embedded store and Redis hold, the admin and
//! internal HTTP routes in process, and the `portcullis api-tokens` CLI against the
//! built server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;

use axum::body::Body;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{Request, StatusCode};
use axum::response::Response;
use base64::Engine as _;
use portcullis_control_plane::api_tokens::{
    self, ApiTokenCursor, ApiTokenPolicy, CreateApiToken, CreatedApiToken, USAGE_INTERVAL_MS,
};
use portcullis_control_plane::audit::AUDIT_LOG;
use portcullis_control_plane::clock::FixedClock;
use portcullis_control_plane::random::SeededRandom;
use portcullis_control_plane::sessions;
use portcullis_control_plane::store::redis::RedisTimeouts;
use portcullis_control_plane::store::{EmbeddedStore, MemoryStore, RedisStore, Store};
use portcullis_control_plane::{AppState, Dependencies};
use portcullis_core::api_token::{self as format, ApiTokenFeedPage, ApiTokenReplica, Refusal, UsageReport};
use serde_json::{json, Value};
use support::{body_json, Listeners, Server};

const NOW_MS: u64 = 1_800_000_000_000;
const NOW: u64 = NOW_MS / 1000;
const DAY: u64 = 86_400;

fn request(user: &str, name: &str, scopes: &[&str], expires_in: Option<u64>) -> CreateApiToken {
    CreateApiToken {
        user: user.to_owned(),
        name: name.to_owned(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        expires_in,
    }
}

async fn create(store: &dyn Store, rng: &SeededRandom, user: &str, expires_in: u64) -> CreatedApiToken {
    let policy = ApiTokenPolicy::default();
    api_tokens::create(
        store,
        rng,
        &policy,
        &request(user, "CI deploy", &["deploy"], Some(expires_in)),
        NOW_MS,
    )
    .await
    .unwrap()
}

/// The secret part of a token (between the second `_` and the checksum).
fn secret_of(token: &str) -> &str {
    let rest = token.rsplit('_').next().unwrap();
    &rest[..format::SECRET_LEN]
}

support::backends!(
    created_tokens_verify_and_can_be_listed_shown_and_revoked,
    revoking_a_user_revokes_every_api_token_of_theirs,
    last_used_at_is_written_at_most_once_a_minute_under_a_burst_of_reports,
    a_replica_built_from_the_feed_decides_every_refusal_reason,
);

async fn created_tokens_verify_and_can_be_listed_shown_and_revoked(store: Arc<dyn Store>) {
    let store = store.as_ref();
    let rng = SeededRandom::new(1);
    let created = create(store, &rng, "alice", 90 * DAY).await;
    let parsed = format::parse(&created.token, "pct").unwrap();
    assert_eq!(parsed.lookup, created.info.id);
    assert_eq!((created.info.expires_at, created.info.status.as_str()), (NOW + 90 * DAY, "active"));
    let other = create(store, &rng, "alice", DAY).await;
    create(store, &rng, "bob", DAY).await;

    let listed = api_tokens::list(store, "alice", NOW_MS).await.unwrap();
    let mut ids: Vec<&str> = listed.iter().map(|t| t.id.as_str()).collect();
    ids.sort_unstable();
    let mut expected = vec![created.info.id.as_str(), other.info.id.as_str()];
    expected.sort_unstable();
    assert_eq!(ids, expected, "only alice's tokens");
    assert_eq!(api_tokens::show(store, &created.info.id, NOW_MS).await.unwrap(), created.info);

    let (revoked, changed) = api_tokens::revoke(store, &created.info.id, NOW_MS + 1000).await.unwrap();
    assert!(changed);
    assert_eq!((revoked.status.as_str(), revoked.revoked_at), ("revoked", Some(NOW + 1)));
    let (again, changed) = api_tokens::revoke(store, &created.info.id, NOW_MS + 5000).await.unwrap();
    assert!(!changed, "revoking twice changes nothing");
    assert_eq!(again.revoked_at, Some(NOW + 1));
    // Past its expiry the token is shown as expired for a while, then forgotten.
    let later = (NOW + DAY) * 1000;
    assert_eq!(api_tokens::show(store, &other.info.id, later).await.unwrap().status, "expired");
    let gone = later + api_tokens::RETAIN_AFTER_EXPIRY_MS;
    assert!(matches!(
        api_tokens::show(store, &other.info.id, gone).await,
        Err(api_tokens::ApiTokenError::NotFound(_))
    ));
    assert!(matches!(
        api_tokens::revoke(store, "zzzzzzzz", NOW_MS).await,
        Err(api_tokens::ApiTokenError::NotFound(_))
    ));
}

async fn revoking_a_user_revokes_every_api_token_of_theirs(store: Arc<dyn Store>) {
    let store = store.as_ref();
    let rng = SeededRandom::new(2);
    let a = create(store, &rng, "mallory", DAY).await;
    let b = create(store, &rng, "mallory", DAY).await;
    let keep = create(store, &rng, "alice", DAY).await;
    let revoked = sessions::revoke_user(store, "mallory", NOW_MS).await.unwrap();
    let mut ids = revoked.revoked_api_tokens.clone();
    ids.sort_unstable();
    let mut expected = vec![a.info.id.clone(), b.info.id.clone()];
    expected.sort_unstable();
    assert_eq!(ids, expected);
    for token in api_tokens::list(store, "mallory", NOW_MS).await.unwrap() {
        assert_eq!(token.status, "revoked");
    }
    assert_eq!(api_tokens::show(store, &keep.info.id, NOW_MS).await.unwrap().status, "active");
    assert!(api_tokens::revoke_all_of_user(store, "mallory", NOW_MS).await.unwrap().is_empty());
}

async fn last_used_at_is_written_at_most_once_a_minute_under_a_burst_of_reports(store: Arc<dyn Store>) {
    let rng = SeededRandom::new(3);
    let token = create(store.as_ref(), &rng, "alice", DAY).await;
    let report = UsageReport { used: vec![token.info.id.clone(), token.info.id.clone(), "unknown1".into()] };
    let first = api_tokens::record_usage(store.as_ref(), &report, NOW_MS).await.unwrap();
    assert_eq!(first, 1, "repeats in one report and unknown ids write nothing");
    // A burst of reports within the minute, sequential and concurrent, from a moved clock.
    let mut written = 0;
    for second in 1..60 {
        written += api_tokens::record_usage(store.as_ref(), &report, NOW_MS + second * 1000).await.unwrap();
    }
    let concurrent: Vec<_> = (0..16)
        .map(|_| {
            let (store, report) = (Arc::clone(&store), report.clone());
            tokio::spawn(async move {
                api_tokens::record_usage(store.as_ref(), &report, NOW_MS + USAGE_INTERVAL_MS - 1)
                    .await
                    .unwrap()
            })
        })
        .collect();
    for task in concurrent {
        written += task.await.unwrap();
    }
    assert_eq!(written, 0, "nothing is written within the minute");
    let shown = api_tokens::show(store.as_ref(), &token.info.id, NOW_MS).await.unwrap();
    assert_eq!(shown.last_used_at, Some(NOW));
    // A minute later, many concurrent reports: exactly one write wins.
    let at = NOW_MS + USAGE_INTERVAL_MS;
    let concurrent: Vec<_> = (0..16)
        .map(|_| {
            let (store, report) = (Arc::clone(&store), report.clone());
            tokio::spawn(async move { api_tokens::record_usage(store.as_ref(), &report, at).await.unwrap() })
        })
        .collect();
    let mut written = 0;
    for task in concurrent {
        written += task.await.unwrap();
    }
    assert_eq!(written, 1);
    let shown = api_tokens::show(store.as_ref(), &token.info.id, at).await.unwrap();
    assert_eq!(shown.last_used_at, Some(at / 1000));
}

async fn follow(
    store: &dyn Store,
    rng: &SeededRandom,
    replica: &mut ApiTokenReplica,
    limit: usize,
    now_ms: u64,
) {
    for _ in 0..100 {
        let cursor = ApiTokenCursor::parse(replica.cursor());
        let page = api_tokens::feed_page(store, rng, cursor.as_ref(), limit, now_ms).await.unwrap();
        assert!(page.tokens.len() <= limit);
        replica.apply(&page).unwrap();
        if !page.more {
            return;
        }
    }
    panic!("the feed never caught up");
}

async fn a_replica_built_from_the_feed_decides_every_refusal_reason(store: Arc<dyn Store>) {
    let store = store.as_ref();
    let rng = SeededRandom::new(4);
    let mut tokens = Vec::new();
    for i in 0..5 {
        tokens.push(create(store, &rng, &format!("user{i}"), DAY + i).await);
    }
    api_tokens::revoke(store, &tokens[0].info.id, NOW_MS).await.unwrap();
    // A snapshot in parts of two.
    let mut replica = ApiTokenReplica::default();
    follow(store, &rng, &mut replica, 2, NOW_MS).await;
    assert_eq!(replica.len(), 5);
    assert_eq!(replica.check(&tokens[0].token, "pct", NOW).unwrap_err(), Refusal::Revoked);
    let (lookup, record) = replica.check(&tokens[1].token, "pct", NOW).unwrap();
    assert_eq!(
        (lookup, &*record.user, &*record.scopes),
        (tokens[1].info.id.as_str(), "user1", &["deploy".into()][..])
    );
    // Changes after the snapshot arrive as deltas.
    api_tokens::revoke(store, &tokens[1].info.id, NOW_MS + 1000).await.unwrap();
    let fresh = create(store, &rng, "late", DAY).await;
    follow(store, &rng, &mut replica, 2, NOW_MS + 1000).await;
    assert_eq!(replica.check(&tokens[1].token, "pct", NOW + 1).unwrap_err(), Refusal::Revoked);
    assert!(replica.check(&fresh.token, "pct", NOW + 1).is_ok());
    assert_eq!(replica.check(&tokens[2].token, "pct", NOW + DAY + 2).unwrap_err(), Refusal::Expired);
    let no_checksum = format!("pct_{}_{}", tokens[2].info.id, "x".repeat(format::SECRET_LEN));
    assert_eq!(replica.check(&no_checksum, "pct", NOW).unwrap_err(), Refusal::UnknownToken);
    let unknown = format::generate("pct", &[9; format::RANDOM_BYTES]).unwrap();
    assert_eq!(replica.check(unknown.expose(), "pct", NOW).unwrap_err(), Refusal::UnknownToken);
    // A follower whose cursor was trimmed away starts over with a snapshot.
    api_tokens::trim_feed(store, 0).await.unwrap();
    let stale = ApiTokenCursor::parse("d.0000000000000000.1");
    let page = api_tokens::feed_page(store, &rng, stale.as_ref(), 10, NOW_MS + 2000).await.unwrap();
    assert_eq!(page.snapshot.as_ref().map(|s| s.part), Some(0), "another epoch: a snapshot");
    let mut again = ApiTokenReplica::default();
    follow(store, &rng, &mut again, 10, NOW_MS + 2000).await;
    assert_eq!(again.len(), 6);
    assert_eq!(again.check(&tokens[1].token, "pct", NOW + 2).unwrap_err(), Refusal::Revoked);
    let epoch = again.cursor().split('.').nth(1).unwrap().to_owned();
    let trimmed = ApiTokenCursor::parse(&format!("d.{epoch}.1")).unwrap();
    let page = api_tokens::feed_page(store, &rng, Some(&trimmed), 10, NOW_MS + 2000).await.unwrap();
    assert_eq!(page.snapshot.map(|s| s.part), Some(0), "a trimmed cursor gets a snapshot");
}

// --- the secret is never stored ---------------------------------------------------------

/// Every form the secret could be stored in: as is, hex and base64 of its bytes, and
/// the whole token.
fn secret_forms(token: &str) -> Vec<String> {
    let secret = secret_of(token);
    let hex: String = secret.bytes().map(|b| format!("{b:02x}")).collect();
    vec![
        secret.to_owned(),
        token.to_owned(),
        hex,
        base64::engine::general_purpose::STANDARD.encode(secret),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret),
    ]
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Creates, uses and revokes a token through the whole HTTP API (audit included).
async fn exercise(store: Arc<dyn Store>) -> CreatedApiToken {
    let state = state_on(store, Arc::new(FixedClock::new(NOW_MS))).await;
    let app = Listeners::new(state);
    let created = app
        .send(admin(
            "POST",
            "/admin/v1/api-tokens",
            Some(json!({"user": "alice", "name": "Kitchen kiosk", "scopes": ["read"], "expiresIn": 3600})),
        ))
        .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let created: CreatedApiToken = serde_json::from_value(body_json(created).await).unwrap();
    let usage = Request::post(format::USAGE_PATH)
        .header(CONTENT_TYPE, "application/json")
        .body(Body::from(json!({"used": [created.info.id]}).to_string()))
        .unwrap();
    assert_eq!(app.send(usage).await.status(), StatusCode::OK);
    let path = format!("/admin/v1/api-tokens/{}/revoke", created.info.id);
    assert_eq!(app.send(admin("POST", &path, None)).await.status(), StatusCode::OK);
    created
}

#[tokio::test]
async fn the_secret_is_nowhere_in_the_embedded_store_file() {
    let dir = tempfile::tempdir().unwrap();
    let created = exercise(Arc::new(EmbeddedStore::open(dir.path()).unwrap())).await;
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        bytes.extend(std::fs::read(entry.unwrap().path()).unwrap());
    }
    assert!(contains(&bytes, created.info.id.as_bytes()), "the scan sees the stored record");
    for form in secret_forms(&created.token) {
        assert!(!contains(&bytes, form.as_bytes()), "{form:?} is in the embedded store file");
    }
}

#[tokio::test]
async fn the_secret_is_in_no_redis_key_or_value() {
    let url = support::shared_redis_url();
    let created = exercise(Arc::new(RedisStore::new(&url, RedisTimeouts::default()).unwrap())).await;
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<Vec<u8>> = redis::cmd("KEYS").arg("*").query_async(&mut conn).await.unwrap();
    let mut everything = Vec::new();
    for key in &keys {
        everything.extend_from_slice(key);
        let kind: String = redis::cmd("TYPE").arg(key).query_async(&mut conn).await.unwrap();
        let values: Vec<Vec<u8>> = match kind.as_str() {
            "string" => vec![redis::cmd("GET").arg(key).query_async(&mut conn).await.unwrap()],
            "hash" => redis::cmd("HGETALL").arg(key).query_async(&mut conn).await.unwrap(),
            "set" => redis::cmd("SMEMBERS").arg(key).query_async(&mut conn).await.unwrap(),
            "zset" => redis::cmd("ZRANGE")
                .arg(key)
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES")
                .query_async(&mut conn)
                .await
                .unwrap(),
            "list" => redis::cmd("LRANGE").arg(key).arg(0).arg(-1).query_async(&mut conn).await.unwrap(),
            "stream" => {
                let entries: redis::Value =
                    redis::cmd("XRANGE").arg(key).arg("-").arg("+").query_async(&mut conn).await.unwrap();
                vec![format!("{entries:?}").into_bytes()]
            }
            other => panic!("unexpected Redis type {other}"),
        };
        for value in values {
            everything.extend_from_slice(&value);
        }
    }
    assert!(contains(&everything, created.info.id.as_bytes()), "the scan sees the stored record");
    for form in secret_forms(&created.token) {
        assert!(!contains(&everything, form.as_bytes()), "{form:?} is in Redis");
    }
}

// --- the HTTP API ------------------------------------------------------------------------

const ADMIN_TOKEN: &str = "api-token-test-admin-0123456789";

async fn state_on(store: Arc<dyn Store>, clock: Arc<FixedClock>) -> AppState {
    AppState::initialise(Dependencies {
        clock,
        rng: Arc::new(SeededRandom::new(5)),
        ..support::dependencies(store, ADMIN_TOKEN, [7; 32])
    })
    .await
    .unwrap()
}

fn admin(method: &str, path: &str, body: Option<Value>) -> Request<Body> {
    support::admin_request(ADMIN_TOKEN, method, path, body)
}

async fn problem(response: Response, status: StatusCode) -> String {
    assert_eq!(response.status(), status);
    assert_eq!(response.headers().get(CONTENT_TYPE).unwrap(), "application/problem+json");
    body_json(response).await["detail"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn bad_create_requests_are_problems_naming_the_field() {
    let state = state_on(Arc::new(MemoryStore::new()), Arc::new(FixedClock::new(NOW_MS))).await;
    let app = Listeners::new(
        state.with_api_token_policy(ApiTokenPolicy { prefix: "acme".into(), max_ttl_seconds: 90 * DAY }),
    );
    let base = json!({"user": "alice", "name": "CI deploy", "scopes": ["deploy"], "expiresIn": 3600});
    let with = |field: &str, value: Value| {
        let mut body = base.clone();
        if value.is_null() {
            body.as_object_mut().unwrap().remove(field);
        } else {
            body[field] = value;
        }
        body
    };
    for (body, field) in [
        (with("expiresIn", Value::Null), "expiresIn"),
        (with("expiresIn", json!(90 * DAY + 1)), "expiresIn"),
        (with("expiresIn", json!(0)), "expiresIn"),
        (with("name", json!("  ")), "name"),
        (with("name", Value::Null), "name"),
        (with("scopes", json!([])), "scopes"),
        (with("scopes", Value::Null), "scopes"),
        (with("scopes", json!(["ok", "two words"])), "scopes[1]"),
        (with("user", json!("")), "user"),
        (with("user", Value::Null), "user"),
        (with("secret", json!("x")), "secret"),
    ] {
        let detail = problem(
            app.send(admin("POST", "/admin/v1/api-tokens", Some(body.clone()))).await,
            StatusCode::BAD_REQUEST,
        )
        .await;
        assert!(detail.contains(field), "{body}: {detail:?} does not name {field}");
    }
    // The longest lifetime allowed is accepted, with the configured prefix.
    let ok = app.send(admin("POST", "/admin/v1/api-tokens", Some(with("expiresIn", json!(90 * DAY))))).await;
    assert_eq!(ok.status(), StatusCode::CREATED);
    let created = body_json(ok).await;
    assert!(created["token"].as_str().unwrap().starts_with("acme_"));
    assert_eq!(created["expiresAt"], NOW + 90 * DAY);
}

#[tokio::test]
async fn the_admin_api_lists_shows_and_revokes_without_ever_showing_the_secret_and_audits_each_write() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let state = state_on(Arc::clone(&store), Arc::new(FixedClock::new(NOW_MS))).await;
    let app = Listeners::new(state);
    let body = json!({"user": "alice", "name": "CI deploy", "scopes": ["deploy", "read"], "expiresIn": 3600});
    let created = body_json(app.send(admin("POST", "/admin/v1/api-tokens", Some(body))).await).await;
    let (token, id) =
        (created["token"].as_str().unwrap().to_owned(), created["id"].as_str().unwrap().to_owned());
    assert_eq!(created["status"], "active");
    assert!(created.get("verifier").is_none());

    let listed = app.send(admin("GET", "/admin/v1/users/alice/api-tokens", None)).await;
    assert_eq!(listed.status(), StatusCode::OK);
    let listed = body_json(listed).await;
    assert_eq!(listed["tokens"][0]["id"], id.as_str());
    let shown = body_json(app.send(admin("GET", &format!("/admin/v1/api-tokens/{id}"), None)).await).await;
    assert_eq!(shown["scopes"], json!(["deploy", "read"]));
    for view in [&listed, &shown] {
        let text = view.to_string();
        assert!(
            !text.contains(secret_of(&token)) && !text.contains("verifier") && !text.contains("\"token\"")
        );
    }
    for path in ["/admin/v1/api-tokens/unknown1", "/admin/v1/api-tokens/not-an-id"] {
        problem(app.send(admin("GET", path, None)).await, StatusCode::NOT_FOUND).await;
    }
    problem(
        app.send(admin("POST", "/admin/v1/api-tokens/unknown1/revoke", None)).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    let revoked =
        body_json(app.send(admin("POST", &format!("/admin/v1/api-tokens/{id}/revoke"), None)).await).await;
    assert_eq!(revoked["status"], "revoked");
    let body = json!({"user": "alice", "name": "second", "scopes": ["x"], "expiresIn": 60});
    app.send(admin("POST", "/admin/v1/api-tokens", Some(body))).await;
    let all =
        body_json(app.send(admin("POST", "/admin/v1/users/alice/api-tokens/revoke-all", None)).await).await;
    assert_eq!(all["revoked"].as_array().unwrap().len(), 1, "the one not revoked yet");
    // Without the admin token: 401.
    let anonymous = Request::get(format!("/admin/v1/api-tokens/{id}")).body(Body::empty()).unwrap();
    assert_eq!(app.admin.clone().oneshot_status(anonymous).await, StatusCode::UNAUTHORIZED);

    let audit = store.log_range(AUDIT_LOG, 1, 100).await.unwrap();
    let actions: Vec<String> = audit
        .iter()
        .map(|e| serde_json::from_slice::<Value>(&e.data).unwrap()["action"].as_str().unwrap().to_owned())
        .filter(|a| a.starts_with("api_token."))
        .collect();
    assert_eq!(
        actions,
        ["api_token.create", "api_token.revoke", "api_token.create", "api_token.revoke_user"]
    );
    for entry in &audit {
        assert!(!contains(&entry.data, secret_of(&token).as_bytes()), "the audit log holds the secret");
    }
}

trait OneshotStatus {
    async fn oneshot_status(self, request: Request<Body>) -> StatusCode;
}

impl OneshotStatus for axum::Router {
    async fn oneshot_status(self, request: Request<Body>) -> StatusCode {
        use tower::ServiceExt as _;
        self.oneshot(request).await.unwrap().status()
    }
}

#[tokio::test]
async fn envoys_follow_the_feed_and_report_usage_with_the_fleet_credential_only() {
    let clock = Arc::new(FixedClock::new(NOW_MS));
    let state = state_on(Arc::new(MemoryStore::new()), Arc::clone(&clock)).await;
    let app = Listeners::new(state);
    let body = json!({"user": "alice", "name": "CI", "scopes": ["deploy"], "expiresIn": 3600});
    let created: CreatedApiToken = serde_json::from_value(
        body_json(app.send(admin("POST", "/admin/v1/api-tokens", Some(body))).await).await,
    )
    .unwrap();

    let page = app.send(Request::get(format::FEED_PATH).body(Body::empty()).unwrap()).await;
    assert_eq!(page.status(), StatusCode::OK);
    let page: ApiTokenFeedPage = serde_json::from_value(body_json(page).await).unwrap();
    let mut replica = ApiTokenReplica::default();
    replica.apply(&page).unwrap();
    assert!(replica.check(&created.token, "pct", NOW).is_ok());
    let next = format!("{}?cursor={}", format::FEED_PATH, replica.cursor());
    let delta: ApiTokenFeedPage = serde_json::from_value(
        body_json(app.send(Request::get(next).body(Body::empty()).unwrap()).await).await,
    )
    .unwrap();
    assert!(delta.snapshot.is_none() && !delta.more);

    let usage = |used: Value| {
        Request::post(format::USAGE_PATH)
            .header(CONTENT_TYPE, "application/json")
            .body(Body::from(json!({ "used": used }).to_string()))
            .unwrap()
    };
    let reply = body_json(app.send(usage(json!([created.info.id]))).await).await;
    assert_eq!(reply["updated"], 1);
    clock.set(NOW_MS + 30_000);
    assert_eq!(body_json(app.send(usage(json!([created.info.id]))).await).await["updated"], 0);
    let too_many: Vec<String> = (0..=format::MAX_USAGE_BATCH).map(|_| created.info.id.clone()).collect();
    assert!(problem(app.send(usage(json!(too_many))).await, StatusCode::BAD_REQUEST).await.contains("used"));
    let bad_cursor = format!("{}?cursor=nonsense", format::FEED_PATH);
    assert!(problem(
        app.send(Request::get(bad_cursor).body(Body::empty()).unwrap()).await,
        StatusCode::BAD_REQUEST
    )
    .await
    .contains("cursor"));

    // Neither route without the fleet credential, nor with the admin token, nor on the admin listener.
    for authorization in [None, Some(format!("Bearer {ADMIN_TOKEN}"))] {
        let mut request = Request::get(format::FEED_PATH);
        if let Some(value) = &authorization {
            request = request.header(AUTHORIZATION, value);
        }
        assert_eq!(
            app.internal.clone().oneshot_status(request.body(Body::empty()).unwrap()).await,
            StatusCode::UNAUTHORIZED
        );
    }
    let on_admin = Request::get(format::FEED_PATH)
        .header(AUTHORIZATION, format!("Bearer {ADMIN_TOKEN}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(app.admin.clone().oneshot_status(on_admin).await, StatusCode::NOT_FOUND);
}

// --- the CLI -------------------------------------------------------------------------------

fn cli(server: &Server, args: &[&str]) -> std::process::Output {
    support::cli(&server.url, Some(ADMIN_TOKEN), args)
}

fn stdout(output: &std::process::Output) -> String {
    assert!(output.status.success(), "command failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout.clone()).unwrap()
}

#[test]
fn the_cli_creates_lists_shows_and_revokes_api_tokens() {
    let server = Server::start(ADMIN_TOKEN, &["--store", "memory", "--api-token-max-ttl", "90d"]);
    let create = |extra: &[&str]| {
        let mut args = vec![
            "api-tokens",
            "create",
            "--user",
            "alice",
            "--name",
            "CI deploy",
            "--scope",
            "deploy",
            "--scope",
            "read",
        ];
        args.extend_from_slice(extra);
        cli(&server, &args)
    };
    let text = stdout(&create(&["--expires-in", "90d"]));
    assert_eq!(text.lines().count(), 1, "only the token: {text:?}");
    let token = text.trim_end();
    let parsed = format::parse(token, "pct").unwrap();
    let json: Value = serde_json::from_str(&stdout(&create(&["--expires-in", "12h", "--json"]))).unwrap();
    assert!(json["token"].as_str().unwrap().starts_with("pct_"));
    assert_eq!(json["expiresAt"].as_u64().unwrap() - json["createdAt"].as_u64().unwrap(), 12 * 3600);
    stdout(&create(&["--expires-in", "30m"]));

    let too_long = create(&["--expires-in", "91d"]);
    assert!(!too_long.status.success());
    assert!(String::from_utf8_lossy(&too_long.stderr).contains("expiresIn"));
    let no_expiry = create(&[]);
    assert!(!no_expiry.status.success(), "--expires-in is required");

    let listed: Value =
        serde_json::from_str(&stdout(&cli(&server, &["api-tokens", "list", "--user", "alice"]))).unwrap();
    assert_eq!(listed["tokens"].as_array().unwrap().len(), 3);
    assert!(!listed.to_string().contains(secret_of(token)));
    let shown: Value =
        serde_json::from_str(&stdout(&cli(&server, &["api-tokens", "show", parsed.lookup]))).unwrap();
    assert_eq!((shown["name"].as_str(), shown["status"].as_str()), (Some("CI deploy"), Some("active")));
    let revoked: Value =
        serde_json::from_str(&stdout(&cli(&server, &["api-tokens", "revoke", parsed.lookup]))).unwrap();
    assert_eq!(revoked["status"], "revoked");
    let all: Value =
        serde_json::from_str(&stdout(&cli(&server, &["api-tokens", "revoke", "--user", "alice"]))).unwrap();
    assert_eq!(all["revoked"].as_array().unwrap().len(), 2);
    let unknown = cli(&server, &["api-tokens", "show", "unknown1"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("Not found"));
}
