//! The hash chain: record format, hashing and the one way records are appended.
//!
//! `hash = SHA-256("portcullis-audit-v1\0" || JSON of the record with an empty hash)`.
//! The JSON covers every field, `seq` and `prevHash` included, in the struct's field
//! order, with object members sorted (serde_json's map), so re-encoding a parsed record
//! gives the same bytes and the same hash. Record 1 links to [`GENESIS_HASH`].
//!
//! [`append`] reads the log's head, seals the record onto it and appends it only if the
//! head is still the last entry ([`Store::log_append_if_last`]: a mutex in memory, a
//! write transaction in the embedded store, a Lua script in Redis); when another writer
//! got there first it reads the new head and seals again. The hash is computed here,
//! not in the store, because Redis Lua has no SHA-256.

use std::sync::Arc;

use portcullis_core::audit::DecisionRecord;
use portcullis_core::codec::hex;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::checkpoint::{self, Covered};
use super::AUDIT_LOG;
use crate::signing::SigningKeyPair;
use crate::store::{retry_compare_and_swap, CasRound, LogAppendError, Store, StoreError};

/// What record 1 links to.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

const DOMAIN: &[u8] = b"portcullis-audit-v1\0";

/// What a record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordKind {
    /// A write through the admin API; `actor` is the admin's identity.
    Admin,
    /// Something the control plane did on its own (scheduled rotation, reuse detection).
    System,
    /// A filter's allow/deny decision.
    Decision,
    /// A signed checkpoint over an earlier record.
    Checkpoint,
}

impl RecordKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordKind::Admin => "admin",
            RecordKind::System => "system",
            RecordKind::Decision => "decision",
            RecordKind::Checkpoint => "checkpoint",
        }
    }
}

/// One record of the chain, as stored and as the query API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    pub seq: u64,
    /// Unix milliseconds.
    pub time: u64,
    pub kind: RecordKind,
    pub actor: String,
    /// Dotted verb, e.g. `keys.rotate`, `revocation.jti`, `decision.deny`.
    pub action: String,
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<Value>,
    /// Decision records: what the filter reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<DecisionRecord>,
    /// Decision records: the batch they came in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_id: Option<String>,
    /// Checkpoint records: compact JWS over `{seq, hash, time}` of the covered record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
    /// Hex SHA-256 of the previous record ([`GENESIS_HASH`] for record 1).
    pub prev_hash: String,
    /// Hex SHA-256 of this record (see the module doc).
    pub hash: String,
}

impl AuditRecord {
    /// The hash this record's content gives (compare with [`AuditRecord::hash`]).
    pub fn content_hash(&self) -> String {
        let mut unhashed = self.clone();
        unhashed.hash.clear();
        // Serialising plain data to a Vec cannot fail; an empty body would only make
        // the record fail verification.
        let body = serde_json::to_vec(&unhashed).unwrap_or_default();
        let mut digest = Sha256::new();
        digest.update(DOMAIN);
        digest.update(&body);
        hex(&digest.finalize())
    }

    pub fn decode(data: &[u8]) -> Result<Self, StoreError> {
        serde_json::from_slice(data).map_err(|e| StoreError::CorruptData(format!("audit record: {e}")))
    }

    fn encode(&self) -> Result<Vec<u8>, StoreError> {
        serde_json::to_vec(self).map_err(|e| StoreError::InvalidArgument(format!("audit record: {e}")))
    }
}

/// The newest record's position, what the next record links to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// 0 for an empty log.
    pub seq: u64,
    pub hash: String,
}

/// The chain's head. An unreadable newest record is an error: nothing is appended to a
/// chain that cannot be continued.
pub async fn head(store: &dyn Store) -> Result<Head, StoreError> {
    Ok(match store.log_last(AUDIT_LOG).await? {
        None => Head { seq: 0, hash: GENESIS_HASH.to_owned() },
        Some(entry) => Head { seq: entry.seq, hash: AuditRecord::decode(&entry.data)?.hash },
    })
}

/// A checkpoint to sign when the record is sealed.
#[derive(Clone)]
pub struct CheckpointPlan {
    pub signer: Arc<SigningKeyPair>,
    /// `None`: the head the checkpoint is appended onto.
    pub covers: Option<Covered>,
}

/// A record before it has a place in the chain.
#[derive(Clone)]
pub struct Draft {
    time: u64,
    kind: RecordKind,
    actor: String,
    action: String,
    target: String,
    detail: Option<Value>,
    decision: Option<DecisionRecord>,
    batch_id: Option<String>,
    checkpoint: Option<CheckpointPlan>,
}

impl Draft {
    pub fn new(time: u64, kind: RecordKind, actor: &str, action: &str, target: &str) -> Self {
        Self {
            time,
            kind,
            actor: actor.to_owned(),
            action: action.to_owned(),
            target: target.to_owned(),
            detail: None,
            decision: None,
            batch_id: None,
            checkpoint: None,
        }
    }

    pub fn with_detail(mut self, detail: Option<Value>) -> Self {
        self.detail = detail;
        self
    }

    pub fn with_decision(mut self, decision: DecisionRecord, batch_id: &str) -> Self {
        self.decision = Some(decision);
        self.batch_id = Some(batch_id.to_owned());
        self
    }

    pub fn with_checkpoint(mut self, plan: CheckpointPlan) -> Self {
        self.checkpoint = Some(plan);
        self
    }

    /// The record this draft becomes when appended onto `head`.
    pub fn seal(&self, head: &Head) -> Result<AuditRecord, StoreError> {
        let checkpoint = match &self.checkpoint {
            None => None,
            Some(plan) => {
                let covered =
                    plan.covers.clone().unwrap_or(Covered { seq: head.seq, hash: head.hash.clone() });
                Some(checkpoint::sign(&plan.signer, &covered, self.time)?)
            }
        };
        let mut record = AuditRecord {
            seq: head.seq.saturating_add(1),
            time: self.time,
            kind: self.kind,
            actor: self.actor.clone(),
            action: self.action.clone(),
            target: self.target.clone(),
            detail: self.detail.clone(),
            decision: self.decision.clone(),
            batch_id: self.batch_id.clone(),
            checkpoint,
            prev_hash: head.hash.clone(),
            hash: String::new(),
        };
        record.hash = record.content_hash();
        Ok(record)
    }
}

/// Appends `draft` at the head of the chain; returns the record as stored. Gives up
/// with [`StoreError::Busy`] after [`crate::store::CAS_ATTEMPTS`] lost races.
pub async fn append(store: &dyn Store, draft: Draft) -> Result<AuditRecord, StoreError> {
    let draft = &draft;
    retry_compare_and_swap(StoreError::Busy("the audit log is contended".to_owned()), || async move {
        let head = head(store).await?;
        let record = draft.seal(&head)?;
        let expected = (head.seq > 0).then_some(head.seq);
        match store.log_append_if_last(AUDIT_LOG, expected, record.encode()?).await {
            Ok(_) => Ok(CasRound::Done(record)),
            Err(LogAppendError::Conflict { .. }) => Ok(CasRound::Lost),
            Err(LogAppendError::Store(e)) => Err(e),
        }
    })
    .await
}

/// Appends `drafts` at the head of the chain as one batch: all of them, consecutively,
/// or none. At most [`crate::store::MAX_PAGE_SIZE`].
pub async fn append_all(store: &dyn Store, drafts: &[Draft]) -> Result<Vec<AuditRecord>, StoreError> {
    retry_compare_and_swap(StoreError::Busy("the audit log is contended".to_owned()), || async move {
        let mut head = head(store).await?;
        let expected = (head.seq > 0).then_some(head.seq);
        let mut records = Vec::with_capacity(drafts.len());
        let mut encoded = Vec::with_capacity(drafts.len());
        for draft in drafts {
            let record = draft.seal(&head)?;
            head = Head { seq: record.seq, hash: record.hash.clone() };
            encoded.push(record.encode()?);
            records.push(record);
        }
        match store.log_append_batch_if_last(AUDIT_LOG, expected, encoded).await {
            Ok(_) => Ok(CasRound::Done(records)),
            Err(LogAppendError::Conflict { .. }) => Ok(CasRound::Lost),
            Err(LogAppendError::Store(e)) => Err(e),
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    #[tokio::test]
    async fn records_link_to_their_predecessor_and_hash_their_content() {
        let store = MemoryStore::new();
        let first = append(&store, Draft::new(1, RecordKind::System, "system", "a.b", "t")).await.unwrap();
        let second = append(&store, Draft::new(2, RecordKind::Admin, "admin:x", "c.d", "u")).await.unwrap();
        assert_eq!((first.seq, first.prev_hash.as_str()), (1, GENESIS_HASH));
        assert_eq!((second.seq, &second.prev_hash), (2, &first.hash));
        assert_eq!(second.hash, second.content_hash());
        let stored = AuditRecord::decode(&store.log_last(AUDIT_LOG).await.unwrap().unwrap().data).unwrap();
        assert_eq!(stored, second);

        let mut edited = second.clone();
        edited.target = "v".to_owned();
        assert_ne!(edited.content_hash(), second.hash, "every field is covered");
        let mut moved = second.clone();
        moved.seq = 3;
        assert_ne!(moved.content_hash(), second.hash, "the position is covered");
    }

    #[tokio::test]
    async fn concurrent_appends_keep_one_chain() {
        let store = Arc::new(MemoryStore::new());
        let writers: Vec<_> = (0..16u64)
            .map(|i| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    append(store.as_ref(), Draft::new(i, RecordKind::System, "system", "x", "y"))
                        .await
                        .unwrap()
                })
            })
            .collect();
        for writer in writers {
            writer.await.unwrap();
        }
        let entries = store.log_range(AUDIT_LOG, 1, 100).await.unwrap();
        let mut previous = GENESIS_HASH.to_owned();
        for entry in entries {
            let record = AuditRecord::decode(&entry.data).unwrap();
            assert_eq!(record.prev_hash, previous, "record {}", record.seq);
            previous = record.hash;
        }
    }
}
