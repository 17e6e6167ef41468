//! The `providers.<name>` object of the plugin configuration, as written (see
//! [`super::compile`] for what is accepted).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::Value;

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
    #[cfg_attr(feature = "schema", schemars(schema_with = "inline_jwks_schema"))]
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

/// `providers.<name>.jwks`: parsed by the JWKS loader, not by serde, so described here.
/// Unusable keys are skipped with a warning, hence no constraint on the items.
#[cfg(feature = "schema")]
fn inline_jwks_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": "An inline RFC 7517 JWKS: an object with a `keys` array. Unusable keys are skipped with a warning.",
        "type": ["object", "null"],
        "required": ["keys"],
        "properties": { "keys": { "type": "array" } }
    })
}
