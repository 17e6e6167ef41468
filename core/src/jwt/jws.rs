//! Compact JWS (RFC 7515 §7.1) parsing and signature verification.
//!
//! Parsing is our own so every rejection maps to an exact [`Reason`]; `jwt-compact`,
//! `p256` ([`super::es256`]) and `ed25519-dalek` only supply the cryptographic primitives. The rules:
//! - the size limit is checked before anything else (`too_large`);
//! - exactly three `.`-separated segments, each strict unpadded base64url (`malformed`);
//! - the header is a JSON object without duplicate known members, with a string `alg`
//!   naming a supported algorithm (`none` never is: `unsupported_algorithm`);
//! - any `crit` header is rejected (`malformed`): we implement no JWS extensions;
//! - `jwk`, `jku`, `x5u`, `x5c` and `x5t` header parameters are ignored: keys come only
//!   from the configured key set, never from the token;
//! - `kid` is only compared (exactly) against key ids; a `kid` not in the set is
//!   `unknown_kid`. Without `kid`, at most [`MAX_CANDIDATE_KEYS`] keys bound to the
//!   header's `alg` are tried;
//! - the header's `alg` must equal the key's bound algorithm (`unsupported_algorithm`),
//!   so an RSA public key can never be used as an HMAC secret.

use base64::Engine as _;
use jwt_compact::alg::{Hs256, Hs384, Hs512, RsaSignature};
use jwt_compact::{Algorithm as _, AlgorithmSignature};
use serde::Deserialize;

use super::alg::Algorithm;
use super::jwks::{KeyMaterial, KeySet, VerificationKey};
use super::reason::Reason;

/// Without a `kid`, at most this many keys are tried, so a large key set cannot be used
/// to multiply signature-verification work.
pub const MAX_CANDIDATE_KEYS: usize = 8;

/// The protected header parameters we act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoseHeader {
    pub alg: Algorithm,
    pub kid: Option<String>,
    pub typ: Option<String>,
}

/// A structurally valid compact JWS whose signature has not been checked yet.
#[derive(Debug, Clone)]
pub struct DecodedJws<'a> {
    pub header: JoseHeader,
    /// `BASE64URL(header) "." BASE64URL(payload)`, the bytes that are signed.
    pub signing_input: &'a str,
    /// The payload segment as it appeared in the token.
    pub payload_b64: &'a str,
    pub payload: Vec<u8>,
    pub signature: Vec<u8>,
}

/// A JWS whose signature verified against a key of the key set.
#[derive(Debug, Clone)]
pub struct VerifiedJws {
    pub header: JoseHeader,
    /// The `kid` of the key that verified the signature (if that key has one).
    pub key_id: Option<String>,
    pub payload_b64: String,
    pub payload: Vec<u8>,
}

#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    typ: Option<String>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

pub(crate) fn b64url_decode(segment: &str) -> Result<Vec<u8>, Reason> {
    // URL_SAFE_NO_PAD rejects padding, the standard alphabet's `+`/`/`, whitespace and
    // non-canonical trailing bits.
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(segment).map_err(|_| Reason::Malformed)
}

/// Splits and decodes a compact JWS without verifying it.
pub fn decode(token: &str, max_token_bytes: usize) -> Result<DecodedJws<'_>, Reason> {
    if token.len() > max_token_bytes {
        return Err(Reason::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Reason::Malformed);
    };
    if header_b64.is_empty() {
        return Err(Reason::Malformed);
    }
    let header_bytes = b64url_decode(header_b64)?;
    let header = parse_header(&header_bytes)?;
    let payload = b64url_decode(payload_b64)?;
    let signature = b64url_decode(signature_b64)?;
    // The signing input is the token up to the second dot.
    let input_len = header_b64.len().saturating_add(1).saturating_add(payload_b64.len());
    let signing_input = token.get(..input_len).ok_or(Reason::Malformed)?;
    Ok(DecodedJws { header, signing_input, payload_b64, payload, signature })
}

fn parse_header(bytes: &[u8]) -> Result<JoseHeader, Reason> {
    // A derived struct also accepts a JSON array (fields by position): insist on an object.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(Reason::Malformed);
    }
    let raw: RawHeader = serde_json::from_slice(bytes).map_err(|_| Reason::Malformed)?;
    if raw.crit.is_some() {
        // RFC 7515 §4.1.11: we understand no extension, so any `crit` must be rejected.
        return Err(Reason::Malformed);
    }
    let alg = Algorithm::from_name(&raw.alg).ok_or(Reason::UnsupportedAlgorithm)?;
    Ok(JoseHeader { alg, kid: raw.kid, typ: raw.typ })
}

/// Finds the key(s) the header points at and checks the signature.
///
/// `allowed` is the provider's algorithm allow-list (`None`: any supported algorithm).
/// Returns the verifying key's `kid`.
pub fn verify_signature(
    jws: &DecodedJws<'_>,
    keys: &KeySet,
    allowed: Option<&[Algorithm]>,
) -> Result<Option<String>, Reason> {
    let alg = jws.header.alg;
    if let Some(allowed) = allowed {
        if !allowed.contains(&alg) {
            return Err(Reason::UnsupportedAlgorithm);
        }
    }
    if keys.is_empty() {
        return Err(Reason::NoKeys);
    }
    let candidates: Vec<&VerificationKey> = match &jws.header.kid {
        Some(kid) => {
            let named: Vec<&VerificationKey> =
                keys.keys().filter(|k| k.kid.as_deref() == Some(kid.as_str())).collect();
            if named.is_empty() {
                return Err(Reason::UnknownKid);
            }
            named.into_iter().filter(|k| k.alg == alg).take(MAX_CANDIDATE_KEYS).collect()
        }
        None => keys.keys().filter(|k| k.alg == alg).take(MAX_CANDIDATE_KEYS).collect(),
    };
    if candidates.is_empty() {
        // The key named by `kid` (or every key) is bound to another algorithm.
        return Err(Reason::UnsupportedAlgorithm);
    }
    let input = jws.signing_input.as_bytes();
    candidates
        .into_iter()
        .find(|key| verify_with_key(key, input, &jws.signature))
        .map(|key| key.kid.clone())
        .ok_or(Reason::BadSignature)
}

/// Decodes and verifies in one step (the JWS layer only: the payload is not interpreted).
pub fn verify_compact(
    token: &str,
    keys: &KeySet,
    allowed: Option<&[Algorithm]>,
    max_token_bytes: usize,
) -> Result<VerifiedJws, Reason> {
    let jws = decode(token, max_token_bytes)?;
    let key_id = verify_signature(&jws, keys, allowed)?;
    Ok(VerifiedJws {
        header: jws.header,
        key_id,
        payload_b64: jws.payload_b64.to_owned(),
        payload: jws.payload,
    })
}

/// Length-checks the signature before handing it to `jwt-compact`, whose fixed-size
/// `try_from_slice` implementations assume the length was checked. ES256 and EdDSA go to
/// `p256` and `ed25519-dalek` directly.
fn verify_with_key(key: &VerificationKey, input: &[u8], sig: &[u8]) -> bool {
    match &key.material {
        KeyMaterial::Hs256(k) => {
            sig.len() == 32
                && <Hs256 as jwt_compact::Algorithm>::Signature::try_from_slice(sig)
                    .is_ok_and(|s| Hs256.verify_signature(&s, k, input))
        }
        KeyMaterial::Hs384(k) => {
            sig.len() == 48
                && <Hs384 as jwt_compact::Algorithm>::Signature::try_from_slice(sig)
                    .is_ok_and(|s| Hs384.verify_signature(&s, k, input))
        }
        KeyMaterial::Hs512(k) => {
            sig.len() == 64
                && <Hs512 as jwt_compact::Algorithm>::Signature::try_from_slice(sig)
                    .is_ok_and(|s| Hs512.verify_signature(&s, k, input))
        }
        KeyMaterial::Rsa { alg, key, modulus_len } => {
            sig.len() == *modulus_len
                && RsaSignature::try_from_slice(sig).is_ok_and(|s| alg.verify_signature(&s, key, input))
        }
        KeyMaterial::Es256(k) => super::es256::verify(k, input, sig),
        KeyMaterial::Ed25519(k) => {
            ed25519_dalek::Signature::from_slice(sig).is_ok_and(|s| k.verify_strict(input, &s).is_ok())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn header_must_be_an_object() {
        let token = format!("{}.{}.", b64(r#"["HS256"]"#), b64("{}"));
        assert_eq!(decode(&token, 8192).err(), Some(Reason::Malformed));
    }

    #[test]
    fn duplicate_alg_in_header_is_malformed() {
        let token = format!("{}.{}.", b64(r#"{"alg":"HS256","alg":"none"}"#), b64("{}"));
        assert_eq!(decode(&token, 8192).err(), Some(Reason::Malformed));
    }

    #[test]
    fn padded_or_standard_alphabet_segments_are_malformed() {
        let header = b64(r#"{"alg":"HS256"}"#);
        for payload in ["e30=", "e3+/", " e30", "e30\n"] {
            let token = format!("{header}.{payload}.AAAA");
            assert_eq!(decode(&token, 8192).err(), Some(Reason::Malformed), "{payload:?}");
        }
    }

    #[test]
    fn size_is_checked_before_parsing() {
        assert_eq!(decode("x".repeat(9000).as_str(), 8192).err(), Some(Reason::TooLarge));
        assert_eq!(decode("x".repeat(8192).as_str(), 8192).err(), Some(Reason::Malformed));
    }

    #[test]
    fn signing_input_is_header_dot_payload() {
        let token = format!("{}.{}.", b64(r#"{"alg":"HS256","kid":"k"}"#), b64("{}"));
        let jws = decode(&token, 8192).unwrap();
        assert_eq!(jws.signing_input, token.trim_end_matches('.'));
        assert_eq!(jws.header.kid.as_deref(), Some("k"));
        assert!(jws.signature.is_empty());
    }
}
