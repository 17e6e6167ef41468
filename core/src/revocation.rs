//! Revocation state as the filter sees it: the wire format of the control plane's
//! change feed (`GET /v1/feed`), the replica the filter keeps from it, and the assembly
//! of a paged snapshot into one replica, so every revocation question is answered
//! inside Envoy without a call.
//!
//! The feed carries revoked token ids (each kept only until the token's own `exp`),
//! per-user minimum token versions, the global minimum version with its grace period,
//! the version of the issuer's key set, the ids of revoked signing keys (the filter
//! drops those keys and every token they signed; key ids are public, so they are in
//! clear) and the version ceiling (no token above it was ever issued). Token ids and
//! subjects are never in clear: they are [`crate::fleet::FeedKey`] hashes under the
//! caller's fleet credential, and every page names the key (`keyId`).
//!
//! Paging. Every answer carries an opaque `cursor` the follower sends back to continue.
//! A page is a **delta** (changes after the cursor) or one **part** of a snapshot
//! (`snapshot: {id, part, last}`), which the control plane sends when the follower has
//! no cursor or one it can no longer continue. A snapshot of any size arrives in parts
//! of at most [`MAX_PAGE_ENTRIES`] entries (revoked keys count as entries) and
//! [`MAX_PAGE_BYTES`] bytes.
//!
//! Invariants of [`FeedFollower`]:
//! - a snapshot is assembled privately; the published replica changes only when every
//!   part (0, 1, 2, … up to the one marked `last`, all of one snapshot `id`) *and* the
//!   deltas after the snapshot, up to one with `more: false`, have been applied. Parts
//!   read while the state changed may miss or repeat an entry that changed meanwhile;
//!   every such change is in the feed after the snapshot's base, so the catch-up deltas
//!   repair it before anything is published: a torn snapshot is never visible;
//! - a part that does not continue the assembly (another snapshot, a gap, a repeat, a
//!   delta in the middle), hashes under another key, or anything malformed abandons
//!   the assembly and leaves the published replica as it was;
//! - applying an entry twice is harmless: revocations and revoked keys are sets, user
//!   minimums and the version ceiling only go up, and the global minimum and key set
//!   version are replaced by newer values. A snapshot is the whole state: the revoked
//!   keys and the ceiling of the assembled replica are the snapshot's.

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::fleet::{decode_hash, FeedKey, IdHash, HASH_LEN};
use crate::jwt::versions::{MinimumVersions, VersionState};

/// Most entries one feed page may carry; larger pages are refused by the filter.
pub const MAX_PAGE_ENTRIES: usize = 10_000;
/// Largest page the control plane sends, in bytes of JSON. The filter accepts pages up
/// to four times this, so the bound can grow without breaking deployed filters.
pub const MAX_PAGE_BYTES: usize = 1024 * 1024;
/// Longest cursor a page may carry. Cursors are base64url (plus `.`), so a follower can
/// put them in a query string as they are.
pub const MAX_CURSOR_LEN: usize = 2048;
/// Longest signing key id a page may name.
pub const MAX_KID_LEN: usize = 256;

/// One page of the change feed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FeedPage {
    /// Opaque position after this page: the next request sends it as `cursor`.
    pub cursor: String,
    /// [`FeedKey::id`] of the key every hash of this page was made with.
    pub key_id: String,
    /// Set on the parts of a snapshot; absent on deltas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotPart>,
    /// Tokens revoked by `jti`, with the token's expiry (unix seconds).
    #[serde(default)]
    pub revoked: Vec<RevokedToken>,
    /// Per-subject minimum token versions (raised, never lowered, by the control plane).
    #[serde(default)]
    pub user_min_versions: Vec<UserMinVersion>,
    /// The global minimum version, when it changed (always in a snapshot's first part).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global: Option<GlobalMinVersion>,
    /// Version of the issuer's signing key set; a change means keys rotated.
    #[serde(default)]
    pub key_set_version: u64,
    /// Signing keys revoked (by `kid`): tokens they signed are refused at once, cached
    /// ones included. A snapshot's parts together list every key still worth refusing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revoked_kids: Vec<String>,
    /// No token carries a higher version (0: not published). Only ever raised; every
    /// page carries the current one.
    #[serde(default)]
    pub version_ceiling: u64,
    /// More is waiting (further parts, or changes): ask again right away.
    #[serde(default)]
    pub more: bool,
}

impl FeedPage {
    /// Entries (revocations, user minimums and revoked keys) on the page.
    pub fn entries(&self) -> usize {
        self.revoked
            .len()
            .saturating_add(self.user_min_versions.len())
            .saturating_add(self.revoked_kids.len())
    }
}

/// Which part of which snapshot a page is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SnapshotPart {
    /// Every part of one snapshot carries the same id (the feed's epoch and the position
    /// the snapshot was started at).
    pub id: String,
    /// 0 for the first part, then 1, 2, …
    pub part: u32,
    /// The last part: the snapshot is complete once it is applied.
    pub last: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RevokedToken {
    /// [`FeedKey::token_id`] of the `jti`, base64url.
    pub jti_hash: String,
    /// The token's `exp`: after it the entry is useless and dropped.
    pub exp: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UserMinVersion {
    /// [`FeedKey::subject`] of the `sub`, base64url.
    pub sub_hash: String,
    pub min_version: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GlobalMinVersion {
    pub min_version: u64,
    /// When the minimum was raised (unix seconds).
    pub rotated_at: u64,
    /// Older tokens still pass while `now < rotated_at + grace_seconds`.
    pub grace_seconds: u64,
}

/// The answer of `GET /v1/token-status?jti=<jti>&sub=<sub>`: the control plane's current
/// view of one token, for rules that check revocation per request (`"revocation":
/// "strict"`) instead of trusting a replica that may be a poll interval old.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenStatus {
    /// The `jti` is revoked.
    pub revoked: bool,
    /// The subject's minimum token version (0: none).
    #[serde(default)]
    pub user_min_version: u64,
    pub global: GlobalMinVersion,
}

impl TokenStatus {
    /// The version state this answer implies for `sub`.
    pub fn versions(&self, sub: Option<&str>) -> VersionState {
        let mut state = VersionState {
            global_min_version: self.global.min_version,
            rotated_at: self.global.rotated_at,
            grace_seconds: self.global.grace_seconds,
            ..VersionState::default()
        };
        if let Some(sub) = sub {
            state.user_min_versions.insert(sub.to_string(), self.user_min_version);
        }
        state
    }
}

/// Why a feed page was not applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedError {
    NotJson(String),
    TooLarge,
    /// Hashed under another key than the follower's credential gives.
    KeyMismatch {
        expected: String,
        got: String,
    },
    /// An entry or the cursor is not in the documented form.
    Malformed(String),
    /// A snapshot part that does not continue the assembly in progress.
    SnapshotBroken(String),
}

impl std::fmt::Display for FeedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FeedError::NotJson(e) => write!(f, "feed page is not valid JSON: {e}"),
            FeedError::TooLarge => write!(f, "feed page has more than {MAX_PAGE_ENTRIES} entries"),
            FeedError::KeyMismatch { expected, got } => write!(
                f,
                "feed page is hashed with key {got}, not {expected}: the control plane does not know this fleet credential"
            ),
            FeedError::Malformed(e) => write!(f, "feed page is malformed: {e}"),
            FeedError::SnapshotBroken(e) => write!(f, "snapshot assembly abandoned: {e}"),
        }
    }
}

/// The filter's copy of the revocation state, keyed by feed hashes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevocationReplica {
    /// Where the next poll continues ("" before the first sync).
    pub cursor: String,
    /// The feed key the hashes were made with.
    pub key_id: String,
    /// Token id hash → token expiry.
    pub revoked: HashMap<IdHash, u64>,
    /// Subject hash → minimum token version.
    pub user_min_versions: HashMap<IdHash, u64>,
    pub global: GlobalMinVersion,
    pub key_set_version: u64,
    /// Revoked signing keys, by `kid`.
    pub revoked_kids: BTreeSet<String>,
    /// No token above this version was ever issued (0: not published).
    pub version_ceiling: u64,
}

/// A page after validation: hashes decoded, nothing applied yet.
struct CheckedPage {
    cursor: String,
    snapshot: Option<SnapshotPart>,
    revoked: Vec<(IdHash, u64)>,
    users: Vec<(IdHash, u64)>,
    global: Option<GlobalMinVersion>,
    key_set_version: u64,
    revoked_kids: Vec<String>,
    version_ceiling: u64,
    more: bool,
}

impl CheckedPage {
    fn check(page: FeedPage, key: &FeedKey) -> Result<Self, FeedError> {
        if page.entries() > MAX_PAGE_ENTRIES {
            return Err(FeedError::TooLarge);
        }
        if page.key_id != key.id() {
            return Err(FeedError::KeyMismatch { expected: key.id().to_string(), got: page.key_id });
        }
        if !is_cursor(&page.cursor) {
            return Err(FeedError::Malformed(
                "cursor: expected 1 to 2048 characters of A-Z a-z 0-9 - _ .".into(),
            ));
        }
        let hash = |field: &str, i: usize, text: &str| {
            decode_hash(text).ok_or_else(|| FeedError::Malformed(format!("{field}[{i}]: not a feed hash")))
        };
        let revoked = page
            .revoked
            .iter()
            .enumerate()
            .map(|(i, r)| Ok((hash("revoked", i, &r.jti_hash)?, r.exp)))
            .collect::<Result<Vec<_>, FeedError>>()?;
        let users = page
            .user_min_versions
            .iter()
            .enumerate()
            .map(|(i, u)| Ok((hash("userMinVersions", i, &u.sub_hash)?, u.min_version)))
            .collect::<Result<Vec<_>, FeedError>>()?;
        if let Some(i) = page.revoked_kids.iter().position(|k| k.is_empty() || k.len() > MAX_KID_LEN) {
            return Err(FeedError::Malformed(format!(
                "revokedKids[{i}]: expected a key id of 1 to {MAX_KID_LEN} bytes"
            )));
        }
        Ok(CheckedPage {
            cursor: page.cursor,
            snapshot: page.snapshot,
            revoked,
            users,
            global: page.global,
            key_set_version: page.key_set_version,
            revoked_kids: page.revoked_kids,
            version_ceiling: page.version_ceiling,
            more: page.more,
        })
    }

    /// Whether applying the page changes anything but the cursor's spelling.
    fn changes(&self, replica: &RevocationReplica) -> bool {
        self.cursor != replica.cursor
            || !self.revoked.is_empty()
            || !self.users.is_empty()
            || self.global.is_some_and(|g| g != replica.global)
            || self.key_set_version > replica.key_set_version
            || self.revoked_kids.iter().any(|k| !replica.revoked_kids.contains(k))
            || self.version_ceiling > replica.version_ceiling
    }
}

/// Whether `text` is a cursor as the control plane spells them.
pub fn is_cursor(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_CURSOR_LEN
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl RevocationReplica {
    fn apply(&mut self, page: CheckedPage, key_id: &str, now_unix_secs: u64) {
        for (hash, exp) in page.revoked {
            if exp > now_unix_secs {
                self.revoked.insert(hash, exp);
            }
        }
        for (hash, min) in page.users {
            let entry = self.user_min_versions.entry(hash).or_insert(0);
            *entry = (*entry).max(min);
        }
        if let Some(g) = page.global {
            self.global = g;
        }
        self.key_set_version = self.key_set_version.max(page.key_set_version);
        self.revoked_kids.extend(page.revoked_kids);
        self.version_ceiling = self.version_ceiling.max(page.version_ceiling);
        self.cursor = page.cursor;
        key_id.clone_into(&mut self.key_id);
        self.prune(now_unix_secs);
    }

    /// Drops revocations of tokens that have expired anyway.
    pub fn prune(&mut self, now_unix_secs: u64) {
        self.revoked.retain(|_, exp| *exp > now_unix_secs);
    }

    /// Whether the token with this `jti` is revoked (`key`: the follower's feed key).
    pub fn is_revoked(&self, key: &FeedKey, jti: &str, now_unix_secs: u64) -> bool {
        self.revoked.get(&key.token_id(jti)).is_some_and(|exp| *exp > now_unix_secs)
    }

    /// Whether the signing key `kid` was revoked.
    pub fn is_key_revoked(&self, kid: &str) -> bool {
        self.revoked_kids.contains(kid)
    }

    /// The replica's minimum versions, looked up by subject through `key`.
    pub fn versions<'a>(&'a self, key: &'a FeedKey) -> ReplicaVersions<'a> {
        ReplicaVersions { replica: self, key }
    }

    /// The replica as bytes, for Envoy shared data: compact and quick to read back, since
    /// every worker decodes it whenever it changes. Layout: `PCR1`, then sections of
    /// `tag: u8, length: u32 BE, payload`: 1 cursor, 2 key id (UTF-8), 3 global (three
    /// u64 BE), 4 key set version (u64 BE), 5 revoked and 6 user minimums (records of a
    /// 16-byte hash and a u64 BE), 7 revoked key ids (each a u16 BE length and the UTF-8
    /// id), 8 version ceiling (u64 BE). Unknown tags are skipped when decoding.
    pub fn encode(&self) -> Vec<u8> {
        let record = HASH_LEN + 8;
        let mut out = Vec::with_capacity(
            64 + self.cursor.len() + (self.revoked.len() + self.user_min_versions.len()) * record,
        );
        out.extend_from_slice(REPLICA_MAGIC);
        section(&mut out, 1, self.cursor.as_bytes());
        section(&mut out, 2, self.key_id.as_bytes());
        let g = self.global;
        let global: Vec<u8> =
            [g.min_version, g.rotated_at, g.grace_seconds].iter().flat_map(|v| v.to_be_bytes()).collect();
        section(&mut out, 3, &global);
        section(&mut out, 4, &self.key_set_version.to_be_bytes());
        for (tag, map) in [(5, &self.revoked), (6, &self.user_min_versions)] {
            let mut payload = Vec::with_capacity(map.len() * record);
            for (hash, value) in map {
                payload.extend_from_slice(hash);
                payload.extend_from_slice(&value.to_be_bytes());
            }
            section(&mut out, tag, &payload);
        }
        let mut kids = Vec::with_capacity(self.revoked_kids.iter().map(|k| k.len() + 2).sum());
        for kid in &self.revoked_kids {
            // Ids are at most MAX_KID_LEN bytes (checked when the page was applied).
            let len = u16::try_from(kid.len()).unwrap_or(u16::MAX);
            kids.extend_from_slice(&len.to_be_bytes());
            kids.extend_from_slice(kid.as_bytes().get(..usize::from(len)).unwrap_or_default());
        }
        section(&mut out, 7, &kids);
        section(&mut out, 8, &self.version_ceiling.to_be_bytes());
        out
    }

    /// Reads [`RevocationReplica::encode`]'s bytes; `None` when they are not that.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let mut rest = bytes.strip_prefix(REPLICA_MAGIC)?;
        let mut replica = RevocationReplica::default();
        while !rest.is_empty() {
            let (&tag, after_tag) = rest.split_first()?;
            let len = usize::try_from(u32::from_be_bytes(after_tag.get(..4)?.try_into().ok()?)).ok()?;
            let payload = after_tag.get(4..4usize.checked_add(len)?)?;
            rest = after_tag.get(4 + len..)?;
            match tag {
                1 => replica.cursor = String::from_utf8(payload.to_vec()).ok()?,
                2 => replica.key_id = String::from_utf8(payload.to_vec()).ok()?,
                3 => {
                    let v = |i: usize| read_u64(payload.get(i * 8..i * 8 + 8)?);
                    replica.global =
                        GlobalMinVersion { min_version: v(0)?, rotated_at: v(1)?, grace_seconds: v(2)? };
                }
                4 => replica.key_set_version = read_u64(payload)?,
                5 => replica.revoked = read_records(payload)?,
                6 => replica.user_min_versions = read_records(payload)?,
                7 => replica.revoked_kids = read_kids(payload)?,
                8 => replica.version_ceiling = read_u64(payload)?,
                _ => {}
            }
        }
        Some(replica)
    }
}

const REPLICA_MAGIC: &[u8] = b"PCR1";

fn section(out: &mut Vec<u8>, tag: u8, payload: &[u8]) {
    out.push(tag);
    out.extend_from_slice(&u32::try_from(payload.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(payload);
}

fn read_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

fn read_records(payload: &[u8]) -> Option<HashMap<IdHash, u64>> {
    let record = HASH_LEN + 8;
    if payload.len() % record != 0 {
        return None;
    }
    payload
        .chunks_exact(record)
        .map(|r| Some((IdHash::try_from(r.get(..HASH_LEN)?).ok()?, read_u64(r.get(HASH_LEN..)?)?)))
        .collect()
}

fn read_kids(mut payload: &[u8]) -> Option<BTreeSet<String>> {
    let mut kids = BTreeSet::new();
    while !payload.is_empty() {
        let len = usize::from(u16::from_be_bytes(payload.get(..2)?.try_into().ok()?));
        let kid = payload.get(2..2usize.checked_add(len)?)?;
        kids.insert(String::from_utf8(kid.to_vec()).ok()?);
        payload = payload.get(2 + len..)?;
    }
    Some(kids)
}

/// The replica's minimum versions for one follower: subjects are hashed with its key.
pub struct ReplicaVersions<'a> {
    replica: &'a RevocationReplica,
    key: &'a FeedKey,
}

impl MinimumVersions for ReplicaVersions<'_> {
    fn global_min_version(&self) -> u64 {
        self.replica.global.min_version
    }

    fn global_grace(&self) -> (u64, u64) {
        (self.replica.global.rotated_at, self.replica.global.grace_seconds)
    }

    fn user_min_version(&self, subject: &str) -> Option<u64> {
        self.replica.user_min_versions.get(&self.key.subject(subject)).copied()
    }

    fn version_ceiling(&self) -> u64 {
        self.replica.version_ceiling
    }
}

/// What [`FeedFollower::apply`] did with a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Nothing changed (an empty delta): the published replica is current.
    Current,
    /// The published replica was changed in place: publish it.
    Changed,
    /// A snapshot is complete and caught up: this replaces the published replica.
    Assembled(Box<RevocationReplica>),
    /// A snapshot part went into the private assembly; nothing to publish yet.
    Assembling,
}

/// A snapshot being assembled.
#[derive(Debug, Clone)]
struct Assembly {
    id: String,
    next_part: u32,
    /// All parts are in; deltas are being caught up.
    parts_done: bool,
    replica: RevocationReplica,
}

/// Follows the feed page by page (see the module docs for its invariants).
#[derive(Debug, Clone, Default)]
pub struct FeedFollower {
    assembly: Option<Assembly>,
}

impl FeedFollower {
    /// Whether a snapshot is being assembled.
    pub fn assembling(&self) -> bool {
        self.assembly.is_some()
    }

    /// The cursor the next poll sends ("" for none: start with a snapshot).
    pub fn cursor<'a>(&'a self, published: &'a RevocationReplica) -> &'a str {
        match &self.assembly {
            Some(a) => &a.replica.cursor,
            None => &published.cursor,
        }
    }

    /// Drops an assembly in progress; the next poll starts from the published replica.
    pub fn abandon(&mut self) {
        self.assembly = None;
    }

    /// Parses a page and applies it; see [`FeedFollower::apply`].
    pub fn apply_json(
        &mut self,
        published: &mut RevocationReplica,
        bytes: &[u8],
        key: &FeedKey,
        now_unix_secs: u64,
    ) -> Result<(Applied, bool), FeedError> {
        let page: FeedPage = serde_json::from_slice(bytes).map_err(|e| FeedError::NotJson(e.to_string()))?;
        self.apply(published, page, key, now_unix_secs)
    }

    /// Applies one page: a delta to the published replica (or to the assembly catching
    /// up), a snapshot part to the assembly. Returns what happened and whether more is
    /// waiting (poll again right away). On error the published replica is unchanged and
    /// any assembly is abandoned.
    pub fn apply(
        &mut self,
        published: &mut RevocationReplica,
        page: FeedPage,
        key: &FeedKey,
        now_unix_secs: u64,
    ) -> Result<(Applied, bool), FeedError> {
        let page = match CheckedPage::check(page, key) {
            Ok(p) => p,
            Err(e) => {
                self.abandon();
                return Err(e);
            }
        };
        let more = page.more;
        let applied = match (page.snapshot.clone(), self.assembly.take()) {
            (Some(part), _) if part.part == 0 => {
                let mut replica = RevocationReplica::default();
                replica.apply(page, key.id(), now_unix_secs);
                self.assembly = Some(Assembly { id: part.id, next_part: 1, parts_done: part.last, replica });
                Applied::Assembling
            }
            (Some(part), Some(mut a)) if a.id == part.id && a.next_part == part.part && !a.parts_done => {
                a.replica.apply(page, key.id(), now_unix_secs);
                a.next_part = a.next_part.saturating_add(1);
                a.parts_done = part.last;
                self.assembly = Some(a);
                Applied::Assembling
            }
            (Some(part), assembly) => {
                let expected = assembly.map_or_else(
                    || "no snapshot in progress".to_string(),
                    |a| format!("part {} of snapshot {}", a.next_part, a.id),
                );
                return Err(FeedError::SnapshotBroken(format!(
                    "got part {} of snapshot {}, expected {expected}",
                    part.part, part.id
                )));
            }
            (None, Some(a)) if !a.parts_done => {
                return Err(FeedError::SnapshotBroken(format!(
                    "a delta arrived before part {} of snapshot {}",
                    a.next_part, a.id
                )));
            }
            (None, Some(mut a)) => {
                a.replica.apply(page, key.id(), now_unix_secs);
                if more {
                    self.assembly = Some(a);
                    Applied::Assembling
                } else {
                    Applied::Assembled(Box::new(a.replica))
                }
            }
            (None, None) => {
                if page.changes(published) {
                    published.apply(page, key.id(), now_unix_secs);
                    Applied::Changed
                } else {
                    Applied::Current
                }
            }
        };
        Ok((applied, more))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::{encode_hash, FleetCredential};
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn key() -> FeedKey {
        FleetCredential::new("fleet-credential-0123456789abcdef0123").unwrap().feed_key()
    }

    fn revoked(jti: &str, exp: u64) -> RevokedToken {
        RevokedToken { jti_hash: encode_hash(&key().token_id(jti)), exp }
    }

    fn user(sub: &str, min_version: u64) -> UserMinVersion {
        UserMinVersion { sub_hash: encode_hash(&key().subject(sub)), min_version }
    }

    fn delta(cursor: &str) -> FeedPage {
        FeedPage { cursor: cursor.into(), key_id: key().id().into(), ..FeedPage::default() }
    }

    fn part(cursor: &str, id: &str, n: u32, last: bool) -> FeedPage {
        FeedPage {
            snapshot: Some(SnapshotPart { id: id.into(), part: n, last }),
            more: true,
            ..delta(cursor)
        }
    }

    /// Applies pages in order, returning each outcome.
    fn follow(
        follower: &mut FeedFollower,
        published: &mut RevocationReplica,
        pages: Vec<FeedPage>,
    ) -> Vec<Result<Applied, FeedError>> {
        pages
            .into_iter()
            .map(|p| {
                follower.apply(published, p, &key(), 100).map(|(applied, _)| match applied {
                    Applied::Assembled(r) => {
                        *published = (*r).clone();
                        Applied::Assembled(r)
                    }
                    other => other,
                })
            })
            .collect()
    }

    #[test]
    fn deltas_accumulate_in_the_published_replica() {
        let (mut f, mut r) = (FeedFollower::default(), RevocationReplica::default());
        let mut d1 = delta("d1");
        d1.revoked.push(revoked("a", 200));
        let mut d2 = delta("d2");
        d2.revoked.push(revoked("b", 300));
        d2.user_min_versions.push(user("alice", 2));
        assert_eq!(follow(&mut f, &mut r, vec![d1, d2]), vec![Ok(Applied::Changed), Ok(Applied::Changed)]);
        assert!(r.is_revoked(&key(), "a", 100) && r.is_revoked(&key(), "b", 100));
        assert!(!r.is_revoked(&key(), "c", 100));
        assert_eq!(r.versions(&key()).user_min_version("alice"), Some(2));
        assert_eq!(r.cursor, "d2");
        assert_eq!(follow(&mut f, &mut r, vec![delta("d2")]), vec![Ok(Applied::Current)]);
    }

    #[test]
    fn a_paged_snapshot_is_published_only_once_complete_and_caught_up() {
        let (mut f, mut r) = (FeedFollower::default(), RevocationReplica::default());
        let mut old = delta("d0");
        old.revoked.push(revoked("old", 500));
        follow(&mut f, &mut r, vec![old]);

        let mut p0 = part("s0", "e.7", 0, false);
        p0.revoked.push(revoked("a", 200));
        p0.global = Some(GlobalMinVersion { min_version: 2, rotated_at: 10, grace_seconds: 5 });
        let mut p1 = part("s1", "e.7", 1, true);
        p1.user_min_versions.push(user("alice", 3));
        let mut catch_up = delta("d8");
        catch_up.more = true;
        catch_up.revoked.push(revoked("late", 200));
        let outcomes = follow(&mut f, &mut r, vec![p0, p1, catch_up]);
        assert_eq!(outcomes, vec![Ok(Applied::Assembling); 3]);
        assert_eq!(f.cursor(&r), "d8", "polls continue the assembly");
        assert!(r.is_revoked(&key(), "old", 100) && !r.is_revoked(&key(), "a", 100), "nothing published yet");

        let outcome = follow(&mut f, &mut r, vec![delta("d9")]);
        assert!(matches!(outcome[0], Ok(Applied::Assembled(_))));
        assert!(!f.assembling());
        assert!(!r.is_revoked(&key(), "old", 100), "a snapshot replaces the replica");
        assert!(r.is_revoked(&key(), "a", 100) && r.is_revoked(&key(), "late", 100));
        assert_eq!(r.versions(&key()).user_min_version("alice"), Some(3));
        assert_eq!(r.global.min_version, 2);
        assert_eq!((r.cursor.as_str(), r.key_id.as_str()), ("d9", key().id()));
    }

    #[test]
    fn a_part_that_does_not_continue_the_assembly_abandons_it() {
        let cases: Vec<(&str, Vec<FeedPage>)> = vec![
            ("a gap", vec![part("s0", "x", 0, false), part("s2", "x", 2, true)]),
            (
                "a repeat",
                vec![part("s0", "x", 0, false), part("s1", "x", 1, false), part("s1", "x", 1, true)],
            ),
            ("another snapshot", vec![part("s0", "x", 0, false), part("s1", "y", 1, true)]),
            ("a continuation without a start", vec![part("s1", "x", 1, true)]),
            ("a delta before the last part", vec![part("s0", "x", 0, false), delta("d1")]),
            ("a part after the last", vec![part("s0", "x", 0, true), part("s1", "x", 1, true)]),
        ];
        for (what, pages) in cases {
            let (mut f, mut r) = (FeedFollower::default(), RevocationReplica::default());
            let before = r.clone();
            let outcomes = follow(&mut f, &mut r, pages);
            assert!(
                matches!(outcomes.last(), Some(Err(FeedError::SnapshotBroken(_)))),
                "{what}: {outcomes:?}"
            );
            assert!(!f.assembling(), "{what}: the assembly is abandoned");
            assert_eq!(r, before, "{what}: nothing was published");
        }
    }

    #[test]
    fn a_new_first_part_restarts_the_assembly() {
        let (mut f, mut r) = (FeedFollower::default(), RevocationReplica::default());
        let mut first = part("s0", "x", 0, false);
        first.revoked.push(revoked("from-x", 200));
        let mut restart = part("t0", "y", 0, true);
        restart.revoked.push(revoked("from-y", 200));
        follow(&mut f, &mut r, vec![first, restart, delta("d1")]);
        assert!(r.is_revoked(&key(), "from-y", 100));
        assert!(!r.is_revoked(&key(), "from-x", 100), "the abandoned snapshot's parts are gone");
    }

    #[test]
    fn revocations_end_with_the_token_and_user_minimums_never_go_down() {
        let (mut f, mut r) = (FeedFollower::default(), RevocationReplica::default());
        let mut d1 = delta("d1");
        d1.revoked = vec![revoked("a", 200), revoked("expired", 50)];
        d1.user_min_versions.push(user("u", 5));
        let mut d2 = delta("d2");
        d2.user_min_versions.push(user("u", 3));
        follow(&mut f, &mut r, vec![d1, d2]);
        assert_eq!(r.revoked.len(), 1, "an expired token's revocation is not kept");
        assert!(r.is_revoked(&key(), "a", 199) && !r.is_revoked(&key(), "a", 200));
        assert_eq!(r.versions(&key()).user_min_version("u"), Some(5));
        r.prune(200);
        assert!(r.revoked.is_empty());
    }

    #[test]
    fn bad_pages_leave_the_replica_unchanged() {
        let (mut f, mut r) = (FeedFollower::default(), RevocationReplica::default());
        let mut d = delta("d1");
        d.revoked.push(revoked("a", 200));
        follow(&mut f, &mut r, vec![d]);
        let before = r.clone();
        let k = key();
        let mut apply_json = |bytes: &[u8]| f.apply_json(&mut r, bytes, &k, 100);
        assert!(matches!(apply_json(b"{not json"), Err(FeedError::NotJson(_))));
        assert!(matches!(
            apply_json(br#"{"cursor": "c", "keyId": "k", "bogus": 1}"#),
            Err(FeedError::NotJson(_))
        ));
        let other = FleetCredential::new("another-fleet-credential-0123456789ab").unwrap().feed_key();
        let foreign = format!(r#"{{"cursor": "c2", "keyId": "{}"}}"#, other.id());
        assert!(matches!(apply_json(foreign.as_bytes()), Err(FeedError::KeyMismatch { .. })));
        let id = key().id().to_string();
        for (what, body) in [
            ("cursor with a slash", format!(r#"{{"cursor": "a/b", "keyId": "{id}"}}"#)),
            ("empty cursor", format!(r#"{{"cursor": "", "keyId": "{id}"}}"#)),
            (
                "raw jti",
                format!(
                    r#"{{"cursor": "c", "keyId": "{id}", "revoked": [{{"jtiHash": "alice", "exp": 500}}]}}"#
                ),
            ),
        ] {
            assert!(matches!(apply_json(body.as_bytes()), Err(FeedError::Malformed(_))), "{what}");
        }
        let huge = FeedPage { revoked: vec![revoked("x", 500); MAX_PAGE_ENTRIES + 1], ..delta("d2") };
        assert_eq!(f.apply(&mut r, huge, &key(), 100), Err(FeedError::TooLarge));
        assert_eq!(r, before);
    }

    #[test]
    fn the_shared_encoding_round_trips_and_rejects_garbage() {
        let (mut f, mut r) = (FeedFollower::default(), RevocationReplica::default());
        let mut d = delta("d1.cursor_-");
        d.revoked = (0..50).map(|i| revoked(&format!("j{i}"), 1_000 + i)).collect();
        d.user_min_versions = (0..20).map(|i| user(&format!("u{i}"), i + 1)).collect();
        d.global = Some(GlobalMinVersion { min_version: 4, rotated_at: 9, grace_seconds: 60 });
        d.key_set_version = 7;
        d.revoked_kids = vec!["old-key".into(), "kid-é".into()];
        d.version_ceiling = 1_000_000;
        follow(&mut f, &mut r, vec![d]);
        let bytes = r.encode();
        assert_eq!(RevocationReplica::decode(&bytes), Some(r.clone()));
        assert_eq!(
            RevocationReplica::decode(&RevocationReplica::default().encode()),
            Some(RevocationReplica::default())
        );
        assert_eq!(RevocationReplica::decode(b"{\"cursor\":1}"), None);
        for cut in [5, 10, bytes.len() - 1] {
            assert_eq!(RevocationReplica::decode(&bytes[..cut]), None, "truncated at {cut}");
        }
        let mut with_unknown = bytes.clone();
        with_unknown.extend_from_slice(&[99, 0, 0, 0, 2, 1, 2]);
        assert_eq!(RevocationReplica::decode(&with_unknown), Some(r), "unknown sections are skipped");
    }

    #[test]
    fn revoked_keys_accumulate_and_the_ceiling_only_rises_until_a_snapshot() {
        let (mut f, mut r) = (FeedFollower::default(), RevocationReplica::default());
        let page = |mut page: FeedPage, kids: &[&str], ceiling| {
            page.revoked_kids = kids.iter().map(|k| k.to_string()).collect();
            page.version_ceiling = ceiling;
            page
        };
        follow(&mut f, &mut r, vec![page(delta("d1"), &["k1"], 101), page(delta("d2"), &["k2"], 90)]);
        assert!(r.is_key_revoked("k1") && r.is_key_revoked("k2") && !r.is_key_revoked("k3"));
        assert_eq!(r.version_ceiling, 101, "a lower ceiling in a delta never lowers it");
        assert_eq!(follow(&mut f, &mut r, vec![page(delta("d3"), &["k1"], 0)]), vec![Ok(Applied::Changed)]);
        assert_eq!(r.version_ceiling, 101, "a page without a ceiling keeps it");
        assert_eq!(r.versions(&key()).check(None, 102, 0), Err(crate::jwt::reason::Reason::VersionUnknown));
        // A snapshot in two parts, the revoked keys spread over both: the whole state.
        let parts = vec![
            page(part("s1", "e.1", 0, false), &["k2"], 50),
            page(part("s2", "e.1", 1, true), &["k4"], 50),
            page(delta("s3"), &[], 50),
        ];
        let outcomes = follow(&mut f, &mut r, parts);
        assert!(matches!(outcomes.last(), Some(Ok(Applied::Assembled(_)))), "{outcomes:?}");
        assert!(!r.is_key_revoked("k1") && r.is_key_revoked("k2") && r.is_key_revoked("k4"));
        assert_eq!(r.version_ceiling, 50, "a snapshot is the whole state");
        let before = r.clone();
        let huge = FeedPage { revoked_kids: vec!["k".into(); MAX_PAGE_ENTRIES + 1], ..delta("d9") };
        assert_eq!(f.apply(&mut r, huge, &key(), 100), Err(FeedError::TooLarge));
        let long = FeedPage { revoked_kids: vec!["k".repeat(MAX_KID_LEN + 1)], ..delta("d9") };
        assert!(matches!(f.apply(&mut r, long, &key(), 100), Err(FeedError::Malformed(_))));
        assert_eq!(r, before);
    }

    #[test]
    fn wire_format_is_camel_case() {
        let page: FeedPage = serde_json::from_str(
            r#"{"cursor":"c7","keyId":"k","snapshot":{"id":"e.1","part":2,"last":true},
                "revoked":[{"jtiHash":"j","exp":9}],
                "userMinVersions":[{"subHash":"s","minVersion":2}],
                "global":{"minVersion":3,"rotatedAt":4,"graceSeconds":5},"keySetVersion":6,
                "revokedKids":["k"],"versionCeiling":8,"more":false}"#,
        )
        .unwrap();
        assert_eq!(page.snapshot, Some(SnapshotPart { id: "e.1".into(), part: 2, last: true }));
        assert_eq!((page.revoked_kids.as_slice(), page.version_ceiling), (&["k".to_string()][..], 8));
        assert_eq!(page.user_min_versions[0].min_version, 2);
        assert_eq!(page.global.unwrap().grace_seconds, 5);
        assert_eq!(page.key_set_version, 6);
        assert_eq!(page.entries(), 3);
    }
}
