//! The API token replica as fixed cells of Envoy shared data, and the feed follower
//! that turns feed pages into cell writes.
//!
//! One copy per Envoy, not per worker: the replica lives in [`CELLS`] shared-data
//! values, a token in the cell its lookup id hashes to ([`cell_of`]). A request reads
//! the one cell of its token (one host call) and decodes only the matching record
//! ([`find_in_cell`]); the worker that follows the feed rewrites the cells a delta
//! touches ([`upsert`]) or, after a snapshot, every cell.
//!
//! A cell is a version byte then records, each:
//! `lookup (8) | verifier (32) | expiresAt (u64 BE) | revoked (1) | user (u16 BE length,
//! bytes) | scope count (u16 BE) | each scope (u16 BE length, bytes)`.
//! Anything that does not decode is treated as an empty cell (the next snapshot
//! rewrites it).

use std::collections::HashMap;

use crate::api_token::{
    lookup_key, replica_entry, ApiTokenFeedError, ApiTokenFeedPage, ReplicaToken, Verifier, LOOKUP_LEN,
    MAX_FEED_PAGE_ENTRIES,
};

/// Cells of the replica (a power of two). At 100 000 tokens a cell holds about 25
/// records (≈ 3 KB): the bytes one request copies out of shared data.
pub const CELLS: usize = 4096;
const VERSION: u8 = 1;

/// A lookup id as the replica's key.
pub type Lookup = [u8; LOOKUP_LEN];

/// The cell a lookup id lives in: FNV-1a of its bytes. The lookup ids are random, so
/// the cells fill evenly; a client choosing lookups only chooses which cell it reads.
pub fn cell_of(lookup: &[u8]) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in lookup {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    usize::try_from(hash % CELLS as u64).unwrap_or(0)
}

/// The shared-data key of cell `index`.
pub fn cell_key(index: usize) -> String {
    format!("portcullis.v1.api_tokens.cell.{index}")
}

fn push_str(out: &mut Vec<u8>, text: &str) {
    let len = u16::try_from(text.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(text.as_bytes().get(..usize::from(len)).unwrap_or_default());
}

/// Encodes a cell's records.
pub fn encode_cell(records: &[(Lookup, ReplicaToken)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + records.len() * 96);
    out.push(VERSION);
    for (lookup, token) in records {
        out.extend_from_slice(lookup);
        out.extend_from_slice(&token.verifier.0);
        out.extend_from_slice(&token.expires_at.to_be_bytes());
        out.push(u8::from(token.revoked));
        push_str(&mut out, &token.user);
        let count = u16::try_from(token.scopes.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&count.to_be_bytes());
        for scope in token.scopes.iter().take(usize::from(count)) {
            push_str(&mut out, scope);
        }
    }
    out
}

/// A reader over a cell's bytes.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.bytes.get(..n)?, self.bytes.get(n..)?);
        self.bytes = rest;
        Some(head)
    }

    fn u16(&mut self) -> Option<usize> {
        let b = self.take(2)?;
        Some(usize::from(u16::from_be_bytes([*b.first()?, *b.get(1)?])))
    }

    fn str(&mut self) -> Option<&'a str> {
        let len = self.u16()?;
        std::str::from_utf8(self.take(len)?).ok()
    }

    /// The next record's lookup, and a reader positioned after it.
    fn lookup(&mut self) -> Option<Lookup> {
        Lookup::try_from(self.take(LOOKUP_LEN)?).ok()
    }

    /// Decodes the rest of a record (after its lookup).
    fn token(&mut self) -> Option<ReplicaToken> {
        let verifier = Verifier(<[u8; 32]>::try_from(self.take(32)?).ok()?);
        let expires_at = u64::from_be_bytes(<[u8; 8]>::try_from(self.take(8)?).ok()?);
        let revoked = *self.take(1)?.first()? != 0;
        let user = self.str()?.into();
        let count = self.u16()?;
        let mut scopes = Vec::with_capacity(count.min(64));
        for _ in 0..count {
            scopes.push(Box::<str>::from(self.str()?));
        }
        Some(ReplicaToken { verifier, user, scopes: scopes.into_boxed_slice(), expires_at, revoked })
    }

    /// Skips the rest of a record (after its lookup).
    fn skip_token(&mut self) -> Option<()> {
        self.take(32 + 8 + 1)?;
        let user = self.u16()?;
        self.take(user)?;
        for _ in 0..self.u16()? {
            let len = self.u16()?;
            self.take(len)?;
        }
        Some(())
    }
}

fn records(bytes: &[u8]) -> Option<Reader<'_>> {
    match bytes.split_first() {
        Some((&VERSION, rest)) => Some(Reader { bytes: rest }),
        _ => None,
    }
}

/// Every record of a cell; an unreadable cell reads as empty.
pub fn decode_cell(bytes: &[u8]) -> Vec<(Lookup, ReplicaToken)> {
    let mut out = Vec::new();
    let Some(mut reader) = records(bytes) else { return out };
    while !reader.bytes.is_empty() {
        let Some(record) = reader.lookup().and_then(|l| Some((l, reader.token()?))) else {
            return Vec::new();
        };
        out.push(record);
    }
    out
}

/// The record of `lookup` in a cell, decoding only that one.
pub fn find_in_cell(bytes: &[u8], lookup: &str) -> Option<ReplicaToken> {
    let wanted = lookup_key(lookup)?;
    let mut reader = records(bytes)?;
    while !reader.bytes.is_empty() {
        if reader.lookup()? == wanted {
            return reader.token();
        }
        reader.skip_token()?;
    }
    None
}

/// A cell with `entries` written over it (each replaces its lookup's record) and the
/// records expired at `now_unix_secs` dropped.
pub fn upsert(cell: Option<&[u8]>, entries: &[(Lookup, ReplicaToken)], now_unix_secs: u64) -> Vec<u8> {
    let mut records = cell.map(decode_cell).unwrap_or_default();
    for (lookup, token) in entries {
        match records.iter_mut().find(|(l, _)| l == lookup) {
            Some(slot) => slot.1 = token.clone(),
            None => records.push((*lookup, token.clone())),
        }
    }
    records.retain(|(_, t)| t.expires_at > now_unix_secs);
    encode_cell(&records)
}

/// What one feed page asks of the cells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CellWrites {
    /// Changes: write each entry over its cell ([`upsert`]), cell by cell.
    Delta(Vec<(usize, Vec<(Lookup, ReplicaToken)>)>),
    /// A snapshot part was kept; nothing to write yet.
    Assembling,
    /// A complete snapshot: every cell's records (index = cell); cells not listed
    /// are emptied.
    Snapshot(HashMap<usize, Vec<(Lookup, ReplicaToken)>>),
}

/// A snapshot being read by the worker that follows the feed.
#[derive(Debug, Clone, Default)]
struct Assembly {
    id: String,
    part: u32,
    cursor: String,
    cells: HashMap<usize, Vec<(Lookup, ReplicaToken)>>,
}

/// Follows the feed for the cells: turns each page into [`CellWrites`]. The cursor of
/// the published cells is kept by the caller (in shared data, so that another worker
/// can take over); a snapshot under assembly is kept here.
#[derive(Debug, Default)]
pub struct CellFeed {
    assembly: Option<Assembly>,
}

impl CellFeed {
    /// The cursor to poll with: the assembly's, else the published one.
    pub fn cursor<'a>(&'a self, published: &'a str) -> &'a str {
        self.assembly.as_ref().map_or(published, |a| a.cursor.as_str())
    }

    pub fn assembling(&self) -> bool {
        self.assembly.is_some()
    }

    /// Drops a snapshot under assembly (another worker took over).
    pub fn abandon(&mut self) {
        self.assembly = None;
    }

    /// What `page` asks of the cells, and the cursor to publish once it is written
    /// (`None` while a snapshot is under assembly). On error any assembly is abandoned
    /// and nothing is to be written.
    pub fn apply(
        &mut self,
        page: &ApiTokenFeedPage,
    ) -> Result<(CellWrites, Option<String>), ApiTokenFeedError> {
        if page.tokens.len() > MAX_FEED_PAGE_ENTRIES {
            self.assembly = None;
            return Err(ApiTokenFeedError::TooManyEntries);
        }
        let mut by_cell: HashMap<usize, Vec<(Lookup, ReplicaToken)>> = HashMap::new();
        for entry in &page.tokens {
            let Some((lookup, token)) = replica_entry(entry) else {
                self.assembly = None;
                return Err(ApiTokenFeedError::BadEntry);
            };
            by_cell.entry(cell_of(&lookup)).or_default().push((lookup, token));
        }
        let Some(part) = &page.snapshot else {
            if self.assembly.take().is_some() {
                return Err(ApiTokenFeedError::OutOfOrder);
            }
            let mut delta: Vec<_> = by_cell.into_iter().collect();
            delta.sort_by_key(|(cell, _)| *cell);
            return Ok((CellWrites::Delta(delta), Some(page.cursor.clone())));
        };
        let mut assembly = match self.assembly.take() {
            _ if part.part == 0 => Assembly { id: part.id.clone(), ..Assembly::default() },
            Some(a) if a.id == part.id && a.part.checked_add(1) == Some(part.part) => a,
            _ => return Err(ApiTokenFeedError::OutOfOrder),
        };
        assembly.part = part.part;
        assembly.cursor.clone_from(&page.cursor);
        for (cell, records) in by_cell {
            let slot = assembly.cells.entry(cell).or_default();
            for (lookup, token) in records {
                match slot.iter_mut().find(|(l, _)| *l == lookup) {
                    Some(existing) => existing.1 = token,
                    None => slot.push((lookup, token)),
                }
            }
        }
        if part.last {
            Ok((CellWrites::Snapshot(assembly.cells), Some(assembly.cursor)))
        } else {
            self.assembly = Some(assembly);
            Ok((CellWrites::Assembling, None))
        }
    }
}
