//! The audit log end to end in process, over every backend (`support::backends!`):
//! admin writes recorded with the admin's identity, decision batches stored once,
//! queries with filters and paging, checkpoints and retention, one chain from two
//! replicas; on a real redis-server, records edited and deleted behind the control
//! plane's back; and the `portcullis audit` CLI against the built server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::body::Body;
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{Request, StatusCode};
use portcullis_control_plane::admin_credential::AdminCredential;
use portcullis_control_plane::audit::{self, AuditRecord, AUDIT_LOG};
use portcullis_control_plane::clock::FixedClock;
use portcullis_control_plane::random::SeededRandom;
use portcullis_control_plane::store::redis::{KeySpace, RedisTimeouts};
use portcullis_control_plane::store::{RedisStore, Store};
use portcullis_control_plane::{AppState, Dependencies};
use portcullis_core::audit::DECISIONS_PATH;
use serde_json::{json, Value};
use support::{body_json, Backend, Listeners, Server};

const ADMIN_TOKEN: &str = "audit-test-admin-token-0123456789";
const NOW_MS: u64 = 1_800_000_000_000;
const DAY_MS: u64 = 86_400_000;

async fn state_on(store: Arc<dyn Store>, clock: Arc<FixedClock>) -> AppState {
    AppState::initialise(Dependencies {
        clock,
        rng: Arc::new(SeededRandom::new(9)),
        ..support::dependencies(store, ADMIN_TOKEN, [3; 32])
    })
    .await
    .unwrap()
}

fn admin(method: &str, path: &str, body: Option<Value>) -> Request<Body> {
    support::admin_request(ADMIN_TOKEN, method, path, body)
}

async fn get(app: &Listeners, path: &str) -> Value {
    let response = app.send(admin("GET", path, None)).await;
    assert_eq!(response.status(), StatusCode::OK, "{path}");
    body_json(response).await
}

fn batch(id: &str, decisions: Value) -> Request<Body> {
    Request::post(DECISIONS_PATH)
        .header(CONTENT_TYPE, "application/json")
        .body(Body::from(json!({ "batchId": id, "decisions": decisions }).to_string()))
        .unwrap()
}

fn seqs(page: &Value) -> Vec<u64> {
    page["records"].as_array().unwrap().iter().map(|r| r["seq"].as_u64().unwrap()).collect()
}

support::backends!(
    admin_writes_are_chained_with_the_admin_identity,
    decision_batches_are_stored_once_and_found_by_filters_and_pages,
    hashed_addresses_are_found_by_the_address_and_request_ids_by_id,
    two_replicas_appending_at_once_keep_one_chain,
    retention_purges_old_records_and_the_rest_still_verifies,
);

async fn admin_writes_are_chained_with_the_admin_identity(store: Arc<dyn Store>) {
    let app = Listeners::new(state_on(store, Arc::new(FixedClock::new(NOW_MS))).await);
    let issued = app.send(admin("POST", "/admin/v1/tokens", Some(json!({"sub": "alice"})))).await;
    assert_eq!(issued.status(), StatusCode::OK);
    assert_eq!(app.send(admin("POST", "/admin/v1/keys/rotate", None)).await.status(), StatusCode::OK);

    let identity = AdminCredential::new(ADMIN_TOKEN).unwrap().identity().to_owned();
    let page = get(&app, "/admin/v1/audit?actor=admin").await;
    let records = page["records"].as_array().unwrap();
    let actions: Vec<&str> = records.iter().map(|r| r["action"].as_str().unwrap()).collect();
    assert_eq!(actions, vec!["keys.rotate", "token.issue"], "newest first");
    for record in records {
        assert_eq!(
            (record["kind"].as_str(), record["actor"].as_str()),
            (Some("admin"), Some(identity.as_str()))
        );
        assert_eq!(record["hash"].as_str().unwrap().len(), 64);
    }
    assert_eq!(records[1]["target"], "alice");
    assert!(!page.to_string().contains(ADMIN_TOKEN), "the token is never recorded");

    let checkpoint = app.send(admin("POST", "/admin/v1/audit/checkpoint", None)).await;
    assert_eq!(checkpoint.status(), StatusCode::OK);
    let checkpoint = body_json(checkpoint).await;
    assert_eq!(
        (checkpoint["kind"].as_str(), checkpoint["actor"].as_str()),
        (Some("checkpoint"), Some(identity.as_str()))
    );
    let verified = get(&app, "/admin/v1/audit/verify").await;
    assert_eq!(verified["intact"], true, "{verified}");
    assert_eq!(verified["intactThrough"], checkpoint["seq"]);
    assert_eq!(verified["signedThrough"], checkpoint["seq"].as_u64().unwrap() - 1);

    let unauthenticated = Request::get("/admin/v1/audit").body(Body::empty()).unwrap();
    let refused = app.send(unauthenticated).await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(refused.headers().get(CONTENT_TYPE).unwrap(), "application/problem+json");
}

async fn decision_batches_are_stored_once_and_found_by_filters_and_pages(store: Arc<dyn Store>) {
    let app = Listeners::new(state_on(store, Arc::new(FixedClock::new(NOW_MS))).await);
    let decisions = json!([
        {"timeMs": 1, "decision": "allow", "subject": "alice", "client": "192.0.2.1", "rule": "api"},
        {"timeMs": 2, "decision": "deny", "subject": "bob", "client": "192.0.2.2", "rule": "api", "reason": "expired_token"},
        {"timeMs": 3, "decision": "deny", "client": "192.0.2.2", "rule": "login", "reason": "rate_limited"},
        {"timeMs": 4, "decision": "allow", "subject": "bob", "client": "192.0.2.2", "rule": "login"},
        {"timeMs": 5, "decision": "deny", "subject": "alice", "client": "192.0.2.1", "rule": "api", "reason": "insufficient_scope"},
    ]);
    let first = app.send(batch("filter-a-1", decisions.clone())).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(body_json(first).await, json!({"batchId": "filter-a-1", "stored": 5, "duplicate": false}));
    let again = app.send(batch("filter-a-1", decisions)).await;
    assert_eq!(body_json(again).await, json!({"batchId": "filter-a-1", "stored": 0, "duplicate": true}));
    assert_eq!(
        seqs(&get(&app, "/admin/v1/audit").await),
        vec![5, 4, 3, 2, 1],
        "a resent batch is stored once"
    );

    assert_eq!(seqs(&get(&app, "/admin/v1/audit?decision=deny").await), vec![5, 3, 2]);
    assert_eq!(seqs(&get(&app, "/admin/v1/audit?decision=deny&ip=192.0.2.2").await), vec![3, 2]);
    assert_eq!(seqs(&get(&app, "/admin/v1/audit?subject=bob&rule=login").await), vec![4]);
    assert_eq!(seqs(&get(&app, "/admin/v1/audit?reason=rate_limited").await), vec![3]);
    assert_eq!(seqs(&get(&app, "/admin/v1/audit?action=decision.allow&actor=fleet").await), vec![4, 1]);
    assert!(seqs(&get(&app, &format!("/admin/v1/audit?since={}", NOW_MS + 1)).await).is_empty());
    assert_eq!(seqs(&get(&app, &format!("/admin/v1/audit?until={}&limit=2", NOW_MS + 1)).await), vec![5, 4]);
    let record = &get(&app, "/admin/v1/audit?reason=expired_token").await["records"][0];
    assert_eq!(
        (record["decision"]["subject"].as_str(), record["batchId"].as_str()),
        (Some("bob"), Some("filter-a-1"))
    );

    // Pages of two, newest first, then oldest first; each record once.
    for (order, expected) in [("desc", vec![5, 4, 3, 2, 1]), ("asc", vec![1, 2, 3, 4, 5])] {
        let (mut seen, mut cursor) = (Vec::new(), None::<u64>);
        loop {
            let after = cursor.map(|c| format!("&cursor={c}")).unwrap_or_default();
            let page = get(&app, &format!("/admin/v1/audit?limit=2&order={order}{after}")).await;
            seen.extend(seqs(&page));
            match page["nextCursor"].as_u64() {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        assert_eq!(seen, expected, "{order}");
    }

    for bad in ["limit=0", "limit=1001", "decision=maybe", "order=sideways", "colour=red", "cursor=x"] {
        let response = app.send(admin("GET", &format!("/admin/v1/audit?{bad}"), None)).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(response.headers().get(CONTENT_TYPE).unwrap(), "application/problem+json");
    }
    let empty = app.send(batch("", json!([{"timeMs": 1, "decision": "allow"}]))).await;
    assert_eq!(empty.status(), StatusCode::BAD_REQUEST);
    let unknown = app.send(batch("b", json!([{"timeMs": 1, "decision": "allow", "token": "x"}]))).await;
    assert_eq!(unknown.status(), StatusCode::BAD_REQUEST);
    let anonymous = Request::post(DECISIONS_PATH)
        .header(AUTHORIZATION, "Bearer not-the-fleet-credential-at-all-000000")
        .header(CONTENT_TYPE, "application/json")
        .body(Body::from(
            json!({"batchId": "x", "decisions": [{"timeMs": 1, "decision": "deny"}]}).to_string(),
        ))
        .unwrap();
    assert_eq!(app.send(anonymous).await.status(), StatusCode::UNAUTHORIZED);
}

async fn hashed_addresses_are_found_by_the_address_and_request_ids_by_id(store: Arc<dyn Store>) {
    let app = Listeners::new(state_on(store, Arc::new(FixedClock::new(NOW_MS))).await);
    let key = support::fleet_credential().feed_key();
    let (hashed, other) = (key.client_address("198.51.100.9"), key.client_address("198.51.100.10"));
    let decisions = json!([
        {"timeMs": 1, "decision": "deny", "client": hashed, "reason": "rate_limited", "rateLimited": true,
         "requestId": "r-1", "method": "GET", "path": "/a", "status": 429, "latencyMs": 2},
        {"timeMs": 2, "decision": "shadow_deny", "client": other, "reason": "missing_token", "requestId": "r-2"},
        {"timeMs": 3, "decision": "allow", "client": "198.51.100.9", "subject": "k1", "subjectKind": "api_token"},
    ]);
    assert_eq!(app.send(batch("filter-h-1", decisions)).await.status(), StatusCode::OK);
    assert_eq!(seqs(&get(&app, "/admin/v1/audit?ip=198.51.100.9").await), vec![3, 1], "raw or hashed");
    assert_eq!(seqs(&get(&app, &format!("/admin/v1/audit?ip={hashed}")).await), vec![1]);
    assert_eq!(seqs(&get(&app, "/admin/v1/audit?requestId=r-2").await), vec![2]);
    assert_eq!(seqs(&get(&app, "/admin/v1/audit?decision=shadow_deny").await), vec![2]);
    let record = &get(&app, "/admin/v1/audit?requestId=r-1").await["records"][0];
    assert_eq!(record["decision"]["rateLimited"], json!(true));
    assert_eq!(record["decision"]["status"], json!(429));
    let verified = get(&app, "/admin/v1/audit/verify").await;
    assert_eq!(verified["intact"], json!(true));
}

async fn two_replicas_appending_at_once_keep_one_chain(backend: Backend) {
    let stores = [Arc::clone(&backend.store), backend.replica()];
    let writers: Vec<_> = (0..24u64)
        .map(|i| {
            let store = Arc::clone(&stores[(i % 2) as usize]);
            tokio::spawn(async move {
                audit::record(store.as_ref(), NOW_MS + i, "system", "test.write", &format!("w{i}"), None)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut positions = BTreeSet::new();
    for writer in writers {
        positions.insert(writer.await.unwrap());
    }
    assert_eq!(positions, (1..=24).collect(), "every writer got its own position");
    let app = Listeners::new(state_on(Arc::clone(&backend.store), Arc::new(FixedClock::new(NOW_MS))).await);
    let verified = get(&app, "/admin/v1/audit/verify").await;
    assert_eq!(
        (verified["intact"].as_bool(), verified["intactThrough"].as_u64()),
        (Some(true), Some(24)),
        "{verified}"
    );
}

async fn retention_purges_old_records_and_the_rest_still_verifies(store: Arc<dyn Store>) {
    let clock = Arc::new(FixedClock::new(NOW_MS));
    let state = state_on(Arc::clone(&store), Arc::clone(&clock)).await.with_audit_retention(Some(7 * DAY_MS));
    let app = Listeners::new(state.clone());
    for sub in ["old-1", "old-2", "old-3"] {
        app.send(admin("POST", "/admin/v1/tokens", Some(json!({"sub": sub})))).await;
    }
    clock.set(NOW_MS + 10 * DAY_MS);
    app.send(admin("POST", "/admin/v1/tokens", Some(json!({"sub": "new"})))).await;
    let done = state.maintain().await.unwrap();
    assert_eq!(done.purged_audit_records, 3);
    assert_eq!(done.audit_checkpoint_seq, None, "the retention checkpoint is the newest record already");
    let verified = get(&app, "/admin/v1/audit/verify").await;
    assert_eq!(
        (verified["intact"].as_bool(), verified["firstSeq"].as_u64()),
        (Some(true), Some(4)),
        "{verified}"
    );
    let targets: Vec<String> = get(&app, "/admin/v1/audit?action=token.issue").await["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["target"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(targets, vec!["new"]);
    let again = state.maintain().await.unwrap();
    assert_eq!((again.purged_audit_records, again.audit_checkpoint_seq), (0, None), "nothing new to do");
}

// --- tampering with a real redis-server ------------------------------------------------------

struct RedisChain {
    app: Listeners,
    conn: redis::aio::MultiplexedConnection,
    entries_key: String,
}

async fn redis_chain(records: u64) -> RedisChain {
    let url = support::shared_redis_url();
    let store: Arc<dyn Store> = Arc::new(RedisStore::new(&url, RedisTimeouts::default()).unwrap());
    for i in 0..records {
        audit::record(store.as_ref(), NOW_MS + i, "system", "test.write", &format!("w{i}"), None)
            .await
            .unwrap();
    }
    let app = Listeners::new(state_on(store, Arc::new(FixedClock::new(NOW_MS))).await);
    let conn = redis::Client::open(url.as_str()).unwrap().get_multiplexed_async_connection().await.unwrap();
    RedisChain { app, conn, entries_key: KeySpace::default().log_entries(AUDIT_LOG) }
}

impl RedisChain {
    async fn record(&mut self, seq: u64) -> AuditRecord {
        let data: Vec<u8> =
            redis::cmd("HGET").arg(&self.entries_key).arg(seq).query_async(&mut self.conn).await.unwrap();
        serde_json::from_slice(&data).unwrap()
    }

    async fn failure(&self) -> (u64, String) {
        let verified = get(&self.app, "/admin/v1/audit/verify").await;
        assert_eq!(verified["intact"], false, "{verified}");
        let failure = &verified["failure"];
        (failure["seq"].as_u64().unwrap(), failure["kind"].as_str().unwrap().to_owned())
    }
}

#[tokio::test]
async fn a_record_edited_in_redis_is_named_by_verify() {
    let mut chain = redis_chain(6).await;
    let mut record = chain.record(4).await;
    record.target = "nobody".to_owned();
    let _: () = redis::cmd("HSET")
        .arg(&chain.entries_key)
        .arg(4)
        .arg(serde_json::to_vec(&record).unwrap())
        .query_async(&mut chain.conn)
        .await
        .unwrap();
    assert_eq!(chain.failure().await, (4, "hash".to_owned()));
}

#[tokio::test]
async fn a_record_deleted_from_redis_is_named_as_a_gap() {
    let mut chain = redis_chain(6).await;
    let _: () = redis::cmd("HDEL").arg(&chain.entries_key).arg(3).query_async(&mut chain.conn).await.unwrap();
    assert_eq!(chain.failure().await, (3, "gap".to_owned()));
    // Deleting the newest records but one is a gap too: the head stays.
    let mut chain = redis_chain(6).await;
    let _: () = redis::cmd("HDEL").arg(&chain.entries_key).arg(5).query_async(&mut chain.conn).await.unwrap();
    assert_eq!(chain.failure().await, (5, "gap".to_owned()));
}

// --- the CLI ------------------------------------------------------------------------------------

fn cli_ok(server: &Server, args: &[&str]) -> String {
    let output = support::cli(&server.url, Some(ADMIN_TOKEN), args);
    assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test]
async fn the_cli_lists_exports_verifies_and_checkpoints() {
    let server = Server::start(ADMIN_TOKEN, &["--store", "memory"]);
    for sub in ["alice", "bob", "carol"] {
        cli_ok(&server, &["token", "issue", "--sub", sub]);
    }
    let listed = cli_ok(&server, &["audit", "list", "--action", "token.issue", "--limit", "2"]);
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 2, "{listed}");
    assert!(lines[0].contains("token.issue") && lines[0].trim_end().ends_with("carol"), "{listed}");
    assert!(lines[1].trim_end().ends_with("bob"), "{listed}");
    let json: Vec<AuditRecord> =
        serde_json::from_str(&cli_ok(&server, &["audit", "list", "--subject", "alice", "--json"])).unwrap();
    assert_eq!(json.iter().map(|r| r.target.as_str()).collect::<Vec<_>>(), vec!["alice"]);

    let checkpoint: AuditRecord = serde_json::from_str(&cli_ok(&server, &["audit", "checkpoint"])).unwrap();
    assert!(checkpoint.checkpoint.is_some());
    let exported = cli_ok(&server, &["audit", "export", "--since", "1d"]);
    let records: Vec<AuditRecord> = exported.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=checkpoint.seq).collect::<Vec<_>>(), "oldest first, every record");
    assert!(cli_ok(&server, &["audit", "export", "--since", "2999-01-01T00:00:00Z"]).is_empty());

    let output = support::cli(&server.url, Some(ADMIN_TOKEN), &["audit", "verify"]);
    assert!(output.status.success());
    let verified: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(verified["intactThrough"].as_u64(), Some(checkpoint.seq));
    assert!(String::from_utf8_lossy(&output.stderr)
        .contains(&format!("intact through record {}", checkpoint.seq)));
    let bad = support::cli(&server.url, Some(ADMIN_TOKEN), &["audit", "list", "--since", "yesterday"]);
    assert!(!bad.status.success());
}
