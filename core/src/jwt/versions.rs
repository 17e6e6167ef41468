//! Token-version revocation state: the minimum token version accepted globally (after a
//! key/claims rotation, with a grace period) and per subject (immediate revocation of one
//! user's tokens), and the ceiling above which no version was ever issued. The filter
//! starts from the provider's configuration ([`VersionState`], subjects by name); once
//! the control plane's replica is synced it answers instead (subjects by feed hash,
//! `revocation::ReplicaVersions`). Both are [`MinimumVersions`].

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::reason::Reason;

/// Where minimum token versions and the version ceiling come from.
pub trait MinimumVersions {
    /// Tokens below this version are refused once the grace period is over.
    fn global_min_version(&self) -> u64;
    /// When the global minimum was raised (unix seconds) and how long after that older
    /// tokens are still accepted.
    fn global_grace(&self) -> (u64, u64);
    /// The subject's minimum version, if one is set.
    fn user_min_version(&self, subject: &str) -> Option<u64>;
    /// No token above this version was ever issued (0: unknown, nothing is refused for
    /// it).
    fn version_ceiling(&self) -> u64;

    /// Decides whether a token of `version` for `subject` is acceptable at `now`:
    /// `version_unknown` above the ceiling, `version_too_old` below the subject's
    /// minimum (immediately, without grace), or below the global minimum once its grace
    /// is over.
    fn check(&self, subject: Option<&str>, version: u64, now_unix_secs: u64) -> Result<(), Reason> {
        let ceiling = self.version_ceiling();
        if ceiling > 0 && version > ceiling {
            return Err(Reason::VersionUnknown);
        }
        if let Some(min) = subject.and_then(|s| self.user_min_version(s)) {
            if version < min {
                return Err(Reason::VersionTooOld);
            }
        }
        if version < self.global_min_version() {
            let (rotated_at, grace_seconds) = self.global_grace();
            if now_unix_secs >= rotated_at.saturating_add(grace_seconds) {
                return Err(Reason::VersionTooOld);
            }
        }
        Ok(())
    }

    /// Whether [`MinimumVersions::check`] passes.
    fn accepts(&self, subject: Option<&str>, version: u64, now_unix_secs: u64) -> bool {
        self.check(subject, version, now_unix_secs).is_ok()
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
    /// No token above this version was ever issued (0: unknown, nothing is refused for
    /// it). Published by the control plane a margin above what it issued.
    pub version_ceiling: u64,
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

    fn version_ceiling(&self) -> u64 {
        self.version_ceiling
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn versions_above_the_ceiling_are_unknown_and_the_ceiling_itself_passes() {
        let state = VersionState { version_ceiling: 101, ..VersionState::default() };
        assert_eq!(state.check(Some("a"), 101, 0), Ok(()));
        assert_eq!(state.check(Some("a"), 102, 0), Err(Reason::VersionUnknown));
        assert_eq!(state.check(None, u64::MAX, 0), Err(Reason::VersionUnknown));
        // Without a ceiling (no control plane, or an older one) nothing is unknown.
        assert_eq!(VersionState::default().check(None, u64::MAX, 0), Ok(()));
    }

    #[test]
    fn minimums_refuse_older_versions_the_global_one_after_its_grace() {
        let mut state = VersionState {
            global_min_version: 5,
            rotated_at: 100,
            grace_seconds: 10,
            version_ceiling: 200,
            ..VersionState::default()
        };
        state.user_min_versions.insert("alice".into(), 7);
        assert_eq!(state.check(Some("alice"), 6, 0), Err(Reason::VersionTooOld));
        assert_eq!(state.check(Some("alice"), 7, 0), Ok(()));
        assert_eq!(state.check(Some("bob"), 4, 109), Ok(()), "inside the grace");
        assert_eq!(state.check(Some("bob"), 4, 110), Err(Reason::VersionTooOld));
        assert_eq!(state.check(Some("bob"), 5, 110), Ok(()));
    }
}
