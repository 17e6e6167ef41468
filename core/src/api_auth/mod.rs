//! API tokens at the proxy: the `apiTokens` configuration section ([`config`]), the
//! replica as cells of shared data and the feed follower that writes them ([`cells`]),
//! and the per-request decision ([`decide`]): find the token in the configured
//! locations, refuse a malformed one before any lookup, read its record, check the
//! verifier (constant time), revocation, expiry (the host's clock, passed in) and the
//! rule's scopes, and say what goes upstream.
//!
//! The token format, the verifier and the feed's wire types are
//! [`crate::api_token`]'s; this module is what a filter does with them.

pub mod cells;
pub mod config;
pub mod decide;

#[cfg(test)]
mod tests;

pub use cells::{cell_key, cell_of, CellFeed, CellWrites, CELLS};
pub use config::{compile_api_tokens, ApiTokenSettings, ApiTokensConfig};
pub use decide::{authenticate_api_token, ApiAuth, ApiAuthInput, ApiIdentity};
