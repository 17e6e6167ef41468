//! The `burst` section: per-address request counts the filter reports to the control
//! plane, which detects bursts and answers with the addresses it blocks.

pub mod wire;

use serde::Deserialize;

use crate::error::ConfigError;

/// Per-address request counts reported to the control plane, which detects bursts.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BurstConfig {
    #[serde(default = "default_report_interval_ms")]
    pub report_interval_ms: u64,
    /// Refuse requests from addresses the control plane reports blocked.
    #[serde(default = "default_true")]
    pub enforce_blocks: bool,
}

fn default_report_interval_ms() -> u64 {
    1_000
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone)]
pub struct Burst {
    pub report_interval_ms: u64,
    pub enforce_blocks: bool,
}

/// Validates the `burst` section.
pub(crate) fn compile(c: BurstConfig) -> Result<Burst, ConfigError> {
    if !(100..=60_000).contains(&c.report_interval_ms) {
        return Err(ConfigError::new("burst.reportIntervalMs", "must be between 100 and 60000"));
    }
    Ok(Burst { report_interval_ms: c.report_interval_ms, enforce_blocks: c.enforce_blocks })
}
