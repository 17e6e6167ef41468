//! Rules: which requests need which credentials. The first rule whose match fits the
//! request decides; see [`crate::config::NoMatchAction`] for requests no rule matches.

use crate::config::{Requirement, RevocationCheck, StaleAction};
use crate::request::RequestParts;

#[derive(Debug, Clone)]
pub enum PathMatcher {
    Any,
    Exact(String),
    Prefix(String),
    Regex(regex_lite::Regex),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatcher {
    Exact(String),
    /// `.example.com`: matches `a.example.com`, not `example.com`.
    Subdomain(String),
}

#[derive(Debug, Clone)]
pub struct Matcher {
    pub hosts: Vec<HostMatcher>,
    pub path: PathMatcher,
    pub methods: Vec<String>,
}

impl Matcher {
    pub fn matches(&self, req: &RequestParts) -> bool {
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m == &req.method) {
            return false;
        }
        if !self.hosts.is_empty() {
            let host = req.host().to_ascii_lowercase();
            let host_ok = self.hosts.iter().any(|h| match h {
                HostMatcher::Exact(e) => &host == e,
                HostMatcher::Subdomain(suffix) => {
                    host.len() > suffix.len() && host.ends_with(suffix.as_str())
                }
            });
            if !host_ok {
                return false;
            }
        }
        // Never the raw `:path`: see `crate::path`.
        let path = req.route_path.as_str();
        match &self.path {
            PathMatcher::Any => true,
            // `/login/` too: many frameworks route it to the `/login` handler.
            PathMatcher::Exact(p) => path == p || path.strip_suffix('/') == Some(p.as_str()),
            PathMatcher::Prefix(p) => path.starts_with(p.as_str()),
            PathMatcher::Regex(re) => re.is_match(path),
        }
    }
}

/// A role claim and the roles of which the token must carry at least one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolesRequirement {
    pub claim: String,
    pub any_of: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub matcher: Matcher,
    pub requirement: Requirement,
    /// All of these scopes must be granted by one verified token.
    pub scopes: Vec<String>,
    pub roles: Option<RolesRequirement>,
    /// Let CORS preflight requests (`OPTIONS` with `Origin` and
    /// `Access-Control-Request-Method`) through without credentials.
    pub allow_cors_preflight: bool,
    /// Evaluate and count, but never block.
    pub shadow: bool,
    /// What to do when the revocation replica is too old (or, for strict checks, when
    /// the control plane does not answer in time).
    pub on_stale: StaleAction,
    pub revocation_check: RevocationCheck,
}

/// True for a CORS preflight request, which browsers send without credentials.
pub fn is_cors_preflight(req: &RequestParts) -> bool {
    req.method == "OPTIONS"
        && req.header_values("origin").next().is_some()
        && req.header_values("access-control-request-method").next().is_some()
}
