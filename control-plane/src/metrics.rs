//! Prometheus metrics of the control plane, served by `GET /metrics` in the
//! OpenMetrics text format.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpRequestLabels {
    /// The matched route template (`/admin/v1/tokens`), never the raw path, so the
    /// label set stays small; `unmatched` for 404s.
    route: String,
    method: String,
    status: u16,
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
    store_errors: Family<StoreErrorLabels, Counter>,
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
        let http_requests = Family::<HttpRequestLabels, Counter>::default();
        let store_errors = Family::<StoreErrorLabels, Counter>::default();
        let tokens_issued = Counter::default();
        let token_status_requests = Family::<TokenStatusLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests served, by route, method and status",
            http_requests.clone(),
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
        Self {
            registry,
            http_requests,
            store_errors,
            tokens_issued,
            token_status_requests,
            guard,
            rate_limits,
        }
    }

    pub fn record_http_request(&self, route: &str, method: &str, status: u16) {
        self.http_requests
            .get_or_create(&HttpRequestLabels { route: route.to_owned(), method: method.to_owned(), status })
            .inc();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_metrics_include_recorded_values() {
        let metrics = Metrics::new();
        metrics.record_http_request("/healthz", "GET", 200);
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
