//! Local replies for denied requests: RFC 6750 `WWW-Authenticate` challenges for bearer
//! tokens, with a small JSON body. Nothing from the token or the keys is echoed back.

use crate::account::AccountError;
use crate::api_token::Refusal;
use crate::jwt::reason::Reason;
use crate::path::PathRejection;
use crate::signature::Reason as SignatureReason;

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// No credentials where the rule's providers look for them.
    MissingCredentials,
    /// A token was presented and rejected.
    InvalidToken(Reason),
    /// An API token was presented and refused (`unknown_token`, `bad_secret`,
    /// `expired`, `revoked`, `malformed`).
    InvalidApiToken(Refusal),
    /// More than one credential (a JWT and an API token, or two API tokens): 400
    /// `invalid_request` (RFC 6750 §2: one method per request).
    MultipleCredentials,
    /// The API token replica has not been synced yet: the rule fails closed.
    ApiTokensUnavailable,
    /// The token is valid but lacks a required scope (listed).
    InsufficientScope(Vec<String>),
    /// The token is valid but carries none of the required roles.
    InsufficientRole,
    /// No rule matched and the policy denies unmatched requests.
    NoMatchingRule,
    /// The keys needed to check the token could not be obtained.
    KeysUnavailable,
    /// The revocation replica is older than allowed and the rule fails closed.
    RevocationUnavailable,
    /// A rate limit is exhausted: 429 with `Retry-After` and the `RateLimit-*` headers
    /// of the exhausted limit.
    RateLimited { retry_after_secs: u64, headers: Vec<(String, String)> },
    /// The control plane could not answer for a limit that fails closed.
    RateLimitUnavailable,
    /// The account or address of a login attempt is locked.
    LockedOut { retry_after_secs: u64 },
    /// The control plane could not answer a lock check that fails closed.
    LockoutUnavailable,
    /// The client address is blocked after a burst.
    AddressBlocked { retry_after_secs: u64 },
    /// A login attempt on a lockout route whose account cannot be read: 400, 413 or 415.
    LoginUnreadable(AccountError),
    /// The path is ambiguous (see [`crate::path`]): 400, whatever the rule.
    InvalidPath(PathRejection),
    /// A signed request's signature was refused: 401 with a `Signature` challenge.
    InvalidSignature(SignatureReason),
    /// A signed request's body is over the rule's cap: 413.
    SignedBodyTooLarge,
    /// The replay guard could not answer: 503.
    ReplayGuardUnavailable,
    /// The control plane's HMAC keys have not been synced yet (or are older than the
    /// rule accepts): 503.
    SignatureKeysUnavailable,
}

impl Denial {
    /// Stable code for metrics and logs.
    pub fn code(&self) -> &'static str {
        match self {
            Denial::MissingCredentials => "missing_token",
            Denial::InvalidToken(r) => r.as_str(),
            Denial::InvalidApiToken(r) => r.as_str(),
            Denial::MultipleCredentials => "multiple_credentials",
            Denial::ApiTokensUnavailable => "api_tokens_unavailable",
            Denial::InsufficientScope(_) => "insufficient_scope",
            Denial::InsufficientRole => "insufficient_role",
            Denial::NoMatchingRule => "no_matching_rule",
            Denial::KeysUnavailable => "keys_unavailable",
            Denial::RevocationUnavailable => "revocation_unavailable",
            Denial::RateLimited { .. } => "rate_limited",
            Denial::RateLimitUnavailable => "rate_limit_unavailable",
            Denial::LockedOut { .. } => "locked_out",
            Denial::LockoutUnavailable => "lockout_unavailable",
            Denial::AddressBlocked { .. } => "address_blocked",
            Denial::LoginUnreadable(e) => e.code(),
            Denial::InvalidPath(r) => r.code(),
            Denial::InvalidSignature(r) => r.as_str(),
            Denial::SignedBodyTooLarge => "body_too_large",
            Denial::ReplayGuardUnavailable => "replay_guard_unavailable",
            Denial::SignatureKeysUnavailable => "signature_keys_unavailable",
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            Denial::MissingCredentials | Denial::InvalidToken(_) | Denial::InvalidApiToken(_) => 401,
            Denial::MultipleCredentials => 400,
            Denial::InsufficientScope(_) | Denial::InsufficientRole | Denial::NoMatchingRule => 403,
            Denial::KeysUnavailable
            | Denial::RevocationUnavailable
            | Denial::ApiTokensUnavailable
            | Denial::RateLimitUnavailable
            | Denial::LockoutUnavailable => 503,
            Denial::RateLimited { .. } | Denial::LockedOut { .. } | Denial::AddressBlocked { .. } => 429,
            Denial::LoginUnreadable(e) => e.status(),
            Denial::InvalidPath(_) => 400,
            Denial::InvalidSignature(_) => 401,
            Denial::SignedBodyTooLarge => 413,
            Denial::ReplayGuardUnavailable | Denial::SignatureKeysUnavailable => 503,
        }
    }

    /// The reply: status, headers and body.
    pub fn render(&self, realm: &str) -> LocalReply {
        let (error, description) = self.error_and_description();
        let body = serde_json::json!({
            "error": error,
            "reason": self.code(),
            "error_description": description,
        })
        .to_string();
        let mut headers = vec![
            ("content-type".to_string(), "application/json".to_string()),
            ("cache-control".to_string(), "no-store".to_string()),
        ];
        if let Some(c) = self.challenge(&quote_safe(realm)) {
            headers.push(("www-authenticate".to_string(), c));
        }
        self.push_retry_headers(&mut headers);
        LocalReply { status: self.status(), headers, body }
    }

    /// The RFC 6750 `WWW-Authenticate` challenge, for the denials of a bearer token;
    /// `realm` is quoted already.
    fn challenge(&self, realm: &str) -> Option<String> {
        match self {
            Denial::MissingCredentials => Some(format!("Bearer realm=\"{realm}\"")),
            Denial::InvalidToken(reason) => Some(format!(
                "Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{}\"",
                reason.as_str()
            )),
            Denial::InvalidApiToken(reason) => Some(format!(
                "Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{}\"",
                reason.as_str()
            )),
            Denial::MultipleCredentials => Some(format!(
                "Bearer realm=\"{realm}\", error=\"invalid_request\", error_description=\"multiple_credentials\""
            )),
            Denial::InsufficientScope(scopes) => {
                let scope = scopes.iter().map(|s| quote_safe(s)).collect::<Vec<_>>().join(" ");
                Some(format!("Bearer realm=\"{realm}\", error=\"insufficient_scope\", scope=\"{scope}\""))
            }
            Denial::InsufficientRole => Some(format!(
                "Bearer realm=\"{realm}\", error=\"insufficient_scope\", error_description=\"insufficient_role\""
            )),
            Denial::InvalidSignature(reason) => {
                Some(format!("Signature realm=\"{realm}\", error=\"{}\"", reason.as_str()))
            }
            _ => None,
        }
    }

    /// The body's `error` and `error_description`.
    fn error_and_description(&self) -> (&'static str, String) {
        match self {
            Denial::MissingCredentials => ("unauthorized", "a bearer token is required".to_string()),
            Denial::InvalidToken(reason) => ("invalid_token", reason.description().to_string()),
            Denial::InvalidApiToken(reason) => ("invalid_token", reason.description().to_string()),
            Denial::MultipleCredentials => {
                ("invalid_request", "present one credential: a JWT or an API token, once".to_string())
            }
            Denial::ApiTokensUnavailable => (
                "temporarily_unavailable",
                "API tokens cannot be checked until the first sync with the control plane".to_string(),
            ),
            Denial::InsufficientScope(_) => {
                ("insufficient_scope", "the token lacks a required scope".to_string())
            }
            Denial::InsufficientRole => ("insufficient_scope", "the token lacks a required role".to_string()),
            Denial::NoMatchingRule => ("forbidden", "no rule allows this request".to_string()),
            Denial::KeysUnavailable => {
                ("temporarily_unavailable", "the keys to verify the token are not available yet".to_string())
            }
            Denial::RevocationUnavailable => {
                ("temporarily_unavailable", "revocation state is out of date; try again shortly".to_string())
            }
            Denial::RateLimited { .. } => ("rate_limited", "too many requests".to_string()),
            Denial::RateLimitUnavailable | Denial::LockoutUnavailable => (
                "temporarily_unavailable",
                "the rate-limit service did not answer; try again shortly".to_string(),
            ),
            Denial::LockedOut { .. } => {
                ("locked_out", "too many failed login attempts; try again later".to_string())
            }
            Denial::AddressBlocked { .. } => {
                ("address_blocked", "too many requests from this address".to_string())
            }
            Denial::LoginUnreadable(e) => ("invalid_request", e.description()),
            Denial::InvalidPath(r) => ("invalid_request", r.description().to_string()),
            Denial::InvalidSignature(r) => ("invalid_signature", r.description().to_string()),
            Denial::SignedBodyTooLarge => {
                ("invalid_request", "the body is larger than a signed request may be here".to_string())
            }
            Denial::ReplayGuardUnavailable => {
                ("temporarily_unavailable", "the replay guard did not answer; try again shortly".to_string())
            }
            Denial::SignatureKeysUnavailable => (
                "temporarily_unavailable",
                "the signature keys are not available from the control plane yet; try again shortly"
                    .to_string(),
            ),
        }
    }

    /// `Retry-After` (and a limit's `RateLimit-*` headers) for the denials worth retrying.
    fn push_retry_headers(&self, headers: &mut Vec<(String, String)>) {
        match self {
            Denial::KeysUnavailable
            | Denial::RevocationUnavailable
            | Denial::ApiTokensUnavailable
            | Denial::RateLimitUnavailable
            | Denial::LockoutUnavailable
            | Denial::ReplayGuardUnavailable
            | Denial::SignatureKeysUnavailable => headers.push(("retry-after".to_string(), "1".to_string())),
            Denial::RateLimited { retry_after_secs, headers: limit_headers } => {
                headers.push(("retry-after".to_string(), retry_after_secs.max(&1).to_string()));
                headers.extend(limit_headers.iter().cloned());
            }
            Denial::LockedOut { retry_after_secs } | Denial::AddressBlocked { retry_after_secs } => {
                headers.push(("retry-after".to_string(), retry_after_secs.max(&1).to_string()));
            }
            _ => {}
        }
    }
}

/// A reply the filter sends without contacting the upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// Values inside an RFC 7235 quoted-string: drop quotes, backslashes and controls.
fn quote_safe(s: &str) -> String {
    s.chars().filter(|c| c.is_ascii() && !c.is_ascii_control() && *c != '"' && *c != '\\').collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn missing_token_gets_bare_bearer_challenge_with_realm() {
        let r = Denial::MissingCredentials.render("api");
        assert_eq!(r.status, 401);
        let www: Vec<_> = r.headers.iter().filter(|(n, _)| n == "www-authenticate").collect();
        assert_eq!(www.len(), 1);
        assert_eq!(www[0].1, "Bearer realm=\"api\"");
    }

    #[test]
    fn invalid_token_challenge_names_the_stable_reason() {
        let r = Denial::InvalidToken(Reason::Expired).render("api");
        assert_eq!(r.status, 401);
        let www = r.headers.iter().find(|(n, _)| n == "www-authenticate").map(|(_, v)| v.as_str());
        assert_eq!(www, Some("Bearer realm=\"api\", error=\"invalid_token\", error_description=\"expired\""));
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(body["reason"], "expired");
    }

    #[test]
    fn insufficient_scope_is_403_and_lists_the_scopes() {
        let r = Denial::InsufficientScope(vec!["read".into(), "write".into()]).render("api");
        assert_eq!(r.status, 403);
        let www = r.headers.iter().find(|(n, _)| n == "www-authenticate").map(|(_, v)| v.as_str());
        assert_eq!(www, Some("Bearer realm=\"api\", error=\"insufficient_scope\", scope=\"read write\""));
    }

    #[test]
    fn realm_cannot_break_out_of_the_quoted_string() {
        let r = Denial::MissingCredentials.render("a\"b\\c\r\n");
        let www = r.headers.iter().find(|(n, _)| n == "www-authenticate").map(|(_, v)| v.as_str());
        assert_eq!(www, Some("Bearer realm=\"abc\""));
    }

    #[test]
    fn rate_limited_is_429_with_retry_after_and_the_limit_headers() {
        let limit_headers = crate::ratelimit::rate_limit_headers(10, 0, 60, "10;w=60");
        let r = Denial::RateLimited { retry_after_secs: 6, headers: limit_headers }.render("api");
        assert_eq!(r.status, 429);
        let get = |n: &str| r.headers.iter().find(|(h, _)| h == n).map(|(_, v)| v.as_str());
        assert_eq!(get("retry-after"), Some("6"));
        assert_eq!(get("ratelimit-limit"), Some("10"));
        assert_eq!(get("ratelimit-remaining"), Some("0"));
        assert_eq!(get("ratelimit-policy"), Some("10;w=60"));
        assert_eq!(get("www-authenticate"), None);
        let locked = Denial::LockedOut { retry_after_secs: 30 }.render("api");
        assert_eq!(locked.status, 429);
        assert!(locked.headers.contains(&("retry-after".to_string(), "30".to_string())));
        assert!(locked.body.contains("locked_out"));
        let down = Denial::RateLimitUnavailable.render("api");
        assert_eq!(
            (down.status, down.headers.iter().any(|(n, v)| n == "retry-after" && v == "1")),
            (503, true)
        );
    }

    #[test]
    fn an_unreadable_login_is_refused_with_its_reason_and_no_challenge() {
        let r = Denial::LoginUnreadable(AccountError::Ambiguous).render("api");
        assert_eq!(r.status, 400);
        assert!(r.headers.iter().all(|(n, _)| n != "www-authenticate" && n != "retry-after"));
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(
            (body["error"].as_str(), body["reason"].as_str()),
            (Some("invalid_request"), Some("account_ambiguous"))
        );
        let r =
            Denial::LoginUnreadable(AccountError::ContentType { expected: "application/json" }).render("api");
        assert_eq!(r.status, 415);
        assert!(r.body.contains("application/json"), "{}", r.body);
        assert_eq!(Denial::LoginUnreadable(AccountError::BodyTooLarge).render("api").status, 413);
    }

    #[test]
    fn an_ambiguous_path_is_400_with_its_reason_and_no_challenge() {
        let r = Denial::InvalidPath(PathRejection::EncodedSlash).render("api");
        assert_eq!(r.status, 400);
        assert!(r.headers.iter().all(|(n, _)| n != "www-authenticate"));
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(body["error"], "invalid_request");
        assert_eq!(body["reason"], "path_encoded_slash");
    }

    #[test]
    fn a_refused_api_token_is_401_invalid_token_with_its_reason_and_two_credentials_are_400() {
        let r = Denial::InvalidApiToken(Refusal::Revoked).render("api");
        assert_eq!(r.status, 401);
        let www = r.headers.iter().find(|(n, _)| n == "www-authenticate").map(|(_, v)| v.as_str());
        assert_eq!(www, Some("Bearer realm=\"api\", error=\"invalid_token\", error_description=\"revoked\""));
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(
            (body["error"].as_str(), body["reason"].as_str()),
            (Some("invalid_token"), Some("revoked"))
        );
        let r = Denial::MultipleCredentials.render("api");
        assert_eq!(r.status, 400);
        let www = r.headers.iter().find(|(n, _)| n == "www-authenticate").map(|(_, v)| v.as_str());
        assert!(www.is_some_and(|w| w.contains("error=\"invalid_request\"")), "{www:?}");
        let r = Denial::ApiTokensUnavailable.render("api");
        assert_eq!(r.status, 503);
        assert!(r.headers.iter().any(|(n, v)| n == "retry-after" && v == "1"));
    }

    #[test]
    fn a_refused_signature_is_401_with_a_signature_challenge_and_its_reason_only() {
        let r = Denial::InvalidSignature(SignatureReason::BadSignature).render("api");
        assert_eq!(r.status, 401);
        let www = r.headers.iter().find(|(n, _)| n == "www-authenticate").map(|(_, v)| v.as_str());
        assert_eq!(www, Some("Signature realm=\"api\", error=\"bad_signature\""));
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(
            (body["error"].as_str(), body["reason"].as_str()),
            (Some("invalid_signature"), Some("bad_signature"))
        );
        assert_eq!(Denial::SignedBodyTooLarge.render("api").status, 413);
        let down = Denial::ReplayGuardUnavailable.render("api");
        assert!(down.status == 503 && down.headers.iter().any(|(n, v)| n == "retry-after" && v == "1"));
    }

    #[test]
    fn unmatched_request_is_403_without_a_challenge() {
        let r = Denial::NoMatchingRule.render("api");
        assert_eq!(r.status, 403);
        assert!(r.headers.iter().all(|(n, _)| n != "www-authenticate"));
    }
}
