//! Reading the audit log: newest first (or oldest first, for export), filtered, one page
//! at a time.
//!
//! A page ends after `limit` matching records or after [`MAX_SCANNED`] records looked
//! at, whichever comes first, so a filter that matches nothing costs a bounded read;
//! `nextCursor` continues the walk either way (absent: nothing more). The cursor is a
//! sequence number, so pages stay stable while records are appended.

use serde::{Deserialize, Serialize};

use super::chain::AuditRecord;
use super::AUDIT_LOG;
use crate::store::{Store, StoreError, MAX_PAGE_SIZE};

/// Records returned per page unless the query says otherwise.
pub const DEFAULT_LIMIT: usize = 100;
/// Most records a page returns.
pub const MAX_LIMIT: usize = 1000;
/// Most records one page looks at.
pub const MAX_SCANNED: u64 = 20_000;

/// Walk direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Order {
    /// Newest first; the cursor is the oldest record returned so far.
    #[default]
    Desc,
    /// Oldest first; the cursor is the newest record returned so far.
    Asc,
}

/// `GET /admin/v1/audit` query parameters; every filter given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuditQuery {
    /// The token subject of a decision, or the target of an admin record.
    pub subject: Option<String>,
    /// The client address of a decision: as recorded (`hash:…` or the address), or an
    /// address whose keyed hashes are in [`AuditQuery::ip_hashes`].
    pub ip: Option<String>,
    /// A decision's `x-request-id`.
    pub request_id: Option<String>,
    /// What `ip` is recorded as when the filter hashes addresses (one per fleet
    /// credential accepted); filled in by the handler, never from the query string.
    #[serde(skip)]
    pub ip_hashes: Vec<String>,
    /// The rule of a decision.
    pub rule: Option<String>,
    /// `allow`, `deny` or `shadow_deny`.
    pub decision: Option<String>,
    /// A decision's reason.
    pub reason: Option<String>,
    /// The action, or its prefix up to a dot (`keys` matches `keys.rotate`).
    pub action: Option<String>,
    /// The actor, or its kind (`admin` matches `admin:3f2a…`).
    pub actor: Option<String>,
    /// Records at or after this Unix millisecond.
    pub since: Option<u64>,
    /// Records before this Unix millisecond.
    pub until: Option<u64>,
    pub limit: Option<usize>,
    pub cursor: Option<u64>,
    pub order: Option<Order>,
}

impl AuditQuery {
    pub fn matches(&self, record: &AuditRecord) -> bool {
        let decision = record.decision.as_ref();
        let field = |wanted: &Option<String>, actual: Option<&str>| {
            wanted.as_deref().is_none_or(|wanted| actual == Some(wanted))
        };
        let subject = decision.and_then(|d| d.subject.as_deref()).or(match decision {
            None => Some(record.target.as_str()),
            Some(_) => None,
        });
        field(&self.subject, subject)
            && self.ip_matches(decision.and_then(|d| d.client.as_deref()))
            && field(&self.request_id, decision.and_then(|d| d.request_id.as_deref()))
            && field(&self.rule, decision.and_then(|d| d.rule.as_deref()))
            && field(&self.decision, decision.map(|d| d.decision.as_str()))
            && field(&self.reason, decision.and_then(|d| d.reason.as_deref()))
            && self.action.as_deref().is_none_or(|a| dotted_prefix(&record.action, a, '.'))
            && self.actor.as_deref().is_none_or(|a| dotted_prefix(&record.actor, a, ':'))
            && self.since.is_none_or(|since| record.time >= since)
            && self.until.is_none_or(|until| record.time < until)
    }
}

impl AuditQuery {
    fn ip_matches(&self, client: Option<&str>) -> bool {
        let Some(wanted) = self.ip.as_deref() else { return true };
        client.is_some_and(|c| c == wanted || self.ip_hashes.iter().any(|h| h == c))
    }
}

/// `value` is `wanted` or starts with `wanted` followed by `separator`.
fn dotted_prefix(value: &str, wanted: &str, separator: char) -> bool {
    value == wanted || value.strip_prefix(wanted).is_some_and(|rest| rest.starts_with(separator))
}

/// One page of records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditPage {
    pub records: Vec<AuditRecord>,
    /// Pass as `cursor` for the next page; absent when the walk is over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<u64>,
}

/// The page of `query`.
pub async fn list(store: &dyn Store, query: &AuditQuery) -> Result<AuditPage, StoreError> {
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
    let Some(head) = store.log_last(AUDIT_LOG).await?.map(|e| e.seq) else {
        return Ok(AuditPage { records: Vec::new(), next_cursor: None });
    };
    match query.order.unwrap_or_default() {
        Order::Desc => newest_first(store, query, head, limit).await,
        Order::Asc => oldest_first(store, query, head, limit).await,
    }
}

async fn newest_first(
    store: &dyn Store,
    query: &AuditQuery,
    head: u64,
    limit: usize,
) -> Result<AuditPage, StoreError> {
    // Records before `upto` (exclusive) are still to be looked at.
    let mut upto = query.cursor.unwrap_or(head.saturating_add(1)).min(head.saturating_add(1));
    let oldest = store.log_range(AUDIT_LOG, 1, 1).await?.first().map_or(1, |e| e.seq);
    let mut records = Vec::new();
    let mut scanned = 0u64;
    while upto > oldest && records.len() < limit && scanned < MAX_SCANNED {
        let from = upto.saturating_sub(MAX_PAGE_SIZE as u64).max(oldest);
        let page = store.log_range(AUDIT_LOG, from, (upto - from) as usize).await?;
        for entry in page.iter().rev() {
            scanned += 1;
            upto = entry.seq;
            let record = AuditRecord::decode(&entry.data)?;
            if query.matches(&record) {
                records.push(record);
                if records.len() == limit {
                    break;
                }
            }
        }
        if page.is_empty() {
            upto = from;
        }
    }
    Ok(AuditPage { records, next_cursor: (upto > oldest).then_some(upto) })
}

async fn oldest_first(
    store: &dyn Store,
    query: &AuditQuery,
    head: u64,
    limit: usize,
) -> Result<AuditPage, StoreError> {
    // Records after `after` (exclusive) are still to be looked at.
    let mut after = query.cursor.unwrap_or(0);
    let mut records = Vec::new();
    let mut scanned = 0u64;
    while after < head && records.len() < limit && scanned < MAX_SCANNED {
        let page = store.log_range(AUDIT_LOG, after + 1, MAX_PAGE_SIZE).await?;
        if page.is_empty() {
            break;
        }
        for entry in &page {
            scanned += 1;
            after = entry.seq;
            let record = AuditRecord::decode(&entry.data)?;
            if query.matches(&record) {
                records.push(record);
                if records.len() == limit {
                    break;
                }
            }
        }
    }
    Ok(AuditPage { records, next_cursor: (after < head).then_some(after) })
}
