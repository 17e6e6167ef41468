//! The path normaliser (`core/src/path.rs`) on any `:path`, through `RequestParts` as
//! the filter calls it. Beyond "no panic": every accepted route is canonical (starts
//! with `/`, no `//`, no dot segment, no `;`, no encoded `/` or `\`, only upper-case
//! escapes of two hex digits, ASCII), a fixed point under every option, and the strict
//! options only ever refuse what the default accepts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_core::path::{normalize, NotNormalized, Parameters, PathOptions};
use portcullis_core::RequestParts;

const DEFAULT: PathOptions =
    PathOptions { not_normalized: NotNormalized::Normalize, parameters: Parameters::Strip };
const ALL: [PathOptions; 4] = [
    DEFAULT,
    PathOptions { not_normalized: NotNormalized::Reject, parameters: Parameters::Strip },
    PathOptions { not_normalized: NotNormalized::Normalize, parameters: Parameters::Reject },
    PathOptions { not_normalized: NotNormalized::Reject, parameters: Parameters::Reject },
];

fn check_canonical(raw: &str, route: &str) {
    if raw.is_empty() || raw == "*" {
        assert_eq!(route, raw);
        return;
    }
    assert!(route.starts_with('/'), "{raw:?} -> {route:?}");
    assert!(route.is_ascii(), "{raw:?} -> {route:?}");
    for bad in ["//", ";", "\\", "#", "?"] {
        assert!(!route.contains(bad), "{raw:?} -> {route:?} contains {bad:?}");
    }
    assert!(!route.bytes().any(|b| b.is_ascii_control()), "{raw:?} -> {route:?}");
    for segment in route.split('/') {
        assert!(segment != "." && segment != "..", "{raw:?} -> {route:?} has a dot segment");
    }
    let bytes = route.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'%' {
            let hex = bytes.get(i + 1..i + 3).unwrap_or_default();
            assert!(
                hex.len() == 2 && hex.iter().all(|h| h.is_ascii_digit() || (b'A'..=b'F').contains(h)),
                "{raw:?} -> {route:?}: escape not in canonical form"
            );
            assert!(!matches!(hex, b"2F" | b"5C" | b"00"), "{raw:?} -> {route:?}: ambiguous escape");
        }
    }
    // A fixed point, which even the strictest options accept unchanged.
    for options in &ALL {
        assert_eq!(normalize(route, options).as_deref(), Ok(route), "{raw:?} -> {route:?} under {options:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    // Envoy hands the filter bytes; the filter decodes them lossily.
    let raw = String::from_utf8_lossy(data);
    let default = normalize(&raw, &DEFAULT);
    if let Ok(route) = &default {
        check_canonical(&raw, route);
    }
    for options in &ALL[1..] {
        let strict = normalize(&raw, options);
        if let Ok(route) = &strict {
            assert_eq!(Ok(route), default.as_ref(), "{raw:?}: {options:?} accepted what the default did not");
            if options.not_normalized == NotNormalized::Reject {
                assert_eq!(route, &raw, "{raw:?}: `reject` accepted a path not in normal form");
            }
        }
    }

    // Through the request, with a query string: the route never sees the query.
    let with_query = format!("{raw}?{raw}");
    match RequestParts::new("GET", "h", with_query.as_str(), Vec::new(), &DEFAULT) {
        Ok(parts) => {
            assert_eq!(Ok(&parts.route_path), normalize(parts.path_only(), &DEFAULT).as_ref());
            assert!(parts.query().is_some());
        }
        Err(rejection) => assert!(rejection.code().starts_with("path_")),
    }
});
