//! A JWT provider: its configuration (the `providers.<name>` object of the plugin
//! configuration), compiled once into a validated [`Provider`] that extracts tokens from
//! requests, verifies them against a key set at a given time, checks token versions and
//! computes the headers sent upstream.
//!
//! - [`config`]: the `providers.<name>` object as written;
//! - [`compile`]: its validation into a [`Provider`];
//! - this module: what a compiled provider does per request.

pub mod compile;
pub mod config;

use serde_json::Value;

use super::alg::Algorithm;
use super::claims::{self, TimePolicy};
pub use super::extract::{ExtractedToken, TokenLocation};
use super::jwks::{JwksWarning, KeySet};
use super::jws;
use super::reason::Reason;
pub use super::token::VerifiedToken;
use super::versions::{MinimumVersions, VersionState};
use crate::request::RequestParts;
pub use config::{
    ClaimToHeaderConfig, ProviderConfig, RemoteJwksConfig, TokenSourceConfig, TokenVersionConfig,
    MAX_CLOCK_SKEW_SECONDS, MAX_TOKEN_BYTES_LIMIT,
};

/// Compiled remote JWKS settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteJwks {
    pub cluster: String,
    pub authority: String,
    pub path: String,
    pub cache_duration_secs: u64,
    pub timeout_ms: u64,
    pub unknown_kid_refetch_interval_secs: u64,
}

/// Where a provider's keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    Inline(KeySet),
    Remote(RemoteJwks),
}

#[derive(Debug, Clone)]
struct TokenVersionPolicy {
    claim: String,
    subject_claim: String,
    initial: VersionState,
}

/// A validated provider, shared by all requests.
#[derive(Debug, Clone)]
pub struct Provider {
    name: String,
    issuer: String,
    audiences: Option<Vec<String>>,
    algorithms: Option<Vec<Algorithm>>,
    key_source: KeySource,
    jwks_warnings: Vec<JwksWarning>,
    time: TimePolicyConfig,
    required_claims: Vec<(String, Value)>,
    /// Normalised (see `claims::normalize_typ`).
    typ: Option<String>,
    max_token_bytes: usize,
    locations: Vec<TokenLocation>,
    claim_to_headers: Vec<(String, String)>,
    payload_header: Option<String>,
    forward_token: bool,
    token_version: Option<TokenVersionPolicy>,
}

#[derive(Debug, Clone)]
struct TimePolicyConfig {
    clock_skew: u64,
    require_expiration: bool,
    max_lifetime: Option<u64>,
}

impl Provider {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn key_source(&self) -> &KeySource {
        &self.key_source
    }

    /// Keys skipped while loading an inline `jwks` (for the filter to log at start-up).
    pub fn jwks_warnings(&self) -> &[JwksWarning] {
        &self.jwks_warnings
    }

    /// The algorithm allow-list, if configured.
    pub fn algorithms(&self) -> Option<&[Algorithm]> {
        self.algorithms.as_deref()
    }

    pub fn max_token_bytes(&self) -> usize {
        self.max_token_bytes
    }

    pub fn locations(&self) -> &[TokenLocation] {
        &self.locations
    }

    /// `false`: the filter removes the token from the request before it goes upstream
    /// (see [`Provider::remove_tokens`]).
    pub fn forward_token(&self) -> bool {
        self.forward_token
    }

    /// Every token at every configured location, in configuration then request order.
    pub fn extract(&self, req: &RequestParts) -> Vec<ExtractedToken> {
        self.locations
            .iter()
            .flat_map(|loc| {
                loc.extract(req).into_iter().map(move |token| ExtractedToken { location: loc.clone(), token })
            })
            .collect()
    }

    /// Removes the tokens at every configured location from `req`.
    pub fn remove_tokens(&self, req: &mut RequestParts) {
        for loc in &self.locations {
            loc.remove_from(req);
        }
    }

    /// Verifies a token: size, structure, algorithm, key, signature, then `exp`, `nbf`,
    /// `iat`, `iss`, `aud`, lifetime, required claims and `typ`, in that order.
    pub fn verify(&self, token: &str, keys: &KeySet, now_unix_secs: u64) -> Result<VerifiedToken, Reason> {
        let jws = jws::decode(token, self.max_token_bytes)?;
        let kid = jws::verify_signature(&jws, keys, self.algorithms.as_deref())?;
        let claims = claims::parse_claims(&jws.payload)?;

        let policy = TimePolicy {
            clock_skew: i64::try_from(self.time.clock_skew).unwrap_or(i64::MAX),
            require_expiration: self.time.require_expiration,
            max_lifetime: self.time.max_lifetime.map(|m| i64::try_from(m).unwrap_or(i64::MAX)),
        };
        let times = claims::check_times(&claims, &policy, now_unix_secs)?;
        claims::check_issuer(&claims, &self.issuer)?;
        if let Some(audiences) = &self.audiences {
            claims::check_audience(&claims, audiences)?;
        }
        claims::check_lifetime(&times, &policy, now_unix_secs)?;
        claims::check_required(&claims, &self.required_claims)?;
        if let Some(expected) = &self.typ {
            match &jws.header.typ {
                Some(typ) if claims::normalize_typ(typ) == *expected => {}
                _ => return Err(Reason::BadType),
            }
        }

        let subject = claims.get("sub").and_then(Value::as_str).map(str::to_owned);
        Ok(VerifiedToken {
            alg: jws.header.alg,
            kid,
            expires_at: times.exp.map(|e| u64::try_from(e).unwrap_or(0)),
            subject,
            payload_b64: jws.payload_b64.to_owned(),
            claims,
        })
    }

    /// The version state from the configuration, before the control plane sends any.
    pub fn initial_version_state(&self) -> VersionState {
        self.token_version.as_ref().map(|p| p.initial.clone()).unwrap_or_default()
    }

    /// Token-version check, separate from `verify` so it also runs on cache hits.
    ///
    /// The version is the configured claim (a non-negative integer; absent means 0, any
    /// other type is `malformed`). Above the control plane's ceiling: `version_unknown`.
    /// Below the subject's minimum: `version_too_old`, immediately. Below the global
    /// minimum: accepted only until `rotated_at + grace_seconds`. Without a
    /// `tokenVersion` policy every token passes.
    pub fn check_version(
        &self,
        t: &VerifiedToken,
        state: &dyn MinimumVersions,
        now_unix_secs: u64,
    ) -> Result<(), Reason> {
        let Some(policy) = &self.token_version else {
            return Ok(());
        };
        let version = match t.claim(&policy.claim) {
            None => 0,
            Some(v) => v.as_u64().ok_or(Reason::Malformed)?,
        };
        let subject = t.claim(&policy.subject_claim).and_then(Value::as_str);
        state.check(subject, version, now_unix_secs)
    }

    /// Headers to add upstream: `claimToHeaders` (strings as-is, numbers and booleans as
    /// text, arrays of scalars comma-joined; objects, nulls and values with control
    /// characters skipped) and `payloadHeader` (the payload segment, base64url).
    pub fn upstream_headers(&self, t: &VerifiedToken) -> Vec<(String, String)> {
        let mut out = Vec::with_capacity(self.claim_to_headers.len() + 1);
        for (claim, header) in &self.claim_to_headers {
            if let Some(value) = t.claim(claim).and_then(header_value) {
                out.push((header.clone(), value));
            }
        }
        if let Some(header) = &self.payload_header {
            out.push((header.clone(), t.payload_b64.clone()));
        }
        out
    }

    /// Every header name this provider sets upstream. The filter strips incoming copies
    /// so clients cannot forge them.
    pub fn managed_headers(&self) -> Vec<String> {
        let mut out: Vec<String> = self.claim_to_headers.iter().map(|(_, h)| h.clone()).collect();
        out.extend(self.payload_header.iter().cloned());
        out
    }
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn header_value(v: &Value) -> Option<String> {
    let text = match v {
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().filter_map(scalar_text).collect();
            if parts.is_empty() {
                return None;
            }
            parts.join(",")
        }
        other => scalar_text(other)?,
    };
    // A header value must not smuggle CR/LF or other control characters.
    if text.chars().any(|c| c.is_control()) {
        return None;
    }
    Some(text)
}
