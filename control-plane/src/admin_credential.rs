//! The bearer secrets the control plane accepts: the admin API's token
//! ([`AdminCredential`]) and the fleet credentials of the internal listener
//! ([`FleetCredentials`]: a current one and, during a rotation, the previous one).
//!
//! Only SHA-256 digests of the configured secrets are kept, and presented secrets are
//! compared digest to digest in constant time ([`SecretDigest`]), so neither the
//! comparison's timing nor the secret's length leaks. With two fleet credentials both
//! are always compared.

use std::sync::Arc;

use portcullis_core::fleet::{FeedKey, FleetCredential};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq as _};

/// Shorter admin tokens are refused: they could be guessed.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

/// A secret's SHA-256, compared in constant time.
pub struct SecretDigest([u8; 32]);

impl SecretDigest {
    pub fn new(secret: &str) -> Self {
        Self(Sha256::digest(secret.as_bytes()).into())
    }

    fn matches(&self, presented: &SecretDigest) -> Choice {
        self.0.ct_eq(&presented.0)
    }
}

impl std::fmt::Debug for SecretDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretDigest(..)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AdminCredentialError {
    #[error("the admin token must be at least {MIN_ADMIN_TOKEN_LEN} characters long")]
    TooShort,
}

#[derive(Debug)]
pub struct AdminCredential {
    digest: SecretDigest,
    identity: String,
}

impl AdminCredential {
    pub fn new(token: &str) -> Result<Self, AdminCredentialError> {
        if token.chars().count() < MIN_ADMIN_TOKEN_LEN {
            return Err(AdminCredentialError::TooShort);
        }
        let digest = SecretDigest::new(token);
        let identity = admin_identity(&digest);
        Ok(Self { digest, identity })
    }

    pub fn verify(&self, presented: &str) -> bool {
        self.digest.matches(&SecretDigest::new(presented)).into()
    }

    /// Who the audit log says acted when this credential was presented:
    /// `admin:<fingerprint>`, the first 8 bytes (hex) of a SHA-256 over the token's
    /// digest under a label of its own. Names the credential (records made before and
    /// after an admin token change tell which token was used) without revealing anything
    /// that helps guess it: 64 bits of a hash of a hash of a 16+ character secret.
    pub fn identity(&self) -> &str {
        &self.identity
    }
}

fn admin_identity(digest: &SecretDigest) -> String {
    let mut fingerprint = Sha256::new();
    fingerprint.update(b"portcullis admin identity\0");
    fingerprint.update(digest.0);
    let fingerprint = fingerprint.finalize();
    format!("admin:{}", portcullis_core::codec::hex(fingerprint.get(..8).unwrap_or_default()))
}

/// One accepted fleet credential and the feed key its callers get hashes under.
#[derive(Debug)]
struct Accepted {
    digest: SecretDigest,
    feed_key: Arc<FeedKey>,
}

impl Accepted {
    fn new(credential: &FleetCredential) -> Self {
        Self { digest: SecretDigest::new(credential.as_str()), feed_key: Arc::new(credential.feed_key()) }
    }
}

/// The fleet credentials the internal listener accepts: the current one and, while a
/// fleet rotates, the previous one.
#[derive(Debug)]
pub struct FleetCredentials {
    current: Accepted,
    previous: Option<Accepted>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FleetCredentialsError {
    #[error("the previous fleet credential equals the current one: drop it, or set the new one as current")]
    PreviousEqualsCurrent,
}

impl FleetCredentials {
    pub fn new(
        current: &FleetCredential,
        previous: Option<&FleetCredential>,
    ) -> Result<Self, FleetCredentialsError> {
        if previous.is_some_and(|p| p == current) {
            return Err(FleetCredentialsError::PreviousEqualsCurrent);
        }
        Ok(Self { current: Accepted::new(current), previous: previous.map(Accepted::new) })
    }

    /// The feed key of the credential presented, if it is the current or the previous
    /// one. Both are compared whatever the outcome, in constant time.
    pub fn verify(&self, presented: &str) -> Option<Arc<FeedKey>> {
        let presented = SecretDigest::new(presented);
        let current = self.current.digest.matches(&presented);
        let previous = self.previous.as_ref().map_or(Choice::from(0), |p| p.digest.matches(&presented));
        if bool::from(current) {
            Some(Arc::clone(&self.current.feed_key))
        } else if bool::from(previous) {
            self.previous.as_ref().map(|p| Arc::clone(&p.feed_key))
        } else {
            None
        }
    }

    /// The feed keys of the accepted credentials, current first (what the filters hash
    /// client addresses with).
    pub fn feed_keys(&self) -> impl Iterator<Item = &FeedKey> {
        std::iter::once(&*self.current.feed_key).chain(self.previous.as_ref().map(|p| &*p.feed_key))
    }

    /// Whether `secret` is one of the fleet credentials (the admin token must not be).
    pub fn accepts(&self, secret: &str) -> bool {
        self.verify(secret).is_some()
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
    fn the_identity_names_the_token_without_revealing_it() {
        let token = "0123456789abcdef-secret";
        let identity = AdminCredential::new(token).unwrap().identity().to_owned();
        assert_eq!(identity, AdminCredential::new(token).unwrap().identity(), "stable");
        assert_ne!(identity, AdminCredential::new("0123456789abcdef-other").unwrap().identity());
        let digest = portcullis_core::codec::hex(&Sha256::digest(token.as_bytes()));
        let fingerprint = identity.strip_prefix("admin:").unwrap();
        assert_eq!(fingerprint.len(), 16);
        assert!(!digest.contains(fingerprint) && !identity.contains(token));
    }

    #[test]
    fn short_tokens_are_refused() {
        assert!(AdminCredential::new("short").is_err());
    }

    fn fleet(text: &str) -> FleetCredential {
        FleetCredential::new(text).unwrap()
    }

    #[test]
    fn the_current_and_the_previous_fleet_credential_verify_with_their_own_feed_key() {
        let (new, old) = (fleet(&"n".repeat(40)), fleet(&"o".repeat(40)));
        let both = FleetCredentials::new(&new, Some(&old)).unwrap();
        assert_eq!(*both.verify(new.as_str()).unwrap(), new.feed_key());
        assert_eq!(*both.verify(old.as_str()).unwrap(), old.feed_key());
        assert!(both.verify(&"x".repeat(40)).is_none());
        assert!(both.verify("").is_none());
        let after_overlap = FleetCredentials::new(&new, None).unwrap();
        assert!(after_overlap.verify(old.as_str()).is_none());
        assert!(after_overlap.accepts(new.as_str()));
        assert_eq!(
            FleetCredentials::new(&new, Some(&new)).unwrap_err(),
            FleetCredentialsError::PreviousEqualsCurrent
        );
    }
}
