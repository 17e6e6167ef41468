//! Counters defined with the host on first use. Envoy exposes them with the
//! `wasmcustom.` prefix, e.g. `wasmcustom.portcullis.requests.denied.expired`.

use std::cell::RefCell;
use std::collections::HashMap;

use std::rc::Rc;

use crate::host::Host;

/// Distinct counter names are bounded by the configuration ((providers + rules) ×
/// reasons, limits, ...: names come from the configuration and reasons from a fixed
/// list, never from a request), so the map stays small; this cap guards against a bug
/// creating names without end.
const MAX_COUNTERS: usize = 4096;

pub struct Metrics {
    host: Rc<dyn Host>,
    ids: RefCell<HashMap<String, u32>>,
    gauges: RefCell<HashMap<String, u32>>,
}

impl Metrics {
    pub fn new(host: Rc<dyn Host>) -> Self {
        Metrics { host, ids: RefCell::default(), gauges: RefCell::default() }
    }

    pub fn gauge(&self, name: &str, value: u64) {
        let existing = self.gauges.borrow().get(name).copied();
        let id = existing.or_else(|| {
            let id = self.host.define_gauge(name)?;
            self.gauges.borrow_mut().insert(name.to_string(), id);
            Some(id)
        });
        if let Some(id) = id {
            self.host.record(id, value);
        }
    }

    pub fn count(&self, name: &str) {
        self.add(name, 1);
    }

    /// Adds `by` to a counter.
    pub fn add(&self, name: &str, by: u64) {
        let existing = self.ids.borrow().get(name).copied();
        let id = match existing {
            Some(id) => Some(id),
            None => {
                let mut ids = self.ids.borrow_mut();
                if ids.len() >= MAX_COUNTERS {
                    None
                } else {
                    let id = self.host.define_counter(name);
                    if let Some(id) = id {
                        ids.insert(name.to_string(), id);
                    }
                    id
                }
            }
        };
        if let Some(id) = id {
            self.host.increment(id, by);
        }
    }
}
