//! Rate limits through a real Envoy loading the real filter, counted by the real
//! control plane on the embedded store and on a real Redis.

use std::time::{Duration, Instant};

use portcullis_e2e::tokens::{claims, jwks, FixtureKey};
use portcullis_e2e::{
    control_plane_section, http, Backend, ControlPlane, Envoy, EnvoyClusters, Redis, TestServer, Workdir,
};
use serde_json::{json, Value};

/// The control plane (and Redis) behind the stacks of one test.
struct Shared {
    cp: ControlPlane,
    _redis: Option<Redis>,
    server: TestServer,
    dir: Workdir,
}

impl Shared {
    async fn start(backend: Backend) -> Shared {
        let dir = Workdir::new();
        let (redis, store) = backend.store(dir.path()).await;
        let cp = ControlPlane::start(dir.path(), store).await;
        let server = TestServer::start(json!({ "keys": [] })).await;
        Shared { cp, _redis: redis, server, dir }
    }

    async fn envoy(&self, config: &Value) -> Envoy {
        let clusters = EnvoyClusters {
            upstream_port: self.server.port,
            jwks_port: None,
            control_plane_port: Some(self.cp.internal_port),
        };
        Envoy::start(self.dir.path(), config, &clusters).await
    }
}

fn config(key: &FixtureKey, limits: Value) -> Value {
    json!({
        "realm": "e2e",
        "providers": {
            "test": {
                "issuer": "https://issuer.test",
                "audiences": ["e2e"],
                "jwks": jwks(&[key]),
                "from": [ { "header": "authorization", "prefix": "Bearer " } ]
            }
        },
        "rules": [
            { "name": "public", "match": { "pathPrefix": "/public/" }, "requires": "none" },
            { "name": "api", "match": { "pathPrefix": "/api/" }, "requires": { "provider": "test" } }
        ],
        "controlPlane": control_plane_section(500),
        "rateLimits": limits
    })
}

fn token(key: &FixtureKey, sub: &str, tenant: &str) -> String {
    let mut c = claims(sub, "read");
    c["tenant"] = json!(tenant);
    key.sign(&c)
}

async fn call(envoy: &Envoy, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut req = http().get(envoy.url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.expect("request through envoy")
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string()
}

async fn ten_per_minute_per_subject(backend: Backend) {
    let key = FixtureKey::load("es256-a");
    let shared = Shared::start(backend).await;
    let envoy = shared
        .envoy(&config(
            &key,
            json!([{ "name": "per-sub", "limit": 10, "unit": "minute", "descriptors": ["claim:sub"], "rules": ["api"] }]),
        ))
        .await;
    let alice = token(&key, "alice", "acme");
    let bob = token(&key, "bob", "acme");

    for i in 0..10 {
        let r = call(&envoy, "/api/orders", Some(&alice)).await;
        assert_eq!(r.status(), 200, "request {} of 10 must pass", i + 1);
    }
    let started = Instant::now();
    let r = call(&envoy, "/api/orders", Some(&alice)).await;
    assert_eq!(r.status(), 429, "the 11th request within a minute is refused");
    let retry: u64 = header(&r, "retry-after").parse().expect("Retry-After in seconds");
    assert!((5..=6).contains(&retry), "one unit returns every 6 s; Retry-After was {retry}");
    assert_eq!(header(&r, "ratelimit-limit"), "10");
    assert_eq!(header(&r, "ratelimit-remaining"), "0");
    assert_eq!(header(&r, "ratelimit-policy"), "10;w=60");
    let body: Value = r.json().await.expect("json body");
    assert_eq!(body["reason"], "rate_limited");
    assert_eq!(shared.server.hits(), 10, "refused requests never reach the upstream");

    // Another subject has its own counter; public routes are not limited.
    assert_eq!(call(&envoy, "/api/orders", Some(&bob)).await.status(), 200);
    assert_eq!(call(&envoy, "/public/x", None).await.status(), 200);

    // The window slides: after Retry-After one more request passes, and only one.
    tokio::time::sleep(
        Duration::from_secs(retry).saturating_sub(started.elapsed()) + Duration::from_millis(300),
    )
    .await;
    assert_eq!(call(&envoy, "/api/orders", Some(&alice)).await.status(), 200, "a unit came back");
    assert_eq!(call(&envoy, "/api/orders", Some(&alice)).await.status(), 429, "and only one");
    assert!(envoy.counter("wasmcustom.portcullis.ratelimit.per-sub.denied").await >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_per_minute_per_subject_embedded() {
    ten_per_minute_per_subject(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_per_minute_per_subject_redis() {
    ten_per_minute_per_subject(Backend::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_override_raises_that_tenants_limit_only() {
    let key = FixtureKey::load("es256-a");
    let shared = Shared::start(Backend::Embedded).await;
    let envoy = shared
        .envoy(&config(
            &key,
            json!([{
                "name": "per-tenant", "limit": 3, "unit": "hour", "descriptors": ["claim:tenant"],
                "overrides": [ { "when": "claim:tenant", "equals": "acme", "limit": 6 } ],
                "responseHeaders": "always"
            }]),
        ))
        .await;
    let acme = token(&key, "a1", "acme");
    let globex = token(&key, "g1", "globex");
    let mut passed = (0, 0);
    for _ in 0..8 {
        if call(&envoy, "/api/x", Some(&acme)).await.status() == 200 {
            passed.0 += 1;
        }
        if call(&envoy, "/api/x", Some(&globex)).await.status() == 200 {
            passed.1 += 1;
        }
    }
    assert_eq!(passed, (6, 3), "acme's override is 6 per hour, everyone else has 3");
    // Allowed responses carry the headers when asked to.
    let fresh = token(&key, "n1", "initech");
    let r = call(&envoy, "/api/x", Some(&fresh)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "ratelimit-limit"), "3");
    assert_eq!(header(&r, "ratelimit-policy"), "3;w=3600");
    let remaining: u64 = header(&r, "ratelimit-remaining").parse().expect("remaining");
    assert!(remaining <= 2, "one of 3 spent: remaining {remaining}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_limits_ask_the_control_plane_for_every_request() {
    let key = FixtureKey::load("es256-a");
    let shared = Shared::start(Backend::Embedded).await;
    let envoy = shared
        .envoy(&config(
            &key,
            json!([{ "name": "login", "limit": 3, "unit": "minute", "mode": "strict", "timeoutMs": 500,
                     "descriptors": ["clientIp"], "rules": ["public"] }]),
        ))
        .await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(call(&envoy, "/public/login", None).await.status().as_u16());
    }
    assert_eq!(statuses, vec![200, 200, 200, 429, 429]);
    assert_eq!(envoy.counter("wasmcustom.portcullis.ratelimit.calls").await, 5, "one call per request");
}

/// Two Envoys (two workers each) share one control plane and Redis: the limit is
/// global. Every admitted unit was debited in Redis before it was spent, so the total
/// never exceeds the limit plus what the limiter refills during the round (one unit
/// per 72 s here, so at most 1); units stranded in a lease only lower the total.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_envoys_sharing_redis_enforce_one_global_limit() {
    const LIMIT: usize = 50;
    const ROUNDS: usize = 5;
    const REQUESTS: usize = 160;
    let key = FixtureKey::load("es256-a");
    let shared = Shared::start(Backend::Redis).await;
    let cfg = config(
        &key,
        json!([{ "name": "global", "limit": LIMIT, "unit": "hour", "descriptors": ["header:x-round"],
                 "rules": ["public"], "maxLease": 8 }]),
    );
    let a = shared.envoy(&cfg).await;
    let b = shared.envoy(&cfg).await;
    let mut admitted_per_round = Vec::new();
    for round in 0..ROUNDS {
        let hits_before = shared.server.hits();
        let mut tasks = Vec::new();
        for i in 0..REQUESTS {
            let url = if i % 2 == 0 { a.url("/public/x") } else { b.url("/public/x") };
            let round = round.to_string();
            tasks.push(tokio::spawn(async move {
                http()
                    .get(url)
                    .header("x-round", round)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0)
            }));
        }
        let mut ok = 0;
        let mut limited = 0;
        for t in tasks {
            match t.await.expect("task") {
                200 => ok += 1,
                429 => limited += 1,
                other => panic!("unexpected status {other}"),
            }
        }
        assert_eq!(ok + limited, REQUESTS);
        assert_eq!(shared.server.hits() - hits_before, ok, "every 200 reached the upstream");
        admitted_per_round.push(ok);
    }
    eprintln!("admitted per round (limit {LIMIT}): {admitted_per_round:?}");
    for e in [&a, &b] {
        for name in ["unavailable_allowed", "allowed", "denied"] {
            let n = e.counter(&format!("wasmcustom.portcullis.ratelimit.global.{name}")).await;
            eprintln!("{name}: {n}");
        }
        eprintln!("overdue: {}", e.counter("wasmcustom.portcullis.guard.overdue").await);
        eprintln!(
            "cp unavailable: {}",
            e.counter("wasmcustom.portcullis.guard.control_plane_unavailable").await
        );
    }
    assert_eq!(a.counter("wasmcustom.portcullis.ratelimit.global.unavailable_allowed").await, 0);
    assert_eq!(b.counter("wasmcustom.portcullis.ratelimit.global.unavailable_allowed").await, 0);
    for ok in &admitted_per_round {
        assert!(*ok <= LIMIT + 1, "admitted {ok} over a global limit of {LIMIT}: {admitted_per_round:?}");
        assert!(*ok >= LIMIT / 2, "admitted only {ok} of {LIMIT}: {admitted_per_round:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_control_plane_each_limit_applies_its_failure_mode_and_recovers() {
    let key = FixtureKey::load("es256-a");
    let mut shared = Shared::start(Backend::Embedded).await;
    let envoy = shared
        .envoy(&config(
            &key,
            json!([
                { "name": "open", "limit": 1000, "unit": "minute", "descriptors": ["header:x-k"], "rules": ["public"], "onError": "allow" },
                { "name": "closed", "limit": 1000, "unit": "minute", "descriptors": ["header:x-k"], "rules": ["api"], "onError": "deny" }
            ]),
        ))
        .await;
    let t = token(&key, "alice", "acme");
    let get = |path: &'static str, k: String, tok: Option<String>| {
        let envoy_url = envoy.url(path);
        async move {
            let mut req = http().get(envoy_url).header("x-k", k);
            if let Some(t) = tok {
                req = req.bearer_auth(t);
            }
            req.send().await.expect("request").status().as_u16()
        }
    };
    assert_eq!(get("/public/a", "k0".into(), None).await, 200);
    assert_eq!(get("/api/a", "k0".into(), Some(t.clone())).await, 200);

    shared.cp.proc.terminate();
    // Fresh counters (no lease in hand) must ask the control plane, which is gone.
    assert_eq!(get("/public/a", "k1".into(), None).await, 200, "fail-open limit passes");
    let closed = get("/api/a", "k2".into(), Some(t.clone())).await;
    assert_eq!(closed, 503, "fail-closed limit refuses");
    assert!(envoy.counter("wasmcustom.portcullis.ratelimit.open.unavailable_allowed").await >= 1);

    shared.cp.restart().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut n = 3;
    loop {
        n += 1;
        if get("/api/a", format!("k{n}"), Some(t.clone())).await == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "the fail-closed limit did not recover after a restart");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
