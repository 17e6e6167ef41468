//! Portcullis as a proxy-wasm filter for Envoy.
//!
//! This crate is the only code that talks to the host, and it does so through one
//! trait (`host::Host`). The root context (`root.rs`) compiles the configuration and
//! keeps remote keys and the revocation replica fresh; each request context
//! (`request.rs`) hands its request to the pipeline (`pipeline.rs`: authentication,
//! then the stateful checks in `stateful.rs`), whose checks live in `features/`.
//! Outbound calls leave through one router (`calls.rs`). See docs/architecture.md.

mod answers;
mod calls;
mod features;
mod held;
mod host;
mod key_wait;
mod login;
mod metrics;
mod pipeline;
mod progress;
mod replay_claim;
mod reply;
mod request;
mod root;
mod runtime;
mod stateful;

#[cfg(test)]
mod tests;

use std::rc::Rc;

use proxy_wasm::traits::RootContext;
use proxy_wasm::types::LogLevel;

use crate::host::proxy::ProxyHost;
use crate::host::Host;
use crate::root::PortcullisRoot;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    // Installed after the SDK's own hook, so ours is the one that runs.
    std::panic::set_hook(Box::new(|info| {
        ProxyHost.log_critical(&format!("panic (this worker's filter is now unusable): {info}"));
    }));
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> {
        Box::new(PortcullisRoot::new(context_id, Rc::new(ProxyHost)))
    });
}}
