//! [`MeteredStore`]: wraps any store, times every operation
//! (`portcullis_store_operation_duration_seconds`) and counts its failures by operation
//! and kind (`portcullis_store_errors_total`), so every backend is observed the same way.
//! Operation names are fixed here, so the label set stays small.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use portcullis_core::ratelimit::Unit;
use portcullis_core::wire::{RateLimitOp, RateLimitResult};

use super::{
    FeedPage, LogAppendError, LogEntry, QueueEntry, QueueLane, QueueOutcome, QueueRevive, SetMember, Store,
    StoreBackend, StoreError,
};
use crate::metrics::Metrics;

pub struct MeteredStore {
    inner: Arc<dyn Store>,
    metrics: Arc<Metrics>,
}

impl MeteredStore {
    pub fn new(inner: Arc<dyn Store>, metrics: Arc<Metrics>) -> Self {
        metrics.record_store_backend(inner.backend().as_str());
        Self { inner, metrics }
    }

    /// Runs one operation, recording how long it took and whether it failed.
    async fn timed<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = call.await;
        self.metrics.record_store_operation(operation, started.elapsed().as_secs_f64());
        if let Err(error) = &result {
            self.metrics.record_store_error(operation, error.kind());
        }
        result
    }
}

#[async_trait]
impl Store for MeteredStore {
    fn backend(&self) -> StoreBackend {
        self.inner.backend()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.timed("ping", self.inner.ping()).await
    }

    async fn incr_counter(&self, key: &str, delta: i64, ttl_ms: u64, now_ms: u64) -> Result<i64, StoreError> {
        self.timed("incr_counter", self.inner.incr_counter(key, delta, ttl_ms, now_ms)).await
    }

    async fn get_counter(&self, key: &str, now_ms: u64) -> Result<i64, StoreError> {
        self.timed("get_counter", self.inner.get_counter(key, now_ms)).await
    }

    async fn set_add(
        &self,
        set: &str,
        member: &str,
        expires_at_ms: u64,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        self.timed("set_add", self.inner.set_add(set, member, expires_at_ms, now_ms)).await
    }

    async fn set_remove(&self, set: &str, member: &str) -> Result<(), StoreError> {
        self.timed("set_remove", self.inner.set_remove(set, member)).await
    }

    async fn set_contains(&self, set: &str, member: &str, now_ms: u64) -> Result<bool, StoreError> {
        self.timed("set_contains", self.inner.set_contains(set, member, now_ms)).await
    }

    async fn set_members(&self, set: &str, now_ms: u64) -> Result<Vec<SetMember>, StoreError> {
        self.timed("set_members", self.inner.set_members(set, now_ms)).await
    }

    async fn set_scan(
        &self,
        set: &str,
        after: Option<&SetMember>,
        limit: usize,
        now_ms: u64,
    ) -> Result<Vec<SetMember>, StoreError> {
        self.timed("set_scan", self.inner.set_scan(set, after, limit, now_ms)).await
    }

    async fn record_get(&self, key: &str, now_ms: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.timed("record_get", self.inner.record_get(key, now_ms)).await
    }

    async fn record_put(
        &self,
        key: &str,
        value: Vec<u8>,
        expires_at_ms: Option<u64>,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.timed("record_put", self.inner.record_put(key, value, expires_at_ms, now_ms)).await
    }

    async fn record_delete(&self, key: &str) -> Result<(), StoreError> {
        self.timed("record_delete", self.inner.record_delete(key)).await
    }

    async fn record_compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<Vec<u8>>,
        expires_at_ms: Option<u64>,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let swap = self.inner.record_compare_and_swap(key, expected, new, expires_at_ms, now_ms);
        self.timed("record_compare_and_swap", swap).await
    }

    async fn claim_once(&self, key: &str, expires_at_ms: u64, now_ms: u64) -> Result<bool, StoreError> {
        self.timed("claim_once", self.inner.claim_once(key, expires_at_ms, now_ms)).await
    }

    async fn feed_append(&self, feed: &str, entry: Vec<u8>, now_ms: u64) -> Result<u64, StoreError> {
        self.timed("feed_append", self.inner.feed_append(feed, entry, now_ms)).await
    }

    async fn feed_read(&self, feed: &str, after: u64, limit: usize) -> Result<FeedPage, StoreError> {
        self.timed("feed_read", self.inner.feed_read(feed, after, limit)).await
    }

    async fn feed_trim(&self, feed: &str, keep_last: usize) -> Result<u64, StoreError> {
        self.timed("feed_trim", self.inner.feed_trim(feed, keep_last)).await
    }

    async fn log_append(&self, log: &str, entry: Vec<u8>) -> Result<u64, StoreError> {
        self.timed("log_append", self.inner.log_append(log, entry)).await
    }

    async fn log_append_if_last(
        &self,
        log: &str,
        expected_last_seq: Option<u64>,
        entry: Vec<u8>,
    ) -> Result<u64, LogAppendError> {
        let started = Instant::now();
        let result = self.inner.log_append_if_last(log, expected_last_seq, entry).await;
        self.metrics.record_store_operation("log_append_if_last", started.elapsed().as_secs_f64());
        // A conflict is an expected outcome of optimistic appends, not a store failure.
        if let Err(LogAppendError::Store(error)) = &result {
            self.metrics.record_store_error("log_append_if_last", error.kind());
        }
        result
    }

    async fn log_append_batch_if_last(
        &self,
        log: &str,
        expected_last_seq: Option<u64>,
        entries: Vec<Vec<u8>>,
    ) -> Result<u64, LogAppendError> {
        let started = Instant::now();
        let result = self.inner.log_append_batch_if_last(log, expected_last_seq, entries).await;
        self.metrics.record_store_operation("log_append_batch_if_last", started.elapsed().as_secs_f64());
        if let Err(LogAppendError::Store(error)) = &result {
            self.metrics.record_store_error("log_append_batch_if_last", error.kind());
        }
        result
    }

    async fn log_range(&self, log: &str, from_seq: u64, limit: usize) -> Result<Vec<LogEntry>, StoreError> {
        self.timed("log_range", self.inner.log_range(log, from_seq, limit)).await
    }

    async fn log_last(&self, log: &str) -> Result<Option<LogEntry>, StoreError> {
        self.timed("log_last", self.inner.log_last(log)).await
    }

    async fn log_trim(&self, log: &str, before_seq: u64) -> Result<u64, StoreError> {
        self.timed("log_trim", self.inner.log_trim(log, before_seq)).await
    }

    async fn queue_push(
        &self,
        queue: &str,
        id: &str,
        data: Vec<u8>,
        due_at_ms: u64,
        max_pending: usize,
    ) -> Result<bool, StoreError> {
        self.timed("queue_push", self.inner.queue_push(queue, id, data, due_at_ms, max_pending)).await
    }

    async fn queue_claim(
        &self,
        queue: &str,
        now_ms: u64,
        lease_ms: u64,
        limit: usize,
    ) -> Result<Vec<QueueEntry>, StoreError> {
        self.timed("queue_claim", self.inner.queue_claim(queue, now_ms, lease_ms, limit)).await
    }

    async fn queue_settle(
        &self,
        queue: &str,
        id: &str,
        claimed_until_ms: u64,
        outcome: QueueOutcome,
    ) -> Result<Option<u64>, StoreError> {
        self.timed("queue_settle", self.inner.queue_settle(queue, id, claimed_until_ms, outcome)).await
    }

    async fn queue_list(
        &self,
        queue: &str,
        lane: QueueLane,
        limit: usize,
    ) -> Result<Vec<QueueEntry>, StoreError> {
        self.timed("queue_list", self.inner.queue_list(queue, lane, limit)).await
    }

    async fn queue_revive(
        &self,
        queue: &str,
        id: &str,
        data: Vec<u8>,
        due_at_ms: u64,
        max_pending: usize,
    ) -> Result<QueueRevive, StoreError> {
        self.timed("queue_revive", self.inner.queue_revive(queue, id, data, due_at_ms, max_pending)).await
    }

    async fn queue_delete(&self, queue: &str, lane: QueueLane, id: &str) -> Result<bool, StoreError> {
        self.timed("queue_delete", self.inner.queue_delete(queue, lane, id)).await
    }

    async fn gcra(
        &self,
        key: &str,
        limit: u64,
        unit: Unit,
        op: RateLimitOp,
        now_ms: u64,
    ) -> Result<RateLimitResult, StoreError> {
        self.timed("gcra", self.inner.gcra(key, limit, unit, op, now_ms)).await
    }
}
