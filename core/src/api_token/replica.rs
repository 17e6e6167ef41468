//! The tokens a filter decides from, kept from the feed.

use std::collections::HashMap;

use super::*;

/// Why a presented API token is refused: the RFC 6750 `invalid_token` reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not a token of this format, or no record has its lookup id.
    UnknownToken,
    /// The record exists; the secret is wrong.
    BadSecret,
    Expired,
    Revoked,
    /// Not of the format, or its checksum does not match: refused before any lookup.
    Malformed,
}

impl Refusal {
    /// The stable reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::UnknownToken => "unknown_token",
            Refusal::BadSecret => "bad_secret",
            Refusal::Expired => "expired",
            Refusal::Revoked => "revoked",
            Refusal::Malformed => "malformed",
        }
    }

    /// What the reply's `error_description` says.
    pub fn description(self) -> &'static str {
        match self {
            Refusal::UnknownToken => "the API token is not known",
            Refusal::BadSecret => "the API token's secret does not match",
            Refusal::Expired => "the API token has expired",
            Refusal::Revoked => "the API token has been revoked",
            Refusal::Malformed => "not an API token of the expected format",
        }
    }
}

/// One token as the replica holds it: fixed-size arrays for the hashes, boxed strings
/// for the rest (no spare capacity).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaToken {
    pub verifier: Verifier,
    pub user: Box<str>,
    pub scopes: Box<[Box<str>]>,
    pub expires_at: u64,
    pub revoked: bool,
}

/// Why a feed page was not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiTokenFeedError {
    TooManyEntries,
    /// A lookup or verifier that is not of the format.
    BadEntry,
    /// A snapshot part that does not continue the assembly under way.
    OutOfOrder,
}

/// The tokens a filter decides from, and the snapshot being assembled. A snapshot is
/// built apart and replaces the published tokens only once its last part is applied,
/// so a half-read snapshot is never used; a part that does not continue the assembly
/// abandons it and leaves the published tokens as they were. Deltas apply directly:
/// each entry replaces its lookup's record (a revocation is an entry with `revokedAt`),
/// and applying one twice is harmless.
#[derive(Debug, Clone, Default)]
pub struct ApiTokenReplica {
    tokens: HashMap<[u8; LOOKUP_LEN], ReplicaToken>,
    cursor: String,
    assembling: Option<Assembly>,
}

/// A snapshot being read: its id, the last part applied, the tokens so far and the
/// cursor to continue with.
#[derive(Debug, Clone, Default)]
struct Assembly {
    id: String,
    part: u32,
    tokens: HashMap<[u8; LOOKUP_LEN], ReplicaToken>,
    cursor: String,
}

/// The lookup id as the replica's key; `None` if it is not one.
pub fn lookup_key(lookup: &str) -> Option<[u8; LOOKUP_LEN]> {
    if !is_lookup(lookup) {
        return None;
    }
    <[u8; LOOKUP_LEN]>::try_from(lookup.as_bytes()).ok()
}

/// A feed entry as the replica holds it; `None` if its lookup or verifier is not of the
/// format.
pub fn replica_entry(entry: &ApiTokenEntry) -> Option<([u8; LOOKUP_LEN], ReplicaToken)> {
    Some((
        lookup_key(&entry.lookup)?,
        ReplicaToken {
            verifier: Verifier::decode(&entry.verifier)?,
            user: entry.user.as_str().into(),
            scopes: entry.scopes.iter().map(|s| Box::<str>::from(s.as_str())).collect(),
            expires_at: entry.expires_at,
            revoked: entry.revoked_at.is_some(),
        },
    ))
}

impl ApiTokenReplica {
    /// The cursor to ask the next page with (empty: start with a snapshot).
    pub fn cursor(&self) -> &str {
        match &self.assembling {
            Some(assembly) => &assembly.cursor,
            None => &self.cursor,
        }
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Applies one page. On error nothing changes but an abandoned assembly, and the
    /// next poll starts over from the published cursor.
    pub fn apply(&mut self, page: &ApiTokenFeedPage) -> Result<(), ApiTokenFeedError> {
        if page.tokens.len() > MAX_FEED_PAGE_ENTRIES {
            self.assembling = None;
            return Err(ApiTokenFeedError::TooManyEntries);
        }
        let mut entries = Vec::with_capacity(page.tokens.len());
        for entry in &page.tokens {
            match replica_entry(entry) {
                Some(e) => entries.push(e),
                None => {
                    self.assembling = None;
                    return Err(ApiTokenFeedError::BadEntry);
                }
            }
        }
        match &page.snapshot {
            None => {
                if self.assembling.is_some() {
                    self.assembling = None;
                    return Err(ApiTokenFeedError::OutOfOrder);
                }
                self.tokens.extend(entries);
                self.cursor.clone_from(&page.cursor);
            }
            Some(part) => {
                // Part 0 always starts afresh; any other part must be the next of the
                // snapshot under way.
                let mut assembly = match self.assembling.take() {
                    _ if part.part == 0 => Assembly { id: part.id.clone(), ..Assembly::default() },
                    Some(a) if a.id == part.id && a.part.checked_add(1) == Some(part.part) => a,
                    _ => return Err(ApiTokenFeedError::OutOfOrder),
                };
                assembly.part = part.part;
                assembly.tokens.extend(entries);
                assembly.cursor.clone_from(&page.cursor);
                if part.last {
                    self.tokens = assembly.tokens;
                    self.cursor = assembly.cursor;
                } else {
                    self.assembling = Some(assembly);
                }
            }
        }
        Ok(())
    }

    /// Drops tokens expired at `now_unix_secs`.
    pub fn prune(&mut self, now_unix_secs: u64) {
        self.tokens.retain(|_, t| t.expires_at > now_unix_secs);
    }

    /// Decides a presented token at `now_unix_secs`: its lookup id (for the usage
    /// report) and record, or why it is refused.
    pub fn check<'p>(
        &self,
        presented: &'p str,
        prefix: &str,
        now_unix_secs: u64,
    ) -> Result<(&'p str, &ReplicaToken), Refusal> {
        let parsed = parse(presented, prefix).map_err(|_| Refusal::UnknownToken)?;
        let key = lookup_key(parsed.lookup).ok_or(Refusal::UnknownToken)?;
        let token = self.tokens.get(&key).ok_or(Refusal::UnknownToken)?;
        if !verify(&parsed, &token.verifier) {
            return Err(Refusal::BadSecret);
        }
        if token.revoked {
            return Err(Refusal::Revoked);
        }
        if now_unix_secs >= token.expires_at {
            return Err(Refusal::Expired);
        }
        Ok((parsed.lookup, token))
    }
}
