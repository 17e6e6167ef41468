//! The `controlPlane` section: where the control plane's internal listener is and how
//! the filter authenticates to it. It is the one place that names the control plane for
//! everything the filter asks it (the revocation feed and token status, rate-limit
//! leases, lockout and burst reports), and the one place that holds the fleet
//! credential sent on each of those calls. Remote JWKS fetches never carry it: keys
//! are public, and a provider's `remoteJwks` may point at a third party.
//!
//! The credential comes from an environment variable of the Wasm VM (`{"env": NAME}`,
//! the production form: Envoy passes the variable from its own environment with
//! `vm_config.environment_variables.host_env_keys`, Istio with `vmConfig.env` and
//! `valueFrom: HOST`, so it never sits in the plugin configuration), or inline
//! (`{"inline": "…"}`, for development: whoever can read the Envoy or Istio
//! configuration then holds the credential).

use serde::Deserialize;

use crate::error::ConfigError;
use crate::fleet::{FeedKey, FleetCredential};

/// Looks up an environment variable of the Wasm VM (`None`: not set or not exposed).
pub type Environment<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Where the control plane's internal listener is (revocation feed and token status, rate
/// limits, lockout and burst reports) and the fleet credential presented to it.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ControlPlaneConfig {
    /// The Envoy cluster of the control plane's internal listener.
    pub cluster: String,
    /// The `:authority` of calls to it.
    pub authority: String,
    /// Timeout of lease, report and burst calls.
    #[serde(default = "default_cp_timeout_ms")]
    pub timeout_ms: u64,
    /// The fleet credential, sent as `Authorization: Bearer` on every call.
    pub credential: CredentialSource,
}

fn default_cp_timeout_ms() -> u64 {
    200
}

/// What happens when the control plane cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(rename_all = "camelCase")]
pub enum FailureMode {
    /// Let the request through (counted as `unavailable_allowed`).
    Allow,
    /// Refuse it with 503 and `Retry-After: 1`.
    Deny,
}

/// Where the fleet credential comes from.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum CredentialSource {
    /// An environment variable exposed to the Wasm VM (production).
    Env(String),
    /// The credential itself (development only: it is then in the configuration).
    Inline(String),
}

/// The compiled section.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    pub cluster: String,
    pub authority: String,
    pub timeout_ms: u64,
    pub credential: FleetCredential,
    /// The key the feed's hashes are made with for this credential.
    pub feed_key: FeedKey,
}

/// Validates the section (field paths relative to it) and resolves the credential.
pub fn compile(config: ControlPlaneConfig, env: Environment<'_>) -> Result<ControlPlane, ConfigError> {
    if config.cluster.is_empty() {
        return Err(ConfigError::new("cluster", "must name the Envoy cluster of the control plane"));
    }
    if config.authority.is_empty() {
        return Err(ConfigError::new("authority", "must not be empty"));
    }
    if !(1..=60_000).contains(&config.timeout_ms) {
        return Err(ConfigError::new("timeoutMs", "must be between 1 and 60000"));
    }
    let (field, value) = match config.credential {
        CredentialSource::Inline(value) => ("credential.inline", value),
        CredentialSource::Env(name) => {
            if name.is_empty() {
                return Err(ConfigError::new("credential.env", "must name an environment variable"));
            }
            let value = env(&name).ok_or_else(|| {
                ConfigError::new(
                    "credential.env",
                    format!(
                        "the environment variable `{name}` is not set in the Wasm VM: expose it with \
                         vm_config.environment_variables.host_env_keys (Istio: vmConfig.env with valueFrom: HOST)"
                    ),
                )
            })?;
            ("credential.env", value)
        }
    };
    let credential = FleetCredential::new(&value).map_err(|why| ConfigError::new(field, why))?;
    let feed_key = credential.feed_key();
    Ok(ControlPlane {
        cluster: config.cluster,
        authority: config.authority,
        timeout_ms: config.timeout_ms,
        credential,
        feed_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const CREDENTIAL: &str = "fleet-credential-0123456789abcdef0123";

    fn section(json: &str) -> ControlPlaneConfig {
        serde_json::from_str(json).unwrap()
    }

    fn env(name: &str) -> Option<String> {
        (name == "FLEET").then(|| format!("{CREDENTIAL}\n"))
    }

    #[test]
    fn the_credential_comes_from_the_vm_environment_or_inline() {
        let from_env =
            compile(section(r#"{"cluster": "cp", "authority": "cp", "credential": {"env": "FLEET"}}"#), &env)
                .unwrap();
        assert_eq!(from_env.credential.as_str(), CREDENTIAL, "trimmed");
        assert_eq!(from_env.timeout_ms, 200);
        let inline = compile(
            section(&format!(
                r#"{{"cluster": "cp", "authority": "cp", "credential": {{"inline": "{CREDENTIAL}"}}}}"#
            )),
            &|_| None,
        )
        .unwrap();
        assert_eq!(inline.feed_key, from_env.feed_key);
    }

    #[test]
    fn a_missing_or_weak_credential_is_an_error_naming_the_field() {
        let err =
            compile(section(r#"{"cluster": "cp", "authority": "cp", "credential": {"env": "NOPE"}}"#), &env)
                .unwrap_err();
        assert_eq!(err.field, "credential.env");
        assert!(err.message.contains("`NOPE`") && err.message.contains("host_env_keys"), "{}", err.message);
        let err = compile(
            section(r#"{"cluster": "cp", "authority": "cp", "credential": {"inline": "short"}}"#),
            &env,
        )
        .unwrap_err();
        assert_eq!(err.field, "credential.inline");
        assert!(!err.message.contains("short"), "the value is never echoed: {}", err.message);
        assert!(
            serde_json::from_str::<ControlPlaneConfig>(r#"{"cluster": "cp", "authority": "cp"}"#).is_err()
        );
        let err =
            compile(section(r#"{"cluster": "", "authority": "cp", "credential": {"env": "FLEET"}}"#), &env)
                .unwrap_err();
        assert_eq!(err.field, "cluster");
    }
}
