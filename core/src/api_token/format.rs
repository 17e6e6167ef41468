//! The token format: generation, parsing, the checksum and the verifier.

use base64::Engine as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq as _;

use super::*;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const VERIFIER_LABEL: &[u8] = b"portcullis api token v1";
const SEPARATOR: u8 = b'_';

/// Why a string is not an API token. No variant carries any part of the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormatError {
    /// Longer than any token can be.
    TooLong,
    /// Does not start with the expected `<prefix>_`.
    WrongPrefix,
    /// The parts are missing, of the wrong length, or not base62.
    Malformed,
    /// Well formed, but the checksum does not match (mistyped or made up).
    BadChecksum,
    /// A configured prefix that is not 1 to [`MAX_PREFIX_LEN`] of `[a-z0-9]`.
    BadPrefix,
}

impl FormatError {
    /// A stable, low-cardinality name.
    pub fn as_str(self) -> &'static str {
        match self {
            FormatError::TooLong => "too_long",
            FormatError::WrongPrefix => "wrong_prefix",
            FormatError::Malformed => "malformed",
            FormatError::BadChecksum => "bad_checksum",
            FormatError::BadPrefix => "bad_prefix",
        }
    }
}

impl std::fmt::Display for FormatError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FormatError::TooLong => "longer than any API token",
            FormatError::WrongPrefix => "not an API token of this prefix",
            FormatError::Malformed => "not of the form <prefix>_<lookup>_<secret>",
            FormatError::BadChecksum => "the checksum does not match",
            FormatError::BadPrefix => "the prefix must be 1 to 16 characters of a-z and 0-9",
        })
    }
}

impl std::error::Error for FormatError {}

/// Checks a configured prefix.
pub fn validate_prefix(prefix: &str) -> Result<(), FormatError> {
    let ok = !prefix.is_empty()
        && prefix.len() <= MAX_PREFIX_LEN
        && prefix.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(FormatError::BadPrefix)
    }
}

/// Whether `text` is a lookup id: exactly [`LOOKUP_LEN`] base62 characters.
pub fn is_lookup(text: &str) -> bool {
    text.len() == LOOKUP_LEN && is_base62(text)
}

fn is_base62(text: &str) -> bool {
    text.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// A freshly generated token. `Debug` hides the secret; the full text is
/// [`NewToken::expose`], shown once to whoever created it.
#[derive(Clone, PartialEq, Eq)]
pub struct NewToken {
    text: String,
    lookup_end: usize,
    prefix_len: usize,
}

impl std::fmt::Debug for NewToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NewToken({})", self.lookup())
    }
}

impl NewToken {
    /// The whole token: show it once, store it never.
    pub fn expose(&self) -> &str {
        &self.text
    }

    pub fn lookup(&self) -> &str {
        self.text.get(self.prefix_len + 1..self.lookup_end).unwrap_or_default()
    }

    /// What the control plane stores for it.
    pub fn verifier(&self) -> Verifier {
        let secret_start = self.lookup_end + 1;
        let secret = self.text.get(secret_start..secret_start + SECRET_LEN).unwrap_or_default();
        verifier(self.lookup(), secret)
    }
}

/// A new token with `prefix` from `random` (CSPRNG output the caller drew).
pub fn generate(prefix: &str, random: &[u8; RANDOM_BYTES]) -> Result<NewToken, FormatError> {
    validate_prefix(prefix)?;
    let (lookup_bytes, secret_bytes) = random.split_at(16);
    let mut text = String::with_capacity(prefix.len() + 2 + LOOKUP_LEN + SECRET_LEN + CHECKSUM_LEN);
    text.push_str(prefix);
    text.push(char::from(SEPARATOR));
    push_base62(&mut text, lookup_bytes, LOOKUP_LEN);
    let lookup_end = text.len();
    text.push(char::from(SEPARATOR));
    push_base62(&mut text, secret_bytes, SECRET_LEN);
    let sum = checksum(text.as_bytes());
    text.push_str(&sum);
    Ok(NewToken { text, lookup_end, prefix_len: prefix.len() })
}

/// Appends the `digits` lowest base62 digits of `bytes` read as a big-endian number.
pub(super) fn push_base62(out: &mut String, bytes: &[u8], digits: usize) {
    let mut number = [0u8; 32];
    for (n, b) in number.iter_mut().zip(bytes) {
        *n = *b;
    }
    let number = number.get_mut(..bytes.len().min(32)).unwrap_or_default();
    let mut reversed = [0u8; 64];
    for slot in reversed.iter_mut().take(digits) {
        let mut remainder: u32 = 0;
        for byte in number.iter_mut() {
            let acc = remainder * 256 + u32::from(*byte);
            *byte = u8::try_from(acc / 62).unwrap_or(0);
            remainder = acc % 62;
        }
        *slot = BASE62.get(remainder as usize).copied().unwrap_or(b'0');
    }
    for b in reversed.iter().take(digits).rev() {
        out.push(char::from(*b));
    }
}

/// [`CHECKSUM_LEN`] base62 digits of the first 4 bytes of SHA-256(`body`).
pub fn checksum(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    let mut out = String::with_capacity(CHECKSUM_LEN);
    push_base62(&mut out, digest.get(..4).unwrap_or_default(), CHECKSUM_LEN);
    out
}

/// A token split into its parts (borrowed from the presented text).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ParsedToken<'a> {
    pub lookup: &'a str,
    secret: &'a str,
}

impl std::fmt::Debug for ParsedToken<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ParsedToken({})", self.lookup)
    }
}

impl ParsedToken<'_> {
    /// The verifier of the presented secret, to compare with the stored one.
    pub fn verifier(&self) -> Verifier {
        verifier(self.lookup, self.secret)
    }
}

/// Splits a presented token of `prefix` into lookup and secret, checking the checksum.
pub fn parse<'a>(text: &'a str, prefix: &str) -> Result<ParsedToken<'a>, FormatError> {
    if text.len() > MAX_TOKEN_LEN {
        return Err(FormatError::TooLong);
    }
    let rest = text
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix(char::from(SEPARATOR)))
        .ok_or(FormatError::WrongPrefix)?;
    let (lookup, rest) = rest.split_once(char::from(SEPARATOR)).ok_or(FormatError::Malformed)?;
    if !is_lookup(lookup) || rest.len() != SECRET_LEN + CHECKSUM_LEN || !is_base62(rest) {
        return Err(FormatError::Malformed);
    }
    // All ASCII from here on: these cuts are on character boundaries.
    let (Some(secret), Some(sum), Some(body)) =
        (rest.get(..SECRET_LEN), rest.get(SECRET_LEN..), text.get(..text.len().saturating_sub(CHECKSUM_LEN)))
    else {
        return Err(FormatError::Malformed);
    };
    if !bool::from(checksum(body.as_bytes()).as_bytes().ct_eq(sum.as_bytes())) {
        return Err(FormatError::BadChecksum);
    }
    Ok(ParsedToken { lookup, secret })
}

/// SHA-256 over the domain label, the lookup and the secret (see the module docs).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Verifier(pub [u8; 32]);

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier(..)")
    }
}

impl Verifier {
    /// base64url without padding (43 characters): the form stored and shipped.
    pub fn encode(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.0)
    }

    /// Parses [`Verifier::encode`]'s form.
    pub fn decode(text: &str) -> Option<Self> {
        if text.len() != 43 {
            return None;
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text).ok()?;
        <[u8; 32]>::try_from(bytes.as_slice()).ok().map(Verifier)
    }
}

/// The verifier of `secret` under `lookup`.
pub fn verifier(lookup: &str, secret: &str) -> Verifier {
    let mut h = Sha256::new();
    for part in [VERIFIER_LABEL, lookup.as_bytes(), secret.as_bytes()] {
        h.update(u64::try_from(part.len()).unwrap_or(u64::MAX).to_be_bytes());
        h.update(part);
    }
    Verifier(h.finalize().into())
}

/// Whether the presented token matches `expected`, in constant time.
pub fn verify(presented: &ParsedToken<'_>, expected: &Verifier) -> bool {
    bool::from(presented.verifier().0.ct_eq(&expected.0))
}
