//! [`EmbeddedStore`]: a redb database file in the data directory. The zero-setup
//! default: durable across restarts, but owned by one process (redb locks the file),
//! so it suits a single replica.
//!
//! Every operation is one redb transaction, so each is atomic just like the Redis
//! scripts; redb allows one write transaction at a time, which serialises writers.
//! redb is synchronous, so the work runs on tokio's blocking pool.
//!
//! Every commit is durable (an fsync) except rate-limit counters': those are committed
//! to disk at most once per [`RATE_LIMIT_SYNC_MS`] of the callers' clock, and in between
//! only to memory. A durable commit of anything else also persists them. An fsync per
//! lease ask capped the store at one lease per disk flush (about 1,900 per second in
//! `make bench`'s (f) cell; about 9,300 with this), and leases are per counter: with
//! 1,000 active subjects a fleet renews 1,000 leases per lease TTL. Syncing every 20 ms
//! rather than every second also keeps the sync itself short (p99 of a lease ask 10 ms
//! against 150 ms), since redb frees pages only in durable commits. The cost: if the
//! control plane dies, up to that much of the counters' last spending is forgotten, and
//! those units can be spent again once. Counters are a bucket's fill level, not
//! records, so nothing else is lost.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use portcullis_core::ratelimit::{GcraState, Unit};
use portcullis_core::wire::{RateLimitOp, RateLimitResult};
use redb::{Database, Durability, ReadTransaction, ReadableTable, TableDefinition, WriteTransaction};

use super::{
    feed_page, feed_window, is_live, is_live_opt, log_trim_point, rate_limit, require_batch_size,
    require_positive_lease, require_positive_ttl, FeedEntry, FeedPage, LogAppendError, LogEntry, QueueEntry,
    QueueLane, QueueOutcome, QueueRevive, SetMember, Store, StoreBackend, StoreError, MAX_PAGE_SIZE,
    MAX_SCAN_SIZE,
};

/// The database file inside the data directory.
pub const DATABASE_FILE: &str = "portcullis.redb";

/// Rate-limit counters reach the disk at least this often while they change (ms of the
/// callers' clock).
pub const RATE_LIMIT_SYNC_MS: u64 = 20;

/// Records without expiry store this as their expiry.
const NEVER: u64 = u64::MAX;

/// counter name -> (value, expires_at_ms)
const COUNTERS: TableDefinition<&str, (i64, u64)> = TableDefinition::new("counters");
/// (set, member) -> expires_at_ms
const SET_MEMBERS: TableDefinition<(&str, &str), u64> = TableDefinition::new("set_members");
/// record key -> (expires_at_ms or NEVER, value)
const RECORDS: TableDefinition<&str, (u64, &[u8])> = TableDefinition::new("records");
/// feed -> (head cursor, last trimmed cursor)
const FEEDS: TableDefinition<&str, (u64, u64)> = TableDefinition::new("feeds");
/// (feed, cursor) -> (appended_at_ms, data)
const FEED_ENTRIES: TableDefinition<(&str, u64), (u64, &[u8])> = TableDefinition::new("feed_entries");
/// log -> last seq
const LOGS: TableDefinition<&str, u64> = TableDefinition::new("logs");
/// (log, seq) -> data
const LOG_ENTRIES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("log_entries");
/// rate-limit counter -> TAT in µs (full buckets are removed)
const RATE_LIMITS: TableDefinition<&str, u64> = TableDefinition::new("rate_limits");
/// One-time claims: name -> expiry ms.
const CLAIMS: TableDefinition<&str, u64> = TableDefinition::new("claims");
/// The claims by expiry, to drop expired ones: (expiry ms, name).
const CLAIM_EXPIRY: TableDefinition<(u64, &str), ()> = TableDefinition::new("claim_expiry");
/// Expired claims dropped per new claim (more than one: the tables shrink under load).
const CLAIM_PRUNE: usize = 8;
/// (queue, id) -> (lane, at_ms, data)
const QUEUE_ENTRIES: TableDefinition<(&str, &str), (u8, u64, &[u8])> = TableDefinition::new("queue_entries");
/// (queue, lane, at_ms, id) -> (): each lane's entries in order
const QUEUE_ORDER: TableDefinition<(&str, u8, u64, &str), ()> = TableDefinition::new("queue_order");
/// (queue, lane) -> number of entries in the lane
const QUEUE_SIZES: TableDefinition<(&str, u8), u64> = TableDefinition::new("queue_sizes");

pub struct EmbeddedStore {
    db: Arc<Database>,
    path: PathBuf,
    /// When a rate-limit commit was last made durable (the callers' `now_ms`).
    rate_limits_synced_ms: AtomicU64,
}

impl EmbeddedStore {
    /// Opens (or creates) the database in `data_dir`, creating the directory if needed.
    /// Fails if another process has the database open.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            StoreError::Backend(format!("cannot create data directory {}: {e}", data_dir.display()))
        })?;
        let path = data_dir.join(DATABASE_FILE);
        let db = Database::create(&path).map_err(|e| match redb::Error::from(e) {
            redb::Error::DatabaseAlreadyOpen => {
                StoreError::Backend(format!("{} is already open in another process", path.display()))
            }
            other => StoreError::from(other),
        })?;
        // Create every table up front so read transactions never meet a missing one.
        let txn = db.begin_write()?;
        txn.open_table(COUNTERS)?;
        txn.open_table(SET_MEMBERS)?;
        txn.open_table(RECORDS)?;
        txn.open_table(FEEDS)?;
        txn.open_table(FEED_ENTRIES)?;
        txn.open_table(LOGS)?;
        txn.open_table(LOG_ENTRIES)?;
        txn.open_table(RATE_LIMITS)?;
        txn.open_table(QUEUE_ENTRIES)?;
        txn.open_table(QUEUE_ORDER)?;
        txn.open_table(QUEUE_SIZES)?;
        txn.commit()?;
        Ok(Self { db: Arc::new(db), path, rate_limits_synced_ms: AtomicU64::new(0) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `work` in one write transaction, committed durably if it returns `Ok`.
    async fn write<T, E>(
        &self,
        work: impl FnOnce(&WriteTransaction) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        self.write_with(Durability::Immediate, work).await
    }

    /// [`Self::write`] with the commit's durability.
    async fn write_with<T, E>(
        &self,
        durability: Durability,
        work: impl FnOnce(&WriteTransaction) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<StoreError> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        blocking(move || {
            let mut txn = db.begin_write().map_err(StoreError::from)?;
            txn.set_durability(durability);
            let out = work(&txn)?;
            txn.commit().map_err(StoreError::from)?;
            Ok(out)
        })
        .await
    }

    /// Durable for the first rate-limit commit [`RATE_LIMIT_SYNC_MS`] after the last
    /// durable one, else to memory only (see the module's documentation).
    fn rate_limit_durability(&self, now_ms: u64) -> Durability {
        let synced = self.rate_limits_synced_ms.load(Ordering::Relaxed);
        // A clock that went back restarts the interval rather than postponing syncs.
        let due = now_ms < synced || now_ms - synced >= RATE_LIMIT_SYNC_MS;
        if due
            && self
                .rate_limits_synced_ms
                .compare_exchange(synced, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            Durability::Immediate
        } else {
            Durability::None
        }
    }

    async fn read<T: Send + 'static>(
        &self,
        work: impl FnOnce(&ReadTransaction) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = Arc::clone(&self.db);
        blocking(move || work(&db.begin_read()?)).await
    }
}

async fn blocking<T, E>(work: impl FnOnce() -> Result<T, E> + Send + 'static) -> Result<T, E>
where
    T: Send + 'static,
    E: From<StoreError> + Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(join) => Err(E::from(StoreError::Backend(format!("embedded store task failed: {join}")))),
    }
}

fn live_record(
    table: &impl ReadableTable<&'static str, (u64, &'static [u8])>,
    key: &str,
    now_ms: u64,
) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(table.get(key)?.and_then(|guard| {
        let (expires_at, value) = guard.value();
        is_live(expires_at, now_ms).then(|| value.to_vec())
    }))
}

fn write_record(
    table: &mut redb::Table<&'static str, (u64, &'static [u8])>,
    key: &str,
    value: Option<&[u8]>,
    expires_at_ms: Option<u64>,
    now_ms: u64,
) -> Result<(), StoreError> {
    match value {
        Some(value) if is_live_opt(expires_at_ms, now_ms) => {
            table.insert(key, (expires_at_ms.unwrap_or(NEVER), value))?;
        }
        _ => {
            table.remove(key)?;
        }
    }
    Ok(())
}

/// Removes the expired members of `set`.
fn prune_set(
    table: &mut redb::Table<(&'static str, &'static str), u64>,
    set: &str,
    now_ms: u64,
) -> Result<(), StoreError> {
    let mut expired = Vec::new();
    for item in table.range((set, "")..)? {
        let (key, at) = item?;
        let (owner, member) = key.value();
        if owner != set {
            break;
        }
        if !is_live(at.value(), now_ms) {
            expired.push(member.to_owned());
        }
    }
    for member in expired {
        table.remove((set, member.as_str()))?;
    }
    Ok(())
}

fn lane_code(lane: QueueLane) -> u8 {
    match lane {
        QueueLane::Pending => 0,
        QueueLane::Dead => 1,
    }
}

fn lane_of(code: u8) -> Result<QueueLane, StoreError> {
    match code {
        0 => Ok(QueueLane::Pending),
        1 => Ok(QueueLane::Dead),
        other => Err(StoreError::CorruptData(format!("queue lane {other}"))),
    }
}

fn queue_lane_size(txn: &WriteTransaction, queue: &str, lane: QueueLane) -> Result<u64, StoreError> {
    Ok(txn.open_table(QUEUE_SIZES)?.get((queue, lane_code(lane)))?.map_or(0, |g| g.value()))
}

fn queue_adjust_size(
    txn: &WriteTransaction,
    queue: &str,
    lane: QueueLane,
    up: bool,
) -> Result<(), StoreError> {
    let size = queue_lane_size(txn, queue, lane)?;
    let next = if up { size.saturating_add(1) } else { size.saturating_sub(1) };
    let mut sizes = txn.open_table(QUEUE_SIZES)?;
    if next == 0 {
        sizes.remove((queue, lane_code(lane)))?;
    } else {
        sizes.insert((queue, lane_code(lane)), next)?;
    }
    Ok(())
}

/// The entry's lane, time and data.
fn queue_get(
    txn: &WriteTransaction,
    queue: &str,
    id: &str,
) -> Result<Option<(QueueLane, u64, Vec<u8>)>, StoreError> {
    let entries = txn.open_table(QUEUE_ENTRIES)?;
    let Some(guard) = entries.get((queue, id))? else {
        return Ok(None);
    };
    let (lane, at, data) = guard.value();
    Ok(Some((lane_of(lane)?, at, data.to_vec())))
}

fn queue_remove(
    txn: &WriteTransaction,
    queue: &str,
    id: &str,
) -> Result<Option<(QueueLane, u64, Vec<u8>)>, StoreError> {
    let Some((lane, at, data)) = queue_get(txn, queue, id)? else {
        return Ok(None);
    };
    txn.open_table(QUEUE_ENTRIES)?.remove((queue, id))?;
    txn.open_table(QUEUE_ORDER)?.remove((queue, lane_code(lane), at, id))?;
    queue_adjust_size(txn, queue, lane, false)?;
    Ok(Some((lane, at, data)))
}

fn queue_insert(
    txn: &WriteTransaction,
    queue: &str,
    id: &str,
    lane: QueueLane,
    at_ms: u64,
    data: &[u8],
) -> Result<(), StoreError> {
    queue_remove(txn, queue, id)?;
    txn.open_table(QUEUE_ENTRIES)?.insert((queue, id), (lane_code(lane), at_ms, data))?;
    txn.open_table(QUEUE_ORDER)?.insert((queue, lane_code(lane), at_ms, id), ())?;
    queue_adjust_size(txn, queue, lane, true)
}

/// Up to `limit` (at_ms, id) of a lane, oldest first, stopping after `until_ms`.
fn queue_order(
    table: &impl ReadableTable<(&'static str, u8, u64, &'static str), ()>,
    queue: &str,
    lane: QueueLane,
    until_ms: u64,
    limit: usize,
) -> Result<Vec<(u64, String)>, StoreError> {
    let code = lane_code(lane);
    let mut out = Vec::new();
    if limit == 0 {
        return Ok(out);
    }
    for item in table.range((queue, code, 0u64, "")..(queue, code + 1, 0u64, ""))? {
        let (key, _) = item?;
        let (_, _, at, id) = key.value();
        if at > until_ms {
            break;
        }
        out.push((at, id.to_owned()));
        if out.len() == limit {
            break;
        }
    }
    Ok(out)
}

fn log_last_seq(txn: &WriteTransaction, log: &str) -> Result<u64, StoreError> {
    Ok(txn.open_table(LOGS)?.get(log)?.map_or(0, |g| g.value()))
}

fn log_push(txn: &WriteTransaction, log: &str, entry: &[u8]) -> Result<u64, StoreError> {
    let mut logs = txn.open_table(LOGS)?;
    let seq = logs.get(log)?.map_or(0, |g| g.value()) + 1;
    logs.insert(log, seq)?;
    txn.open_table(LOG_ENTRIES)?.insert((log, seq), entry)?;
    Ok(seq)
}

#[async_trait]
impl Store for EmbeddedStore {
    fn backend(&self) -> StoreBackend {
        StoreBackend::Embedded
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|txn| {
            txn.open_table(LOGS)?;
            Ok(())
        })
        .await
    }

    async fn incr_counter(&self, key: &str, delta: i64, ttl_ms: u64, now_ms: u64) -> Result<i64, StoreError> {
        require_positive_ttl(ttl_ms)?;
        let key = key.to_owned();
        self.write(move |txn| {
            let mut table = txn.open_table(COUNTERS)?;
            let (value, expires_at) = match table.get(key.as_str())?.map(|g| g.value()) {
                Some((value, at)) if is_live(at, now_ms) => (value, at),
                _ => (0, now_ms.saturating_add(ttl_ms)),
            };
            let value = value
                .checked_add(delta)
                .ok_or_else(|| StoreError::InvalidArgument("counter overflow".to_owned()))?;
            table.insert(key.as_str(), (value, expires_at))?;
            Ok(value)
        })
        .await
    }

    async fn get_counter(&self, key: &str, now_ms: u64) -> Result<i64, StoreError> {
        let key = key.to_owned();
        self.read(move |txn| {
            let table = txn.open_table(COUNTERS)?;
            Ok(match table.get(key.as_str())?.map(|g| g.value()) {
                Some((value, at)) if is_live(at, now_ms) => value,
                _ => 0,
            })
        })
        .await
    }

    async fn set_add(
        &self,
        set: &str,
        member: &str,
        expires_at_ms: u64,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let (set, member) = (set.to_owned(), member.to_owned());
        self.write(move |txn| {
            let mut table = txn.open_table(SET_MEMBERS)?;
            prune_set(&mut table, &set, now_ms)?;
            let key = (set.as_str(), member.as_str());
            if !is_live(expires_at_ms, now_ms) {
                table.remove(key)?;
                return Ok(false);
            }
            let added = table.insert(key, expires_at_ms)?.is_none();
            Ok(added)
        })
        .await
    }

    async fn set_remove(&self, set: &str, member: &str) -> Result<(), StoreError> {
        let (set, member) = (set.to_owned(), member.to_owned());
        self.write(move |txn| {
            txn.open_table(SET_MEMBERS)?.remove((set.as_str(), member.as_str()))?;
            Ok(())
        })
        .await
    }

    async fn set_contains(&self, set: &str, member: &str, now_ms: u64) -> Result<bool, StoreError> {
        let (set, member) = (set.to_owned(), member.to_owned());
        self.read(move |txn| {
            let table = txn.open_table(SET_MEMBERS)?;
            let at = table.get((set.as_str(), member.as_str()))?.map(|g| g.value());
            Ok(at.is_some_and(|at| is_live(at, now_ms)))
        })
        .await
    }

    async fn set_members(&self, set: &str, now_ms: u64) -> Result<Vec<SetMember>, StoreError> {
        let set = set.to_owned();
        self.write(move |txn| {
            let mut table = txn.open_table(SET_MEMBERS)?;
            prune_set(&mut table, &set, now_ms)?;
            let mut members = Vec::new();
            for item in table.range((set.as_str(), "")..)? {
                let (key, at) = item?;
                let (owner, member) = key.value();
                if owner != set {
                    break;
                }
                members.push(SetMember { member: member.to_owned(), expires_at_ms: at.value() });
            }
            // redb orders by member already; sorting keeps the contract explicit.
            members.sort_by(|a, b| a.member.cmp(&b.member));
            Ok(members)
        })
        .await
    }

    async fn set_scan(
        &self,
        set: &str,
        after: Option<&SetMember>,
        limit: usize,
        now_ms: u64,
    ) -> Result<Vec<SetMember>, StoreError> {
        use std::ops::Bound;
        let set = set.to_owned();
        let after = after.map(|a| a.member.clone());
        self.read(move |txn| {
            let table = txn.open_table(SET_MEMBERS)?;
            let start = match &after {
                Some(member) => Bound::Excluded((set.as_str(), member.as_str())),
                None => Bound::Included((set.as_str(), "")),
            };
            let mut members = Vec::new();
            for item in table.range::<(&str, &str)>((start, Bound::Unbounded))? {
                let (key, at) = item?;
                let (owner, member) = key.value();
                if owner != set || members.len() >= limit.min(MAX_SCAN_SIZE) {
                    break;
                }
                if is_live(at.value(), now_ms) {
                    members.push(SetMember { member: member.to_owned(), expires_at_ms: at.value() });
                }
            }
            Ok(members)
        })
        .await
    }

    async fn record_get(&self, key: &str, now_ms: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let key = key.to_owned();
        self.read(move |txn| live_record(&txn.open_table(RECORDS)?, &key, now_ms)).await
    }

    async fn record_put(
        &self,
        key: &str,
        value: Vec<u8>,
        expires_at_ms: Option<u64>,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let key = key.to_owned();
        self.write(move |txn| {
            let mut table = txn.open_table(RECORDS)?;
            write_record(&mut table, &key, Some(&value), expires_at_ms, now_ms)
        })
        .await
    }

    async fn record_delete(&self, key: &str) -> Result<(), StoreError> {
        let key = key.to_owned();
        self.write(move |txn| {
            txn.open_table(RECORDS)?.remove(key.as_str())?;
            Ok(())
        })
        .await
    }

    async fn record_compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<Vec<u8>>,
        expires_at_ms: Option<u64>,
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let key = key.to_owned();
        let expected = expected.map(<[u8]>::to_vec);
        self.write(move |txn| {
            let mut table = txn.open_table(RECORDS)?;
            if live_record(&table, &key, now_ms)? != expected {
                return Ok(false);
            }
            write_record(&mut table, &key, new.as_deref(), expires_at_ms, now_ms)?;
            Ok(true)
        })
        .await
    }

    async fn claim_once(&self, key: &str, expires_at_ms: u64, now_ms: u64) -> Result<bool, StoreError> {
        super::require_future_claim(expires_at_ms, now_ms)?;
        let key = key.to_owned();
        self.write(move |txn| {
            let mut claims = txn.open_table(CLAIMS)?;
            let mut by_expiry = txn.open_table(CLAIM_EXPIRY)?;
            let held = claims.get(key.as_str())?.map(|g| g.value());
            if held.is_some_and(|at| is_live(at, now_ms)) {
                return Ok(false);
            }
            let mut expired = Vec::new();
            for entry in by_expiry.range::<(u64, &str)>(..=(now_ms, ""))?.take(CLAIM_PRUNE) {
                let (key, _) = entry?;
                let (at, name) = key.value();
                expired.push((at, name.to_owned()));
            }
            for (at, name) in expired {
                by_expiry.remove((at, name.as_str()))?;
                if claims.get(name.as_str())?.is_some_and(|g| g.value() == at) {
                    claims.remove(name.as_str())?;
                }
            }
            if let Some(at) = held {
                by_expiry.remove((at, key.as_str()))?;
            }
            claims.insert(key.as_str(), expires_at_ms)?;
            by_expiry.insert((expires_at_ms, key.as_str()), ())?;
            Ok(true)
        })
        .await
    }

    async fn feed_append(&self, feed: &str, entry: Vec<u8>, now_ms: u64) -> Result<u64, StoreError> {
        let feed = feed.to_owned();
        self.write(move |txn| {
            let mut feeds = txn.open_table(FEEDS)?;
            let (head, trimmed) = feeds.get(feed.as_str())?.map_or((0, 0), |g| g.value());
            let cursor = head + 1;
            feeds.insert(feed.as_str(), (cursor, trimmed))?;
            txn.open_table(FEED_ENTRIES)?.insert((feed.as_str(), cursor), (now_ms, entry.as_slice()))?;
            Ok(cursor)
        })
        .await
    }

    async fn feed_read(&self, feed: &str, after: u64, limit: usize) -> Result<FeedPage, StoreError> {
        let feed = feed.to_owned();
        self.read(move |txn| {
            let feeds = txn.open_table(FEEDS)?;
            let (head, trimmed) = feeds.get(feed.as_str())?.map_or((0, 0), |g| g.value());
            let Some((first, last)) = feed_window(after, limit, head, trimmed) else {
                return Ok(feed_page(after, head, true, Vec::new()));
            };
            let mut entries = Vec::new();
            if first <= last {
                let table = txn.open_table(FEED_ENTRIES)?;
                for item in table.range((feed.as_str(), first)..=(feed.as_str(), last))? {
                    let (key, value) = item?;
                    let (appended_at_ms, data) = value.value();
                    entries.push(FeedEntry { cursor: key.value().1, appended_at_ms, data: data.to_vec() });
                }
            }
            Ok(feed_page(after, head, false, entries))
        })
        .await
    }

    async fn feed_trim(&self, feed: &str, keep_last: usize) -> Result<u64, StoreError> {
        let feed = feed.to_owned();
        self.write(move |txn| {
            let mut feeds = txn.open_table(FEEDS)?;
            let Some((head, trimmed)) = feeds.get(feed.as_str())?.map(|g| g.value()) else {
                return Ok(0);
            };
            let target = head.saturating_sub(keep_last as u64);
            if target <= trimmed {
                return Ok(0);
            }
            let mut entries = txn.open_table(FEED_ENTRIES)?;
            for cursor in trimmed + 1..=target {
                entries.remove((feed.as_str(), cursor))?;
            }
            feeds.insert(feed.as_str(), (head, target))?;
            Ok(target - trimmed)
        })
        .await
    }

    async fn log_append(&self, log: &str, entry: Vec<u8>) -> Result<u64, StoreError> {
        let log = log.to_owned();
        self.write(move |txn| log_push(txn, &log, &entry)).await
    }

    async fn log_append_if_last(
        &self,
        log: &str,
        expected_last_seq: Option<u64>,
        entry: Vec<u8>,
    ) -> Result<u64, LogAppendError> {
        let log = log.to_owned();
        self.write(move |txn| {
            let last = txn
                .open_table(LOGS)
                .map_err(StoreError::from)?
                .get(log.as_str())
                .map_err(StoreError::from)?
                .map_or(0, |g| g.value());
            if last != expected_last_seq.unwrap_or(0) {
                return Err(LogAppendError::Conflict { last_seq: (last > 0).then_some(last) });
            }
            Ok(log_push(txn, &log, &entry)?)
        })
        .await
    }

    async fn log_append_batch_if_last(
        &self,
        log: &str,
        expected_last_seq: Option<u64>,
        entries: Vec<Vec<u8>>,
    ) -> Result<u64, LogAppendError> {
        require_batch_size(&entries)?;
        let log = log.to_owned();
        self.write(move |txn| {
            let last = log_last_seq(txn, &log)?;
            if last != expected_last_seq.unwrap_or(0) {
                return Err(LogAppendError::Conflict { last_seq: (last > 0).then_some(last) });
            }
            let mut seq = last;
            for entry in &entries {
                seq = log_push(txn, &log, entry)?;
            }
            Ok(seq)
        })
        .await
    }

    async fn log_range(&self, log: &str, from_seq: u64, limit: usize) -> Result<Vec<LogEntry>, StoreError> {
        let log = log.to_owned();
        let limit = limit.min(MAX_PAGE_SIZE);
        self.read(move |txn| {
            let table = txn.open_table(LOG_ENTRIES)?;
            let mut entries = Vec::new();
            if limit == 0 {
                return Ok(entries);
            }
            for item in table.range((log.as_str(), from_seq.max(1))..=(log.as_str(), u64::MAX))? {
                let (key, data) = item?;
                entries.push(LogEntry { seq: key.value().1, data: data.value().to_vec() });
                if entries.len() == limit {
                    break;
                }
            }
            Ok(entries)
        })
        .await
    }

    async fn log_last(&self, log: &str) -> Result<Option<LogEntry>, StoreError> {
        let log = log.to_owned();
        self.read(move |txn| {
            let Some(seq) = txn.open_table(LOGS)?.get(log.as_str())?.map(|g| g.value()) else {
                return Ok(None);
            };
            let data = txn
                .open_table(LOG_ENTRIES)?
                .get((log.as_str(), seq))?
                .ok_or_else(|| StoreError::CorruptData(format!("log {log:?} has no entry {seq}")))?
                .value()
                .to_vec();
            Ok(Some(LogEntry { seq, data }))
        })
        .await
    }

    async fn log_trim(&self, log: &str, before_seq: u64) -> Result<u64, StoreError> {
        let log = log.to_owned();
        self.write(move |txn| {
            let last = txn.open_table(LOGS)?.get(log.as_str())?.map_or(0, |g| g.value());
            let mut entries = txn.open_table(LOG_ENTRIES)?;
            let trimmed = match entries.range((log.as_str(), 1)..=(log.as_str(), u64::MAX))?.next() {
                Some(first) => first?.0.value().1 - 1,
                None => return Ok(0),
            };
            let upto = log_trim_point(before_seq, last, trimmed);
            for seq in trimmed + 1..=upto {
                entries.remove((log.as_str(), seq))?;
            }
            Ok(upto.saturating_sub(trimmed))
        })
        .await
    }

    async fn queue_push(
        &self,
        queue: &str,
        id: &str,
        data: Vec<u8>,
        due_at_ms: u64,
        max_pending: usize,
    ) -> Result<bool, StoreError> {
        let (queue, id) = (queue.to_owned(), id.to_owned());
        self.write(move |txn| {
            if queue_get(txn, &queue, &id)?.is_some() {
                return Ok(true);
            }
            if queue_lane_size(txn, &queue, QueueLane::Pending)? >= max_pending as u64 {
                return Ok(false);
            }
            queue_insert(txn, &queue, &id, QueueLane::Pending, due_at_ms, &data)?;
            Ok(true)
        })
        .await
    }

    async fn queue_claim(
        &self,
        queue: &str,
        now_ms: u64,
        lease_ms: u64,
        limit: usize,
    ) -> Result<Vec<QueueEntry>, StoreError> {
        require_positive_lease(lease_ms)?;
        let queue = queue.to_owned();
        let until = now_ms.saturating_add(lease_ms);
        self.write(move |txn| {
            let due = {
                let order = txn.open_table(QUEUE_ORDER)?;
                queue_order(&order, &queue, QueueLane::Pending, now_ms, limit.min(MAX_PAGE_SIZE))?
            };
            let mut claimed = Vec::with_capacity(due.len());
            for (_, id) in due {
                if let Some((_, _, data)) = queue_remove(txn, &queue, &id)? {
                    queue_insert(txn, &queue, &id, QueueLane::Pending, until, &data)?;
                    claimed.push(QueueEntry { id, at_ms: until, data });
                }
            }
            Ok(claimed)
        })
        .await
    }

    async fn queue_settle(
        &self,
        queue: &str,
        id: &str,
        claimed_until_ms: u64,
        outcome: QueueOutcome,
    ) -> Result<Option<u64>, StoreError> {
        let (queue, id) = (queue.to_owned(), id.to_owned());
        self.write(move |txn| {
            match queue_get(txn, &queue, &id)? {
                Some((QueueLane::Pending, at, _)) if at == claimed_until_ms => {}
                _ => return Ok(None),
            }
            Ok(Some(match outcome {
                QueueOutcome::Done => {
                    queue_remove(txn, &queue, &id)?;
                    0
                }
                QueueOutcome::Retry { data, due_at_ms } => {
                    queue_insert(txn, &queue, &id, QueueLane::Pending, due_at_ms, &data)?;
                    0
                }
                QueueOutcome::Dead { data, at_ms, max_dead } => {
                    queue_insert(txn, &queue, &id, QueueLane::Dead, at_ms, &data)?;
                    let size = queue_lane_size(txn, &queue, QueueLane::Dead)?;
                    let excess = usize::try_from(size.saturating_sub(max_dead as u64)).unwrap_or(usize::MAX);
                    let oldest = {
                        let order = txn.open_table(QUEUE_ORDER)?;
                        queue_order(&order, &queue, QueueLane::Dead, u64::MAX, excess)?
                    };
                    for (_, old) in &oldest {
                        queue_remove(txn, &queue, old)?;
                    }
                    oldest.len() as u64
                }
            }))
        })
        .await
    }

    async fn queue_list(
        &self,
        queue: &str,
        lane: QueueLane,
        limit: usize,
    ) -> Result<Vec<QueueEntry>, StoreError> {
        let queue = queue.to_owned();
        self.read(move |txn| {
            let order = txn.open_table(QUEUE_ORDER)?;
            let entries = txn.open_table(QUEUE_ENTRIES)?;
            let mut out = Vec::new();
            for (at_ms, id) in queue_order(&order, &queue, lane, u64::MAX, limit.min(MAX_PAGE_SIZE))? {
                let data = entries
                    .get((queue.as_str(), id.as_str()))?
                    .ok_or_else(|| StoreError::CorruptData(format!("queue {queue:?} has no entry {id:?}")))?
                    .value()
                    .2
                    .to_vec();
                out.push(QueueEntry { id, at_ms, data });
            }
            Ok(out)
        })
        .await
    }

    async fn queue_revive(
        &self,
        queue: &str,
        id: &str,
        data: Vec<u8>,
        due_at_ms: u64,
        max_pending: usize,
    ) -> Result<QueueRevive, StoreError> {
        let (queue, id) = (queue.to_owned(), id.to_owned());
        self.write(move |txn| {
            if !matches!(queue_get(txn, &queue, &id)?, Some((QueueLane::Dead, _, _))) {
                return Ok(QueueRevive::NotDead);
            }
            if queue_lane_size(txn, &queue, QueueLane::Pending)? >= max_pending as u64 {
                return Ok(QueueRevive::PendingFull);
            }
            queue_insert(txn, &queue, &id, QueueLane::Pending, due_at_ms, &data)?;
            Ok(QueueRevive::Revived)
        })
        .await
    }

    async fn queue_delete(&self, queue: &str, lane: QueueLane, id: &str) -> Result<bool, StoreError> {
        let (queue, id) = (queue.to_owned(), id.to_owned());
        self.write(move |txn| {
            if !matches!(queue_get(txn, &queue, &id)?, Some((l, _, _)) if l == lane) {
                return Ok(false);
            }
            queue_remove(txn, &queue, &id)?;
            Ok(true)
        })
        .await
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
        let key = key.to_owned();
        self.write_with(self.rate_limit_durability(now_ms), move |txn| {
            let mut table = txn.open_table(RATE_LIMITS)?;
            let tat_us = table.get(key.as_str())?.map_or(0, |g| g.value());
            let (next, result) = rate_limit::apply(limit, unit, op, GcraState { tat_us }, now_ms);
            if rate_limit::is_forgettable(next, now_ms) {
                table.remove(key.as_str())?;
            } else {
                table.insert(key.as_str(), next.tat_us)?;
            }
            Ok(result)
        })
        .await
    }
}

impl From<redb::Error> for StoreError {
    fn from(error: redb::Error) -> Self {
        match error {
            redb::Error::Io(e) => StoreError::Unavailable(format!("embedded store I/O: {e}")),
            redb::Error::Corrupted(e) => StoreError::CorruptData(e),
            redb::Error::ValueTooLarge(n) => {
                StoreError::InvalidArgument(format!("value of {n} bytes is too large"))
            }
            other => StoreError::Backend(other.to_string()),
        }
    }
}

macro_rules! redb_error_into_store_error {
    ($($ty:ty),*) => {$(
        impl From<$ty> for StoreError {
            fn from(error: $ty) -> Self {
                StoreError::from(redb::Error::from(error))
            }
        }
    )*};
}

redb_error_into_store_error!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn durable(store: &EmbeddedStore, now_ms: u64) -> bool {
        matches!(store.rate_limit_durability(now_ms), Durability::Immediate)
    }

    #[test]
    fn rate_limit_commits_reach_the_disk_once_per_sync_interval() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert!(durable(&store, RATE_LIMIT_SYNC_MS), "the first one");
        assert!(!durable(&store, RATE_LIMIT_SYNC_MS + 1));
        assert!(!durable(&store, 2 * RATE_LIMIT_SYNC_MS - 1));
        assert!(durable(&store, 2 * RATE_LIMIT_SYNC_MS));
        assert!(!durable(&store, 2 * RATE_LIMIT_SYNC_MS), "once per interval");
        assert!(durable(&store, 5), "a clock that went back restarts the interval");
        assert!(!durable(&store, 6));
    }
}
