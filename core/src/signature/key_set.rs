//! HMAC keys held by the control plane: the key set it serves to Envoys on the internal
//! listener (`GET` [`KEY_SET_PATH`], fleet credential) and the `hmacKeys` section that
//! makes the filter follow it.
//!
//! The set is small (one document, a version and every live key with its secrets), so
//! the filter keeps one copy per Envoy and replaces it whenever the version differs.
//! Secrets travel in clear over the internal channel (TLS in production): the filter
//! needs them to compute MACs. They are sealed at rest in the control plane's store.

use serde::{Deserialize, Serialize};

use super::config::{compile_keys, KeyRing, SignatureKeyConfig};
use crate::control_plane::ControlPlane;
use crate::error::ConfigError;

/// Where the control plane serves the key set.
pub const KEY_SET_PATH: &str = "/v1/hmac-keys";
/// Largest key set document the filter reads.
pub const MAX_KEY_SET_BYTES: usize = 256 * 1024;
/// Most keys the control plane holds.
pub const MAX_KEYS: usize = 256;

/// The key set as served: `version` changes on every write of the control plane's
/// keys; `keys` are the live (not revoked) keys with their secrets still valid.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeySet {
    pub version: u64,
    pub keys: Vec<SignatureKeyConfig>,
}

impl KeySet {
    /// Parses and compiles a served document (bounded; ids and secrets checked as
    /// inline keys are).
    pub fn compile(bytes: &[u8]) -> Result<(u64, KeyRing), String> {
        if bytes.len() > MAX_KEY_SET_BYTES {
            return Err(format!("larger than {MAX_KEY_SET_BYTES} bytes"));
        }
        let set: KeySet = serde_json::from_slice(bytes).map_err(|e| format!("unreadable: {e}"))?;
        if set.keys.len() > MAX_KEYS {
            return Err(format!("more than {MAX_KEYS} keys"));
        }
        let ring = compile_keys(set.keys).map_err(|e| e.to_string())?;
        Ok((set.version, ring))
    }
}

/// The top-level `hmacKeys` section: follow the control plane's HMAC keys.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HmacKeysConfig {
    /// How often one worker per Envoy fetches the key set (a revoked key stops
    /// verifying within this).
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Past this age without a successful fetch, signed rules apply their `onStale`
    /// action: `deny` (the default) answers 503, `allow` goes on verifying with the
    /// keys as they are.
    #[serde(default = "default_max_staleness")]
    pub max_staleness_seconds: u64,
}

fn default_poll_interval_ms() -> u64 {
    5_000
}
fn default_timeout_ms() -> u64 {
    1_000
}
fn default_max_staleness() -> u64 {
    300
}

/// The compiled section.
#[derive(Debug, Clone)]
pub struct HmacKeySettings {
    pub poll_interval_ms: u64,
    pub timeout_ms: u64,
    pub max_staleness_secs: u64,
    pub path: String,
    pub control_plane: ControlPlane,
}

/// Validates the section (field paths relative to it).
pub fn compile_hmac_keys(
    config: HmacKeysConfig,
    control_plane: &ControlPlane,
) -> Result<HmacKeySettings, ConfigError> {
    if !(100..=300_000).contains(&config.poll_interval_ms) {
        return Err(ConfigError::new("pollIntervalMs", "must be between 100 and 300000"));
    }
    if !(1..=60_000).contains(&config.timeout_ms) {
        return Err(ConfigError::new("timeoutMs", "must be between 1 and 60000"));
    }
    if config.max_staleness_seconds.saturating_mul(1000) < config.poll_interval_ms {
        return Err(ConfigError::new("maxStalenessSeconds", "must be at least one poll interval"));
    }
    Ok(HmacKeySettings {
        poll_interval_ms: config.poll_interval_ms,
        timeout_ms: config.timeout_ms,
        max_staleness_secs: config.max_staleness_seconds,
        path: KEY_SET_PATH.to_string(),
        control_plane: control_plane.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_served_set_compiles_and_bad_secrets_are_refused() {
        let good = br#"{"version":3,"keys":[{"id":"a","owner":"acme","secrets":[
            {"secret":"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw","notAfter":10},
            {"secret":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}]}]}"#;
        let (version, ring) = KeySet::compile(good).unwrap();
        assert_eq!(version, 3);
        assert_eq!(ring.keys.len(), 1);
        assert_eq!(ring.keys[0].secrets_at(11).count(), 1);
        assert_eq!(ring.keys[0].secrets_at(10).count(), 2);
        assert!(KeySet::compile(br#"{"version":1,"keys":[{"id":"a","secrets":[{"secret":"c2hvcnQ="}]}]}"#)
            .is_err());
        assert!(KeySet::compile(br#"{"version":1,"keys":[],"extra":1}"#).is_err());
        assert!(KeySet::compile(&vec![b' '; MAX_KEY_SET_BYTES + 1]).is_err());
    }

    fn compile(config: serde_json::Value) -> Result<crate::config::Policy, ConfigError> {
        crate::config::compile_json(config.to_string().as_bytes())
    }

    fn control_plane() -> serde_json::Value {
        serde_json::json!({ "cluster": "cp", "authority": "cp",
                            "credential": { "inline": "unit-test-fleet-credential-0123456789abcdef" } })
    }

    fn signed_rule(signatures: serde_json::Value) -> serde_json::Value {
        serde_json::json!([{ "name": "s", "match": { "pathPrefix": "/" }, "requires": "none", "signatures": signatures }])
    }

    #[test]
    fn the_control_plane_sections_are_checked_where_they_are_needed() {
        let rules = signed_rule(serde_json::json!({ "schemes": ["standardWebhooks"], "keys": ["partner"] }));
        // Key ids are known at run time with `hmacKeys`, checked at load time without.
        let with =
            compile(serde_json::json!({ "controlPlane": control_plane(), "hmacKeys": {}, "rules": rules }));
        assert!(with.unwrap().hmac_keys.is_some());
        let without = compile(serde_json::json!({ "rules": rules })).unwrap_err();
        assert_eq!(without.field, "rules[0].signatures.keys[0]");
        let alone = compile(serde_json::json!({ "hmacKeys": {}, "rules": rules })).unwrap_err();
        assert_eq!(alone.field, "hmacKeys");
        let fast = compile(serde_json::json!({ "controlPlane": control_plane(),
                                               "hmacKeys": { "pollIntervalMs": 50 }, "rules": rules }));
        assert_eq!(fast.unwrap_err().field, "hmacKeys.pollIntervalMs");
        // A fleet-wide replay guard needs the control plane.
        let global = signed_rule(serde_json::json!({ "schemes": ["standardWebhooks"], "replay": "global" }));
        let keys = serde_json::json!([{ "id": "k", "secrets": [{ "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" }] }]);
        let refused = compile(serde_json::json!({ "signatureKeys": keys, "rules": global })).unwrap_err();
        assert_eq!(refused.field, "rules[0].signatures.replay");
        let accepted = compile(
            serde_json::json!({ "controlPlane": control_plane(), "signatureKeys": keys, "rules": global }),
        );
        assert!(accepted.is_ok());
    }
}
