//! Finding tokens in a request: headers (with an optional scheme prefix such as
//! `Bearer `), cookies (RFC 6265 `cookie` header syntax) and query parameters
//! (percent-decoded), and removing them again when a provider must not forward them.

// Invalid escapes stay and invalid UTF-8 is replaced: a garbled token then simply
// fails verification.
use crate::codec::percent_decode_query as percent_decode;
use crate::request::RequestParts;

/// Where a provider looks for tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenLocation {
    /// A header (lower-case name). With a prefix, only values starting with it
    /// (compared ASCII case-insensitively, as RFC 6750 auth schemes are) carry a token.
    Header { name: String, prefix: Option<String> },
    /// A cookie, by exact (case-sensitive) name.
    Cookie(String),
    /// A query parameter, by exact name after percent-decoding.
    Query(String),
}

/// One token found in a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtractedToken {
    pub location: TokenLocation,
    pub token: String,
}

impl TokenLocation {
    /// Every token at this location, in request order.
    pub fn extract(&self, req: &RequestParts) -> Vec<String> {
        match self {
            TokenLocation::Header { name, prefix } => req
                .header_values(name)
                .filter_map(|v| strip_prefix(v, prefix.as_deref()))
                .map(str::to_owned)
                .collect(),
            TokenLocation::Cookie(name) => req
                .header_values("cookie")
                .flat_map(cookie_pairs)
                .filter(|(n, _)| n == name)
                .filter(|(_, v)| !v.is_empty())
                .map(|(_, v)| v.to_owned())
                .collect(),
            TokenLocation::Query(name) => req
                .query()
                .map(|q| {
                    query_pairs(q)
                        .filter(|(n, _)| n == name)
                        .map(|(_, v)| v)
                        .filter(|v| !v.is_empty())
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// Removes the tokens at this location from `req` (for `forwardToken: false`):
    /// header values carrying a token, the named cookie(s), the named query parameter(s).
    /// Everything else is left as it was.
    pub fn remove_from(&self, req: &mut RequestParts) {
        match self {
            TokenLocation::Header { name, prefix } => req.headers.retain(|(n, v)| {
                !(n.eq_ignore_ascii_case(name) && strip_prefix(v, prefix.as_deref()).is_some())
            }),
            TokenLocation::Cookie(cookie) => {
                for (n, v) in req.headers.iter_mut() {
                    if n.eq_ignore_ascii_case("cookie") {
                        let kept: Vec<&str> = v
                            .split(';')
                            .filter(|pair| {
                                let pair = pair.trim_matches(|c| c == ' ' || c == '\t');
                                let pair_name = pair.split('=').next().unwrap_or_default();
                                !(pair.contains('=') && pair_name.trim() == cookie)
                            })
                            .map(|p| p.trim_matches(|c| c == ' ' || c == '\t'))
                            .filter(|p| !p.is_empty())
                            .collect();
                        *v = kept.join("; ");
                    }
                }
                req.headers.retain(|(n, v)| !(n.eq_ignore_ascii_case("cookie") && v.is_empty()));
            }
            TokenLocation::Query(param) => {
                let Some(q_start) = req.path.find('?') else {
                    return;
                };
                let (path, query) = req.path.split_at(q_start);
                let query = query.get(1..).unwrap_or_default();
                let kept: Vec<&str> = query
                    .split('&')
                    .filter(|pair| {
                        let raw_name = pair.split('=').next().unwrap_or_default();
                        !pair.is_empty() && percent_decode(raw_name) != *param
                    })
                    .collect();
                req.path =
                    if kept.is_empty() { path.to_owned() } else { format!("{path}?{}", kept.join("&")) };
            }
        }
    }
}

/// The token in a header value, if the value has the expected prefix and a non-empty
/// token after it. Surrounding whitespace is ignored (RFC 6750 allows `1*SP`).
fn strip_prefix<'a>(value: &'a str, prefix: Option<&str>) -> Option<&'a str> {
    let rest = match prefix {
        None => value,
        Some(prefix) => {
            let head = value.get(..prefix.len())?;
            if !head.eq_ignore_ascii_case(prefix) {
                return None;
            }
            value.get(prefix.len()..)?
        }
    };
    let token = rest.trim_matches(|c| c == ' ' || c == '\t');
    (!token.is_empty()).then_some(token)
}

/// `name=value` pairs of a `cookie` header (RFC 6265 §4.2.1, tolerant of extra spaces);
/// a value in double quotes is unquoted.
fn cookie_pairs(header: &str) -> impl Iterator<Item = (&str, &str)> {
    header.split(';').filter_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        let name = name.trim_matches(|c| c == ' ' || c == '\t');
        let value = value.trim_matches(|c| c == ' ' || c == '\t');
        let value = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value);
        (!name.is_empty()).then_some((name, value))
    })
}

/// Decoded `name=value` pairs of a query string (`+` is a space, as in form encoding).
fn query_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(name), percent_decode(value))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn req(path: &str, headers: &[(&str, &str)]) -> RequestParts {
        let headers = headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
        RequestParts::new("GET", "api.example.com", path, headers, &Default::default()).unwrap()
    }

    fn bearer() -> TokenLocation {
        TokenLocation::Header { name: "authorization".into(), prefix: Some("Bearer ".into()) }
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        let r = req(
            "/",
            &[
                ("authorization", "bearer abc"),
                ("authorization", "BEARER  def "),
                ("authorization", "Bearer ghi"),
            ],
        );
        assert_eq!(bearer().extract(&r), vec!["abc", "def", "ghi"]);
    }

    #[test]
    fn other_authorization_schemes_are_not_tokens() {
        let r = req(
            "/",
            &[
                ("authorization", "Basic dXNlcjpwYXNz"),
                ("authorization", "Bearer"),
                ("authorization", "Bearer   "),
            ],
        );
        assert!(bearer().extract(&r).is_empty());
    }

    #[test]
    fn header_without_prefix_takes_whole_value() {
        let loc = TokenLocation::Header { name: "x-token".into(), prefix: None };
        let r = req("/", &[("X-Token", " abc ")]);
        assert_eq!(loc.extract(&r), vec!["abc"]);
    }

    #[test]
    fn cookies_are_parsed_per_rfc6265() {
        let loc = TokenLocation::Cookie("session".into());
        let r = req(
            "/",
            &[("cookie", "a=1; session=tok1;other=x"), ("cookie", "Session=no; session=\"tok2\"; session=")],
        );
        assert_eq!(loc.extract(&r), vec!["tok1", "tok2"]);
    }

    #[test]
    fn query_parameters_are_percent_decoded() {
        let loc = TokenLocation::Query("access_token".into());
        let r = req("/x?a=1&access%5Ftoken=ab%2Ecd&access_token=&access_token=e%zz", &[]);
        assert_eq!(loc.extract(&r), vec!["ab.cd", "e%zz"]);
        assert!(loc.extract(&req("/x", &[])).is_empty());
    }

    #[test]
    fn removing_tokens_keeps_everything_else() {
        let mut r = req(
            "/x?a=1&access_token=t&b=2",
            &[
                ("authorization", "Bearer t"),
                ("authorization", "Basic x"),
                ("cookie", "a=1; session=t; b=2"),
                ("cookie", "session=t"),
            ],
        );
        bearer().remove_from(&mut r);
        TokenLocation::Cookie("session".into()).remove_from(&mut r);
        TokenLocation::Query("access_token".into()).remove_from(&mut r);
        assert_eq!(r.path, "/x?a=1&b=2");
        assert_eq!(
            r.headers,
            vec![
                ("authorization".to_string(), "Basic x".to_string()),
                ("cookie".to_string(), "a=1; b=2".to_string())
            ]
        );
        let mut only = req("/x?access_token=t", &[]);
        TokenLocation::Query("access_token".into()).remove_from(&mut only);
        assert_eq!(only.path, "/x");
    }

    #[test]
    fn percent_decode_never_fails() {
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("%41%42+c"), "AB c");
        assert_eq!(percent_decode("%ff"), "\u{fffd}");
    }
}
