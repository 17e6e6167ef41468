//! A rule: which requests (its [`Matcher`]) need which credentials, with which scopes
//! and roles, and how its revocation questions are answered.

use serde::Deserialize;

use super::matcher::{compile_match, MatchConfig, Matcher};
use crate::error::{is_identifier, ConfigError};
use crate::jwt::provider::Provider;
use crate::request::RequestParts;
use crate::revocation::{RevocationCheck, StaleAction};

#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleConfig {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(rename = "match", default)]
    pub matches: MatchConfig,
    /// Required, except on a rule taking API tokens only (`acceptApiTokens` without
    /// `requires`).
    #[serde(default)]
    pub requires: Option<RequirementConfig>,
    /// Also take API tokens (the top-level `apiTokens` section says where and how); a
    /// request carrying one is decided by it, with the rule's `scopes`.
    #[serde(default)]
    pub accept_api_tokens: bool,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub roles: Option<RolesConfig>,
    #[serde(default)]
    pub allow_cors_preflight: bool,
    #[serde(default)]
    pub shadow: bool,
    #[serde(default)]
    pub on_stale: StaleAction,
    #[serde(default)]
    pub revocation_check: RevocationCheck,
    /// Signed requests (HMAC): the schemes and what a signature must cover.
    #[serde(default)]
    pub signatures: Option<crate::signature::SignatureRuleConfig>,
}

/// `"none"`, `{"provider": "p"}`, `{"anyOf": ["a", "b"]}` or `{"allOf": ["a", "b"]}`.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum RequirementConfig {
    None,
    Provider(String),
    AnyOf(Vec<String>),
    AllOf(Vec<String>),
}

#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RolesConfig {
    /// Dotted path of the claim holding the roles (a string or an array of strings).
    pub claim: String,
    pub any_of: Vec<String>,
}

/// What a rule demands, with providers resolved to indexes into [`crate::config::Policy::providers`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    None,
    AnyOf(Vec<usize>),
    AllOf(Vec<usize>),
}

/// A role claim and the roles of which the token must carry at least one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolesRequirement {
    pub claim: String,
    pub any_of: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub matcher: Matcher,
    pub requirement: Requirement,
    /// All of these scopes must be granted by one verified token.
    pub scopes: Vec<String>,
    pub roles: Option<RolesRequirement>,
    /// Let CORS preflight requests (`OPTIONS` with `Origin` and
    /// `Access-Control-Request-Method`) through without credentials.
    pub allow_cors_preflight: bool,
    /// Evaluate and count, but never block.
    pub shadow: bool,
    /// What to do when the revocation replica is too old (or, for strict checks, when
    /// the control plane does not answer in time).
    pub on_stale: StaleAction,
    pub revocation_check: RevocationCheck,
    /// API tokens are taken too (see [`crate::api_auth`]).
    pub accept_api_tokens: bool,
    /// The signature this rule demands, if any (compiled with the keys, in
    /// `config.rs`).
    pub signatures: Option<crate::signature::SignaturePolicy>,
}

/// True for a CORS preflight request, which browsers send without credentials.
pub fn is_cors_preflight(req: &RequestParts) -> bool {
    req.method == "OPTIONS"
        && req.header_values("origin").next().is_some()
        && req.header_values("access-control-request-method").next().is_some()
}

pub(crate) fn compile_rule(
    index: usize,
    config: RuleConfig,
    providers: &[Provider],
) -> Result<Rule, ConfigError> {
    let name = match config.name {
        Some(n) if is_identifier(&n) => n,
        Some(_) => {
            return Err(ConfigError::new("name", "rule names use letters, digits, '-', '_' and '.' only"))
        }
        None => format!("rule{index}"),
    };
    let matcher = compile_match(config.matches).map_err(|e| e.within("match"))?;

    let requirement = match config.requires {
        Some(requires) => compile_requirement(requires, providers)?,
        // API tokens only: no provider, so a request without one is refused.
        None if config.accept_api_tokens => Requirement::AnyOf(Vec::new()),
        None => return Err(ConfigError::new("requires", "missing field `requires`")),
    };
    if config.accept_api_tokens && config.roles.is_some() {
        return Err(ConfigError::new(
            "roles",
            "API tokens carry scopes, not roles: a rule taking them has no `roles`",
        ));
    }

    let no_identity = requirement == Requirement::None;
    if no_identity && (!config.scopes.is_empty() || config.roles.is_some()) {
        return Err(ConfigError::new(
            "scopes",
            "scopes and roles need a provider requirement; `requires: \"none\"` has no token to read them from",
        ));
    }
    for (i, s) in config.scopes.iter().enumerate() {
        if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c == '"' || c == '\\') {
            return Err(ConfigError::new(
                format!("scopes[{i}]"),
                "a scope is a non-empty token without spaces or quotes",
            ));
        }
    }
    let roles = match config.roles {
        None => None,
        Some(r) => {
            if r.claim.is_empty() {
                return Err(ConfigError::new("roles.claim", "must not be empty"));
            }
            if r.any_of.is_empty() {
                return Err(ConfigError::new("roles.anyOf", "must list at least one role"));
            }
            Some(RolesRequirement { claim: r.claim, any_of: r.any_of })
        }
    };

    Ok(Rule {
        name,
        matcher,
        requirement,
        scopes: config.scopes,
        roles,
        allow_cors_preflight: config.allow_cors_preflight,
        shadow: config.shadow,
        on_stale: config.on_stale,
        revocation_check: config.revocation_check,
        accept_api_tokens: config.accept_api_tokens,
        signatures: None,
    })
}

/// `requires`, with provider names resolved to indexes.
fn compile_requirement(
    config: RequirementConfig,
    providers: &[Provider],
) -> Result<Requirement, ConfigError> {
    let resolve = |names: &[String], field: &str| -> Result<Vec<usize>, ConfigError> {
        if names.is_empty() {
            return Err(ConfigError::new(field, "must name at least one provider"));
        }
        let mut out = Vec::with_capacity(names.len());
        for (i, n) in names.iter().enumerate() {
            let idx = providers.iter().position(|p| p.name() == n).ok_or_else(|| {
                ConfigError::new(format!("{field}[{i}]"), format!("unknown provider `{n}`"))
            })?;
            if !out.contains(&idx) {
                out.push(idx);
            }
        }
        Ok(out)
    };
    Ok(match config {
        RequirementConfig::None => Requirement::None,
        RequirementConfig::Provider(n) => {
            let idx = providers
                .iter()
                .position(|p| p.name() == n)
                .ok_or_else(|| ConfigError::new("requires.provider", format!("unknown provider `{n}`")))?;
            Requirement::AnyOf(vec![idx])
        }
        RequirementConfig::AnyOf(names) => Requirement::AnyOf(resolve(&names, "requires.anyOf")?),
        RequirementConfig::AllOf(names) => Requirement::AllOf(resolve(&names, "requires.allOf")?),
    })
}
