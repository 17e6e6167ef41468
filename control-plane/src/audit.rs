//! The audit trail: every admin write and every security event is appended to the
//! store's `audit` log. (Hash chaining and an API to read it come with the audit
//! work; the entry format is meant to stay.)

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::store::{Store, StoreError};

/// The store log the entries go to.
pub const AUDIT_LOG: &str = "audit";

/// Who did it.
pub const ACTOR_ADMIN: &str = "admin";
/// The control plane itself (reuse detection, scheduled rotation, key retirement).
pub const ACTOR_SYSTEM: &str = "system";

/// One audit entry. Never contains tokens or keys: only ids (jti, sid, kid, sub).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEntry {
    /// Unix milliseconds.
    pub time: u64,
    pub actor: String,
    /// Dotted verb, e.g. `keys.rotate`, `revocation.jti`, `session.reuse_detected`.
    pub action: String,
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<Value>,
}

/// Appends one entry; returns its sequence number.
pub async fn record(
    store: &dyn Store,
    now_ms: u64,
    actor: &str,
    action: &str,
    target: &str,
    detail: Option<Value>,
) -> Result<u64, StoreError> {
    let entry = AuditEntry {
        time: now_ms,
        actor: actor.to_owned(),
        action: action.to_owned(),
        target: target.to_owned(),
        detail,
    };
    let bytes = serde_json::to_vec(&entry)
        .map_err(|e| StoreError::InvalidArgument(format!("cannot encode audit entry: {e}")))?;
    store.log_append(AUDIT_LOG, bytes).await
}
