//! The change feed's wire format (`GET /v1/feed`) and the per-request status answer
//! (`GET /v1/token-status`), with their bounds. See the [module docs](super) for paging.

use serde::{Deserialize, Serialize};

use crate::jwt::versions::VersionState;

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

/// Whether `text` is a cursor as the control plane spells them.
pub fn is_cursor(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= MAX_CURSOR_LEN
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}
