//! Account lockout end to end, on both store backends: a real Envoy with the filter in
//! front of the test server's `POST /login` (200 for `"password":"correct"`, else 401),
//! the real control plane keeping the failures (embedded store or a real
//! redis-server), and the `portcullis` CLI for admins. The client is always 127.0.0.1.

use std::time::{Duration, Instant};

use portcullis_e2e::{
    control_plane_section, http, Backend, ControlPlane, Envoy, EnvoyClusters, Redis, TestServer, Workdir,
};
use serde_json::{json, Value};

/// The filter configuration: `/login` is a lockout route, everything else passes.
fn plugin_config(lockout: Value) -> Value {
    json!({
        "realm": "e2e",
        "onNoMatch": "allow",
        "controlPlane": control_plane_section(1000),
        "lockout": lockout,
        "rules": [
            { "name": "login", "match": { "path": "/login", "methods": ["POST"] }, "requires": "none" }
        ]
    })
}

/// A lockout section on `POST /login` with the account from the JSON body.
fn lockout(by_ip: bool, policy: Option<Value>) -> Value {
    let mut l = json!({
        "routes": [{ "path": "/login", "methods": ["POST"] }],
        "account": "json:username",
        "byIp": by_ip,
        "timeoutMs": 1000
    });
    if let Some(p) = policy {
        l["policy"] = p;
    }
    l
}

/// First lock 2 s (doubling up to a minute), so that waiting out a lock is cheap.
fn short_policy() -> Value {
    json!({ "baseLockMs": 2000, "maxLockMs": 60000 })
}

// Fields drop in order: processes first, the work directory (with their logs) last.
struct Stack {
    envoy: Envoy,
    cp: ControlPlane,
    server: TestServer,
    _redis: Option<Redis>,
    _dir: Workdir,
}

async fn stack(backend: Backend, lockout: Value) -> Stack {
    let dir = Workdir::new();
    let (redis, store) = backend.store(dir.path()).await;
    let cp = ControlPlane::start(dir.path(), store).await;
    let server = TestServer::start(json!({"keys": []})).await;
    let clusters = EnvoyClusters {
        upstream_port: server.port,
        jwks_port: None,
        control_plane_port: Some(cp.internal_port),
    };
    let envoy = Envoy::start(dir.path(), &plugin_config(lockout), &clusters).await;
    Stack { envoy, cp, server, _redis: redis, _dir: dir }
}

/// What a login attempt got back.
#[derive(Debug)]
struct Answer {
    status: u16,
    retry_after: Option<u64>,
    body: String,
}

impl Answer {
    fn reason(&self) -> String {
        serde_json::from_str::<Value>(&self.body)
            .ok()
            .and_then(|v| v["reason"].as_str().map(str::to_string))
            .unwrap_or_default()
    }

    /// Asserts a lockout answer whose `Retry-After` is within `secs`.
    #[track_caller]
    fn assert_locked(&self, secs: std::ops::RangeInclusive<u64>) {
        assert_eq!(self.status, 429, "expected a lockout, got {self:?}");
        assert_eq!(self.reason(), "locked_out", "{self:?}");
        let retry = self.retry_after.unwrap_or_else(|| panic!("no Retry-After on {self:?}"));
        assert!(secs.contains(&retry), "Retry-After {retry}, expected {secs:?}");
    }
}

async fn send(req: reqwest::RequestBuilder) -> Answer {
    let r = req.send().await.expect("request through envoy");
    let status = r.status().as_u16();
    let retry_after =
        r.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    let body = r.text().await.unwrap_or_default();
    Answer { status, retry_after, body }
}

/// `POST /login` with `{"username": user, "password": password}`.
async fn login(envoy: &Envoy, user: &str, password: &str) -> Answer {
    send(http().post(envoy.url("/login")).json(&json!({ "username": user, "password": password }))).await
}

/// `n` wrong passwords for `user`, each expected to reach the upstream and get 401.
async fn fail(s: &Stack, user: &str, n: usize) {
    for i in 0..n {
        let a = login(&s.envoy, user, "wrong").await;
        assert_eq!(a.status, 401, "failure {} of {n} for {user}: {a:?}", i + 1);
    }
}

async fn five_failures_lock_the_account_for_30_seconds(backend: Backend) {
    // The default policy: 5 failures in 15 minutes lock for 30 s.
    let s = stack(backend, lockout(true, None)).await;
    fail(&s, "alice", 5).await;
    assert_eq!(s.server.login_hits(), 5);

    login(&s.envoy, "alice", "wrong").await.assert_locked(29..=30);
    // Locked means locked: the right password is not even tried.
    login(&s.envoy, "alice", "correct").await.assert_locked(29..=30);
    assert_eq!(s.server.login_hits(), 5, "a locked account's attempts never reach the upstream");
    assert!(s.envoy.counter("wasmcustom.portcullis.lockout.denied").await >= 2);

    let shown: Value = serde_json::from_str(&s.cp.cli(&["lockouts", "show", "--account", "ALICE"])).unwrap();
    assert_eq!(shown["failures"], 5, "{shown}");
    let locked_for = shown["lockedForMs"].as_u64().unwrap_or(0);
    assert!((25_000..=30_000).contains(&locked_for), "{shown}");
}

async fn each_lock_after_the_first_lasts_twice_as_long(backend: Backend) {
    let s = stack(backend, lockout(false, Some(short_policy()))).await;
    fail(&s, "alice", 5).await;
    login(&s.envoy, "alice", "wrong").await.assert_locked(1..=2);
    assert_eq!(s.server.login_hits(), 5);

    // Once the lock is over, the next attempt reaches the upstream again...
    tokio::time::sleep(Duration::from_millis(2_300)).await;
    let a = login(&s.envoy, "alice", "wrong").await;
    assert_eq!(a.status, 401, "the lock should have ended: {a:?}");
    assert_eq!(s.server.login_hits(), 6);
    // ...and a single failure soon after a lock locks again, twice as long.
    login(&s.envoy, "alice", "wrong").await.assert_locked(3..=4);
    assert_eq!(s.server.login_hits(), 6);

    tokio::time::sleep(Duration::from_millis(4_300)).await;
    fail(&s, "alice", 1).await;
    login(&s.envoy, "alice", "correct").await.assert_locked(7..=8);
    assert_eq!(s.server.login_hits(), 7);
}

async fn a_success_forgets_the_failures(backend: Backend) {
    // Without the address dimension: a success forgets the account's failures only.
    let s = stack(backend, lockout(false, None)).await;
    fail(&s, "alice", 4).await;
    let ok = login(&s.envoy, "Alice", "correct").await;
    assert_eq!(ok.status, 200, "{ok:?}");
    fail(&s, "alice", 4).await;
    // The fifth failure since the success still reaches the upstream, and locks.
    fail(&s, "alice", 1).await;
    assert_eq!(s.server.login_hits(), 10);
    login(&s.envoy, "alice", "correct").await.assert_locked(29..=30);
    assert_eq!(s.server.login_hits(), 10);
}

async fn clearing_a_lock_with_the_cli_unlocks_within_a_second(backend: Backend) {
    let s = stack(backend, lockout(false, None)).await;
    fail(&s, "alice", 5).await;
    login(&s.envoy, "alice", "correct").await.assert_locked(29..=30);

    let listed: Value = serde_json::from_str(&s.cp.cli(&["lockouts", "list"])).unwrap();
    let entries = listed["lockouts"].as_array().cloned().unwrap_or_default();
    assert_eq!(entries.len(), 1, "{listed}");
    assert!(entries[0]["lockedForMs"].as_u64().unwrap_or(0) > 0, "{listed}");
    assert!(!listed.to_string().contains("alice"), "only key hashes are listed: {listed}");

    // Past the filter's local trust of a lock (1 s) it asks again, and is still told no.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    login(&s.envoy, "alice", "correct").await.assert_locked(28..=29);
    assert!(s.envoy.counter("wasmcustom.portcullis.lockout.checks").await >= 6);

    let cleared: Value =
        serde_json::from_str(&s.cp.cli(&["lockouts", "clear", "--account", "alice"])).unwrap();
    assert_eq!(cleared["kind"], "account", "{cleared}");
    assert_eq!(cleared["failures"], 5, "{cleared}");

    // No waiting for the 30 s lock: attempts are let through once the filter's trust in
    // its local copy of the lock (1 s) has run out.
    let started = Instant::now();
    let a = loop {
        let a = login(&s.envoy, "alice", "correct").await;
        if a.status != 429 || started.elapsed() > Duration::from_secs(3) {
            break a;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(a.status, 200, "the cleared account should log in: {a:?}");
    assert!(started.elapsed() < Duration::from_millis(1_500), "took {:?}", started.elapsed());
    assert_eq!(s.server.login_hits(), 6);
    let listed: Value = serde_json::from_str(&s.cp.cli(&["lockouts", "list"])).unwrap();
    assert_eq!(listed["lockouts"], json!([]), "{listed}");
}

async fn failures_from_one_address_lock_every_account(backend: Backend) {
    let s = stack(backend, lockout(true, None)).await;
    // One failure each for five accounts: no account is locked, the address is.
    for user in ["u1", "u2", "u3", "u4", "u5"] {
        fail(&s, user, 1).await;
    }
    assert_eq!(s.server.login_hits(), 5);
    login(&s.envoy, "fresh", "correct").await.assert_locked(29..=30);
    assert_eq!(s.server.login_hits(), 5, "a locked address never reaches the upstream");

    let ip: Value = serde_json::from_str(&s.cp.cli(&["lockouts", "show", "--ip", "127.0.0.1"])).unwrap();
    assert_eq!((ip["kind"].as_str(), ip["failures"].as_u64()), (Some("ip"), Some(5)), "{ip}");
    let account = http()
        .get(format!("{}/admin/v1/lockouts/account/u1", s.cp.url()))
        .bearer_auth(&s.cp.admin_token)
        .send()
        .await
        .unwrap();
    let account: Value = account.json().await.unwrap();
    assert_eq!(account["failures"], 1, "{account}");
    assert_eq!(account["lockedForMs"], 0, "{account}");
}

async fn attempts_without_an_account_still_count_for_the_address(backend: Backend) {
    let s = stack(backend, lockout(true, None)).await;
    let bodies = [
        json!({ "password": "wrong" }).to_string(),
        json!({ "username": "", "password": "wrong" }).to_string(),
        json!({ "username": { "$ne": null }, "password": "wrong" }).to_string(),
        "not json at all".to_string(),
        json!({ "user": "alice", "password": "wrong" }).to_string(),
    ];
    for body in &bodies {
        let a = send(
            http().post(s.envoy.url("/login")).header("content-type", "application/json").body(body.clone()),
        )
        .await;
        assert_eq!(a.status, 401, "{body}: {a:?}");
    }
    assert_eq!(s.server.login_hits(), 5);
    login(&s.envoy, "bob", "correct").await.assert_locked(29..=30);
    assert_eq!(s.server.login_hits(), 5);
}

async fn an_account_in_a_header_is_locked_too(backend: Backend) {
    let mut l = lockout(false, None);
    l["account"] = json!("header:x-username");
    let s = stack(backend, l).await;
    let attempt = |user: &'static str, password: &'static str| {
        // The body names someone else: only the header counts.
        send(
            http()
                .post(s.envoy.url("/login"))
                .header("x-username", user)
                .json(&json!({ "username": "decoy", "password": password })),
        )
    };
    for i in 0..5 {
        let a = attempt("alice", "wrong").await;
        assert_eq!(a.status, 401, "failure {}: {a:?}", i + 1);
    }
    attempt("alice", "correct").await.assert_locked(29..=30);
    attempt("ALICE", "correct").await.assert_locked(29..=30);
    assert_eq!(s.server.login_hits(), 5);
    let other = attempt("bob", "correct").await;
    assert_eq!(other.status, 200, "another account is not locked: {other:?}");
    // The body's "decoy" was never counted.
    let decoy = http()
        .get(format!("{}/admin/v1/lockouts/account/decoy", s.cp.url()))
        .bearer_auth(&s.cp.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(decoy.status(), 404);
}

portcullis_e2e::on_both_backends!(
    five_failures_lock_the_account_for_30_seconds,
    each_lock_after_the_first_lasts_twice_as_long,
    a_success_forgets_the_failures,
    clearing_a_lock_with_the_cli_unlocks_within_a_second,
    failures_from_one_address_lock_every_account,
    attempts_without_an_account_still_count_for_the_address,
    an_account_in_a_header_is_locked_too,
);
