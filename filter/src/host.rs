//! The border with Envoy: every host call the filter makes goes through here, and host
//! statuses become `Result`s. The SDK's convenience methods unwrap host results and
//! decode header values as UTF-8 with a panic on anything else; a client can send
//! bytes that are not UTF-8, so headers are read as bytes and decoded lossily.

use std::time::{Duration, UNIX_EPOCH};

use portcullis_core::control_plane::ControlPlane;
use portcullis_core::fleet::FleetCredential;
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, LogLevel, MapType, MetricType, Status};

/// Milliseconds since the Unix epoch, from the host clock.
pub fn now_unix_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn lossy_map(map: MapType) -> Vec<(String, String)> {
    match hostcalls::get_map_bytes(map) {
        Ok(pairs) => pairs
            .into_iter()
            .map(|(name, value)| (name, String::from_utf8_lossy(&value).into_owned()))
            .collect(),
        Err(_) => Vec::new(),
    }
}

pub fn request_headers() -> Vec<(String, String)> {
    lossy_map(MapType::HttpRequestHeaders)
}

pub fn http_call_response_headers() -> Vec<(String, String)> {
    lossy_map(MapType::HttpCallResponseHeaders)
}

pub fn set_request_header(name: &str, value: &str) -> Result<(), Status> {
    hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value))
}

pub fn add_request_header(name: &str, value: &str) -> Result<(), Status> {
    hostcalls::add_map_value(MapType::HttpRequestHeaders, name, value)
}

pub fn remove_request_header(name: &str) -> Result<(), Status> {
    hostcalls::remove_map_value(MapType::HttpRequestHeaders, name)
}

pub fn send_local_reply(status: u16, headers: &[(String, String)], body: &str) -> Result<(), Status> {
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    hostcalls::send_http_response(u32::from(status), headers, Some(body.as_bytes()))
}

pub fn resume_request() -> Result<(), Status> {
    hostcalls::resume_http_request()
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

/// A GET to `upstream`; the answer arrives in `on_http_call_response`.
pub fn dispatch_get(upstream: &Upstream<'_>, path: &str, timeout_ms: u64) -> Result<u32, Status> {
    let authorization = upstream.authorization();
    hostcalls::dispatch_http_call(
        upstream.cluster,
        upstream
            .headers(&authorization, &[(":method", "GET"), (":path", path), ("accept", "application/json")]),
        None,
        vec![],
        Duration::from_millis(timeout_ms),
    )
}

pub fn http_call_response_body(size: usize, cap: usize) -> Option<Vec<u8>> {
    if size > cap {
        return None;
    }
    hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, size).ok().flatten()
}

pub fn plugin_configuration(size: usize) -> Option<Vec<u8>> {
    hostcalls::get_buffer(BufferType::PluginConfiguration, 0, size).ok().flatten()
}

pub fn shared_data(key: &str) -> (Option<Vec<u8>>, Option<u32>) {
    hostcalls::get_shared_data(key).unwrap_or((None, None))
}

/// Writes shared data if `cas` still matches (`None`: unconditionally).
pub fn set_shared_data(key: &str, value: &[u8], cas: Option<u32>) -> Result<(), Status> {
    hostcalls::set_shared_data(key, Some(value), cas)
}

pub fn set_tick_period(period: Duration) -> Result<(), Status> {
    hostcalls::set_tick_period(period)
}

pub fn define_counter(name: &str) -> Option<u32> {
    hostcalls::define_metric(MetricType::Counter, name).ok()
}

pub fn define_gauge(name: &str) -> Option<u32> {
    hostcalls::define_metric(MetricType::Gauge, name).ok()
}

pub fn record(metric: u32, value: u64) {
    let _ = hostcalls::record_metric(metric, value);
}

pub fn increment(metric: u32) {
    let _ = hostcalls::increment_metric(metric, 1);
}

pub fn log_critical(message: &str) {
    let _ = hostcalls::log(LogLevel::Critical, message);
}

/// Makes later host calls act on another context (to finish a paused request from a
/// callback that belongs to a different context).
pub fn set_effective_context(context_id: u32) -> Result<(), Status> {
    hostcalls::set_effective_context(context_id)
}

/// A POST of a JSON body to `upstream`; the answer arrives in `on_http_call_response`.
pub fn dispatch_post_json(
    upstream: &Upstream<'_>,
    path: &str,
    body: &[u8],
    timeout_ms: u64,
) -> Result<u32, Status> {
    let authorization = upstream.authorization();
    hostcalls::dispatch_http_call(
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
        vec![],
        Duration::from_millis(timeout_ms),
    )
}

/// An environment variable of the Wasm VM: Envoy exposes the ones listed in
/// `vm_config.environment_variables` (WASI `environ_get`); `None` when not set.
pub fn environment_variable(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// The downstream peer's address (`ip:port`), as Envoy reports it.
pub fn downstream_address() -> Option<String> {
    let bytes = hostcalls::get_property(vec!["source", "address"]).ok().flatten()?;
    String::from_utf8(bytes).ok()
}

/// `size` bytes of the request body buffered so far.
pub fn request_body(size: usize) -> Option<Vec<u8>> {
    hostcalls::get_buffer(BufferType::HttpRequestBody, 0, size).ok().flatten()
}

pub fn response_status() -> Option<u16> {
    let value = hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, ":status").ok().flatten()?;
    std::str::from_utf8(&value).ok()?.parse().ok()
}

pub fn add_response_header(name: &str, value: &str) -> Result<(), Status> {
    hostcalls::add_map_value(MapType::HttpResponseHeaders, name, value)
}

pub fn resume_response() -> Result<(), Status> {
    hostcalls::resume_http_response()
}

/// Registers a shared queue this VM's root context is told about (`on_queue_ready`).
pub fn register_queue(name: &str) -> Option<u32> {
    hostcalls::register_shared_queue(name).ok()
}

pub fn enqueue(queue: u32, value: &[u8]) -> Result<(), Status> {
    hostcalls::enqueue_shared_queue(queue, Some(value))
}

pub fn dequeue(queue: u32) -> Option<Vec<u8>> {
    hostcalls::dequeue_shared_queue(queue).ok().flatten()
}
