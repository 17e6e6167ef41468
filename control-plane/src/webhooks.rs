//! Webhook delivery: a durable outbox in the store, retries with exponential backoff and
//! jitter until a 2xx or a deadline, dead letters an operator can read, retry or purge,
//! and signatures with the current and (during a rotation window) the previous secret.
//!
//! **The outbox** is the store's work queue [`OUTBOX`] (`Store::queue_*`): one entry per
//! alert and webhook, pushed by whichever replica raised the alert, bounded by
//! [`WebhookConfig::outbox_capacity`] (a full outbox drops the alert and counts it).
//! Entries hold the alert sealed (ChaCha20-Poly1305 under a subkey of the master key,
//! the entry id as associated data: client addresses never reach the store in clear)
//! and the SHA-256 of the webhook URL (URLs often carry credentials in their path or
//! query, so they never reach the store either; the URL is looked up in the current
//! configuration when the entry is delivered).
//!
//! **Delivery** is a background task on every replica: it claims due entries (a claim
//! is a lease of [`CLAIM_LEASE_MS`], longer than a whole attempt), posts each with a
//! [`WEBHOOK_TIMEOUT`], and settles it: done on a 2xx; otherwise due again after an
//! exponential backoff with jitter ([`backoff_ms`], randomness injected), or a dead
//! letter once the next attempt would be past the entry's deadline (or the webhook is
//! no longer configured, or the entry cannot be decrypted). The outbox survives a
//! restart: a replica that starts (again) delivers what is due. `https://` webhooks are
//! verified against the built-in roots plus `--webhook-ca-file` (`crate::tls`); a
//! failed attempt is logged with its class (`reason`: `tls`, `timeout`, …) and cause
//! (an untrusted certificate, say), never with the webhook's path or the secret.
//!
//! **Guarantee: at-least-once.** An entry leaves the outbox only after a 2xx for it. A
//! replica that dies after the receiver answered but before it settled the entry gets
//! the entry delivered again once its lease ends, so a receiver may see an alert twice;
//! every attempt carries the same [`DELIVERY_ID_HEADER`], by which it can drop
//! duplicates. (Without such a crash, one alert is delivered once: claims are atomic,
//! and a late settle after a lost lease is refused.)
//!
//! **Signature**: [`SIGNATURE_HEADER`] `t=<unix secs>,v1=<hex HMAC-SHA256(secret,
//! "<t>." + body)>`, with a second `v1=` for the previous secret until its rotation
//! window closes; receivers accept any `v1` that matches ([`verify_signature`]).

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use portcullis_core::codec::{hex, hmac_sha256, truncate};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq as _;
use tokio::sync::Notify;
use zeroize::Zeroizing;

use crate::clock::Clock;
use crate::master_key::{MasterKey, Sealed};
use crate::metrics::Metrics;
use crate::random::RandomSource;
use crate::store::{QueueEntry, QueueLane, QueueOutcome, QueueRevive, Store, StoreError, MAX_PAGE_SIZE};
use crate::tls::{error_chain, CaBundle};

/// The store work queue holding deliveries.
pub const OUTBOX: &str = "webhooks";
/// The webhook signature header.
pub const SIGNATURE_HEADER: &str = "Portcullis-Signature";
/// The same on every attempt of one delivery: receivers drop duplicates by it.
pub const DELIVERY_ID_HEADER: &str = "Portcullis-Delivery-Id";
/// One attempt, connection included.
pub const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);
/// A claim lasts this long: longer than an attempt, so a live claimer always settles
/// in time, and short enough that a dead claimer's entries are retried soon.
pub const CLAIM_LEASE_MS: u64 = 30_000;
/// Deliveries claimed (and attempted concurrently) per round.
pub const CLAIM_BATCH: usize = 32;
/// Dead letters kept; beyond, the oldest are dropped (and counted).
pub const DEAD_LETTER_CAPACITY: usize = MAX_PAGE_SIZE;
/// Default bound of the outbox (pending deliveries).
pub const DEFAULT_OUTBOX_CAPACITY: usize = 10_000;
/// Default time a delivery is retried for.
pub const DEFAULT_DEADLINE_SECS: u64 = 3_600;
/// The first retry waits about this long; each further one twice as long ...
pub const BACKOFF_BASE_MS: u64 = 1_000;
/// ... up to this.
pub const BACKOFF_MAX_MS: u64 = 300_000;
/// Shortest webhook secret accepted (bytes).
pub const MIN_WEBHOOK_SECRET_BYTES: usize = 16;
/// Purpose of the master key's subkey that seals outbox entries.
const SEAL_PURPOSE: &str = "portcullis webhook outbox v1";
/// Longest error text kept with a delivery.
const MAX_ERROR_BYTES: usize = 256;

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
    pub fn new(text: &str) -> Result<Self, WebhookConfigError> {
        let secret = text.trim();
        if secret.len() < MIN_WEBHOOK_SECRET_BYTES {
            return Err(WebhookConfigError::ShortSecret);
        }
        Ok(Self(Arc::new(Zeroizing::new(secret.to_owned()))))
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// The secret being replaced, and when receivers stop getting signatures with it.
#[derive(Debug, Clone)]
pub struct PreviousSecret {
    pub secret: WebhookSecret,
    /// Unix milliseconds: from then on only the current secret signs.
    pub until_ms: u64,
}

/// Where alerts go and how hard delivery tries.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub urls: Vec<reqwest::Url>,
    /// Signs every delivery; required when there are URLs.
    pub secret: Option<WebhookSecret>,
    /// Signs too, until its window closes (a secret rotation).
    pub previous_secret: Option<PreviousSecret>,
    /// A delivery not accepted within this long becomes a dead letter.
    pub deadline_secs: u64,
    /// Most pending deliveries; a full outbox drops new alerts.
    pub outbox_capacity: usize,
    /// How often the delivery task looks for due entries (besides being woken when
    /// this replica queues one).
    pub poll_interval: Duration,
    /// More CAs trusted for `https://` webhooks, besides the built-in roots.
    pub ca: Option<CaBundle>,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            secret: None,
            previous_secret: None,
            deadline_secs: DEFAULT_DEADLINE_SECS,
            outbox_capacity: DEFAULT_OUTBOX_CAPACITY,
            poll_interval: Duration::from_secs(1),
            ca: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookConfigError {
    #[error(
        "--burst-webhook-url needs a signing secret: set --burst-webhook-secret-file \
         (PORTCULLIS_BURST_WEBHOOK_SECRET_FILE) or --burst-webhook-secret (PORTCULLIS_BURST_WEBHOOK_SECRET)"
    )]
    MissingSecret,
    #[error("the burst webhook secret must be at least {MIN_WEBHOOK_SECRET_BYTES} bytes")]
    ShortSecret,
    #[error("cannot read the burst webhook secret file {path}: {source}")]
    UnreadableSecret { path: std::path::PathBuf, source: std::io::Error },
    #[error(
        "--burst-webhook-previous-secret needs --burst-webhook-previous-secret-until \
         (PORTCULLIS_BURST_WEBHOOK_PREVIOUS_SECRET_UNTIL), the Unix time its rotation window closes; \
         and the window needs the previous secret"
    )]
    PreviousSecretWindow,
    #[error("--burst-webhook-url {0:?}: must be an absolute http:// or https:// URL")]
    BadUrl(String),
    #[error("{0}")]
    Invalid(String),
    #[error("webhooks need a Tokio runtime to deliver")]
    NoRuntime,
    #[error("cannot build the webhook HTTP client: {0}")]
    Client(String),
}

impl WebhookConfig {
    pub fn validate(&self) -> Result<(), WebhookConfigError> {
        for url in &self.urls {
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                return Err(WebhookConfigError::BadUrl(redacted(url)));
            }
        }
        if !self.urls.is_empty() && self.secret.is_none() {
            return Err(WebhookConfigError::MissingSecret);
        }
        if !(1..=30 * 86_400).contains(&self.deadline_secs) {
            return Err(WebhookConfigError::Invalid(
                "--burst-webhook-deadline must be 1 s to 30 days".into(),
            ));
        }
        if self.outbox_capacity == 0 {
            return Err(WebhookConfigError::Invalid("--burst-webhook-outbox must be at least 1".into()));
        }
        Ok(())
    }

    /// The secrets that sign at `now_ms`: the current one, then the previous one while
    /// its window is open.
    fn signing_secrets(&self, now_ms: u64) -> Vec<&WebhookSecret> {
        let previous = self.previous_secret.as_ref().filter(|p| now_ms < p.until_ms).map(|p| &p.secret);
        self.secret.iter().chain(previous).collect()
    }
}

/// Parses a webhook URL (for the command line).
pub fn parse_webhook_url(text: &str) -> Result<reqwest::Url, String> {
    reqwest::Url::parse(text.trim()).map_err(|e| format!("not a URL: {e}"))
}

/// Scheme, host and port only: webhook paths and queries often carry credentials.
pub fn redacted(url: &reqwest::Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(host), Some(port)) => format!("{}://{host}:{port}", url.scheme()),
        (Some(host), None) => format!("{}://{host}", url.scheme()),
        _ => format!("{}://?", url.scheme()),
    }
}

fn url_hash(url: &reqwest::Url) -> String {
    hex(&Sha256::digest(url.as_str().as_bytes()))
}

/// The [`SIGNATURE_HEADER`] value for `body` sent at `t` (Unix seconds): one `v1` per
/// secret, in order.
pub fn sign(secrets: &[&[u8]], t: u64, body: &[u8]) -> String {
    let t = t.to_string();
    let mut header = format!("t={t}");
    for secret in secrets {
        header.push_str(",v1=");
        header.push_str(&hex(&hmac_sha256(secret, &[t.as_bytes(), b".", body])));
    }
    header
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
/// `"<t>." + body` and compare in constant time with each `v1`.
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

/// The wait before retry number `attempts` (1 after the first failure): "equal
/// jitter", uniformly between half and all of `min(BACKOFF_BASE_MS · 2^(attempts−1),
/// BACKOFF_MAX_MS)`, so replicas retrying together spread out. Without randomness the
/// whole ceiling.
pub fn backoff_ms(attempts: u32, rng: &dyn RandomSource) -> u64 {
    let shift = attempts.saturating_sub(1).min(32);
    let ceiling = BACKOFF_BASE_MS.saturating_mul(1u64 << shift).min(BACKOFF_MAX_MS);
    let half = ceiling / 2;
    let mut bytes = [0u8; 8];
    match rng.fill(&mut bytes) {
        Ok(()) => half + u64::from_be_bytes(bytes) % (ceiling - half + 1),
        Err(_) => ceiling,
    }
}

/// One delivery as stored in the outbox (JSON). Holds no URL and no plaintext alert.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Delivery {
    /// What is delivered (`burst`).
    kind: String,
    /// SHA-256 (hex) of the webhook URL.
    webhook: String,
    /// The webhook's scheme, host and port, for listings.
    target: String,
    nonce: String,
    sealed_body: String,
    created_at_ms: u64,
    deadline_ms: u64,
    attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_attempt_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_error: Option<String>,
}

/// A dead letter as the admin API shows it. Times are Unix seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    pub id: String,
    pub kind: String,
    /// The webhook's scheme, host and port.
    pub webhook: String,
    pub created_at: u64,
    /// When delivery was given up.
    pub failed_at: u64,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The undelivered payload (absent when it cannot be decrypted any more).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<serde_json::Value>,
}

/// `GET /admin/v1/webhooks/dead-letters`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterList {
    pub dead_letters: Vec<DeadLetter>,
}

/// What a retry or purge did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetterAction {
    /// Dead letters retried (pending again) or purged.
    pub ids: Vec<String>,
    /// Dead letters left as they were because the outbox is full (retries only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("there is no dead letter {0:?}")]
    NoSuchDeadLetter(String),
    #[error("the outbox is full ({0} pending deliveries); retry later")]
    OutboxFull(usize),
}

/// How one attempt failed.
struct Failure {
    /// A short class for logs and alerts: `status`, `timeout`, `tls`, `connection`,
    /// `unconfigured`, `undecryptable`.
    kind: &'static str,
    /// What happened, kept with the delivery (never the webhook's path or the secret).
    reason: String,
    /// Retrying cannot help (no such webhook configured, undecryptable entry).
    permanent: bool,
}

impl Failure {
    fn retry(kind: &'static str, reason: impl Into<String>) -> Self {
        Self { kind, reason: reason.into(), permanent: false }
    }

    fn permanent(kind: &'static str, reason: impl Into<String>) -> Self {
        Self { kind, reason: reason.into(), permanent: true }
    }
}

/// The outbox, its delivery task and its dead letters.
pub struct Webhooks {
    config: WebhookConfig,
    http: reqwest::Client,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    rng: Arc<dyn RandomSource>,
    metrics: Arc<Metrics>,
    sealer: Arc<MasterKey>,
    wake: Notify,
    stopping: AtomicBool,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhooks").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Webhooks {
    /// No webhooks yet (dead letters can still be listed); [`Self::reconfigured`] sets
    /// them up.
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        rng: Arc<dyn RandomSource>,
        metrics: Arc<Metrics>,
        master: &MasterKey,
    ) -> Self {
        let sealer = Arc::new(MasterKey::from_bytes(*master.derive_subkey(SEAL_PURPOSE)));
        Self::with(WebhookConfig::default(), reqwest::Client::new(), store, clock, rng, metrics, sealer)
    }

    fn with(
        config: WebhookConfig,
        http: reqwest::Client,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        rng: Arc<dyn RandomSource>,
        metrics: Arc<Metrics>,
        sealer: Arc<MasterKey>,
    ) -> Self {
        Self {
            config,
            http,
            store,
            clock,
            rng,
            metrics,
            sealer,
            wake: Notify::new(),
            stopping: AtomicBool::new(false),
            task: Mutex::new(None),
        }
    }

    /// The same outbox under another configuration. With URLs, the delivery task is
    /// started (so call it within a Tokio runtime); stop the old one first.
    pub fn reconfigured(&self, config: WebhookConfig) -> Result<Arc<Self>, WebhookConfigError> {
        config.validate()?;
        let http = crate::tls::http_client_builder(config.ca.as_ref())
            .map_err(|e| WebhookConfigError::Client(e.to_string()))?
            .timeout(WEBHOOK_TIMEOUT)
            .connect_timeout(WEBHOOK_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| WebhookConfigError::Client(error_chain(&e)))?;
        let deliver = !config.urls.is_empty();
        let webhooks = Arc::new(Self::with(
            config,
            http,
            Arc::clone(&self.store),
            Arc::clone(&self.clock),
            Arc::clone(&self.rng),
            Arc::clone(&self.metrics),
            Arc::clone(&self.sealer),
        ));
        if deliver {
            let runtime = tokio::runtime::Handle::try_current().map_err(|_| WebhookConfigError::NoRuntime)?;
            let task = runtime.spawn(deliver_until_stopped(Arc::downgrade(&webhooks)));
            if let Ok(mut slot) = webhooks.task.lock() {
                *slot = Some(task);
            }
        }
        Ok(webhooks)
    }

    pub fn config(&self) -> &WebhookConfig {
        &self.config
    }

    /// Stops the delivery task after the round in progress (attempts under way finish);
    /// entries not settled stay in the outbox for the next start.
    pub async fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.wake.notify_one();
        let task = self.task.lock().ok().and_then(|mut slot| slot.take());
        if let Some(task) = task {
            let _ = task.await;
        }
    }

    /// Queues `body` for every webhook; never waits for one. Returns how many were
    /// queued (fewer when the outbox is full: those are dropped and counted).
    pub async fn enqueue(&self, kind: &str, body: &[u8], now_ms: u64) -> Result<usize, StoreError> {
        let mut queued = 0;
        for url in &self.config.urls {
            let mut id = [0u8; 16];
            let sealed = self.rng.fill(&mut id).and_then(|()| {
                let id = URL_SAFE_NO_PAD.encode(id);
                let sealed = self.sealer.seal(body, id.as_bytes(), self.rng.as_ref())?;
                Ok((id, sealed))
            });
            let (id, sealed) = sealed.map_err(|e| StoreError::InvalidArgument(e.to_string()))?;
            let delivery = Delivery {
                kind: kind.to_owned(),
                webhook: url_hash(url),
                target: redacted(url),
                nonce: sealed.nonce_base64(),
                sealed_body: sealed.ciphertext_base64(),
                created_at_ms: now_ms,
                deadline_ms: now_ms.saturating_add(self.config.deadline_secs.saturating_mul(1000)),
                attempts: 0,
                last_attempt_at_ms: None,
                last_error: None,
            };
            if self
                .store
                .queue_push(OUTBOX, &id, encode(&delivery)?, now_ms, self.config.outbox_capacity)
                .await?
            {
                queued += 1;
            } else {
                self.metrics.record_burst_alert("dropped");
                tracing::warn!(webhook = %delivery.target, capacity = self.config.outbox_capacity, "webhook outbox full; alert dropped");
            }
        }
        if queued > 0 {
            self.wake.notify_one();
        }
        Ok(queued)
    }

    /// Claims the due deliveries and attempts them concurrently; returns how many were
    /// attempted.
    pub async fn deliver_due(self: &Arc<Self>) -> Result<usize, StoreError> {
        let now_ms = self.clock.now_ms();
        let claimed = self.store.queue_claim(OUTBOX, now_ms, CLAIM_LEASE_MS, CLAIM_BATCH).await?;
        let count = claimed.len();
        let mut attempts = tokio::task::JoinSet::new();
        for entry in claimed {
            let webhooks = Arc::clone(self);
            attempts.spawn(async move { webhooks.attempt(entry).await });
        }
        while let Some(done) = attempts.join_next().await {
            match done {
                Ok(Err(error)) => {
                    tracing::warn!(%error, "cannot settle a webhook delivery; it is retried after its lease")
                }
                Err(error) => tracing::error!(%error, "a webhook delivery task failed"),
                Ok(Ok(())) => {}
            }
        }
        Ok(count)
    }

    async fn attempt(&self, entry: QueueEntry) -> Result<(), StoreError> {
        let Ok(mut delivery) = serde_json::from_slice::<Delivery>(&entry.data) else {
            tracing::error!(id = %entry.id, "unreadable webhook delivery; moved to the dead letters");
            let now_ms = self.clock.now_ms();
            self.bury(&entry.id, entry.at_ms, entry.data.clone(), now_ms).await?;
            self.metrics.record_burst_alert("dead_lettered");
            return Ok(());
        };
        let outcome = match self.config.urls.iter().find(|u| url_hash(u) == delivery.webhook) {
            None => Err(Failure::permanent("unconfigured", "the webhook is no longer configured")),
            Some(url) => match self.open(&entry.id, &delivery) {
                None => Err(Failure::permanent(
                    "undecryptable",
                    "cannot decrypt the alert (was the master key replaced?)",
                )),
                Some(body) => self.post(url, &entry.id, &body).await,
            },
        };
        let now_ms = self.clock.now_ms();
        // Metrics after the settle: a counted attempt is one whose outcome is stored.
        let (settled, result) = match outcome {
            Ok(()) => {
                (self.store.queue_settle(OUTBOX, &entry.id, entry.at_ms, QueueOutcome::Done).await?, "sent")
            }
            Err(failure) => {
                delivery.attempts = delivery.attempts.saturating_add(1);
                delivery.last_attempt_at_ms = Some(now_ms);
                delivery.last_error = Some(truncate(&failure.reason, MAX_ERROR_BYTES).to_owned());
                let next = now_ms.saturating_add(backoff_ms(delivery.attempts, self.rng.as_ref()));
                if failure.permanent || next > delivery.deadline_ms {
                    tracing::warn!(id = %entry.id, webhook = %delivery.target, attempts = delivery.attempts, reason = failure.kind, error = %failure.reason, "webhook delivery given up; it is a dead letter now");
                    (self.bury(&entry.id, entry.at_ms, encode(&delivery)?, now_ms).await?, "dead_lettered")
                } else {
                    tracing::warn!(id = %entry.id, webhook = %delivery.target, attempts = delivery.attempts, reason = failure.kind, error = %failure.reason, retry_in_ms = next - now_ms, "webhook delivery failed; retrying");
                    let retry = QueueOutcome::Retry { data: encode(&delivery)?, due_at_ms: next };
                    (self.store.queue_settle(OUTBOX, &entry.id, entry.at_ms, retry).await?, "failed")
                }
            }
        };
        self.metrics.record_burst_alert(result);
        if settled.is_none() {
            tracing::debug!(id = %entry.id, "webhook delivery claimed by another replica meanwhile");
        }
        Ok(())
    }

    /// Makes a claimed entry a dead letter; old dead letters pushed out are counted.
    async fn bury(
        &self,
        id: &str,
        claimed_until_ms: u64,
        data: Vec<u8>,
        now_ms: u64,
    ) -> Result<Option<u64>, StoreError> {
        let dead = QueueOutcome::Dead { data, at_ms: now_ms, max_dead: DEAD_LETTER_CAPACITY };
        let settled = self.store.queue_settle(OUTBOX, id, claimed_until_ms, dead).await?;
        for _ in 0..settled.unwrap_or(0) {
            self.metrics.record_burst_alert("dropped");
        }
        Ok(settled)
    }

    fn open(&self, id: &str, delivery: &Delivery) -> Option<Zeroizing<Vec<u8>>> {
        let sealed = Sealed::from_base64(&delivery.nonce, &delivery.sealed_body).ok()?;
        self.sealer.open(&sealed, id.as_bytes()).ok()
    }

    async fn post(&self, url: &reqwest::Url, id: &str, body: &[u8]) -> Result<(), Failure> {
        let now_ms = self.clock.now_ms();
        let secrets: Vec<&[u8]> =
            self.config.signing_secrets(now_ms).into_iter().map(WebhookSecret::as_bytes).collect();
        let sent = self
            .http
            .post(url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, sign(&secrets, now_ms / 1000, body))
            .header(DELIVERY_ID_HEADER, id)
            .body(body.to_vec())
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => Ok(()),
            Ok(response) => Err(Failure::retry("status", format!("HTTP {}", response.status().as_u16()))),
            Err(error) if error.is_timeout() => Err(Failure::retry("timeout", "timeout")),
            Err(error) => {
                let kind = if crate::tls::rustls_error(&error).is_some() { "tls" } else { "connection" };
                // The chain: reqwest's own message hides the cause (e.g. an untrusted
                // certificate), which is what the operator needs to see.
                Err(Failure::retry(kind, format!("{kind}: {}", error_chain(&error.without_url()))))
            }
        }
    }

    /// The dead letters, oldest first.
    pub async fn dead_letters(&self) -> Result<DeadLetterList, StoreError> {
        let entries = self.store.queue_list(OUTBOX, QueueLane::Dead, DEAD_LETTER_CAPACITY).await?;
        let dead_letters = entries
            .into_iter()
            .map(|entry| match serde_json::from_slice::<Delivery>(&entry.data) {
                Ok(delivery) => DeadLetter {
                    payload: self
                        .open(&entry.id, &delivery)
                        .and_then(|body| serde_json::from_slice(&body).ok()),
                    id: entry.id,
                    kind: delivery.kind,
                    webhook: delivery.target,
                    created_at: delivery.created_at_ms / 1000,
                    failed_at: entry.at_ms / 1000,
                    attempts: delivery.attempts,
                    last_error: delivery.last_error,
                },
                Err(_) => DeadLetter {
                    id: entry.id,
                    kind: "unreadable".to_owned(),
                    webhook: String::new(),
                    created_at: 0,
                    failed_at: entry.at_ms / 1000,
                    attempts: 0,
                    last_error: Some("the stored delivery is unreadable".to_owned()),
                    payload: None,
                },
            })
            .collect();
        Ok(DeadLetterList { dead_letters })
    }

    /// Makes dead letters pending again (`None`: all of them), with a fresh deadline.
    pub async fn retry(&self, id: Option<&str>) -> Result<DeadLetterAction, WebhookError> {
        let now_ms = self.clock.now_ms();
        let mut action = DeadLetterAction { ids: Vec::new(), skipped: Vec::new() };
        for entry in self.selected_dead_letters(id).await? {
            let data = match serde_json::from_slice::<Delivery>(&entry.data) {
                Ok(mut delivery) => {
                    delivery.deadline_ms =
                        now_ms.saturating_add(self.config.deadline_secs.saturating_mul(1000));
                    encode(&delivery)?
                }
                Err(_) => entry.data,
            };
            match self
                .store
                .queue_revive(OUTBOX, &entry.id, data, now_ms, self.config.outbox_capacity)
                .await?
            {
                QueueRevive::Revived => action.ids.push(entry.id),
                QueueRevive::PendingFull if id.is_some() => {
                    return Err(WebhookError::OutboxFull(self.config.outbox_capacity))
                }
                QueueRevive::PendingFull => action.skipped.push(entry.id),
                QueueRevive::NotDead if id.is_some() => return Err(WebhookError::NoSuchDeadLetter(entry.id)),
                QueueRevive::NotDead => {}
            }
        }
        if !action.ids.is_empty() {
            self.wake.notify_one();
        }
        Ok(action)
    }

    /// Deletes dead letters (`None`: all of them).
    pub async fn purge(&self, id: Option<&str>) -> Result<DeadLetterAction, WebhookError> {
        let mut action = DeadLetterAction { ids: Vec::new(), skipped: Vec::new() };
        for entry in self.selected_dead_letters(id).await? {
            if self.store.queue_delete(OUTBOX, QueueLane::Dead, &entry.id).await? {
                action.ids.push(entry.id);
            } else if id.is_some() {
                return Err(WebhookError::NoSuchDeadLetter(entry.id));
            }
        }
        Ok(action)
    }

    async fn selected_dead_letters(&self, id: Option<&str>) -> Result<Vec<QueueEntry>, WebhookError> {
        let all = self.store.queue_list(OUTBOX, QueueLane::Dead, DEAD_LETTER_CAPACITY).await?;
        let Some(id) = id else { return Ok(all) };
        let one: Vec<QueueEntry> = all.into_iter().filter(|e| e.id == id).collect();
        if one.is_empty() {
            return Err(WebhookError::NoSuchDeadLetter(id.to_owned()));
        }
        Ok(one)
    }
}

/// The delivery task: a round whenever woken (an alert queued here) or every poll
/// interval (retries coming due, entries queued by other replicas), until stopped or
/// until the [`Webhooks`] it serves is gone.
async fn deliver_until_stopped(webhooks: std::sync::Weak<Webhooks>) {
    loop {
        let Some(current) = webhooks.upgrade() else { return };
        if current.stopping.load(Ordering::SeqCst) {
            return;
        }
        if let Err(error) = current.deliver_due().await {
            tracing::warn!(%error, "cannot read the webhook outbox; retrying");
        }
        if current.stopping.load(Ordering::SeqCst) {
            return;
        }
        let poll = current.config.poll_interval;
        let woken = async { current.wake.notified().await };
        let _ = tokio::time::timeout(poll, woken).await;
    }
}

fn encode(delivery: &Delivery) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(delivery)
        .map_err(|e| StoreError::InvalidArgument(format!("cannot encode a delivery: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::SeededRandom;

    #[test]
    fn backoff_doubles_from_one_second_to_five_minutes_with_jitter_in_the_upper_half() {
        let rng = SeededRandom::new(3);
        for (attempts, ceiling) in
            [(1, 1_000), (2, 2_000), (3, 4_000), (9, 256_000), (10, 300_000), (40, 300_000)]
        {
            for _ in 0..50 {
                let wait = backoff_ms(attempts, &rng);
                assert!((ceiling / 2..=ceiling).contains(&wait), "attempt {attempts}: {wait}");
            }
        }
        // Injected randomness: the same seed, the same waits.
        let waits = |seed| (1..8).map(|n| backoff_ms(n, &SeededRandom::new(seed))).collect::<Vec<_>>();
        assert_eq!(waits(5), waits(5));
        assert_ne!(waits(5), waits(6), "jitter spreads replicas out");
    }

    #[test]
    fn signatures_carry_one_v1_per_secret_and_verify_with_either() {
        let body = br#"{"ip":"192.0.2.7"}"#;
        let single = sign(&[b"0123456789abcdef"], 1_700_000_000, body);
        assert!(single.starts_with("t=1700000000,v1="));
        assert_eq!(single.matches("v1=").count(), 1);
        assert_eq!(verify_signature(b"0123456789abcdef", &single, body, 1_700_000_100, 300), Ok(()));
        assert_eq!(
            verify_signature(b"0123456789abcdef", &single, b"{}", 1_700_000_000, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(b"0123456789abcdef", &single, body, 1_700_000_301, 300),
            Err(SignatureError::Stale)
        );
        assert_eq!(verify_signature(b"k", "v1=00", body, 0, 300), Err(SignatureError::Malformed));

        let both = sign(&[b"new-secret-0123456789", b"old-secret-0123456789"], 1_700_000_000, body);
        assert_eq!(both.matches("v1=").count(), 2);
        assert_eq!(verify_signature(b"new-secret-0123456789", &both, body, 1_700_000_000, 300), Ok(()));
        assert_eq!(verify_signature(b"old-secret-0123456789", &both, body, 1_700_000_000, 300), Ok(()));
        assert_eq!(
            verify_signature(b"another-secret-01234", &both, body, 1_700_000_000, 300),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn the_previous_secret_signs_only_until_its_window_closes() {
        let config = WebhookConfig {
            secret: Some(WebhookSecret::new("current-secret-0123").unwrap()),
            previous_secret: Some(PreviousSecret {
                secret: WebhookSecret::new("previous-secret-0123").unwrap(),
                until_ms: 5_000,
            }),
            ..WebhookConfig::default()
        };
        let bytes =
            |now| config.signing_secrets(now).iter().map(|s| s.as_bytes().to_vec()).collect::<Vec<_>>();
        assert_eq!(bytes(4_999), [b"current-secret-0123".to_vec(), b"previous-secret-0123".to_vec()]);
        assert_eq!(bytes(5_000), [b"current-secret-0123".to_vec()]);
    }

    #[test]
    fn configuration_needs_a_secret_with_webhooks_and_sane_bounds() {
        assert!(WebhookConfig::default().validate().is_ok());
        let url = parse_webhook_url("https://hooks.example/T0/secret-path?token=x").unwrap();
        let no_secret = WebhookConfig { urls: vec![url.clone()], ..WebhookConfig::default() };
        assert!(matches!(no_secret.validate(), Err(WebhookConfigError::MissingSecret)));
        assert!(matches!(WebhookSecret::new("short"), Err(WebhookConfigError::ShortSecret)));
        let ok = WebhookConfig { secret: Some(WebhookSecret::new("0123456789abcdef").unwrap()), ..no_secret };
        assert!(ok.validate().is_ok());
        assert!(WebhookConfig { deadline_secs: 0, ..ok.clone() }.validate().is_err());
        assert!(WebhookConfig { outbox_capacity: 0, ..ok.clone() }.validate().is_err());
        let ftp = WebhookConfig { urls: vec![parse_webhook_url("ftp://x.example/").unwrap()], ..ok };
        assert!(matches!(ftp.validate(), Err(WebhookConfigError::BadUrl(_))));
        assert_eq!(redacted(&url), "https://hooks.example");
        assert_eq!(format!("{:?}", WebhookSecret::new("0123456789abcdef").unwrap()), "WebhookSecret(..)");
    }
}
