//! The `rateLimits` section: each limit's settings as written, and compiled into a
//! [`RateLimit`] whose descriptors are parsed and whose rules are resolved to indexes.

use serde::Deserialize;

use super::descriptor::{AppliedLimit, Descriptor, LimitContext};
use super::gcra::Unit;
use super::wire::counter_key;
use crate::control_plane::FailureMode;
use crate::error::{is_identifier, ConfigError};

/// Most rate limits in one configuration.
pub const MAX_LIMITS: usize = 64;

/// `lease` (decide locally from leased quota) or `strict` (one call per request).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(rename_all = "camelCase")]
pub enum LimitMode {
    #[default]
    Lease,
    #[serde(rename = "strict")]
    PerRequest,
}

/// When the `RateLimit-*` headers are sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(rename_all = "camelCase")]
pub enum HeaderMode {
    /// Only on 429 replies.
    #[default]
    Denied,
    /// Also on allowed responses.
    Always,
}

#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitConfig {
    pub name: String,
    pub limit: u64,
    pub unit: Unit,
    #[serde(default)]
    pub descriptors: Vec<String>,
    /// Rule names the limit applies to; absent: every request, including those no rule
    /// matched.
    #[serde(default)]
    pub rules: Option<Vec<String>>,
    #[serde(default)]
    pub overrides: Vec<OverrideConfig>,
    #[serde(default)]
    pub mode: LimitMode,
    #[serde(default = "default_failure_allow")]
    pub on_error: FailureMode,
    #[serde(default)]
    pub shadow: bool,
    #[serde(default)]
    pub response_headers: HeaderMode,
    /// Strict mode: the call's timeout.
    #[serde(default = "default_strict_timeout_ms")]
    pub timeout_ms: u64,
    /// Lease mode: the largest lease asked for.
    #[serde(default = "default_max_lease")]
    pub max_lease: u64,
    /// Lease mode: how long a lease may be spent.
    #[serde(default = "default_lease_ttl_ms")]
    pub lease_ttl_ms: u64,
    /// Lease mode: how many holders (workers × Envoys) share a counter, to size leases.
    #[serde(default = "default_holders")]
    pub expected_holders: u64,
}

fn default_failure_allow() -> FailureMode {
    FailureMode::Allow
}
fn default_strict_timeout_ms() -> u64 {
    20
}
fn default_max_lease() -> u64 {
    100
}
fn default_lease_ttl_ms() -> u64 {
    2_000
}
fn default_holders() -> u64 {
    4
}

/// Another limit for requests whose descriptor has a given value.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OverrideConfig {
    /// A descriptor, e.g. `claim:tenant`.
    pub when: String,
    pub equals: String,
    pub limit: u64,
    #[serde(default)]
    pub unit: Option<Unit>,
}

/// A compiled rate limit.
#[derive(Debug, Clone)]
pub struct RateLimit {
    pub name: String,
    pub limit: u64,
    pub unit: Unit,
    pub descriptors: Vec<Descriptor>,
    /// Per rule index: whether the limit applies. `None`: every request.
    pub rules: Option<Vec<bool>>,
    pub overrides: Vec<Override>,
    pub mode: LimitMode,
    pub on_error: FailureMode,
    pub shadow: bool,
    pub response_headers: HeaderMode,
    pub timeout_ms: u64,
    pub max_lease: u64,
    pub lease_ttl_ms: u64,
    pub expected_holders: u64,
}

#[derive(Debug, Clone)]
pub struct Override {
    pub when: Descriptor,
    pub equals: String,
    pub limit: u64,
    pub unit: Unit,
}

impl RateLimit {
    /// The counter this request touches, or `None` when the limit does not apply.
    pub fn apply(
        &self,
        index: usize,
        rule_index: Option<usize>,
        ctx: &LimitContext<'_>,
    ) -> Option<AppliedLimit> {
        if let Some(rules) = &self.rules {
            let r = rule_index?;
            if !rules.get(r).copied().unwrap_or(false) {
                return None;
            }
        }
        let mut values = Vec::with_capacity(self.descriptors.len());
        for d in &self.descriptors {
            values.push(d.value(ctx)?);
        }
        let (limit, unit) = self
            .overrides
            .iter()
            .find(|o| o.when.value(ctx).is_some_and(|v| v == o.equals))
            .map(|o| (o.limit, o.unit))
            .unwrap_or((self.limit, self.unit));
        let refs: Vec<&str> = values.iter().map(String::as_str).collect();
        Some(AppliedLimit { index, key: counter_key(&self.name, limit, unit, &refs), limit, unit })
    }
}

/// Validates the `rateLimits` section. `rule_names` resolve `rateLimits[].rules`.
pub(crate) fn compile_limits(
    configs: Vec<RateLimitConfig>,
    rule_names: &[String],
) -> Result<Vec<RateLimit>, ConfigError> {
    if configs.len() > MAX_LIMITS {
        return Err(ConfigError::new("rateLimits", format!("at most {MAX_LIMITS} limits are supported")));
    }
    let mut rate_limits = Vec::with_capacity(configs.len());
    for (i, c) in configs.into_iter().enumerate() {
        let at = format!("rateLimits[{i}]");
        if rate_limits.iter().any(|l: &RateLimit| l.name == c.name) {
            return Err(ConfigError::new(format!("{at}.name"), format!("duplicate limit name `{}`", c.name)));
        }
        rate_limits.push(compile_limit(c, rule_names).map_err(|e| e.within(&at))?);
    }
    Ok(rate_limits)
}

fn check_limit(limit: u64, field: &str) -> Result<(), ConfigError> {
    if !(1..=1_000_000_000).contains(&limit) {
        return Err(ConfigError::new(field, "must be between 1 and 1000000000"));
    }
    Ok(())
}

pub(crate) fn compile_limit(c: RateLimitConfig, rule_names: &[String]) -> Result<RateLimit, ConfigError> {
    if !is_identifier(&c.name) {
        return Err(ConfigError::new("name", "limit names use 1-64 letters, digits, '-', '_' and '.'"));
    }
    check_limit(c.limit, "limit")?;
    if c.descriptors.len() > 8 {
        return Err(ConfigError::new("descriptors", "at most 8 descriptors"));
    }
    let mut descriptors = Vec::with_capacity(c.descriptors.len());
    for (i, d) in c.descriptors.iter().enumerate() {
        descriptors.push(Descriptor::parse(d).map_err(|m| ConfigError::new(format!("descriptors[{i}]"), m))?);
    }
    let rules = match c.rules {
        None => None,
        Some(names) => {
            let mut applies = vec![false; rule_names.len()];
            for (i, n) in names.iter().enumerate() {
                let idx = rule_names
                    .iter()
                    .position(|r| r == n)
                    .ok_or_else(|| ConfigError::new(format!("rules[{i}]"), format!("unknown rule `{n}`")))?;
                if let Some(a) = applies.get_mut(idx) {
                    *a = true;
                }
            }
            Some(applies)
        }
    };
    let mut overrides = Vec::with_capacity(c.overrides.len());
    for (i, o) in c.overrides.into_iter().enumerate() {
        let at = format!("overrides[{i}]");
        let when = Descriptor::parse(&o.when).map_err(|m| ConfigError::new(format!("{at}.when"), m))?;
        check_limit(o.limit, &format!("{at}.limit"))?;
        overrides.push(Override { when, equals: o.equals, limit: o.limit, unit: o.unit.unwrap_or(c.unit) });
    }
    if !(1..=10_000).contains(&c.timeout_ms) {
        return Err(ConfigError::new("timeoutMs", "must be between 1 and 10000"));
    }
    if !(1..=1_000_000).contains(&c.max_lease) {
        return Err(ConfigError::new("maxLease", "must be between 1 and 1000000"));
    }
    if !(100..=60_000).contains(&c.lease_ttl_ms) {
        return Err(ConfigError::new("leaseTtlMs", "must be between 100 and 60000"));
    }
    if !(1..=100_000).contains(&c.expected_holders) {
        return Err(ConfigError::new("expectedHolders", "must be between 1 and 100000"));
    }
    Ok(RateLimit {
        name: c.name,
        limit: c.limit,
        unit: c.unit,
        descriptors,
        rules,
        overrides,
        mode: c.mode,
        on_error: c.on_error,
        shadow: c.shadow,
        response_headers: c.response_headers,
        timeout_ms: c.timeout_ms,
        max_lease: c.max_lease,
        lease_ttl_ms: c.lease_ttl_ms,
        expected_holders: c.expected_holders,
    })
}
