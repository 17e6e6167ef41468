//! The master key that encrypts signing keys at rest.
//!
//! Private signing keys are sealed with ChaCha20-Poly1305 under a 32-byte master key,
//! with a fresh random nonce per seal and the key id as associated data, so a sealed
//! key cannot be swapped onto another key id unnoticed. The master key never enters
//! the store: it comes from `--master-key` / `--master-key-file`, or (embedded store
//! only) is generated into `<data-dir>/master.key`.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use portcullis_core::codec::hmac_sha256;
use zeroize::Zeroizing;

use crate::random::{RandomError, RandomSource};

pub const MASTER_KEY_LEN: usize = 32;
pub const NONCE_LEN: usize = 12;
/// Name of the generated master key file inside the data directory.
pub const MASTER_KEY_FILE_NAME: &str = "master.key";

#[derive(Debug, thiserror::Error)]
pub enum MasterKeyError {
    #[error("the master key must be {MASTER_KEY_LEN} bytes, base64-encoded")]
    Malformed,
    #[error("cannot read the master key file {path}: {source}")]
    Unreadable { path: PathBuf, source: std::io::Error },
    #[error("cannot write the master key file {path}: {source}")]
    Unwritable { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Random(#[from] RandomError),
}

/// Why a sealed value could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum UnsealError {
    #[error("sealed value is malformed")]
    Malformed,
    /// The authentication tag does not verify: another master key sealed it, or the
    /// ciphertext / key id was altered.
    #[error("the master key does not decrypt it (wrong master key, or tampered data)")]
    Authentication,
}

pub struct MasterKey(Zeroizing<[u8; MASTER_KEY_LEN]>);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

/// A sealed secret: nonce and ciphertext (with tag), both base64 in JSON records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub nonce: [u8; NONCE_LEN],
    pub ciphertext: Vec<u8>,
}

impl MasterKey {
    pub fn from_bytes(bytes: [u8; MASTER_KEY_LEN]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// Parses the base64 (standard or URL-safe alphabet, padding optional) form.
    pub fn from_base64(text: &str) -> Result<Self, MasterKeyError> {
        let text = text.trim();
        let decoded = Zeroizing::new(
            STANDARD
                .decode(text)
                .or_else(|_| {
                    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text.trim_end_matches('='))
                })
                .map_err(|_| MasterKeyError::Malformed)?,
        );
        let bytes: [u8; MASTER_KEY_LEN] =
            decoded.as_slice().try_into().map_err(|_| MasterKeyError::Malformed)?;
        Ok(Self::from_bytes(bytes))
    }

    pub fn generate(rng: &dyn RandomSource) -> Result<Self, MasterKeyError> {
        let mut bytes = [0u8; MASTER_KEY_LEN];
        rng.fill(&mut bytes)?;
        let key = Self::from_bytes(bytes);
        zeroize::Zeroize::zeroize(&mut bytes);
        Ok(key)
    }

    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(self.0.as_slice()))
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        ChaCha20Poly1305::new(&Key::from(*self.0))
    }

    /// Encrypts `plaintext`, binding it to `associated_data` (the key id).
    pub fn seal(
        &self,
        plaintext: &[u8],
        associated_data: &[u8],
        rng: &dyn RandomSource,
    ) -> Result<Sealed, RandomError> {
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill(&mut nonce)?;
        let ciphertext = self
            .cipher()
            .encrypt(&Nonce::from(nonce), Payload { msg: plaintext, aad: associated_data })
            // Encryption only fails for plaintexts beyond ChaCha20's 256 GiB limit.
            .map_err(|_| RandomError::new("plaintext too large to seal"))?;
        Ok(Sealed { nonce, ciphertext })
    }

    pub fn open(&self, sealed: &Sealed, associated_data: &[u8]) -> Result<Zeroizing<Vec<u8>>, UnsealError> {
        self.cipher()
            .decrypt(&Nonce::from(sealed.nonce), Payload { msg: &sealed.ciphertext, aad: associated_data })
            .map(Zeroizing::new)
            .map_err(|_| UnsealError::Authentication)
    }

    /// A key for one purpose (`"portcullis lockout v1"`), derived as
    /// HMAC-SHA256(master key, purpose): each feature keys its hashes with its own
    /// subkey, so none of them ever uses (or can reveal anything about) the master key.
    pub fn derive_subkey(&self, purpose: &str) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(hmac_sha256(self.0.as_slice(), &[purpose.as_bytes()]))
    }

    /// Reads a master key file (base64, surrounding whitespace ignored).
    pub fn read_file(path: &Path) -> Result<Self, MasterKeyError> {
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|source| MasterKeyError::Unreadable { path: path.to_owned(), source })?,
        );
        Self::from_base64(&text)
    }

    /// Loads `<data_dir>/master.key`, or creates it (mode 0600) with a new random key.
    /// Returns the key and whether it was created.
    pub fn load_or_create_in(
        data_dir: &Path,
        rng: &dyn RandomSource,
    ) -> Result<(Self, bool), MasterKeyError> {
        let path = data_dir.join(MASTER_KEY_FILE_NAME);
        if path.exists() {
            return Ok((Self::read_file(&path)?, false));
        }
        let key = Self::generate(rng)?;
        let unwritable = |source| MasterKeyError::Unwritable { path: path.clone(), source };
        std::fs::create_dir_all(data_dir).map_err(unwritable)?;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&path).map_err(unwritable)?;
        std::io::Write::write_all(&mut file, format!("{}\n", key.to_base64().as_str()).as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(unwritable)?;
        Ok((key, true))
    }
}

impl Sealed {
    pub fn nonce_base64(&self) -> String {
        STANDARD.encode(self.nonce)
    }

    pub fn ciphertext_base64(&self) -> String {
        STANDARD.encode(&self.ciphertext)
    }

    pub fn from_base64(nonce: &str, ciphertext: &str) -> Result<Self, UnsealError> {
        let nonce: [u8; NONCE_LEN] = STANDARD
            .decode(nonce)
            .map_err(|_| UnsealError::Malformed)?
            .try_into()
            .map_err(|_| UnsealError::Malformed)?;
        let ciphertext = STANDARD.decode(ciphertext).map_err(|_| UnsealError::Malformed)?;
        Ok(Self { nonce, ciphertext })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::SeededRandom;
    use portcullis_core::codec::hex;

    #[test]
    fn hmac_matches_rfc_4231_and_subkeys_differ_by_purpose() {
        // RFC 4231 test case 2.
        let mac = hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(hex(&mac), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        // Test case 6: a key longer than the block.
        let mac = hmac_sha256(&[0xaa; 131], &[b"Test Using Larger Than Block-Size Key - Hash Key First"]);
        assert_eq!(hex(&mac), "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
        let key = MasterKey::from_bytes([9; MASTER_KEY_LEN]);
        let a = key.derive_subkey("portcullis lockout v1");
        assert_eq!(*a, hmac_sha256(&[9; MASTER_KEY_LEN], &[b"portcullis lockout v1"]));
        assert_ne!(*a, *key.derive_subkey("portcullis burst v1"));
        assert_ne!(a.as_slice(), [9; MASTER_KEY_LEN].as_slice());
    }

    #[test]
    fn sealed_values_open_only_with_the_same_key_and_associated_data() {
        let rng = SeededRandom::new(1);
        let key = MasterKey::generate(&rng).unwrap();
        let sealed = key.seal(b"secret scalar", b"kid-1", &rng).unwrap();
        assert!(!sealed.ciphertext.windows(6).any(|w| w == b"secret"));
        assert_eq!(key.open(&sealed, b"kid-1").unwrap().as_slice(), b"secret scalar");
        assert!(matches!(key.open(&sealed, b"kid-2"), Err(UnsealError::Authentication)));
        let other = MasterKey::generate(&rng).unwrap();
        assert!(matches!(other.open(&sealed, b"kid-1"), Err(UnsealError::Authentication)));
    }

    #[test]
    fn each_seal_uses_a_fresh_nonce() {
        let rng = SeededRandom::new(2);
        let key = MasterKey::generate(&rng).unwrap();
        let a = key.seal(b"x", b"k", &rng).unwrap();
        let b = key.seal(b"x", b"k", &rng).unwrap();
        assert_ne!(a.nonce, b.nonce);
    }

    #[test]
    fn base64_round_trips_and_wrong_lengths_are_refused() {
        let key = MasterKey::generate(&SeededRandom::new(3)).unwrap();
        let again = MasterKey::from_base64(&key.to_base64()).unwrap();
        assert_eq!(key.0.as_slice(), again.0.as_slice());
        assert!(matches!(MasterKey::from_base64("c2hvcnQ="), Err(MasterKeyError::Malformed)));
        assert!(matches!(MasterKey::from_base64("not base64!"), Err(MasterKeyError::Malformed)));
    }

    #[test]
    fn the_generated_file_is_reused_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let (first, created) = MasterKey::load_or_create_in(dir.path(), &SeededRandom::new(4)).unwrap();
        assert!(created);
        let (second, created) = MasterKey::load_or_create_in(dir.path(), &SeededRandom::new(5)).unwrap();
        assert!(!created);
        assert_eq!(first.0.as_slice(), second.0.as_slice());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.path().join(MASTER_KEY_FILE_NAME)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn debug_output_hides_the_key() {
        let key = MasterKey::generate(&SeededRandom::new(6)).unwrap();
        assert_eq!(format!("{key:?}"), "MasterKey(..)");
    }
}
