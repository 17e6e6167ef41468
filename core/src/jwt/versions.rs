//! Token-version revocation state: the minimum token version accepted globally (after a
//! key/claims rotation, with a grace period) and per subject (immediate revocation of one
//! user's tokens). The filter starts from the provider's configuration and the control
//! plane replaces the state later.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Minimum token versions. Field names on the wire are camelCase, like the
/// `tokenVersion` configuration object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct VersionState {
    /// Tokens below this version are refused once the grace period is over.
    pub global_min_version: u64,
    /// When the global minimum was raised (unix seconds).
    pub rotated_at: u64,
    /// How long after `rotated_at` older tokens are still accepted.
    pub grace_seconds: u64,
    /// Per-subject minimum version; applies immediately, without grace.
    pub user_min_versions: HashMap<String, u64>,
}

impl VersionState {
    /// Decides whether a token of `version` for `subject` is still acceptable at `now`.
    pub fn accepts(&self, subject: Option<&str>, version: u64, now_unix_secs: u64) -> bool {
        if let Some(min) = subject.and_then(|s| self.user_min_versions.get(s)) {
            if version < *min {
                return false;
            }
        }
        if version < self.global_min_version {
            return now_unix_secs < self.rotated_at.saturating_add(self.grace_seconds);
        }
        true
    }
}
