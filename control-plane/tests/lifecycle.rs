//! Key rotation, refresh tokens, revocations and the change feed through the HTTP
//! API, run against every store backend like the store suite: `backends!` turns each
//! test into `<test>::memory`, `<test>::embedded` and `<test>::redis`. Time is a
//! `FixedClock`; nothing sleeps.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use support::Backend;

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::body::Body;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{Request, StatusCode};
use axum::response::Response;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use portcullis_control_plane::audit::AUDIT_LOG;
use portcullis_control_plane::clock::{Clock as _, FixedClock};
use portcullis_control_plane::keys::{self, KeyRingError, KEY_SET_RECORD, REVOKED_KEY_MEMORY_MS};
use portcullis_control_plane::master_key::MasterKey;
use portcullis_control_plane::random::OsRandom;
use portcullis_control_plane::revocations::{
    self, FeedCursor, EPOCH_RECORD, REVOKED_SET, USER_VERSIONS_SET, VERSION_CEILING_MARGIN,
};
use portcullis_control_plane::store::Store;
use portcullis_control_plane::tokens::TokenPolicy;
use portcullis_control_plane::{AppState, Dependencies};
use portcullis_core::fleet::encode_hash;
use portcullis_core::jwt::MinimumVersions as _;
use portcullis_core::revocation::{
    Applied, FeedFollower, FeedPage, GlobalMinVersion, RevocationReplica, TokenStatus, MAX_PAGE_BYTES,
};
use serde_json::{json, Value};

const ADMIN_TOKEN: &str = "lifecycle-admin-token-0123456789";
const T0: u64 = 1_700_000_000_000;
const DAY_MS: u64 = 86_400_000;

support::backends!(
    refresh_is_single_use_under_concurrency,
    refresh_rotates_within_the_session_and_reuse_revokes_the_family,
    key_rotation_keeps_the_old_key_published_until_it_retires,
    private_keys_are_sealed_and_a_wrong_master_key_is_refused,
    feed_serves_deltas_after_a_cursor_and_snapshots_otherwise,
    a_snapshot_comes_in_bounded_parts_that_assemble_into_the_whole_state,
    changes_between_parts_are_caught_up_before_the_replica_is_published,
    a_snapshot_whose_base_is_trimmed_away_meanwhile_starts_over,
    user_revoke_all_raises_the_minimum_above_every_issued_token,
    global_rotation_records_reason_and_grace,
    revoking_a_session_revokes_its_tokens_and_is_audited,
    token_status_sees_a_jti_revocation_at_once_and_until_its_exp,
    token_status_reports_the_current_user_and_global_minimums,
    token_status_rejects_overlong_and_unknown_parameters,
    revoking_a_user_revokes_their_sessions_and_refresh_tokens_in_one_audited_operation,
    a_refresh_racing_a_user_revocation_never_yields_a_token_that_passes,
    after_a_breach_rotation_no_token_minted_before_it_passes_for_any_user,
    revoking_a_signing_key_takes_it_out_of_the_jwks_at_once_and_publishes_it,
    revoking_the_current_key_makes_a_fresh_one_current,
    revoking_every_key_leaves_one_fresh_current_key,
    a_previous_master_key_reseals_the_signing_keys_under_the_new_one,
    every_feed_page_carries_a_ceiling_that_fresh_tokens_stay_under,
);

struct Harness {
    app: support::Listeners,
    state: AppState,
    clock: Arc<FixedClock>,
}

fn dependencies(store: Arc<dyn Store>, clock: Arc<FixedClock>, master: [u8; 32]) -> Dependencies {
    Dependencies {
        clock,
        token_policy: TokenPolicy { refresh_ttl_seconds: 7 * 86_400, ..support::token_policy() },
        ..support::dependencies(store, ADMIN_TOKEN, master)
    }
}

async fn harness(backend: &Backend) -> Harness {
    let clock = Arc::new(FixedClock::new(T0));
    let state = AppState::initialise(dependencies(Arc::clone(&backend.store), Arc::clone(&clock), [7; 32]))
        .await
        .unwrap();
    Harness { app: support::Listeners::new(state.clone()), state, clock }
}

impl Harness {
    async fn send(&self, request: Request<Body>) -> Response {
        self.app.send(request).await
    }

    async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(AUTHORIZATION, format!("Bearer {ADMIN_TOKEN}"))
            .header(CONTENT_TYPE, "application/json")
            .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
            .unwrap();
        let response = self.send(request).await;
        (response.status(), body_json(response).await)
    }

    async fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, value) = self.admin(method, path, body).await;
        assert_eq!(status, StatusCode::OK, "{method} {path}: {value}");
        value
    }

    async fn refresh(&self, refresh_token: &str) -> (StatusCode, Value) {
        let request = Request::post("/v1/token/refresh")
            .header(CONTENT_TYPE, "application/json")
            .body(Body::from(json!({ "refreshToken": refresh_token }).to_string()))
            .unwrap();
        let response = self.send(request).await;
        (response.status(), body_json(response).await)
    }

    /// One feed page after `cursor` (`None`: from the start).
    async fn feed(&self, cursor: Option<&str>, limit: usize) -> FeedPage {
        let query = cursor.map_or_else(String::new, |c| format!("cursor={c}&"));
        let response = self
            .send(Request::get(format!("/v1/feed?{query}limit={limit}")).body(Body::empty()).unwrap())
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 22).await.unwrap();
        assert!(bytes.len() <= MAX_PAGE_BYTES, "a page of {} bytes", bytes.len());
        // Exactly the filter's wire type (it denies unknown fields).
        serde_json::from_slice(&bytes).unwrap()
    }

    /// The cursor after a full sync from scratch (a snapshot and its catch-up).
    async fn synced_cursor(&self) -> String {
        let (replica, _) = self.sync(1000).await;
        replica.cursor
    }

    /// Follows the feed from scratch the way the filter does, `limit` entries per page,
    /// until the replica is published: the replica and the pages it took.
    async fn sync(&self, limit: usize) -> (RevocationReplica, Vec<FeedPage>) {
        let key = support::feed_key();
        let (mut follower, mut published) = (FeedFollower::default(), RevocationReplica::default());
        let mut pages = Vec::new();
        for _ in 0..10_000 {
            let cursor = follower.cursor(&published).to_owned();
            let page = self.feed((!cursor.is_empty()).then_some(cursor.as_str()), limit).await;
            pages.push(page.clone());
            let (applied, _) =
                follower.apply(&mut published, page, &key, self.clock.now_ms() / 1000).unwrap();
            if let Applied::Assembled(replica) = applied {
                return (*replica, pages);
            }
        }
        panic!("no replica after 10000 pages");
    }

    /// `GET /v1/token-status` with a raw query string; the status and the body text.
    async fn token_status_raw(&self, query: &str) -> (StatusCode, Option<String>, String) {
        let response =
            self.send(Request::get(format!("/v1/token-status{query}")).body(Body::empty()).unwrap()).await;
        let status = response.status();
        let content_type = response.headers().get(CONTENT_TYPE).map(|v| v.to_str().unwrap().to_owned());
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, content_type, String::from_utf8(bytes.to_vec()).unwrap())
    }

    async fn token_status(&self, query: &str) -> TokenStatus {
        let (status, _, text) = self.token_status_raw(query).await;
        assert_eq!(status, StatusCode::OK, "{query}: {text}");
        // Exactly the filter's wire type (it denies unknown fields).
        serde_json::from_str(&text).unwrap()
    }

    async fn jwks(&self) -> JwkSet {
        let response = self.send(Request::get("/.well-known/jwks.json").body(Body::empty()).unwrap()).await;
        serde_json::from_slice(&axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap()).unwrap()
    }

    async fn issue(&self, sub: &str) -> Value {
        self.ok("POST", "/admin/v1/tokens", Some(json!({ "sub": sub }))).await
    }

    async fn audit_actions(&self) -> Vec<String> {
        self.state
            .store
            .log_range(AUDIT_LOG, 1, 1000)
            .await
            .unwrap()
            .into_iter()
            .map(|e| serde_json::from_slice::<Value>(&e.data).unwrap()["action"].as_str().unwrap().to_owned())
            .collect()
    }
}

async fn body_json(response: Response) -> Value {
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 22).await.unwrap();
    if bytes.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
}

fn claims(token: &str) -> Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap())
        .unwrap()
}

/// Verifies `token` against `jwks` (signature only; the clock is fixed in the past).
fn verifies(token: &str, jwks: &JwkSet) -> bool {
    let Some(kid) = jsonwebtoken::decode_header(token).unwrap().kid else {
        return false;
    };
    let Some(jwk) = jwks.find(&kid) else {
        return false;
    };
    let mut validation = Validation::new(Algorithm::ES256);
    validation.validate_exp = false;
    validation.set_audience(&["demo-api"]);
    jsonwebtoken::decode::<Value>(token, &DecodingKey::from_jwk(jwk).unwrap(), &validation).is_ok()
}

/// The filter's replica, from a full sync at the harness' clock.
async fn replica(h: &Harness) -> RevocationReplica {
    h.sync(1000).await.0
}

/// Whether the filter, holding `replica`, lets `token` through (its version and `jti`,
/// looked up by their feed hashes; the signature is the filter's business and always
/// valid here).
fn passes(replica: &RevocationReplica, token: &str, now_secs: u64) -> bool {
    let c = claims(token);
    let (sub, ver, jti) = (c["sub"].as_str(), c["ver"].as_u64().unwrap(), c["jti"].as_str().unwrap());
    let key = support::feed_key();
    replica.versions(&key).accepts(sub, ver, now_secs) && !replica.is_revoked(&key, jti, now_secs)
}

/// The revoked token id hashes of a page.
fn revoked_jtis(page: &FeedPage) -> BTreeSet<String> {
    page.revoked.iter().map(|r| r.jti_hash.clone()).collect()
}

/// The feed's names for these token ids.
fn jtis<S: AsRef<str>>(jtis: impl IntoIterator<Item = S>) -> BTreeSet<String> {
    let key = support::feed_key();
    jtis.into_iter().map(|j| encode_hash(&key.token_id(j.as_ref()))).collect()
}

fn sub_hash(sub: &str) -> String {
    encode_hash(&support::feed_key().subject(sub))
}

async fn refresh_is_single_use_under_concurrency(backend: Backend) {
    let h = Arc::new(harness(&backend).await);
    let issued = h.issue("alice").await;
    let refresh = issued["refreshToken"].as_str().unwrap().to_owned();
    let attempts: Vec<_> = (0..20)
        .map(|_| {
            let h = Arc::clone(&h);
            let refresh = refresh.clone();
            tokio::spawn(async move { h.refresh(&refresh).await })
        })
        .collect();
    let mut successes = 0;
    for attempt in attempts {
        let (status, body) = attempt.await.unwrap();
        if status == StatusCode::OK {
            successes += 1;
            assert_eq!(body["sessionId"], issued["sessionId"]);
        } else {
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(body["type"], "urn:portcullis:problem:invalid_grant");
            assert_eq!(body["title"], "Invalid grant");
        }
    }
    assert_eq!(successes, 1, "exactly one concurrent refresh wins");
}

async fn refresh_rotates_within_the_session_and_reuse_revokes_the_family(backend: Backend) {
    let h = harness(&backend).await;
    let issued = h.issue("alice").await;
    let sid = issued["sessionId"].as_str().unwrap();
    let first_refresh = issued["refreshToken"].as_str().unwrap();
    assert_eq!(issued["refreshExpiresIn"], 7 * 86_400);
    assert_eq!(claims(issued["accessToken"].as_str().unwrap())["sid"], sid);
    // Only a hash of the refresh token is stored.
    let key = format!("refresh-tokens/{first_refresh}");
    assert_eq!(h.state.store.record_get(&key, T0).await.unwrap(), None);

    h.clock.set(T0 + 60_000);
    let (status, second) = h.refresh(first_refresh).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_eq!(second["sessionId"], sid);
    assert_ne!(second["refreshToken"], issued["refreshToken"]);
    assert_ne!(second["jti"], issued["jti"]);
    let second_claims = claims(second["accessToken"].as_str().unwrap());
    assert_eq!((second_claims["sub"].as_str(), second_claims["sid"].as_str()), (Some("alice"), Some(sid)));

    h.ok("POST", "/admin/v1/revocations", Some(json!({"jti": "unrelated", "exp": T0 / 1000 + 3600}))).await;
    let cursor = h.synced_cursor().await;
    // The first refresh token again: reuse. The family dies.
    let (status, problem) = h.refresh(first_refresh).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(problem["type"], "urn:portcullis:problem:invalid_grant");
    let (status, _) = h.refresh(second["refreshToken"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "the family's live refresh token is invalidated");

    let delta = h.feed(Some(&cursor), 1000).await;
    assert_eq!(delta.snapshot, None);
    let expected = jtis([&issued["jti"], &second["jti"]].iter().map(|j| j.as_str().unwrap()));
    assert_eq!(revoked_jtis(&delta), expected);
    assert!(revoked_jtis(&h.feed(None, 1000).await).is_superset(&expected));
    assert!(h.audit_actions().await.contains(&"session.reuse_detected".to_owned()));

    let sessions = h.ok("GET", "/admin/v1/users/alice/sessions", None).await;
    assert_eq!(sessions["sessions"][0]["revoked"], true);
    assert_eq!(sessions["sessions"][0]["revokedReason"], "refresh token reuse");

    let (status, _) = h.refresh("never-issued").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

async fn key_rotation_keeps_the_old_key_published_until_it_retires(backend: Backend) {
    let h = harness(&backend).await;
    let old_token = h.issue("alice").await["accessToken"].as_str().unwrap().to_owned();
    let old_kid = jsonwebtoken::decode_header(&old_token).unwrap().kid.unwrap();
    let version = h.feed(None, 10).await.key_set_version;

    h.clock.set(T0 + 1000);
    let rotation = h.ok("POST", "/admin/v1/keys/rotate", None).await;
    let new_kid = rotation["kid"].as_str().unwrap().to_owned();
    assert_ne!(new_kid, old_kid);
    assert_eq!(rotation["previousKid"], old_kid.as_str());
    assert_eq!(rotation["keySetVersion"], version + 1);
    assert_eq!(rotation["previousRetiresAt"], (T0 + 1000 + DAY_MS) / 1000);

    let new_token = h.issue("alice").await["accessToken"].as_str().unwrap().to_owned();
    assert_eq!(jsonwebtoken::decode_header(&new_token).unwrap().kid.unwrap(), new_kid);
    let jwks = h.jwks().await;
    assert_eq!(jwks.keys.len(), 2);
    assert!(verifies(&old_token, &jwks) && verifies(&new_token, &jwks));
    let listed = h.ok("GET", "/admin/v1/keys", None).await;
    assert_eq!(listed["keys"][0]["status"], "current");
    assert_eq!(listed["keys"][1]["status"], "previous");

    // Just before the overlap ends the old key still verifies; at its end it retires.
    h.clock.set(T0 + 1000 + DAY_MS - 1);
    assert!(verifies(&old_token, &h.jwks().await));
    h.clock.set(T0 + 1000 + DAY_MS);
    let jwks = h.jwks().await;
    assert!(!verifies(&old_token, &jwks));
    assert!(verifies(&new_token, &jwks));
    let done = h.state.maintain().await.unwrap();
    assert_eq!(done.retired_version, Some(version + 2));
    let listed = h.ok("GET", "/admin/v1/keys", None).await;
    assert_eq!(listed["keySetVersion"], version + 2);
    assert_eq!(listed["keys"][1]["status"], "retired");
    assert_eq!(h.feed(None, 10).await.key_set_version, version + 2);
    let status = h.ok("GET", "/admin/v1/status", None).await;
    assert_eq!(
        (status["currentKid"].as_str(), status["keySetVersion"].as_u64()),
        (Some(new_kid.as_str()), Some(version + 2))
    );
    let actions = h.audit_actions().await;
    assert!(actions.contains(&"keys.rotate".to_owned()) && actions.contains(&"keys.retire".to_owned()));

    // A second replica on the same store signs with the new key.
    let replica =
        AppState::initialise(dependencies(Arc::clone(&backend.store), Arc::clone(&h.clock), [7; 32]))
            .await
            .unwrap();
    assert_eq!(replica.keys.current(T0).await.current().kid(), new_kid);
}

async fn private_keys_are_sealed_and_a_wrong_master_key_is_refused(backend: Backend) {
    let h = harness(&backend).await;
    h.ok("POST", "/admin/v1/keys/rotate", None).await;
    let record = h.state.store.record_get(KEY_SET_RECORD, T0).await.unwrap().unwrap();
    let text = String::from_utf8(record.clone()).unwrap();
    let current = h.state.keys.current(T0).await;
    let private = current.current().private_bytes().unwrap();
    use base64::Engine as _;
    for encoded in [
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(private.as_slice()),
        base64::engine::general_purpose::STANDARD.encode(private.as_slice()),
    ] {
        assert!(!text.contains(&encoded), "the record holds the raw private key");
    }
    assert!(!record.windows(private.len()).any(|w| w == private.as_slice()));
    assert!(!text.contains("\"d\""));

    let clock = Arc::new(FixedClock::new(T0));
    let error =
        AppState::initialise(dependencies(Arc::clone(&backend.store), clock, [8; 32])).await.err().unwrap();
    assert!(matches!(error, KeyRingError::WrongMasterKey { .. }), "{error}");
    assert!(error.to_string().contains("master key"), "{error}");
}

async fn feed_serves_deltas_after_a_cursor_and_snapshots_otherwise(backend: Backend) {
    let h = harness(&backend).await;
    let exp = T0 / 1000 + 3600;
    let first = h.ok("POST", "/admin/v1/revocations", Some(json!({"jti": "j1", "exp": exp}))).await;
    assert!(first["cursor"].as_u64().unwrap() > 0);
    let (status, problem) =
        h.admin("POST", "/admin/v1/revocations", Some(json!({"jti": "old", "exp": T0 / 1000 - 1}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(problem["detail"].as_str().unwrap().starts_with("exp:"));

    // No cursor: a snapshot, here in one part, then the deltas after it.
    let snapshot = h.feed(None, 1000).await;
    let part = snapshot.snapshot.clone().unwrap();
    assert_eq!((part.part, part.last, snapshot.more), (0, true, true));
    assert_eq!(revoked_jtis(&snapshot), jtis(["j1"]));
    assert_eq!(snapshot.revoked[0].exp, exp);
    assert_eq!(snapshot.global.as_ref().unwrap().min_version, 0);
    assert!(snapshot.key_set_version >= 1);
    assert_eq!(snapshot.key_id, support::feed_key().id());
    let caught_up = h.feed(Some(&snapshot.cursor), 1000).await;
    assert_eq!((caught_up.snapshot.is_none(), caught_up.more, caught_up.entries()), (true, false, 0));

    for i in 2..=4 {
        h.ok("POST", "/admin/v1/revocations", Some(json!({"jti": format!("j{i}"), "exp": exp + i}))).await;
    }
    h.ok("POST", "/admin/v1/users/bob/revoke-all", None).await;
    let page = h.feed(Some(&caught_up.cursor), 2).await;
    assert!(page.snapshot.is_none() && page.more);
    assert_eq!(revoked_jtis(&page), jtis(["j2", "j3"]));
    let page = h.feed(Some(&page.cursor), 2).await;
    assert!(!page.more);
    assert_eq!(revoked_jtis(&page), jtis(["j4"]));
    assert_eq!(page.user_min_versions.len(), 1);
    assert_eq!(page.user_min_versions[0].sub_hash, sub_hash("bob"));
    let head = page.cursor.clone();
    let empty = h.feed(Some(&head), 100).await;
    assert_eq!((empty.cursor.as_str(), empty.snapshot.is_none(), empty.more), (head.as_str(), true, false));
    assert!(empty.revoked.is_empty());

    // Revocations end with their token.
    h.clock.set((exp + 1) * 1000);
    assert!(!revoked_jtis(&h.feed(None, 1000).await).contains(&jtis(["j1"]).pop_first().unwrap()));

    // Trimmed: an old cursor gets a new snapshot.
    h.state.store.feed_trim("revocations", 1).await.unwrap();
    let resync = h.feed(Some(&caught_up.cursor), 100).await;
    assert_eq!(resync.snapshot.as_ref().map(|s| s.part), Some(0));
    assert_eq!(revoked_jtis(&resync), jtis(["j2", "j3", "j4"]));
    assert_eq!(resync.user_min_versions[0].min_version, 2);
    // A cursor ahead of the feed, or of another epoch (the store was reset), resyncs too.
    let Some(FeedCursor::Delta { epoch, after }) = FeedCursor::parse(&head) else { panic!("{head}") };
    let ahead = FeedCursor::Delta { epoch: epoch.clone(), after: after + 1000 }.encode();
    assert!(h.feed(Some(&ahead), 10).await.snapshot.is_some());
    let foreign = FeedCursor::Delta { epoch: "00000000deadbeef".into(), after }.encode();
    assert!(h.feed(Some(&foreign), 10).await.snapshot.is_some());
    h.state.store.record_delete(EPOCH_RECORD).await.unwrap();
    let reset = h.feed(Some(&head), 10).await;
    assert!(reset.snapshot.is_some(), "a store that lost its epoch is a new feed");
    assert_ne!(FeedCursor::parse(&reset.cursor).unwrap(), FeedCursor::parse(&head).unwrap());

    // The wire format: compact camelCase JSON, hashes only.
    let response = h.send(Request::get("/v1/feed").body(Body::empty()).unwrap()).await;
    let text = String::from_utf8(axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap().to_vec())
        .unwrap();
    let expected = format!(r#""userMinVersions":[{{"subHash":"{}","minVersion":2}}]"#, sub_hash("bob"));
    assert!(text.starts_with(r#"{"cursor":"#) && text.contains(&expected), "{text}");
    assert!(!text.contains("bob") && !text.contains("\"j2\""), "{text}");
    assert!(!text.contains('\n') && !text.contains(": "));

    // Cursors are the feed's own; anything else, and the old `after`, is a 400 problem.
    for query in ["cursor=12", "cursor=d.zz.1", "after=0", "limit=0", "limit=10001"] {
        let response = h.send(Request::get(format!("/v1/feed?{query}")).body(Body::empty()).unwrap()).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{query}");
        let problem = body_json(response).await;
        assert_eq!(problem["type"], "urn:portcullis:problem:invalid-request", "{query}");
    }
}

/// Writes revocations straight into the state (no feed entries), as a large state that
/// only a snapshot delivers, laid out as `revoke jti` and `revoke user` leave it:
/// `revoked` jtis `r000…` expiring at `exp` (seconds), `users` subjects `u000…` with
/// minimum version 2.
async fn seed_state(store: &dyn Store, revoked: usize, users: usize, exp: u64) {
    // Index members never expire (the year 9999).
    const NEVER_MS: u64 = 253_402_300_799_000;
    for i in 0..revoked {
        store.set_add(REVOKED_SET, &format!("r{i:03}"), exp * 1000, T0).await.unwrap();
    }
    for i in 0..users {
        store.record_put(&format!("user-min-version/u{i:03}"), b"2".to_vec(), None, T0).await.unwrap();
        store.set_add(USER_VERSIONS_SET, &format!("u{i:03}\u{1f}2"), NEVER_MS, T0).await.unwrap();
    }
}

async fn a_snapshot_comes_in_bounded_parts_that_assemble_into_the_whole_state(backend: Backend) {
    let h = harness(&backend).await;
    seed_state(h.state.store.as_ref(), 250, 120, T0 / 1000 + 3600).await;
    let (replica, pages) = h.sync(40).await;
    assert_eq!((replica.revoked.len(), replica.user_min_versions.len()), (250, 120));
    let key = support::feed_key();
    assert!(replica.is_revoked(&key, "r137", T0 / 1000));
    assert_eq!(replica.versions(&key).user_min_version("u119"), Some(2));
    let parts: Vec<&FeedPage> = pages.iter().filter(|p| p.snapshot.is_some()).collect();
    assert_eq!(parts.len(), 370_usize.div_ceil(40), "full parts of 40, then the rest");
    for (i, part) in parts.iter().enumerate() {
        let snapshot = part.snapshot.as_ref().unwrap();
        assert_eq!(
            (snapshot.part, snapshot.id.as_str()),
            (i as u32, parts[0].snapshot.as_ref().unwrap().id.as_str())
        );
        assert_eq!(snapshot.last, i + 1 == parts.len());
        assert!(part.entries() <= 40 && part.more);
        assert_eq!(part.global.is_some(), i == 0, "the global state travels with part 0");
    }
    // After the last part: the deltas since the base, here none.
    let last = pages.last().unwrap();
    assert!(last.snapshot.is_none() && !last.more && last.entries() == 0);
}

async fn changes_between_parts_are_caught_up_before_the_replica_is_published(backend: Backend) {
    let h = harness(&backend).await;
    let exp = T0 / 1000 + 3600;
    seed_state(h.state.store.as_ref(), 100, 100, exp).await;
    let key = support::feed_key();
    let (mut follower, mut published) = (FeedFollower::default(), RevocationReplica::default());
    let mut parts_alone = BTreeSet::new();
    let mut u010_in_parts = 0;
    for n in 0..100 {
        let cursor = follower.cursor(&published).to_owned();
        let page = h.feed((!cursor.is_empty()).then_some(cursor.as_str()), 30).await;
        if page.snapshot.is_some() {
            parts_alone.extend(revoked_jtis(&page));
            let u010 = sub_hash("u010");
            u010_in_parts = page
                .user_min_versions
                .iter()
                .filter(|u| u.sub_hash == u010)
                .fold(u010_in_parts, |m, u| m.max(u.min_version));
        }
        let (applied, _) = follower.apply(&mut published, page, &key, T0 / 1000).unwrap();
        if let Applied::Assembled(replica) = applied {
            published = *replica;
            break;
        }
        assert!(published.revoked.is_empty(), "nothing is published before the end");
        if n == 1 {
            // While the scan is past the start of both sets: a revocation that sorts before
            // its position (earlier expiry, earlier name), and a subject already read
            // raised again (its index member moves behind the position).
            h.ok("POST", "/admin/v1/revocations", Some(json!({"jti": "a-early", "exp": exp - 1000}))).await;
        }
        if n == 5 {
            h.ok("POST", "/admin/v1/users/u010/revoke-all", None).await;
        }
    }
    // The parts alone missed both changes...
    assert!(!parts_alone.contains(&jtis(["a-early"]).pop_first().unwrap()), "the scan passed a-early");
    assert_eq!(u010_in_parts, 2, "the parts saw u010's old minimum");
    // ...and the published replica has them, because it was caught up first.
    assert!(published.is_revoked(&key, "a-early", T0 / 1000));
    assert_eq!(published.versions(&key).user_min_version("u010"), Some(3));
    assert_eq!((published.revoked.len(), published.user_min_versions.len()), (101, 100));
}

async fn a_snapshot_whose_base_is_trimmed_away_meanwhile_starts_over(backend: Backend) {
    let h = harness(&backend).await;
    seed_state(h.state.store.as_ref(), 90, 0, T0 / 1000 + 3600).await;
    let first = h.feed(None, 30).await;
    let first_id = first.snapshot.clone().unwrap().id;
    // Changes after the base, then a trim that drops them: the base cannot be caught up.
    h.ok("POST", "/admin/v1/revocations", Some(json!({"jti": "late", "exp": T0 / 1000 + 60}))).await;
    h.state.store.feed_trim("revocations", 0).await.unwrap();
    let next = h.feed(Some(&first.cursor), 30).await;
    let snapshot = next.snapshot.clone().unwrap();
    assert_eq!(snapshot.part, 0, "a new snapshot, not part 1");
    assert_ne!(snapshot.id, first_id);
    let (replica, _) = h.sync(30).await;
    assert_eq!(replica.revoked.len(), 91);
    assert!(replica.is_revoked(&support::feed_key(), "late", T0 / 1000));
}

async fn user_revoke_all_raises_the_minimum_above_every_issued_token(backend: Backend) {
    let h = harness(&backend).await;
    let before = claims(h.issue("carol").await["accessToken"].as_str().unwrap());
    assert_eq!(before["ver"], 1);
    let revoked = h.ok("POST", "/admin/v1/users/carol/revoke-all", None).await;
    assert_eq!(revoked["minVersion"], 2);
    let after = claims(h.issue("carol").await["accessToken"].as_str().unwrap());
    assert_eq!(after["ver"], 2, "new tokens pass the new minimum");
    assert_eq!(claims(h.issue("dave").await["accessToken"].as_str().unwrap())["ver"], 1);
    let user = h.ok("GET", "/admin/v1/users/carol", None).await;
    assert_eq!((user["minVersion"].as_u64(), user["currentVersion"].as_u64()), (Some(2), Some(2)));
    assert_eq!(user["sessions"].as_array().unwrap().len(), 2);
    assert_eq!(h.ok("POST", "/admin/v1/users/carol/revoke-all", None).await["minVersion"], 3);
    let snapshot = h.feed(None, 10).await;
    assert_eq!(snapshot.user_min_versions.len(), 1);
    assert_eq!(snapshot.user_min_versions[0].min_version, 3);
    assert_eq!(snapshot.user_min_versions[0].sub_hash, sub_hash("carol"));
    assert!(h.audit_actions().await.contains(&"revocation.user".to_owned()));
}

async fn global_rotation_records_reason_and_grace(backend: Backend) {
    let h = harness(&backend).await;
    assert_eq!(h.ok("GET", "/admin/v1/global", None).await["minVersion"], 1);
    let cursor = h.synced_cursor().await;
    h.clock.set(T0 + 5000);
    let global = h
        .ok("POST", "/admin/v1/global/rotate", Some(json!({"reason": "key leak", "graceSeconds": 300})))
        .await;
    // Above the ceiling published while the highest version issued was 1.
    let rotated = 1 + VERSION_CEILING_MARGIN + 1;
    assert_eq!(
        global,
        json!({"minVersion": rotated, "rotatedAt": (T0 + 5000) / 1000, "graceSeconds": 300, "reason": "key leak"})
    );
    assert_eq!(h.ok("GET", "/admin/v1/global", None).await, global);
    let delta = h.feed(Some(&cursor), 10).await;
    let g = delta.global.unwrap();
    assert_eq!((g.min_version, g.rotated_at, g.grace_seconds), (rotated, (T0 + 5000) / 1000, 300));
    assert_eq!(claims(h.issue("erin").await["accessToken"].as_str().unwrap())["ver"], rotated);
    assert_eq!(h.ok("GET", "/admin/v1/status", None).await["globalMinVersion"], rotated);
    let (status, _) = h.admin("POST", "/admin/v1/global/rotate", Some(json!({"reason": ""}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

async fn revoking_a_session_revokes_its_tokens_and_is_audited(backend: Backend) {
    let h = harness(&backend).await;
    let issued = h.issue("frank").await;
    let sid = issued["sessionId"].as_str().unwrap();
    let other = h.issue("frank").await;
    h.ok("POST", "/admin/v1/revocations", Some(json!({"jti": "unrelated", "exp": T0 / 1000 + 3600}))).await;
    let cursor = h.synced_cursor().await;
    let revoked = h.ok("DELETE", &format!("/admin/v1/sessions/{sid}"), None).await;
    assert_eq!(revoked["revokedJtis"], json!([issued["jti"]]));
    let (status, _) = h.refresh(issued["refreshToken"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = h.refresh(other["refreshToken"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::OK, "other sessions are untouched");
    assert_eq!(revoked_jtis(&h.feed(Some(&cursor), 10).await), jtis([issued["jti"].as_str().unwrap()]));
    let (status, problem) = h.admin("DELETE", "/admin/v1/sessions/nope", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{problem}");
    let actions = h.audit_actions().await;
    assert!(actions.contains(&"token.issue".to_owned()) && actions.contains(&"session.revoke".to_owned()));
}

async fn token_status_sees_a_jti_revocation_at_once_and_until_its_exp(backend: Backend) {
    let h = harness(&backend).await;
    let issued = h.issue("alice").await;
    let jti = issued["jti"].as_str().unwrap().to_owned();
    let exp = claims(issued["accessToken"].as_str().unwrap())["exp"].as_u64().unwrap();
    assert!(!h.token_status(&format!("?jti={jti}&sub=alice")).await.revoked);

    // Visible as soon as the admin call returned: no feed poll in between.
    h.ok("POST", "/admin/v1/revocations", Some(json!({"jti": jti, "exp": exp}))).await;
    let status = h.token_status(&format!("?jti={jti}&sub=alice")).await;
    assert_eq!(status, TokenStatus { revoked: true, ..TokenStatus::default() });
    assert!(h.token_status(&format!("?jti={jti}")).await.revoked, "sub is optional");
    assert!(!h.token_status("?jti=other&sub=alice").await.revoked);

    // The wire format: compact camelCase JSON, all fields present.
    let (code, content_type, text) = h.token_status_raw(&format!("?jti={jti}")).await;
    assert_eq!((code, content_type.as_deref()), (StatusCode::OK, Some("application/json")));
    assert_eq!(
        text,
        r#"{"revoked":true,"userMinVersion":0,"global":{"minVersion":0,"rotatedAt":0,"graceSeconds":0}}"#
    );

    // Revoked until the token's own exp, by the injected clock; then not.
    h.clock.set(exp * 1000 - 1);
    assert!(h.token_status(&format!("?jti={jti}")).await.revoked);
    h.clock.set(exp * 1000);
    assert!(!h.token_status(&format!("?jti={jti}")).await.revoked);

    // Tokens revoked through their session are revoked too; percent-encoding is decoded.
    h.clock.set(T0);
    let other = h.issue("bob").await;
    let sid = other["sessionId"].as_str().unwrap();
    h.ok("DELETE", &format!("/admin/v1/sessions/{sid}"), None).await;
    assert!(h.token_status(&format!("?jti={}", other["jti"].as_str().unwrap())).await.revoked);
    h.ok("POST", "/admin/v1/revocations", Some(json!({"jti": "a b/c&d", "exp": T0 / 1000 + 60}))).await;
    assert!(h.token_status("?jti=a%20b%2Fc%26d").await.revoked);

    let metrics = h.send(Request::get("/metrics").body(Body::empty()).unwrap()).await;
    let text = String::from_utf8(axum::body::to_bytes(metrics.into_body(), 1 << 20).await.unwrap().to_vec())
        .unwrap();
    assert!(text.contains(r#"portcullis_token_status_requests_total{revoked="true"} 6"#), "{text}");
    assert!(text.contains(r#"portcullis_token_status_requests_total{revoked="false"} 3"#), "{text}");
    assert!(text.contains(r#"route="/v1/token-status",method="GET",status="200"} 9"#), "{text}");
}

async fn token_status_reports_the_current_user_and_global_minimums(backend: Backend) {
    let h = harness(&backend).await;
    let nothing = TokenStatus::default();
    assert_eq!(h.token_status("").await, nothing, "no parameters: the global state only");
    assert_eq!(h.token_status("?jti=never-issued&sub=nobody").await, nothing);
    assert_eq!(h.token_status("?jti=&sub=").await, nothing, "empty is the same as absent");

    h.ok("POST", "/admin/v1/users/carol/revoke-all", None).await;
    assert_eq!(h.token_status("?sub=carol").await.user_min_version, 2);
    assert_eq!(h.token_status("?sub=dave").await.user_min_version, 0);
    assert_eq!(h.token_status("?jti=x").await.user_min_version, 0, "no sub: 0");

    h.clock.set(T0 + 5000);
    h.ok("POST", "/admin/v1/global/rotate", Some(json!({"reason": "key leak", "graceSeconds": 300}))).await;
    // Above the ceiling published while the highest version issued was carol's 2.
    let rotated = 2 + VERSION_CEILING_MARGIN + 1;
    let global =
        GlobalMinVersion { min_version: rotated, rotated_at: (T0 + 5000) / 1000, grace_seconds: 300 };
    assert_eq!(
        h.token_status("?sub=carol").await,
        TokenStatus { revoked: false, user_min_version: 2, global }
    );
    assert_eq!(h.token_status("").await.global, global);

    // revoke-all after the rotation goes above the global minimum.
    h.ok("POST", "/admin/v1/users/carol/revoke-all", None).await;
    assert_eq!(
        h.token_status("?sub=carol&jti=j").await,
        TokenStatus { revoked: false, user_min_version: rotated + 1, global }
    );
    // The same answer the feed gives once it has been polled.
    let snapshot = h.feed(None, 100).await;
    assert_eq!(snapshot.global, Some(global));
    assert_eq!(snapshot.user_min_versions[0].min_version, rotated + 1);
}

async fn token_status_rejects_overlong_and_unknown_parameters(backend: Backend) {
    let h = harness(&backend).await;
    let longest = "x".repeat(512);
    let too_long = "x".repeat(513);
    assert_eq!(h.token_status(&format!("?jti={longest}&sub={longest}")).await, TokenStatus::default());
    // Bytes are counted after percent-decoding: 171 × "é" (2 bytes) + 1 = 343 bytes.
    assert!(!h.token_status(&format!("?jti={}x", "%C3%A9".repeat(171))).await.revoked);
    for (query, field) in [
        (format!("?jti={too_long}"), "jti"),
        (format!("?sub={too_long}"), "sub"),
        (format!("?jti=a&sub={too_long}"), "sub"),
        (format!("?sub={}", "%C3%A9".repeat(257)), "sub"),
    ] {
        let (status, content_type, text) = h.token_status_raw(&query).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
        assert_eq!(content_type.as_deref(), Some("application/problem+json"));
        let problem: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(problem["type"], "urn:portcullis:problem:invalid-request");
        assert_eq!(problem["status"], 400);
        assert_eq!(problem["detail"], format!("{field}: at most 512 bytes"));
    }
    for query in ["?token=abc", "?jti=a&jti=b"] {
        let (status, content_type, text) = h.token_status_raw(query).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {text}");
        assert_eq!(content_type.as_deref(), Some("application/problem+json"));
    }
    let response = h.send(Request::post("/v1/token-status").body(Body::empty()).unwrap()).await;
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
}

async fn revoking_a_user_revokes_their_sessions_and_refresh_tokens_in_one_audited_operation(
    backend: Backend,
) {
    let h = harness(&backend).await;
    let first = h.issue("alice").await;
    let second = h.issue("alice").await;
    let bob = h.issue("bob").await;
    h.clock.set(T0 + 1000);
    let (status, refreshed) = h.refresh(second["refreshToken"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{refreshed}");
    let cursor = h.synced_cursor().await;
    let audit_before = h.audit_actions().await.len();

    let revoked = h.ok("POST", "/admin/v1/users/alice/revoke-all", None).await;
    assert_eq!((revoked["sub"].as_str(), revoked["minVersion"].as_u64()), (Some("alice"), Some(2)));
    let sessions: BTreeSet<&str> =
        revoked["revokedSessions"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    assert_eq!(
        sessions,
        [first["sessionId"].as_str().unwrap(), second["sessionId"].as_str().unwrap()].into()
    );
    let revoked_ids: BTreeSet<String> =
        revoked["revokedJtis"].as_array().unwrap().iter().map(|j| j.as_str().unwrap().to_owned()).collect();
    let expected: BTreeSet<String> =
        [&first, &second, &refreshed].iter().map(|t| t["jti"].as_str().unwrap().to_owned()).collect();
    assert_eq!(revoked_ids, expected, "every live access token of every session");

    // No refresh token of hers works any more, however fresh.
    for refresh in [&first, &refreshed] {
        let (status, problem) = h.refresh(refresh["refreshToken"].as_str().unwrap()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
        assert_eq!(problem["type"], "urn:portcullis:problem:invalid_grant");
    }
    let listed = h.ok("GET", "/admin/v1/users/alice/sessions", None).await;
    for session in listed["sessions"].as_array().unwrap() {
        assert_eq!(session["revoked"], true, "{session}");
        assert_eq!(session["revokedReason"], "all tokens of the user revoked");
    }
    // One operation, one audit entry.
    let actions = h.audit_actions().await;
    assert_eq!(actions[audit_before..], ["revocation.user"]);
    let delta = h.feed(Some(&cursor), 100).await;
    assert_eq!(revoked_jtis(&delta), jtis(&expected), "by their feed hashes");
    assert_eq!(delta.user_min_versions.len(), 1);
    // Bob is untouched; alice can start afresh.
    let (status, _) = h.refresh(bob["refreshToken"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let fresh = h.issue("alice").await;
    let (status, _) = h.refresh(fresh["refreshToken"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::OK, "sessions started after the revocation refresh");
}

async fn a_refresh_racing_a_user_revocation_never_yields_a_token_that_passes(backend: Backend) {
    const ROUNDS: usize = 8;
    const MAX_REFRESHES: usize = 40;
    let h = Arc::new(harness(&backend).await);
    for round in 0..ROUNDS {
        let sub = format!("racer{round}");
        let issued = h.issue(&sub).await;
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        // Refreshes in a chain, each with the newest refresh token, until refused.
        let refresher = {
            let h = Arc::clone(&h);
            let mut refresh = issued["refreshToken"].as_str().unwrap().to_owned();
            tokio::spawn(async move {
                let mut started = Some(started_tx);
                let mut minted = Vec::new();
                for _ in 0..MAX_REFRESHES {
                    let (status, body) = h.refresh(&refresh).await;
                    if status != StatusCode::OK {
                        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
                        return (minted, refresh, true);
                    }
                    minted.push(body["accessToken"].as_str().unwrap().to_owned());
                    refresh = body["refreshToken"].as_str().unwrap().to_owned();
                    if let Some(tx) = started.take() {
                        let _ = tx.send(());
                    }
                }
                (minted, refresh, false)
            })
        };
        // Revoke while the chain is running.
        started_rx.await.unwrap();
        h.ok("POST", &format!("/admin/v1/users/{sub}/revoke-all"), None).await;
        let (minted, last_refresh, refused) = refresher.await.unwrap();
        assert!(refused, "round {round}: the refresh chain never stopped");
        let (status, _) = h.refresh(&last_refresh).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "round {round}: the last refresh token still works");

        let replica = replica(&h).await;
        let now = h.clock.now_ms() / 1000;
        let first = issued["accessToken"].as_str().unwrap().to_owned();
        for token in minted.iter().chain([&first]) {
            assert!(
                !passes(&replica, token, now),
                "round {round}: a token of the revoked user passes: {}",
                claims(token)
            );
        }
        let listed = h.ok("GET", &format!("/admin/v1/users/{sub}/sessions"), None).await;
        assert_eq!(listed["sessions"][0]["revoked"], true, "round {round}");
    }
}

async fn after_a_breach_rotation_no_token_minted_before_it_passes_for_any_user(backend: Backend) {
    let h = harness(&backend).await;
    let access = |v: &Value| v["accessToken"].as_str().unwrap().to_owned();
    let mut before = Vec::new();
    // Subjects whose own minimum was raised once, twice, three times: their tokens
    // carry versions the global minimum never had.
    for (sub, revocations) in [("alice", 1), ("carol", 2), ("dave", 3)] {
        for _ in 0..revocations {
            h.ok("POST", &format!("/admin/v1/users/{sub}/revoke-all"), None).await;
        }
    }
    for sub in ["alice", "carol", "dave"] {
        let issued = h.issue(sub).await;
        before.push(access(&issued));
        let (status, refreshed) = h.refresh(issued["refreshToken"].as_str().unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        before.push(access(&refreshed));
    }
    before.push(access(&h.issue("bob").await));
    let highest = before.iter().map(|t| claims(t)["ver"].as_u64().unwrap()).max().unwrap();
    assert_eq!(highest, 4, "dave's minimum was raised three times");
    let replica_before = replica(&h).await;
    assert!(before.iter().all(|t| passes(&replica_before, t, T0 / 1000)));

    h.clock.set(T0 + 10_000);
    let global =
        h.ok("POST", "/admin/v1/global/rotate", Some(json!({"reason": "drill", "graceSeconds": 0}))).await;
    let min = global["minVersion"].as_u64().unwrap();
    assert_eq!(min, highest + VERSION_CEILING_MARGIN + 1, "above every version ever issued, and its ceiling");
    let replica = replica(&h).await;
    let now = (T0 + 10_000) / 1000;
    for token in &before {
        assert!(!passes(&replica, token, now), "a pre-breach token passes: {}", claims(token));
    }
    // What is minted afterwards passes, for revoked and untouched subjects alike.
    for sub in ["alice", "carol", "dave", "bob", "erin"] {
        let token = access(&h.issue(sub).await);
        assert!(passes(&replica, &token, now), "{sub}: {}", claims(&token));
    }
    // Revoking a subject after the rotation still goes above the global minimum.
    assert_eq!(h.ok("POST", "/admin/v1/users/carol/revoke-all", None).await["minVersion"], min + 1);
}

fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

fn jwks_kids(jwks: &JwkSet) -> Vec<String> {
    jwks.keys.iter().map(|k| k.common.key_id.clone().unwrap()).collect()
}

async fn revoking_a_signing_key_takes_it_out_of_the_jwks_at_once_and_publishes_it(backend: Backend) {
    let h = harness(&backend).await;
    let old_token = h.issue("alice").await["accessToken"].as_str().unwrap().to_owned();
    let old_kid = kid_of(&old_token);
    let rotation = h.ok("POST", "/admin/v1/keys/rotate", None).await;
    let new_kid = rotation["kid"].as_str().unwrap().to_owned();
    assert_eq!(
        jwks_kids(&h.jwks().await),
        [new_kid.clone(), old_kid.clone()],
        "both verify after a rotation"
    );
    let cursor = h.synced_cursor().await;

    h.clock.set(T0 + 1000);
    let revoked = h.ok("POST", &format!("/admin/v1/keys/{old_kid}/revoke"), None).await;
    assert_eq!(revoked["revokedKids"], json!([old_kid]));
    assert_eq!(
        (revoked["currentKid"].as_str(), revoked["rotated"].as_bool()),
        (Some(new_kid.as_str()), Some(false))
    );
    // Out of the JWKS at once: no overlap for a leaked key.
    let jwks = h.jwks().await;
    assert_eq!(jwks_kids(&jwks), [new_kid.as_str()]);
    assert!(!verifies(&old_token, &jwks));
    let listed = h.ok("GET", "/admin/v1/keys", None).await;
    let old =
        listed["keys"].as_array().unwrap().iter().find(|k| k["kid"] == old_kid.as_str()).unwrap().clone();
    assert_eq!((old["status"].as_str(), old["revokedAt"].as_u64()), (Some("revoked"), Some(T0 / 1000 + 1)));
    assert_eq!(listed["keySetVersion"], revoked["keySetVersion"]);
    // Published: in the next delta and in every snapshot.
    let delta = h.feed(Some(&cursor), 10).await;
    assert_eq!(delta.revoked_kids, [old_kid.as_str()]);
    assert_eq!(delta.key_set_version, revoked["keySetVersion"].as_u64().unwrap());
    assert_eq!(h.feed(None, 10).await.revoked_kids, [old_kid.as_str()]);
    assert!(h.audit_actions().await.contains(&"keys.revoke".to_owned()));
    // Its sealed private part is gone from the store.
    let record =
        String::from_utf8(h.state.store.record_get(KEY_SET_RECORD, T0).await.unwrap().unwrap()).unwrap();
    let stored: Value = serde_json::from_str(&record).unwrap();
    let stored_old =
        stored["keys"].as_array().unwrap().iter().find(|k| k["kid"] == old_kid.as_str()).unwrap();
    assert!(stored_old.get("sealedKey").is_none(), "{stored_old}");

    // Again: nothing more to do, nothing published.
    let again = h.ok("POST", &format!("/admin/v1/keys/{old_kid}/revoke"), None).await;
    assert_eq!(again["revokedKids"], json!([]));
    let head = h.synced_cursor().await;
    assert_eq!(h.feed(Some(&head), 10).await.revoked_kids, Vec::<String>::new());
    let (status, problem) = h.admin("POST", "/admin/v1/keys/no-such-kid/revoke", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{problem}");
    assert_eq!(problem["type"], "urn:portcullis:problem:not-found");

    // A second replica serves the same JWKS.
    let replica =
        AppState::initialise(dependencies(Arc::clone(&backend.store), Arc::clone(&h.clock), [7; 32]))
            .await
            .unwrap();
    assert_eq!(replica.keys.current(T0 + 1000).await.revoked_kids(), [old_kid.as_str()]);
    // Revoked keys are remembered (and published) long enough, then dropped.
    h.clock.set(T0 + 1000 + REVOKED_KEY_MEMORY_MS);
    h.state.maintain().await.unwrap();
    h.ok("POST", "/admin/v1/keys/rotate", None).await;
    assert!(h.feed(None, 10).await.revoked_kids.is_empty());
}

async fn revoking_the_current_key_makes_a_fresh_one_current(backend: Backend) {
    let h = harness(&backend).await;
    let token = h.issue("alice").await["accessToken"].as_str().unwrap().to_owned();
    let leaked = kid_of(&token);
    let revoked = h.ok("POST", &format!("/admin/v1/keys/{leaked}/revoke"), None).await;
    assert_eq!(revoked["rotated"], true);
    let current = revoked["currentKid"].as_str().unwrap().to_owned();
    assert_ne!(current, leaked);
    assert_eq!(jwks_kids(&h.jwks().await), [current.as_str()]);
    let fresh = h.issue("alice").await["accessToken"].as_str().unwrap().to_owned();
    assert_eq!(kid_of(&fresh), current, "never signed with a revoked key");
    assert!(verifies(&fresh, &h.jwks().await) && !verifies(&token, &h.jwks().await));
    assert_eq!(h.ok("GET", "/admin/v1/status", None).await["currentKid"], current.as_str());
}

async fn revoking_every_key_leaves_one_fresh_current_key(backend: Backend) {
    let h = harness(&backend).await;
    let first = kid_of(h.issue("alice").await["accessToken"].as_str().unwrap());
    let second = h.ok("POST", "/admin/v1/keys/rotate", None).await["kid"].as_str().unwrap().to_owned();
    let revoked = h.ok("POST", "/admin/v1/keys/revoke-all", None).await;
    let kids: BTreeSet<&str> =
        revoked["revokedKids"].as_array().unwrap().iter().map(|k| k.as_str().unwrap()).collect();
    assert_eq!(kids, [first.as_str(), second.as_str()].into());
    assert_eq!(revoked["rotated"], true);
    let current = revoked["currentKid"].as_str().unwrap();
    assert_eq!(jwks_kids(&h.jwks().await), [current.to_owned()]);
    let snapshot: BTreeSet<String> = h.feed(None, 10).await.revoked_kids.into_iter().collect();
    assert_eq!(snapshot, [first, second].into());
}

async fn a_previous_master_key_reseals_the_signing_keys_under_the_new_one(backend: Backend) {
    let h = harness(&backend).await;
    h.ok("POST", "/admin/v1/keys/rotate", None).await;
    let kids = jwks_kids(&h.jwks().await);
    let (old, new) = (MasterKey::from_bytes([7; 32]), MasterKey::from_bytes([9; 32]));
    let store = backend.store.as_ref();
    // The new key alone cannot open the set; with the previous one it is re-sealed.
    let refused =
        AppState::initialise(dependencies(Arc::clone(&backend.store), Arc::clone(&h.clock), [9; 32])).await;
    assert!(matches!(refused.err(), Some(KeyRingError::WrongMasterKey { .. })));
    assert!(keys::reseal_key_set(store, &new, &old, &OsRandom, T0).await.unwrap());
    assert!(!keys::reseal_key_set(store, &new, &old, &OsRandom, T0).await.unwrap(), "already re-sealed");
    let resealed =
        AppState::initialise(dependencies(Arc::clone(&backend.store), Arc::clone(&h.clock), [9; 32]))
            .await
            .unwrap();
    let jwks = resealed.keys.current(T0).await.jwks(T0);
    assert_eq!(jwks.keys.iter().map(|k| k.kid.clone()).collect::<Vec<_>>(), kids, "the same keys");
    let refused =
        AppState::initialise(dependencies(Arc::clone(&backend.store), Arc::clone(&h.clock), [7; 32])).await;
    assert!(matches!(refused.err(), Some(KeyRingError::WrongMasterKey { .. })), "the old key opens nothing");
    let stranger = MasterKey::from_bytes([1; 32]);
    let error = keys::reseal_key_set(store, &MasterKey::from_bytes([2; 32]), &stranger, &OsRandom, T0).await;
    assert!(matches!(error, Err(KeyRingError::WrongMasterKey { .. })));
}

async fn every_feed_page_carries_a_ceiling_that_fresh_tokens_stay_under(backend: Backend) {
    let h = harness(&backend).await;
    let page = h.feed(None, 10).await;
    assert_eq!(page.version_ceiling, 1 + VERSION_CEILING_MARGIN);
    assert_eq!(
        h.feed(Some(&page.cursor), 10).await.version_ceiling,
        page.version_ceiling,
        "deltas carry it too"
    );
    let status = h.ok("GET", "/admin/v1/status", None).await;
    assert_eq!(
        (status["issuedVersion"].as_u64(), status["versionCeiling"].as_u64()),
        (Some(1), Some(page.version_ceiling))
    );
    // As many version bumps as the margin, with no poll in between: a token minted
    // after them is still within the ceiling the Envoy read before.
    for _ in 0..VERSION_CEILING_MARGIN {
        revocations::revoke_all_for_user(h.state.store.as_ref(), "alice", T0).await.unwrap();
    }
    let fresh = claims(h.issue("alice").await["accessToken"].as_str().unwrap())["ver"].as_u64().unwrap();
    assert_eq!(fresh, page.version_ceiling);
    revocations::revoke_all_for_user(h.state.store.as_ref(), "alice", T0).await.unwrap();
    let beyond = claims(h.issue("alice").await["accessToken"].as_str().unwrap())["ver"].as_u64().unwrap();
    assert_eq!(beyond, page.version_ceiling + 1, "one bump more is past it (the filter then polls first)");
    assert_eq!(h.feed(None, 10).await.version_ceiling, beyond + VERSION_CEILING_MARGIN);
}
