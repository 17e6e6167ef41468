//! Account lockout state: failed logins per account and per client address, kept for
//! every replica in the store. The arithmetic is [`portcullis_core::lockout`]; this
//! module validates what the filter sends, normalises subjects and keeps the state.
//!
//! Raw account names and addresses never reach the store. Each subject is stored
//! under [`account_key`]`(secret, kind, normalised value)`, keyed with
//! [`LockoutSecret`], a subkey derived from the master key:
//!
//! - record `lockout/<hash>`: the subject's [`LockoutState`] as JSON — failures, lock,
//!   escalation and the reservations of the attempts in flight — plus the policy that
//!   wrote it; it expires once neither its failures, its reservations nor its
//!   escalation can matter any more;
//! - set [`INDEX_SET`]: members `<kind>:<hash>` expiring with their record, so admins
//!   can list the subjects that are failing or locked.
//!
//! Every change to a record is one compare-and-swap of the whole record ([`update`]),
//! retried when another writer got there first. That makes a reservation atomic on
//! every backend and across replicas sharing the store: a check reserves an attempt
//! only on the exact state it read, so no two checks can take the same last attempt.
//! On Redis each record is one key, its own Cluster hash tag.
//!
//! Normalisation: accounts are trimmed and lowercased; addresses are parsed and
//! printed canonically, with IPv4-mapped IPv6 addresses (`::ffff:192.0.2.7`) folded to
//! IPv4. A success forgets the *account* subjects of a report only (see
//! [`LoginOutcome::Success`]).

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use portcullis_core::lockout::{account_key, LockoutPolicy, LockoutState, Reservation};
use portcullis_core::wire::{
    LockoutReply, LockoutSubject, LoginOutcome, SubjectKind, SubjectLock, MAX_BATCH,
};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::master_key::MasterKey;
use crate::store::{retry_compare_and_swap, CasRound, Store, StoreError};

/// Purpose string of the subkey that keys subject hashes.
pub const LOCKOUT_KEY_PURPOSE: &str = "portcullis lockout v1";
/// Set indexing failing and locked subjects (`<kind>:<hash>`).
pub const INDEX_SET: &str = "lockouts";
/// Longest subject value accepted (bytes, before normalisation).
pub const MAX_VALUE_BYTES: usize = 512;
/// Longest window or lock a policy may ask for: 30 days.
pub const MAX_POLICY_MS: u64 = 30 * 86_400_000;
/// Most failures a policy may count. (More than
/// [`portcullis_core::lockout::MAX_TRACKED_FAILURES`] count as that many.)
pub const MAX_POLICY_FAILURES: u32 = 1000;
/// Most entries `GET /admin/v1/lockouts` returns.
pub const MAX_LISTED: usize = 1000;
/// Longest reservation a check may ask for: 10 minutes.
pub const MAX_RESERVATION_TTL_MS: u64 = 600_000;
/// Longest reservation id a report may name.
pub const MAX_RESERVATION_ID_LEN: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum LockoutError {
    /// Bad policy, batch or subject; the message names the field.
    #[error("{0}")]
    InvalidRequest(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("lockout state changed concurrently too often; retry")]
    Contended,
}

fn invalid(message: impl Into<String>) -> LockoutError {
    LockoutError::InvalidRequest(message.into())
}

/// The key of subject hashes: HMAC-SHA256(master key, [`LOCKOUT_KEY_PURPOSE`]).
pub struct LockoutSecret(Zeroizing<[u8; 32]>);

impl fmt::Debug for LockoutSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LockoutSecret(..)")
    }
}

impl LockoutSecret {
    pub fn derive(master: &MasterKey) -> Self {
        Self(master.derive_subkey(LOCKOUT_KEY_PURPOSE))
    }

    /// The subject's hash (64 hex digits); `value` must be normalised already.
    fn hash(&self, kind: SubjectKind, normalised: &str) -> String {
        account_key(self.0.as_slice(), kind.as_str(), normalised)
    }

    /// Validates and normalises a raw subject, then hashes it.
    pub fn subject_key(&self, kind: SubjectKind, value: &str) -> Result<SubjectKey, LockoutError> {
        let normalised = normalise(kind, value).map_err(LockoutError::InvalidRequest)?;
        Ok(SubjectKey { kind, hash: self.hash(kind, &normalised) })
    }
}

/// Where one subject's state lives.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SubjectKey {
    pub kind: SubjectKind,
    /// [`account_key`] of the normalised value.
    pub hash: String,
}

impl SubjectKey {
    fn record(&self) -> String {
        format!("lockout/{}", self.hash)
    }

    fn index_member(&self) -> String {
        format!("{}:{}", self.kind.as_str(), self.hash)
    }

    fn from_index_member(member: &str) -> Option<Self> {
        let (kind, hash) = member.split_once(':')?;
        let kind = match kind {
            "account" => SubjectKind::Account,
            "ip" => SubjectKind::Ip,
            _ => return None,
        };
        Some(Self { kind, hash: hash.to_owned() })
    }
}

/// The canonical form of a subject value: accounts trimmed and lowercased, addresses
/// parsed and printed canonically (IPv4-mapped IPv6 as IPv4). The error says why the
/// value is refused.
pub fn normalise(kind: SubjectKind, value: &str) -> Result<String, String> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(format!("at most {MAX_VALUE_BYTES} bytes"));
    }
    match kind {
        SubjectKind::Account => {
            let account = value.trim().to_lowercase();
            if account.is_empty() {
                return Err("an account must not be empty".to_owned());
            }
            Ok(account)
        }
        SubjectKind::Ip => {
            let ip: IpAddr = value.trim().parse().map_err(|_| "not an IPv4 or IPv6 address".to_owned())?;
            Ok(ip.to_canonical().to_string())
        }
    }
}

/// Refuses policies that make no sense or would keep state for absurdly long.
pub fn validate_policy(policy: &LockoutPolicy) -> Result<(), LockoutError> {
    if !(1..=MAX_POLICY_FAILURES).contains(&policy.max_failures) {
        return Err(invalid(format!("policy.maxFailures: must be 1 to {MAX_POLICY_FAILURES}")));
    }
    for (name, ms) in [
        ("windowMs", policy.window_ms),
        ("baseLockMs", policy.base_lock_ms),
        ("maxLockMs", policy.max_lock_ms),
    ] {
        if !(1..=MAX_POLICY_MS).contains(&ms) {
            return Err(invalid(format!("policy.{name}: must be 1 to {MAX_POLICY_MS} (30 days)")));
        }
    }
    if policy.base_lock_ms > policy.max_lock_ms {
        return Err(invalid("policy.baseLockMs: must not exceed policy.maxLockMs"));
    }
    Ok(())
}

/// Validates a batch of raw subjects and turns them into keys, in order.
pub fn subject_keys(
    secret: &LockoutSecret,
    subjects: &[LockoutSubject],
) -> Result<Vec<SubjectKey>, LockoutError> {
    if subjects.len() > MAX_BATCH {
        return Err(invalid(format!("subjects: at most {MAX_BATCH} per call")));
    }
    subjects
        .iter()
        .enumerate()
        .map(|(i, s)| {
            normalise(s.kind, &s.value)
                .map(|n| SubjectKey { kind: s.kind, hash: secret.hash(s.kind, &n) })
                .map_err(|why| invalid(format!("subjects[{i}].value: {why}")))
        })
        .collect()
}

/// What is stored under `lockout/<hash>`: the core state (with the attempts in
/// flight), plus the policy that wrote it last (for the admin view, which has no policy
/// at hand). `window_ms` is that policy's window, kept for records written before the
/// policy was stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredState {
    #[serde(flatten)]
    state: LockoutState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    policy: Option<LockoutPolicy>,
    #[serde(default)]
    window_ms: u64,
}

impl StoredState {
    /// The policy to read the record with when the caller has none.
    fn policy(&self) -> LockoutPolicy {
        self.policy.unwrap_or(LockoutPolicy { window_ms: self.window_ms, ..LockoutPolicy::default() })
    }
}

fn failures_within(state: &LockoutState, window_ms: u64, now_ms: u64) -> u32 {
    let n = state.failures.iter().filter(|t| now_ms.saturating_sub(**t) < window_ms).count();
    u32::try_from(n).unwrap_or(u32::MAX)
}

async fn read(
    store: &dyn Store,
    key: &SubjectKey,
    now_ms: u64,
) -> Result<(Option<Vec<u8>>, StoredState), LockoutError> {
    let record = key.record();
    match store.record_get(&record, now_ms).await? {
        None => Ok((None, StoredState::default())),
        Some(raw) => {
            let state = serde_json::from_slice(&raw)
                .map_err(|e| StoreError::CorruptData(format!("{record}: {e}")))?;
            Ok((Some(raw), state))
        }
    }
}

/// A subject's state as it stands at `now_ms`: reservations that expired count as
/// failures.
async fn current(
    store: &dyn Store,
    policy: &LockoutPolicy,
    key: &SubjectKey,
    now_ms: u64,
) -> Result<LockoutState, LockoutError> {
    let (_, stored) = read(store, key, now_ms).await?;
    Ok(policy.expire_reservations(&stored.state, now_ms))
}

fn lock_of(kind: SubjectKind, state: &LockoutState, policy: &LockoutPolicy, now_ms: u64) -> SubjectLock {
    SubjectLock {
        kind,
        locked_for_ms: policy.locked_for_ms(state, now_ms),
        failures: failures_within(state, policy.window_ms, now_ms),
        in_flight: u32::try_from(state.pending.len()).unwrap_or(u32::MAX),
    }
}

fn reply(subjects: Vec<SubjectLock>) -> LockoutReply {
    LockoutReply {
        locked_for_ms: subjects.iter().map(|s| s.locked_for_ms).max().unwrap_or(0),
        subjects,
        ..LockoutReply::default()
    }
}

/// Each key once, in the order of first appearance (a subject named twice in one call
/// counts once).
fn distinct(keys: &[SubjectKey]) -> Vec<&SubjectKey> {
    let mut out: Vec<&SubjectKey> = Vec::with_capacity(keys.len());
    for key in keys {
        if !out.contains(&key) {
            out.push(key);
        }
    }
    out
}

/// The reply for `keys` (duplicates included, in order) from each distinct key's state.
fn reply_for(
    keys: &[SubjectKey],
    states: &HashMap<&SubjectKey, LockoutState>,
    policy: &LockoutPolicy,
    now_ms: u64,
) -> LockoutReply {
    reply(
        keys.iter()
            .map(|k| {
                let state = states.get(k).cloned().unwrap_or_default();
                lock_of(k.kind, &state, policy, now_ms)
            })
            .collect(),
    )
}

/// `POST /v1/lockout/check` without a reservation: each subject's lock now. Reads only.
pub async fn check(
    store: &dyn Store,
    policy: &LockoutPolicy,
    keys: &[SubjectKey],
    now_ms: u64,
) -> Result<LockoutReply, LockoutError> {
    validate_policy(policy)?;
    let mut states = HashMap::new();
    for key in distinct(keys) {
        states.insert(key, current(store, policy, key, now_ms).await?);
    }
    Ok(reply_for(keys, &states, policy, now_ms))
}

/// Refuses reservation lifetimes outside `1..=`[`MAX_RESERVATION_TTL_MS`].
pub fn validate_reservation_ttl(ttl_ms: u64) -> Result<(), LockoutError> {
    if !(1..=MAX_RESERVATION_TTL_MS).contains(&ttl_ms) {
        return Err(invalid(format!("reservationTtlMs: must be 1 to {MAX_RESERVATION_TTL_MS} (10 minutes)")));
    }
    Ok(())
}

/// Refuses reservation ids that no check hands out (1-64 of `[A-Za-z0-9_-]`).
pub fn validate_reservation_id(id: &str) -> Result<(), LockoutError> {
    let ok = (1..=MAX_RESERVATION_ID_LEN).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !ok {
        return Err(invalid(format!(
            "reservation: 1 to {MAX_RESERVATION_ID_LEN} letters, digits, '-' or '_'"
        )));
    }
    Ok(())
}

/// `POST /v1/lockout/check` with a reservation: takes one of the attempts each subject
/// has left for the attempt `id`, until `now_ms + ttl_ms`, or refuses the attempt.
///
/// Each subject's reservation is one compare-and-swap on its record, so concurrent
/// checks (on any number of replicas sharing the store) can never hold more
/// reservations than a subject has attempts left. An attempt that a subject refuses at
/// a first read is answered without writing. Otherwise subjects are reserved in order;
/// when one refuses (another check took the last attempt in between), the reservations
/// already taken for this attempt are released again (a release that fails leaves a
/// reservation that counts as a failure at its expiry).
/// The reply carries `reservation: id` when every subject was reserved, else the time
/// to retry.
pub async fn reserve(
    store: &dyn Store,
    policy: &LockoutPolicy,
    keys: &[SubjectKey],
    id: &str,
    ttl_ms: u64,
    now_ms: u64,
) -> Result<LockoutReply, LockoutError> {
    validate_policy(policy)?;
    validate_reservation_ttl(ttl_ms)?;
    validate_reservation_id(id)?;
    let reservation = Reservation { id: id.to_owned(), expires_at_ms: now_ms.saturating_add(ttl_ms) };
    let distinct = distinct(keys);
    let mut states: HashMap<&SubjectKey, LockoutState> = HashMap::new();
    // Read first: an attempt some subject refuses anyway (the usual case under attack)
    // is answered without writing anything.
    let mut refused_for_ms = None;
    for key in &distinct {
        let state = current(store, policy, key, now_ms).await?;
        if let Err(retry_ms) = policy.reserve(&state, reservation.clone(), now_ms) {
            refused_for_ms = Some(refused_for_ms.map_or(retry_ms, |r: u64| r.max(retry_ms)));
        }
        states.insert(key, state);
    }
    if let Some(retry_after_ms) = refused_for_ms {
        let mut reply = reply_for(keys, &states, policy, now_ms);
        reply.retry_after_ms = retry_after_ms.max(reply.locked_for_ms);
        return Ok(reply);
    }
    states.clear();
    let mut taken: Vec<&SubjectKey> = Vec::new();
    for key in &distinct {
        let updated =
            update(store, policy, key, now_ms, |s| policy.reserve(s, reservation.clone(), now_ms).ok())
                .await?;
        match updated.after {
            Some(after) => {
                taken.push(key);
                states.insert(key, after);
            }
            None => {
                refused_for_ms = policy.reserve(&updated.before, reservation.clone(), now_ms).err();
                states.insert(key, updated.before);
                break;
            }
        }
    }
    let Some(retry_after_ms) = refused_for_ms else {
        let mut reply = reply_for(keys, &states, policy, now_ms);
        reply.reservation = Some(reservation.id);
        return Ok(reply);
    };
    for key in taken {
        match update(store, policy, key, now_ms, |s| released(policy, s, id)).await {
            Ok(updated) => {
                states.insert(key, updated.after.unwrap_or(updated.before));
            }
            Err(e) => tracing::warn!(
                kind = key.kind.as_str(),
                key_hash = %key.hash,
                error = %e,
                "could not release the reservation of a refused login attempt; it counts as a failure when it expires"
            ),
        }
    }
    for key in distinct {
        if !states.contains_key(key) {
            states.insert(key, current(store, policy, key, now_ms).await?);
        }
    }
    let mut reply = reply_for(keys, &states, policy, now_ms);
    reply.retry_after_ms = retry_after_ms.max(reply.locked_for_ms);
    Ok(reply)
}

/// The state without reservation `id`; `None` when it holds no such reservation.
fn released(policy: &LockoutPolicy, state: &LockoutState, id: &str) -> Option<LockoutState> {
    let (next, found) = policy.release(state, id);
    found.then_some(next)
}

/// What a report did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReportResult {
    pub reply: LockoutReply,
    /// Subjects whose failure started (or escalated) a lock.
    pub locks_started: Vec<SubjectKey>,
}

/// `POST /v1/lockout/report`: settles the attempt's reservation (when named) and
/// records its outcome for each subject (a subject named twice counts once), answering
/// each one's lock after it.
///
/// A failure counts for every subject, whether or not its reservation is still there
/// (an expired one already counted, as the failure it stood for). A success forgets
/// the account subjects' failures and lock, and only settles the address subjects'
/// reservations. An abandoned attempt only settles its reservations.
pub async fn report(
    store: &dyn Store,
    policy: &LockoutPolicy,
    outcome: LoginOutcome,
    keys: &[SubjectKey],
    reservation: Option<&str>,
    now_ms: u64,
) -> Result<ReportResult, LockoutError> {
    validate_policy(policy)?;
    if let Some(id) = reservation {
        validate_reservation_id(id)?;
    }
    let settle = |s: &LockoutState| match reservation {
        Some(id) => policy.release(s, id).0,
        None => s.clone(),
    };
    let mut result = ReportResult::default();
    let mut states = HashMap::new();
    for key in distinct(keys) {
        let updated = match (outcome, key.kind) {
            (LoginOutcome::Failure, _) => {
                update(store, policy, key, now_ms, |s| Some(policy.record_failure(&settle(s), now_ms)))
                    .await?
            }
            (LoginOutcome::Success, SubjectKind::Account) => {
                update(store, policy, key, now_ms, |s| Some(policy.record_success(&settle(s)))).await?
            }
            // One valid account must not wash an address that is trying many others.
            (LoginOutcome::Success, SubjectKind::Ip) | (LoginOutcome::Abandoned, _) => {
                update(store, policy, key, now_ms, |s| reservation.and_then(|id| released(policy, s, id)))
                    .await?
            }
        };
        let after = updated.after.unwrap_or_else(|| updated.before.clone());
        if after.locked_until_ms > updated.before.locked_until_ms {
            result.locks_started.push(key.clone());
        }
        states.insert(key, after);
    }
    result.reply = reply_for(keys, &states, policy, now_ms);
    Ok(result)
}

/// When a stored state stops mattering: its failures leave the window and its
/// escalation is forgotten `window` after the lock ends. At least `window + max lock`
/// after the last moment something can change on its own (now, or the expiry of the
/// latest reservation, which may then count as a failure and lock), so a later policy
/// with the same window still sees the escalation.
fn expiry(policy: &LockoutPolicy, state: &LockoutState, now_ms: u64) -> u64 {
    let horizon = state.pending.iter().map(|r| r.expires_at_ms).fold(now_ms, u64::max);
    let escalation = state.locked_until_ms.max(horizon).saturating_add(policy.window_ms);
    escalation.max(horizon.saturating_add(policy.window_ms).saturating_add(policy.max_lock_ms))
}

/// The outcome of [`update`]: the subject's state as it stood at `now_ms` before the
/// change, and after it (`None`: nothing was written).
struct Updated {
    before: LockoutState,
    after: Option<LockoutState>,
}

/// Changes one subject's record by compare-and-swap, retried while other writers get
/// there first. `change` sees the state as it stands at `now_ms` (expired reservations
/// counted as failures) and returns the new state, or `None` to leave the record as it
/// is. A state left empty is deleted with its index entry.
async fn update(
    store: &dyn Store,
    policy: &LockoutPolicy,
    key: &SubjectKey,
    now_ms: u64,
    change: impl Fn(&LockoutState) -> Option<LockoutState>,
) -> Result<Updated, LockoutError> {
    let (record, change) = (&key.record(), &change);
    // While a subject is full its checks do not write, so they never contend.
    retry_compare_and_swap(LockoutError::Contended, || async move {
        let (raw, stored) = read(store, key, now_ms).await?;
        let before = policy.expire_reservations(&stored.state, now_ms);
        let Some(after) = change(&before) else {
            return Ok(CasRound::Done(Updated { before, after: None }));
        };
        let swapped = if after == LockoutState::default() {
            raw.is_none() || store.record_compare_and_swap(record, raw.as_deref(), None, None, now_ms).await?
        } else {
            let next =
                StoredState { state: after.clone(), policy: Some(*policy), window_ms: policy.window_ms };
            let bytes = serde_json::to_vec(&next)
                .map_err(|e| StoreError::InvalidArgument(format!("cannot encode lockout state: {e}")))?;
            let expires_at_ms = expiry(policy, &after, now_ms);
            let swapped = store
                .record_compare_and_swap(record, raw.as_deref(), Some(bytes), Some(expires_at_ms), now_ms)
                .await?;
            if swapped {
                store.set_add(INDEX_SET, &key.index_member(), expires_at_ms, now_ms).await?;
            }
            swapped
        };
        if !swapped {
            return Ok(CasRound::Lost);
        }
        if raw.is_some() && after == LockoutState::default() {
            store.set_remove(INDEX_SET, &key.index_member()).await?;
        }
        Ok(CasRound::Done(Updated { before, after: Some(after) }))
    })
    .await
}

/// Deletes a subject's state (its in-flight reservations too) and its index entry.
async fn forget(store: &dyn Store, key: &SubjectKey) -> Result<(), LockoutError> {
    store.record_delete(&key.record()).await?;
    store.set_remove(INDEX_SET, &key.index_member()).await?;
    Ok(())
}

/// One subject as the admin API shows it. Only the hash identifies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LockoutInfo {
    pub kind: SubjectKind,
    pub key_hash: String,
    /// Failures within the window of the policy that recorded the last one.
    pub failures: u32,
    pub locked_for_ms: u64,
    /// When the current lock ends (Unix seconds, rounded up); absent when not locked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locked_until: Option<u64>,
    /// Locks in the current escalation (the next one lasts `base · 2^lockCount`).
    pub lock_count: u32,
    /// Login attempts in flight (reserved, outcome not reported yet).
    pub in_flight: u32,
}

/// The admin view of a record, under the policy that wrote it last (expired
/// reservations count as the failures they stand for).
fn info(key: &SubjectKey, stored: &StoredState, now_ms: u64) -> LockoutInfo {
    let policy = stored.policy();
    let state = policy.expire_reservations(&stored.state, now_ms);
    let lock = lock_of(key.kind, &state, &policy, now_ms);
    LockoutInfo {
        kind: key.kind,
        key_hash: key.hash.clone(),
        failures: lock.failures,
        locked_for_ms: lock.locked_for_ms,
        locked_until: (lock.locked_for_ms > 0).then(|| state.locked_until_ms.div_ceil(1000)),
        lock_count: state.lock_count,
        in_flight: lock.in_flight,
    }
}

/// Response of `GET /admin/v1/lockouts`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LockoutList {
    /// Locked subjects first (longest lock first), then by failures.
    pub lockouts: Vec<LockoutInfo>,
    /// More subjects than [`MAX_LISTED`] are tracked; only the first were read.
    pub truncated: bool,
}

/// Every subject with failures or a lock (at most [`MAX_LISTED`]).
pub async fn list(store: &dyn Store, now_ms: u64) -> Result<LockoutList, LockoutError> {
    let members = store.set_members(INDEX_SET, now_ms).await?;
    let truncated = members.len() > MAX_LISTED;
    let mut lockouts = Vec::new();
    for member in members.iter().take(MAX_LISTED) {
        let Some(key) = SubjectKey::from_index_member(&member.member) else {
            continue;
        };
        if let (Some(_), stored) = read(store, &key, now_ms).await? {
            lockouts.push(info(&key, &stored, now_ms));
        }
    }
    lockouts.sort_by(|a, b| b.locked_for_ms.cmp(&a.locked_for_ms).then(b.failures.cmp(&a.failures)));
    Ok(LockoutList { lockouts, truncated })
}

/// One subject by key; `None` when nothing is recorded for it.
pub async fn show(
    store: &dyn Store,
    key: &SubjectKey,
    now_ms: u64,
) -> Result<Option<LockoutInfo>, LockoutError> {
    Ok(match read(store, key, now_ms).await? {
        (Some(_), stored) => Some(info(key, &stored, now_ms)),
        (None, _) => None,
    })
}

/// Forgets a subject's failures, lock and reservations; `None` when nothing was
/// recorded. (Attempts still in flight then report their failures afresh.)
pub async fn clear(
    store: &dyn Store,
    key: &SubjectKey,
    now_ms: u64,
) -> Result<Option<LockoutInfo>, LockoutError> {
    let before = show(store, key, now_ms).await?;
    forget(store, key).await?;
    Ok(before)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    fn secret() -> LockoutSecret {
        LockoutSecret::derive(&MasterKey::from_bytes([3; 32]))
    }

    #[test]
    fn accounts_are_trimmed_and_case_folded_and_addresses_canonical() {
        assert_eq!(normalise(SubjectKind::Account, "  Alice@Example.COM "), Ok("alice@example.com".into()));
        assert!(normalise(SubjectKind::Account, "   ").is_err());
        assert_eq!(normalise(SubjectKind::Ip, "::ffff:192.0.2.7"), Ok("192.0.2.7".into()));
        assert_eq!(normalise(SubjectKind::Ip, " 2001:DB8:0:0::1 "), Ok("2001:db8::1".into()));
        assert!(normalise(SubjectKind::Ip, "192.0.2.300").is_err());
        assert!(normalise(SubjectKind::Account, &"a".repeat(MAX_VALUE_BYTES + 1)).is_err());
        let s = secret();
        assert_eq!(
            s.subject_key(SubjectKind::Ip, "::ffff:192.0.2.7").unwrap(),
            s.subject_key(SubjectKind::Ip, "192.0.2.7").unwrap()
        );
        assert_ne!(
            s.subject_key(SubjectKind::Ip, "192.0.2.7").unwrap().hash,
            s.subject_key(SubjectKind::Account, "192.0.2.7").unwrap().hash
        );
    }

    #[test]
    fn policies_are_bounded() {
        assert!(validate_policy(&LockoutPolicy::default()).is_ok());
        let bad = [
            LockoutPolicy { max_failures: 0, ..LockoutPolicy::default() },
            LockoutPolicy { max_failures: MAX_POLICY_FAILURES + 1, ..LockoutPolicy::default() },
            LockoutPolicy { window_ms: 0, ..LockoutPolicy::default() },
            LockoutPolicy { base_lock_ms: 0, ..LockoutPolicy::default() },
            LockoutPolicy { max_lock_ms: MAX_POLICY_MS + 1, ..LockoutPolicy::default() },
            LockoutPolicy { base_lock_ms: 10, max_lock_ms: 5, ..LockoutPolicy::default() },
        ];
        for policy in bad {
            assert!(matches!(validate_policy(&policy), Err(LockoutError::InvalidRequest(_))), "{policy:?}");
        }
    }

    #[tokio::test]
    async fn duplicate_subjects_in_one_report_count_once() {
        let store = MemoryStore::new();
        let s = secret();
        let alice = s.subject_key(SubjectKind::Account, "alice").unwrap();
        let keys = vec![alice.clone(), s.subject_key(SubjectKind::Account, " ALICE").unwrap()];
        let p = LockoutPolicy::default();
        let result = report(&store, &p, LoginOutcome::Failure, &keys, None, 1_000).await.unwrap();
        assert_eq!(result.reply.subjects.len(), 2);
        assert_eq!(result.reply.subjects[1].failures, 1);
        let shown = show(&store, &alice, 1_000).await.unwrap().unwrap();
        assert_eq!((shown.failures, shown.locked_for_ms, shown.locked_until), (1, 0, None));
    }

    #[test]
    fn state_lives_for_the_window_plus_the_longest_lock_at_least() {
        let p = LockoutPolicy::default();
        let state = LockoutState { locked_until_ms: 0, ..LockoutState::default() };
        assert_eq!(expiry(&p, &state, 1_000), 1_000 + p.window_ms + p.max_lock_ms);
        let locked = LockoutState { locked_until_ms: 10_000_000, ..LockoutState::default() };
        assert_eq!(expiry(&p, &locked, 0), (10_000_000 + p.window_ms).max(p.window_ms + p.max_lock_ms));
        // A reservation may still turn into a failure (and a lock) when it expires.
        let pending = LockoutState {
            pending: vec![Reservation { id: "r".into(), expires_at_ms: 60_000 }],
            ..LockoutState::default()
        };
        assert_eq!(expiry(&p, &pending, 1_000), 60_000 + p.window_ms + p.max_lock_ms);
    }

    #[test]
    fn reservation_ids_and_lifetimes_are_bounded() {
        assert!(validate_reservation_id("0123abcdEF-_").is_ok());
        for bad in ["", "a b", "a/b", "é", &"a".repeat(MAX_RESERVATION_ID_LEN + 1)] {
            assert!(validate_reservation_id(bad).is_err(), "{bad:?}");
        }
        assert!(validate_reservation_ttl(MAX_RESERVATION_TTL_MS).is_ok());
        assert!(validate_reservation_ttl(0).is_err());
        assert!(validate_reservation_ttl(MAX_RESERVATION_TTL_MS + 1).is_err());
    }
}
