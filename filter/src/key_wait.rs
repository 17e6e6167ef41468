//! A request whose token needs keys this worker does not have: re-read the keys other
//! workers stored, start an on-demand JWKS fetch, or park behind the fetch (or feed
//! poll) already in flight, so a token signed by a key just rotated in is not refused.

use portcullis_core::jwt::provider::KeySource;
use portcullis_core::keyfetch::FetchKind;
use portcullis_core::RequestParts;

use crate::calls::Call;
use crate::held::Parked;
use crate::host::Upstream;
use crate::progress::Progress;
use crate::reply::Next;
use crate::runtime::Runtime;

/// Keys of provider `p` are needed: re-read shared data once, then fetch them, or park
/// behind a fetch in flight. `None`: decide again with the keys there are.
pub fn wait_for_keys(
    rt: &Runtime,
    context_id: u32,
    (request, rule_index): (&RequestParts, usize),
    p: usize,
    progress: &mut Progress,
    now_ms: u64,
) -> Option<Next> {
    // Another worker may already have fetched the new keys.
    if !progress.reloaded.contains(&p) {
        progress.reloaded.push(p);
        rt.jwt.keys(rt.env(now_ms), &rt.policy, true);
        return None;
    }
    progress.tried.push(p);
    if start_fetch(rt, p, now_ms, context_id) {
        return Some(Next::Paused);
    }
    // A fetch some context already started will answer soon: wait for it rather than
    // reject a token signed by a key just rotated in.
    if rt.fetch_in_flight(p, now_ms) && park(rt, context_id, p, rule_index, request, progress) {
        rt.metrics.count("portcullis.requests.parked");
        return Some(Next::Paused);
    }
    // A fetch may have finished between the reload above and now: decide once more
    // with whatever shared data holds.
    rt.jwt.keys(rt.env(now_ms), &rt.policy, true);
    None
}

/// Claims and dispatches an on-demand JWKS fetch for the request on `context_id`;
/// false when rate-limited or failed.
fn start_fetch(rt: &Runtime, p: usize, now_ms: u64, context_id: u32) -> bool {
    let Some(provider) = rt.policy.providers.get(p) else { return false };
    let KeySource::Remote(remote) = provider.key_source() else {
        return false;
    };
    if !rt.jwt.claim_fetch(rt.env(now_ms), &rt.policy, p, FetchKind::OnDemand) {
        return false;
    }
    let upstream = Upstream::public(&remote.cluster, &remote.authority);
    let call = Call::Jwks { provider: p, requester: Some(context_id) };
    match rt.calls.get(&*rt.host, &upstream, &remote.path, remote.timeout_ms, call) {
        Ok(_) => {
            rt.metrics.count(&format!("portcullis.jwks.{}.fetch_on_demand", provider.name()));
            true
        }
        Err(status) => {
            log::warn!(
                "provider `{}`: cannot call cluster `{}` ({status:?})",
                provider.name(),
                remote.cluster
            );
            rt.jwt.complete_fetch(rt.env(now_ms), &rt.policy, p, (None, None));
            false
        }
    }
}

/// Holds a paused request until the in-flight fetch of `provider` (or the feed poll,
/// [`FEED_POLL`]) ends.
pub fn park(
    rt: &Runtime,
    context_id: u32,
    provider: usize,
    rule: usize,
    request: &RequestParts,
    progress: &Progress,
) -> bool {
    rt.held.park(Parked {
        context_id,
        provider,
        rule,
        request: request.clone(),
        input: progress.input.clone(),
    })
}
