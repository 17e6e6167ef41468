//! Long-lived API tokens: the token format, the verifier the control plane stores, the
//! records it ships to filters, and the replica a filter decides from.
//!
//! **Format.** `<prefix>_<lookup>_<secret><checksum>`, e.g.
//! `pct_4fZq0bT9_k3J…(32)…Xw2Ab1Qz` :
//! - `prefix`: 1 to [`MAX_PREFIX_LEN`] of `[a-z0-9]` (default [`DEFAULT_PREFIX`]), so
//!   scanners and humans can tell what a string is;
//! - `lookup`: [`LOOKUP_LEN`] base62 characters, public: the token's id, by which the
//!   control plane and the replica find the record (one read, no scan);
//! - `secret`: [`SECRET_LEN`] base62 characters (≈190 bits) from a CSPRNG;
//! - `checksum`: [`CHECKSUM_LEN`] base62 characters, the first 32 bits of SHA-256 over
//!   `<prefix>_<lookup>_<secret>`, so a leaked-token scanner can recognise a real token
//!   offline (no call, no false positives from look-alikes) and a mistyped token is
//!   refused before any lookup.
//!
//! Base62 and `_` only: the token survives copy-paste, double-click selection, URLs and
//! shell quoting as it is. `_` never occurs inside a part, so the split is unambiguous.
//!
//! **Verifier.** The control plane stores, and the feed ships, only
//! [`verifier`]`(lookup, secret)` = SHA-256 of a domain label, the lookup and the secret
//! (each length-prefixed); never the secret. A plain (unkeyed) hash is the choice:
//! - the secret has ≈190 bits of entropy: no guess can be checked against a leaked
//!   verifier in any useful time, so a slow password hash or a pepper buys nothing;
//! - filters verify locally. A pepper (HMAC with a key derived from the master key)
//!   would have to be shipped to every Envoy, spreading a master-key-derived secret to
//!   the data plane, to protect against an attack (offline guessing) that the entropy
//!   already rules out;
//! - binding the lookup into the hash means a verifier copied onto another record
//!   never verifies.
//!
//! Comparison is constant time ([`verify`]). Parsing never allocates and refuses
//! anything longer than [`MAX_TOKEN_LEN`] before looking at it.
//!
//! **Sync.** The control plane appends every change (creation, revocation) to a feed
//! of its own; filters follow it with `GET` [`FEED_PATH`] ([`ApiTokenFeedPage`]) and
//! keep an [`ApiTokenReplica`]. Expiry needs no feed entry: every record carries its
//! `expiresAt`, which the replica checks against the host's clock and prunes by. Usage
//! goes back batched, off the request path, with `POST` [`USAGE_PATH`]
//! ([`UsageReport`]); the control plane writes `lastUsedAt` at most once a minute per
//! token.

mod format;
mod replica;
mod wire;

#[cfg(test)]
mod tests;

pub use format::*;
pub use replica::*;
pub use wire::*;

/// `GET`: one page of the API token feed (internal listener, fleet credential).
pub const FEED_PATH: &str = "/v1/api-tokens/feed";
/// `POST`: a batch of usage reports (internal listener, fleet credential).
pub const USAGE_PATH: &str = "/v1/api-tokens/usage";

/// The prefix unless configured otherwise.
pub const DEFAULT_PREFIX: &str = "pct";
/// Longest prefix.
pub const MAX_PREFIX_LEN: usize = 16;
/// Characters of the lookup id.
pub const LOOKUP_LEN: usize = 8;
/// Characters of the secret (62^32 ≈ 2^190).
pub const SECRET_LEN: usize = 32;
/// Characters of the checksum (62^6 > 2^32).
pub const CHECKSUM_LEN: usize = 6;
/// Longest token any prefix allows.
pub const MAX_TOKEN_LEN: usize = MAX_PREFIX_LEN + 1 + LOOKUP_LEN + 1 + SECRET_LEN + CHECKSUM_LEN;
/// Random bytes [`generate`] takes: 16 for the lookup, 32 for the secret. Each part is
/// the low base62 digits of a number at least 64 bits wider than the part, so the
/// digits are uniform to within 2^-64.
pub const RANDOM_BYTES: usize = 48;
/// Most entries on one feed page; larger pages are refused by the replica.
pub const MAX_FEED_PAGE_ENTRIES: usize = 5_000;
/// Most usage entries in one report.
pub const MAX_USAGE_BATCH: usize = 1_000;
