//! The requests this worker holds, in one place: those parked until a key fetch or
//! feed poll another context started ends, those waiting for the control plane's
//! answer in the stateful checks, and the set of those the filter has let go.
//!
//! Invariant: a request the filter has not decided never reaches the upstream. A
//! request is undecided until the filter *releases* it ([`Held::release`]); until then
//! every request-side callback holds it, whatever the frame (`request.rs`). A denied
//! request is never released (its local reply ends it); one whose client went away is
//! forgotten everywhere here when its context is dropped ([`Held::forget`]).

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

use portcullis_core::authn::UpstreamEdits;
use portcullis_core::RequestParts;

use crate::features::lockout::LoginAttempt;
use crate::features::ratelimit::LimitsProgress;
use crate::features::signature::Signer;

/// Requests one worker holds while a key fetch is in flight; more are decided at once.
const MAX_PARKED: usize = 1024;
/// Most requests one worker holds waiting for the control plane.
const MAX_WAITERS: usize = 4096;
/// What a request parked for the revocation feed (not a provider's keys) waits on.
pub const FEED_POLL: usize = usize::MAX;

/// What a request brings to the stateful checks: its context, rule, address and (on a
/// login route) the account it names.
#[derive(Debug, Clone, Default)]
pub struct CheckInput {
    pub ctx: u32,
    pub rule: Option<usize>,
    pub client_ip: Option<String>,
    /// On a lockout route: `Some(account)`, or `Some(None)` when none could be read and
    /// the lockout counts such attempts by address only.
    pub login: Option<Option<String>>,
    /// The key whose signature verified, once the signature check passed (it runs once
    /// per request: its replay guard remembers the nonce).
    pub signer: Option<Signer>,
}

/// A request waiting for a JWKS fetch (or, with [`FEED_POLL`], a feed poll) that
/// another context started.
pub struct Parked {
    pub context_id: u32,
    pub provider: usize,
    pub rule: usize,
    pub request: RequestParts,
    pub input: CheckInput,
}

/// An authenticated request going through the stateful checks.
pub struct Pending {
    /// The request's rule (index in `rules`; `None`: no rule matched): its decision is
    /// counted under it.
    pub rule: Option<usize>,
    pub request: RequestParts,
    pub edits: UpstreamEdits,
    pub limits: LimitsProgress,
    pub login: Option<LoginAttempt>,
    /// The control plane could not answer for this request: failure modes apply.
    pub unavailable: bool,
    pub deadline_ms: u64,
}

impl Pending {
    pub fn new(
        rule: Option<usize>,
        request: RequestParts,
        edits: UpstreamEdits,
        limits: LimitsProgress,
        login: Option<LoginAttempt>,
    ) -> Self {
        Pending { rule, request, edits, limits, login, unavailable: false, deadline_ms: 0 }
    }
}

#[derive(Default)]
pub struct Held {
    parked: RefCell<Vec<Parked>>,
    waiters: RefCell<HashMap<u32, Pending>>,
    released: RefCell<HashSet<u32>>,
}

impl Held {
    /// Holds a paused request until the in-flight fetch or poll it waits for ends.
    pub fn park(&self, parked: Parked) -> bool {
        let Ok(mut all) = self.parked.try_borrow_mut() else { return false };
        if all.len() >= MAX_PARKED {
            return false;
        }
        all.push(parked);
        true
    }

    /// Takes the parked requests `ready` says may be decided now.
    pub fn unpark_where(&self, mut ready: impl FnMut(&Parked) -> bool) -> Vec<Parked> {
        let Ok(mut parked) = self.parked.try_borrow_mut() else { return Vec::new() };
        let mut out = Vec::new();
        let mut i = 0;
        while i < parked.len() {
            if parked.get(i).is_some_and(&mut ready) {
                out.push(parked.swap_remove(i));
            } else {
                i += 1;
            }
        }
        out
    }

    /// Keeps a request waiting for the control plane; false when too many wait.
    pub fn wait(&self, ctx: u32, pending: Pending) -> bool {
        let mut waiters = self.waiters.borrow_mut();
        if waiters.len() >= MAX_WAITERS && !waiters.contains_key(&ctx) {
            return false;
        }
        waiters.insert(ctx, pending);
        true
    }

    pub fn take_waiter(&self, ctx: u32) -> Option<Pending> {
        self.waiters.try_borrow_mut().ok()?.remove(&ctx)
    }

    pub fn with_waiter(&self, ctx: u32, f: impl FnOnce(&mut Pending)) {
        if let Some(p) = self.waiters.borrow_mut().get_mut(&ctx) {
            f(p);
        }
    }

    /// Waiting requests whose deadline passed.
    pub fn overdue(&self, now_ms: u64) -> Vec<u32> {
        self.waiters
            .borrow()
            .iter()
            .filter(|(_, p)| p.deadline_ms > 0 && now_ms > p.deadline_ms)
            .map(|(ctx, _)| *ctx)
            .collect()
    }

    /// Lets a decided request go: from now on its callbacks continue.
    pub fn release(&self, ctx: u32) {
        if let Ok(mut set) = self.released.try_borrow_mut() {
            set.insert(ctx);
        }
    }

    /// Whether the filter has let this request go; a request it knows nothing of (or
    /// whose state cannot be read) has not been.
    pub fn is_released(&self, ctx: u32) -> bool {
        self.released.try_borrow().map(|s| s.contains(&ctx)).unwrap_or(false)
    }

    /// A request context ended: forget it everywhere.
    pub fn forget(&self, ctx: u32) {
        if let Ok(mut parked) = self.parked.try_borrow_mut() {
            parked.retain(|p| p.context_id != ctx);
        }
        if let Ok(mut w) = self.waiters.try_borrow_mut() {
            w.remove(&ctx);
        }
        if let Ok(mut set) = self.released.try_borrow_mut() {
            set.remove(&ctx);
        }
    }
}
