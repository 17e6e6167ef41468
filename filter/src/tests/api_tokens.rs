//! API tokens in the filter: the request path reads the shared replica and makes no
//! call; the root tick follows the feed (one poll at a time) and reports usage.

use portcullis_core::api_token::{generate, ApiTokenEntry, ApiTokenFeedPage, ApiTokenSnapshotPart, NewToken};
use proxy_wasm::types::Action;
use serde_json::{json, Value};

use super::*;

fn config() -> Value {
    json!({
        "realm": "unit",
        "controlPlane": control_plane(),
        "apiTokens": { "pollIntervalMs": 1000 },
        "rules": [ { "name": "api", "match": { "pathPrefix": "/api/" }, "acceptApiTokens": true, "scopes": ["deploy"] } ]
    })
}

fn entry(token: &NewToken, revoked_at: Option<u64>) -> ApiTokenEntry {
    ApiTokenEntry {
        lookup: token.lookup().to_owned(),
        verifier: token.verifier().encode(),
        user: "ci-bot".to_owned(),
        scopes: vec!["deploy".to_owned()],
        expires_at: NOW_MS / 1000 + 3_600,
        revoked_at,
    }
}

fn page(cursor: &str, snapshot: bool, tokens: Vec<ApiTokenEntry>) -> Vec<u8> {
    let snapshot = snapshot.then(|| ApiTokenSnapshotPart { id: "s".into(), part: 0, last: true });
    serde_json::to_vec(&ApiTokenFeedPage { cursor: cursor.into(), snapshot, tokens, more: false }).unwrap()
}

fn header(w: &Worker, id: u32, name: &str) -> Option<String> {
    w.host.request_headers.borrow().get(&id)?.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
}

#[test]
fn tokens_are_decided_from_the_shared_replica_with_no_call_and_revocation_follows_the_feed() {
    let mut w = Worker::start(config());
    let token = generate("pct", &[3u8; 48]).unwrap();

    // Before the first sync: fail closed, no call from the request.
    let (early, action) = w.request("/api/x", &[("x-api-key", token.expose())], true);
    assert_eq!(action, Action::Pause);
    assert_eq!(w.host.replies_on(early)[0].status, 503);
    assert_eq!(w.call_count(), 0);

    w.tick();
    let poll = w.last_call();
    assert_eq!((poll.context, poll.path.as_str()), (ROOT, "/v1/api-tokens/feed?limit=1000"));
    w.tick();
    assert_eq!(w.call_count(), 1, "one poll at a time");
    w.answer(&poll, "200", &page("d.1", true, vec![entry(&token, None)]));

    let calls = w.call_count();
    let forged = [("x-api-key", token.expose()), ("x-portcullis-user", "mallory")];
    let (id, action) = w.request("/api/x", &forged, true);
    assert_eq!(action, Action::Continue);
    assert_eq!(header(&w, id, "x-portcullis-user").as_deref(), Some("ci-bot"));
    assert_eq!(header(&w, id, "x-portcullis-token-id").as_deref(), Some(token.lookup()));
    assert_eq!(header(&w, id, "x-api-key"), None, "the token is not forwarded");
    assert_eq!(w.call_count(), calls, "no call on the request path");

    // The next poll continues from the cursor, and brings the revocation.
    w.host.advance(1_000);
    w.tick();
    let polls = w.host.calls_to("/v1/api-tokens/feed");
    let next = polls.last().unwrap().clone();
    assert_eq!(next.path, "/v1/api-tokens/feed?cursor=d.1&limit=1000");
    w.answer(&next, "200", &page("d.2", false, vec![entry(&token, Some(NOW_MS / 1000))]));
    let auth = bearer(token.expose());
    let (revoked, _) = w.request("/api/x", &[("authorization", auth.as_str())], true);
    assert_eq!(w.host.replies_on(revoked)[0].status, 401);
    assert_eq!(w.host.counter("portcullis.rule.denied.revoked.api"), 1);

    // Usage went back off the request path, batched.
    let usage = w.host.calls_to("/v1/api-tokens/usage");
    assert_eq!(usage.len(), 1);
    let body: Value = serde_json::from_slice(usage[0].body.as_deref().unwrap()).unwrap();
    assert_eq!(body, json!({ "used": [token.lookup()] }));
}

#[test]
fn a_malformed_token_is_refused_without_reading_the_replica() {
    let mut w = Worker::start(config());
    w.host.clear_log();
    let (id, _) = w.request("/api/x", &[("x-api-key", "pct_short")], true);
    assert_eq!(w.host.replies_on(id)[0].status, 401);
    let reads = w.host.log.borrow().iter().filter(|c| **c == "get_shared_data").count();
    assert!(reads <= 1, "only the sync mark is read: {reads}");
}

/// Synced, then the feed fails for longer than `maxStalenessSeconds`: a rule with the
/// default `onStale: deny` answers 503 (a revocation made meanwhile cannot be missed
/// for longer than the bound), one with `onStale: allow` goes on deciding; the next
/// successful poll makes the replica fresh again.
#[test]
fn a_replica_older_than_the_staleness_bound_answers_503_unless_the_rule_allows_stale() {
    let mut config = config();
    config["apiTokens"]["maxStalenessSeconds"] = json!(5);
    let stale_ok = json!({ "name": "kiosk", "match": { "pathPrefix": "/kiosk/" }, "acceptApiTokens": true,
                           "scopes": ["deploy"], "onStale": "allow" });
    config["rules"].as_array_mut().unwrap().push(stale_ok);
    let mut w = Worker::start(config);
    let token = generate("pct", &[5u8; 48]).unwrap();
    w.tick();
    let poll = w.last_call();
    w.answer(&poll, "200", &page("d.1", true, vec![entry(&token, None)]));
    let key = [("x-api-key", token.expose())];
    let (fresh, action) = w.request("/api/x", &key, true);
    assert_eq!(action, Action::Continue, "{:?}", w.host.replies_on(fresh));

    // Every poll fails from here on, for 6 s (past the 5 s bound).
    let mut failed = w.host.calls_to("/v1/api-tokens/feed").len();
    for _ in 0..6 {
        w.host.advance(1_000);
        w.tick();
        let polls = w.host.calls_to("/v1/api-tokens/feed");
        if polls.len() > failed {
            failed = polls.len();
            w.fail(&polls[failed - 1]);
        }
    }
    assert!(failed >= 2, "the feed was polled while failing");
    let (stale, _) = w.request("/api/x", &key, true);
    assert_eq!(w.host.replies_on(stale)[0].status, 503);
    let (allowed, action) = w.request("/kiosk/x", &key, true);
    assert_eq!(action, Action::Continue, "{:?}", w.host.replies_on(allowed));

    // The control plane answers again: fresh.
    w.host.advance(5_000);
    w.tick();
    let next = w.host.calls_to("/v1/api-tokens/feed").last().cloned().unwrap();
    w.answer(&next, "200", &page("d.2", false, vec![]));
    let (again, action) = w.request("/api/x", &key, true);
    assert_eq!(action, Action::Continue, "{:?}", w.host.replies_on(again));
}
