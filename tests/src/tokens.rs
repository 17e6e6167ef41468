//! Test tokens signed with the fixture keys by an independent library (`jsonwebtoken`),
//! so the filter is checked against tokens it did not mint itself.

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::repo_root;

/// A fixture key: `es256-a`, `es256-b` or `rs256-a` (tests/fixtures/).
pub struct FixtureKey {
    pub name: &'static str,
    pub kid: String,
    pub alg: Algorithm,
    pub jwk: Value,
    pem: Vec<u8>,
}

impl FixtureKey {
    pub fn load(name: &'static str) -> FixtureKey {
        let dir = repo_root().join("tests/fixtures");
        let pem = std::fs::read(dir.join(format!("{name}.pem"))).expect("fixture pem");
        let jwk: Value = serde_json::from_slice(
            &std::fs::read(dir.join(format!("{name}.jwk.json"))).expect("fixture jwk"),
        )
        .expect("jwk json");
        let alg = match jwk["alg"].as_str() {
            Some("ES256") => Algorithm::ES256,
            Some("RS256") => Algorithm::RS256,
            other => panic!("unexpected fixture alg {other:?}"),
        };
        FixtureKey { name, kid: jwk["kid"].as_str().expect("kid").to_string(), alg, jwk, pem }
    }

    /// Signs `claims` with this key, `kid` in the header.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        let key = match self.alg {
            Algorithm::ES256 => EncodingKey::from_ec_pem(&self.pem),
            _ => EncodingKey::from_rsa_pem(&self.pem),
        }
        .expect("encoding key");
        encode(&header, claims, &key).expect("sign")
    }
}

pub fn jwks(keys: &[&FixtureKey]) -> Value {
    json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() })
}

pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs()
}

/// Standard claims for the test issuer, valid for 10 minutes.
pub fn claims(sub: &str, scope: &str) -> Value {
    let now = now();
    json!({ "iss": "https://issuer.test", "aud": "e2e", "sub": sub, "scope": scope, "iat": now, "exp": now + 600 })
}
