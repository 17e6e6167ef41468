//! Building the record of one decision from what the filter saw: every text field
//! bounded (at most [`MAX_FIELD_LEN`] bytes, control characters replaced), the query
//! left out of the path unless configured, the client address hashed unless
//! configured, the flags derived from the reason.

use super::config::{AuditSettings, ClientAddressMode};
use super::{Decision, DecisionRecord, SubjectKind, MAX_FIELD_LEN};
use crate::fleet::FeedKey;

/// What the pipeline knows when it decides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// `None`: allowed.
    pub denial: Option<Denied>,
    pub rule: Option<String>,
    pub subject: Option<(SubjectKind, String)>,
}

/// A denial (or a shadow rule's would-be denial).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    /// The reason code (`Denial::code`).
    pub reason: &'static str,
    pub shadow: bool,
}

/// What the request looked like.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    pub request_id: Option<String>,
    pub method: String,
    /// `:path` as received.
    pub path: String,
    /// The client address the filter resolved.
    pub client_ip: Option<String>,
    /// When its headers arrived (Unix ms).
    pub start_ms: u64,
}

/// `text` cut to [`MAX_FIELD_LEN`] bytes on a character boundary, control characters
/// replaced with `?` (a header value cannot forge lines in an export).
pub fn bounded(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_FIELD_LEN));
    for c in text.chars() {
        let c = if c.is_control() { '?' } else { c };
        if out.len() + c.len_utf8() > MAX_FIELD_LEN {
            break;
        }
        out.push(c);
    }
    out
}

/// The path as recorded: without its query (and fragment) unless `keep_query`.
pub fn recorded_path(path: &str, keep_query: bool) -> String {
    let path = if keep_query { path } else { path.split(['?', '#']).next().unwrap_or("") };
    bounded(path)
}

/// The client address as recorded.
pub fn recorded_client(ip: Option<&str>, mode: ClientAddressMode, key: &FeedKey) -> Option<String> {
    let ip = ip?;
    match mode {
        ClientAddressMode::Hashed => Some(key.client_address(ip)),
        ClientAddressMode::Raw => Some(bounded(ip)),
        ClientAddressMode::Omit => None,
    }
}

/// The record of a decision, once the response's `status` is known at `now_ms`.
pub fn build(
    settings: &AuditSettings,
    seen: &Seen,
    outcome: &Outcome,
    status: Option<u16>,
    now_ms: u64,
) -> DecisionRecord {
    let (decision, reason) = match &outcome.denial {
        None => (Decision::Allow, None),
        Some(Denied { reason, shadow: false }) => (Decision::Deny, Some(*reason)),
        Some(Denied { reason, shadow: true }) => (Decision::ShadowDeny, Some(*reason)),
    };
    DecisionRecord {
        time_ms: seen.start_ms,
        decision,
        request_id: seen.request_id.as_deref().map(bounded),
        subject: outcome.subject.as_ref().map(|(_, s)| bounded(s)),
        subject_kind: outcome.subject.as_ref().map(|(k, _)| *k),
        client: recorded_client(
            seen.client_ip.as_deref(),
            settings.client_address,
            &settings.control_plane.feed_key,
        ),
        rule: outcome.rule.as_deref().map(bounded),
        reason: reason.map(str::to_string),
        route: None,
        method: Some(bounded(&seen.method)),
        path: Some(recorded_path(&seen.path, settings.keep_query)),
        status,
        rate_limited: reason == Some("rate_limited"),
        locked_out: reason == Some("locked_out"),
        burst: reason == Some("address_blocked"),
        latency_ms: Some(now_ms.saturating_sub(seen.start_ms)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn settings(json: &str) -> AuditSettings {
        crate::audit::config::tests::settings(json).unwrap()
    }

    fn seen() -> Seen {
        Seen {
            request_id: Some("req-1".into()),
            method: "POST".into(),
            path: "/login?user=alice&password=x".into(),
            client_ip: Some("192.0.2.7".into()),
            start_ms: 1_000,
        }
    }

    #[test]
    fn a_denial_is_recorded_with_its_flags_hashed_address_and_no_query() {
        let s = settings("{}");
        let outcome = Outcome {
            denial: Some(Denied { reason: "locked_out", shadow: false }),
            rule: Some("login".into()),
            subject: Some((SubjectKind::Jwt, "alice".into())),
        };
        let r = build(&s, &seen(), &outcome, Some(429), 1_012);
        assert_eq!(
            (r.decision, r.reason.as_deref(), r.status),
            (Decision::Deny, Some("locked_out"), Some(429))
        );
        assert!(r.locked_out && !r.rate_limited && !r.burst);
        assert_eq!(r.path.as_deref(), Some("/login"));
        assert_eq!(r.client, Some(s.control_plane.feed_key.client_address("192.0.2.7")));
        assert!(!r.client.as_deref().unwrap().contains("192.0.2.7"));
        assert_eq!((r.time_ms, r.latency_ms), (1_000, Some(12)));
        assert_eq!((r.subject.as_deref(), r.subject_kind), (Some("alice"), Some(SubjectKind::Jwt)));
    }

    #[test]
    fn shadow_denies_raw_addresses_and_kept_queries_are_as_configured() {
        let s = settings(r#"{"clientAddress":"raw","keepQuery":true}"#);
        let outcome =
            Outcome { denial: Some(Denied { reason: "rate_limited", shadow: true }), ..Outcome::default() };
        let r = build(&s, &seen(), &outcome, Some(200), 900);
        assert_eq!(r.decision, Decision::ShadowDeny);
        assert!(r.rate_limited);
        assert_eq!(r.client.as_deref(), Some("192.0.2.7"));
        assert_eq!(r.path.as_deref(), Some("/login?user=alice&password=x"));
        assert_eq!(r.latency_ms, Some(0), "a clock going back gives 0");
        let omit = settings(r#"{"clientAddress":"omit"}"#);
        assert_eq!(build(&omit, &seen(), &Outcome::default(), None, 1_000).client, None);
    }

    #[test]
    fn text_is_bounded_on_a_character_boundary_without_control_characters() {
        let long = "é".repeat(MAX_FIELD_LEN);
        let cut = bounded(&long);
        assert!(cut.len() <= MAX_FIELD_LEN && cut.len() >= MAX_FIELD_LEN - 1);
        assert_eq!(bounded("a\nb\u{7f}"), "a?b?");
        let mut s = seen();
        s.request_id = Some("x".repeat(10_000));
        let r = build(&settings("{}"), &s, &Outcome::default(), None, 1_000);
        assert!(r.text_fields().iter().flatten().all(|f| f.len() <= MAX_FIELD_LEN));
        assert_eq!(recorded_path("/a#frag", false), "/a");
    }
}
