//! What the feed and the usage reports carry.

use serde::{Deserialize, Serialize};

/// One token as the feed ships it: everything a filter needs to decide, and no secret.
/// Unknown fields are ignored, so the control plane can add fields without breaking
/// deployed filters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiTokenEntry {
    /// The lookup id ([`LOOKUP_LEN`](super::LOOKUP_LEN) base62 characters).
    pub lookup: String,
    /// [`Verifier::encode`](super::Verifier::encode) of the secret.
    pub verifier: String,
    /// The user the token acts for.
    pub user: String,
    pub scopes: Vec<String>,
    /// Unix seconds; the token is refused from then on.
    pub expires_at: u64,
    /// Unix seconds; absent while the token is not revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<u64>,
}

/// Which part of which snapshot a page is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiTokenSnapshotPart {
    /// Every part of one snapshot carries the same id.
    pub id: String,
    /// 0, 1, 2, …
    pub part: u32,
    /// The last part.
    pub last: bool,
}

/// One page of `GET /v1/api-tokens/feed?cursor=<cursor>&limit=<n>`: either changes after
/// the cursor (`snapshot` absent: each entry replaces the replica's record of its
/// lookup) or one part of a snapshot of every token not yet expired (sent when the
/// follower has no cursor or one that cannot be continued).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiTokenFeedPage {
    /// Send back as `cursor` to continue.
    pub cursor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<ApiTokenSnapshotPart>,
    #[serde(default)]
    pub tokens: Vec<ApiTokenEntry>,
    /// More is waiting: ask again right away.
    #[serde(default)]
    pub more: bool,
}

/// `POST /v1/api-tokens/usage`: tokens used since the last report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UsageReport {
    /// Lookup ids, each once per report.
    pub used: Vec<String>,
}

/// What the control plane did with a usage report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageReply {
    /// Tokens whose `lastUsedAt` was written (the rest were written less than a minute
    /// ago, or are unknown).
    pub updated: u32,
}
