//! `replay: global`: a verified signature's replay id is claimed at the control plane
//! (`POST` [`CLAIM_PATH`], fleet credential) before the signer counts, one call per
//! signed request. The request is held meanwhile like for any other call (body frames,
//! trailers and an empty end of stream answer `Pause`; a reset drops the call with its
//! context). The answer decides: `fresh` → the request is decided again with its
//! signer; a replay → 401 `replayed`; no answer (timeout, error, control plane down) →
//! the rule's `onReplayGuardUnavailable`: `deny` (503 with `Retry-After`) or `allow`.

use portcullis_core::response::Denial;
use portcullis_core::signature::replay::{ReplayClaimAnswer, CLAIM_PATH};
use portcullis_core::signature::{Reason, ReplayGuardFailure};

use crate::calls::Call;
use crate::features::signature::{PendingClaim, Signer};
use crate::host::Upstream;
use crate::progress::Progress;
use crate::runtime::Runtime;

/// Largest answer read.
const MAX_ANSWER_BYTES: usize = 1024;

/// Dispatches the claim for the request on `context_id`; false when it cannot be made
/// (no control plane, a request decided from another context, a failed dispatch).
pub fn start(rt: &Runtime, context_id: u32, pending: &PendingClaim, progress: &Progress) -> bool {
    let Some(cp) = rt.policy.control_plane.as_ref().filter(|_| !progress.no_callouts) else {
        return false;
    };
    let Ok(body) = serde_json::to_vec(&pending.claim) else { return false };
    let call = Call::ReplayClaim { requester: context_id };
    let upstream = Upstream::control_plane(cp);
    match rt.calls.post_json(&*rt.host, context_id, &upstream, (CLAIM_PATH, &body), cp.timeout_ms, call) {
        Ok(_) => {
            rt.metrics.count("portcullis.signature.replay_claims");
            true
        }
        Err(status) => {
            log::warn!("cannot call cluster `{}` for a replay claim ({status:?})", cp.cluster);
            false
        }
    }
}

/// Without an answer: the signer when the rule lets the request through unguarded,
/// else the denial (503).
pub fn unavailable(rt: &Runtime, pending: PendingClaim) -> Result<PendingClaim, Denial> {
    rt.metrics.count("portcullis.signature.replay_guard_unavailable");
    match pending.on_unavailable {
        ReplayGuardFailure::Allow => Ok(pending),
        ReplayGuardFailure::Deny => Err(Denial::ReplayGuardUnavailable),
    }
}

/// The answer to a claim arrived: the signer when the id was fresh (or the control
/// plane did not answer and the rule allows that), else the denial.
pub fn complete(rt: &Runtime, body_size: usize, pending: PendingClaim) -> Result<Signer, Denial> {
    let (status, body) = rt.host.call_response(body_size, MAX_ANSWER_BYTES);
    let answer = match (status.as_deref(), body) {
        (Some("200"), Some(bytes)) => serde_json::from_slice::<ReplayClaimAnswer>(&bytes).ok(),
        _ => None,
    };
    let pending = match answer {
        Some(ReplayClaimAnswer { fresh: true }) => pending,
        Some(ReplayClaimAnswer { fresh: false }) => {
            rt.metrics.count("portcullis.signature.refused.replayed");
            return Err(Denial::InvalidSignature(Reason::Replayed));
        }
        None => unavailable(rt, pending)?,
    };
    rt.metrics.count("portcullis.signature.verified");
    Ok(pending.signer)
}
