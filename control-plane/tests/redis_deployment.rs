//! The server binary on Redis as production runs it, driven through the CLI: over TLS
//! (`rediss://`, a CA made by the test, client certificates) and on a Redis Cluster of
//! three primaries speaking TLS; and the startup errors of misconfigured Redis and TLS
//! flags. (The store suites run on a plain cluster and a TLS server: see `support`.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::pki::TestPki;
use support::redis_modes::{RedisCluster, TlsRedis};
use support::{command, output_within, Server, SERVER};

const ADMIN_TOKEN: &str = "redis-deployment-admin-token-0123";
/// 32 bytes, base64: replicas on Redis must share a master key.
const MASTER_KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

fn start(args: &[&str]) -> Server {
    Server::start(ADMIN_TOKEN, &[&["--store", "redis", "--master-key", MASTER_KEY], args].concat())
}

fn cli(url: &str, args: &[&str]) -> Output {
    support::cli(url, Some(ADMIN_TOKEN), args)
}

fn cli_json(url: &str, args: &[&str]) -> Value {
    let output = cli(url, args);
    assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Runs the server with `args` and returns its error output; it must refuse to start
/// (within a minute: one that starts after all is killed and fails the test).
fn refused(args: &[&str]) -> String {
    let (output, in_time) = output_within(
        command(SERVER)
            .args(["--admin-listen", "127.0.0.1:0", "--internal-listen", "127.0.0.1:0"])
            .args(["--master-key", MASTER_KEY])
            .args(args)
            .env("PORTCULLIS_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("PORTCULLIS_FLEET_CREDENTIAL", support::FLEET_CREDENTIAL),
        Duration::from_secs(60),
    );
    assert!(in_time, "the server started with {args:?}");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "the server exited successfully with {args:?}: {stderr}");
    stderr
}

fn path(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

/// The server minted a token through the store and reports itself ready on Redis.
fn assert_serves(server: &Server) {
    let status = cli_json(&server.url, &["status"]);
    assert_eq!(
        (status["store"].as_str(), status["ready"].as_bool()),
        (Some("redis"), Some(true)),
        "{status}"
    );
    let token = cli(&server.url, &["token", "issue", "--sub", "alice"]);
    assert!(token.status.success(), "{}", String::from_utf8_lossy(&token.stderr));
}

#[test]
fn server_on_tls_redis_trusting_its_ca_with_a_client_certificate_serves() {
    let redis = TlsRedis::start(true);
    let flags = redis.pki.redis_tls_flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let server = start(&[&["--redis-url", &redis.url(3)][..], &flags].concat());
    assert_serves(&server);
    // The state went into that server's database 3 (seen through its plain port).
    let client = redis::Client::open(redis.server.url(3)).unwrap();
    let keys: Vec<String> =
        redis::cmd("KEYS").arg("portcullis:*").query(&mut client.get_connection().unwrap()).unwrap();
    assert!(keys.iter().any(|k| k.starts_with("portcullis:{record:")), "{keys:?}");
}

#[test]
fn server_on_tls_redis_without_client_authentication_needs_only_the_ca() {
    let redis = TlsRedis::start(false);
    let ca = redis.pki.ca_file();
    let server = start(&["--redis-url", &redis.url(0), "--redis-ca-file", path(&ca)]);
    assert_serves(&server);
}

#[test]
fn server_refuses_to_start_on_a_redis_certificate_it_does_not_trust() {
    let redis = TlsRedis::start(false);
    // The built-in roots do not know the test CA; neither does another CA.
    let other = TestPki::generate();
    let other_ca = other.ca_file();
    for (extra, reason) in [
        (&[][..], "UnknownIssuer"),
        // Same CA name, another key: the signature does not verify.
        (&["--redis-ca-file", path(&other_ca)][..], "BadSignature"),
    ] {
        let stderr = refused(&[&["--store", "redis", "--redis-url", &redis.url(0)], extra].concat());
        let expected = format!("TLS with Redis failed: invalid peer certificate: {reason}");
        assert!(stderr.contains(&expected), "{stderr}");
        assert!(stderr.contains("--redis-ca-file"), "the error says what to configure: {stderr}");
        // A permanent error: no retrying for the startup patience.
        assert!(!stderr.contains("retrying"), "{stderr}");
    }
}

#[test]
fn server_refuses_to_start_without_the_client_certificate_redis_requires() {
    let redis = TlsRedis::start(true);
    let ca = redis.pki.ca_file();
    let stderr = refused(&["--store", "redis", "--redis-url", &redis.url(0), "--redis-ca-file", path(&ca)]);
    assert!(stderr.contains("TLS with Redis failed: received fatal alert: CertificateRequired"), "{stderr}");
    assert!(stderr.contains("--redis-cert-file"), "the error says what to configure: {stderr}");
    assert!(!stderr.contains("retrying"), "{stderr}");
}

#[test]
fn misconfigured_redis_and_tls_flags_stop_startup_with_the_flag_named() {
    let pki = TestPki::generate();
    let ca_file = pki.ca_file();
    let ca = path(&ca_file);
    let not_pem = pki.dir().join("not-a-certificate.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["--store", "redis"],
            "--store redis needs --redis-url (PORTCULLIS_REDIS_URL) or --redis-cluster-nodes",
        ),
        (
            &["--store", "redis", "--redis-url", "redis://127.0.0.1:1/0", "--redis-ca-file", ca],
            "--redis-ca-file needs a rediss:// URL",
        ),
        (
            &[
                "--store",
                "redis",
                "--redis-cluster-nodes",
                "redis://127.0.0.1:1",
                "--redis-cert-file",
                ca,
                "--redis-key-file",
                ca,
            ],
            "--redis-cert-file needs a rediss:// URL",
        ),
        (
            &[
                "--store",
                "redis",
                "--redis-url",
                "rediss://127.0.0.1:1/0",
                "--redis-ca-file",
                "/nonexistent/ca.pem",
            ],
            "cannot read --redis-ca-file /nonexistent/ca.pem",
        ),
        (
            &["--store", "redis", "--redis-url", "rediss://127.0.0.1:1/0", "--redis-ca-file", path(&not_pem)],
            "no certificate in it",
        ),
        (
            &[
                "--store",
                "redis",
                "--redis-url",
                "rediss://127.0.0.1:1/0",
                "--redis-cert-file",
                ca,
                "--redis-key-file",
                ca,
            ],
            "--redis-key-file",
        ),
        (
            &["--store", "redis", "--redis-url", "redis://127.0.0.1:1/0", "--redis-key-prefix", "a{b"],
            "--redis-key-prefix",
        ),
        (&["--store", "redis", "--redis-cluster-nodes", "redis://127.0.0.1:1/4"], "only database 0"),
        (
            &[
                "--store",
                "redis",
                "--redis-url",
                "redis://127.0.0.1:1/0",
                "--redis-cluster-nodes",
                "redis://127.0.0.1:1",
            ],
            "cannot be used with",
        ),
        (
            &["--store", "redis", "--redis-url", "rediss://127.0.0.1:1/0", "--redis-cert-file", ca],
            "--redis-key-file",
        ),
        (&["--store", "memory", "--webhook-ca-file", path(&not_pem)], "--webhook-ca-file"),
        // No way to turn certificate checks off.
        (&["--store", "redis", "--redis-url", "rediss://127.0.0.1:1/0#insecure"], "insecure"),
    ];
    for (args, expected) in cases {
        let stderr = refused(args);
        assert!(stderr.contains(expected), "{args:?}: expected {expected:?} in {stderr}");
    }
}

/// Polls `portcullis health` until it reports `ready` (bounded).
fn wait_for_health(url: &str, ready: bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let output = support::cli(url, None, &["health"]);
        let text =
            format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        if output.status.success() == ready {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "health stayed {:?} instead of ready={ready}: {text}",
            output.status
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn server_on_a_tls_redis_cluster_is_ready_only_while_every_primary_is_up() {
    let mut cluster = RedisCluster::start_tls();
    // One seed node is enough: the client discovers the other two (and reaches them
    // over TLS too).
    let seed = cluster.urls()[0].clone();
    let flags = cluster.pki().redis_tls_flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let cluster_flags = ["--redis-cluster-nodes", &seed, "--redis-key-prefix", "prod:portcullis"];
    let server = start(&[&cluster_flags[..], &flags].concat());
    assert_serves(&server);
    for i in 0..20 {
        let revoked = cli(&server.url, &["revoke", "user", &format!("user-{i}")]);
        assert!(revoked.status.success(), "{}", String::from_utf8_lossy(&revoked.stderr));
    }
    let keys = cluster.keys_per_node_matching("prod:portcullis:*");
    assert!(keys.iter().all(|n| *n > 0), "state spread over every primary: {keys:?}");

    cluster.node(2).stop();
    let not_ready = wait_for_health(&server.url, false);
    assert!(not_ready.contains("not ready"), "{not_ready}");

    cluster.node(2).start_again();
    cluster.wait_until_healthy();
    wait_for_health(&server.url, true);
    assert_serves(&server);
}
