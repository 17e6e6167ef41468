//! The filter's side of the audit log through a real Envoy loading the real filter and
//! the real control plane (memory, embedded and Redis stores): every decision of a mixed
//! stream recorded once with what the client saw, queryable by subject, address, rule
//! and reason; a control plane restarted mid-stream loses and duplicates nothing; one
//! away longer than the buffer holds costs exactly the decisions counted as dropped,
//! and no request.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use portcullis_e2e::tokens::{claims, jwks, now, FixtureKey};
use portcullis_e2e::{
    control_plane_section, eventually, free_port, http, Backend, ControlPlane, Envoy, EnvoyClusters, Hcm,
    Redis, StoreKind, TestServer, Workdir, FLEET_CREDENTIAL, FLEET_CREDENTIAL_ENV,
};
use serde_json::{json, Value};

/// Long enough for a loaded machine to flush every batch.
const SETTLE: Duration = Duration::from_secs(60);

fn plugin_config(key: &FixtureKey, audit: Value) -> Value {
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
            { "name": "api", "match": { "pathPrefix": "/api/" }, "requires": { "provider": "test" } },
            { "name": "limited", "match": { "pathPrefix": "/limited/" }, "requires": { "provider": "test" } },
            { "name": "login", "match": { "path": "/login", "methods": ["POST"] }, "requires": "none" }
        ],
        // Generous timeouts: a loaded machine must not turn a limit or a lock check into
        // its failure mode (the records would still match, the counts below would not).
        "controlPlane": control_plane_section(5000),
        "rateLimits": [
            { "name": "per-sub", "limit": 5, "unit": "hour", "descriptors": ["claim:sub"], "rules": ["limited"] }
        ],
        "lockout": {
            "routes": [{ "path": "/login", "methods": ["POST"] }],
            "account": "json:username",
            "byIp": false,
            "timeoutMs": 5000,
            "policy": { "baseLockMs": 600000, "maxLockMs": 600000 }
        },
        "audit": audit
    })
}

/// Envoy as the other tests start it, except that it keeps the client's `x-request-id`
/// (`preserve_external_request_id`; by default Envoy replaces an external client's), so
/// the test can name each request's record.
async fn envoy(dir: &Workdir, plugin_config: &Value, clusters: &EnvoyClusters) -> Envoy {
    fn preserve(v: &mut Value) -> bool {
        if let Some(hcm) = v.as_object_mut().filter(|o| o.contains_key("use_remote_address")) {
            hcm.insert("preserve_external_request_id".into(), json!(true));
            return true;
        }
        match v {
            Value::Object(o) => o.values_mut().any(preserve),
            Value::Array(a) => a.iter_mut().any(preserve),
            _ => false,
        }
    }
    let mut config = Envoy::bootstrap(plugin_config, clusters, Hcm::Hardened, 0, 0);
    assert!(preserve(&mut config), "the bootstrap has a connection manager");
    Envoy::start_bootstrap(dir.path(), &config, &[(FLEET_CREDENTIAL_ENV, FLEET_CREDENTIAL)]).await
}

// Fields drop in order: processes first, the work directory (with their logs) last.
struct Stack {
    envoy: Envoy,
    cp: ControlPlane,
    _server: TestServer,
    _redis: Option<Redis>,
    _dir: Workdir,
}

async fn stack(store: Option<Backend>, key: &FixtureKey, audit: Value) -> Stack {
    let dir = Workdir::new();
    let (redis, kind) = match store {
        None => (None, StoreKind::Memory),
        Some(backend) => backend.store(dir.path()).await,
    };
    let cp = ControlPlane::start(dir.path(), kind).await;
    let server = TestServer::start(json!({"keys": []})).await;
    let clusters = EnvoyClusters::beside(server.port, &cp);
    let envoy = envoy(&dir, &plugin_config(key, audit), &clusters).await;
    Stack { envoy, cp, _server: server, _redis: redis, _dir: dir }
}

/// What the client saw of one request: status and the filter's reason ("" when the
/// upstream answered).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    status: u16,
    reason: String,
}

/// One request with `x-request-id: id`.
async fn send(
    envoy: &Envoy,
    id: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Seen {
    let mut req = match method {
        "POST" => http().post(envoy.url(path)),
        _ => http().get(envoy.url(path)),
    }
    .header("x-request-id", id);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.expect("request through envoy");
    let status = r.status().as_u16();
    // The router stamps what came from the upstream; a local reply of the filter has no stamp.
    let from_filter = r.headers().get("x-envoy-upstream-service-time").is_none();
    let text = r.text().await.unwrap_or_default();
    let reason = serde_json::from_str::<Value>(&text)
        .ok()
        .filter(|_| from_filter)
        .and_then(|v| v["reason"].as_str().map(str::to_string))
        .unwrap_or_default();
    Seen { status, reason }
}

/// Every decision record in the log, oldest first (paging through `audit export`'s API).
async fn decisions(cp: &ControlPlane, filter: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor = String::new();
    loop {
        let url = format!("{}/admin/v1/audit?actor=fleet&order=asc&limit=1000{filter}{cursor}", cp.url());
        let page: Value =
            http().get(url).bearer_auth(&cp.admin_token).send().await.unwrap().json().await.unwrap();
        out.extend(page["records"].as_array().cloned().unwrap_or_default());
        match page["nextCursor"].as_u64() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => return out,
        }
    }
}

async fn wait_for_records(cp: &ControlPlane, n: usize) -> Vec<Value> {
    eventually(SETTLE, &format!("{n} decision records in the log"), || async {
        decisions(cp, "").await.len() >= n
    })
    .await;
    decisions(cp, "").await
}

/// Waits until the filter recorded `n` decisions in all (each request's record is
/// built when it ends).
async fn recorded(envoy: &Envoy, n: u64) {
    eventually(SETTLE, &format!("{n} decisions recorded"), || async {
        envoy.counter("wasmcustom.portcullis.audit.recorded").await >= n
    })
    .await;
}

/// A kind of request: method, path, token, body, the rule that decides it, its subject.
type Kind<'a> = (&'a str, &'a str, Option<&'a str>, Option<Value>, &'a str, Option<&'a str>);

/// 1,000 mixed requests, each recorded once with the decision, reason, status and
/// subject the client's answer implies; found by subject, address, rule and reason;
/// the phases in the order they were sent.
async fn mixed_stream_is_recorded_exactly(store: Option<Backend>) {
    let key = FixtureKey::load("es256-a");
    let s =
        stack(store, &key, json!({ "allowSampleRate": 1, "batchSize": 50, "flushIntervalMs": 200 })).await;
    let (alice, bob, carol) = (
        key.sign(&claims("alice", "read")),
        key.sign(&claims("bob", "read")),
        key.sign(&claims("carol", "read")),
    );
    let mut expired = claims("dave", "read");
    expired["exp"] = json!(now() - 3_600);
    expired["iat"] = json!(now() - 7_200);
    let expired = key.sign(&expired);

    // (id, phase, rule, subject, what the client saw)
    let mut sent: Vec<(String, usize, &str, Option<&str>, Seen)> = Vec::new();
    let mut n = 0usize;
    let phases: [Vec<Kind<'_>>; 4] = [
        // Allowed: no token on a public route, alice and bob on the API.
        vec![
            ("GET", "/public/x", None, None, "public", None),
            ("GET", "/api/a", Some(alice.as_str()), None, "api", Some("alice")),
            ("GET", "/api/b", Some(bob.as_str()), None, "api", Some("bob")),
        ],
        // Denied: no token, an expired one, no rule.
        vec![
            ("GET", "/api/c", None, None, "api", None),
            ("GET", "/api/d", Some(expired.as_str()), None, "api", None),
            ("GET", "/nowhere", None, None, "(none)", None),
        ],
        // Rate-limited after five.
        vec![("GET", "/limited/e", Some(carol.as_str()), None, "limited", Some("carol"))],
        // Locked out after five failures.
        vec![(
            "POST",
            "/login",
            None,
            Some(json!({"username": "mallory", "password": "wrong"})),
            "login",
            None,
        )],
    ];
    let per_phase = [400usize, 300, 100, 200];
    for (phase, (kinds, count)) in phases.iter().zip(per_phase).enumerate() {
        for i in 0..count {
            let (method, path, token, body, rule, subject) = kinds[i % kinds.len()].clone();
            let id = format!("audit-{n:04}");
            let seen = send(&s.envoy, &id, method, path, token, body).await;
            sent.push((id, phase, rule, subject, seen));
            n += 1;
        }
        // The next phase starts once this one is in the log: records reach it in batches,
        // each worker's in the order its requests ended (docs/audit.md).
        wait_for_records(&s.cp, n).await;
    }
    let count = |p: &dyn Fn(&Seen) -> bool| sent.iter().filter(|x| p(&x.4)).count();
    let carol_allowed = sent.iter().filter(|x| x.3 == Some("carol") && x.4.status == 200).count();
    assert!((5..=10).contains(&carol_allowed), "five an hour (ten across an hour's turn)");
    assert_eq!(count(&|s| s.status == 200), 400 + carol_allowed, "{sent:?}");
    assert_eq!(count(&|s| s.reason == "missing_token"), 100);
    assert_eq!(count(&|s| s.reason == "expired"), 100);
    assert_eq!(count(&|s| s.reason == "no_matching_rule"), 100);
    let rate_limited = count(&|s| s.reason == "rate_limited");
    assert_eq!(rate_limited, 100 - carol_allowed);
    assert_eq!(count(&|s| s.status == 401 && s.reason.is_empty()), 5, "five failed logins");
    let locked_out = count(&|s| s.reason == "locked_out");
    assert_eq!(locked_out, 195);

    let records = wait_for_records(&s.cp, 1_000).await;
    assert_eq!(records.len(), 1_000, "exactly one record per request");
    let by_id: BTreeMap<&str, &Value> =
        records.iter().map(|r| (r["decision"]["requestId"].as_str().unwrap(), &r["decision"])).collect();
    assert_eq!(by_id.len(), 1_000, "request ids are unique");
    for (id, _, rule, subject, seen) in &sent {
        let d = by_id.get(id.as_str()).unwrap_or_else(|| panic!("no record of {id}"));
        let denied = !seen.reason.is_empty();
        assert_eq!(d["decision"], json!(if denied { "deny" } else { "allow" }), "{id}: {d}");
        assert_eq!(d["status"], json!(seen.status), "{id}: {d}");
        assert_eq!(d["rule"], json!(rule), "{id}: {d}");
        if denied {
            assert_eq!(d["reason"], json!(seen.reason), "{id}: {d}");
        }
        if let Some(sub) = subject {
            assert_eq!((d["subject"].as_str(), d["subjectKind"].as_str()), (Some(*sub), Some("jwt")), "{id}");
        }
        assert_eq!(d["rateLimited"].as_bool().unwrap_or(false), seen.reason == "rate_limited", "{id}");
        assert_eq!(d["lockedOut"].as_bool().unwrap_or(false), seen.reason == "locked_out", "{id}");
        assert!(d["client"].as_str().unwrap().starts_with("hash:"), "addresses are hashed: {d}");
        assert!(d["latencyMs"].is_u64() && d["method"].is_string(), "{d}");
    }
    // Phases in the order they were sent.
    let phase_of: BTreeMap<&str, usize> = sent.iter().map(|x| (x.0.as_str(), x.1)).collect();
    let phases_in_log: Vec<usize> =
        records.iter().map(|r| phase_of[r["decision"]["requestId"].as_str().unwrap()]).collect();
    assert!(phases_in_log.windows(2).all(|w| w[0] <= w[1]), "phases out of order");

    let alice_sent = sent.iter().filter(|x| x.3 == Some("alice")).count();
    assert_eq!(decisions(&s.cp, "&subject=alice").await.len(), alice_sent);
    assert_eq!(decisions(&s.cp, "&ip=127.0.0.1").await.len(), 1_000, "the address is found by its hash");
    assert_eq!(decisions(&s.cp, "&rule=limited").await.len(), 100);
    assert_eq!(decisions(&s.cp, "&reason=locked_out").await.len(), locked_out);
    assert_eq!(decisions(&s.cp, "&reason=rate_limited").await.len(), rate_limited);
    let cli =
        s.cp.cli(&["audit", "list", "--ip", "127.0.0.1", "--reason", "expired", "--limit", "1000", "--json"]);
    assert_eq!(serde_json::from_str::<Vec<Value>>(&cli).unwrap().len(), 100);
    let verified = s.cp.cli(&["audit", "verify"]);
    assert!(verified.contains("intact"), "{verified}");
}

/// A stream of denials with the control plane restarted in the middle: every request's
/// record is stored once.
async fn restart_mid_stream_loses_and_duplicates_nothing(backend: Backend) {
    let key = FixtureKey::load("es256-a");
    let mut s = stack(
        Some(backend),
        &key,
        json!({ "batchSize": 10, "flushIntervalMs": 200, "retryInitialMs": 50, "retryMaxMs": 500 }),
    )
    .await;
    let mut ids = BTreeSet::new();
    for i in 0..300 {
        if i == 100 {
            s.cp.restart().await;
        }
        let id = format!("restart-{i:03}");
        let seen = send(&s.envoy, &id, "GET", "/api/x", None, None).await;
        assert_eq!(seen.status, 401, "requests are decided as usual");
        ids.insert(id);
    }
    let records = wait_for_records(&s.cp, 300).await;
    let stored: Vec<String> =
        records.iter().map(|r| r["decision"]["requestId"].as_str().unwrap().to_string()).collect();
    assert_eq!(stored.len(), 300, "none duplicated");
    assert_eq!(stored.into_iter().collect::<BTreeSet<_>>(), ids, "none lost");
    assert_eq!(s.envoy.counter("wasmcustom.portcullis.audit.dropped").await, 0);
}

/// No control plane at all: the buffer keeps `bufferEvents`, every other decision is
/// counted as dropped, and every request gets its usual answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_away_too_long_costs_exactly_the_dropped_records() {
    let key = FixtureKey::load("es256-a");
    let dir = Workdir::new();
    let server = TestServer::start(json!({"keys": []})).await;
    let clusters =
        EnvoyClusters { upstream_port: server.port, jwks_port: None, control_plane_port: Some(free_port()) };
    let audit = json!({ "bufferEvents": 50, "batchSize": 10, "flushIntervalMs": 100, "retryInitialMs": 50 });
    let envoy = envoy(&dir, &plugin_config(&key, audit), &clusters).await;
    for i in 0..200 {
        let seen = send(&envoy, &format!("away-{i}"), "GET", "/api/x", None, None).await;
        assert_eq!((seen.status, seen.reason.as_str()), (401, "missing_token"));
    }
    recorded(&envoy, 200).await;
    eventually(SETTLE, "150 records dropped", || async {
        envoy.counter("wasmcustom.portcullis.audit.dropped").await >= 150
    })
    .await;
    // A few more ticks: nothing else is dropped, nothing was sent.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(envoy.counter("wasmcustom.portcullis.audit.dropped").await, 150);
    assert_eq!(envoy.counter("wasmcustom.portcullis.audit.sent").await, 0);
    assert!(envoy.counter("wasmcustom.portcullis.audit.send_failed").await >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_stream_in_memory() {
    mixed_stream_is_recorded_exactly(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_stream_on_the_embedded_store() {
    mixed_stream_is_recorded_exactly(Some(Backend::Embedded)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_stream_with_redis() {
    mixed_stream_is_recorded_exactly(Some(Backend::Redis)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_mid_stream_on_the_embedded_store() {
    restart_mid_stream_loses_and_duplicates_nothing(Backend::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_mid_stream_with_redis() {
    restart_mid_stream_loses_and_duplicates_nothing(Backend::Redis).await;
}
