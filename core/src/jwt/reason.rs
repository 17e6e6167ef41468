//! Why a token was rejected, as a small closed set of stable codes.
//!
//! The codes (`as_str()`) appear in logs, metrics and the filter's decision records, so
//! they never change once released. The descriptions are safe to send to clients in an
//! RFC 6750 `error_description`: they never contain token contents or key material.

use std::fmt;

/// The reason a token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Not a compact JWS, not base64url, not JSON, wrong claim types, unknown `crit`.
    Malformed,
    /// Longer than the provider's `maxTokenBytes`; nothing was parsed.
    TooLarge,
    /// `alg` is unknown, `none`, not allowed by the provider, or not the key's algorithm.
    UnsupportedAlgorithm,
    /// The signature does not verify.
    BadSignature,
    /// The token names a `kid` that is not in the key set.
    UnknownKid,
    /// `exp` is in the past (beyond the allowed clock skew).
    Expired,
    /// `nbf` or `iat` is in the future (beyond the allowed clock skew).
    NotYetValid,
    /// `iss` is missing or not the provider's issuer.
    BadIssuer,
    /// `aud` is missing or contains none of the provider's audiences.
    BadAudience,
    /// The token lives longer than the provider's `maxLifetimeSeconds`.
    LifetimeTooLong,
    /// A required claim is absent (including `exp` when expiration is required).
    MissingClaim,
    /// A required claim has another value.
    ClaimMismatch,
    /// The header `typ` is not the expected one.
    BadType,
    /// The token version is below the minimum for its subject or for everyone.
    VersionTooOld,
    /// The token version is above every version the issuer has issued (its published
    /// ceiling): minted with a leaked key to outlive the next breach rotation.
    VersionUnknown,
    /// The token was revoked.
    Revoked,
    /// The key set is empty or not loaded yet.
    NoKeys,
}

impl Reason {
    /// Every reason, in declaration order (for metrics registration and tests).
    pub const ALL: [Reason; 17] = [
        Reason::Malformed,
        Reason::TooLarge,
        Reason::UnsupportedAlgorithm,
        Reason::BadSignature,
        Reason::UnknownKid,
        Reason::Expired,
        Reason::NotYetValid,
        Reason::BadIssuer,
        Reason::BadAudience,
        Reason::LifetimeTooLong,
        Reason::MissingClaim,
        Reason::ClaimMismatch,
        Reason::BadType,
        Reason::VersionTooOld,
        Reason::VersionUnknown,
        Reason::Revoked,
        Reason::NoKeys,
    ];

    /// The stable snake_case code.
    pub const fn as_str(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::TooLarge => "too_large",
            Reason::UnsupportedAlgorithm => "unsupported_algorithm",
            Reason::BadSignature => "bad_signature",
            Reason::UnknownKid => "unknown_kid",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::BadIssuer => "bad_issuer",
            Reason::BadAudience => "bad_audience",
            Reason::LifetimeTooLong => "lifetime_too_long",
            Reason::MissingClaim => "missing_claim",
            Reason::ClaimMismatch => "claim_mismatch",
            Reason::BadType => "bad_type",
            Reason::VersionTooOld => "version_too_old",
            Reason::VersionUnknown => "version_unknown",
            Reason::Revoked => "revoked",
            Reason::NoKeys => "no_keys",
        }
    }

    /// A short phrase for an RFC 6750 `error_description`: safe to show to the client.
    pub const fn description(self) -> &'static str {
        match self {
            Reason::Malformed => "The access token is malformed",
            Reason::TooLarge => "The access token is too large",
            Reason::UnsupportedAlgorithm => "The access token uses an unsupported algorithm",
            Reason::BadSignature => "The access token signature is invalid",
            Reason::UnknownKid => "The access token was signed with an unknown key",
            Reason::Expired => "The access token expired",
            Reason::NotYetValid => "The access token is not valid yet",
            Reason::BadIssuer => "The access token issuer is not accepted",
            Reason::BadAudience => "The access token audience is not accepted",
            Reason::LifetimeTooLong => "The access token lifetime is too long",
            Reason::MissingClaim => "The access token lacks a required claim",
            Reason::ClaimMismatch => "The access token has an unexpected claim value",
            Reason::BadType => "The access token type is not accepted",
            Reason::VersionTooOld => "The access token version is no longer accepted",
            Reason::VersionUnknown => "The access token version was never issued",
            Reason::Revoked => "The access token was revoked",
            Reason::NoKeys => "No verification keys are available",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for Reason {}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn codes_are_unique_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for r in Reason::ALL {
            let code = r.as_str();
            assert!(code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{code}");
            assert!(seen.insert(code), "duplicate code {code}");
            assert_eq!(r.to_string(), code);
            assert!(!r.description().is_empty());
        }
    }
}
