//! Wire types of the audit log's decision records: what a filter reports to the
//! control plane (`POST` [`DECISIONS_PATH`], fleet credential) about the requests it
//! allowed or denied, batched off the request path.
//!
//! A batch carries an id the filter picks (random, or a counter with its instance
//! name): the control plane stores a batch once however often it is sent, so a filter
//! may resend a batch whose answer it never got. Records carry ids and names only,
//! never a token, a header value or a body.

use serde::{Deserialize, Serialize};

/// Where a filter sends decision batches.
pub const DECISIONS_PATH: &str = "/v1/audit/decisions";

/// Most records in one batch.
pub const MAX_DECISIONS_PER_BATCH: usize = 500;

/// Longest batch id, and longest value of any text field of a record.
pub const MAX_FIELD_LEN: usize = 256;

/// What the filter did with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Allow,
    Deny,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Deny => "deny",
        }
    }
}

/// One decision the filter made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DecisionRecord {
    /// When the decision was made, Unix milliseconds.
    pub time_ms: u64,
    pub decision: Decision,
    /// The token's subject, when a token was verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The client address the filter resolved.
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
}

impl DecisionRecord {
    /// The text fields, for length checks.
    pub fn text_fields(&self) -> [Option<&str>; 5] {
        [
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

    #[test]
    fn a_batch_round_trips_and_refuses_unknown_fields() {
        let json = r#"{"batchId":"b1","decisions":[{"timeMs":5,"decision":"deny","subject":"alice","reason":"expired_token"}]}"#;
        let batch: DecisionBatch = serde_json::from_str(json).unwrap();
        assert_eq!(batch.decisions[0].decision, Decision::Deny);
        assert_eq!(serde_json::to_string(&batch).unwrap(), json);
        let extra = r#"{"batchId":"b1","decisions":[],"token":"x"}"#;
        assert!(serde_json::from_str::<DecisionBatch>(extra).is_err());
    }
}
