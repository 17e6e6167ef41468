//! The one way out: every outbound `http_call` (JWKS fetches, feed polls, strict
//! revocation checks, lease and strict rate-limit asks, lock checks, login reports,
//! lease releases, burst reports, audit batches) is dispatched here and registered under its token
//! with what it continues ([`Call`]); whichever context receives an answer takes the
//! call back from here ([`CallRouter::take`]) and hands it to the pipeline. A token
//! not found here is an answer nobody waits for any more, and is dropped.
//!
//! Envoy delivers an answer to the context that was current when the call was made,
//! and drops it when that context has ended. Calls that must outlive the request that
//! needed them (rate limits, lock checks: their answers bring leases and reservations)
//! are therefore made by the root context: a request queues itself
//! ([`CallRouter::hand_to_root`]) and the root context, in `on_queue_ready`, makes the
//! call ([`CallRouter::as_root`]). Calls a request makes for itself (an on-demand JWKS
//! fetch or feed poll, a strict revocation check) are forgotten with the request
//! ([`CallRouter::forget_owner`]).
//!
//! The circuit breaker lives here too: after a control-plane call fails, limits and
//! lock checks use their failure modes without calling for [`CIRCUIT_OPEN_MS`].

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use portcullis_core::ratelimit::AppliedLimit;
use portcullis_core::wire::{LockoutSubject, RateLimitOp};
use proxy_wasm::types::Status;

use crate::host::{Host, Upstream};
use crate::metrics::Metrics;

/// After a failed control-plane call, limits use their failure mode without calling
/// for this long.
pub const CIRCUIT_OPEN_MS: u64 = 1_000;

/// What an outbound call continues when its answer arrives.
pub enum Call {
    /// A provider's JWKS; `requester`: the request context that waits for it (`None`:
    /// the root context's periodic refresh).
    Jwks {
        provider: usize,
        requester: Option<u32>,
    },
    /// A poll of the revocation feed; `requester` as for [`Call::Jwks`].
    Feed {
        requester: Option<u32>,
    },
    /// A strict revocation check of the request on context `requester`.
    StrictRevocation {
        requester: u32,
    },
    /// The claim of a signed request's replay id (`replay: global`) for the request on
    /// context `requester`.
    ReplayClaim {
        requester: u32,
    },
    /// Lease and strict asks: `asks[i]` is limit `i` of the waiter `owner` (strict) or
    /// a shared lease (for every waiter on the counter).
    Limits {
        owner: u32,
        asks: Vec<(usize, AppliedLimit, bool)>,
        waiters: Vec<u32>,
    },
    /// A lock check reserving `subjects` for the attempt of `owner`. Forgotten after
    /// `forget_at_ms` if its answer never comes (its receiving context went away).
    LockCheck {
        owner: u32,
        subjects: Vec<LockoutSubject>,
        forget_at_ms: u64,
    },
    /// The outcome report of the login attempt of `owner`, whose response waits for it.
    LockReport {
        owner: u32,
    },
    /// A report settling a reservation nobody waits for.
    LockRelease,
    /// The tick's batch: unspent leased units given back, and leases renewed (position
    /// in the batch of `asks` asks, counter).
    Release {
        asks: usize,
        renewals: Vec<(usize, AppliedLimit)>,
    },
    Burst,
    /// A poll of the API token feed (root context).
    ApiTokenFeed,
    /// A usage report of API tokens (root context).
    ApiTokenUsage,
    /// A batch of decision records (root context).
    AuditBatch {
        id: String,
    },
    /// A fetch of the control plane's HMAC key set (root context).
    HmacKeys,
}

/// The call a stateful check needs before it can answer (`check::Verdict::Call`).
pub enum Ask {
    /// Lease or strict asks: (limit index in the request, limit, strict, operation).
    Limits(Vec<(usize, AppliedLimit, bool, RateLimitOp)>),
    /// Join the lease ask already in flight for the counter (its token).
    JoinLease(u32),
    /// Reserve an attempt for the login.
    LockCheck,
}

impl Call {
    /// The request context that made this call for itself, if any.
    fn requester(&self) -> Option<u32> {
        match self {
            Call::Jwks { requester, .. } | Call::Feed { requester } => *requester,
            Call::StrictRevocation { requester } | Call::ReplayClaim { requester } => Some(*requester),
            _ => None,
        }
    }
}

#[derive(Default)]
pub struct CallRouter {
    calls: RefCell<HashMap<u32, Call>>,
    circuit_open_until: Cell<u64>,
    /// This VM's queue of requests whose calls the root context makes.
    pub queue: Cell<Option<u32>>,
    /// While the root context works through the queue (or handles an answer): its id.
    root_dispatch: Cell<Option<u32>>,
}

impl CallRouter {
    /// A GET to `upstream`, registered as `call`.
    pub fn get(
        &self,
        host: &dyn Host,
        upstream: &Upstream<'_>,
        path: &str,
        timeout_ms: u64,
        call: Call,
    ) -> Result<u32, Status> {
        let token = host.dispatch_get(upstream, path, timeout_ms)?;
        self.calls.borrow_mut().insert(token, call);
        Ok(token)
    }

    /// A POST of a JSON body to `upstream`, registered as `call`. When the root context
    /// is working, the call is made on it (so it outlives the request context `ctx`,
    /// which is current again afterwards).
    pub fn post_json(
        &self,
        host: &dyn Host,
        ctx: u32,
        upstream: &Upstream<'_>,
        (path, body): (&str, &[u8]),
        timeout_ms: u64,
        call: Call,
    ) -> Result<u32, Status> {
        let token = match self.root_dispatch.get() {
            Some(root) if root != ctx => {
                let _ = host.set_effective_context(root);
                let result = host.dispatch_post_json(upstream, path, body, timeout_ms);
                let _ = host.set_effective_context(ctx);
                result?
            }
            _ => host.dispatch_post_json(upstream, path, body, timeout_ms)?,
        };
        self.calls.borrow_mut().insert(token, call);
        Ok(token)
    }

    /// The call answered by `token`, which nobody else will see again.
    pub fn take(&self, token: u32) -> Option<Call> {
        self.calls.try_borrow_mut().ok()?.remove(&token)
    }

    /// Whether a call like this is outstanding.
    pub fn in_flight(&self, like: impl Fn(&Call) -> bool) -> bool {
        self.calls.try_borrow().is_ok_and(|calls| calls.values().any(like))
    }

    /// Adds `ctx` to the waiters of the lease ask `token`; false when that call is gone.
    pub fn wait_for(&self, token: u32, ctx: u32) -> bool {
        match self.calls.borrow_mut().get_mut(&token) {
            Some(Call::Limits { waiters, .. }) => {
                if !waiters.contains(&ctx) {
                    waiters.push(ctx);
                }
                true
            }
            _ => false,
        }
    }

    /// `ctx` no longer waits for any lease ask (it was decided without them).
    pub fn stop_waiting(&self, ctx: u32) {
        for call in self.calls.borrow_mut().values_mut() {
            if let Call::Limits { waiters, .. } = call {
                waiters.retain(|w| *w != ctx);
            }
        }
    }

    /// Forgets lock checks whose answer never came (kept until then: the answer may
    /// still bring a reservation to give back).
    pub fn forget_unanswered(&self, now_ms: u64) {
        self.calls
            .borrow_mut()
            .retain(|_, c| !matches!(c, Call::LockCheck { forget_at_ms, .. } if now_ms > *forget_at_ms));
    }

    /// A request context ended: the calls it made for itself will not be answered.
    pub fn forget_owner(&self, ctx: u32) {
        if let Ok(mut calls) = self.calls.try_borrow_mut() {
            calls.retain(|_, c| c.requester() != Some(ctx));
        }
    }

    pub fn circuit_open(&self, now_ms: u64) -> bool {
        now_ms < self.circuit_open_until.get()
    }

    /// A control-plane call failed: failure modes answer for a while.
    pub fn open_circuit(&self, now_ms: u64, metrics: &Metrics) {
        self.circuit_open_until.set(now_ms.saturating_add(CIRCUIT_OPEN_MS));
        metrics.count("portcullis.guard.control_plane_unavailable");
    }

    /// Outside the root context: queues request `ctx` for the root context, which will
    /// make its call. False: make the call here (in the root context, or without a
    /// queue).
    pub fn hand_to_root(&self, host: &dyn Host, ctx: u32) -> bool {
        if self.root_dispatch.get().is_some() {
            return false;
        }
        let Some(queue) = self.queue.get() else { return false };
        host.enqueue(queue, &ctx.to_be_bytes()).is_ok()
    }

    /// Runs `f` as the root context's work: calls it makes are owned by `root`.
    pub fn as_root<T>(&self, root: u32, f: impl FnOnce() -> T) -> T {
        let before = self.root_dispatch.replace(Some(root));
        let out = f();
        self.root_dispatch.set(before);
        out
    }

    /// The next request context queued for the root context.
    pub fn next_queued(&self, host: &dyn Host) -> Option<u32> {
        loop {
            let bytes = host.dequeue(self.queue.get()?)?;
            if let Ok(id) = <[u8; 4]>::try_from(bytes.as_slice()) {
                return Some(u32::from_be_bytes(id));
            }
        }
    }
}
