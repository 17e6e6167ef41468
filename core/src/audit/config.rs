//! The plugin configuration's `audit` section: which decisions the filter records, how
//! it samples allows, how it batches them to the control plane and how much it buffers
//! while the control plane is away. It needs the `controlPlane` section (the batches
//! go to its internal listener with the fleet credential).

use serde::Deserialize;

use super::{DECISIONS_PATH, MAX_DECISIONS_PER_BATCH};
use crate::control_plane::ControlPlane;
use crate::error::ConfigError;

/// Allows recorded by default: one in a thousand (see docs/audit.md: denies are always
/// recorded; at tens of thousands of requests per second per Envoy, every allow would
/// make the audit log the largest workload of the control plane and its store).
pub const DEFAULT_ALLOW_SAMPLE_RATE: f64 = 0.001;
/// Sampling is done in parts per million.
pub const PPM: u32 = 1_000_000;

/// How a decision names the client address.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(rename_all = "camelCase")]
pub enum ClientAddressMode {
    /// `hash:` and a keyed hash of the address under the fleet credential: the control
    /// plane (which holds the credential) can find an address's records, a reader of
    /// the log alone cannot recover addresses.
    #[default]
    Hashed,
    /// The address itself.
    Raw,
    /// No address.
    Omit,
}

/// The `audit` section.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuditConfig {
    /// Share of allowed requests recorded, 0 to 1 (denies and shadow denies are always
    /// recorded). Default 0.001.
    #[serde(default = "default_sample_rate")]
    pub allow_sample_rate: f64,
    /// Decisions per batch, 1 to 500.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// A batch leaves at the latest this long after its first decision, 100 to 60000.
    #[serde(default = "default_flush_interval_ms")]
    pub flush_interval_ms: u64,
    /// Decisions held per Envoy while the control plane is away, 1 to 100000; when
    /// full, the oldest are dropped (and counted).
    #[serde(default = "default_buffer_events")]
    pub buffer_events: usize,
    /// How the client address is recorded.
    #[serde(default)]
    pub client_address: ClientAddressMode,
    /// Record the path with its query (by default the query is left out: it may carry
    /// what should not be logged).
    #[serde(default)]
    pub keep_query: bool,
    /// First wait after a failed send; doubles per failure up to `retryMaxMs`.
    #[serde(default = "default_retry_initial_ms")]
    pub retry_initial_ms: u64,
    #[serde(default = "default_retry_max_ms")]
    pub retry_max_ms: u64,
    /// Timeout of one batch's `POST`.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_sample_rate() -> f64 {
    DEFAULT_ALLOW_SAMPLE_RATE
}
fn default_batch_size() -> usize {
    100
}
fn default_flush_interval_ms() -> u64 {
    1_000
}
fn default_buffer_events() -> usize {
    10_000
}
fn default_retry_initial_ms() -> u64 {
    500
}
fn default_retry_max_ms() -> u64 {
    30_000
}
fn default_timeout_ms() -> u64 {
    2_000
}

/// The compiled section.
#[derive(Debug, Clone)]
pub struct AuditSettings {
    pub control_plane: ControlPlane,
    pub path: String,
    /// Allows recorded per million.
    pub allow_sample_ppm: u32,
    pub batch_size: usize,
    pub flush_interval_ms: u64,
    pub buffer_events: usize,
    pub client_address: ClientAddressMode,
    pub keep_query: bool,
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    pub timeout_ms: u64,
}

/// Validates the section (field paths relative to it).
pub fn compile_audit(
    config: AuditConfig,
    control_plane: &ControlPlane,
) -> Result<AuditSettings, ConfigError> {
    let rate = config.allow_sample_rate;
    if !(0.0..=1.0).contains(&rate) {
        return Err(ConfigError::new("allowSampleRate", "must be between 0 and 1"));
    }
    if !(1..=MAX_DECISIONS_PER_BATCH).contains(&config.batch_size) {
        return Err(ConfigError::new(
            "batchSize",
            format!("must be between 1 and {MAX_DECISIONS_PER_BATCH}"),
        ));
    }
    if !(100..=60_000).contains(&config.flush_interval_ms) {
        return Err(ConfigError::new("flushIntervalMs", "must be between 100 and 60000"));
    }
    if !(1..=100_000).contains(&config.buffer_events) {
        return Err(ConfigError::new("bufferEvents", "must be between 1 and 100000"));
    }
    if !(10..=60_000).contains(&config.retry_initial_ms) {
        return Err(ConfigError::new("retryInitialMs", "must be between 10 and 60000"));
    }
    if config.retry_max_ms < config.retry_initial_ms || config.retry_max_ms > 600_000 {
        return Err(ConfigError::new("retryMaxMs", "must be between retryInitialMs and 600000"));
    }
    if !(1..=60_000).contains(&config.timeout_ms) {
        return Err(ConfigError::new("timeoutMs", "must be between 1 and 60000"));
    }
    // In range 0..=1, so the product is in 0..=1e6.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let allow_sample_ppm = (rate * f64::from(PPM)).round() as u32;
    Ok(AuditSettings {
        control_plane: control_plane.clone(),
        path: DECISIONS_PATH.to_string(),
        allow_sample_ppm,
        batch_size: config.batch_size,
        flush_interval_ms: config.flush_interval_ms,
        buffer_events: config.buffer_events,
        client_address: config.client_address,
        keep_query: config.keep_query,
        retry_initial_ms: config.retry_initial_ms,
        retry_max_ms: config.retry_max_ms,
        timeout_ms: config.timeout_ms,
    })
}

impl AuditSettings {
    /// Whether to record a decision: denies always; an allow when `random` (uniform
    /// over `u32`) falls within the sampling rate.
    pub fn records(&self, allowed: bool, random: u32) -> bool {
        if !allowed {
            return true;
        }
        let threshold = u64::from(self.allow_sample_ppm) * (u64::from(u32::MAX) + 1) / u64::from(PPM);
        u64::from(random) < threshold
    }

    /// The wait before the next send after `failures` failed ones in a row: the
    /// initial wait doubled per failure, at most the maximum.
    pub fn backoff_ms(&self, failures: u32) -> u64 {
        let doublings = failures.saturating_sub(1).min(32);
        self.retry_initial_ms.saturating_mul(1u64 << doublings).min(self.retry_max_ms)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    /// The section in `json`, compiled beside a test control plane.
    pub(crate) fn settings(json: &str) -> Result<AuditSettings, ConfigError> {
        let config: crate::control_plane::ControlPlaneConfig = serde_json::from_str(
            r#"{"cluster":"cp","authority":"cp","credential":{"inline":"fleet-credential-0123456789abcdef0123"}}"#,
        )
        .unwrap();
        let control_plane = crate::control_plane::compile(config, &|_| None).unwrap();
        compile_audit(serde_json::from_str(json).unwrap(), &control_plane)
    }

    #[test]
    fn defaults_and_errors_name_the_field() {
        let s = settings("{}").unwrap();
        assert_eq!((s.allow_sample_ppm, s.batch_size, s.buffer_events), (1_000, 100, 10_000));
        assert_eq!(s.client_address, ClientAddressMode::Hashed);
        assert!(!s.keep_query);
        for (json, field) in [
            (r#"{"allowSampleRate":1.5}"#, "allowSampleRate"),
            (r#"{"batchSize":0}"#, "batchSize"),
            (r#"{"batchSize":501}"#, "batchSize"),
            (r#"{"flushIntervalMs":5}"#, "flushIntervalMs"),
            (r#"{"bufferEvents":0}"#, "bufferEvents"),
            (r#"{"retryInitialMs":1}"#, "retryInitialMs"),
            (r#"{"retryInitialMs":1000,"retryMaxMs":999}"#, "retryMaxMs"),
            (r#"{"timeoutMs":0}"#, "timeoutMs"),
        ] {
            assert_eq!(settings(json).unwrap_err().field, field, "{json}");
        }
        assert!(serde_json::from_str::<AuditConfig>(r#"{"sample":1}"#).is_err());
    }

    #[test]
    fn denies_are_always_recorded_and_allows_at_the_rate() {
        let all = settings(r#"{"allowSampleRate":1}"#).unwrap();
        let none = settings(r#"{"allowSampleRate":0}"#).unwrap();
        let tenth = settings(r#"{"allowSampleRate":0.1}"#).unwrap();
        for r in [0, 1, u32::MAX / 2, u32::MAX] {
            assert!(all.records(true, r) && all.records(false, r));
            assert!(!none.records(true, r) && none.records(false, r));
        }
        let kept = (0..1000u32).filter(|i| tenth.records(true, i.wrapping_mul(4_294_967))).count();
        assert!((95..=105).contains(&kept), "{kept}");
        assert!(tenth.records(true, 0) && !tenth.records(true, u32::MAX));
    }

    #[test]
    fn the_backoff_doubles_up_to_the_maximum() {
        let s = settings(r#"{"retryInitialMs":100,"retryMaxMs":1000}"#).unwrap();
        let waits: Vec<u64> = (1..=6).map(|f| s.backoff_ms(f)).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(s.backoff_ms(u32::MAX), 1000);
    }
}
