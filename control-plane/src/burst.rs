//! Burst alerts: the filter reports how many requests each client address sent (about
//! once a second, `POST /v1/burst/report`); an address that sends more than
//! `threshold` requests within `window` raises an alert, at most once per `cooldown`,
//! posted as signed JSON to the configured webhooks. Optionally the address is also
//! blocked for a while, which the report's answer tells the filter.
//!
//! State in the store, shared by replicas, keyed by a keyed hash of the address (never
//! the address itself; the key is a subkey of the master key):
//!
//! - counters `burst/<hash>/<n>`: requests in the `n`-th fixed window of the address
//!   (`n = now / window`); each expires when the window after it ends;
//! - counter `burst-alert/<hash>`: the cooldown. The replica whose increment returns 1
//!   sends the alert; the others see 2, 3, … until it expires, so one alert goes out
//!   per cooldown however many replicas see the burst;
//! - set [`BLOCKED_SET`]: blocked hashes, each expiring when its block ends.
//!
//! **The sliding window** is approximated from two fixed windows, as in
//! `estimate = current + previous · (window − elapsed) / window`, where `elapsed` is
//! how far `now` is into the current fixed window: the previous window's requests are
//! assumed to be spread evenly over it, and the part of it that still lies within the
//! last `window` counts. The estimate is exact when the traffic is steady; it rounds
//! down.
//!
//! **Delivery**: the alert goes to the durable webhook outbox ([`crate::webhooks`]):
//! one store write per webhook, so a report never waits for a webhook; retries, dead
//! letters and signatures are the outbox's business.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use portcullis_core::lockout::account_key;
use portcullis_core::wire::{BlockedIp, BurstEntry, BurstReply, BurstReport, MAX_BATCH};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::master_key::MasterKey;
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};
use crate::webhooks::{WebhookConfig, WebhookConfigError, Webhooks};

/// Purpose string of the subkey that keys address hashes.
pub const BURST_KEY_PURPOSE: &str = "portcullis burst v1";
/// Set of blocked address hashes.
pub const BLOCKED_SET: &str = "burst-blocked";
/// `route`, `method` and `userAgent` are cut to this many bytes in alerts.
const MAX_DETAIL_BYTES: usize = 512;
/// Most requests one entry may report (a larger count counts as this).
const MAX_ENTRY_COUNT: u64 = 1 << 32;
/// Longest window, cooldown or block: 1 day.
const MAX_PERIOD_SECS: u64 = 86_400;

/// How bursts are detected and what happens then.
#[derive(Debug, Clone)]
pub struct BurstConfig {
    /// An address sending more than this many requests within `window_secs` bursts.
    pub threshold: u64,
    pub window_secs: u64,
    /// At most one alert per address per cooldown.
    pub cooldown_secs: u64,
    /// Block a bursting address for this long (`None`: never block).
    pub block_secs: Option<u64>,
    /// Where alerts are posted (none: bursts are only logged).
    pub webhooks: WebhookConfig,
}

impl Default for BurstConfig {
    /// 50 requests per 10 s, one alert per minute, no webhook, no blocking.
    fn default() -> Self {
        Self {
            threshold: 50,
            window_secs: 10,
            cooldown_secs: 60,
            block_secs: None,
            webhooks: WebhookConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BurstConfigError {
    #[error(transparent)]
    Webhook(#[from] WebhookConfigError),
    #[error("{0}")]
    Invalid(String),
}

impl BurstConfig {
    pub fn validate(&self) -> Result<(), BurstConfigError> {
        if self.threshold == 0 {
            return Err(BurstConfigError::Invalid("--burst-threshold must be at least 1".into()));
        }
        for (name, secs) in [
            ("--burst-window", self.window_secs),
            ("--burst-cooldown", self.cooldown_secs),
            ("--burst-block", self.block_secs.unwrap_or(1)),
        ] {
            if !(1..=MAX_PERIOD_SECS).contains(&secs) {
                return Err(BurstConfigError::Invalid(format!("{name} must be 1 s to 1 day")));
            }
        }
        Ok(self.webhooks.validate()?)
    }

    fn window_ms(&self) -> u64 {
        self.window_secs.saturating_mul(1000).max(1)
    }
}

/// The JSON body posted to the webhooks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BurstAlert {
    pub ip: String,
    /// Requests within the last `windowSeconds` (the sliding estimate).
    pub count: u64,
    pub window_seconds: u64,
    pub threshold: u64,
    /// Of the address' latest reported request.
    pub route: String,
    pub method: String,
    pub user_agent: String,
    /// RFC 3339, UTC, milliseconds: `2023-11-14T22:13:20.000Z`.
    pub timestamp: String,
    /// The same instant in Unix milliseconds.
    pub timestamp_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BurstError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Detects bursts in reports and queues alerts for the webhooks.
pub struct BurstDetector {
    config: BurstConfig,
    ip_key: Arc<Zeroizing<[u8; 32]>>,
    webhooks: Arc<Webhooks>,
    metrics: Arc<Metrics>,
}

impl fmt::Debug for BurstDetector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BurstDetector").field("config", &self.config).finish_non_exhaustive()
    }
}

impl BurstDetector {
    /// A detector with the default configuration, alerting through `webhooks`.
    pub fn new(master: &MasterKey, webhooks: Arc<Webhooks>, metrics: Arc<Metrics>) -> Self {
        Self {
            config: BurstConfig::default(),
            ip_key: Arc::new(master.derive_subkey(BURST_KEY_PURPOSE)),
            webhooks,
            metrics,
        }
    }

    /// The same hashing key under another configuration, alerting through `webhooks`
    /// (configured from `config.webhooks`).
    pub fn reconfigured(
        &self,
        config: BurstConfig,
        webhooks: Arc<Webhooks>,
    ) -> Result<Self, BurstConfigError> {
        config.validate()?;
        Ok(Self { config, ip_key: Arc::clone(&self.ip_key), webhooks, metrics: Arc::clone(&self.metrics) })
    }

    pub fn config(&self) -> &BurstConfig {
        &self.config
    }

    fn hash(&self, ip: &str) -> String {
        account_key(self.ip_key.as_slice(), "burst-ip", ip)
    }

    /// Counts a report's requests, raises alerts and blocks; answers the reported
    /// addresses that are blocked.
    pub async fn report(
        &self,
        store: &dyn Store,
        report: &BurstReport,
        now_ms: u64,
    ) -> Result<BurstReply, BurstError> {
        let entries = merge(&report.entries)?;
        let window_ms = self.config.window_ms();
        let mut hashes = Vec::with_capacity(entries.len());
        for entry in &entries {
            let hash = self.hash(&entry.ip);
            if entry.count > 0 {
                let count = sliding_count(store, &hash, entry.count, window_ms, now_ms).await?;
                if count > self.config.threshold {
                    self.burst_detected(store, &hash, entry, count, now_ms).await?;
                }
            }
            hashes.push((entry, hash));
        }
        let mut reply = BurstReply::default();
        if self.config.block_secs.is_some() && !hashes.is_empty() {
            let blocked: HashMap<String, u64> = store
                .set_members(BLOCKED_SET, now_ms)
                .await?
                .into_iter()
                .map(|m| (m.member, m.expires_at_ms))
                .collect();
            for (entry, hash) in hashes {
                if let Some(until) = blocked.get(&hash) {
                    for ip in &entry.reported_as {
                        reply
                            .blocked
                            .push(BlockedIp { ip: ip.clone(), blocked_for_ms: until.saturating_sub(now_ms) });
                    }
                }
            }
        }
        Ok(reply)
    }

    async fn burst_detected(
        &self,
        store: &dyn Store,
        hash: &str,
        entry: &MergedEntry,
        count: u64,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        if let Some(block_secs) = self.config.block_secs {
            let until = now_ms.saturating_add(block_secs.saturating_mul(1000));
            if store.set_add(BLOCKED_SET, hash, until, now_ms).await? {
                self.metrics.record_burst_ip_blocked();
                tracing::warn!(ip = %entry.ip, block_secs, "blocked a bursting client address");
            }
        }
        let cooldown_ms = self.config.cooldown_secs.saturating_mul(1000).max(1);
        if store.incr_counter(&format!("burst-alert/{hash}"), 1, cooldown_ms, now_ms).await? != 1 {
            return Ok(());
        }
        tracing::warn!(
            ip = %entry.ip,
            count,
            window_secs = self.config.window_secs,
            threshold = self.config.threshold,
            "request burst from a client address"
        );
        if self.webhooks.config().urls.is_empty() {
            return Ok(());
        }
        let alert = BurstAlert {
            ip: entry.ip.clone(),
            count,
            window_seconds: self.config.window_secs,
            threshold: self.config.threshold,
            route: truncated(&entry.route),
            method: truncated(&entry.method),
            user_agent: truncated(&entry.user_agent),
            timestamp: rfc3339_utc(now_ms),
            timestamp_ms: now_ms,
        };
        let body = serde_json::to_vec(&alert)
            .map_err(|e| StoreError::InvalidArgument(format!("cannot encode a burst alert: {e}")))?;
        self.webhooks.enqueue("burst", &body, now_ms).await?;
        Ok(())
    }
}

/// The entries of a report by canonical address, counts summed, details of the last.
#[derive(Debug)]
struct MergedEntry {
    ip: String,
    /// The spellings the filter used, answered back when blocked.
    reported_as: Vec<String>,
    count: u64,
    route: String,
    method: String,
    user_agent: String,
}

fn merge(entries: &[BurstEntry]) -> Result<Vec<MergedEntry>, BurstError> {
    if entries.len() > MAX_BATCH {
        return Err(BurstError::InvalidRequest(format!("entries: at most {MAX_BATCH} per report")));
    }
    let mut merged: Vec<MergedEntry> = Vec::with_capacity(entries.len());
    let mut index: HashMap<String, usize> = HashMap::new();
    for (i, entry) in entries.iter().enumerate() {
        let ip: IpAddr = entry.ip.trim().parse().map_err(|_| {
            BurstError::InvalidRequest(format!("entries[{i}].ip: not an IPv4 or IPv6 address"))
        })?;
        let ip = ip.to_canonical().to_string();
        let count = entry.count.min(MAX_ENTRY_COUNT);
        match index.get(&ip).and_then(|&at| merged.get_mut(at)) {
            Some(m) => {
                m.count = m.count.saturating_add(count).min(MAX_ENTRY_COUNT);
                if !m.reported_as.contains(&entry.ip) {
                    m.reported_as.push(entry.ip.clone());
                }
                m.route.clone_from(&entry.route);
                m.method.clone_from(&entry.method);
                m.user_agent.clone_from(&entry.user_agent);
            }
            None => {
                index.insert(ip.clone(), merged.len());
                merged.push(MergedEntry {
                    ip,
                    reported_as: vec![entry.ip.clone()],
                    count,
                    route: entry.route.clone(),
                    method: entry.method.clone(),
                    user_agent: entry.user_agent.clone(),
                });
            }
        }
    }
    Ok(merged)
}

/// Adds `count` to the address' current fixed window and returns the sliding
/// estimate over the last `window_ms` (see the module docs).
async fn sliding_count(
    store: &dyn Store,
    hash: &str,
    count: u64,
    window_ms: u64,
    now_ms: u64,
) -> Result<u64, StoreError> {
    let n = now_ms / window_ms;
    let elapsed = now_ms % window_ms;
    // Until the end of the next window, while this one is the "previous".
    let ttl_ms = window_ms.saturating_mul(2).saturating_sub(elapsed);
    let delta = i64::try_from(count).unwrap_or(i64::MAX);
    let current = store.incr_counter(&format!("burst/{hash}/{n}"), delta, ttl_ms, now_ms).await?;
    let previous = match n.checked_sub(1) {
        Some(p) => store.get_counter(&format!("burst/{hash}/{p}"), now_ms).await?,
        None => 0,
    };
    Ok(estimate(current, previous, window_ms, elapsed))
}

/// `current + previous · (window − elapsed) / window`, rounded down.
fn estimate(current: i64, previous: i64, window_ms: u64, elapsed_ms: u64) -> u64 {
    let current = u128::try_from(current.max(0)).unwrap_or(0);
    let previous = u128::try_from(previous.max(0)).unwrap_or(0);
    let window = u128::from(window_ms.max(1));
    let remaining = window.saturating_sub(u128::from(elapsed_ms));
    let total = current + previous * remaining / window;
    u64::try_from(total).unwrap_or(u64::MAX)
}

fn truncated(text: &str) -> String {
    portcullis_core::codec::truncate(text, MAX_DETAIL_BYTES).to_owned()
}

/// Unix milliseconds as RFC 3339 in UTC with milliseconds (`1970-01-01T00:00:00.000Z`).
pub use crate::audit::time_text::format_rfc3339_ms as rfc3339_utc;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    #[test]
    fn timestamps_are_rfc_3339_utc() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_utc(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339_utc(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339_utc(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
    }

    #[test]
    fn the_estimate_weights_the_previous_window_by_its_overlap() {
        assert_eq!(estimate(10, 0, 10_000, 0), 10);
        assert_eq!(estimate(10, 40, 10_000, 0), 50, "the whole previous window still overlaps");
        assert_eq!(estimate(10, 40, 10_000, 2_500), 40);
        assert_eq!(estimate(10, 40, 10_000, 9_999), 10);
        assert_eq!(estimate(i64::MAX, i64::MAX, 1, 0), u64::MAX - 1);
        assert_eq!(estimate(-3, -1, 10, 5), 0);
    }

    #[test]
    fn configuration_needs_sane_periods_and_valid_webhooks() {
        assert!(BurstConfig::default().validate().is_ok());
        assert!(BurstConfig { threshold: 0, ..BurstConfig::default() }.validate().is_err());
        assert!(BurstConfig { block_secs: Some(0), ..BurstConfig::default() }.validate().is_err());
        assert!(BurstConfig { window_secs: 86_401, ..BurstConfig::default() }.validate().is_err());
        let url = crate::webhooks::parse_webhook_url("https://hooks.example/a").unwrap();
        let webhooks = WebhookConfig { urls: vec![url], ..WebhookConfig::default() };
        assert!(matches!(
            BurstConfig { webhooks, ..BurstConfig::default() }.validate(),
            Err(BurstConfigError::Webhook(WebhookConfigError::MissingSecret))
        ));
    }

    #[test]
    fn reports_merge_spellings_of_one_address_and_refuse_garbage() {
        let entry = |ip: &str, count| BurstEntry { ip: ip.into(), count, ..BurstEntry::default() };
        let merged =
            merge(&[entry("192.0.2.7", 3), entry("::ffff:192.0.2.7", 4), entry("2001:db8::1", 1)]).unwrap();
        assert_eq!(merged.len(), 2);
        assert_eq!((merged[0].ip.as_str(), merged[0].count), ("192.0.2.7", 7));
        assert_eq!(merged[0].reported_as, ["192.0.2.7", "::ffff:192.0.2.7"]);
        assert!(
            matches!(merge(&[entry("nope", 1)]), Err(BurstError::InvalidRequest(m)) if m.starts_with("entries[0].ip"))
        );
        assert!(merge(&vec![entry("192.0.2.1", 1); MAX_BATCH + 1]).is_err());
        assert_eq!(truncated(&"é".repeat(400)).len(), 512);
    }

    /// A detector alerting through webhooks whose delivery task is stopped, so what
    /// is queued stays in the outbox.
    async fn detector(store: Arc<dyn Store>, config: BurstConfig, metrics: Arc<Metrics>) -> BurstDetector {
        let master = MasterKey::from_bytes([1; 32]);
        let clock = Arc::new(crate::clock::FixedClock::new(0));
        let rng = Arc::new(crate::random::OsRandom);
        let webhooks = Webhooks::new(store, clock, rng, Arc::clone(&metrics), &master)
            .reconfigured(config.webhooks.clone())
            .unwrap();
        webhooks.stop().await;
        BurstDetector::new(&master, Arc::clone(&webhooks), metrics).reconfigured(config, webhooks).unwrap()
    }

    fn with_webhook(config: BurstConfig, outbox_capacity: usize) -> BurstConfig {
        let webhooks = WebhookConfig {
            urls: vec![crate::webhooks::parse_webhook_url("http://127.0.0.1:9/hook").unwrap()],
            secret: Some(crate::webhooks::WebhookSecret::new("0123456789abcdef").unwrap()),
            outbox_capacity,
            ..WebhookConfig::default()
        };
        BurstConfig { webhooks, ..config }
    }

    #[tokio::test]
    async fn a_full_outbox_drops_alerts_and_counts_them() {
        let metrics = Arc::new(Metrics::new());
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let config = with_webhook(BurstConfig { threshold: 1, ..BurstConfig::default() }, 1);
        let detector = detector(Arc::clone(&store), config, Arc::clone(&metrics)).await;
        let report = |ip: &str| BurstReport {
            entries: vec![BurstEntry { ip: ip.into(), count: 5, ..BurstEntry::default() }],
        };
        detector.report(store.as_ref(), &report("192.0.2.1"), 1_000).await.unwrap();
        detector.report(store.as_ref(), &report("192.0.2.2"), 1_000).await.unwrap();
        let text = metrics.render().unwrap();
        assert!(text.contains(r#"portcullis_burst_alerts_total{result="dropped"} 1"#), "{text}");
        let pending =
            store.queue_list(crate::webhooks::OUTBOX, crate::store::QueueLane::Pending, 10).await.unwrap();
        assert_eq!(pending.len(), 1);
    }

    #[tokio::test]
    async fn nothing_about_the_address_is_stored_in_clear() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let config =
            with_webhook(BurstConfig { threshold: 1, block_secs: Some(60), ..BurstConfig::default() }, 10);
        let detector = detector(Arc::clone(&store), config, Arc::new(Metrics::new())).await;
        let report = BurstReport {
            entries: vec![BurstEntry { ip: "192.0.2.77".into(), count: 5, ..BurstEntry::default() }],
        };
        let reply = detector.report(store.as_ref(), &report, 1_000).await.unwrap();
        assert_eq!(reply.blocked, [BlockedIp { ip: "192.0.2.77".into(), blocked_for_ms: 60_000 }]);
        let members = store.set_members(BLOCKED_SET, 1_000).await.unwrap();
        assert_eq!(members.len(), 1);
        assert_eq!(members[0].member, detector.hash("192.0.2.77"));
        assert!(!members[0].member.contains("192.0.2.77"));
        // The queued alert is sealed: neither the address nor the webhook's path is in it.
        let pending =
            store.queue_list(crate::webhooks::OUTBOX, crate::store::QueueLane::Pending, 10).await.unwrap();
        assert_eq!(pending.len(), 1);
        let stored = String::from_utf8_lossy(&pending[0].data);
        assert!(!stored.contains("192.0.2.77") && !stored.contains("/hook"), "{stored}");
    }
}
