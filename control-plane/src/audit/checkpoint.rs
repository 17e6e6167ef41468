//! Signed checkpoints: a record whose `checkpoint` is a compact JWS, signed with the
//! control plane's current signing key, over `{seq, hash, time}` of an earlier record.
//!
//! The hash chain alone shows that records were changed only to someone who cannot
//! rehash it, and anyone who can write the store can. A checkpoint ties a position of
//! the chain to a key that lives sealed under the master key: a rewrite before a
//! checkpoint changes the covered record's hash, and a new checkpoint cannot be made
//! without the signing key. The header's `typ` is [`CHECKPOINT_TYP`] and the payload
//! refuses unknown members, so no access token the same key signs passes for one.
//!
//! Checkpoints verify against every key of the key set that was not revoked
//! ([`crate::keys::LoadedKeySet::audit_jwks`]), retired ones included: a checkpoint
//! outlives the overlap of the key that signed it. A revoked key may be in an
//! attacker's hands, so its checkpoints count as forged.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use portcullis_core::jwt::{jws, KeySet};
use serde::{Deserialize, Serialize};

use crate::signing::SigningKeyPair;
use crate::store::StoreError;

/// The JOSE `typ` of a checkpoint.
pub const CHECKPOINT_TYP: &str = "portcullis-audit-checkpoint";

/// A checkpoint JWS larger than this is refused unread.
const MAX_CHECKPOINT_BYTES: usize = 4096;

/// The record a checkpoint vouches for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Covered {
    pub seq: u64,
    pub hash: String,
}

/// The signed payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointClaims {
    pub seq: u64,
    pub hash: String,
    /// Unix milliseconds.
    pub time: u64,
}

#[derive(Serialize)]
struct Header<'a> {
    alg: &'a str,
    kid: &'a str,
    typ: &'a str,
}

/// The compact JWS of a checkpoint over `covered` at `time`.
pub fn sign(signer: &SigningKeyPair, covered: &Covered, time: u64) -> Result<String, StoreError> {
    let header = Header { alg: signer.alg().as_str(), kid: signer.kid(), typ: CHECKPOINT_TYP };
    let claims = CheckpointClaims { seq: covered.seq, hash: covered.hash.clone(), time };
    let signing_input = format!("{}.{}", base64_json(&header)?, base64_json(&claims)?);
    let signature = URL_SAFE_NO_PAD.encode(signer.sign(signing_input.as_bytes()));
    Ok(format!("{signing_input}.{signature}"))
}

fn base64_json(value: &impl Serialize) -> Result<String, StoreError> {
    let json =
        serde_json::to_vec(value).map_err(|e| StoreError::InvalidArgument(format!("checkpoint: {e}")))?;
    Ok(URL_SAFE_NO_PAD.encode(json))
}

/// Why a checkpoint does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("the signature does not verify ({0})")]
    Signature(String),
    #[error("not an audit checkpoint (typ {0:?})")]
    WrongType(Option<String>),
    #[error("the signed payload is not a checkpoint")]
    Payload,
}

/// The claims of a checkpoint whose signature verifies against `keys`.
pub fn verify(token: &str, keys: &KeySet) -> Result<CheckpointClaims, CheckpointError> {
    let verified = jws::verify_compact(token, keys, None, MAX_CHECKPOINT_BYTES)
        .map_err(|reason| CheckpointError::Signature(reason.as_str().to_owned()))?;
    if verified.header.typ.as_deref() != Some(CHECKPOINT_TYP) {
        return Err(CheckpointError::WrongType(verified.header.typ));
    }
    serde_json::from_slice(&verified.payload).map_err(|_| CheckpointError::Payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::SeededRandom;
    use crate::signing::{JwkSet, SigningAlgorithm};

    fn key_set(pairs: &[&SigningKeyPair]) -> KeySet {
        let jwks = JwkSet { keys: pairs.iter().map(|p| p.public_jwk()).collect() };
        KeySet::from_jwks_json(&serde_json::to_vec(&jwks).unwrap()).unwrap().0
    }

    #[test]
    fn a_checkpoint_verifies_with_its_key_only() {
        let covered = Covered { seq: 7, hash: "ab".repeat(32) };
        for alg in [SigningAlgorithm::Es256, SigningAlgorithm::EdDsa] {
            let pair = SigningKeyPair::generate(alg, &SeededRandom::new(1)).unwrap();
            let other = SigningKeyPair::generate(alg, &SeededRandom::new(2)).unwrap();
            let token = sign(&pair, &covered, 99).unwrap();
            let claims = verify(&token, &key_set(&[&pair])).unwrap();
            assert_eq!(claims, CheckpointClaims { seq: 7, hash: covered.hash.clone(), time: 99 });
            assert!(matches!(verify(&token, &key_set(&[&other])), Err(CheckpointError::Signature(_))));
        }
    }

    #[test]
    fn an_edited_payload_or_a_foreign_token_is_refused() {
        let pair = SigningKeyPair::generate(SigningAlgorithm::Es256, &SeededRandom::new(3)).unwrap();
        let keys = key_set(&[&pair]);
        let token = sign(&pair, &Covered { seq: 1, hash: "00".repeat(32) }, 5).unwrap();
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = URL_SAFE_NO_PAD.encode(br#"{"seq":1,"hash":"ff","time":5}"#);
        parts[1] = &forged;
        assert!(matches!(verify(&parts.join("."), &keys), Err(CheckpointError::Signature(_))));

        // A token of the same key with another typ is not a checkpoint.
        let header =
            URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"ES256","kid":"{}","typ":"JWT"}}"#, pair.kid()));
        let payload = URL_SAFE_NO_PAD.encode(br#"{"seq":1,"hash":"ff","time":5}"#);
        let input = format!("{header}.{payload}");
        let jwt = format!("{input}.{}", URL_SAFE_NO_PAD.encode(pair.sign(input.as_bytes())));
        assert!(matches!(verify(&jwt, &keys), Err(CheckpointError::WrongType(Some(_)))));
    }
}
