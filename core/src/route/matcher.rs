//! A `match` section (hosts, one of path / path prefix / path regex, methods), as written
//! and compiled. Requests are matched on their normalised path ([`crate::path`]), so a
//! configured path must be in that form too.

use serde::Deserialize;

use crate::error::ConfigError;
use crate::path::{normalize, PathOptions};
use crate::request::RequestParts;

#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MatchConfig {
    /// Exact host names, or `*.example.com` for any subdomain. Empty: any host.
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub path_prefix: Option<String>,
    #[serde(default)]
    pub path_regex: Option<String>,
    /// Upper-case method names. Empty: any method.
    #[serde(default)]
    pub methods: Vec<String>,
}

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

pub(crate) fn compile_match(config: MatchConfig) -> Result<Matcher, ConfigError> {
    let set = [config.path.is_some(), config.path_prefix.is_some(), config.path_regex.is_some()]
        .iter()
        .filter(|b| **b)
        .count();
    if set > 1 {
        return Err(ConfigError::new("path", "use at most one of `path`, `pathPrefix` and `pathRegex`"));
    }
    let path = if let Some(p) = config.path {
        PathMatcher::Exact(normal_path(p, "path")?)
    } else if let Some(p) = config.path_prefix {
        PathMatcher::Prefix(normal_path(p, "pathPrefix")?)
    } else if let Some(r) = config.path_regex {
        if r.len() > 1024 {
            return Err(ConfigError::new("pathRegex", "must be at most 1024 characters"));
        }
        let re = regex_lite::Regex::new(&r)
            .map_err(|e| ConfigError::new("pathRegex", format!("not a valid regular expression: {e}")))?;
        PathMatcher::Regex(re)
    } else {
        PathMatcher::Any
    };

    let mut hosts = Vec::with_capacity(config.hosts.len());
    for (i, h) in config.hosts.iter().enumerate() {
        let lower = h.to_ascii_lowercase();
        let matcher = if let Some(suffix) = lower.strip_prefix("*.") {
            HostMatcher::Subdomain(format!(".{suffix}"))
        } else {
            HostMatcher::Exact(lower.clone())
        };
        if lower.is_empty()
            || lower.contains('/')
            || lower.contains(' ')
            || lower.chars().skip(1).any(|c| c == '*')
        {
            return Err(ConfigError::new(format!("hosts[{i}]"), "expected a host name or `*.domain`"));
        }
        hosts.push(matcher);
    }

    let mut methods = Vec::with_capacity(config.methods.len());
    for (i, m) in config.methods.iter().enumerate() {
        if m.is_empty() || !m.chars().all(|c| c.is_ascii_uppercase()) {
            return Err(ConfigError::new(format!("methods[{i}]"), "methods are upper-case, e.g. \"GET\""));
        }
        methods.push(m.clone());
    }

    Ok(Matcher { hosts, path, methods })
}

/// A configured path: requests are compared in normal form, so it must be in it too.
fn normal_path(p: String, field: &str) -> Result<String, ConfigError> {
    if !p.starts_with('/') {
        return Err(ConfigError::new(field, "must start with '/'"));
    }
    match normalize(&p, &PathOptions::default()) {
        Ok(normal) if normal == p => Ok(p),
        Ok(normal) => Err(ConfigError::new(
            field,
            format!("requests are matched in normal form; write `{normal}` (no dot segments, `//`, `;` parameters or needless escapes)"),
        )),
        Err(e) => Err(ConfigError::new(field, format!("not a usable path: {}", e.description()))),
    }
}
