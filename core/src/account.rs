//! Where a login attempt names its account, and when the filter refuses to guess.
//!
//! The account is what the lockout counts failures against, so an attempt whose account
//! the filter cannot read must not slip through as "no account" while the upstream
//! reads one: that would leave only the address dimension, which an attacker with many
//! addresses does not fear. [`AccountSource::extract`] therefore either returns the one
//! account the request names or says why it cannot ([`AccountError`]), and the lockout
//! refuses such attempts unless configured otherwise.
//!
//! The rules, each closing a way to make the filter and the upstream read different
//! accounts from the same bytes:
//!
//! - the content type must be the source's: `application/json` or `application/*+json`
//!   for `json:`, `application/x-www-form-urlencoded` for `form:`, given once, with no
//!   `charset` other than UTF-8 (so a form body, a JSON/form polyglot or UTF-16 JSON
//!   is never read as something else);
//! - JSON must be one strict UTF-8 document (no `NaN`, no comments, no byte order mark,
//!   nothing after it) in which no object repeats a key, and the field must be a string;
//! - form bodies are split by `form_urlencoded` (a malformed pair such as `%zz=` is just
//!   a pair whose name is not the field); the field must appear exactly once and decode
//!   to UTF-8;
//! - a header source must be given exactly once.
//!
//! Repeated fields are refused rather than resolved: whether an upstream takes the first
//! or the last is its choice, and the attacker would choose the other.

use std::cell::Cell;
use std::fmt;

use serde::de::{DeserializeSeed, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use crate::codec::truncate;
use crate::request::{is_token_byte, RequestParts};

/// Longest account kept (longer ones are cut before hashing; the control plane refuses
/// longer values).
pub const MAX_ACCOUNT_BYTES: usize = 512;

/// Where a login attempt's account name is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountSource {
    /// A dotted path into a JSON body.
    Json(Vec<String>),
    /// A field of an `application/x-www-form-urlencoded` body.
    Form(String),
    /// A request header.
    Header(String),
}

/// Why no account can be read from a login attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccountError {
    /// The body is larger than the lockout reads (`maxBodyBytes`).
    BodyTooLarge,
    /// The content type is absent, repeated, not the source's, or not UTF-8.
    ContentType { expected: &'static str },
    /// The body does not parse as its content type says.
    Malformed,
    /// The field or header is absent, empty or not a string.
    Missing,
    /// The field or header is given more than once (or a JSON object repeats a key).
    Ambiguous,
}

impl AccountError {
    /// Stable reason code (replies, metrics).
    pub fn code(&self) -> &'static str {
        match self {
            AccountError::BodyTooLarge => "login_body_too_large",
            AccountError::ContentType { .. } => "login_content_type",
            AccountError::Malformed => "login_body_malformed",
            AccountError::Missing => "account_missing",
            AccountError::Ambiguous => "account_ambiguous",
        }
    }

    /// HTTP status of the refusal: 413, 415 or 400.
    pub fn status(&self) -> u16 {
        match self {
            AccountError::BodyTooLarge => 413,
            AccountError::ContentType { .. } => 415,
            AccountError::Malformed | AccountError::Missing | AccountError::Ambiguous => 400,
        }
    }

    /// What the client is told.
    pub fn description(&self) -> String {
        match self {
            AccountError::BodyTooLarge => {
                "the login request body is larger than this route reads".to_string()
            }
            AccountError::ContentType { expected } => {
                format!("a login request on this route must be {expected} (UTF-8)")
            }
            AccountError::Malformed => "the login request body does not parse".to_string(),
            AccountError::Missing => "the login request names no account".to_string(),
            AccountError::Ambiguous => "the login request names its account more than once".to_string(),
        }
    }
}

const JSON_TYPE: &str = "application/json";
const FORM_TYPE: &str = "application/x-www-form-urlencoded";

impl AccountSource {
    /// `json:FIELD` (dotted path), `form:FIELD` or `header:NAME`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (kind, arg) = s
            .split_once(':')
            .ok_or_else(|| format!("`{s}`: expected `json:FIELD`, `form:FIELD` or `header:NAME`"))?;
        if arg.is_empty() || arg.len() > 128 {
            return Err(format!("`{kind}:` needs a name of 1-128 characters"));
        }
        match kind {
            "json" => {
                let path: Vec<String> = arg.split('.').map(str::to_string).collect();
                if path.iter().any(String::is_empty) {
                    return Err(format!("`{arg}` is not a dotted field path"));
                }
                Ok(AccountSource::Json(path))
            }
            "form" => Ok(AccountSource::Form(arg.to_string())),
            "header" => {
                let name = arg.to_ascii_lowercase();
                if name.starts_with(':') || !name.bytes().all(is_token_byte) {
                    return Err(format!("`{name}` is not a header name"));
                }
                Ok(AccountSource::Header(name))
            }
            _ => Err(format!("unknown account source `{kind}`; use json, form or header")),
        }
    }

    /// Whether the request body must be read to find the account.
    pub fn needs_body(&self) -> bool {
        !matches!(self, AccountSource::Header(_))
    }

    /// The one account a request names (headers, and the body when
    /// [`Self::needs_body`]), trimmed and cut to [`MAX_ACCOUNT_BYTES`].
    pub fn extract(&self, request: &RequestParts, body: &[u8]) -> Result<String, AccountError> {
        let raw = match self {
            AccountSource::Header(name) => single(request.header_values(name))?.to_string(),
            AccountSource::Json(path) => {
                check_content_type(request, JSON_TYPE)?;
                json_field(body, path)?
            }
            AccountSource::Form(field) => {
                check_content_type(request, FORM_TYPE)?;
                form_field(body, field)?
            }
        };
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(AccountError::Missing);
        }
        // Trimmed again after the cut, which may end inside whitespace: the control plane
        // trims what it receives, and both sides must read the same account.
        Ok(truncate(trimmed, MAX_ACCOUNT_BYTES).trim_end().to_string())
    }
}

/// The only item, or why there is not exactly one.
fn single<T>(mut items: impl Iterator<Item = T>) -> Result<T, AccountError> {
    let first = items.next().ok_or(AccountError::Missing)?;
    if items.next().is_some() {
        return Err(AccountError::Ambiguous);
    }
    Ok(first)
}

/// Accepts exactly one `content-type` whose media type is `expected` (for JSON also any
/// `application/*+json`) and whose `charset`, if given, is UTF-8.
fn check_content_type(request: &RequestParts, expected: &'static str) -> Result<(), AccountError> {
    let wrong = AccountError::ContentType { expected };
    let value = single(request.header_values("content-type")).map_err(|_| wrong)?;
    let mut parts = value.split(';');
    let media = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
    let media_ok = media == expected
        || (expected == JSON_TYPE && media.starts_with("application/") && media.ends_with("+json"));
    let charset_ok = parts.all(|param| match param.split_once('=') {
        Some((name, v)) if name.trim().eq_ignore_ascii_case("charset") => {
            v.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
        }
        _ => true,
    });
    if media_ok && charset_ok {
        Ok(())
    } else {
        Err(wrong)
    }
}

fn json_field(body: &[u8], path: &[String]) -> Result<String, AccountError> {
    let duplicate = Cell::new(false);
    let mut de = serde_json::Deserializer::from_slice(body);
    let doc =
        UniqueKeys { duplicate: &duplicate }.deserialize(&mut de).and_then(|doc| de.end().map(|()| doc));
    let doc = match doc {
        Ok(doc) => doc,
        Err(_) if duplicate.get() => return Err(AccountError::Ambiguous),
        Err(_) => return Err(AccountError::Malformed),
    };
    let mut v = &doc;
    for part in path {
        v = v.as_object().and_then(|o| o.get(part)).ok_or(AccountError::Missing)?;
    }
    v.as_str().map(str::to_string).ok_or(AccountError::Missing)
}

/// Builds a JSON value like `serde_json::Value` does, but fails on the first object that
/// repeats a key (and says so through `duplicate`).
#[derive(Clone, Copy)]
struct UniqueKeys<'a> {
    duplicate: &'a Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for UniqueKeys<'_> {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for UniqueKeys<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.contains_key(&key) {
                self.duplicate.set(true);
                return Err(A::Error::custom("an object repeats a key"));
            }
            let value = map.next_value_seed(self)?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

fn form_field(body: &[u8], field: &str) -> Result<String, AccountError> {
    let value = single(form_urlencoded::parse(body).filter(|(name, _)| name == field).map(|(_, v)| v))?;
    // `form_urlencoded` decodes invalid UTF-8 to U+FFFD: two different byte strings
    // would then count as one account the upstream may see as two.
    if value.contains(char::REPLACEMENT_CHARACTER) {
        return Err(AccountError::Malformed);
    }
    Ok(value.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn req(headers: &[(&str, &str)]) -> RequestParts {
        RequestParts::post("/login", headers)
    }

    fn json_req() -> RequestParts {
        req(&[("content-type", "application/json")])
    }

    fn form_req() -> RequestParts {
        req(&[("content-type", "application/x-www-form-urlencoded")])
    }

    #[test]
    fn accounts_come_from_json_form_or_header() {
        let json = AccountSource::parse("json:credentials.username").unwrap();
        assert_eq!(
            json.extract(&json_req(), br#"{"credentials":{"username":" Alice "}}"#),
            Ok("Alice".into())
        );
        let form = AccountSource::parse("form:user").unwrap();
        assert_eq!(form.extract(&form_req(), b"a=1&user=al%40x.io+z&b=2"), Ok("al@x.io z".into()));
        let header = AccountSource::parse("header:X-User").unwrap();
        assert!(!header.needs_body());
        assert_eq!(header.extract(&req(&[("x-user", " Bob ")]), b""), Ok("Bob".into()));
        assert!(AccountSource::parse("cookie:x").is_err());
        assert!(AccountSource::parse("json:a..b").is_err());
        assert!(AccountSource::parse("header:a b").is_err());
    }

    #[test]
    fn a_json_source_reads_only_json_bodies() {
        let json = AccountSource::parse("json:username").unwrap();
        let body = br#"{"username":"bob"}"#;
        let expected = AccountError::ContentType { expected: "application/json" };
        for ct in [
            "application/json",
            "Application/JSON; charset=UTF-8",
            "application/vnd.api+json",
            "application/json; charset=\"utf-8\"",
        ] {
            assert_eq!(json.extract(&req(&[("content-type", ct)]), body), Ok("bob".into()), "{ct}");
        }
        for ct in [
            "application/x-www-form-urlencoded",
            "text/plain",
            "application/json; charset=utf-16",
            "application/jsonx",
            "",
        ] {
            assert_eq!(json.extract(&req(&[("content-type", ct)]), body), Err(expected), "{ct:?}");
        }
        assert_eq!(json.extract(&req(&[]), body), Err(expected), "no content type");
        let twice = req(&[("content-type", "application/json"), ("content-type", "text/plain")]);
        assert_eq!(json.extract(&twice, body), Err(expected), "two content types");
        assert_eq!(expected.status(), 415);
    }

    #[test]
    fn a_form_source_reads_only_form_bodies() {
        let form = AccountSource::parse("form:username").unwrap();
        let expected = AccountError::ContentType { expected: "application/x-www-form-urlencoded" };
        assert_eq!(form.extract(&json_req(), br#"{"username":"bob"}"#), Err(expected));
        // A JSON/form polyglot sent as JSON is not read as a form.
        assert_eq!(form.extract(&json_req(), br#"{"a":"&username=bob"}"#), Err(expected));
        assert_eq!(form.extract(&form_req(), b"username=bob"), Ok("bob".into()));
    }

    #[test]
    fn json_the_upstream_may_read_differently_is_refused() {
        let json = AccountSource::parse("json:username").unwrap();
        let r = json_req();
        let malformed: &[&[u8]] = &[
            br#"{"username":"bob","n":NaN}"#,
            br#"{"username":"bob"} trailing"#,
            br#"{"username":"bob"}&username=alice"#,
            b"\xef\xbb\xbf{\"username\":\"bob\"}",
            // UTF-16LE of {"username":"bob"}.
            b"{\0\"\0u\0s\0e\0r\0n\0a\0m\0e\0\"\0:\0\"\0b\0o\0b\0\"\0}\0",
            b"{\"username\":\"b\xffob\"}",
            b"not json",
            b"",
        ];
        for body in malformed {
            assert_eq!(
                json.extract(&r, body),
                Err(AccountError::Malformed),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
        assert_eq!(
            json.extract(&r, br#"{"username":"alice","username":"bob"}"#),
            Err(AccountError::Ambiguous)
        );
        assert_eq!(
            json.extract(&r, br#"{"username":"bob","x":{"k":1,"k":2}}"#),
            Err(AccountError::Ambiguous),
            "a repeated key anywhere"
        );
        for missing in [
            &br#"{"user":"bob"}"#[..],
            br#"{"username":""}"#,
            br#"{"username":"  "}"#,
            br#"{"username":7}"#,
            br#"{"username":{"$ne":null}}"#,
            br#"["username"]"#,
        ] {
            assert_eq!(
                json.extract(&r, missing),
                Err(AccountError::Missing),
                "{:?}",
                String::from_utf8_lossy(missing)
            );
        }
        let nested = AccountSource::parse("json:a.b").unwrap();
        assert_eq!(nested.extract(&r, br#"{"a":["b"]}"#), Err(AccountError::Missing));
        assert_eq!(
            nested.extract(&r, br#"{"a":{"b":"x\u0079"}}"#),
            Ok("xy".into()),
            "escapes decode as the upstream decodes them"
        );
    }

    #[test]
    fn form_parsing_skips_bad_pairs_and_refuses_repeats() {
        let form = AccountSource::parse("form:username").unwrap();
        let r = form_req();
        assert_eq!(
            form.extract(&r, b"%zz=&username=bob"),
            Ok("bob".into()),
            "a bad pair does not hide the field"
        );
        assert_eq!(form.extract(&r, b"=x&&username=bob&%"), Ok("bob".into()));
        assert_eq!(form.extract(&r, b"user%6Eame=bob"), Ok("bob".into()), "names are decoded");
        assert_eq!(form.extract(&r, b"username=%zz"), Ok("%zz".into()), "invalid escapes stay literal");
        assert_eq!(form.extract(&r, b"username=alice&username=bob"), Err(AccountError::Ambiguous));
        assert_eq!(form.extract(&r, b"username=alice&user%6Eame=bob"), Err(AccountError::Ambiguous));
        assert_eq!(form.extract(&r, b"username=b%FFob"), Err(AccountError::Malformed));
        assert_eq!(form.extract(&r, b"user=bob"), Err(AccountError::Missing));
        assert_eq!(form.extract(&r, b"username="), Err(AccountError::Missing));
    }

    #[test]
    fn a_header_source_must_be_given_once() {
        let header = AccountSource::parse("header:x-user").unwrap();
        assert_eq!(header.extract(&req(&[]), b""), Err(AccountError::Missing));
        assert_eq!(
            header.extract(&req(&[("x-user", "a"), ("X-User", "b")]), b""),
            Err(AccountError::Ambiguous)
        );
        assert_eq!(header.extract(&req(&[("x-user", " ")]), b""), Err(AccountError::Missing));
    }

    #[test]
    fn long_accounts_are_cut_on_a_character_boundary() {
        let json = AccountSource::parse("json:u").unwrap();
        let body = format!(r#"{{"u":"{}"}}"#, "é".repeat(400));
        let account = json.extract(&json_req(), body.as_bytes()).unwrap();
        assert_eq!(account.len(), MAX_ACCOUNT_BYTES);
    }

    #[test]
    fn an_account_cut_inside_whitespace_keeps_none_at_its_end() {
        // Found by the account_extract fuzz target: cut at MAX_ACCOUNT_BYTES right after
        // inner spaces, the account ended in whitespace the control plane trims away.
        let padded = format!("alice{}x", " ".repeat(MAX_ACCOUNT_BYTES));
        let header = AccountSource::parse("header:x-user").unwrap();
        assert_eq!(header.extract(&req(&[("x-user", &padded)]), b""), Ok("alice".into()));
        let json = AccountSource::parse("json:u").unwrap();
        let body = format!(r#"{{"u":"alice{}\r\tx"}}"#, " ".repeat(MAX_ACCOUNT_BYTES));
        assert_eq!(json.extract(&json_req(), body.as_bytes()), Ok("alice".into()));
    }

    #[test]
    fn refusals_have_stable_codes_and_statuses() {
        let all = [
            AccountError::BodyTooLarge,
            AccountError::ContentType { expected: "application/json" },
            AccountError::Malformed,
            AccountError::Missing,
            AccountError::Ambiguous,
        ];
        let codes: Vec<_> = all.iter().map(|e| (e.code(), e.status())).collect();
        assert_eq!(
            codes,
            [
                ("login_body_too_large", 413),
                ("login_content_type", 415),
                ("login_body_malformed", 400),
                ("account_missing", 400),
                ("account_ambiguous", 400)
            ]
        );
        assert!(all[1].description().contains("application/json"));
    }
}
