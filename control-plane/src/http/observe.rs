//! Per-request metrics and one log line per request. Only the method, the matched
//! route template, the status and the latency are recorded: never headers (they carry
//! tokens) or raw paths.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use super::AppState;

pub async fn observe_request(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    let status = response.status().as_u16();
    state.metrics.record_http_request(&route, &method, status);
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    // Probes, scrapes, the per-request status check, the filter's per-login and
    // per-second guard calls and its rate-limit leases would drown the log at info.
    if matches!(route.as_str(), "/healthz" | "/readyz" | "/metrics" | super::feed::TOKEN_STATUS_PATH)
        || super::guard::quiet_route(&route)
        || route == portcullis_core::wire::RATE_LIMIT_PATH
    {
        tracing::debug!(%method, %route, status, elapsed_ms, "request");
    } else {
        tracing::info!(%method, %route, status, elapsed_ms, "request");
    }
    response
}
