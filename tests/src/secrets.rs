//! Where secrets must not be: every file of a data directory and every Redis key and
//! value, scanned for a secret, with a marker the scan must see (so a scan that reads
//! nothing does not pass).

use std::path::Path;

use crate::Redis;

/// Every file under `dir`, byte by byte: `secret` in none, `marker` in some.
pub fn assert_absent_from_files(dir: &Path, secret: &[u8], marker: &[u8]) {
    let (mut files, mut seen) = (0, false);
    let mut pending = vec![dir.to_path_buf()];
    while let Some(path) = pending.pop() {
        if path.is_dir() {
            pending.extend(std::fs::read_dir(&path).expect("read dir").map(|e| e.expect("entry").path()));
            continue;
        }
        let bytes = std::fs::read(&path).expect("read file");
        files += 1;
        seen |= bytes.windows(marker.len()).any(|w| w == marker);
        assert!(!bytes.windows(secret.len()).any(|w| w == secret), "the secret is in {}", path.display());
    }
    assert!(files > 0 && seen, "the scan sees the marker ({files} files)");
}

/// Every key and value of `redis`: `secret` in none, `marker` in some.
pub fn assert_absent_from_redis(redis: &Redis, secret: &str, marker: &str) {
    let cli = |args: &[&str]| {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &redis.port.to_string(), "--raw"])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let mut everything = String::new();
    for key in cli(&["KEYS", "*"]).lines() {
        everything.push_str(key);
        let values = match cli(&["TYPE", key]).trim() {
            "string" => cli(&["GET", key]),
            "hash" => cli(&["HGETALL", key]),
            "set" => cli(&["SMEMBERS", key]),
            "zset" => cli(&["ZRANGE", key, "0", "-1"]),
            "list" => cli(&["LRANGE", key, "0", "-1"]),
            "stream" => cli(&["XRANGE", key, "-", "+"]),
            other => panic!("unexpected Redis type {other}"),
        };
        everything.push_str(&values);
    }
    assert!(everything.contains(marker), "the scan sees the marker");
    assert!(!everything.contains(secret), "the secret is in Redis");
}
