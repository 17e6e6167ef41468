//! The `revocation` section (how the feed is followed, how fresh it must be, the
//! per-request status check) and each rule's revocation settings, compiled into
//! [`RevocationSettings`].

use serde::Deserialize;

use crate::control_plane::ControlPlane;
use crate::error::ConfigError;
use crate::jwt::provider::Provider;

/// How the revocation feed is followed and how fresh it must be. The control plane
/// serving it is the `controlPlane` section's.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RevocationConfig {
    /// Moved to `controlPlane.cluster`; present only to say so.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(skip), serde(skip_serializing))]
    pub cluster: Option<serde::de::IgnoredAny>,
    /// Moved to `controlPlane.authority`; present only to say so.
    #[serde(default)]
    #[cfg_attr(feature = "schema", schemars(skip), serde(skip_serializing))]
    pub authority: Option<serde::de::IgnoredAny>,
    #[serde(default = "default_feed_path")]
    pub path: String,
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    #[serde(default = "default_feed_timeout_ms")]
    pub timeout_ms: u64,
    /// Past this age without a successful poll, rules apply their `onStale` action.
    #[serde(default = "default_max_staleness")]
    pub max_staleness_seconds: u64,
    /// Providers whose tokens are checked against the feed. Default: all of them.
    #[serde(default)]
    pub providers: Option<Vec<String>>,
    /// Path of the per-request check used by rules with `"revocationCheck": "strict"`.
    #[serde(default = "default_status_path")]
    pub status_path: String,
    #[serde(default = "default_strict_timeout_ms")]
    pub strict_timeout_ms: u64,
    /// How long a token that passed a strict check is not asked about again.
    #[serde(default = "default_strict_cache_ms")]
    pub strict_cache_ms: u64,
}

fn default_status_path() -> String {
    "/v1/token-status".to_string()
}
fn default_strict_timeout_ms() -> u64 {
    20
}
fn default_strict_cache_ms() -> u64 {
    1_000
}

/// How a rule answers "is this token revoked?".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(rename_all = "camelCase")]
pub enum RevocationCheck {
    /// From the local replica (at most a poll interval old): no call per request.
    #[default]
    Replica,
    /// Ask the control plane on every request (briefly cached), for routes where a
    /// second of staleness is too much.
    #[serde(rename = "strict")]
    PerRequest,
}

fn default_feed_path() -> String {
    "/v1/feed".to_string()
}
fn default_poll_interval_ms() -> u64 {
    1_000
}
fn default_feed_timeout_ms() -> u64 {
    500
}
fn default_max_staleness() -> u64 {
    300
}

/// What a rule does when the revocation replica is older than the max staleness.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(rename_all = "camelCase")]
pub enum StaleAction {
    /// Answer 503: a revoked token must not pass just because the feed is unreachable.
    #[default]
    Deny,
    /// Keep deciding with the last replica received.
    Allow,
}

/// Compiled [`RevocationConfig`].
#[derive(Debug, Clone)]
pub struct RevocationSettings {
    /// The control plane serving the feed and the status check (`controlPlane`).
    pub control_plane: crate::control_plane::ControlPlane,
    pub path: String,
    pub poll_interval_ms: u64,
    pub timeout_ms: u64,
    pub max_staleness_secs: u64,
    /// Indexed by provider: whether its tokens are checked against the feed.
    pub applies_to: Vec<bool>,
    pub status_path: String,
    /// Timeout of the per-request status check (`strictTimeoutMs`).
    pub status_timeout_ms: u64,
    /// How long a token that passed the status check is not asked about again
    /// (`strictCacheMs`).
    pub status_cache_ms: u64,
}

pub(crate) fn compile_revocation(
    config: RevocationConfig,
    control_plane: &ControlPlane,
    providers: &[Provider],
) -> Result<RevocationSettings, ConfigError> {
    for (field, set) in [("cluster", config.cluster.is_some()), ("authority", config.authority.is_some())] {
        if set {
            return Err(ConfigError::new(
                field,
                format!(
                    "moved to `controlPlane.{field}`: the feed, the status check and the guards share one \
                     control plane and its credential"
                ),
            ));
        }
    }
    if !config.path.starts_with('/') || config.path.contains('?') {
        return Err(ConfigError::new("path", "must start with '/' and have no query string"));
    }
    if !(100..=60_000).contains(&config.poll_interval_ms) {
        return Err(ConfigError::new("pollIntervalMs", "must be between 100 and 60000"));
    }
    if !(1..=60_000).contains(&config.timeout_ms) {
        return Err(ConfigError::new("timeoutMs", "must be between 1 and 60000"));
    }
    if !config.status_path.starts_with('/') || config.status_path.contains('?') {
        return Err(ConfigError::new("statusPath", "must start with '/' and have no query string"));
    }
    if !(1..=10_000).contains(&config.strict_timeout_ms) {
        return Err(ConfigError::new("strictTimeoutMs", "must be between 1 and 10000"));
    }
    if config.strict_cache_ms > 60_000 {
        return Err(ConfigError::new("strictCacheMs", "must be at most 60000"));
    }
    if config.max_staleness_seconds == 0
        || config.max_staleness_seconds.saturating_mul(1000) < config.poll_interval_ms
    {
        return Err(ConfigError::new("maxStalenessSeconds", "must be at least one poll interval"));
    }
    let applies_to = match &config.providers {
        None => vec![true; providers.len()],
        Some(names) => {
            let mut applies = vec![false; providers.len()];
            for (i, n) in names.iter().enumerate() {
                let idx = providers.iter().position(|p| p.name() == n).ok_or_else(|| {
                    ConfigError::new(format!("providers[{i}]"), format!("unknown provider `{n}`"))
                })?;
                if let Some(a) = applies.get_mut(idx) {
                    *a = true;
                }
            }
            applies
        }
    };
    Ok(RevocationSettings {
        control_plane: control_plane.clone(),
        path: config.path,
        poll_interval_ms: config.poll_interval_ms,
        timeout_ms: config.timeout_ms,
        max_staleness_secs: config.max_staleness_seconds,
        applies_to,
        status_path: config.status_path,
        status_timeout_ms: config.strict_timeout_ms,
        status_cache_ms: config.strict_cache_ms,
    })
}
