//! Account lockout state: failed logins per account and per client address, kept for
//! every replica in the store. The arithmetic is [`portcullis_core::lockout`]; this
//! module validates what the filter sends, normalises subjects and keeps the state.
//!
//! Raw account names and addresses never reach the store. Each subject is stored
//! under [`account_key`]`(secret, kind, normalised value)`, keyed with
//! [`LockoutSecret`], a subkey derived from the master key:
//!
//! - record `lockout/<hash>`: the subject's [`LockoutState`] as JSON (plus the window
//!   it was counted in), changed by compare-and-swap; it expires once neither its
//!   failures nor its escalation can matter any more;
//! - set [`INDEX_SET`]: members `<kind>:<hash>` expiring with their record, so admins
//!   can list the subjects that are failing or locked.
//!
//! Normalisation: accounts are trimmed and lowercased; addresses are parsed and
//! printed canonically, with IPv4-mapped IPv6 addresses (`::ffff:192.0.2.7`) folded to
//! IPv4. A success forgets the *account* subjects of a report only (see
//! [`LoginOutcome::Success`]).

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use portcullis_core::lockout::{account_key, LockoutPolicy, LockoutState};
use portcullis_core::wire::{
    LockoutReply, LockoutSubject, LoginOutcome, SubjectKind, SubjectLock, MAX_BATCH,
};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::master_key::MasterKey;
use crate::store::{Store, StoreError};

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
const CAS_ATTEMPTS: usize = 32;

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

/// What is stored under `lockout/<hash>`: the core state, plus the window its
/// failures were counted in (for the admin view, which has no policy at hand).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredState {
    #[serde(flatten)]
    state: LockoutState,
    #[serde(default)]
    window_ms: u64,
}

impl StoredState {
    fn failures_within(&self, window_ms: u64, now_ms: u64) -> u32 {
        let n = self.state.failures.iter().filter(|t| now_ms.saturating_sub(**t) < window_ms).count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }
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

fn lock_of(key: &SubjectKey, stored: &StoredState, policy: &LockoutPolicy, now_ms: u64) -> SubjectLock {
    SubjectLock {
        kind: key.kind,
        locked_for_ms: policy.locked_for_ms(&stored.state, now_ms),
        failures: stored.failures_within(policy.window_ms, now_ms),
    }
}

fn reply(subjects: Vec<SubjectLock>) -> LockoutReply {
    LockoutReply { locked_for_ms: subjects.iter().map(|s| s.locked_for_ms).max().unwrap_or(0), subjects }
}

/// `POST /v1/lockout/check`: each subject's lock now. Reads only.
pub async fn check(
    store: &dyn Store,
    policy: &LockoutPolicy,
    keys: &[SubjectKey],
    now_ms: u64,
) -> Result<LockoutReply, LockoutError> {
    validate_policy(policy)?;
    let mut seen: HashMap<&SubjectKey, SubjectLock> = HashMap::new();
    let mut locks = Vec::with_capacity(keys.len());
    for key in keys {
        let lock = match seen.get(key) {
            Some(lock) => lock.clone(),
            None => {
                let (_, stored) = read(store, key, now_ms).await?;
                let lock = lock_of(key, &stored, policy, now_ms);
                seen.insert(key, lock.clone());
                lock
            }
        };
        locks.push(lock);
    }
    Ok(reply(locks))
}

/// What a report did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReportResult {
    pub reply: LockoutReply,
    /// Subjects whose failure started (or escalated) a lock.
    pub locks_started: Vec<SubjectKey>,
}

/// `POST /v1/lockout/report`: records the outcome of one login attempt for each
/// subject (a subject named twice counts once) and answers each one's lock after it.
pub async fn report(
    store: &dyn Store,
    policy: &LockoutPolicy,
    outcome: LoginOutcome,
    keys: &[SubjectKey],
    now_ms: u64,
) -> Result<ReportResult, LockoutError> {
    validate_policy(policy)?;
    let mut result = ReportResult::default();
    let mut seen: HashMap<&SubjectKey, SubjectLock> = HashMap::new();
    let mut locks = Vec::with_capacity(keys.len());
    for key in keys {
        if let Some(lock) = seen.get(key) {
            locks.push(lock.clone());
            continue;
        }
        let lock = match (outcome, key.kind) {
            (LoginOutcome::Failure, _) => {
                let (started, lock) = record_failure(store, policy, key, now_ms).await?;
                if started {
                    result.locks_started.push(key.clone());
                }
                lock
            }
            (LoginOutcome::Success, SubjectKind::Account) => {
                forget(store, key).await?;
                SubjectLock { kind: key.kind, locked_for_ms: 0, failures: 0 }
            }
            // One valid account must not wash an address that is trying many others.
            (LoginOutcome::Success, SubjectKind::Ip) => {
                let (_, stored) = read(store, key, now_ms).await?;
                lock_of(key, &stored, policy, now_ms)
            }
        };
        seen.insert(key, lock.clone());
        locks.push(lock);
    }
    result.reply = reply(locks);
    Ok(result)
}

/// When a stored state stops mattering: its failures leave the window and its
/// escalation is forgotten `window` after the lock ends. At least `window + max lock`
/// from now, so a later policy with the same window still sees the escalation.
fn expiry(policy: &LockoutPolicy, state: &LockoutState, now_ms: u64) -> u64 {
    let escalation = state.locked_until_ms.max(now_ms).saturating_add(policy.window_ms);
    escalation.max(now_ms.saturating_add(policy.window_ms).saturating_add(policy.max_lock_ms))
}

async fn record_failure(
    store: &dyn Store,
    policy: &LockoutPolicy,
    key: &SubjectKey,
    now_ms: u64,
) -> Result<(bool, SubjectLock), LockoutError> {
    let record = key.record();
    for _ in 0..CAS_ATTEMPTS {
        let (raw, stored) = read(store, key, now_ms).await?;
        let next =
            StoredState { state: policy.record_failure(&stored.state, now_ms), window_ms: policy.window_ms };
        let expires_at_ms = expiry(policy, &next.state, now_ms);
        let bytes = serde_json::to_vec(&next)
            .map_err(|e| StoreError::InvalidArgument(format!("cannot encode lockout state: {e}")))?;
        if store
            .record_compare_and_swap(&record, raw.as_deref(), Some(bytes), Some(expires_at_ms), now_ms)
            .await?
        {
            store.set_add(INDEX_SET, &key.index_member(), expires_at_ms, now_ms).await?;
            let started = next.state.locked_until_ms > stored.state.locked_until_ms;
            return Ok((started, lock_of(key, &next, policy, now_ms)));
        }
    }
    Err(LockoutError::Contended)
}

/// Deletes a subject's state and its index entry.
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
}

fn info(key: &SubjectKey, stored: &StoredState, now_ms: u64) -> LockoutInfo {
    let locked_for_ms = stored.state.locked_until_ms.saturating_sub(now_ms);
    LockoutInfo {
        kind: key.kind,
        key_hash: key.hash.clone(),
        failures: stored.failures_within(stored.window_ms, now_ms),
        locked_for_ms,
        locked_until: (locked_for_ms > 0).then(|| stored.state.locked_until_ms.div_ceil(1000)),
        lock_count: stored.state.lock_count,
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

/// Forgets a subject's failures and lock; `None` when nothing was recorded.
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
        let result = report(&store, &p, LoginOutcome::Failure, &keys, 1_000).await.unwrap();
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
    }
}
