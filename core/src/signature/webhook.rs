//! Standard Webhooks: `webhook-id`, `webhook-timestamp` (Unix seconds) and
//! `webhook-signature` (space-separated `v1,<base64 HMAC-SHA256>`), signed content
//! `<id>.<timestamp>.<body>`. The scheme has no key id: every secret of every key the
//! rule accepts is tried, and the key whose secret verifies is the one reported.
//! Signatures of other versions are skipped; a `v1` whose MAC is not exactly 32 bytes
//! (the empty `v1,` among them) never verifies.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use super::{hmac_sha256, same_mac, within, KeyRing, Reason, SignaturePolicy, SignedRequest, Verified};

/// Most signatures read from one header, and longest message id.
const MAX_SIGNATURES: usize = 8;
const MAX_ID_BYTES: usize = 256;

pub fn verify(
    policy: &SignaturePolicy,
    keys: &KeyRing,
    request: &SignedRequest<'_>,
    now: u64,
) -> Result<Verified, Reason> {
    let id = request.field("webhook-id").ok_or(Reason::MissingComponent)?;
    let timestamp = request.field("webhook-timestamp").ok_or(Reason::MissingComponent)?;
    let header = request.field("webhook-signature").ok_or(Reason::Malformed)?;
    if id.is_empty() || id.len() > MAX_ID_BYTES || id.contains(['.', ',', ' ']) {
        return Err(Reason::Malformed);
    }
    if timestamp.is_empty() || timestamp.len() > 15 || !timestamp.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Reason::Malformed);
    }
    let ts: i64 = timestamp.parse().map_err(|_| Reason::Malformed)?;
    let macs = presented(&header)?;
    if !within(ts, now, policy.tolerance_secs) {
        return Err(Reason::Stale);
    }
    let content: [&[u8]; 5] = [id.as_bytes(), b".", timestamp.as_bytes(), b".", request.body];
    for key in keys.accepted(policy) {
        let mut ok = false;
        for secret in key.secrets_at(now) {
            if let Some(expected) = hmac_sha256(secret, &content) {
                ok |= macs.iter().fold(false, |hit, mac| same_mac(&expected, mac) | hit);
            }
        }
        if ok {
            let until = u64::try_from(ts).unwrap_or(0).saturating_add(policy.tolerance_secs);
            return Ok(Verified {
                key_id: key.id.clone(),
                owner: key.owner.clone(),
                replay: Some((format!("webhook\n{}\n{id}", key.id), until)),
            });
        }
    }
    Err(Reason::BadSignature)
}

/// The `v1` MACs of the header (other versions skipped; any undecodable entry makes
/// the header malformed).
fn presented(header: &str) -> Result<Vec<Vec<u8>>, Reason> {
    let mut macs = Vec::new();
    for entry in header.split(' ').filter(|e| !e.is_empty()).take(MAX_SIGNATURES) {
        let (version, encoded) = entry.split_once(',').ok_or(Reason::Malformed)?;
        if version != "v1" {
            continue;
        }
        let mac = STANDARD.decode(encoded).map_err(|_| Reason::Malformed)?;
        if mac.len() == 32 {
            macs.push(mac);
        }
    }
    if macs.is_empty() {
        return Err(Reason::BadSignature);
    }
    Ok(macs)
}

/// The `webhook-signature` value for one secret: for signers and tests.
pub fn sign(secret: &[u8], id: &str, timestamp: u64, body: &[u8]) -> Option<String> {
    let ts = timestamp.to_string();
    let mac = hmac_sha256(secret, &[id.as_bytes(), b".", ts.as_bytes(), b".", body])?;
    Some(format!("v1,{}", STANDARD.encode(mac)))
}
