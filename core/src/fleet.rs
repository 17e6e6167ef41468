//! The fleet credential and the feed key derived from it.
//!
//! Every Envoy of one fleet presents the same secret, the **fleet credential**, on every
//! call to the control plane's internal listener (`Authorization: Bearer <credential>`):
//! the revocation feed, the per-token status check, rate-limit leases, lockout and burst
//! reports. The control plane accepts a current and a previous credential, so a fleet
//! rotates without downtime.
//!
//! The revocation feed never names a token or a user in clear: it carries keyed hashes,
//! [`FeedKey::token_id`] of each revoked `jti` and [`FeedKey::subject`] of each `sub`
//! with a minimum version. The feed key is derived from the credential the caller
//! presented (HMAC-SHA256(credential, `"portcullis feed v1"`)), so:
//!
//! - an Envoy computes it itself from the credential it already holds: no key has to be
//!   delivered, stored or rotated separately, and a feed response never carries it;
//! - whoever reads a feed response without the credential (a proxy log, a dump, a
//!   cache) sees only 128-bit hashes: user names cannot be recovered or guessed, and
//!   revoked `jti`s cannot be matched to tokens;
//! - whoever holds the credential can hash a guessed name and look it up: that is every
//!   Envoy of the fleet (which sees subjects in tokens anyway) and an attacker who stole
//!   the credential, who could also call the internal routes. Rotating the credential
//!   rotates the key, and hashes read before stop matching anything.
//!
//! A weak credential could be guessed offline from hashes of known names, so it must be
//! random: [`MIN_CREDENTIAL_LEN`] characters at least (`head -c 32 /dev/urandom | base64`).
//! Hashes are 16 bytes (the first half of the HMAC), base64url: 22 characters.
//! Token ids and subjects are hashed under distinct labels, so a subject's hash never
//! equals a token id's.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Shorter credentials are refused: the feed key derives from the credential, so it must
/// resist an offline guess.
pub const MIN_CREDENTIAL_LEN: usize = 32;
/// Longer credentials are refused (it travels in a header on every call).
pub const MAX_CREDENTIAL_LEN: usize = 512;
/// The `realm` of the internal listener's bearer challenge.
pub const INTERNAL_REALM: &str = "portcullis-internal";
/// Bytes of a feed hash.
pub const HASH_LEN: usize = 16;
/// A feed hash: a token id or a subject under the feed key.
pub type IdHash = [u8; HASH_LEN];

const FEED_KEY_PURPOSE: &[u8] = b"portcullis feed v1";
const KEY_ID_LABEL: &[u8] = b"key id";
const TOKEN_ID_LABEL: &[u8] = b"jti";
const SUBJECT_LABEL: &[u8] = b"sub";
const CLIENT_LABEL: &[u8] = b"client";

/// The secret the Envoys of a fleet present to the control plane. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct FleetCredential(String);

impl std::fmt::Debug for FleetCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FleetCredential(..)")
    }
}

impl FleetCredential {
    /// Validates a credential (surrounding whitespace, such as a file's final newline, is
    /// ignored): [`MIN_CREDENTIAL_LEN`] to [`MAX_CREDENTIAL_LEN`] printable ASCII
    /// characters without spaces, so it fits a header as it is. The error says why,
    /// never what.
    pub fn new(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.len() < MIN_CREDENTIAL_LEN {
            return Err(format!(
                "must be at least {MIN_CREDENTIAL_LEN} characters (e.g. `head -c 32 /dev/urandom | base64`), got {}",
                text.len()
            ));
        }
        if text.len() > MAX_CREDENTIAL_LEN {
            return Err(format!("must be at most {MAX_CREDENTIAL_LEN} characters"));
        }
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("must be printable ASCII without spaces".to_string());
        }
        Ok(Self(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `Authorization` header value that presents it.
    pub fn authorization(&self) -> String {
        format!("Bearer {}", self.0)
    }

    /// The key feed hashes are computed with by callers presenting this credential.
    pub fn feed_key(&self) -> FeedKey {
        FeedKey::derive(self.0.as_bytes())
    }
}

/// The key of the revocation feed's hashes (see the module docs). `Debug` shows only
/// its public id.
#[derive(Clone)]
pub struct FeedKey {
    mac: Hmac<Sha256>,
    id: String,
}

impl std::fmt::Debug for FeedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FeedKey({})", self.id)
    }
}

impl PartialEq for FeedKey {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl FeedKey {
    fn derive(credential: &[u8]) -> Self {
        let key = crate::codec::hmac_sha256(credential, &[FEED_KEY_PURPOSE]);
        let id_mac = crate::codec::hmac_sha256(&key, &[KEY_ID_LABEL]);
        let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id_mac.get(..9).unwrap_or_default());
        FeedKey { mac: crate::codec::hmac_sha256_keyed(&key), id }
    }

    /// A public fingerprint of the key (12 characters): every feed page names the key
    /// its hashes were made with, so a follower never mixes hashes of two keys.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn hash(&self, label: &[u8], value: &str) -> IdHash {
        let mut mac = self.mac.clone();
        mac.update(&crate::codec::length_prefix(label.len()));
        mac.update(label);
        mac.update(value.as_bytes());
        let full: [u8; 32] = mac.finalize().into_bytes().into();
        let mut out = [0u8; HASH_LEN];
        for (o, b) in out.iter_mut().zip(full) {
            *o = b;
        }
        out
    }

    /// The feed's name for a token id (`jti`).
    pub fn token_id(&self, jti: &str) -> IdHash {
        self.hash(TOKEN_ID_LABEL, jti)
    }

    /// The feed's name for a subject (`sub`).
    pub fn subject(&self, sub: &str) -> IdHash {
        self.hash(SUBJECT_LABEL, sub)
    }

    /// The audit log's name for a client address (`hash:` and [`encode_hash`]): the
    /// filter records it, the control plane computes it for an address asked about.
    pub fn client_address(&self, ip: &str) -> String {
        format!("{CLIENT_PREFIX}{}", encode_hash(&self.hash(CLIENT_LABEL, ip)))
    }
}

/// How a hashed client address starts in the audit log.
pub const CLIENT_PREFIX: &str = "hash:";

/// A hash as the feed spells it: base64url without padding (22 characters).
pub fn encode_hash(hash: &IdHash) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(hash)
}

/// Parses [`encode_hash`]'s form; `None` for anything else.
pub fn decode_hash(text: &str) -> Option<IdHash> {
    if text.len() != 22 {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text).ok()?;
    IdHash::try_from(bytes.as_slice()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const CREDENTIAL: &str = "fleet-credential-0123456789abcdef0123";

    #[test]
    fn credentials_must_be_long_printable_and_are_trimmed() {
        assert_eq!(FleetCredential::new(&format!("  {CREDENTIAL}\n")).unwrap().as_str(), CREDENTIAL);
        assert!(FleetCredential::new("short").unwrap_err().contains("at least 32"));
        assert!(FleetCredential::new(&"a b".repeat(20)).unwrap_err().contains("without spaces"));
        assert!(FleetCredential::new(&"é".repeat(40)).is_err());
        assert!(FleetCredential::new(&"x".repeat(MAX_CREDENTIAL_LEN + 1)).is_err());
        let credential = FleetCredential::new(CREDENTIAL).unwrap();
        assert_eq!(credential.authorization(), format!("Bearer {CREDENTIAL}"));
        assert!(!format!("{credential:?}").contains("0123"), "Debug hides the secret");
    }

    #[test]
    fn hashes_depend_on_the_credential_the_value_and_the_kind() {
        let key = FleetCredential::new(CREDENTIAL).unwrap().feed_key();
        let other = FleetCredential::new(&format!("{CREDENTIAL}x")).unwrap().feed_key();
        assert_eq!(key.token_id("alice"), key.token_id("alice"), "deterministic");
        assert_ne!(key.token_id("alice"), other.token_id("alice"));
        assert_ne!(key.token_id("alice"), key.token_id("alicf"));
        assert_ne!(key.token_id("alice"), key.subject("alice"), "token ids and subjects are apart");
        let client = key.client_address("192.0.2.1");
        assert_eq!(client.len(), 5 + 22);
        assert_eq!(client, key.client_address("192.0.2.1"));
        assert_ne!(client, other.client_address("192.0.2.1"));
        assert_ne!(client, key.client_address("192.0.2.2"));
        assert_ne!(key.id(), other.id());
        assert_eq!(key.id().len(), 12);
        assert_eq!(key, FleetCredential::new(CREDENTIAL).unwrap().feed_key());
        assert!(!format!("{key:?}").contains(CREDENTIAL));
    }

    #[test]
    fn the_derivation_is_the_documented_hmac_chain() {
        // Pinned so the control plane and every filter build agree: key =
        // HMAC(credential, "portcullis feed v1"); hash = first 16 bytes of
        // HMAC(key, len(label) as u64 BE ‖ label ‖ value).
        let key = crate::codec::hmac_sha256(CREDENTIAL.as_bytes(), &[b"portcullis feed v1"]);
        let full = crate::codec::hmac_sha256(&key, &[&3u64.to_be_bytes(), b"sub", b"alice"]);
        let expected: IdHash = full[..16].try_into().unwrap();
        assert_eq!(FleetCredential::new(CREDENTIAL).unwrap().feed_key().subject("alice"), expected);
    }

    #[test]
    fn encoded_hashes_round_trip_and_anything_else_is_refused() {
        let hash = FleetCredential::new(CREDENTIAL).unwrap().feed_key().token_id("j1");
        let text = encode_hash(&hash);
        assert_eq!(text.len(), 22);
        assert_eq!(decode_hash(&text), Some(hash));
        assert_eq!(decode_hash("alice"), None);
        assert_eq!(decode_hash(&format!("{text}A")), None);
        assert_eq!(decode_hash("!!!!!!!!!!!!!!!!!!!!!!"), None);
    }
}
