//! Long-lived API tokens: the token format, the verifier the control plane stores, the
//! records it ships to filters, and the replica a filter decides from.
//!
//! **Format.** `<prefix>_<lookup>_<secret><checksum>`, e.g.
//! `pct_4fZq0bT9_k3J…(32)…Xw2Ab1Qz` :
//! - `prefix`: 1 to [`MAX_PREFIX_LEN`] of `[a-z0-9]` (default [`DEFAULT_PREFIX`]), so
//!   scanners and humans can tell what a string is;
//! - `lookup`: [`LOOKUP_LEN`] base62 characters, public: the token's id, by which the
//!   control plane and the replica find the record (one read, no scan);
//! - `secret`: [`SECRET_LEN`] base62 characters (≈190 bits) from a CSPRNG;
//! - `checksum`: [`CHECKSUM_LEN`] base62 characters, the first 32 bits of SHA-256 over
//!   `<prefix>_<lookup>_<secret>`, so a leaked-token scanner can recognise a real token
//!   offline (no call, no false positives from look-alikes) and a mistyped token is
//!   refused before any lookup.
//!
//! Base62 and `_` only: the token survives copy-paste, double-click selection, URLs and
//! shell quoting as it is. `_` never occurs inside a part, so the split is unambiguous.
//!
//! **Verifier.** The control plane stores, and the feed ships, only
//! [`verifier`]`(lookup, secret)` = SHA-256 of a domain label, the lookup and the secret
//! (each length-prefixed); never the secret. A plain (unkeyed) hash is the choice:
//! - the secret has ≈190 bits of entropy: no guess can be checked against a leaked
//!   verifier in any useful time, so a slow password hash or a pepper buys nothing;
//! - filters verify locally. A pepper (HMAC with a key derived from the master key)
//!   would have to be shipped to every Envoy, spreading a master-key-derived secret to
//!   the data plane, to protect against an attack (offline guessing) that the entropy
//!   already rules out;
//! - binding the lookup into the hash means a verifier copied onto another record
//!   never verifies.
//!
//! Comparison is constant time ([`verify`]). Parsing never allocates and refuses
//! anything longer than [`MAX_TOKEN_LEN`] before looking at it.
//!
//! **Sync.** The control plane appends every change (creation, revocation) to a feed
//! of its own; filters follow it with `GET` [`FEED_PATH`] ([`ApiTokenFeedPage`]) and
//! keep an [`ApiTokenReplica`]. Expiry needs no feed entry: every record carries its
//! `expiresAt`, which the replica checks against the host's clock and prunes by. Usage
//! goes back batched, off the request path, with `POST` [`USAGE_PATH`]
//! ([`UsageReport`]); the control plane writes `lastUsedAt` at most once a minute per
//! token.

use std::collections::HashMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq as _;

/// `GET`: one page of the API token feed (internal listener, fleet credential).
pub const FEED_PATH: &str = "/v1/api-tokens/feed";
/// `POST`: a batch of usage reports (internal listener, fleet credential).
pub const USAGE_PATH: &str = "/v1/api-tokens/usage";

/// The prefix unless configured otherwise.
pub const DEFAULT_PREFIX: &str = "pct";
/// Longest prefix.
pub const MAX_PREFIX_LEN: usize = 16;
/// Characters of the lookup id.
pub const LOOKUP_LEN: usize = 8;
/// Characters of the secret (62^32 ≈ 2^190).
pub const SECRET_LEN: usize = 32;
/// Characters of the checksum (62^6 > 2^32).
pub const CHECKSUM_LEN: usize = 6;
/// Longest token any prefix allows.
pub const MAX_TOKEN_LEN: usize = MAX_PREFIX_LEN + 1 + LOOKUP_LEN + 1 + SECRET_LEN + CHECKSUM_LEN;
/// Random bytes [`generate`] takes: 16 for the lookup, 32 for the secret. Each part is
/// the low base62 digits of a number at least 64 bits wider than the part, so the
/// digits are uniform to within 2^-64.
pub const RANDOM_BYTES: usize = 48;
/// Most entries on one feed page; larger pages are refused by the replica.
pub const MAX_FEED_PAGE_ENTRIES: usize = 5_000;
/// Most usage entries in one report.
pub const MAX_USAGE_BATCH: usize = 1_000;

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
fn push_base62(out: &mut String, bytes: &[u8], digits: usize) {
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
fn checksum(body: &[u8]) -> String {
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

// --- wire ------------------------------------------------------------------------------

/// One token as the feed ships it: everything a filter needs to decide, and no secret.
/// Unknown fields are ignored, so the control plane can add fields without breaking
/// deployed filters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiTokenEntry {
    /// The lookup id ([`LOOKUP_LEN`] base62 characters).
    pub lookup: String,
    /// [`Verifier::encode`] of the secret.
    pub verifier: String,
    /// The user the token acts for.
    pub user: String,
    pub scopes: Vec<String>,
    /// Unix seconds; the token is refused from then on.
    pub expires_at: u64,
    /// Unix seconds; absent while the token is not revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<u64>,
}

/// Which part of which snapshot a page is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiTokenSnapshotPart {
    /// Every part of one snapshot carries the same id.
    pub id: String,
    /// 0, 1, 2, …
    pub part: u32,
    /// The last part.
    pub last: bool,
}

/// One page of `GET /v1/api-tokens/feed?cursor=<cursor>&limit=<n>`: either changes after
/// the cursor (`snapshot` absent: each entry replaces the replica's record of its
/// lookup) or one part of a snapshot of every token not yet expired (sent when the
/// follower has no cursor or one that cannot be continued).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiTokenFeedPage {
    /// Send back as `cursor` to continue.
    pub cursor: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<ApiTokenSnapshotPart>,
    #[serde(default)]
    pub tokens: Vec<ApiTokenEntry>,
    /// More is waiting: ask again right away.
    #[serde(default)]
    pub more: bool,
}

/// `POST /v1/api-tokens/usage`: tokens used since the last report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UsageReport {
    /// Lookup ids, each once per report.
    pub used: Vec<String>,
}

/// What the control plane did with a usage report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageReply {
    /// Tokens whose `lastUsedAt` was written (the rest were written less than a minute
    /// ago, or are unknown).
    pub updated: u32,
}

// --- replica ---------------------------------------------------------------------------

/// Why a presented API token is refused: the RFC 6750 `invalid_token` reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not a token of this format, or no record has its lookup id.
    UnknownToken,
    /// The record exists; the secret is wrong.
    BadSecret,
    Expired,
    Revoked,
}

impl Refusal {
    /// The stable reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::UnknownToken => "unknown_token",
            Refusal::BadSecret => "bad_secret",
            Refusal::Expired => "expired",
            Refusal::Revoked => "revoked",
        }
    }
}

/// One token as the replica holds it: fixed-size arrays for the hashes, boxed strings
/// for the rest (no spare capacity).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaToken {
    pub verifier: Verifier,
    pub user: Box<str>,
    pub scopes: Box<[Box<str>]>,
    pub expires_at: u64,
    pub revoked: bool,
}

/// Why a feed page was not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiTokenFeedError {
    TooManyEntries,
    /// A lookup or verifier that is not of the format.
    BadEntry,
    /// A snapshot part that does not continue the assembly under way.
    OutOfOrder,
}

/// The tokens a filter decides from, and the snapshot being assembled. A snapshot is
/// built apart and replaces the published tokens only once its last part is applied,
/// so a half-read snapshot is never used; a part that does not continue the assembly
/// abandons it and leaves the published tokens as they were. Deltas apply directly:
/// each entry replaces its lookup's record (a revocation is an entry with `revokedAt`),
/// and applying one twice is harmless.
#[derive(Debug, Clone, Default)]
pub struct ApiTokenReplica {
    tokens: HashMap<[u8; LOOKUP_LEN], ReplicaToken>,
    cursor: String,
    assembling: Option<Assembly>,
}

/// A snapshot being read: its id, the last part applied, the tokens so far and the
/// cursor to continue with.
#[derive(Debug, Clone, Default)]
struct Assembly {
    id: String,
    part: u32,
    tokens: HashMap<[u8; LOOKUP_LEN], ReplicaToken>,
    cursor: String,
}

fn lookup_key(lookup: &str) -> Option<[u8; LOOKUP_LEN]> {
    if !is_lookup(lookup) {
        return None;
    }
    <[u8; LOOKUP_LEN]>::try_from(lookup.as_bytes()).ok()
}

fn replica_entry(entry: &ApiTokenEntry) -> Option<([u8; LOOKUP_LEN], ReplicaToken)> {
    Some((
        lookup_key(&entry.lookup)?,
        ReplicaToken {
            verifier: Verifier::decode(&entry.verifier)?,
            user: entry.user.as_str().into(),
            scopes: entry.scopes.iter().map(|s| Box::<str>::from(s.as_str())).collect(),
            expires_at: entry.expires_at,
            revoked: entry.revoked_at.is_some(),
        },
    ))
}

impl ApiTokenReplica {
    /// The cursor to ask the next page with (empty: start with a snapshot).
    pub fn cursor(&self) -> &str {
        match &self.assembling {
            Some(assembly) => &assembly.cursor,
            None => &self.cursor,
        }
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Applies one page. On error nothing changes but an abandoned assembly, and the
    /// next poll starts over from the published cursor.
    pub fn apply(&mut self, page: &ApiTokenFeedPage) -> Result<(), ApiTokenFeedError> {
        if page.tokens.len() > MAX_FEED_PAGE_ENTRIES {
            self.assembling = None;
            return Err(ApiTokenFeedError::TooManyEntries);
        }
        let mut entries = Vec::with_capacity(page.tokens.len());
        for entry in &page.tokens {
            match replica_entry(entry) {
                Some(e) => entries.push(e),
                None => {
                    self.assembling = None;
                    return Err(ApiTokenFeedError::BadEntry);
                }
            }
        }
        match &page.snapshot {
            None => {
                if self.assembling.is_some() {
                    self.assembling = None;
                    return Err(ApiTokenFeedError::OutOfOrder);
                }
                self.tokens.extend(entries);
                self.cursor.clone_from(&page.cursor);
            }
            Some(part) => {
                // Part 0 always starts afresh; any other part must be the next of the
                // snapshot under way.
                let mut assembly = match self.assembling.take() {
                    _ if part.part == 0 => Assembly { id: part.id.clone(), ..Assembly::default() },
                    Some(a) if a.id == part.id && a.part.checked_add(1) == Some(part.part) => a,
                    _ => return Err(ApiTokenFeedError::OutOfOrder),
                };
                assembly.part = part.part;
                assembly.tokens.extend(entries);
                assembly.cursor.clone_from(&page.cursor);
                if part.last {
                    self.tokens = assembly.tokens;
                    self.cursor = assembly.cursor;
                } else {
                    self.assembling = Some(assembly);
                }
            }
        }
        Ok(())
    }

    /// Drops tokens expired at `now_unix_secs`.
    pub fn prune(&mut self, now_unix_secs: u64) {
        self.tokens.retain(|_, t| t.expires_at > now_unix_secs);
    }

    /// Decides a presented token at `now_unix_secs`: its lookup id (for the usage
    /// report) and record, or why it is refused.
    pub fn check<'p>(
        &self,
        presented: &'p str,
        prefix: &str,
        now_unix_secs: u64,
    ) -> Result<(&'p str, &ReplicaToken), Refusal> {
        let parsed = parse(presented, prefix).map_err(|_| Refusal::UnknownToken)?;
        let key = lookup_key(parsed.lookup).ok_or(Refusal::UnknownToken)?;
        let token = self.tokens.get(&key).ok_or(Refusal::UnknownToken)?;
        if !verify(&parsed, &token.verifier) {
            return Err(Refusal::BadSecret);
        }
        if token.revoked {
            return Err(Refusal::Revoked);
        }
        if now_unix_secs >= token.expires_at {
            return Err(Refusal::Expired);
        }
        Ok((parsed.lookup, token))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn random(seed: u8) -> [u8; RANDOM_BYTES] {
        let mut out = [0u8; RANDOM_BYTES];
        for (i, b) in out.iter_mut().enumerate() {
            *b = seed.wrapping_mul(31).wrapping_add(u8::try_from(i).unwrap().wrapping_mul(97));
        }
        out
    }

    fn entry(token: &NewToken, expires_at: u64, revoked_at: Option<u64>) -> ApiTokenEntry {
        ApiTokenEntry {
            lookup: token.lookup().to_owned(),
            verifier: token.verifier().encode(),
            user: "alice".to_owned(),
            scopes: vec!["deploy".to_owned()],
            expires_at,
            revoked_at,
        }
    }

    #[test]
    fn generated_tokens_have_the_documented_shape_and_parse_back() {
        let token = generate("pct", &random(1)).unwrap();
        let text = token.expose();
        assert_eq!(text.len(), 3 + 1 + LOOKUP_LEN + 1 + SECRET_LEN + CHECKSUM_LEN);
        let parts: Vec<&str> = text.split('_').collect();
        assert_eq!(parts.len(), 3, "{text}");
        assert_eq!(parts[0], "pct");
        assert_eq!(parts[1], token.lookup());
        assert!(parts[1..].iter().all(|p| p.bytes().all(|b| b.is_ascii_alphanumeric())));
        let parsed = parse(text, "pct").unwrap();
        assert_eq!(parsed.lookup, token.lookup());
        assert!(verify(&parsed, &token.verifier()));
        assert!(!format!("{token:?}{parsed:?}").contains(&parts[2][..SECRET_LEN]), "Debug hides the secret");
    }

    #[test]
    fn different_randomness_gives_different_lookups_and_secrets() {
        let a = generate("pct", &random(1)).unwrap();
        let b = generate("pct", &random(2)).unwrap();
        assert_ne!(a.lookup(), b.lookup());
        assert_ne!(a.verifier(), b.verifier());
        assert_eq!(a, generate("pct", &random(1)).unwrap(), "deterministic in its input");
    }

    #[test]
    fn base62_digits_are_the_low_digits_of_the_number() {
        let mut out = String::new();
        push_base62(&mut out, &[0, 0, 1, 0], 3); // 256 = 4*62 + 8
        assert_eq!(out, "048");
        let mut all = String::new();
        push_base62(&mut all, &[0xff; 32], SECRET_LEN);
        assert_eq!(all.len(), SECRET_LEN);
    }

    #[test]
    fn malformed_tokens_are_refused_with_the_reason() {
        let token = generate("pct", &random(3)).unwrap();
        let text = token.expose();
        assert_eq!(parse(text, "abc"), Err(FormatError::WrongPrefix));
        assert_eq!(parse(&format!("{text}A"), "pct"), Err(FormatError::Malformed));
        assert_eq!(parse(&text[..text.len() - 1], "pct"), Err(FormatError::Malformed));
        assert_eq!(parse(&"a".repeat(10_000), "pct"), Err(FormatError::TooLong));
        assert_eq!(parse("pct_", "pct"), Err(FormatError::Malformed));
        assert_eq!(parse("pct_abc_def", "pct"), Err(FormatError::Malformed));
        assert_eq!(parse("", "pct"), Err(FormatError::WrongPrefix));
        let with_dash = format!("{}-{}", &text[..12], &text[13..]);
        assert_eq!(parse(&with_dash, "pct"), Err(FormatError::Malformed));
        // One character of the secret changed: the checksum catches it offline.
        let mut bytes = text.as_bytes().to_vec();
        bytes[20] = if bytes[20] == b'a' { b'b' } else { b'a' };
        let typo = String::from_utf8(bytes).unwrap();
        assert_eq!(parse(&typo, "pct"), Err(FormatError::BadChecksum));
        // Multi-byte characters never split a char boundary.
        assert!(parse(&format!("pct_{}_{}", "é".repeat(4), "ü".repeat(19)), "pct").is_err());
    }

    #[test]
    fn prefixes_are_lowercase_alphanumerics_up_to_sixteen() {
        assert!(validate_prefix("pct").is_ok());
        assert!(validate_prefix("acme2").is_ok());
        for bad in ["", "PCT", "p_t", "p-t", &"a".repeat(17)] {
            assert_eq!(validate_prefix(bad), Err(FormatError::BadPrefix), "{bad:?}");
            assert!(generate(bad, &random(0)).is_err());
        }
        let long = generate(&"z".repeat(MAX_PREFIX_LEN), &random(4)).unwrap();
        assert_eq!(long.expose().len(), MAX_TOKEN_LEN);
        assert!(parse(long.expose(), &"z".repeat(MAX_PREFIX_LEN)).is_ok());
    }

    #[test]
    fn the_verifier_is_the_documented_sha256_and_binds_the_lookup() {
        let v = verifier("abcdEFGH", "s");
        let mut h = Sha256::new();
        for part in [&b"portcullis api token v1"[..], b"abcdEFGH", b"s"] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        assert_eq!(v.0, <[u8; 32]>::from(h.finalize()));
        assert_ne!(verifier("abcdEFGI", "s"), v);
        assert_eq!(Verifier::decode(&v.encode()), Some(v));
        assert_eq!(v.encode().len(), 43);
        assert_eq!(Verifier::decode("short"), None);
        assert!(!format!("{v:?}").contains(&v.encode()));
    }

    #[test]
    fn the_replica_answers_each_refusal_reason() {
        let live = generate("pct", &random(5)).unwrap();
        let revoked = generate("pct", &random(6)).unwrap();
        let mut replica = ApiTokenReplica::default();
        let page = ApiTokenFeedPage {
            cursor: "d.1".to_owned(),
            snapshot: Some(ApiTokenSnapshotPart { id: "s".into(), part: 0, last: true }),
            tokens: vec![entry(&live, 2_000, None), entry(&revoked, 2_000, Some(1_000))],
            more: false,
        };
        replica.apply(&page).unwrap();
        assert_eq!((replica.len(), replica.cursor()), (2, "d.1"));
        let (lookup, token) = replica.check(live.expose(), "pct", 1_500).unwrap();
        assert_eq!((lookup, &*token.user), (live.lookup(), "alice"));
        assert_eq!(replica.check(live.expose(), "pct", 2_000).unwrap_err(), Refusal::Expired);
        assert_eq!(replica.check(revoked.expose(), "pct", 1_500).unwrap_err(), Refusal::Revoked);
        let unknown = generate("pct", &random(7)).unwrap();
        assert_eq!(replica.check(unknown.expose(), "pct", 1_500).unwrap_err(), Refusal::UnknownToken);
        assert_eq!(replica.check("garbage", "pct", 1_500).unwrap_err(), Refusal::UnknownToken);
        // Right lookup, wrong secret (with a valid checksum: an attacker can compute one).
        let forged_body = format!("pct_{}_{}", live.lookup(), "A".repeat(SECRET_LEN));
        let forged = format!("{forged_body}{}", checksum(forged_body.as_bytes()));
        assert_eq!(replica.check(&forged, "pct", 1_500).unwrap_err(), Refusal::BadSecret);
        assert_eq!(Refusal::BadSecret.as_str(), "bad_secret");

        // A delta revokes the live one.
        replica
            .apply(&ApiTokenFeedPage {
                cursor: "d.2".into(),
                tokens: vec![entry(&live, 2_000, Some(1_600))],
                ..ApiTokenFeedPage::default()
            })
            .unwrap();
        assert_eq!(replica.check(live.expose(), "pct", 1_700).unwrap_err(), Refusal::Revoked);
        replica.prune(2_000);
        assert!(replica.is_empty());
    }

    #[test]
    fn a_snapshot_is_published_only_when_complete_and_bad_parts_leave_the_replica_alone() {
        let a = generate("pct", &random(8)).unwrap();
        let b = generate("pct", &random(9)).unwrap();
        let mut replica = ApiTokenReplica::default();
        let part = |n, last, token: &NewToken, cursor: &str| ApiTokenFeedPage {
            cursor: cursor.to_owned(),
            snapshot: Some(ApiTokenSnapshotPart { id: "s1".into(), part: n, last }),
            tokens: vec![entry(token, 9_000, None)],
            more: !last,
        };
        replica.apply(&part(0, false, &a, "s.1")).unwrap();
        assert!(replica.is_empty(), "nothing published mid-snapshot");
        assert_eq!(replica.cursor(), "s.1");
        assert_eq!(replica.apply(&part(2, true, &b, "d.9")), Err(ApiTokenFeedError::OutOfOrder));
        assert_eq!(replica.cursor(), "", "an abandoned assembly restarts from the published cursor");
        replica.apply(&part(0, false, &a, "s.1")).unwrap();
        replica.apply(&part(1, true, &b, "d.9")).unwrap();
        assert_eq!((replica.len(), replica.cursor()), (2, "d.9"));
        let mut bad = part(0, true, &a, "x");
        bad.tokens[0].verifier = "nope".into();
        assert_eq!(replica.apply(&bad), Err(ApiTokenFeedError::BadEntry));
        assert_eq!(replica.len(), 2);
    }

    #[test]
    fn feed_pages_ignore_unknown_fields_and_use_the_documented_names() {
        let json = r#"{"cursor":"d.x.1","tokens":[{"lookup":"abcdEFGH","verifier":"v","user":"u",
            "scopes":["a"],"expiresAt":5,"revokedAt":4,"later":1}],"more":true,"later":2}"#;
        let page: ApiTokenFeedPage = serde_json::from_str(json).unwrap();
        assert_eq!(page.tokens[0].revoked_at, Some(4));
        assert!(page.more);
        let usage: UsageReport = serde_json::from_str(r#"{"used":["abcdEFGH"]}"#).unwrap();
        assert_eq!(usage.used.len(), 1);
    }
}
