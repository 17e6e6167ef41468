//! The token signing key: ES256 (ECDSA over P-256 with SHA-256).
//!
//! The current key lives in the store as one record, so every replica signs with the
//! same key and the JWKS is the same everywhere. The first replica to start creates
//! it; creation is a compare-and-swap on an absent record, so replicas starting at
//! once cannot end up with two current keys.
//!
//! The private key is stored unencrypted for now; encryption at rest under a master
//! key arrives with key rotation.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize as _, Zeroizing};

use crate::random::{RandomError, RandomSource};
use crate::store::{Store, StoreError};

/// The record holding the current signing key.
pub const CURRENT_SIGNING_KEY_RECORD: &str = "signing-keys/current";

/// The only algorithm the control plane signs with.
pub const ALGORITHM: &str = "ES256";

#[derive(Debug, thiserror::Error)]
pub enum SigningKeyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Random(#[from] RandomError),
    #[error("the stored signing key is unusable: {0}")]
    Corrupt(String),
    #[error("could not generate a valid P-256 key from the random source")]
    Generation,
}

impl SigningKeyError {
    pub fn is_transient(&self) -> bool {
        matches!(self, SigningKeyError::Store(e) if e.is_transient())
    }
}

/// A P-256 key pair with its key id (the RFC 7638 JWK thumbprint of the public key).
pub struct SigningKeyPair {
    kid: String,
    key: SigningKey,
    created_at_ms: u64,
}

impl fmt::Debug for SigningKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKeyPair")
            .field("kid", &self.kid)
            .field("created_at_ms", &self.created_at_ms)
            .finish_non_exhaustive()
    }
}

/// The record's JSON form.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredSigningKey {
    kid: String,
    alg: String,
    created_at_ms: u64,
    /// The private scalar `d`, base64url without padding (as in a JWK).
    d: String,
}

impl Drop for StoredSigningKey {
    fn drop(&mut self) {
        self.d.zeroize();
    }
}

/// A public key in JWK form (RFC 7517/7518).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicJwk {
    pub kty: String,
    pub crv: String,
    pub x: String,
    pub y: String,
    pub kid: String,
    #[serde(rename = "use")]
    pub use_: String,
    pub alg: String,
}

/// A JWK Set document.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JwkSet {
    pub keys: Vec<PublicJwk>,
}

impl SigningKeyPair {
    /// A new key from the random source.
    pub fn generate(rng: &dyn RandomSource, now_ms: u64) -> Result<Self, SigningKeyError> {
        // A random 32-byte string is a valid scalar unless it is zero or >= the group
        // order (probability about 2^-32); retry a few times rather than loop forever
        // on a broken source.
        for _ in 0..8 {
            let mut bytes = Zeroizing::new([0u8; 32]);
            rng.fill(bytes.as_mut_slice())?;
            if let Ok(key) = SigningKey::from_slice(bytes.as_slice()) {
                return Ok(Self::from_key(key, now_ms));
            }
        }
        Err(SigningKeyError::Generation)
    }

    fn from_key(key: SigningKey, created_at_ms: u64) -> Self {
        let (x, y) = public_coordinates(&key);
        Self {
            kid: jwk_thumbprint(&x, &y),
            key,
            created_at_ms,
        }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn created_at_ms(&self) -> u64 {
        self.created_at_ms
    }

    pub fn public_jwk(&self) -> PublicJwk {
        let (x, y) = public_coordinates(&self.key);
        PublicJwk {
            kty: "EC".to_owned(),
            crv: "P-256".to_owned(),
            x,
            y,
            kid: self.kid.clone(),
            use_: "sig".to_owned(),
            alg: ALGORITHM.to_owned(),
        }
    }

    /// The JWS signature of `signing_input`: `r || s`, 64 bytes (RFC 7518 §3.4).
    pub fn sign(&self, signing_input: &[u8]) -> [u8; 64] {
        let signature: Signature = self.key.sign(signing_input);
        signature.to_bytes().into()
    }

    fn to_record(&self) -> Result<Vec<u8>, SigningKeyError> {
        let stored = StoredSigningKey {
            kid: self.kid.clone(),
            alg: ALGORITHM.to_owned(),
            created_at_ms: self.created_at_ms,
            d: URL_SAFE_NO_PAD.encode(self.key.to_bytes()),
        };
        serde_json::to_vec(&stored).map_err(|e| SigningKeyError::Corrupt(format!("cannot encode key: {e}")))
    }

    fn from_record(record: &[u8]) -> Result<Self, SigningKeyError> {
        let stored: StoredSigningKey = serde_json::from_slice(record)
            .map_err(|e| SigningKeyError::Corrupt(format!("not a signing key record: {e}")))?;
        if stored.alg != ALGORITHM {
            return Err(SigningKeyError::Corrupt(format!(
                "unsupported algorithm {:?}",
                stored.alg
            )));
        }
        let bytes = Zeroizing::new(
            URL_SAFE_NO_PAD
                .decode(stored.d.as_bytes())
                .map_err(|_| SigningKeyError::Corrupt("private key is not base64url".into()))?,
        );
        let key = SigningKey::from_slice(&bytes)
            .map_err(|_| SigningKeyError::Corrupt("private key is not a P-256 scalar".into()))?;
        let pair = Self::from_key(key, stored.created_at_ms);
        if pair.kid != stored.kid {
            return Err(SigningKeyError::Corrupt(
                "key id does not match the key".to_owned(),
            ));
        }
        Ok(pair)
    }
}

/// Loads the current signing key, creating it if there is none yet. When several
/// replicas race, exactly one creation wins and everyone uses the winner's key.
pub async fn ensure_current_signing_key(
    store: &dyn Store,
    rng: &dyn RandomSource,
    now_ms: u64,
) -> Result<SigningKeyPair, SigningKeyError> {
    if let Some(record) = store.record_get(CURRENT_SIGNING_KEY_RECORD, now_ms).await? {
        return SigningKeyPair::from_record(&record);
    }
    let candidate = SigningKeyPair::generate(rng, now_ms)?;
    let record = candidate.to_record()?;
    if store
        .record_compare_and_swap(CURRENT_SIGNING_KEY_RECORD, None, Some(record), None, now_ms)
        .await?
    {
        tracing::info!(kid = candidate.kid(), "created the signing key");
        return Ok(candidate);
    }
    let record = store
        .record_get(CURRENT_SIGNING_KEY_RECORD, now_ms)
        .await?
        .ok_or_else(|| {
            SigningKeyError::Corrupt("the signing key vanished right after creation".to_owned())
        })?;
    SigningKeyPair::from_record(&record)
}

fn public_coordinates(key: &SigningKey) -> (String, String) {
    let point = key.verifying_key().to_encoded_point(false);
    let encode = |c: Option<&p256::FieldBytes>| c.map_or_else(String::new, |c| URL_SAFE_NO_PAD.encode(c));
    (encode(point.x()), encode(point.y()))
}

/// RFC 7638 thumbprint of an EC public key: SHA-256 over the required members in
/// lexicographic order, without whitespace, base64url-encoded.
fn jwk_thumbprint(x: &str, y: &str) -> String {
    let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::SeededRandom;
    use crate::store::MemoryStore;

    #[test]
    fn key_id_is_the_thumbprint_of_the_public_jwk() {
        let pair = SigningKeyPair::generate(&SeededRandom::new(7), 0).unwrap();
        let jwk = pair.public_jwk();
        assert_eq!(jwk.kid, pair.kid());
        assert_eq!(jwk.kid, jwk_thumbprint(&jwk.x, &jwk.y));
        assert_eq!(URL_SAFE_NO_PAD.decode(&jwk.x).unwrap().len(), 32);
        assert_eq!(URL_SAFE_NO_PAD.decode(&jwk.kid).unwrap().len(), 32);
    }

    #[test]
    fn stored_keys_round_trip_and_tampering_is_detected() {
        let pair = SigningKeyPair::generate(&SeededRandom::new(1), 5).unwrap();
        let record = pair.to_record().unwrap();
        let loaded = SigningKeyPair::from_record(&record).unwrap();
        assert_eq!(loaded.kid(), pair.kid());
        assert_eq!(loaded.created_at_ms(), 5);
        assert_eq!(loaded.sign(b"x"), pair.sign(b"x"));

        let other = SigningKeyPair::generate(&SeededRandom::new(2), 5).unwrap();
        let mut stored: serde_json::Value = serde_json::from_slice(&record).unwrap();
        stored["kid"] = other.kid().into();
        let tampered = serde_json::to_vec(&stored).unwrap();
        assert!(matches!(
            SigningKeyPair::from_record(&tampered),
            Err(SigningKeyError::Corrupt(_))
        ));
    }

    #[test]
    fn debug_output_does_not_reveal_the_private_key() {
        let pair = SigningKeyPair::generate(&SeededRandom::new(3), 0).unwrap();
        let d = URL_SAFE_NO_PAD.encode(pair.key.to_bytes());
        assert!(!format!("{pair:?}").contains(&d));
    }

    #[tokio::test]
    async fn the_first_key_created_stays_current() {
        let store = MemoryStore::new();
        let first = ensure_current_signing_key(&store, &SeededRandom::new(1), 0)
            .await
            .unwrap();
        let second = ensure_current_signing_key(&store, &SeededRandom::new(2), 0)
            .await
            .unwrap();
        assert_eq!(first.kid(), second.kid());
    }
}
