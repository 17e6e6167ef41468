//! Walks the chain from its oldest kept record to its head and answers "intact
//! through record N", or names the first record that fails and how:
//!
//! - `gap`: a sequence number is missing (a record was deleted);
//! - `order`: a record claims another position than the one it is stored at;
//! - `corrupt`: a record is not a record;
//! - `hash`: a record's content does not give its hash (it was edited);
//! - `link`: a record does not link to the hash of the one before it;
//! - `signature`: a checkpoint's signature does not verify (forged, or signed by a
//!   revoked key);
//! - `checkpoint`: a checkpoint vouches for a hash the covered record does not have
//!   (the chain was rewritten and rehashed before it);
//! - `anchor`: the log starts after record 1 and no valid checkpoint vouches for the
//!   record before its oldest (records were removed from the start).
//!
//! Records after the newest checkpoint are covered by the chain only: deleting them all
//! from the end cannot be told from their never having been written. Checkpoint often
//! (the control plane does every maintenance pass) to keep that window short.

use portcullis_core::jwt::KeySet;
use serde::{Deserialize, Serialize};

use super::chain::{AuditRecord, GENESIS_HASH};
use super::checkpoint;
use super::AUDIT_LOG;
use crate::store::{Store, StoreError, MAX_PAGE_SIZE};

/// How a record failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureKind {
    Gap,
    Order,
    Corrupt,
    Hash,
    Link,
    Signature,
    Checkpoint,
    Anchor,
}

/// The first failure found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    /// The record that fails (for a gap: the first missing sequence number).
    pub seq: u64,
    pub kind: FailureKind,
    pub message: String,
}

/// The answer of `GET /admin/v1/audit/verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Verification {
    pub intact: bool,
    /// The oldest kept record (`None`: the log is empty).
    pub first_seq: Option<u64>,
    /// The newest record looked at.
    pub last_seq: Option<u64>,
    /// Every record up to here verified (`None`: not even the first).
    pub intact_through: Option<u64>,
    /// The newest record a valid checkpoint vouches for.
    pub signed_through: Option<u64>,
    pub checkpoints: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
}

/// Walks the whole chain; checkpoints verify against `keys`.
pub async fn verify(store: &dyn Store, keys: &KeySet) -> Result<Verification, StoreError> {
    let head = store.log_last(AUDIT_LOG).await?.map_or(0, |e| e.seq);
    let mut walk = Walk::default();
    let mut next = 1;
    while next <= head {
        let page = store.log_range(AUDIT_LOG, next, MAX_PAGE_SIZE).await?;
        let Some(last) = page.last() else {
            // The head exists, so sequence numbers up to it are missing.
            let missing = walk.previous.as_ref().map_or(next, |(seq, _)| seq + 1);
            let message = format!("records from {missing} on are missing");
            return Ok(walk.finish(Some(Failure { seq: missing, kind: FailureKind::Gap, message })));
        };
        next = last.seq.saturating_add(1);
        for entry in page {
            if let Err(failure) = walk.step(store, keys, entry.seq, &entry.data).await? {
                return Ok(walk.finish(Some(failure)));
            }
        }
    }
    let failure = walk.unanchored();
    Ok(walk.finish(failure))
}

#[derive(Default)]
struct Walk {
    first_seq: Option<u64>,
    /// The last record verified and its hash.
    previous: Option<(u64, String)>,
    /// When the log starts after record 1: the hash the record before must have had.
    anchor: Option<(u64, String)>,
    anchored: bool,
    signed_through: Option<u64>,
    checkpoints: u64,
    last_seen: Option<u64>,
}

impl Walk {
    async fn step(
        &mut self,
        store: &dyn Store,
        keys: &KeySet,
        seq: u64,
        data: &[u8],
    ) -> Result<Result<(), Failure>, StoreError> {
        let fail = |seq, kind, message: String| Ok(Err(Failure { seq, kind, message }));
        self.last_seen = Some(seq);
        let expected_prev = match &self.previous {
            Some((prev_seq, hash)) => {
                if seq != prev_seq + 1 {
                    let missing = prev_seq + 1;
                    return fail(
                        missing,
                        FailureKind::Gap,
                        format!("records {missing} to {} are missing", seq - 1),
                    );
                }
                hash.clone()
            }
            None => {
                self.first_seq = Some(seq);
                String::new()
            }
        };
        let Ok(record) = AuditRecord::decode(data) else {
            return fail(seq, FailureKind::Corrupt, "the stored entry is not an audit record".to_owned());
        };
        if record.seq != seq {
            return fail(seq, FailureKind::Order, format!("the record says it is record {}", record.seq));
        }
        if record.content_hash() != record.hash {
            return fail(seq, FailureKind::Hash, "the record's content does not match its hash".to_owned());
        }
        if self.previous.is_none() {
            if seq == 1 {
                if record.prev_hash != GENESIS_HASH {
                    return fail(seq, FailureKind::Link, "record 1 does not start the chain".to_owned());
                }
            } else {
                self.anchor = Some((seq - 1, record.prev_hash.clone()));
            }
        } else if record.prev_hash != expected_prev {
            return fail(seq, FailureKind::Link, format!("the record does not link to record {}", seq - 1));
        }
        if let Some(token) = &record.checkpoint {
            if let Err(failure) = self.check_checkpoint(store, keys, seq, token).await? {
                return Ok(Err(failure));
            }
        }
        self.previous = Some((seq, record.hash));
        Ok(Ok(()))
    }

    async fn check_checkpoint(
        &mut self,
        store: &dyn Store,
        keys: &KeySet,
        seq: u64,
        token: &str,
    ) -> Result<Result<(), Failure>, StoreError> {
        let fail = |kind, message: String| Ok(Err(Failure { seq, kind, message }));
        let claims = match checkpoint::verify(token, keys) {
            Ok(claims) => claims,
            Err(e) => return fail(FailureKind::Signature, format!("checkpoint refused: {e}")),
        };
        if claims.seq >= seq {
            return fail(
                FailureKind::Checkpoint,
                format!("the checkpoint covers record {}, not an earlier one", claims.seq),
            );
        }
        let covered_hash = match &self.anchor {
            Some((anchor_seq, hash)) if *anchor_seq == claims.seq => Some(hash.clone()),
            _ => match store.log_range(AUDIT_LOG, claims.seq, 1).await?.first() {
                Some(entry) if entry.seq == claims.seq => Some(AuditRecord::decode(&entry.data)?.hash),
                // Covers a record purged before the oldest kept one: nothing to compare.
                _ => None,
            },
        };
        match covered_hash {
            Some(hash) if hash != claims.hash => {
                return fail(
                    FailureKind::Checkpoint,
                    format!("the checkpoint vouches for another hash of record {}", claims.seq),
                );
            }
            Some(_) => {
                if self.anchor.as_ref().is_some_and(|(anchor_seq, _)| *anchor_seq == claims.seq) {
                    self.anchored = true;
                }
                self.signed_through = self.signed_through.max(Some(claims.seq));
            }
            None => {}
        }
        self.checkpoints += 1;
        Ok(Ok(()))
    }

    /// The failure of a log that starts after record 1 without a checkpoint for the
    /// record before its oldest.
    fn unanchored(&self) -> Option<Failure> {
        let (anchor_seq, _) = self.anchor.as_ref()?;
        (!self.anchored).then(|| Failure {
            seq: anchor_seq + 1,
            kind: FailureKind::Anchor,
            message: format!(
                "the log starts at record {} and no checkpoint vouches for record {anchor_seq}",
                anchor_seq + 1
            ),
        })
    }

    fn finish(self, failure: Option<Failure>) -> Verification {
        Verification {
            intact: failure.is_none(),
            first_seq: self.first_seq,
            last_seq: self.last_seen,
            intact_through: match &failure {
                None => self.previous.map(|(seq, _)| seq),
                Some(f) if f.kind == FailureKind::Anchor => None,
                Some(f) => f.seq.checked_sub(1).filter(|s| self.first_seq.is_some_and(|first| *s >= first)),
            },
            signed_through: if failure.is_none() { self.signed_through } else { None },
            checkpoints: self.checkpoints,
            failure,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::audit::chain::{self, Draft, RecordKind};
    use crate::audit::{self as audit_log, retention};
    use crate::random::SeededRandom;
    use crate::signing::{JwkSet, SigningAlgorithm, SigningKeyPair};
    use crate::store::MemoryStore;

    fn signer(seed: u64) -> Arc<SigningKeyPair> {
        Arc::new(SigningKeyPair::generate(SigningAlgorithm::Es256, &SeededRandom::new(seed)).unwrap())
    }

    fn keys_of(pair: &SigningKeyPair) -> KeySet {
        let jwks = JwkSet { keys: vec![pair.public_jwk()] };
        KeySet::from_jwks_json(&serde_json::to_vec(&jwks).unwrap()).unwrap().0
    }

    async fn records(store: &MemoryStore, n: u64, time: u64) {
        for i in 0..n {
            audit_log::record(store, time + i, "admin:0011", "keys.rotate", &format!("k{i}"), None)
                .await
                .unwrap();
        }
    }

    async fn stored(store: &MemoryStore, seq: u64) -> AuditRecord {
        AuditRecord::decode(&store.log_range(AUDIT_LOG, seq, 1).await.unwrap()[0].data).unwrap()
    }

    fn put(store: &MemoryStore, record: &AuditRecord) {
        store.overwrite_log_entry(AUDIT_LOG, record.seq, serde_json::to_vec(record).unwrap());
    }

    #[tokio::test]
    async fn an_untouched_chain_is_intact_and_signed_through_its_checkpoint() {
        let (store, key) = (MemoryStore::new(), signer(1));
        assert_eq!(verify(&store, &keys_of(&key)).await.unwrap().intact_through, None);
        records(&store, 4, 100).await;
        audit_log::checkpoint(&store, Arc::clone(&key), "admin:0011", 200).await.unwrap();
        records(&store, 2, 300).await;
        let v = verify(&store, &keys_of(&key)).await.unwrap();
        assert!(v.intact, "{v:?}");
        assert_eq!(
            (v.first_seq, v.intact_through, v.signed_through, v.checkpoints),
            (Some(1), Some(7), Some(4), 1)
        );
    }

    #[tokio::test]
    async fn an_edited_record_is_named() {
        let (store, key) = (MemoryStore::new(), signer(1));
        records(&store, 5, 100).await;
        let mut record = stored(&store, 3).await;
        record.target = "someone-else".to_owned();
        put(&store, &record);
        let v = verify(&store, &keys_of(&key)).await.unwrap();
        let failure = v.failure.unwrap();
        assert_eq!((failure.seq, failure.kind, v.intact_through), (3, FailureKind::Hash, Some(2)));

        // Rehashing the edited record breaks the next record's link instead.
        record.hash = record.content_hash();
        put(&store, &record);
        let failure = verify(&store, &keys_of(&key)).await.unwrap().failure.unwrap();
        assert_eq!((failure.seq, failure.kind), (4, FailureKind::Link));
    }

    #[tokio::test]
    async fn a_rewritten_and_rehashed_chain_is_caught_by_the_checkpoint_after_it() {
        let (store, key) = (MemoryStore::new(), signer(1));
        records(&store, 3, 100).await;
        audit_log::checkpoint(&store, Arc::clone(&key), "system", 200).await.unwrap();
        // The attacker edits record 2 and rehashes everything after it, checkpoint
        // record included, keeping the checkpoint's JWS (they cannot sign a new one).
        let mut previous = stored(&store, 1).await.hash;
        for seq in 2..=4 {
            let mut record = stored(&store, seq).await;
            if seq == 2 {
                record.target = "covered-up".to_owned();
            }
            record.prev_hash = previous;
            record.hash = record.content_hash();
            previous = record.hash.clone();
            put(&store, &record);
        }
        let failure = verify(&store, &keys_of(&key)).await.unwrap().failure.unwrap();
        assert_eq!((failure.seq, failure.kind), (4, FailureKind::Checkpoint), "{failure:?}");
    }

    #[tokio::test]
    async fn a_checkpoint_signed_by_another_key_is_refused() {
        let (store, key, forger) = (MemoryStore::new(), signer(1), signer(2));
        records(&store, 2, 100).await;
        audit_log::checkpoint(&store, forger, "admin:0011", 200).await.unwrap();
        let v = verify(&store, &keys_of(&key)).await.unwrap();
        let failure = v.failure.unwrap();
        assert_eq!((failure.seq, failure.kind, v.intact_through), (3, FailureKind::Signature, Some(2)));
    }

    #[tokio::test]
    async fn records_removed_from_the_start_without_a_checkpoint_are_caught() {
        let (store, key) = (MemoryStore::new(), signer(1));
        records(&store, 5, 100).await;
        store.log_trim(AUDIT_LOG, 3).await.unwrap();
        let v = verify(&store, &keys_of(&key)).await.unwrap();
        let failure = v.failure.unwrap();
        assert_eq!((failure.seq, failure.kind, v.intact_through), (3, FailureKind::Anchor, None));
    }

    #[tokio::test]
    async fn retention_purges_old_records_and_what_remains_verifies() {
        let (store, key) = (MemoryStore::new(), signer(1));
        records(&store, 4, 1_000).await;
        records(&store, 3, 50_000).await;
        let purged = retention::purge(&store, Arc::clone(&key), 10_000, 55_000).await.unwrap();
        assert_eq!(purged, 4);
        let v = verify(&store, &keys_of(&key)).await.unwrap();
        assert!(v.intact, "{v:?}");
        assert_eq!((v.first_seq, v.intact_through, v.signed_through), (Some(5), Some(8), Some(4)));
        assert_eq!(
            retention::purge(&store, Arc::clone(&key), 10_000, 55_000).await.unwrap(),
            0,
            "nothing older left"
        );

        // An anchor signed by another key does not count.
        let (store, forger) = (MemoryStore::new(), signer(2));
        records(&store, 4, 1_000).await;
        records(&store, 1, 50_000).await;
        retention::purge(&store, forger, 10_000, 55_000).await.unwrap();
        let failure = verify(&store, &keys_of(&key)).await.unwrap().failure.unwrap();
        assert_eq!((failure.seq, failure.kind), (6, FailureKind::Signature));
    }

    #[tokio::test]
    async fn a_record_stored_at_another_position_is_named() {
        let (store, key) = (MemoryStore::new(), signer(1));
        records(&store, 3, 100).await;
        let first = stored(&store, 1).await;
        let draft = Draft::new(5, RecordKind::System, "system", "x", "y");
        let copy = draft.seal(&chain::Head { seq: 1, hash: first.hash.clone() }).unwrap();
        store.overwrite_log_entry(AUDIT_LOG, 3, serde_json::to_vec(&copy).unwrap());
        let failure = verify(&store, &keys_of(&key)).await.unwrap().failure.unwrap();
        assert_eq!((failure.seq, failure.kind), (3, FailureKind::Order));
    }
}
