//! README's "The control plane" snippet runs as written, with each store: the shell block
//! is taken from README.md and run by bash in an empty directory, with the built
//! binaries on `PATH`. Substituted, and only these: the server's two listeners and the
//! CLI's URLs (`PORTCULLIS_ADMIN_LISTEN`/`PORTCULLIS_URL` and
//! `PORTCULLIS_INTERNAL_LISTEN`/`PORTCULLIS_INTERNAL_URL` on free ports instead of 9090
//! and 9091), the Redis URL
//! (a redis-server started by the test), and, for the embedded store, the commented-out
//! alternative server line in place of the Redis one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::process::Stdio;

use support::{command, free_ports, RedisServer, CLI};

const SNIPPET_REDIS_URL: &str = "redis://127.0.0.1:6379/";

/// The first ```sh block of README's "The control plane" section.
fn snippet() -> String {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).unwrap();
    let section =
        readme.split("\n## The control plane\n").nth(1).expect("README has no control-plane section");
    let block = section.split("```sh\n").nth(1).expect("no sh block in the control-plane section");
    block.split("\n```").next().unwrap().to_owned()
}

/// Runs the snippet and returns its stdout; panics with its output when it fails.
fn run(script: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let ports = free_ports(2);
    let (admin, internal) = (ports[0], ports[1]);
    let bin_dir = Path::new(CLI).parent().unwrap();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    // Fail on the first failing command, and stop the server the snippet leaves running.
    let script = format!("set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null; wait' EXIT\n{script}\n");
    let output = command("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(dir.path())
        .env("PATH", path)
        .env("PORTCULLIS_ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
        .env("PORTCULLIS_URL", format!("http://127.0.0.1:{admin}"))
        .env("PORTCULLIS_INTERNAL_LISTEN", format!("127.0.0.1:{internal}"))
        .env("PORTCULLIS_INTERNAL_URL", format!("http://127.0.0.1:{internal}"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "the README snippet failed ({}):\n{script}\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The snippet printed a token (three base64url parts), an API token and a status naming
/// `store`.
fn assert_token_and_status(stdout: &str, store: &str) {
    let token =
        stdout.lines().find(|l| l.starts_with("eyJ")).unwrap_or_else(|| panic!("no token in:\n{stdout}"));
    assert_eq!(token.split('.').count(), 3, "{token}");
    let api_token = stdout
        .lines()
        .find(|l| l.starts_with("pct_"))
        .unwrap_or_else(|| panic!("no API token in:\n{stdout}"));
    assert!(portcullis_core::api_token::parse(api_token, "pct").is_ok(), "{api_token}");
    let status: serde_json::Value = serde_json::from_str(&stdout[stdout.find('{').unwrap()..]).unwrap();
    assert_eq!(status["store"], store, "{stdout}");
    assert_eq!(status["ready"], true, "{stdout}");
}

#[test]
fn readme_control_plane_snippet_runs_as_written_on_redis() {
    let redis = RedisServer::start();
    let script = snippet();
    assert!(script.contains(SNIPPET_REDIS_URL), "the snippet no longer uses {SNIPPET_REDIS_URL}:\n{script}");
    let stdout = run(&script.replace(SNIPPET_REDIS_URL, &redis.url(0)));
    assert_token_and_status(&stdout, "redis");
}

#[test]
fn readme_control_plane_snippet_runs_as_written_on_the_embedded_store() {
    let script = snippet();
    let redis_line =
        script.lines().find(|l| l.starts_with("portcullis-control-plane --store redis")).unwrap();
    let embedded_line = script
        .lines()
        .find(|l| l.starts_with("# portcullis-control-plane --store embedded"))
        .expect("the snippet shows the embedded store as a commented-out alternative");
    let script =
        script.replace(redis_line, "").replace(embedded_line, embedded_line.trim_start_matches("# "));
    let stdout = run(&script);
    assert_token_and_status(&stdout, "embedded");
}
