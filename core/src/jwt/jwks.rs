//! JSON Web Key Sets (RFC 7517) turned into verification keys, each bound to exactly one
//! algorithm (RFC 8725 §3.1).
//!
//! Binding rules, chosen strictly:
//! - `RSA` and `oct` keys MUST carry `alg`: a key without one could be used with several
//!   algorithms, so it is skipped with a warning.
//! - `EC` keys on P-256 are bound to `ES256` and `OKP` keys on Ed25519 to `EdDSA`; if they
//!   carry an `alg`, it must be that one.
//! - Keys with an unsupported `kty`, `crv` or `alg` (e.g. `ES384`, `P-384`), with `use`
//!   other than `sig`, with `key_ops` lacking `verify`, RSA moduli under 2048 bits and
//!   HMAC secrets shorter than the hash output are skipped with a warning, never an error:
//!   one odd key in an identity provider's JWKS must not take the others down.
//!
//! Only a document that is not a JWKS at all is an error.

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use jwt_compact::alg::{Hs256Key, Hs384Key, Hs512Key, Rsa, RsaPublicKey};
use jwt_compact::jwk::JsonWebKey;
use serde::Deserialize;
use serde_json::Value;

use super::alg::{Algorithm, KeyFamily};
use super::es256::{self, Es256VerifyingKey};

/// At most this many keys are loaded from one document; the rest are skipped with a
/// warning. Bounds memory and the work of an unknown-kid lookup.
pub const MAX_KEYS: usize = 64;

/// RSA keys shorter than this are refused (RFC 7518 §3.3).
pub const MIN_RSA_BITS: usize = 2048;

pub(crate) type Ed25519VerifyingKey = ed25519_dalek::VerifyingKey;

/// The public (or shared secret) part of a key, typed for its one algorithm.
pub(crate) enum KeyMaterial {
    Hs256(Hs256Key),
    Hs384(Hs384Key),
    Hs512(Hs512Key),
    Rsa { alg: Rsa, key: RsaPublicKey, modulus_len: usize },
    Es256(Es256VerifyingKey),
    Ed25519(Ed25519VerifyingKey),
}

/// One usable key: its id (if any), its single algorithm and its material.
pub(crate) struct VerificationKey {
    pub(crate) kid: Option<String>,
    pub(crate) alg: Algorithm,
    pub(crate) material: KeyMaterial,
}

/// A parsed key set, cheap to clone and share between requests.
#[derive(Clone, Default)]
pub struct KeySet {
    keys: Arc<Vec<Arc<VerificationKey>>>,
}

/// A key that was skipped (or accepted with a remark) while loading a JWKS. Never
/// contains key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksWarning {
    /// Index of the key in the document's `keys` array.
    pub index: usize,
    /// The key's `kid`, when it had a string one.
    pub kid: Option<String>,
    pub message: String,
}

impl fmt::Display for JwksWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kid {
            Some(kid) => write!(f, "keys[{}] (kid {:?}): {}", self.index, kid, self.message),
            None => write!(f, "keys[{}]: {}", self.index, self.message),
        }
    }
}

/// The document is not a JWKS at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksError {
    /// Not valid JSON (position given; the text itself is never echoed).
    NotJson { line: usize, column: usize },
    /// Valid JSON, but not an object with a `keys` array.
    NotAKeySet,
}

impl fmt::Display for JwksError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwksError::NotJson { line, column } => {
                write!(f, "JWKS is not valid JSON (line {line}, column {column})")
            }
            JwksError::NotAKeySet => f.write_str("JWKS is not an object with a `keys` array"),
        }
    }
}

impl std::error::Error for JwksError {}

#[derive(Deserialize)]
struct JwksDocument {
    keys: Vec<Value>,
}

/// The JWK members we read; everything else is ignored. Private members (`d`, `p`, ...)
/// are only looked at to warn about them.
#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    key_ops: Option<Vec<String>>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
    #[serde(default)]
    k: Option<String>,
    #[serde(default)]
    d: Option<Value>,
}

impl KeySet {
    /// An empty key set (the state before a remote JWKS is first fetched).
    pub fn empty() -> Self {
        Self::default()
    }

    /// Parses an RFC 7517 JWKS. Unusable keys are skipped with a warning; only a document
    /// that is not a JWKS is an error (an empty result is not an error here: callers
    /// decide whether an empty set is acceptable).
    pub fn from_jwks_json(bytes: &[u8]) -> Result<(KeySet, Vec<JwksWarning>), JwksError> {
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| JwksError::NotJson { line: e.line(), column: e.column() })?;
        let doc: JwksDocument = serde_json::from_value(value).map_err(|_| JwksError::NotAKeySet)?;

        let mut keys = Vec::new();
        let mut warnings = Vec::new();
        for (index, raw) in doc.keys.into_iter().enumerate() {
            let kid = raw.get("kid").and_then(Value::as_str).map(str::to_owned);
            if keys.len() >= MAX_KEYS {
                warnings.push(JwksWarning {
                    index,
                    kid,
                    message: format!("ignored: more than {MAX_KEYS} usable keys"),
                });
                continue;
            }
            let warn = |message: String| JwksWarning { index, kid: kid.clone(), message };
            let jwk: RawJwk = match serde_json::from_value(raw) {
                Ok(jwk) => jwk,
                Err(_) => {
                    warnings.push(warn(
                        "skipped: not a JWK object with string members (kty, kid, alg, ...)".to_owned(),
                    ));
                    continue;
                }
            };
            match load_key(&jwk) {
                Ok(key) => {
                    if jwk.d.is_some() && !key.alg.is_symmetric() {
                        warnings.push(warn(
                            "contains private key material; only the public part is used and \
                             the private part should not be published"
                                .to_owned(),
                        ));
                    }
                    keys.push(key);
                }
                Err(message) => warnings.push(warn(format!("skipped: {message}"))),
            }
        }
        Ok((KeySet { keys: Arc::new(keys.into_iter().map(Arc::new).collect()) }, warnings))
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// The `kid`s of the keys that have one, in document order.
    pub fn key_ids(&self) -> Vec<&str> {
        self.keys.iter().filter_map(|k| k.kid.as_deref()).collect()
    }

    /// Whether some key has exactly this `kid` (used to decide on an unknown-kid refetch).
    pub fn contains_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// The algorithm of every key, in document order.
    pub fn algorithms(&self) -> Vec<Algorithm> {
        self.keys.iter().map(|k| k.alg).collect()
    }

    /// The same set without the keys whose `kid` is in `kids` (revoked keys).
    pub fn without_kids(&self, kids: &std::collections::BTreeSet<String>) -> KeySet {
        if !self.keys.iter().any(|k| k.kid.as_ref().is_some_and(|kid| kids.contains(kid))) {
            return self.clone();
        }
        let kept = self.keys.iter().filter(|k| !k.kid.as_ref().is_some_and(|kid| kids.contains(kid)));
        KeySet { keys: Arc::new(kept.cloned().collect()) }
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = &VerificationKey> {
        self.keys.iter().map(AsRef::as_ref)
    }
}

impl fmt::Debug for KeySet {
    /// Lists kids and algorithms only: never key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.keys.iter().map(|k| (k.kid.as_deref(), k.alg.as_str()))).finish()
    }
}

fn decode_member(name: &str, value: Option<&String>) -> Result<Vec<u8>, String> {
    let value = value.ok_or_else(|| format!("missing `{name}`"))?;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(value)
        .map_err(|_| format!("`{name}` is not unpadded base64url"))
}

/// Works out the one algorithm a key may be used with, then builds its material.
fn load_key(jwk: &RawJwk) -> Result<VerificationKey, String> {
    check_key_use(jwk)?;
    let declared = declared_algorithm(jwk)?;
    let family = key_family(jwk)?;
    let alg = key_algorithm(jwk, family, declared)?;
    let material = match family {
        KeyFamily::Hmac => hmac_material(jwk, alg)?,
        KeyFamily::Rsa => rsa_material(jwk, alg)?,
        KeyFamily::EcP256 => p256_material(jwk)?,
        KeyFamily::Ed25519 => ed25519_material(jwk)?,
    };
    Ok(VerificationKey { kid: jwk.kid.clone(), alg, material })
}

/// A key for signatures, when `use` or `key_ops` say what it is for.
fn check_key_use(jwk: &RawJwk) -> Result<(), String> {
    if let Some(use_) = &jwk.use_ {
        if use_ != "sig" {
            return Err(format!("`use` is {use_:?}, not \"sig\""));
        }
    }
    if let Some(ops) = &jwk.key_ops {
        if !ops.iter().any(|op| op == "verify") {
            return Err("`key_ops` does not include \"verify\"".to_owned());
        }
    }
    Ok(())
}

/// The key's family from `kty` (and `crv`).
fn key_family(jwk: &RawJwk) -> Result<KeyFamily, String> {
    Ok(match (jwk.kty.as_str(), jwk.crv.as_deref()) {
        ("RSA", _) => KeyFamily::Rsa,
        ("oct", _) => KeyFamily::Hmac,
        ("EC", Some("P-256")) => KeyFamily::EcP256,
        ("OKP", Some("Ed25519")) => KeyFamily::Ed25519,
        ("EC" | "OKP", Some(crv)) => return Err(format!("unsupported curve {:?}", truncate(crv))),
        ("EC" | "OKP", None) => return Err("missing `crv`".to_owned()),
        (kty, _) => return Err(format!("unsupported `kty` {:?}", truncate(kty))),
    })
}

/// The key's `alg`, when it has one.
fn declared_algorithm(jwk: &RawJwk) -> Result<Option<Algorithm>, String> {
    match jwk.alg.as_deref() {
        None => Ok(None),
        Some(name) => Algorithm::from_name(name)
            .map(Some)
            .ok_or_else(|| format!("unsupported `alg` {:?}", truncate(name))),
    }
}

/// The one algorithm the key is bound to: its `alg` when it fits the family, else the
/// family's only algorithm; RSA and HMAC keys must declare theirs.
fn key_algorithm(jwk: &RawJwk, family: KeyFamily, declared: Option<Algorithm>) -> Result<Algorithm, String> {
    match (family, declared) {
        (_, Some(alg)) if alg.family() != family => {
            Err(format!("`alg` {alg} does not fit `kty` {}", jwk.kty))
        }
        (_, Some(alg)) => Ok(alg),
        (KeyFamily::EcP256, None) => Ok(Algorithm::ES256),
        (KeyFamily::Ed25519, None) => Ok(Algorithm::EdDSA),
        (KeyFamily::Rsa | KeyFamily::Hmac, None) => {
            Err(format!("`{}` keys must declare `alg` (a key is bound to exactly one algorithm)", jwk.kty))
        }
    }
}

fn hmac_material(jwk: &RawJwk, alg: Algorithm) -> Result<KeyMaterial, String> {
    let secret = decode_member("k", jwk.k.as_ref())?;
    // RFC 7518 §3.2: the secret must be at least as long as the hash output.
    let min = match alg {
        Algorithm::HS384 => 48,
        Algorithm::HS512 => 64,
        _ => 32,
    };
    if secret.len() < min {
        return Err(format!("{alg} secret shorter than {min} bytes"));
    }
    Ok(match alg {
        Algorithm::HS384 => KeyMaterial::Hs384(Hs384Key::new(&secret)),
        Algorithm::HS512 => KeyMaterial::Hs512(Hs512Key::new(&secret)),
        _ => KeyMaterial::Hs256(Hs256Key::new(&secret)),
    })
}

fn rsa_material(jwk: &RawJwk, alg: Algorithm) -> Result<KeyMaterial, String> {
    let n = decode_member("n", jwk.n.as_ref())?;
    let e = decode_member("e", jwk.e.as_ref())?;
    let n = strip_leading_zeros(&n);
    let bits = bit_length(n);
    if bits < MIN_RSA_BITS {
        return Err(format!("RSA modulus of {bits} bits is under {MIN_RSA_BITS}"));
    }
    let jwk = JsonWebKey::Rsa {
        modulus: n.into(),
        public_exponent: strip_leading_zeros(&e).into(),
        private_parts: None,
    };
    let key = RsaPublicKey::try_from(&jwk)
        .map_err(|_| "invalid RSA public key (modulus over 4096 bits or bad exponent)")?;
    let rsa = match alg {
        Algorithm::RS384 => Rsa::rs384(),
        Algorithm::RS512 => Rsa::rs512(),
        Algorithm::PS256 => Rsa::ps256(),
        Algorithm::PS384 => Rsa::ps384(),
        Algorithm::PS512 => Rsa::ps512(),
        _ => Rsa::rs256(),
    };
    Ok(KeyMaterial::Rsa { alg: rsa, key, modulus_len: n.len() })
}

fn p256_material(jwk: &RawJwk) -> Result<KeyMaterial, String> {
    let x = decode_member("x", jwk.x.as_ref())?;
    let y = decode_member("y", jwk.y.as_ref())?;
    Ok(KeyMaterial::Es256(es256::verifying_key(&x, &y)?))
}

fn ed25519_material(jwk: &RawJwk) -> Result<KeyMaterial, String> {
    let x = decode_member("x", jwk.x.as_ref())?;
    if x.len() != 32 {
        return Err("Ed25519 public key must be 32 bytes".to_owned());
    }
    let bytes: [u8; 32] =
        x.as_slice().try_into().map_err(|_| "Ed25519 public key must be 32 bytes".to_owned())?;
    let key =
        Ed25519VerifyingKey::from_bytes(&bytes).map_err(|_| "not a valid Ed25519 public key".to_owned())?;
    // A small-order key verifies signatures nobody made (RFC 8032 §5.1.7 leaves it to
    // the verifier): refused at load, and `verify_strict` refuses it again.
    if key.is_weak() {
        return Err("a weak (small-order) Ed25519 public key".to_owned());
    }
    Ok(KeyMaterial::Ed25519(key))
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    bytes.get(first..).unwrap_or_default()
}

/// Bit length of a big-endian unsigned integer without leading zero bytes.
fn bit_length(bytes: &[u8]) -> usize {
    match bytes.first() {
        None => 0,
        Some(&top) => {
            let top_bits = 8 - top.leading_zeros() as usize;
            bytes.len().saturating_sub(1).saturating_mul(8).saturating_add(top_bits)
        }
    }
}

/// Keeps warning messages short when a document carries absurd strings.
fn truncate(s: &str) -> &str {
    crate::codec::truncate(s, 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const EC_X: &str = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
    const EC_Y: &str = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";

    fn load(json: &str) -> (KeySet, Vec<JwksWarning>) {
        match KeySet::from_jwks_json(json.as_bytes()) {
            Ok(r) => r,
            Err(e) => panic!("not a JWKS: {e}"),
        }
    }

    #[test]
    fn ec_p256_key_without_alg_is_bound_to_es256() {
        let (set, warnings) = load(&format!(
            r#"{{"keys":[{{"kty":"EC","crv":"P-256","kid":"a","x":"{EC_X}","y":"{EC_Y}"}}]}}"#
        ));
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(set.algorithms(), vec![Algorithm::ES256]);
        assert_eq!(set.key_ids(), vec!["a"]);
    }

    #[test]
    fn oct_key_without_alg_is_skipped_with_warning() {
        let k = "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow";
        let (set, warnings) = load(&format!(r#"{{"keys":[{{"kty":"oct","k":"{k}"}}]}}"#));
        assert!(set.is_empty());
        assert_eq!(warnings.len(), 1);
        assert!(warnings.iter().all(|w| !w.to_string().contains(k)));
    }

    #[test]
    fn short_hmac_secret_is_skipped() {
        let (set, warnings) = load(r#"{"keys":[{"kty":"oct","alg":"HS256","k":"c2hvcnQ"}]}"#);
        assert!(set.is_empty());
        assert_eq!(warnings.len(), 1);
    }

    #[test]
    fn unsupported_keys_are_warnings_not_errors() {
        let doc = format!(
            r#"{{"keys":[
              {{"kty":"EC","crv":"P-384","alg":"ES384","x":"AA","y":"AA"}},
              {{"kty":"EC","crv":"P-256","alg":"ES384","x":"{EC_X}","y":"{EC_Y}"}},
              {{"kty":"EC","crv":"P-256","use":"enc","x":"{EC_X}","y":"{EC_Y}"}},
              {{"kty":"EC","crv":"P-256","key_ops":["sign"],"x":"{EC_X}","y":"{EC_Y}"}},
              {{"kty":"EC","crv":"P-256","alg":"RS256","x":"{EC_X}","y":"{EC_Y}"}},
              {{"kty":"EC","crv":"P-256","alg":"none","x":"{EC_X}","y":"{EC_Y}"}},
              {{"kty":"OKP","crv":"X25519","x":"AA"}},
              {{"kty":"XYZ"}},
              {{"kty":7}},
              42,
              {{"kty":"EC","crv":"P-256","x":"{EC_X}","y":"{EC_Y}"}}
            ]}}"#
        );
        let (set, warnings) = load(&doc);
        assert_eq!(set.len(), 1);
        assert_eq!(warnings.len(), 10);
        assert_eq!(warnings.first().map(|w| w.index), Some(0));
    }

    #[test]
    fn invalid_curve_point_is_skipped() {
        let (set, warnings) =
            load(&format!(r#"{{"keys":[{{"kty":"EC","crv":"P-256","x":"{EC_X}","y":"{EC_X}"}}]}}"#));
        assert!(set.is_empty());
        assert_eq!(warnings.len(), 1);
    }

    #[test]
    fn documents_that_are_not_a_jwks_are_errors() {
        assert!(matches!(KeySet::from_jwks_json(b"nope"), Err(JwksError::NotJson { .. })));
        assert_eq!(KeySet::from_jwks_json(b"[]").err(), Some(JwksError::NotAKeySet));
        assert_eq!(KeySet::from_jwks_json(br#"{"keys":{}}"#).err(), Some(JwksError::NotAKeySet));
        let deep = "[".repeat(100_000);
        assert!(matches!(KeySet::from_jwks_json(deep.as_bytes()), Err(JwksError::NotJson { .. })));
    }

    #[test]
    fn empty_key_list_is_an_empty_set() {
        let (set, warnings) = load(r#"{"keys":[]}"#);
        assert!(set.is_empty());
        assert!(warnings.is_empty());
    }

    #[test]
    fn bit_length_counts_significant_bits() {
        assert_eq!(bit_length(&[]), 0);
        assert_eq!(bit_length(&[1]), 1);
        assert_eq!(bit_length(&[0x80, 0]), 16);
        assert_eq!(strip_leading_zeros(&[0, 0, 5]), &[5]);
        assert_eq!(strip_leading_zeros(&[0, 0]), &[] as &[u8]);
    }
}
