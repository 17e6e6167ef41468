//! The plugin configuration's JSON Schema (`docs/plugin-config.schema.json`):
//! - the committed copy is what the config types generate, and what
//!   `portcullis config schema` prints (regenerate with `make schema`);
//! - every configuration the project ships validates against it: the demo bootstrap, the
//!   Istio manifests, README's and docs/plugin-config.md's examples (fragments such as
//!   `"revocation": {...}` as the only member of a configuration);
//! - configurations that the compiler refuses for their shape (unknown fields, wrong
//!   types, unknown enum values, missing required fields) are refused by the schema too,
//!   checked with an independent validator (the `jsonschema` crate).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};

use portcullis_control_plane::config_check::compile_offline;
use portcullis_control_plane::config_check::{configurations, Content};
use serde_json::{json, Value};

const SCHEMA_FILE: &str = "docs/plugin-config.schema.json";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn validator() -> jsonschema::Validator {
    jsonschema::validator_for(&portcullis_core::schema::json_schema()).unwrap()
}

fn errors(validator: &jsonschema::Validator, config: &Value) -> Vec<String> {
    validator.iter_errors(config).map(|e| format!("{} at {}", e, e.instance_path)).collect()
}

#[test]
fn committed_schema_is_what_the_config_types_generate() {
    let committed = std::fs::read_to_string(repo().join(SCHEMA_FILE)).unwrap();
    assert!(
        committed == portcullis_core::schema::json_schema_text(),
        "{SCHEMA_FILE} is not what the config types generate: run `make schema` and commit it"
    );
}

#[test]
fn cli_prints_the_schema() {
    let output = support::command(support::CLI).args(["config", "schema"]).output().unwrap();
    assert!(output.status.success());
    assert_eq!(String::from_utf8(output.stdout).unwrap(), portcullis_core::schema::json_schema_text());
}

#[test]
fn schema_is_a_valid_draft_2020_12_schema() {
    let schema = portcullis_core::schema::json_schema();
    assert_eq!(schema["$schema"], "https://json-schema.org/draft/2020-12/schema");
    jsonschema::meta::validate(&schema).unwrap();
}

/// Every object the schema describes refuses unknown fields, as the parser does
/// (`deny_unknown_fields` on every config type).
#[test]
fn every_object_in_the_schema_refuses_unknown_fields() {
    let schema = portcullis_core::schema::json_schema();
    let mut objects = vec![("(root)".to_owned(), &schema)];
    objects.extend(schema["$defs"].as_object().unwrap().iter().map(|(name, s)| (name.clone(), s)));
    let mut checked = 0;
    for (name, object) in objects {
        let variants: Vec<&Value> = match object["oneOf"].as_array() {
            Some(variants) => variants.iter().collect(),
            None => vec![object],
        };
        for variant in variants.into_iter().filter(|v| v.get("properties").is_some()) {
            assert_eq!(variant["additionalProperties"], false, "{name} accepts unknown fields");
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} objects found");
}

/// The ```json blocks of a Markdown file; a block of object members (`"a": ...`) is
/// wrapped into an object.
fn json_blocks(file: &str) -> Vec<(String, Value)> {
    let text = std::fs::read_to_string(repo().join(file)).unwrap();
    let mut blocks = Vec::new();
    for (i, block) in text.split("```json\n").skip(1).enumerate() {
        let body = block.split("\n```").next().unwrap();
        let value = serde_json::from_str(body)
            .or_else(|_| serde_json::from_str(&format!("{{{body}}}")))
            .unwrap_or_else(|e| panic!("{file} json block {}: not JSON: {e}\n{body}", i + 1));
        blocks.push((format!("{file} json block {}", i + 1), value));
    }
    blocks
}

/// Every plugin configuration in the shipped manifests.
fn manifest_configs() -> Vec<(String, Value)> {
    let mut files = vec![repo().join("envoy/demo.yaml")];
    for entry in std::fs::read_dir(repo().join("envoy/istio")).unwrap() {
        files.push(entry.unwrap().path());
    }
    let mut configs = Vec::new();
    for path in files.into_iter().filter(|p| p.extension().is_some_and(|e| e == "yaml")) {
        let name = path.strip_prefix(repo()).unwrap().display().to_string();
        for found in configurations(&name, &std::fs::read(&path).unwrap()) {
            match found.content {
                Content::Config(bytes) => configs.push((
                    format!("{name}#{} {}", found.document.unwrap_or(0), found.at),
                    serde_json::from_slice(&bytes).unwrap(),
                )),
                Content::Nothing => {}
                Content::Unreadable(message) => panic!("{name}: {message}"),
            }
        }
    }
    configs
}

#[test]
fn every_shipped_example_validates_against_the_schema() {
    let validator = validator();
    let manifests = manifest_configs();
    assert!(
        manifests.len() >= 3,
        "expected the demo, WasmPlugin and EnvoyFilter configurations: {manifests:?}"
    );
    let readme = json_blocks("README.md");
    assert!(readme.len() >= 2, "README's examples: {readme:?}");
    let docs = json_blocks("docs/plugin-config.md");
    assert!(docs.len() >= 5, "docs/plugin-config.md's examples: {docs:?}");
    for (origin, config) in manifests.iter().chain(&readme).chain(&docs) {
        let errors = errors(&validator, config);
        assert!(errors.is_empty(), "{origin} does not validate against the schema: {errors:?}");
    }
    // The manifests' configurations are complete: the compiler takes them too.
    for (origin, config) in &manifests {
        compile_offline(config.to_string().as_bytes()).unwrap_or_else(|e| panic!("{origin}: {e}"));
    }
}

/// A configuration both the compiler and the schema accept; each broken copy below
/// changes one thing.
fn base() -> Value {
    json!({
        "realm": "api",
        "providers": {
            "p": {
                "issuer": "https://issuer.example",
                "audiences": ["api"],
                "remoteJwks": { "cluster": "idp", "authority": "idp.example" },
                "from": [ { "header": "authorization", "prefix": "Bearer " } ]
            },
            "inline": {
                "issuer": "inline",
                "jwks": { "keys": [ { "kty": "oct", "alg": "HS256", "kid": "k", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTAxMjM0NTY3" } ] }
            }
        },
        "rules": [
            { "name": "health", "match": { "path": "/healthz" }, "requires": "none" },
            { "name": "api", "match": { "pathPrefix": "/api/", "methods": ["GET"] },
              "requires": { "anyOf": ["p", "inline"] }, "scopes": ["read"], "onStale": "allow" }
        ],
        "revocation": {},
        "controlPlane": { "cluster": "cp", "authority": "cp", "credential": { "inline": "a-development-fleet-credential-of-40-chars" } },
        "clientIp": { "trustedHops": 1 },
        "rateLimits": [ { "name": "per-user", "limit": 10, "unit": "minute", "descriptors": ["claim:sub"] } ],
        "lockout": { "routes": [ { "path": "/login" } ], "account": "json:username", "failureStatuses": [401] },
        "burst": { "reportIntervalMs": 1000 }
    })
}

/// Sets `pointer` (a JSON pointer whose parent exists) in a copy of the base.
fn with(pointer: &str, value: Value) -> Value {
    let mut config = base();
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let target = config.pointer_mut(parent).unwrap_or_else(|| panic!("no {parent} in the base"));
    match target {
        Value::Object(map) => {
            map.insert(key.to_owned(), value);
        }
        Value::Array(items) => items[key.parse::<usize>().unwrap()] = value,
        _ => panic!("{parent} is not a container"),
    }
    config
}

fn without(pointer: &str) -> Value {
    let mut config = base();
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    config.pointer_mut(parent).unwrap().as_object_mut().unwrap().remove(key).unwrap();
    config
}

#[test]
fn schema_and_compiler_both_accept_the_base_configuration() {
    let config = base();
    assert_eq!(errors(&validator(), &config), Vec::<String>::new());
    compile_offline(config.to_string().as_bytes()).unwrap();
}

#[test]
fn schema_refuses_configurations_the_compiler_refuses_for_their_shape() {
    let validator = validator();
    let broken = [
        ("unknown top-level field", with("/rulez", json!([]))),
        ("unknown provider field", with("/providers/p/issuerr", json!("x"))),
        ("unknown field in remoteJwks", with("/providers/p/remoteJwks/url", json!("https://x"))),
        ("unknown match field", with("/rules/0/match/prefix", json!("/x"))),
        ("unknown lockout policy field", with("/lockout/policy", json!({ "maxFailure": 3 }))),
        ("provider without issuer", without("/providers/p/issuer")),
        ("rule without requires", without("/rules/0/requires")),
        ("rate limit without unit", without("/rateLimits/0/unit")),
        ("unknown onNoMatch", with("/onNoMatch", json!("maybe"))),
        ("unknown requirement string", with("/rules/0/requires", json!("nobody"))),
        ("unknown requirement key", with("/rules/0/requires", json!({ "oneOf": ["p"] }))),
        ("two requirement keys", with("/rules/0/requires", json!({ "provider": "p", "anyOf": ["p"] }))),
        ("provider name not a string", with("/rules/1/requires", json!({ "provider": 7 }))),
        ("unknown unit", with("/rateLimits/0/unit", json!("week"))),
        ("negative limit", with("/rateLimits/0/limit", json!(-1))),
        ("limit as a string", with("/rateLimits/0/limit", json!("ten"))),
        ("status beyond u16", with("/lockout/failureStatuses", json!([70000]))),
        ("unknown onStale", with("/rules/1/onStale", json!("sometimes"))),
        ("unknown revocationCheck", with("/rules/1/revocationCheck", json!("eventually"))),
        ("scopes not a list", with("/rules/1/scopes", json!("read"))),
        ("inline JWKS without keys", with("/providers/inline/jwks", json!({ "key": [] }))),
        ("from entry with an unknown source", with("/providers/p/from", json!([{ "body": "token" }]))),
        ("unknown limit mode", with("/rateLimits/0/mode", json!("eager"))),
        ("burst as a number", with("/burst", json!(1000))),
    ];
    for (what, config) in broken {
        assert!(
            compile_offline(config.to_string().as_bytes()).is_err(),
            "{what}: the compiler accepts it: {config}"
        );
        assert!(!validator.is_valid(&config), "{what}: the schema accepts it: {config}");
    }
}

#[test]
fn schema_carries_the_parsers_defaults() {
    let schema = portcullis_core::schema::json_schema();
    let defs = &schema["$defs"];
    assert_eq!(schema["properties"]["onNoMatch"]["default"], "deny");
    assert_eq!(
        defs["ProviderConfig"]["properties"]["from"]["default"],
        json!([{ "header": "authorization", "prefix": "Bearer " }])
    );
    assert_eq!(defs["RevocationConfig"]["properties"]["pollIntervalMs"]["default"], 1000);
    assert_eq!(defs["LockoutConfig"]["properties"]["failureStatuses"]["default"], json!([401, 403]));
    assert_eq!(defs["RateLimitConfig"]["properties"]["onError"]["default"], "allow");
    // The policy's defaults are the ones the filter applies.
    let policy = portcullis_core::lockout::LockoutPolicy::default();
    assert_eq!(
        defs["LockoutConfig"]["properties"]["policy"]["default"],
        serde_json::to_value(policy).unwrap()
    );
}

#[test]
fn a_rule_may_leave_requires_out_only_when_it_takes_api_tokens() {
    let validator = validator();
    let mut config = with("/apiTokens", json!({}));
    let rule = config.pointer_mut("/rules/0").unwrap().as_object_mut().unwrap();
    rule.remove("requires");
    rule.insert("acceptApiTokens".to_owned(), json!(true));
    assert!(compile_offline(config.to_string().as_bytes()).is_ok(), "the compiler accepts it: {config}");
    assert_eq!(errors(&validator, &config), Vec::<String>::new());
    config["rules"][0]["acceptApiTokens"] = json!(false);
    assert!(compile_offline(config.to_string().as_bytes()).is_err());
    assert!(!validator.is_valid(&config), "the schema accepts a rule without requires: {config}");
}
