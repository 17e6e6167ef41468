//! Decision batches from the filters (`POST /v1/audit/decisions`): each batch becomes
//! consecutive decision records of the chain, appended in one step, and is stored once
//! however often it is sent.
//!
//! Idempotence: a batch id is claimed in the store (a record that expires after
//! [`CLAIM_MS`]) before its records are appended and marked stored after, for
//! [`REMEMBER_MS`]. A resend while the first send is still in flight is answered
//! "busy" (retry later), a resend after it is answered "duplicate" and stores
//! nothing. A control plane that dies between appending and marking leaves a claim
//! that lapses, and a resend then stores the batch a second time: the one window left,
//! as narrow as one store write.

use portcullis_core::audit::{DecisionBatch, DecisionBatchReply, MAX_DECISIONS_PER_BATCH, MAX_FIELD_LEN};

use super::chain::{self, Draft, RecordKind};
use super::ACTOR_FLEET;
use crate::store::{Store, StoreError};

/// How long a batch id stays claimed while its records are appended.
pub const CLAIM_MS: u64 = 30_000;
/// How long a stored batch id is remembered (resends later than this store again).
pub const REMEMBER_MS: u64 = 7 * 24 * 3600 * 1000;

const CLAIMED: &[u8] = b"claimed";
const STORED: &[u8] = b"stored";

#[derive(Debug, thiserror::Error)]
pub enum DecisionsError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("the batch is being stored by another request; retry later")]
    InFlight,
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn batch_key(batch_id: &str) -> String {
    format!("audit:batch:{batch_id}")
}

fn validate(batch: &DecisionBatch) -> Result<(), DecisionsError> {
    let invalid = |m: String| Err(DecisionsError::InvalidRequest(m));
    if batch.batch_id.is_empty() || batch.batch_id.len() > MAX_FIELD_LEN {
        return invalid(format!("batchId must be 1 to {MAX_FIELD_LEN} bytes"));
    }
    if batch.batch_id.chars().any(char::is_control) {
        return invalid("batchId may not contain control characters".to_owned());
    }
    if batch.decisions.is_empty() || batch.decisions.len() > MAX_DECISIONS_PER_BATCH {
        return invalid(format!("a batch holds 1 to {MAX_DECISIONS_PER_BATCH} decisions"));
    }
    for (i, decision) in batch.decisions.iter().enumerate() {
        if decision.text_fields().iter().flatten().any(|f| f.len() > MAX_FIELD_LEN) {
            return invalid(format!("decisions[{i}]: fields are at most {MAX_FIELD_LEN} bytes"));
        }
    }
    Ok(())
}

/// The draft record of one decision. The record's time is when the control plane
/// received it (so the chain's times come from one kind of clock and retention cannot
/// be steered by a filter's clock); the filter's own time stays in the decision.
fn draft(decision: &portcullis_core::audit::DecisionRecord, batch_id: &str, now_ms: u64) -> Draft {
    let target = decision.subject.as_deref().or(decision.client.as_deref()).unwrap_or("");
    let action = format!("decision.{}", decision.decision.as_str());
    Draft::new(now_ms, RecordKind::Decision, ACTOR_FLEET, &action, target)
        .with_decision(decision.clone(), batch_id)
}

/// Stores `batch` unless it was stored before.
pub async fn ingest(
    store: &dyn Store,
    batch: &DecisionBatch,
    now_ms: u64,
) -> Result<DecisionBatchReply, DecisionsError> {
    validate(batch)?;
    let key = batch_key(&batch.batch_id);
    let claim_until = now_ms.saturating_add(CLAIM_MS);
    if !store.record_compare_and_swap(&key, None, Some(CLAIMED.to_vec()), Some(claim_until), now_ms).await? {
        return match store.record_get(&key, now_ms).await?.as_deref() {
            Some(STORED) => {
                Ok(DecisionBatchReply { batch_id: batch.batch_id.clone(), stored: 0, duplicate: true })
            }
            _ => Err(DecisionsError::InFlight),
        };
    }
    let drafts: Vec<Draft> = batch.decisions.iter().map(|d| draft(d, &batch.batch_id, now_ms)).collect();
    if let Err(e) = chain::append_all(store, &drafts).await {
        // Let a resend try again at once rather than after the claim lapses.
        if let Err(release) = store.record_delete(&key).await {
            tracing::warn!(error = %release, "could not release a decision batch claim");
        }
        return Err(e.into());
    }
    store.record_put(&key, STORED.to_vec(), Some(now_ms.saturating_add(REMEMBER_MS)), now_ms).await?;
    Ok(DecisionBatchReply { batch_id: batch.batch_id.clone(), stored: drafts.len(), duplicate: false })
}

#[cfg(test)]
mod tests {
    use portcullis_core::audit::{Decision, DecisionRecord};

    use super::*;
    use crate::audit::AUDIT_LOG;
    use crate::store::MemoryStore;

    fn batch(id: &str, n: u64) -> DecisionBatch {
        let decisions = (0..n)
            .map(|i| DecisionRecord {
                subject: Some(format!("user{i}")),
                client: Some("192.0.2.1".to_owned()),
                rule: Some("api".to_owned()),
                reason: Some("expired_token".to_owned()),
                ..DecisionRecord::new(i, Decision::Deny)
            })
            .collect();
        DecisionBatch { batch_id: id.to_owned(), decisions }
    }

    #[tokio::test]
    async fn a_resent_batch_is_stored_once() {
        let store = MemoryStore::new();
        let first = ingest(&store, &batch("b1", 3), 10).await.unwrap();
        assert_eq!((first.stored, first.duplicate), (3, false));
        let again = ingest(&store, &batch("b1", 3), 20).await.unwrap();
        assert_eq!((again.stored, again.duplicate), (0, true));
        assert_eq!(store.log_last(AUDIT_LOG).await.unwrap().unwrap().seq, 3);
        ingest(&store, &batch("b2", 2), 30).await.unwrap();
        assert_eq!(store.log_last(AUDIT_LOG).await.unwrap().unwrap().seq, 5);
    }

    #[tokio::test]
    async fn a_batch_in_flight_is_refused_until_its_claim_lapses() {
        let store = MemoryStore::new();
        store.record_put(&batch_key("b1"), CLAIMED.to_vec(), Some(CLAIM_MS), 0).await.unwrap();
        assert!(matches!(ingest(&store, &batch("b1", 1), 1).await, Err(DecisionsError::InFlight)));
        let reply = ingest(&store, &batch("b1", 1), CLAIM_MS).await.unwrap();
        assert_eq!((reply.stored, reply.duplicate), (1, false));
    }

    #[tokio::test]
    async fn oversized_or_empty_batches_are_refused() {
        let store = MemoryStore::new();
        assert!(matches!(ingest(&store, &batch("", 1), 0).await, Err(DecisionsError::InvalidRequest(_))));
        assert!(matches!(ingest(&store, &batch("b", 0), 0).await, Err(DecisionsError::InvalidRequest(_))));
        let mut long = batch("b", 1);
        long.decisions[0].rule = Some("r".repeat(MAX_FIELD_LEN + 1));
        assert!(matches!(ingest(&store, &long, 0).await, Err(DecisionsError::InvalidRequest(_))));
        let big = batch("b", MAX_DECISIONS_PER_BATCH as u64 + 1);
        assert!(matches!(ingest(&store, &big, 0).await, Err(DecisionsError::InvalidRequest(_))));
        assert!(store.log_last(AUDIT_LOG).await.unwrap().is_none());
    }
}
