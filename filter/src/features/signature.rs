//! Signed requests in the filter: core checks the signature against the body the
//! request context buffered, then the replay guard remembers its nonce or message id:
//! under `replay: global` the pipeline claims it at the control plane (one call, the
//! request held meanwhile: [`PendingClaim`]); under `replay: local` in this Envoy's
//! shared data, spread over
//! [`replay::CELLS`] cells, each changed with the one compare-and-swap loop. A cell
//! that cannot take the id (full of live entries, or every attempt lost the race)
//! refuses the request with 503: a replay guard that cannot answer does not let a
//! possible replay through.

use portcullis_core::authn::UpstreamEdits;
use portcullis_core::config::Policy;
use portcullis_core::response::Denial;
use portcullis_core::route::{is_cors_preflight, Rule};
use portcullis_core::signature::replay::{self, claim_id, fingerprint, remember, Remember, ReplayClaim};
use portcullis_core::signature::{
    verify, KeyRing, Reason, ReplayGuardFailure, ReplayMode, SignaturePolicy, SignedRequest, KEY_ID_HEADER,
    OWNER_HEADER,
};
use portcullis_core::RequestParts;

use super::hmac_keys::HmacKeySync;
use super::Env;
use crate::host::shared::{SharedCell, Swap};

/// What a request brings to the signature check, taken when its headers and body
/// arrived.
#[derive(Debug, Clone, Default)]
pub struct SignedParts {
    /// `:scheme` as Envoy received it.
    pub scheme: String,
    pub body: Vec<u8>,
}

/// A signature that verified: what the upstream is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    pub key_id: String,
    pub owner: Option<String>,
}

/// A signature that verified under `replay: global`: its replay id still to be
/// claimed at the control plane before the signer counts.
#[derive(Debug, Clone)]
pub struct PendingClaim {
    pub signer: Signer,
    pub claim: ReplayClaim,
    pub on_unavailable: ReplayGuardFailure,
}

/// What a signature check found.
pub enum Checked {
    Signed(Signer),
    /// `replay: global`: the claim to make first.
    Claim(PendingClaim),
}

/// The signature check of `rule` (`Phase::Authenticate`), once per request: `signer`
/// keeps the key that verified, for the rounds that follow (a JWT round may run again
/// after keys arrive; the replay guard must not see the nonce twice). A signed rule
/// without a buffered body fails closed. With `hmac_keys` (an `hmacKeys` section) the
/// control plane's keys verify too, and a rule answers 503 until they are synced.
pub fn check_once(
    env: Env<'_>,
    policy: &Policy,
    rule: &Rule,
    request: &RequestParts,
    parts: Option<&SignedParts>,
    signer: &mut Option<Signer>,
    hmac_keys: Option<&HmacKeySync>,
) -> Result<Option<PendingClaim>, Denial> {
    let Some(signatures) = &rule.signatures else { return Ok(None) };
    // A CORS preflight carries no credentials; the rule lets it through as it does tokens.
    if signer.is_some() || (rule.allow_cors_preflight && is_cors_preflight(request)) {
        return Ok(None);
    }
    let parts = parts.ok_or(Denial::InvalidSignature(Reason::Malformed))?;
    let verified = match hmac_keys {
        Some(sync) => {
            check(env, &*sync.keys(&policy.signature_keys, rule, env.now_ms)?, signatures, request, parts)
        }
        None => check(env, &policy.signature_keys, signatures, request, parts),
    };
    match verified? {
        Checked::Signed(s) => {
            *signer = Some(s);
            Ok(None)
        }
        Checked::Claim(pending) => Ok(Some(pending)),
    }
}

/// The headers telling the upstream who signed (the client's copies were stripped).
pub fn upstream_headers(signer: Option<&Signer>, edits: &mut UpstreamEdits) {
    let Some(signer) = signer else { return };
    edits.set_headers.push((KEY_ID_HEADER.to_string(), signer.key_id.clone()));
    if let Some(owner) = &signer.owner {
        edits.set_headers.push((OWNER_HEADER.to_string(), owner.clone()));
    }
}

/// The signature check (`Phase::Authenticate`): the signer (or, under `replay:
/// global`, the claim to make first), or why the request is refused.
pub fn check(
    env: Env<'_>,
    keys: &KeyRing,
    rule: &SignaturePolicy,
    request: &RequestParts,
    parts: &SignedParts,
) -> Result<Checked, Denial> {
    let signed = SignedRequest {
        method: &request.method,
        scheme: &parts.scheme,
        authority: &request.authority,
        path: &request.path,
        headers: &request.headers,
        body: &parts.body,
    };
    let now = env.now_ms / 1000;
    let verified = match verify(rule, keys, &signed, now) {
        Ok(v) => v,
        Err(reason) => {
            env.metrics.count(&format!("portcullis.signature.refused.{}", reason.as_str()));
            return Err(Denial::InvalidSignature(reason));
        }
    };
    let signer = Signer { key_id: verified.key_id, owner: verified.owner };
    match (rule.replay, &verified.replay) {
        (ReplayMode::Global, Some((id, until))) => {
            let claim = ReplayClaim { id: claim_id(id), until: *until };
            return Ok(Checked::Claim(PendingClaim {
                signer,
                claim,
                on_unavailable: rule.on_replay_guard_unavailable,
            }));
        }
        (ReplayMode::Local, Some((id, until))) => guard(env, id, *until, now)?,
        _ => {}
    }
    env.metrics.count("portcullis.signature.verified");
    Ok(Checked::Signed(signer))
}

/// Remembers `id` until `until`; a denial when it was seen, or cannot be remembered.
fn guard(env: Env<'_>, id: &str, until: u64, now: u64) -> Result<(), Denial> {
    let (print, cell) = fingerprint(id);
    let key = format!("portcullis.v1.signature.replay.{cell}");
    let answer = SharedCell::new(env.host, &key).update(|data| match remember(data, &print, until, now) {
        Remember::Write(bytes) => Swap::Write(bytes, Remember::Write(Vec::new())),
        other => Swap::Keep(other),
    });
    match answer {
        Some(Remember::Write(_)) => Ok(()),
        Some(Remember::Seen) => {
            env.metrics.count("portcullis.signature.refused.replayed");
            Err(Denial::InvalidSignature(Reason::Replayed))
        }
        Some(Remember::Full) | None => {
            env.metrics.count("portcullis.signature.replay_guard_unavailable");
            log::warn!("the replay guard cell {cell} of {} cannot take another id", replay::CELLS);
            Err(Denial::ReplayGuardUnavailable)
        }
    }
}
