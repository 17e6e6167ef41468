//! A JWT provider: its configuration (the `providers.<name>` object of the plugin
//! configuration), compiled once into a validated [`Provider`] that extracts tokens from
//! requests, verifies them against a key set at a given time, checks token versions and
//! computes the headers sent upstream.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::alg::Algorithm;
use super::claims::{self, TimePolicy};
pub use super::extract::{ExtractedToken, TokenLocation};
use super::jwks::{JwksWarning, KeySet};
use super::jws;
use super::reason::Reason;
pub use super::token::VerifiedToken;
use super::versions::{MinimumVersions, VersionState};
use crate::error::ConfigError;
use crate::request::RequestParts;

/// Upper bound for `maxTokenBytes`.
pub const MAX_TOKEN_BYTES_LIMIT: u64 = 1024 * 1024;
/// Upper bound for `clockSkewSeconds`.
pub const MAX_CLOCK_SKEW_SECONDS: u64 = 3600;

fn default_true() -> bool {
    true
}
fn default_clock_skew() -> u64 {
    60
}
fn default_max_token_bytes() -> u64 {
    8192
}
fn default_from() -> Vec<TokenSourceConfig> {
    vec![TokenSourceConfig {
        header: Some("authorization".to_owned()),
        prefix: Some("Bearer ".to_owned()),
        cookie: None,
        query: None,
    }]
}
fn default_jwks_path() -> String {
    "/.well-known/jwks.json".to_owned()
}
fn default_cache_duration() -> u64 {
    600
}
fn default_timeout_ms() -> u64 {
    1000
}
fn default_refetch_interval() -> u64 {
    30
}
fn default_version_claim() -> String {
    "ver".to_owned()
}
fn default_subject_claim() -> String {
    "sub".to_owned()
}

/// The provider object of the plugin configuration (see `docs/plugin-config.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProviderConfig {
    pub issuer: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audiences: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithms: Option<Vec<String>>,
    /// An inline JWKS object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(schema_with = "crate::schema::inline_jwks"))]
    pub jwks: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_jwks: Option<RemoteJwksConfig>,
    #[serde(default = "default_clock_skew")]
    pub clock_skew_seconds: u64,
    #[serde(default = "default_true")]
    pub require_expiration: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_lifetime_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub required_claims: BTreeMap<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub typ: Option<String>,
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: u64,
    #[serde(default = "default_from")]
    pub from: Vec<TokenSourceConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub claim_to_headers: Vec<ClaimToHeaderConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_header: Option<String>,
    #[serde(default = "default_true")]
    pub forward_token: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_version: Option<TokenVersionConfig>,
}

/// Where the filter fetches the JWKS from (an Envoy cluster).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RemoteJwksConfig {
    pub cluster: String,
    pub authority: String,
    #[serde(default = "default_jwks_path")]
    pub path: String,
    #[serde(default = "default_cache_duration")]
    pub cache_duration_seconds: u64,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_refetch_interval")]
    pub unknown_kid_refetch_interval_seconds: u64,
}

/// One entry of `from`: exactly one of `header` (with optional `prefix`), `cookie`,
/// `query`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenSourceConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimToHeaderConfig {
    /// Claim name or dotted path.
    pub claim: String,
    pub header: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenVersionConfig {
    #[serde(default = "default_version_claim")]
    pub claim: String,
    #[serde(default = "default_subject_claim")]
    pub subject_claim: String,
    #[serde(default)]
    pub global_min_version: u64,
    #[serde(default)]
    pub rotated_at: u64,
    #[serde(default)]
    pub grace_seconds: u64,
    #[serde(default)]
    pub user_min_versions: HashMap<String, u64>,
}

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

/// Headers a provider may not set upstream: they carry the request itself (framing,
/// routing, credentials), and every managed header is stripped from incoming requests.
const RESERVED_HEADERS: [&str; 12] = [
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
    "cookie",
    "authorization",
];

/// RFC 9110 `token` characters, lower-case only (Envoy and HTTP/2 use lower-case names).
fn is_lowercase_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn is_printable(s: &str) -> bool {
    s.chars().all(|c| !c.is_control())
}

fn check_header_name(field: &str, name: &str) -> Result<(), ConfigError> {
    if !is_lowercase_token(name) {
        return Err(ConfigError::new(
            field,
            "must be a lower-case HTTP header name (letters, digits and !#$%&'*+-.^_`|~)",
        ));
    }
    Ok(())
}

fn check_upstream_header(field: &str, name: &str) -> Result<(), ConfigError> {
    check_header_name(field, name)?;
    if RESERVED_HEADERS.contains(&name) {
        return Err(ConfigError::new(field, format!("`{name}` cannot be set from a token")));
    }
    Ok(())
}

fn check_range(field: &str, value: u64, min: u64, max: u64) -> Result<(), ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::new(field, format!("must be between {min} and {max}")));
    }
    Ok(())
}

fn non_empty(field: &str, value: &str) -> Result<(), ConfigError> {
    if value.trim().is_empty() {
        return Err(ConfigError::new(field, "must not be empty"));
    }
    if !is_printable(value) {
        return Err(ConfigError::new(field, "must not contain control characters"));
    }
    Ok(())
}

fn compile_algorithms(names: &[String]) -> Result<Vec<Algorithm>, ConfigError> {
    if names.is_empty() {
        return Err(ConfigError::new("algorithms", "must list at least one algorithm"));
    }
    let mut algs = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let field = format!("algorithms[{i}]");
        if name.eq_ignore_ascii_case("none") {
            return Err(ConfigError::new(field, "`none` is never accepted"));
        }
        let alg = Algorithm::from_name(name).ok_or_else(|| {
            let known: Vec<&str> = Algorithm::ALL.iter().map(|a| a.as_str()).collect();
            ConfigError::new(
                &field,
                format!("unknown algorithm {name:?}; expected one of {}", known.join(", ")),
            )
        })?;
        if !algs.contains(&alg) {
            algs.push(alg);
        }
    }
    Ok(algs)
}

fn compile_remote(cfg: RemoteJwksConfig) -> Result<RemoteJwks, ConfigError> {
    non_empty("cluster", &cfg.cluster)?;
    non_empty("authority", &cfg.authority)?;
    if cfg.authority.chars().any(char::is_whitespace) {
        return Err(ConfigError::new("authority", "must not contain whitespace"));
    }
    if !cfg.path.starts_with('/') {
        return Err(ConfigError::new("path", "must start with '/'"));
    }
    if cfg.path.chars().any(|c| c.is_whitespace() || c.is_control() || c == '#') {
        return Err(ConfigError::new("path", "must not contain whitespace, control characters or '#'"));
    }
    check_range("cacheDurationSeconds", cfg.cache_duration_seconds, 1, 7 * 86_400)?;
    check_range("timeoutMs", cfg.timeout_ms, 1, 60_000)?;
    check_range("unknownKidRefetchIntervalSeconds", cfg.unknown_kid_refetch_interval_seconds, 1, 86_400)?;
    Ok(RemoteJwks {
        cluster: cfg.cluster,
        authority: cfg.authority,
        path: cfg.path,
        cache_duration_secs: cfg.cache_duration_seconds,
        timeout_ms: cfg.timeout_ms,
        unknown_kid_refetch_interval_secs: cfg.unknown_kid_refetch_interval_seconds,
    })
}

fn compile_inline(
    jwks: &Value,
    algorithms: Option<&[Algorithm]>,
) -> Result<(KeySet, Vec<JwksWarning>), ConfigError> {
    let bytes = serde_json::to_vec(jwks).map_err(|_| ConfigError::new("jwks", "is not JSON"))?;
    let (keys, warnings) =
        KeySet::from_jwks_json(&bytes).map_err(|e| ConfigError::new("jwks", e.to_string()))?;
    if keys.is_empty() {
        let detail: Vec<String> = warnings.iter().map(ToString::to_string).collect();
        let message = if detail.is_empty() {
            "has no keys".to_owned()
        } else {
            format!("has no usable key: {}", detail.join("; "))
        };
        return Err(ConfigError::new("jwks", message));
    }
    if let Some(allowed) = algorithms {
        if !keys.algorithms().iter().any(|a| allowed.contains(a)) {
            return Err(ConfigError::new("jwks", "no key uses one of `algorithms`"));
        }
    }
    Ok((keys, warnings))
}

fn compile_location(src: TokenSourceConfig) -> Result<TokenLocation, ConfigError> {
    match (src.header, src.cookie, src.query) {
        (Some(header), None, None) => {
            check_header_name("header", &header)?;
            let prefix = match src.prefix {
                Some(p) if p.is_empty() || !is_printable(&p) => {
                    return Err(ConfigError::new(
                        "prefix",
                        "must be non-empty printable text, e.g. \"Bearer \"",
                    ));
                }
                other => other,
            };
            Ok(TokenLocation::Header { name: header, prefix })
        }
        (None, Some(cookie), None) if src.prefix.is_none() => {
            if !is_token(&cookie) {
                return Err(ConfigError::new("cookie", "must be a valid cookie name"));
            }
            Ok(TokenLocation::Cookie(cookie))
        }
        (None, None, Some(query)) if src.prefix.is_none() => {
            if query.is_empty()
                || query.chars().any(|c| c.is_whitespace() || c.is_control() || "&=#?".contains(c))
            {
                return Err(ConfigError::new("query", "must be a plain query parameter name"));
            }
            Ok(TokenLocation::Query(query))
        }
        (None, Some(_), None) | (None, None, Some(_)) => {
            Err(ConfigError::new("prefix", "is only allowed with `header`"))
        }
        _ => Err(ConfigError::new("", "must set exactly one of `header`, `cookie`, `query`")),
    }
}

impl Provider {
    /// Validates a provider configuration. Error fields are relative to the provider
    /// object (`remoteJwks.path`, `from[1].header`); the caller adds `providers.<name>`.
    pub fn compile(name: &str, cfg: ProviderConfig) -> Result<Provider, ConfigError> {
        non_empty("issuer", &cfg.issuer)?;

        let audiences = match cfg.audiences {
            None => None,
            Some(list) if list.is_empty() => {
                return Err(ConfigError::new("audiences", "must list at least one audience"));
            }
            Some(list) => {
                for (i, aud) in list.iter().enumerate() {
                    non_empty(&format!("audiences[{i}]"), aud)?;
                }
                Some(list)
            }
        };

        let algorithms = cfg.algorithms.as_deref().map(compile_algorithms).transpose()?;

        let (key_source, jwks_warnings) = match (cfg.jwks, cfg.remote_jwks) {
            (Some(jwks), None) => {
                let (keys, warnings) = compile_inline(&jwks, algorithms.as_deref())?;
                (KeySource::Inline(keys), warnings)
            }
            (None, Some(remote)) => {
                (KeySource::Remote(compile_remote(remote).map_err(|e| e.within("remoteJwks"))?), Vec::new())
            }
            (Some(_), Some(_)) => {
                return Err(ConfigError::new("jwks", "set either `jwks` or `remoteJwks`, not both"));
            }
            (None, None) => {
                return Err(ConfigError::new("", "one of `jwks` or `remoteJwks` is required"));
            }
        };

        check_range("clockSkewSeconds", cfg.clock_skew_seconds, 0, MAX_CLOCK_SKEW_SECONDS)?;
        if let Some(max) = cfg.max_lifetime_seconds {
            check_range("maxLifetimeSeconds", max, 1, i64::MAX as u64)?;
        }
        check_range("maxTokenBytes", cfg.max_token_bytes, 128, MAX_TOKEN_BYTES_LIMIT)?;
        let max_token_bytes = usize::try_from(cfg.max_token_bytes)
            .map_err(|_| ConfigError::new("maxTokenBytes", "too large"))?;

        let mut required_claims = Vec::with_capacity(cfg.required_claims.len());
        for (claim, value) in cfg.required_claims {
            if claim.is_empty() {
                return Err(ConfigError::new("requiredClaims", "claim names must not be empty"));
            }
            required_claims.push((claim, value));
        }

        let typ = match cfg.typ {
            None => None,
            Some(t) => {
                non_empty("typ", &t)?;
                Some(claims::normalize_typ(&t))
            }
        };

        if cfg.from.is_empty() {
            return Err(ConfigError::new("from", "must list at least one token location"));
        }
        let mut locations = Vec::with_capacity(cfg.from.len());
        for (i, src) in cfg.from.into_iter().enumerate() {
            locations.push(compile_location(src).map_err(|e| e.within(&format!("from[{i}]")))?);
        }

        let source_headers: Vec<&str> = locations
            .iter()
            .filter_map(|l| match l {
                TokenLocation::Header { name, .. } => Some(name.as_str()),
                _ => None,
            })
            .collect();
        let mut managed: Vec<String> = Vec::new();
        let mut check_managed = |field: &str, header: &str| -> Result<(), ConfigError> {
            check_upstream_header(field, header)?;
            if source_headers.contains(&header) {
                return Err(ConfigError::new(field, "is also a token location in `from`"));
            }
            if managed.iter().any(|m| m == header) {
                return Err(ConfigError::new(field, "is set twice"));
            }
            managed.push(header.to_owned());
            Ok(())
        };
        let mut claim_to_headers = Vec::with_capacity(cfg.claim_to_headers.len());
        for (i, c) in cfg.claim_to_headers.into_iter().enumerate() {
            non_empty(&format!("claimToHeaders[{i}].claim"), &c.claim)?;
            check_managed(&format!("claimToHeaders[{i}].header"), &c.header)?;
            claim_to_headers.push((c.claim, c.header));
        }
        if let Some(h) = &cfg.payload_header {
            check_managed("payloadHeader", h)?;
        }

        let token_version = match cfg.token_version {
            None => None,
            Some(tv) => {
                non_empty("tokenVersion.claim", &tv.claim)?;
                non_empty("tokenVersion.subjectClaim", &tv.subject_claim)?;
                Some(TokenVersionPolicy {
                    claim: tv.claim,
                    subject_claim: tv.subject_claim,
                    initial: VersionState {
                        global_min_version: tv.global_min_version,
                        rotated_at: tv.rotated_at,
                        grace_seconds: tv.grace_seconds,
                        user_min_versions: tv.user_min_versions,
                        version_ceiling: 0,
                    },
                })
            }
        };

        Ok(Provider {
            name: name.to_owned(),
            issuer: cfg.issuer,
            audiences,
            algorithms,
            key_source,
            jwks_warnings,
            time: TimePolicyConfig {
                clock_skew: cfg.clock_skew_seconds,
                require_expiration: cfg.require_expiration,
                max_lifetime: cfg.max_lifetime_seconds,
            },
            required_claims,
            typ,
            max_token_bytes,
            locations,
            claim_to_headers,
            payload_header: cfg.payload_header,
            forward_token: cfg.forward_token,
            token_version,
        })
    }

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
