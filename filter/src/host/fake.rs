//! A recording [`Host`] for unit tests: shared data with compare-and-swap versions,
//! request and response headers per context, a clock the test moves, outbound calls
//! kept until the test answers them, local replies and resumes per context, and a count
//! of every host call made.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::types::Status;

use super::Host;

/// An outbound call the filter made.
#[derive(Debug, Clone)]
pub struct Dispatched {
    pub token: u32,
    /// The context that made it (its answer goes there).
    pub context: u32,
    pub cluster: String,
    pub path: String,
    pub body: Option<Vec<u8>>,
    pub timeout: Duration,
}

/// A local reply sent on a context.
#[derive(Debug, Clone)]
pub struct Reply {
    pub context: u32,
    pub status: u16,
}

/// Shared data: key → (value, CAS version).
type SharedData = HashMap<String, (Vec<u8>, u32)>;

#[derive(Default)]
pub struct FakeHost {
    pub now_ms: Cell<u64>,
    pub context: Cell<u32>,
    /// Envoy's shared data: one map for every worker of the Envoy.
    shared: Rc<RefCell<SharedData>>,
    pub request_headers: RefCell<HashMap<u32, Vec<(String, String)>>>,
    pub request_bodies: RefCell<HashMap<u32, Vec<u8>>>,
    pub response_status: RefCell<HashMap<u32, u16>>,
    pub calls: RefCell<Vec<Dispatched>>,
    next_token: Cell<u32>,
    /// The answer being delivered: status and body.
    pub answer: RefCell<Option<(String, Vec<u8>)>>,
    pub replies: RefCell<Vec<Reply>>,
    pub resumed: RefCell<Vec<u32>>,
    pub responses_resumed: RefCell<Vec<u32>>,
    pub response_headers_added: RefCell<HashMap<u32, Vec<(String, String)>>>,
    queue: RefCell<Vec<Vec<u8>>>,
    pub queue_registered: Cell<bool>,
    /// Every host call, by name, in order.
    pub log: RefCell<Vec<&'static str>>,
    /// Dispatches fail (an undefined cluster) while set.
    pub refuse_calls: Cell<bool>,
    pub plugin_config: RefCell<Option<Vec<u8>>>,
    /// Counters defined, by name, with their values; a counter's id is its index.
    counters: RefCell<Vec<(String, u64)>>,
}

impl FakeHost {
    pub fn at(now_ms: u64) -> Self {
        let host = FakeHost::default();
        host.now_ms.set(now_ms);
        host
    }

    /// Another worker of the same Envoy: its own calls and contexts, the same shared data.
    pub fn beside(other: &FakeHost) -> Self {
        let host = FakeHost { shared: other.shared.clone(), ..FakeHost::default() };
        host.now_ms.set(other.now_ms.get());
        host
    }

    fn note(&self, call: &'static str) {
        self.log.borrow_mut().push(call);
    }

    /// A counter's value (0 when it was never defined).
    pub fn counter(&self, name: &str) -> u64 {
        self.counters.borrow().iter().find(|(n, _)| n == name).map_or(0, |(_, v)| *v)
    }

    /// The names of the counters defined so far that start with `prefix`.
    pub fn counters_starting(&self, prefix: &str) -> Vec<String> {
        self.counters.borrow().iter().map(|(n, _)| n.clone()).filter(|n| n.starts_with(prefix)).collect()
    }

    pub fn advance(&self, ms: u64) {
        self.now_ms.set(self.now_ms.get().saturating_add(ms));
    }

    pub fn clear_log(&self) {
        self.log.borrow_mut().clear();
    }

    pub fn set_request(&self, context: u32, headers: &[(&str, &str)]) {
        self.request_headers
            .borrow_mut()
            .insert(context, headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect());
    }

    pub fn calls_to(&self, path_prefix: &str) -> Vec<Dispatched> {
        self.calls.borrow().iter().filter(|c| c.path.starts_with(path_prefix)).cloned().collect()
    }

    pub fn replies_on(&self, context: u32) -> Vec<Reply> {
        self.replies.borrow().iter().filter(|r| r.context == context).cloned().collect()
    }

    pub fn resumes_of(&self, context: u32) -> usize {
        self.resumed.borrow().iter().filter(|c| **c == context).count()
    }

    /// Sets the answer the next `on_http_call_response` reads.
    pub fn answer_with(&self, status: &str, body: &[u8]) {
        *self.answer.borrow_mut() = Some((status.to_string(), body.to_vec()));
    }

    /// The call fails (timeout or reset): no `:status`.
    pub fn answer_nothing(&self) {
        *self.answer.borrow_mut() = None;
    }
}

impl Host for FakeHost {
    fn now_unix_ms(&self) -> u64 {
        self.note("get_current_time");
        self.now_ms.get()
    }

    fn request_headers(&self) -> Vec<(String, String)> {
        self.note("get_request_headers");
        self.request_headers.borrow().get(&self.context.get()).cloned().unwrap_or_default()
    }

    fn http_call_response_headers(&self) -> Vec<(String, String)> {
        self.note("get_http_call_response_headers");
        match &*self.answer.borrow() {
            Some((status, _)) => vec![(":status".to_string(), status.clone())],
            None => Vec::new(),
        }
    }

    fn set_request_header(&self, name: &str, value: &str) -> Result<(), Status> {
        self.note("set_request_header");
        let mut all = self.request_headers.borrow_mut();
        let headers = all.entry(self.context.get()).or_default();
        headers.retain(|(n, _)| n != name);
        headers.push((name.to_string(), value.to_string()));
        Ok(())
    }

    fn add_request_header(&self, name: &str, value: &str) -> Result<(), Status> {
        self.note("add_request_header");
        self.request_headers
            .borrow_mut()
            .entry(self.context.get())
            .or_default()
            .push((name.to_string(), value.to_string()));
        Ok(())
    }

    fn remove_request_header(&self, name: &str) -> Result<(), Status> {
        self.note("remove_request_header");
        if let Some(headers) = self.request_headers.borrow_mut().get_mut(&self.context.get()) {
            headers.retain(|(n, _)| n != name);
        }
        Ok(())
    }

    fn send_local_reply(
        &self,
        status: u16,
        _headers: &[(String, String)],
        _body: &str,
    ) -> Result<(), Status> {
        self.note("send_http_response");
        self.replies.borrow_mut().push(Reply { context: self.context.get(), status });
        Ok(())
    }

    fn resume_request(&self) -> Result<(), Status> {
        self.note("resume_http_request");
        self.resumed.borrow_mut().push(self.context.get());
        Ok(())
    }

    fn resume_response(&self) -> Result<(), Status> {
        self.note("resume_http_response");
        self.responses_resumed.borrow_mut().push(self.context.get());
        Ok(())
    }

    fn dispatch_http_call(
        &self,
        cluster: &str,
        headers: Vec<(&str, &str)>,
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, Status> {
        self.note("dispatch_http_call");
        if self.refuse_calls.get() {
            return Err(Status::BadArgument);
        }
        let token = self.next_token.get().wrapping_add(1);
        self.next_token.set(token);
        let path =
            headers.iter().find(|(n, _)| *n == ":path").map(|(_, v)| v.to_string()).unwrap_or_default();
        self.calls.borrow_mut().push(Dispatched {
            token,
            context: self.context.get(),
            cluster: cluster.to_string(),
            path,
            body: body.map(<[u8]>::to_vec),
            timeout,
        });
        Ok(token)
    }

    fn http_call_response_body(&self, size: usize) -> Option<Vec<u8>> {
        self.note("get_http_call_response_body");
        self.answer.borrow().as_ref().map(|(_, b)| b.iter().take(size).copied().collect())
    }

    fn plugin_configuration(&self, _size: usize) -> Option<Vec<u8>> {
        self.note("get_plugin_configuration");
        self.plugin_config.borrow().clone()
    }

    fn shared_data(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        self.note("get_shared_data");
        match self.shared.borrow().get(key) {
            Some((value, version)) => (Some(value.clone()), Some(*version)),
            None => (None, None),
        }
    }

    fn set_shared_data(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), Status> {
        self.note("set_shared_data");
        let mut shared = self.shared.borrow_mut();
        let current = shared.get(key).map(|(_, v)| *v);
        if cas.is_some() && cas != current {
            return Err(Status::CasMismatch);
        }
        let version = current.map(|v| v.wrapping_add(1)).unwrap_or(1);
        shared.insert(key.to_string(), (value.to_vec(), version));
        Ok(())
    }

    fn set_tick_period(&self, _period: Duration) -> Result<(), Status> {
        self.note("set_tick_period");
        Ok(())
    }

    fn define_counter(&self, name: &str) -> Option<u32> {
        self.note("define_metric");
        let mut counters = self.counters.borrow_mut();
        let id = match counters.iter().position(|(n, _)| n == name) {
            Some(i) => i,
            None => {
                counters.push((name.to_string(), 0));
                counters.len() - 1
            }
        };
        u32::try_from(id).ok()
    }

    fn define_gauge(&self, _name: &str) -> Option<u32> {
        self.note("define_metric");
        Some(2)
    }

    fn record(&self, _metric: u32, _value: u64) {
        self.note("record_metric");
    }

    fn increment(&self, metric: u32, by: u64) {
        self.note("increment_metric");
        if let Some((_, value)) = self.counters.borrow_mut().get_mut(metric as usize) {
            *value += by;
        }
    }

    fn log_critical(&self, _message: &str) {
        self.note("log");
    }

    fn set_effective_context(&self, context_id: u32) -> Result<(), Status> {
        self.note("set_effective_context");
        self.context.set(context_id);
        Ok(())
    }

    fn environment_variable(&self, _name: &str) -> Option<String> {
        None
    }

    fn downstream_address(&self) -> Option<String> {
        self.note("get_property");
        Some("192.0.2.7:40000".to_string())
    }

    fn request_body(&self, size: usize) -> Option<Vec<u8>> {
        self.note("get_buffer_bytes");
        self.request_bodies.borrow().get(&self.context.get()).map(|b| b.iter().take(size).copied().collect())
    }

    fn response_status(&self) -> Option<u16> {
        self.note("get_response_header");
        self.response_status.borrow().get(&self.context.get()).copied()
    }

    fn add_response_header(&self, name: &str, value: &str) -> Result<(), Status> {
        self.note("add_response_header");
        self.response_headers_added
            .borrow_mut()
            .entry(self.context.get())
            .or_default()
            .push((name.to_string(), value.to_string()));
        Ok(())
    }

    fn register_queue(&self, _name: &str) -> Option<u32> {
        self.note("register_shared_queue");
        self.queue_registered.set(true);
        Some(1)
    }

    fn enqueue(&self, _queue: u32, value: &[u8]) -> Result<(), Status> {
        self.note("enqueue_shared_queue");
        self.queue.borrow_mut().push(value.to_vec());
        Ok(())
    }

    fn dequeue(&self, _queue: u32) -> Option<Vec<u8>> {
        self.note("dequeue_shared_queue");
        let mut queue = self.queue.borrow_mut();
        if queue.is_empty() {
            None
        } else {
            Some(queue.remove(0))
        }
    }
}
