//! The burst report's bodies (`POST /v1/burst/report`): requests per client address,
//! and the addresses the control plane blocks.

use serde::{Deserialize, Serialize};

/// `POST /v1/burst/report`.
pub const BURST_REPORT_PATH: &str = "/v1/burst/report";

/// `POST /v1/burst/report`: requests per client address since the last report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BurstReport {
    pub entries: Vec<BurstEntry>,
}

/// One address's requests in one report interval, with its latest request's details
/// (for the alert).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BurstEntry {
    pub ip: String,
    pub count: u64,
    #[serde(default)]
    pub route: String,
    #[serde(default)]
    pub method: String,
    #[serde(default)]
    pub user_agent: String,
}

/// The addresses of the report that are blocked, and for how long.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BurstReply {
    pub blocked: Vec<BlockedIp>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockedIp {
    pub ip: String,
    pub blocked_for_ms: u64,
}
