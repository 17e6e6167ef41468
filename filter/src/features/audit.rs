//! Decision records for the control plane's audit log, off the request path.
//!
//! While a request is decided, the pipeline notes its subject and its outcome under the
//! request's context ([`AuditState::subject`], [`AuditState::decided`]); an allow is
//! kept or forgotten then (sampling), a denial is always kept. When the request ends
//! (`on_log`: status and latency are known, every outcome — a 429, a lockout, a local
//! reply — is seen once) the record is built and put in this worker's staging list
//! ([`AuditState::finish`]), which goes to the Envoy-wide buffer in shared data
//! (`portcullis.v1.audit.buffer`, `portcullis_core::audit::buffer`) on the root tick:
//! the buffer is rewritten once per tick and worker, never per request. A request
//! that is allowed and sampled out costs a clock read, a random draw and, with a
//! verified subject, one short-lived map entry.
//!
//! One worker at a time sends (the lease `portcullis.v1.audit.leader`: VM number and
//! until when, compare-and-swap): on its tick, when a batch is full or the flush
//! interval passed, it cuts the batch in flight from the buffer and `POST`s it to the
//! control plane with the fleet credential. The batch's decisions leave the buffer when
//! the control plane acknowledged its id; a failed send is retried with the same id
//! after a backoff that doubles up to `retryMaxMs`, so a retried batch is stored once.
//! A full buffer drops its oldest waiting decisions: counted in
//! `portcullis.audit.dropped` and logged.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use portcullis_core::audit::buffer::{Batch, Ring};
use portcullis_core::audit::config::AuditSettings;
use portcullis_core::audit::event::{self, Denied, Outcome, Seen};
use portcullis_core::audit::SubjectKind;

use crate::host::shared::{SharedCell, Swap};
use crate::host::Host;
use crate::metrics::Metrics;

const BUFFER_KEY: &str = "portcullis.v1.audit.buffer";
const LEADER_KEY: &str = "portcullis.v1.audit.leader";
/// Requests in progress noted per worker, at most (a note lives from the decision to
/// the end of the request).
const MAX_NOTES: usize = 65_536;
/// A failed send is logged once per this many.
const LOG_EVERY: u32 = 30;

#[derive(Default)]
struct Note {
    outcome: Outcome,
    decided: bool,
}

#[derive(Default)]
struct Sender {
    failures: u32,
    next_send_ms: u64,
    last_send_ms: u64,
    /// A send of this worker is outstanding until then.
    in_flight_until_ms: u64,
}

pub struct AuditState {
    host: Rc<dyn Host>,
    pub settings: AuditSettings,
    /// This VM's number (unique among the VMs of this Envoy), for the lease.
    vm: u64,
    /// The request context whose callback runs now (or which was made effective).
    current: Cell<u32>,
    notes: RefCell<HashMap<u32, Note>>,
    /// Records of this worker not yet in the shared buffer (JSON).
    staged: RefCell<Vec<Vec<u8>>>,
    /// xorshift64* state, seeded with randomness from outside.
    rng: Cell<u64>,
    sender: RefCell<Sender>,
}

impl AuditState {
    /// `seed`: random bits (sampling and the buffer's id draw from them).
    pub fn new(settings: AuditSettings, vm: u64, seed: u64, host: Rc<dyn Host>) -> Self {
        AuditState {
            host,
            settings,
            vm,
            current: Cell::new(0),
            notes: RefCell::default(),
            staged: RefCell::default(),
            rng: Cell::new(seed | 1),
            sender: RefCell::default(),
        }
    }

    fn random(&self) -> u64 {
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A callback of context `ctx` runs (or `ctx` was made the effective context).
    pub fn enter(&self, ctx: u32) {
        self.current.set(ctx);
    }

    fn with_note(&self, ctx: u32, f: impl FnOnce(&mut Note)) {
        let Ok(mut notes) = self.notes.try_borrow_mut() else { return };
        if notes.len() >= MAX_NOTES && !notes.contains_key(&ctx) {
            return;
        }
        f(notes.entry(ctx).or_default());
    }

    /// Who the request on `ctx` authenticated as (a later, stronger identity replaces an
    /// earlier one: a JWT's `sub` over the key id of its signature).
    pub fn subject(&self, ctx: u32, kind: SubjectKind, subject: &str) {
        self.with_note(ctx, |n| n.outcome.subject = Some((kind, subject.to_string())));
    }

    /// The request on the current context was decided under `rule`: `denial` is its
    /// reason code and whether a shadow rule gave it, `None` an allow. The first
    /// decision of a request counts, except that a denial replaces an allow (a login
    /// whose response is replaced by a lockout); an allow is kept at the sampling rate.
    pub fn decided(&self, rule: Option<&str>, denial: Option<(&'static str, bool)>, metrics: &Metrics) {
        let ctx = self.current.get();
        if denial.is_none() {
            let already = self.notes.try_borrow().is_ok_and(|n| n.get(&ctx).is_some_and(|n| n.decided));
            // The upper half of the random bits: xorshift's low bits are the weaker.
            let random = u32::try_from(self.random() >> 32).unwrap_or(0);
            if already {
                return;
            }
            if !self.settings.records(true, random) {
                if let Ok(mut notes) = self.notes.try_borrow_mut() {
                    notes.remove(&ctx);
                }
                metrics.count("portcullis.audit.sampled_out");
                return;
            }
        }
        self.with_note(ctx, |n| {
            if n.decided && (denial.is_none() || n.outcome.denial.is_some()) {
                return;
            }
            n.decided = true;
            n.outcome.rule = rule.map(str::to_string);
            n.outcome.denial = denial.map(|(reason, shadow)| Denied { reason, shadow });
        });
    }

    /// Whether the request on `ctx` has a decision to record when it ends.
    pub fn wants(&self, ctx: u32) -> bool {
        self.notes.try_borrow().is_ok_and(|n| n.get(&ctx).is_some_and(|n| n.decided))
    }

    /// The request on `ctx` ended: its record is staged (the root tick moves it to the
    /// shared buffer). At most `bufferEvents` are staged: beyond, the oldest are
    /// dropped (counted), as the buffer would drop them.
    pub fn finish(&self, ctx: u32, seen: &Seen, status: Option<u16>, now_ms: u64, metrics: &Metrics) {
        let Some(note) = self.notes.try_borrow_mut().ok().and_then(|mut n| n.remove(&ctx)) else { return };
        if !note.decided {
            return;
        }
        let record = event::build(&self.settings, seen, &note.outcome, status, now_ms);
        let Ok(json) = serde_json::to_vec(&record) else { return };
        metrics.count("portcullis.audit.recorded");
        let Ok(mut staged) = self.staged.try_borrow_mut() else { return };
        if staged.len() >= self.settings.buffer_events {
            staged.remove(0);
            metrics.add("portcullis.audit.dropped", 1);
        }
        staged.push(json);
    }

    /// The context `ctx` ended (after `on_log`, or reset before it).
    pub fn forget(&self, ctx: u32) {
        if let Ok(mut notes) = self.notes.try_borrow_mut() {
            notes.remove(&ctx);
        }
    }

    fn buffer(&self) -> SharedCell<'_> {
        SharedCell::new(&*self.host, BUFFER_KEY)
    }

    /// Moves the staged records into the shared buffer; what does not fit pushes the
    /// oldest out (counted). Under constant contention they stay staged (bounded by
    /// the buffer's size, oldest dropped first) for the next tick.
    pub fn flush_staged(&self, metrics: &Metrics) {
        let Ok(mut staged) = self.staged.try_borrow_mut() else { return };
        if staged.is_empty() {
            return;
        }
        let capacity = self.settings.buffer_events;
        let fresh = self.random();
        let pushed = self.buffer().update(|data| {
            let mut ring = Ring::decode_or_new(data, fresh);
            let dropped = ring.push(staged.iter().cloned(), capacity);
            let len = ring.len() as u64;
            Swap::Write(ring.encode(), (dropped, len))
        });
        let dropped = match pushed {
            Some((dropped, len)) => {
                staged.clear();
                metrics.gauge("portcullis.audit.buffered", len);
                dropped
            }
            None => {
                let over = staged.len().saturating_sub(capacity);
                staged.drain(..over);
                over as u64
            }
        };
        if dropped > 0 {
            metrics.add("portcullis.audit.dropped", dropped);
            log::warn!("audit buffer full: dropped the {dropped} oldest decision record(s)");
        }
    }

    /// The batch this worker should send now, if any: it holds the lease (or took it),
    /// no send of its is outstanding, the backoff is over, and a batch is full, one is
    /// in flight, or the flush interval passed.
    pub fn claim_send(&self, now_ms: u64) -> Option<Batch> {
        {
            let s = self.sender.try_borrow().ok()?;
            if now_ms < s.in_flight_until_ms || now_ms < s.next_send_ms {
                return None;
            }
        }
        if !self.take_lease(now_ms) {
            return None;
        }
        let interval_over = {
            let s = self.sender.try_borrow().ok()?;
            now_ms >= s.last_send_ms.saturating_add(self.settings.flush_interval_ms)
        };
        let (batch_size, fresh) = (self.settings.batch_size, self.random());
        let batch = self.buffer().update(|data| {
            let mut ring = Ring::decode_or_new(data, fresh);
            if !(ring.batch_ready(batch_size) || (interval_over && !ring.is_empty())) {
                return Swap::Keep(None);
            }
            let batch = ring.batch(batch_size);
            Swap::Write(ring.encode(), batch)
        })??;
        let mut s = self.sender.try_borrow_mut().ok()?;
        s.in_flight_until_ms = now_ms.saturating_add(self.settings.timeout_ms).saturating_add(1_000);
        s.last_send_ms = now_ms;
        Some(batch)
    }

    /// Takes or renews the lease; false when another worker holds it.
    fn take_lease(&self, now_ms: u64) -> bool {
        let lease = SharedCell::new(&*self.host, LEADER_KEY);
        let (data, cas) = lease.read();
        if let Some([vm, until]) = data.and_then(|d| portcullis_core::codec::read_u64s::<2>(&d)) {
            if vm != self.vm && now_ms < until {
                return false;
            }
        }
        let lease_ms = self.settings.flush_interval_ms.max(self.settings.timeout_ms).saturating_mul(3);
        let mut next = [0u8; 16];
        portcullis_core::codec::write_u64s(&mut next, &[self.vm, now_ms.saturating_add(lease_ms)]);
        lease.put_if(&next, cas).is_ok()
    }

    /// Takes batch `id` out of the buffer; how many records it held.
    fn take_batch(&self, id: &str, metrics: &Metrics) -> u64 {
        let fresh = self.random();
        let taken = self.buffer().update(|data| {
            let mut ring = Ring::decode_or_new(data, fresh);
            let n = ring.acknowledge(id) as u64;
            let len = ring.len() as u64;
            if n == 0 {
                return Swap::Keep((0, len));
            }
            Swap::Write(ring.encode(), (n, len))
        });
        let (n, len) = taken.unwrap_or((0, 0));
        metrics.gauge("portcullis.audit.buffered", len);
        n
    }

    /// The control plane answered batch `id` (`status`; `None`: no answer). A batch it
    /// refuses as invalid (400, 413) would be refused again: it is dropped (counted and
    /// logged) rather than block the buffer.
    pub fn complete_send(&self, id: &str, status: Option<&str>, now_ms: u64, metrics: &Metrics) {
        let ok = status == Some("200");
        if ok {
            metrics.add("portcullis.audit.sent", self.take_batch(id, metrics));
        } else {
            metrics.count("portcullis.audit.send_failed");
            if matches!(status, Some("400" | "413")) {
                let n = self.take_batch(id, metrics);
                metrics.add("portcullis.audit.dropped", n);
                log::error!(
                    "the control plane refused audit batch {id} as invalid; its {n} record(s) are dropped"
                );
            }
        }
        let Ok(mut s) = self.sender.try_borrow_mut() else { return };
        s.in_flight_until_ms = 0;
        if ok {
            if s.failures > 0 {
                log::info!("audit batches reach the control plane again");
            }
            s.failures = 0;
            s.next_send_ms = now_ms;
        } else {
            if s.failures % LOG_EVERY == 0 {
                let why = status.map_or("no answer".to_string(), |c| format!("HTTP {c}"));
                log::warn!("audit batch {id} not stored ({why}); kept and retried");
            }
            s.failures = s.failures.saturating_add(1);
            s.next_send_ms = now_ms.saturating_add(self.settings.backoff_ms(s.failures));
        }
    }
}
