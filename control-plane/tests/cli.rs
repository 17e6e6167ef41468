//! The built binaries: the server on a free port, driven by the `portcullis` CLI.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use support::pki::{tls_proxy, TestPki};
use support::{command, Server, CLI, SERVER};

use std::path::Path;
use std::process::Output;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

const ADMIN_TOKEN: &str = "cli-test-admin-token-0123456789";

/// Environment variables that would leak the caller's configuration into the test.
fn cli(url: &str, args: &[&str]) -> Output {
    support::cli(url, None, args)
}

fn cli_admin(url: &str, args: &[&str]) -> Output {
    support::cli(url, Some(ADMIN_TOKEN), args)
}

fn start(args: &[&str]) -> Server {
    Server::start(ADMIN_TOKEN, args)
}

fn stdout(output: &Output) -> String {
    assert!(output.status.success(), "command failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout.clone()).unwrap()
}

async fn jwks(url: &str) -> JwkSet {
    reqwest::get(format!("{url}/.well-known/jwks.json")).await.unwrap().json().await.unwrap()
}

fn status_kid(url: &str) -> String {
    let status: Value = serde_json::from_str(&stdout(&cli_admin(url, &["status"]))).unwrap();
    status["currentKid"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn cli_issues_a_token_that_verifies_against_the_servers_jwks() {
    let server = start(&["--store", "memory", "--audience", "demo-api"]);
    let output = cli_admin(
        &server.url,
        &[
            "token",
            "issue",
            "--sub",
            "alice",
            "--scope",
            "read",
            "--scope",
            "write",
            "--ttl",
            "60",
            "--claim",
            "tenant=acme",
            "--claim",
            "level=3",
        ],
    );
    let text = stdout(&output);
    let token = text.trim_end();
    assert_eq!(text.lines().count(), 1, "only the token is printed: {text:?}");
    assert_eq!(token.split('.').count(), 3);

    let kid = jsonwebtoken::decode_header(token).unwrap().kid.unwrap();
    let jwks = jwks(&server.internal_url).await;
    let key = DecodingKey::from_jwk(jwks.find(&kid).unwrap()).unwrap();
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(&["demo-api"]);
    validation.set_issuer(&["portcullis"]);
    let claims = jsonwebtoken::decode::<Value>(token, &key, &validation).unwrap().claims;
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["scope"], "read write");
    assert_eq!(claims["tenant"], "acme");
    assert_eq!(claims["level"], 3);
    assert_eq!(claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(), 60);

    let json: Value =
        serde_json::from_str(&stdout(&cli_admin(&server.url, &["token", "issue", "--sub", "bob", "--json"])))
            .unwrap();
    assert_eq!(json["tokenType"], "Bearer");
    assert_eq!(json["expiresIn"], 900);
    assert!(json["accessToken"].as_str().unwrap().starts_with("ey"));

    assert_eq!(status_kid(&server.url), kid);
    assert!(stdout(&cli(&server.url, &["health"])).contains("ready: true"));
    assert!(server.terminate(), "graceful shutdown exits 0");
}

#[test]
fn cli_errors_print_the_problem_and_exit_non_zero() {
    let server = start(&["--store", "memory"]);
    let output = command(CLI)
        .args(["--url", &server.url, "--admin-token", "not-the-admin-token"])
        .args(["token", "issue", "--sub", "alice"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("Invalid admin token: The bearer token is not the admin token."), "{stderr}");

    let output = cli_admin(&server.url, &["token", "issue", "--sub", "a", "--ttl", "0"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.starts_with("Invalid request: ttlSeconds"), "{stderr}");

    let output = cli(&server.url, &["status"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--admin-token-file"));

    let unreachable = format!("http://127.0.0.1:{}", support::free_port());
    let output = cli(&unreachable, &["health"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot reach the control plane"));
}

#[test]
fn admin_token_file_is_accepted_by_server_and_cli() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, format!("{ADMIN_TOKEN}\n")).unwrap();
    let server = start(&["--store", "memory"]);
    let output = command(CLI)
        .args(["--url", &server.url, "--admin-token-file"])
        .arg(&token_file)
        .arg("status")
        .output()
        .unwrap();
    assert!(stdout(&output).contains("\"store\": \"memory\""));
}

#[test]
fn server_refuses_to_start_without_an_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let output = command(SERVER)
        .args(["--store", "memory", "--admin-listen", "127.0.0.1:0", "--internal-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no admin token"), "{stderr}");
    assert!(stderr.contains("PORTCULLIS_ADMIN_TOKEN_FILE"), "{stderr}");

    let output = command(SERVER).args(["--store", "memory", "--admin-token", "short"]).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("at least 16"));

    let output = command(SERVER)
        .args(["--store", "redis", "--admin-token", ADMIN_TOKEN])
        .env("PORTCULLIS_FLEET_CREDENTIAL", support::FLEET_CREDENTIAL)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--redis-url"));

    let output = command(SERVER)
        .args(["--store", "redis", "--admin-token", ADMIN_TOKEN])
        .args(["--redis-url", "redis://127.0.0.1:1/0"])
        .env("PORTCULLIS_FLEET_CREDENTIAL", support::FLEET_CREDENTIAL)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("master key shared by all replicas"), "{stderr}");
}

#[test]
fn server_refuses_the_old_listen_flag_a_shared_address_and_a_missing_or_reused_fleet_credential() {
    let server = |args: &[&str], env: &[(&str, &str)]| {
        let output = command(SERVER)
            .args(["--store", "memory"])
            .args(args)
            .env("PORTCULLIS_ADMIN_TOKEN", ADMIN_TOKEN)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(!output.status.success(), "{args:?} {env:?} started");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let fleet = [("PORTCULLIS_FLEET_CREDENTIAL", support::FLEET_CREDENTIAL)];
    let stderr = server(&["--listen", "127.0.0.1:0"], &fleet);
    assert!(stderr.contains("--internal-listen") && stderr.contains("--admin-listen"), "{stderr}");
    let stderr = server(&[], &[("PORTCULLIS_LISTEN", "127.0.0.1:0"), fleet[0]]);
    assert!(stderr.contains("split in two"), "{stderr}");
    let port = support::free_port().to_string();
    let same = format!("127.0.0.1:{port}");
    let stderr = server(&["--admin-listen", &same, "--internal-listen", &same], &fleet);
    assert!(stderr.contains("distinct addresses"), "{stderr}");
    let stderr = server(&["--admin-listen", "127.0.0.1:0", "--internal-listen", "127.0.0.1:0"], &[]);
    assert!(
        stderr.contains("no fleet credential") && stderr.contains("PORTCULLIS_FLEET_CREDENTIAL_FILE"),
        "{stderr}"
    );
    let stderr =
        server(&["--internal-listen", "127.0.0.1:0"], &[("PORTCULLIS_FLEET_CREDENTIAL", "too-short")]);
    assert!(stderr.contains("at least 32") && !stderr.contains("too-short"), "{stderr}");
    let reused = format!("{ADMIN_TOKEN}-{ADMIN_TOKEN}");
    let output = command(SERVER)
        .args(["--store", "memory", "--admin-listen", "127.0.0.1:0", "--internal-listen", "127.0.0.1:0"])
        .env("PORTCULLIS_ADMIN_TOKEN", &reused)
        .env("PORTCULLIS_FLEET_CREDENTIAL", &reused)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("admin token is also a fleet credential"));
}

#[tokio::test]
async fn the_server_serves_envoys_and_operators_on_separate_ports() {
    let server = start(&["--store", "memory"]);
    let client = reqwest::Client::new();
    let feed = |url: &str, credential: Option<&str>| {
        let request = client.get(format!("{url}/v1/feed"));
        match credential {
            Some(c) => request.bearer_auth(c),
            None => request,
        }
        .send()
    };
    let ok = feed(&server.internal_url, Some(support::FLEET_CREDENTIAL)).await.unwrap();
    assert_eq!(ok.status(), 200);
    let denied = feed(&server.internal_url, None).await.unwrap();
    assert_eq!(denied.status(), 401);
    assert_eq!(denied.headers()["www-authenticate"], r#"Bearer realm="portcullis-internal""#);
    assert_eq!(denied.headers()["content-type"], "application/problem+json");
    assert_eq!(feed(&server.url, Some(support::FLEET_CREDENTIAL)).await.unwrap().status(), 404);
    let status = client.get(format!("{}/admin/v1/status", server.internal_url)).bearer_auth(ADMIN_TOKEN);
    assert_eq!(status.send().await.unwrap().status(), 404);
    assert_eq!(jwks(&server.internal_url).await.keys.len(), 1);
    assert_eq!(client.get(format!("{}/metrics", server.url)).send().await.unwrap().status(), 200);
    assert_eq!(client.get(format!("{}/metrics", server.internal_url)).send().await.unwrap().status(), 404);
}

#[test]
fn embedded_store_generates_a_master_key_and_refuses_a_wrong_one() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let first = start(&["--store", "embedded", "--data-dir", path_str(&data_dir)]);
    assert!(first.terminate());
    let key_file = data_dir.join("master.key");
    assert!(key_file.is_file());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let output = command(SERVER)
        .args(["--store", "embedded", "--data-dir", path_str(&data_dir)])
        .args(["--admin-listen", "127.0.0.1:0", "--internal-listen", "127.0.0.1:0"])
        .args(["--master-key", "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="])
        .env("PORTCULLIS_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("PORTCULLIS_FLEET_CREDENTIAL", support::FLEET_CREDENTIAL)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("the master key does not decrypt signing key"), "{stderr}");
}

fn json_of(output: &Output) -> Value {
    serde_json::from_str(&stdout(output)).unwrap()
}

#[test]
fn cli_drives_keys_revocations_sessions_and_breach_rotation() {
    let server = start(&["--store", "memory"]);
    let url = server.url.as_str();
    let issued = json_of(&cli_admin(url, &["token", "issue", "--sub", "alice", "--json"]));
    let refresh = issued["refreshToken"].as_str().unwrap();
    let sid = issued["sessionId"].as_str().unwrap();

    // Refresh token exchange is on the internal listener.
    let internal = server.internal_url.as_str();
    let refreshed = json_of(&cli(url, &["--internal-url", internal, "token", "refresh", refresh]));
    assert_eq!(refreshed["sessionId"], sid);
    let output = cli(url, &["--internal-url", internal, "token", "refresh", refresh]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).starts_with("Invalid grant:"));

    let sessions = json_of(&cli_admin(url, &["sessions", "list", "alice"]));
    assert_eq!(sessions["sessions"][0]["revoked"], true, "reuse revoked the family");
    let second = json_of(&cli_admin(url, &["token", "issue", "--sub", "alice", "--json"]));
    let revoked = json_of(&cli_admin(url, &["sessions", "revoke", second["sessionId"].as_str().unwrap()]));
    assert_eq!(revoked["revokedJtis"][0], second["jti"]);

    let token = stdout(&cli_admin(url, &["token", "issue", "--sub", "bob"]));
    let output = cli_admin(url, &["revoke", "token", token.trim()]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("without verifying"));
    assert!(json_of(&output)["cursor"].as_u64().unwrap() > 0);
    let exp = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 600)
        .to_string();
    assert_eq!(json_of(&cli_admin(url, &["revoke", "jti", "some-jti", "--exp", &exp]))["jti"], "some-jti");
    let bob = json_of(&cli_admin(url, &["revoke", "user", "bob"]));
    assert_eq!(bob["minVersion"], 2);
    assert_eq!(bob["revokedSessions"].as_array().unwrap().len(), 1, "{bob}");
    let global = json_of(&cli_admin(url, &["breach", "rotate", "--grace", "300", "--reason", "leaked key"]));
    // Above the ceiling published while the highest version issued was bob's 2.
    let rotated = 2 + portcullis_control_plane::revocations::VERSION_CEILING_MARGIN + 1;
    assert_eq!((global["minVersion"].as_u64(), global["graceSeconds"].as_u64()), (Some(rotated), Some(300)));

    let before = status_kid(url);
    let rotation = json_of(&cli_admin(url, &["keys", "rotate"]));
    assert_eq!(rotation["previousKid"], before.as_str());
    let keys = json_of(&cli_admin(url, &["keys", "list"]));
    assert_eq!(keys["keys"].as_array().unwrap().len(), 2);
    let status: Value = json_of(&cli_admin(url, &["status"]));
    assert_eq!(status["currentKid"], rotation["kid"]);
    assert_eq!(status["keySetVersion"], rotation["keySetVersion"]);
    assert_eq!(status["globalMinVersion"], rotated);

    // A leaked key is revoked at once; revoking the current key rotates.
    let revoked = json_of(&cli_admin(url, &["keys", "revoke", &before]));
    assert_eq!(
        (revoked["revokedKids"][0].as_str(), revoked["rotated"].as_bool()),
        (Some(before.as_str()), Some(false))
    );
    let current = status_kid(url);
    let revoked = json_of(&cli_admin(url, &["keys", "revoke", &current]));
    assert_eq!(revoked["rotated"], true);
    assert_ne!(status_kid(url), current);
    let output = cli_admin(url, &["keys", "revoke", "no-such-kid"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).starts_with("Not found: There is no signing key"));
    assert!(!cli_admin(url, &["keys", "revoke"]).status.success(), "a kid or --all is required");
    let all = json_of(&cli_admin(url, &["keys", "revoke", "--all"]));
    assert_eq!(all["revokedKids"].as_array().unwrap().len(), 1, "only the current key was left: {all}");
    let listed = json_of(&cli_admin(url, &["keys", "list"]));
    let statuses: Vec<&str> =
        listed["keys"].as_array().unwrap().iter().map(|k| k["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["current", "revoked", "revoked", "revoked"], "{listed}");
}

/// The runbook for a leaked master key: restart with a new master key and the old one
/// as the previous key (the signing keys are re-sealed), then revoke every signing key.
#[tokio::test]
async fn a_leaked_master_key_is_replaced_and_every_signing_key_revoked() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let (old_key, new_key) = (dir.path().join("master-key"), dir.path().join("master-key.new"));
    std::fs::write(&old_key, "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=\n").unwrap();
    std::fs::write(&new_key, "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=\n").unwrap();
    let store = ["--store", "embedded", "--data-dir", path_str(&data_dir)];
    let first = start(&[&store[..], &["--master-key-file", path_str(&old_key)]].concat());
    let token = stdout(&cli_admin(&first.url, &["token", "issue", "--sub", "alice"]));
    let leaked = jsonwebtoken::decode_header(token.trim()).unwrap().kid.unwrap();
    assert!(first.terminate());

    let second = start(
        &[
            &store[..],
            &["--master-key-file", path_str(&new_key), "--previous-master-key-file", path_str(&old_key)],
        ]
        .concat(),
    );
    assert_eq!(status_kid(&second.url), leaked, "the same keys, re-sealed");
    let revoked = json_of(&cli_admin(&second.url, &["keys", "revoke", "--all"]));
    assert_eq!(revoked["revokedKids"], serde_json::json!([leaked]));
    let fresh = status_kid(&second.url);
    assert_ne!(fresh, leaked);
    let published: Vec<String> =
        jwks(&second.internal_url).await.keys.iter().map(|k| k.common.key_id.clone().unwrap()).collect();
    assert_eq!(published, [fresh.as_str()]);
    assert!(second.terminate());

    // From now on the new master key alone opens the store; the old one opens nothing.
    let third = start(&[&store[..], &["--master-key-file", path_str(&new_key)]].concat());
    assert_eq!(status_kid(&third.url), fresh);
    assert!(third.terminate());
    let output = command(SERVER)
        .args(store)
        .args(["--admin-listen", "127.0.0.1:0", "--internal-listen", "127.0.0.1:0"])
        .args(["--master-key-file", path_str(&old_key)])
        .env("PORTCULLIS_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("PORTCULLIS_FLEET_CREDENTIAL", support::FLEET_CREDENTIAL)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("the master key does not decrypt signing key"));
}

#[test]
fn embedded_store_keeps_the_signing_key_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let args = ["--store", "embedded", "--data-dir", path_str(&data_dir)];
    let first = start(&args);
    let kid = status_kid(&first.url);
    assert!(first.terminate());
    assert!(data_dir.join("portcullis.redb").is_file());
    let second = start(&args);
    assert_eq!(status_kid(&second.url), kid);
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_reaches_an_https_control_plane_trusting_the_ca_file_and_names_an_untrusted_certificate() {
    let server = start(&["--store", "memory"]);
    // TLS terminated in front of the control plane, as a mesh sidecar or ingress does.
    let pki = TestPki::generate();
    let tls = tls_proxy(&pki, server.url.strip_prefix("http://").unwrap().parse().unwrap()).await;
    let https = format!("https://{tls}");
    let ca = pki.ca_file();

    let status: Value =
        serde_json::from_str(&stdout(&cli_admin(&https, &["--ca-file", ca.to_str().unwrap(), "status"])))
            .unwrap();
    assert_eq!(status["store"], "memory");
    let via_env =
        command(CLI).args(["--url", &https, "health"]).env("PORTCULLIS_CA_FILE", &ca).output().unwrap();
    assert!(via_env.status.success(), "{}", String::from_utf8_lossy(&via_env.stderr));

    let output = cli_admin(&https, &["status"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("cannot reach the control plane at {https}")), "{stderr}");
    assert!(stderr.contains("invalid peer certificate: UnknownIssuer"), "{stderr}");

    let output = cli_admin(&https, &["--ca-file", "/nonexistent/ca.pem", "status"]);
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot read --ca-file /nonexistent/ca.pem"));
}
