//! The admin API (`/admin/v1`), behind the admin token: tokens and sessions, signing
//! keys, revocations and token versions, status. Every write is recorded in the
//! audit log.

use axum::extract::{Path, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::ApiJson;
use super::health::store_is_ready;
use super::{ApiError, AppState};
use crate::audit;
use crate::keys::{KeyInfo, KeyRevocation, KeySelection, Rotation};
use crate::lockouts::{self, LockoutInfo, LockoutList, SubjectKey};
use crate::revocations::{self, GlobalState};
use crate::sessions::{self, RevokedSession, SessionInfo, UserRevocation};
use crate::tokens::{IssuedToken, TokenRequest};
use crate::webhooks::{DeadLetterAction, DeadLetterList};

/// The admin API's routes, relative to `/admin/v1`, each documented by its handler's
/// `#[utoipa::path]` (so the OpenAPI document lists exactly these); the admin token layer
/// is added by [`super::admin_app`].
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(issue_token))
        .routes(routes!(status))
        .routes(routes!(list_keys))
        .routes(routes!(rotate_keys))
        .routes(routes!(revoke_all_keys))
        .routes(routes!(revoke_key))
        .routes(routes!(revoke_jti))
        .routes(routes!(user))
        .routes(routes!(user_sessions))
        .routes(routes!(revoke_user))
        .routes(routes!(revoke_session))
        .routes(routes!(global))
        .routes(routes!(rotate_global))
        .routes(routes!(dead_letters, purge_dead_letters))
        .routes(routes!(retry_dead_letters))
        .routes(routes!(purge_dead_letter))
        .routes(routes!(retry_dead_letter))
        .routes(routes!(list_lockouts))
        .routes(routes!(show_lockout, clear_lockout))
}

/// The bearer token of an `Authorization` header; `None` when there is no bearer
/// credential at all (missing header, another scheme).
pub(super) fn bearer_token(request: &Request) -> Option<&str> {
    let value = request.headers().get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

pub(super) async fn require_admin_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let token = bearer_token(&request).ok_or(ApiError::MissingAdminToken)?;
    if !state.admin.verify(token) {
        tracing::warn!("admin request with a wrong token");
        return Err(ApiError::InvalidAdminToken);
    }
    Ok(next.run(request).await)
}

#[utoipa::path(
    post,
    path = "/tokens",
    tag = "admin",
    summary = "Mint an access token and start a session",
    request_body(content = TokenRequest, content_type = "application/json"),
    responses((status = 200, description = "The access token, its refresh token and session", content_type = "application/json"))
)]
async fn issue_token(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<TokenRequest>,
) -> Result<Json<IssuedToken>, ApiError> {
    let now_ms = state.clock.now_ms();
    let issued = state.minter().issue(&request, now_ms).await?;
    state.metrics.record_token_issued();
    let sid = issued.session_id.clone().unwrap_or_default();
    audit::record(
        state.store.as_ref(),
        now_ms,
        state.admin.identity(),
        "token.issue",
        &request.sub,
        Some(json!({ "jti": issued.jti, "sid": sid })),
    )
    .await?;
    tracing::info!(sub = %request.sub, jti = %issued.jti, %sid, expires_in = issued.expires_in, "issued access token");
    Ok(Json(issued))
}

/// Response of `GET /admin/v1/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    pub version: String,
    pub store: String,
    pub ready: bool,
    pub current_kid: String,
    pub signing_alg: String,
    pub key_set_version: u64,
    pub global_min_version: u64,
    /// The highest `ver` any token was issued with (the issued-version mark).
    pub issued_version: u64,
    /// The highest `ver` Envoys accept (the mark plus a margin; see the feed).
    pub version_ceiling: u64,
    pub issuer: String,
    pub audience: String,
}

#[utoipa::path(
    get,
    path = "/status",
    tag = "admin",
    summary = "Version, store, current key, versions, issuer and audience",
    responses((status = 200, description = "JSON document", content_type = "application/json"))
)]
async fn status(State(state): State<AppState>) -> Result<Json<StatusReport>, ApiError> {
    let now_ms = state.clock.now_ms();
    let keys = state.keys.current(now_ms).await;
    let global = revocations::global_state(state.store.as_ref(), now_ms).await?;
    let issued_version = revocations::issued_version_mark(state.store.as_ref(), now_ms).await?;
    Ok(Json(StatusReport {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        store: state.store.backend().as_str().to_owned(),
        ready: store_is_ready(&state).await.is_ok(),
        current_kid: keys.current().kid().to_owned(),
        signing_alg: keys.current().alg().as_str().to_owned(),
        key_set_version: keys.version,
        global_min_version: global.min_version.max(revocations::BASE_TOKEN_VERSION),
        issued_version,
        version_ceiling: revocations::version_ceiling(issued_version),
        issuer: state.token_policy.issuer.clone(),
        audience: state.token_policy.default_audience.clone(),
    }))
}

/// Response of `GET /admin/v1/keys`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyList {
    pub key_set_version: u64,
    pub keys: Vec<KeyInfo>,
}

#[utoipa::path(
    get,
    path = "/keys",
    tag = "admin",
    summary = "The signing keys and their status",
    responses((status = 200, description = "JSON document", content_type = "application/json"))
)]
async fn list_keys(State(state): State<AppState>) -> Result<Json<KeyList>, ApiError> {
    let now_ms = state.clock.now_ms();
    let keys = state.keys.reload(now_ms).await?;
    Ok(Json(KeyList { key_set_version: keys.version, keys: keys.list(now_ms) }))
}

#[utoipa::path(
    post,
    path = "/keys/rotate",
    tag = "admin",
    summary = "Make a new signing key current",
    responses((status = 200, description = "JSON document", content_type = "application/json"))
)]
async fn rotate_keys(State(state): State<AppState>) -> Result<Json<Rotation>, ApiError> {
    let now_ms = state.clock.now_ms();
    let rotation = state
        .keys
        .rotate(now_ms, None)
        .await?
        .ok_or_else(|| ApiError::Internal("an unconditional rotation did not rotate".into()))?;
    let store = state.store.as_ref();
    revocations::record_key_set_change(store, rotation.key_set_version, now_ms).await?;
    audit::record(
        store,
        now_ms,
        state.admin.identity(),
        "keys.rotate",
        &rotation.kid,
        serde_json::to_value(&rotation).ok(),
    )
    .await?;
    Ok(Json(rotation))
}

/// Revokes one signing key at once (a leaked key): `POST /admin/v1/keys/{kid}/revoke`.
#[utoipa::path(
    post,
    path = "/keys/{kid}/revoke",
    tag = "admin",
    summary = "Revoke one signing key at once",
    params(("kid" = String, Path, description = "Key id")),
    responses((status = 200, description = "JSON document", content_type = "application/json"))
)]
async fn revoke_key(
    State(state): State<AppState>,
    Path(kid): Path<String>,
) -> Result<Json<KeyRevocation>, ApiError> {
    revocations::validate_id("kid", &kid)?;
    revoke_keys(&state, KeySelection::One(&kid), &kid).await
}

/// Revokes every signing key, the current one included (the master key leaked).
#[utoipa::path(
    post,
    path = "/keys/revoke-all",
    tag = "admin",
    summary = "Revoke every signing key; a fresh one becomes current",
    responses((status = 200, description = "JSON document", content_type = "application/json"))
)]
async fn revoke_all_keys(State(state): State<AppState>) -> Result<Json<KeyRevocation>, ApiError> {
    revoke_keys(&state, KeySelection::All, "all").await
}

/// Revokes, publishes the revoked `kid`s in the feed, audits once.
async fn revoke_keys(
    state: &AppState,
    which: KeySelection<'_>,
    target: &str,
) -> Result<Json<KeyRevocation>, ApiError> {
    let now_ms = state.clock.now_ms();
    let revocation = state.keys.revoke(which, now_ms).await?;
    let store = state.store.as_ref();
    revocations::record_key_revocations(store, &revocation.revoked_kids, revocation.key_set_version, now_ms)
        .await?;
    audit::record(
        store,
        now_ms,
        state.admin.identity(),
        "keys.revoke",
        target,
        serde_json::to_value(&revocation).ok(),
    )
    .await?;
    Ok(Json(revocation))
}

/// Body of `POST /admin/v1/revocations`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RevocationRequest {
    pub jti: String,
    /// The token's `exp` (Unix seconds): the revocation is kept until then.
    pub exp: u64,
}

/// Response of `POST /admin/v1/revocations`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevocationAccepted {
    pub jti: String,
    pub exp: u64,
    /// Feed cursor of the change.
    pub cursor: u64,
}

#[utoipa::path(
    post,
    path = "/revocations",
    tag = "admin",
    summary = "Revoke one token by its jti until its exp",
    request_body(content = RevocationRequest, content_type = "application/json"),
    responses((status = 200, description = "JSON document", content_type = "application/json"))
)]
async fn revoke_jti(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<RevocationRequest>,
) -> Result<Json<RevocationAccepted>, ApiError> {
    let now_ms = state.clock.now_ms();
    let store = state.store.as_ref();
    let cursor = revocations::revoke_jti(store, &request.jti, request.exp, now_ms).await?;
    audit::record(
        store,
        now_ms,
        state.admin.identity(),
        "revocation.jti",
        &request.jti,
        Some(json!({ "exp": request.exp })),
    )
    .await?;
    tracing::info!(jti = %request.jti, exp = request.exp, "revoked token");
    Ok(Json(RevocationAccepted { jti: request.jti, exp: request.exp, cursor }))
}

/// Raises the subject's minimum version and revokes all its sessions: one operation,
/// one audit entry.
#[utoipa::path(
    post,
    path = "/users/{sub}/revoke-all",
    tag = "admin",
    summary = "Revoke every token and session of a subject",
    params(("sub" = String, Path, description = "Subject")),
    responses((status = 200, description = "JSON document", content_type = "application/json"))
)]
async fn revoke_user(
    State(state): State<AppState>,
    Path(sub): Path<String>,
) -> Result<Json<UserRevocation>, ApiError> {
    revocations::validate_id("sub", &sub)?;
    let now_ms = state.clock.now_ms();
    let store = state.store.as_ref();
    let revoked = sessions::revoke_user(store, &sub, now_ms).await?;
    audit::record(
        store,
        now_ms,
        state.admin.identity(),
        "revocation.user",
        &sub,
        Some(json!({
            "minVersion": revoked.min_version,
            "revokedSessions": revoked.revoked_sessions,
            "revokedJtis": revoked.revoked_jtis,
            "revokedApiTokens": revoked.revoked_api_tokens,
        })),
    )
    .await?;
    tracing::info!(
        %sub,
        min_version = revoked.min_version,
        sessions = revoked.revoked_sessions.len(),
        tokens = revoked.revoked_jtis.len(),
        api_tokens = revoked.revoked_api_tokens.len(),
        "revoked all tokens and sessions of a subject"
    );
    Ok(Json(revoked))
}

/// Response of `GET /admin/v1/users/{sub}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserReport {
    pub sub: String,
    /// The subject's own minimum (0: never revoked).
    pub min_version: u64,
    /// The `ver` a token minted now would carry.
    pub current_version: u64,
    pub sessions: Vec<SessionInfo>,
}

#[utoipa::path(
    get,
    path = "/users/{sub}",
    tag = "admin",
    summary = "A subject's versions and sessions",
    params(("sub" = String, Path, description = "Subject")),
    responses((status = 200, description = "JSON document", content_type = "application/json"))
)]
async fn user(State(state): State<AppState>, Path(sub): Path<String>) -> Result<Json<UserReport>, ApiError> {
    revocations::validate_id("sub", &sub)?;
    let now_ms = state.clock.now_ms();
    let store = state.store.as_ref();
    Ok(Json(UserReport {
        min_version: revocations::user_min_version(store, &sub, now_ms).await?,
        current_version: revocations::token_version_for(store, &sub, now_ms).await?,
        sessions: sessions::sessions_of(store, &sub, now_ms).await?,
        sub,
    }))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SessionList {
    sessions: Vec<SessionInfo>,
}

#[utoipa::path(
    get,
    path = "/users/{sub}/sessions",
    tag = "admin",
    summary = "A subject's sessions",
    params(("sub" = String, Path, description = "Subject")),
    responses((status = 200, description = "JSON document", content_type = "application/json"))
)]
async fn user_sessions(
    State(state): State<AppState>,
    Path(sub): Path<String>,
) -> Result<Json<SessionList>, ApiError> {
    revocations::validate_id("sub", &sub)?;
    let sessions = sessions::sessions_of(state.store.as_ref(), &sub, state.clock.now_ms()).await?;
    Ok(Json(SessionList { sessions }))
}

#[utoipa::path(
    delete,
    path = "/sessions/{sid}",
    tag = "admin",
    summary = "Revoke a session (token family)",
    params(("sid" = String, Path, description = "Session id")),
    responses((status = 200, description = "JSON document", content_type = "application/json"))
)]
async fn revoke_session(
    State(state): State<AppState>,
    Path(sid): Path<String>,
) -> Result<Json<RevokedSession>, ApiError> {
    revocations::validate_id("sid", &sid)?;
    let now_ms = state.clock.now_ms();
    let store = state.store.as_ref();
    let revoked =
        sessions::revoke_session(store, &sid, "revoked by an administrator", now_ms).await?.ok_or_else(
            || ApiError::NoSuchResource(format!("There is no session {sid:?} (or it has expired).")),
        )?;
    audit::record(
        store,
        now_ms,
        state.admin.identity(),
        "session.revoke",
        &sid,
        Some(json!({ "sub": revoked.sub, "revokedJtis": revoked.revoked_jtis })),
    )
    .await?;
    tracing::info!(%sid, sub = %revoked.sub, revoked_tokens = revoked.revoked_jtis.len(), "revoked session");
    Ok(Json(revoked))
}

#[utoipa::path(
    get,
    path = "/global",
    tag = "admin",
    summary = "The global minimum version and grace",
    responses((status = 200, description = "JSON document", content_type = "application/json"))
)]
async fn global(State(state): State<AppState>) -> Result<Json<GlobalState>, ApiError> {
    let mut global = revocations::global_state(state.store.as_ref(), state.clock.now_ms()).await?;
    global.min_version = global.min_version.max(revocations::BASE_TOKEN_VERSION);
    Ok(Json(global))
}

/// Body of `POST /admin/v1/global/rotate`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GlobalRotateRequest {
    pub reason: String,
    #[serde(default)]
    pub grace_seconds: u64,
}

#[utoipa::path(
    post,
    path = "/global/rotate",
    tag = "admin",
    summary = "Breach rotation: refuse every token minted so far (after a grace)",
    request_body(content = GlobalRotateRequest, content_type = "application/json"),
    responses((status = 200, description = "JSON document", content_type = "application/json"))
)]
async fn rotate_global(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<GlobalRotateRequest>,
) -> Result<Json<GlobalState>, ApiError> {
    let now_ms = state.clock.now_ms();
    let store = state.store.as_ref();
    let (global, _cursor) =
        revocations::rotate_global(store, &request.reason, request.grace_seconds, now_ms).await?;
    audit::record(
        store,
        now_ms,
        state.admin.identity(),
        "global.rotate",
        "global",
        serde_json::to_value(&global).ok(),
    )
    .await?;
    tracing::warn!(
        min_version = global.min_version,
        grace_seconds = global.grace_seconds,
        "raised the global minimum token version"
    );
    Ok(Json(global))
}

#[utoipa::path(
    get,
    path = "/lockouts",
    tag = "admin",
    summary = "Locked and failing accounts and addresses",
    responses((status = 200, description = "JSON document", content_type = "application/json"))
)]
async fn list_lockouts(State(state): State<AppState>) -> Result<Json<LockoutList>, ApiError> {
    Ok(Json(lockouts::list(state.store.as_ref(), state.clock.now_ms()).await?))
}

/// The key of `{kind}/{value}`: the raw value is hashed here and goes no further.
fn lockout_subject(state: &AppState, kind: &str, value: &str) -> Result<SubjectKey, ApiError> {
    let kind = match kind {
        "account" => portcullis_core::wire::SubjectKind::Account,
        "ip" => portcullis_core::wire::SubjectKind::Ip,
        _ => return Err(ApiError::InvalidRequest("kind: must be `account` or `ip`".to_owned())),
    };
    state.lockout_secret.subject_key(kind, value).map_err(|e| match e {
        lockouts::LockoutError::InvalidRequest(why) => ApiError::InvalidRequest(format!("value: {why}")),
        other => other.into(),
    })
}

fn no_lockout(key: &SubjectKey) -> ApiError {
    ApiError::NoSuchResource(format!(
        "No failed logins or lock are recorded for this {} (or they have expired).",
        key.kind.as_str()
    ))
}

#[utoipa::path(
    get,
    path = "/lockouts/{kind}/{value}",
    tag = "admin",
    summary = "One account or address",
    params(("kind" = String, Path, description = "`account` or `ip`"), ("value" = String, Path, description = "The account name or address")),
    responses((status = 200, description = "JSON document", content_type = "application/json"))
)]
async fn show_lockout(
    State(state): State<AppState>,
    Path((kind, value)): Path<(String, String)>,
) -> Result<Json<LockoutInfo>, ApiError> {
    let key = lockout_subject(&state, &kind, &value)?;
    let info = lockouts::show(state.store.as_ref(), &key, state.clock.now_ms()).await?;
    info.map(Json).ok_or_else(|| no_lockout(&key))
}

/// Forgets a subject's failures and lock; answers what was cleared. Audited with the
/// hash only.
#[utoipa::path(
    delete,
    path = "/lockouts/{kind}/{value}",
    tag = "admin",
    summary = "Forget an account's or address's failures and lock",
    params(("kind" = String, Path, description = "`account` or `ip`"), ("value" = String, Path, description = "The account name or address")),
    responses((status = 200, description = "JSON document", content_type = "application/json"))
)]
async fn clear_lockout(
    State(state): State<AppState>,
    Path((kind, value)): Path<(String, String)>,
) -> Result<Json<LockoutInfo>, ApiError> {
    let key = lockout_subject(&state, &kind, &value)?;
    let now_ms = state.clock.now_ms();
    let store = state.store.as_ref();
    let cleared = lockouts::clear(store, &key, now_ms).await?.ok_or_else(|| no_lockout(&key))?;
    audit::record(
        store,
        now_ms,
        state.admin.identity(),
        "lockout.clear",
        &format!("{}:{}", key.kind.as_str(), key.hash),
        Some(json!({
            "kind": key.kind,
            "keyHash": key.hash,
            "failures": cleared.failures,
            "lockedForMs": cleared.locked_for_ms,
        })),
    )
    .await?;
    tracing::info!(kind = key.kind.as_str(), key_hash = %key.hash, "cleared a login lockout");
    Ok(Json(cleared))
}

/// Webhook deliveries given up on, oldest first.
#[utoipa::path(
    get,
    path = "/webhooks/dead-letters",
    tag = "admin",
    summary = "Webhook deliveries given up on",
    responses((status = 200, description = "JSON document", content_type = "application/json"))
)]
async fn dead_letters(State(state): State<AppState>) -> Result<Json<DeadLetterList>, ApiError> {
    Ok(Json(state.webhooks.dead_letters().await?))
}

#[utoipa::path(
    post,
    path = "/webhooks/dead-letters/{id}/retry",
    tag = "admin",
    summary = "Queue one dead letter again",
    params(("id" = String, Path, description = "Dead letter id")),
    responses((status = 200, description = "JSON document", content_type = "application/json"))
)]
async fn retry_dead_letter(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<DeadLetterAction>, ApiError> {
    revocations::validate_id("id", &id)?;
    dead_letter_action(&state, Some(&id), "webhook.retry").await
}

#[utoipa::path(
    post,
    path = "/webhooks/dead-letters/retry",
    tag = "admin",
    summary = "Queue every dead letter again",
    responses((status = 200, description = "JSON document", content_type = "application/json"))
)]
async fn retry_dead_letters(State(state): State<AppState>) -> Result<Json<DeadLetterAction>, ApiError> {
    dead_letter_action(&state, None, "webhook.retry").await
}

#[utoipa::path(
    delete,
    path = "/webhooks/dead-letters/{id}",
    tag = "admin",
    summary = "Delete one dead letter",
    params(("id" = String, Path, description = "Dead letter id")),
    responses((status = 200, description = "JSON document", content_type = "application/json"))
)]
async fn purge_dead_letter(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<DeadLetterAction>, ApiError> {
    revocations::validate_id("id", &id)?;
    dead_letter_action(&state, Some(&id), "webhook.purge").await
}

#[utoipa::path(
    delete,
    path = "/webhooks/dead-letters",
    tag = "admin",
    summary = "Delete every dead letter",
    responses((status = 200, description = "JSON document", content_type = "application/json"))
)]
async fn purge_dead_letters(State(state): State<AppState>) -> Result<Json<DeadLetterAction>, ApiError> {
    dead_letter_action(&state, None, "webhook.purge").await
}

/// Retries (pending again, a fresh deadline) or purges one dead letter or all; audited.
async fn dead_letter_action(
    state: &AppState,
    id: Option<&str>,
    action: &str,
) -> Result<Json<DeadLetterAction>, ApiError> {
    let done = if action == "webhook.retry" {
        state.webhooks.retry(id).await?
    } else {
        state.webhooks.purge(id).await?
    };
    let now_ms = state.clock.now_ms();
    audit::record(
        state.store.as_ref(),
        now_ms,
        state.admin.identity(),
        action,
        id.unwrap_or("all"),
        serde_json::to_value(&done).ok(),
    )
    .await?;
    tracing::info!(action, count = done.ids.len(), "webhook dead letters handled");
    Ok(Json(done))
}
