//! Login account extraction (`core/src/account.rs`) through `Lockout::account_of`'s
//! source, as the filter calls it on a login route: JSON bodies (strict, no repeated
//! keys), form bodies, a header, with the request's content types.
//!
//! Input: a login request as text (see `TextRequest`); every source is tried on it.
//!
//! Invariants: an account is never empty, carries no surrounding whitespace and is at
//! most `MAX_ACCOUNT_BYTES`; it is what an ordinary reader of the same bytes finds
//! (serde_json for JSON, form_urlencoded for forms, the one header value), cut at most;
//! a source that reads the body only reads it when the one content type is the source's.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use portcullis_core::account::{AccountSource, MAX_ACCOUNT_BYTES};
use portcullis_fuzz::TextRequest;
use serde_json::Value;

fn sources() -> &'static [AccountSource] {
    static SOURCES: OnceLock<Vec<AccountSource>> = OnceLock::new();
    SOURCES.get_or_init(|| {
        ["json:username", "json:credentials.user", "form:username", "form:e-mail", "header:X-User"]
            .iter()
            .filter_map(|s| AccountSource::parse(s).ok())
            .collect()
    })
}

/// `full` trimmed, cut to at most `MAX_ACCOUNT_BYTES` on a character boundary, and
/// trimmed again (a cut may end inside whitespace).
fn assert_is_cut_of(account: &str, full: &str) {
    let trimmed = full.trim();
    let mut end = trimmed.len().min(MAX_ACCOUNT_BYTES);
    while !trimmed.is_char_boundary(end) {
        end -= 1;
    }
    assert_eq!(account, trimmed[..end].trim_end(), "not the account {full:?} names");
}

fuzz_target!(|data: &[u8]| {
    let text = TextRequest::parse(data);
    let request = &text.parts;
    let body = text.body.as_slice();
    // A source written in the configuration (`:source` line), checked like the fixed ones.
    let custom = text.knob(":source").and_then(|s| AccountSource::parse(s).ok());
    for source in sources().iter().chain(custom.as_ref()) {
        check(source, request, body);
    }
});

fn check(source: &AccountSource, request: &portcullis_core::RequestParts, body: &[u8]) {
    let result = source.extract(request, body);
    if let Err(e) = &result {
        assert!(matches!(e.status(), 400 | 413 | 415));
        assert!(e.code().contains("login") || e.code().contains("account"));
        assert!(!e.description().is_empty());
    }
    let Ok(account) = result else { return };
    assert!(!account.is_empty(), "an empty account");
    assert_eq!(account.trim(), account, "whitespace around the account");
    assert!(account.len() <= MAX_ACCOUNT_BYTES);

    let content_types: Vec<&str> = request.header_values("content-type").collect();
    match source {
        AccountSource::Header(name) => {
            let values: Vec<&str> = request.header_values(name).collect();
            assert_eq!(values.len(), 1, "a header account read from {} values", values.len());
            assert_is_cut_of(&account, values[0]);
        }
        AccountSource::Json(path) => {
            assert_eq!(content_types.len(), 1, "a JSON body read without exactly one content type");
            let Ok(doc) = serde_json::from_slice::<Value>(body) else {
                panic!("an account read from a body serde_json refuses")
            };
            let mut v = &doc;
            for part in path {
                v = v.get(part).unwrap_or(&Value::Null);
            }
            let Some(s) = v.as_str() else { panic!("the account is not the string at {path:?}") };
            assert_is_cut_of(&account, s);
        }
        AccountSource::Form(field) => {
            assert_eq!(content_types.len(), 1, "a form body read without exactly one content type");
            let media = content_types[0].split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
            assert_eq!(media, "application/x-www-form-urlencoded");
            let values: Vec<String> = form_urlencoded::parse(body)
                .filter(|(n, _)| n == field)
                .map(|(_, v)| v.into_owned())
                .collect();
            assert_eq!(values.len(), 1, "a form account read from {} fields", values.len());
            assert!(!values[0].contains(char::REPLACEMENT_CHARACTER));
            assert_is_cut_of(&account, &values[0]);
        }
    }
    // Without its body, a body source has nothing to read.
    if source.needs_body() {
        assert_ne!(source.extract(request, b""), Ok(account));
    }
}
