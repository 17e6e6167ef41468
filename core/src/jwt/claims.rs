//! Parsing a JWT claims set and checking the registered and required claims
//! (RFC 7519 §4.1), with time as an argument.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::reason::Reason;
use super::token::claim_at;

/// A claims object that refuses duplicate member names: two `sub` or `exp` members could
/// be read differently by different parsers along the path, so such tokens are malformed.
pub(crate) struct UniqueClaims(pub(crate) Map<String, Value>);

impl<'de> Deserialize<'de> for UniqueClaims {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ClaimsVisitor;

        impl<'de> Visitor<'de> for ClaimsVisitor {
            type Value = UniqueClaims;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<UniqueClaims, A::Error> {
                let mut map = Map::new();
                while let Some(key) = access.next_key::<String>()? {
                    if map.contains_key(&key) {
                        return Err(de::Error::custom("duplicate claim"));
                    }
                    let value: Value = access.next_value()?;
                    map.insert(key, value);
                }
                Ok(UniqueClaims(map))
            }
        }

        deserializer.deserialize_map(ClaimsVisitor)
    }
}

/// Parses the decoded payload: a JSON object without duplicate members.
pub(crate) fn parse_claims(payload: &[u8]) -> Result<Map<String, Value>, Reason> {
    serde_json::from_slice::<UniqueClaims>(payload).map(|c| c.0).map_err(|_| Reason::Malformed)
}

/// A NumericDate (RFC 7519 §2): an integer or a fraction of seconds. Fractions round up,
/// which is exact for the integer `now` comparisons made here (`now >= x` iff
/// `now >= ceil(x)`, `now < x` iff `now < ceil(x)`).
pub(crate) fn numeric_date(value: &Value) -> Result<i64, Reason> {
    if let Some(i) = value.as_i64() {
        return Ok(i);
    }
    if value.as_u64().is_some() {
        return Ok(i64::MAX);
    }
    match value.as_f64() {
        // `as` saturates for out-of-range floats.
        Some(f) if f.is_finite() => Ok(f.ceil() as i64),
        _ => Err(Reason::Malformed),
    }
}

fn date_claim(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, Reason> {
    claims.get(name).map(numeric_date).transpose()
}

/// The time-related policy of a provider.
pub(crate) struct TimePolicy {
    pub(crate) clock_skew: i64,
    pub(crate) require_expiration: bool,
    pub(crate) max_lifetime: Option<i64>,
}

/// The validated `exp` and `iat` of a token.
pub(crate) struct TokenTimes {
    pub(crate) exp: Option<i64>,
    pub(crate) iat: Option<i64>,
}

/// Checks `exp`, `nbf` and `iat` against `now` and the clock skew.
pub(crate) fn check_times(
    claims: &Map<String, Value>,
    policy: &TimePolicy,
    now: u64,
) -> Result<TokenTimes, Reason> {
    let now = i64::try_from(now).unwrap_or(i64::MAX);
    let skew = policy.clock_skew;
    let exp = date_claim(claims, "exp")?;
    let nbf = date_claim(claims, "nbf")?;
    let iat = date_claim(claims, "iat")?;
    match exp {
        None if policy.require_expiration => return Err(Reason::MissingClaim),
        Some(exp) if now >= exp.saturating_add(skew) => return Err(Reason::Expired),
        _ => {}
    }
    if let Some(nbf) = nbf {
        if now.saturating_add(skew) < nbf {
            return Err(Reason::NotYetValid);
        }
    }
    if let Some(iat) = iat {
        if iat > now.saturating_add(skew) {
            return Err(Reason::NotYetValid);
        }
    }
    Ok(TokenTimes { exp, iat })
}

/// `exp - iat` (or `exp - now` without `iat`) must not exceed the maximum lifetime.
pub(crate) fn check_lifetime(times: &TokenTimes, policy: &TimePolicy, now: u64) -> Result<(), Reason> {
    let Some(max) = policy.max_lifetime else {
        return Ok(());
    };
    // Without `exp` the lifetime is unbounded, hence too long.
    let exp = times.exp.ok_or(Reason::LifetimeTooLong)?;
    let start = times.iat.unwrap_or(i64::try_from(now).unwrap_or(i64::MAX));
    if exp.saturating_sub(start) > max {
        return Err(Reason::LifetimeTooLong);
    }
    Ok(())
}

/// `iss` must be a string equal to the issuer (exact, case-sensitive).
pub(crate) fn check_issuer(claims: &Map<String, Value>, issuer: &str) -> Result<(), Reason> {
    match claims.get("iss") {
        Some(Value::String(iss)) if iss == issuer => Ok(()),
        _ => Err(Reason::BadIssuer),
    }
}

/// `aud` (a string or an array of strings) must contain one of `audiences`.
pub(crate) fn check_audience(claims: &Map<String, Value>, audiences: &[String]) -> Result<(), Reason> {
    let found = match claims.get("aud") {
        None => return Err(Reason::BadAudience),
        Some(Value::String(aud)) => audiences.contains(aud),
        Some(Value::Array(items)) => {
            let mut found = false;
            for item in items {
                let aud = item.as_str().ok_or(Reason::Malformed)?;
                found |= audiences.iter().any(|a| a == aud);
            }
            found
        }
        Some(_) => return Err(Reason::Malformed),
    };
    if found {
        Ok(())
    } else {
        Err(Reason::BadAudience)
    }
}

/// Required claims: absent → `missing_claim`; present with another value →
/// `claim_mismatch`. For an array claim, the expected value (or every element of an
/// expected array) must be contained in it.
pub(crate) fn check_required(
    claims: &Map<String, Value>,
    required: &[(String, Value)],
) -> Result<(), Reason> {
    for (name, expected) in required {
        let actual = claim_at(claims, name).ok_or(Reason::MissingClaim)?;
        if !claim_matches(actual, expected) {
            return Err(Reason::ClaimMismatch);
        }
    }
    Ok(())
}

fn claim_matches(actual: &Value, expected: &Value) -> bool {
    if actual == expected {
        return true;
    }
    match (actual, expected) {
        (Value::Array(items), Value::Array(wanted)) => wanted.iter().all(|w| items.contains(w)),
        (Value::Array(items), wanted) => items.contains(wanted),
        _ => false,
    }
}

/// Normalises a `typ` value for comparison (RFC 8725 §3.11, RFC 7515 §4.1.9): media types
/// are case-insensitive and the `application/` prefix may be omitted.
pub(crate) fn normalize_typ(typ: &str) -> String {
    let lower = typ.trim().to_ascii_lowercase();
    match lower.strip_prefix("application/") {
        Some(rest) => rest.to_owned(),
        None => lower,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn claims(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    #[test]
    fn duplicate_claims_are_malformed() {
        assert_eq!(parse_claims(br#"{"sub":"a","sub":"b"}"#).err(), Some(Reason::Malformed));
        assert_eq!(parse_claims(br#"["sub"]"#).err(), Some(Reason::Malformed));
        assert!(parse_claims(br#"{"sub":"a","nested":{"x":1}}"#).is_ok());
    }

    #[test]
    fn numeric_dates_accept_integers_and_fractions() {
        assert_eq!(numeric_date(&json!(5)), Ok(5));
        assert_eq!(numeric_date(&json!(5.2)), Ok(6));
        assert_eq!(numeric_date(&json!(-1.5)), Ok(-1));
        assert_eq!(numeric_date(&json!(u64::MAX)), Ok(i64::MAX));
        assert_eq!(numeric_date(&json!(1e300)), Ok(i64::MAX));
        assert_eq!(numeric_date(&json!("5")), Err(Reason::Malformed));
        assert_eq!(numeric_date(&json!(null)), Err(Reason::Malformed));
    }

    #[test]
    fn fractional_exp_expires_at_the_next_second() {
        let p = TimePolicy { clock_skew: 0, require_expiration: true, max_lifetime: None };
        let c = claims(json!({"exp": 100.5}));
        assert!(check_times(&c, &p, 100).is_ok());
        assert_eq!(check_times(&c, &p, 101).err(), Some(Reason::Expired));
    }

    #[test]
    fn array_claims_use_contains_semantics() {
        let c = claims(json!({"groups": ["a", "b"], "n": 3}));
        let req = |name: &str, v: Value| check_required(&c, &[(name.to_owned(), v)]);
        assert_eq!(req("groups", json!("a")), Ok(()));
        assert_eq!(req("groups", json!(["b", "a"])), Ok(()));
        assert_eq!(req("groups", json!("c")), Err(Reason::ClaimMismatch));
        assert_eq!(req("n", json!(3)), Ok(()));
        assert_eq!(req("n", json!("3")), Err(Reason::ClaimMismatch));
        assert_eq!(req("missing", json!(1)), Err(Reason::MissingClaim));
    }

    #[test]
    fn typ_comparison_tolerates_case_and_application_prefix() {
        assert_eq!(normalize_typ("JWT"), normalize_typ("application/jwt"));
        assert_eq!(normalize_typ("Application/AT+JWT"), "at+jwt");
        assert_ne!(normalize_typ("JWT"), normalize_typ("at+jwt"));
    }
}
