//! Revocation state as the filter sees it: the wire format of the control plane's
//! change feed (`GET /v1/feed`), the replica the filter keeps from it, and the assembly
//! of a paged snapshot into one replica, so every revocation question is answered
//! inside Envoy without a call.
//!
//! The feed carries revoked token ids (each kept only until the token's own `exp`),
//! per-user minimum token versions, the global minimum version with its grace period,
//! the version of the issuer's key set, the ids of revoked signing keys (the filter
//! drops those keys and every token they signed; key ids are public, so they are in
//! clear) and the version ceiling (no token above it was ever issued). Token ids and
//! subjects are never in clear: they are [`crate::fleet::FeedKey`] hashes under the
//! caller's fleet credential, and every page names the key (`keyId`).
//!
//! Paging. Every answer carries an opaque `cursor` the follower sends back to continue.
//! A page is a **delta** (changes after the cursor) or one **part** of a snapshot
//! (`snapshot: {id, part, last}`), which the control plane sends when the follower has
//! no cursor or one it can no longer continue. A snapshot of any size arrives in parts
//! of at most [`MAX_PAGE_ENTRIES`] entries (revoked keys count as entries) and
//! [`MAX_PAGE_BYTES`] bytes.
//!
//! Invariants of [`FeedFollower`]:
//! - a snapshot is assembled privately; the published replica changes only when every
//!   part (0, 1, 2, … up to the one marked `last`, all of one snapshot `id`) *and* the
//!   deltas after the snapshot, up to one with `more: false`, have been applied. Parts
//!   read while the state changed may miss or repeat an entry that changed meanwhile;
//!   every such change is in the feed after the snapshot's base, so the catch-up deltas
//!   repair it before anything is published: a torn snapshot is never visible;
//! - a part that does not continue the assembly (another snapshot, a gap, a repeat, a
//!   delta in the middle), hashes under another key, or anything malformed abandons
//!   the assembly and leaves the published replica as it was;
//! - applying an entry twice is harmless: revocations and revoked keys are sets, user
//!   minimums and the version ceiling only go up, and the global minimum and key set
//!   version are replaced by newer values. A snapshot is the whole state: the revoked
//!   keys and the ceiling of the assembled replica are the snapshot's.
//!
//! - [`config`]: the `revocation` section and each rule's revocation settings;
//! - [`feed`]: the feed's wire format (pages, snapshot parts, the status answer);
//! - [`replica`]: the replica the filter answers from, and its shared-data encoding;
//! - [`follower`]: the follower that applies pages and assembles snapshots.

pub mod config;
pub mod feed;
pub mod follower;
pub mod replica;

pub(crate) use config::compile_revocation;
pub use config::{RevocationCheck, RevocationConfig, RevocationSettings, StaleAction};
pub use feed::{
    is_cursor, FeedError, FeedPage, GlobalMinVersion, RevokedToken, SnapshotPart, TokenStatus,
    UserMinVersion, MAX_CURSOR_LEN, MAX_KID_LEN, MAX_PAGE_BYTES, MAX_PAGE_ENTRIES,
};
pub use follower::{Applied, FeedFollower};
pub use replica::{ReplicaVersions, RevocationReplica};

#[cfg(test)]
mod tests;
