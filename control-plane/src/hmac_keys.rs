//! HMAC keys of signed requests (RFC 9421 `hmac-sha256`, Standard Webhooks) held by the
//! control plane: create, rotate, list, revoke, and the key set Envoys fetch
//! ([`portcullis_core::signature::key_set`]).
//!
//! State in the store: one record, [`RECORD`], holding every key ([`KeyStore`], JSON),
//! changed only by compare-and-swap, one key in Redis (so Redis Cluster slots never
//! matter). Its `version` grows on every write; Envoys replace their copy whenever the
//! version they hold differs. Keys are few ([`MAX_KEYS`]), so one record is enough.
//!
//! Secrets are **sealed at rest**: ChaCha20-Poly1305 under a key derived from the
//! master key for this purpose only ([`SEAL_PURPOSE`]), with the key id as associated
//! data, so a sealed secret moved onto another key id does not open. A secret exists in
//! clear only in the response to `create` / `rotate` and in the key set served on the
//! internal listener (fleet credential).
//!
//! Rotation adds a new secret and gives every older one without a `notAfter` one of
//! `now + overlap`: both verify until then, only the new one after. Secrets past their
//! `notAfter` are dropped on the next write. Revocation removes the key's secrets at
//! once (the record keeps its id, owner and `revokedAt` so `list` explains it); Envoys
//! stop accepting it within one poll.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use portcullis_core::error::is_identifier;
use portcullis_core::signature::config::MAX_SECRETS_PER_KEY;
use portcullis_core::signature::key_set::{KeySet, MAX_KEYS};
use portcullis_core::signature::replay::{is_claim_id, ReplayClaim};
use portcullis_core::signature::{SecretConfig, SignatureKeyConfig};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::master_key::{MasterKey, Sealed};
use crate::random::RandomSource;
use crate::store::{retry_compare_and_swap, CasRound, Store, StoreError};

/// The record holding every key.
pub const RECORD: &str = "hmac-keys";
/// What the sealing key is derived for (HMAC-SHA256 of the master key).
pub const SEAL_PURPOSE: &str = "portcullis hmac keys v1";
/// Random bytes of a generated secret (both formats).
pub const SECRET_BYTES: usize = 32;
/// Overlap of a rotation unless the request says otherwise: 24 hours.
pub const DEFAULT_OVERLAP_SECONDS: u64 = 86_400;
/// Longest overlap accepted: 30 days.
pub const MAX_OVERLAP_SECONDS: u64 = 30 * 86_400;

#[derive(Debug, thiserror::Error)]
pub enum HmacKeyError {
    /// The request is not acceptable; the message names the field.
    #[error("{0}")]
    InvalidRequest(String),
    #[error("there is no HMAC key {0:?}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("state changed concurrently too often; retry")]
    Contended,
    #[error("no randomness for a secret: {0}")]
    Random(String),
    /// A sealed secret does not open (another master key, or tampered data).
    #[error("a sealed HMAC secret does not open: {0}")]
    Sealing(String),
}

fn invalid(message: impl Into<String>) -> HmacKeyError {
    HmacKeyError::InvalidRequest(message.into())
}

/// How a secret is written out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum SecretFormat {
    /// Standard base64 of 32 random bytes (RFC 9421 clients).
    #[default]
    Base64,
    /// `whsec_<base64>` (Standard Webhooks senders).
    Whsec,
}

impl SecretFormat {
    fn encode(self, bytes: &[u8]) -> Zeroizing<String> {
        let text = Zeroizing::new(STANDARD.encode(bytes));
        match self {
            SecretFormat::Base64 => text,
            SecretFormat::Whsec => Zeroizing::new(format!("whsec_{}", text.as_str())),
        }
    }
}

/// Body of `POST /admin/v1/hmac-keys`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateHmacKey {
    /// The key id clients name (`keyid`): 1-64 letters, digits, `-`, `_`, `.`.
    pub id: String,
    /// Who the key belongs to, passed upstream with the key id (same characters).
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub format: SecretFormat,
}

/// Body of `POST /admin/v1/hmac-keys/{id}/rotate`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RotateHmacKey {
    /// How long the current secrets keep verifying (seconds, default 86400).
    #[serde(default)]
    pub overlap_seconds: Option<u64>,
}

/// Every key, as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyStore {
    pub version: u64,
    pub keys: Vec<StoredKey>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredKey {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    pub format: SecretFormat,
    pub created_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<u64>,
    /// Oldest first.
    pub secrets: Vec<StoredSecret>,
}

/// A sealed secret: base64 nonce and ciphertext, never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredSecret {
    pub nonce: String,
    pub sealed: String,
    pub created_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<u64>,
}

/// A key as the admin API shows it: never a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HmacKeyInfo {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    pub format: SecretFormat,
    pub created_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<u64>,
    /// `active` or `revoked`.
    pub status: String,
    /// The secrets' times, oldest first (never the secrets).
    pub secrets: Vec<SecretInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretInfo {
    pub created_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<u64>,
}

/// Response of `create` and `rotate`: the new secret, shown this once, and the key.
/// (`Debug` leaves the secret out.)
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HmacKeySecret {
    pub secret: String,
    #[serde(flatten)]
    pub key: HmacKeyInfo,
}

impl std::fmt::Debug for HmacKeySecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HmacKeySecret").field("key", &self.key).finish_non_exhaustive()
    }
}

/// Response of `GET /admin/v1/hmac-keys`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HmacKeyList {
    pub keys: Vec<HmacKeyInfo>,
}

impl StoredKey {
    pub fn info(&self) -> HmacKeyInfo {
        HmacKeyInfo {
            id: self.id.clone(),
            owner: self.owner.clone(),
            format: self.format,
            created_at: self.created_at,
            revoked_at: self.revoked_at,
            status: if self.revoked_at.is_some() { "revoked" } else { "active" }.to_owned(),
            secrets: self
                .secrets
                .iter()
                .map(|s| SecretInfo { created_at: s.created_at, not_after: s.not_after })
                .collect(),
        }
    }
}

/// Seals and opens HMAC secrets with the subkey derived for them.
pub struct SecretSeal(MasterKey);

impl SecretSeal {
    pub fn derive(master: &MasterKey) -> Self {
        SecretSeal(MasterKey::from_bytes(*master.derive_subkey(SEAL_PURPOSE)))
    }

    fn seal(
        &self,
        id: &str,
        text: &str,
        rng: &dyn RandomSource,
        now: u64,
    ) -> Result<StoredSecret, HmacKeyError> {
        let sealed = self
            .0
            .seal(text.as_bytes(), id.as_bytes(), rng)
            .map_err(|e| HmacKeyError::Random(e.to_string()))?;
        Ok(StoredSecret {
            nonce: sealed.nonce_base64(),
            sealed: sealed.ciphertext_base64(),
            created_at: now,
            not_after: None,
        })
    }

    fn open(&self, id: &str, secret: &StoredSecret) -> Result<Zeroizing<String>, HmacKeyError> {
        let sealed = Sealed::from_base64(&secret.nonce, &secret.sealed)
            .map_err(|e| HmacKeyError::Sealing(format!("key {id}: {e}")))?;
        let bytes = self
            .0
            .open(&sealed, id.as_bytes())
            .map_err(|e| HmacKeyError::Sealing(format!("key {id}: {e}")))?;
        String::from_utf8(bytes.to_vec())
            .map(Zeroizing::new)
            .map_err(|_| HmacKeyError::Sealing(format!("key {id}: not text")))
    }
}

/// A fresh secret in `format`.
fn generate(format: SecretFormat, rng: &dyn RandomSource) -> Result<Zeroizing<String>, HmacKeyError> {
    let mut bytes = Zeroizing::new([0u8; SECRET_BYTES]);
    rng.fill(bytes.as_mut()).map_err(|e| HmacKeyError::Random(e.to_string()))?;
    Ok(format.encode(bytes.as_ref()))
}

async fn read(store: &dyn Store, now_ms: u64) -> Result<(Option<Vec<u8>>, KeyStore), HmacKeyError> {
    match store.record_get(RECORD, now_ms).await? {
        Some(raw) => {
            let keys = serde_json::from_slice(&raw)
                .map_err(|e| StoreError::CorruptData(format!("record {RECORD}: {e}")))?;
            Ok((Some(raw), keys))
        }
        None => Ok((None, KeyStore::default())),
    }
}

/// Applies `change` to the stored keys with compare-and-swap (re-read and re-applied
/// when another writer came first); the version grows by one.
async fn modify<T>(
    store: &dyn Store,
    now_ms: u64,
    change: impl Fn(&mut KeyStore) -> Result<T, HmacKeyError>,
) -> Result<T, HmacKeyError> {
    let change = &change;
    retry_compare_and_swap(HmacKeyError::Contended, || async move {
        let (raw, mut keys) = read(store, now_ms).await?;
        let answer = change(&mut keys)?;
        keys.version = keys.version.saturating_add(1);
        let bytes = serde_json::to_vec(&keys)
            .map_err(|e| StoreError::InvalidArgument(format!("cannot encode: {e}")))?;
        if store.record_compare_and_swap(RECORD, raw.as_deref(), Some(bytes), None, now_ms).await? {
            Ok(CasRound::Done(answer))
        } else {
            Ok(CasRound::Lost)
        }
    })
    .await
}

fn check_id(field: &str, value: &str) -> Result<(), HmacKeyError> {
    if is_identifier(value) {
        Ok(())
    } else {
        Err(invalid(format!("{field}: 1 to 64 letters, digits, '-', '_' or '.'")))
    }
}

/// Creates a key with one fresh secret; the returned secret is its only copy in clear.
pub async fn create(
    store: &dyn Store,
    seal: &SecretSeal,
    rng: &dyn RandomSource,
    request: &CreateHmacKey,
    now_ms: u64,
) -> Result<HmacKeySecret, HmacKeyError> {
    check_id("id", &request.id)?;
    if let Some(owner) = &request.owner {
        check_id("owner", owner)?;
    }
    let now = now_ms / 1000;
    let secret = generate(request.format, rng)?;
    let sealed = seal.seal(&request.id, &secret, rng, now)?;
    let key = StoredKey {
        id: request.id.clone(),
        owner: request.owner.clone(),
        format: request.format,
        created_at: now,
        revoked_at: None,
        secrets: vec![sealed],
    };
    let info = modify(store, now_ms, |keys| {
        if keys.keys.iter().any(|k| k.id == key.id) {
            return Err(HmacKeyError::Conflict(format!(
                "id: an HMAC key {:?} exists already (revoked ids are not reused)",
                key.id
            )));
        }
        if keys.keys.len() >= MAX_KEYS {
            return Err(HmacKeyError::Conflict(format!("at most {MAX_KEYS} HMAC keys; revoke some first")));
        }
        keys.keys.push(key.clone());
        Ok(key.info())
    })
    .await?;
    Ok(HmacKeySecret { secret: secret.as_str().to_owned(), key: info })
}

/// Adds a fresh secret to key `id`; its older secrets verify for `overlap` more
/// seconds. The returned secret is its only copy in clear.
pub async fn rotate(
    store: &dyn Store,
    seal: &SecretSeal,
    rng: &dyn RandomSource,
    id: &str,
    request: &RotateHmacKey,
    now_ms: u64,
) -> Result<HmacKeySecret, HmacKeyError> {
    let overlap = request.overlap_seconds.unwrap_or(DEFAULT_OVERLAP_SECONDS);
    if overlap > MAX_OVERLAP_SECONDS {
        return Err(invalid(format!("overlapSeconds: at most {MAX_OVERLAP_SECONDS}")));
    }
    let now = now_ms / 1000;
    let (_, current) = read(store, now_ms).await?;
    let format = current
        .keys
        .iter()
        .find(|k| k.id == id)
        .map(|k| k.format)
        .ok_or_else(|| HmacKeyError::NotFound(id.chars().take(64).collect()))?;
    let secret = generate(format, rng)?;
    let sealed = seal.seal(id, &secret, rng, now)?;
    let until = now.saturating_add(overlap);
    let info = modify(store, now_ms, |keys| {
        let key = keys.keys.iter_mut().find(|k| k.id == id).ok_or_else(|| HmacKeyError::NotFound(id.to_owned()))?;
        if key.revoked_at.is_some() {
            return Err(HmacKeyError::Conflict(format!("HMAC key {id:?} is revoked")));
        }
        if key.format != format {
            return Err(HmacKeyError::Contended);
        }
        key.secrets.retain(|s| s.not_after.is_none_or(|t| now <= t));
        for old in &mut key.secrets {
            old.not_after = Some(old.not_after.map_or(until, |t| t.min(until)));
        }
        if key.secrets.len() >= MAX_SECRETS_PER_KEY {
            return Err(HmacKeyError::Conflict(format!(
                "HMAC key {id:?} has {MAX_SECRETS_PER_KEY} secrets in their overlap already; wait for one to end"
            )));
        }
        key.secrets.push(sealed.clone());
        Ok(key.info())
    })
    .await?;
    Ok(HmacKeySecret { secret: secret.as_str().to_owned(), key: info })
}

/// Revokes key `id` at once: its secrets are dropped. Returns it and whether this call
/// revoked it (false: it already was).
pub async fn revoke(store: &dyn Store, id: &str, now_ms: u64) -> Result<(HmacKeyInfo, bool), HmacKeyError> {
    let (_, current) = read(store, now_ms).await?;
    match current.keys.iter().find(|k| k.id == id) {
        None => return Err(HmacKeyError::NotFound(id.chars().take(64).collect())),
        Some(k) if k.revoked_at.is_some() => return Ok((k.info(), false)),
        Some(_) => {}
    }
    let info = modify(store, now_ms, |keys| {
        let key =
            keys.keys.iter_mut().find(|k| k.id == id).ok_or_else(|| HmacKeyError::NotFound(id.to_owned()))?;
        key.revoked_at.get_or_insert(now_ms / 1000);
        key.secrets.clear();
        Ok(key.info())
    })
    .await?;
    Ok((info, true))
}

/// Every key, sorted by id (never a secret).
pub async fn list(store: &dyn Store, now_ms: u64) -> Result<HmacKeyList, HmacKeyError> {
    let (_, mut current) = read(store, now_ms).await?;
    current.keys.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(HmacKeyList { keys: current.keys.iter().map(StoredKey::info).collect() })
}

/// The key set Envoys follow: every key not revoked with its secrets still valid at
/// `now_ms`, opened.
pub async fn key_set(store: &dyn Store, seal: &SecretSeal, now_ms: u64) -> Result<KeySet, HmacKeyError> {
    let (_, current) = read(store, now_ms).await?;
    let now = now_ms / 1000;
    let mut keys = Vec::with_capacity(current.keys.len());
    for key in current.keys.iter().filter(|k| k.revoked_at.is_none()) {
        let mut secrets = Vec::with_capacity(key.secrets.len());
        for s in key.secrets.iter().filter(|s| s.not_after.is_none_or(|t| now <= t)) {
            secrets.push(SecretConfig {
                secret: seal.open(&key.id, s)?.as_str().to_owned(),
                not_after: s.not_after,
            });
        }
        if !secrets.is_empty() {
            keys.push(SignatureKeyConfig { id: key.id.clone(), owner: key.owner.clone(), secrets });
        }
    }
    Ok(KeySet { version: current.version, keys })
}

/// Claims of replay ids (`replay: global`) live under this prefix.
pub const REPLAY_CLAIM_PREFIX: &str = "signature-replay/";
/// Longest a replay id is remembered: a signature's time may be up to the largest
/// tolerance (one day) ahead, and is remembered for the tolerance after it.
pub const MAX_REPLAY_WINDOW_MS: u64 = 2 * 86_400_000;

/// Claims a replay id across the fleet until `claim.until` (at least one second from
/// now, at most [`MAX_REPLAY_WINDOW_MS`]): true the first time within its window.
pub async fn claim_replay(store: &dyn Store, claim: &ReplayClaim, now_ms: u64) -> Result<bool, HmacKeyError> {
    if !is_claim_id(&claim.id) {
        return Err(invalid("id: 64 lower-case hex digits (SHA-256 of the replay id)"));
    }
    let until_ms = claim.until.saturating_mul(1000);
    let expires_at_ms =
        until_ms.clamp(now_ms.saturating_add(1000), now_ms.saturating_add(MAX_REPLAY_WINDOW_MS));
    let key = format!("{REPLAY_CLAIM_PREFIX}{}", claim.id);
    Ok(store.claim_once(&key, expires_at_ms, now_ms).await?)
}

#[cfg(test)]
#[path = "hmac_keys_tests.rs"]
mod tests;
