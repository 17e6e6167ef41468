//! Every Redis key the control plane uses is built here, by a [`KeySpace`].
//!
//! Layout: `<prefix>:{<kind>:<name>}[:<part>]`, the prefix `portcullis` unless
//! configured (several deployments can share one Redis, or one Redis Cluster, which
//! has no numbered databases). The part in braces is the Redis Cluster hash tag: all
//! keys of one primitive instance (a feed's metadata and its entries, say) share it,
//! so each Lua script only touches keys in one slot, while different instances spread
//! over the cluster. Names are escaped (`%`, `{`, `}` percent-encoded) so a name can
//! never end the hash tag early or make two different names share a key; the prefix
//! may not contain braces at all, so the first `{` of every key opens the tag.

/// The prefix of every key unless another is configured.
pub const DEFAULT_PREFIX: &str = "portcullis";

/// Longest key prefix accepted.
pub const MAX_PREFIX_LEN: usize = 64;

fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        match c {
            '%' => out.push_str("%25"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
    out
}

/// Builds the keys of one deployment: every key starts with its prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpace {
    prefix: String,
}

impl Default for KeySpace {
    fn default() -> Self {
        Self { prefix: DEFAULT_PREFIX.to_owned() }
    }
}

impl KeySpace {
    /// A key space under `prefix`: 1 to [`MAX_PREFIX_LEN`] printable ASCII
    /// characters, no braces (they would move the hash tag), no spaces.
    pub fn new(prefix: &str) -> Result<Self, String> {
        if prefix.is_empty() || prefix.len() > MAX_PREFIX_LEN {
            return Err(format!("the Redis key prefix must be 1 to {MAX_PREFIX_LEN} characters"));
        }
        if let Some(c) = prefix.chars().find(|c| !c.is_ascii_graphic() || matches!(c, '{' | '}')) {
            return Err(format!(
                "the Redis key prefix may only hold printable ASCII without braces, not {c:?}"
            ));
        }
        Ok(Self { prefix: prefix.to_owned() })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn key(&self, kind: &str, name: &str, part: Option<&str>) -> String {
        let tagged = format!("{}:{{{kind}:{}}}", self.prefix, escape(name));
        match part {
            Some(part) => format!("{tagged}:{part}"),
            None => tagged,
        }
    }

    /// Hash `{v: value, x: window expiry ms}`.
    pub fn counter(&self, name: &str) -> String {
        self.key("counter", name, None)
    }

    /// String set with `NX PX`: a one-time claim.
    pub fn claim(&self, name: &str) -> String {
        self.key("claim", name, None)
    }

    /// Sorted set, member -> expiry ms as score.
    pub fn set(&self, name: &str) -> String {
        self.key("set", name, None)
    }

    /// Hash `{v: value, x: expiry ms (absent: never)}`.
    pub fn record(&self, name: &str) -> String {
        self.key("record", name, None)
    }

    /// Hash `{seq: newest cursor, trimmed: newest trimmed-away cursor}`.
    pub fn feed_meta(&self, name: &str) -> String {
        self.key("feed", name, Some("meta"))
    }

    /// Hash cursor -> 8-byte big-endian append time followed by the entry.
    pub fn feed_entries(&self, name: &str) -> String {
        self.key("feed", name, Some("entries"))
    }

    /// String: the last sequence number.
    pub fn log_seq(&self, name: &str) -> String {
        self.key("log", name, Some("seq"))
    }

    /// Hash seq -> entry.
    pub fn log_entries(&self, name: &str) -> String {
        self.key("log", name, Some("entries"))
    }

    /// String: the last sequence number trimmed away (absent: none).
    pub fn log_trimmed(&self, name: &str) -> String {
        self.key("log", name, Some("trimmed"))
    }

    /// Sorted set: a work queue's pending entries, id -> due time ms. A queue's keys
    /// share one hash tag: claims and settles move entries between them atomically.
    pub fn queue_pending(&self, name: &str) -> String {
        self.key("queue", name, Some("pending"))
    }

    /// Sorted set: a work queue's dead letters, id -> when given up on (ms).
    pub fn queue_dead(&self, name: &str) -> String {
        self.key("queue", name, Some("dead"))
    }

    /// Hash: a work queue's entries of both lanes, id -> data.
    pub fn queue_data(&self, name: &str) -> String {
        self.key("queue", name, Some("data"))
    }

    /// String: a rate-limit counter's TAT in µs (absent: a full bucket). One key per
    /// counter, so the whole counter is its own hash tag.
    pub fn rate_limit(&self, name: &str) -> String {
        self.key("ratelimit", name, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hash tag as Redis Cluster computes it: between the first `{` and the next `}`.
    fn hash_tag(key: &str) -> &str {
        let open = key.find('{').map_or(0, |i| i + 1);
        let close = key[open..].find('}').map_or(key.len(), |i| open + i);
        &key[open..close]
    }

    #[test]
    fn keys_of_one_feed_share_a_hash_tag() {
        let keys = KeySpace::default();
        assert_eq!(hash_tag(&keys.feed_meta("revocations")), "feed:revocations");
        assert_eq!(hash_tag(&keys.feed_meta("revocations")), hash_tag(&keys.feed_entries("revocations")));
        assert_eq!(hash_tag(&keys.log_seq("audit")), hash_tag(&keys.log_entries("audit")));
        assert_eq!(hash_tag(&keys.log_seq("audit")), hash_tag(&keys.log_trimmed("audit")));
        assert_eq!(hash_tag(&keys.queue_pending("webhooks")), "queue:webhooks");
        assert_eq!(hash_tag(&keys.queue_pending("webhooks")), hash_tag(&keys.queue_dead("webhooks")));
        assert_eq!(hash_tag(&keys.queue_pending("webhooks")), hash_tag(&keys.queue_data("webhooks")));
    }

    #[test]
    fn braces_in_names_cannot_end_the_hash_tag_early() {
        let keys = KeySpace::default();
        let meta = keys.feed_meta("a}b{c");
        assert_eq!(meta, "portcullis:{feed:a%7Db%7Bc}:meta");
        assert_eq!(hash_tag(&meta), hash_tag(&keys.feed_entries("a}b{c")));
        assert_ne!(keys.record("a}"), keys.record("a%7D"));
    }

    #[test]
    fn kinds_have_separate_namespaces() {
        let keys = KeySpace::default();
        assert_ne!(keys.counter("x"), keys.record("x"));
        assert_ne!(keys.set("x"), keys.record("x"));
        assert_ne!(keys.rate_limit("x"), keys.counter("x"));
        assert_eq!(keys.rate_limit("ab12"), "portcullis:{ratelimit:ab12}");
    }

    #[test]
    fn a_prefix_separates_deployments_and_keeps_the_hash_tag() {
        let staging = KeySpace::new("staging:portcullis").unwrap();
        assert_eq!(staging.feed_meta("revocations"), "staging:portcullis:{feed:revocations}:meta");
        assert_eq!(hash_tag(&staging.feed_meta("x")), hash_tag(&KeySpace::default().feed_meta("x")));
        assert_ne!(staging.record("x"), KeySpace::default().record("x"));
    }

    #[test]
    fn prefixes_that_would_move_the_hash_tag_or_are_unprintable_are_refused() {
        for bad in ["", "a{b", "a}b", "with space", "tab\t", "é", &"p".repeat(MAX_PREFIX_LEN + 1)] {
            assert!(KeySpace::new(bad).is_err(), "{bad:?}");
        }
        assert!(KeySpace::new("tenant-a.prod_1:x").is_ok());
    }
}
