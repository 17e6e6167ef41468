//! HMAC request signatures: a rule's `signatures` section, the keys they are checked
//! with, and the check itself.
//!
//! Two schemes, several may be accepted on one rule:
//! - HTTP Message Signatures (RFC 9421) with `hmac-sha256` ([`rfc9421`]), covered
//!   components as the rule demands, `content-digest` (RFC 9530) checked against the
//!   body before the signature;
//! - Standard Webhooks ([`webhook`]): `webhook-id`, `webhook-timestamp`,
//!   `webhook-signature`, signed content `id.timestamp.body`.
//!
//! Keys have an id, an optional owner and one or more secrets; a secret may carry a
//! `notAfter` (Unix seconds), after which it no longer verifies, so a key rotates
//! without downtime: add the new secret, give the old one a `notAfter`. Secrets are at
//! least [`MIN_SECRET_BYTES`] bytes ([`MIN_WHSEC_BYTES`] in the `whsec_` format, whose
//! published secrets are 24 bytes). Every comparison of a MAC is constant time.
//!
//! Time is an argument. The check answers [`Verified`] (the key, and the id the replay
//! guard must see only once) or a stable [`Reason`]; the reason never says which byte
//! or which component failed to match.

pub mod config;
pub mod key_set;
pub mod replay;
pub mod rfc9421;
pub mod sfv;
pub mod webhook;

#[cfg(test)]
mod tests;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq as _;

pub use config::{
    compile_keys, compile_signatures, KeyRing, ReplayGuardFailure, ReplayMode, Scheme, SecretConfig,
    SignatureKey, SignatureKeyConfig, SignaturePolicy, SignatureRuleConfig,
};

/// Shortest secret accepted, in bytes (HMAC-SHA256's output size).
pub const MIN_SECRET_BYTES: usize = 32;
/// Shortest secret accepted in the Standard Webhooks `whsec_` format.
pub const MIN_WHSEC_BYTES: usize = 24;
/// Headers the filter sets upstream for a verified signature (and strips from clients).
pub const KEY_ID_HEADER: &str = "x-portcullis-signature-key";
pub const OWNER_HEADER: &str = "x-portcullis-signature-owner";

/// Why a signed request was refused: stable codes for clients, logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No signature of an accepted scheme.
    MissingSignature,
    /// The signature headers cannot be read.
    Malformed,
    /// The key id is not one this rule accepts.
    UnknownKey,
    /// No valid secret of the key produces this signature.
    BadSignature,
    /// `created` / the timestamp is outside the tolerance (past or future).
    Stale,
    /// The signature's `expires` has passed.
    Expired,
    /// This nonce or message id was already accepted within the window.
    Replayed,
    /// `content-digest` does not match the body.
    DigestMismatch,
    /// The signature does not cover what the rule demands (or lacks a nonce the replay
    /// guard needs).
    MissingComponent,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::MissingSignature => "missing_signature",
            Reason::Malformed => "malformed",
            Reason::UnknownKey => "unknown_key",
            Reason::BadSignature => "bad_signature",
            Reason::Stale => "stale",
            Reason::Expired => "expired",
            Reason::Replayed => "replayed",
            Reason::DigestMismatch => "digest_mismatch",
            Reason::MissingComponent => "missing_component",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Reason::MissingSignature => "a signed request is required",
            Reason::Malformed => "the signature headers cannot be read",
            Reason::UnknownKey => "the key id is not accepted here",
            Reason::BadSignature => "the signature does not verify",
            Reason::Stale => "the signature's time is outside the accepted window",
            Reason::Expired => "the signature has expired",
            Reason::Replayed => "this signature was already used",
            Reason::DigestMismatch => "the content digest does not match the body",
            Reason::MissingComponent => "the signature does not cover what this route requires",
        }
    }
}

/// The request as a signature sees it. Header names are lower-case.
#[derive(Debug, Clone, Copy)]
pub struct SignedRequest<'a> {
    pub method: &'a str,
    /// `http` or `https`, as the proxy received it.
    pub scheme: &'a str,
    pub authority: &'a str,
    /// The path with its query, as received.
    pub path: &'a str,
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
}

impl SignedRequest<'_> {
    /// Every value of header `name`, joined with `, ` and trimmed (RFC 9421 §2.1);
    /// `None` when absent.
    pub fn field(&self, name: &str) -> Option<String> {
        let values: Vec<&str> = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
            .collect();
        (!values.is_empty()).then(|| values.join(", "))
    }
}

/// A signature that verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub key_id: String,
    pub owner: Option<String>,
    /// What the replay guard must accept only once (scheme, key and nonce or message
    /// id), and until when (Unix seconds) it must remember it.
    pub replay: Option<(String, u64)>,
}

/// Checks the request's signature under `policy` with `keys` at `now` (Unix seconds).
/// The first accepted scheme whose headers are present is the one checked.
pub fn verify(
    policy: &SignaturePolicy,
    keys: &KeyRing,
    request: &SignedRequest<'_>,
    now: u64,
) -> Result<Verified, Reason> {
    for scheme in &policy.schemes {
        match scheme {
            Scheme::HttpMessageSignatures if request.field("signature-input").is_some() => {
                return rfc9421::verify(policy, keys, request, now)
            }
            Scheme::StandardWebhooks if request.field("webhook-signature").is_some() => {
                return webhook::verify(policy, keys, request, now)
            }
            _ => {}
        }
    }
    Err(Reason::MissingSignature)
}

/// HMAC-SHA256 of `parts`, concatenated.
pub(crate) fn hmac_sha256(secret: &[u8], parts: &[&[u8]]) -> Option<[u8; 32]> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).ok()?;
    for part in parts {
        mac.update(part);
    }
    Some(mac.finalize().into_bytes().into())
}

/// Constant-time comparison of a MAC with what a client presented (lengths are public).
pub(crate) fn same_mac(expected: &[u8], presented: &[u8]) -> bool {
    expected.len() == presented.len() && bool::from(expected.ct_eq(presented))
}

/// Whether `now` is within `tolerance` seconds of `t`, either way.
pub(crate) fn within(t: i64, now: u64, tolerance: u64) -> bool {
    let now = i64::try_from(now).unwrap_or(i64::MAX);
    let tolerance = i64::try_from(tolerance).unwrap_or(i64::MAX);
    now.saturating_sub(t).saturating_abs() <= tolerance
}
