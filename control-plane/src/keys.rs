//! The signing key set: one current key that signs, previous keys that still verify
//! until they retire, and retired or revoked keys kept only as history.
//!
//! **Revocation** ([`KeyRing::revoke`]) is the emergency exit for a leaked key: the key
//! leaves the JWKS at once (no overlap), its private part is dropped, and the feed
//! names it so every Envoy refuses what it signed within one poll. Revoking the current
//! key makes a fresh key current in the same compare-and-swap, so there is never a
//! moment without a signing key (and no two-step procedure to get wrong under stress).
//! Revoked keys stay listed (and in the feed's snapshots) for
//! [`REVOKED_KEY_MEMORY_MS`], longer than any token or cached JWKS can live.
//!
//! The whole set is one store record ([`KEY_SET_RECORD`]) with a `version` that grows
//! on every rotation and retirement. Every change is a compare-and-swap against the
//! bytes that were read, so concurrent rotations on several replicas serialise: each
//! one that succeeds builds on the previous one, and nobody overwrites a key another
//! replica already handed out.
//!
//! Private keys are sealed under the master key ([`crate::master_key`]) with the kid
//! as associated data; the record never holds raw key bytes.
//!
//! Each replica caches the decrypted set and re-reads the record at most once per
//! [`KEY_SET_RECHECK_MS`] (on the next mint or JWKS request after that), decrypting
//! again only when the version changed. A rotation made through this replica updates
//! its cache at once.

use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::master_key::{MasterKey, Sealed, UnsealError};
use crate::random::{RandomError, RandomSource};
use crate::signing::{JwkSet, PublicJwk, SigningAlgorithm, SigningKeyError, SigningKeyPair};
use crate::store::{retry_compare_and_swap, CasRound, Store, StoreError};

/// The record holding the key set.
pub const KEY_SET_RECORD: &str = "signing-keys/set";
/// The unencrypted single-key record of earlier versions; imported (and sealed) once.
pub const LEGACY_KEY_RECORD: &str = "signing-keys/current";
/// How often a replica checks the store for a newer key set.
pub const KEY_SET_RECHECK_MS: u64 = 1000;
/// How many retired keys are kept in the listing.
const RETIRED_HISTORY: usize = 20;
/// How long a revoked key stays in the key set (and the feed's snapshots): longer than
/// the longest access token (24 h) and the longest JWKS cache of the filter (7 days).
pub const REVOKED_KEY_MEMORY_MS: u64 = 8 * 86_400_000;

#[derive(Debug, thiserror::Error)]
pub enum KeyRingError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Random(#[from] RandomError),
    #[error(transparent)]
    Key(#[from] SigningKeyError),
    #[error(
        "the master key does not decrypt signing key {kid}: wrong --master-key / \
         --master-key-file (all replicas must share one master key), or the key set was tampered with"
    )]
    WrongMasterKey { kid: String },
    #[error("the stored key set is unusable: {0}")]
    Corrupt(String),
    #[error("the key set changed concurrently too often; retry")]
    Contended,
    #[error("there is no signing key {0:?}")]
    UnknownKey(String),
}

impl KeyRingError {
    pub fn is_transient(&self) -> bool {
        matches!(self, KeyRingError::Store(e) if e.is_transient()) || matches!(self, KeyRingError::Contended)
    }
}

/// How keys are made and how long old ones stay published.
#[derive(Debug, Clone)]
pub struct KeyPolicy {
    pub algorithm: SigningAlgorithm,
    /// How long a replaced key keeps verifying; at least the longest token lifetime.
    pub overlap_ms: u64,
    /// Rotate automatically when the current key is this old (`None`: never).
    pub rotate_every_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum KeyStatus {
    Current,
    Previous,
    Retired,
    Revoked,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredKey {
    kid: String,
    alg: SigningAlgorithm,
    status: KeyStatus,
    created_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retires_at_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    revoked_at_ms: Option<u64>,
    /// Sealed private key (absent once retired or revoked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nonce: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sealed_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    public: Option<PublicJwk>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredKeySet {
    version: u64,
    keys: Vec<StoredKey>,
}

/// One key as `GET /admin/v1/keys` shows it. Times are Unix seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyInfo {
    pub kid: String,
    pub alg: SigningAlgorithm,
    pub status: KeyStatus,
    pub created_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retires_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<u64>,
}

/// A decrypted key set.
pub struct LoadedKeySet {
    pub version: u64,
    raw: Vec<u8>,
    stored: StoredKeySet,
    current: Arc<SigningKeyPair>,
}

impl LoadedKeySet {
    pub fn current(&self) -> &Arc<SigningKeyPair> {
        &self.current
    }

    /// Keys that verify at `now_ms`: the current key and previous keys not yet retired.
    pub fn jwks(&self, now_ms: u64) -> JwkSet {
        JwkSet {
            keys: self
                .stored
                .keys
                .iter()
                .filter(|k| verifies(k, now_ms))
                .filter_map(|k| k.public.clone())
                .collect(),
        }
    }

    /// Keys audit checkpoints verify against: every key not revoked, retired ones
    /// included (a checkpoint outlives its key's overlap).
    pub fn audit_jwks(&self) -> JwkSet {
        JwkSet {
            keys: self
                .stored
                .keys
                .iter()
                .filter(|k| k.status != KeyStatus::Revoked)
                .filter_map(|k| k.public.clone())
                .collect(),
        }
    }

    pub fn list(&self, now_ms: u64) -> Vec<KeyInfo> {
        self.stored
            .keys
            .iter()
            .map(|k| KeyInfo {
                kid: k.kid.clone(),
                alg: k.alg,
                status: if k.status == KeyStatus::Previous && !verifies(k, now_ms) {
                    KeyStatus::Retired
                } else {
                    k.status
                },
                created_at: k.created_at_ms / 1000,
                retires_at: k.retires_at_ms.map(|ms| ms / 1000),
                revoked_at: k.revoked_at_ms.map(|ms| ms / 1000),
            })
            .collect()
    }

    /// The `kid`s of revoked keys, for the feed: the filter refuses their tokens.
    pub fn revoked_kids(&self) -> Vec<String> {
        self.stored.keys.iter().filter(|k| k.status == KeyStatus::Revoked).map(|k| k.kid.clone()).collect()
    }
}

fn verifies(key: &StoredKey, now_ms: u64) -> bool {
    match key.status {
        KeyStatus::Current => true,
        KeyStatus::Previous => key.retires_at_ms.is_none_or(|at| at > now_ms),
        KeyStatus::Retired | KeyStatus::Revoked => false,
    }
}

/// What a rotation did.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rotation {
    pub kid: String,
    pub alg: SigningAlgorithm,
    pub previous_kid: Option<String>,
    /// When the previous key stops verifying (Unix seconds).
    pub previous_retires_at: Option<u64>,
    pub key_set_version: u64,
}

/// Which keys [`KeyRing::revoke`] revokes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySelection<'a> {
    One(&'a str),
    /// Every key, current included (the master key leaked).
    All,
}

/// What a key revocation did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyRevocation {
    /// Keys revoked by this call (empty when they were revoked already).
    pub revoked_kids: Vec<String>,
    /// The key that signs from now on.
    pub current_kid: String,
    /// Whether the current key was revoked and a fresh one made current.
    pub rotated: bool,
    pub key_set_version: u64,
}

/// The signing keys as this replica sees them.
pub struct KeyRing {
    store: Arc<dyn Store>,
    master: Arc<MasterKey>,
    rng: Arc<dyn RandomSource>,
    policy: KeyPolicy,
    cache: RwLock<Arc<LoadedKeySet>>,
    checked_at_ms: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing").field("policy", &self.policy).finish_non_exhaustive()
    }
}

impl KeyRing {
    /// Loads the key set, creating it (or importing the legacy unencrypted key) when
    /// there is none. Fails clearly when the master key does not decrypt it.
    pub async fn open(
        store: Arc<dyn Store>,
        master: Arc<MasterKey>,
        rng: Arc<dyn RandomSource>,
        policy: KeyPolicy,
        now_ms: u64,
    ) -> Result<Self, KeyRingError> {
        let loaded = match store.record_get(KEY_SET_RECORD, now_ms).await? {
            Some(raw) => load(raw, &master)?,
            None => {
                let legacy = import_legacy_key(store.as_ref(), now_ms).await?;
                let imported = legacy.is_some();
                let first = match legacy {
                    Some(key) => key,
                    None => (SigningKeyPair::generate(policy.algorithm, rng.as_ref())?, now_ms),
                };
                let set = StoredKeySet {
                    version: 1,
                    keys: vec![seal_key(&first.0, first.1, &master, rng.as_ref())?],
                };
                let raw = encode(&set)?;
                if store
                    .record_compare_and_swap(KEY_SET_RECORD, None, Some(raw.clone()), None, now_ms)
                    .await?
                {
                    tracing::info!(kid = first.0.kid(), alg = %first.0.alg(), "created the signing key set");
                    if imported {
                        store.record_delete(LEGACY_KEY_RECORD).await?;
                    }
                    load(raw, &master)?
                } else {
                    let raw = store
                        .record_get(KEY_SET_RECORD, now_ms)
                        .await?
                        .ok_or_else(|| KeyRingError::Corrupt("the key set vanished after creation".into()))?;
                    load(raw, &master)?
                }
            }
        };
        Ok(Self {
            store,
            master,
            rng,
            policy,
            cache: RwLock::new(Arc::new(loaded)),
            checked_at_ms: std::sync::atomic::AtomicU64::new(now_ms),
        })
    }

    pub fn policy(&self) -> &KeyPolicy {
        &self.policy
    }

    fn cached(&self) -> Arc<LoadedKeySet> {
        match self.cache.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    fn replace(&self, loaded: LoadedKeySet) -> Arc<LoadedKeySet> {
        let loaded = Arc::new(loaded);
        let mut guard = match self.cache.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        // The store is the source of truth, even if its version went down (an emptied
        // Redis recreated the set): a slow reader racing a rotation can install an older
        // set only until the next recheck.
        *guard = Arc::clone(&loaded);
        loaded
    }

    /// The key set, re-read from the store when the last check is older than
    /// [`KEY_SET_RECHECK_MS`]. If the store cannot be read, the cached set is used.
    pub async fn current(&self, now_ms: u64) -> Arc<LoadedKeySet> {
        use std::sync::atomic::Ordering;
        let checked = self.checked_at_ms.load(Ordering::SeqCst);
        if now_ms.saturating_sub(checked) < KEY_SET_RECHECK_MS {
            return self.cached();
        }
        self.checked_at_ms.store(now_ms, Ordering::SeqCst);
        match self.reload(now_ms).await {
            Ok(loaded) => loaded,
            Err(error) => {
                tracing::warn!(%error, "cannot re-read the key set; using the cached one");
                self.cached()
            }
        }
    }

    /// Re-reads the key set now.
    pub async fn reload(&self, now_ms: u64) -> Result<Arc<LoadedKeySet>, KeyRingError> {
        let cached = self.cached();
        let raw = self
            .store
            .record_get(KEY_SET_RECORD, now_ms)
            .await?
            .ok_or_else(|| KeyRingError::Corrupt("the key set record is missing".into()))?;
        if raw == cached.raw {
            return Ok(cached);
        }
        Ok(self.replace(load(raw, &self.master)?))
    }

    /// Writes `set` in place of `loaded` (compare-and-swap on the bytes read) and, when
    /// that worked, caches and returns it; `None` when the record changed meanwhile.
    async fn swap(
        &self,
        loaded: &LoadedKeySet,
        set: &StoredKeySet,
        now_ms: u64,
    ) -> Result<Option<Arc<LoadedKeySet>>, KeyRingError> {
        let raw = encode(set)?;
        let swapped = self
            .store
            .record_compare_and_swap(KEY_SET_RECORD, Some(&loaded.raw), Some(raw.clone()), None, now_ms)
            .await?;
        Ok(if swapped { Some(self.replace(load(raw, &self.master)?)) } else { None })
    }

    /// Makes a new key current now. The old current key stays published until
    /// `now + overlap`. With `only_if_older_than_ms`, rotates only while the current
    /// key is at least that old (scheduled rotation: replicas racing rotate once).
    pub async fn rotate(
        &self,
        now_ms: u64,
        only_if_older_than_ms: Option<u64>,
    ) -> Result<Option<Rotation>, KeyRingError> {
        let fresh = &SigningKeyPair::generate(self.policy.algorithm, self.rng.as_ref())?;
        let sealed = &seal_key(fresh, now_ms, &self.master, self.rng.as_ref())?;
        retry_compare_and_swap(KeyRingError::Contended, || async move {
            let loaded = self.reload(now_ms).await?;
            let current_created = loaded.current().kid().to_owned();
            if let Some(min_age) = only_if_older_than_ms {
                let created = loaded
                    .stored
                    .keys
                    .iter()
                    .find(|k| k.status == KeyStatus::Current)
                    .map_or(0, |k| k.created_at_ms);
                if now_ms.saturating_sub(created) < min_age {
                    return Ok(CasRound::Done(None));
                }
            }
            let retires_at_ms = now_ms.saturating_add(self.policy.overlap_ms);
            let mut set = loaded.stored.clone();
            for key in &mut set.keys {
                if key.status == KeyStatus::Current {
                    key.status = KeyStatus::Previous;
                    key.retires_at_ms = Some(retires_at_ms);
                }
            }
            retire_expired(&mut set, now_ms);
            set.keys.insert(0, sealed.clone());
            set.version = loaded.version + 1;
            if self.swap(&loaded, &set, now_ms).await?.is_none() {
                return Ok(CasRound::Lost);
            }
            let version = set.version;
            tracing::info!(kid = fresh.kid(), previous = %current_created, version, "rotated the signing key");
            Ok(CasRound::Done(Some(Rotation {
                kid: fresh.kid().to_owned(),
                alg: fresh.alg(),
                previous_kid: Some(current_created),
                previous_retires_at: Some(retires_at_ms / 1000),
                key_set_version: version,
            })))
        })
        .await
    }

    /// Revokes keys at once: they leave the JWKS and lose their private part. When the
    /// current key is among them, a fresh key becomes current in the same write.
    /// Revoking a revoked key again changes nothing.
    pub async fn revoke(&self, which: KeySelection<'_>, now_ms: u64) -> Result<KeyRevocation, KeyRingError> {
        let fresh = &SigningKeyPair::generate(self.policy.algorithm, self.rng.as_ref())?;
        let sealed = &seal_key(fresh, now_ms, &self.master, self.rng.as_ref())?;
        retry_compare_and_swap(KeyRingError::Contended, || async move {
            let loaded = self.reload(now_ms).await?;
            let mut set = loaded.stored.clone();
            if let KeySelection::One(kid) = which {
                if !set.keys.iter().any(|k| k.kid == kid) {
                    return Err(KeyRingError::UnknownKey(kid.to_owned()));
                }
            }
            let mut revoked = Vec::new();
            let mut rotated = false;
            for key in &mut set.keys {
                let selected = match which {
                    KeySelection::One(kid) => key.kid == kid,
                    KeySelection::All => true,
                };
                if !selected || key.status == KeyStatus::Revoked {
                    continue;
                }
                rotated |= key.status == KeyStatus::Current;
                key.status = KeyStatus::Revoked;
                key.revoked_at_ms = Some(now_ms);
                key.retires_at_ms = None;
                key.nonce = None;
                key.sealed_key = None;
                revoked.push(key.kid.clone());
            }
            if revoked.is_empty() {
                return Ok(CasRound::Done(KeyRevocation {
                    revoked_kids: revoked,
                    current_kid: loaded.current().kid().to_owned(),
                    rotated: false,
                    key_set_version: loaded.version,
                }));
            }
            if rotated {
                set.keys.insert(0, sealed.clone());
            }
            retire_expired(&mut set, now_ms);
            set.version = loaded.version + 1;
            let Some(installed) = self.swap(&loaded, &set, now_ms).await? else {
                return Ok(CasRound::Lost);
            };
            tracing::warn!(revoked = ?revoked, rotated, version = set.version, "revoked signing keys");
            Ok(CasRound::Done(KeyRevocation {
                revoked_kids: revoked,
                current_kid: installed.current().kid().to_owned(),
                rotated,
                key_set_version: set.version,
            }))
        })
        .await
    }

    /// Marks previous keys whose overlap has ended as retired and drops their sealed
    /// private keys. Returns the new version when something changed.
    pub async fn retire_expired(&self, now_ms: u64) -> Result<Option<u64>, KeyRingError> {
        retry_compare_and_swap(KeyRingError::Contended, || async move {
            let loaded = self.reload(now_ms).await?;
            let mut set = loaded.stored.clone();
            if !retire_expired(&mut set, now_ms) {
                return Ok(CasRound::Done(None));
            }
            set.version = loaded.version + 1;
            if self.swap(&loaded, &set, now_ms).await?.is_none() {
                return Ok(CasRound::Lost);
            }
            tracing::info!(version = set.version, "retired signing keys past their overlap");
            Ok(CasRound::Done(Some(set.version)))
        })
        .await
    }
}

/// Retires previous keys past their overlap in `set`; returns whether any changed.
fn retire_expired(set: &mut StoredKeySet, now_ms: u64) -> bool {
    let mut changed = false;
    for key in &mut set.keys {
        if key.status == KeyStatus::Previous && !verifies(key, now_ms) {
            key.status = KeyStatus::Retired;
            key.nonce = None;
            key.sealed_key = None;
            changed = true;
        }
    }
    // History: the newest retired keys, and revoked keys while the feed must name them.
    let mut retired = 0;
    set.keys.retain(|k| match k.status {
        KeyStatus::Retired => {
            retired += 1;
            retired <= RETIRED_HISTORY
        }
        KeyStatus::Revoked => {
            k.revoked_at_ms.is_some_and(|at| now_ms < at.saturating_add(REVOKED_KEY_MEMORY_MS))
        }
        KeyStatus::Current | KeyStatus::Previous => true,
    });
    changed
}

/// Re-seals the stored key set under `master` when it is sealed under `previous` (the
/// master key is being replaced). Returns whether it re-sealed; a set that `master`
/// already opens is left alone, one neither opens is refused.
pub async fn reseal_key_set(
    store: &dyn Store,
    master: &MasterKey,
    previous: &MasterKey,
    rng: &dyn RandomSource,
    now_ms: u64,
) -> Result<bool, KeyRingError> {
    retry_compare_and_swap(KeyRingError::Contended, || async move {
        let Some(raw) = store.record_get(KEY_SET_RECORD, now_ms).await? else {
            return Ok(CasRound::Done(false));
        };
        match load(raw.clone(), master) {
            Ok(_) => return Ok(CasRound::Done(false)),
            Err(KeyRingError::WrongMasterKey { .. }) => {}
            Err(other) => return Err(other),
        }
        let mut set = load(raw.clone(), previous)?.stored;
        for key in &mut set.keys {
            if key.sealed_key.is_none() {
                continue;
            }
            let private = unseal_key(key, previous)?.private_bytes()?;
            let sealed = master.seal(&private, key.kid.as_bytes(), rng)?;
            key.nonce = Some(sealed.nonce_base64());
            key.sealed_key = Some(sealed.ciphertext_base64());
        }
        set.version += 1;
        let new = encode(&set)?;
        if !store.record_compare_and_swap(KEY_SET_RECORD, Some(&raw), Some(new), None, now_ms).await? {
            return Ok(CasRound::Lost);
        }
        tracing::warn!(version = set.version, "re-sealed the signing keys under the new master key");
        Ok(CasRound::Done(true))
    })
    .await
}

fn encode(set: &StoredKeySet) -> Result<Vec<u8>, KeyRingError> {
    serde_json::to_vec(set).map_err(|e| KeyRingError::Corrupt(format!("cannot encode the key set: {e}")))
}

fn seal_key(
    key: &SigningKeyPair,
    created_at_ms: u64,
    master: &MasterKey,
    rng: &dyn RandomSource,
) -> Result<StoredKey, KeyRingError> {
    let sealed = master.seal(&key.private_bytes()?, key.kid().as_bytes(), rng)?;
    Ok(StoredKey {
        kid: key.kid().to_owned(),
        alg: key.alg(),
        status: KeyStatus::Current,
        created_at_ms,
        retires_at_ms: None,
        revoked_at_ms: None,
        nonce: Some(sealed.nonce_base64()),
        sealed_key: Some(sealed.ciphertext_base64()),
        public: Some(key.public_jwk()),
    })
}

fn unseal_key(key: &StoredKey, master: &MasterKey) -> Result<SigningKeyPair, KeyRingError> {
    let (Some(nonce), Some(ciphertext)) = (&key.nonce, &key.sealed_key) else {
        return Err(KeyRingError::Corrupt(format!("key {} has no private key", key.kid)));
    };
    let sealed = Sealed::from_base64(nonce, ciphertext)
        .map_err(|_| KeyRingError::Corrupt(format!("key {} is not sealed properly", key.kid)))?;
    let bytes = master.open(&sealed, key.kid.as_bytes()).map_err(|e| match e {
        UnsealError::Authentication => KeyRingError::WrongMasterKey { kid: key.kid.clone() },
        UnsealError::Malformed => KeyRingError::Corrupt(format!("key {} is not sealed properly", key.kid)),
    })?;
    let pair = SigningKeyPair::from_private_bytes(key.alg, &bytes)?;
    if pair.kid() != key.kid {
        return Err(KeyRingError::Corrupt(format!("key id {} does not match its key", key.kid)));
    }
    Ok(pair)
}

fn load(raw: Vec<u8>, master: &MasterKey) -> Result<LoadedKeySet, KeyRingError> {
    let stored: StoredKeySet = serde_json::from_slice(&raw)
        .map_err(|e| KeyRingError::Corrupt(format!("not a key set record: {e}")))?;
    let current = stored
        .keys
        .iter()
        .find(|k| k.status == KeyStatus::Current)
        .ok_or_else(|| KeyRingError::Corrupt("the key set has no current key".into()))?;
    let current = Arc::new(unseal_key(current, master)?);
    // Previous keys are only published, never used to sign, but they must decrypt
    // too: a mismatch there means a mixed-up master key as well.
    for key in stored.keys.iter().filter(|k| k.status == KeyStatus::Previous) {
        unseal_key(key, master)?;
    }
    Ok(LoadedKeySet { version: stored.version, raw, stored, current })
}

/// The single unencrypted ES256 key of earlier versions, if there is one.
async fn import_legacy_key(
    store: &dyn Store,
    now_ms: u64,
) -> Result<Option<(SigningKeyPair, u64)>, KeyRingError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Legacy {
        alg: String,
        created_at_ms: u64,
        d: String,
    }
    let Some(raw) = store.record_get(LEGACY_KEY_RECORD, now_ms).await? else {
        return Ok(None);
    };
    let mut legacy: Legacy = serde_json::from_slice(&raw)
        .map_err(|e| KeyRingError::Corrupt(format!("not a legacy signing key record: {e}")))?;
    if legacy.alg != "ES256" {
        return Err(KeyRingError::Corrupt(format!("legacy key has algorithm {:?}", legacy.alg)));
    }
    use base64::Engine as _;
    let bytes = zeroize::Zeroizing::new(
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(legacy.d.as_bytes())
            .map_err(|_| KeyRingError::Corrupt("legacy private key is not base64url".into()))?,
    );
    zeroize::Zeroize::zeroize(&mut legacy.d);
    let pair = SigningKeyPair::from_private_bytes(SigningAlgorithm::Es256, &bytes)?;
    tracing::info!(
        kid = pair.kid(),
        "importing the unencrypted legacy signing key (it is sealed from now on)"
    );
    Ok(Some((pair, legacy.created_at_ms)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::random::SeededRandom;
    use crate::store::MemoryStore;

    fn policy() -> KeyPolicy {
        KeyPolicy { algorithm: SigningAlgorithm::Es256, overlap_ms: 10_000, rotate_every_ms: None }
    }

    async fn ring(store: Arc<dyn Store>, master: Arc<MasterKey>, seed: u64) -> Result<KeyRing, KeyRingError> {
        KeyRing::open(store, master, Arc::new(SeededRandom::new(seed)), policy(), 0).await
    }

    #[tokio::test]
    async fn replicas_agree_on_one_key_and_see_rotations_after_the_recheck_interval() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let master = Arc::new(MasterKey::generate(&SeededRandom::new(9)).unwrap());
        let a = ring(Arc::clone(&store), Arc::clone(&master), 1).await.unwrap();
        let b = ring(Arc::clone(&store), Arc::clone(&master), 2).await.unwrap();
        assert_eq!(a.current(0).await.current().kid(), b.current(0).await.current().kid());

        let rotation = a.rotate(500, None).await.unwrap().unwrap();
        assert_eq!(rotation.key_set_version, 2);
        assert_eq!(a.current(500).await.current().kid(), rotation.kid);
        assert_ne!(b.current(900).await.current().kid(), rotation.kid, "cached until the recheck");
        assert_eq!(b.current(1000).await.current().kid(), rotation.kid);
    }

    #[tokio::test]
    async fn scheduled_rotation_happens_once_per_period() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let master = Arc::new(MasterKey::generate(&SeededRandom::new(9)).unwrap());
        let a = ring(Arc::clone(&store), master, 1).await.unwrap();
        assert!(a.rotate(5_000, Some(10_000)).await.unwrap().is_none());
        assert!(a.rotate(10_000, Some(10_000)).await.unwrap().is_some());
        assert!(a.rotate(10_001, Some(10_000)).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn the_legacy_unencrypted_key_is_imported() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let legacy = SigningKeyPair::generate(SigningAlgorithm::Es256, &SeededRandom::new(4)).unwrap();
        use base64::Engine as _;
        let d = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(legacy.private_bytes().unwrap().as_slice());
        let record = serde_json::json!({"kid": legacy.kid(), "alg": "ES256", "createdAtMs": 7, "d": d});
        store.record_put(LEGACY_KEY_RECORD, serde_json::to_vec(&record).unwrap(), None, 0).await.unwrap();
        let master = Arc::new(MasterKey::generate(&SeededRandom::new(9)).unwrap());
        let ring = ring(Arc::clone(&store), master, 1).await.unwrap();
        assert_eq!(ring.current(0).await.current().kid(), legacy.kid());
        assert_eq!(store.record_get(LEGACY_KEY_RECORD, 0).await.unwrap(), None);
        let raw = store.record_get(KEY_SET_RECORD, 0).await.unwrap().unwrap();
        assert!(!String::from_utf8_lossy(&raw).contains(&d));
    }
}
