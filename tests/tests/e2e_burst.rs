//! Burst alerts end to end: a real Envoy with the filter counts requests per client
//! address and reports them to the real control plane every 200 ms; the control plane
//! (started with burst settings) posts a signed alert to the test server's `/webhook`
//! and, when configured to, blocks the address, which the filter then refuses (429
//! `address_blocked`). The client is always 127.0.0.1.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use portcullis_e2e::{
    control_plane_section, eventually, http, Backend, ControlPlane, Envoy, EnvoyClusters, Redis, TestServer,
    Workdir,
};
use serde_json::{json, Value};
use sha2::Sha256;

const THRESHOLD: u64 = 20;
const SECRET: &str = "e2e-burst-webhook-secret-0123456789";

fn plugin_config(enforce_blocks: bool) -> Value {
    json!({
        "realm": "e2e",
        "onNoMatch": "allow",
        "controlPlane": control_plane_section(1000),
        "burst": { "reportIntervalMs": 200, "enforceBlocks": enforce_blocks }
    })
}

// Fields drop in order: processes first, the work directory (with their logs) last.
struct Stack {
    envoy: Envoy,
    cp: ControlPlane,
    server: TestServer,
    _redis: Option<Redis>,
    dir: Workdir,
}

/// The control plane with a burst threshold of 20 per 10 s, a 60 s cooldown, the test
/// server's webhook, and `extra` settings.
async fn stack(backend: Backend, extra: &[(&str, &str)]) -> Stack {
    let dir = Workdir::new();
    let (redis, store) = backend.store(dir.path()).await;
    let server = TestServer::start(json!({"keys": []})).await;
    let webhook = format!("http://127.0.0.1:{}/webhook", server.port);
    let threshold = THRESHOLD.to_string();
    let mut env = vec![
        ("PORTCULLIS_BURST_THRESHOLD", threshold.as_str()),
        ("PORTCULLIS_BURST_WINDOW", "10s"),
        ("PORTCULLIS_BURST_COOLDOWN", "60s"),
        ("PORTCULLIS_BURST_WEBHOOK_URLS", webhook.as_str()),
        ("PORTCULLIS_BURST_WEBHOOK_SECRET", SECRET),
    ];
    env.extend_from_slice(extra);
    let cp = ControlPlane::start_env(dir.path(), store, &env).await;
    let clusters = EnvoyClusters::beside(server.port, &cp);
    let envoy = Envoy::start(dir.path(), &plugin_config(true), &clusters).await;
    Stack { envoy, cp, server, _redis: redis, dir }
}

/// `n` GETs of `path` through Envoy, as fast as they go; returns the statuses.
async fn burst(envoy: &Envoy, path: &str, n: u64) -> Vec<u16> {
    let client = http();
    let mut statuses = Vec::new();
    for _ in 0..n {
        let r = client.get(envoy.url(path)).header("user-agent", "e2e-burster/1.0").send().await.unwrap();
        statuses.push(r.status().as_u16());
    }
    statuses
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Checks `Portcullis-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>`
/// the way a receiver would (recomputed here, not with the control plane's code).
fn assert_signed(headers: &[(String, String)], body: &str) {
    let header = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("portcullis-signature"))
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("no Portcullis-Signature header in {headers:?}"));
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => t = Some(value.to_string()),
            Some(("v1", value)) => v1 = Some(value.to_string()),
            _ => {}
        }
    }
    let (t, v1) = (t.expect("t= in the signature"), v1.expect("v1= in the signature"));
    let t_secs: u64 = t.parse().unwrap_or_else(|_| panic!("t is not a number in {header}"));
    assert!(unix_now().abs_diff(t_secs) <= 60, "stale signature time {t_secs}");
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body.as_bytes());
    let expected: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(v1, expected, "signature does not verify: {header}");
    // And a tampered body does not.
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body.replace("127.0.0.1", "127.0.0.2").as_bytes());
    let tampered: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
    assert_ne!(v1, tampered);
}

async fn a_burst_sends_one_signed_alert_per_cooldown(backend: Backend) {
    let s = stack(backend, &[]).await;
    let statuses = burst(&s.envoy, "/burst/target", THRESHOLD + 10).await;
    assert!(statuses.iter().all(|s| *s == 200), "no blocking configured: {statuses:?}");

    eventually(Duration::from_secs(5), "the burst webhook", || async { !s.server.webhooks().is_empty() })
        .await;
    let hooks = s.server.webhooks();
    assert_eq!(hooks.len(), 1, "{hooks:?}");
    let (headers, body) = &hooks[0];
    assert_signed(headers, body);
    let alert: Value = serde_json::from_str(body).expect("alert json");
    assert_eq!(alert["ip"], "127.0.0.1", "{alert}");
    let count = alert["count"].as_u64().unwrap_or(0);
    assert!(count > THRESHOLD && count <= THRESHOLD + 10, "count {count}: {alert}");
    assert_eq!(alert["threshold"], THRESHOLD, "{alert}");
    assert_eq!(alert["windowSeconds"], 10, "{alert}");
    assert_eq!(alert["route"], "/burst/target", "{alert}");
    assert_eq!(alert["method"], "GET", "{alert}");
    assert_eq!(alert["userAgent"], "e2e-burster/1.0", "{alert}");
    let ts = alert["timestampMs"].as_u64().unwrap_or(0) / 1000;
    assert!(unix_now().abs_diff(ts) <= 60, "{alert}");

    // Still bursting, within the cooldown: no second alert.
    let statuses = burst(&s.envoy, "/burst/again", THRESHOLD + 10).await;
    assert!(statuses.iter().all(|s| *s == 200));
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(s.server.webhooks().len(), 1, "a second alert within the cooldown: {:?}", s.server.webhooks());
    let metrics = http().get(format!("{}/metrics", s.cp.url())).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with("portcullis_burst_alerts_total{result=\"sent\"} 1")),
        "{}",
        metrics.lines().filter(|l| l.contains("burst")).collect::<Vec<_>>().join("\n")
    );
}

async fn traffic_below_the_threshold_sends_no_alert(backend: Backend) {
    let s = stack(backend, &[]).await;
    burst(&s.envoy, "/calm", THRESHOLD).await;
    // Several report intervals: the counts have reached the control plane.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(s.server.webhooks().len(), 0, "{:?}", s.server.webhooks());
    // The reports did arrive: as many again within the window cross it (by enough
    // that the sliding estimate is over it even if a fixed window ended in between).
    burst(&s.envoy, "/calm", THRESHOLD).await;
    eventually(Duration::from_secs(5), "the alert once the threshold is crossed", || async {
        s.server.webhooks().len() == 1
    })
    .await;
    let alert: Value = serde_json::from_str(&s.server.webhooks()[0].1).unwrap();
    assert!(alert["count"].as_u64().unwrap_or(0) > THRESHOLD, "{alert}");
}

async fn a_bursting_address_is_blocked_where_blocks_are_enforced(backend: Backend) {
    let s = stack(backend, &[("PORTCULLIS_BURST_BLOCK", "30s")]).await;
    burst(&s.envoy, "/burst/target", THRESHOLD + 10).await;
    // The filter learns the block from the answer to its next report.
    let deadline = Instant::now() + Duration::from_secs(5);
    let refused = loop {
        let r = http().get(s.envoy.url("/after")).send().await.unwrap();
        if r.status() == 429 {
            let retry =
                r.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
            let body: Value = r.json().await.unwrap_or(Value::Null);
            break (retry, body);
        }
        assert!(Instant::now() < deadline, "requests from the address were not refused within 5 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (retry, body) = refused;
    assert_eq!(body["reason"], "address_blocked", "{body}");
    let retry: u64 = retry.expect("Retry-After on a blocked answer");
    assert!((20..=30).contains(&retry), "Retry-After {retry}");
    // Every worker has it once it re-reads the shared list (every 250 ms).
    tokio::time::sleep(Duration::from_millis(400)).await;
    let hits = s.server.hits();
    for _ in 0..6 {
        // A fresh client each time: new connections, spread over Envoy's workers.
        let again = http().get(s.envoy.url("/after")).send().await.unwrap();
        assert_eq!(again.status(), 429);
    }
    assert_eq!(s.server.hits(), hits, "blocked requests never reach the upstream");
    assert!(s.envoy.counter("wasmcustom.portcullis.burst.blocked_requests").await >= 7);

    // An Envoy told not to enforce blocks lets the same address through.
    let clusters = EnvoyClusters {
        upstream_port: s.server.port,
        jwks_port: None,
        control_plane_port: Some(s.cp.internal_port),
    };
    let lenient = Envoy::start(s.dir.path(), &plugin_config(false), &clusters).await;
    for _ in 0..10 {
        assert_eq!(http().get(lenient.url("/lenient")).send().await.unwrap().status(), 200);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Its reports got the block back (and ignored it); the strict Envoy still refuses.
    assert_eq!(http().get(s.envoy.url("/after")).send().await.unwrap().status(), 429);
}

portcullis_e2e::on_both_backends!(
    a_burst_sends_one_signed_alert_per_cooldown,
    traffic_below_the_threshold_sends_no_alert,
    a_bursting_address_is_blocked_where_blocks_are_enforced,
);
