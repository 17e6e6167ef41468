//! HTTP Message Signatures (RFC 9421) with `hmac-sha256`: reads `Signature-Input` and
//! `Signature`, checks that the signature covers what the rule demands, checks
//! `content-digest` (RFC 9530) against the body, builds the signature base (§2.5) and
//! compares the MAC in constant time.
//!
//! Components are covered without parameters (`;sf`, `;key`, `;bs`, `;req`, `;name`
//! are refused as malformed): what is not understood is not verified. A covered
//! component absent from the request, or listed twice, fails the signature.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use sha2::{Digest, Sha256, Sha512};

use super::sfv::{parse_dictionary, serialize_inner_list, Bare, Item, Member, Params};
use super::{
    hmac_sha256, same_mac, within, KeyRing, Reason, ReplayMode, SignaturePolicy, SignedRequest, Verified,
};

/// Most labels looked at in one request.
const MAX_LABELS: usize = 4;

/// One signature of the request, as `Signature-Input` declares it.
struct Declared {
    label: String,
    components: Vec<String>,
    items: Vec<Item>,
    params: Params,
}

impl Declared {
    fn int(&self, name: &str) -> Result<Option<i64>, Reason> {
        match self.params.iter().find(|(k, _)| k == name) {
            None => Ok(None),
            Some((_, Bare::Integer(n))) => Ok(Some(*n)),
            Some(_) => Err(Reason::Malformed),
        }
    }
    fn string(&self, name: &str) -> Result<Option<&str>, Reason> {
        match self.params.iter().find(|(k, _)| k == name) {
            None => Ok(None),
            Some((_, Bare::String(s))) => Ok(Some(s.as_str())),
            Some(_) => Err(Reason::Malformed),
        }
    }
}

/// Verifies the request's RFC 9421 signature. Several labels: the first that verifies
/// wins; otherwise the first label's reason is the answer.
pub fn verify(
    policy: &SignaturePolicy,
    keys: &KeyRing,
    request: &SignedRequest<'_>,
    now: u64,
) -> Result<Verified, Reason> {
    let inputs = parse_dictionary(&request.field("signature-input").unwrap_or_default())
        .map_err(|_| Reason::Malformed)?;
    let signatures = parse_dictionary(&request.field("signature").ok_or(Reason::Malformed)?)
        .map_err(|_| Reason::Malformed)?;
    let mut first_error = None;
    for (label, member) in inputs.into_iter().take(MAX_LABELS) {
        let result = declared(label, member).and_then(|d| {
            let presented = signatures.iter().find(|(l, _)| *l == d.label).map(|(_, m)| m);
            verify_one(policy, keys, request, now, &d, presented)
        });
        match result {
            Ok(verified) => return Ok(verified),
            Err(reason) => {
                first_error.get_or_insert(reason);
            }
        }
    }
    Err(first_error.unwrap_or(Reason::Malformed))
}

fn declared(label: String, member: Member) -> Result<Declared, Reason> {
    let Member::InnerList(items, params) = member else { return Err(Reason::Malformed) };
    let mut components: Vec<String> = Vec::with_capacity(items.len());
    for item in &items {
        let Bare::String(name) = &item.value else { return Err(Reason::Malformed) };
        if !item.params.is_empty()
            || components.contains(name)
            || name.bytes().any(|b| b.is_ascii_uppercase())
        {
            return Err(Reason::Malformed);
        }
        components.push(name.clone());
    }
    Ok(Declared { label, components, items, params })
}

fn verify_one(
    policy: &SignaturePolicy,
    keys: &KeyRing,
    request: &SignedRequest<'_>,
    now: u64,
    d: &Declared,
    presented: Option<&Member>,
) -> Result<Verified, Reason> {
    let Some(Member::Item(Item { value: Bare::Bytes(mac), .. })) = presented else {
        return Err(Reason::Malformed);
    };
    if d.string("alg")?.is_some_and(|alg| alg != "hmac-sha256") {
        return Err(Reason::Malformed);
    }
    let created = d.int("created")?.ok_or(Reason::MissingComponent)?;
    let expires = d.int("expires")?;
    let key_id = d.string("keyid")?.ok_or(Reason::MissingComponent)?;
    let nonce = d.string("nonce")?;
    if policy.components.iter().any(|c| !d.components.contains(c)) {
        return Err(Reason::MissingComponent);
    }
    if policy.replay != ReplayMode::None && nonce.is_none_or(str::is_empty) {
        return Err(Reason::MissingComponent);
    }
    if let Some(tag) = &policy.tag {
        if d.string("tag")? != Some(tag.as_str()) {
            return Err(Reason::MissingComponent);
        }
    }
    let key = keys.get(policy, key_id).ok_or(Reason::UnknownKey)?;
    if !within(created, now, policy.tolerance_secs) {
        return Err(Reason::Stale);
    }
    if expires.is_some_and(|e| i128::from(e) < i128::from(now)) {
        return Err(Reason::Expired);
    }
    if d.components.iter().any(|c| c == "content-digest")
        || policy.components.iter().any(|c| c == "content-digest")
    {
        check_content_digest(request)?;
    }
    let base = signature_base(request, d)?;
    let verified = key
        .secrets_at(now)
        .filter_map(|secret| hmac_sha256(secret, &[base.as_bytes()]))
        .fold(false, |ok, expected| same_mac(&expected, mac) | ok);
    if !verified {
        return Err(Reason::BadSignature);
    }
    let until = u64::try_from(created).unwrap_or(0).saturating_add(policy.tolerance_secs);
    let replay = nonce.map(|n| (format!("rfc9421\n{key_id}\n{n}"), until));
    Ok(Verified { key_id: key.id.clone(), owner: key.owner.clone(), replay })
}

/// The signature base of RFC 9421 §2.5: one line per covered component, then
/// `@signature-params`. A covered component missing from the request fails it.
fn signature_base(request: &SignedRequest<'_>, d: &Declared) -> Result<String, Reason> {
    let mut base = String::new();
    for name in &d.components {
        let value = component_value(request, name).ok_or(Reason::BadSignature)?;
        if value.bytes().any(|b| b == b'\n' || b == b'\r') {
            return Err(Reason::Malformed);
        }
        base.push('"');
        base.push_str(name);
        base.push_str("\": ");
        base.push_str(&value);
        base.push('\n');
    }
    base.push_str("\"@signature-params\": ");
    base.push_str(&serialize_inner_list(&d.items, &d.params));
    Ok(base)
}

/// A component's value (RFC 9421 §2.1, §2.2).
pub fn component_value(request: &SignedRequest<'_>, name: &str) -> Option<String> {
    let (path, query) = match request.path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (request.path, None),
    };
    let path = if path.is_empty() { "/" } else { path };
    Some(match name {
        "@method" => request.method.to_string(),
        "@authority" => request.authority.to_ascii_lowercase(),
        "@scheme" => request.scheme.to_ascii_lowercase(),
        "@target-uri" => format!(
            "{}://{}{}",
            request.scheme.to_ascii_lowercase(),
            request.authority.to_ascii_lowercase(),
            request.path
        ),
        "@request-target" => request.path.to_string(),
        "@path" => path.to_string(),
        "@query" => format!("?{}", query.unwrap_or("")),
        header if !header.starts_with('@') => request.field(header)?,
        _ => return None,
    })
}

/// Checks every `content-digest` member this module knows (`sha-256`, `sha-512`)
/// against the body; at least one must be present, all present must match.
pub fn check_content_digest(request: &SignedRequest<'_>) -> Result<(), Reason> {
    let field = request.field("content-digest").ok_or(Reason::MissingComponent)?;
    let members = parse_dictionary(&field).map_err(|_| Reason::Malformed)?;
    let mut checked = 0;
    for (alg, member) in members {
        let Member::Item(Item { value: Bare::Bytes(digest), .. }) = member else {
            return Err(Reason::Malformed);
        };
        let expected: Vec<u8> = match alg.as_str() {
            "sha-256" => Sha256::digest(request.body).to_vec(),
            "sha-512" => Sha512::digest(request.body).to_vec(),
            _ => continue,
        };
        if !same_mac(&expected, &digest) {
            return Err(Reason::DigestMismatch);
        }
        checked += 1;
    }
    if checked == 0 {
        return Err(Reason::DigestMismatch);
    }
    Ok(())
}

/// A `content-digest` value (`sha-256`) for `body`: for signers and tests.
pub fn content_digest(body: &[u8]) -> String {
    format!("sha-256=:{}:", STANDARD.encode(Sha256::digest(body)))
}
