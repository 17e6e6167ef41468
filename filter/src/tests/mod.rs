//! Unit tests of the filter's state machines, driven through the recording host double
//! (`host/fake.rs`): a root context configured as Envoy would, request contexts
//! created by it, and answers to outbound calls delivered to the context that made
//! them, the way Envoy delivers them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod api_tokens;
mod audit;
mod hmac_keys;
mod jwks;
mod rule_counters;
mod signatures;
mod stateful;

use std::collections::HashMap;
use std::rc::Rc;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use proxy_wasm::traits::{Context, HttpContext, RootContext};

use crate::request::AuthnContext;
use proxy_wasm::types::Action;
use serde_json::{json, Value};
use sha2::Sha256;

use crate::host::fake::{Dispatched, FakeHost};
use crate::root::PortcullisRoot;

pub const ROOT: u32 = 1;
pub const NOW_MS: u64 = 1_700_000_000_000;
pub const ISSUER: &str = "https://issuer.test";
pub const FIXTURE_JWKS: &str = include_str!("../../../core/tests/fixtures/jwks.json");
const HS256_SECRET: &[u8] = include_bytes!("../../../core/tests/fixtures/hs256.secret");

/// One Envoy worker: the root context and the request contexts it created.
pub struct Worker {
    pub host: Rc<FakeHost>,
    root: PortcullisRoot,
    requests: HashMap<u32, AuthnContext>,
    next_id: u32,
}

impl Worker {
    pub fn start(config: Value) -> Worker {
        Worker::start_on(config, FakeHost::at(NOW_MS))
    }

    /// A second worker of the same Envoy as `other` (same shared data), started with
    /// `config`; each worker's clock is advanced on its own.
    pub fn start_beside(config: Value, other: &Worker) -> Worker {
        Worker::start_on(config, FakeHost::beside(&other.host))
    }

    fn start_on(config: Value, host: FakeHost) -> Worker {
        let host = Rc::new(host);
        let bytes = config.to_string().into_bytes();
        let size = bytes.len();
        *host.plugin_config.borrow_mut() = Some(bytes);
        host.context.set(ROOT);
        let mut root = PortcullisRoot::new(ROOT, host.clone());
        assert!(root.on_configure(size), "the test configuration compiles");
        Worker { host, root, requests: HashMap::new(), next_id: 100 }
    }

    /// A new request's headers arrive (`end_of_stream`: no body follows).
    pub fn request(&mut self, path: &str, headers: &[(&str, &str)], end_of_stream: bool) -> (u32, Action) {
        self.next_id += 1;
        let id = self.next_id;
        let mut all = vec![(":method", "GET"), (":path", path), (":authority", "api.example.com")];
        all.extend_from_slice(headers);
        self.host.set_request(id, &all);
        // Made as `create_http_context` makes it, without boxing it as a trait object
        // (whose vtable would pull in the SDK's host calls, absent natively).
        let mut ctx = self.root.new_request_context(id);
        self.host.context.set(id);
        let action = ctx.on_http_request_headers(all.len(), end_of_stream);
        self.requests.insert(id, ctx);
        (id, action)
    }

    pub fn body(&mut self, id: u32, size: usize, end_of_stream: bool) -> Action {
        self.host.context.set(id);
        self.requests.get_mut(&id).expect("a live request").on_http_request_body(size, end_of_stream)
    }

    pub fn trailers(&mut self, id: u32) -> Action {
        self.host.context.set(id);
        self.requests.get_mut(&id).expect("a live request").on_http_request_trailers(1)
    }

    /// Delivers an answer to `call` on the context that made it (nothing when that
    /// context is gone: Envoy drops the answer then).
    pub fn answer(&mut self, call: &Dispatched, status: &str, body: &[u8]) {
        self.host.answer_with(status, body);
        self.deliver(call, body.len());
    }

    /// The call failed (timeout or reset): no status, no body.
    pub fn fail(&mut self, call: &Dispatched) {
        self.host.answer_nothing();
        self.deliver(call, 0);
    }

    fn deliver(&mut self, call: &Dispatched, size: usize) {
        self.host.context.set(call.context);
        if call.context == ROOT {
            self.root.on_http_call_response(call.token, 0, size, 0);
        } else if let Some(ctx) = self.requests.get_mut(&call.context) {
            ctx.on_http_call_response(call.token, 0, size, 0);
        }
    }

    /// The request is over (`status`: what the client got): Envoy calls `on_log`.
    pub fn log(&mut self, id: u32, status: u16) {
        self.host.response_status.borrow_mut().insert(id, status);
        self.host.context.set(id);
        self.requests.get_mut(&id).expect("a live request").on_log();
    }

    /// The client went away: Envoy drops the request's context.
    pub fn end(&mut self, id: u32) {
        self.requests.remove(&id);
    }

    pub fn tick(&mut self) {
        self.host.context.set(ROOT);
        self.root.on_tick();
    }

    pub fn queue_ready(&mut self) {
        self.host.context.set(ROOT);
        self.root.on_queue_ready(1);
    }

    pub fn last_call(&self) -> Dispatched {
        self.host.calls.borrow().last().cloned().expect("a call was made")
    }

    pub fn call_count(&self) -> usize {
        self.host.calls.borrow().len()
    }
}

fn b64(bytes: impl AsRef<[u8]>) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// An HS256 token of the fixture key `oct-hs256` for `sub`, valid for ten minutes.
pub fn token(sub: &str) -> String {
    let header = r#"{"alg":"HS256","kid":"oct-hs256"}"#;
    let now = NOW_MS / 1000;
    let claims = json!({ "iss": ISSUER, "sub": sub, "exp": now + 600, "iat": now });
    let input = format!("{}.{}", b64(header), b64(claims.to_string()));
    let mut mac = Hmac::<Sha256>::new_from_slice(HS256_SECRET).unwrap();
    mac.update(input.as_bytes());
    format!("{input}.{}", b64(mac.finalize().into_bytes()))
}

pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

pub fn control_plane() -> Value {
    json!({
        "cluster": "portcullis_control_plane", "authority": "control-plane", "timeoutMs": 200,
        "credential": { "inline": "unit-test-fleet-credential-0123456789abcdef" }
    })
}

/// One provider with the fixture keys inline, one rule requiring it on `/api/`.
pub fn inline_keys_config() -> Value {
    let jwks: Value = serde_json::from_str(FIXTURE_JWKS).unwrap();
    json!({
        "realm": "unit",
        "providers": { "test": { "issuer": ISSUER, "jwks": jwks } },
        "rules": [ { "name": "api", "match": { "pathPrefix": "/api/" }, "requires": { "provider": "test" } } ]
    })
}
