//! Per-request metrics and one log line per request, and the sample of the control
//! plane's state taken on each scrape of `/metrics`. Only the method, the matched
//! route template, the status and the latency are recorded: never headers (they carry
//! tokens) or raw paths, so label values stay few.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use super::AppState;
use crate::keys::KeyStatus;
use crate::metrics::StateSample;
use crate::revocations::FEED;
use crate::store::{QueueLane, Store, StoreError, MAX_PAGE_SIZE};
use crate::webhooks::OUTBOX;

pub async fn observe_request(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let elapsed = started.elapsed().as_secs_f64();
    state.metrics.record_http_request(&route, &method, status, elapsed);
    let elapsed_ms = elapsed * 1000.0;
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

/// Samples what the control plane holds into the state gauges (before `/metrics`
/// renders): the current signing key's age, the change feed's head and length, and the
/// webhook outbox. A handful of small store reads, whatever the store holds: the outbox
/// lanes are read one page at most (so the pending count saturates at a page), the
/// feed's length by a binary search over one-entry reads.
pub async fn sample_state(state: &AppState) {
    let now_ms = state.clock.now_ms();
    let keys = state.keys.current(now_ms).await;
    let signing_key_age_secs = keys
        .list(now_ms)
        .iter()
        .find(|k| k.status == KeyStatus::Current)
        .map(|k| (now_ms / 1000).saturating_sub(k.created_at));
    let store = state.store.as_ref();
    let feed = feed_extent(store).await.ok();
    let lane =
        |lane| async move { store.queue_list(OUTBOX, lane, MAX_PAGE_SIZE).await.map(|e| e.len()).ok() };
    state.metrics.record_state(StateSample {
        signing_key_age_secs,
        feed_head: feed.map(|(head, _)| head),
        feed_entries: feed.map(|(head, first)| head.saturating_sub(first)),
        outbox_pending: lane(QueueLane::Pending).await,
        dead_letters: lane(QueueLane::Dead).await,
    });
}

/// The revocation feed's head cursor and the cursor before its oldest kept entry (the
/// trim point): reading after a cursor below the trim point answers `cursor_too_old`,
/// so the trim point is the least cursor that does not, found in O(log head) reads.
async fn feed_extent(store: &dyn Store) -> Result<(u64, u64), StoreError> {
    let head = store.feed_read(FEED, u64::MAX, 1).await?.head;
    let (mut too_old, mut readable) = (None::<u64>, head);
    // Invariant: reading after `readable` works; after `too_old` (when set) does not.
    while let Some(gap) = readable.checked_sub(too_old.map_or(0, |c| c + 1)).filter(|g| *g > 0) {
        let probe = readable - gap.div_ceil(2);
        if store.feed_read(FEED, probe, 1).await?.cursor_too_old {
            too_old = Some(probe);
        } else {
            readable = probe;
        }
    }
    Ok((head, readable))
}
