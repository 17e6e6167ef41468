//! Account lockout end to end, on both store backends: a real Envoy with the filter in
//! front of the test server's `POST /login` (200 for `"password":"correct"`, else 401),
//! the real control plane keeping the failures (embedded store or a real
//! redis-server), and the `portcullis` CLI for admins. The client is 127.0.0.1, except
//! where a test sends from other loopback addresses (127.0.0.0/8 is all local) to play
//! many clients.

use std::net::{IpAddr, Ipv4Addr};
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
    let clusters = EnvoyClusters::beside(server.port, &cp);
    let envoy = Envoy::start(dir.path(), &plugin_config(lockout), &clusters).await;
    Stack { envoy, cp, server, _redis: redis, _dir: dir }
}

/// Envoy with the filter whose control-plane cluster points at `control_plane_port`
/// (which may answer nothing), in front of the test server.
struct Lone {
    envoy: Envoy,
    server: TestServer,
    _dir: Workdir,
}

async fn without_control_plane(lockout: Value, control_plane_port: u16) -> Lone {
    let dir = Workdir::new();
    let server = TestServer::start(json!({"keys": []})).await;
    let clusters = EnvoyClusters {
        upstream_port: server.port,
        jwks_port: None,
        control_plane_port: Some(control_plane_port),
    };
    let envoy = Envoy::start(dir.path(), &plugin_config(lockout), &clusters).await;
    Lone { envoy, server, _dir: dir }
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

/// `POST /login` with a raw body and content type.
async fn login_raw(envoy: &Envoy, content_type: Option<&str>, body: Vec<u8>) -> Answer {
    let mut req = http().post(envoy.url("/login")).body(body);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    send(req).await
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

async fn with_address_only_attempts_without_an_account_count_for_the_address(backend: Backend) {
    let mut l = lockout(true, None);
    l["onNoAccount"] = json!("addressOnly");
    let s = stack(backend, l).await;
    let bodies = [
        json!({ "password": "wrong" }).to_string(),
        json!({ "username": "", "password": "wrong" }).to_string(),
        json!({ "username": { "$ne": null }, "password": "wrong" }).to_string(),
        "not json at all".to_string(),
        json!({ "user": "alice", "password": "wrong" }).to_string(),
    ];
    for body in &bodies {
        let a = login_raw(&s.envoy, Some("application/json"), body.clone().into_bytes()).await;
        assert_eq!(a.status, 401, "{body}: {a:?}");
    }
    assert_eq!(s.server.login_hits(), 5);
    login(&s.envoy, "bob", "correct").await.assert_locked(29..=30);
    assert_eq!(s.server.login_hits(), 5);
    assert_eq!(s.envoy.counter("wasmcustom.portcullis.lockout.no_account").await, 5);
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

/// A client whose connections come from `ip` (a loopback address).
fn client_from(ip: Ipv4Addr) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(IpAddr::V4(ip))
        .timeout(Duration::from_secs(60))
        .build()
        .expect("http client")
}

/// Sends one wrong-password attempt per `(client, user)` pair, all at once, and
/// returns the answers.
async fn all_at_once(envoy: &Envoy, attempts: Vec<(reqwest::Client, String)>) -> Vec<Answer> {
    let url = envoy.url("/login");
    let tasks: Vec<_> = attempts
        .into_iter()
        .map(|(client, user)| {
            let req = client.post(url.clone()).json(&json!({ "username": user, "password": "wrong" }));
            tokio::spawn(send(req))
        })
        .collect();
    let mut answers = Vec::with_capacity(tasks.len());
    for task in tasks {
        answers.push(task.await.expect("attempt task"));
    }
    answers
}

/// `(401s, 429s)` among `answers`; anything else fails the test.
#[track_caller]
fn tally(answers: &[Answer]) -> (usize, usize) {
    let mut counts = (0, 0);
    for a in answers {
        match (a.status, a.reason().as_str()) {
            (401, _) => counts.0 += 1,
            (429, "locked_out") => counts.1 += 1,
            _ => panic!("unexpected answer {a:?}"),
        }
    }
    counts
}

/// A lockout whose lock check has all the time a loaded machine may need: parallel
/// attempts must be decided by the lockout, not by a timeout.
fn patient(mut l: Value) -> Value {
    l["timeoutMs"] = json!(10_000);
    l
}

async fn parallel_guesses_at_one_account_from_many_addresses_reach_the_upstream_five_times(backend: Backend) {
    let s = stack(backend, patient(lockout(true, None))).await;
    // The upstream takes its time, so every attempt is in flight at once.
    s.server.set_login_delay(Duration::from_millis(300));
    let mut hits = 0;
    for (n, user, subnet) in [(30usize, "alice", 1u8), (100, "bob", 2)] {
        // One address per attempt: only the account can stop them.
        let attempts = (0..n)
            .map(|i| (client_from(Ipv4Addr::new(127, 0, subnet, 1 + i as u8)), user.to_string()))
            .collect();
        let answers = all_at_once(&s.envoy, attempts).await;
        hits += 5;
        assert_eq!(tally(&answers), (5, n - 5), "{n} parallel guesses at {user}");
        assert_eq!(s.server.login_hits(), hits, "the upstream saw exactly the threshold of {n}");
        login(&s.envoy, user, "correct").await.assert_locked(29..=30);
    }
    assert_eq!(s.server.login_hits(), hits);
}

async fn parallel_guesses_from_one_address_at_many_accounts_reach_the_upstream_five_times(backend: Backend) {
    let s = stack(backend, patient(lockout(true, None))).await;
    s.server.set_login_delay(Duration::from_millis(300));
    let mut hits = 0;
    for (n, ip) in [(30usize, Ipv4Addr::new(127, 0, 0, 2)), (100, Ipv4Addr::new(127, 0, 0, 3))] {
        // One account per attempt: only the address can stop them.
        let client = client_from(ip);
        let attempts = (0..n).map(|i| (client.clone(), format!("user-{ip}-{i}"))).collect();
        let answers = all_at_once(&s.envoy, attempts).await;
        hits += 5;
        assert_eq!(tally(&answers), (5, n - 5), "{n} parallel guesses from {ip}");
        assert_eq!(s.server.login_hits(), hits, "the upstream saw exactly the threshold of {n}");
        let a = send(
            client.post(s.envoy.url("/login")).json(&json!({ "username": "fresh", "password": "correct" })),
        )
        .await;
        a.assert_locked(29..=30);
    }
    assert_eq!(s.server.login_hits(), hits);
    let shown: Value = serde_json::from_str(&s.cp.cli(&["lockouts", "show", "--ip", "127.0.0.3"])).unwrap();
    assert_eq!((shown["failures"].as_u64(), shown["inFlight"].as_u64()), (Some(5), Some(0)), "{shown}");
}

async fn unreadable_login_bodies_are_refused_before_the_upstream(backend: Backend) {
    let s = stack(backend, lockout(true, None)).await;
    let json_type = Some("application/json");
    let padded = json!({ "username": "alice", "password": "wrong", "pad": "x".repeat(17 * 1024) });
    let utf16: Vec<u8> =
        r#"{"username":"alice","password":"wrong"}"#.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let form_type = Some("application/x-www-form-urlencoded");
    let refused = |what: &'static str, content_type: Option<&'static str>, body: Vec<u8>| {
        let envoy = &s.envoy;
        async move { (what, login_raw(envoy, content_type, body).await) }
    };
    let answers = [
        (
            refused("over the 16 KiB cap", json_type, padded.to_string().into_bytes()).await,
            413,
            "login_body_too_large",
        ),
        (
            refused("NaN", json_type, br#"{"username":"alice","password":"wrong","n":NaN}"#.to_vec()).await,
            400,
            "login_body_malformed",
        ),
        (refused("UTF-16", json_type, utf16.clone()).await, 400, "login_body_malformed"),
        (
            refused("UTF-16 declared", Some("application/json; charset=utf-16le"), utf16).await,
            415,
            "login_content_type",
        ),
        (
            refused("a form body", form_type, b"username=alice&password=wrong".to_vec()).await,
            415,
            "login_content_type",
        ),
        (
            refused(
                "a JSON/form polyglot sent as a form",
                form_type,
                br#"{"username":"alice","password":"wrong","x":"&username=bob"}"#.to_vec(),
            )
            .await,
            415,
            "login_content_type",
        ),
        (
            refused(
                "a JSON/form polyglot sent as JSON",
                json_type,
                br#"{"username":"alice","password":"wrong"}&username=bob"#.to_vec(),
            )
            .await,
            400,
            "login_body_malformed",
        ),
        (
            refused("no content type", None, br#"{"username":"alice","password":"wrong"}"#.to_vec()).await,
            415,
            "login_content_type",
        ),
        (
            refused(
                "a repeated key",
                json_type,
                br#"{"username":"bob","username":"alice","password":"wrong"}"#.to_vec(),
            )
            .await,
            400,
            "account_ambiguous",
        ),
        (refused("no account", json_type, br#"{"password":"wrong"}"#.to_vec()).await, 400, "account_missing"),
    ];
    for ((what, a), status, reason) in answers {
        assert_eq!((a.status, a.reason().as_str()), (status, reason), "{what}: {a:?}");
        let problem: Value = serde_json::from_str(&a.body).unwrap_or_default();
        assert_eq!(problem["error"], "invalid_request", "{what}: {a:?}");
    }
    assert_eq!(s.server.login_hits(), 0, "no guess reached the upstream");
    // Refused attempts are no failures: alice and this address are not locked.
    assert_eq!(login(&s.envoy, "alice", "correct").await.status, 200);
    assert!(s.envoy.counter("wasmcustom.portcullis.lockout.refused.login_content_type").await >= 4);
}

async fn a_form_account_is_read_past_bad_pairs_and_never_twice(backend: Backend) {
    let mut l = lockout(false, None);
    l["account"] = json!("form:username");
    let s = stack(backend, l).await;
    let form = Some("application/x-www-form-urlencoded");
    // A malformed pair before the field does not hide it: the guesses count for bob.
    for i in 0..5 {
        let a = login_raw(&s.envoy, form, b"%zz=&username=bob&password=wrong".to_vec()).await;
        assert_eq!(a.status, 401, "guess {}: {a:?}", i + 1);
    }
    let a = login_raw(&s.envoy, form, b"username=bob&password=correct".to_vec()).await;
    a.assert_locked(29..=30);
    assert_eq!(s.server.login_hits(), 5);
    // Which of two accounts counts is not the attacker's choice: neither.
    let a = login_raw(&s.envoy, form, b"username=alice&username=bob&password=wrong".to_vec()).await;
    assert_eq!((a.status, a.reason().as_str()), (400, "account_ambiguous"), "{a:?}");
    let a = login_raw(&s.envoy, Some("application/json"), br#"{"username":"carol"}"#.to_vec()).await;
    assert_eq!((a.status, a.reason().as_str()), (415, "login_content_type"), "{a:?}");
    assert_eq!(s.server.login_hits(), 5);
}

portcullis_e2e::on_both_backends!(
    five_failures_lock_the_account_for_30_seconds,
    each_lock_after_the_first_lasts_twice_as_long,
    a_success_forgets_the_failures,
    clearing_a_lock_with_the_cli_unlocks_within_a_second,
    failures_from_one_address_lock_every_account,
    with_address_only_attempts_without_an_account_count_for_the_address,
    an_account_in_a_header_is_locked_too,
    parallel_guesses_at_one_account_from_many_addresses_reach_the_upstream_five_times,
    parallel_guesses_from_one_address_at_many_accounts_reach_the_upstream_five_times,
    unreadable_login_bodies_are_refused_before_the_upstream,
    a_form_account_is_read_past_bad_pairs_and_never_twice,
);

// --- without a control plane that answers -------------------------------------------

/// Sockets that are accepted and never answered.
async fn black_hole() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    (port, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_is_refused_when_the_control_plane_does_not_answer_in_time() {
    let (port, hole) = black_hole().await;
    let mut l = lockout(true, None);
    l["timeoutMs"] = json!(300);
    let s = without_control_plane(l, port).await;
    for i in 0..3 {
        let a = login(&s.envoy, "alice", "correct").await;
        assert_eq!((a.status, a.reason().as_str()), (503, "lockout_unavailable"), "attempt {}: {a:?}", i + 1);
    }
    assert_eq!(s.server.login_hits(), 0);
    assert!(s.envoy.counter("wasmcustom.portcullis.lockout.unavailable_denied").await >= 3);
    hole.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_is_refused_when_the_control_plane_is_absent_unless_allowed() {
    let nothing = portcullis_e2e::free_port();
    let s = without_control_plane(lockout(true, None), nothing).await;
    for i in 0..3 {
        let a = login(&s.envoy, "alice", "correct").await;
        assert_eq!((a.status, a.reason().as_str()), (503, "lockout_unavailable"), "attempt {}: {a:?}", i + 1);
    }
    assert_eq!(s.server.login_hits(), 0);
    // An explicit `onError: allow` keeps its meaning.
    let mut l = lockout(true, None);
    l["onError"] = json!("allow");
    let open = without_control_plane(l, nothing).await;
    assert_eq!(login(&open.envoy, "alice", "correct").await.status, 200);
    assert_eq!(open.server.login_hits(), 1);
    assert!(open.envoy.counter("wasmcustom.portcullis.lockout.unavailable_allowed").await >= 1);
}
