//! HMAC keys held by the control plane, through a real Envoy loading the real filter
//! and the real control plane (memory, embedded and Redis stores): keys created,
//! rotated and revoked with the CLI reach the filter within a poll; before the first
//! fetch signed routes answer 503 with `Retry-After`; the secrets are never stored in
//! clear (Redis keys and values, the embedded store's files) nor logged.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use portcullis_e2e::frames::Answer;
use portcullis_e2e::secrets::{assert_absent_from_files, assert_absent_from_redis};
use portcullis_e2e::signing::{signed, webhook};
use portcullis_e2e::{
    control_plane_section, eventually, http, CpStack as Stack, Envoy, EnvoyClusters, StackStore as Store,
};
use serde_json::{json, Value};

/// The filter's poll interval.
const POLL: Duration = Duration::from_millis(500);
const COVERED: &[&str] = &["@method", "@target-uri", "@authority", "content-digest"];

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

fn plugin_config() -> Value {
    json!({
        "realm": "e2e",
        "controlPlane": control_plane_section(500),
        "hmacKeys": { "pollIntervalMs": POLL.as_millis() as u64, "maxStalenessSeconds": 30 },
        "rules": [
            { "name": "signed", "match": { "pathPrefix": "/signed/" }, "requires": "none",
              "signatures": { "schemes": ["httpMessageSignatures"], "components": COVERED,
                              "keys": ["partner"] } },
            { "name": "hooks", "match": { "pathPrefix": "/webhooks/" }, "requires": "none",
              "signatures": { "schemes": ["standardWebhooks"], "keys": ["hooks"] } },
            { "name": "open", "match": { "pathPrefix": "/" }, "requires": "none" }
        ]
    })
}

async fn stack(store: Store) -> Stack {
    Stack::start(store, &plugin_config()).await
}

/// The secret bytes of a secret the CLI printed (either format).
fn secret_bytes(printed: &str) -> Vec<u8> {
    let text = printed.trim();
    STANDARD.decode(text.strip_prefix("whsec_").unwrap_or(text)).expect("the CLI prints base64")
}

/// A signed POST to the `signed` rule with `secret` of key `partner`, a fresh nonce.
async fn partner(port: u16, secret: &[u8], nonce: &str) -> Answer {
    signed(port, ("partner", secret), COVERED, now(), nonce, "/signed/orders", br#"{"order":7}"#)
        .send(port)
        .await
}

fn status_and_reason(a: &Answer) -> (Option<u16>, String) {
    (a.status, a.reason())
}

async fn create_rotate_and_revoke(store: Store) {
    let s = stack(store).await;
    let port = s.envoy.port;
    let first = s.cp.cli(&["hmac-keys", "create", "partner", "--owner", "acme"]).trim().to_string();
    let first_bytes = secret_bytes(&first);
    assert!(first_bytes.len() >= 32, "base64 secrets carry at least 32 bytes");
    let hooks = s.cp.cli(&["hmac-keys", "create", "hooks", "--format", "whsec"]).trim().to_string();
    assert!(hooks.starts_with("whsec_") && secret_bytes(&hooks).len() >= 24, "{hooks}");

    let mut n = 0;
    let mut nonce = || {
        n += 1;
        format!("n-{n}")
    };
    eventually(Duration::from_secs(10), "the key to reach the filter", || {
        let nonce = nonce();
        let secret = first_bytes.clone();
        async move { partner(port, &secret, &nonce).await.status == Some(200) }
    })
    .await;
    assert_eq!(s.server.last_header("x-portcullis-signature-key").as_deref(), Some("partner"));
    assert_eq!(s.server.last_header("x-portcullis-signature-owner").as_deref(), Some("acme"));
    // The second key may come with the next fetch.
    let hooks_secret = secret_bytes(&hooks);
    let mut m = 0;
    eventually(Duration::from_secs(10), "the webhook key to reach the filter", || {
        m += 1;
        let (secret, id) = (hooks_secret.clone(), format!("msg_{m}"));
        async move {
            webhook("/webhooks/billing", &secret, &id, now(), b"{}").send(port).await.status == Some(200)
        }
    })
    .await;
    let wrong = partner(port, &[0x55; 32], &nonce()).await;
    assert_eq!(status_and_reason(&wrong), (Some(401), "bad_signature".into()));

    // Rotation: the new secret verifies once synced, the old one until the overlap ends.
    let overlap = Duration::from_secs(10);
    let rotated_at = Instant::now();
    let second = s.cp.cli(&["hmac-keys", "rotate", "partner", "--overlap", "10s"]).trim().to_string();
    assert_ne!(second, first);
    let second_bytes = secret_bytes(&second);
    eventually(Duration::from_secs(5), "the new secret to reach the filter", || {
        let nonce = nonce();
        let secret = second_bytes.clone();
        async move { partner(port, &secret, &nonce).await.status == Some(200) }
    })
    .await;
    let old = partner(port, &first_bytes, &nonce()).await;
    assert!(rotated_at.elapsed() < overlap, "the check ran inside the overlap");
    assert_eq!(old.status, Some(200), "the old secret inside its overlap: {old:?}");
    eventually(overlap + Duration::from_secs(10), "the old secret to stop verifying", || {
        let nonce = nonce();
        let secret = first_bytes.clone();
        async move {
            status_and_reason(&partner(port, &secret, &nonce).await) == (Some(401), "bad_signature".into())
        }
    })
    .await;
    assert!(rotated_at.elapsed() >= overlap - Duration::from_secs(1), "not before the overlap ended");
    assert_eq!(partner(port, &second_bytes, &nonce()).await.status, Some(200));

    // The listing shows the keys and times, never a secret; every write is audited.
    let listed = s.cp.cli(&["hmac-keys", "list"]);
    let keys: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(keys["keys"].as_array().map(Vec::len), Some(2), "{listed}");
    let audit = s.cp.cli(&["audit", "list", "--json"]);
    for action in ["hmac_key.create", "hmac_key.rotate"] {
        assert!(audit.contains(action), "{action} audited: {audit}");
    }

    // Revoked: refused as an unknown key within a poll interval and a margin.
    s.cp.cli(&["hmac-keys", "revoke", "partner"]);
    let revoked_at = Instant::now();
    eventually(POLL + Duration::from_secs(2), "the revocation to reach the filter", || {
        let nonce = nonce();
        let secret = second_bytes.clone();
        async move {
            status_and_reason(&partner(port, &secret, &nonce).await) == (Some(401), "unknown_key".into())
        }
    })
    .await;
    assert!(revoked_at.elapsed() <= POLL + Duration::from_secs(2));
    assert!(s.cp.cli(&["audit", "list", "--json"]).contains("hmac_key.revoke"));

    // No secret in clear in the store, the list, or a log.
    let secrets = [first.as_str(), second.as_str(), hooks.as_str()];
    for secret in secrets {
        assert!(!listed.contains(secret), "a secret in the listing");
        assert!(!s.cp.proc.log_text().contains(secret), "a secret in the control plane's log");
        assert!(!s.envoy.proc.log_text().contains(secret), "a secret in Envoy's log");
    }
    if let Some(redis) = &s.redis {
        for secret in secrets {
            assert_absent_from_redis(redis, secret, "hooks");
        }
    }
    if store == Store::Embedded {
        for secret in secrets {
            assert_absent_from_files(&s.cp.data_dir, &secret_bytes(secret), b"hooks");
            assert_absent_from_files(&s.cp.data_dir, secret.as_bytes(), b"hooks");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_rotate_and_revoke_in_memory() {
    create_rotate_and_revoke(Store::Memory).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_rotate_and_revoke_on_the_embedded_store() {
    create_rotate_and_revoke(Store::Embedded).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_rotate_and_revoke_with_redis() {
    create_rotate_and_revoke(Store::Redis).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_routes_answer_503_with_retry_after_until_the_first_fetch() {
    let mut s = stack(Store::Embedded).await;
    let secret = secret_bytes(&s.cp.cli(&["hmac-keys", "create", "partner"]));
    // An Envoy that starts while the control plane is down has never fetched the keys.
    s.cp.proc.terminate();
    let clusters = EnvoyClusters::beside(s.server.port, &s.cp);
    let envoy = Envoy::start(s.dir.path(), &plugin_config(), &clusters).await;
    let port = envoy.port;
    let early = partner(port, &secret, "n-early").await;
    assert_eq!(status_and_reason(&early), (Some(503), "signature_keys_unavailable".into()), "{early:?}");
    let r = http().post(envoy.url("/signed/orders")).body("{}").send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    assert_eq!(http().get(envoy.url("/open")).send().await.unwrap().status(), 200, "unsigned routes work");

    s.cp.restart().await;
    let mut n = 0;
    eventually(Duration::from_secs(10), "the first fetch", || {
        n += 1;
        let (secret, nonce) = (secret.clone(), format!("n-{n}"));
        async move { partner(port, &secret, &nonce).await.status == Some(200) }
    })
    .await;
}
