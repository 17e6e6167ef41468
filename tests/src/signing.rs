//! Signed requests as clients make them: RFC 9421 `hmac-sha256` signatures over the
//! components a rule covers, written from the RFC text, and Standard Webhooks
//! signatures; requests written byte for byte on a socket.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::frames::{http1, Answer};

/// A request and how it was signed.
#[derive(Clone)]
pub struct Req {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Req {
    pub async fn send(&self, port: u16) -> Answer {
        let headers: Vec<(&str, &str)> = self.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        http1(port, &self.method, &self.path, &headers, &self.body).await
    }

    /// Sets header `name` (replacing the request's copies).
    pub fn set(mut self, name: &str, value: &str) -> Req {
        self.headers.retain(|(n, _)| n != name);
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

/// RFC 9530 `Content-Digest` (`sha-256`) of `body`.
pub fn digest(body: &[u8]) -> String {
    format!("sha-256=:{}:", STANDARD.encode(Sha256::digest(body)))
}

/// Base64 of HMAC-SHA256 of `content` under `secret`.
pub fn mac(secret: &[u8], content: &[u8]) -> String {
    let mut m = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
    m.update(content);
    STANDARD.encode(m.finalize().into_bytes())
}

/// `POST path` with `body` to the Envoy on `port`, signed under RFC 9421 with `key`
/// (id, secret) covering `components` (`@method`, `@target-uri`, `@authority` and
/// the headers `content-type`, `content-digest`, `x-tenant` it carries).
pub fn signed(
    port: u16,
    key: (&str, &[u8]),
    components: &[&str],
    created: i64,
    nonce: &str,
    path: &str,
    body: &[u8],
) -> Req {
    let authority = format!("127.0.0.1:{port}");
    let headers = vec![
        ("content-type".to_string(), "application/json".to_string()),
        ("content-digest".to_string(), digest(body)),
        ("x-tenant".to_string(), "blue".to_string()),
    ];
    let value = |c: &str| match c {
        "@method" => "POST".to_string(),
        "@target-uri" => format!("http://{authority}{path}"),
        "@authority" => authority.clone(),
        h => headers.iter().find(|(n, _)| n == h).map(|(_, v)| v.clone()).unwrap_or_default(),
    };
    let list = components.iter().map(|c| format!("\"{c}\"")).collect::<Vec<_>>().join(" ");
    let params = format!("({list});created={created};keyid=\"{}\";nonce=\"{nonce}\"", key.0);
    let mut base: String = components.iter().map(|c| format!("\"{c}\": {}\n", value(c))).collect();
    base.push_str(&format!("\"@signature-params\": {params}"));
    let signature = format!("sig1=:{}:", mac(key.1, base.as_bytes()));
    Req { method: "POST".into(), path: path.into(), headers, body: body.to_vec() }
        .set("signature-input", &format!("sig1={params}"))
        .set("signature", &signature)
}

/// A Standard Webhooks request (`POST path`), signed with `secret` over
/// `id.timestamp.body`.
pub fn webhook(path: &str, secret: &[u8], id: &str, timestamp: i64, body: &[u8]) -> Req {
    let ts = timestamp.to_string();
    let content = [id.as_bytes(), b".", ts.as_bytes(), b".", body].concat();
    Req { method: "POST".into(), path: path.into(), headers: vec![], body: body.to_vec() }
        .set("webhook-id", id)
        .set("webhook-timestamp", &ts)
        .set("webhook-signature", &format!("v1,{}", mac(secret, &content)))
}
