//! Shared state of the control plane behind one trait, [`Store`].
//!
//! The primitives are deliberately few and general so later features (revocation
//! feeds, quota leases, lockout, API tokens, the audit log) build on them without new
//! backend code:
//!
//! - counters with a fixed window ([`Store::incr_counter`]),
//! - sets whose members expire individually ([`Store::set_add`]),
//! - byte records with optional expiry and compare-and-swap
//!   ([`Store::record_compare_and_swap`]),
//! - ordered change feeds read by cursor ([`Store::feed_read`]),
//! - append-only logs with optimistic appends ([`Store::log_append_if_last`]),
//! - rate-limit counters, one GCRA step per call ([`Store::gcra`], `rate_limit.rs`),
//! - work queues with claims, retries and dead letters ([`Store::queue_claim`]),
//! - one-time claims that expire ([`Store::claim_once`]: set-if-absent with a TTL).
//!
//! Time is always an argument (`now_ms`, milliseconds since the Unix epoch): no
//! backend reads a clock to decide whether something has expired, so every backend
//! behaves the same under an injected clock. Backends may still drop expired data
//! physically later (Redis `PEXPIRE` with a grace period); that is garbage collection,
//! never the source of truth.
//!
//! Backends are named by technology: [`MemoryStore`], [`EmbeddedStore`] (redb, the
//! default) and [`RedisStore`].

pub mod compare_and_swap;
mod embedded;
mod memory;
mod metered;
pub mod rate_limit;
pub mod redis;

use std::fmt;

use async_trait::async_trait;
use portcullis_core::ratelimit::Unit;
use portcullis_core::wire::{RateLimitOp, RateLimitResult};

pub use self::redis::RedisStore;
pub use compare_and_swap::{retry_compare_and_swap, CasRound, CAS_ATTEMPTS};
pub use embedded::EmbeddedStore;
pub use memory::MemoryStore;
pub use metered::MeteredStore;

/// Reads of feeds and logs return at most this many entries per call, whatever the
/// caller asks for, so one call can never stall a backend.
pub const MAX_PAGE_SIZE: usize = 1000;
/// [`Store::log_trim`] drops at most this many entries per call.
pub const MAX_TRIM_SIZE: u64 = 10_000;
/// [`Store::set_scan`] returns at most this many members per call.
pub const MAX_SCAN_SIZE: usize = 10_000;

/// Which technology a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreBackend {
    Memory,
    Embedded,
    Redis,
}

impl StoreBackend {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreBackend::Memory => "memory",
            StoreBackend::Embedded => "embedded",
            StoreBackend::Redis => "redis",
        }
    }
}

impl fmt::Display for StoreBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A live member of an expiring set.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SetMember {
    pub member: String,
    pub expires_at_ms: u64,
}

/// One entry of a change feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedEntry {
    /// Position in the feed; strictly increasing, never reused.
    pub cursor: u64,
    /// The `now_ms` given to [`Store::feed_append`].
    pub appended_at_ms: u64,
    pub data: Vec<u8>,
}

/// The answer to [`Store::feed_read`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedPage {
    /// Entries with a cursor greater than `after`, oldest first.
    pub entries: Vec<FeedEntry>,
    /// Pass this as `after` on the next read: the last returned cursor, or `after`
    /// itself when nothing was returned.
    pub next_cursor: u64,
    /// The reader's cursor cannot be continued: entries after it were trimmed away, or
    /// it is ahead of the feed (the feed was reset, e.g. an emptied Redis). The reader
    /// must rebuild its view from the source of truth and continue from `head`.
    /// `entries` is empty when this is set.
    pub cursor_too_old: bool,
    /// The newest cursor in the feed (0 for a feed never appended to).
    pub head: u64,
}

/// One entry of an append-only log. Sequence numbers start at 1 and have no gaps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub seq: u64,
    pub data: Vec<u8>,
}

/// The two parts of a work queue: entries waiting to be worked on, and entries given up
/// on (dead letters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueueLane {
    Pending,
    Dead,
}

/// One entry of a work queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueEntry {
    pub id: String,
    /// Pending: when the entry is due (for a claimed entry, when its claim lapses: the
    /// claim's fence). Dead: when it was given up on.
    pub at_ms: u64,
    pub data: Vec<u8>,
}

/// How a claimed queue entry ends ([`Store::queue_settle`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueOutcome {
    /// The work is done: the entry is removed.
    Done,
    /// Try again at `due_at_ms`, with `data` replacing the entry's data.
    Retry { data: Vec<u8>, due_at_ms: u64 },
    /// Give up: the entry becomes a dead letter (at `at_ms`, with `data`). Beyond
    /// `max_dead` dead letters the oldest are dropped.
    Dead { data: Vec<u8>, at_ms: u64, max_dead: usize },
}

/// What [`Store::queue_revive`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueRevive {
    /// The dead letter is pending again.
    Revived,
    /// There is no dead letter with that id.
    NotDead,
    /// The pending lane is full; nothing changed.
    PendingFull,
}

/// Why [`Store::log_append_if_last`] did not append.
#[derive(Debug, thiserror::Error)]
pub enum LogAppendError {
    /// Someone else appended first; `last_seq` is the log's actual last sequence
    /// number (`None` for an empty log). Re-read and retry.
    #[error("log append conflict: the last entry is {last_seq:?}")]
    Conflict { last_seq: Option<u64> },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Everything that can go wrong in a store. [`StoreError::is_transient`] tells callers
/// whether retrying (or failing open, where a policy allows it) makes sense.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The backend cannot be reached (connection refused, dropped, I/O failure).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The backend did not answer in time.
    #[error("store timed out: {0}")]
    Timeout(String),
    /// The backend is reachable but temporarily refusing work (loading, failing over).
    #[error("store busy: {0}")]
    Busy(String),
    /// The caller asked for something the store cannot do (e.g. a zero TTL).
    #[error("invalid store request: {0}")]
    InvalidArgument(String),
    /// Stored data does not have the expected shape.
    #[error("corrupt data in store: {0}")]
    CorruptData(String),
    /// A server-side script failed (Redis).
    #[error("store script failed: {0}")]
    Script(String),
    /// Any other permanent backend failure.
    #[error("store backend error: {0}")]
    Backend(String),
}

impl StoreError {
    /// Connection, timeout and busy errors may succeed on retry; the rest will not.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_) | StoreError::Timeout(_) | StoreError::Busy(_))
    }

    /// A stable, low-cardinality name for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::Unavailable(_) => "unavailable",
            StoreError::Timeout(_) => "timeout",
            StoreError::Busy(_) => "busy",
            StoreError::InvalidArgument(_) => "invalid_argument",
            StoreError::CorruptData(_) => "corrupt_data",
            StoreError::Script(_) => "script",
            StoreError::Backend(_) => "backend",
        }
    }
}

/// The control plane's storage primitives. Every operation is atomic on its own.
///
/// Names (`key`, `set`, `feed`, `log`) are free-form strings; each kind of primitive
/// has its own namespace, so a counter and a record may share a name.
#[async_trait]
pub trait Store: Send + Sync {
    fn backend(&self) -> StoreBackend;

    /// Succeeds when the backend can serve requests (readiness).
    async fn ping(&self) -> Result<(), StoreError>;

    // --- counters ----------------------------------------------------------------

    /// Adds `delta` to the counter and returns the new value. A counter that does not
    /// exist or has expired starts a new window at 0 that expires at
    /// `now_ms + ttl_ms`; later increments keep that expiry (a fixed window).
    /// `ttl_ms` must be positive.
    async fn incr_counter(&self, key: &str, delta: i64, ttl_ms: u64, now_ms: u64) -> Result<i64, StoreError>;

    /// The counter's value, 0 when absent or expired.
    async fn get_counter(&self, key: &str, now_ms: u64) -> Result<i64, StoreError>;

    // --- expiring sets -----------------------------------------------------------

    /// Adds `member` (or replaces its expiry) until `expires_at_ms`. Returns whether
    /// the member was not live in the set before. An expiry at or before `now_ms`
    /// removes the member. Expired members are pruned.
    async fn set_add(
        &self,
        set: &str,
        member: &str,
        expires_at_ms: u64,
        now_ms: u64,
    ) -> Result<bool, StoreError>;

    async fn set_remove(&self, set: &str, member: &str) -> Result<(), StoreError>;

    /// Whether `member` is in the set and has not expired at `now_ms`.
    async fn set_contains(&self, set: &str, member: &str, now_ms: u64) -> Result<bool, StoreError>;

    /// The live members, sorted by member; expired members are pruned, never returned.
    async fn set_members(&self, set: &str, now_ms: u64) -> Result<Vec<SetMember>, StoreError>;

    /// One page of a scan over the live members: up to `limit` (capped at
    /// [`MAX_SCAN_SIZE`]) members after `after`, the last member the previous page
    /// returned (`None`: from the start), in the backend's scan order (by member for
    /// memory and embedded; by expiry, then member, for Redis). A member live and
    /// unchanged for the whole scan is returned exactly once, whatever else changes
    /// meanwhile; a member added, removed or given a new expiry during the scan may be
    /// missed or returned twice. An empty page ends the scan. Reads only: expired
    /// members are skipped, not pruned.
    async fn set_scan(
        &self,
        set: &str,
        after: Option<&SetMember>,
        limit: usize,
        now_ms: u64,
    ) -> Result<Vec<SetMember>, StoreError>;

    // --- records -----------------------------------------------------------------

    /// The record's value, `None` when absent or expired at `now_ms`.
    async fn record_get(&self, key: &str, now_ms: u64) -> Result<Option<Vec<u8>>, StoreError>;

    /// Writes the record unconditionally. `expires_at_ms: None` keeps it forever; an
    /// expiry at or before `now_ms` deletes it.
    async fn record_put(
        &self,
        key: &str,
        value: Vec<u8>,
        expires_at_ms: Option<u64>,
        now_ms: u64,
    ) -> Result<(), StoreError>;

    async fn record_delete(&self, key: &str) -> Result<(), StoreError>;

    /// Atomically: if the record's live value equals `expected` (`None`: the record
    /// must be absent or expired), replace it with `new` (`None`: delete it) and
    /// return `true`; otherwise change nothing and return `false`.
    async fn record_compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<Vec<u8>>,
        expires_at_ms: Option<u64>,
        now_ms: u64,
    ) -> Result<bool, StoreError>;

    // --- change feeds ------------------------------------------------------------

    /// Appends an entry and returns its cursor (strictly increasing per feed).
    async fn feed_append(&self, feed: &str, entry: Vec<u8>, now_ms: u64) -> Result<u64, StoreError>;

    /// Up to `limit` (capped at [`MAX_PAGE_SIZE`]) entries after cursor `after`.
    /// Start with `after = 0`.
    async fn feed_read(&self, feed: &str, after: u64, limit: usize) -> Result<FeedPage, StoreError>;

    /// Drops all but the newest `keep_last` entries; returns how many were dropped.
    /// Readers whose cursor falls before the kept entries get `cursor_too_old`.
    async fn feed_trim(&self, feed: &str, keep_last: usize) -> Result<u64, StoreError>;

    // --- append-only logs ---------------------------------------------------------

    /// Appends an entry and returns its sequence number (1, 2, 3, ...).
    async fn log_append(&self, log: &str, entry: Vec<u8>) -> Result<u64, StoreError>;

    /// Appends only if the log's last sequence number is `expected_last_seq` (`None`:
    /// the log is empty). Lets a writer chain each entry to the previous one (a hash
    /// chain) without races: on [`LogAppendError::Conflict`], re-read and retry.
    async fn log_append_if_last(
        &self,
        log: &str,
        expected_last_seq: Option<u64>,
        entry: Vec<u8>,
    ) -> Result<u64, LogAppendError>;

    /// [`Store::log_append_if_last`] for several entries at once: all are appended, in
    /// order and with consecutive sequence numbers, or none. Returns the last one's
    /// sequence number. At most [`MAX_PAGE_SIZE`] entries, at least one.
    async fn log_append_batch_if_last(
        &self,
        log: &str,
        expected_last_seq: Option<u64>,
        entries: Vec<Vec<u8>>,
    ) -> Result<u64, LogAppendError>;

    /// Up to `limit` (capped at [`MAX_PAGE_SIZE`]) entries starting at `from_seq`.
    async fn log_range(&self, log: &str, from_seq: u64, limit: usize) -> Result<Vec<LogEntry>, StoreError>;

    /// The newest entry, `None` for an empty log.
    async fn log_last(&self, log: &str) -> Result<Option<LogEntry>, StoreError>;

    /// Drops the entries before `before_seq` (retention); returns how many were dropped.
    /// The newest entry is always kept, so sequence numbers continue where they were
    /// and [`Store::log_append_if_last`] keeps working. Reads start at the oldest kept
    /// entry. At most [`MAX_TRIM_SIZE`] entries go per call (one call never stalls a
    /// backend): call again until it returns 0.
    async fn log_trim(&self, log: &str, before_seq: u64) -> Result<u64, StoreError>;

    // --- work queues ----------------------------------------------------------------

    /// Adds a pending entry due at `due_at_ms`. Returns false (and changes nothing) when
    /// the queue already has `max_pending` pending entries. An `id` already in the queue
    /// (pending or dead) is left as it is and counts as added, so a retried push never
    /// duplicates an entry.
    async fn queue_push(
        &self,
        queue: &str,
        id: &str,
        data: Vec<u8>,
        due_at_ms: u64,
        max_pending: usize,
    ) -> Result<bool, StoreError>;

    /// Claims up to `limit` (capped at [`MAX_PAGE_SIZE`]) pending entries due at `now_ms`,
    /// earliest due first (ties by id): each becomes due again at `now_ms + lease_ms`,
    /// so an entry whose claimer died is claimed again once the lease is over. The
    /// returned entries carry that new due time, the claim's fence for
    /// [`Store::queue_settle`]. `lease_ms` must be positive.
    async fn queue_claim(
        &self,
        queue: &str,
        now_ms: u64,
        lease_ms: u64,
        limit: usize,
    ) -> Result<Vec<QueueEntry>, StoreError>;

    /// Ends a claim: applies `outcome` if the entry is still pending and due at
    /// `claimed_until_ms` (nobody claimed it since). Returns `None` when the claim was
    /// lost (the entry is gone, dead, or due at another time), else how many old dead
    /// letters were dropped to make room.
    async fn queue_settle(
        &self,
        queue: &str,
        id: &str,
        claimed_until_ms: u64,
        outcome: QueueOutcome,
    ) -> Result<Option<u64>, StoreError>;

    /// Up to `limit` (capped at [`MAX_PAGE_SIZE`]) entries of one lane, oldest first
    /// (by `at_ms`, ties by id).
    async fn queue_list(
        &self,
        queue: &str,
        lane: QueueLane,
        limit: usize,
    ) -> Result<Vec<QueueEntry>, StoreError>;

    /// Makes a dead letter pending again, due at `due_at_ms`, with `data`, unless the
    /// pending lane already holds `max_pending` entries.
    async fn queue_revive(
        &self,
        queue: &str,
        id: &str,
        data: Vec<u8>,
        due_at_ms: u64,
        max_pending: usize,
    ) -> Result<QueueRevive, StoreError>;

    /// Removes an entry of `lane`; false when there was none.
    async fn queue_delete(&self, queue: &str, lane: QueueLane, id: &str) -> Result<bool, StoreError>;

    // --- one-time claims ------------------------------------------------------------

    /// Claims `key` until `expires_at_ms`: true when no live claim held it (this caller
    /// is the first), false otherwise; a lost claim changes nothing. `expires_at_ms`
    /// must be after `now_ms`. Redis: `SET NX PX` with the remaining time, so Redis's
    /// clock ends the claim there (claims only need to outlive their window). Expired
    /// claims are dropped as new ones are made.
    async fn claim_once(&self, key: &str, expires_at_ms: u64, now_ms: u64) -> Result<bool, StoreError>;

    // --- rate-limit counters ------------------------------------------------------

    /// Applies `op` to the GCRA counter `key` of `limit` per `unit` at `now_ms`, as one
    /// atomic step, with exactly the semantics of `portcullis_core::ratelimit::Gcra`
    /// (see [`rate_limit`]): `lease` refunds `release` units (when > 0) and then
    /// grants a lease, `check` admits or refuses `cost` units, `release` refunds
    /// `units`. An absent counter is a full bucket; a counter whose bucket has been
    /// full for [`rate_limit::FORGET_AFTER_FULL_MS`] is deleted (Redis: the key expires
    /// then), so idle counters vanish.
    ///
    /// `limit` must be in `1..=`[`rate_limit::MAX_LIMIT`] and `now_ms` at most
    /// [`rate_limit::MAX_NOW_MS`], else [`StoreError::InvalidArgument`].
    async fn gcra(
        &self,
        key: &str,
        limit: u64,
        unit: Unit,
        op: RateLimitOp,
        now_ms: u64,
    ) -> Result<RateLimitResult, StoreError>;
}

fn require_positive_lease(lease_ms: u64) -> Result<(), StoreError> {
    if lease_ms == 0 {
        return Err(StoreError::InvalidArgument("a queue claim's lease must be positive".to_owned()));
    }
    Ok(())
}

fn require_batch_size(entries: &[Vec<u8>]) -> Result<(), StoreError> {
    if entries.is_empty() || entries.len() > MAX_PAGE_SIZE {
        return Err(StoreError::InvalidArgument(format!("a log batch holds 1 to {MAX_PAGE_SIZE} entries")));
    }
    Ok(())
}

fn require_future_claim(expires_at_ms: u64, now_ms: u64) -> Result<(), StoreError> {
    if !is_live(expires_at_ms, now_ms) {
        return Err(StoreError::InvalidArgument("a claim must expire after now".to_owned()));
    }
    Ok(())
}

fn require_positive_ttl(ttl_ms: u64) -> Result<(), StoreError> {
    if ttl_ms == 0 {
        return Err(StoreError::InvalidArgument("a counter TTL must be positive".to_owned()));
    }
    Ok(())
}

/// Whether something expiring at `expires_at_ms` is still live at `now_ms`.
/// Expiry is exclusive: at `expires_at_ms` itself it is gone.
fn is_live(expires_at_ms: u64, now_ms: u64) -> bool {
    expires_at_ms > now_ms
}

fn is_live_opt(expires_at_ms: Option<u64>, now_ms: u64) -> bool {
    expires_at_ms.is_none_or(|at| is_live(at, now_ms))
}

/// The cursors `feed_read` returns for a feed whose newest cursor is `head` and whose
/// entries up to `trimmed` are gone. `None` means the cursor cannot be continued.
fn feed_window(after: u64, limit: usize, head: u64, trimmed: u64) -> Option<(u64, u64)> {
    if after < trimmed || after > head {
        return None;
    }
    let limit = limit.min(MAX_PAGE_SIZE) as u64;
    let last = head.min(after.saturating_add(limit));
    Some((after.saturating_add(1), last))
}

/// The last sequence number [`Store::log_trim`] may drop in one call, for a log whose
/// newest entry is `last_seq`: before `before_seq`, never the newest entry, at most
/// [`MAX_TRIM_SIZE`] past `trimmed` (the last dropped so far).
fn log_trim_point(before_seq: u64, last_seq: u64, trimmed: u64) -> u64 {
    before_seq.saturating_sub(1).min(last_seq.saturating_sub(1)).min(trimmed.saturating_add(MAX_TRIM_SIZE))
}

fn feed_page(after: u64, head: u64, cursor_too_old: bool, entries: Vec<FeedEntry>) -> FeedPage {
    let next_cursor = entries.last().map_or(after, |e| e.cursor);
    FeedPage { entries, next_cursor, cursor_too_old, head }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_window_rejects_cursors_before_the_trim_point_and_after_the_head() {
        assert_eq!(feed_window(3, 10, 10, 5), None);
        assert_eq!(feed_window(11, 10, 10, 0), None);
        assert_eq!(feed_window(5, 10, 10, 5), Some((6, 10)));
        assert_eq!(feed_window(0, 2, 10, 0), Some((1, 2)));
        assert_eq!(feed_window(10, 2, 10, 0), Some((11, 10)));
    }

    #[test]
    fn feed_window_caps_the_page_size() {
        assert_eq!(feed_window(0, usize::MAX, 5000, 0), Some((1, MAX_PAGE_SIZE as u64)));
    }

    #[test]
    fn only_connection_timeout_and_busy_errors_are_transient() {
        assert!(StoreError::Unavailable("x".into()).is_transient());
        assert!(StoreError::Timeout("x".into()).is_transient());
        assert!(StoreError::Busy("x".into()).is_transient());
        assert!(!StoreError::Script("x".into()).is_transient());
        assert!(!StoreError::CorruptData("x".into()).is_transient());
        assert!(!StoreError::InvalidArgument("x".into()).is_transient());
        assert!(!StoreError::Backend("x".into()).is_transient());
    }
}
