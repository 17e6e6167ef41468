//! A token that passed signature and claim checks, and the claim look-ups the rules need.

use serde_json::{Map, Value};

use super::alg::Algorithm;

/// A verified JWT. Shared between requests through the cache (`Arc<VerifiedToken>`).
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedToken {
    pub alg: Algorithm,
    /// The `kid` of the key that verified the signature.
    pub kid: Option<String>,
    pub claims: Map<String, Value>,
    /// `exp` in unix seconds (rounded up for fractional dates), if the token has one.
    pub expires_at: Option<u64>,
    /// The `sub` claim, when it is a string.
    pub subject: Option<String>,
    /// The payload segment exactly as received (base64url), for `payloadHeader`.
    pub payload_b64: String,
}

impl VerifiedToken {
    /// A claim by name or dotted path: an exact top-level name wins (claim names such as
    /// `http://example.com/is_root` contain dots), otherwise `a.b.c` walks nested objects.
    pub fn claim(&self, path: &str) -> Option<&Value> {
        claim_at(&self.claims, path)
    }

    /// Scopes from a space-separated `scope` string (RFC 8693 §4.2) and/or an `scp` array
    /// (or string), in order, without duplicates.
    pub fn scopes(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for key in ["scope", "scp"] {
            match self.claims.get(key) {
                Some(Value::String(s)) => {
                    for part in s.split_ascii_whitespace() {
                        if !out.contains(&part) {
                            out.push(part);
                        }
                    }
                }
                Some(Value::Array(items)) => {
                    for part in items.iter().filter_map(Value::as_str) {
                        if !part.is_empty() && !out.contains(&part) {
                            out.push(part);
                        }
                    }
                }
                _ => {}
            }
        }
        out
    }
}

pub(crate) fn claim_at<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    let mut parts = path.split('.');
    let mut current = claims.get(parts.next()?)?;
    for part in parts {
        current = current.as_object()?.get(part)?;
    }
    Some(current)
}
