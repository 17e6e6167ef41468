//! The `lockout` section: which routes are logins, where an attempt names its account,
//! which answers count as failures, and compiled into a [`Lockout`] with the
//! request-time questions (does this request log in, which subjects does it name, how
//! does its answer count).

use serde::Deserialize;

use super::policy::LockoutPolicy;
use super::wire::{LockoutSubject, LoginOutcome, SubjectKind};
use crate::account::{AccountError, AccountSource};
use crate::control_plane::FailureMode;
use crate::error::ConfigError;
use crate::request::RequestParts;
use crate::route::{compile_match, MatchConfig, Matcher};

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
pub fn login_outcome(lockout: &Lockout, status: u16) -> Option<LoginOutcome> {
    if lockout.failure_statuses.contains(&status) {
        Some(LoginOutcome::Failure)
    } else if (200..300).contains(&status) {
        Some(LoginOutcome::Success)
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

pub(crate) fn compile_lockout(c: LockoutConfig) -> Result<Lockout, ConfigError> {
    if c.routes.is_empty() {
        return Err(ConfigError::new("routes", "name at least one login route"));
    }
    let mut routes = Vec::with_capacity(c.routes.len());
    for (i, r) in c.routes.into_iter().enumerate() {
        routes.push(compile_match(r).map_err(|e| e.within(&format!("routes[{i}]")))?);
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

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn req(headers: &[(&str, &str)]) -> RequestParts {
        RequestParts::post("/login?x=1", headers)
    }

    #[test]
    fn login_outcomes_follow_the_configured_statuses() {
        let c: LockoutConfig = serde_json::from_str(
            r#"{"routes":[{"path":"/login","methods":["POST"]}],"account":"json:username"}"#,
        )
        .unwrap();
        let l = compile_lockout(c).unwrap();
        assert_eq!(login_outcome(&l, 401), Some(LoginOutcome::Failure));
        assert_eq!(login_outcome(&l, 204), Some(LoginOutcome::Success));
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
}
