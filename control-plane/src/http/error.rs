//! Every error the API returns, as RFC 9457 `application/problem+json`.
//!
//! [`ApiError`] knows its status and problem type; internal details are logged here and
//! replaced by a generic message for the client. [`problem_for_bare_errors`] turns the
//! few responses axum produces by itself (405, ...) into problems too.

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE, WWW_AUTHENTICATE};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::store::StoreError;
use portcullis_core::fleet::INTERNAL_REALM;

pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";
/// The `realm` of the admin API's bearer challenge.
pub const ADMIN_REALM: &str = "portcullis-admin";
const PROBLEM_TYPE_BASE: &str = "urn:portcullis:problem:";

/// An RFC 9457 problem document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub type_: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    #[error("payload too large: {0}")]
    PayloadTooLarge(String),
    #[error("missing admin token")]
    MissingAdminToken,
    #[error("invalid admin token")]
    InvalidAdminToken,
    #[error("missing fleet credential")]
    MissingFleetCredential,
    #[error("invalid fleet credential")]
    InvalidFleetCredential,
    #[error("not found")]
    NotFound,
    /// A named resource does not exist (`detail` says which).
    #[error("not found: {0}")]
    NoSuchResource(String),
    /// The request cannot be carried out in the current state (`detail` says why).
    #[error("conflict: {0}")]
    Conflict(String),
    /// OAuth-style `invalid_grant`: a refresh token that cannot be used.
    #[error("invalid grant: {0}")]
    InvalidGrant(String),
    #[error("not ready: {0}")]
    NotReady(String),
    #[error("store error: {0}")]
    Store(#[from] StoreError),
    /// Something that is our fault; the message is logged, never sent.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::MissingAdminToken
            | ApiError::InvalidAdminToken
            | ApiError::MissingFleetCredential
            | ApiError::InvalidFleetCredential => StatusCode::UNAUTHORIZED,
            ApiError::NotFound | ApiError::NoSuchResource(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::InvalidGrant(_) => StatusCode::BAD_REQUEST,
            ApiError::NotReady(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Store(e) if e.is_transient() => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Store(_) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn problem(&self) -> Problem {
        let (slug, title, detail) = match self {
            ApiError::InvalidRequest(d) => ("invalid-request", "Invalid request", d.clone()),
            ApiError::UnsupportedMediaType(d) => {
                ("unsupported-media-type", "Unsupported media type", d.clone())
            }
            ApiError::PayloadTooLarge(d) => ("payload-too-large", "Payload too large", d.clone()),
            ApiError::MissingAdminToken => (
                "missing-credentials",
                "Authentication required",
                "Send the admin token as `Authorization: Bearer <token>`.".to_owned(),
            ),
            ApiError::InvalidAdminToken => (
                "invalid-token",
                "Invalid admin token",
                "The bearer token is not the admin token.".to_owned(),
            ),
            ApiError::MissingFleetCredential => (
                "missing-credentials",
                "Authentication required",
                "Send the fleet credential as `Authorization: Bearer <credential>`.".to_owned(),
            ),
            ApiError::InvalidFleetCredential => (
                "invalid-token",
                "Invalid fleet credential",
                "The bearer credential is not a fleet credential of this control plane.".to_owned(),
            ),
            ApiError::NotFound => ("not-found", "Not found", "There is no resource at this path.".to_owned()),
            ApiError::NoSuchResource(d) => ("not-found", "Not found", d.clone()),
            ApiError::Conflict(d) => ("conflict", "Conflict", d.clone()),
            ApiError::InvalidGrant(d) => ("invalid_grant", "Invalid grant", d.clone()),
            ApiError::NotReady(d) => ("not-ready", "Not ready", d.clone()),
            ApiError::Store(e) if e.is_transient() => (
                "store-unavailable",
                "Store unavailable",
                "The state store is temporarily unavailable; retry later.".to_owned(),
            ),
            ApiError::Store(_) | ApiError::Internal(_) => (
                "internal",
                "Internal server error",
                "The server failed to handle the request; see its logs.".to_owned(),
            ),
        };
        Problem {
            type_: format!("{PROBLEM_TYPE_BASE}{slug}"),
            title: title.to_owned(),
            status: self.status().as_u16(),
            detail,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::Store(e) if e.is_transient() => {
                tracing::warn!(error = %e, kind = e.kind(), "store unavailable");
            }
            ApiError::Store(e) => tracing::error!(error = %e, kind = e.kind(), "store failure"),
            ApiError::Internal(message) => tracing::error!(error = %message, "internal error"),
            _ => {}
        }
        let mut response = problem_response(&self.problem());
        let challenge = match self {
            ApiError::MissingAdminToken => Some(format!(r#"Bearer realm="{ADMIN_REALM}""#)),
            ApiError::InvalidAdminToken => {
                Some(format!(r#"Bearer realm="{ADMIN_REALM}", error="invalid_token""#))
            }
            ApiError::MissingFleetCredential => Some(format!(r#"Bearer realm="{INTERNAL_REALM}""#)),
            ApiError::InvalidFleetCredential => {
                Some(format!(r#"Bearer realm="{INTERNAL_REALM}", error="invalid_token""#))
            }
            _ => None,
        };
        if let Some(value) = challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            response.headers_mut().insert(WWW_AUTHENTICATE, value);
        }
        response
    }
}

fn problem_response(problem: &Problem) -> Response {
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, Json(problem)).into_response();
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_CONTENT_TYPE));
    response
}

impl From<crate::revocations::RevocationError> for ApiError {
    fn from(e: crate::revocations::RevocationError) -> Self {
        use crate::revocations::RevocationError as E;
        match e {
            E::InvalidRequest(m) => ApiError::InvalidRequest(m),
            E::Store(e) => ApiError::Store(e),
            E::Contended => ApiError::Store(StoreError::Busy(e.to_string())),
            E::Random(_) => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<crate::api_tokens::ApiTokenError> for ApiError {
    fn from(e: crate::api_tokens::ApiTokenError) -> Self {
        use crate::api_tokens::ApiTokenError as E;
        match e {
            E::InvalidRequest(m) => ApiError::InvalidRequest(m),
            E::NotFound(_) => ApiError::NoSuchResource(e.to_string()),
            E::Conflict(m) => ApiError::Conflict(m),
            E::Store(e) => ApiError::Store(e),
            E::Contended => ApiError::Store(StoreError::Busy(e.to_string())),
            E::Random(_) | E::Config(_) => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<crate::hmac_keys::HmacKeyError> for ApiError {
    fn from(e: crate::hmac_keys::HmacKeyError) -> Self {
        use crate::hmac_keys::HmacKeyError as E;
        match e {
            E::InvalidRequest(m) => ApiError::InvalidRequest(m),
            E::NotFound(_) => ApiError::NoSuchResource(e.to_string()),
            E::Conflict(m) => ApiError::Conflict(m),
            E::Store(e) => ApiError::Store(e),
            E::Contended => ApiError::Store(StoreError::Busy(e.to_string())),
            E::Random(_) | E::Sealing(_) => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<crate::sessions::SessionError> for ApiError {
    fn from(e: crate::sessions::SessionError) -> Self {
        use crate::sessions::SessionError as E;
        match e {
            E::InvalidRequest(m) => ApiError::InvalidRequest(m),
            E::InvalidGrant(m) => ApiError::InvalidGrant(m.to_owned()),
            E::Store(e) => ApiError::Store(e),
            E::Contended => ApiError::Store(StoreError::Busy(e.to_string())),
            E::Random(_) | E::Encoding(_) => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<crate::keys::KeyRingError> for ApiError {
    fn from(e: crate::keys::KeyRingError) -> Self {
        use crate::keys::KeyRingError as E;
        match e {
            E::Store(e) => ApiError::Store(e),
            E::Contended => ApiError::Store(StoreError::Busy(e.to_string())),
            E::UnknownKey(kid) => ApiError::NoSuchResource(format!("There is no signing key {kid:?}.")),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<crate::webhooks::WebhookError> for ApiError {
    fn from(e: crate::webhooks::WebhookError) -> Self {
        use crate::webhooks::WebhookError as E;
        match e {
            E::Store(e) => ApiError::Store(e),
            E::NoSuchDeadLetter(id) => ApiError::NoSuchResource(format!(
                "There is no dead letter {id:?} (it was retried or purged)."
            )),
            E::OutboxFull(_) => ApiError::Conflict(e.to_string()),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection.status() {
            StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType(rejection.body_text()),
            StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(rejection.body_text()),
            _ => ApiError::InvalidRequest(rejection.body_text()),
        }
    }
}

/// `Json` whose rejections are problems (always 400 for bad JSON, not axum's 422).
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Json(value) = Json::<T>::from_request(req, state).await?;
        Ok(ApiJson(value))
    }
}

/// Fallback for paths no route matches.
pub async fn not_found() -> ApiError {
    ApiError::NotFound
}

/// Middleware: any error response that is not already a problem (axum's own 405, a
/// rejection from a layer) becomes one, keeping its status and headers (`Allow`).
pub async fn problem_for_bare_errors(response: Response) -> Response {
    let status = response.status();
    let is_problem = response
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(PROBLEM_CONTENT_TYPE.as_bytes()));
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return response;
    }
    let title = status.canonical_reason().unwrap_or("Error");
    let slug = title.to_ascii_lowercase().replace(' ', "-");
    let detail = match status {
        StatusCode::METHOD_NOT_ALLOWED => "This resource does not support the method.".to_owned(),
        _ => format!("The request failed: {title}."),
    };
    let problem = Problem {
        type_: format!("{PROBLEM_TYPE_BASE}{slug}"),
        title: title.to_owned(),
        status: status.as_u16(),
        detail,
    };
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(CONTENT_LENGTH);
    parts.headers.insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_CONTENT_TYPE));
    let body = serde_json::to_vec(&problem).unwrap_or_default();
    Response::from_parts(parts, Body::from(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn problem_of(error: ApiError) -> (StatusCode, Problem) {
        let response = error.into_response();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn internal_errors_hide_their_cause_from_the_client() {
        let (status, problem) = problem_of(ApiError::Internal("key at /secret/path".into())).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!problem.detail.contains("/secret/path"));

        let (status, problem) =
            problem_of(ApiError::Store(StoreError::Script("ERR user_script:3".into()))).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!problem.detail.contains("user_script"));
    }

    #[tokio::test]
    async fn transient_store_errors_are_503() {
        let (status, problem) = problem_of(ApiError::Store(StoreError::Unavailable("refused".into()))).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(problem.type_, "urn:portcullis:problem:store-unavailable");
        assert!(!problem.detail.contains("refused"));
    }
}
