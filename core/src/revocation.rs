//! Revocation state as the filter sees it: the wire format of the control plane's
//! change feed (`GET /v1/feed?after=<cursor>`), and the local replica the filter keeps
//! from it, so every revocation question is answered inside Envoy without a call.
//!
//! The feed carries revoked token ids (each kept only until the token's own `exp`),
//! per-user minimum token versions, the global minimum version with its grace period,
//! the version of the issuer's key set, the ids of revoked signing keys (the filter
//! drops those keys and every token they signed) and the version ceiling (no token
//! above it was ever issued). A page is either a delta after the cursor the filter
//! sent, or a full snapshot when that cursor is too old (or zero).

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::jwt::versions::VersionState;

/// Most entries one feed page may carry; larger pages are refused by the filter.
pub const MAX_PAGE_ENTRIES: usize = 10_000;

/// One page of the change feed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FeedPage {
    /// Cursor of the last change included; the next request asks for changes after it.
    pub cursor: u64,
    /// True: this page is the whole state and replaces the replica.
    #[serde(default)]
    pub snapshot: bool,
    /// Tokens revoked by `jti`, with the token's expiry (unix seconds).
    #[serde(default)]
    pub revoked: Vec<RevokedToken>,
    /// Per-subject minimum token versions (raised, never lowered, by the control plane).
    #[serde(default)]
    pub user_min_versions: Vec<UserMinVersion>,
    /// The global minimum version, when it changed (always present in a snapshot).
    #[serde(default)]
    pub global: Option<GlobalMinVersion>,
    /// Version of the issuer's signing key set; a change means keys rotated.
    #[serde(default)]
    pub key_set_version: u64,
    /// Signing keys revoked (by `kid`): tokens they signed are refused at once, cached
    /// ones included. A snapshot lists every key still worth refusing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revoked_kids: Vec<String>,
    /// No token carries a higher version (0: not published). Only ever raised.
    #[serde(default)]
    pub version_ceiling: u64,
    /// More changes are waiting: ask again right away.
    #[serde(default)]
    pub more: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RevokedToken {
    pub jti: String,
    /// The token's `exp`: after it the entry is useless and dropped.
    pub exp: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UserMinVersion {
    pub sub: String,
    pub min_version: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GlobalMinVersion {
    pub min_version: u64,
    /// When the minimum was raised (unix seconds).
    pub rotated_at: u64,
    /// Older tokens still pass while `now < rotated_at + grace_seconds`.
    pub grace_seconds: u64,
}

/// The answer of `GET /v1/token-status?jti=<jti>&sub=<sub>`: the control plane's current
/// view of one token, for rules that check revocation per request (`"revocation":
/// "strict"`) instead of trusting a replica that may be a poll interval old.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenStatus {
    /// The `jti` is revoked.
    pub revoked: bool,
    /// The subject's minimum token version (0: none).
    #[serde(default)]
    pub user_min_version: u64,
    pub global: GlobalMinVersion,
}

impl TokenStatus {
    /// The version state this answer implies for `sub`.
    pub fn versions(&self, sub: Option<&str>) -> VersionState {
        let mut state = VersionState {
            global_min_version: self.global.min_version,
            rotated_at: self.global.rotated_at,
            grace_seconds: self.global.grace_seconds,
            ..VersionState::default()
        };
        if let Some(sub) = sub {
            state.user_min_versions.insert(sub.to_string(), self.user_min_version);
        }
        state
    }
}

/// Why a feed page was not applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedError {
    NotJson(String),
    TooLarge,
    /// A delta that does not continue from the replica's cursor.
    OutOfOrder {
        have: u64,
        got: u64,
    },
}

impl std::fmt::Display for FeedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FeedError::NotJson(e) => write!(f, "feed page is not valid JSON: {e}"),
            FeedError::TooLarge => write!(f, "feed page has more than {MAX_PAGE_ENTRIES} entries"),
            FeedError::OutOfOrder { have, got } => {
                write!(f, "feed page cursor {got} is behind the replica's cursor {have}")
            }
        }
    }
}

/// The filter's local copy of the revocation state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevocationReplica {
    pub cursor: u64,
    /// jti → token expiry.
    pub revoked: HashMap<String, u64>,
    pub versions: VersionState,
    pub key_set_version: u64,
    /// Revoked signing keys.
    #[serde(default)]
    pub revoked_kids: BTreeSet<String>,
}

impl RevocationReplica {
    /// Parses and applies one page. On error the replica is unchanged.
    pub fn apply_json(&mut self, bytes: &[u8], now_unix_secs: u64) -> Result<bool, FeedError> {
        let page: FeedPage = serde_json::from_slice(bytes).map_err(|e| FeedError::NotJson(e.to_string()))?;
        self.apply(page, now_unix_secs)
    }

    /// Applies one page; returns whether more pages are waiting.
    pub fn apply(&mut self, page: FeedPage, now_unix_secs: u64) -> Result<bool, FeedError> {
        let entries = page.revoked.len().saturating_add(page.user_min_versions.len());
        if entries.saturating_add(page.revoked_kids.len()) > MAX_PAGE_ENTRIES {
            return Err(FeedError::TooLarge);
        }
        if !page.snapshot && page.cursor < self.cursor {
            return Err(FeedError::OutOfOrder { have: self.cursor, got: page.cursor });
        }
        if page.snapshot {
            *self = RevocationReplica::default();
        }
        for r in page.revoked {
            if r.exp > now_unix_secs {
                self.revoked.insert(r.jti, r.exp);
            }
        }
        for u in page.user_min_versions {
            let entry = self.versions.user_min_versions.entry(u.sub).or_insert(0);
            *entry = (*entry).max(u.min_version);
        }
        if let Some(g) = page.global {
            self.versions.global_min_version = g.min_version;
            self.versions.rotated_at = g.rotated_at;
            self.versions.grace_seconds = g.grace_seconds;
        }
        self.key_set_version = page.key_set_version.max(self.key_set_version);
        self.revoked_kids.extend(page.revoked_kids);
        self.versions.version_ceiling = self.versions.version_ceiling.max(page.version_ceiling);
        self.cursor = page.cursor;
        self.prune(now_unix_secs);
        Ok(page.more)
    }

    /// Drops revocations of tokens that have expired anyway.
    pub fn prune(&mut self, now_unix_secs: u64) {
        self.revoked.retain(|_, exp| *exp > now_unix_secs);
    }

    pub fn is_revoked(&self, jti: &str, now_unix_secs: u64) -> bool {
        self.revoked.get(jti).is_some_and(|exp| *exp > now_unix_secs)
    }

    /// Whether the signing key `kid` was revoked.
    pub fn is_key_revoked(&self, kid: &str) -> bool {
        self.revoked_kids.contains(kid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn revoked(jti: &str, exp: u64) -> RevokedToken {
        RevokedToken { jti: jti.into(), exp }
    }

    #[test]
    fn deltas_accumulate_and_snapshots_replace() {
        let mut r = RevocationReplica::default();
        r.apply(FeedPage { cursor: 3, revoked: vec![revoked("a", 200)], ..Default::default() }, 100).unwrap();
        r.apply(
            FeedPage {
                cursor: 5,
                revoked: vec![revoked("b", 300)],
                user_min_versions: vec![UserMinVersion { sub: "alice".into(), min_version: 2 }],
                ..Default::default()
            },
            100,
        )
        .unwrap();
        assert!(r.is_revoked("a", 100) && r.is_revoked("b", 100));
        assert_eq!(r.versions.user_min_versions.get("alice"), Some(&2));

        r.apply(
            FeedPage { cursor: 9, snapshot: true, revoked: vec![revoked("c", 300)], ..Default::default() },
            100,
        )
        .unwrap();
        assert!(!r.is_revoked("a", 100) && r.is_revoked("c", 100));
        assert!(r.versions.user_min_versions.is_empty());
        assert_eq!(r.cursor, 9);
    }

    #[test]
    fn revocations_end_with_the_token() {
        let mut r = RevocationReplica::default();
        r.apply(
            FeedPage {
                cursor: 1,
                revoked: vec![revoked("a", 200), revoked("old", 50)],
                ..Default::default()
            },
            100,
        )
        .unwrap();
        assert!(!r.revoked.contains_key("old"), "an expired token's revocation is not kept");
        assert!(r.is_revoked("a", 199));
        assert!(!r.is_revoked("a", 200));
        r.prune(200);
        assert!(r.revoked.is_empty());
    }

    #[test]
    fn user_minimums_never_go_down_and_global_is_replaced() {
        let mut r = RevocationReplica::default();
        let page = |cursor, min, global| FeedPage {
            cursor,
            user_min_versions: vec![UserMinVersion { sub: "u".into(), min_version: min }],
            global,
            ..Default::default()
        };
        r.apply(page(1, 5, Some(GlobalMinVersion { min_version: 2, rotated_at: 10, grace_seconds: 3 })), 0)
            .unwrap();
        r.apply(page(2, 3, None), 0).unwrap();
        assert_eq!(r.versions.user_min_versions.get("u"), Some(&5));
        assert_eq!(
            (r.versions.global_min_version, r.versions.rotated_at, r.versions.grace_seconds),
            (2, 10, 3)
        );
    }

    #[test]
    fn bad_pages_leave_the_replica_unchanged() {
        let mut r = RevocationReplica::default();
        r.apply(FeedPage { cursor: 10, revoked: vec![revoked("a", 200)], ..Default::default() }, 100)
            .unwrap();
        let before = r.clone();
        assert!(matches!(r.apply_json(b"{not json", 100), Err(FeedError::NotJson(_))));
        assert!(matches!(r.apply_json(br#"{"cursor": 1, "bogus": true}"#, 100), Err(FeedError::NotJson(_))));
        assert_eq!(r.apply_json(br#"{"cursor": 4}"#, 100), Err(FeedError::OutOfOrder { have: 10, got: 4 }));
        let huge = FeedPage {
            cursor: 11,
            revoked: vec![revoked("x", 500); MAX_PAGE_ENTRIES + 1],
            ..Default::default()
        };
        assert_eq!(r.apply(huge, 100), Err(FeedError::TooLarge));
        assert_eq!(r, before);
    }

    #[test]
    fn revoked_keys_accumulate_and_the_ceiling_only_rises_until_a_snapshot() {
        let mut r = RevocationReplica::default();
        let page = |cursor, kids: &[&str], ceiling, snapshot| FeedPage {
            cursor,
            snapshot,
            revoked_kids: kids.iter().map(|k| k.to_string()).collect(),
            version_ceiling: ceiling,
            ..Default::default()
        };
        r.apply(page(1, &["k1"], 101, false), 0).unwrap();
        r.apply(page(2, &["k2"], 90, false), 0).unwrap();
        assert!(r.is_key_revoked("k1") && r.is_key_revoked("k2") && !r.is_key_revoked("k3"));
        assert_eq!(r.versions.version_ceiling, 101, "a lower ceiling in a delta never lowers it");
        r.apply(page(3, &[], 0, false), 0).unwrap();
        assert_eq!(r.versions.version_ceiling, 101, "a page without a ceiling keeps it");
        r.apply(page(9, &["k2"], 50, true), 0).unwrap();
        assert!(!r.is_key_revoked("k1") && r.is_key_revoked("k2"));
        assert_eq!(r.versions.version_ceiling, 50, "a snapshot is the whole state");
        let huge = FeedPage {
            cursor: 10,
            revoked_kids: vec!["k".into(); MAX_PAGE_ENTRIES + 1],
            ..Default::default()
        };
        assert_eq!(r.apply(huge, 0), Err(FeedError::TooLarge));
    }

    #[test]
    fn wire_format_is_camel_case() {
        let page: FeedPage = serde_json::from_str(
            r#"{"cursor":7,"snapshot":true,"revoked":[{"jti":"j","exp":9}],
                "userMinVersions":[{"sub":"s","minVersion":2}],
                "global":{"minVersion":3,"rotatedAt":4,"graceSeconds":5},"keySetVersion":6,
                "revokedKids":["k"],"versionCeiling":8,"more":false}"#,
        )
        .unwrap();
        assert_eq!((page.revoked_kids.as_slice(), page.version_ceiling), (&["k".to_string()][..], 8));
        assert_eq!(page.cursor, 7);
        assert_eq!(page.user_min_versions[0].min_version, 2);
        assert_eq!(page.global.unwrap().grace_seconds, 5);
        assert_eq!(page.key_set_version, 6);
    }
}
