//! Configuration and request-time logic of the stateful guards: rate limits, account
//! lockout and burst reporting. The counters themselves live in the control plane;
//! this module decides which counters a request touches and under which keys, which
//! address a request comes from, and how a login attempt's account is taken (read by
//! [`crate::account`]; refused or counted by address only when it cannot be read).
//!
//! # Descriptors
//!
//! A limit counts requests per combination of its descriptors' values. Descriptors are
//! written as short strings:
//!
//! | Descriptor | Value |
//! |---|---|
//! | `clientIp` | the client address (see [`client_ip`]) |
//! | `claim:NAME` | a claim of the request's verified token (dotted paths allowed) |
//! | `header:NAME` | the first value of a request header |
//! | `rule` | the name of the rule the request matched |
//! | `method` | the request method |
//! | `path` | the path without the query string, normalised ([`crate::path`]) |
//!
//! A limit applies to a request only when every one of its descriptors has a value: a
//! `claim:sub` limit does not count unauthenticated requests. A limit without
//! descriptors is one counter for every request it applies to.

use serde::Deserialize;
use serde_json::Value;

use crate::account::{AccountError, AccountSource};
use crate::config::MatchConfig;
use crate::error::ConfigError;
use crate::jwt::VerifiedToken;
use crate::lockout::LockoutPolicy;
use crate::ratelimit::{Gcra, Unit};
use crate::request::RequestParts;
use crate::rules::Matcher;
use crate::wire::{counter_key, LockoutSubject, SubjectKind};

/// Most rate limits in one configuration.
pub const MAX_LIMITS: usize = 64;
/// Longest value a descriptor contributes (longer values are cut before hashing, so
/// requests that differ only past this many bytes share a counter).
pub const MAX_DESCRIPTOR_VALUE: usize = 256;

/// How the client address is found.
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientIpConfig {
    /// Proxies in front of Envoy that append to `x-forwarded-for` (set Envoy's
    /// `xff_num_trusted_hops` to the same number). 0: `x-forwarded-for` is ignored and
    /// the TCP peer is the client. Either way Envoy must run with
    /// `use_remote_address: true` (see [`client_ip`]).
    #[serde(default)]
    pub trusted_hops: u32,
}

/// `lease` (decide locally from leased quota) or `strict` (one call per request).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(rename_all = "camelCase")]
pub enum LimitMode {
    #[default]
    Lease,
    Strict,
}

/// What happens when the control plane cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(rename_all = "camelCase")]
pub enum FailureMode {
    /// Let the request through (counted as `unavailable_allowed`).
    Allow,
    /// Refuse it with 503 and `Retry-After: 1`.
    Deny,
}

/// When the `RateLimit-*` headers are sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(rename_all = "camelCase")]
pub enum HeaderMode {
    /// Only on 429 replies.
    #[default]
    Denied,
    /// Also on allowed responses.
    Always,
}

#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitConfig {
    pub name: String,
    pub limit: u64,
    pub unit: Unit,
    #[serde(default)]
    pub descriptors: Vec<String>,
    /// Rule names the limit applies to; absent: every request, including those no rule
    /// matched.
    #[serde(default)]
    pub rules: Option<Vec<String>>,
    #[serde(default)]
    pub overrides: Vec<OverrideConfig>,
    #[serde(default)]
    pub mode: LimitMode,
    #[serde(default = "default_failure_allow")]
    pub on_error: FailureMode,
    #[serde(default)]
    pub shadow: bool,
    #[serde(default)]
    pub response_headers: HeaderMode,
    /// Strict mode: the call's timeout.
    #[serde(default = "default_strict_timeout_ms")]
    pub timeout_ms: u64,
    /// Lease mode: the largest lease asked for.
    #[serde(default = "default_max_lease")]
    pub max_lease: u64,
    /// Lease mode: how long a lease may be spent.
    #[serde(default = "default_lease_ttl_ms")]
    pub lease_ttl_ms: u64,
    /// Lease mode: how many holders (workers × Envoys) share a counter, to size leases.
    #[serde(default = "default_holders")]
    pub expected_holders: u64,
}

fn default_failure_allow() -> FailureMode {
    FailureMode::Allow
}
fn default_strict_timeout_ms() -> u64 {
    20
}
fn default_max_lease() -> u64 {
    100
}
fn default_lease_ttl_ms() -> u64 {
    2_000
}
fn default_holders() -> u64 {
    4
}

/// Another limit for requests whose descriptor has a given value.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OverrideConfig {
    /// A descriptor, e.g. `claim:tenant`.
    pub when: String,
    pub equals: String,
    pub limit: u64,
    #[serde(default)]
    pub unit: Option<Unit>,
}

/// Where a login attempt names its account: `json:FIELD` (dotted path into a JSON
/// body), `form:FIELD` (`application/x-www-form-urlencoded` body) or `header:NAME`
/// (see [`crate::account`]).
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LockoutConfig {
    pub routes: Vec<MatchConfig>,
    pub account: String,
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    #[serde(default = "default_failure_statuses")]
    pub failure_statuses: Vec<u16>,
    #[serde(default)]
    pub policy: LockoutPolicy,
    /// Also lock client addresses (across accounts).
    #[serde(default = "default_true")]
    pub by_ip: bool,
    /// When the lock check cannot be answered: refuse (the default) or let through.
    #[serde(default = "default_failure_deny")]
    pub on_error: FailureMode,
    /// Timeout of the lock check before a login attempt.
    #[serde(default = "default_lockout_timeout_ms")]
    pub timeout_ms: u64,
    /// What an attempt whose account cannot be read gets.
    #[serde(default)]
    pub on_no_account: NoAccountAction,
    /// How long an attempt's reservation holds a slot when its outcome never arrives
    /// (then it counts as a failure). Longer than the login route's upstream timeout.
    #[serde(default = "default_reservation_ttl_ms")]
    pub reservation_ttl_ms: u64,
}

/// What a login attempt whose account cannot be read gets.
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum NoAccountAction {
    /// Refused: 400, 413 or 415 with the reason ([`AccountError`]).
    #[default]
    Deny,
    /// Let through, counted against the client address only (needs `byIp`).
    AddressOnly,
}

fn default_max_body() -> usize {
    16 * 1024
}
fn default_failure_statuses() -> Vec<u16> {
    vec![401, 403]
}
fn default_true() -> bool {
    true
}
fn default_failure_deny() -> FailureMode {
    FailureMode::Deny
}
fn default_lockout_timeout_ms() -> u64 {
    1_000
}
fn default_reservation_ttl_ms() -> u64 {
    60_000
}

/// Per-address request counts reported to the control plane, which detects bursts.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema, serde::Serialize))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BurstConfig {
    #[serde(default = "default_report_interval_ms")]
    pub report_interval_ms: u64,
    /// Refuse requests from addresses the control plane reports blocked.
    #[serde(default = "default_true")]
    pub enforce_blocks: bool,
}

fn default_report_interval_ms() -> u64 {
    1_000
}

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
        Some(truncate(v, MAX_DESCRIPTOR_VALUE))
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

/// `s` cut to at most `max` bytes, on a character boundary.
pub(crate) fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while end > 0 && !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

pub(crate) fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
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

/// A compiled rate limit.
#[derive(Debug, Clone)]
pub struct RateLimit {
    pub name: String,
    pub limit: u64,
    pub unit: Unit,
    pub descriptors: Vec<Descriptor>,
    /// Per rule index: whether the limit applies. `None`: every request.
    pub rules: Option<Vec<bool>>,
    pub overrides: Vec<Override>,
    pub mode: LimitMode,
    pub on_error: FailureMode,
    pub shadow: bool,
    pub response_headers: HeaderMode,
    pub timeout_ms: u64,
    pub max_lease: u64,
    pub lease_ttl_ms: u64,
    pub expected_holders: u64,
}

#[derive(Debug, Clone)]
pub struct Override {
    pub when: Descriptor,
    pub equals: String,
    pub limit: u64,
    pub unit: Unit,
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

impl RateLimit {
    /// The counter this request touches, or `None` when the limit does not apply.
    pub fn apply(
        &self,
        index: usize,
        rule_index: Option<usize>,
        ctx: &LimitContext<'_>,
    ) -> Option<AppliedLimit> {
        if let Some(rules) = &self.rules {
            let r = rule_index?;
            if !rules.get(r).copied().unwrap_or(false) {
                return None;
            }
        }
        let mut values = Vec::with_capacity(self.descriptors.len());
        for d in &self.descriptors {
            values.push(d.value(ctx)?);
        }
        let (limit, unit) = self
            .overrides
            .iter()
            .find(|o| o.when.value(ctx).is_some_and(|v| v == o.equals))
            .map(|o| (o.limit, o.unit))
            .unwrap_or((self.limit, self.unit));
        let refs: Vec<&str> = values.iter().map(String::as_str).collect();
        Some(AppliedLimit { index, key: counter_key(&self.name, limit, unit, &refs), limit, unit })
    }
}

/// Compiled lockout settings.
#[derive(Debug, Clone)]
pub struct Lockout {
    pub routes: Vec<Matcher>,
    pub account: AccountSource,
    pub max_body_bytes: usize,
    pub failure_statuses: Vec<u16>,
    pub policy: LockoutPolicy,
    pub by_ip: bool,
    pub on_error: FailureMode,
    pub timeout_ms: u64,
    pub on_no_account: NoAccountAction,
    pub reservation_ttl_ms: u64,
}

/// How an upstream answer to a login attempt counts.
pub fn login_outcome(lockout: &Lockout, status: u16) -> Option<crate::wire::LoginOutcome> {
    if lockout.failure_statuses.contains(&status) {
        Some(crate::wire::LoginOutcome::Failure)
    } else if (200..300).contains(&status) {
        Some(crate::wire::LoginOutcome::Success)
    } else {
        None
    }
}

impl Lockout {
    pub fn matches(&self, request: &RequestParts) -> bool {
        self.routes.iter().any(|m| m.matches(request))
    }

    /// The account a login attempt names. `body`: the whole body, or `None` when it is
    /// larger than `maxBodyBytes`. `Ok(None)`: no account could be read and the
    /// attempt counts against its address only (`onNoAccount: addressOnly`); `Err`:
    /// the attempt is refused.
    pub fn account_of(
        &self,
        request: &RequestParts,
        body: Option<&[u8]>,
    ) -> Result<Option<String>, AccountError> {
        let read = match body {
            None if self.account.needs_body() => Err(AccountError::BodyTooLarge),
            body => self.account.extract(request, body.unwrap_or_default()),
        };
        match (read, self.on_no_account) {
            (Ok(account), _) => Ok(Some(account)),
            (Err(_), NoAccountAction::AddressOnly) => Ok(None),
            (Err(e), NoAccountAction::Deny) => Err(e),
        }
    }

    /// The subjects of a login attempt: the account (when named) and, with `byIp`, the
    /// client address.
    pub fn subjects(&self, account: Option<&str>, client_ip: Option<&str>) -> Vec<LockoutSubject> {
        let mut out = Vec::with_capacity(2);
        if let Some(a) = account {
            out.push(LockoutSubject { kind: SubjectKind::Account, value: a.to_string() });
        }
        if self.by_ip {
            if let Some(ip) = client_ip {
                out.push(LockoutSubject { kind: SubjectKind::Ip, value: ip.to_string() });
            }
        }
        out
    }
}

#[derive(Debug, Clone)]
pub struct Burst {
    pub report_interval_ms: u64,
    pub enforce_blocks: bool,
}

/// Everything stateful, compiled.
#[derive(Debug, Clone, Default)]
pub struct Guards {
    pub trusted_hops: u32,
    pub rate_limits: Vec<RateLimit>,
    pub lockout: Option<Lockout>,
    pub burst: Option<Burst>,
}

impl Guards {
    pub fn is_empty(&self) -> bool {
        self.rate_limits.is_empty() && self.lockout.is_none() && self.burst.is_none()
    }

    /// Whether anything reads the client address (so the filter only looks it up then).
    pub fn needs_client_ip(&self) -> bool {
        let uses = |d: &Descriptor| *d == Descriptor::ClientIp;
        self.burst.is_some()
            || self.lockout.as_ref().is_some_and(|l| l.by_ip)
            || self
                .rate_limits
                .iter()
                .any(|l| l.descriptors.iter().any(uses) || l.overrides.iter().any(|o| uses(&o.when)))
    }

    /// Counters of the limits that apply to a request.
    pub fn applicable(&self, rule_index: Option<usize>, ctx: &LimitContext<'_>) -> Vec<AppliedLimit> {
        self.rate_limits.iter().enumerate().filter_map(|(i, l)| l.apply(i, rule_index, ctx)).collect()
    }
}

/// The raw sections, as [`crate::config::PluginConfig`] holds them.
pub struct GuardSections {
    /// Whether the configuration has a `controlPlane` section (compiled separately).
    pub has_control_plane: bool,
    pub client_ip: Option<ClientIpConfig>,
    pub rate_limits: Vec<RateLimitConfig>,
    pub lockout: Option<LockoutConfig>,
    pub burst: Option<BurstConfig>,
}

/// Validates the sections. `rule_names` resolve `rateLimits[].rules`.
pub fn compile(sections: GuardSections, rule_names: &[String]) -> Result<Guards, ConfigError> {
    let trusted_hops = sections.client_ip.map(|c| c.trusted_hops).unwrap_or(0);
    if trusted_hops > 16 {
        return Err(ConfigError::new("clientIp.trustedHops", "must be at most 16"));
    }
    if sections.rate_limits.len() > MAX_LIMITS {
        return Err(ConfigError::new("rateLimits", format!("at most {MAX_LIMITS} limits are supported")));
    }
    let mut rate_limits = Vec::with_capacity(sections.rate_limits.len());
    for (i, c) in sections.rate_limits.into_iter().enumerate() {
        let at = format!("rateLimits[{i}]");
        if rate_limits.iter().any(|l: &RateLimit| l.name == c.name) {
            return Err(ConfigError::new(format!("{at}.name"), format!("duplicate limit name `{}`", c.name)));
        }
        rate_limits.push(compile_limit(c, rule_names).map_err(|e| e.within(&at))?);
    }
    let lockout = match sections.lockout {
        None => None,
        Some(c) => Some(compile_lockout(c).map_err(|e| e.within("lockout"))?),
    };
    let burst = match sections.burst {
        None => None,
        Some(c) => {
            if !(100..=60_000).contains(&c.report_interval_ms) {
                return Err(ConfigError::new("burst.reportIntervalMs", "must be between 100 and 60000"));
            }
            Some(Burst { report_interval_ms: c.report_interval_ms, enforce_blocks: c.enforce_blocks })
        }
    };
    let guards = Guards { trusted_hops, rate_limits, lockout, burst };
    if !sections.has_control_plane {
        let section = if !guards.rate_limits.is_empty() {
            Some("rateLimits")
        } else if guards.lockout.is_some() {
            Some("lockout")
        } else if guards.burst.is_some() {
            Some("burst")
        } else {
            None
        };
        if let Some(s) = section {
            return Err(ConfigError::new(
                s,
                "needs a top-level `controlPlane` section naming the control plane's cluster",
            ));
        }
    }
    Ok(guards)
}

fn check_limit(limit: u64, field: &str) -> Result<(), ConfigError> {
    if !(1..=1_000_000_000).contains(&limit) {
        return Err(ConfigError::new(field, "must be between 1 and 1000000000"));
    }
    Ok(())
}

fn compile_limit(c: RateLimitConfig, rule_names: &[String]) -> Result<RateLimit, ConfigError> {
    if c.name.is_empty()
        || c.name.len() > 64
        || !c.name.chars().all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.'))
    {
        return Err(ConfigError::new("name", "limit names use 1-64 letters, digits, '-', '_' and '.'"));
    }
    check_limit(c.limit, "limit")?;
    if c.descriptors.len() > 8 {
        return Err(ConfigError::new("descriptors", "at most 8 descriptors"));
    }
    let mut descriptors = Vec::with_capacity(c.descriptors.len());
    for (i, d) in c.descriptors.iter().enumerate() {
        descriptors.push(Descriptor::parse(d).map_err(|m| ConfigError::new(format!("descriptors[{i}]"), m))?);
    }
    let rules = match c.rules {
        None => None,
        Some(names) => {
            let mut applies = vec![false; rule_names.len()];
            for (i, n) in names.iter().enumerate() {
                let idx = rule_names
                    .iter()
                    .position(|r| r == n)
                    .ok_or_else(|| ConfigError::new(format!("rules[{i}]"), format!("unknown rule `{n}`")))?;
                if let Some(a) = applies.get_mut(idx) {
                    *a = true;
                }
            }
            Some(applies)
        }
    };
    let mut overrides = Vec::with_capacity(c.overrides.len());
    for (i, o) in c.overrides.into_iter().enumerate() {
        let at = format!("overrides[{i}]");
        let when = Descriptor::parse(&o.when).map_err(|m| ConfigError::new(format!("{at}.when"), m))?;
        check_limit(o.limit, &format!("{at}.limit"))?;
        overrides.push(Override { when, equals: o.equals, limit: o.limit, unit: o.unit.unwrap_or(c.unit) });
    }
    if !(1..=10_000).contains(&c.timeout_ms) {
        return Err(ConfigError::new("timeoutMs", "must be between 1 and 10000"));
    }
    if !(1..=1_000_000).contains(&c.max_lease) {
        return Err(ConfigError::new("maxLease", "must be between 1 and 1000000"));
    }
    if !(100..=60_000).contains(&c.lease_ttl_ms) {
        return Err(ConfigError::new("leaseTtlMs", "must be between 100 and 60000"));
    }
    if !(1..=100_000).contains(&c.expected_holders) {
        return Err(ConfigError::new("expectedHolders", "must be between 1 and 100000"));
    }
    Ok(RateLimit {
        name: c.name,
        limit: c.limit,
        unit: c.unit,
        descriptors,
        rules,
        overrides,
        mode: c.mode,
        on_error: c.on_error,
        shadow: c.shadow,
        response_headers: c.response_headers,
        timeout_ms: c.timeout_ms,
        max_lease: c.max_lease,
        lease_ttl_ms: c.lease_ttl_ms,
        expected_holders: c.expected_holders,
    })
}

fn compile_lockout(c: LockoutConfig) -> Result<Lockout, ConfigError> {
    if c.routes.is_empty() {
        return Err(ConfigError::new("routes", "name at least one login route"));
    }
    let mut routes = Vec::with_capacity(c.routes.len());
    for (i, r) in c.routes.into_iter().enumerate() {
        routes.push(crate::config::compile_match(r).map_err(|e| e.within(&format!("routes[{i}]")))?);
    }
    let account = AccountSource::parse(&c.account).map_err(|m| ConfigError::new("account", m))?;
    if !(1..=1024 * 1024).contains(&c.max_body_bytes) {
        return Err(ConfigError::new("maxBodyBytes", "must be between 1 and 1048576"));
    }
    if c.failure_statuses.is_empty() || c.failure_statuses.iter().any(|s| !(100..=599).contains(s)) {
        return Err(ConfigError::new("failureStatuses", "list HTTP statuses (100-599)"));
    }
    let p = &c.policy;
    // The same bounds the control plane enforces (it refuses anything else with 400).
    const MAX_MS: u64 = 30 * 24 * 3_600_000;
    if !(1..=1000).contains(&p.max_failures) {
        return Err(ConfigError::new("policy.maxFailures", "must be between 1 and 1000"));
    }
    for (field, v) in
        [("windowMs", p.window_ms), ("baseLockMs", p.base_lock_ms), ("maxLockMs", p.max_lock_ms)]
    {
        if !(1..=MAX_MS).contains(&v) {
            return Err(ConfigError::new(format!("policy.{field}"), "must be between 1 ms and 30 days"));
        }
    }
    if p.base_lock_ms > p.max_lock_ms {
        return Err(ConfigError::new("policy.baseLockMs", "must be at most maxLockMs"));
    }
    if !(1..=10_000).contains(&c.timeout_ms) {
        return Err(ConfigError::new("timeoutMs", "must be between 1 and 10000"));
    }
    if !(1_000..=600_000).contains(&c.reservation_ttl_ms) {
        return Err(ConfigError::new("reservationTtlMs", "must be between 1000 and 600000"));
    }
    if c.on_no_account == NoAccountAction::AddressOnly && !c.by_ip {
        return Err(ConfigError::new(
            "onNoAccount",
            "`addressOnly` counts such attempts by address: it needs `byIp: true`",
        ));
    }
    Ok(Lockout {
        routes,
        account,
        max_body_bytes: c.max_body_bytes,
        failure_statuses: c.failure_statuses,
        policy: c.policy,
        by_ip: c.by_ip,
        on_error: c.on_error,
        timeout_ms: c.timeout_ms,
        on_no_account: c.on_no_account,
        reservation_ttl_ms: c.reservation_ttl_ms,
    })
}

/// The client address. `downstream` is Envoy's `source.address`: with the
/// connection manager's `use_remote_address: true` (which the filter requires) the TCP
/// peer, whatever `x-forwarded-for` says, or Envoy's own pick from that header when its
/// `xff_num_trusted_hops` is set. There is no attribute for the TCP peer alone: with
/// `use_remote_address: false` Envoy puts the header's last entry there, which the
/// client chooses.
///
/// With `trusted_hops` = N > 0 the client is the N-th address from the right of
/// `x-forwarded-for` as it reached Envoy (all values joined in order), as Envoy's
/// `xff_num_trusted_hops` picks it: the last entry of the header the filter sees is the
/// one this Envoy appended, so the count starts left of it. With too few entries, or
/// N = 0, it is `downstream`. Ports and IPv6 brackets are removed; IPv4-mapped IPv6
/// addresses become IPv4; anything that is not an address yields `None`.
pub fn client_ip(request: &RequestParts, downstream: Option<&str>, trusted_hops: u32) -> Option<String> {
    if trusted_hops > 0 {
        let mut entries: Vec<&str> = request
            .header_values("x-forwarded-for")
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        // Appended by this Envoy (`use_remote_address: true`).
        entries.pop();
        let n = usize::try_from(trusted_hops).unwrap_or(usize::MAX);
        if let Some(e) = entries.len().checked_sub(n).and_then(|i| entries.get(i)) {
            return normalise_ip(e);
        }
    }
    downstream.and_then(normalise_ip)
}

/// An address without port or brackets, in canonical form.
pub fn normalise_ip(s: &str) -> Option<String> {
    use std::net::{IpAddr, SocketAddr};
    let s = s.trim();
    let ip: IpAddr = match s.parse::<IpAddr>() {
        Ok(ip) => ip,
        Err(_) => match s.parse::<SocketAddr>() {
            Ok(sa) => sa.ip(),
            Err(_) => s.strip_prefix('[').and_then(|r| r.strip_suffix(']'))?.parse().ok()?,
        },
    };
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    Some(ip.to_string())
}

/// A holder's view of one counter, kept in Envoy shared data so every worker spends the
/// same lease: the unspent units of the current lease, and what the control plane last
/// said about the counter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeaseSlot {
    /// Unspent units of the lease.
    pub units: u64,
    /// When the lease stops being spendable (ms).
    pub expires_at_ms: u64,
    /// Refused by the control plane: no unit is available before this time (ms).
    pub refused_until_ms: u64,
    /// Units the control plane had left after the last answer (for `RateLimit-Remaining`).
    pub remaining: u64,
    /// When the counter is full again, per the last answer (ms).
    pub reset_at_ms: u64,
}

/// The result of [`LeaseSlot::spend`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotSpend {
    /// One unit spent; the slot to store.
    Spent(LeaseSlot),
    /// Refused until `refused_until_ms`.
    Refused { retry_after_ms: u64 },
    /// No live lease with units: ask the control plane.
    NeedLease,
}

const SLOT_LEN: usize = 40;

impl LeaseSlot {
    pub fn spend(&self, cost: u64, now_ms: u64) -> SlotSpend {
        if now_ms < self.refused_until_ms {
            return SlotSpend::Refused { retry_after_ms: self.refused_until_ms - now_ms };
        }
        if now_ms < self.expires_at_ms && self.units >= cost {
            return SlotSpend::Spent(LeaseSlot { units: self.units - cost, ..*self });
        }
        SlotSpend::NeedLease
    }

    /// Merges a control-plane answer to a lease ask received at `now_ms`. Units of a
    /// still-live lease are kept (and live until the new lease's expiry); a refusal
    /// closes the slot until the answer's retry time.
    pub fn granted(&self, result: &crate::wire::RateLimitResult, now_ms: u64) -> LeaseSlot {
        let live = if now_ms < self.expires_at_ms { self.units } else { 0 };
        let reset_at_ms = now_ms.saturating_add(result.reset_after_ms);
        if result.granted == 0 {
            return LeaseSlot {
                units: live,
                expires_at_ms: self.expires_at_ms,
                refused_until_ms: now_ms.saturating_add(result.retry_after_ms.max(1)),
                remaining: result.remaining,
                reset_at_ms,
            };
        }
        LeaseSlot {
            units: live.saturating_add(result.granted),
            expires_at_ms: result.expires_at_ms.max(self.expires_at_ms),
            refused_until_ms: 0,
            remaining: result.remaining,
            reset_at_ms,
        }
    }

    /// `RateLimit-Remaining` as this holder sees it: its unspent units plus what the
    /// control plane had left (other holders' unspent units are not known here).
    pub fn visible_remaining(&self, now_ms: u64) -> u64 {
        let live = if now_ms < self.expires_at_ms { self.units } else { 0 };
        live.saturating_add(self.remaining)
    }

    pub fn encode(&self) -> [u8; SLOT_LEN] {
        let mut out = [0u8; SLOT_LEN];
        let values =
            [self.units, self.expires_at_ms, self.refused_until_ms, self.remaining, self.reset_at_ms];
        for (chunk, v) in out.chunks_exact_mut(8).zip(values) {
            chunk.copy_from_slice(&v.to_be_bytes());
        }
        out
    }

    /// Anything malformed (or empty) reads as an empty slot.
    pub fn decode(bytes: &[u8]) -> Self {
        if bytes.len() != SLOT_LEN {
            return LeaseSlot::default();
        }
        let mut v = [0u64; 5];
        for (slot, chunk) in v.iter_mut().zip(bytes.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            *slot = u64::from_be_bytes(b);
        }
        LeaseSlot {
            units: v[0],
            expires_at_ms: v[1],
            refused_until_ms: v[2],
            remaining: v[3],
            reset_at_ms: v[4],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
    fn client_ip_uses_the_downstream_address_unless_hops_are_trusted() {
        // 4.4.4.4: appended by this Envoy (the TCP peer).
        let r = req(&[("x-forwarded-for", "1.1.1.1, 2.2.2.2"), ("x-forwarded-for", "3.3.3.3, 4.4.4.4")]);
        assert_eq!(client_ip(&r, Some("10.0.0.9:5555"), 0).as_deref(), Some("10.0.0.9"), "XFF ignored");
        assert_eq!(client_ip(&r, Some("10.0.0.9:5555"), 1).as_deref(), Some("3.3.3.3"));
        assert_eq!(client_ip(&r, Some("10.0.0.9:5555"), 2).as_deref(), Some("2.2.2.2"));
        assert_eq!(client_ip(&r, Some("10.0.0.9:5555"), 3).as_deref(), Some("1.1.1.1"));
        assert_eq!(client_ip(&r, Some("10.0.0.9:5555"), 4).as_deref(), Some("10.0.0.9"), "too few entries");
        let only_envoys = req(&[("x-forwarded-for", "4.4.4.4")]);
        assert_eq!(client_ip(&only_envoys, Some("10.0.0.9:5555"), 1).as_deref(), Some("10.0.0.9"));
        assert_eq!(client_ip(&r, Some("[::ffff:10.1.2.3]:80"), 0).as_deref(), Some("10.1.2.3"));
        assert_eq!(client_ip(&r, Some("[2001:DB8::1]:443"), 0).as_deref(), Some("2001:db8::1"));
        let bad = req(&[("x-forwarded-for", "not-an-ip")]);
        assert_eq!(client_ip(&bad, None, 1), None);
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

    #[test]
    fn login_outcomes_follow_the_configured_statuses() {
        let c: LockoutConfig = serde_json::from_str(
            r#"{"routes":[{"path":"/login","methods":["POST"]}],"account":"json:username"}"#,
        )
        .unwrap();
        let l = compile_lockout(c).unwrap();
        assert_eq!(login_outcome(&l, 401), Some(crate::wire::LoginOutcome::Failure));
        assert_eq!(login_outcome(&l, 204), Some(crate::wire::LoginOutcome::Success));
        assert_eq!(login_outcome(&l, 500), None);
        assert!(l.matches(&req(&[])));
        assert_eq!(l.subjects(Some("a"), Some("1.2.3.4")).len(), 2);
        assert_eq!(l.subjects(None, Some("1.2.3.4"))[0].kind, SubjectKind::Ip);
        let too_many: LockoutConfig = serde_json::from_str(
            r#"{"routes":[{"path":"/login"}],"account":"json:u","policy":{"maxFailures":5000}}"#,
        )
        .unwrap();
        assert_eq!(compile_lockout(too_many).unwrap_err().field, "policy.maxFailures");
    }

    fn lockout_config(extra: &str) -> Result<Lockout, ConfigError> {
        let c: LockoutConfig = serde_json::from_str(&format!(
            r#"{{"routes":[{{"path":"/login"}}],"account":"json:username"{extra}}}"#
        ))
        .unwrap();
        compile_lockout(c)
    }

    #[test]
    fn login_routes_fail_closed_and_refuse_unreadable_accounts_by_default() {
        let l = lockout_config("").unwrap();
        assert_eq!((l.on_error, l.on_no_account), (FailureMode::Deny, NoAccountAction::Deny));
        assert_eq!((l.timeout_ms, l.reservation_ttl_ms), (1_000, 60_000));
        // Configurations that chose otherwise keep working.
        let open = lockout_config(r#","onError":"allow","onNoAccount":"addressOnly""#).unwrap();
        assert_eq!((open.on_error, open.on_no_account), (FailureMode::Allow, NoAccountAction::AddressOnly));
        assert_eq!(
            lockout_config(r#","onNoAccount":"addressOnly","byIp":false"#).unwrap_err().field,
            "onNoAccount"
        );
        assert_eq!(lockout_config(r#","reservationTtlMs":999"#).unwrap_err().field, "reservationTtlMs");
    }

    #[test]
    fn an_unreadable_account_is_refused_or_counted_by_address_only() {
        let json = req(&[("content-type", "application/json")]);
        let deny = lockout_config("").unwrap();
        assert_eq!(deny.account_of(&json, Some(br#"{"username":"bob"}"#)), Ok(Some("bob".into())));
        assert_eq!(deny.account_of(&json, None), Err(AccountError::BodyTooLarge));
        assert_eq!(deny.account_of(&json, Some(b"{")), Err(AccountError::Malformed));
        let lenient = lockout_config(r#","onNoAccount":"addressOnly""#).unwrap();
        assert_eq!(lenient.account_of(&json, None), Ok(None));
        assert_eq!(lenient.account_of(&json, Some(b"{")), Ok(None));
        // A header source reads no body, whatever its size.
        let c: LockoutConfig =
            serde_json::from_str(r#"{"routes":[{"path":"/login"}],"account":"header:x-user"}"#).unwrap();
        let header = compile_lockout(c).unwrap();
        assert_eq!(header.account_of(&req(&[("x-user", "al")]), None), Ok(Some("al".into())));
    }

    #[test]
    fn guarded_sections_need_a_control_plane() {
        let c: RateLimitConfig = serde_json::from_str(r#"{"name":"l","limit":1,"unit":"second"}"#).unwrap();
        let err = compile(
            GuardSections {
                has_control_plane: false,
                client_ip: None,
                rate_limits: vec![c],
                lockout: None,
                burst: None,
            },
            &[],
        )
        .unwrap_err();
        assert_eq!(err.field, "rateLimits");
    }

    #[test]
    fn a_slot_spends_grants_and_refuses() {
        use crate::wire::RateLimitResult;
        let empty = LeaseSlot::default();
        assert_eq!(empty.spend(1, 100), SlotSpend::NeedLease);
        let grant = RateLimitResult {
            granted: 3,
            expires_at_ms: 2_100,
            remaining: 5,
            reset_after_ms: 30_000,
            retry_after_ms: 0,
        };
        let s = empty.granted(&grant, 100);
        assert_eq!((s.units, s.expires_at_ms, s.reset_at_ms), (3, 2_100, 30_100));
        assert_eq!(s.visible_remaining(100), 8);
        let SlotSpend::Spent(s2) = s.spend(1, 200) else { panic!("expected a spend") };
        assert_eq!(s2.units, 2);
        assert_eq!(s2.spend(1, 2_100), SlotSpend::NeedLease, "expired");
        assert_eq!(s2.visible_remaining(2_100), 5);
        let refusal = RateLimitResult {
            granted: 0,
            retry_after_ms: 6_000,
            reset_after_ms: 60_000,
            ..Default::default()
        };
        let r = s2.granted(&refusal, 300);
        assert_eq!(r.spend(1, 300), SlotSpend::Refused { retry_after_ms: 6_000 });
        assert_eq!(r.units, 2, "live units survive a refusal");
        assert_eq!(LeaseSlot::decode(&r.encode()), r);
        assert_eq!(LeaseSlot::decode(b"short"), LeaseSlot::default());
    }
}
