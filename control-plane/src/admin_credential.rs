//! The admin API's bearer token.
//!
//! Only a SHA-256 digest of the configured token is kept in memory, and presented
//! tokens are compared digest to digest in constant time, so neither the comparison's
//! timing nor the token's length leaks.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq as _;

/// Shorter admin tokens are refused: they could be guessed.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum AdminCredentialError {
    #[error("the admin token must be at least {MIN_ADMIN_TOKEN_LEN} characters long")]
    TooShort,
}

pub struct AdminCredential {
    digest: [u8; 32],
}

impl std::fmt::Debug for AdminCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminCredential(..)")
    }
}

impl AdminCredential {
    pub fn new(token: &str) -> Result<Self, AdminCredentialError> {
        if token.chars().count() < MIN_ADMIN_TOKEN_LEN {
            return Err(AdminCredentialError::TooShort);
        }
        Ok(Self { digest: Sha256::digest(token.as_bytes()).into() })
    }

    pub fn verify(&self, presented: &str) -> bool {
        let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        self.digest.ct_eq(&presented).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_configured_token_verifies() {
        let credential = AdminCredential::new("0123456789abcdef-secret").unwrap();
        assert!(credential.verify("0123456789abcdef-secret"));
        assert!(!credential.verify("0123456789abcdef-secreT"));
        assert!(!credential.verify(""));
    }

    #[test]
    fn short_tokens_are_refused() {
        assert!(AdminCredential::new("short").is_err());
    }
}
