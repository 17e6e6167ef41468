//! A client for the control plane's HTTP API; the `portcullis` CLI is built on it.

use std::time::Duration;

use portcullis_core::wire::SubjectKind;
use reqwest::{Response, StatusCode};
use serde::de::DeserializeOwned;

use serde::Serialize;
use serde_json::Value;

use crate::api_tokens::{ApiTokenInfo, CreateApiToken, CreatedApiToken};
use crate::audit::query::{AuditPage, AuditQuery};
use crate::audit::verify::Verification;
use crate::audit::AuditRecord;
use crate::http::{
    ApiTokenList, ApiTokensRevoked, GlobalRotateRequest, KeyList, Problem, RevocationAccepted,
    RevocationRequest, StatusReport,
};
use crate::keys::{KeyRevocation, Rotation};
use crate::lockouts::{LockoutInfo, LockoutList};
use crate::revocations::GlobalState;
use crate::sessions::{RevokedSession, UserRevocation};
use crate::tls::{error_chain, CaBundle};
use crate::tokens::{IssuedToken, RefreshRequest, TokenRequest};
use crate::webhooks::{DeadLetterAction, DeadLetterList};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with a problem document.
    #[error("{}: {}", .0.title, .0.detail)]
    Problem(Problem),
    /// The server answered with an error that is not a problem document.
    #[error("unexpected HTTP {status} from the control plane")]
    Status { status: StatusCode },
    #[error("cannot reach the control plane at {url}: {message}")]
    Transport { url: String, message: String },
    #[error("unexpected response from the control plane: {0}")]
    Decode(String),
}

/// Liveness and readiness as seen by `GET /healthz` and `GET /readyz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthReport {
    pub alive: bool,
    pub ready: bool,
    /// Why the server is not ready, from its problem document.
    pub not_ready_reason: Option<String>,
}

pub struct ControlPlaneClient {
    base_url: String,
    admin_token: Option<String>,
    http: reqwest::Client,
}

impl ControlPlaneClient {
    pub fn new(base_url: &str, admin_token: Option<String>) -> Result<Self, ClientError> {
        Self::with_ca(base_url, admin_token, None)
    }

    /// Trusting the CAs in `ca` as well as the built-in roots for an `https://` URL.
    pub fn with_ca(
        base_url: &str,
        admin_token: Option<String>,
        ca: Option<&CaBundle>,
    ) -> Result<Self, ClientError> {
        let http = crate::tls::http_client(ca, Duration::from_secs(10))
            .map_err(|e| ClientError::Transport { url: base_url.to_owned(), message: e.to_string() })?;
        Ok(Self { base_url: base_url.trim_end_matches('/').to_owned(), admin_token, http })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    fn transport(&self, error: reqwest::Error) -> ClientError {
        // The chain, not just reqwest's top line: the cause (refused, untrusted
        // certificate) is in the sources.
        ClientError::Transport { url: self.base_url.clone(), message: error_chain(&error.without_url()) }
    }

    fn authorised(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.admin_token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    async fn decode<T: DeserializeOwned>(&self, response: Response) -> Result<T, ClientError> {
        let status = response.status();
        if status.is_success() {
            return response.json::<T>().await.map_err(|e| ClientError::Decode(e.to_string()));
        }
        Err(self.problem(response).await)
    }

    async fn problem(&self, response: Response) -> ClientError {
        let status = response.status();
        match response.json::<Problem>().await {
            Ok(problem) => ClientError::Problem(problem),
            Err(_) => ClientError::Status { status },
        }
    }

    pub async fn issue_token(&self, request: &TokenRequest) -> Result<IssuedToken, ClientError> {
        let response = self
            .authorised(self.http.post(self.url("/admin/v1/tokens")))
            .json(request)
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        self.decode(response).await
    }

    pub async fn status(&self) -> Result<StatusReport, ClientError> {
        self.get_json("/admin/v1/status").await
    }

    async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let response =
            self.authorised(self.http.get(self.url(path))).send().await.map_err(|e| self.transport(e))?;
        self.decode(response).await
    }

    async fn post_json<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let response = self
            .authorised(self.http.post(self.url(path)))
            .json(body)
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        self.decode(response).await
    }

    pub async fn refresh_token(&self, refresh_token: &str) -> Result<IssuedToken, ClientError> {
        let body = RefreshRequest { refresh_token: refresh_token.to_owned() };
        self.post_json("/v1/token/refresh", &body).await
    }

    pub async fn create_api_token(&self, request: &CreateApiToken) -> Result<CreatedApiToken, ClientError> {
        self.post_json("/admin/v1/api-tokens", request).await
    }

    pub async fn list_api_tokens(&self, user: &str) -> Result<ApiTokenList, ClientError> {
        self.get_json(&format!("/admin/v1/users/{}/api-tokens", path_segment(user))).await
    }

    pub async fn show_api_token(&self, id: &str) -> Result<ApiTokenInfo, ClientError> {
        self.get_json(&format!("/admin/v1/api-tokens/{}", path_segment(id))).await
    }

    pub async fn revoke_api_token(&self, id: &str) -> Result<ApiTokenInfo, ClientError> {
        self.post_json(&format!("/admin/v1/api-tokens/{}/revoke", path_segment(id)), &serde_json::json!({}))
            .await
    }

    /// Revokes every API token of `user`.
    pub async fn revoke_api_tokens_of(&self, user: &str) -> Result<ApiTokensRevoked, ClientError> {
        let path = format!("/admin/v1/users/{}/api-tokens/revoke-all", path_segment(user));
        self.post_json(&path, &serde_json::json!({})).await
    }

    pub async fn create_hmac_key(
        &self,
        request: &crate::hmac_keys::CreateHmacKey,
    ) -> Result<crate::hmac_keys::HmacKeySecret, ClientError> {
        self.post_json("/admin/v1/hmac-keys", request).await
    }

    pub async fn rotate_hmac_key(
        &self,
        id: &str,
        request: &crate::hmac_keys::RotateHmacKey,
    ) -> Result<crate::hmac_keys::HmacKeySecret, ClientError> {
        self.post_json(&format!("/admin/v1/hmac-keys/{}/rotate", path_segment(id)), request).await
    }

    pub async fn list_hmac_keys(&self) -> Result<crate::hmac_keys::HmacKeyList, ClientError> {
        self.get_json("/admin/v1/hmac-keys").await
    }

    pub async fn revoke_hmac_key(&self, id: &str) -> Result<crate::hmac_keys::HmacKeyInfo, ClientError> {
        self.post_json(&format!("/admin/v1/hmac-keys/{}/revoke", path_segment(id)), &serde_json::json!({}))
            .await
    }

    pub async fn list_keys(&self) -> Result<KeyList, ClientError> {
        self.get_json("/admin/v1/keys").await
    }

    pub async fn rotate_keys(&self) -> Result<Rotation, ClientError> {
        self.post_json("/admin/v1/keys/rotate", &serde_json::json!({})).await
    }

    /// Revokes one signing key (`Some(kid)`) or all of them (`None`).
    pub async fn revoke_keys(&self, kid: Option<&str>) -> Result<KeyRevocation, ClientError> {
        let path = match kid {
            Some(kid) => format!("/admin/v1/keys/{}/revoke", path_segment(kid)),
            None => "/admin/v1/keys/revoke-all".to_owned(),
        };
        self.post_json(&path, &serde_json::json!({})).await
    }

    pub async fn revoke_jti(&self, jti: &str, exp: u64) -> Result<RevocationAccepted, ClientError> {
        let body = RevocationRequest { jti: jti.to_owned(), exp };
        self.post_json("/admin/v1/revocations", &body).await
    }

    pub async fn revoke_user(&self, sub: &str) -> Result<UserRevocation, ClientError> {
        self.post_json(&format!("/admin/v1/users/{}/revoke-all", path_segment(sub)), &serde_json::json!({}))
            .await
    }

    pub async fn rotate_global(&self, reason: &str, grace_seconds: u64) -> Result<GlobalState, ClientError> {
        let body = GlobalRotateRequest { reason: reason.to_owned(), grace_seconds };
        self.post_json("/admin/v1/global/rotate", &body).await
    }

    pub async fn global(&self) -> Result<GlobalState, ClientError> {
        self.get_json("/admin/v1/global").await
    }

    pub async fn user_sessions(&self, sub: &str) -> Result<Value, ClientError> {
        self.get_json(&format!("/admin/v1/users/{}/sessions", path_segment(sub))).await
    }

    pub async fn revoke_session(&self, sid: &str) -> Result<RevokedSession, ClientError> {
        let response = self
            .authorised(self.http.delete(self.url(&format!("/admin/v1/sessions/{}", path_segment(sid)))))
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        self.decode(response).await
    }

    pub async fn list_lockouts(&self) -> Result<LockoutList, ClientError> {
        self.get_json("/admin/v1/lockouts").await
    }

    /// One subject's failures and lock, by raw value (the server hashes it).
    pub async fn show_lockout(&self, kind: SubjectKind, value: &str) -> Result<LockoutInfo, ClientError> {
        self.get_json(&lockout_path(kind, value)).await
    }

    /// Forgets a subject's failures and lock; answers what was cleared.
    pub async fn clear_lockout(&self, kind: SubjectKind, value: &str) -> Result<LockoutInfo, ClientError> {
        let response = self
            .authorised(self.http.delete(self.url(&lockout_path(kind, value))))
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        self.decode(response).await
    }

    pub async fn dead_letters(&self) -> Result<DeadLetterList, ClientError> {
        self.get_json("/admin/v1/webhooks/dead-letters").await
    }

    /// Retries one dead letter (`Some(id)`) or all of them.
    pub async fn retry_dead_letters(&self, id: Option<&str>) -> Result<DeadLetterAction, ClientError> {
        let path = match id {
            Some(id) => format!("/admin/v1/webhooks/dead-letters/{}/retry", path_segment(id)),
            None => "/admin/v1/webhooks/dead-letters/retry".to_owned(),
        };
        self.post_json(&path, &serde_json::json!({})).await
    }

    /// Purges one dead letter (`Some(id)`) or all of them.
    pub async fn purge_dead_letters(&self, id: Option<&str>) -> Result<DeadLetterAction, ClientError> {
        let path = match id {
            Some(id) => format!("/admin/v1/webhooks/dead-letters/{}", path_segment(id)),
            None => "/admin/v1/webhooks/dead-letters".to_owned(),
        };
        let response =
            self.authorised(self.http.delete(self.url(&path))).send().await.map_err(|e| self.transport(e))?;
        self.decode(response).await
    }

    /// One page of the audit log (`query` holds the filters, the cursor and the order).
    pub async fn audit_page(&self, query: &AuditQuery) -> Result<AuditPage, ClientError> {
        let response = self
            .authorised(self.http.get(self.url("/admin/v1/audit")))
            .query(query)
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        self.decode(response).await
    }

    pub async fn audit_verify(&self) -> Result<Verification, ClientError> {
        self.get_json("/admin/v1/audit/verify").await
    }

    pub async fn audit_checkpoint(&self) -> Result<AuditRecord, ClientError> {
        self.post_json("/admin/v1/audit/checkpoint", &serde_json::json!({})).await
    }

    pub async fn health(&self) -> Result<HealthReport, ClientError> {
        let alive = self
            .http
            .get(self.url("/healthz"))
            .send()
            .await
            .map_err(|e| self.transport(e))?
            .status()
            .is_success();
        let ready = self.http.get(self.url("/readyz")).send().await.map_err(|e| self.transport(e))?;
        if ready.status().is_success() {
            return Ok(HealthReport { alive, ready: true, not_ready_reason: None });
        }
        let reason = match self.problem(ready).await {
            ClientError::Problem(problem) => problem.detail,
            other => other.to_string(),
        };
        Ok(HealthReport { alive, ready: false, not_ready_reason: Some(reason) })
    }
}

fn lockout_path(kind: SubjectKind, value: &str) -> String {
    format!("/admin/v1/lockouts/{}/{}", kind.as_str(), path_segment(value))
}

/// Percent-encodes a path segment (subjects may contain `/`, spaces, ...).
fn path_segment(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
