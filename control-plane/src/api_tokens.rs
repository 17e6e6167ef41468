//! Long-lived API tokens for users: create, list, show, revoke, revoke all of a user,
//! usage (`lastUsedAt`), and the feed Envoys keep a replica from. The format and the
//! verifier are `portcullis_core::api_token`'s (see its docs for why an unkeyed
//! SHA-256 is the stored hash).
//!
//! State in the store (each write one atomic primitive, so Redis Cluster slots never
//! matter):
//! - record `api-tokens/<lookup>`: [`ApiTokenRecord`] (JSON), kept until
//!   [`RETAIN_AFTER_EXPIRY_MS`] after the token expires, so `show` and `list` still
//!   explain a refusal for a while. Changed only by compare-and-swap. It holds the
//!   verifier, **never the secret**: the secret exists only in the create response;
//! - set `user-api-tokens/<user>`: the user's lookup ids, each expiring with its
//!   record;
//! - set [`INDEX_SET`]: every token not yet expired (revoked ones too, so a replica can
//!   answer `revoked` rather than `unknown_token`), each expiring with its token: what
//!   a feed snapshot scans;
//! - feed [`FEED`]: one [`ApiTokenEntry`] per change (creation, revocation), written
//!   after the state. Expiry needs no entry: records carry `expiresAt`.
//!
//! Invariants: an entry of the feed is the whole record as a filter needs it, so
//! applying one replaces the replica's record and applying it twice is harmless;
//! `lastUsedAt` is written at most once per [`USAGE_INTERVAL_MS`] per token, however
//! many reports arrive, because each write is a compare-and-swap of a record last used
//! at least that long ago (a concurrent report that loses the swap writes nothing).

use portcullis_core::api_token::{
    self, ApiTokenEntry, ApiTokenFeedPage, ApiTokenSnapshotPart, FormatError, UsageReport, RANDOM_BYTES,
};
use serde::{Deserialize, Serialize};

use crate::random::RandomSource;
use crate::revocations;
use crate::store::{SetMember, Store, StoreError, MAX_PAGE_SIZE};

/// Feed of changes the filters follow.
pub const FEED: &str = "api-tokens";
/// Every token not yet expired (scanned by snapshots).
pub const INDEX_SET: &str = "api-tokens-live";
/// Longest lifetime unless configured otherwise (`--api-token-max-ttl`): 365 days.
pub const DEFAULT_MAX_TTL_SECONDS: u64 = 365 * 86_400;
/// How long a record outlives its token (for `show`/`list`).
pub const RETAIN_AFTER_EXPIRY_MS: u64 = 7 * 86_400_000;
/// `lastUsedAt` is written at most this often per token.
pub const USAGE_INTERVAL_MS: u64 = 60_000;
/// Tokens a user may hold at once (records still retained count).
pub const MAX_TOKENS_PER_USER: usize = 200;
/// Feed entries per page unless the follower asks otherwise.
pub const DEFAULT_FEED_LIMIT: usize = 500;
/// Most entries a follower may ask for per page.
pub const MAX_FEED_LIMIT: usize = 1_000;
const MAX_NAME_LEN: usize = 100;
const MAX_SCOPES: usize = 16;
const MAX_SCOPE_LEN: usize = 64;
const CAS_ATTEMPTS: usize = 16;
/// Fresh lookups tried when a generated one is taken (2^-47 each: never, in practice).
const CREATE_ATTEMPTS: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum ApiTokenError {
    /// The request is not acceptable; the message names the field.
    #[error("{0}")]
    InvalidRequest(String),
    #[error("there is no API token {0:?}")]
    NotFound(String),
    /// The user holds [`MAX_TOKENS_PER_USER`] tokens already.
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("state changed concurrently too often; retry")]
    Contended,
    #[error("no randomness for a token: {0}")]
    Random(String),
    #[error("bad configuration: {0}")]
    Config(FormatError),
}

impl From<revocations::RevocationError> for ApiTokenError {
    fn from(e: revocations::RevocationError) -> Self {
        use revocations::RevocationError as E;
        match e {
            E::InvalidRequest(m) => ApiTokenError::InvalidRequest(m),
            E::Store(e) => ApiTokenError::Store(e),
            E::Contended => ApiTokenError::Contended,
            E::Random(m) => ApiTokenError::Random(m),
        }
    }
}

fn invalid(message: impl Into<String>) -> ApiTokenError {
    ApiTokenError::InvalidRequest(message.into())
}

/// The server's settings for API tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiTokenPolicy {
    /// `<prefix>_` starts every token (`--api-token-prefix`).
    pub prefix: String,
    /// Longest `expiresIn` accepted (`--api-token-max-ttl`).
    pub max_ttl_seconds: u64,
}

impl Default for ApiTokenPolicy {
    fn default() -> Self {
        Self { prefix: api_token::DEFAULT_PREFIX.to_owned(), max_ttl_seconds: DEFAULT_MAX_TTL_SECONDS }
    }
}

impl ApiTokenPolicy {
    pub fn validate(&self) -> Result<(), String> {
        api_token::validate_prefix(&self.prefix).map_err(|e| format!("--api-token-prefix: {e}"))?;
        if self.max_ttl_seconds == 0 {
            return Err("--api-token-max-ttl: must be positive".to_owned());
        }
        Ok(())
    }
}

/// Body of `POST /admin/v1/api-tokens`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateApiToken {
    /// The user the token acts for.
    pub user: String,
    /// What it is for ("CI deploy"): 1 to 100 characters.
    #[serde(default)]
    pub name: String,
    /// At least one scope (RFC 6749 scope tokens, up to 16).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Lifetime in seconds: required, at most the configured maximum.
    #[serde(default)]
    pub expires_in: Option<u64>,
}

/// The stored record. Times are Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiTokenRecord {
    pub id: String,
    pub user: String,
    pub name: String,
    pub scopes: Vec<String>,
    /// [`api_token::Verifier::encode`] of the secret.
    pub verifier: String,
    pub created_at: u64,
    pub expires_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<u64>,
    /// Milliseconds, to enforce the write interval; shown as seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at_ms: Option<u64>,
}

impl ApiTokenRecord {
    /// What a filter needs of it.
    pub fn entry(&self) -> ApiTokenEntry {
        ApiTokenEntry {
            lookup: self.id.clone(),
            verifier: self.verifier.clone(),
            user: self.user.clone(),
            scopes: self.scopes.clone(),
            expires_at: self.expires_at,
            revoked_at: self.revoked_at,
        }
    }

    /// What the admin API shows: everything but the verifier.
    pub fn info(&self, now_ms: u64) -> ApiTokenInfo {
        let status = if self.revoked_at.is_some() {
            "revoked"
        } else if now_ms / 1000 >= self.expires_at {
            "expired"
        } else {
            "active"
        };
        ApiTokenInfo {
            id: self.id.clone(),
            user: self.user.clone(),
            name: self.name.clone(),
            scopes: self.scopes.clone(),
            created_at: self.created_at,
            expires_at: self.expires_at,
            revoked_at: self.revoked_at,
            last_used_at: self.last_used_at_ms.map(|ms| ms / 1000),
            status: status.to_owned(),
        }
    }
}

/// An API token as the admin API shows it (never the secret nor its hash). Times are
/// Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiTokenInfo {
    /// The lookup id: public, the part between the two `_` of the token.
    pub id: String,
    pub user: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub created_at: u64,
    pub expires_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<u64>,
    /// Updated at most once a minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<u64>,
    /// `active`, `expired` or `revoked`.
    pub status: String,
}

/// Response of `POST /admin/v1/api-tokens`: the token, shown this once, and its record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreatedApiToken {
    pub token: String,
    #[serde(flatten)]
    pub info: ApiTokenInfo,
}

fn record_key(id: &str) -> String {
    format!("api-tokens/{id}")
}

fn user_set(user: &str) -> String {
    format!("user-api-tokens/{user}")
}

fn decode(key: &str, raw: &[u8]) -> Result<ApiTokenRecord, StoreError> {
    serde_json::from_slice(raw).map_err(|e| StoreError::CorruptData(format!("record {key}: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::InvalidArgument(format!("cannot encode: {e}")))
}

/// RFC 6749 §3.3 `scope-token`: `%x21 / %x23-5B / %x5D-7E`.
fn is_scope_token(scope: &str) -> bool {
    (1..=MAX_SCOPE_LEN).contains(&scope.len())
        && scope.bytes().all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
}

/// Checks a create request; returns the name trimmed and the scopes deduplicated.
fn validate(
    request: &CreateApiToken,
    policy: &ApiTokenPolicy,
) -> Result<(String, Vec<String>, u64), ApiTokenError> {
    revocations::validate_id("user", &request.user)?;
    let name = request.name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_LEN || name.chars().any(char::is_control) {
        return Err(invalid(format!(
            "name: must be 1 to {MAX_NAME_LEN} characters without control characters"
        )));
    }
    if request.scopes.is_empty() {
        return Err(invalid("scopes: at least one scope is required"));
    }
    if request.scopes.len() > MAX_SCOPES {
        return Err(invalid(format!("scopes: at most {MAX_SCOPES}")));
    }
    let mut scopes = Vec::with_capacity(request.scopes.len());
    for (i, scope) in request.scopes.iter().enumerate() {
        if !is_scope_token(scope) {
            return Err(invalid(format!(
                "scopes[{i}]: 1 to {MAX_SCOPE_LEN} printable ASCII characters without spaces, `\"` or `\\`"
            )));
        }
        if !scopes.contains(scope) {
            scopes.push(scope.clone());
        }
    }
    let max = policy.max_ttl_seconds;
    let expires_in = match request.expires_in {
        None => return Err(invalid(format!("expiresIn: required (seconds, at most {max})"))),
        Some(0) => return Err(invalid("expiresIn: must be positive")),
        Some(s) if s > max => {
            return Err(invalid(format!(
                "expiresIn: at most {max} seconds (the server's --api-token-max-ttl)"
            )))
        }
        Some(s) => s,
    };
    Ok((name.to_owned(), scopes, expires_in))
}

async fn append(store: &dyn Store, record: &ApiTokenRecord, now_ms: u64) -> Result<u64, StoreError> {
    store.feed_append(FEED, encode(&record.entry())?, now_ms).await
}

/// Creates a token. The returned text is the only copy of the secret.
pub async fn create(
    store: &dyn Store,
    rng: &dyn RandomSource,
    policy: &ApiTokenPolicy,
    request: &CreateApiToken,
    now_ms: u64,
) -> Result<CreatedApiToken, ApiTokenError> {
    let (name, scopes, expires_in) = validate(request, policy)?;
    let user_set = user_set(&request.user);
    if store.set_members(&user_set, now_ms).await?.len() >= MAX_TOKENS_PER_USER {
        return Err(ApiTokenError::Conflict(format!(
            "user: holds {MAX_TOKENS_PER_USER} API tokens already; revoke some first"
        )));
    }
    let now = now_ms / 1000;
    let expires_at = now.saturating_add(expires_in);
    let retain_until_ms = expires_at.saturating_mul(1000).saturating_add(RETAIN_AFTER_EXPIRY_MS);
    for _ in 0..CREATE_ATTEMPTS {
        let mut random = zeroize::Zeroizing::new([0u8; RANDOM_BYTES]);
        rng.fill(random.as_mut()).map_err(|e| ApiTokenError::Random(e.to_string()))?;
        let token = api_token::generate(&policy.prefix, &random).map_err(ApiTokenError::Config)?;
        let record = ApiTokenRecord {
            id: token.lookup().to_owned(),
            user: request.user.clone(),
            name: name.clone(),
            scopes: scopes.clone(),
            verifier: token.verifier().encode(),
            created_at: now,
            expires_at,
            revoked_at: None,
            last_used_at_ms: None,
        };
        let key = record_key(&record.id);
        if !store
            .record_compare_and_swap(&key, None, Some(encode(&record)?), Some(retain_until_ms), now_ms)
            .await?
        {
            continue;
        }
        store.set_add(&user_set, &record.id, retain_until_ms, now_ms).await?;
        store.set_add(INDEX_SET, &record.id, expires_at.saturating_mul(1000), now_ms).await?;
        append(store, &record, now_ms).await?;
        return Ok(CreatedApiToken { token: token.expose().to_owned(), info: record.info(now_ms) });
    }
    Err(ApiTokenError::Contended)
}

async fn read(
    store: &dyn Store,
    id: &str,
    now_ms: u64,
) -> Result<Option<(Vec<u8>, ApiTokenRecord)>, StoreError> {
    let key = record_key(id);
    match store.record_get(&key, now_ms).await? {
        Some(raw) => {
            let record = decode(&key, &raw)?;
            Ok(Some((raw, record)))
        }
        None => Ok(None),
    }
}

fn check_id(id: &str) -> Result<(), ApiTokenError> {
    if api_token::is_lookup(id) {
        Ok(())
    } else {
        Err(ApiTokenError::NotFound(id.chars().take(64).collect()))
    }
}

/// One token (its record is retained [`RETAIN_AFTER_EXPIRY_MS`] past expiry).
pub async fn show(store: &dyn Store, id: &str, now_ms: u64) -> Result<ApiTokenInfo, ApiTokenError> {
    check_id(id)?;
    let (_, record) = read(store, id, now_ms).await?.ok_or_else(|| ApiTokenError::NotFound(id.to_owned()))?;
    Ok(record.info(now_ms))
}

/// A user's tokens, newest first.
pub async fn list(store: &dyn Store, user: &str, now_ms: u64) -> Result<Vec<ApiTokenInfo>, ApiTokenError> {
    revocations::validate_id("user", user)?;
    let mut tokens = Vec::new();
    for member in store.set_members(&user_set(user), now_ms).await? {
        if let Some((_, record)) = read(store, &member.member, now_ms).await? {
            tokens.push(record.info(now_ms));
        }
    }
    tokens.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| a.id.cmp(&b.id)));
    Ok(tokens)
}

/// Revokes one token. Returns it and whether this call revoked it (false: it already
/// was). The feed carries the revocation, so filters refuse it within a poll.
pub async fn revoke(store: &dyn Store, id: &str, now_ms: u64) -> Result<(ApiTokenInfo, bool), ApiTokenError> {
    check_id(id)?;
    let key = record_key(id);
    for _ in 0..CAS_ATTEMPTS {
        let (raw, mut record) =
            read(store, id, now_ms).await?.ok_or_else(|| ApiTokenError::NotFound(id.to_owned()))?;
        if record.revoked_at.is_some() {
            return Ok((record.info(now_ms), false));
        }
        record.revoked_at = Some(now_ms / 1000);
        let retain_until_ms = record.expires_at.saturating_mul(1000).saturating_add(RETAIN_AFTER_EXPIRY_MS);
        if store
            .record_compare_and_swap(&key, Some(&raw), Some(encode(&record)?), Some(retain_until_ms), now_ms)
            .await?
        {
            append(store, &record, now_ms).await?;
            return Ok((record.info(now_ms), true));
        }
    }
    Err(ApiTokenError::Contended)
}

/// Revokes every token of `user`; returns the ids this call revoked.
pub async fn revoke_all_of_user(
    store: &dyn Store,
    user: &str,
    now_ms: u64,
) -> Result<Vec<String>, ApiTokenError> {
    revocations::validate_id("user", user)?;
    let mut revoked = Vec::new();
    for member in store.set_members(&user_set(user), now_ms).await? {
        match revoke(store, &member.member, now_ms).await {
            Ok((info, true)) => revoked.push(info.id),
            Ok((_, false)) | Err(ApiTokenError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(revoked)
}

/// Records that the reported tokens were used at `now_ms`: writes `lastUsedAt` of each
/// known token last written at least [`USAGE_INTERVAL_MS`] ago. Returns how many were
/// written. Unknown ids and ids repeated in the report are skipped.
pub async fn record_usage(
    store: &dyn Store,
    report: &UsageReport,
    now_ms: u64,
) -> Result<u32, ApiTokenError> {
    if report.used.len() > api_token::MAX_USAGE_BATCH {
        return Err(invalid(format!("used: at most {} ids per report", api_token::MAX_USAGE_BATCH)));
    }
    let mut seen = std::collections::HashSet::new();
    let mut updated = 0u32;
    for id in &report.used {
        if !api_token::is_lookup(id) || !seen.insert(id.as_str()) {
            continue;
        }
        let Some((raw, mut record)) = read(store, id, now_ms).await? else { continue };
        let due = record.last_used_at_ms.is_none_or(|last| now_ms >= last.saturating_add(USAGE_INTERVAL_MS));
        if !due {
            continue;
        }
        record.last_used_at_ms = Some(now_ms);
        let retain_until_ms = record.expires_at.saturating_mul(1000).saturating_add(RETAIN_AFTER_EXPIRY_MS);
        // A lost swap means another report (or a revocation) wrote just now: skip.
        if store
            .record_compare_and_swap(
                &record_key(id),
                Some(&raw),
                Some(encode(&record)?),
                Some(retain_until_ms),
                now_ms,
            )
            .await?
        {
            updated += 1;
        }
    }
    Ok(updated)
}

/// Drops all but the newest `keep` feed entries.
pub async fn trim_feed(store: &dyn Store, keep: usize) -> Result<u64, StoreError> {
    store.feed_trim(FEED, keep).await
}

/// Where a follower is: `d.<epoch>.<after>` (changes after feed position `after`) or
/// `s.<epoch>.<base>.<part>[.<expiry>.<lookup>]` (the next part of the snapshot started
/// at feed position `base`, after that member of [`INDEX_SET`]). Lookup ids are base62,
/// so the cursor goes into a query string as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiTokenCursor {
    Delta { epoch: String, after: u64 },
    Snapshot { epoch: String, base: u64, part: u32, after: Option<SetMember> },
}

impl ApiTokenCursor {
    pub fn encode(&self) -> String {
        match self {
            ApiTokenCursor::Delta { epoch, after } => format!("d.{epoch}.{after}"),
            ApiTokenCursor::Snapshot { epoch, base, part, after } => match after {
                Some(m) => format!("s.{epoch}.{base}.{part}.{}.{}", m.expires_at_ms, m.member),
                None => format!("s.{epoch}.{base}.{part}"),
            },
        }
    }

    /// Parses [`ApiTokenCursor::encode`]'s form; `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        if text.len() > 128 {
            return None;
        }
        let fields: Vec<&str> = text.split('.').collect();
        let number = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
        let epoch = fields.get(1).filter(|e| e.len() == 16 && e.bytes().all(|b| b.is_ascii_hexdigit()))?;
        let epoch = (*epoch).to_owned();
        match (fields.first().copied(), fields.len()) {
            (Some("d"), 3) => Some(ApiTokenCursor::Delta { epoch, after: number(2)? }),
            (Some("s"), 4 | 6) => {
                let after = match fields.get(5) {
                    Some(member) if api_token::is_lookup(member) => {
                        Some(SetMember { member: (*member).to_owned(), expires_at_ms: number(4)? })
                    }
                    Some(_) => return None,
                    None => None,
                };
                Some(ApiTokenCursor::Snapshot {
                    epoch,
                    base: number(2)?,
                    part: u32::try_from(number(3)?).ok()?,
                    after,
                })
            }
            _ => None,
        }
    }
}

/// The feed's newest position (read as the head of a one-entry page from the start,
/// which every backend answers, trimmed or not).
async fn feed_head(store: &dyn Store) -> Result<u64, StoreError> {
    Ok(store.feed_read(FEED, 0, 1).await?.head)
}

/// One page for a follower: changes after its cursor, or the next part of a snapshot
/// (of every token in [`INDEX_SET`]) when it has no cursor or one that cannot be
/// continued (trimmed away, ahead of the feed, another epoch). The last part of a
/// snapshot hands over to the changes after its base, with `more` set: a token revoked
/// while the parts were read is revoked again by the next page.
pub async fn feed_page(
    store: &dyn Store,
    rng: &dyn RandomSource,
    cursor: Option<&ApiTokenCursor>,
    limit: usize,
    now_ms: u64,
) -> Result<ApiTokenFeedPage, ApiTokenError> {
    let epoch = revocations::feed_epoch(store, rng, now_ms).await?;
    let limit = limit.clamp(1, MAX_FEED_LIMIT.min(MAX_PAGE_SIZE));
    let (base, part, after) = match cursor {
        Some(ApiTokenCursor::Delta { epoch: e, after }) if *e == epoch => {
            let read = store.feed_read(FEED, *after, limit).await?;
            if !read.cursor_too_old {
                let mut tokens = Vec::with_capacity(read.entries.len());
                for entry in &read.entries {
                    let token: ApiTokenEntry = serde_json::from_slice(&entry.data).map_err(|e| {
                        StoreError::CorruptData(format!("feed {FEED} entry {}: {e}", entry.cursor))
                    })?;
                    tokens.push(token);
                }
                return Ok(ApiTokenFeedPage {
                    cursor: ApiTokenCursor::Delta { epoch, after: read.next_cursor }.encode(),
                    snapshot: None,
                    tokens,
                    more: read.next_cursor < read.head,
                });
            }
            (feed_head(store).await?, 0, None)
        }
        Some(ApiTokenCursor::Snapshot { epoch: e, base, part, after }) if *e == epoch => {
            (*base, part.saturating_add(1), after.clone())
        }
        // No cursor, or one of another epoch: a fresh snapshot at the current head.
        _ => (feed_head(store).await?, 0, None),
    };
    let members = store.set_scan(INDEX_SET, after.as_ref(), limit, now_ms).await?;
    let mut tokens = Vec::with_capacity(members.len());
    for member in &members {
        if let Some((_, record)) = read(store, &member.member, now_ms).await? {
            tokens.push(record.entry());
        }
    }
    let last = members.len() < limit;
    let next = match members.last() {
        Some(m) if !last => {
            ApiTokenCursor::Snapshot { epoch: epoch.clone(), base, part, after: Some(m.clone()) }
        }
        _ => ApiTokenCursor::Delta { epoch: epoch.clone(), after: base },
    };
    Ok(ApiTokenFeedPage {
        cursor: next.encode(),
        snapshot: Some(ApiTokenSnapshotPart { id: format!("{epoch}.{base}"), part, last }),
        tokens,
        more: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_anything_else_is_refused() {
        let epoch = "0123456789abcdef".to_owned();
        for cursor in [
            ApiTokenCursor::Delta { epoch: epoch.clone(), after: 7 },
            ApiTokenCursor::Snapshot { epoch: epoch.clone(), base: 3, part: 0, after: None },
            ApiTokenCursor::Snapshot {
                epoch: epoch.clone(),
                base: 3,
                part: 2,
                after: Some(SetMember { member: "abcdEFGH".into(), expires_at_ms: 99 }),
            },
        ] {
            assert_eq!(ApiTokenCursor::parse(&cursor.encode()), Some(cursor));
        }
        for bad in ["", "d.x.1", "d.0123456789abcdef", "s.0123456789abcdef.1.2.3.a/b", "q.0123456789abcdef.1"]
        {
            assert_eq!(ApiTokenCursor::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn scopes_follow_rfc_6749_scope_tokens() {
        assert!(is_scope_token("deploy:write"));
        assert!(is_scope_token("https://api.example/x"));
        assert!(!is_scope_token("two words"));
        assert!(!is_scope_token("quote\""));
        assert!(!is_scope_token("back\\slash"));
        assert!(!is_scope_token(""));
        assert!(!is_scope_token(&"a".repeat(65)));
    }
}
