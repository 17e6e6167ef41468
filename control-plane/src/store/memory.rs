//! [`MemoryStore`]: everything in one mutex-guarded struct. For tests and throwaway
//! runs; nothing survives a restart and nothing is shared between replicas.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use portcullis_core::ratelimit::{GcraState, Unit};
use portcullis_core::wire::{RateLimitOp, RateLimitResult};

use super::{
    feed_page, feed_window, is_live, is_live_opt, log_trim_point, rate_limit, require_batch_size,
    require_positive_lease, require_positive_ttl, FeedEntry, FeedPage, LogAppendError, LogEntry, QueueEntry,
    QueueLane, QueueOutcome, QueueRevive, SetMember, Store, StoreBackend, StoreError, MAX_PAGE_SIZE,
    MAX_SCAN_SIZE,
};

#[derive(Default)]
pub struct MemoryStore {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    counters: HashMap<String, Counter>,
    sets: HashMap<String, BTreeMap<String, u64>>,
    records: HashMap<String, Record>,
    feeds: HashMap<String, Feed>,
    logs: HashMap<String, Log>,
    /// Rate-limit counter -> TAT in µs; full buckets are removed.
    rate_limits: HashMap<String, u64>,
    queues: HashMap<String, Queue>,
    /// One-time claims -> expiry ms; expired ones dropped when the map doubles.
    claims: HashMap<String, u64>,
    claims_after_prune: usize,
}

/// An append-only log: entries `trimmed + 1 ..= trimmed + entries.len()`.
#[derive(Default)]
struct Log {
    trimmed: u64,
    entries: VecDeque<Vec<u8>>,
}

impl Log {
    fn last_seq(&self) -> u64 {
        self.trimmed + self.entries.len() as u64
    }
}

/// A work queue: every entry is in exactly one lane's ordered index.
#[derive(Default)]
struct Queue {
    /// id -> (lane, at_ms, data)
    entries: HashMap<String, (QueueLane, u64, Vec<u8>)>,
    pending: BTreeSet<(u64, String)>,
    dead: BTreeSet<(u64, String)>,
}

impl Queue {
    fn lane(&mut self, lane: QueueLane) -> &mut BTreeSet<(u64, String)> {
        match lane {
            QueueLane::Pending => &mut self.pending,
            QueueLane::Dead => &mut self.dead,
        }
    }

    fn insert(&mut self, id: &str, lane: QueueLane, at_ms: u64, data: Vec<u8>) {
        self.remove(id);
        self.lane(lane).insert((at_ms, id.to_owned()));
        self.entries.insert(id.to_owned(), (lane, at_ms, data));
    }

    fn remove(&mut self, id: &str) -> Option<(QueueLane, u64, Vec<u8>)> {
        let (lane, at_ms, data) = self.entries.remove(id)?;
        self.lane(lane).remove(&(at_ms, id.to_owned()));
        Some((lane, at_ms, data))
    }

    /// Drops the oldest dead letters beyond `max_dead`; returns how many.
    fn evict_dead(&mut self, max_dead: usize) -> u64 {
        let mut evicted = 0;
        while self.dead.len() > max_dead {
            let Some((_, id)) = self.dead.first().cloned() else { break };
            self.remove(&id);
            evicted += 1;
        }
        evicted
    }
}

struct Counter {
    value: i64,
    expires_at_ms: u64,
}

struct Record {
    value: Vec<u8>,
    expires_at_ms: Option<u64>,
}

#[derive(Default)]
struct Feed {
    head: u64,
    trimmed: u64,
    /// (cursor, appended_at_ms, data), oldest first; cursors `trimmed+1..=head`.
    entries: BTreeMap<u64, (u64, Vec<u8>)>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> Result<MutexGuard<'_, State>, StoreError> {
        // A panic while holding the lock can only come from a bug in this file; the
        // data may be half-updated, so refuse to go on rather than serve it.
        self.state.lock().map_err(|_| StoreError::Backend("memory store lock poisoned".to_owned()))
    }
}

impl State {
    fn live_record(&mut self, key: &str, now_ms: u64) -> Option<&Record> {
        if let Some(record) = self.records.get(key) {
            if !is_live_opt(record.expires_at_ms, now_ms) {
                self.records.remove(key);
                return None;
            }
        }
        self.records.get(key)
    }

    fn write_record(&mut self, key: &str, value: Option<Vec<u8>>, expires_at_ms: Option<u64>, now_ms: u64) {
        match value {
            Some(value) if is_live_opt(expires_at_ms, now_ms) => {
                self.records.insert(key.to_owned(), Record { value, expires_at_ms });
            }
            _ => {
                self.records.remove(key);
            }
        }
    }

    fn log_push(&mut self, log: &str, entry: Vec<u8>) -> u64 {
        let log = self.logs.entry(log.to_owned()).or_default();
        log.entries.push_back(entry);
        log.last_seq()
    }

    fn log_len(&self, log: &str) -> u64 {
        self.logs.get(log).map_or(0, Log::last_seq)
    }
}

#[cfg(test)]
impl MemoryStore {
    /// Overwrites a stored log entry behind the trait's back: tampering, for tests of
    /// what detects it.
    pub(crate) fn overwrite_log_entry(&self, log: &str, seq: u64, data: Vec<u8>) {
        let mut state = self.state().unwrap_or_else(|e| panic!("{e}"));
        let log = state.logs.get_mut(log).unwrap_or_else(|| panic!("no log {log:?}"));
        let index = usize::try_from(seq - log.trimmed - 1).unwrap_or(usize::MAX);
        *log.entries.get_mut(index).unwrap_or_else(|| panic!("no entry {seq}")) = data;
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn backend(&self) -> StoreBackend {
        StoreBackend::Memory
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.state().map(|_| ())
    }

    async fn incr_counter(&self, key: &str, delta: i64, ttl_ms: u64, now_ms: u64) -> Result<i64, StoreError> {
        require_positive_ttl(ttl_ms)?;
        let mut state = self.state()?;
        let counter = state.counters.entry(key.to_owned()).or_insert(Counter { value: 0, expires_at_ms: 0 });
        if !is_live(counter.expires_at_ms, now_ms) {
            counter.value = 0;
            counter.expires_at_ms = now_ms.saturating_add(ttl_ms);
        }
        counter.value = counter
            .value
            .checked_add(delta)
            .ok_or_else(|| StoreError::InvalidArgument("counter overflow".to_owned()))?;
        Ok(counter.value)
    }

    async fn get_counter(&self, key: &str, now_ms: u64) -> Result<i64, StoreError> {
        let state = self.state()?;
        Ok(state.counters.get(key).filter(|c| is_live(c.expires_at_ms, now_ms)).map_or(0, |c| c.value))
    }

    async fn set_add(
        &self,
        set: &str,
        member: &str,
        expires_at_ms: u64,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let mut state = self.state()?;
        let members = state.sets.entry(set.to_owned()).or_default();
        members.retain(|_, at| is_live(*at, now_ms));
        if !is_live(expires_at_ms, now_ms) {
            members.remove(member);
            return Ok(false);
        }
        Ok(members.insert(member.to_owned(), expires_at_ms).is_none())
    }

    async fn set_remove(&self, set: &str, member: &str) -> Result<(), StoreError> {
        let mut state = self.state()?;
        if let Some(members) = state.sets.get_mut(set) {
            members.remove(member);
        }
        Ok(())
    }

    async fn set_contains(&self, set: &str, member: &str, now_ms: u64) -> Result<bool, StoreError> {
        let state = self.state()?;
        Ok(state.sets.get(set).and_then(|m| m.get(member)).is_some_and(|at| is_live(*at, now_ms)))
    }

    async fn set_members(&self, set: &str, now_ms: u64) -> Result<Vec<SetMember>, StoreError> {
        let mut state = self.state()?;
        let Some(members) = state.sets.get_mut(set) else {
            return Ok(Vec::new());
        };
        members.retain(|_, at| is_live(*at, now_ms));
        let mut live: Vec<SetMember> = members
            .iter()
            .map(|(member, at)| SetMember { member: member.clone(), expires_at_ms: *at })
            .collect();
        live.sort_by(|a, b| a.member.cmp(&b.member));
        Ok(live)
    }

    async fn set_scan(
        &self,
        set: &str,
        after: Option<&SetMember>,
        limit: usize,
        now_ms: u64,
    ) -> Result<Vec<SetMember>, StoreError> {
        use std::ops::Bound;
        let state = self.state()?;
        let Some(members) = state.sets.get(set) else {
            return Ok(Vec::new());
        };
        let start = after.map_or(Bound::Unbounded, |a| Bound::Excluded(a.member.clone()));
        Ok(members
            .range((start, Bound::Unbounded))
            .filter(|(_, at)| is_live(**at, now_ms))
            .take(limit.min(MAX_SCAN_SIZE))
            .map(|(member, at)| SetMember { member: member.clone(), expires_at_ms: *at })
            .collect())
    }

    async fn record_get(&self, key: &str, now_ms: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let mut state = self.state()?;
        Ok(state.live_record(key, now_ms).map(|r| r.value.clone()))
    }

    async fn record_put(
        &self,
        key: &str,
        value: Vec<u8>,
        expires_at_ms: Option<u64>,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let mut state = self.state()?;
        state.write_record(key, Some(value), expires_at_ms, now_ms);
        Ok(())
    }

    async fn record_delete(&self, key: &str) -> Result<(), StoreError> {
        let mut state = self.state()?;
        state.records.remove(key);
        Ok(())
    }

    async fn record_compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<Vec<u8>>,
        expires_at_ms: Option<u64>,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let mut state = self.state()?;
        let current = state.live_record(key, now_ms).map(|r| r.value.as_slice());
        if current != expected {
            return Ok(false);
        }
        state.write_record(key, new, expires_at_ms, now_ms);
        Ok(true)
    }

    async fn feed_append(&self, feed: &str, entry: Vec<u8>, now_ms: u64) -> Result<u64, StoreError> {
        let mut state = self.state()?;
        let feed = state.feeds.entry(feed.to_owned()).or_default();
        feed.head += 1;
        feed.entries.insert(feed.head, (now_ms, entry));
        Ok(feed.head)
    }

    async fn feed_read(&self, feed: &str, after: u64, limit: usize) -> Result<FeedPage, StoreError> {
        let state = self.state()?;
        let empty = Feed::default();
        let feed = state.feeds.get(feed).unwrap_or(&empty);
        let Some((first, last)) = feed_window(after, limit, feed.head, feed.trimmed) else {
            return Ok(feed_page(after, feed.head, true, Vec::new()));
        };
        if first > last {
            return Ok(feed_page(after, feed.head, false, Vec::new()));
        }
        let entries = feed
            .entries
            .range(first..=last)
            .map(|(cursor, (at, data))| FeedEntry {
                cursor: *cursor,
                appended_at_ms: *at,
                data: data.clone(),
            })
            .collect();
        Ok(feed_page(after, feed.head, false, entries))
    }

    async fn feed_trim(&self, feed: &str, keep_last: usize) -> Result<u64, StoreError> {
        let mut state = self.state()?;
        let Some(feed) = state.feeds.get_mut(feed) else {
            return Ok(0);
        };
        let target = feed.head.saturating_sub(keep_last as u64);
        if target <= feed.trimmed {
            return Ok(0);
        }
        let removed = target - feed.trimmed;
        feed.entries = feed.entries.split_off(&(target + 1));
        feed.trimmed = target;
        Ok(removed)
    }

    async fn log_append(&self, log: &str, entry: Vec<u8>) -> Result<u64, StoreError> {
        let mut state = self.state()?;
        Ok(state.log_push(log, entry))
    }

    async fn log_append_if_last(
        &self,
        log: &str,
        expected_last_seq: Option<u64>,
        entry: Vec<u8>,
    ) -> Result<u64, LogAppendError> {
        let mut state = self.state()?;
        let last = state.log_len(log);
        if last != expected_last_seq.unwrap_or(0) {
            return Err(LogAppendError::Conflict { last_seq: (last > 0).then_some(last) });
        }
        Ok(state.log_push(log, entry))
    }

    async fn log_append_batch_if_last(
        &self,
        log: &str,
        expected_last_seq: Option<u64>,
        entries: Vec<Vec<u8>>,
    ) -> Result<u64, LogAppendError> {
        require_batch_size(&entries)?;
        let mut state = self.state()?;
        let last = state.log_len(log);
        if last != expected_last_seq.unwrap_or(0) {
            return Err(LogAppendError::Conflict { last_seq: (last > 0).then_some(last) });
        }
        let mut seq = last;
        for entry in entries {
            seq = state.log_push(log, entry);
        }
        Ok(seq)
    }

    async fn log_range(&self, log: &str, from_seq: u64, limit: usize) -> Result<Vec<LogEntry>, StoreError> {
        let state = self.state()?;
        let Some(log) = state.logs.get(log) else {
            return Ok(Vec::new());
        };
        let start = from_seq.max(log.trimmed + 1);
        Ok(log
            .entries
            .iter()
            .zip(log.trimmed + 1..)
            .skip(usize::try_from(start - log.trimmed - 1).unwrap_or(usize::MAX))
            .take(limit.min(MAX_PAGE_SIZE))
            .map(|(data, seq)| LogEntry { seq, data: data.clone() })
            .collect())
    }

    async fn log_last(&self, log: &str) -> Result<Option<LogEntry>, StoreError> {
        let state = self.state()?;
        Ok(state.logs.get(log).and_then(|log| {
            log.entries.back().map(|data| LogEntry { seq: log.last_seq(), data: data.clone() })
        }))
    }

    async fn log_trim(&self, log: &str, before_seq: u64) -> Result<u64, StoreError> {
        let mut state = self.state()?;
        let Some(log) = state.logs.get_mut(log) else {
            return Ok(0);
        };
        let upto = log_trim_point(before_seq, log.last_seq(), log.trimmed);
        let removed = upto.saturating_sub(log.trimmed);
        for _ in 0..removed {
            log.entries.pop_front();
        }
        log.trimmed = log.trimmed.max(upto);
        Ok(removed)
    }

    async fn queue_push(
        &self,
        queue: &str,
        id: &str,
        data: Vec<u8>,
        due_at_ms: u64,
        max_pending: usize,
    ) -> Result<bool, StoreError> {
        let mut state = self.state()?;
        let queue = state.queues.entry(queue.to_owned()).or_default();
        if queue.entries.contains_key(id) {
            return Ok(true);
        }
        if queue.pending.len() >= max_pending {
            return Ok(false);
        }
        queue.insert(id, QueueLane::Pending, due_at_ms, data);
        Ok(true)
    }

    async fn queue_claim(
        &self,
        queue: &str,
        now_ms: u64,
        lease_ms: u64,
        limit: usize,
    ) -> Result<Vec<QueueEntry>, StoreError> {
        require_positive_lease(lease_ms)?;
        let mut state = self.state()?;
        let Some(queue) = state.queues.get_mut(queue) else {
            return Ok(Vec::new());
        };
        let until = now_ms.saturating_add(lease_ms);
        let due: Vec<String> = queue
            .pending
            .iter()
            .take_while(|(at, _)| *at <= now_ms)
            .take(limit.min(MAX_PAGE_SIZE))
            .map(|(_, id)| id.clone())
            .collect();
        let mut claimed = Vec::with_capacity(due.len());
        for id in due {
            if let Some((_, _, data)) = queue.remove(&id) {
                queue.insert(&id, QueueLane::Pending, until, data.clone());
                claimed.push(QueueEntry { id, at_ms: until, data });
            }
        }
        Ok(claimed)
    }

    async fn queue_settle(
        &self,
        queue: &str,
        id: &str,
        claimed_until_ms: u64,
        outcome: QueueOutcome,
    ) -> Result<Option<u64>, StoreError> {
        let mut state = self.state()?;
        let Some(queue) = state.queues.get_mut(queue) else {
            return Ok(None);
        };
        match queue.entries.get(id) {
            Some((QueueLane::Pending, at, _)) if *at == claimed_until_ms => {}
            _ => return Ok(None),
        }
        Ok(Some(match outcome {
            QueueOutcome::Done => {
                queue.remove(id);
                0
            }
            QueueOutcome::Retry { data, due_at_ms } => {
                queue.insert(id, QueueLane::Pending, due_at_ms, data);
                0
            }
            QueueOutcome::Dead { data, at_ms, max_dead } => {
                queue.insert(id, QueueLane::Dead, at_ms, data);
                queue.evict_dead(max_dead)
            }
        }))
    }

    async fn queue_list(
        &self,
        queue: &str,
        lane: QueueLane,
        limit: usize,
    ) -> Result<Vec<QueueEntry>, StoreError> {
        let mut state = self.state()?;
        let Some(queue) = state.queues.get_mut(queue) else {
            return Ok(Vec::new());
        };
        let ids: Vec<(u64, String)> =
            queue.lane(lane).iter().take(limit.min(MAX_PAGE_SIZE)).cloned().collect();
        Ok(ids
            .into_iter()
            .filter_map(|(at_ms, id)| {
                let data = queue.entries.get(&id)?.2.clone();
                Some(QueueEntry { id, at_ms, data })
            })
            .collect())
    }

    async fn queue_revive(
        &self,
        queue: &str,
        id: &str,
        data: Vec<u8>,
        due_at_ms: u64,
        max_pending: usize,
    ) -> Result<QueueRevive, StoreError> {
        let mut state = self.state()?;
        let Some(queue) = state.queues.get_mut(queue) else {
            return Ok(QueueRevive::NotDead);
        };
        if !matches!(queue.entries.get(id), Some((QueueLane::Dead, _, _))) {
            return Ok(QueueRevive::NotDead);
        }
        if queue.pending.len() >= max_pending {
            return Ok(QueueRevive::PendingFull);
        }
        queue.insert(id, QueueLane::Pending, due_at_ms, data);
        Ok(QueueRevive::Revived)
    }

    async fn queue_delete(&self, queue: &str, lane: QueueLane, id: &str) -> Result<bool, StoreError> {
        let mut state = self.state()?;
        let Some(queue) = state.queues.get_mut(queue) else {
            return Ok(false);
        };
        if !matches!(queue.entries.get(id), Some((l, _, _)) if *l == lane) {
            return Ok(false);
        }
        queue.remove(id);
        Ok(true)
    }

    async fn claim_once(&self, key: &str, expires_at_ms: u64, now_ms: u64) -> Result<bool, StoreError> {
        super::require_future_claim(expires_at_ms, now_ms)?;
        let mut state = self.state()?;
        if state.claims.get(key).is_some_and(|&at| is_live(at, now_ms)) {
            return Ok(false);
        }
        if state.claims.len() >= state.claims_after_prune.saturating_mul(2).max(1024) {
            state.claims.retain(|_, at| is_live(*at, now_ms));
            state.claims_after_prune = state.claims.len();
        }
        state.claims.insert(key.to_owned(), expires_at_ms);
        Ok(true)
    }

    async fn gcra(
        &self,
        key: &str,
        limit: u64,
        unit: Unit,
        op: RateLimitOp,
        now_ms: u64,
    ) -> Result<RateLimitResult, StoreError> {
        rate_limit::check_arguments(limit, now_ms)?;
        let mut state = self.state()?;
        let current = GcraState { tat_us: state.rate_limits.get(key).copied().unwrap_or(0) };
        let (next, result) = rate_limit::apply(limit, unit, op, current, now_ms);
        if rate_limit::is_forgettable(next, now_ms) {
            state.rate_limits.remove(key);
        } else {
            state.rate_limits.insert(key.to_owned(), next.tat_us);
        }
        Ok(result)
    }
}
