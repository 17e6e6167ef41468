//! Prometheus metrics of the control plane, served by `GET /metrics` in the
//! OpenMetrics text format (docs/observability.md lists them).
//!
//! Label values are bounded by construction: route templates (never raw paths),
//! store operation names and outcome words fixed in code. Nothing a client sends
//! becomes a label value. Families whose label values are known in advance are
//! created at zero at start, so `rate()` and alerts see them before the first event.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// Upper bounds (seconds) of the request latency buckets: 1 ms to 10 s, covering a
/// token status check from memory up to a slow Redis under load.
pub const HTTP_LATENCY_BUCKETS: [f64; 13] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Upper bounds (seconds) of the store operation latency buckets: 100 µs (memory,
/// embedded) to 5 s (a Redis about to time out).
pub const STORE_LATENCY_BUCKETS: [f64; 13] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0];

fn http_latency_histogram() -> Histogram {
    Histogram::new(HTTP_LATENCY_BUCKETS)
}

fn store_latency_histogram() -> Histogram {
    Histogram::new(STORE_LATENCY_BUCKETS)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpRequestLabels {
    /// The matched route template (`/admin/v1/tokens`), never the raw path, so the
    /// label set stays small; `unmatched` for 404s.
    route: String,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLatencyLabels {
    route: String,
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreOperationLabels {
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    /// `memory`, `embedded` or `redis`.
    backend: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreErrorLabels {
    operation: &'static str,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenStatusLabels {
    /// `true` or `false`: whether the asked-about `jti` was revoked.
    revoked: &'static str,
}

pub struct Metrics {
    registry: Registry,
    http_requests: Family<HttpRequestLabels, Counter>,
    http_latency: Family<HttpLatencyLabels, Histogram, fn() -> Histogram>,
    store_latency: Family<StoreOperationLabels, Histogram, fn() -> Histogram>,
    store_errors: Family<StoreErrorLabels, Counter>,
    state: StateGauges,
    tokens_issued: Counter,
    token_status_requests: Family<TokenStatusLabels, Counter>,
    guard: GuardMetrics,
    rate_limits: RateLimitMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("portcullis");
        registry.register(
            "build",
            "The running control plane's version",
            Info::new(BuildLabels { version: env!("CARGO_PKG_VERSION") }),
        );
        let http_requests = Family::<HttpRequestLabels, Counter>::default();
        let http_latency: Family<HttpLatencyLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(http_latency_histogram);
        let store_latency: Family<StoreOperationLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(store_latency_histogram);
        let store_errors = Family::<StoreErrorLabels, Counter>::default();
        let tokens_issued = Counter::default();
        let token_status_requests = Family::<TokenStatusLabels, Counter>::default();
        for revoked in ["true", "false"] {
            token_status_requests.get_or_create(&TokenStatusLabels { revoked }).inc_by(0);
        }
        registry.register(
            "http_requests",
            "HTTP requests served, by route, method and status",
            http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time from a request's arrival to its response headers, by route template and method",
            http_latency.clone(),
        );
        registry.register(
            "store_operation_duration_seconds",
            "Time each store operation took, failed ones included, by operation",
            store_latency.clone(),
        );
        registry.register(
            "store_errors",
            "Failed store operations, by operation and error kind",
            store_errors.clone(),
        );
        registry.register("tokens_issued", "Access tokens minted", tokens_issued.clone());
        registry.register(
            "token_status_requests",
            "Answered per-token status checks (GET /v1/token-status), by whether the jti was revoked",
            token_status_requests.clone(),
        );
        let guard = GuardMetrics::register(&mut registry);
        let rate_limits = RateLimitMetrics::register(&mut registry);
        let state = StateGauges::register(&mut registry);
        Self {
            registry,
            http_requests,
            http_latency,
            store_latency,
            store_errors,
            state,
            tokens_issued,
            token_status_requests,
            guard,
            rate_limits,
        }
    }

    /// `route`: the matched route template (`unmatched` for none), never a raw path.
    pub fn record_http_request(&self, route: &str, method: &str, status: u16, elapsed_secs: f64) {
        self.http_requests
            .get_or_create(&HttpRequestLabels { route: route.to_owned(), method: method.to_owned(), status })
            .inc();
        self.http_latency
            .get_or_create(&HttpLatencyLabels { route: route.to_owned(), method: method.to_owned() })
            .observe(elapsed_secs);
    }

    pub fn record_store_operation(&self, operation: &'static str, elapsed_secs: f64) {
        self.store_latency.get_or_create(&StoreOperationLabels { operation }).observe(elapsed_secs);
    }

    pub fn record_store_error(&self, operation: &'static str, kind: &'static str) {
        self.store_errors.get_or_create(&StoreErrorLabels { operation, kind }).inc();
    }

    pub fn record_token_issued(&self) {
        self.tokens_issued.inc();
    }

    pub fn record_token_status(&self, revoked: bool) {
        let revoked = if revoked { "true" } else { "false" };
        self.token_status_requests.get_or_create(&TokenStatusLabels { revoked }).inc();
    }

    /// The OpenMetrics text exposition of every metric.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

/// Account lockout and burst alert metrics.
struct GuardMetrics {
    lockout_checks: Family<ResultLabels, Counter>,
    lockout_reports: Family<OutcomeLabels, Counter>,
    lockouts_started: Family<KindLabels, Counter>,
    burst_alerts: Family<ResultLabels, Counter>,
    burst_ips_blocked: Counter,
}

impl GuardMetrics {
    fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            lockout_checks: Family::default(),
            lockout_reports: Family::default(),
            lockouts_started: Family::default(),
            burst_alerts: Family::default(),
            burst_ips_blocked: Counter::default(),
        };
        for result in ["locked", "in_flight", "open"] {
            metrics.lockout_checks.get_or_create(&ResultLabels { result }).inc_by(0);
        }
        for outcome in ["failure", "success", "abandoned"] {
            metrics.lockout_reports.get_or_create(&OutcomeLabels { outcome }).inc_by(0);
        }
        for kind in ["account", "ip"] {
            metrics.lockouts_started.get_or_create(&KindLabels { kind }).inc_by(0);
        }
        for result in ["sent", "failed", "dead_lettered", "dropped"] {
            metrics.burst_alerts.get_or_create(&ResultLabels { result }).inc_by(0);
        }
        registry.register(
            "lockout_checks",
            "Answered lockout checks, by result (locked: some subject was locked; in_flight: refused, every attempt left is in flight; open)",
            metrics.lockout_checks.clone(),
        );
        registry.register(
            "lockout_reports",
            "Recorded login outcomes (POST /v1/lockout/report), by outcome (failure, success, abandoned)",
            metrics.lockout_reports.clone(),
        );
        registry.register(
            "lockouts_started",
            "Locks started or escalated by a failed login, by subject kind (account, ip)",
            metrics.lockouts_started.clone(),
        );
        registry.register(
            "burst_alerts",
            "Burst alert webhook deliveries by result: sent (2xx), failed (an attempt failed; retried), dead_lettered (given up), dropped (outbox or dead letters full)",
            metrics.burst_alerts.clone(),
        );
        registry.register(
            "burst_ips_blocked",
            "Client addresses blocked after a burst",
            metrics.burst_ips_blocked.clone(),
        );
        metrics
    }
}

impl Metrics {
    /// `result`: `locked` (some subject was locked), `in_flight` (refused: every attempt
    /// left is in flight) or `open`.
    pub fn record_lockout_check(&self, result: &'static str) {
        self.guard.lockout_checks.get_or_create(&ResultLabels { result }).inc();
    }

    /// `outcome`: `failure`, `success` or `abandoned`.
    pub fn record_lockout_report(&self, outcome: &'static str) {
        self.guard.lockout_reports.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// `kind`: `account` or `ip`.
    pub fn record_lockout_started(&self, kind: &'static str) {
        self.guard.lockouts_started.get_or_create(&KindLabels { kind }).inc();
    }

    /// `result`: `sent`, `failed` (an attempt, retried later), `dead_lettered` or
    /// `dropped` (a full outbox, or a dead letter pushed out).
    pub fn record_burst_alert(&self, result: &'static str) {
        self.guard.burst_alerts.get_or_create(&ResultLabels { result }).inc();
    }

    pub fn record_burst_ip_blocked(&self) {
        self.guard.burst_ips_blocked.inc();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RateLimitDecisionLabels {
    /// `lease`, `check` or `release`.
    op: &'static str,
    /// `granted` or `refused` (a release is always granted).
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RateLimitOpLabels {
    op: &'static str,
}

/// One answered rate-limit ask, as the metrics count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitOutcome {
    /// `lease`, `check` or `release`.
    pub op: &'static str,
    pub refused: bool,
    /// Granted, and what remains afterwards is below 10 % of the limit.
    pub near_limit: bool,
    /// Units of a granted lease (0 otherwise).
    pub leased_units: u64,
    /// Units handed back (`release` op, or a lease's `release` field).
    pub released_units: u64,
}

/// Rate-limit counter metrics (`POST /v1/ratelimit`).
struct RateLimitMetrics {
    decisions: Family<RateLimitDecisionLabels, Counter>,
    near_limit: Family<RateLimitOpLabels, Counter>,
    over_limit: Family<RateLimitOpLabels, Counter>,
    leases_granted: Counter,
    lease_units_granted: Counter,
    units_released: Counter,
}

impl RateLimitMetrics {
    fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            decisions: Family::default(),
            near_limit: Family::default(),
            over_limit: Family::default(),
            leases_granted: Counter::default(),
            lease_units_granted: Counter::default(),
            units_released: Counter::default(),
        };
        for op in ["lease", "check"] {
            for result in ["granted", "refused"] {
                metrics.decisions.get_or_create(&RateLimitDecisionLabels { op, result }).inc_by(0);
            }
        }
        metrics
            .decisions
            .get_or_create(&RateLimitDecisionLabels { op: "release", result: "granted" })
            .inc_by(0);
        registry.register(
            "rate_limit_decisions",
            "Rate-limit asks answered, by op (lease, check, release) and result (granted, refused)",
            metrics.decisions.clone(),
        );
        registry.register(
            "rate_limit_near_limit",
            "Granted rate-limit asks that left less than 10% of the limit, by op",
            metrics.near_limit.clone(),
        );
        registry.register(
            "rate_limit_over_limit",
            "Refused rate-limit asks (the counter was at its limit), by op",
            metrics.over_limit.clone(),
        );
        registry.register(
            "rate_limit_leases_granted",
            "Quota leases granted",
            metrics.leases_granted.clone(),
        );
        registry.register(
            "rate_limit_lease_units_granted",
            "Units handed out in quota leases",
            metrics.lease_units_granted.clone(),
        );
        registry.register(
            "rate_limit_units_released",
            "Unspent lease units handed back and credited to their counter",
            metrics.units_released.clone(),
        );
        metrics
    }
}

impl Metrics {
    pub fn record_rate_limit(&self, outcome: RateLimitOutcome) {
        let m = &self.rate_limits;
        let result = if outcome.refused { "refused" } else { "granted" };
        m.decisions.get_or_create(&RateLimitDecisionLabels { op: outcome.op, result }).inc();
        if outcome.refused {
            m.over_limit.get_or_create(&RateLimitOpLabels { op: outcome.op }).inc();
        } else if outcome.near_limit {
            m.near_limit.get_or_create(&RateLimitOpLabels { op: outcome.op }).inc();
        }
        if outcome.leased_units > 0 {
            m.leases_granted.inc();
            m.lease_units_granted.inc_by(outcome.leased_units);
        }
        if outcome.released_units > 0 {
            m.units_released.inc_by(outcome.released_units);
        }
    }
}

/// What the control plane holds, sampled from the store on each scrape of `/metrics`
/// (`crate::http` sets them): a failed sample leaves the last values in place and is
/// counted in `portcullis_store_errors_total`.
struct StateGauges {
    store_backend: Family<BackendLabels, Gauge>,
    signing_key_age: Gauge,
    feed_head: Gauge,
    feed_entries: Gauge,
    outbox_pending: Gauge,
    dead_letters: Gauge,
    maintenance_runs: Family<ResultLabels, Counter>,
    /// Unix seconds of the last maintenance pass that succeeded (0: none yet).
    maintenance_succeeded_at: Gauge<f64, AtomicU64>,
}

impl StateGauges {
    fn register(registry: &mut Registry) -> Self {
        let gauges = Self {
            store_backend: Family::default(),
            signing_key_age: Gauge::default(),
            feed_head: Gauge::default(),
            feed_entries: Gauge::default(),
            outbox_pending: Gauge::default(),
            dead_letters: Gauge::default(),
            maintenance_runs: Family::default(),
            maintenance_succeeded_at: Gauge::default(),
        };
        for result in ["ok", "failed"] {
            gauges.maintenance_runs.get_or_create(&ResultLabels { result }).inc_by(0);
        }
        registry.register(
            "store_backend",
            "1 for the store backend this process runs on (memory, embedded, redis)",
            gauges.store_backend.clone(),
        );
        registry.register(
            "signing_key_age_seconds",
            "Age of the current signing key (what new tokens are signed with)",
            gauges.signing_key_age.clone(),
        );
        registry.register(
            "revocation_feed_head",
            "Cursor of the newest revocation change feed entry (grows with every revocation, rotation and key change)",
            gauges.feed_head.clone(),
        );
        registry.register(
            "revocation_feed_entries",
            "Revocation change feed entries kept (older ones are trimmed; Envoys further behind load a snapshot)",
            gauges.feed_entries.clone(),
        );
        registry.register(
            "webhook_outbox_pending",
            "Webhook deliveries waiting or being retried (counted up to 1000)",
            gauges.outbox_pending.clone(),
        );
        registry.register(
            "webhook_dead_letters",
            "Webhook deliveries given up on, kept for retry or purge (at most 1000)",
            gauges.dead_letters.clone(),
        );
        registry.register(
            "maintenance_runs",
            "Maintenance passes (key rotation and retirement, feed trimming) by result (ok, failed)",
            gauges.maintenance_runs.clone(),
        );
        registry.register(
            "maintenance_last_success_timestamp_seconds",
            "Unix time of the last maintenance pass that succeeded (0: none yet)",
            gauges.maintenance_succeeded_at.clone(),
        );
        gauges
    }
}

/// One sample of what the control plane holds ([`Metrics::record_state`]); `None`
/// leaves a gauge as it was (its read failed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateSample {
    pub signing_key_age_secs: Option<u64>,
    pub feed_head: Option<u64>,
    pub feed_entries: Option<u64>,
    pub outbox_pending: Option<usize>,
    pub dead_letters: Option<usize>,
}

fn gauge_value(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

impl Metrics {
    /// Marks `backend` as the store this process runs on.
    pub fn record_store_backend(&self, backend: &'static str) {
        self.state.store_backend.get_or_create(&BackendLabels { backend }).set(1);
    }

    pub fn record_state(&self, sample: StateSample) {
        let g = &self.state;
        let pairs = [
            (&g.signing_key_age, sample.signing_key_age_secs.map(gauge_value)),
            (&g.feed_head, sample.feed_head.map(gauge_value)),
            (&g.feed_entries, sample.feed_entries.map(gauge_value)),
            (&g.outbox_pending, sample.outbox_pending.map(gauge_value)),
            (&g.dead_letters, sample.dead_letters.map(gauge_value)),
        ];
        for (gauge, value) in pairs {
            if let Some(value) = value {
                gauge.set(value);
            }
        }
    }

    /// One maintenance pass; `now_secs` is when it ended.
    pub fn record_maintenance(&self, ok: bool, now_secs: f64) {
        let result = if ok { "ok" } else { "failed" };
        self.state.maintenance_runs.get_or_create(&ResultLabels { result }).inc();
        if ok {
            self.state.maintenance_succeeded_at.set(now_secs);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_metrics_include_recorded_values() {
        let metrics = Metrics::new();
        metrics.record_http_request("/healthz", "GET", 200, 0.002);
        metrics.record_store_error("ping", "unavailable");
        metrics.record_token_issued();
        metrics.record_token_issued();
        metrics.record_token_status(true);
        let text = metrics.render().unwrap();
        assert!(
            text.contains(r#"portcullis_http_requests_total{route="/healthz",method="GET",status="200"} 1"#)
        );
        assert!(text.contains(r#"portcullis_store_errors_total{operation="ping",kind="unavailable"} 1"#));
        assert!(text.contains("portcullis_tokens_issued_total 2"));
        assert!(text.contains(r#"portcullis_token_status_requests_total{revoked="true"} 1"#));
    }
}
