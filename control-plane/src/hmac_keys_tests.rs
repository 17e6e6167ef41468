use super::*;
use crate::master_key::MASTER_KEY_LEN;
use crate::random::SeededRandom;
use crate::store::{EmbeddedStore, MemoryStore};
use portcullis_core::signature::key_set::KeySet as WireKeySet;

const NOW_MS: u64 = 1_700_000_000_000;

fn seal() -> SecretSeal {
    SecretSeal::derive(&MasterKey::from_bytes([7; MASTER_KEY_LEN]))
}

fn create_request(id: &str, format: SecretFormat) -> CreateHmacKey {
    CreateHmacKey { id: id.into(), owner: Some("acme".into()), format }
}

/// Create, rotate, revoke and the served set, on one backend.
async fn lifecycle(store: &dyn Store) {
    let (seal, rng) = (seal(), SeededRandom::new(1));
    let created =
        create(store, &seal, &rng, &create_request("partner-a", SecretFormat::Base64), NOW_MS).await.unwrap();
    assert!(STANDARD.decode(&created.secret).unwrap().len() >= 32);
    assert!(!format!("{created:?}").contains(&created.secret), "Debug leaves the secret out");
    let hooks =
        create(store, &seal, &rng, &create_request("hooks", SecretFormat::Whsec), NOW_MS).await.unwrap();
    let raw = hooks.secret.strip_prefix("whsec_").unwrap();
    assert!(STANDARD.decode(raw).unwrap().len() >= 24);

    // Nothing stored holds a secret in clear.
    let stored = store.record_get(RECORD, NOW_MS).await.unwrap().unwrap();
    let text = String::from_utf8(stored).unwrap();
    assert!(!text.contains(&created.secret) && !text.contains(raw));

    let again = create(store, &seal, &rng, &create_request("partner-a", SecretFormat::Base64), NOW_MS).await;
    assert!(matches!(again, Err(HmacKeyError::Conflict(_))));
    let bad = create(store, &seal, &rng, &create_request("no spaces", SecretFormat::Base64), NOW_MS).await;
    assert!(matches!(bad, Err(HmacKeyError::InvalidRequest(_))));

    let set = key_set(store, &seal, NOW_MS).await.unwrap();
    let version = set.version;
    let a = set.keys.iter().find(|k| k.id == "partner-a").unwrap();
    assert_eq!(a.secrets[0].secret, created.secret);

    // Rotation: both verify until the overlap ends, only the new one after.
    let rotate_request = RotateHmacKey { overlap_seconds: Some(2) };
    let rotated = rotate(store, &seal, &rng, "partner-a", &rotate_request, NOW_MS).await.unwrap();
    assert_ne!(rotated.secret, created.secret);
    let set = key_set(store, &seal, NOW_MS).await.unwrap();
    assert!(set.version > version);
    let a = set.keys.iter().find(|k| k.id == "partner-a").unwrap();
    assert_eq!(a.secrets.len(), 2);
    assert_eq!(a.secrets[0].not_after, Some(NOW_MS / 1000 + 2));
    assert_eq!(a.secrets[1].not_after, None);
    let later = key_set(store, &seal, NOW_MS + 3_000).await.unwrap();
    let a = later.keys.iter().find(|k| k.id == "partner-a").unwrap();
    assert_eq!(a.secrets.len(), 1);
    assert_eq!(a.secrets[0].secret, rotated.secret);
    // The served document is what the filter compiles.
    let (_, ring) = WireKeySet::compile(&serde_json::to_vec(&later).unwrap()).unwrap();
    assert_eq!(ring.keys.len(), 2);

    // The listing never shows a secret.
    let listed = serde_json::to_string(&list(store, NOW_MS).await.unwrap()).unwrap();
    assert!(!listed.contains(&rotated.secret) && !listed.contains(&created.secret));

    // Revocation: gone from the set at once, idempotent, not rotatable.
    let (info, changed) = revoke(store, "partner-a", NOW_MS).await.unwrap();
    assert!(changed && info.status == "revoked" && info.secrets.is_empty());
    assert!(!revoke(store, "partner-a", NOW_MS).await.unwrap().1);
    let set = key_set(store, &seal, NOW_MS).await.unwrap();
    assert!(set.keys.iter().all(|k| k.id != "partner-a"));
    let rotate_revoked = rotate(store, &seal, &rng, "partner-a", &rotate_request, NOW_MS).await;
    assert!(matches!(rotate_revoked, Err(HmacKeyError::Conflict(_))));
    assert!(matches!(revoke(store, "nobody", NOW_MS).await, Err(HmacKeyError::NotFound(_))));
}

#[tokio::test]
async fn lifecycle_on_the_memory_store() {
    lifecycle(&MemoryStore::new()).await;
}

#[tokio::test]
async fn lifecycle_on_the_embedded_store_keeps_no_secret_in_clear_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let secret = {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        lifecycle(&store).await;
        let (seal, rng) = (seal(), SeededRandom::new(9));
        create(&store, &seal, &rng, &create_request("disk", SecretFormat::Base64), NOW_MS)
            .await
            .unwrap()
            .secret
    };
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()));
    }
}

#[tokio::test]
async fn rotation_is_bounded_and_sealed_secrets_are_bound_to_their_key_and_master_key() {
    let store = MemoryStore::new();
    let (seal, rng) = (seal(), SeededRandom::new(2));
    create(&store, &seal, &rng, &create_request("k", SecretFormat::Base64), NOW_MS).await.unwrap();
    let request = RotateHmacKey { overlap_seconds: Some(60) };
    for _ in 1..MAX_SECRETS_PER_KEY {
        rotate(&store, &seal, &rng, "k", &request, NOW_MS).await.unwrap();
    }
    assert!(matches!(
        rotate(&store, &seal, &rng, "k", &request, NOW_MS).await,
        Err(HmacKeyError::Conflict(_))
    ));
    // Once the overlaps end, old secrets are dropped and rotation works again.
    rotate(&store, &seal, &rng, "k", &request, NOW_MS + 61_000).await.unwrap();
    let too_long = RotateHmacKey { overlap_seconds: Some(MAX_OVERLAP_SECONDS + 1) };
    assert!(matches!(
        rotate(&store, &seal, &rng, "k", &too_long, NOW_MS).await,
        Err(HmacKeyError::InvalidRequest(_))
    ));

    let other = SecretSeal::derive(&MasterKey::from_bytes([8; MASTER_KEY_LEN]));
    assert!(matches!(key_set(&store, &other, NOW_MS).await, Err(HmacKeyError::Sealing(_))));
    let (_, mut keys) = read(&store, NOW_MS).await.unwrap();
    let moved = keys.keys[0].secrets[0].clone();
    assert!(seal.open("k", &moved).is_ok());
    assert!(seal.open("another-id", &moved).is_err());
    keys.keys[0].id = "renamed".into();
    assert!(seal.open(&keys.keys[0].id, &moved).is_err());
}

#[tokio::test]
async fn replay_ids_are_claimed_once_within_their_window_and_bounded() {
    let store = MemoryStore::new();
    let id = "ab".repeat(32);
    let claim = |until: u64| ReplayClaim { id: id.clone(), until };
    let now = NOW_MS / 1000;
    assert!(claim_replay(&store, &claim(now + 300), NOW_MS).await.unwrap());
    assert!(!claim_replay(&store, &claim(now + 300), NOW_MS + 299_000).await.unwrap(), "a replay");
    assert!(claim_replay(&store, &claim(now + 600), NOW_MS + 300_000).await.unwrap(), "its window ended");
    // A window already over (clock skew) is still remembered for a second.
    let other = ReplayClaim { id: "cd".repeat(32), until: now - 10 };
    assert!(claim_replay(&store, &other, NOW_MS).await.unwrap());
    assert!(!claim_replay(&store, &other, NOW_MS + 999).await.unwrap());
    // A window far ahead is cut to two days.
    let far = ReplayClaim { id: "ef".repeat(32), until: u64::MAX };
    assert!(claim_replay(&store, &far, NOW_MS).await.unwrap());
    assert!(claim_replay(&store, &far, NOW_MS + MAX_REPLAY_WINDOW_MS).await.unwrap());
    for bad in ["", "AB".repeat(32).as_str(), "ab".repeat(33).as_str(), "zz".repeat(32).as_str()] {
        let refused = claim_replay(&store, &ReplayClaim { id: bad.to_owned(), until: now }, NOW_MS).await;
        assert!(matches!(refused, Err(HmacKeyError::InvalidRequest(_))), "{bad}");
    }
}
