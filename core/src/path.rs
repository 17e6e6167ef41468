//! The path the filter decides on. Rules, lockout routes and `path` descriptors never
//! look at the raw `:path`: an upstream that decodes escapes, resolves `..` or drops
//! `;parameters` would otherwise serve a protected handler for a path the rules took
//! for a public one (`/public/../api/orders`, `/public/%2e%2e/api/orders`).
//!
//! [`normalize`] turns the path (without its query) into one canonical form:
//!
//! - every percent-escape is decoded, then bytes that are not allowed literally in a
//!   path segment are encoded again with upper-case hex (so `%41`, `%61` become `A`, `a`;
//!   `%3a` and `:` both become `:`; `%c3%a9` becomes `%C3%A9`; `;` stays `%3B`);
//! - `;parameters` are dropped from every segment (as Tomcat and Spring do before
//!   routing), so `/login;x` is decided as `/login`;
//! - `.` and `..` segments are removed (RFC 3986, section 5.2.4) and empty segments
//!   merged (`//`), keeping a trailing slash.
//!
//! Paths that stay ambiguous after that are refused ([`PathRejection`], answered 400):
//! an encoded `/` or `\`, a raw `\`, NUL or other control characters (raw or encoded),
//! invalid or double percent-encoding, a `..;` / `.;x` segment, raw non-ASCII bytes, a
//! fragment, and anything that is not an origin-form path. An upstream may read each of
//! these in more than one way, and no legitimate client needs them.
//!
//! Invariants (property-tested): `normalize` never panics; its output is a fixed point
//! (`normalize(normalize(p)) == normalize(p)`); the output of a path starting with `/`
//! starts with `/` and has no `//`, no dot segment and no `;`.

use percent_encoding::{percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::codec::percent_decode_bytes;
use serde::Deserialize;

/// Bytes written percent-encoded in the canonical form: all but RFC 3986 `pchar`
/// (unreserved, sub-delims, `:` and `@`), and `;` (which would read as a parameter).
const NOT_PCHAR: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'!')
    .remove(b'$')
    .remove(b'&')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b'*')
    .remove(b'+')
    .remove(b',')
    .remove(b'=')
    .remove(b':')
    .remove(b'@');

/// What happens to a path that is valid but not in canonical form.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum NotNormalized {
    /// Decide on the canonical form (the upstream receives the path unchanged).
    #[default]
    Normalize,
    /// Refuse it (400 `path_not_normalized`): the filter and the upstream then always
    /// see the same path.
    Reject,
}

/// What happens to `;parameters` in a path segment.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Parameters {
    /// Ignore them for matching (`/login;x` is decided as `/login`).
    #[default]
    Strip,
    /// Refuse any path with a `;` (400 `path_parameters`).
    Reject,
}

/// The `paths` section: both settings can only make the filter stricter.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathOptions {
    #[serde(default)]
    pub not_normalized: NotNormalized,
    #[serde(default)]
    pub parameters: Parameters,
}

/// Why a path was refused. Each has a stable code (the `reason` of the 400 reply).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathRejection {
    /// Not `/…`, `*` or empty.
    NotOriginForm,
    /// A raw `\`.
    Backslash,
    /// `%2F`: an upstream may or may not treat it as a separator.
    EncodedSlash,
    /// `%5C`: some upstreams treat `\` as a separator.
    EncodedBackslash,
    /// A raw or encoded NUL.
    Nul,
    /// A raw or encoded control character other than NUL.
    ControlCharacter,
    /// A raw byte outside ASCII (clients percent-encode them).
    NonAscii,
    /// A `%` not followed by two hex digits.
    InvalidEncoding,
    /// An escape that decodes to another escape (`%252e`): decoded twice, it is a
    /// different path.
    DoubleEncoding,
    /// A `#` in the path.
    Fragment,
    /// A dot segment with parameters (`..;`, `.;x`), which some upstreams resolve.
    DotSegmentParameters,
    /// A `;` while `paths.parameters` is `reject`.
    Parameters,
    /// Not in canonical form while `paths.notNormalized` is `reject`.
    NotNormalized,
}

impl PathRejection {
    pub fn code(&self) -> &'static str {
        match self {
            PathRejection::NotOriginForm => "path_not_origin_form",
            PathRejection::Backslash => "path_backslash",
            PathRejection::EncodedSlash => "path_encoded_slash",
            PathRejection::EncodedBackslash => "path_encoded_backslash",
            PathRejection::Nul => "path_nul",
            PathRejection::ControlCharacter => "path_control_character",
            PathRejection::NonAscii => "path_non_ascii",
            PathRejection::InvalidEncoding => "path_invalid_encoding",
            PathRejection::DoubleEncoding => "path_double_encoding",
            PathRejection::Fragment => "path_fragment",
            PathRejection::DotSegmentParameters => "path_dot_segment_parameters",
            PathRejection::Parameters => "path_parameters",
            PathRejection::NotNormalized => "path_not_normalized",
        }
    }

    pub fn description(&self) -> &'static str {
        match self {
            PathRejection::NotOriginForm => "the path must start with '/'",
            PathRejection::Backslash => "the path contains a backslash",
            PathRejection::EncodedSlash => "the path contains an encoded '/' (%2F)",
            PathRejection::EncodedBackslash => "the path contains an encoded '\\' (%5C)",
            PathRejection::Nul => "the path contains a NUL byte",
            PathRejection::ControlCharacter => "the path contains a control character",
            PathRejection::NonAscii => "the path contains raw non-ASCII bytes; percent-encode them",
            PathRejection::InvalidEncoding => "the path contains a '%' not followed by two hex digits",
            PathRejection::DoubleEncoding => "the path contains a double percent-encoding",
            PathRejection::Fragment => "the path contains a fragment ('#')",
            PathRejection::DotSegmentParameters => "the path contains a dot segment with parameters",
            PathRejection::Parameters => "path parameters (';') are not accepted",
            PathRejection::NotNormalized => "the path is not in normal form",
        }
    }
}

/// The canonical form of `path` (a `:path` without its query string); see the module
/// documentation. `*` (for `OPTIONS *`) and the empty path (`CONNECT`) are returned as
/// they are.
pub fn normalize(path: &str, options: &PathOptions) -> Result<String, PathRejection> {
    if path.is_empty() || path == "*" {
        return Ok(path.to_string());
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(PathRejection::NotOriginForm);
    };
    check_raw(path)?;
    let mut segments: Vec<String> = Vec::new();
    // Whether the path ends in `/` (also after a trailing `.`, `..` or empty segment).
    let mut trailing_slash = false;
    for segment in rest.split('/') {
        let (name, has_parameters) = match segment.split_once(';') {
            Some((name, _)) => (name, true),
            None => (segment, false),
        };
        if has_parameters && options.parameters == Parameters::Reject {
            return Err(PathRejection::Parameters);
        }
        check_decoded(&percent_decode_bytes(segment))?;
        let decoded = percent_decode_bytes(name);
        // An encoded `;` is data, but an upstream that decodes before splitting
        // parameters would read `..%3B` as `..`.
        let before_semicolon = decoded.split(|b| *b == b';').next().unwrap_or_default();
        let dot = matches!(before_semicolon, b"." | b"..");
        if dot && (has_parameters || before_semicolon.len() != decoded.len()) {
            return Err(PathRejection::DotSegmentParameters);
        }
        match decoded.as_slice() {
            b"" | b"." => trailing_slash = true,
            b".." => {
                segments.pop();
                trailing_slash = true;
            }
            _ => {
                segments.push(percent_encode(&decoded, NOT_PCHAR).to_string());
                trailing_slash = false;
            }
        }
    }
    let mut normal = String::with_capacity(path.len());
    for s in &segments {
        normal.push('/');
        normal.push_str(s);
    }
    if trailing_slash || segments.is_empty() {
        normal.push('/');
    }
    if options.not_normalized == NotNormalized::Reject && normal != path {
        return Err(PathRejection::NotNormalized);
    }
    Ok(normal)
}

/// The raw path: no byte an HTTP client would not send, and well-formed escapes.
fn check_raw(path: &str) -> Result<(), PathRejection> {
    let bytes = path.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        match *b {
            b'\\' => return Err(PathRejection::Backslash),
            b'#' => return Err(PathRejection::Fragment),
            0 => return Err(PathRejection::Nul),
            b if b < 0x20 || b == 0x7f => return Err(PathRejection::ControlCharacter),
            b if b >= 0x80 => return Err(PathRejection::NonAscii),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).unwrap_or_default();
                if hex.len() != 2 || !hex.iter().all(u8::is_ascii_hexdigit) {
                    return Err(PathRejection::InvalidEncoding);
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// A decoded segment: nothing that changes meaning when decoded again or differently.
fn check_decoded(decoded: &[u8]) -> Result<(), PathRejection> {
    for (i, b) in decoded.iter().enumerate() {
        match *b {
            b'/' => return Err(PathRejection::EncodedSlash),
            b'\\' => return Err(PathRejection::EncodedBackslash),
            0 => return Err(PathRejection::Nul),
            b if b < 0x20 || b == 0x7f => return Err(PathRejection::ControlCharacter),
            b'%' => {
                let next = decoded.get(i + 1..i + 3).unwrap_or_default();
                if next.len() == 2 && next.iter().all(u8::is_ascii_hexdigit) {
                    return Err(PathRejection::DoubleEncoding);
                }
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn norm(p: &str) -> Result<String, PathRejection> {
        normalize(p, &PathOptions::default())
    }

    #[test]
    fn dot_segments_are_removed_and_slashes_merged() {
        for (raw, want) in [
            ("/", "/"),
            ("/api/orders", "/api/orders"),
            ("/public/../api/orders", "/api/orders"),
            ("/public/./../api/orders", "/api/orders"),
            ("/public/x/../../api/orders", "/api/orders"),
            ("/../../api", "/api"),
            ("/a/b/..", "/a/"),
            ("/a/.", "/a/"),
            ("/a/", "/a/"),
            ("//api//orders", "/api/orders"),
            ("/api//", "/api/"),
            ("/..", "/"),
            ("/a/..b/c.", "/a/..b/c."),
        ] {
            assert_eq!(norm(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn escapes_are_decoded_and_re_encoded_in_one_canonical_form() {
        for (raw, want) in [
            ("/public/%2e%2e/api/orders", "/api/orders"),
            ("/public/%2E%2E/api/orders", "/api/orders"),
            ("/public/.%2e/api/orders", "/api/orders"),
            ("/%61pi/orders", "/api/orders"),
            ("/%41PI", "/API"),
            ("/v1/items%3abatch", "/v1/items:batch"),
            ("/v1/items:batch", "/v1/items:batch"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/a%20b", "/a%20b"),
            ("/a%3bb", "/a%3Bb"),
            ("/100%25", "/100%25"),
            ("/a%7e%2d%5f", "/a~-_"),
        ] {
            assert_eq!(norm(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn parameters_are_ignored_for_matching_unless_rejected() {
        assert_eq!(norm("/login;jsessionid=1").as_deref(), Ok("/login"));
        assert_eq!(norm("/api;x/orders").as_deref(), Ok("/api/orders"));
        assert_eq!(norm("/public;x/../api/orders").as_deref(), Ok("/api/orders"));
        assert_eq!(norm("/;x/api").as_deref(), Ok("/api"));
        let strict = PathOptions { parameters: Parameters::Reject, ..PathOptions::default() };
        assert_eq!(normalize("/login;x", &strict), Err(PathRejection::Parameters));
        assert_eq!(normalize("/login", &strict).as_deref(), Ok("/login"));
    }

    #[test]
    fn ambiguous_paths_are_rejected_with_a_stable_reason() {
        for (raw, want) in [
            ("/public/..%2f/api/orders", PathRejection::EncodedSlash),
            ("/public/..%2F..%2Fapi/orders", PathRejection::EncodedSlash),
            ("/public/..%5c/api", PathRejection::EncodedBackslash),
            ("/public/..%5C/api", PathRejection::EncodedBackslash),
            ("/public\\..\\api", PathRejection::Backslash),
            ("/public/..;/api/orders", PathRejection::DotSegmentParameters),
            ("/public/.;x/../api", PathRejection::DotSegmentParameters),
            ("/public/%2e%2e;/api", PathRejection::DotSegmentParameters),
            ("/public/..%3b/api", PathRejection::DotSegmentParameters),
            ("/api%00/orders", PathRejection::Nul),
            ("/api\0", PathRejection::Nul),
            ("/api%0a", PathRejection::ControlCharacter),
            ("/api\r", PathRejection::ControlCharacter),
            ("/api%7F", PathRejection::ControlCharacter),
            ("/api%", PathRejection::InvalidEncoding),
            ("/api%2", PathRejection::InvalidEncoding),
            ("/api%zz", PathRejection::InvalidEncoding),
            ("/api%252e%252e/x", PathRejection::DoubleEncoding),
            ("/a%25%34%31", PathRejection::DoubleEncoding),
            ("/caf\u{e9}", PathRejection::NonAscii),
            ("/a#b", PathRejection::Fragment),
            ("api/orders", PathRejection::NotOriginForm),
            ("http://h/api", PathRejection::NotOriginForm),
        ] {
            assert_eq!(norm(raw), Err(want), "{raw}");
        }
        assert!(PathRejection::EncodedSlash.code().starts_with("path_"));
    }

    #[test]
    fn options_only_make_the_filter_stricter() {
        let strict = PathOptions { not_normalized: NotNormalized::Reject, ..PathOptions::default() };
        assert_eq!(normalize("/api/orders", &strict).as_deref(), Ok("/api/orders"));
        assert_eq!(normalize("/public/../api", &strict), Err(PathRejection::NotNormalized));
        assert_eq!(normalize("/a%61", &strict), Err(PathRejection::NotNormalized));
        // Whatever the options, an ambiguous path is refused for its own reason.
        assert_eq!(normalize("/a%2fb", &strict), Err(PathRejection::EncodedSlash));
    }

    #[test]
    fn the_asterisk_and_the_empty_path_are_left_alone() {
        assert_eq!(norm("*").as_deref(), Ok("*"));
        assert_eq!(norm("").as_deref(), Ok(""));
    }
}
