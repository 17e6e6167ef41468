//! Token signing key pairs: ES256 (P-256, the default), EdDSA (Ed25519) and RS256
//! (RSA 2048, PKCS#1 v1.5). Pure: generation takes the random source, and the private
//! part leaves this module only as bytes for [`crate::keys`] to seal under the master
//! key.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use p256::ecdsa::signature::Signer as _;
use rsa::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};
use rsa::traits::PublicKeyParts as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::random::{RandomError, RandomSource, RngAdapter};

/// RSA modulus size for RS256 keys.
pub const RSA_BITS: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum SigningKeyError {
    #[error(transparent)]
    Random(#[from] RandomError),
    #[error("the stored {alg} private key is unusable: {reason}")]
    InvalidPrivateKey { alg: SigningAlgorithm, reason: String },
    #[error("could not generate a {0} key from the random source")]
    Generation(SigningAlgorithm),
}

/// The JWS algorithms the control plane signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
pub enum SigningAlgorithm {
    #[serde(rename = "ES256")]
    #[value(name = "ES256", alias = "es256")]
    Es256,
    #[serde(rename = "EdDSA")]
    #[value(name = "EdDSA", alias = "eddsa")]
    EdDsa,
    #[serde(rename = "RS256")]
    #[value(name = "RS256", alias = "rs256")]
    Rs256,
}

impl SigningAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            SigningAlgorithm::Es256 => "ES256",
            SigningAlgorithm::EdDsa => "EdDSA",
            SigningAlgorithm::Rs256 => "RS256",
        }
    }
}

impl fmt::Display for SigningAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

enum PrivateKey {
    Es256(p256::ecdsa::SigningKey),
    EdDsa(ed25519_compact::KeyPair),
    Rs256(Box<rsa::pkcs1v15::SigningKey<Sha256>>),
}

/// A key pair with its key id (the RFC 7638 JWK thumbprint of the public key).
pub struct SigningKeyPair {
    kid: String,
    key: PrivateKey,
    public: PublicJwk,
}

impl fmt::Debug for SigningKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKeyPair")
            .field("kid", &self.kid)
            .field("alg", &self.alg())
            .finish_non_exhaustive()
    }
}

/// A public key in JWK form (RFC 7517/7518, RFC 8037 for Ed25519).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicJwk {
    pub kty: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
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
    pub fn generate(alg: SigningAlgorithm, rng: &dyn RandomSource) -> Result<Self, SigningKeyError> {
        match alg {
            SigningAlgorithm::Es256 => {
                // A random 32-byte string is a valid scalar unless it is zero or >= the
                // group order (probability about 2^-32); retry a few times rather than
                // loop forever on a broken source.
                for _ in 0..8 {
                    let mut bytes = Zeroizing::new([0u8; 32]);
                    rng.fill(bytes.as_mut_slice())?;
                    if let Ok(pair) = Self::from_private_bytes(alg, bytes.as_slice()) {
                        return Ok(pair);
                    }
                }
                Err(SigningKeyError::Generation(alg))
            }
            SigningAlgorithm::EdDsa => {
                let mut seed = Zeroizing::new([0u8; 32]);
                rng.fill(seed.as_mut_slice())?;
                Self::from_private_bytes(alg, seed.as_slice())
            }
            SigningAlgorithm::Rs256 => {
                let mut adapter = RngAdapter::new(rng);
                let key = rsa::RsaPrivateKey::new(&mut adapter, RSA_BITS)
                    .map_err(|_| SigningKeyError::Generation(alg));
                adapter.finish()?;
                Ok(Self::from_rsa(key?))
            }
        }
    }

    /// Rebuilds a key from [`SigningKeyPair::private_bytes`].
    pub fn from_private_bytes(alg: SigningAlgorithm, bytes: &[u8]) -> Result<Self, SigningKeyError> {
        let invalid = |reason: &str| SigningKeyError::InvalidPrivateKey { alg, reason: reason.to_owned() };
        match alg {
            SigningAlgorithm::Es256 => {
                let key =
                    p256::ecdsa::SigningKey::from_slice(bytes).map_err(|_| invalid("not a P-256 scalar"))?;
                let point = key.verifying_key().to_encoded_point(false);
                let encode =
                    |c: Option<&p256::FieldBytes>| c.map_or_else(String::new, |c| URL_SAFE_NO_PAD.encode(c));
                let (x, y) = (encode(point.x()), encode(point.y()));
                let kid = thumbprint(&format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#));
                let public = PublicJwk {
                    kty: "EC".into(),
                    crv: Some("P-256".into()),
                    x: Some(x),
                    y: Some(y),
                    n: None,
                    e: None,
                    kid: kid.clone(),
                    use_: "sig".into(),
                    alg: alg.as_str().into(),
                };
                Ok(Self { kid, key: PrivateKey::Es256(key), public })
            }
            SigningAlgorithm::EdDsa => {
                let seed =
                    ed25519_compact::Seed::from_slice(bytes).map_err(|_| invalid("not a 32-byte seed"))?;
                let pair = ed25519_compact::KeyPair::from_seed(seed);
                let x = URL_SAFE_NO_PAD.encode(pair.pk.as_slice());
                let kid = thumbprint(&format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#));
                let public = PublicJwk {
                    kty: "OKP".into(),
                    crv: Some("Ed25519".into()),
                    x: Some(x),
                    y: None,
                    n: None,
                    e: None,
                    kid: kid.clone(),
                    use_: "sig".into(),
                    alg: alg.as_str().into(),
                };
                Ok(Self { kid, key: PrivateKey::EdDsa(pair), public })
            }
            SigningAlgorithm::Rs256 => {
                let key =
                    rsa::RsaPrivateKey::from_pkcs8_der(bytes).map_err(|_| invalid("not a PKCS#8 RSA key"))?;
                Ok(Self::from_rsa(key))
            }
        }
    }

    fn from_rsa(key: rsa::RsaPrivateKey) -> Self {
        let n = URL_SAFE_NO_PAD.encode(key.n().to_bytes_be());
        let e = URL_SAFE_NO_PAD.encode(key.e().to_bytes_be());
        let kid = thumbprint(&format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#));
        let public = PublicJwk {
            kty: "RSA".into(),
            crv: None,
            x: None,
            y: None,
            n: Some(n),
            e: Some(e),
            kid: kid.clone(),
            use_: "sig".into(),
            alg: SigningAlgorithm::Rs256.as_str().into(),
        };
        Self { kid, key: PrivateKey::Rs256(Box::new(rsa::pkcs1v15::SigningKey::<Sha256>::new(key))), public }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn alg(&self) -> SigningAlgorithm {
        match self.key {
            PrivateKey::Es256(_) => SigningAlgorithm::Es256,
            PrivateKey::EdDsa(_) => SigningAlgorithm::EdDsa,
            PrivateKey::Rs256(_) => SigningAlgorithm::Rs256,
        }
    }

    pub fn public_jwk(&self) -> PublicJwk {
        self.public.clone()
    }

    /// The private key as bytes, for sealing: the P-256 scalar, the Ed25519 seed, or
    /// the RSA key as PKCS#8 DER.
    pub fn private_bytes(&self) -> Result<Zeroizing<Vec<u8>>, SigningKeyError> {
        Ok(match &self.key {
            PrivateKey::Es256(key) => Zeroizing::new(key.to_bytes().to_vec()),
            PrivateKey::EdDsa(pair) => Zeroizing::new(pair.sk.seed().as_slice().to_vec()),
            PrivateKey::Rs256(key) => {
                let private: &rsa::RsaPrivateKey = key.as_ref().as_ref();
                let der = private.to_pkcs8_der().map_err(|e| SigningKeyError::InvalidPrivateKey {
                    alg: SigningAlgorithm::Rs256,
                    reason: format!("cannot encode: {e}"),
                })?;
                Zeroizing::new(der.as_bytes().to_vec())
            }
        })
    }

    /// The JWS signature of `signing_input` (ES256: `r || s`, RFC 7518 §3.4).
    pub fn sign(&self, signing_input: &[u8]) -> Vec<u8> {
        match &self.key {
            PrivateKey::Es256(key) => {
                let signature: p256::ecdsa::Signature = key.sign(signing_input);
                signature.to_bytes().to_vec()
            }
            // Deterministic Ed25519 (no noise), as RFC 8032 specifies.
            PrivateKey::EdDsa(pair) => pair.sk.sign(signing_input, None).as_slice().to_vec(),
            PrivateKey::Rs256(key) => {
                let signature: rsa::pkcs1v15::Signature = key.sign(signing_input);
                rsa::signature::SignatureEncoding::to_vec(&signature)
            }
        }
    }
}

/// RFC 7638 thumbprint of the canonical JWK members, base64url.
fn thumbprint(canonical: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::SeededRandom;

    #[test]
    fn key_id_is_the_thumbprint_of_the_public_jwk() {
        let pair = SigningKeyPair::generate(SigningAlgorithm::Es256, &SeededRandom::new(7)).unwrap();
        let jwk = pair.public_jwk();
        assert_eq!(jwk.kid, pair.kid());
        assert_eq!(URL_SAFE_NO_PAD.decode(jwk.x.unwrap()).unwrap().len(), 32);
        assert_eq!(URL_SAFE_NO_PAD.decode(&jwk.kid).unwrap().len(), 32);
    }

    #[test]
    fn every_algorithm_round_trips_through_private_bytes() {
        for alg in [SigningAlgorithm::Es256, SigningAlgorithm::EdDsa, SigningAlgorithm::Rs256] {
            let pair = SigningKeyPair::generate(alg, &SeededRandom::new(1)).unwrap();
            let again = SigningKeyPair::from_private_bytes(alg, &pair.private_bytes().unwrap()).unwrap();
            assert_eq!(again.kid(), pair.kid(), "{alg}");
            assert_eq!(again.public_jwk(), pair.public_jwk(), "{alg}");
            assert_eq!(pair.public_jwk().alg, alg.as_str());
            assert!(!pair.sign(b"x").is_empty());
        }
    }

    #[test]
    fn debug_output_does_not_reveal_the_private_key() {
        let pair = SigningKeyPair::generate(SigningAlgorithm::Es256, &SeededRandom::new(3)).unwrap();
        let d = URL_SAFE_NO_PAD.encode(pair.private_bytes().unwrap().as_slice());
        assert!(!format!("{pair:?}").contains(&d));
    }
}
