//! Token lifecycle end to end, on both store backends: the control plane (real process;
//! Redis is a real redis-server) issues, refreshes, rotates and revokes with the CLI; a
//! real Envoy with the filter keeps its replica from the control plane's feed and
//! decides every request locally. The breach response is played through: a leaked
//! signing key (one the test seeds into the store, so it holds the private key like an
//! attacker would) is revoked and shut out within two seconds.

use std::path::Path;
use std::time::Duration;

use portcullis_control_plane::keys::LEGACY_KEY_RECORD;
use portcullis_control_plane::random::OsRandom;
use portcullis_control_plane::signing::{SigningAlgorithm, SigningKeyPair};
use portcullis_control_plane::store::redis::RedisTimeouts;
use portcullis_control_plane::store::{EmbeddedStore, RedisStore, Store};
use portcullis_control_plane::tokens::{self, MintContext, TokenPolicy, TokenRequest};
use portcullis_e2e::{
    control_plane_section, error_description, eventually, http, Backend, ControlPlane, Envoy, EnvoyClusters,
    Redis, StoreKind, TestServer, Workdir, FLEET_CREDENTIAL,
};
use serde_json::{json, Value};

fn plugin_config() -> Value {
    plugin_config_polling_every(250)
}

/// The configuration with the revocation feed polled every `poll_ms` (staleness allowed:
/// twelve polls, at least 3 s).
fn plugin_config_polling_every(poll_ms: u64) -> Value {
    let max_staleness_seconds = (poll_ms * 12 / 1000).max(3);
    json!({
        "realm": "e2e",
        "providers": {
            "portcullis": {
                "issuer": "portcullis",
                "audiences": ["portcullis"],
                "remoteJwks": {
                    "cluster": "portcullis_control_plane", "authority": "control-plane",
                    "unknownKidRefetchIntervalSeconds": 1
                },
                "tokenVersion": { "claim": "ver" }
            }
        },
        "controlPlane": control_plane_section(500),
        "revocation": {
            "pollIntervalMs": poll_ms, "maxStalenessSeconds": max_staleness_seconds,
            "strictTimeoutMs": 500, "strictCacheMs": 0
        },
        "rules": [
            { "name": "orders-write", "match": { "pathPrefix": "/api/orders", "methods": ["POST"] },
              "requires": { "provider": "portcullis" }, "scopes": ["orders:write"] },
            { "name": "strict", "match": { "pathPrefix": "/strict/" }, "requires": { "provider": "portcullis" }, "revocationCheck": "strict" },
            { "name": "lenient", "match": { "pathPrefix": "/lenient/" }, "requires": { "provider": "portcullis" }, "onStale": "allow" },
            { "name": "api", "match": { "pathPrefix": "/api/" }, "requires": { "provider": "portcullis" } }
        ]
    })
}

// Fields drop in order: processes first, the work directory (with their logs) last.
struct Stack {
    envoy: Envoy,
    cp: ControlPlane,
    upstream: TestServer,
    _redis: Option<Redis>,
    dir: Workdir,
}

async fn stack(backend: Backend) -> Stack {
    stack_with(backend, &plugin_config()).await
}

async fn stack_with(backend: Backend, config: &Value) -> Stack {
    stack_seeded(backend, config.clone(), |_, _| async {}).await.0
}

/// A stack whose store `seed` may prepare before the control plane starts (it gets
/// the work directory and the store); returns what `seed` returned.
async fn stack_seeded<T, F, Fut>(backend: Backend, config: Value, seed: F) -> (Stack, T)
where
    F: FnOnce(std::path::PathBuf, StoreKind) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let dir = Workdir::new();
    let (redis, store) = backend.store(dir.path()).await;
    let seeded = seed(dir.path().to_path_buf(), store.clone()).await;
    let cp = ControlPlane::start(dir.path(), store).await;
    let upstream = TestServer::start(json!({"keys": []})).await;
    let clusters = EnvoyClusters::beside(upstream.port, &cp);
    let envoy = Envoy::start(dir.path(), &config, &clusters).await;
    (Stack { envoy, cp, upstream, _redis: redis, dir }, seeded)
}

/// Status and `error_description` (or "") of a GET with a bearer token.
async fn call(envoy: &Envoy, path: &str, token: &str) -> (u16, String) {
    let r = http().get(envoy.url(path)).bearer_auth(token).send().await.expect("request through envoy");
    (r.status().as_u16(), error_description(&r))
}

fn issue(cp: &ControlPlane, sub: &str) -> Value {
    serde_json::from_str(&cp.cli(&["token", "issue", "--sub", sub, "--json"])).expect("token issue --json")
}

fn access(v: &Value) -> String {
    v["accessToken"].as_str().expect("accessToken").to_string()
}

/// Within the poll interval (250 ms) plus a second, as promised.
const PROPAGATION: Duration = Duration::from_millis(1_250 + 1_000);

async fn revoking_a_jti_with_the_cli_rejects_that_token_only(backend: Backend) {
    let s = stack(backend).await;
    let victim = access(&issue(&s.cp, "alice"));
    let other = access(&issue(&s.cp, "alice"));
    assert_eq!(call(&s.envoy, "/api/x", &victim).await.0, 200);

    s.cp.cli(&["revoke", "token", &victim]);
    eventually(PROPAGATION, "the revoked token to be refused", || async {
        call(&s.envoy, "/api/x", &victim).await == (401, "revoked".to_string())
    })
    .await;
    assert_eq!(call(&s.envoy, "/api/x", &other).await.0, 200, "the user's other token still passes");
}

async fn strict_routes_see_a_revocation_as_soon_as_the_admin_call_returns(backend: Backend) {
    // The feed is polled once at start and then not for a minute: every refusal below
    // can only come from the strict check, and each request makes exactly one.
    let s = stack_with(backend, &plugin_config_polling_every(60_000)).await;
    // Synced (a snapshot and its catch-up) before the polls are counted.
    eventually(Duration::from_secs(10), "the first feed sync", || async {
        s.envoy.counter("wasmcustom.portcullis.revocation.snapshots_assembled").await >= 1
    })
    .await;
    let polls = s.envoy.counter("wasmcustom.portcullis.revocation.poll_ok").await;
    let t = access(&issue(&s.cp, "alice"));
    assert_eq!(call(&s.envoy, "/strict/x", &t).await.0, 200);
    s.cp.cli(&["revoke", "token", &t]);
    // No waiting for a poll: the strict rule asks the control plane on each request.
    assert_eq!(call(&s.envoy, "/strict/x", &t).await, (401, "revoked".to_string()));
    let other = access(&issue(&s.cp, "bob"));
    assert_eq!(call(&s.envoy, "/strict/x", &other).await.0, 200);
    s.cp.cli(&["revoke", "user", "bob"]);
    // Refused at once by the control plane's answer: `revoked` (revoking a user revokes
    // her sessions' tokens by jti) or `version_too_old` (her new minimum).
    let (status, reason) = call(&s.envoy, "/strict/x", &other).await;
    assert_eq!(status, 401);
    assert!(reason == "revoked" || reason == "version_too_old", "{reason}");
    assert_eq!(s.envoy.counter("wasmcustom.portcullis.revocation.strict_checks").await, 4);
    assert_eq!(
        s.envoy.counter("wasmcustom.portcullis.revocation.poll_ok").await,
        polls,
        "no poll in between"
    );

    // Without an answer from the control plane the rule fails closed.
    let fresh = access(&issue(&s.cp, "carol"));
    let mut s = s;
    s.cp.proc.terminate();
    assert_eq!(call(&s.envoy, "/strict/x", &fresh).await.0, 503);
}

async fn refresh(cp: &ControlPlane, refresh_token: &str) -> (u16, Value) {
    let url = format!("{}/v1/token/refresh", cp.internal_url());
    let r = http().post(url).json(&json!({ "refreshToken": refresh_token })).send().await.unwrap();
    (r.status().as_u16(), r.json::<Value>().await.unwrap_or(Value::Null))
}

async fn revoking_a_user_rejects_all_their_older_tokens_and_refresh_tokens_only(backend: Backend) {
    let s = stack(backend).await;
    let alice = issue(&s.cp, "alice");
    let (status, refreshed) = refresh(&s.cp, alice["refreshToken"].as_str().unwrap()).await;
    assert_eq!(status, 200, "{refreshed}");
    let bob = access(&issue(&s.cp, "bob"));
    assert_eq!(call(&s.envoy, "/api/x", &access(&refreshed)).await.0, 200);

    let revoked: Value = serde_json::from_str(&s.cp.cli(&["revoke", "user", "alice"])).unwrap();
    assert_eq!(revoked["revokedSessions"].as_array().unwrap().len(), 1, "{revoked}");
    for token in [access(&alice), access(&refreshed)] {
        eventually(PROPAGATION, "alice's tokens to be refused", || async {
            call(&s.envoy, "/api/x", &token).await.0 == 401
        })
        .await;
    }
    // Her refresh token is dead too: it mints nothing that could pass.
    let (status, problem) = refresh(&s.cp, refreshed["refreshToken"].as_str().unwrap()).await;
    assert_eq!(status, 400, "{problem}");
    assert_eq!(problem["type"], "urn:portcullis:problem:invalid_grant");
    let sessions: Value = serde_json::from_str(&s.cp.cli(&["sessions", "list", "alice"])).unwrap();
    assert_eq!(sessions["sessions"][0]["revoked"], true, "{sessions}");
    assert_eq!(call(&s.envoy, "/api/x", &bob).await.0, 200);
    let fresh = access(&issue(&s.cp, "alice"));
    assert_eq!(call(&s.envoy, "/api/x", &fresh).await.0, 200, "tokens minted after the revocation pass");
}

async fn a_breach_rotation_shuts_out_every_pre_breach_token_revoked_users_included(backend: Backend) {
    let s = stack(backend).await;
    s.cp.cli(&["revoke", "user", "alice"]);
    // Minted after her revocation: a version the global minimum never had.
    let alice = access(&issue(&s.cp, "alice"));
    let bob = access(&issue(&s.cp, "bob"));
    for token in [&alice, &bob] {
        eventually(PROPAGATION, "pre-breach tokens to pass", || async {
            call(&s.envoy, "/api/x", token).await.0 == 200
        })
        .await;
    }
    s.cp.cli(&["breach", "rotate", "--grace", "0", "--reason", "e2e drill"]);
    for token in [&alice, &bob] {
        eventually(PROPAGATION, "every pre-breach token to be refused", || async {
            call(&s.envoy, "/api/x", token).await == (401, "version_too_old".to_string())
        })
        .await;
    }
    let fresh = access(&issue(&s.cp, "alice"));
    assert_eq!(call(&s.envoy, "/api/x", &fresh).await.0, 200);
}

async fn breach_rotation_keeps_old_tokens_only_for_the_grace(backend: Backend) {
    let s = stack(backend).await;
    let old = access(&issue(&s.cp, "alice"));
    s.cp.cli(&["breach", "rotate", "--grace", "3", "--reason", "e2e drill"]);
    let rotated = std::time::Instant::now();
    // Give the feed a poll to deliver the new minimum; the grace still covers the token.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(call(&s.envoy, "/api/x", &old).await.0, 200, "inside the grace period");
    let current = access(&issue(&s.cp, "alice"));
    assert_eq!(call(&s.envoy, "/api/x", &current).await.0, 200);

    tokio::time::sleep(Duration::from_secs(4).saturating_sub(rotated.elapsed())).await;
    eventually(Duration::from_secs(2), "the grace to end", || async {
        call(&s.envoy, "/api/x", &old).await == (401, "version_too_old".to_string())
    })
    .await;
    assert_eq!(call(&s.envoy, "/api/x", &current).await.0, 200);
}

async fn a_rotated_signing_key_is_accepted_on_its_first_request(backend: Backend) {
    let s = stack(backend).await;
    let old = access(&issue(&s.cp, "alice"));
    assert_eq!(call(&s.envoy, "/api/x", &old).await.0, 200);

    s.cp.cli(&["keys", "rotate"]);
    let new = access(&issue(&s.cp, "alice"));
    assert_eq!(call(&s.envoy, "/api/x", &new).await.0, 200, "no 401 for a freshly rotated key");
    assert_eq!(call(&s.envoy, "/api/x", &old).await.0, 200, "old-key tokens pass until the old key retires");
}

async fn refresh_is_single_use_and_reuse_revokes_the_family(backend: Backend) {
    let s = stack(backend).await;
    let first = issue(&s.cp, "alice");
    let refresh = |rt: String| {
        let url = format!("{}/v1/token/refresh", s.cp.internal_url());
        async move {
            let r = http().post(url).json(&json!({ "refreshToken": rt })).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (status, second) = refresh(first["refreshToken"].as_str().unwrap().to_string()).await;
    assert_eq!(status, 200, "{second}");
    let second_access = access(&second);
    assert_eq!(call(&s.envoy, "/api/x", &second_access).await.0, 200);

    // The consumed refresh token again: refused, and the whole family is revoked.
    let (status, problem) = refresh(first["refreshToken"].as_str().unwrap().to_string()).await;
    assert_eq!(status, 400);
    assert_eq!(problem["type"], "urn:portcullis:problem:invalid_grant");
    for t in [access(&first), second_access.clone()] {
        eventually(PROPAGATION, "the family's access tokens to be refused", || async {
            call(&s.envoy, "/api/x", &t).await == (401, "revoked".to_string())
        })
        .await;
    }
    let (status, _) = refresh(second["refreshToken"].as_str().unwrap().to_string()).await;
    assert_eq!(status, 400, "the family's live refresh token is dead too");

    // Concurrent refreshes of one token in a new family: exactly one succeeds.
    let family = issue(&s.cp, "bob");
    let rt = family["refreshToken"].as_str().unwrap().to_string();
    let results = futures_join((0..8).map(|_| {
        let rt = rt.clone();
        let url = format!("{}/v1/token/refresh", s.cp.internal_url());
        tokio::spawn(async move {
            http().post(url).json(&json!({ "refreshToken": rt })).send().await.unwrap().status().as_u16()
        })
    }))
    .await;
    assert_eq!(results.iter().filter(|s| **s == 200).count(), 1, "{results:?}");
}

async fn futures_join<I>(tasks: I) -> Vec<u16>
where
    I: Iterator<Item = tokio::task::JoinHandle<u16>>,
{
    let mut out = Vec::new();
    for t in tasks.collect::<Vec<_>>() {
        out.push(t.await.unwrap());
    }
    out
}

async fn a_stopped_control_plane_degrades_as_configured_and_recovers(backend: Backend) {
    let mut s = stack(backend).await;
    let t = access(&issue(&s.cp, "alice"));
    let revoked = access(&issue(&s.cp, "alice"));
    s.cp.cli(&["revoke", "token", &revoked]);
    eventually(PROPAGATION, "replica synced", || async {
        call(&s.envoy, "/api/x", &revoked).await == (401, "revoked".to_string())
    })
    .await;

    s.cp.proc.terminate();
    // The replica keeps answering.
    assert_eq!(call(&s.envoy, "/api/x", &t).await.0, 200);
    assert_eq!(call(&s.envoy, "/api/x", &revoked).await, (401, "revoked".to_string()));
    eventually(Duration::from_secs(8), "the fail-closed rule to answer 503", || async {
        call(&s.envoy, "/api/x", &t).await.0 == 503
    })
    .await;
    // The gauge is sampled on the filter's tick, in whole seconds.
    eventually(Duration::from_secs(3), "the staleness gauge to pass the max staleness", || async {
        s.envoy.counter("wasmcustom.portcullis.revocation.staleness_seconds").await >= 3
    })
    .await;
    assert_eq!(call(&s.envoy, "/lenient/x", &t).await.0, 200, "onStale: allow keeps serving");
    assert_eq!(call(&s.envoy, "/lenient/x", &revoked).await, (401, "revoked".to_string()));

    s.cp.restart().await;
    eventually(Duration::from_secs(10), "recovery once the control plane is back", || async {
        call(&s.envoy, "/api/x", &t).await.0 == 200
    })
    .await;
    assert_eq!(call(&s.envoy, "/api/x", &revoked).await.0, 401, "revocations survive the restart");
}

/// The rotation of docs/control-plane.md ("Rotating the fleet credential"): the control
/// plane accepts the new and the old credential; Envoys move to the new one; the old
/// one is dropped. Envoys still on the old one then get 401s and fail closed.
async fn a_fleet_credential_rotates_with_an_overlap_and_the_old_one_stops_after_it(backend: Backend) {
    const NEW: &str = "e2e-rotated-fleet-credential-0123456789ab";
    let env = |pairs: &[(&str, &str)]| {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>()
    };
    let mut s = stack(backend).await; // its Envoy holds FLEET_CREDENTIAL, the old one
    let first = access(&issue(&s.cp, "alice"));
    assert_eq!(call(&s.envoy, "/api/x", &first).await.0, 200);

    // 1. The control plane accepts both.
    s.cp.restart_with_env(&env(&[
        ("PORTCULLIS_FLEET_CREDENTIAL", NEW),
        ("PORTCULLIS_FLEET_CREDENTIAL_PREVIOUS", FLEET_CREDENTIAL),
    ]))
    .await;
    // 2. Envoys move over one by one: here a new one comes up with the new credential
    //    while the old one keeps running.
    let clusters = EnvoyClusters {
        upstream_port: s.upstream.port,
        jwks_port: None,
        control_plane_port: Some(s.cp.internal_port),
    };
    let moved = Envoy::start_with_credential(s.dir.path(), &plugin_config(), &clusters, Some(NEW)).await;
    s.cp.cli(&["revoke", "token", &first]);
    for envoy in [&s.envoy, &moved] {
        eventually(PROPAGATION, "the revocation on both credentials", || async {
            call(envoy, "/api/x", &first).await == (401, "revoked".to_string())
        })
        .await;
    }
    let second = access(&issue(&s.cp, "alice"));
    assert_eq!(call(&s.envoy, "/api/x", &second).await.0, 200, "the old credential works during the overlap");
    assert_eq!(call(&moved, "/api/x", &second).await.0, 200);

    // 3. The overlap ends: the previous credential is removed.
    s.cp.restart_with_env(&env(&[("PORTCULLIS_FLEET_CREDENTIAL", NEW)])).await;
    s.cp.cli(&["revoke", "token", &second]);
    eventually(PROPAGATION, "the revocation on the new credential", || async {
        call(&moved, "/api/x", &second).await == (401, "revoked".to_string())
    })
    .await;
    // The Envoy left on the old credential is refused: its replica goes stale and its
    // fail-closed rules answer 503 rather than let the revoked token through.
    let failed = s.envoy.counter("wasmcustom.portcullis.revocation.poll_failed").await;
    eventually(Duration::from_secs(10), "the old credential's polls to fail", || async {
        s.envoy.counter("wasmcustom.portcullis.revocation.poll_failed").await > failed
    })
    .await;
    eventually(Duration::from_secs(10), "the stale Envoy to fail closed", || async {
        call(&s.envoy, "/api/x", &second).await.0 == 503
    })
    .await;
    assert!(
        s.cp.proc.log_text().contains("internal request with a wrong fleet credential"),
        "the control plane refused the old credential"
    );
}

/// What a test holding a leaked signing key mints: claims of its choosing, with the
/// control plane's issuer and audience.
fn forge(key: &SigningKeyPair, sub: &str, scopes: &[&str], version: u64) -> String {
    let policy = TokenPolicy {
        issuer: "portcullis".into(),
        default_audience: "portcullis".into(),
        default_ttl_seconds: 900,
        refresh_ttl_seconds: 86_400,
    };
    let request = TokenRequest {
        sub: sub.into(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        ..TokenRequest::default()
    };
    let now_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let context = MintContext { version, session_id: None };
    tokens::mint_access_token(&request, &policy, key, context, now_ms, &OsRandom).unwrap().access_token
}

/// Seeds the store with a signing key (the legacy unencrypted record the control plane
/// imports on first start) and returns it: the key the attacker holds.
async fn seed_leaked_key(dir: &Path, store: &StoreKind) -> SigningKeyPair {
    let key = SigningKeyPair::generate(SigningAlgorithm::Es256, &OsRandom).unwrap();
    use base64::Engine as _;
    let d = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key.private_bytes().unwrap().as_slice());
    let record = serde_json::to_vec(&json!({ "alg": "ES256", "createdAtMs": 0, "d": d })).unwrap();
    let store: Box<dyn Store> = match store {
        StoreKind::Redis(url) => Box::new(RedisStore::new(url, RedisTimeouts::default()).unwrap()),
        _ => Box::new(EmbeddedStore::open(&dir.join("cp-data")).unwrap()),
    };
    store.record_put(LEGACY_KEY_RECORD, record, None, 0).await.unwrap();
    key
}

async fn post(envoy: &Envoy, path: &str, token: &str) -> (u16, String) {
    let r = http().post(envoy.url(path)).bearer_auth(token).send().await.expect("request through envoy");
    (r.status().as_u16(), error_description(&r))
}

async fn a_leaked_signing_key_is_shut_out_within_two_seconds_of_keys_revoke(backend: Backend) {
    let (s, leaked) =
        stack_seeded(
            backend,
            plugin_config(),
            |dir, store| async move { seed_leaked_key(&dir, &store).await },
        )
        .await;
    let legit = access(&issue(&s.cp, "alice"));
    assert_eq!(jsonwebtoken::decode_header(&legit).unwrap().kid.as_deref(), Some(leaked.kid()));
    // The attacker mints the future: refused, even before anyone noticed the leak.
    let future = forge(&leaked, "admin", &["orders:write"], 1000);
    eventually(PROPAGATION, "the version ceiling to reach the filter", || async {
        post(&s.envoy, "/api/orders", &future).await == (401, "version_unknown".to_string())
    })
    .await;
    // A forgery at a current version passes while the key is trusted, scopes and all.
    let forged = forge(&leaked, "admin", &["orders:write"], 1);
    assert_eq!(post(&s.envoy, "/api/orders", &forged).await.0, 200);
    assert_eq!(call(&s.envoy, "/api/x", &legit).await.0, 200, "and is cached now");

    let revoked: Value = serde_json::from_str(&s.cp.cli(&["keys", "revoke", leaked.kid()])).unwrap();
    assert_eq!(revoked["rotated"], true, "the leaked key was the current one: {revoked}");
    let jwks: Value = http()
        .get(format!("{}/.well-known/jwks.json", s.cp.internal_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(!jwks.to_string().contains(leaked.kid()), "out of the JWKS at once: {jwks}");
    // Within a poll interval (250 ms) and change: every token of the key, cached ones
    // included, is refused.
    eventually(Duration::from_secs(2), "the revoked key's tokens to be refused", || async {
        post(&s.envoy, "/api/orders", &forged).await == (401, "revoked".to_string())
            && call(&s.envoy, "/api/x", &legit).await == (401, "revoked".to_string())
    })
    .await;
    let fresh_forgery = forge(&leaked, "admin", &["orders:write"], 1);
    assert_eq!(post(&s.envoy, "/api/orders", &fresh_forgery).await, (401, "revoked".to_string()));

    // Then the global minimum: nothing minted before passes; what is minted now does,
    // on its first request (new key, new version).
    s.cp.cli(&["breach", "rotate", "--grace", "0", "--reason", "signing key leaked"]);
    let after = access(&issue(&s.cp, "alice"));
    assert_ne!(jsonwebtoken::decode_header(&after).unwrap().kid.as_deref(), Some(leaked.kid()));
    assert_eq!(call(&s.envoy, "/api/x", &after).await.0, 200);
    assert_eq!(post(&s.envoy, "/api/orders", &forge(&leaked, "admin", &["orders:write"], 5000)).await.0, 401);
}

async fn a_token_minted_right_after_a_breach_rotation_passes_before_the_next_poll(backend: Backend) {
    // Polls a minute apart (the longest interval): after the first, no periodic poll
    // comes during the test, so the rotation's new versions reach the filter only by
    // the poll the fresh token makes it do.
    let s = stack_with(backend, &plugin_config_polling_every(60_000)).await;
    let before = access(&issue(&s.cp, "alice"));
    eventually(Duration::from_secs(10), "the first sync", || async {
        s.envoy.counter("wasmcustom.portcullis.revocation.snapshots_assembled").await >= 1
            && call(&s.envoy, "/api/x", &before).await.0 == 200
    })
    .await;
    s.cp.cli(&["breach", "rotate", "--grace", "60", "--reason", "e2e drill"]);
    // Above every ceiling the filter has seen: it polls once, then lets it through.
    let after = access(&issue(&s.cp, "alice"));
    assert_eq!(call(&s.envoy, "/api/x", &after).await, (200, String::new()));
    assert_eq!(s.envoy.counter("wasmcustom.portcullis.revocation.poll_on_demand").await, 1);
    assert_eq!(call(&s.envoy, "/api/x", &before).await.0, 200, "inside the grace period");
}

portcullis_e2e::on_both_backends!(
    a_fleet_credential_rotates_with_an_overlap_and_the_old_one_stops_after_it,
    revoking_a_jti_with_the_cli_rejects_that_token_only,
    strict_routes_see_a_revocation_as_soon_as_the_admin_call_returns,
    revoking_a_user_rejects_all_their_older_tokens_and_refresh_tokens_only,
    a_breach_rotation_shuts_out_every_pre_breach_token_revoked_users_included,
    a_leaked_signing_key_is_shut_out_within_two_seconds_of_keys_revoke,
    a_token_minted_right_after_a_breach_rotation_passes_before_the_next_poll,
    breach_rotation_keeps_old_tokens_only_for_the_grace,
    a_rotated_signing_key_is_accepted_on_its_first_request,
    refresh_is_single_use_and_reuse_revokes_the_family,
    a_stopped_control_plane_degrades_as_configured_and_recovers,
);
