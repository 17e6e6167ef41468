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
        Self { registry, http_requests, store_errors, tokens_issued, token_status_requests }
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
