//! The Lua scripts behind every multi-step Redis operation.
//!
//! A script runs atomically on the server, so a read-decide-write sequence cannot
//! interleave with another client's. Each script documents its KEYS and ARGV and why it
//! must be a script. Rules all scripts follow:
//!
//! - Time comes in ARGV (`now_ms`, expiry instants), never from the server's clock, so
//!   expiry is decided exactly as in the other backends. `PEXPIRE` is set only as
//!   garbage collection (remaining lifetime plus a grace period).
//! - Numbers that must stay exact (timestamps, cursors) are computed in Rust and passed
//!   as strings, or produced by Redis integer commands (`HINCRBY`, `INCR`); Lua's
//!   doubles only compare them. The one exception, [`GCRA`], computes with bounded
//!   integers that doubles hold exactly (see there).
//! - Redis Cluster: all KEYS of one call share a hash tag (see `keys.rs`), hence one
//!   slot, as each script's `Cluster:` line says; a script touches no key it was not
//!   given in KEYS. The store suite runs every script on a real cluster, where a
//!   breach of this rule is a `CROSSSLOT` error.

use std::sync::LazyLock;

use redis::Script;

/// Increment a fixed-window counter.
///
/// KEYS[1]: counter hash (`v` value, `x` window expiry ms)
/// ARGV[1]: delta; ARGV[2]: now_ms; ARGV[3]: expiry of a new window (now + ttl);
/// ARGV[4]: GC lifetime of a new window in ms (ttl + grace)
///
/// Cluster: one key, so one slot.
///
/// Why a script: deciding that the window expired, resetting it and incrementing must
/// be one step, or two clients could both reset and lose an increment.
pub static INCR_COUNTER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local x = redis.call('HGET', KEYS[1], 'x')
if (not x) or tonumber(x) <= tonumber(ARGV[2]) then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[1], 'x', ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
return redis.call('HINCRBY', KEYS[1], 'v', ARGV[1])
",
    )
});

/// Add a member to an expiring set, or replace its expiry.
///
/// KEYS[1]: sorted set (score = member expiry ms)
/// ARGV[1]: member; ARGV[2]: expires_at_ms; ARGV[3]: now_ms; ARGV[4]: GC grace ms
/// Returns 1 if the member was not live before, else 0.
///
/// Cluster: one key, so one slot.
///
/// Why a script: pruning, adding and extending the key's GC lifetime to the newest
/// member must see one consistent set.
pub static SET_ADD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
if tonumber(ARGV[2]) <= tonumber(ARGV[3]) then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 0
end
local added = redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
local newest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
local lifetime = tonumber(newest[2]) - tonumber(ARGV[3]) + tonumber(ARGV[4])
redis.call('PEXPIRE', KEYS[1], string.format('%d', lifetime))
return added
",
    )
});

/// Prune expired members and list the rest.
///
/// KEYS[1]: sorted set; ARGV[1]: now_ms
/// Returns a flat array member, score, member, score, ...
///
/// Cluster: one key, so one slot.
///
/// Why a script: the listing must not include members the prune just decided were
/// expired, and pruning belongs with the read that needs it.
pub static SET_MEMBERS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
return redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
",
    )
});

/// One page of a scan over a set, in the sorted set's own order (score = expiry, then
/// member, byte-wise).
///
/// KEYS[1]: sorted set; ARGV[1]: now_ms; ARGV[2]: limit; ARGV[3]: the score of the
/// member the previous page ended with ('' to start); ARGV[4]: that member.
/// Returns a flat array member, score, member, score, ...
///
/// The page starts right after the position (score, member), found in O(log n)
/// whether or not that member is still in the set: the rank of `member .. "\0"`, which
/// sorts immediately after it, inserted at that score and removed again within the
/// script (so nobody ever sees it). Expired members (score <= now) sort first and are
/// skipped. If the position member itself was given another expiry meanwhile, the
/// probe cannot be placed; the page then starts at the first member of the old score,
/// which may repeat a few members but never skips one.
///
/// Why a script: the probe must be invisible, and the rank it yields must describe the
/// same snapshot the page is read from.
pub static SET_SCAN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local start = redis.call('ZCOUNT', KEYS[1], '-inf', ARGV[1])
if ARGV[3] ~= '' then
  local probe = ARGV[4] .. '\0'
  local existing = redis.call('ZSCORE', KEYS[1], probe)
  local rank
  if existing == false then
    redis.call('ZADD', KEYS[1], ARGV[3], probe)
    rank = redis.call('ZRANK', KEYS[1], probe)
    redis.call('ZREM', KEYS[1], probe)
  elseif tonumber(existing) == tonumber(ARGV[3]) then
    rank = redis.call('ZRANK', KEYS[1], probe)
  else
    rank = redis.call('ZCOUNT', KEYS[1], '-inf', '(' .. ARGV[3])
  end
  if rank > start then
    start = rank
  end
end
return redis.call('ZRANGE', KEYS[1], start, start + tonumber(ARGV[2]) - 1, 'WITHSCORES')
",
    )
});

/// Write a record with an expiry.
///
/// KEYS[1]: record hash (`v` value, `x` expiry ms)
/// ARGV[1]: value; ARGV[2]: expires_at_ms; ARGV[3]: GC lifetime ms
///
/// Cluster: one key, so one slot.
///
/// Why a script: readers must never see the new value with the old expiry (or none).
/// Records without expiry are written with a plain `DEL` + `HSET` in `MULTI`.
pub static RECORD_PUT_EXPIRING: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'x', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
",
    )
});

/// Compare-and-swap a record.
///
/// KEYS[1]: record hash
/// ARGV[1]: now_ms
/// ARGV[2]: '1' if a live value equal to ARGV[3] is expected, '0' if the record must be
///          absent or expired
/// ARGV[3]: expected value
/// ARGV[4]: '1' to write ARGV[5], '0' to delete the record
/// ARGV[5]: new value
/// ARGV[6]: new expires_at_ms, or '' for none
/// ARGV[7]: GC lifetime ms (when ARGV[6] is set)
/// Returns 1 if swapped, 0 if the current value did not match.
///
/// Cluster: one key, so one slot.
///
/// Why a script: compare and write must be atomic; single-use refresh tokens and the
/// one-current-signing-key rule depend on exactly one writer winning.
pub static RECORD_COMPARE_AND_SWAP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cur = redis.call('HMGET', KEYS[1], 'v', 'x')
local v = cur[1]
if v and cur[2] and tonumber(cur[2]) <= tonumber(ARGV[1]) then
  v = false
end
if ARGV[2] == '1' then
  if (not v) or v ~= ARGV[3] then return 0 end
elseif v then
  return 0
end
redis.call('DEL', KEYS[1])
if ARGV[4] == '1' then
  if ARGV[6] == '' then
    redis.call('HSET', KEYS[1], 'v', ARGV[5])
  else
    redis.call('HSET', KEYS[1], 'v', ARGV[5], 'x', ARGV[6])
    redis.call('PEXPIRE', KEYS[1], ARGV[7])
  end
end
return 1
",
    )
});

/// Append to a change feed.
///
/// KEYS[1]: feed meta hash (`seq` newest cursor, `trimmed` newest trimmed cursor)
/// KEYS[2]: feed entries hash (cursor -> encoded entry)
/// ARGV[1]: encoded entry (append time + data)
/// Returns the new cursor.
///
/// Cluster: both keys carry the hash tag `{feed:<name>}`, so one slot.
///
/// Why a script: a reader must never see a cursor without its entry.
pub static FEED_APPEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cursor = redis.call('HINCRBY', KEYS[1], 'seq', 1)
redis.call('HSET', KEYS[2], cursor, ARGV[1])
return cursor
",
    )
});

/// Read a page of a change feed.
///
/// KEYS[1]: feed meta hash; KEYS[2]: feed entries hash
/// ARGV[1]: after (cursor); ARGV[2]: limit
/// Returns {head, too_old (0/1), cursor1, entry1, cursor2, entry2, ...}.
///
/// Cluster: both keys carry the hash tag `{feed:<name>}`, so one slot.
///
/// Why a script: the head, the trim point and the entries must come from one snapshot,
/// or a concurrent trim could make a page silently skip entries.
pub static FEED_READ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local head = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
local trimmed = tonumber(redis.call('HGET', KEYS[1], 'trimmed') or '0')
local after = tonumber(ARGV[1])
if after < trimmed or after > head then
  return {head, 1}
end
local out = {head, 0}
local last = math.min(head, after + tonumber(ARGV[2]))
for cursor = after + 1, last do
  local entry = redis.call('HGET', KEYS[2], cursor)
  if entry then
    table.insert(out, cursor)
    table.insert(out, entry)
  end
end
return out
",
    )
});

/// Trim a change feed to its newest entries.
///
/// KEYS[1]: feed meta hash; KEYS[2]: feed entries hash
/// ARGV[1]: keep_last
/// Returns how many entries were dropped.
///
/// Cluster: both keys carry the hash tag `{feed:<name>}`, so one slot.
///
/// Why a script: the entries and the trim point readers compare against must change
/// together.
pub static FEED_TRIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local head = tonumber(redis.call('HGET', KEYS[1], 'seq') or '0')
local trimmed = tonumber(redis.call('HGET', KEYS[1], 'trimmed') or '0')
local target = head - tonumber(ARGV[1])
if target <= trimmed then
  return 0
end
for cursor = trimmed + 1, target do
  redis.call('HDEL', KEYS[2], cursor)
end
redis.call('HSET', KEYS[1], 'trimmed', string.format('%d', target))
return target - trimmed
",
    )
});

/// Append to a log.
///
/// KEYS[1]: log sequence string; KEYS[2]: log entries hash
/// ARGV[1]: entry
/// Returns the new sequence number.
///
/// Cluster: both keys carry the hash tag `{log:<name>}`, so one slot.
///
/// Why a script: a reader must never see a sequence number without its entry.
pub static LOG_APPEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local seq = redis.call('INCR', KEYS[1])
redis.call('HSET', KEYS[2], seq, ARGV[1])
return seq
",
    )
});

/// Append to a log only if its last sequence number is as expected.
///
/// KEYS[1]: log sequence string; KEYS[2]: log entries hash
/// ARGV[1]: expected last seq (0: empty log); ARGV[2]: entry
/// Returns {1, new seq} or, on conflict, {0, actual last seq}.
///
/// Cluster: both keys carry the hash tag `{log:<name>}`, so one slot.
///
/// Why a script: check and append must be atomic so a hash chain never forks.
pub static LOG_APPEND_IF_LAST: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
if last ~= tonumber(ARGV[1]) then
  return {0, last}
end
local seq = redis.call('INCR', KEYS[1])
redis.call('HSET', KEYS[2], seq, ARGV[2])
return {1, seq}
",
    )
});

/// Append several entries to a log, only if its last sequence number is as expected.
///
/// KEYS[1]: log sequence string; KEYS[2]: log entries hash
/// ARGV[1]: expected last seq (0: empty log); ARGV[2..]: the entries, in order
/// Returns {1, last new seq} or, on conflict, {0, actual last seq}.
///
/// Cluster: both keys carry the hash tag `{log:<name>}`, so one slot.
///
/// Why a script: a batch is appended whole or not at all, onto the expected head.
pub static LOG_APPEND_BATCH_IF_LAST: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
if last ~= tonumber(ARGV[1]) then
  return {0, last}
end
local seq = last
for i = 2, #ARGV do
  seq = seq + 1
  redis.call('HSET', KEYS[2], seq, ARGV[i])
end
redis.call('SET', KEYS[1], seq)
return {1, seq}
",
    )
});

/// Read a range of a log, starting at its oldest kept entry.
///
/// KEYS[1]: log sequence string; KEYS[2]: log entries hash; KEYS[3]: log trimmed string
/// ARGV[1]: first seq wanted; ARGV[2]: how many (positive)
/// Returns {seq, entry, seq, entry, ...}: the entries of ARGV[2] sequence numbers from
/// the first wanted (or the oldest kept); an entry missing from the hash (deleted
/// behind the store's back) is skipped, so the gap shows.
///
/// Cluster: all keys carry the hash tag `{log:<name>}`, so one slot.
///
/// Why a script: the trim point, the last seq and the entries must come from one moment,
/// or a trim running meanwhile could make the range look empty.
pub static LOG_RANGE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
local trimmed = tonumber(redis.call('GET', KEYS[3]) or '0')
local first = math.max(tonumber(ARGV[1]), trimmed + 1)
local stop = math.min(last, first + tonumber(ARGV[2]) - 1)
local out = {}
for seq = first, stop do
  local entry = redis.call('HGET', KEYS[2], seq)
  if entry then
    out[#out + 1] = seq
    out[#out + 1] = entry
  end
end
return out
",
    )
});

/// Drop a log's entries before a sequence number, never the newest.
///
/// KEYS[1]: log sequence string; KEYS[2]: log entries hash; KEYS[3]: log trimmed string
/// ARGV[1]: drop entries before this seq; ARGV[2]: most entries to drop in this call
/// Returns how many entries were dropped.
///
/// Cluster: all keys carry the hash tag `{log:<name>}`, so one slot.
///
/// Why a script: the entries and the trim point readers start from change together.
pub static LOG_TRIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
local trimmed = tonumber(redis.call('GET', KEYS[3]) or '0')
local upto = math.min(tonumber(ARGV[1]) - 1, last - 1, trimmed + tonumber(ARGV[2]))
if upto <= trimmed then
  return 0
end
for seq = trimmed + 1, upto do
  redis.call('HDEL', KEYS[2], seq)
end
redis.call('SET', KEYS[3], upto)
return upto - trimmed
",
    )
});

/// Add a pending entry to a work queue, within a bound.
///
/// KEYS[1]: pending sorted set (id -> due ms); KEYS[2]: data hash (id -> data)
/// ARGV[1]: id; ARGV[2]: due_at_ms; ARGV[3]: data; ARGV[4]: max pending entries
/// Returns 1 when added (or already there), 0 when the pending lane is full.
///
/// Why a script: counting the pending entries and adding one must be one step, or two
/// clients could both see room for one more and overflow the bound.
pub static QUEUE_PUSH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then
  return 1
end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
return 1
",
    )
});

/// Claim the due entries of a work queue.
///
/// KEYS[1]: pending sorted set; KEYS[2]: data hash
/// ARGV[1]: now_ms; ARGV[2]: claimed until (now + lease); ARGV[3]: limit (≥ 1)
/// Returns {id1, data1, id2, data2, ...}, earliest due first (ties by id).
///
/// Why a script: finding due entries and pushing their due time past the lease must be
/// one step, or two claimers could take the same entry.
pub static QUEUE_CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for _, id in ipairs(ids) do
  redis.call('ZADD', KEYS[1], ARGV[2], id)
  table.insert(out, id)
  table.insert(out, redis.call('HGET', KEYS[2], id) or '')
end
return out
",
    )
});

/// End a claim on a work queue entry.
///
/// KEYS[1]: pending sorted set; KEYS[2]: dead sorted set (id -> ms given up);
/// KEYS[3]: data hash
/// ARGV[1]: id; ARGV[2]: the claim's fence (its due time); ARGV[3]: `done`, `retry`
/// or `dead`; ARGV[4]: new data; ARGV[5]: new due time (`retry`) or when given up
/// (`dead`); ARGV[6]: max dead letters (`dead`)
/// Returns -1 when the claim was lost, else how many old dead letters were dropped.
///
/// Why a script: checking the fence and moving the entry (between keys, within one
/// hash tag) must be one step, or a late claimer could undo a newer claim's work.
pub static QUEUE_SETTLE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local due = redis.call('ZSCORE', KEYS[1], ARGV[1])
if (not due) or tonumber(due) ~= tonumber(ARGV[2]) then
  return -1
end
if ARGV[3] == 'done' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[1])
  return 0
end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[4])
if ARGV[3] == 'retry' then
  redis.call('ZADD', KEYS[1], ARGV[5], ARGV[1])
  return 0
end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[1])
local excess = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[6])
if excess <= 0 then
  return 0
end
local oldest = redis.call('ZRANGE', KEYS[2], 0, excess - 1)
for _, id in ipairs(oldest) do
  redis.call('ZREM', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
end
return #oldest
",
    )
});

/// List one lane of a work queue.
///
/// KEYS[1]: the lane's sorted set; KEYS[2]: data hash
/// ARGV[1]: limit (≥ 1)
/// Returns {id1, at1, data1, ...}, oldest first.
///
/// Why a script: ids and their data must come from one snapshot.
pub static QUEUE_LIST: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local ids = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1, 'WITHSCORES')
local out = {}
for i = 1, #ids, 2 do
  table.insert(out, ids[i])
  table.insert(out, ids[i + 1])
  table.insert(out, redis.call('HGET', KEYS[2], ids[i]) or '')
end
return out
",
    )
});

/// Make a dead letter pending again.
///
/// KEYS[1]: pending sorted set; KEYS[2]: dead sorted set; KEYS[3]: data hash
/// ARGV[1]: id; ARGV[2]: due_at_ms; ARGV[3]: data; ARGV[4]: max pending entries
/// Returns 1 revived, 0 pending lane full, -1 no such dead letter.
///
/// Why a script: the bound check and the move between lanes must be one step.
pub static QUEUE_REVIVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  return -1
end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then
  return 0
end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
return 1
",
    )
});

/// Remove an entry from one lane of a work queue.
///
/// KEYS[1]: the lane's sorted set; KEYS[2]: data hash
/// ARGV[1]: id
/// Returns 1 when removed, 0 when the lane had no such entry.
///
/// Why a script: the entry and its data must go together, and only from that lane.
pub static QUEUE_DELETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('HDEL', KEYS[2], ARGV[1])
  return 1
end
return 0
",
    )
});

/// One GCRA step on a rate-limit counter: `portcullis_core::ratelimit::Gcra` in Lua,
/// mirroring `store::rate_limit::apply` line by line.
///
/// KEYS[1]: counter string (TAT in µs; absent: a full bucket)
/// ARGV[1]: now in µs; ARGV[2]: `T`, the emission interval in µs (≥ 1);
/// ARGV[3]: `limit·T` in µs; ARGV[4]: how long a full bucket is kept, in µs
/// ARGV[5]: op, `check`, `lease` or `release`
/// ARGV[6]: `check`: `cost·T` in µs (0: a free look), or -1 when the cost exceeds the
///          limit (a refusal that changes nothing; Rust answers "never");
///          `lease`: the credit of the units released first (`release·T`, 0: none);
///          `release`: the credit of the units released (`units·T`)
/// ARGV[7]: `lease`: max_lease, clamped to 1..=limit (the core's result is the same)
/// ARGV[8]: `lease`: 2·holders, holders clamped to 1..=limit (likewise)
/// Returns {allowed (0/1), units leased, remaining, reset_after_ms, retry_after_ms}.
///
/// Cluster: one key, so one slot.
///
/// Why a script: reading the TAT, deciding and writing the new TAT must be one step,
/// or two holders could both be granted the same units. Lua numbers are doubles: the
/// caller bounds `now` and `limit` (`store::rate_limit::check_arguments`) and clamps
/// credits to 2⁵³ − 1 so that every value here is an integer below 2⁵³, where double
/// arithmetic, `floor(a / b)` and `ceil(a / b)` are exact. The key expires (PX) that
/// long after the bucket is full again (`store::rate_limit::FORGET_AFTER_FULL_MS`), or
/// is deleted at once if that moment has passed: an absent key is a full bucket.
/// `PX` runs on Redis' clock, the TAT on the callers': the keep time absorbs the skew.
pub static GCRA: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local op = ARGV[5]
local amount = tonumber(ARGV[6])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if not tat then
  return redis.error_reply('rate-limit counter ' .. KEYS[1] .. ' is not a number')
end

local function ceil_ms(us)
  return math.ceil(us / 1000)
end

-- remaining and reset_after_ms of a counter at `t` (Gcra's decision fields)
local function describe(t)
  local debt = math.max(t - now, 0)
  local free = math.max(burst - debt, 0)
  return math.floor(free / interval), ceil_ms(debt)
end

-- Gcra::check: allowed?, the state to store, retry_after_ms
local function check(t, cost_us, free_look)
  local new_tat = math.max(t, now) + cost_us
  local allow_at = new_tat - burst
  if free_look or now >= allow_at then
    return true, new_tat, 0
  end
  return false, t, ceil_ms(allow_at - now)
end

local allowed, units, new_tat, retry = true, 0, tat, 0
if op == 'check' then
  if amount < 0 then
    allowed = false
  else
    allowed, new_tat, retry = check(tat, amount, amount == 0)
  end
elseif op == 'lease' then
  if amount > 0 then
    tat = math.max(tat - amount, now)
  end
  local remaining = describe(tat)
  if remaining > 0 then
    local share = math.floor(remaining / tonumber(ARGV[8]))
    units = math.max(math.min(share, tonumber(ARGV[7])), 1)
  end
  allowed, new_tat, retry = check(tat, math.max(units, 1) * interval, false)
  if not allowed then
    units = 0
  end
elseif op == 'release' then
  new_tat = math.max(tat - amount, now)
else
  return redis.error_reply('unknown rate-limit op ' .. tostring(op))
end

local keep_us = new_tat + tonumber(ARGV[4]) - now
if keep_us > 0 then
  redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', string.format('%d', ceil_ms(keep_us)))
else
  redis.call('DEL', KEYS[1])
end
local remaining, reset_ms = describe(new_tat)
return {allowed and 1 or 0, units, remaining, reset_ms, retry}
",
    )
});
