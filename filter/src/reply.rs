//! Carrying a decision out on the current request context: a local reply for a
//! denial (or, in shadow mode, only its count), and the edits an allowed request takes
//! upstream.

use portcullis_core::authn::UpstreamEdits;
use portcullis_core::jwt::provider::TokenLocation;
use portcullis_core::response::Denial;
use portcullis_core::RequestParts;

use crate::host::Host;
use crate::runtime::Runtime;

/// How the decided request continues.
pub enum Next {
    Continue,
    Paused,
}

pub fn deny(rt: &Runtime, rule: &str, shadow: bool, denial: &Denial, provider: Option<&str>) -> Next {
    let code = denial.code();
    if let Some(name) = provider {
        rt.metrics.count(&format!("portcullis.provider.{name}.denied.{code}"));
    }
    if shadow {
        rt.metrics.count(&format!("portcullis.requests.shadow_denied.{code}"));
        log::info!("rule `{rule}` (shadow) would deny: {code}");
        return Next::Continue;
    }
    rt.metrics.count(&format!("portcullis.requests.denied.{code}"));
    log::debug!("rule `{rule}` denied: {code}");
    let reply = denial.render(&rt.policy.realm);
    if let Err(status) = rt.host.send_local_reply(reply.status, &reply.headers, &reply.body) {
        log::error!("could not send the local reply ({status:?})");
    }
    Next::Paused
}

/// Refuses the request on the current context for a stateful check.
pub fn refuse(rt: &Runtime, denial: &Denial) -> Next {
    deny(rt, "(guard)", false, denial, None)
}

pub fn apply_edits(host: &dyn Host, request: &RequestParts, edits: &UpstreamEdits) {
    for (name, value) in &edits.set_headers {
        let _ = host.set_request_header(name, value);
    }
    if edits.remove_tokens.is_empty() {
        return;
    }
    // Core computes the request without the tokens; copy the affected parts back.
    let mut scrubbed = request.clone();
    for location in &edits.remove_tokens {
        location.remove_from(&mut scrubbed);
    }
    for location in &edits.remove_tokens {
        match location {
            TokenLocation::Header { name, .. } => replace_header(host, &scrubbed, name),
            TokenLocation::Cookie(_) => replace_header(host, &scrubbed, "cookie"),
            TokenLocation::Query(_) => {
                let _ = host.set_request_header(":path", &scrubbed.path);
            }
        }
    }
}

/// Replaces every value of `name` with the values it has in `scrubbed`.
fn replace_header(host: &dyn Host, scrubbed: &RequestParts, name: &str) {
    let _ = host.remove_request_header(name);
    for value in scrubbed.header_values(name) {
        let _ = host.add_request_header(name, value);
    }
}
