//! Descriptors: which values of a request name the counter a limit touches, and the
//! counter ([`AppliedLimit`]) one limit touches for one request.
//!
//! | Descriptor | Value |
//! |---|---|
//! | `clientIp` | the client address (see [`crate::client_addr::client_ip`]) |
//! | `claim:NAME` | a claim of the request's verified token (dotted paths allowed) |
//! | `header:NAME` | the first value of a request header |
//! | `rule` | the name of the rule the request matched |
//! | `method` | the request method |
//! | `path` | the path without the query string, normalised ([`crate::path`]) |
//!
//! A limit applies to a request only when every one of its descriptors has a value: a
//! `claim:sub` limit does not count unauthenticated requests. A limit without
//! descriptors is one counter for every request it applies to.

use serde_json::Value;

use super::gcra::{Gcra, Unit};
use crate::codec::truncate;
use crate::jwt::VerifiedToken;
use crate::request::{is_token_byte, RequestParts};

/// Longest value a descriptor contributes (longer values are cut before hashing, so
/// requests that differ only past this many bytes share a counter).
pub const MAX_DESCRIPTOR_VALUE: usize = 256;

/// One descriptor, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Descriptor {
    ClientIp,
    Claim(String),
    Header(String),
    Rule,
    Method,
    Path,
}

impl Descriptor {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (kind, arg) = match s.split_once(':') {
            Some((k, a)) => (k, Some(a)),
            None => (s, None),
        };
        let need_arg = |what: &str| -> Result<String, String> {
            match arg {
                Some(a) if !a.is_empty() && a.len() <= 128 => Ok(a.to_string()),
                _ => Err(format!("`{kind}:` needs a {what} (1-128 characters)")),
            }
        };
        let no_arg = |d: Descriptor| -> Result<Descriptor, String> {
            match arg {
                None => Ok(d),
                Some(_) => Err(format!("`{kind}` takes no argument")),
            }
        };
        match kind {
            "clientIp" => no_arg(Descriptor::ClientIp),
            "rule" => no_arg(Descriptor::Rule),
            "method" => no_arg(Descriptor::Method),
            "path" => no_arg(Descriptor::Path),
            "claim" => need_arg("claim name").map(Descriptor::Claim),
            "header" => {
                let name = need_arg("header name")?.to_ascii_lowercase();
                if name.starts_with(':') || !name.bytes().all(is_token_byte) {
                    return Err(format!("`{name}` is not a header name"));
                }
                Ok(Descriptor::Header(name))
            }
            _ => Err(format!(
                "unknown descriptor `{s}`; use clientIp, claim:NAME, header:NAME, rule, method or path"
            )),
        }
    }

    /// This descriptor's value for a request, if it has one.
    pub fn value(&self, ctx: &LimitContext<'_>) -> Option<String> {
        let v = match self {
            Descriptor::ClientIp => ctx.client_ip.map(str::to_string),
            Descriptor::Claim(name) => ctx.tokens.iter().find_map(|t| claim_string(t.claim(name)?)),
            Descriptor::Header(name) => ctx.request.header_values(name).next().map(str::to_string),
            Descriptor::Rule => ctx.rule.map(str::to_string),
            Descriptor::Method => Some(ctx.request.method.clone()),
            Descriptor::Path => Some(ctx.request.route_path.clone()),
        }?;
        Some(truncate(&v, MAX_DESCRIPTOR_VALUE).to_owned())
    }
}

fn claim_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// What a request offers to descriptors.
pub struct LimitContext<'a> {
    pub request: &'a RequestParts,
    /// The matched rule's name (`None`: no rule matched).
    pub rule: Option<&'a str>,
    /// Verified tokens of the request, in the rule's provider order.
    pub tokens: &'a [&'a VerifiedToken],
    pub client_ip: Option<&'a str>,
}

/// One limit as it applies to one request: which counter, and its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedLimit {
    /// Index into [`Guards::rate_limits`].
    pub index: usize,
    pub key: String,
    pub limit: u64,
    pub unit: Unit,
}

impl AppliedLimit {
    pub fn gcra(&self) -> Gcra {
        Gcra::new(self.limit, self.unit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ConfigError;
    use crate::ratelimit::config::{compile_limit, RateLimit, RateLimitConfig};
    use crate::ratelimit::wire::counter_key;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn req(headers: &[(&str, &str)]) -> RequestParts {
        RequestParts::post("/login?x=1", headers)
    }

    fn limit_config(json: &str) -> Result<RateLimit, ConfigError> {
        let c: RateLimitConfig = serde_json::from_str(json).unwrap();
        compile_limit(c, &["api".to_string(), "login".to_string()])
    }

    #[test]
    fn descriptors_parse_and_reject_typos() {
        assert_eq!(Descriptor::parse("claim:sub"), Ok(Descriptor::Claim("sub".into())));
        assert_eq!(Descriptor::parse("header:X-Tenant"), Ok(Descriptor::Header("x-tenant".into())));
        assert_eq!(Descriptor::parse("clientIp"), Ok(Descriptor::ClientIp));
        assert!(Descriptor::parse("claim:").is_err());
        assert!(Descriptor::parse("clientIp:x").is_err());
        assert!(Descriptor::parse("header:a b").is_err());
        assert!(Descriptor::parse("ip").unwrap_err().contains("unknown descriptor"));
    }

    #[test]
    fn a_limit_applies_only_when_every_descriptor_has_a_value() {
        let l = limit_config(
            r#"{"name":"per-sub","limit":10,"unit":"minute","descriptors":["claim:sub","method"]}"#,
        )
        .unwrap();
        let r = req(&[]);
        let none = LimitContext { request: &r, rule: Some("api"), tokens: &[], client_ip: Some("1.2.3.4") };
        assert_eq!(l.apply(0, Some(0), &none), None);
        let token = VerifiedToken {
            alg: crate::jwt::Algorithm::HS256,
            kid: None,
            claims: serde_json::from_str(r#"{"sub":"alice","tenant":"acme","n":7}"#).unwrap(),
            expires_at: None,
            subject: Some("alice".into()),
            payload_b64: String::new(),
        };
        let tokens = [&token];
        let ctx = LimitContext { request: &r, rule: Some("api"), tokens: &tokens, client_ip: None };
        let applied = l.apply(3, Some(0), &ctx).unwrap();
        assert_eq!(applied.index, 3);
        assert_eq!(applied.key, counter_key("per-sub", 10, Unit::Minute, &["alice", "POST"]));
    }

    #[test]
    fn rules_restrict_where_a_limit_applies() {
        let l = limit_config(r#"{"name":"l","limit":5,"unit":"second","rules":["login"]}"#).unwrap();
        let r = req(&[]);
        let ctx = LimitContext { request: &r, rule: None, tokens: &[], client_ip: None };
        assert!(l.apply(0, Some(1), &ctx).is_some());
        assert!(l.apply(0, Some(0), &ctx).is_none());
        assert!(l.apply(0, None, &ctx).is_none());
        let err = limit_config(r#"{"name":"l","limit":5,"unit":"second","rules":["nope"]}"#).unwrap_err();
        assert_eq!(err.field, "rules[0]");
    }

    #[test]
    fn an_override_changes_the_limit_and_the_counter() {
        let l = limit_config(
            r#"{"name":"t","limit":10,"unit":"minute","descriptors":["header:x-tenant"],
                "overrides":[{"when":"header:x-tenant","equals":"acme","limit":100}]}"#,
        )
        .unwrap();
        let acme = req(&[("x-tenant", "acme")]);
        let other = req(&[("x-tenant", "globex")]);
        let a = l
            .apply(0, None, &LimitContext { request: &acme, rule: None, tokens: &[], client_ip: None })
            .unwrap();
        let o = l
            .apply(0, None, &LimitContext { request: &other, rule: None, tokens: &[], client_ip: None })
            .unwrap();
        assert_eq!((a.limit, o.limit), (100, 10));
        assert_eq!(a.unit, Unit::Minute);
        assert_ne!(a.key, counter_key("t", 10, Unit::Minute, &["acme"]));
    }

    #[test]
    fn limit_validation_names_the_field() {
        assert_eq!(limit_config(r#"{"name":"l","limit":0,"unit":"second"}"#).unwrap_err().field, "limit");
        assert_eq!(
            limit_config(r#"{"name":"l","limit":1,"unit":"second","descriptors":["bogus"]}"#)
                .unwrap_err()
                .field,
            "descriptors[0]"
        );
        assert_eq!(
            limit_config(r#"{"name":"l","limit":1,"unit":"second","leaseTtlMs":5}"#).unwrap_err().field,
            "leaseTtlMs"
        );
        assert_eq!(limit_config(r#"{"name":"a b","limit":1,"unit":"second"}"#).unwrap_err().field, "name");
    }
}
