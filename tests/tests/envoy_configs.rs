//! Every Envoy bootstrap in the repository is accepted by the real Envoy
//! (`--mode validate`) and its embedded plugin configuration compiles; an invalid plugin
//! configuration is reported with the offending field and the filter does not start.

use std::process::Command;
use std::time::{Duration, Instant};

use portcullis_e2e::{
    envoy_bin, free_port, hardened_connection_manager, missing_fields, repo_root, Envoy, EnvoyClusters, Hcm,
    Proc, TestServer, Workdir, FLEET_CREDENTIAL, FLEET_CREDENTIAL_ENV, STARTUP_BOUND,
};
use serde_json::{json, Value};

/// Every object of a configuration tree whose `@type` is `type_url`.
fn typed<'a>(v: &'a Value, type_url: &str, out: &mut Vec<&'a Value>) {
    match v {
        Value::Object(map) => {
            if map.get("@type").and_then(Value::as_str) == Some(type_url) {
                out.push(v);
            }
            map.values().for_each(|c| typed(c, type_url, out));
        }
        Value::Array(items) => items.iter().for_each(|c| typed(c, type_url, out)),
        _ => {}
    }
}

/// Every `configuration.value` of a wasm filter in a bootstrap.
fn embedded_plugin_configs(v: &Value) -> Vec<String> {
    let mut filters = Vec::new();
    typed(v, "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm", &mut filters);
    filters
        .into_iter()
        .filter_map(|f| f.pointer("/config/configuration/value").and_then(Value::as_str))
        .map(str::to_string)
        .collect()
}

/// The Envoy bootstraps in `envoy/` (at least one).
fn bootstraps() -> Vec<std::path::PathBuf> {
    let dir = repo_root().join("envoy");
    let found: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().and_then(|e| e.to_str()) == Some("yaml"))
        .collect();
    assert!(!found.is_empty(), "no bootstrap found in {}", dir.display());
    found
}

#[test]
fn every_envoy_bootstrap_in_the_repo_passes_envoy_validate_and_its_plugin_config_compiles() {
    for path in bootstraps() {
        let out = Command::new(envoy_bin())
            .current_dir(repo_root())
            .args(["--mode", "validate", "--use-dynamic-base-id", "-c"])
            .arg(&path)
            .env(FLEET_CREDENTIAL_ENV, FLEET_CREDENTIAL)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "envoy rejected {}:\n{}{}",
            path.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let yaml: Value = serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let configs = embedded_plugin_configs(&yaml);
        assert!(!configs.is_empty(), "{} has no Portcullis filter", path.display());
        // As in a proxy whose environment holds the credential (run-demo.sh sets it).
        let env = |name: &str| (name == FLEET_CREDENTIAL_ENV).then(|| FLEET_CREDENTIAL.to_string());
        for c in configs {
            if let Err(e) = portcullis_core::config::compile_json_with(c.as_bytes(), &env) {
                panic!("{}: {e}", path.display());
            }
        }
    }
}

#[test]
fn every_envoy_bootstrap_sets_the_connection_manager_options_the_filter_relies_on() {
    let mut checked = 0;
    for path in bootstraps() {
        let yaml: Value = serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let mut managers = Vec::new();
        let manager_type =
            "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
        typed(&yaml, manager_type, &mut managers);
        for manager in managers {
            let configs = embedded_plugin_configs(manager);
            let Some(config) = configs.first() else { continue };
            let plugin: Value = serde_json::from_str(config).unwrap();
            let missing = missing_fields(manager, &hardened_connection_manager(&plugin));
            assert!(missing.is_empty(), "{}: the connection manager lacks {missing:?}", path.display());
            checked += 1;
        }
    }
    assert!(checked >= 1, "no connection manager with the filter in envoy/");
}

#[test]
fn envoy_validate_rejects_a_broken_bootstrap() {
    // The validation above can fail: a bootstrap with a route to an undefined cluster.
    let dir = Workdir::new();
    let mut config = Envoy::bootstrap(
        &json!({"rules": []}),
        &EnvoyClusters { upstream_port: 1, jwks_port: None, control_plane_port: None },
        Hcm::Hardened,
        free_port(),
        free_port(),
    );
    config["static_resources"]["clusters"] = json!([]);
    let path = dir.path().join("broken.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let out = Command::new(envoy_bin())
        .args(["--mode", "validate", "--use-dynamic-base-id", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// Starts Envoy with `plugin_config` without waiting for readiness (ports chosen by Envoy);
/// `credential`: the fleet credential in Envoy's environment, and whether the bootstrap
/// passes it to the VM (`host_env_keys`).
fn spawn_envoy(
    dir: &Workdir,
    plugin_config: &Value,
    upstream: u16,
    credential: Option<(&str, bool)>,
) -> Proc {
    let mut config = Envoy::bootstrap(
        plugin_config,
        &EnvoyClusters { upstream_port: upstream, jwks_port: None, control_plane_port: None },
        Hcm::Hardened,
        0,
        0,
    );
    if credential.is_some_and(|(_, passed)| !passed) {
        let vm = config.pointer_mut(
            "/static_resources/listeners/0/filter_chains/0/filters/0/typed_config/http_filters/0/typed_config/config/vm_config",
        );
        vm.and_then(Value::as_object_mut).expect("vm_config").remove("environment_variables");
    }
    let path = dir.path().join("envoy-invalid.json");
    std::fs::write(&path, config.to_string()).unwrap();
    let mut cmd = Command::new(envoy_bin());
    cmd.arg("-c").arg(&path).args(["--use-dynamic-base-id", "--concurrency", "1", "--log-level", "info"]);
    cmd.env_remove(FLEET_CREDENTIAL_ENV);
    if let Some((value, _)) = credential {
        cmd.env(FLEET_CREDENTIAL_ENV, value);
    }
    Proc::spawn("envoy-invalid", cmd, dir.path())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_plugin_config_is_logged_with_the_field_and_envoy_refuses_the_config() {
    let with_credential = |credential: Value| {
        json!({
            "controlPlane": { "cluster": "upstream", "authority": "cp", "credential": credential },
            "revocation": {},
            "rules": []
        })
    };
    let missing_env = "invalid configuration at `controlPlane.credential.env`: the environment variable \
                       `PORTCULLIS_FLEET_CREDENTIAL` is not set in the Wasm VM";
    let cases = [
        (
            json!({"providers": {}, "rules": [{"match": {"pathPrefix": "/"}, "requires": {"provider": "nope"}}]}),
            "invalid configuration at `rules[0].requires.provider`: unknown provider `nope`",
            Some((FLEET_CREDENTIAL, true)),
        ),
        (json!({"rules": [], "colour": "blue"}), "unknown field `colour`", Some((FLEET_CREDENTIAL, true))),
        (
            json!({"rules": [{"match": {"pathRegex": "(unclosed"}, "requires": "none"}]}),
            "invalid configuration at `rules[0].match.pathRegex`",
            Some((FLEET_CREDENTIAL, true)),
        ),
        // The credential variable is not in Envoy's environment...
        (with_credential(json!({"env": FLEET_CREDENTIAL_ENV})), missing_env, None),
        // ...or it is, but the bootstrap does not pass it to the VM: the VM sees only
        // what vm_config.environment_variables lists.
        (with_credential(json!({"env": FLEET_CREDENTIAL_ENV})), missing_env, Some((FLEET_CREDENTIAL, false))),
        // Passed, but too weak to be a fleet credential (its value is never logged).
        (
            with_credential(json!({"env": FLEET_CREDENTIAL_ENV})),
            "invalid configuration at `controlPlane.credential.env`: must be at least 32 characters",
            Some(("weak-credential", true)),
        ),
        (
            json!({"controlPlane": {"cluster": "upstream", "authority": "cp"}, "rules": []}),
            "missing field `credential`",
            Some((FLEET_CREDENTIAL, true)),
        ),
    ];
    for (config, expected, credential) in cases {
        let dir = Workdir::new();
        let server = TestServer::start(json!({"keys": []})).await;
        let mut envoy = spawn_envoy(&dir, &config, server.port, credential);
        let deadline = Instant::now() + STARTUP_BOUND;
        while !envoy.log_text().contains(expected) {
            assert!(Instant::now() < deadline, "Envoy never logged `{expected}`:\n{}", envoy.log_text());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // With failure_policy FAIL_CLOSED the plugin does not start and Envoy rejects the
        // whole configuration rather than serve without the filter.
        while !envoy.exited() {
            assert!(Instant::now() < deadline, "Envoy kept running with a filter that failed to configure");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(envoy.log_text().contains("Unable to create Wasm plugin portcullis"), "{}", envoy.log_text());
        assert_eq!(server.hits(), 0);
        assert!(!envoy.log_text().contains("panic"));
        assert!(!envoy.log_text().contains("weak-credential"), "a credential is never logged");
    }
}
