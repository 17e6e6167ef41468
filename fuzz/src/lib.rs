//! What the fuzz targets share: requests written as text (so seeds are readable and
//! mutate well) and built the way the filter builds them from Envoy's headers
//! (`filter/src/http.rs`, `request_parts`), and compact JWS signed with the test-only
//! HS256 secret of `core/tests/fixtures`, so that token inputs get past the signature
//! and reach the claims checks.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use portcullis_core::RequestParts;

/// The public, test-only HMAC secret the fixture JWKS holds as `oct-hs256`.
pub const HS256_SECRET: &[u8] = include_bytes!("../../core/tests/fixtures/hs256.secret");
/// The fixture JWKS: RSA, EC, OKP and oct keys (`core/tests/fixtures/README.md`).
pub const FIXTURE_JWKS: &str = include_str!("../../core/tests/fixtures/jwks.json");

/// A request written as text, the way the seeds in `corpus/` are written, and decoded
/// as the filter decodes Envoy's headers (lossily, `filter/src/host.rs`):
///
/// ```text
/// POST /login?next=%2F
/// :authority: api.example.com
/// content-type: application/json
///
/// {"username":"alice"}
/// ```
///
/// The first line is the method and the `:path` (everything after the first space).
/// Header lines are `name: value` (split at the first `:` after the first byte, one
/// optional space dropped) up to an empty line; the rest is the body. `:authority` is
/// the authority; other `:name` lines are knobs of the target (`pseudo`), as the filter
/// ignores other pseudo-headers. Lines end at `\n` only, so a `\r` stays in the value.
#[derive(Debug, Clone, Default)]
pub struct TextRequest {
    pub parts: RequestParts,
    pub pseudo: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl TextRequest {
    pub fn parse(data: &[u8]) -> TextRequest {
        let (head, body) = match find(data, b"\n\n") {
            Some(i) => (&data[..i], data[i + 2..].to_vec()),
            None => (data, Vec::new()),
        };
        let head = String::from_utf8_lossy(head);
        let mut lines = head.split('\n');
        let mut parts = RequestParts::default();
        let first = lines.next().unwrap_or_default();
        match first.split_once(' ') {
            Some((method, path)) => {
                parts.method = method.to_owned();
                parts.path = path.to_owned();
            }
            None => parts.method = first.to_owned(),
        }
        let mut pseudo = Vec::new();
        for line in lines {
            // The name may itself start with `:` (pseudo-headers): split after it.
            let split = line.char_indices().skip(1).find(|(_, c)| *c == ':').map(|(i, _)| i);
            let (name, value) = match split {
                Some(i) => (&line[..i], &line[i + 1..]),
                None => (line, ""),
            };
            let value = value.strip_prefix(' ').unwrap_or(value);
            if name == ":authority" {
                parts.authority = value.to_owned();
            } else if name.starts_with(':') {
                pseudo.push((name.to_owned(), value.to_owned()));
            } else {
                parts.headers.push((name.to_owned(), value.to_owned()));
            }
        }
        TextRequest { parts, pseudo, body }
    }

    /// The value of the first pseudo line `name`.
    pub fn knob(&self, name: &str) -> Option<&str> {
        self.pseudo.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

pub fn b64(bytes: impl AsRef<[u8]>) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// `b64(header).b64(payload).b64(HMAC-SHA256)` under [`HS256_SECRET`].
pub fn sign_hs256(header: &[u8], payload: &[u8]) -> String {
    let input = format!("{}.{}", b64(header), b64(payload));
    let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(HS256_SECRET) else {
        unreachable!("HMAC takes a key of any length")
    };
    mac.update(input.as_bytes());
    format!("{input}.{}", b64(mac.finalize().into_bytes()))
}

/// Whether `s` is free of the bytes a header value must never carry upstream.
pub fn header_safe(s: &str) -> bool {
    !s.chars().any(char::is_control)
}
