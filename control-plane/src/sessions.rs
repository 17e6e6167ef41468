//! Sessions: refresh token families with single-use rotation and reuse detection.
//!
//! Issuing a token starts a session (`sid`): an access token plus an opaque refresh
//! token (32 random bytes, base64url). Only the refresh token's SHA-256 is stored:
//!
//! - record `sessions/<sid>`: the original request (to mint the same kind of token
//!   again), the access tokens handed out (`jti`, `exp`) and whether the family is
//!   revoked — the source of truth;
//! - record `refresh-tokens/<sha256 hex>`: `{sid, usedAtMs}`, expiring with the
//!   refresh token;
//! - set `user-sessions/<sub>`: the subject's session ids.
//!
//! A refresh consumes its token by compare-and-swap (active → used), so of several
//! concurrent refreshes exactly one wins. Presenting a consumed token again — a
//! racing duplicate included — is reuse: the whole family is revoked (its access
//! tokens' `jti`s go to the revocation feed until their `exp`). The winner of such a
//! race still gets its answer, but the tokens in it are revoked with the family.
//!
//! **Revoking a user** ([`revoke_user`]) raises the subject's minimum version and then
//! revokes every session of the subject, in one operation. A refresh racing it never
//! yields a token that passes, by two independent guards:
//!
//! - each session remembers the `ver` it was started at; a refresh reads the subject's
//!   minimum once and mints with it, refusing (and revoking the family) when the
//!   session started below it. A refresh that read the minimum before the raise mints
//!   a token below the new minimum; one that read it after is refused;
//! - a refresh records its new `jti` in the session by compare-and-swap and revokes
//!   it when the family was revoked meanwhile; a revocation that comes later revokes
//!   every `jti` the session lists, this one included.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::audit::{self, ACTOR_SYSTEM};
use crate::keys::KeyRing;
use crate::random::{RandomError, RandomSource};
use crate::revocations::{self, RevocationError};
use crate::store::{retry_compare_and_swap, CasRound, Store, StoreError};
use crate::tokens::{self, IssuedToken, MintContext, TokenError, TokenPolicy, TokenRequest};

/// Why the sessions of a revoked subject were revoked.
const USER_REVOKED: &str = "all tokens of the user revoked";
/// Access tokens remembered per session (expired ones are dropped first).
const MAX_TRACKED_TOKENS: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Bad request body (issuance); the message names the field.
    #[error("{0}")]
    InvalidRequest(String),
    /// The refresh token is unknown, expired, consumed or its session revoked.
    #[error("{0}")]
    InvalidGrant(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Random(#[from] RandomError),
    #[error("cannot encode a token: {0}")]
    Encoding(String),
    #[error("session state changed concurrently too often; retry")]
    Contended,
}

impl From<TokenError> for SessionError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::InvalidRequest(m) => SessionError::InvalidRequest(m),
            TokenError::Random(e) => SessionError::Random(e),
            TokenError::Encoding(e) => SessionError::Encoding(e.to_string()),
        }
    }
}

impl From<RevocationError> for SessionError {
    fn from(e: RevocationError) -> Self {
        match e {
            RevocationError::InvalidRequest(m) => SessionError::InvalidRequest(m),
            RevocationError::Store(e) => SessionError::Store(e),
            RevocationError::Contended => SessionError::Contended,
            RevocationError::Random(_) => SessionError::Encoding(e.to_string()),
        }
    }
}

/// An access token handed out in a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionToken {
    pub jti: String,
    /// Unix seconds.
    pub exp: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SessionRecord {
    sid: String,
    sub: String,
    request: TokenRequest,
    created_at_ms: u64,
    refreshed_at_ms: u64,
    /// When the newest refresh token expires.
    refresh_expires_at_ms: u64,
    refresh_count: u64,
    access_tokens: Vec<SessionToken>,
    /// The `ver` of the session's first token. A refresh is refused once the subject's
    /// minimum is above it (0 for sessions recorded before versions were kept: they
    /// cannot be refreshed once the subject is revoked).
    #[serde(default)]
    version: u64,
    #[serde(default)]
    revoked_at_ms: Option<u64>,
    #[serde(default)]
    revoked_reason: Option<String>,
}

impl SessionRecord {
    /// The record lives as long as its refresh token or any of its access tokens.
    fn expires_at_ms(&self) -> u64 {
        let access = self.access_tokens.iter().map(|t| t.exp.saturating_mul(1000)).max().unwrap_or(0);
        self.refresh_expires_at_ms.max(access)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RefreshRecord {
    sid: String,
    #[serde(default)]
    used_at_ms: Option<u64>,
}

/// A session as the admin API shows it. Times are Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionInfo {
    pub session_id: String,
    pub sub: String,
    pub created_at: u64,
    pub refreshed_at: u64,
    pub refresh_expires_at: u64,
    pub refresh_count: u64,
    pub revoked: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_reason: Option<String>,
    /// Access tokens of the session that have not expired yet.
    pub access_tokens: Vec<SessionToken>,
}

/// What revoking a family did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevokedSession {
    pub session_id: String,
    pub sub: String,
    /// `jti`s put on the revocation list (live access tokens of the family).
    pub revoked_jtis: Vec<String>,
    /// False when the family had been revoked already.
    pub newly_revoked: bool,
}

/// Everything minting needs.
#[derive(Clone, Copy)]
pub struct Minter<'a> {
    pub store: &'a dyn Store,
    pub keys: &'a KeyRing,
    pub policy: &'a TokenPolicy,
    pub rng: &'a dyn RandomSource,
}

fn session_key(sid: &str) -> String {
    format!("sessions/{sid}")
}

fn refresh_key(hash: &str) -> String {
    format!("refresh-tokens/{hash}")
}

fn user_sessions_set(sub: &str) -> String {
    format!("user-sessions/{sub}")
}

fn hash_refresh_token(token: &str) -> String {
    portcullis_core::codec::hex(&Sha256::digest(token.as_bytes()))
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, SessionError> {
    serde_json::to_vec(value).map_err(|e| SessionError::Encoding(e.to_string()))
}

fn decode<T: for<'de> Deserialize<'de>>(key: &str, bytes: &[u8]) -> Result<T, SessionError> {
    serde_json::from_slice(bytes)
        .map_err(|e| SessionError::Store(StoreError::CorruptData(format!("{key}: {e}"))))
}

fn random_id(rng: &dyn RandomSource, bytes: usize) -> Result<String, RandomError> {
    let mut buf = vec![0u8; bytes];
    rng.fill(&mut buf)?;
    Ok(URL_SAFE_NO_PAD.encode(buf))
}

impl Minter<'_> {
    async fn mint(
        &self,
        request: &TokenRequest,
        sid: &str,
        version: u64,
        now_ms: u64,
    ) -> Result<IssuedToken, SessionError> {
        let keys = self.keys.current(now_ms).await;
        let context = MintContext { version, session_id: Some(sid) };
        Ok(tokens::mint_access_token(request, self.policy, keys.current(), context, now_ms, self.rng)?)
    }

    async fn new_refresh_token(
        &self,
        sid: &str,
        expires_at_ms: u64,
        now_ms: u64,
    ) -> Result<String, SessionError> {
        let token = random_id(self.rng, 32)?;
        let record = RefreshRecord { sid: sid.to_owned(), used_at_ms: None };
        self.store
            .record_put(
                &refresh_key(&hash_refresh_token(&token)),
                encode(&record)?,
                Some(expires_at_ms),
                now_ms,
            )
            .await?;
        Ok(token)
    }

    /// Starts a session: an access token and a refresh token.
    pub async fn issue(&self, request: &TokenRequest, now_ms: u64) -> Result<IssuedToken, SessionError> {
        tokens::validate_request(request, self.policy)?;
        let sid = random_id(self.rng, 16)?;
        let version = revocations::version_to_issue(self.store, &request.sub, now_ms).await?.version;
        let mut issued = self.mint(request, &sid, version, now_ms).await?;
        let refresh_expires_at_ms =
            now_ms.saturating_add(self.policy.refresh_ttl_seconds.saturating_mul(1000));
        let record = SessionRecord {
            sid: sid.clone(),
            sub: request.sub.clone(),
            request: request.clone(),
            created_at_ms: now_ms,
            refreshed_at_ms: now_ms,
            refresh_expires_at_ms,
            refresh_count: 0,
            access_tokens: vec![SessionToken {
                jti: issued.jti.clone(),
                exp: now_ms / 1000 + issued.expires_in,
            }],
            version,
            revoked_at_ms: None,
            revoked_reason: None,
        };
        let expires = record.expires_at_ms();
        if !self
            .store
            .record_compare_and_swap(&session_key(&sid), None, Some(encode(&record)?), Some(expires), now_ms)
            .await?
        {
            return Err(SessionError::Encoding("session id collision".into()));
        }
        self.store.set_add(&user_sessions_set(&request.sub), &sid, expires, now_ms).await?;
        let refresh = self.new_refresh_token(&sid, refresh_expires_at_ms, now_ms).await?;
        issued.refresh_token = Some(refresh);
        issued.refresh_expires_in = Some(self.policy.refresh_ttl_seconds);
        issued.session_id = Some(sid);
        Ok(issued)
    }

    /// Exchanges a refresh token for a new access and refresh token of the same
    /// session. Single use; reuse revokes the family.
    pub async fn refresh(&self, refresh_token: &str, now_ms: u64) -> Result<IssuedToken, SessionError> {
        const INVALID: &str = "The refresh token is invalid, expired or already used.";
        if refresh_token.is_empty() || refresh_token.len() > 128 {
            return Err(SessionError::InvalidGrant(INVALID));
        }
        let key = refresh_key(&hash_refresh_token(refresh_token));
        let Some(raw) = self.store.record_get(&key, now_ms).await? else {
            return Err(SessionError::InvalidGrant(INVALID));
        };
        let record: RefreshRecord = decode(&key, &raw)?;
        if record.used_at_ms.is_some() {
            self.reuse_detected(&record.sid, now_ms).await?;
            return Err(SessionError::InvalidGrant(INVALID));
        }
        let used = RefreshRecord { used_at_ms: Some(now_ms), ..record.clone() };
        // Keep the consumed record until the token would have expired, so a later
        // reuse is still recognised.
        let session_raw = self.store.record_get(&session_key(&record.sid), now_ms).await?;
        let Some(session_raw) = session_raw else {
            return Err(SessionError::InvalidGrant(INVALID));
        };
        let session: SessionRecord = decode(&session_key(&record.sid), &session_raw)?;
        if !self
            .store
            .record_compare_and_swap(
                &key,
                Some(&raw),
                Some(encode(&used)?),
                Some(session.refresh_expires_at_ms),
                now_ms,
            )
            .await?
        {
            // Someone else consumed it between our read and write: a duplicate.
            self.reuse_detected(&record.sid, now_ms).await?;
            return Err(SessionError::InvalidGrant(INVALID));
        }
        if session.revoked_at_ms.is_some() {
            return Err(SessionError::InvalidGrant(INVALID));
        }
        // One read of the subject's minimum decides both whether the family may go on
        // and the new token's version (see the module docs).
        let versions = revocations::version_to_issue(self.store, &session.sub, now_ms).await?;
        if session.version < versions.user_min_version {
            revoke_session(self.store, &session.sid, USER_REVOKED, now_ms).await?;
            return Err(SessionError::InvalidGrant(INVALID));
        }

        let mut issued = self.mint(&session.request, &session.sid, versions.version, now_ms).await?;
        let refresh_expires_at_ms =
            now_ms.saturating_add(self.policy.refresh_ttl_seconds.saturating_mul(1000));
        let token = SessionToken { jti: issued.jti.clone(), exp: now_ms / 1000 + issued.expires_in };
        let updated = self
            .update_session(&session.sid, now_ms, |s| {
                if s.revoked_at_ms.is_some() {
                    return false;
                }
                s.refreshed_at_ms = now_ms;
                s.refresh_expires_at_ms = refresh_expires_at_ms;
                s.refresh_count += 1;
                s.access_tokens.retain(|t| t.exp > now_ms / 1000);
                s.access_tokens.push(token.clone());
                if s.access_tokens.len() > MAX_TRACKED_TOKENS {
                    let excess = s.access_tokens.len() - MAX_TRACKED_TOKENS;
                    s.access_tokens.drain(..excess);
                }
                true
            })
            .await?;
        match updated {
            Some(session) => {
                self.store
                    .set_add(&user_sessions_set(&session.sub), &session.sid, session.expires_at_ms(), now_ms)
                    .await?;
            }
            None => {
                // The family was revoked after this refresh won the race (a concurrent
                // duplicate counted as reuse). This exchange still completes — exactly
                // one refresh wins — but what it hands out dies with the family.
                revocations::revoke_jti(self.store, &token.jti, token.exp, now_ms).await?;
            }
        }
        let refresh = self.new_refresh_token(&session.sid, refresh_expires_at_ms, now_ms).await?;
        issued.refresh_token = Some(refresh);
        issued.refresh_expires_in = Some(self.policy.refresh_ttl_seconds);
        issued.session_id = Some(session.sid);
        Ok(issued)
    }

    async fn reuse_detected(&self, sid: &str, now_ms: u64) -> Result<(), SessionError> {
        let revoked = revoke_session(self.store, sid, "refresh token reuse", now_ms).await?;
        if let Some(revoked) = revoked.filter(|r| r.newly_revoked) {
            tracing::warn!(
                sid = %revoked.session_id,
                sub = %revoked.sub,
                revoked_tokens = revoked.revoked_jtis.len(),
                "refresh token reuse detected; revoked the whole session"
            );
            audit::record(
                self.store,
                now_ms,
                ACTOR_SYSTEM,
                "session.reuse_detected",
                sid,
                Some(serde_json::json!({"sub": revoked.sub, "revokedJtis": revoked.revoked_jtis})),
            )
            .await?;
        }
        Ok(())
    }

    /// Applies `change` to the session by compare-and-swap; `change` returns false to
    /// leave it alone (then `None` is returned).
    async fn update_session(
        &self,
        sid: &str,
        now_ms: u64,
        change: impl Fn(&mut SessionRecord) -> bool,
    ) -> Result<Option<SessionRecord>, SessionError> {
        update_session(self.store, sid, now_ms, change).await
    }
}

async fn update_session(
    store: &dyn Store,
    sid: &str,
    now_ms: u64,
    change: impl Fn(&mut SessionRecord) -> bool,
) -> Result<Option<SessionRecord>, SessionError> {
    let (key, change) = (&session_key(sid), &change);
    retry_compare_and_swap(SessionError::Contended, || async move {
        let Some(raw) = store.record_get(key, now_ms).await? else {
            return Ok(CasRound::Done(None));
        };
        let mut session: SessionRecord = decode(key, &raw)?;
        if !change(&mut session) {
            return Ok(CasRound::Done(None));
        }
        let swapped = store
            .record_compare_and_swap(
                key,
                Some(&raw),
                Some(encode(&session)?),
                Some(session.expires_at_ms()),
                now_ms,
            )
            .await?;
        Ok(if swapped { CasRound::Done(Some(session)) } else { CasRound::Lost })
    })
    .await
}

/// Revokes a session (token family): it can no longer be refreshed and its live
/// access tokens are revoked. `None` when there is no such session.
pub async fn revoke_session(
    store: &dyn Store,
    sid: &str,
    reason: &str,
    now_ms: u64,
) -> Result<Option<RevokedSession>, SessionError> {
    let key = session_key(sid);
    let Some(raw) = store.record_get(&key, now_ms).await? else {
        return Ok(None);
    };
    let before: SessionRecord = decode(&key, &raw)?;
    let newly_revoked = before.revoked_at_ms.is_none();
    let session = if newly_revoked {
        update_session(store, sid, now_ms, |s| {
            s.revoked_at_ms.get_or_insert(now_ms);
            s.revoked_reason.get_or_insert_with(|| reason.to_owned());
            true
        })
        .await?
        .unwrap_or(before)
    } else {
        before
    };
    // Revoke even when already revoked: idempotent, and it repairs an earlier attempt
    // that failed half-way.
    let mut revoked_jtis = Vec::new();
    for token in session.access_tokens.iter().filter(|t| t.exp > now_ms / 1000) {
        revocations::revoke_jti(store, &token.jti, token.exp, now_ms).await?;
        revoked_jtis.push(token.jti.clone());
    }
    Ok(Some(RevokedSession { session_id: session.sid, sub: session.sub, revoked_jtis, newly_revoked }))
}

/// What revoking a user did (`POST /admin/v1/users/{sub}/revoke-all`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserRevocation {
    pub sub: String,
    /// The subject's new minimum token version.
    pub min_version: u64,
    /// Feed cursor of the minimum's change.
    pub cursor: u64,
    /// The subject's sessions, now revoked (refresh tokens included).
    pub revoked_sessions: Vec<String>,
    /// Live access tokens of those sessions, put on the revocation list.
    pub revoked_jtis: Vec<String>,
    /// The subject's API tokens revoked by this call (ids).
    #[serde(default)]
    pub revoked_api_tokens: Vec<String>,
}

/// Revokes everything of a subject: raises its minimum token version (every access
/// token minted so far stops passing) and revokes each of its sessions (no refresh
/// token of theirs works any more) and every API token of theirs. See the module docs
/// for refreshes racing it.
pub async fn revoke_user(store: &dyn Store, sub: &str, now_ms: u64) -> Result<UserRevocation, SessionError> {
    let (min_version, cursor) = revocations::revoke_all_for_user(store, sub, now_ms).await?;
    let mut revoked = UserRevocation {
        sub: sub.to_owned(),
        min_version,
        cursor,
        revoked_sessions: Vec::new(),
        revoked_jtis: Vec::new(),
        revoked_api_tokens: Vec::new(),
    };
    for member in store.set_members(&user_sessions_set(sub), now_ms).await? {
        if let Some(session) = revoke_session(store, &member.member, USER_REVOKED, now_ms).await? {
            revoked.revoked_sessions.push(session.session_id);
            revoked.revoked_jtis.extend(session.revoked_jtis);
        }
    }
    revoked.revoked_api_tokens =
        crate::api_tokens::revoke_all_of_user(store, sub, now_ms).await.map_err(|e| {
            use crate::api_tokens::ApiTokenError as E;
            match e {
                E::InvalidRequest(m) => SessionError::InvalidRequest(m),
                E::Store(e) => SessionError::Store(e),
                E::Contended => SessionError::Contended,
                other => SessionError::Encoding(other.to_string()),
            }
        })?;
    Ok(revoked)
}

fn info(session: &SessionRecord, now_ms: u64) -> SessionInfo {
    SessionInfo {
        session_id: session.sid.clone(),
        sub: session.sub.clone(),
        created_at: session.created_at_ms / 1000,
        refreshed_at: session.refreshed_at_ms / 1000,
        refresh_expires_at: session.refresh_expires_at_ms / 1000,
        refresh_count: session.refresh_count,
        revoked: session.revoked_at_ms.is_some(),
        revoked_reason: session.revoked_reason.clone(),
        access_tokens: session.access_tokens.iter().filter(|t| t.exp > now_ms / 1000).cloned().collect(),
    }
}

/// The subject's sessions that have not expired, newest first.
pub async fn sessions_of(
    store: &dyn Store,
    sub: &str,
    now_ms: u64,
) -> Result<Vec<SessionInfo>, SessionError> {
    let mut sessions = Vec::new();
    for member in store.set_members(&user_sessions_set(sub), now_ms).await? {
        let key = session_key(&member.member);
        if let Some(raw) = store.record_get(&key, now_ms).await? {
            let session: SessionRecord = decode(&key, &raw)?;
            sessions.push(info(&session, now_ms));
        }
    }
    sessions.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.session_id.cmp(&b.session_id)));
    Ok(sessions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_tokens_are_stored_as_sha256_hex() {
        let hash = hash_refresh_token("abc");
        assert_eq!(hash, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
