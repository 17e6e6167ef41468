//! A cell of Envoy shared data, seen by every worker of this Envoy, and the one
//! compare-and-swap loop the filter uses to change one.
//!
//! Shared data carries a version with each value; a write naming the version it read
//! fails when another worker wrote in between. [`SharedCell::update`] re-reads and
//! retries a bounded number of times ([`CAS_ATTEMPTS`]): workers are few (one per
//! Envoy thread) and each holds a cell only for the time of one read and one write, so
//! losing this many races in a row means constant contention, and each caller then
//! falls back to what it does when the value cannot be changed (documented there)
//! rather than spin inside a request.

use proxy_wasm::types::Status;

use super::Host;

/// Attempts of one compare-and-swap update before it gives up (see the module docs).
pub const CAS_ATTEMPTS: usize = 8;

/// What an update does with the value it read.
pub enum Swap<T, B: AsRef<[u8]>> {
    /// Write these bytes (if nobody wrote since the read), then answer `T`.
    Write(B, T),
    /// Leave the value as it is and answer `T` at once.
    Keep(T),
}

/// One shared-data key.
pub struct SharedCell<'a> {
    host: &'a dyn Host,
    key: &'a str,
}

impl<'a> SharedCell<'a> {
    pub fn new(host: &'a dyn Host, key: &'a str) -> Self {
        SharedCell { host, key }
    }

    /// The value and its version (`None`, `None` when never written).
    pub fn read(&self) -> (Option<Vec<u8>>, Option<u32>) {
        self.host.shared_data(self.key)
    }

    pub fn get(&self) -> Option<Vec<u8>> {
        self.read().0
    }

    /// Writes unconditionally.
    pub fn put(&self, value: &[u8]) -> Result<(), Status> {
        self.host.set_shared_data(self.key, value, None)
    }

    /// Writes if the value is still at version `cas` (one attempt: for claims, where
    /// losing the race means another worker took the work).
    pub fn put_if(&self, value: &[u8], cas: Option<u32>) -> Result<(), Status> {
        self.host.set_shared_data(self.key, value, cas)
    }

    /// Reads the value, lets `change` decide, and writes what it says if no other
    /// worker wrote in between; otherwise reads again, at most [`CAS_ATTEMPTS`] times.
    /// `None`: every attempt lost the race (nothing was written).
    pub fn update<T, B: AsRef<[u8]>>(
        &self,
        mut change: impl FnMut(Option<&[u8]>) -> Swap<T, B>,
    ) -> Option<T> {
        for _ in 0..CAS_ATTEMPTS {
            let (data, cas) = self.read();
            match change(data.as_deref()) {
                Swap::Keep(out) => return Some(out),
                Swap::Write(bytes, out) => {
                    if self.put_if(bytes.as_ref(), cas).is_ok() {
                        return Some(out);
                    }
                }
            }
        }
        None
    }
}

/// What [`SharedCell::claim_lease`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// This VM holds the lease now (taken or renewed).
    Ours,
    /// Another VM holds it and it has not run out.
    Theirs,
    /// Another worker wrote the lease between the read and the write.
    Lost,
}

impl SharedCell<'_> {
    /// Takes or renews a lease held in this cell (VM number and until when, in ms)
    /// for `vm` until `now_ms + lease_ms`, unless another VM holds one not yet run out:
    /// one worker per Envoy does a periodic job, and another takes over when its
    /// holder stops renewing.
    pub fn claim_lease(&self, vm: u64, now_ms: u64, lease_ms: u64) -> Lease {
        let (data, cas) = self.read();
        if let Some([holder, until]) = data.and_then(|d| portcullis_core::codec::read_u64s::<2>(&d)) {
            if holder != vm && now_ms < until {
                return Lease::Theirs;
            }
        }
        let mut next = [0u8; 16];
        portcullis_core::codec::write_u64s(&mut next, &[vm, now_ms.saturating_add(lease_ms)]);
        match self.put_if(&next, cas) {
            Ok(()) => Lease::Ours,
            Err(_) => Lease::Lost,
        }
    }
}
