//! The `signatures` section of a rule and the top-level `signatureKeys` list, parsed
//! and compiled: component names checked, secrets decoded and measured, key ids
//! unique. Inline secrets are for development: the plugin configuration is readable by
//! whoever can read the WasmPlugin.

use std::collections::HashSet;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Deserialize;

use super::{MIN_SECRET_BYTES, MIN_WHSEC_BYTES};
use crate::error::{is_identifier, ConfigError};

pub const DEFAULT_TOLERANCE_SECS: u64 = 300;
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;
/// Largest body a signature check may buffer.
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
/// Most secrets per key (rotation needs two; a few more leave room for overlap).
pub const MAX_SECRETS_PER_KEY: usize = 4;

/// A signature scheme a rule accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(rename_all = "camelCase")]
pub enum Scheme {
    /// RFC 9421 `Signature-Input` / `Signature` with `hmac-sha256`.
    HttpMessageSignatures,
    /// Standard Webhooks `webhook-id` / `webhook-timestamp` / `webhook-signature`.
    StandardWebhooks,
}

/// Where the replay guard remembers nonces and message ids.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(rename_all = "camelCase")]
pub enum ReplayMode {
    /// In this Envoy's shared data: a replay to the same Envoy is refused; one sent to
    /// another Envoy of the fleet is not seen.
    #[default]
    Local,
    /// Claimed across the fleet: one control-plane call per signed request (needs
    /// `controlPlane`); a replay to any Envoy sharing the control plane is refused.
    Global,
    /// No replay guard (the upstream deduplicates by nonce or message id itself).
    None,
}

/// What a rule with `replay: global` does when the control plane cannot answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(rename_all = "camelCase")]
pub enum ReplayGuardFailure {
    /// 503 with `Retry-After` (a possible replay does not pass).
    #[default]
    Deny,
    /// Let the request through unguarded (the upstream deduplicates).
    Allow,
}

/// A rule's `signatures` section.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignatureRuleConfig {
    /// The schemes accepted, tried in this order.
    pub schemes: Vec<Scheme>,
    /// RFC 9421 components every signature must cover (default `@method`,
    /// `@target-uri`, `@authority`, `content-digest`).
    #[serde(default)]
    pub components: Option<Vec<String>>,
    /// How far `created` / the timestamp may be from the proxy's clock (seconds).
    #[serde(default)]
    pub tolerance_seconds: Option<u64>,
    /// Largest body buffered for the digest or webhook signature; larger: 413.
    #[serde(default)]
    pub max_body_bytes: Option<usize>,
    #[serde(default)]
    pub replay: ReplayMode,
    /// With `replay: global`, what happens when the control plane cannot answer.
    #[serde(default)]
    pub on_replay_guard_unavailable: ReplayGuardFailure,
    /// The key ids accepted on this rule (default: every key of `signatureKeys`).
    #[serde(default)]
    pub keys: Option<Vec<String>>,
    /// An RFC 9421 `tag` the signature must carry (application-specific).
    #[serde(default)]
    pub tag: Option<String>,
}

/// A compiled `signatures` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignaturePolicy {
    pub schemes: Vec<Scheme>,
    pub components: Vec<String>,
    pub tolerance_secs: u64,
    pub max_body_bytes: usize,
    pub replay: ReplayMode,
    pub on_replay_guard_unavailable: ReplayGuardFailure,
    pub keys: Option<Vec<String>>,
    pub tag: Option<String>,
    /// The RFC 9421 §5.1 `Accept-Signature` value sent with this rule's 401s (rules
    /// accepting HTTP Message Signatures): what a signature must cover and carry.
    pub accept_signature: Option<String>,
}

/// One entry of `signatureKeys` (and of the key set the control plane delivers).
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignatureKeyConfig {
    pub id: String,
    /// Who the key belongs to: passed upstream with the key id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    pub secrets: Vec<SecretConfig>,
}

/// A secret: `whsec_<base64>` or plain standard base64.
#[derive(Clone, Deserialize, serde::Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretConfig {
    pub secret: String,
    /// Unix seconds after which this secret no longer verifies (rotation window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<u64>,
}

impl std::fmt::Debug for SecretConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretConfig").field("not_after", &self.not_after).finish_non_exhaustive()
    }
}

/// A compiled key: its secrets, newest last.
#[derive(Clone, PartialEq, Eq)]
pub struct SignatureKey {
    pub id: String,
    pub owner: Option<String>,
    secrets: Vec<(Vec<u8>, Option<u64>)>,
}

impl std::fmt::Debug for SignatureKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignatureKey").field("id", &self.id).field("secrets", &self.secrets.len()).finish()
    }
}

impl SignatureKey {
    /// A key from raw secrets with their `notAfter` (tests and the control plane).
    pub fn new(id: &str, owner: Option<&str>, secrets: Vec<(Vec<u8>, Option<u64>)>) -> Self {
        SignatureKey { id: id.to_string(), owner: owner.map(str::to_string), secrets }
    }

    /// The secrets valid at `now`.
    pub fn secrets_at(&self, now: u64) -> impl Iterator<Item = &[u8]> + '_ {
        self.secrets
            .iter()
            .filter(move |(_, until)| until.is_none_or(|t| now <= t))
            .map(|(s, _)| s.as_slice())
    }
}

/// Every configured key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyRing {
    pub keys: Vec<SignatureKey>,
}

impl KeyRing {
    /// The key `id`, if this policy accepts it.
    pub fn get(&self, policy: &SignaturePolicy, id: &str) -> Option<&SignatureKey> {
        let allowed = policy.keys.as_ref().is_none_or(|ids| ids.iter().any(|k| k == id));
        self.keys.iter().find(|k| k.id == id).filter(|_| allowed)
    }

    /// Every key this policy accepts.
    pub fn accepted<'a>(
        &'a self,
        policy: &'a SignaturePolicy,
    ) -> impl Iterator<Item = &'a SignatureKey> + 'a {
        self.keys.iter().filter(|k| policy.keys.as_ref().is_none_or(|ids| ids.contains(&k.id)))
    }
}

fn is_component(name: &str) -> bool {
    matches!(
        name,
        "@method" | "@target-uri" | "@authority" | "@scheme" | "@request-target" | "@path" | "@query"
    ) || (!name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| crate::request::is_token_byte(b) && !b.is_ascii_uppercase()))
}

/// Compiles a rule's `signatures` section; `key_ids` are the ids `signatureKeys` defines;
/// with `from_control_plane` (an `hmacKeys` section) any key id may be named, since
/// the control plane's keys are known only at run time.
pub fn compile_signatures(
    config: SignatureRuleConfig,
    key_ids: &[String],
    from_control_plane: bool,
) -> Result<SignaturePolicy, ConfigError> {
    if config.schemes.is_empty() {
        return Err(ConfigError::new("schemes", "must name at least one scheme"));
    }
    let components = config.components.unwrap_or_else(|| {
        ["@method", "@target-uri", "@authority", "content-digest"].iter().map(|s| s.to_string()).collect()
    });
    for (i, c) in components.iter().enumerate() {
        if !is_component(c) {
            return Err(ConfigError::new(
                format!("components[{i}]"),
                "a derived component (`@method`, `@target-uri`, `@authority`, `@scheme`, `@path`, `@query`, \
                 `@request-target`) or a lower-case header name",
            ));
        }
    }
    let tolerance_secs = config.tolerance_seconds.unwrap_or(DEFAULT_TOLERANCE_SECS);
    if tolerance_secs == 0 || tolerance_secs > 86_400 {
        return Err(ConfigError::new("toleranceSeconds", "must be 1 to 86400"));
    }
    let max_body_bytes = config.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
    if max_body_bytes > MAX_BODY_BYTES {
        return Err(ConfigError::new("maxBodyBytes", format!("must be at most {MAX_BODY_BYTES}")));
    }
    if let Some(keys) = &config.keys {
        for (i, k) in keys.iter().enumerate() {
            if from_control_plane && is_identifier(k) {
                continue;
            }
            if !key_ids.contains(k) {
                return Err(ConfigError::new(
                    format!("keys[{i}]"),
                    format!("unknown key `{k}` (see `signatureKeys`)"),
                ));
            }
        }
    }
    if key_ids.is_empty() && !from_control_plane {
        return Err(ConfigError::new(
            "",
            "needs keys: a top-level `hmacKeys` section (keys held by the control plane) or a \
             `signatureKeys` list",
        ));
    }
    let accept_signature = config
        .schemes
        .contains(&Scheme::HttpMessageSignatures)
        .then(|| accept_signature(&components, config.replay, config.tag.as_deref()));
    Ok(SignaturePolicy {
        accept_signature,
        schemes: config.schemes,
        components,
        tolerance_secs,
        max_body_bytes,
        replay: config.replay,
        on_replay_guard_unavailable: config.on_replay_guard_unavailable,
        keys: config.keys,
        tag: config.tag,
    })
}

/// The `Accept-Signature` value (RFC 9421 §5.1) for a rule: its components, `created`,
/// `nonce` when a replay guard needs one, `alg`, and its `tag` (when it is an sf-string).
fn accept_signature(components: &[String], replay: ReplayMode, tag: Option<&str>) -> String {
    let list = components.iter().map(|c| format!("\"{c}\"")).collect::<Vec<_>>().join(" ");
    let mut value = format!("sig1=({list});created");
    if replay != ReplayMode::None {
        value.push_str(";nonce");
    }
    value.push_str(";alg=\"hmac-sha256\"");
    if let Some(tag) = tag.filter(|t| t.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\'))
    {
        value.push_str(&format!(";tag=\"{tag}\""));
    }
    value
}

/// Compiles `signatureKeys` (errors name `signatureKeys[i]...`).
pub fn compile_keys(configs: Vec<SignatureKeyConfig>) -> Result<KeyRing, ConfigError> {
    let mut seen = HashSet::new();
    let mut keys = Vec::with_capacity(configs.len());
    for (i, c) in configs.into_iter().enumerate() {
        let at = format!("signatureKeys[{i}]");
        if !is_identifier(&c.id) || !seen.insert(c.id.clone()) {
            return Err(ConfigError::new(
                format!("{at}.id"),
                "key ids are unique, 1-64 letters, digits, '-', '_' and '.'",
            ));
        }
        if c.owner.as_ref().is_some_and(|o| !is_identifier(o)) {
            return Err(ConfigError::new(format!("{at}.owner"), "1-64 letters, digits, '-', '_' and '.'"));
        }
        if c.secrets.is_empty() || c.secrets.len() > MAX_SECRETS_PER_KEY {
            return Err(ConfigError::new(
                format!("{at}.secrets"),
                format!("1 to {MAX_SECRETS_PER_KEY} secrets"),
            ));
        }
        let mut secrets = Vec::with_capacity(c.secrets.len());
        for (j, s) in c.secrets.iter().enumerate() {
            let bytes = decode_secret(&s.secret)
                .map_err(|m| ConfigError::new(format!("{at}.secrets[{j}].secret"), m))?;
            secrets.push((bytes, s.not_after));
        }
        keys.push(SignatureKey { id: c.id, owner: c.owner, secrets });
    }
    Ok(KeyRing { keys })
}

/// Decodes a secret: `whsec_<base64>` (at least [`MIN_WHSEC_BYTES`]) or standard
/// base64 (at least [`MIN_SECRET_BYTES`]).
pub fn decode_secret(secret: &str) -> Result<Vec<u8>, String> {
    let (encoded, min) = match secret.strip_prefix("whsec_") {
        Some(rest) => (rest, MIN_WHSEC_BYTES),
        None => (secret, MIN_SECRET_BYTES),
    };
    let bytes = STANDARD.decode(encoded).map_err(|_| "not valid base64".to_string())?;
    if bytes.len() < min {
        return Err(format!("too short: at least {min} bytes of secret"));
    }
    Ok(bytes)
}
