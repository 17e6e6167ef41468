//! Token extraction (`core/src/jwt/extract.rs`): header values with and without a scheme
//! prefix, the `cookie` header, the query string; and removing tokens again for
//! `forwardToken: false` (`filter/src/http.rs`, `apply_edits`). Also the request
//! accessors the filter uses (`host`, `query`, `path_only`). Input: a request as text
//! (see `TextRequest`).
//!
//! Invariants: every extracted token is non-empty (header tokens carry no surrounding
//! blanks); after `remove_from` the location yields no token; removal leaves every other
//! location's tokens, the other headers and the path before `?` as they were.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use portcullis_core::jwt::TokenLocation;
use portcullis_core::RequestParts;
use portcullis_fuzz::TextRequest;

fn locations() -> &'static [TokenLocation] {
    static LOCATIONS: OnceLock<Vec<TokenLocation>> = OnceLock::new();
    LOCATIONS.get_or_init(|| {
        let header = |name: &str, prefix: Option<&str>| TokenLocation::Header {
            name: name.to_owned(),
            prefix: prefix.map(str::to_owned),
        };
        vec![
            header("authorization", Some("Bearer ")),
            header("authorization", Some("DPoP ")),
            header("x-token", None),
            header("x-api-key", Some("Token")),
            TokenLocation::Cookie("session".to_owned()),
            TokenLocation::Cookie("__Host-id".to_owned()),
            TokenLocation::Query("access_token".to_owned()),
            TokenLocation::Query("t".to_owned()),
        ]
    })
}

/// The header a location reads, if any.
fn header_of(location: &TokenLocation) -> Option<&str> {
    match location {
        TokenLocation::Header { name, .. } => Some(name),
        TokenLocation::Cookie(_) => Some("cookie"),
        TokenLocation::Query(_) => None,
    }
}

/// Whether removing `a` may change what `b` finds: the same header, cookie or parameter.
fn same_place(a: &TokenLocation, b: &TokenLocation) -> bool {
    match (a, b) {
        (TokenLocation::Query(x), TokenLocation::Query(y)) => x == y,
        (TokenLocation::Cookie(x), TokenLocation::Cookie(y)) => x == y,
        (TokenLocation::Query(_), _) | (_, TokenLocation::Query(_)) => false,
        _ => header_of(a).zip(header_of(b)).is_some_and(|(x, y)| x.eq_ignore_ascii_case(y)),
    }
}

fuzz_target!(|data: &[u8]| {
    let request = TextRequest::parse(data).parts;
    let host = request.host();
    assert!(request.authority.starts_with(host));
    assert_eq!(request.query().is_some(), request.path.contains('?'));
    assert!(request.path.starts_with(request.path_only()));

    for location in locations() {
        for token in location.extract(&request) {
            assert!(!token.is_empty(), "{location:?} extracted an empty token");
            if let TokenLocation::Header { .. } = location {
                assert_eq!(token.trim_matches([' ', '\t']), token, "{location:?}: blanks around the token");
            }
        }

        let mut scrubbed = request.clone();
        location.remove_from(&mut scrubbed);
        assert!(location.extract(&scrubbed).is_empty(), "{location:?}: a token survived its removal");
        assert_eq!(scrubbed.path_only(), request.path_only());
        assert_eq!((&scrubbed.method, &scrubbed.authority), (&request.method, &request.authority));
        let untouched = |parts: &RequestParts| -> Vec<(String, String)> {
            parts
                .headers
                .iter()
                .filter(|(n, _)| header_of(location).is_none_or(|h| !n.eq_ignore_ascii_case(h)))
                .cloned()
                .collect()
        };
        assert_eq!(untouched(&scrubbed), untouched(&request), "{location:?}: other headers changed");
        for other in locations() {
            if !same_place(location, other) {
                assert_eq!(
                    other.extract(&scrubbed),
                    other.extract(&request),
                    "removing {location:?} changed the tokens of {other:?}"
                );
            }
        }
    }
});
