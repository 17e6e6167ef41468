//! Every Redis key the control plane uses is built here.
//!
//! Layout: `portcullis:{<kind>:<name>}[:<part>]`. The part in braces is the Redis
//! Cluster hash tag: all keys of one primitive instance (a feed's metadata and its
//! entries, say) share it, so each Lua script only touches keys in one slot.
//! Names are escaped (`%`, `{`, `}` percent-encoded) so a name can never end the hash
//! tag early or make two different names share a key.

const PREFIX: &str = "portcullis";

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

fn key(kind: &str, name: &str, part: Option<&str>) -> String {
    let tagged = format!("{PREFIX}:{{{kind}:{}}}", escape(name));
    match part {
        Some(part) => format!("{tagged}:{part}"),
        None => tagged,
    }
}

/// Hash `{v: value, x: window expiry ms}`.
pub fn counter(name: &str) -> String {
    key("counter", name, None)
}

/// Sorted set, member -> expiry ms as score.
pub fn set(name: &str) -> String {
    key("set", name, None)
}

/// Hash `{v: value, x: expiry ms (absent: never)}`.
pub fn record(name: &str) -> String {
    key("record", name, None)
}

/// Hash `{seq: newest cursor, trimmed: newest trimmed-away cursor}`.
pub fn feed_meta(name: &str) -> String {
    key("feed", name, Some("meta"))
}

/// Hash cursor -> 8-byte big-endian append time followed by the entry.
pub fn feed_entries(name: &str) -> String {
    key("feed", name, Some("entries"))
}

/// String: the last sequence number.
pub fn log_seq(name: &str) -> String {
    key("log", name, Some("seq"))
}

/// Hash seq -> entry.
pub fn log_entries(name: &str) -> String {
    key("log", name, Some("entries"))
}

/// Sorted set: a work queue's pending entries, id -> due time ms.
pub fn queue_pending(name: &str) -> String {
    key("queue", name, Some("pending"))
}

/// Sorted set: a work queue's dead letters, id -> when given up on (ms).
pub fn queue_dead(name: &str) -> String {
    key("queue", name, Some("dead"))
}

/// Hash: a work queue's entries of both lanes, id -> data.
pub fn queue_data(name: &str) -> String {
    key("queue", name, Some("data"))
}

/// String: a rate-limit counter's TAT in µs (absent: a full bucket). One key per
/// counter, so the whole counter is its own hash tag.
pub fn rate_limit(name: &str) -> String {
    key("ratelimit", name, None)
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
        assert_eq!(hash_tag(&feed_meta("revocations")), "feed:revocations");
        assert_eq!(hash_tag(&feed_meta("revocations")), hash_tag(&feed_entries("revocations")));
        assert_eq!(hash_tag(&log_seq("audit")), hash_tag(&log_entries("audit")));
        assert_eq!(hash_tag(&queue_pending("webhooks")), "queue:webhooks");
        assert_eq!(hash_tag(&queue_pending("webhooks")), hash_tag(&queue_dead("webhooks")));
        assert_eq!(hash_tag(&queue_pending("webhooks")), hash_tag(&queue_data("webhooks")));
    }

    #[test]
    fn braces_in_names_cannot_end_the_hash_tag_early() {
        let meta = feed_meta("a}b{c");
        assert_eq!(meta, "portcullis:{feed:a%7Db%7Bc}:meta");
        assert_eq!(hash_tag(&meta), hash_tag(&feed_entries("a}b{c")));
        assert_ne!(record("a}"), record("a%7D"));
    }

    #[test]
    fn kinds_have_separate_namespaces() {
        assert_ne!(counter("x"), record("x"));
        assert_ne!(set("x"), record("x"));
        assert_ne!(rate_limit("x"), counter("x"));
        assert_eq!(rate_limit("ab12"), "portcullis:{ratelimit:ab12}");
    }
}
