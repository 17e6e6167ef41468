//! Retention: records older than the retention period are purged, oldest first, behind
//! an anchor checkpoint so what is kept still verifies.
//!
//! Before trimming, a checkpoint over the last record to go is appended (signed, so
//! nobody without the signing key can make one): [`super::verify::verify`] accepts a
//! chain that starts after record 1 only when such a checkpoint vouches for the hash
//! its oldest record links to. The newest record is never purged.

use std::sync::Arc;

use super::chain::{self, AuditRecord, CheckpointPlan, Draft, RecordKind};
use super::checkpoint::Covered;
use super::{ACTOR_SYSTEM, AUDIT_LOG};
use crate::signing::SigningKeyPair;
use crate::store::{Store, StoreError, MAX_PAGE_SIZE};

/// Purges the records older than `now_ms - retention_ms`; returns how many went.
pub async fn purge(
    store: &dyn Store,
    signer: Arc<SigningKeyPair>,
    retention_ms: u64,
    now_ms: u64,
) -> Result<u64, StoreError> {
    let cutoff = now_ms.saturating_sub(retention_ms);
    let Some(head) = store.log_last(AUDIT_LOG).await?.map(|e| e.seq) else {
        return Ok(0);
    };
    let Some((oldest, last_purged)) = last_record_before(store, cutoff, head).await? else {
        return Ok(0);
    };
    let covers = Some(Covered { seq: last_purged.seq, hash: last_purged.hash });
    let draft = Draft::new(now_ms, RecordKind::Checkpoint, ACTOR_SYSTEM, "audit.retention", "")
        .with_detail(Some(serde_json::json!({ "purgedFrom": oldest, "purgedThrough": last_purged.seq })))
        .with_checkpoint(CheckpointPlan { signer, covers });
    chain::append(store, draft).await?;
    let mut purged = 0;
    loop {
        let dropped = store.log_trim(AUDIT_LOG, last_purged.seq + 1).await?;
        if dropped == 0 {
            break;
        }
        purged += dropped;
    }
    Ok(purged)
}

/// The oldest kept record's seq and the newest record, from the oldest on, older than
/// `cutoff` (the walk stops at the first record not older); `None` when nothing is.
/// The head is never a candidate.
async fn last_record_before(
    store: &dyn Store,
    cutoff: u64,
    head: u64,
) -> Result<Option<(u64, AuditRecord)>, StoreError> {
    let mut oldest = None;
    let mut candidate: Option<AuditRecord> = None;
    let mut next = 1;
    while next < head {
        let page = store.log_range(AUDIT_LOG, next, MAX_PAGE_SIZE).await?;
        let Some(last) = page.last() else { break };
        next = last.seq.saturating_add(1);
        for entry in page {
            oldest.get_or_insert(entry.seq);
            let record = AuditRecord::decode(&entry.data)?;
            if record.time >= cutoff || entry.seq >= head {
                return Ok(oldest.zip(candidate));
            }
            candidate = Some(record);
        }
    }
    Ok(oldest.zip(candidate))
}
