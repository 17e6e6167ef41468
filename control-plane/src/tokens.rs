//! Minting access tokens: JWTs signed with the current key, with the claims the
//! filter checks.
//!
//! Pure given its inputs (policy, key, time, randomness), so it is tested without a
//! server. The wire types of `POST /admin/v1/tokens` live here too; the CLI reuses them.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::random::{RandomError, RandomSource};
use crate::signing::SigningKeyPair;

/// The longest lifetime an access token may be minted with (24 hours).
pub const MAX_TOKEN_TTL_SECONDS: u64 = 86_400;
/// Default lifetime of refresh tokens (7 days).
pub const DEFAULT_REFRESH_TOKEN_TTL_SECONDS: u64 = 7 * 86_400;
/// Claims the control plane sets itself; `claims` in a request may not override them.
pub const RESERVED_CLAIMS: &[&str] =
    &["iss", "sub", "aud", "iat", "exp", "nbf", "jti", "ver", "scope", "sid"];

const MAX_SUBJECT_LEN: usize = 256;
const MAX_SCOPES: usize = 64;
const MAX_SCOPE_LEN: usize = 128;
const MAX_EXTRA_CLAIMS_BYTES: usize = 4096;

/// Issuer-side settings for minted tokens.
#[derive(Debug, Clone)]
pub struct TokenPolicy {
    pub issuer: String,
    pub default_audience: String,
    pub default_ttl_seconds: u64,
    /// Lifetime of each refresh token; a refresh hands out a new one.
    pub refresh_ttl_seconds: u64,
}

/// Claims decided by the control plane's state rather than the request.
#[derive(Debug, Clone, Copy)]
pub struct MintContext<'a> {
    /// `ver`: max(global minimum, the subject's minimum) when minting.
    pub version: u64,
    /// `sid`: the session (refresh token family) the token belongs to.
    pub session_id: Option<&'a str>,
}

/// Body of `POST /admin/v1/tokens`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenRequest {
    pub sub: String,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claims: Option<Map<String, Value>>,
}

/// Response of `POST /admin/v1/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IssuedToken {
    pub access_token: String,
    pub token_type: String,
    pub expires_in: u64,
    pub jti: String,
    /// Opaque, single use; exchange at `POST /v1/token/refresh`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_expires_in: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
}

/// Body of `POST /v1/token/refresh`.
#[derive(Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

impl std::fmt::Debug for RefreshRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RefreshRequest(..)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The request is not acceptable; the message says which field and why.
    #[error("{0}")]
    InvalidRequest(String),
    #[error(transparent)]
    Random(#[from] RandomError),
    #[error("cannot encode token: {0}")]
    Encoding(#[from] serde_json::Error),
}

fn invalid(message: impl Into<String>) -> TokenError {
    TokenError::InvalidRequest(message.into())
}

fn is_printable(text: &str) -> bool {
    !text.chars().any(char::is_control)
}

fn validate_scopes(scopes: &[String]) -> Result<Vec<&str>, TokenError> {
    if scopes.len() > MAX_SCOPES {
        return Err(invalid(format!("scopes: at most {MAX_SCOPES} scopes")));
    }
    let mut unique: Vec<&str> = Vec::with_capacity(scopes.len());
    for scope in scopes {
        if scope.is_empty() || scope.len() > MAX_SCOPE_LEN {
            return Err(invalid(format!("scopes: each scope must be 1 to {MAX_SCOPE_LEN} bytes")));
        }
        // RFC 6749 §3.3 scope-token: printable ASCII except space, '"' and '\'.
        if !scope.bytes().all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b)) {
            return Err(invalid(format!(
                "scopes: {scope:?} is not a valid scope (printable ASCII, no spaces, quotes or backslashes)"
            )));
        }
        if !unique.contains(&scope.as_str()) {
            unique.push(scope);
        }
    }
    Ok(unique)
}

/// Checks the request without minting anything.
pub fn validate_request(request: &TokenRequest, policy: &TokenPolicy) -> Result<(), TokenError> {
    check_request(request, policy).map(|_| ())
}

/// Checks the request and signs a token for it.
pub fn mint_access_token(
    request: &TokenRequest,
    policy: &TokenPolicy,
    key: &SigningKeyPair,
    context: MintContext<'_>,
    now_ms: u64,
    rng: &dyn RandomSource,
) -> Result<IssuedToken, TokenError> {
    let (scopes, ttl, audience, mut claims) = check_request(request, policy)?;
    let mut jti_bytes = [0u8; 16];
    rng.fill(&mut jti_bytes)?;
    let jti = URL_SAFE_NO_PAD.encode(jti_bytes);
    let iat = now_ms / 1000;
    claims.insert("iss".into(), json!(policy.issuer));
    claims.insert("sub".into(), json!(request.sub));
    claims.insert("aud".into(), json!(audience));
    claims.insert("iat".into(), json!(iat));
    claims.insert("exp".into(), json!(iat + ttl));
    claims.insert("jti".into(), json!(jti));
    claims.insert("ver".into(), json!(context.version));
    if let Some(sid) = context.session_id {
        claims.insert("sid".into(), json!(sid));
    }
    if !scopes.is_empty() {
        claims.insert("scope".into(), json!(scopes.join(" ")));
    }

    let header = json!({ "alg": key.alg().as_str(), "typ": "JWT", "kid": key.kid() });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header)?),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims)?)
    );
    let signature = key.sign(signing_input.as_bytes());
    Ok(IssuedToken {
        access_token: format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature)),
        token_type: "Bearer".to_owned(),
        expires_in: ttl,
        jti,
        refresh_token: None,
        refresh_expires_in: None,
        session_id: None,
    })
}

type CheckedRequest<'r> = (Vec<&'r str>, u64, &'r str, Map<String, Value>);

fn check_request<'r>(
    request: &'r TokenRequest,
    policy: &'r TokenPolicy,
) -> Result<CheckedRequest<'r>, TokenError> {
    if request.sub.is_empty() || request.sub.len() > MAX_SUBJECT_LEN || !is_printable(&request.sub) {
        return Err(invalid(format!("sub: must be 1 to {MAX_SUBJECT_LEN} bytes without control characters")));
    }
    let scopes = validate_scopes(&request.scopes)?;
    let ttl = request.ttl_seconds.unwrap_or(policy.default_ttl_seconds);
    if ttl == 0 || ttl > MAX_TOKEN_TTL_SECONDS {
        return Err(invalid(format!("ttlSeconds: must be between 1 and {MAX_TOKEN_TTL_SECONDS}")));
    }
    let audience = request.audience.as_deref().unwrap_or(&policy.default_audience);
    if audience.is_empty() || !is_printable(audience) {
        return Err(invalid("audience: must be a non-empty string"));
    }

    let mut claims = Map::new();
    if let Some(extra) = &request.claims {
        if let Some(reserved) = extra.keys().find(|k| RESERVED_CLAIMS.contains(&k.as_str())) {
            return Err(invalid(format!(
                "claims: {reserved:?} is set by the control plane and cannot be overridden"
            )));
        }
        if serde_json::to_vec(extra)?.len() > MAX_EXTRA_CLAIMS_BYTES {
            return Err(invalid(format!("claims: at most {MAX_EXTRA_CLAIMS_BYTES} bytes of JSON")));
        }
        claims.extend(extra.clone());
    }

    Ok((scopes, ttl, audience, claims))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::SeededRandom;
    use p256::ecdsa::signature::Verifier as _;
    use p256::ecdsa::{Signature, VerifyingKey};

    fn policy() -> TokenPolicy {
        TokenPolicy {
            issuer: "portcullis".into(),
            default_audience: "demo-api".into(),
            default_ttl_seconds: 900,
            refresh_ttl_seconds: DEFAULT_REFRESH_TOKEN_TTL_SECONDS,
        }
    }

    fn decode_part(part: &str) -> Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    const CONTEXT: MintContext<'static> = MintContext { version: 3, session_id: Some("session-1") };

    fn es256_key(rng: &SeededRandom) -> SigningKeyPair {
        SigningKeyPair::generate(crate::signing::SigningAlgorithm::Es256, rng).unwrap()
    }

    fn request(sub: &str) -> TokenRequest {
        TokenRequest { sub: sub.into(), ..TokenRequest::default() }
    }

    #[test]
    fn minted_token_carries_the_claims_and_verifies_with_the_public_key() {
        let rng = SeededRandom::new(9);
        let key = es256_key(&rng);
        let mut extra = Map::new();
        extra.insert("tenant".into(), json!("acme"));
        let req = TokenRequest {
            sub: "alice".into(),
            scopes: vec!["read".into(), "write".into(), "read".into()],
            ttl_seconds: Some(60),
            audience: None,
            claims: Some(extra),
        };
        let issued = mint_access_token(&req, &policy(), &key, CONTEXT, 1_700_000_000_123, &rng).unwrap();
        assert_eq!(issued.expires_in, 60);
        assert_eq!(issued.token_type, "Bearer");

        let parts: Vec<&str> = issued.access_token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header = decode_part(parts[0]);
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["kid"], key.kid());
        let claims = decode_part(parts[1]);
        assert_eq!(claims["iss"], "portcullis");
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["aud"], "demo-api");
        assert_eq!(claims["iat"], 1_700_000_000);
        assert_eq!(claims["exp"], 1_700_000_060);
        assert_eq!(claims["ver"], 3);
        assert_eq!(claims["sid"], "session-1");
        assert_eq!(claims["scope"], "read write");
        assert_eq!(claims["tenant"], "acme");
        assert_eq!(claims["jti"], issued.jti.as_str());

        let jwk = key.public_jwk();
        let point = p256::EncodedPoint::from_affine_coordinates(
            URL_SAFE_NO_PAD.decode(jwk.x.unwrap()).unwrap().as_slice().into(),
            URL_SAFE_NO_PAD.decode(jwk.y.unwrap()).unwrap().as_slice().into(),
            false,
        );
        let verifying = VerifyingKey::from_encoded_point(&point).unwrap();
        let signature = Signature::from_slice(&URL_SAFE_NO_PAD.decode(parts[2]).unwrap()).unwrap();
        let input = format!("{}.{}", parts[0], parts[1]);
        assert!(verifying.verify(input.as_bytes(), &signature).is_ok());
        assert!(verifying.verify(b"tampered", &signature).is_err());
    }

    #[test]
    fn each_token_gets_a_fresh_jti() {
        let rng = SeededRandom::new(1);
        let key = es256_key(&rng);
        let a = mint_access_token(&request("alice"), &policy(), &key, CONTEXT, 0, &rng).unwrap();
        let b = mint_access_token(&request("alice"), &policy(), &key, CONTEXT, 0, &rng).unwrap();
        assert_ne!(a.jti, b.jti);
    }

    #[test]
    fn invalid_requests_are_rejected_naming_the_field() {
        let rng = SeededRandom::new(1);
        let key = es256_key(&rng);
        let mint = |req: TokenRequest| match mint_access_token(&req, &policy(), &key, CONTEXT, 0, &rng) {
            Err(TokenError::InvalidRequest(message)) => message,
            other => panic!("expected an invalid request, got {other:?}"),
        };
        assert!(mint(request("")).starts_with("sub:"));
        assert!(mint(TokenRequest { ttl_seconds: Some(0), ..request("a") }).starts_with("ttlSeconds:"));
        assert!(mint(TokenRequest { ttl_seconds: Some(MAX_TOKEN_TTL_SECONDS + 1), ..request("a") })
            .starts_with("ttlSeconds:"));
        assert!(
            mint(TokenRequest { scopes: vec!["has space".into()], ..request("a") }).starts_with("scopes:")
        );
        let mut reserved = Map::new();
        reserved.insert("exp".into(), json!(1));
        assert!(mint(TokenRequest { claims: Some(reserved), ..request("a") }).contains("\"exp\""));
    }
}
