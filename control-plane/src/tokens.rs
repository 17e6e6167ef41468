//! Minting access tokens: ES256-signed JWTs with the claims the filter checks.
//!
//! Pure given its inputs (policy, key, time, randomness), so it is tested without a
//! server. The wire types of `POST /admin/v1/tokens` live here too; the CLI reuses them.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::random::{RandomError, RandomSource};
use crate::signing::{SigningKeyPair, ALGORITHM};

/// The longest lifetime an access token may be minted with (24 hours).
pub const MAX_TOKEN_TTL_SECONDS: u64 = 86_400;
/// The current token format version (`ver` claim); the filter can require a minimum.
pub const TOKEN_VERSION: u64 = 1;
/// Claims the control plane sets itself; `claims` in a request may not override them.
pub const RESERVED_CLAIMS: &[&str] = &["iss", "sub", "aud", "iat", "exp", "nbf", "jti", "ver", "scope"];

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
}

/// Body of `POST /admin/v1/tokens`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
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
            return Err(invalid(format!(
                "scopes: each scope must be 1 to {MAX_SCOPE_LEN} bytes"
            )));
        }
        // RFC 6749 §3.3 scope-token: printable ASCII except space, '"' and '\'.
        if !scope
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b))
        {
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

/// Checks the request and signs a token for it.
pub fn mint_access_token(
    request: &TokenRequest,
    policy: &TokenPolicy,
    key: &SigningKeyPair,
    now_ms: u64,
    rng: &dyn RandomSource,
) -> Result<IssuedToken, TokenError> {
    if request.sub.is_empty() || request.sub.len() > MAX_SUBJECT_LEN || !is_printable(&request.sub) {
        return Err(invalid(format!(
            "sub: must be 1 to {MAX_SUBJECT_LEN} bytes without control characters"
        )));
    }
    let scopes = validate_scopes(&request.scopes)?;
    let ttl = request.ttl_seconds.unwrap_or(policy.default_ttl_seconds);
    if ttl == 0 || ttl > MAX_TOKEN_TTL_SECONDS {
        return Err(invalid(format!(
            "ttlSeconds: must be between 1 and {MAX_TOKEN_TTL_SECONDS}"
        )));
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
            return Err(invalid(format!(
                "claims: at most {MAX_EXTRA_CLAIMS_BYTES} bytes of JSON"
            )));
        }
        claims.extend(extra.clone());
    }

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
    claims.insert("ver".into(), json!(TOKEN_VERSION));
    if !scopes.is_empty() {
        claims.insert("scope".into(), json!(scopes.join(" ")));
    }

    let header = json!({ "alg": ALGORITHM, "typ": "JWT", "kid": key.kid() });
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
    })
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
        }
    }

    fn decode_part(part: &str) -> Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    fn request(sub: &str) -> TokenRequest {
        TokenRequest {
            sub: sub.into(),
            ..TokenRequest::default()
        }
    }

    #[test]
    fn minted_token_carries_the_claims_and_verifies_with_the_public_key() {
        let rng = SeededRandom::new(9);
        let key = SigningKeyPair::generate(&rng, 0).unwrap();
        let mut extra = Map::new();
        extra.insert("tenant".into(), json!("acme"));
        let req = TokenRequest {
            sub: "alice".into(),
            scopes: vec!["read".into(), "write".into(), "read".into()],
            ttl_seconds: Some(60),
            audience: None,
            claims: Some(extra),
        };
        let issued = mint_access_token(&req, &policy(), &key, 1_700_000_000_123, &rng).unwrap();
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
        assert_eq!(claims["ver"], 1);
        assert_eq!(claims["scope"], "read write");
        assert_eq!(claims["tenant"], "acme");
        assert_eq!(claims["jti"], issued.jti.as_str());

        let jwk = key.public_jwk();
        let point = p256::EncodedPoint::from_affine_coordinates(
            URL_SAFE_NO_PAD.decode(&jwk.x).unwrap().as_slice().into(),
            URL_SAFE_NO_PAD.decode(&jwk.y).unwrap().as_slice().into(),
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
        let key = SigningKeyPair::generate(&rng, 0).unwrap();
        let a = mint_access_token(&request("alice"), &policy(), &key, 0, &rng).unwrap();
        let b = mint_access_token(&request("alice"), &policy(), &key, 0, &rng).unwrap();
        assert_ne!(a.jti, b.jti);
    }

    #[test]
    fn invalid_requests_are_rejected_naming_the_field() {
        let rng = SeededRandom::new(1);
        let key = SigningKeyPair::generate(&rng, 0).unwrap();
        let mint = |req: TokenRequest| match mint_access_token(&req, &policy(), &key, 0, &rng) {
            Err(TokenError::InvalidRequest(message)) => message,
            other => panic!("expected an invalid request, got {other:?}"),
        };
        assert!(mint(request("")).starts_with("sub:"));
        assert!(mint(TokenRequest {
            ttl_seconds: Some(0),
            ..request("a")
        })
        .starts_with("ttlSeconds:"));
        assert!(mint(TokenRequest {
            ttl_seconds: Some(MAX_TOKEN_TTL_SECONDS + 1),
            ..request("a")
        })
        .starts_with("ttlSeconds:"));
        assert!(mint(TokenRequest {
            scopes: vec!["has space".into()],
            ..request("a")
        })
        .starts_with("scopes:"));
        let mut reserved = Map::new();
        reserved.insert("exp".into(), json!(1));
        assert!(mint(TokenRequest {
            claims: Some(reserved),
            ..request("a")
        })
        .contains("\"exp\""));
    }
}
