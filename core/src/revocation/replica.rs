//! The filter's copy of the revocation state, how a checked page changes it, and its
//! encoding in Envoy shared data (where every worker reads it).

use std::collections::{BTreeSet, HashMap};

use super::feed::{
    is_cursor, FeedError, FeedPage, GlobalMinVersion, SnapshotPart, MAX_KID_LEN, MAX_PAGE_ENTRIES,
};
use crate::codec::read_u64;
use crate::fleet::{decode_hash, FeedKey, IdHash, HASH_LEN};
use crate::jwt::versions::MinimumVersions;

/// The filter's copy of the revocation state, keyed by feed hashes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevocationReplica {
    /// Where the next poll continues ("" before the first sync).
    pub cursor: String,
    /// The feed key the hashes were made with.
    pub key_id: String,
    /// Token id hash → token expiry.
    pub revoked: HashMap<IdHash, u64>,
    /// Subject hash → minimum token version.
    pub user_min_versions: HashMap<IdHash, u64>,
    pub global: GlobalMinVersion,
    pub key_set_version: u64,
    /// Revoked signing keys, by `kid`.
    pub revoked_kids: BTreeSet<String>,
    /// No token above this version was ever issued (0: not published).
    pub version_ceiling: u64,
}

/// A page after validation: hashes decoded, nothing applied yet.
pub(super) struct CheckedPage {
    cursor: String,
    pub(super) snapshot: Option<SnapshotPart>,
    revoked: Vec<(IdHash, u64)>,
    users: Vec<(IdHash, u64)>,
    global: Option<GlobalMinVersion>,
    key_set_version: u64,
    revoked_kids: Vec<String>,
    version_ceiling: u64,
    pub(super) more: bool,
}

impl CheckedPage {
    pub(super) fn check(page: FeedPage, key: &FeedKey) -> Result<Self, FeedError> {
        if page.entries() > MAX_PAGE_ENTRIES {
            return Err(FeedError::TooLarge);
        }
        if page.key_id != key.id() {
            return Err(FeedError::KeyMismatch { expected: key.id().to_string(), got: page.key_id });
        }
        if !is_cursor(&page.cursor) {
            return Err(FeedError::Malformed(
                "cursor: expected 1 to 2048 characters of A-Z a-z 0-9 - _ .".into(),
            ));
        }
        let hash = |field: &str, i: usize, text: &str| {
            decode_hash(text).ok_or_else(|| FeedError::Malformed(format!("{field}[{i}]: not a feed hash")))
        };
        let revoked = page
            .revoked
            .iter()
            .enumerate()
            .map(|(i, r)| Ok((hash("revoked", i, &r.jti_hash)?, r.exp)))
            .collect::<Result<Vec<_>, FeedError>>()?;
        let users = page
            .user_min_versions
            .iter()
            .enumerate()
            .map(|(i, u)| Ok((hash("userMinVersions", i, &u.sub_hash)?, u.min_version)))
            .collect::<Result<Vec<_>, FeedError>>()?;
        if let Some(i) = page.revoked_kids.iter().position(|k| k.is_empty() || k.len() > MAX_KID_LEN) {
            return Err(FeedError::Malformed(format!(
                "revokedKids[{i}]: expected a key id of 1 to {MAX_KID_LEN} bytes"
            )));
        }
        Ok(CheckedPage {
            cursor: page.cursor,
            snapshot: page.snapshot,
            revoked,
            users,
            global: page.global,
            key_set_version: page.key_set_version,
            revoked_kids: page.revoked_kids,
            version_ceiling: page.version_ceiling,
            more: page.more,
        })
    }

    /// Whether applying the page changes anything but the cursor's spelling.
    pub(super) fn changes(&self, replica: &RevocationReplica) -> bool {
        self.cursor != replica.cursor
            || !self.revoked.is_empty()
            || !self.users.is_empty()
            || self.global.is_some_and(|g| g != replica.global)
            || self.key_set_version > replica.key_set_version
            || self.revoked_kids.iter().any(|k| !replica.revoked_kids.contains(k))
            || self.version_ceiling > replica.version_ceiling
    }
}

impl RevocationReplica {
    pub(super) fn apply(&mut self, page: CheckedPage, key_id: &str, now_unix_secs: u64) {
        for (hash, exp) in page.revoked {
            if exp > now_unix_secs {
                self.revoked.insert(hash, exp);
            }
        }
        for (hash, min) in page.users {
            let entry = self.user_min_versions.entry(hash).or_insert(0);
            *entry = (*entry).max(min);
        }
        if let Some(g) = page.global {
            self.global = g;
        }
        self.key_set_version = self.key_set_version.max(page.key_set_version);
        self.revoked_kids.extend(page.revoked_kids);
        self.version_ceiling = self.version_ceiling.max(page.version_ceiling);
        self.cursor = page.cursor;
        key_id.clone_into(&mut self.key_id);
        self.prune(now_unix_secs);
    }

    /// Drops revocations of tokens that have expired anyway.
    pub fn prune(&mut self, now_unix_secs: u64) {
        self.revoked.retain(|_, exp| *exp > now_unix_secs);
    }

    /// Whether the token with this `jti` is revoked (`key`: the follower's feed key).
    pub fn is_revoked(&self, key: &FeedKey, jti: &str, now_unix_secs: u64) -> bool {
        self.revoked.get(&key.token_id(jti)).is_some_and(|exp| *exp > now_unix_secs)
    }

    /// Whether the signing key `kid` was revoked.
    pub fn is_key_revoked(&self, kid: &str) -> bool {
        self.revoked_kids.contains(kid)
    }

    /// The replica's minimum versions, looked up by subject through `key`.
    pub fn versions<'a>(&'a self, key: &'a FeedKey) -> ReplicaVersions<'a> {
        ReplicaVersions { replica: self, key }
    }

    /// The replica as bytes, for Envoy shared data: compact and quick to read back, since
    /// every worker decodes it whenever it changes. Layout: `PCR1`, then sections of
    /// `tag: u8, length: u32 BE, payload`: 1 cursor, 2 key id (UTF-8), 3 global (three
    /// u64 BE), 4 key set version (u64 BE), 5 revoked and 6 user minimums (records of a
    /// 16-byte hash and a u64 BE), 7 revoked key ids (each a u16 BE length and the UTF-8
    /// id), 8 version ceiling (u64 BE). Unknown tags are skipped when decoding.
    pub fn encode(&self) -> Vec<u8> {
        let record = HASH_LEN + 8;
        let mut out = Vec::with_capacity(
            64 + self.cursor.len() + (self.revoked.len() + self.user_min_versions.len()) * record,
        );
        out.extend_from_slice(REPLICA_MAGIC);
        section(&mut out, 1, self.cursor.as_bytes());
        section(&mut out, 2, self.key_id.as_bytes());
        let g = self.global;
        let global: Vec<u8> =
            [g.min_version, g.rotated_at, g.grace_seconds].iter().flat_map(|v| v.to_be_bytes()).collect();
        section(&mut out, 3, &global);
        section(&mut out, 4, &self.key_set_version.to_be_bytes());
        for (tag, map) in [(5, &self.revoked), (6, &self.user_min_versions)] {
            let mut payload = Vec::with_capacity(map.len() * record);
            for (hash, value) in map {
                payload.extend_from_slice(hash);
                payload.extend_from_slice(&value.to_be_bytes());
            }
            section(&mut out, tag, &payload);
        }
        let mut kids = Vec::with_capacity(self.revoked_kids.iter().map(|k| k.len() + 2).sum());
        for kid in &self.revoked_kids {
            // Ids are at most MAX_KID_LEN bytes (checked when the page was applied).
            let len = u16::try_from(kid.len()).unwrap_or(u16::MAX);
            kids.extend_from_slice(&len.to_be_bytes());
            kids.extend_from_slice(kid.as_bytes().get(..usize::from(len)).unwrap_or_default());
        }
        section(&mut out, 7, &kids);
        section(&mut out, 8, &self.version_ceiling.to_be_bytes());
        out
    }

    /// Reads [`RevocationReplica::encode`]'s bytes; `None` when they are not that.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let mut rest = bytes.strip_prefix(REPLICA_MAGIC)?;
        let mut replica = RevocationReplica::default();
        while !rest.is_empty() {
            let (&tag, after_tag) = rest.split_first()?;
            let len = usize::try_from(u32::from_be_bytes(after_tag.get(..4)?.try_into().ok()?)).ok()?;
            let payload = after_tag.get(4..4usize.checked_add(len)?)?;
            rest = after_tag.get(4 + len..)?;
            match tag {
                1 => replica.cursor = String::from_utf8(payload.to_vec()).ok()?,
                2 => replica.key_id = String::from_utf8(payload.to_vec()).ok()?,
                3 => {
                    let v = |i: usize| read_u64(payload.get(i * 8..i * 8 + 8)?);
                    replica.global =
                        GlobalMinVersion { min_version: v(0)?, rotated_at: v(1)?, grace_seconds: v(2)? };
                }
                4 => replica.key_set_version = read_u64(payload)?,
                5 => replica.revoked = read_records(payload)?,
                6 => replica.user_min_versions = read_records(payload)?,
                7 => replica.revoked_kids = read_kids(payload)?,
                8 => replica.version_ceiling = read_u64(payload)?,
                _ => {}
            }
        }
        Some(replica)
    }
}

const REPLICA_MAGIC: &[u8] = b"PCR1";

fn section(out: &mut Vec<u8>, tag: u8, payload: &[u8]) {
    out.push(tag);
    out.extend_from_slice(&u32::try_from(payload.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(payload);
}

fn read_records(payload: &[u8]) -> Option<HashMap<IdHash, u64>> {
    let record = HASH_LEN + 8;
    if payload.len() % record != 0 {
        return None;
    }
    payload
        .chunks_exact(record)
        .map(|r| Some((IdHash::try_from(r.get(..HASH_LEN)?).ok()?, read_u64(r.get(HASH_LEN..)?)?)))
        .collect()
}

fn read_kids(mut payload: &[u8]) -> Option<BTreeSet<String>> {
    let mut kids = BTreeSet::new();
    while !payload.is_empty() {
        let len = usize::from(u16::from_be_bytes(payload.get(..2)?.try_into().ok()?));
        let kid = payload.get(2..2usize.checked_add(len)?)?;
        kids.insert(String::from_utf8(kid.to_vec()).ok()?);
        payload = payload.get(2 + len..)?;
    }
    Some(kids)
}

/// The replica's minimum versions for one follower: subjects are hashed with its key.
pub struct ReplicaVersions<'a> {
    replica: &'a RevocationReplica,
    key: &'a FeedKey,
}

impl MinimumVersions for ReplicaVersions<'_> {
    fn global_min_version(&self) -> u64 {
        self.replica.global.min_version
    }

    fn global_grace(&self) -> (u64, u64) {
        (self.replica.global.rotated_at, self.replica.global.grace_seconds)
    }

    fn user_min_version(&self, subject: &str) -> Option<u64> {
        self.replica.user_min_versions.get(&self.key.subject(subject)).copied()
    }

    fn version_ceiling(&self) -> u64 {
        self.replica.version_ceiling
    }
}
