//! Token-version revocation state: the minimum token version accepted globally (after a
//! key/claims rotation, with a grace period) and per subject (immediate revocation of one
//! user's tokens). The filter starts from the provider's configuration ([`VersionState`],
//! subjects by name); once the control plane's replica is synced it answers instead
//! (subjects by feed hash, `revocation::ReplicaVersions`). Both are [`MinimumVersions`].

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Where minimum token versions come from.
pub trait MinimumVersions {
    /// Tokens below this version are refused once the grace period is over.
    fn global_min_version(&self) -> u64;
    /// When the global minimum was raised (unix seconds) and how long after that older
    /// tokens are still accepted.
    fn global_grace(&self) -> (u64, u64);
    /// The subject's minimum version, if one is set.
    fn user_min_version(&self, subject: &str) -> Option<u64>;

    /// Decides whether a token of `version` for `subject` is still acceptable at `now`.
    /// A subject's minimum applies immediately, without grace.
    fn accepts(&self, subject: Option<&str>, version: u64, now_unix_secs: u64) -> bool {
        if let Some(min) = subject.and_then(|s| self.user_min_version(s)) {
            if version < min {
                return false;
            }
        }
        if version < self.global_min_version() {
            let (rotated_at, grace_seconds) = self.global_grace();
            return now_unix_secs < rotated_at.saturating_add(grace_seconds);
        }
        true
    }
}

/// Minimum token versions with subjects by name. Field names on the wire are camelCase,
/// like the `tokenVersion` configuration object.
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

impl MinimumVersions for VersionState {
    fn global_min_version(&self) -> u64 {
        self.global_min_version
    }

    fn global_grace(&self) -> (u64, u64) {
        (self.rotated_at, self.grace_seconds)
    }

    fn user_min_version(&self, subject: &str) -> Option<u64> {
        self.user_min_versions.get(subject).copied()
    }
}
