//! Signs one bench token per algorithm (HS256, ES256, RS256, EdDSA) with the fixture
//! keys, using `jsonwebtoken` (an implementation independent of the filter's), and
//! writes the bench input: the tokens, each key's public JWK, issuer, audience and the
//! time they were minted.
//!
//! Usage: `mint-bench-tokens <repo-root> <out.json>`

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    if let Err(e) = native::run() {
        eprintln!("mint-bench-tokens: {e}");
        std::process::exit(1);
    }
}

#[cfg(target_arch = "wasm32")]
fn main() {
    eprintln!("mint-bench-tokens runs natively only");
    std::process::exit(1);
}

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::path::Path;

    use base64::Engine;
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    use serde_json::{json, Value};

    pub const ISSUER: &str = "https://issuer.bench";
    pub const AUDIENCE: &str = "bench";
    /// Long enough for any run; the filter's cache still caps entries at 300 s.
    const LIFETIME_SECS: u64 = 86_400;

    struct Fixture {
        alg: Algorithm,
        name: &'static str,
        /// Public JWK file and private key file, relative to the repository root.
        jwk: &'static str,
        private: Option<&'static str>,
    }

    const FIXTURES: [Fixture; 4] = [
        Fixture { alg: Algorithm::HS256, name: "HS256", jwk: "bench/fixtures/hs256-bench.jwk.json", private: None },
        Fixture { alg: Algorithm::ES256, name: "ES256", jwk: "tests/fixtures/es256-a.jwk.json", private: Some("tests/fixtures/es256-a.pem") },
        Fixture { alg: Algorithm::RS256, name: "RS256", jwk: "tests/fixtures/rs256-a.jwk.json", private: Some("tests/fixtures/rs256-a.pem") },
        Fixture { alg: Algorithm::EdDSA, name: "EdDSA", jwk: "bench/fixtures/eddsa-bench.jwk.json", private: Some("bench/fixtures/eddsa-bench.pem") },
    ];

    pub fn run() -> Result<(), String> {
        let args: Vec<String> = std::env::args().collect();
        let (Some(root), Some(out)) = (args.get(1), args.get(2)) else {
            return Err("usage: mint-bench-tokens <repo-root> <out.json>".into());
        };
        let root = Path::new(root);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|e| e.to_string())?
            .as_secs();
        let claims = json!({
            "iss": ISSUER, "aud": AUDIENCE, "sub": "bench-user", "scope": "bench:read",
            "iat": now, "exp": now + LIFETIME_SECS,
        });

        let mut cases = Vec::new();
        for f in &FIXTURES {
            let read = |p: &str| std::fs::read(root.join(p)).map_err(|e| format!("{p}: {e}"));
            let jwk: Value = serde_json::from_slice(&read(f.jwk)?).map_err(|e| format!("{}: {e}", f.jwk))?;
            let key = match (f.alg, f.private) {
                (Algorithm::HS256, _) => {
                    let k = jwk["k"].as_str().ok_or("hs256 jwk: `k` missing")?;
                    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .decode(k)
                        .map_err(|e| format!("hs256 jwk: {e}"))?;
                    EncodingKey::from_secret(&secret)
                }
                (Algorithm::ES256, Some(p)) => EncodingKey::from_ec_pem(&read(p)?).map_err(|e| format!("{p}: {e}"))?,
                (Algorithm::RS256, Some(p)) => EncodingKey::from_rsa_pem(&read(p)?).map_err(|e| format!("{p}: {e}"))?,
                (Algorithm::EdDSA, Some(p)) => EncodingKey::from_ed_pem(&read(p)?).map_err(|e| format!("{p}: {e}"))?,
                _ => return Err(format!("no private key for {}", f.name)),
            };
            let mut header = Header::new(f.alg);
            header.kid = jwk["kid"].as_str().map(str::to_owned);
            let token = encode(&header, &claims, &key).map_err(|e| format!("{}: sign: {e}", f.name))?;
            cases.push(json!({ "alg": f.name, "token": token, "jwk": jwk }));
        }

        let doc = json!({ "now": now, "issuer": ISSUER, "audience": AUDIENCE, "cases": cases });
        std::fs::write(out, serde_json::to_vec_pretty(&doc).map_err(|e| e.to_string())?)
            .map_err(|e| format!("{out}: {e}"))?;
        Ok(())
    }
}
