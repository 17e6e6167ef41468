//! Follows the feed page by page: deltas change the published replica, snapshot parts
//! are assembled privately until complete and caught up (see the [module docs](super)).

use super::feed::{FeedError, FeedPage};
use super::replica::{CheckedPage, RevocationReplica};
use crate::fleet::FeedKey;

/// What [`FeedFollower::apply`] did with a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Nothing changed (an empty delta): the published replica is current.
    Current,
    /// The published replica was changed in place: publish it.
    Changed,
    /// A snapshot is complete and caught up: this replaces the published replica.
    Assembled(Box<RevocationReplica>),
    /// A snapshot part went into the private assembly; nothing to publish yet.
    Assembling,
}

/// A snapshot being assembled.
#[derive(Debug, Clone)]
struct Assembly {
    id: String,
    next_part: u32,
    /// All parts are in; deltas are being caught up.
    parts_done: bool,
    replica: RevocationReplica,
}

/// Follows the feed page by page (see the module docs for its invariants).
#[derive(Debug, Clone, Default)]
pub struct FeedFollower {
    assembly: Option<Assembly>,
}

impl FeedFollower {
    /// Whether a snapshot is being assembled.
    pub fn assembling(&self) -> bool {
        self.assembly.is_some()
    }

    /// The cursor the next poll sends ("" for none: start with a snapshot).
    pub fn cursor<'a>(&'a self, published: &'a RevocationReplica) -> &'a str {
        match &self.assembly {
            Some(a) => &a.replica.cursor,
            None => &published.cursor,
        }
    }

    /// Drops an assembly in progress; the next poll starts from the published replica.
    pub fn abandon(&mut self) {
        self.assembly = None;
    }

    /// Parses a page and applies it; see [`FeedFollower::apply`].
    pub fn apply_json(
        &mut self,
        published: &mut RevocationReplica,
        bytes: &[u8],
        key: &FeedKey,
        now_unix_secs: u64,
    ) -> Result<(Applied, bool), FeedError> {
        let page: FeedPage = serde_json::from_slice(bytes).map_err(|e| FeedError::NotJson(e.to_string()))?;
        self.apply(published, page, key, now_unix_secs)
    }

    /// Applies one page: a delta to the published replica (or to the assembly catching
    /// up), a snapshot part to the assembly. Returns what happened and whether more is
    /// waiting (poll again right away). On error the published replica is unchanged and
    /// any assembly is abandoned.
    pub fn apply(
        &mut self,
        published: &mut RevocationReplica,
        page: FeedPage,
        key: &FeedKey,
        now_unix_secs: u64,
    ) -> Result<(Applied, bool), FeedError> {
        let page = match CheckedPage::check(page, key) {
            Ok(p) => p,
            Err(e) => {
                self.abandon();
                return Err(e);
            }
        };
        let more = page.more;
        let applied = match (page.snapshot.clone(), self.assembly.take()) {
            (Some(part), _) if part.part == 0 => {
                let mut replica = RevocationReplica::default();
                replica.apply(page, key.id(), now_unix_secs);
                self.assembly = Some(Assembly { id: part.id, next_part: 1, parts_done: part.last, replica });
                Applied::Assembling
            }
            (Some(part), Some(mut a)) if a.id == part.id && a.next_part == part.part && !a.parts_done => {
                a.replica.apply(page, key.id(), now_unix_secs);
                a.next_part = a.next_part.saturating_add(1);
                a.parts_done = part.last;
                self.assembly = Some(a);
                Applied::Assembling
            }
            (Some(part), assembly) => {
                let expected = assembly.map_or_else(
                    || "no snapshot in progress".to_string(),
                    |a| format!("part {} of snapshot {}", a.next_part, a.id),
                );
                return Err(FeedError::SnapshotBroken(format!(
                    "got part {} of snapshot {}, expected {expected}",
                    part.part, part.id
                )));
            }
            (None, Some(a)) if !a.parts_done => {
                return Err(FeedError::SnapshotBroken(format!(
                    "a delta arrived before part {} of snapshot {}",
                    a.next_part, a.id
                )));
            }
            (None, Some(mut a)) => {
                a.replica.apply(page, key.id(), now_unix_secs);
                if more {
                    self.assembly = Some(a);
                    Applied::Assembling
                } else {
                    Applied::Assembled(Box::new(a.replica))
                }
            }
            (None, None) => {
                if page.changes(published) {
                    published.apply(page, key.id(), now_unix_secs);
                    Applied::Changed
                } else {
                    Applied::Current
                }
            }
        };
        Ok((applied, more))
    }
}
