//! The border with Envoy: every host call the filter makes goes through the [`Host`]
//! trait, and host statuses become `Result`s. [`proxy::ProxyHost`] is the real one (the
//! only code calling `proxy_wasm::hostcalls`); the unit tests drive the filter's state
//! machines through a recording double (`fake.rs`) in plain `cargo test`.
//!
//! Header values are read as bytes and decoded lossily: a client can send bytes that are
//! not UTF-8, and the SDK's convenience methods would panic on them.

pub mod proxy;
pub mod shared;

#[cfg(test)]
pub mod fake;

use std::time::Duration;

use portcullis_core::control_plane::ControlPlane;
use portcullis_core::fleet::FleetCredential;
use proxy_wasm::types::Status;

/// What the filter asks of Envoy. Object safe: the filter holds it as `Rc<dyn Host>`.
/// Methods act on the current (effective) context, as the host calls do.
pub trait Host {
    /// Milliseconds since the Unix epoch, from the host clock.
    fn now_unix_ms(&self) -> u64;
    fn request_headers(&self) -> Vec<(String, String)>;
    fn http_call_response_headers(&self) -> Vec<(String, String)>;
    fn set_request_header(&self, name: &str, value: &str) -> Result<(), Status>;
    fn add_request_header(&self, name: &str, value: &str) -> Result<(), Status>;
    fn remove_request_header(&self, name: &str) -> Result<(), Status>;
    fn send_local_reply(&self, status: u16, headers: &[(String, String)], body: &str) -> Result<(), Status>;
    fn resume_request(&self) -> Result<(), Status>;
    fn resume_response(&self) -> Result<(), Status>;
    /// An outbound call to `cluster`; the answer arrives in `on_http_call_response` of
    /// the context current now.
    fn dispatch_http_call(
        &self,
        cluster: &str,
        headers: Vec<(&str, &str)>,
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, Status>;
    /// `size` bytes of the answer being delivered.
    fn http_call_response_body(&self, size: usize) -> Option<Vec<u8>>;
    fn plugin_configuration(&self, size: usize) -> Option<Vec<u8>>;
    /// Shared data and its version (the compare-and-swap token).
    fn shared_data(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>);
    /// Writes shared data if `cas` still matches (`None`: unconditionally).
    fn set_shared_data(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), Status>;
    fn set_tick_period(&self, period: Duration) -> Result<(), Status>;
    fn define_counter(&self, name: &str) -> Option<u32>;
    fn define_gauge(&self, name: &str) -> Option<u32>;
    fn record(&self, metric: u32, value: u64);
    /// Adds `by` to a counter.
    fn increment(&self, metric: u32, by: u64);
    fn log_critical(&self, message: &str);
    /// Makes later host calls act on another context (to finish a paused request from a
    /// callback that belongs to a different context).
    fn set_effective_context(&self, context_id: u32) -> Result<(), Status>;
    /// An environment variable of the Wasm VM (`vm_config.environment_variables`).
    fn environment_variable(&self, name: &str) -> Option<String>;
    /// The downstream peer's address (`ip:port`), as Envoy reports it.
    fn downstream_address(&self) -> Option<String>;
    /// `size` bytes of the request body buffered so far.
    fn request_body(&self, size: usize) -> Option<Vec<u8>>;
    fn response_status(&self) -> Option<u16>;
    fn add_response_header(&self, name: &str, value: &str) -> Result<(), Status>;
    /// Registers a shared queue this VM's root context is told about (`on_queue_ready`).
    fn register_queue(&self, name: &str) -> Option<u32>;
    fn enqueue(&self, queue: u32, value: &[u8]) -> Result<(), Status>;
    fn dequeue(&self, queue: u32) -> Option<Vec<u8>>;

    /// A GET to `upstream`; the answer arrives in `on_http_call_response`.
    fn dispatch_get(&self, upstream: &Upstream<'_>, path: &str, timeout_ms: u64) -> Result<u32, Status> {
        let authorization = upstream.authorization();
        self.dispatch_http_call(
            upstream.cluster,
            upstream.headers(
                &authorization,
                &[(":method", "GET"), (":path", path), ("accept", "application/json")],
            ),
            None,
            Duration::from_millis(timeout_ms),
        )
    }

    /// A POST of a JSON body to `upstream`; the answer arrives in `on_http_call_response`.
    fn dispatch_post_json(
        &self,
        upstream: &Upstream<'_>,
        path: &str,
        body: &[u8],
        timeout_ms: u64,
    ) -> Result<u32, Status> {
        let authorization = upstream.authorization();
        self.dispatch_http_call(
            upstream.cluster,
            upstream.headers(
                &authorization,
                &[
                    (":method", "POST"),
                    (":path", path),
                    ("content-type", "application/json"),
                    ("accept", "application/json"),
                ],
            ),
            Some(body),
            Duration::from_millis(timeout_ms),
        )
    }

    /// Status and body (`None` when larger than `cap`) of the answer being delivered.
    fn call_response(&self, body_size: usize, cap: usize) -> (Option<String>, Option<Vec<u8>>) {
        let status =
            self.http_call_response_headers().into_iter().find(|(n, _)| n == ":status").map(|(_, v)| v);
        let body = if body_size > cap { None } else { self.http_call_response_body(body_size) };
        (status, body)
    }
}

/// Where an `http_call` goes: a named Envoy cluster, the `:authority`, and the
/// credential presented there. Calls to the control plane carry the fleet credential
/// ([`Upstream::control_plane`]); JWKS fetches carry none ([`Upstream::public`]), since
/// a provider's keys may come from a third party.
pub struct Upstream<'a> {
    cluster: &'a str,
    authority: &'a str,
    credential: Option<&'a FleetCredential>,
}

impl<'a> Upstream<'a> {
    pub fn control_plane(cp: &'a ControlPlane) -> Self {
        Upstream { cluster: &cp.cluster, authority: &cp.authority, credential: Some(&cp.credential) }
    }

    pub fn public(cluster: &'a str, authority: &'a str) -> Self {
        Upstream { cluster, authority, credential: None }
    }

    /// The request headers: these, then `authorization` when there is a credential. The
    /// one place the credential is put on the wire.
    fn headers<'h>(&self, authorization: &'h str, fixed: &[(&'h str, &'h str)]) -> Vec<(&'h str, &'h str)>
    where
        'a: 'h,
    {
        let mut headers = Vec::with_capacity(fixed.len() + 2);
        headers.extend_from_slice(fixed);
        headers.push((":authority", self.authority));
        if self.credential.is_some() {
            headers.push(("authorization", authorization));
        }
        headers
    }

    fn authorization(&self) -> String {
        self.credential.map(FleetCredential::authorization).unwrap_or_default()
    }
}
