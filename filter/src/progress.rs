//! What one request's decision carries between rounds (`pipeline.rs`): keys already
//! waited for, an outstanding strict revocation check, the inputs of the stateful
//! checks and a signed request's buffered parts and pending replay claim.

use portcullis_core::authn::{Authenticated, UpstreamEdits};

use crate::features::signature::{PendingClaim, SignedParts};
use crate::held::CheckInput;

/// What one request has already tried while waiting for keys.
#[derive(Default)]
pub struct Progress {
    /// Providers whose keys were already re-read from shared data for this request.
    pub(crate) reloaded: Vec<usize>,
    /// Providers whose keys this request fetched or could not fetch.
    pub(crate) tried: Vec<usize>,
    /// Outstanding strict revocation check.
    pub(crate) strict: Option<StrictCheck>,
    /// The feed was polled (or waited for) on this request's behalf already.
    pub(crate) feed_refreshed: bool,
    /// Decided from another context's callback: no calls may be started for it (their
    /// answers would reach that other context).
    pub(crate) no_callouts: bool,
    /// What the stateful checks after authentication need.
    pub(crate) input: CheckInput,
    /// On a rule with `signatures`: the scheme and buffered body the check reads.
    pub(crate) signed: Option<SignedParts>,
    /// A verified signature whose replay id is being claimed at the control plane.
    pub(crate) replay: Option<PendingClaim>,
}

impl Progress {
    /// For a parked request decided from another context: its keys were waited for
    /// already, and no call may be started on its behalf.
    pub(crate) fn for_parked(remote_providers: Vec<usize>, input: CheckInput) -> Self {
        Progress {
            reloaded: remote_providers.clone(),
            tried: remote_providers,
            strict: None,
            feed_refreshed: true,
            no_callouts: true,
            input,
            signed: None,
            replay: None,
        }
    }
}

/// A request whose tokens verified, waiting for the control plane's word on them.
pub struct StrictCheck {
    pub(crate) current: Authenticated,
    pub(crate) rest: Vec<Authenticated>,
    pub(crate) identities: Vec<Authenticated>,
    pub(crate) edits: UpstreamEdits,
}
