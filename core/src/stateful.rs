//! The stateful checks, compiled together: rate limits, account lockout and burst
//! reporting, whose counters live in the control plane, and the client address they
//! read. Each check's own section is compiled by its module ([`crate::ratelimit`],
//! [`crate::lockout`], [`crate::burst`], [`crate::client_addr`]); this module holds them
//! for the policy and says what a request needs of them.

use crate::burst::{Burst, BurstConfig};
use crate::client_addr::ClientIpConfig;
use crate::error::ConfigError;
use crate::lockout::{compile_lockout, Lockout, LockoutConfig};
use crate::ratelimit::{compile_limits, AppliedLimit, Descriptor, LimitContext, RateLimit, RateLimitConfig};

/// Everything stateful, compiled.
#[derive(Debug, Clone, Default)]
pub struct StatefulChecks {
    pub trusted_hops: u32,
    pub rate_limits: Vec<RateLimit>,
    pub lockout: Option<Lockout>,
    pub burst: Option<Burst>,
}

impl StatefulChecks {
    pub fn is_empty(&self) -> bool {
        self.rate_limits.is_empty() && self.lockout.is_none() && self.burst.is_none()
    }

    /// Whether anything reads the client address (so the filter only looks it up then).
    pub fn needs_client_ip(&self) -> bool {
        let uses = |d: &Descriptor| *d == Descriptor::ClientIp;
        self.burst.is_some()
            || self.lockout.as_ref().is_some_and(|l| l.by_ip)
            || self
                .rate_limits
                .iter()
                .any(|l| l.descriptors.iter().any(uses) || l.overrides.iter().any(|o| uses(&o.when)))
    }

    /// Counters of the limits that apply to a request.
    pub fn applicable(&self, rule_index: Option<usize>, ctx: &LimitContext<'_>) -> Vec<AppliedLimit> {
        self.rate_limits.iter().enumerate().filter_map(|(i, l)| l.apply(i, rule_index, ctx)).collect()
    }
}

/// The raw sections, as [`crate::config::PluginConfig`] holds them.
pub struct StatefulSections {
    /// Whether the configuration has a `controlPlane` section (compiled separately).
    pub has_control_plane: bool,
    pub client_ip: Option<ClientIpConfig>,
    pub rate_limits: Vec<RateLimitConfig>,
    pub lockout: Option<LockoutConfig>,
    pub burst: Option<BurstConfig>,
}

/// Validates the sections. `rule_names` resolve `rateLimits[].rules`.
pub fn compile(sections: StatefulSections, rule_names: &[String]) -> Result<StatefulChecks, ConfigError> {
    let trusted_hops = sections.client_ip.map(|c| c.trusted_hops).unwrap_or(0);
    if trusted_hops > 16 {
        return Err(ConfigError::new("clientIp.trustedHops", "must be at most 16"));
    }
    let rate_limits = compile_limits(sections.rate_limits, rule_names)?;
    let lockout = match sections.lockout {
        None => None,
        Some(c) => Some(compile_lockout(c).map_err(|e| e.within("lockout"))?),
    };
    let burst = sections.burst.map(crate::burst::compile).transpose()?;
    let checks = StatefulChecks { trusted_hops, rate_limits, lockout, burst };
    if !sections.has_control_plane {
        let section = if !checks.rate_limits.is_empty() {
            Some("rateLimits")
        } else if checks.lockout.is_some() {
            Some("lockout")
        } else if checks.burst.is_some() {
            Some("burst")
        } else {
            None
        };
        if let Some(s) = section {
            return Err(ConfigError::new(
                s,
                "needs a top-level `controlPlane` section naming the control plane's cluster",
            ));
        }
    }
    Ok(checks)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn guarded_sections_need_a_control_plane() {
        let c: RateLimitConfig = serde_json::from_str(r#"{"name":"l","limit":1,"unit":"second"}"#).unwrap();
        let err = compile(
            StatefulSections {
                has_control_plane: false,
                client_ip: None,
                rate_limits: vec![c],
                lockout: None,
                burst: None,
            },
            &[],
        )
        .unwrap_err();
        assert_eq!(err.field, "rateLimits");
    }
}
