//! Wire types of the audit log's decision records: what a filter reports to the
//! control plane (`POST` [`DECISIONS_PATH`], fleet credential) about the requests it
//! allowed or denied, batched off the request path.
//!
//! A batch carries an id the filter picks (random, or a counter with its instance
//! name): the control plane stores a batch once however often it is sent, so a filter
//! may resend a batch whose answer it never got. Records carry ids and names only,
//! never a token, a header value or a body.
//!
//! The filter's side (what it records, sampling, the shared buffer and the batches) is
//! in [`config`], [`event`] and [`buffer`].

pub mod buffer;
pub mod config;
pub mod event;

use serde::{Deserialize, Serialize};

/// Where a filter sends decision batches.
pub const DECISIONS_PATH: &str = "/v1/audit/decisions";

/// Most records in one batch.
pub const MAX_DECISIONS_PER_BATCH: usize = 500;

/// Longest batch id, and longest value of any text field of a record.
pub const MAX_FIELD_LEN: usize = 256;

/// What the filter did with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Allow,
    Deny,
    /// A shadow rule would have denied; the request went on.
    ShadowDeny,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
            Decision::ShadowDeny => "shadow_deny",
        }
    }

    /// The decision named `text` (as [`Decision::as_str`] spells it).
    pub fn parse(text: &str) -> Option<Self> {
        [Decision::Allow, Decision::Deny, Decision::ShadowDeny].into_iter().find(|d| d.as_str() == text)
    }
}

/// What the subject of a decision names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubjectKind {
    /// A JWT's `sub`.
    Jwt,
    /// An API token's id.
    ApiToken,
    /// A signed request's HMAC key id.
    HmacKey,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// One decision the filter made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DecisionRecord {
    /// When the decision was made, Unix milliseconds.
    pub time_ms: u64,
    pub decision: Decision,
    /// The request's `x-request-id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Who: a JWT's `sub`, an API token's id or an HMAC key id, once verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// What [`DecisionRecord::subject`] names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_kind: Option<SubjectKind>,
    /// The client address the filter resolved: the address itself, or (the default)
    /// `hash:` and its keyed hash under the fleet credential (see `fleet::FeedKey`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// The name of the rule that decided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Why (a denial's reason code, e.g. `expired_token`, `rate_limited`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Method and path pattern or route name, for context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The request path, without its query unless the filter is configured to keep it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The response status the client got.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// A rate limit refused the request.
    #[serde(default, skip_serializing_if = "is_false")]
    pub rate_limited: bool,
    /// Account lockout refused the request.
    #[serde(default, skip_serializing_if = "is_false")]
    pub locked_out: bool,
    /// Burst detection refused the request's address.
    #[serde(default, skip_serializing_if = "is_false")]
    pub burst: bool,
    /// From the request's headers to the end of its response, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
}

impl DecisionRecord {
    /// A record of `decision` at `time_ms` with nothing else known.
    pub fn new(time_ms: u64, decision: Decision) -> Self {
        DecisionRecord {
            time_ms,
            decision,
            request_id: None,
            subject: None,
            subject_kind: None,
            client: None,
            rule: None,
            reason: None,
            route: None,
            method: None,
            path: None,
            status: None,
            rate_limited: false,
            locked_out: false,
            burst: false,
            latency_ms: None,
        }
    }

    /// The text fields, for length checks.
    pub fn text_fields(&self) -> [Option<&str>; 8] {
        [
            self.request_id.as_deref(),
            self.method.as_deref(),
            self.path.as_deref(),
            self.subject.as_deref(),
            self.client.as_deref(),
            self.rule.as_deref(),
            self.reason.as_deref(),
            self.route.as_deref(),
        ]
    }
}

/// `POST /v1/audit/decisions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DecisionBatch {
    /// Unique per batch; a batch sent again with the same id is stored once.
    pub batch_id: String,
    pub decisions: Vec<DecisionRecord>,
}

/// The answer to a decision batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DecisionBatchReply {
    pub batch_id: String,
    /// How many records this batch added to the log (0 when it was stored before).
    pub stored: usize,
    /// The batch had been stored before; nothing was added.
    pub duplicate: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn a_batch_round_trips_and_refuses_unknown_fields() {
        let json = r#"{"batchId":"b1","decisions":[{"timeMs":5,"decision":"deny","subject":"alice","reason":"expired_token"}]}"#;
        let batch: DecisionBatch = serde_json::from_str(json).unwrap();
        assert_eq!(batch.decisions[0].decision, Decision::Deny);
        assert_eq!(serde_json::to_string(&batch).unwrap(), json);
        let extra = r#"{"batchId":"b1","decisions":[],"token":"x"}"#;
        assert!(serde_json::from_str::<DecisionBatch>(extra).is_err());
    }

    #[test]
    fn the_filter_fields_round_trip_and_false_flags_are_left_out() {
        let json = r#"{"timeMs":5,"decision":"shadow_deny","requestId":"r1","subject":"k1","subjectKind":"hmac_key","client":"hash:x","rule":"api","reason":"rate_limited","method":"GET","path":"/a","status":200,"rateLimited":true,"latencyMs":3}"#;
        let record: DecisionRecord = serde_json::from_str(json).unwrap();
        assert_eq!(record.decision, Decision::ShadowDeny);
        assert_eq!(record.subject_kind, Some(SubjectKind::HmacKey));
        assert!(record.rate_limited && !record.locked_out && !record.burst);
        assert_eq!(serde_json::to_string(&record).unwrap(), json);
        assert_eq!(Decision::parse("shadow_deny"), Some(Decision::ShadowDeny));
        assert_eq!(Decision::parse("maybe"), None);
    }
}
