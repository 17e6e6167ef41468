//! JWT verification: pure logic, no host calls, no clock.
//!
//! - [`reason`]: why a token was rejected (stable codes for logs and RFC 6750 errors);
//! - [`alg`]: the accepted JWS algorithms (`none` is not one of them);
//! - [`jwks`]: JWKS documents turned into keys, each bound to one algorithm;
//! - [`jws`]: compact JWS parsing and signature verification ([`es256`]: ECDSA P-256);
//! - [`provider`]: a provider's configuration, compiled, and what it does per request
//!   (extract, verify, check versions, upstream headers);
//! - [`versions`]: token-version revocation state;
//! - [`cache`]: a bounded LRU of verified tokens.
//!
//! Cryptography comes from `jwt-compact` (HMAC, RSA), `p256` (ES256) and `ed25519-dalek`
//! (EdDSA); parsing and policy are ours so that every
//! rejection has an exact [`Reason`] and nothing panics on any input.

pub mod alg;
pub mod cache;
mod claims;
mod es256;
mod extract;
pub mod jwks;
pub mod jws;
pub mod provider;
pub mod reason;
mod token;
pub mod versions;

pub use alg::Algorithm;
pub use cache::VerifiedTokenCache;
pub use jwks::{JwksError, JwksWarning, KeySet};
pub use provider::{
    ExtractedToken, KeySource, Provider, ProviderConfig, RemoteJwks, TokenLocation, VerifiedToken,
};
pub use reason::Reason;
pub use versions::{MinimumVersions, VersionState};
