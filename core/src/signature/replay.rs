//! The replay guard's memory, as bytes for one shared-data cell: a list of
//! (fingerprint, remember-until) entries. The filter spreads ids over a fixed number
//! of cells ([`CELLS`], chosen by the fingerprint) and changes a cell with its one
//! compare-and-swap loop; this module decides what the new value is.
//!
//! A fingerprint is the first 16 bytes of SHA-256 over the replay id (scheme, key and
//! nonce or message id): collisions are out of reach, and the cell holds no client
//! text. An entry is kept until its signature could no longer be accepted (its time
//! plus the tolerance), then dropped at the next write. A full cell of live entries
//! cannot take one more without forgetting an id still in its window: the guard then
//! answers [`Remember::Full`] and the filter refuses with 503 rather than let a
//! replay through.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Where the control plane claims replay ids for `replay: global` (internal listener,
/// fleet credential): `POST` a [`ReplayClaim`], answered by a [`ReplayClaimAnswer`].
pub const CLAIM_PATH: &str = "/v1/signature-replay";

/// A claim of one replay id across the fleet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReplayClaim {
    /// [`claim_id`] of the replay id: 64 lower-case hex digits (no client text).
    pub id: String,
    /// Unix seconds until which the id must be remembered (its signature's time plus
    /// the tolerance).
    pub until: u64,
}

/// The control plane's answer to a [`ReplayClaim`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplayClaimAnswer {
    /// True for the first claim of the id within its window; false for a replay.
    pub fresh: bool,
}

/// What a replay id is claimed as: hex SHA-256 of it.
pub fn claim_id(id: &str) -> String {
    crate::codec::hex(&Sha256::digest(id.as_bytes()))
}

/// Whether `id` is what [`claim_id`] makes.
pub fn is_claim_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Shared-data cells the ids are spread over.
pub const CELLS: usize = 64;
/// Entries per cell.
pub const CELL_ENTRIES: usize = 256;
const ENTRY: usize = 24;

/// What remembering an id answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Remember {
    /// First sight: write these bytes to the cell.
    Write(Vec<u8>),
    /// Seen within its window: a replay.
    Seen,
    /// The cell is full of live entries.
    Full,
}

/// The fingerprint of a replay id, and the cell it lives in.
pub fn fingerprint(id: &str) -> ([u8; 16], usize) {
    let digest = Sha256::digest(id.as_bytes());
    let mut out = [0u8; 16];
    out.copy_from_slice(digest.get(..16).unwrap_or(&[0u8; 16]));
    let cell = usize::from(out[0]) % CELLS;
    (out, cell)
}

/// Records `print` until `until` in a cell holding `cell` (None: never written) at `now`.
pub fn remember(cell: Option<&[u8]>, print: &[u8; 16], until: u64, now: u64) -> Remember {
    let mut kept: Vec<u8> = Vec::with_capacity(cell.map_or(0, <[u8]>::len) + ENTRY);
    for entry in cell.unwrap_or(&[]).chunks_exact(ENTRY) {
        let (fp, expiry) = entry.split_at(16);
        let expiry = u64::from_be_bytes(expiry.try_into().unwrap_or([0; 8]));
        if expiry < now {
            continue;
        }
        if fp == print {
            return Remember::Seen;
        }
        kept.extend_from_slice(entry);
    }
    if kept.len() / ENTRY >= CELL_ENTRIES {
        return Remember::Full;
    }
    kept.extend_from_slice(print);
    kept.extend_from_slice(&until.to_be_bytes());
    Remember::Write(kept)
}
