//! One store test suite, run against every backend: `support::backends!` turns each
//! test function into `<test>::memory`, `<test>::embedded`, `<test>::redis`,
//! `<test>::redis_tls` and `<test>::redis_cluster` (run one backend with e.g.
//! `cargo test --test store_suite ::redis_cluster`).
//!
//! The Redis runs use real servers started once for this test binary: a plain
//! `redis-server`, one serving TLS with a CA made by the test (client certificates
//! required), and a Redis Cluster of three primaries; without `redis-server` and
//! `redis-cli` they fail.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;

use portcullis_control_plane::store::rate_limit::{MAX_LIMIT, MAX_NOW_MS};
use portcullis_control_plane::store::redis::{KeySpace, RedisOptions, RedisTimeouts};
use portcullis_control_plane::store::{
    EmbeddedStore, LogAppendError, LogEntry, QueueEntry, QueueLane, QueueOutcome, QueueRevive, RedisStore,
    SetMember, Store, StoreError,
};
use portcullis_core::ratelimit::{Gcra, GcraState, Unit};
use portcullis_core::wire::{RateLimitOp, RateLimitResult};

support::backends!(
    ping_succeeds_on_a_healthy_store,
    reads_of_missing_things_are_empty,
    counter_increments_accumulate_within_a_window,
    counter_window_is_fixed_and_resets_after_expiry,
    counter_rejects_a_zero_ttl_as_a_permanent_error,
    concurrent_increments_are_never_lost,
    set_members_expire_individually,
    set_add_reports_new_members_and_replaces_expiry,
    set_scan_pages_through_every_live_member_once,
    set_scan_returns_each_unchanged_member_exactly_once_while_the_set_changes,
    records_round_trip_and_expire,
    record_put_with_a_past_expiry_deletes,
    compare_and_swap_only_succeeds_on_the_expected_value,
    compare_and_swap_treats_expired_records_as_absent,
    concurrent_compare_and_swap_has_exactly_one_winner,
    feed_cursors_increase_and_pages_follow_on,
    feed_trim_makes_old_cursors_too_old,
    feed_cursor_ahead_of_the_head_must_resync,
    concurrent_feed_appends_get_distinct_cursors,
    log_appends_are_sequential_and_ranges_read_back,
    log_append_if_last_detects_conflicts,
    concurrent_conditional_appends_build_one_unbroken_chain,
    log_trim_drops_old_entries_keeps_the_newest_and_the_sequence,
    log_batches_append_whole_onto_the_expected_head_or_not_at_all,
    names_are_isolated_across_primitives_and_escaped,
    binary_values_round_trip,
    lease_sizes_shrink_near_the_limit,
    refusals_report_retry_remaining_and_reset,
    released_units_are_credited_back_up_to_a_full_bucket,
    a_lease_releases_before_it_grants_in_one_step,
    randomized_rate_limit_operations_match_the_core_arithmetic,
    extreme_rate_limit_values_match_the_core_arithmetic,
    concurrent_leases_never_grant_more_than_the_limit,
    rate_limit_arguments_outside_the_exact_range_are_refused,
    queue_claims_due_entries_in_order_and_settles_them,
    queue_claims_lapse_and_a_late_settle_is_refused,
    queue_dead_letters_are_bounded_listed_revived_and_deleted,
    queue_pushes_are_bounded_and_idempotent,
    concurrent_claims_take_each_queue_entry_once,
    one_time_claims_are_won_once_until_they_expire,
    concurrent_one_time_claims_have_exactly_one_winner,
);

async fn ping_succeeds_on_a_healthy_store(store: Arc<dyn Store>) {
    store.ping().await.unwrap();
}

async fn reads_of_missing_things_are_empty(store: Arc<dyn Store>) {
    assert_eq!(store.get_counter("none", 0).await.unwrap(), 0);
    assert!(!store.set_contains("none", "m", 0).await.unwrap());
    assert!(store.set_members("none", 0).await.unwrap().is_empty());
    assert_eq!(store.record_get("none", 0).await.unwrap(), None);
    let page = store.feed_read("none", 0, 10).await.unwrap();
    assert!(page.entries.is_empty());
    assert!(!page.cursor_too_old);
    assert_eq!((page.head, page.next_cursor), (0, 0));
    assert_eq!(store.feed_trim("none", 0).await.unwrap(), 0);
    assert!(store.log_range("none", 1, 10).await.unwrap().is_empty());
    assert_eq!(store.log_last("none").await.unwrap(), None);
    store.set_remove("none", "m").await.unwrap();
    store.record_delete("none").await.unwrap();
    assert!(store.queue_claim("none", 0, 1, 10).await.unwrap().is_empty());
    assert!(store.queue_list("none", QueueLane::Dead, 10).await.unwrap().is_empty());
    assert_eq!(store.queue_settle("none", "x", 0, QueueOutcome::Done).await.unwrap(), None);
    assert_eq!(store.queue_revive("none", "x", Vec::new(), 0, 10).await.unwrap(), QueueRevive::NotDead);
    assert!(!store.queue_delete("none", QueueLane::Pending, "x").await.unwrap());
}

async fn counter_increments_accumulate_within_a_window(store: Arc<dyn Store>) {
    assert_eq!(store.incr_counter("hits", 1, 1000, 0).await.unwrap(), 1);
    assert_eq!(store.incr_counter("hits", 2, 1000, 10).await.unwrap(), 3);
    assert_eq!(store.incr_counter("hits", -1, 1000, 20).await.unwrap(), 2);
    assert_eq!(store.get_counter("hits", 30).await.unwrap(), 2);
    assert_eq!(store.get_counter("other", 30).await.unwrap(), 0);
}

async fn counter_window_is_fixed_and_resets_after_expiry(store: Arc<dyn Store>) {
    let t0 = 1_700_000_000_000;
    assert_eq!(store.incr_counter("w", 5, 1000, t0).await.unwrap(), 5);
    // A later increment does not extend the window.
    assert_eq!(store.incr_counter("w", 1, 1000, t0 + 999).await.unwrap(), 6);
    assert_eq!(store.get_counter("w", t0 + 999).await.unwrap(), 6);
    assert_eq!(store.get_counter("w", t0 + 1000).await.unwrap(), 0);
    // The first increment after expiry starts a new window at that time.
    assert_eq!(store.incr_counter("w", 2, 1000, t0 + 1500).await.unwrap(), 2);
    assert_eq!(store.get_counter("w", t0 + 2499).await.unwrap(), 2);
    assert_eq!(store.get_counter("w", t0 + 2500).await.unwrap(), 0);
}

async fn counter_rejects_a_zero_ttl_as_a_permanent_error(store: Arc<dyn Store>) {
    let error = store.incr_counter("z", 1, 0, 0).await.unwrap_err();
    assert!(matches!(error, StoreError::InvalidArgument(_)), "{error:?}");
    assert!(!error.is_transient());
}

async fn concurrent_increments_are_never_lost(store: Arc<dyn Store>) {
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut seen = Vec::new();
                for _ in 0..4 {
                    seen.push(store.incr_counter("busy", 1, 60_000, 0).await.unwrap());
                }
                seen
            })
        })
        .collect();
    let mut seen = BTreeSet::new();
    for task in tasks {
        for value in task.await.unwrap() {
            assert!(seen.insert(value), "value {value} returned twice");
        }
    }
    // Every increment saw a distinct intermediate value: 1..=200.
    assert_eq!(seen, (1..=200).collect());
    assert_eq!(store.get_counter("busy", 1).await.unwrap(), 200);
}

async fn set_members_expire_individually(store: Arc<dyn Store>) {
    let t0 = 1_700_000_000_000;
    assert!(store.set_add("revoked", "b", t0 + 200, t0).await.unwrap());
    assert!(store.set_add("revoked", "a", t0 + 100, t0).await.unwrap());
    assert!(store.set_contains("revoked", "a", t0 + 99).await.unwrap());
    assert!(!store.set_contains("revoked", "a", t0 + 100).await.unwrap());
    assert_eq!(
        store.set_members("revoked", t0 + 50).await.unwrap(),
        vec![
            SetMember { member: "a".into(), expires_at_ms: t0 + 100 },
            SetMember { member: "b".into(), expires_at_ms: t0 + 200 },
        ]
    );
    assert_eq!(
        store.set_members("revoked", t0 + 150).await.unwrap(),
        vec![SetMember { member: "b".into(), expires_at_ms: t0 + 200 }]
    );
    // Pruned members stay gone even for a reader with an older clock.
    assert!(!store.set_contains("revoked", "a", t0).await.unwrap());
    assert!(store.set_members("revoked", t0 + 200).await.unwrap().is_empty());
}

async fn set_add_reports_new_members_and_replaces_expiry(store: Arc<dyn Store>) {
    assert!(store.set_add("s", "m", 100, 0).await.unwrap());
    assert!(!store.set_add("s", "m", 500, 0).await.unwrap());
    assert!(store.set_contains("s", "m", 499).await.unwrap());
    // A member whose expiry passed counts as new again.
    assert!(store.set_add("s", "m", 1000, 600).await.unwrap());
    // An expiry in the past removes the member.
    assert!(!store.set_add("s", "m", 600, 700).await.unwrap());
    assert!(!store.set_contains("s", "m", 700).await.unwrap());
    assert!(store.set_add("s", "n", 1000, 0).await.unwrap());
    store.set_remove("s", "n").await.unwrap();
    assert!(!store.set_contains("s", "n", 1).await.unwrap());
}

/// Scans `set` to the end, `limit` members a page, calling `between` after each page
/// with the page's last member; returns every page.
async fn scan_all(
    store: &dyn Store,
    set: &str,
    limit: usize,
    now_ms: u64,
    mut between: impl FnMut(usize, &SetMember) -> Vec<(String, Option<u64>)>,
) -> Vec<Vec<SetMember>> {
    let mut pages = Vec::new();
    let mut after: Option<SetMember> = None;
    for page_number in 0..10_000 {
        let page = store.set_scan(set, after.as_ref(), limit, now_ms).await.unwrap();
        let Some(last) = page.last().cloned() else { return pages };
        assert!(page.len() <= limit, "page {page_number} has {} members", page.len());
        for (member, expiry) in between(page_number, &last) {
            match expiry {
                Some(at) => {
                    store.set_add(set, &member, at, now_ms).await.unwrap();
                }
                None => store.set_remove(set, &member).await.unwrap(),
            }
        }
        pages.push(page);
        after = Some(last);
    }
    panic!("the scan did not end");
}

async fn set_scan_pages_through_every_live_member_once(store: Arc<dyn Store>) {
    let t0 = 1_700_000_000_000;
    let mut live = BTreeSet::new();
    for i in 0..250u64 {
        // Odd names and shared expiries on purpose; every tenth one is expired at t0 + 5.
        let member = format!("m.{i:03}/é\u{1f}{}", i % 7);
        let expiry = if i % 10 == 0 { t0 + 5 } else { t0 + 1_000 + (i % 13) * 100 };
        store.set_add("scan", &member, expiry, t0).await.unwrap();
        if i % 10 != 0 {
            live.insert(SetMember { member, expires_at_ms: expiry });
        }
    }
    for limit in [1, 7, 225, 10_000, usize::MAX] {
        let pages = scan_all(store.as_ref(), "scan", limit, t0 + 5, |_, _| Vec::new()).await;
        let seen: Vec<SetMember> = pages.iter().flatten().cloned().collect();
        assert_eq!(seen.len(), live.len(), "limit {limit}: no member twice");
        assert_eq!(seen.into_iter().collect::<BTreeSet<_>>(), live, "limit {limit}");
        if limit < live.len() {
            assert!(pages[..pages.len() - 1].iter().all(|p| p.len() == limit), "limit {limit}: full pages");
        }
    }
    assert!(store.set_scan("none", None, 10, t0).await.unwrap().is_empty());
    assert!(store.set_scan("scan", None, 0, t0).await.unwrap().is_empty());
    // Reads only: the expired members are skipped, not pruned.
    assert_eq!(store.set_scan("scan", None, 1, t0).await.unwrap()[0].expires_at_ms, t0 + 5);
}

async fn set_scan_returns_each_unchanged_member_exactly_once_while_the_set_changes(store: Arc<dyn Store>) {
    let t0 = 1_700_000_000_000;
    let at = |i: u64| t0 + 1_000 + i * 10;
    for i in 0..300u64 {
        store.set_add("moving", &format!("m{i:03}"), at(i), t0).await.unwrap();
    }
    let mut touched: BTreeSet<String> = BTreeSet::new();
    let pages = scan_all(store.as_ref(), "moving", 10, t0, |page, last| {
        let changes: Vec<(String, Option<u64>)> = match page % 4 {
            // The member the page ended with goes away: the next page resumes after it.
            0 => vec![(last.member.clone(), None)],
            // It gets a later expiry: it may come again, nothing may be skipped.
            1 => vec![(last.member.clone(), Some(last.expires_at_ms + 5_000))],
            // New members before and after the position, and one not yet read removed.
            2 => {
                let later = format!("m{:03}", (page * 10 + 25).min(299));
                vec![
                    (format!("{}-before", last.member), Some(t0 + 1)),
                    (format!("{}-after", last.member), Some(last.expires_at_ms + 1)),
                    (later, None),
                ]
            }
            _ => Vec::new(),
        };
        touched.extend(changes.iter().map(|(m, _)| m.clone()));
        changes
    })
    .await;
    let mut counts: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for member in pages.iter().flatten() {
        *counts.entry(member.member.clone()).or_default() += 1;
    }
    for i in 0..300u64 {
        let member = format!("m{i:03}");
        if !touched.contains(&member) {
            assert_eq!(counts.get(&member), Some(&1), "{member} was unchanged for the whole scan");
        }
    }
    assert!(touched.len() > 20, "the scan saw changes");
}

async fn records_round_trip_and_expire(store: Arc<dyn Store>) {
    let t0 = 1_700_000_000_000;
    store.record_put("k", b"forever".to_vec(), None, t0).await.unwrap();
    assert_eq!(store.record_get("k", u64::MAX - 1).await.unwrap().as_deref(), Some(&b"forever"[..]));
    store.record_put("k", b"brief".to_vec(), Some(t0 + 100), t0).await.unwrap();
    assert_eq!(store.record_get("k", t0 + 99).await.unwrap().as_deref(), Some(&b"brief"[..]));
    assert_eq!(store.record_get("k", t0 + 100).await.unwrap(), None);
    // Overwriting without expiry clears the old expiry.
    store.record_put("k", b"again".to_vec(), None, t0).await.unwrap();
    assert_eq!(store.record_get("k", t0 + 100).await.unwrap().as_deref(), Some(&b"again"[..]));
    store.record_delete("k").await.unwrap();
    assert_eq!(store.record_get("k", t0).await.unwrap(), None);
}

async fn record_put_with_a_past_expiry_deletes(store: Arc<dyn Store>) {
    store.record_put("p", b"v".to_vec(), None, 0).await.unwrap();
    store.record_put("p", b"w".to_vec(), Some(10), 10).await.unwrap();
    assert_eq!(store.record_get("p", 0).await.unwrap(), None);
}

async fn compare_and_swap_only_succeeds_on_the_expected_value(store: Arc<dyn Store>) {
    let cas = |expected: Option<&'static [u8]>, new: Option<&'static [u8]>| {
        let store = Arc::clone(&store);
        async move {
            store.record_compare_and_swap("c", expected, new.map(<[u8]>::to_vec), None, 0).await.unwrap()
        }
    };
    assert!(cas(None, Some(b"v1")).await);
    assert!(!cas(None, Some(b"v2")).await, "record exists, None must not match");
    assert!(!cas(Some(b"other"), Some(b"v2")).await);
    assert_eq!(store.record_get("c", 0).await.unwrap().as_deref(), Some(&b"v1"[..]));
    assert!(cas(Some(b"v1"), Some(b"v2")).await);
    assert!(!cas(Some(b"v1"), Some(b"v3")).await, "stale expectation");
    assert!(cas(Some(b"v2"), None).await);
    assert_eq!(store.record_get("c", 0).await.unwrap(), None);
    assert!(!cas(Some(b"v2"), Some(b"v4")).await, "record is gone");
}

async fn compare_and_swap_treats_expired_records_as_absent(store: Arc<dyn Store>) {
    let t0 = 1_700_000_000_000;
    store.record_put("e", b"old".to_vec(), Some(t0 + 100), t0).await.unwrap();
    assert!(!store.record_compare_and_swap("e", None, Some(b"new".to_vec()), None, t0 + 99).await.unwrap());
    assert!(!store
        .record_compare_and_swap("e", Some(b"old"), Some(b"x".to_vec()), None, t0 + 100)
        .await
        .unwrap());
    assert!(store
        .record_compare_and_swap("e", None, Some(b"new".to_vec()), Some(t0 + 300), t0 + 100)
        .await
        .unwrap());
    assert_eq!(store.record_get("e", t0 + 299).await.unwrap().as_deref(), Some(&b"new"[..]));
    assert_eq!(store.record_get("e", t0 + 300).await.unwrap(), None);
}

async fn concurrent_compare_and_swap_has_exactly_one_winner(store: Arc<dyn Store>) {
    let attempts: Vec<_> = (0..50u32)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let won = store
                    .record_compare_and_swap("once", None, Some(i.to_be_bytes().to_vec()), None, 0)
                    .await
                    .unwrap();
                (i, won)
            })
        })
        .collect();
    let mut winners = Vec::new();
    for attempt in attempts {
        let (i, won) = attempt.await.unwrap();
        if won {
            winners.push(i);
        }
    }
    assert_eq!(winners.len(), 1, "winners: {winners:?}");
    let value = winners[0].to_be_bytes().to_vec();
    assert_eq!(store.record_get("once", 0).await.unwrap(), Some(value.clone()));

    // Consuming a single-use value: exactly one of many concurrent consumers succeeds.
    let consumers: Vec<_> = (0..50)
        .map(|_| {
            let store = Arc::clone(&store);
            let value = value.clone();
            tokio::spawn(async move {
                store.record_compare_and_swap("once", Some(&value), None, None, 0).await.unwrap()
            })
        })
        .collect();
    let mut consumed = 0;
    for consumer in consumers {
        consumed += usize::from(consumer.await.unwrap());
    }
    assert_eq!(consumed, 1);
    assert_eq!(store.record_get("once", 0).await.unwrap(), None);
}

async fn feed_cursors_increase_and_pages_follow_on(store: Arc<dyn Store>) {
    let t0 = 1_700_000_000_000;
    for i in 1..=5u64 {
        let cursor = store.feed_append("revocations", format!("e{i}").into_bytes(), t0 + i).await.unwrap();
        assert_eq!(cursor, i);
    }
    let first = store.feed_read("revocations", 0, 2).await.unwrap();
    assert!(!first.cursor_too_old);
    assert_eq!(first.head, 5);
    assert_eq!(first.next_cursor, 2);
    let cursors: Vec<u64> = first.entries.iter().map(|e| e.cursor).collect();
    assert_eq!(cursors, vec![1, 2]);
    assert_eq!(first.entries[0].data, b"e1");
    assert_eq!(first.entries[1].appended_at_ms, t0 + 2);

    let rest = store.feed_read("revocations", first.next_cursor, 100).await.unwrap();
    let data: Vec<&[u8]> = rest.entries.iter().map(|e| e.data.as_slice()).collect();
    assert_eq!(data, vec![&b"e3"[..], b"e4", b"e5"]);
    assert_eq!(rest.next_cursor, 5);

    let caught_up = store.feed_read("revocations", 5, 100).await.unwrap();
    assert!(caught_up.entries.is_empty());
    assert!(!caught_up.cursor_too_old);
    assert_eq!(caught_up.next_cursor, 5);
}

async fn feed_trim_makes_old_cursors_too_old(store: Arc<dyn Store>) {
    for i in 1..=10u64 {
        store.feed_append("f", vec![i as u8], i).await.unwrap();
    }
    assert_eq!(store.feed_trim("f", 3).await.unwrap(), 7);
    assert_eq!(store.feed_trim("f", 3).await.unwrap(), 0, "trim is idempotent");
    for stale in [0, 1, 6] {
        let page = store.feed_read("f", stale, 10).await.unwrap();
        assert!(page.cursor_too_old, "cursor {stale} should be too old");
        assert!(page.entries.is_empty());
        assert_eq!(page.head, 10);
        assert_eq!(page.next_cursor, stale);
    }
    let page = store.feed_read("f", 7, 10).await.unwrap();
    assert!(!page.cursor_too_old);
    let cursors: Vec<u64> = page.entries.iter().map(|e| e.cursor).collect();
    assert_eq!(cursors, vec![8, 9, 10]);
    // Cursors keep increasing after a trim; nothing is reused.
    assert_eq!(store.feed_append("f", vec![11], 11).await.unwrap(), 11);
    assert_eq!(store.feed_trim("f", 0).await.unwrap(), 4);
    assert!(store.feed_read("f", 10, 10).await.unwrap().cursor_too_old);
    let page = store.feed_read("f", 11, 10).await.unwrap();
    assert!(!page.cursor_too_old && page.entries.is_empty());
}

async fn feed_cursor_ahead_of_the_head_must_resync(store: Arc<dyn Store>) {
    store.feed_append("g", b"x".to_vec(), 0).await.unwrap();
    // A cursor from before a reset (e.g. an emptied Redis) cannot be continued.
    let page = store.feed_read("g", 50, 10).await.unwrap();
    assert!(page.cursor_too_old);
    assert_eq!(page.head, 1);
}

async fn concurrent_feed_appends_get_distinct_cursors(store: Arc<dyn Store>) {
    let tasks: Vec<_> = (0..50u8)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.feed_append("busy", vec![i], 0).await.unwrap() })
        })
        .collect();
    let mut cursors = BTreeSet::new();
    for task in tasks {
        assert!(cursors.insert(task.await.unwrap()));
    }
    assert_eq!(cursors, (1..=50).collect());
    let mut seen = BTreeSet::new();
    let mut after = 0;
    loop {
        let page = store.feed_read("busy", after, 7).await.unwrap();
        if page.entries.is_empty() {
            break;
        }
        for entry in &page.entries {
            assert!(entry.cursor > after);
            seen.insert(entry.data[0]);
        }
        after = page.next_cursor;
    }
    assert_eq!(seen, (0..50).collect());
}

async fn log_appends_are_sequential_and_ranges_read_back(store: Arc<dyn Store>) {
    for (i, entry) in ["a", "b", "c"].iter().enumerate() {
        let seq = store.log_append("audit", entry.as_bytes().to_vec()).await.unwrap();
        assert_eq!(seq, i as u64 + 1);
    }
    let all = store.log_range("audit", 1, 10).await.unwrap();
    let seqs: Vec<u64> = all.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3]);
    assert_eq!(all[2].data, b"c");
    let middle = store.log_range("audit", 2, 1).await.unwrap();
    assert_eq!((middle.len(), middle[0].seq, middle[0].data.as_slice()), (1, 2, &b"b"[..]));
    assert_eq!(store.log_range("audit", 0, 1).await.unwrap()[0].seq, 1);
    assert!(store.log_range("audit", 4, 10).await.unwrap().is_empty());
    assert!(store.log_range("audit", 1, 0).await.unwrap().is_empty());
    let last = store.log_last("audit").await.unwrap().unwrap();
    assert_eq!((last.seq, last.data.as_slice()), (3, &b"c"[..]));
}

async fn log_append_if_last_detects_conflicts(store: Arc<dyn Store>) {
    let conflict = store.log_append_if_last("chain", Some(1), b"x".to_vec()).await.unwrap_err();
    assert!(matches!(conflict, LogAppendError::Conflict { last_seq: None }), "{conflict:?}");
    assert_eq!(store.log_append_if_last("chain", None, b"first".to_vec()).await.unwrap(), 1);
    let conflict = store.log_append_if_last("chain", None, b"x".to_vec()).await.unwrap_err();
    assert!(matches!(conflict, LogAppendError::Conflict { last_seq: Some(1) }), "{conflict:?}");
    assert_eq!(store.log_append_if_last("chain", Some(1), b"second".to_vec()).await.unwrap(), 2);
    assert_eq!(store.log_range("chain", 1, 10).await.unwrap().len(), 2);
}

async fn concurrent_conditional_appends_build_one_unbroken_chain(store: Arc<dyn Store>) {
    // Each writer links its entry to the entry it saw last, like a hash chain; with
    // optimistic appends no two entries may claim the same predecessor.
    let writers: Vec<_> = (0..20u32)
        .map(|writer| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                loop {
                    let last = store.log_last("chained").await.unwrap();
                    let previous = last.as_ref().map(|e| e.seq);
                    let entry = format!("{}:{writer}", previous.unwrap_or(0));
                    match store.log_append_if_last("chained", previous, entry.into_bytes()).await {
                        Ok(seq) => return seq,
                        Err(LogAppendError::Conflict { .. }) => tokio::task::yield_now().await,
                        Err(LogAppendError::Store(e)) => panic!("store error: {e}"),
                    }
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let entries = store.log_range("chained", 1, 100).await.unwrap();
    assert_eq!(entries.len(), 20);
    let mut writers_seen = BTreeSet::new();
    for entry in &entries {
        let text = String::from_utf8(entry.data.clone()).unwrap();
        let (previous, writer) = text.split_once(':').unwrap();
        assert_eq!(previous.parse::<u64>().unwrap(), entry.seq - 1, "broken link at {}", entry.seq);
        assert!(writers_seen.insert(writer.to_owned()));
    }
}

async fn log_trim_drops_old_entries_keeps_the_newest_and_the_sequence(store: Arc<dyn Store>) {
    assert_eq!(store.log_trim("kept", 10).await.unwrap(), 0, "an absent log has nothing to trim");
    for i in 1..=5u64 {
        store.log_append("kept", format!("e{i}").into_bytes()).await.unwrap();
    }
    assert_eq!(store.log_trim("kept", 3).await.unwrap(), 2);
    assert_eq!(store.log_trim("kept", 3).await.unwrap(), 0, "a second trim to the same point drops nothing");
    let seqs = |entries: Vec<LogEntry>| entries.iter().map(|e| e.seq).collect::<Vec<_>>();
    assert_eq!(
        seqs(store.log_range("kept", 1, 10).await.unwrap()),
        vec![3, 4, 5],
        "reads start at the oldest kept"
    );
    assert_eq!(seqs(store.log_range("kept", 4, 1).await.unwrap()), vec![4]);
    assert_eq!(store.log_range("kept", 3, 1).await.unwrap()[0].data, b"e3");

    // Trimming past the end keeps the newest entry, and the sequence continues.
    assert_eq!(store.log_trim("kept", 100).await.unwrap(), 2);
    assert_eq!(seqs(store.log_range("kept", 0, 10).await.unwrap()), vec![5]);
    assert_eq!(store.log_last("kept").await.unwrap().unwrap().seq, 5);
    assert_eq!(store.log_append_if_last("kept", Some(5), b"e6".to_vec()).await.unwrap(), 6);
    assert_eq!(seqs(store.log_range("kept", 1, 10).await.unwrap()), vec![5, 6]);
}

async fn log_batches_append_whole_onto_the_expected_head_or_not_at_all(store: Arc<dyn Store>) {
    let batch = |names: &[&str]| names.iter().map(|n| n.as_bytes().to_vec()).collect::<Vec<_>>();
    assert_eq!(store.log_append_batch_if_last("batched", None, batch(&["a", "b"])).await.unwrap(), 2);
    let conflict = store.log_append_batch_if_last("batched", Some(1), batch(&["x", "y"])).await.unwrap_err();
    assert!(matches!(conflict, LogAppendError::Conflict { last_seq: Some(2) }), "{conflict:?}");
    assert_eq!(store.log_append_batch_if_last("batched", Some(2), batch(&["c", "d", "e"])).await.unwrap(), 5);
    let entries = store.log_range("batched", 1, 10).await.unwrap();
    let data: Vec<&[u8]> = entries.iter().map(|e| e.data.as_slice()).collect();
    assert_eq!(data, vec![&b"a"[..], b"b", b"c", b"d", b"e"], "nothing of the refused batch");
    assert_eq!(store.log_last("batched").await.unwrap().unwrap().seq, 5);
    assert!(matches!(
        store.log_append_batch_if_last("batched", Some(5), Vec::new()).await,
        Err(LogAppendError::Store(StoreError::InvalidArgument(_)))
    ));
}

async fn names_are_isolated_across_primitives_and_escaped(store: Arc<dyn Store>) {
    store.incr_counter("x", 7, 1000, 0).await.unwrap();
    store.record_put("x", b"rec".to_vec(), None, 0).await.unwrap();
    store.set_add("x", "m", 1000, 0).await.unwrap();
    store.feed_append("x", b"f".to_vec(), 0).await.unwrap();
    store.log_append("x", b"l".to_vec()).await.unwrap();
    assert_eq!(store.get_counter("x", 0).await.unwrap(), 7);
    assert_eq!(store.record_get("x", 0).await.unwrap().as_deref(), Some(&b"rec"[..]));
    // Names with hash-tag characters neither break nor collide.
    store.record_put("a}b{c", b"1".to_vec(), None, 0).await.unwrap();
    store.record_put("a%7Db%7Bc", b"2".to_vec(), None, 0).await.unwrap();
    assert_eq!(store.record_get("a}b{c", 0).await.unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(store.record_get("a%7Db%7Bc", 0).await.unwrap().as_deref(), Some(&b"2"[..]));
    assert_eq!(store.feed_append("a}b", b"x".to_vec(), 0).await.unwrap(), 1);
}

async fn binary_values_round_trip(store: Arc<dyn Store>) {
    let bytes: Vec<u8> = (0..=255).collect();
    store.record_put("bin", bytes.clone(), None, 0).await.unwrap();
    assert_eq!(store.record_get("bin", 0).await.unwrap(), Some(bytes.clone()));
    assert!(store.record_compare_and_swap("bin", Some(&bytes), Some(vec![0, 0, 0]), None, 0).await.unwrap());
    store.feed_append("bin", bytes.clone(), 0).await.unwrap();
    assert_eq!(store.feed_read("bin", 0, 1).await.unwrap().entries[0].data, bytes);
    store.log_append("bin", bytes.clone()).await.unwrap();
    assert_eq!(store.log_last("bin").await.unwrap().unwrap().data, bytes);
    store.feed_append("empty", Vec::new(), 0).await.unwrap();
    assert!(store.feed_read("empty", 0, 1).await.unwrap().entries[0].data.is_empty());
}

// --- rate-limit counters ------------------------------------------------------------

const T0: u64 = 1_700_000_000_000;

fn lease(release: u64, max_lease: u64, holders: u64, ttl_ms: u64) -> RateLimitOp {
    RateLimitOp::Lease { release, max_lease, holders, ttl_ms }
}

fn check(cost: u64) -> RateLimitOp {
    RateLimitOp::Check { cost }
}

fn release(units: u64) -> RateLimitOp {
    RateLimitOp::Release { units }
}

/// The oracle: `portcullis_core::ratelimit::Gcra` applied to a state held here.
fn core_apply(
    limit: u64,
    unit: Unit,
    op: RateLimitOp,
    state: &mut GcraState,
    now_ms: u64,
) -> RateLimitResult {
    let g = Gcra::new(limit, unit);
    match op {
        RateLimitOp::Lease { release, max_lease, holders, ttl_ms } => {
            if release > 0 {
                *state = g.refund(*state, now_ms, release);
            }
            let grant = g.grant_lease(*state, now_ms, max_lease, holders, ttl_ms);
            *state = grant.decision.new_state;
            RateLimitResult {
                granted: grant.lease.map_or(0, |l| l.units),
                expires_at_ms: grant.lease.map_or(0, |l| l.expires_at_ms),
                remaining: grant.decision.remaining,
                reset_after_ms: grant.decision.reset_after_ms,
                retry_after_ms: grant.decision.retry_after_ms,
            }
        }
        RateLimitOp::Check { cost } => {
            let d = g.check(*state, now_ms, cost);
            *state = d.new_state;
            RateLimitResult {
                granted: if d.allowed { cost } else { 0 },
                expires_at_ms: 0,
                remaining: d.remaining,
                reset_after_ms: d.reset_after_ms,
                retry_after_ms: d.retry_after_ms,
            }
        }
        RateLimitOp::Release { units } => {
            *state = g.refund(*state, now_ms, units);
            let d = g.check(*state, now_ms, 0);
            RateLimitResult {
                granted: 0,
                expires_at_ms: 0,
                remaining: d.remaining,
                reset_after_ms: d.reset_after_ms,
                retry_after_ms: 0,
            }
        }
    }
}

/// SplitMix64: a deterministic sequence for the randomized test.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

async fn lease_sizes_shrink_near_the_limit(store: Arc<dyn Store>) {
    // 100 per minute shared by 4 holders, at most 20 per lease: a quarter of half of
    // what remains, so leases shrink as the bucket empties, down to 1 unit.
    let mut sizes = Vec::new();
    loop {
        let r = store.gcra("shrink", 100, Unit::Minute, lease(0, 20, 4, 5_000), T0).await.unwrap();
        if r.granted == 0 {
            assert_eq!(r.expires_at_ms, 0);
            assert_eq!(r.remaining, 0);
            assert_eq!(r.retry_after_ms, 600, "one unit back after T = 600 ms");
            assert_eq!(r.reset_after_ms, 60_000);
            break;
        }
        assert_eq!(r.expires_at_ms, T0 + 5_000);
        sizes.push(r.granted);
        assert!(sizes.len() <= 100);
    }
    assert_eq!(sizes[..16], [12, 11, 9, 8, 7, 6, 5, 5, 4, 4, 3, 3, 2, 2, 2, 2]);
    assert!(sizes[16..].iter().all(|&s| s == 1), "{sizes:?}");
    assert_eq!(sizes.iter().sum::<u64>(), 100, "the whole budget and not one unit more");

    // max_lease caps a lease far from the limit; holders of 0 count as 1.
    let r = store.gcra("capped", 100, Unit::Minute, lease(0, 20, 0, 5_000), T0).await.unwrap();
    assert_eq!((r.granted, r.remaining), (20, 80));
}

async fn refusals_report_retry_remaining_and_reset(store: Arc<dyn Store>) {
    let g = |op, now| {
        let store = Arc::clone(&store);
        async move { store.gcra("ten", 10, Unit::Minute, op, now).await.unwrap() }
    };
    for i in 0..10 {
        let r = g(check(1), T0).await;
        assert_eq!((r.granted, r.remaining, r.retry_after_ms), (1, 9 - i, 0));
        assert_eq!(r.reset_after_ms, 6_000 * (i + 1));
    }
    let refused = g(check(1), T0).await;
    assert_eq!(
        refused,
        RateLimitResult {
            granted: 0,
            expires_at_ms: 0,
            remaining: 0,
            reset_after_ms: 60_000,
            retry_after_ms: 6_000
        }
    );
    // A refusal does not push recovery further away.
    assert_eq!(g(check(1), T0 + 5_800).await.retry_after_ms, 200);
    assert_eq!(g(check(1), T0 + 6_000).await.granted, 1);
    // A cost above the limit never passes and changes nothing; cost 0 is a free look.
    let never = g(check(11), T0 + 12_000).await;
    assert_eq!((never.granted, never.retry_after_ms, never.remaining), (0, u64::MAX, 1));
    let look = g(check(0), T0 + 12_000).await;
    assert_eq!((look.granted, look.remaining, look.reset_after_ms), (0, 1, 54_000));
    // Several units wait until all of them are back.
    let three = g(check(3), T0 + 12_000).await;
    assert_eq!((three.granted, three.remaining, three.retry_after_ms), (0, 1, 12_000));
    // An idle minute fills the bucket, and no more.
    let full = g(check(0), T0 + 10 * 60_000).await;
    assert_eq!((full.remaining, full.reset_after_ms), (10, 0));
}

async fn released_units_are_credited_back_up_to_a_full_bucket(store: Arc<dyn Store>) {
    let r = store.gcra("rel", 10, Unit::Minute, lease(0, 4, 1, 5_000), T0).await.unwrap();
    assert_eq!((r.granted, r.remaining), (4, 6));
    // The holder spent one unit and gives the other three back.
    let r = store.gcra("rel", 10, Unit::Minute, release(3), T0 + 100).await.unwrap();
    assert_eq!(
        r,
        RateLimitResult {
            granted: 0,
            expires_at_ms: 0,
            remaining: 9,
            reset_after_ms: 5_900,
            retry_after_ms: 0
        }
    );
    // The bucket never fills beyond the limit.
    let r = store.gcra("rel", 10, Unit::Minute, release(1_000), T0 + 100).await.unwrap();
    assert_eq!((r.remaining, r.reset_after_ms), (10, 0));
    let r = store.gcra("rel", 10, Unit::Minute, check(10), T0 + 100).await.unwrap();
    assert_eq!((r.granted, r.remaining), (10, 0));
    // Releasing on a counter never used is harmless.
    let r = store.gcra("unused", 10, Unit::Minute, release(5), T0).await.unwrap();
    assert_eq!((r.remaining, r.reset_after_ms), (10, 0));
}

async fn a_lease_releases_before_it_grants_in_one_step(store: Arc<dyn Store>) {
    // Take everything in two leases.
    let a = store.gcra("swap", 10, Unit::Minute, lease(0, 5, 1, 5_000), T0).await.unwrap();
    let b = store.gcra("swap", 10, Unit::Minute, lease(0, 5, 1, 5_000), T0).await.unwrap();
    assert_eq!((a.granted, b.granted), (5, 2), "5, then half of the 5 left");
    let r = store.gcra("swap", 10, Unit::Minute, check(3), T0).await.unwrap();
    assert_eq!(r.granted, 3);
    let none = store.gcra("swap", 10, Unit::Minute, lease(0, 5, 1, 5_000), T0).await.unwrap();
    assert_eq!((none.granted, none.retry_after_ms), (0, 6_000));
    // Renewing with 4 unspent units: they are credited first, so a lease of
    // 4 / 2 = 2 fits, and the counter keeps the 2 not re-leased.
    let renewed = store.gcra("swap", 10, Unit::Minute, lease(4, 5, 1, 5_000), T0).await.unwrap();
    assert_eq!((renewed.granted, renewed.remaining, renewed.expires_at_ms), (2, 2, T0 + 5_000));
    // A refused lease still keeps its release.
    store.gcra("swap", 10, Unit::Minute, check(2), T0).await.unwrap();
    let r = store.gcra("swap", 10, Unit::Minute, lease(1, 5, 1, 5_000), T0).await.unwrap();
    assert_eq!((r.granted, r.remaining), (1, 0), "the released unit, leased again");
}

async fn randomized_rate_limit_operations_match_the_core_arithmetic(store: Arc<dyn Store>) {
    let counters = [
        ("r-sec", 10, Unit::Second),
        ("r-min", 7, Unit::Minute),
        ("r-hour", 5_000, Unit::Hour),
        ("r-fast", 3_000, Unit::Second),
    ];
    let mut states = [GcraState::default(); 4];
    let mut rng = SplitMix(0x5EED_0FC0_FFEE);
    let mut now = T0;
    let (mut granted, mut refused) = (0, 0);
    for step in 0..400 {
        // Mostly forward, sometimes a replica whose clock is a little behind.
        now = match rng.below(10) {
            0 => now.saturating_sub(rng.below(500)),
            1..=3 => now,
            _ => now + rng.below(1_500),
        };
        let which = usize::try_from(rng.below(4)).unwrap();
        let (key, limit, unit) = counters[which];
        let op = match rng.below(7) {
            0 => check(limit + 1 + rng.below(3)),
            1 | 2 => check(rng.below(limit.min(12) + 1)),
            3 | 4 => lease(
                if rng.below(2) == 0 { 0 } else { rng.below(8) },
                1 + rng.below(30),
                rng.below(6),
                1 + rng.below(60_000),
            ),
            _ => release(rng.below(limit.min(20) + 1)),
        };
        let expected = core_apply(limit, unit, op, &mut states[which], now);
        let got = store.gcra(key, limit, unit, op, now).await.unwrap();
        assert_eq!(got, expected, "step {step}: {op:?} on {key} at {now}");
        match op {
            RateLimitOp::Release { .. } => {}
            _ if got.granted > 0 => granted += 1,
            _ => refused += usize::from(got.retry_after_ms > 0),
        }
    }
    assert!(
        granted > 100 && refused > 40,
        "both outcomes are exercised: {granted} granted, {refused} refused"
    );
}

async fn extreme_rate_limit_values_match_the_core_arithmetic(store: Arc<dyn Store>) {
    let cases = [
        (MAX_LIMIT, Unit::Second),
        (MAX_LIMIT, Unit::Day),
        (1, Unit::Day),
        (86_400_000_001, Unit::Day),
        (999_999, Unit::Second),
    ];
    let ops = [
        check(1),
        lease(0, u64::MAX, u64::MAX, u64::MAX),
        lease(0, u64::MAX, 0, 1),
        check(u64::MAX),
        release(u64::MAX),
        lease(u64::MAX, 1, 1, 60_000),
        check(MAX_LIMIT),
        lease(0, u64::MAX, 1, 60_000),
        check(1),
        release(1),
        lease(1, 7, 3, 60_000),
    ];
    for (i, (limit, unit)) in cases.into_iter().enumerate() {
        let key = format!("extreme-{i}");
        let mut state = GcraState::default();
        for now in [MAX_NOW_MS - 1_000, MAX_NOW_MS] {
            for op in ops {
                let expected = core_apply(limit, unit, op, &mut state, now);
                let got = store.gcra(&key, limit, unit, op, now).await.unwrap();
                assert_eq!(got, expected, "{op:?} on {limit} per {unit:?} at {now}");
            }
        }
    }
}

async fn concurrent_leases_never_grant_more_than_the_limit(store: Arc<dyn Store>) {
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut granted = 0;
                for _ in 0..200 {
                    let r = store
                        .gcra("contended", 100, Unit::Minute, lease(0, 5, 20, 10_000), T0)
                        .await
                        .unwrap();
                    if r.granted == 0 {
                        assert!(r.retry_after_ms > 0);
                        return (granted, true);
                    }
                    granted += r.granted;
                }
                (granted, false)
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        let (granted, refused) = task.await.unwrap();
        assert!(refused, "every holder ends refused: the clock does not move");
        total += granted;
    }
    assert_eq!(total, 100, "20 holders together got the limit exactly");
}

async fn rate_limit_arguments_outside_the_exact_range_are_refused(store: Arc<dyn Store>) {
    for (limit, now) in [(0, T0), (MAX_LIMIT + 1, T0), (10, MAX_NOW_MS + 1)] {
        let error = store.gcra("bad", limit, Unit::Second, check(1), now).await.unwrap_err();
        assert!(matches!(error, StoreError::InvalidArgument(_)), "{error:?}");
        assert!(!error.is_transient());
    }
}

// --- work queues ------------------------------------------------------------------

fn ids(entries: &[QueueEntry]) -> Vec<&str> {
    entries.iter().map(|e| e.id.as_str()).collect()
}

async fn queue_claims_due_entries_in_order_and_settles_them(store: Arc<dyn Store>) {
    for (id, due) in [("b", 20), ("a", 20), ("c", 10), ("later", 500)] {
        assert!(store.queue_push("q", id, id.as_bytes().to_vec(), due, 100).await.unwrap());
    }
    // Due at 20: earliest first, ties by id; each carries its claim's fence.
    let claimed = store.queue_claim("q", 20, 1_000, 2).await.unwrap();
    assert_eq!(ids(&claimed), ["c", "a"]);
    assert!(claimed.iter().all(|e| e.at_ms == 1_020));
    assert_eq!(claimed[0].data, b"c");
    let claimed_b = store.queue_claim("q", 20, 1_000, 10).await.unwrap();
    assert_eq!(ids(&claimed_b), ["b"], "claimed entries are not claimed again during the lease");
    assert!(store.queue_claim("q", 499, 1_000, 10).await.unwrap().is_empty());

    assert_eq!(store.queue_settle("q", "c", 1_020, QueueOutcome::Done).await.unwrap(), Some(0));
    assert_eq!(store.queue_settle("q", "c", 1_020, QueueOutcome::Done).await.unwrap(), None, "gone");
    let retry = QueueOutcome::Retry { data: b"a2".to_vec(), due_at_ms: 600 };
    assert_eq!(store.queue_settle("q", "a", 1_020, retry).await.unwrap(), Some(0));
    let pending = store.queue_list("q", QueueLane::Pending, 10).await.unwrap();
    assert_eq!(ids(&pending), ["later", "a", "b"]);
    assert_eq!((pending[1].at_ms, pending[1].data.as_slice()), (600, &b"a2"[..]));
    let claimed = store.queue_claim("q", 700, 50, 10).await.unwrap();
    assert_eq!(ids(&claimed), ["later", "a"]);
    assert_eq!(claimed[1].data, b"a2");
    assert!(matches!(store.queue_claim("q", 700, 0, 10).await, Err(StoreError::InvalidArgument(_))));
    assert!(store.queue_claim("q", 10_000, 50, 0).await.unwrap().is_empty());
}

async fn queue_claims_lapse_and_a_late_settle_is_refused(store: Arc<dyn Store>) {
    store.queue_push("q", "job", b"x".to_vec(), 0, 10).await.unwrap();
    let first = store.queue_claim("q", 100, 50, 10).await.unwrap();
    assert_eq!(first[0].at_ms, 150);
    assert!(store.queue_claim("q", 149, 50, 10).await.unwrap().is_empty());
    // The first claimer went silent: once its lease is over the entry is claimed again.
    let second = store.queue_claim("q", 150, 50, 10).await.unwrap();
    assert_eq!((ids(&second), second[0].at_ms), (vec!["job"], 200));
    assert_eq!(store.queue_settle("q", "job", 150, QueueOutcome::Done).await.unwrap(), None);
    let dead = QueueOutcome::Dead { data: b"y".to_vec(), at_ms: 1, max_dead: 10 };
    assert_eq!(store.queue_settle("q", "job", 150, dead).await.unwrap(), None);
    assert_eq!(ids(&store.queue_list("q", QueueLane::Pending, 10).await.unwrap()), ["job"]);
    assert_eq!(store.queue_settle("q", "job", 200, QueueOutcome::Done).await.unwrap(), Some(0));
    assert!(store.queue_list("q", QueueLane::Pending, 10).await.unwrap().is_empty());
}

async fn queue_dead_letters_are_bounded_listed_revived_and_deleted(store: Arc<dyn Store>) {
    for i in 0..4u64 {
        let id = format!("d{i}");
        store.queue_push("q", &id, b"x".to_vec(), 0, 10).await.unwrap();
        let claimed = store.queue_claim("q", 10, 100, 1).await.unwrap();
        assert_eq!(ids(&claimed), [id.as_str()]);
        let dead =
            QueueOutcome::Dead { data: format!("dead {i}").into_bytes(), at_ms: 1_000 + i, max_dead: 3 };
        let dropped = store.queue_settle("q", &id, 110, dead).await.unwrap();
        assert_eq!(dropped, Some(u64::from(i == 3)), "the fourth dead letter pushes out the oldest");
    }
    assert!(store.queue_list("q", QueueLane::Pending, 10).await.unwrap().is_empty());
    let dead = store.queue_list("q", QueueLane::Dead, 10).await.unwrap();
    assert_eq!(ids(&dead), ["d1", "d2", "d3"]);
    assert_eq!((dead[0].at_ms, dead[0].data.as_slice()), (1_001, &b"dead 1"[..]));
    assert_eq!(ids(&store.queue_list("q", QueueLane::Dead, 1).await.unwrap()), ["d1"]);
    assert!(
        store.queue_claim("q", u64::MAX / 2, 1, 10).await.unwrap().is_empty(),
        "dead letters are never due"
    );

    // Pushing an id that is a dead letter changes nothing.
    assert!(store.queue_push("q", "d1", b"new".to_vec(), 0, 10).await.unwrap());
    assert!(store.queue_list("q", QueueLane::Pending, 10).await.unwrap().is_empty());

    assert_eq!(
        store.queue_revive("q", "d1", b"again".to_vec(), 2_000, 0).await.unwrap(),
        QueueRevive::PendingFull
    );
    assert_eq!(
        store.queue_revive("q", "nope", b"x".to_vec(), 2_000, 10).await.unwrap(),
        QueueRevive::NotDead
    );
    assert_eq!(
        store.queue_revive("q", "d1", b"again".to_vec(), 2_000, 10).await.unwrap(),
        QueueRevive::Revived
    );
    assert_eq!(
        store.queue_revive("q", "d1", b"again".to_vec(), 2_000, 10).await.unwrap(),
        QueueRevive::NotDead
    );
    let claimed = store.queue_claim("q", 2_000, 10, 10).await.unwrap();
    assert_eq!((ids(&claimed), claimed[0].data.as_slice()), (vec!["d1"], &b"again"[..]));

    assert!(!store.queue_delete("q", QueueLane::Dead, "d1").await.unwrap(), "d1 is pending, not dead");
    assert!(store.queue_delete("q", QueueLane::Pending, "d1").await.unwrap());
    assert!(store.queue_delete("q", QueueLane::Dead, "d2").await.unwrap());
    assert!(!store.queue_delete("q", QueueLane::Dead, "d2").await.unwrap());
    assert_eq!(ids(&store.queue_list("q", QueueLane::Dead, 10).await.unwrap()), ["d3"]);
    assert!(store.queue_list("q", QueueLane::Pending, 10).await.unwrap().is_empty());
}

async fn queue_pushes_are_bounded_and_idempotent(store: Arc<dyn Store>) {
    let bytes: Vec<u8> = (0..=255).collect();
    assert!(store.queue_push("q", "a", bytes.clone(), 5, 2).await.unwrap());
    assert!(store.queue_push("q", "b", b"b".to_vec(), 5, 2).await.unwrap());
    assert!(!store.queue_push("q", "c", b"c".to_vec(), 5, 2).await.unwrap(), "full");
    assert!(store.queue_push("q", "a", b"changed".to_vec(), 1, 2).await.unwrap(), "already there");
    let pending = store.queue_list("q", QueueLane::Pending, 10).await.unwrap();
    assert_eq!(ids(&pending), ["a", "b"]);
    assert_eq!((pending[0].at_ms, &pending[0].data), (5, &bytes), "a repeated push changes nothing");
    assert!(store.queue_push("other", "c", b"c".to_vec(), 5, 2).await.unwrap(), "queues are separate");
    // Settling frees room.
    let claimed = store.queue_claim("q", 5, 10, 1).await.unwrap();
    store.queue_settle("q", &claimed[0].id, 15, QueueOutcome::Done).await.unwrap();
    assert!(store.queue_push("q", "c", b"c".to_vec(), 5, 2).await.unwrap());
}

async fn concurrent_claims_take_each_queue_entry_once(store: Arc<dyn Store>) {
    for i in 0..60 {
        store.queue_push("q", &format!("job{i:02}"), Vec::new(), 0, 100).await.unwrap();
    }
    let claimers: Vec<_> = (0..8)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let claimed = store.queue_claim("q", 1_000, 60_000, 7).await.unwrap();
                    if claimed.is_empty() {
                        return mine;
                    }
                    for entry in claimed {
                        assert_eq!(
                            store
                                .queue_settle("q", &entry.id, entry.at_ms, QueueOutcome::Done)
                                .await
                                .unwrap(),
                            Some(0)
                        );
                        mine.push(entry.id);
                    }
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    for claimer in claimers {
        all.extend(claimer.await.unwrap());
    }
    all.sort();
    let expected: Vec<String> = (0..60).map(|i| format!("job{i:02}")).collect();
    assert_eq!(all, expected, "every entry claimed and settled exactly once");
}

// --- backend-specific ----------------------------------------------------------

#[tokio::test]
async fn embedded_store_keeps_everything_across_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store.record_put("key", b"kept".to_vec(), None, 0).await.unwrap();
        store.incr_counter("count", 3, 60_000, 0).await.unwrap();
        store.set_add("set", "m", 60_000, 0).await.unwrap();
        store.feed_append("feed", b"f1".to_vec(), 0).await.unwrap();
        store.feed_append("feed", b"f2".to_vec(), 0).await.unwrap();
        store.feed_trim("feed", 1).await.unwrap();
        store.log_append("log", b"l1".to_vec()).await.unwrap();
        store.queue_push("queue", "job", b"q1".to_vec(), 5, 10).await.unwrap();
    }
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let claimed = store.queue_claim("queue", 5, 10, 10).await.unwrap();
    assert_eq!((claimed[0].id.as_str(), claimed[0].data.as_slice()), ("job", &b"q1"[..]));
    assert_eq!(store.record_get("key", 1).await.unwrap().as_deref(), Some(&b"kept"[..]));
    assert_eq!(store.get_counter("count", 1).await.unwrap(), 3);
    assert!(store.set_contains("set", "m", 1).await.unwrap());
    assert!(store.feed_read("feed", 0, 10).await.unwrap().cursor_too_old);
    assert_eq!(store.feed_append("feed", b"f3".to_vec(), 0).await.unwrap(), 3);
    assert_eq!(store.log_append("log", b"l2".to_vec()).await.unwrap(), 2);
}

#[tokio::test]
async fn embedded_store_rate_limits_committed_to_memory_are_kept_by_the_next_durable_commit() {
    let dir = tempfile::tempdir().unwrap();
    let lease = lease(0, 3, 1, 60_000);
    {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        // The first rate-limit commit goes to disk, the next ones (within
        // RATE_LIMIT_SYNC_MS) to memory only, until a durable commit of anything takes
        // them along.
        for now in [1_000, 1_001, 1_002] {
            assert_eq!(store.gcra("rl", 100, Unit::Minute, lease, now).await.unwrap().granted, 3);
        }
        store.record_put("key", b"v".to_vec(), None, 1_003).await.unwrap();
    }
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let after = store.gcra("rl", 100, Unit::Minute, check(1), 1_004).await.unwrap();
    assert_eq!(after.remaining, 90, "9 units leased before the reopen, 1 checked now");
}

#[tokio::test]
async fn embedded_store_refuses_a_second_opener_of_the_same_directory() {
    let dir = tempfile::tempdir().unwrap();
    let _first = EmbeddedStore::open(dir.path()).unwrap();
    let error = EmbeddedStore::open(dir.path()).err().unwrap();
    assert!(error.to_string().contains("already open"), "{error}");
}

#[tokio::test]
async fn redis_store_errors_are_transient_when_nothing_listens() {
    let url = format!("redis://127.0.0.1:{}/0", support::free_port());
    let store = RedisStore::new(&url, RedisTimeouts::default()).unwrap();
    let error = store.ping().await.unwrap_err();
    assert!(error.is_transient(), "{error:?}");
    let error = store.record_get("k", 0).await.unwrap_err();
    assert!(error.is_transient(), "{error:?}");
}

#[test]
fn redis_store_rejects_a_malformed_url() {
    let error = RedisStore::new("not a url", RedisTimeouts::default()).err().unwrap();
    assert!(matches!(error, StoreError::InvalidArgument(_)), "{error:?}");
}

#[tokio::test]
async fn redis_keys_share_hash_tags_and_carry_a_gc_expiry() {
    let url = support::shared_redis_url();
    let store = RedisStore::new(&url, RedisTimeouts::default()).unwrap();
    store.incr_counter("gc", 1, 10_000, 0).await.unwrap();
    store.feed_append("tagged", b"x".to_vec(), 0).await.unwrap();
    store.record_put("forever", b"x".to_vec(), None, 0).await.unwrap();
    store.queue_push("work", "job", b"x".to_vec(), 0, 10).await.unwrap();
    let claimed = store.queue_claim("work", 0, 10, 10).await.unwrap();
    let dead = QueueOutcome::Dead { data: b"y".to_vec(), at_ms: 1, max_dead: 10 };
    store.queue_settle("work", "job", claimed[0].at_ms, dead).await.unwrap();
    store.queue_push("work", "next", b"x".to_vec(), 0, 10).await.unwrap();

    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut conn).await.unwrap();
    keys.sort();
    assert_eq!(
        keys,
        vec![
            "portcullis:{counter:gc}",
            "portcullis:{feed:tagged}:entries",
            "portcullis:{feed:tagged}:meta",
            "portcullis:{queue:work}:data",
            "portcullis:{queue:work}:dead",
            "portcullis:{queue:work}:pending",
            "portcullis:{record:forever}",
        ]
    );
    let ttl: i64 = redis::cmd("PTTL").arg("portcullis:{counter:gc}").query_async(&mut conn).await.unwrap();
    assert!(ttl > 60_000 && ttl <= 70_000, "GC lifetime is window + grace, got {ttl}");
    let ttl: i64 =
        redis::cmd("PTTL").arg("portcullis:{record:forever}").query_async(&mut conn).await.unwrap();
    assert_eq!(ttl, -1, "records without expiry never expire");
    for key in
        ["portcullis:{queue:work}:pending", "portcullis:{queue:work}:dead", "portcullis:{queue:work}:data"]
    {
        let ttl: i64 = redis::cmd("PTTL").arg(key).query_async(&mut conn).await.unwrap();
        assert_eq!(ttl, -1, "{key}: a queue is durable until its entries are settled");
    }
}

#[tokio::test]
async fn idle_rate_limit_counters_expire_in_redis_once_their_bucket_is_full() {
    let url = support::shared_redis_url();
    let store = RedisStore::new(&url, RedisTimeouts::default()).unwrap();
    let client = redis::Client::open(url.as_str()).unwrap();
    let conn = client.get_multiplexed_async_connection().await.unwrap();
    let pttl = |key: &'static str| {
        let mut conn = conn.clone();
        async move { redis::cmd("PTTL").arg(key).query_async::<i64>(&mut conn).await.unwrap() }
    };

    // 10 per second: one unit is 100 ms, so the bucket is full again 100 ms later and
    // the key lives that long plus the 1 s it is kept when full.
    store.gcra("idle", 10, Unit::Second, check(1), T0).await.unwrap();
    let ttl = pttl("portcullis:{ratelimit:idle}").await;
    assert!(ttl > 900 && ttl <= 1_100, "{ttl}");
    let value: String =
        redis::cmd("GET").arg("portcullis:{ratelimit:idle}").query_async(&mut conn.clone()).await.unwrap();
    assert_eq!(value, ((T0 + 100) * 1_000).to_string(), "the TAT in exact integer µs");

    // One per day: the key lives a day plus the grace.
    store.gcra("daily", 1, Unit::Day, check(1), T0).await.unwrap();
    let ttl = pttl("portcullis:{ratelimit:daily}").await;
    assert!(ttl > 86_400_000 && ttl <= 86_401_000, "{ttl}");

    // Releasing everything makes the bucket full: the key is kept only the grace.
    store.gcra("daily", 1, Unit::Day, release(1), T0).await.unwrap();
    let ttl = pttl("portcullis:{ratelimit:daily}").await;
    assert!(ttl > 0 && ttl <= 1_000, "{ttl}");
    // A counter full for longer than that is deleted at once (by a refusal that
    // leaves the state as it is: any other op moves the TAT up to now).
    store.gcra("daily", 1, Unit::Day, check(2), T0 + 1_000).await.unwrap();
    assert_eq!(pttl("portcullis:{ratelimit:daily}").await, -2, "no key");

    // The idle counter vanishes by itself.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while pttl("portcullis:{ratelimit:idle}").await != -2 {
        assert!(std::time::Instant::now() < deadline, "the idle counter never expired");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // And its absence is a full bucket.
    let r = store.gcra("idle", 10, Unit::Second, check(0), T0 + 5_000).await.unwrap();
    assert_eq!((r.remaining, r.reset_after_ms), (10, 0));
}

#[tokio::test]
async fn stores_with_different_key_prefixes_share_nothing_on_one_redis() {
    let url = support::shared_redis_url();
    let open = |prefix: &str| {
        let keys = KeySpace::new(prefix).unwrap();
        RedisStore::open(RedisOptions { keys, ..RedisOptions::server(&url) }).unwrap()
    };
    let (blue, green) = (open("blue"), open("green"));
    blue.record_put("config", b"blue".to_vec(), None, 0).await.unwrap();
    assert_eq!(blue.feed_append("revocations", b"x".to_vec(), 0).await.unwrap(), 1);
    assert_eq!(green.record_get("config", 0).await.unwrap(), None);
    assert_eq!(green.feed_append("revocations", b"y".to_vec(), 0).await.unwrap(), 1);
    assert_eq!(blue.record_get("config", 0).await.unwrap().as_deref(), Some(&b"blue"[..]));
}

#[tokio::test]
async fn redis_cluster_keys_of_one_script_share_a_slot_as_the_cluster_computes_it() {
    let (cluster, prefix) = support::shared_redis_cluster();
    let keys = KeySpace::new(&prefix).unwrap();
    for name in ["revocations", "audit", "a}b{c", "%7D", ""] {
        // FEED_APPEND, FEED_READ, FEED_TRIM: KEYS = meta, entries.
        assert_eq!(cluster.slot(&keys.feed_meta(name)), cluster.slot(&keys.feed_entries(name)), "{name:?}");
        // LOG_APPEND, LOG_APPEND_IF_LAST: KEYS = seq, entries.
        assert_eq!(cluster.slot(&keys.log_seq(name)), cluster.slot(&keys.log_entries(name)), "{name:?}");
        // QUEUE_*: KEYS = pending (or dead), data; settles and revivals take all three.
        let pending = cluster.slot(&keys.queue_pending(name));
        assert_eq!(pending, cluster.slot(&keys.queue_dead(name)), "{name:?}");
        assert_eq!(pending, cluster.slot(&keys.queue_data(name)), "{name:?}");
    }
    // Different instances spread over the slots (and so over the primaries).
    let slots: BTreeSet<u16> = (0..32).map(|i| cluster.slot(&keys.counter(&format!("c{i}")))).collect();
    assert!(slots.len() > 16, "{slots:?}");
}

#[tokio::test]
async fn redis_cluster_spreads_one_deployments_keys_over_every_primary() {
    let (cluster, prefix) = support::shared_redis_cluster();
    let store = RedisStore::open(cluster.options(&prefix)).unwrap();
    for i in 0..30 {
        store.incr_counter(&format!("counter-{i}"), 1, 60_000, 0).await.unwrap();
        store.feed_append(&format!("feed-{i}"), b"x".to_vec(), 0).await.unwrap();
        store.log_append(&format!("log-{i}"), b"x".to_vec()).await.unwrap();
        store.queue_push(&format!("queue-{i}"), "e1", b"x".to_vec(), 0, 10).await.unwrap();
    }
    // 30 counters, 30 feeds × 2 keys, 30 logs × 2 keys, 30 queues × 2 keys (pending and
    // data; no dead letters yet).
    let ours = cluster.keys_per_node_matching(&format!("{prefix}:*"));
    assert_eq!(ours.iter().sum::<u64>(), 210, "{ours:?}");
    assert!(ours.iter().all(|n| *n > 0), "every primary holds some of the keys: {ours:?}");
    // And every one of them reads back through the cluster client.
    for i in 0..30 {
        assert_eq!(store.get_counter(&format!("counter-{i}"), 0).await.unwrap(), 1);
        assert_eq!(store.log_last(&format!("log-{i}")).await.unwrap().unwrap().seq, 1);
    }
}

#[test]
fn redis_cluster_nodes_cannot_name_a_database() {
    let error = RedisStore::open(RedisOptions::cluster(&["redis://127.0.0.1:7000/2"])).err().unwrap();
    assert!(error.to_string().contains("only database 0"), "{error}");
    let error =
        RedisStore::open(RedisOptions::cluster(&["redis://127.0.0.1:7000", "rediss://127.0.0.1:7001"]))
            .err()
            .unwrap();
    assert!(error.to_string().contains("must all be redis:// or all rediss://"), "{error}");
    let error = RedisStore::open(RedisOptions::cluster::<&str>(&[])).err().unwrap();
    assert!(matches!(error, StoreError::InvalidArgument(_)), "{error}");
}

fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

// Wall-clock times: Redis ends a claim with its own clock (`PX`).
async fn one_time_claims_are_won_once_until_they_expire(store: Arc<dyn Store>) {
    let now = wall_clock_ms();
    assert!(store.claim_once("nonce", now + 300, now).await.unwrap());
    assert!(!store.claim_once("nonce", now + 300, now + 10).await.unwrap(), "a replay");
    assert!(!store.claim_once("nonce", now + 60_000, now + 10).await.unwrap(), "a longer claim loses too");
    assert!(store.claim_once("other", now + 300, now).await.unwrap(), "claims are per key");
    assert_eq!(store.record_get("nonce", now).await.unwrap(), None, "claims are not records");
    assert!(matches!(store.claim_once("past", now, now).await, Err(StoreError::InvalidArgument(_))));
    // Once its window is over the id may be claimed again (polled: Redis expires it).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let t = wall_clock_ms().max(now + 60_001);
        if store.claim_once("other", t + 300, t).await.unwrap() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the claim never expired");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn concurrent_one_time_claims_have_exactly_one_winner(store: Arc<dyn Store>) {
    let now = wall_clock_ms();
    let attempts: Vec<_> = (0..50u32)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.claim_once("contested", now + 60_000, now).await.unwrap() })
        })
        .collect();
    let mut winners = 0;
    for attempt in attempts {
        winners += usize::from(attempt.await.unwrap());
    }
    assert_eq!(winners, 1);
}
