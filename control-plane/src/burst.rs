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
//! **Delivery** runs on a background task fed by a bounded queue
//! ([`ALERT_QUEUE_CAPACITY`]): a report never waits for a webhook. A full queue drops
//! the alert (`portcullis_burst_alerts_total{result="dropped"}`); each delivery that
//! fails (connection, TLS, timeout after [`WEBHOOK_TIMEOUT`], non-2xx) is logged with
//! its cause (an untrusted certificate, say) but without the secret or the URL's path,
//! and counted as `failed`. `https://` webhooks are verified against the built-in
//! roots plus `--webhook-ca-file` (`crate::tls`). Webhooks get one attempt each, in order.
//!
//! **Signature**: header [`SIGNATURE_HEADER`] `t=<unix secs>,v1=<hex HMAC-SHA256(secret,
//! "<t>." + body)>`; receivers check it with [`verify_signature`] (or its description
//! in `docs/control-plane.md`) and refuse stale `t`s to stop replays.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use portcullis_core::lockout::account_key;
use portcullis_core::wire::{BlockedIp, BurstEntry, BurstReply, BurstReport, MAX_BATCH};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq as _;
use tokio::sync::mpsc;
use zeroize::Zeroizing;

use crate::clock::Clock;
use crate::master_key::{hex, hmac_sha256, MasterKey};
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};
use crate::tls::{error_chain, CaBundle};

/// Purpose string of the subkey that keys address hashes.
pub const BURST_KEY_PURPOSE: &str = "portcullis burst v1";
/// Set of blocked address hashes.
pub const BLOCKED_SET: &str = "burst-blocked";
/// The webhook signature header.
pub const SIGNATURE_HEADER: &str = "Portcullis-Signature";
/// Alerts waiting for delivery; more are dropped.
pub const ALERT_QUEUE_CAPACITY: usize = 1024;
/// One webhook call, connection included.
pub const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);
/// Shortest webhook secret accepted (bytes).
pub const MIN_WEBHOOK_SECRET_BYTES: usize = 16;
/// `route`, `method` and `userAgent` are cut to this many bytes in alerts.
const MAX_DETAIL_BYTES: usize = 512;
/// Most requests one entry may report (a larger count counts as this).
const MAX_ENTRY_COUNT: u64 = 1 << 32;
/// Longest window, cooldown or block: 1 day.
const MAX_PERIOD_SECS: u64 = 86_400;

/// A webhook signing secret; never printed.
#[derive(Clone)]
pub struct WebhookSecret(Arc<Zeroizing<String>>);

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(..)")
    }
}

impl WebhookSecret {
    /// Surrounding whitespace is ignored; at least [`MIN_WEBHOOK_SECRET_BYTES`] bytes.
    pub fn new(text: &str) -> Result<Self, BurstConfigError> {
        let secret = text.trim();
        if secret.len() < MIN_WEBHOOK_SECRET_BYTES {
            return Err(BurstConfigError::ShortSecret);
        }
        Ok(Self(Arc::new(Zeroizing::new(secret.to_owned()))))
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

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
    /// Alerts are posted to each of these.
    pub webhook_urls: Vec<reqwest::Url>,
    /// Signs the alerts; required when there are webhooks.
    pub webhook_secret: Option<WebhookSecret>,
    /// More CAs trusted for `https://` webhooks, besides the built-in roots.
    pub webhook_ca: Option<CaBundle>,
}

impl Default for BurstConfig {
    /// 50 requests per 10 s, one alert per minute, no webhook, no blocking.
    fn default() -> Self {
        Self {
            threshold: 50,
            window_secs: 10,
            cooldown_secs: 60,
            block_secs: None,
            webhook_urls: Vec::new(),
            webhook_secret: None,
            webhook_ca: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BurstConfigError {
    #[error(
        "--burst-webhook-url needs a signing secret: set --burst-webhook-secret-file \
         (PORTCULLIS_BURST_WEBHOOK_SECRET_FILE) or --burst-webhook-secret (PORTCULLIS_BURST_WEBHOOK_SECRET)"
    )]
    MissingSecret,
    #[error("the burst webhook secret must be at least {MIN_WEBHOOK_SECRET_BYTES} bytes")]
    ShortSecret,
    #[error("cannot read the burst webhook secret file {path}: {source}")]
    UnreadableSecret { path: std::path::PathBuf, source: std::io::Error },
    #[error("--burst-webhook-url {0:?}: must be an absolute http:// or https:// URL")]
    BadUrl(String),
    #[error("{0}")]
    Invalid(String),
    #[error("burst alerts need a Tokio runtime to deliver webhooks")]
    NoRuntime,
    #[error("cannot build the webhook HTTP client: {0}")]
    Client(String),
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
        for url in &self.webhook_urls {
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                return Err(BurstConfigError::BadUrl(redacted(url)));
            }
        }
        if !self.webhook_urls.is_empty() && self.webhook_secret.is_none() {
            return Err(BurstConfigError::MissingSecret);
        }
        Ok(())
    }

    fn window_ms(&self) -> u64 {
        self.window_secs.saturating_mul(1000).max(1)
    }
}

/// Parses a webhook URL (for the command line).
pub fn parse_webhook_url(text: &str) -> Result<reqwest::Url, String> {
    reqwest::Url::parse(text.trim()).map_err(|e| format!("not a URL: {e}"))
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

/// Detects bursts in reports and hands alerts to the delivery task.
pub struct BurstDetector {
    config: BurstConfig,
    ip_key: Arc<Zeroizing<[u8; 32]>>,
    alerts: Option<mpsc::Sender<BurstAlert>>,
    metrics: Arc<Metrics>,
}

impl fmt::Debug for BurstDetector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BurstDetector").field("config", &self.config).finish_non_exhaustive()
    }
}

impl BurstDetector {
    /// A detector with the default configuration and no webhooks (bursts are only
    /// logged); [`Self::reconfigured`] changes that.
    pub fn new(master: &MasterKey, metrics: Arc<Metrics>) -> Self {
        Self {
            config: BurstConfig::default(),
            ip_key: Arc::new(master.derive_subkey(BURST_KEY_PURPOSE)),
            alerts: None,
            metrics,
        }
    }

    /// The same hashing key under another configuration; starts the delivery task
    /// when there are webhooks (so it must be called within a Tokio runtime).
    pub fn reconfigured(&self, config: BurstConfig, clock: Arc<dyn Clock>) -> Result<Self, BurstConfigError> {
        config.validate()?;
        let alerts = match config.webhook_secret.clone() {
            Some(secret) if !config.webhook_urls.is_empty() => {
                let runtime =
                    tokio::runtime::Handle::try_current().map_err(|_| BurstConfigError::NoRuntime)?;
                let http = crate::tls::http_client_builder(config.webhook_ca.as_ref())
                    .map_err(|e| BurstConfigError::Client(e.to_string()))?
                    .timeout(WEBHOOK_TIMEOUT)
                    .connect_timeout(WEBHOOK_TIMEOUT)
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .map_err(|e| BurstConfigError::Client(error_chain(&e)))?;
                let sender = WebhookSender {
                    http,
                    urls: config.webhook_urls.clone(),
                    secret,
                    clock,
                    metrics: Arc::clone(&self.metrics),
                };
                let (tx, rx) = mpsc::channel(ALERT_QUEUE_CAPACITY);
                runtime.spawn(sender.run(rx));
                Some(tx)
            }
            _ => None,
        };
        Ok(Self { config, ip_key: Arc::clone(&self.ip_key), alerts, metrics: Arc::clone(&self.metrics) })
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
        let Some(alerts) = &self.alerts else {
            return Ok(());
        };
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
        if alerts.try_send(alert).is_err() {
            self.metrics.record_burst_alert("dropped");
            tracing::warn!("burst alert queue full (or delivery stopped); alert dropped");
        }
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
    let mut end = text.len().min(MAX_DETAIL_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.get(..end).unwrap_or_default().to_owned()
}

/// Unix milliseconds as RFC 3339 in UTC with milliseconds (`1970-01-01T00:00:00.000Z`).
pub fn rfc3339_utc(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (days, of_day) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days, for days since 1970-01-01 (never negative here).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60,
        unix_ms % 1000
    )
}

/// The [`SIGNATURE_HEADER`] value for `body` sent at `t` (Unix seconds).
pub fn sign(secret: &[u8], t: u64, body: &[u8]) -> String {
    let t = t.to_string();
    format!("t={t},v1={}", hex(&hmac_sha256(secret, &[t.as_bytes(), b".", body])))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("malformed signature header")]
    Malformed,
    #[error("signature timestamp outside the tolerance (replay or clock skew)")]
    Stale,
    #[error("no signature matches")]
    Mismatch,
}

/// What a webhook receiver does: parse `t` and every `v1`, refuse a `t` more than
/// `tolerance_secs` away from `now_secs` (replays), recompute the HMAC over
/// `"<t>." + body` and compare in constant time.
pub fn verify_signature(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now_secs: u64,
    tolerance_secs: u64,
) -> Result<(), SignatureError> {
    let mut t = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = Some(v.parse::<u64>().map_err(|_| SignatureError::Malformed)?),
            Some(("v1", v)) => candidates.push(v),
            _ => {}
        }
    }
    let t = t.ok_or(SignatureError::Malformed)?;
    if candidates.is_empty() {
        return Err(SignatureError::Malformed);
    }
    if t.abs_diff(now_secs) > tolerance_secs {
        return Err(SignatureError::Stale);
    }
    let expected = hex(&hmac_sha256(secret, &[t.to_string().as_bytes(), b".", body]));
    let matches = candidates.iter().any(|c| bool::from(c.as_bytes().ct_eq(expected.as_bytes())));
    if matches {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// Scheme, host and port only: webhook paths and queries often carry credentials.
fn redacted(url: &reqwest::Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(host), Some(port)) => format!("{}://{host}:{port}", url.scheme()),
        (Some(host), None) => format!("{}://{host}", url.scheme()),
        _ => format!("{}://?", url.scheme()),
    }
}

struct WebhookSender {
    http: reqwest::Client,
    urls: Vec<reqwest::Url>,
    secret: WebhookSecret,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
}

impl WebhookSender {
    /// Delivers alerts until every sender is gone (the app state dropped).
    async fn run(self, mut alerts: mpsc::Receiver<BurstAlert>) {
        while let Some(alert) = alerts.recv().await {
            let body = match serde_json::to_vec(&alert) {
                Ok(body) => body,
                Err(error) => {
                    tracing::error!(%error, "cannot encode a burst alert");
                    continue;
                }
            };
            for url in &self.urls {
                self.deliver(url, &body).await;
            }
        }
    }

    async fn deliver(&self, url: &reqwest::Url, body: &[u8]) {
        let t = self.clock.now_ms() / 1000;
        let signature = sign(self.secret.as_bytes(), t, body);
        let sent = self
            .http
            .post(url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signature)
            .body(body.to_vec())
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => self.metrics.record_burst_alert("sent"),
            Ok(response) => {
                self.metrics.record_burst_alert("failed");
                tracing::warn!(webhook = %redacted(url), status = response.status().as_u16(), "burst alert webhook refused the alert");
            }
            Err(error) => {
                self.metrics.record_burst_alert("failed");
                let reason = if error.is_timeout() {
                    "timeout"
                } else if crate::tls::rustls_error(&error).is_some() {
                    "tls"
                } else {
                    "connection"
                };
                // The chain: reqwest's own message hides the cause (e.g. an untrusted
                // certificate), which is what the operator needs to see.
                let error = error_chain(&error.without_url());
                tracing::warn!(webhook = %redacted(url), reason, %error, "burst alert webhook failed");
            }
        }
    }
}

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
    fn signatures_verify_and_reject_tampering_and_replays() {
        let body = br#"{"ip":"192.0.2.7"}"#;
        let header = sign(b"0123456789abcdef", 1_700_000_000, body);
        assert!(header.starts_with("t=1700000000,v1="));
        assert_eq!(verify_signature(b"0123456789abcdef", &header, body, 1_700_000_100, 300), Ok(()));
        assert_eq!(
            verify_signature(b"0123456789abcdef", &header, b"{}", 1_700_000_000, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(b"another-secret-xx", &header, body, 1_700_000_000, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(b"0123456789abcdef", &header, body, 1_700_000_301, 300),
            Err(SignatureError::Stale)
        );
        assert_eq!(verify_signature(b"k", "v1=00", body, 0, 300), Err(SignatureError::Malformed));
    }

    #[test]
    fn configuration_needs_a_secret_with_webhooks_and_sane_periods() {
        assert!(BurstConfig::default().validate().is_ok());
        let url = parse_webhook_url("https://hooks.example/T0/secret-path?token=x").unwrap();
        let no_secret = BurstConfig { webhook_urls: vec![url.clone()], ..BurstConfig::default() };
        assert!(matches!(no_secret.validate(), Err(BurstConfigError::MissingSecret)));
        assert!(matches!(WebhookSecret::new("short"), Err(BurstConfigError::ShortSecret)));
        let ok = BurstConfig {
            webhook_secret: Some(WebhookSecret::new("0123456789abcdef").unwrap()),
            ..no_secret
        };
        assert!(ok.validate().is_ok());
        assert!(BurstConfig { threshold: 0, ..BurstConfig::default() }.validate().is_err());
        assert!(BurstConfig { block_secs: Some(0), ..BurstConfig::default() }.validate().is_err());
        let ftp = BurstConfig { webhook_urls: vec![parse_webhook_url("ftp://x.example/").unwrap()], ..ok };
        assert!(matches!(ftp.validate(), Err(BurstConfigError::BadUrl(_))));
        assert_eq!(redacted(&url), "https://hooks.example");
        assert_eq!(format!("{:?}", WebhookSecret::new("0123456789abcdef").unwrap()), "WebhookSecret(..)");
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

    #[tokio::test]
    async fn a_full_queue_drops_alerts_and_counts_them() {
        let metrics = Arc::new(Metrics::new());
        let config = BurstConfig { threshold: 1, ..BurstConfig::default() };
        let mut detector = BurstDetector::new(&MasterKey::from_bytes([1; 32]), Arc::clone(&metrics))
            .reconfigured(config, Arc::new(crate::clock::FixedClock::new(0)))
            .unwrap();
        // A queue of one that nobody drains.
        let (tx, _rx) = mpsc::channel(1);
        detector.alerts = Some(tx);
        let store = MemoryStore::new();
        let report = |ip: &str| BurstReport {
            entries: vec![BurstEntry { ip: ip.into(), count: 5, ..BurstEntry::default() }],
        };
        detector.report(&store, &report("192.0.2.1"), 1_000).await.unwrap();
        detector.report(&store, &report("192.0.2.2"), 1_000).await.unwrap();
        let text = metrics.render().unwrap();
        assert!(text.contains(r#"portcullis_burst_alerts_total{result="dropped"} 1"#), "{text}");
    }

    #[tokio::test]
    async fn nothing_about_the_address_is_stored_in_clear() {
        let detector = BurstDetector::new(&MasterKey::from_bytes([1; 32]), Arc::new(Metrics::new()))
            .reconfigured(
                BurstConfig { threshold: 1, block_secs: Some(60), ..BurstConfig::default() },
                Arc::new(crate::clock::FixedClock::new(0)),
            )
            .unwrap();
        let store = MemoryStore::new();
        let report = BurstReport {
            entries: vec![BurstEntry { ip: "192.0.2.77".into(), count: 5, ..BurstEntry::default() }],
        };
        let reply = detector.report(&store, &report, 1_000).await.unwrap();
        assert_eq!(reply.blocked, [BlockedIp { ip: "192.0.2.77".into(), blocked_for_ms: 60_000 }]);
        let members = store.set_members(BLOCKED_SET, 1_000).await.unwrap();
        assert_eq!(members.len(), 1);
        assert_eq!(members[0].member, detector.hash("192.0.2.77"));
        assert!(!members[0].member.contains("192.0.2.77"));
    }
}
