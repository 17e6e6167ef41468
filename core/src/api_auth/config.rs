//! The `apiTokens` section: the token prefix, where tokens are looked for, how often
//! the replica is synced, and the identity headers sent upstream, compiled into
//! [`ApiTokenSettings`].

use serde::Deserialize;

use crate::api_token::{validate_prefix, DEFAULT_PREFIX, FEED_PATH, USAGE_PATH};
use crate::control_plane::ControlPlane;
use crate::error::ConfigError;
use crate::jwt::provider::compile::compile_location;
use crate::jwt::provider::{TokenLocation, TokenSourceConfig};

/// How API tokens are read and synced. The control plane serving the feed is the
/// `controlPlane` section's.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiTokensConfig {
    /// The tokens' prefix (`pct` unless the control plane issues another).
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Where tokens are looked for. Default: `Authorization: Bearer` and `x-api-key`.
    #[serde(default = "default_locations")]
    pub locations: Vec<TokenSourceConfig>,
    /// How often the replica follows the control plane's feed (revocations take effect
    /// within this).
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Past this age without a successful poll, rules apply their `onStale` action:
    /// `deny` (the default) answers 503, so a token revoked while the control plane is
    /// unreachable does not pass for longer than this; `allow` keeps deciding from the
    /// replica as it is.
    #[serde(default = "default_max_staleness")]
    pub max_staleness_seconds: u64,
    /// Header carrying the token's user upstream.
    #[serde(default = "default_user_header")]
    pub user_header: String,
    /// Header carrying the token's id (its public lookup part) upstream.
    #[serde(default = "default_token_id_header")]
    pub token_id_header: String,
    /// Header carrying the token's scopes (space-separated) upstream.
    #[serde(default = "default_scopes_header")]
    pub scopes_header: String,
    /// Send the token itself upstream too (default: stripped).
    #[serde(default)]
    pub forward_token: bool,
}

fn default_prefix() -> String {
    DEFAULT_PREFIX.to_string()
}
fn default_locations() -> Vec<TokenSourceConfig> {
    vec![
        TokenSourceConfig {
            header: Some("authorization".to_string()),
            prefix: Some("Bearer ".to_string()),
            cookie: None,
            query: None,
        },
        TokenSourceConfig { header: Some("x-api-key".to_string()), prefix: None, cookie: None, query: None },
    ]
}
fn default_poll_interval_ms() -> u64 {
    1_000
}
fn default_timeout_ms() -> u64 {
    1_000
}
fn default_max_staleness() -> u64 {
    300
}
fn default_user_header() -> String {
    "x-portcullis-user".to_string()
}
fn default_token_id_header() -> String {
    "x-portcullis-token-id".to_string()
}
fn default_scopes_header() -> String {
    "x-portcullis-scopes".to_string()
}

/// The compiled section.
#[derive(Debug, Clone)]
pub struct ApiTokenSettings {
    pub prefix: String,
    pub locations: Vec<TokenLocation>,
    pub poll_interval_ms: u64,
    pub timeout_ms: u64,
    /// `maxStalenessSeconds`.
    pub max_staleness_secs: u64,
    pub feed_path: String,
    pub usage_path: String,
    pub user_header: String,
    pub token_id_header: String,
    pub scopes_header: String,
    pub forward_token: bool,
    pub control_plane: ControlPlane,
}

impl ApiTokenSettings {
    /// The identity headers: stripped from every incoming request, set by the filter
    /// only.
    pub fn managed_headers(&self) -> [&str; 3] {
        [&self.user_header, &self.token_id_header, &self.scopes_header]
    }
}

/// Validates the section (field paths relative to it).
pub fn compile_api_tokens(
    config: ApiTokensConfig,
    control_plane: &ControlPlane,
) -> Result<ApiTokenSettings, ConfigError> {
    validate_prefix(&config.prefix).map_err(|e| ConfigError::new("prefix", e.to_string()))?;
    if config.locations.is_empty() {
        return Err(ConfigError::new("locations", "must list at least one token location"));
    }
    let mut locations = Vec::with_capacity(config.locations.len());
    for (i, src) in config.locations.into_iter().enumerate() {
        locations.push(compile_location(src).map_err(|e| e.within(&format!("locations[{i}]")))?);
    }
    if !(100..=60_000).contains(&config.poll_interval_ms) {
        return Err(ConfigError::new("pollIntervalMs", "must be between 100 and 60000"));
    }
    if !(1..=60_000).contains(&config.timeout_ms) {
        return Err(ConfigError::new("timeoutMs", "must be between 1 and 60000"));
    }
    if config.max_staleness_seconds.saturating_mul(1000) < config.poll_interval_ms {
        return Err(ConfigError::new("maxStalenessSeconds", "must be at least one poll interval"));
    }
    let mut headers = Vec::with_capacity(3);
    for (field, name) in [
        ("userHeader", &config.user_header),
        ("tokenIdHeader", &config.token_id_header),
        ("scopesHeader", &config.scopes_header),
    ] {
        let lower = name.to_ascii_lowercase();
        let valid = !lower.is_empty()
            && !lower.starts_with(':')
            && lower.bytes().all(crate::request::is_token_byte)
            && !matches!(lower.as_str(), "authorization" | "cookie" | "host");
        if !valid || headers.contains(&lower) {
            return Err(ConfigError::new(field, "must be a distinct header name, not a reserved one"));
        }
        headers.push(lower);
    }
    let [user_header, token_id_header, scopes_header] =
        <[String; 3]>::try_from(headers).map_err(|_| ConfigError::new("userHeader", "internal"))?;
    Ok(ApiTokenSettings {
        prefix: config.prefix,
        locations,
        poll_interval_ms: config.poll_interval_ms,
        timeout_ms: config.timeout_ms,
        max_staleness_secs: config.max_staleness_seconds,
        feed_path: FEED_PATH.to_string(),
        usage_path: USAGE_PATH.to_string(),
        user_header,
        token_id_header,
        scopes_header,
        forward_token: config.forward_token,
        control_plane: control_plane.clone(),
    })
}
