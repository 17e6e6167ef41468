//! Validation of a provider's configuration into a [`Provider`]. Error fields are
//! relative to the provider object (`remoteJwks.path`, `from[1].header`); the caller
//! adds `providers.<name>`.

use serde_json::Value;

use super::config::{
    ClaimToHeaderConfig, ProviderConfig, RemoteJwksConfig, TokenSourceConfig, TokenVersionConfig,
    MAX_CLOCK_SKEW_SECONDS, MAX_TOKEN_BYTES_LIMIT,
};
use super::{KeySource, Provider, RemoteJwks, TimePolicyConfig, TokenLocation, TokenVersionPolicy};
use crate::error::ConfigError;
use crate::jwt::alg::Algorithm;
use crate::jwt::claims;
use crate::jwt::jwks::{JwksWarning, KeySet};
use crate::jwt::versions::VersionState;
use crate::request::is_token_byte;

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
    !s.is_empty() && s.bytes().all(|b| is_token_byte(b) && !b.is_ascii_uppercase())
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_token_byte)
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

pub(crate) fn compile_location(src: TokenSourceConfig) -> Result<TokenLocation, ConfigError> {
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
        let audiences = compile_audiences(cfg.audiences)?;
        let algorithms = cfg.algorithms.as_deref().map(compile_algorithms).transpose()?;
        let (key_source, jwks_warnings) =
            compile_key_source(cfg.jwks, cfg.remote_jwks, algorithms.as_deref())?;

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

        let locations = compile_locations(cfg.from)?;
        let claim_to_headers =
            compile_upstream_headers(cfg.claim_to_headers, cfg.payload_header.as_deref(), &locations)?;
        let token_version = cfg.token_version.map(compile_token_version).transpose()?;

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
}

fn compile_audiences(audiences: Option<Vec<String>>) -> Result<Option<Vec<String>>, ConfigError> {
    match audiences {
        None => Ok(None),
        Some(list) if list.is_empty() => {
            Err(ConfigError::new("audiences", "must list at least one audience"))
        }
        Some(list) => {
            for (i, aud) in list.iter().enumerate() {
                non_empty(&format!("audiences[{i}]"), aud)?;
            }
            Ok(Some(list))
        }
    }
}

fn compile_key_source(
    jwks: Option<Value>,
    remote_jwks: Option<RemoteJwksConfig>,
    algorithms: Option<&[Algorithm]>,
) -> Result<(KeySource, Vec<JwksWarning>), ConfigError> {
    match (jwks, remote_jwks) {
        (Some(jwks), None) => {
            let (keys, warnings) = compile_inline(&jwks, algorithms)?;
            Ok((KeySource::Inline(keys), warnings))
        }
        (None, Some(remote)) => {
            Ok((KeySource::Remote(compile_remote(remote).map_err(|e| e.within("remoteJwks"))?), Vec::new()))
        }
        (Some(_), Some(_)) => Err(ConfigError::new("jwks", "set either `jwks` or `remoteJwks`, not both")),
        (None, None) => Err(ConfigError::new("", "one of `jwks` or `remoteJwks` is required")),
    }
}

fn compile_locations(from: Vec<TokenSourceConfig>) -> Result<Vec<TokenLocation>, ConfigError> {
    if from.is_empty() {
        return Err(ConfigError::new("from", "must list at least one token location"));
    }
    let mut locations = Vec::with_capacity(from.len());
    for (i, src) in from.into_iter().enumerate() {
        locations.push(compile_location(src).map_err(|e| e.within(&format!("from[{i}]")))?);
    }
    Ok(locations)
}

/// `claimToHeaders` as (claim, header) pairs, after checking that no header set
/// upstream (there or in `payloadHeader`) is reserved, set twice, or a token location.
fn compile_upstream_headers(
    configs: Vec<ClaimToHeaderConfig>,
    payload_header: Option<&str>,
    locations: &[TokenLocation],
) -> Result<Vec<(String, String)>, ConfigError> {
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
    let mut claim_to_headers = Vec::with_capacity(configs.len());
    for (i, c) in configs.into_iter().enumerate() {
        non_empty(&format!("claimToHeaders[{i}].claim"), &c.claim)?;
        check_managed(&format!("claimToHeaders[{i}].header"), &c.header)?;
        claim_to_headers.push((c.claim, c.header));
    }
    if let Some(h) = payload_header {
        check_managed("payloadHeader", h)?;
    }
    Ok(claim_to_headers)
}

fn compile_token_version(tv: TokenVersionConfig) -> Result<TokenVersionPolicy, ConfigError> {
    non_empty("tokenVersion.claim", &tv.claim)?;
    non_empty("tokenVersion.subjectClaim", &tv.subject_claim)?;
    Ok(TokenVersionPolicy {
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
