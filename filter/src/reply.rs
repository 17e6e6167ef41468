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

/// Denies (or, for a shadow rule, only counts) a request that rule `rule` (a
/// configured rule's name) decided; counted under that rule too.
pub fn deny(rt: &Runtime, rule: &str, shadow: bool, denial: &Denial, provider: Option<&str>) -> Next {
    carry_out(rt, (rule, Some(rule)), shadow, denial, provider)
}

/// Denies a request no rule decided: none matched (`(none)`), or it was refused
/// before the rules were matched (`(burst)`, `(path)`). Counted under no rule.
pub fn deny_outside_rules(rt: &Runtime, stage: &str, denial: &Denial) -> Next {
    carry_out(rt, (stage, None), false, denial, None)
}

/// Refuses the request on the current context for a stateful check, counted under
/// the request's rule (`rules[rule]`; `None`: no rule matched it).
pub fn refuse(rt: &Runtime, rule: Option<usize>, denial: &Denial) -> Next {
    match rule.and_then(|i| rt.policy.rules.get(i)) {
        Some(r) => deny(rt, &r.name, false, denial, None),
        None => deny_outside_rules(rt, "(no rule)", denial),
    }
}

/// Counts a request let through after every check, and under its rule
/// (`rules[rule]`; `None`: no rule matched it).
pub fn count_allowed(rt: &Runtime, rule: Option<usize>) {
    rt.metrics.count("portcullis.requests.allowed");
    let rule = rule.and_then(|i| rt.policy.rules.get(i));
    if let Some(r) = rule {
        rt.metrics.count(&format!("portcullis.rule.allowed.{}", r.name));
    }
    if let Some(audit) = &rt.audit {
        audit.decided(rule.map(|r| r.name.as_str()), None, &rt.metrics);
    }
}

/// `(label, counted_rule)`: the name logged, and the configured rule counted under.
///
/// Per-rule counters are `portcullis.rule.allowed.<rule>`,
/// `portcullis.rule.denied.<reason>.<rule>` and `portcullis.rule.shadow_denied.<reason>.<rule>`.
/// Rule names come from the configuration (letters, digits, `-`, `_`, `.`; unique) and
/// reasons are [`Denial::code`]'s fixed snake_case words, so the names are bounded by the
/// configuration. The rule name comes last, after fixed words and a reason without dots,
/// so the stat tags split every name the same way, dots and all (docs/observability.md).
fn carry_out(
    rt: &Runtime,
    (label, counted_rule): (&str, Option<&str>),
    shadow: bool,
    denial: &Denial,
    provider: Option<&str>,
) -> Next {
    let code = denial.code();
    if let Some(name) = provider {
        rt.metrics.count(&format!("portcullis.provider.{name}.denied.{code}"));
    }
    let outcome = if shadow { "shadow_denied" } else { "denied" };
    rt.metrics.count(&format!("portcullis.requests.{outcome}.{code}"));
    if let Some(rule) = counted_rule {
        rt.metrics.count(&format!("portcullis.rule.{outcome}.{code}.{rule}"));
    }
    if let Some(audit) = &rt.audit {
        audit.decided(Some(label), Some((code, shadow)), &rt.metrics);
    }
    if shadow {
        log::info!("rule `{label}` (shadow) would deny: {code}");
        return Next::Continue;
    }
    log::debug!("rule `{label}` denied: {code}");
    let mut reply = denial.render(&rt.policy.realm);
    if let (Denial::InvalidSignature(_), Some(rule)) = (denial, counted_rule) {
        let accept = rt.policy.rules.iter().find(|r| r.name == rule).and_then(|r| r.signatures.as_ref());
        if let Some(value) = accept.and_then(|s| s.accept_signature.as_ref()) {
            reply.headers.push(("accept-signature".to_string(), value.clone()));
        }
    }
    if let Err(status) = rt.host.send_local_reply(reply.status, &reply.headers, &reply.body) {
        log::error!("could not send the local reply ({status:?})");
    }
    Next::Paused
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
