//! A host-independent view of an HTTP request's headers, as the filter sees them.

use crate::path::{normalize, PathOptions, PathRejection};

/// An RFC 9110 `tchar`: what header names (and other HTTP tokens) are made of.
pub fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The parts of a request the decision logic reads. Header names are lower-case
/// (HTTP/2 and Envoy normalise them), values as received.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestParts {
    pub method: String,
    pub authority: String,
    /// Path including the query string, as in the `:path` pseudo-header.
    pub path: String,
    pub headers: Vec<(String, String)>,
    /// What rules, lockout routes and `path` descriptors match: the path without its
    /// query, in the canonical form of [`crate::path::normalize`]. Set by
    /// [`RequestParts::normalize_route`]; empty (matching no path rule) before.
    pub route_path: String,
}

impl RequestParts {
    /// A request whose path is checked and normalised under `options`; `Err` for a path
    /// that stays ambiguous (the filter answers 400).
    pub fn new(
        method: impl Into<String>,
        authority: impl Into<String>,
        path: impl Into<String>,
        headers: Vec<(String, String)>,
        options: &PathOptions,
    ) -> Result<Self, PathRejection> {
        let mut parts = RequestParts {
            method: method.into(),
            authority: authority.into(),
            path: path.into(),
            headers,
            route_path: String::new(),
        };
        parts.normalize_route(options)?;
        Ok(parts)
    }

    /// Sets [`Self::route_path`] from `path`; `Err` for a path that stays ambiguous.
    pub fn normalize_route(&mut self, options: &PathOptions) -> Result<(), PathRejection> {
        self.route_path = normalize(self.path_only(), options)?;
        Ok(())
    }

    /// All values of a header (names compared case-insensitively).
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers.iter().filter(move |(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The raw path without its query string (decisions use [`Self::route_path`]).
    pub fn path_only(&self) -> &str {
        match self.path.find('?') {
            Some(i) => &self.path[..i],
            None => &self.path,
        }
    }

    /// The raw query string (without the `?`), if any.
    pub fn query(&self) -> Option<&str> {
        self.path.find('?').map(|i| &self.path[i + 1..])
    }

    /// The host without a port, and without the trailing dot of the absolute form
    /// (`api.example.com.` names the same host as `api.example.com`; a rule for one must
    /// not be escaped by writing the other).
    pub fn host(&self) -> &str {
        let a = self.authority.as_str();
        if a.starts_with('[') {
            // IPv6 literal: keep up to the closing bracket.
            return match a.find(']') {
                Some(i) => a.get(..=i).unwrap_or(a),
                None => a,
            };
        }
        let host = match a.rfind(':') {
            Some(i) => a.get(..i).unwrap_or(a),
            None => a,
        };
        host.strip_suffix('.').unwrap_or(host)
    }
}

#[cfg(test)]
impl RequestParts {
    /// A `POST` of `path` to `api.example.com` with `headers`, for tests.
    pub(crate) fn post(path: &str, headers: &[(&str, &str)]) -> Self {
        let headers = headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
        RequestParts::new("POST", "api.example.com", path, headers, &Default::default())
            .expect("a test path in normal form")
    }
}

#[cfg(test)]
mod host_tests {
    use super::RequestParts;

    fn host_of(authority: &str) -> String {
        RequestParts::new("GET", authority, "/", Vec::new(), &Default::default())
            .map(|r| r.host().to_string())
            .unwrap_or_default()
    }

    #[test]
    fn the_host_drops_its_port_and_the_trailing_dot_of_the_absolute_form() {
        assert_eq!(host_of("api.example.com"), "api.example.com");
        assert_eq!(host_of("api.example.com."), "api.example.com");
        assert_eq!(host_of("api.example.com.:8443"), "api.example.com");
        assert_eq!(host_of("[::1]:8080"), "[::1]");
        assert_eq!(host_of("127.0.0.1:80"), "127.0.0.1");
    }
}
