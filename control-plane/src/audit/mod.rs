//! The audit log: one hash chain of records in the store's [`AUDIT_LOG`] log, kept by
//! every control-plane replica together.
//!
//! - [`record`]: every admin write (with the admin's identity) and every event the
//!   control plane acts on itself; [`decisions`]: the filter's allow/deny decisions,
//!   in batches stored once each.
//! - [`chain`]: each record carries the hash of the one before it and its own hash
//!   over its content; appends are compare-and-append on the log's last sequence
//!   number, so replicas racing to append never fork the chain.
//! - [`checkpoint`]: records signed with the control plane's signing key over
//!   `{seq, hash, time}` of an earlier record, so rewriting the chain (which anyone
//!   with write access to the store could rehash) is caught; [`verify`] walks chain and
//!   checkpoints and names the first record that fails.
//! - [`query`]: newest-first reads with filters and cursor paging; [`retention`]: old
//!   records purged behind a checkpoint so the rest still verifies.
//!
//! Records never contain tokens or keys: only ids (jti, sid, kid, sub), names and
//! addresses.

pub mod chain;
pub mod checkpoint;
pub mod decisions;
pub mod query;
pub mod retention;
pub mod time_text;
pub mod verify;

use std::sync::Arc;

use serde_json::Value;

use crate::signing::SigningKeyPair;
use crate::store::{Store, StoreError};

pub use chain::{AuditRecord, RecordKind};

/// The store log the chain lives in. (Entries written before the chain existed stay
/// in the store's `audit` log, unread.)
pub const AUDIT_LOG: &str = "audit-chain";

/// The control plane itself (reuse detection, scheduled rotation, key retirement).
pub const ACTOR_SYSTEM: &str = "system";
/// Decision records: the fleet of filters.
pub const ACTOR_FLEET: &str = "fleet";

/// Appends one admin or system record; returns its sequence number. `actor` is
/// [`ACTOR_SYSTEM`] or an admin identity ([`crate::admin_credential::AdminIdentity`]).
pub async fn record(
    store: &dyn Store,
    now_ms: u64,
    actor: &str,
    action: &str,
    target: &str,
    detail: Option<Value>,
) -> Result<u64, StoreError> {
    let kind = if actor == ACTOR_SYSTEM { RecordKind::System } else { RecordKind::Admin };
    let draft = chain::Draft::new(now_ms, kind, actor, action, target).with_detail(detail);
    Ok(chain::append(store, draft).await?.seq)
}

/// Appends a checkpoint over the chain's head, signed by `signer`.
pub async fn checkpoint(
    store: &dyn Store,
    signer: Arc<SigningKeyPair>,
    actor: &str,
    now_ms: u64,
) -> Result<AuditRecord, StoreError> {
    let draft = chain::Draft::new(now_ms, RecordKind::Checkpoint, actor, "audit.checkpoint", "")
        .with_checkpoint(chain::CheckpointPlan { signer, covers: None });
    chain::append(store, draft).await
}

/// A checkpoint when the chain's newest record is not one (the periodic checkpoint of
/// the maintenance pass). Returns the checkpoint's sequence number if one was made.
pub async fn checkpoint_if_due(
    store: &dyn Store,
    signer: Arc<SigningKeyPair>,
    now_ms: u64,
) -> Result<Option<u64>, StoreError> {
    let Some(last) = store.log_last(AUDIT_LOG).await? else {
        return Ok(None);
    };
    if AuditRecord::decode(&last.data)?.kind == RecordKind::Checkpoint {
        return Ok(None);
    }
    Ok(Some(checkpoint(store, signer, ACTOR_SYSTEM, now_ms).await?.seq))
}
