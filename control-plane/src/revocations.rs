//! Revocation state and the change feed the Envoy filter follows.
//!
//! State lives in the store, so every replica answers the same:
//!
//! - set [`REVOKED_SET`]: revoked `jti`s, each expiring with its token's `exp`;
//! - record `user-min-version/<sub>`: a subject's minimum token version (source of
//!   truth, changed by compare-and-swap), indexed for snapshots in set
//!   [`USER_VERSIONS_SET`] as members `<sub>\x1f<version>` (a snapshot takes the
//!   highest per subject, so a crash between the two writes is harmless);
//! - record [`GLOBAL_RECORD`]: the global minimum version with reason and grace;
//! - record [`EPOCH_RECORD`]: the feed's epoch ([`feed_epoch`]);
//! - record [`ISSUED_VERSION_RECORD`]: the issued-version mark, the highest `ver` a
//!   token may carry.
//!
//! **Token versions.** A token's `ver` is max(1, global minimum, its subject's
//! minimum) when it is minted. The invariant that makes a breach rotation complete:
//! *the issued-version mark is at least every `ver` ever signed.* It is kept by raising
//! the mark (an atomic maximum, [`raise_issued_version`]) before a new version becomes
//! issuable (before `revoke-all` or a global rotation writes its minimum), and by every
//! mint before it signs (which only writes when it finds the mark lower, e.g. after an
//! upgrade: [`ensure_issued_version_mark`] also seeds it at startup). So:
//!
//! - a global rotation sets the minimum to [`version_ceiling`]`(mark) + 1`: above every
//!   token minted before it, whichever subject, including subjects whose own minimum
//!   was raised (they share no counter with the global minimum);
//! - every feed page (each delta and each snapshot part) carries `versionCeiling` =
//!   mark + [`VERSION_CEILING_MARGIN`]; the filter refuses a `ver` above it
//!   (`version_unknown`), so a leaked signing key cannot mint tokens that outlive the
//!   next breach rotation. The margin covers tokens minted at a version newer than the
//!   page an Envoy last read: each `revoke-all` or rotation raises the mark by one (a
//!   rotation by the margin plus one), so up to [`VERSION_CEILING_MARGIN`] version
//!   bumps between two polls never make a freshly minted token look forged, and since
//!   a rotation jumps past the margin, a token forged at any ceiling ever published is
//!   below the minimum after it.
//!
//! Each change is written to the state first and then appended to feed [`FEED`];
//! `GET /v1/feed` ([`feed_page`]) turns feed entries into
//! [`portcullis_core::revocation::FeedPage`] deltas, or reads the state as a snapshot
//! in bounded parts when the reader has no cursor or one that cannot be continued.
//! Token ids and subjects go out as keyed hashes under the caller's feed key, never in
//! clear. Parts are read while the state changes; every change is also in the feed after
//! the snapshot's base, which the reader applies before it publishes, and applying a
//! change twice is harmless. Adding a kind of state to the snapshot: one more
//! `Section` (a set scanned in parts) or, for a scalar, a field of part 0 next to the
//! global minimum; and a [`FeedChange`] variant for its deltas. `GET /v1/token-status`
//! answers for one token straight from the state ([`token_status`]), for checks that
//! cannot wait for the next feed poll.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use portcullis_core::fleet::{encode_hash, FeedKey};
use portcullis_core::revocation::{
    FeedPage, GlobalMinVersion, RevokedToken, SnapshotPart, TokenStatus, UserMinVersion, MAX_PAGE_BYTES,
    MAX_PAGE_ENTRIES,
};
use serde::{Deserialize, Serialize};

use crate::random::RandomSource;
use crate::store::{retry_compare_and_swap, CasRound, SetMember, Store, StoreError, MAX_PAGE_SIZE};

pub const FEED: &str = "revocations";
pub const REVOKED_SET: &str = "revoked-jtis";
pub const USER_VERSIONS_SET: &str = "user-min-versions";
pub const GLOBAL_RECORD: &str = "global-min-version";
/// Record holding the feed's epoch ([`feed_epoch`]).
pub const EPOCH_RECORD: &str = "feed-epoch";
/// The issued-version mark: no token was ever signed with a higher `ver`.
pub const ISSUED_VERSION_RECORD: &str = "issued-version-max";
/// How far above the issued-version mark the published ceiling is (see the module docs).
pub const VERSION_CEILING_MARGIN: u64 = 100;
/// The version of tokens minted before any revocation: `ver` is never below it.
pub const BASE_TOKEN_VERSION: u64 = 1;
/// Feed entries kept by the periodic trim; older readers get a snapshot.
pub const DEFAULT_FEED_KEEP: usize = 100_000;
/// Revocations of tokens expiring further out than this are refused as bogus.
const MAX_REVOCATION_SECONDS: u64 = 10 * 366 * 86_400;
/// Index members never expire (the year 9999).
const NEVER_MS: u64 = 253_402_300_799_000;
const SEPARATOR: char = '\u{1f}';

#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    /// The request is not acceptable; the message names the field.
    #[error("{0}")]
    InvalidRequest(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("state changed concurrently too often; retry")]
    Contended,
    #[error("no randomness for the feed epoch: {0}")]
    Random(String),
}

/// One change in the feed (stored JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum FeedChange {
    Revoked {
        jti: String,
        exp: u64,
    },
    UserMinVersion {
        sub: String,
        min_version: u64,
    },
    Global {
        min_version: u64,
        rotated_at: u64,
        grace_seconds: u64,
    },
    KeySet {
        version: u64,
    },
    /// A signing key was revoked: the filter refuses what it signed.
    KeyRevoked {
        kid: String,
        key_set_version: u64,
    },
}

/// The global minimum token version (`GET /admin/v1/global`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GlobalState {
    pub min_version: u64,
    /// Unix seconds; 0 when never rotated.
    pub rotated_at: u64,
    pub grace_seconds: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

fn invalid(message: impl Into<String>) -> RevocationError {
    RevocationError::InvalidRequest(message.into())
}

fn user_record(sub: &str) -> String {
    format!("user-min-version/{sub}")
}

/// Subjects and token ids: 1..=256 bytes, no control characters.
pub fn validate_id(field: &str, value: &str) -> Result<(), RevocationError> {
    if value.is_empty() || value.len() > 256 || value.chars().any(char::is_control) {
        return Err(invalid(format!("{field}: must be 1 to 256 bytes without control characters")));
    }
    Ok(())
}

async fn append(store: &dyn Store, change: &FeedChange, now_ms: u64) -> Result<u64, StoreError> {
    let bytes = serde_json::to_vec(change)
        .map_err(|e| StoreError::InvalidArgument(format!("cannot encode feed entry: {e}")))?;
    store.feed_append(FEED, bytes, now_ms).await
}

/// Revokes one token until its `exp` (Unix seconds). Returns the feed cursor.
pub async fn revoke_jti(store: &dyn Store, jti: &str, exp: u64, now_ms: u64) -> Result<u64, RevocationError> {
    validate_id("jti", jti)?;
    let now = now_ms / 1000;
    if exp <= now {
        return Err(invalid("exp: the token has already expired; there is nothing to revoke"));
    }
    if exp > now + MAX_REVOCATION_SECONDS {
        return Err(invalid("exp: more than 10 years ahead; pass the token's own exp (Unix seconds)"));
    }
    store.set_add(REVOKED_SET, jti, exp.saturating_mul(1000), now_ms).await?;
    Ok(append(store, &FeedChange::Revoked { jti: jti.to_owned(), exp }, now_ms).await?)
}

async fn read_u64_record(
    store: &dyn Store,
    key: &str,
    now_ms: u64,
) -> Result<(Option<Vec<u8>>, u64), RevocationError> {
    let raw = store.record_get(key, now_ms).await?;
    let value = match &raw {
        Some(bytes) => std::str::from_utf8(bytes)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| StoreError::CorruptData(format!("record {key} is not a number")))?,
        None => 0,
    };
    Ok((raw, value))
}

/// A subject's minimum token version (0: none set).
pub async fn user_min_version(store: &dyn Store, sub: &str, now_ms: u64) -> Result<u64, RevocationError> {
    Ok(read_u64_record(store, &user_record(sub), now_ms).await?.1)
}

async fn read_global(
    store: &dyn Store,
    now_ms: u64,
) -> Result<(Option<Vec<u8>>, GlobalState), RevocationError> {
    let raw = store.record_get(GLOBAL_RECORD, now_ms).await?;
    let state = match &raw {
        Some(bytes) => serde_json::from_slice(bytes)
            .map_err(|e| StoreError::CorruptData(format!("record {GLOBAL_RECORD}: {e}")))?,
        None => GlobalState::default(),
    };
    Ok((raw, state))
}

pub async fn global_state(store: &dyn Store, now_ms: u64) -> Result<GlobalState, RevocationError> {
    Ok(read_global(store, now_ms).await?.1)
}

/// The current state for one token, read from the store (never from the feed), so a
/// change is visible as soon as the call that made it returned. At most three reads,
/// run concurrently: the `jti`'s membership in [`REVOKED_SET`] (live at `now_ms`, so a
/// revocation ends with the token's `exp`), `sub`'s minimum version and the global
/// minimum. A missing `jti` is not revoked; a missing `sub` has minimum 0.
pub async fn token_status(
    store: &dyn Store,
    jti: Option<&str>,
    sub: Option<&str>,
    now_ms: u64,
) -> Result<TokenStatus, RevocationError> {
    let revoked = async {
        match jti {
            Some(jti) => store.set_contains(REVOKED_SET, jti, now_ms).await.map_err(RevocationError::from),
            None => Ok(false),
        }
    };
    let user = async {
        match sub {
            Some(sub) => user_min_version(store, sub, now_ms).await,
            None => Ok(0),
        }
    };
    let (revoked, user_min_version, global) = tokio::try_join!(revoked, user, global_state(store, now_ms))?;
    Ok(TokenStatus {
        revoked,
        user_min_version,
        global: GlobalMinVersion {
            min_version: global.min_version,
            rotated_at: global.rotated_at,
            grace_seconds: global.grace_seconds,
        },
    })
}

/// The `ver` a token minted now for `sub` carries.
pub async fn token_version_for(store: &dyn Store, sub: &str, now_ms: u64) -> Result<u64, RevocationError> {
    let global = global_state(store, now_ms).await?.min_version;
    let user = user_min_version(store, sub, now_ms).await?;
    Ok(BASE_TOKEN_VERSION.max(global).max(user))
}

/// The version a token about to be signed for `sub` gets, with the subject's minimum
/// it was computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IssuedVersion {
    pub version: u64,
    pub user_min_version: u64,
}

/// The `ver` for a token about to be signed: like [`token_version_for`], and the
/// issued-version mark is raised to it first when it was lower (see the module docs).
pub async fn version_to_issue(
    store: &dyn Store,
    sub: &str,
    now_ms: u64,
) -> Result<IssuedVersion, RevocationError> {
    let (global, user, mark) = tokio::try_join!(
        global_state(store, now_ms),
        user_min_version(store, sub, now_ms),
        issued_version_mark(store, now_ms)
    )?;
    let version = BASE_TOKEN_VERSION.max(global.min_version).max(user);
    if version > mark {
        raise_issued_version(store, version, now_ms).await?;
    }
    Ok(IssuedVersion { version, user_min_version: user })
}

/// The issued-version mark (0 before anything was issued).
pub async fn issued_version_mark(store: &dyn Store, now_ms: u64) -> Result<u64, RevocationError> {
    Ok(read_u64_record(store, ISSUED_VERSION_RECORD, now_ms).await?.1)
}

/// The highest `ver` the filter accepts while the issued-version mark is `mark`.
pub fn version_ceiling(mark: u64) -> u64 {
    mark.max(BASE_TOKEN_VERSION).saturating_add(VERSION_CEILING_MARGIN)
}

/// Raises the issued-version mark to at least `version` (an atomic maximum); returns
/// the mark afterwards.
pub async fn raise_issued_version(
    store: &dyn Store,
    version: u64,
    now_ms: u64,
) -> Result<u64, RevocationError> {
    retry_compare_and_swap(RevocationError::Contended, || async move {
        let (raw, mark) = read_u64_record(store, ISSUED_VERSION_RECORD, now_ms).await?;
        if mark >= version {
            return Ok(CasRound::Done(mark));
        }
        let new = Some(version.to_string().into_bytes());
        let swapped =
            store.record_compare_and_swap(ISSUED_VERSION_RECORD, raw.as_deref(), new, None, now_ms).await?;
        Ok(if swapped { CasRound::Done(version) } else { CasRound::Lost })
    })
    .await
}

/// Seeds the issued-version mark from the minimums when there is none (state written
/// before the mark existed): every token issued so far carries at most the highest of
/// them. Idempotent; run at startup.
pub async fn ensure_issued_version_mark(store: &dyn Store, now_ms: u64) -> Result<u64, RevocationError> {
    let mark = issued_version_mark(store, now_ms).await?;
    if mark > 0 {
        return Ok(mark);
    }
    let mut highest = BASE_TOKEN_VERSION.max(global_state(store, now_ms).await?.min_version);
    for member in store.set_members(USER_VERSIONS_SET, now_ms).await? {
        if let Some(version) = member.member.rsplit_once(SEPARATOR).and_then(|(_, v)| v.parse::<u64>().ok()) {
            highest = highest.max(version);
        }
    }
    raise_issued_version(store, highest, now_ms).await
}

/// Raises `sub`'s minimum version above every token minted so far. Returns the new
/// minimum and the feed cursor.
pub async fn revoke_all_for_user(
    store: &dyn Store,
    sub: &str,
    now_ms: u64,
) -> Result<(u64, u64), RevocationError> {
    validate_id("sub", sub)?;
    let key = &user_record(sub);
    retry_compare_and_swap(RevocationError::Contended, || async move {
        let (raw, user) = read_u64_record(store, key, now_ms).await?;
        let global = global_state(store, now_ms).await?.min_version;
        let next = BASE_TOKEN_VERSION.max(global).max(user) + 1;
        // The mark first: a token at `next` may be minted as soon as the record changes.
        raise_issued_version(store, next, now_ms).await?;
        if !store
            .record_compare_and_swap(key, raw.as_deref(), Some(next.to_string().into_bytes()), None, now_ms)
            .await?
        {
            return Ok(CasRound::Lost);
        }
        store.set_add(USER_VERSIONS_SET, &format!("{sub}{SEPARATOR}{next}"), NEVER_MS, now_ms).await?;
        if user > 0 {
            store.set_remove(USER_VERSIONS_SET, &format!("{sub}{SEPARATOR}{user}")).await?;
        }
        let change = FeedChange::UserMinVersion { sub: sub.to_owned(), min_version: next };
        Ok(CasRound::Done((next, append(store, &change, now_ms).await?)))
    })
    .await
}

/// Raises the global minimum version above every version ever issued or accepted
/// (the published ceiling, see the module docs): tokens minted before, for any
/// subject, stop working once `grace_seconds` have passed. Returns the new state and
/// the feed cursor.
pub async fn rotate_global(
    store: &dyn Store,
    reason: &str,
    grace_seconds: u64,
    now_ms: u64,
) -> Result<(GlobalState, u64), RevocationError> {
    if reason.trim().is_empty() || reason.len() > 1024 {
        return Err(invalid("reason: must be 1 to 1024 bytes"));
    }
    if grace_seconds > 30 * 86_400 {
        return Err(invalid("graceSeconds: at most 2592000 (30 days)"));
    }
    retry_compare_and_swap(RevocationError::Contended, || async move {
        let (raw, current) = read_global(store, now_ms).await?;
        let mark = issued_version_mark(store, now_ms).await?;
        let min_version = version_ceiling(mark).max(current.min_version) + 1;
        raise_issued_version(store, min_version, now_ms).await?;
        let next = GlobalState {
            min_version,
            rotated_at: now_ms / 1000,
            grace_seconds,
            reason: Some(reason.to_owned()),
        };
        let bytes = serde_json::to_vec(&next)
            .map_err(|e| StoreError::InvalidArgument(format!("cannot encode global state: {e}")))?;
        if !store.record_compare_and_swap(GLOBAL_RECORD, raw.as_deref(), Some(bytes), None, now_ms).await? {
            return Ok(CasRound::Lost);
        }
        let change =
            FeedChange::Global { min_version: next.min_version, rotated_at: next.rotated_at, grace_seconds };
        let cursor = append(store, &change, now_ms).await?;
        Ok(CasRound::Done((next, cursor)))
    })
    .await
}

/// Records a key set change in the feed, so followers see `keySetVersion` move.
pub async fn record_key_set_change(store: &dyn Store, version: u64, now_ms: u64) -> Result<u64, StoreError> {
    append(store, &FeedChange::KeySet { version }, now_ms).await
}

/// Records revoked signing keys in the feed (one entry each). Returns the last cursor.
pub async fn record_key_revocations(
    store: &dyn Store,
    kids: &[String],
    key_set_version: u64,
    now_ms: u64,
) -> Result<u64, StoreError> {
    let mut cursor = 0;
    for kid in kids {
        cursor = append(store, &FeedChange::KeyRevoked { kid: kid.clone(), key_set_version }, now_ms).await?;
    }
    Ok(cursor)
}

/// Drops all but the newest `keep` feed entries.
pub async fn trim_feed(store: &dyn Store, keep: usize) -> Result<u64, StoreError> {
    store.feed_trim(FEED, keep).await
}

/// The feed's epoch: a random id created with the feed's state and recreated when the
/// store lost it (an unpersisted Redis restarted). Every cursor names it, so a follower
/// of a reset feed is never continued as if nothing happened, even once the new feed's
/// positions have caught up with its cursor.
pub async fn feed_epoch(
    store: &dyn Store,
    rng: &dyn RandomSource,
    now_ms: u64,
) -> Result<String, RevocationError> {
    retry_compare_and_swap(RevocationError::Contended, || async move {
        if let Some(bytes) = store.record_get(EPOCH_RECORD, now_ms).await? {
            let epoch = String::from_utf8(bytes)
                .ok()
                .filter(|e| is_epoch(e))
                .ok_or_else(|| StoreError::CorruptData(format!("record {EPOCH_RECORD} is not an epoch")))?;
            return Ok(CasRound::Done(epoch));
        }
        let mut random = [0u8; 8];
        rng.fill(&mut random).map_err(|e| RevocationError::Random(e.to_string()))?;
        let epoch = portcullis_core::codec::hex(&random);
        let swapped = store
            .record_compare_and_swap(EPOCH_RECORD, None, Some(epoch.clone().into_bytes()), None, now_ms)
            .await?;
        Ok(if swapped { CasRound::Done(epoch) } else { CasRound::Lost })
    })
    .await
}

fn is_epoch(text: &str) -> bool {
    text.len() == 16 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// What a snapshot part reads, in order. Each section is one set of the state; the
/// scalar state (global minimum, key set version) travels with the first part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    Revoked,
    UserMinVersions,
}

impl Section {
    const ALL: [Section; 2] = [Section::Revoked, Section::UserMinVersions];

    fn tag(self) -> &'static str {
        match self {
            Section::Revoked => "r",
            Section::UserMinVersions => "u",
        }
    }

    fn from_tag(tag: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.tag() == tag)
    }

    fn set(self) -> &'static str {
        match self {
            Section::Revoked => REVOKED_SET,
            Section::UserMinVersions => USER_VERSIONS_SET,
        }
    }

    fn next(self) -> Option<Self> {
        Self::ALL.into_iter().skip_while(|s| *s != self).nth(1)
    }
}

/// Where a follower is: the opaque `cursor` of `GET /v1/feed`. Spelled with
/// base64url and `.` only, so it goes into a query string as it is:
/// `d.<epoch>.<after>` (deltas after feed position `after`) or
/// `s.<epoch>.<base>.<part>.<section>[.<expiry>.<member, base64url>]` (the next part of
/// the snapshot started at position `base`, continuing after that set member).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedCursor {
    Delta { epoch: String, after: u64 },
    Snapshot { epoch: String, base: u64, part: u32, section: SectionPosition },
}

/// A position inside a snapshot: the section and the last member read from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SectionPosition {
    section: Section,
    after: Option<SetMember>,
}

impl FeedCursor {
    pub fn encode(&self) -> String {
        match self {
            FeedCursor::Delta { epoch, after } => format!("d.{epoch}.{after}"),
            FeedCursor::Snapshot { epoch, base, part, section } => {
                let mut out = format!("s.{epoch}.{base}.{part}.{}", section.section.tag());
                if let Some(m) = &section.after {
                    out.push_str(&format!(".{}.{}", m.expires_at_ms, URL_SAFE_NO_PAD.encode(&m.member)));
                }
                out
            }
        }
    }

    /// Parses [`FeedCursor::encode`]'s form; `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        let fields: Vec<&str> = text.split('.').collect();
        let number = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
        let epoch = fields.get(1).filter(|e| is_epoch(e))?.to_string();
        match (fields.first(), fields.len()) {
            (Some(&"d"), 3) => Some(FeedCursor::Delta { epoch, after: number(2)? }),
            (Some(&"s"), 5 | 7) => {
                let section = Section::from_tag(fields.get(4)?)?;
                let after = match (fields.get(5), fields.get(6)) {
                    (Some(_), Some(member)) => Some(SetMember {
                        member: String::from_utf8(URL_SAFE_NO_PAD.decode(member).ok()?).ok()?,
                        expires_at_ms: number(5)?,
                    }),
                    _ => None,
                };
                Some(FeedCursor::Snapshot {
                    epoch,
                    base: number(2)?,
                    part: u32::try_from(number(3)?).ok()?,
                    section: SectionPosition { section, after },
                })
            }
            _ => None,
        }
    }

    fn epoch(&self) -> &str {
        match self {
            FeedCursor::Delta { epoch, .. } | FeedCursor::Snapshot { epoch, .. } => epoch,
        }
    }
}

/// What one `GET /v1/feed` asks for.
#[derive(Debug, Clone)]
pub struct FeedRequest<'a> {
    /// `None`: start with a snapshot.
    pub cursor: Option<&'a FeedCursor>,
    /// Most entries on the page (1..=[`MAX_PAGE_ENTRIES`]).
    pub limit: usize,
    /// The caller's feed key (from its fleet credential).
    pub key: &'a FeedKey,
    pub key_set_version: u64,
    /// Every revoked signing key the key set remembers: a snapshot's first part lists
    /// them (deltas carry each revocation as it happens). Few: one per revoked key.
    pub revoked_kids: &'a [String],
    pub now_ms: u64,
}

/// Bytes of a page besides its entries (cursor, key id, snapshot part, global): what
/// [`MAX_PAGE_BYTES`] keeps free for them.
const PAGE_ENVELOPE_BYTES: usize = 4096;

/// One page for a follower: deltas after its cursor, the next part of its snapshot, or
/// the first part of a new snapshot when it has no cursor or one that cannot be
/// continued (trimmed away, ahead of the feed, or of another epoch). At most
/// `limit` entries and [`MAX_PAGE_BYTES`] bytes of JSON.
pub async fn feed_page(
    store: &dyn Store,
    rng: &dyn RandomSource,
    request: &FeedRequest<'_>,
) -> Result<FeedPage, RevocationError> {
    let epoch = feed_epoch(store, rng, request.now_ms).await?;
    let limit = request.limit.clamp(1, MAX_PAGE_ENTRIES);
    // Every page carries the ceiling read now, so one poll is enough to learn it.
    let version_ceiling = version_ceiling(issued_version_mark(store, request.now_ms).await?);
    let page = FeedPage {
        key_id: request.key.id().to_owned(),
        key_set_version: request.key_set_version,
        version_ceiling,
        ..FeedPage::default()
    };
    match request.cursor.filter(|c| c.epoch() == epoch) {
        Some(FeedCursor::Delta { after, .. }) => {
            let read = store.feed_read(FEED, *after, limit.min(MAX_PAGE_SIZE)).await?;
            if read.cursor_too_old {
                return snapshot_part(store, request, page, &epoch, None).await;
            }
            delta(page, *after, read, &epoch, request)
        }
        Some(FeedCursor::Snapshot { base, part, section, .. }) => {
            // A snapshot continues only while the deltas after its base can still be
            // served; otherwise it could never be caught up: start again.
            let continuable = !store.feed_read(FEED, *base, 1).await?.cursor_too_old;
            let resume = continuable.then(|| (*base, *part, section.clone()));
            snapshot_part(store, request, page, &epoch, resume).await
        }
        None => snapshot_part(store, request, page, &epoch, None).await,
    }
}

/// JSON bytes of one entry in a page's array (with its comma).
fn entry_bytes<T: Serialize>(entry: &T) -> usize {
    serde_json::to_vec(entry).map_or(usize::MAX / 2, |v| v.len() + 1)
}

fn delta(
    mut out: FeedPage,
    after: u64,
    read: crate::store::FeedPage,
    epoch: &str,
    request: &FeedRequest<'_>,
) -> Result<FeedPage, RevocationError> {
    let now = request.now_ms / 1000;
    let mut bytes = PAGE_ENVELOPE_BYTES;
    // The last feed entry included: the page may stop early at the byte bound.
    let mut position = after;
    for entry in &read.entries {
        let change: FeedChange = serde_json::from_slice(&entry.data)
            .map_err(|e| StoreError::CorruptData(format!("feed entry {}: {e}", entry.cursor)))?;
        match change {
            FeedChange::Revoked { jti, exp } if exp > now => {
                let r = RevokedToken { jti_hash: encode_hash(&request.key.token_id(&jti)), exp };
                bytes += entry_bytes(&r);
                if bytes > MAX_PAGE_BYTES {
                    break;
                }
                out.revoked.push(r);
            }
            FeedChange::Revoked { .. } => {}
            FeedChange::UserMinVersion { sub, min_version } => {
                let u = UserMinVersion { sub_hash: encode_hash(&request.key.subject(&sub)), min_version };
                bytes += entry_bytes(&u);
                if bytes > MAX_PAGE_BYTES {
                    break;
                }
                out.user_min_versions.push(u);
            }
            FeedChange::Global { min_version, rotated_at, grace_seconds } => {
                out.global = Some(GlobalMinVersion { min_version, rotated_at, grace_seconds });
            }
            FeedChange::KeySet { version } => {
                out.key_set_version = out.key_set_version.max(version);
            }
            FeedChange::KeyRevoked { kid, key_set_version } => {
                bytes += entry_bytes(&kid);
                if bytes > MAX_PAGE_BYTES {
                    break;
                }
                out.key_set_version = out.key_set_version.max(key_set_version);
                out.revoked_kids.push(kid);
            }
        }
        position = entry.cursor;
    }
    out.more = position < read.head;
    out.cursor = FeedCursor::Delta { epoch: epoch.to_owned(), after: position }.encode();
    Ok(out)
}

/// One part of a snapshot: part 0 of a new one at the current feed head when `resume` is
/// `None`, else the part after the position. The base is read *before* the state, so
/// changes racing the scan are in the deltas after it, which the follower applies
/// before it publishes (applying twice is harmless).
async fn snapshot_part(
    store: &dyn Store,
    request: &FeedRequest<'_>,
    mut out: FeedPage,
    epoch: &str,
    resume: Option<(u64, u32, SectionPosition)>,
) -> Result<FeedPage, RevocationError> {
    let limit = request.limit.clamp(1, MAX_PAGE_ENTRIES);
    let (base, part, mut position) = match resume {
        Some(r) => r,
        None => {
            let head = store.feed_read(FEED, u64::MAX, 1).await?.head;
            (head, 0, SectionPosition { section: Section::Revoked, after: None })
        }
    };
    if part == 0 {
        let global = global_state(store, request.now_ms).await?;
        out.global = Some(GlobalMinVersion {
            min_version: global.min_version,
            rotated_at: global.rotated_at,
            grace_seconds: global.grace_seconds,
        });
    }
    let now = request.now_ms / 1000;
    let mut bytes = PAGE_ENVELOPE_BYTES;
    if part == 0 {
        // The revoked keys first: they count against the page's entry and byte bounds.
        for kid in request.revoked_kids {
            bytes += entry_bytes(kid);
            out.revoked_kids.push(kid.clone());
        }
    }
    let mut done = false;
    'page: while out.entries() < limit {
        let batch = store
            .set_scan(position.section.set(), position.after.as_ref(), limit - out.entries(), request.now_ms)
            .await?;
        if batch.is_empty() {
            match position.section.next() {
                Some(next) => position = SectionPosition { section: next, after: None },
                None => {
                    done = true;
                    break;
                }
            }
            continue;
        }
        for member in batch {
            let size = match position.section {
                Section::Revoked => {
                    let exp = member.expires_at_ms / 1000;
                    let r =
                        RevokedToken { jti_hash: encode_hash(&request.key.token_id(&member.member)), exp };
                    let size = entry_bytes(&r);
                    if exp <= now {
                        0
                    } else if bytes + size > MAX_PAGE_BYTES {
                        break 'page;
                    } else {
                        out.revoked.push(r);
                        size
                    }
                }
                Section::UserMinVersions => match parse_user_version(&member.member) {
                    None => 0,
                    Some((sub, min_version)) => {
                        let sub_hash = encode_hash(&request.key.subject(sub));
                        match out.user_min_versions.last_mut() {
                            // Index members of one subject are adjacent: keep the highest.
                            Some(last) if last.sub_hash == sub_hash => {
                                last.min_version = last.min_version.max(min_version);
                                0
                            }
                            _ => {
                                let u = UserMinVersion { sub_hash, min_version };
                                let size = entry_bytes(&u);
                                if bytes + size > MAX_PAGE_BYTES {
                                    break 'page;
                                }
                                out.user_min_versions.push(u);
                                size
                            }
                        }
                    }
                },
            };
            bytes += size;
            position.after = Some(member);
        }
    }
    let id = format!("{epoch}.{base}");
    out.snapshot = Some(SnapshotPart { id, part, last: done });
    out.cursor = if done {
        FeedCursor::Delta { epoch: epoch.to_owned(), after: base }
    } else {
        FeedCursor::Snapshot {
            epoch: epoch.to_owned(),
            base,
            part: part.saturating_add(1),
            section: position,
        }
    }
    .encode();
    // After the last part the follower must still catch up on the deltas after `base`.
    out.more = true;
    Ok(out)
}

/// A member of [`USER_VERSIONS_SET`]: `<sub>\x1f<version>`.
fn parse_user_version(member: &str) -> Option<(&str, u64)> {
    let (sub, version) = member.rsplit_once(SEPARATOR)?;
    Some((sub, version.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;

    use super::*;
    use crate::store::{
        FeedPage as StoreFeedPage, LogAppendError, LogEntry, MemoryStore, QueueEntry, QueueLane,
        QueueOutcome, QueueRevive, SetMember, StoreBackend,
    };

    /// A memory store that records which operations were called.
    #[derive(Default)]
    struct Recording {
        inner: MemoryStore,
        calls: Mutex<Vec<&'static str>>,
    }

    impl Recording {
        fn note(&self, operation: &'static str) {
            self.calls.lock().unwrap().push(operation);
        }

        fn take(&self) -> Vec<&'static str> {
            let mut calls = std::mem::take(&mut *self.calls.lock().unwrap());
            calls.sort_unstable();
            calls
        }
    }

    #[async_trait]
    impl Store for Recording {
        fn backend(&self) -> StoreBackend {
            self.inner.backend()
        }
        async fn ping(&self) -> Result<(), StoreError> {
            self.note("ping");
            self.inner.ping().await
        }
        async fn incr_counter(
            &self,
            key: &str,
            delta: i64,
            ttl_ms: u64,
            now_ms: u64,
        ) -> Result<i64, StoreError> {
            self.note("incr_counter");
            self.inner.incr_counter(key, delta, ttl_ms, now_ms).await
        }
        async fn get_counter(&self, key: &str, now_ms: u64) -> Result<i64, StoreError> {
            self.note("get_counter");
            self.inner.get_counter(key, now_ms).await
        }
        async fn set_add(&self, set: &str, member: &str, at: u64, now_ms: u64) -> Result<bool, StoreError> {
            self.note("set_add");
            self.inner.set_add(set, member, at, now_ms).await
        }
        async fn set_remove(&self, set: &str, member: &str) -> Result<(), StoreError> {
            self.note("set_remove");
            self.inner.set_remove(set, member).await
        }
        async fn set_contains(&self, set: &str, member: &str, now_ms: u64) -> Result<bool, StoreError> {
            self.note("set_contains");
            self.inner.set_contains(set, member, now_ms).await
        }
        async fn set_members(&self, set: &str, now_ms: u64) -> Result<Vec<SetMember>, StoreError> {
            self.note("set_members");
            self.inner.set_members(set, now_ms).await
        }
        async fn set_scan(
            &self,
            set: &str,
            after: Option<&SetMember>,
            limit: usize,
            now_ms: u64,
        ) -> Result<Vec<SetMember>, StoreError> {
            self.note("set_scan");
            self.inner.set_scan(set, after, limit, now_ms).await
        }
        async fn record_get(&self, key: &str, now_ms: u64) -> Result<Option<Vec<u8>>, StoreError> {
            self.note("record_get");
            self.inner.record_get(key, now_ms).await
        }
        async fn record_put(
            &self,
            key: &str,
            value: Vec<u8>,
            at: Option<u64>,
            now_ms: u64,
        ) -> Result<(), StoreError> {
            self.note("record_put");
            self.inner.record_put(key, value, at, now_ms).await
        }
        async fn record_delete(&self, key: &str) -> Result<(), StoreError> {
            self.note("record_delete");
            self.inner.record_delete(key).await
        }
        async fn record_compare_and_swap(
            &self,
            key: &str,
            expected: Option<&[u8]>,
            new: Option<Vec<u8>>,
            at: Option<u64>,
            now_ms: u64,
        ) -> Result<bool, StoreError> {
            self.note("record_compare_and_swap");
            self.inner.record_compare_and_swap(key, expected, new, at, now_ms).await
        }
        async fn feed_append(&self, feed: &str, entry: Vec<u8>, now_ms: u64) -> Result<u64, StoreError> {
            self.note("feed_append");
            self.inner.feed_append(feed, entry, now_ms).await
        }
        async fn feed_read(&self, feed: &str, after: u64, limit: usize) -> Result<StoreFeedPage, StoreError> {
            self.note("feed_read");
            self.inner.feed_read(feed, after, limit).await
        }
        async fn feed_trim(&self, feed: &str, keep_last: usize) -> Result<u64, StoreError> {
            self.note("feed_trim");
            self.inner.feed_trim(feed, keep_last).await
        }
        async fn log_append(&self, log: &str, entry: Vec<u8>) -> Result<u64, StoreError> {
            self.note("log_append");
            self.inner.log_append(log, entry).await
        }
        async fn log_append_if_last(
            &self,
            log: &str,
            expected_last_seq: Option<u64>,
            entry: Vec<u8>,
        ) -> Result<u64, LogAppendError> {
            self.note("log_append_if_last");
            self.inner.log_append_if_last(log, expected_last_seq, entry).await
        }
        async fn log_append_batch_if_last(
            &self,
            log: &str,
            expected_last_seq: Option<u64>,
            entries: Vec<Vec<u8>>,
        ) -> Result<u64, LogAppendError> {
            self.note("log_append_batch_if_last");
            self.inner.log_append_batch_if_last(log, expected_last_seq, entries).await
        }
        async fn log_range(
            &self,
            log: &str,
            from_seq: u64,
            limit: usize,
        ) -> Result<Vec<LogEntry>, StoreError> {
            self.note("log_range");
            self.inner.log_range(log, from_seq, limit).await
        }
        async fn log_last(&self, log: &str) -> Result<Option<LogEntry>, StoreError> {
            self.note("log_last");
            self.inner.log_last(log).await
        }
        async fn log_trim(&self, log: &str, before_seq: u64) -> Result<u64, StoreError> {
            self.note("log_trim");
            self.inner.log_trim(log, before_seq).await
        }
        async fn claim_once(&self, key: &str, expires_at_ms: u64, now_ms: u64) -> Result<bool, StoreError> {
            self.note("claim_once");
            self.inner.claim_once(key, expires_at_ms, now_ms).await
        }
        async fn gcra(
            &self,
            key: &str,
            limit: u64,
            unit: portcullis_core::ratelimit::Unit,
            op: portcullis_core::wire::RateLimitOp,
            now_ms: u64,
        ) -> Result<portcullis_core::wire::RateLimitResult, StoreError> {
            self.note("gcra");
            self.inner.gcra(key, limit, unit, op, now_ms).await
        }
        async fn queue_push(
            &self,
            queue: &str,
            id: &str,
            data: Vec<u8>,
            due_at_ms: u64,
            max_pending: usize,
        ) -> Result<bool, StoreError> {
            self.note("queue_push");
            self.inner.queue_push(queue, id, data, due_at_ms, max_pending).await
        }
        async fn queue_claim(
            &self,
            queue: &str,
            now_ms: u64,
            lease_ms: u64,
            limit: usize,
        ) -> Result<Vec<QueueEntry>, StoreError> {
            self.note("queue_claim");
            self.inner.queue_claim(queue, now_ms, lease_ms, limit).await
        }
        async fn queue_settle(
            &self,
            queue: &str,
            id: &str,
            claimed_until_ms: u64,
            outcome: QueueOutcome,
        ) -> Result<Option<u64>, StoreError> {
            self.note("queue_settle");
            self.inner.queue_settle(queue, id, claimed_until_ms, outcome).await
        }
        async fn queue_list(
            &self,
            queue: &str,
            lane: QueueLane,
            limit: usize,
        ) -> Result<Vec<QueueEntry>, StoreError> {
            self.note("queue_list");
            self.inner.queue_list(queue, lane, limit).await
        }
        async fn queue_revive(
            &self,
            queue: &str,
            id: &str,
            data: Vec<u8>,
            due_at_ms: u64,
            max_pending: usize,
        ) -> Result<QueueRevive, StoreError> {
            self.note("queue_revive");
            self.inner.queue_revive(queue, id, data, due_at_ms, max_pending).await
        }
        async fn queue_delete(&self, queue: &str, lane: QueueLane, id: &str) -> Result<bool, StoreError> {
            self.note("queue_delete");
            self.inner.queue_delete(queue, lane, id).await
        }
    }

    #[tokio::test]
    async fn token_status_reads_the_state_three_times_at_most_and_never_the_feed() {
        let store = Recording::default();
        revoke_jti(&store, "j1", 100, 0).await.unwrap();
        revoke_all_for_user(&store, "alice", 0).await.unwrap();
        let (global, _) = rotate_global(&store, "leak", 60, 5000).await.unwrap();
        store.take();

        let status = token_status(&store, Some("j1"), Some("alice"), 6000).await.unwrap();
        assert_eq!(store.take(), ["record_get", "record_get", "set_contains"]);
        assert_eq!(
            status,
            TokenStatus {
                revoked: true,
                user_min_version: 2,
                global: GlobalMinVersion {
                    min_version: global.min_version,
                    rotated_at: 5,
                    grace_seconds: 60
                },
            }
        );
        let status = token_status(&store, None, None, 6000).await.unwrap();
        assert_eq!(store.take(), ["record_get"], "absent ids are not looked up");
        assert_eq!(
            (status.revoked, status.user_min_version, status.global.min_version),
            (false, 0, global.min_version)
        );
        // Expiry is the token's exp, exclusive, by the caller's clock.
        assert!(token_status(&store, Some("j1"), None, 99_999).await.unwrap().revoked);
        assert!(!token_status(&store, Some("j1"), None, 100_000).await.unwrap().revoked);
    }

    #[test]
    fn feed_changes_are_tagged_camel_case_json() {
        let change = FeedChange::UserMinVersion { sub: "a".into(), min_version: 2 };
        assert_eq!(
            serde_json::to_string(&change).unwrap(),
            r#"{"type":"userMinVersion","sub":"a","minVersion":2}"#
        );
    }

    #[tokio::test]
    async fn versions_only_go_up() {
        let store = MemoryStore::new();
        assert_eq!(token_version_for(&store, "alice", 0).await.unwrap(), 1);
        let (min, _) = revoke_all_for_user(&store, "alice", 0).await.unwrap();
        assert_eq!(min, 2);
        assert_eq!(token_version_for(&store, "alice", 0).await.unwrap(), 2);
        assert_eq!(issued_version_mark(&store, 0).await.unwrap(), 2, "raised before the minimum");
        // The global minimum goes above the ceiling published for the mark: alice's
        // version-2 tokens are below it although the global minimum was never 2.
        let (global, _) = rotate_global(&store, "breach", 60, 5000).await.unwrap();
        assert_eq!((global.min_version, global.rotated_at), (2 + VERSION_CEILING_MARGIN + 1, 5));
        let (min, _) = revoke_all_for_user(&store, "alice", 0).await.unwrap();
        assert_eq!(min, global.min_version + 1);
        let (again, _) = rotate_global(&store, "again", 0, 6000).await.unwrap();
        assert_eq!(again.min_version, min + VERSION_CEILING_MARGIN + 1);
        assert_eq!(token_version_for(&store, "bob", 0).await.unwrap(), again.min_version);
        assert_eq!(issued_version_mark(&store, 0).await.unwrap(), again.min_version);
    }

    #[tokio::test]
    async fn the_issued_version_mark_is_seeded_from_the_minimums_and_raised_by_mints() {
        let store = MemoryStore::new();
        // State written before the mark existed: a subject at 7, the global minimum at 3.
        store.set_add(USER_VERSIONS_SET, &format!("alice{SEPARATOR}7"), NEVER_MS, 0).await.unwrap();
        let global = GlobalState { min_version: 3, ..GlobalState::default() };
        store.record_put(GLOBAL_RECORD, serde_json::to_vec(&global).unwrap(), None, 0).await.unwrap();
        assert_eq!(ensure_issued_version_mark(&store, 0).await.unwrap(), 7);
        assert_eq!(ensure_issued_version_mark(&store, 0).await.unwrap(), 7, "idempotent");
        assert_eq!(version_ceiling(7), 7 + VERSION_CEILING_MARGIN);
        // A mint that finds the mark below its version raises it before signing.
        store.record_put(&user_record("bob"), b"9".to_vec(), None, 0).await.unwrap();
        let issued = version_to_issue(&store, "bob", 0).await.unwrap();
        assert_eq!(issued, IssuedVersion { version: 9, user_min_version: 9 });
        assert_eq!(issued_version_mark(&store, 0).await.unwrap(), 9);
        assert_eq!(raise_issued_version(&store, 4, 0).await.unwrap(), 9, "never lowered");
    }

    fn key() -> FeedKey {
        portcullis_core::fleet::FleetCredential::new("revocations-unit-credential-0123456789")
            .unwrap()
            .feed_key()
    }

    #[tokio::test]
    async fn snapshots_take_the_highest_version_per_subject() {
        let store = MemoryStore::new();
        revoke_all_for_user(&store, "alice", 0).await.unwrap();
        revoke_all_for_user(&store, "alice", 0).await.unwrap();
        // A stale index member left by an interrupted bump.
        store.set_add(USER_VERSIONS_SET, &format!("alice{SEPARATOR}2"), NEVER_MS, 0).await.unwrap();
        let key = key();
        let request = FeedRequest {
            cursor: None,
            limit: 100,
            key: &key,
            key_set_version: 1,
            revoked_kids: &[],
            now_ms: 0,
        };
        let page = feed_page(&store, &crate::random::OsRandom, &request).await.unwrap();
        assert_eq!(
            page.user_min_versions,
            vec![UserMinVersion { sub_hash: encode_hash(&key.subject("alice")), min_version: 3 }]
        );
    }

    #[test]
    fn cursors_round_trip_in_query_safe_characters_and_anything_else_is_refused() {
        let epoch = "0123456789abcdef".to_owned();
        let cursors = [
            FeedCursor::Delta { epoch: epoch.clone(), after: 42 },
            FeedCursor::Snapshot {
                epoch: epoch.clone(),
                base: 7,
                part: 3,
                section: SectionPosition { section: Section::Revoked, after: None },
            },
            FeedCursor::Snapshot {
                epoch: epoch.clone(),
                base: 7,
                part: 4,
                section: SectionPosition {
                    section: Section::UserMinVersions,
                    after: Some(SetMember { member: "a.b/c&d\u{1f}9".into(), expires_at_ms: NEVER_MS }),
                },
            },
        ];
        for cursor in cursors {
            let text = cursor.encode();
            assert!(portcullis_core::revocation::is_cursor(&text), "{text}");
            assert_eq!(FeedCursor::parse(&text), Some(cursor));
        }
        for bad in [
            "",
            "d.0123456789abcdef",
            "d.0123456789abcdef.x",
            "d.nothex-nothex00.1",
            "x.0123456789abcdef.1",
            "s.0123456789abcdef.1.0.q",
            "s.0123456789abcdef.1.0.r.5",
            "s.0123456789abcdef.1.0.r.5.!!",
            "d.0123456789abcdef.1.2",
        ] {
            assert_eq!(FeedCursor::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn sections_are_read_in_order() {
        assert_eq!(Section::Revoked.next(), Some(Section::UserMinVersions));
        assert_eq!(Section::UserMinVersions.next(), None);
        for section in Section::ALL {
            assert_eq!(Section::from_tag(section.tag()), Some(section));
        }
    }
}
