//! A host-independent view of an HTTP request's headers, as the filter sees them.

/// The parts of a request the decision logic reads. Header names are lower-case
/// (HTTP/2 and Envoy normalise them), values as received.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestParts {
    pub method: String,
    pub authority: String,
    /// Path including the query string, as in the `:path` pseudo-header.
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl RequestParts {
    /// All values of a header (names compared case-insensitively).
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers.iter().filter(move |(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The path without its query string.
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

    /// The host without a port.
    pub fn host(&self) -> &str {
        let a = self.authority.as_str();
        if a.starts_with('[') {
            // IPv6 literal: keep up to the closing bracket.
            return match a.find(']') {
                Some(i) => &a[..=i],
                None => a,
            };
        }
        match a.rfind(':') {
            Some(i) => &a[..i],
            None => a,
        }
    }
}

#[cfg(test)]
impl RequestParts {
    /// A `POST` of `path` to `api.example.com` with `headers`, for tests.
    pub(crate) fn post(path: &str, headers: &[(&str, &str)]) -> Self {
        RequestParts {
            method: "POST".into(),
            authority: "api.example.com".into(),
            path: path.into(),
            headers: headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
        }
    }
}
