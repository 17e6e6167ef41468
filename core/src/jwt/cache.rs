//! A bounded LRU cache of verified tokens, so a client repeating the same token does not
//! pay for signature verification on every request.
//!
//! Keys are SHA-256(provider name, 0x00, token): the cache never holds the token itself.
//! An entry expires at min(token `exp`, insertion time + `max_ttl_secs`) and is never
//! returned after that. Claims that can change independently of the token (token
//! versions, revocations) must still be checked on every hit. When a key is revoked,
//! [`VerifiedTokenCache::remove_where`] drops the tokens it signed; otherwise
//! `max_ttl_secs` bounds how long a removed key's tokens live.
//!
//! The LRU list is a doubly-linked list threaded through a slab, so `get` and `insert` are
//! O(1) apart from hashing.

use std::collections::HashMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::token::VerifiedToken;

type CacheKey = [u8; 32];

const NIL: usize = usize::MAX;

struct Node {
    key: CacheKey,
    token: Arc<VerifiedToken>,
    expires_at: u64,
    prev: usize,
    next: usize,
}

/// Bounded LRU of verified tokens.
pub struct VerifiedTokenCache {
    capacity: usize,
    map: HashMap<CacheKey, usize>,
    nodes: Vec<Node>,
    /// Slots in `nodes` freed by expiry, reused before growing.
    free: Vec<usize>,
    /// Most recently used.
    head: usize,
    /// Least recently used.
    tail: usize,
}

impl std::fmt::Debug for VerifiedTokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedTokenCache")
            .field("capacity", &self.capacity)
            .field("len", &self.map.len())
            .finish()
    }
}

fn cache_key(provider: &str, token: &str) -> CacheKey {
    let mut h = Sha256::new();
    h.update(provider.as_bytes());
    h.update([0u8]);
    h.update(token.as_bytes());
    h.finalize().into()
}

impl VerifiedTokenCache {
    /// A cache holding at most `capacity` tokens (0 disables caching).
    pub fn new(capacity: usize) -> Self {
        Self { capacity, map: HashMap::new(), nodes: Vec::new(), free: Vec::new(), head: NIL, tail: NIL }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn clear(&mut self) {
        self.map.clear();
        self.nodes.clear();
        self.free.clear();
        self.head = NIL;
        self.tail = NIL;
    }

    /// The cached token, unless absent or expired at `now` (expired entries are dropped).
    pub fn get(&mut self, provider: &str, token: &str, now: u64) -> Option<Arc<VerifiedToken>> {
        let key = cache_key(provider, token);
        let idx = *self.map.get(&key)?;
        let node = self.nodes.get(idx)?;
        if now >= node.expires_at {
            self.remove(idx);
            return None;
        }
        let token = Arc::clone(&node.token);
        self.unlink(idx);
        self.push_front(idx);
        Some(token)
    }

    /// Caches a verified token and returns the shared copy. Tokens already expired at
    /// `now` (or with a zero TTL) are returned without being cached.
    pub fn insert(
        &mut self,
        provider: &str,
        token: &str,
        verified: VerifiedToken,
        now: u64,
        max_ttl_secs: u64,
    ) -> Arc<VerifiedToken> {
        let ttl_end = now.saturating_add(max_ttl_secs);
        let expires_at = verified.expires_at.map_or(ttl_end, |exp| exp.min(ttl_end));
        let shared = Arc::new(verified);
        if self.capacity == 0 || expires_at <= now {
            return shared;
        }
        let key = cache_key(provider, token);
        if let Some(&idx) = self.map.get(&key) {
            if let Some(node) = self.nodes.get_mut(idx) {
                node.token = Arc::clone(&shared);
                node.expires_at = expires_at;
            }
            self.unlink(idx);
            self.push_front(idx);
            return shared;
        }
        if self.map.len() >= self.capacity {
            let lru = self.tail;
            self.remove(lru);
        }
        let node = Node { key, token: Arc::clone(&shared), expires_at, prev: NIL, next: NIL };
        let idx = match self.free.pop() {
            Some(idx) => match self.nodes.get_mut(idx) {
                Some(slot) => {
                    *slot = node;
                    idx
                }
                None => return shared,
            },
            None => {
                self.nodes.push(node);
                self.nodes.len().saturating_sub(1)
            }
        };
        self.map.insert(key, idx);
        self.push_front(idx);
        shared
    }

    /// Drops every cached token for which `doomed` is true (e.g. signed by a revoked
    /// key); returns how many were dropped.
    pub fn remove_where(&mut self, doomed: impl Fn(&VerifiedToken) -> bool) -> usize {
        let indices: Vec<usize> = self
            .map
            .values()
            .copied()
            .filter(|&idx| self.nodes.get(idx).is_some_and(|node| doomed(&node.token)))
            .collect();
        for &idx in &indices {
            self.remove(idx);
        }
        indices.len()
    }

    fn remove(&mut self, idx: usize) {
        let Some(key) = self.nodes.get(idx).map(|n| n.key) else {
            return;
        };
        self.unlink(idx);
        self.map.remove(&key);
        self.free.push(idx);
    }

    fn unlink(&mut self, idx: usize) {
        let Some((prev, next)) = self.nodes.get(idx).map(|n| (n.prev, n.next)) else {
            return;
        };
        match self.nodes.get_mut(prev) {
            Some(p) => p.next = next,
            None => self.head = next,
        }
        match self.nodes.get_mut(next) {
            Some(n) => n.prev = prev,
            None => self.tail = prev,
        }
        if let Some(node) = self.nodes.get_mut(idx) {
            node.prev = NIL;
            node.next = NIL;
        }
    }

    fn push_front(&mut self, idx: usize) {
        let old_head = self.head;
        if let Some(node) = self.nodes.get_mut(idx) {
            node.prev = NIL;
            node.next = old_head;
        }
        match self.nodes.get_mut(old_head) {
            Some(h) => h.prev = idx,
            None => self.tail = idx,
        }
        self.head = idx;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::alg::Algorithm;

    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn token(exp: Option<u64>, sub: &str) -> VerifiedToken {
        VerifiedToken {
            alg: Algorithm::ES256,
            kid: None,
            claims: serde_json::Map::new(),
            expires_at: exp,
            subject: Some(sub.to_owned()),
            payload_b64: String::new(),
        }
    }

    #[test]
    fn cached_token_is_returned_until_its_exp() {
        let mut c = VerifiedTokenCache::new(4);
        c.insert("p", "t", token(Some(1100), "a"), 1000, 3600);
        assert_eq!(c.get("p", "t", 1099).and_then(|t| t.subject.clone()).as_deref(), Some("a"));
        assert!(c.get("p", "t", 1100).is_none());
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn max_ttl_caps_cache_lifetime_below_exp() {
        let mut c = VerifiedTokenCache::new(4);
        c.insert("p", "t", token(Some(5000), "a"), 1000, 60);
        assert!(c.get("p", "t", 1059).is_some());
        assert!(c.get("p", "t", 1060).is_none());
    }

    #[test]
    fn token_without_exp_lives_max_ttl() {
        let mut c = VerifiedTokenCache::new(4);
        c.insert("p", "t", token(None, "a"), 1000, 10);
        assert!(c.get("p", "t", 1009).is_some());
        assert!(c.get("p", "t", 1010).is_none());
    }

    #[test]
    fn already_expired_or_zero_ttl_tokens_are_not_cached() {
        let mut c = VerifiedTokenCache::new(4);
        c.insert("p", "t", token(Some(900), "a"), 1000, 60);
        c.insert("p", "u", token(Some(2000), "a"), 1000, 0);
        assert!(c.is_empty());
    }

    #[test]
    fn entries_are_per_provider() {
        let mut c = VerifiedTokenCache::new(4);
        c.insert("p1", "t", token(Some(2000), "a"), 1000, 60);
        assert!(c.get("p2", "t", 1001).is_none());
        // The 0x00 separator keeps ("p", "1t") and ("p1", "t") apart.
        assert!(c.get("p", "1t", 1001).is_none());
        assert!(c.get("p1", "t", 1001).is_some());
    }

    #[test]
    fn least_recently_used_entry_is_evicted_at_capacity() {
        let mut c = VerifiedTokenCache::new(2);
        c.insert("p", "a", token(Some(2000), "a"), 1000, 600);
        c.insert("p", "b", token(Some(2000), "b"), 1000, 600);
        assert!(c.get("p", "a", 1001).is_some()); // b is now the LRU
        c.insert("p", "c", token(Some(2000), "c"), 1001, 600);
        assert_eq!(c.len(), 2);
        assert!(c.get("p", "b", 1002).is_none());
        assert!(c.get("p", "a", 1002).is_some());
        assert!(c.get("p", "c", 1002).is_some());
    }

    #[test]
    fn reinserting_refreshes_and_slots_are_reused() {
        let mut c = VerifiedTokenCache::new(3);
        for round in 0..50u64 {
            let now = 1000 + round;
            for t in ["a", "b", "c", "d"] {
                c.insert("p", t, token(Some(now + 5), t), now, 600);
            }
            assert_eq!(c.len(), 3);
            assert!(c.nodes.len() <= 3);
        }
        c.clear();
        assert!(c.is_empty());
        assert!(c.get("p", "d", 1000).is_none());
    }

    #[test]
    fn tokens_of_a_revoked_key_are_removed_and_the_rest_stay_usable() {
        let mut c = VerifiedTokenCache::new(4);
        let signed_by =
            |kid: &str, sub: &str| VerifiedToken { kid: Some(kid.into()), ..token(Some(2000), sub) };
        c.insert("p", "a", signed_by("old", "a"), 1000, 600);
        c.insert("p", "b", signed_by("new", "b"), 1000, 600);
        c.insert("p", "c", signed_by("old", "c"), 1000, 600);
        assert_eq!(c.remove_where(|t| t.kid.as_deref() == Some("old")), 2);
        assert_eq!(c.len(), 1);
        assert!(c.get("p", "a", 1001).is_none() && c.get("p", "c", 1001).is_none());
        assert!(c.get("p", "b", 1001).is_some());
        // Freed slots are reused and the LRU order still holds.
        for t in ["d", "e", "f"] {
            c.insert("p", t, signed_by("new", t), 1001, 600);
        }
        assert_eq!(c.len(), 4);
        assert!(c.nodes.len() <= 4);
        c.insert("p", "g", signed_by("new", "g"), 1002, 600);
        assert!(c.get("p", "b", 1002).is_none(), "b was the least recently used");
    }

    #[test]
    fn zero_capacity_never_caches() {
        let mut c = VerifiedTokenCache::new(0);
        let t = c.insert("p", "a", token(Some(2000), "a"), 1000, 600);
        assert_eq!(t.subject.as_deref(), Some("a"));
        assert!(c.get("p", "a", 1000).is_none());
    }
}
