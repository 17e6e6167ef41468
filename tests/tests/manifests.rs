//! Offline checks of the deployment manifests in `envoy/istio/` and `envoy/kubernetes/`.
//!
//! - Every Istio resource validates against the `openAPIV3Schema` of Istio's own CRD
//!   (`../shared/schemas/istio-wasmplugin-envoyfilter-crds.yaml`), made strict the way
//!   `kubectl apply --validate=strict` is: unknown fields are errors, except where the CRD
//!   preserves them. The CEL rules (`x-kubernetes-validations`) that these manifests could
//!   break are checked by hand; the others are not evaluated.
//! - The shared schema file has no CRDs for Istio's security resources, so the
//!   `AuthorizationPolicy` and `PeerAuthentication` guarding the control plane are checked
//!   against a strict schema written here from Istio's API reference (the fields these
//!   manifests may use; unknown fields are errors), and for what they must say: only the
//!   workloads' service accounts on the internal port, over mutual TLS.
//! - Mutated copies (bad enum, wrong type, misspelled field, ...) must fail, so the
//!   validation is known to bite.
//! - The plugin configuration embedded in the WasmPlugin (`spec.pluginConfig`) and in the
//!   EnvoyFilter (`configuration.value`) compiles with the real config compiler, and both
//!   routes carry the same configuration and the same control-plane cluster.
//! - The fleet credential goes from a Secret into the istio-proxy container's environment,
//!   into the Wasm VM (`valueFrom: HOST`, `host_env_keys`) and into `controlPlane`; it is
//!   never written in a manifest's plugin configuration.
//! - Every Kubernetes container has probes and resource limits, and the control plane
//!   container runs the way `envoy/kubernetes/control-plane.yaml` promises.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use portcullis_e2e::manifests::{
    env_var, istio_documents, kubernetes_documents, pod_spec, read_documents, Document,
};
use portcullis_e2e::{hardened_connection_manager, missing_fields, repo_root};
use serde_json::{json, Value};

const WASM_FILTER: &str = "envoy.filters.http.wasm";
const WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
const STRING_VALUE_TYPE: &str = "type.googleapis.com/google.protobuf.StringValue";
const CONTROL_PLANE_CONTAINER: &str = "portcullis-control-plane";
/// The environment variable the manifests carry the fleet credential in.
const FLEET_CREDENTIAL_ENV: &str = "PORTCULLIS_FLEET_CREDENTIAL";
/// The control plane's internal listener (what Envoys call) and admin listener.
const INTERNAL_PORT: u64 = 9091;
const ADMIN_PORT: u64 = 9090;

// ---------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------

fn crd_file() -> PathBuf {
    // The shared copy when it is there (it follows Istio upgrades); otherwise the copy
    // kept with the tests, so a checkout on its own still validates.
    let shared = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/schemas/istio-wasmplugin-envoyfilter-crds.yaml");
    if shared.is_file() {
        shared
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/istio-wasmplugin-envoyfilter-crds.yaml")
    }
}

/// The CRDs of the shared schema file, as JSON.
fn crds() -> Vec<Value> {
    let path = crd_file();
    assert!(
        path.is_file(),
        "Istio CRD schema file not found at {}; cannot validate the Istio manifests",
        path.display()
    );
    let crds: Vec<Value> = read_documents(&path)
        .into_iter()
        .map(|d| d.value)
        .filter(|v| v["kind"] == "CustomResourceDefinition")
        .collect();
    assert!(!crds.is_empty(), "{} holds no CustomResourceDefinition", path.display());
    crds
}

// ---------------------------------------------------------------------------------------
// Schema validation
// ---------------------------------------------------------------------------------------

/// The `openAPIV3Schema` of the CRD version serving `apiVersion`/`kind`.
fn crd_schema(crds: &[Value], api_version: &str, kind: &str) -> Result<Value, String> {
    let (group, version) =
        api_version.split_once('/').ok_or_else(|| format!("apiVersion `{api_version}` has no group"))?;
    let crd = crds
        .iter()
        .find(|c| c["spec"]["group"] == group && c["spec"]["names"]["kind"] == kind)
        .ok_or_else(|| format!("no CRD for group `{group}` kind `{kind}` in the schema file"))?;
    let versions = crd["spec"]["versions"].as_array().cloned().unwrap_or_default();
    let served = versions
        .iter()
        .find(|v| v["name"] == version)
        .ok_or_else(|| format!("CRD for `{kind}` has no version `{version}`"))?;
    if served["served"] != true {
        return Err(format!("CRD version `{version}` of `{kind}` is not served"));
    }
    let schema = &served["schema"]["openAPIV3Schema"];
    if !schema.is_object() {
        return Err(format!("CRD version `{version}` of `{kind}` has no openAPIV3Schema"));
    }
    Ok(schema.clone())
}

/// Turns a CRD's structural schema into a JSON Schema for the whole object that, like the
/// API server with strict field validation, rejects fields the schema does not know
/// (except under `x-kubernetes-preserve-unknown-fields`), and knows the fields the API
/// server adds to every object (`apiVersion`, `kind`, `metadata`).
fn object_schema(open_api: &Value) -> Value {
    let mut schema = open_api.clone();
    forbid_unknown_fields(&mut schema);
    if let Some(properties) = schema.get_mut("properties").and_then(Value::as_object_mut) {
        properties.insert("apiVersion".into(), json!({ "type": "string", "minLength": 1 }));
        properties.insert("kind".into(), json!({ "type": "string", "minLength": 1 }));
        properties.insert(
            "metadata".into(),
            json!({
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": { "type": "string", "minLength": 1 },
                    "namespace": { "type": "string" },
                    "labels": { "type": "object", "additionalProperties": { "type": "string" } },
                    "annotations": { "type": "object", "additionalProperties": { "type": "string" } }
                }
            }),
        );
    }
    schema
}

fn forbid_unknown_fields(schema: &mut Value) {
    let Some(map) = schema.as_object_mut() else { return };
    let preserves_unknown = map.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true));
    if map.contains_key("properties") && !map.contains_key("additionalProperties") && !preserves_unknown {
        map.insert("additionalProperties".into(), Value::Bool(false));
    }
    if let Some(properties) = map.get_mut("properties").and_then(Value::as_object_mut) {
        properties.values_mut().for_each(forbid_unknown_fields);
    }
    for key in ["items", "additionalProperties", "not"] {
        if let Some(sub) = map.get_mut(key) {
            forbid_unknown_fields(sub);
        }
    }
    for key in ["allOf", "anyOf", "oneOf"] {
        if let Some(subs) = map.get_mut(key).and_then(Value::as_array_mut) {
            subs.iter_mut().for_each(forbid_unknown_fields);
        }
    }
}

/// The CEL rules of these two CRDs that a manifest can break, evaluated by hand
/// (the `jsonschema` crate does not run CEL).
fn cel_rule_errors(kind: &str, spec: &Value) -> Vec<String> {
    let has = |field: &str| spec.get(field).is_some();
    let mut errors = Vec::new();
    if kind == "WasmPlugin" {
        let set = ["selector", "targetRef", "targetRefs"].iter().filter(|f| has(f)).count();
        if set > 1 {
            errors.push("/spec: only one of targetRefs or selector can be set".to_string());
        }
        if let Some(url) = spec["url"].as_str() {
            let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("");
            if !["", "http", "https", "oci", "file"].contains(&scheme) {
                errors.push(format!("/spec/url: scheme `{scheme}` is not one of http, https, file, oci"));
            }
        }
    }
    if kind == "EnvoyFilter" && has("workloadSelector") && has("targetRefs") {
        errors.push("/spec: only one of targetRefs or workloadSelector can be set".to_string());
    }
    errors
}

/// A strict JSON Schema for the Istio security resources (`security.istio.io/v1`) these
/// manifests use, written from Istio's API reference since the shared schema file has
/// no CRDs for them: the fields of `AuthorizationPolicy` and `PeerAuthentication` that a
/// policy guarding the control plane needs; anything else is an error.
fn security_schema(api_version: &str, kind: &str) -> Option<Value> {
    if api_version != "security.istio.io/v1" {
        return None;
    }
    let strings = json!({ "type": "array", "items": { "type": "string", "minLength": 1 }, "minItems": 1 });
    let strict = |properties: Value| json!({ "type": "object", "additionalProperties": false, "properties": properties });
    let selector = strict(json!({
        "matchLabels": { "type": "object", "minProperties": 1, "additionalProperties": { "type": "string" } }
    }));
    let spec = match kind {
        "AuthorizationPolicy" => {
            let source = strict(json!({
                "principals": strings, "notPrincipals": strings, "namespaces": strings,
                "notNamespaces": strings, "ipBlocks": strings, "notIpBlocks": strings,
                "requestPrincipals": strings, "notRequestPrincipals": strings
            }));
            let operation = strict(json!({
                "ports": strings, "notPorts": strings, "methods": strings, "notMethods": strings,
                "paths": strings, "notPaths": strings, "hosts": strings, "notHosts": strings
            }));
            let rule = strict(json!({
                "from": { "type": "array", "minItems": 1, "items": strict(json!({ "source": source })) },
                "to": { "type": "array", "minItems": 1, "items": strict(json!({ "operation": operation })) }
            }));
            let mut spec = strict(json!({
                "selector": selector,
                "action": { "enum": ["ALLOW", "DENY", "AUDIT", "CUSTOM"] },
                "rules": { "type": "array", "items": rule }
            }));
            spec["required"] = json!(["selector", "action", "rules"]);
            spec
        }
        "PeerAuthentication" => {
            let mut spec = strict(json!({
                "selector": selector,
                "mtls": strict(json!({ "mode": { "enum": ["UNSET", "DISABLE", "PERMISSIVE", "STRICT"] } }))
            }));
            spec["required"] = json!(["selector", "mtls"]);
            spec
        }
        _ => return None,
    };
    let mut schema = object_schema(&strict(json!({ "spec": spec })));
    schema["required"] = json!(["apiVersion", "kind", "metadata", "spec"]);
    Some(schema)
}

/// Validates one Istio resource against its CRD (or, for the security resources,
/// [`security_schema`]); returns every error found.
fn validation_errors(crds: &[Value], object: &Value) -> Vec<String> {
    let api_version = object["apiVersion"].as_str().unwrap_or("");
    let kind = object["kind"].as_str().unwrap_or("");
    let schema = match (crd_schema(crds, api_version, kind), security_schema(api_version, kind)) {
        (Ok(schema), _) => object_schema(&schema),
        (Err(_), Some(schema)) => schema,
        (Err(e), None) => return vec![e],
    };
    let validator = match jsonschema::validator_for(&schema) {
        Ok(validator) => validator,
        Err(e) => return vec![format!("the CRD schema for `{kind}` is not a valid JSON Schema: {e}")],
    };
    let mut errors: Vec<String> =
        validator.iter_errors(object).map(|e| format!("{}: {e}", e.instance_path)).collect();
    errors.extend(cel_rule_errors(kind, &object["spec"]));
    errors
}

fn the_only<'a>(documents: &'a [Document], what: &str, pick: impl Fn(&Document) -> bool) -> &'a Document {
    let found: Vec<&Document> = documents.iter().filter(|d| pick(d)).collect();
    match found.as_slice() {
        [one] => one,
        _ => panic!(
            "expected exactly one {what}, found {}: {:?}",
            found.len(),
            found.iter().map(|d| &d.origin).collect::<Vec<_>>()
        ),
    }
}

fn wasm_plugin(documents: &[Document]) -> &Document {
    the_only(documents, "WasmPlugin", |d| d.kind() == "WasmPlugin")
}

/// The EnvoyFilter patches (with their document) whose `applyTo` is `apply_to`.
fn patches<'a>(documents: &'a [Document], apply_to: &str) -> Vec<(&'a Document, &'a Value)> {
    documents
        .iter()
        .filter(|d| d.kind() == "EnvoyFilter")
        .flat_map(|d| {
            d.value["spec"]["configPatches"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(move |p| p["applyTo"] == apply_to)
                .map(move |p| (d, p))
        })
        .collect()
}

/// The single HTTP_FILTER patch that inserts the Wasm filter.
fn wasm_filter_patch(documents: &[Document]) -> (&Document, &Value) {
    let found: Vec<_> = patches(documents, "HTTP_FILTER")
        .into_iter()
        .filter(|(_, p)| p["patch"]["value"]["name"] == WASM_FILTER)
        .collect();
    assert_eq!(found.len(), 1, "expected exactly one HTTP_FILTER patch adding {WASM_FILTER}");
    found[0]
}

#[test]
fn istio_manifests_validate_against_the_istio_crds() {
    let crds = crds();
    let documents = istio_documents();
    assert!(!documents.is_empty(), "envoy/istio/ holds no YAML documents");
    let mut kinds = BTreeSet::new();
    for document in &documents {
        let errors = validation_errors(&crds, &document.value);
        assert!(
            errors.is_empty(),
            "{} ({} {}) fails its CRD schema:\n  {}",
            document.origin,
            document.kind(),
            document.name(),
            errors.join("\n  ")
        );
        kinds.insert(document.kind().to_string());
    }
    assert_eq!(
        kinds,
        BTreeSet::from(
            ["AuthorizationPolicy", "EnvoyFilter", "PeerAuthentication", "WasmPlugin"].map(str::to_string)
        ),
        "envoy/istio/ should hold the filter's WasmPlugin and EnvoyFilters, and the control plane's policies"
    );
}

/// A named way to break a manifest.
type Mutation = (&'static str, fn(&mut Value));

fn remove_field(object: &mut Value, field: &str) {
    if let Some(map) = object.as_object_mut() {
        map.remove(field);
    }
}

fn rename_field(object: &mut Value, from: &str, to: &str) {
    if let Some(map) = object.as_object_mut() {
        if let Some(value) = map.remove(from) {
            map.insert(to.to_string(), value);
        }
    }
}

/// Mutated copies of the real manifests must be rejected: proves the schemas are applied
/// to the fields these manifests actually use.
#[test]
fn istio_schema_validation_rejects_broken_copies() {
    let crds = crds();
    let documents = istio_documents();
    let plugin = wasm_plugin(&documents).value.clone();
    let (filter_doc, _) = wasm_filter_patch(&documents);
    let envoy_filter = filter_doc.value.clone();
    assert!(validation_errors(&crds, &plugin).is_empty(), "baseline WasmPlugin must be valid");
    assert!(validation_errors(&crds, &envoy_filter).is_empty(), "baseline EnvoyFilter must be valid");

    let broken_plugins: Vec<Mutation> = vec![
        ("unknown phase", |v| v["spec"]["phase"] = json!("NOT_A_PHASE")),
        ("failStrategy of the wrong type", |v| v["spec"]["failStrategy"] = json!(true)),
        ("priority of the wrong type", |v| v["spec"]["priority"] = json!("high")),
        ("pluginConfig not an object", |v| v["spec"]["pluginConfig"] = json!("{\"realm\":\"x\"}")),
        ("misspelled field", |v| rename_field(&mut v["spec"], "failStrategy", "failstrategy")),
        ("missing url", |v| remove_field(&mut v["spec"], "url")),
        ("sha256 not a hex digest", |v| v["spec"]["sha256"] = json!("sha256:abc")),
        ("unknown imagePullPolicy", |v| v["spec"]["imagePullPolicy"] = json!("Sometimes")),
        ("selector and targetRefs", |v| {
            v["spec"]["targetRefs"] =
                json!([{ "kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "gw" }])
        }),
        ("url with an unsupported scheme", |v| v["spec"]["url"] = json!("ftp://example.com/filter.wasm")),
        ("metadata without a name", |v| remove_field(&mut v["metadata"], "name")),
    ];
    for (what, mutate) in broken_plugins {
        let mut copy = plugin.clone();
        mutate(&mut copy);
        assert!(!validation_errors(&crds, &copy).is_empty(), "a WasmPlugin with {what} passed validation");
    }

    let broken_filters: Vec<Mutation> = vec![
        ("unknown applyTo", |v| v["spec"]["configPatches"][0]["applyTo"] = json!("HTTP_FILTERS")),
        ("unknown operation", |v| v["spec"]["configPatches"][0]["patch"]["operation"] = json!("PREPEND")),
        ("unknown context", |v| v["spec"]["configPatches"][0]["match"]["context"] = json!("INBOUND")),
        ("listener and cluster match at once", |v| {
            v["spec"]["configPatches"][0]["match"]["cluster"] = json!({ "name": "x" })
        }),
        ("patch value not an object", |v| v["spec"]["configPatches"][0]["patch"]["value"] = json!("filter")),
        ("configPatches not a list", |v| v["spec"]["configPatches"] = json!({})),
        ("misspelled field", |v| rename_field(&mut v["spec"], "workloadSelector", "workloadSelectors")),
        ("wrong kind for the apiVersion", |v| v["kind"] = json!("EnvoyFilters")),
    ];
    for (what, mutate) in broken_filters {
        let mut copy = envoy_filter.clone();
        mutate(&mut copy);
        assert!(!validation_errors(&crds, &copy).is_empty(), "an EnvoyFilter with {what} passed validation");
    }

    let policy =
        the_only(&documents, "AuthorizationPolicy", |d| d.kind() == "AuthorizationPolicy").value.clone();
    assert!(validation_errors(&crds, &policy).is_empty(), "baseline AuthorizationPolicy must be valid");
    let broken_policies: Vec<Mutation> = vec![
        ("unknown action", |v| v["spec"]["action"] = json!("PERMIT")),
        ("misspelled principals", |v| {
            rename_field(&mut v["spec"]["rules"][0]["from"][0]["source"], "principals", "principal")
        }),
        ("ports not strings", |v| v["spec"]["rules"][0]["to"][0]["operation"]["ports"] = json!([9091])),
        ("an empty principal list", |v| v["spec"]["rules"][0]["from"][0]["source"]["principals"] = json!([])),
        ("no selector", |v| remove_field(&mut v["spec"], "selector")),
        ("an older apiVersion", |v| v["apiVersion"] = json!("security.istio.io/v1beta2")),
    ];
    for (what, mutate) in broken_policies {
        let mut copy = policy.clone();
        mutate(&mut copy);
        assert!(!validation_errors(&crds, &copy).is_empty(), "an AuthorizationPolicy with {what} passed");
    }
    let mut peer =
        the_only(&documents, "PeerAuthentication", |d| d.kind() == "PeerAuthentication").value.clone();
    assert!(validation_errors(&crds, &peer).is_empty(), "baseline PeerAuthentication must be valid");
    peer["spec"]["mtls"]["mode"] = json!("STRICTER");
    assert!(!validation_errors(&crds, &peer).is_empty(), "a PeerAuthentication with an unknown mode passed");
}

// ---------------------------------------------------------------------------------------
// The embedded plugin configuration
// ---------------------------------------------------------------------------------------

/// Compiles as the filter does in a proxy whose environment holds the fleet credential.
fn compile(origin: &str, bytes: &[u8]) -> portcullis_core::config::Policy {
    let env = |name: &str| {
        (name == FLEET_CREDENTIAL_ENV).then(|| "manifest-test-fleet-credential-0123456789".to_string())
    };
    match portcullis_core::config::compile_json_with(bytes, &env) {
        Ok(policy) => policy,
        Err(e) => panic!("{origin}: the embedded plugin configuration does not compile: {e}"),
    }
}

fn wasm_plugin_config(documents: &[Document]) -> (String, Value) {
    let plugin = wasm_plugin(documents);
    let config = plugin.value["spec"]["pluginConfig"].clone();
    assert!(config.is_object(), "{}: spec.pluginConfig must be an object", plugin.origin);
    (plugin.origin.clone(), config)
}

fn envoy_filter_config(documents: &[Document]) -> (String, String) {
    let (document, patch) = wasm_filter_patch(documents);
    let configuration = &patch["patch"]["value"]["typed_config"]["config"]["configuration"];
    assert_eq!(
        configuration["@type"], STRING_VALUE_TYPE,
        "{}: configuration must be a StringValue",
        document.origin
    );
    let text = configuration["value"]
        .as_str()
        .unwrap_or_else(|| panic!("{}: configuration.value must be a string", document.origin));
    (document.origin.clone(), text.to_string())
}

#[test]
fn wasm_plugin_config_compiles() {
    let (origin, config) = wasm_plugin_config(&istio_documents());
    let bytes = serde_json::to_vec(&config).unwrap_or_else(|e| panic!("{origin}: {e}"));
    compile(&origin, &bytes);
}

#[test]
fn envoy_filter_config_compiles() {
    let (origin, text) = envoy_filter_config(&istio_documents());
    compile(&origin, text.as_bytes());
}

/// Guards against a compiler that accepts anything: docs/plugin-config.md promises that
/// unknown fields are rejected.
#[test]
fn embedded_config_with_an_unknown_field_does_not_compile() {
    let (_, mut config) = wasm_plugin_config(&istio_documents());
    config["notAPortcullisField"] = json!(true);
    let bytes = serde_json::to_vec(&config).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        portcullis_core::config::compile_json(&bytes).is_err(),
        "a configuration with an unknown top-level field compiled"
    );
}

#[test]
fn wasm_plugin_and_envoy_filter_carry_the_same_plugin_config() {
    let documents = istio_documents();
    let (plugin_origin, plugin_config) = wasm_plugin_config(&documents);
    let (filter_origin, filter_text) = envoy_filter_config(&documents);
    let filter_config: Value = serde_json::from_str(&filter_text)
        .unwrap_or_else(|e| panic!("{filter_origin}: configuration.value is not JSON: {e}"));
    assert_eq!(
        plugin_config, filter_config,
        "{plugin_origin} spec.pluginConfig and {filter_origin} configuration.value differ"
    );
}

// ---------------------------------------------------------------------------------------
// The Envoy side of the EnvoyFilter route, and the control-plane cluster
// ---------------------------------------------------------------------------------------

#[test]
fn envoy_filter_inserts_the_wasm_filter_before_the_router_on_inbound() {
    let documents = istio_documents();
    let (document, patch) = wasm_filter_patch(&documents);
    let origin = &document.origin;
    assert_eq!(patch["match"]["context"], "SIDECAR_INBOUND", "{origin}");
    assert_eq!(patch["patch"]["operation"], "INSERT_BEFORE", "{origin}");
    let filter = &patch["match"]["listener"]["filterChain"]["filter"];
    assert_eq!(filter["name"], "envoy.filters.network.http_connection_manager", "{origin}");
    assert_eq!(filter["subFilter"]["name"], "envoy.filters.http.router", "{origin}");

    let typed_config = &patch["patch"]["value"]["typed_config"];
    assert_eq!(typed_config["@type"], WASM_TYPE, "{origin}");
    let config = &typed_config["config"];
    assert_ne!(config["fail_open"], true, "{origin}: an auth filter must fail closed");
    let vm = &config["vm_config"];
    assert_eq!(vm["runtime"], "envoy.wasm.runtime.v8", "{origin}");
    let code = &vm["code"];
    let local = code["local"]["filename"].as_str().is_some_and(|f| f.ends_with(".wasm"));
    let remote = code["remote"]["http_uri"]["uri"].is_string()
        && code["remote"]["sha256"].as_str().is_some_and(|s| s.len() == 64);
    assert!(local ^ remote, "{origin}: vm_config.code needs a local .wasm file or a remote uri with sha256");
}

/// The EnvoyFilters that patch clusters.
fn cluster_filters(documents: &[Document]) -> Vec<&Document> {
    documents
        .iter()
        .filter(|d| d.kind() == "EnvoyFilter")
        .filter(|d| {
            d.value["spec"]["configPatches"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["applyTo"] == "CLUSTER"))
        })
        .collect()
}

#[test]
fn both_routes_add_the_control_plane_cluster_the_filter_calls() {
    let documents = istio_documents();
    let (_, config) = wasm_plugin_config(&documents);
    let mut jwks_clusters: BTreeSet<&str> = BTreeSet::new();
    for (name, provider) in config["providers"].as_object().into_iter().flatten() {
        if let Some(cluster) = provider["remoteJwks"]["cluster"].as_str() {
            jwks_clusters.insert(cluster);
        } else {
            assert!(provider.get("remoteJwks").is_none(), "provider {name}: remoteJwks.cluster missing");
        }
    }
    assert!(
        !jwks_clusters.is_empty(),
        "the example configuration should fetch its JWKS from the control plane"
    );
    let control_plane = config["controlPlane"]["cluster"].as_str().expect("controlPlane.cluster");
    jwks_clusters.insert(control_plane);

    // Each route's file must be self-contained: it adds every cluster the filter calls.
    for file in ["wasmplugin.yaml", "envoyfilter.yaml"] {
        let in_file: Vec<Document> = read_documents(&repo_root().join("envoy/istio").join(file));
        let added: BTreeSet<String> = patches(&in_file, "CLUSTER")
            .into_iter()
            .filter(|(_, p)| p["patch"]["operation"] == "ADD")
            .filter_map(|(_, p)| p["patch"]["value"]["name"].as_str().map(str::to_string))
            .collect();
        for cluster in &jwks_clusters {
            assert!(added.contains(*cluster), "envoy/istio/{file} does not add the cluster `{cluster}`");
        }
    }

    // The cluster EnvoyFilter appears once per route, identical, under one name (so applying
    // both files cannot add the cluster twice).
    let clusters = cluster_filters(&documents);
    assert!(clusters.len() >= 2, "expected the cluster EnvoyFilter in both route files");
    for other in &clusters[1..] {
        assert_eq!(clusters[0].value, other.value, "{} and {} differ", clusters[0].origin, other.origin);
    }

    for (document, patch) in patches(&documents, "CLUSTER") {
        let origin = &document.origin;
        assert_eq!(
            patch["match"]["context"], "SIDECAR_OUTBOUND",
            "{origin}: Istio adds clusters only for outbound/gateway"
        );
        let cluster = &patch["patch"]["value"];
        assert!(matches!(cluster["type"].as_str(), Some("STATIC" | "STRICT_DNS")), "{origin}: cluster type");
        let address = &cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
            ["socket_address"];
        assert_eq!(address["address"], "127.0.0.1", "{origin}: the control plane is the pod's sidecar");
        assert_eq!(
            address["port_value"], INTERNAL_PORT,
            "{origin}: the filter calls the control plane's internal listener"
        );
    }
}

#[test]
fn both_routes_set_the_inbound_connection_manager_options_the_filter_relies_on() {
    let (_, config) = wasm_plugin_config(&istio_documents());
    let expected = hardened_connection_manager(&config);
    let mut found = Vec::new();
    for file in ["wasmplugin.yaml", "envoyfilter.yaml"] {
        let in_file: Vec<Document> = read_documents(&repo_root().join("envoy/istio").join(file));
        let merges: Vec<(&Document, &Value)> = patches(&in_file, "NETWORK_FILTER")
            .into_iter()
            .filter(|(_, p)| {
                p["match"]["context"] == "SIDECAR_INBOUND"
                    && p["match"]["listener"]["filterChain"]["filter"]["name"]
                        == "envoy.filters.network.http_connection_manager"
                    && p["patch"]["operation"] == "MERGE"
            })
            .collect();
        assert_eq!(merges.len(), 1, "envoy/istio/{file}: one MERGE patch of the inbound connection manager");
        let (document, patch) = merges[0];
        let missing = missing_fields(&patch["patch"]["value"]["typed_config"], &expected);
        assert!(missing.is_empty(), "{}: the connection manager patch lacks {missing:?}", document.origin);
        found.push(document.value.clone());
    }
    assert_eq!(found[0], found[1], "the connection manager EnvoyFilter differs between the two route files");
}

#[test]
fn all_filter_resources_select_the_same_workload() {
    let documents = istio_documents();
    let plugin_labels = &wasm_plugin(&documents).value["spec"]["selector"]["matchLabels"];
    assert!(plugin_labels.is_object(), "the WasmPlugin should select an example workload");
    for document in documents.iter().filter(|d| d.kind() == "EnvoyFilter") {
        assert_eq!(
            &document.value["spec"]["workloadSelector"]["labels"], plugin_labels,
            "{} selects other workloads than the WasmPlugin",
            document.origin
        );
    }
    // The sidecar example Deployment carries those labels.
    let kubernetes = kubernetes_documents();
    let selected = kubernetes.iter().filter(|d| d.kind() == "Deployment").any(|d| {
        let labels = &d.value["spec"]["template"]["metadata"]["labels"];
        plugin_labels.as_object().into_iter().flatten().all(|(k, v)| &labels[k] == v)
    });
    assert!(selected, "no Deployment in envoy/kubernetes/ has the pod labels the Istio resources select");
}

// ---------------------------------------------------------------------------------------
// Kubernetes
// ---------------------------------------------------------------------------------------

fn probe_path(container: &Value, probe: &str) -> Option<String> {
    container[probe]["httpGet"]["path"].as_str().map(str::to_string)
}

#[test]
fn every_kubernetes_container_has_probes_and_resource_limits() {
    let documents = kubernetes_documents();
    let mut workloads = 0;
    for document in &documents {
        assert!(
            document.value["apiVersion"].is_string()
                && !document.kind().is_empty()
                && !document.name().is_empty(),
            "{}: apiVersion, kind and metadata.name are required",
            document.origin
        );
        let Some(pod) = pod_spec(document) else { continue };
        workloads += 1;
        let containers = pod["containers"].as_array().cloned().unwrap_or_default();
        assert!(!containers.is_empty(), "{}: no containers", document.origin);
        for container in &containers {
            let at = format!("{} container `{}`", document.origin, container["name"].as_str().unwrap_or("?"));
            if container["name"] == "istio-proxy" {
                // Fields Istio merges into the sidecar it injects (image `auto`): its probes,
                // resources and security context come from the injection template.
                assert_eq!(
                    container["image"], "auto",
                    "{at}: only an injection override may be named istio-proxy"
                );
                continue;
            }
            for probe in ["readinessProbe", "livenessProbe"] {
                assert!(container[probe].is_object(), "{at}: {probe} missing");
            }
            for resource in ["cpu", "memory"] {
                assert!(
                    !container["resources"]["limits"][resource].is_null(),
                    "{at}: resources.limits.{resource} missing"
                );
                assert!(
                    !container["resources"]["requests"][resource].is_null(),
                    "{at}: resources.requests.{resource} missing"
                );
            }
            let non_root = container["securityContext"]["runAsNonRoot"] == true
                || pod["securityContext"]["runAsNonRoot"] == true;
            assert!(non_root, "{at}: must run as non-root");
        }
    }
    assert!(workloads >= 2, "expected the sidecar and the shared control-plane Deployments");
}

/// Whether `file` is inside a mount of `container` whose volume is a Secret of the file
/// holding the key it names (`secret_has(secret, key)`).
fn secret_file(pod: &Value, container: &Value, file: &str, secret_has: &dyn Fn(&str, &str) -> bool) -> bool {
    container["volumeMounts"].as_array().into_iter().flatten().any(|m| {
        let path = m["mountPath"].as_str().unwrap_or("");
        let Some(relative) = file.strip_prefix(&format!("{}/", path.trim_end_matches('/'))) else {
            return false;
        };
        let volume = pod["volumes"].as_array().into_iter().flatten().find(|v| v["name"] == m["name"]);
        volume.is_some_and(|v| {
            let secret = v["secret"]["secretName"].as_str().unwrap_or("");
            match v["secret"]["items"].as_array() {
                Some(items) => items
                    .iter()
                    .any(|i| i["path"] == relative && secret_has(secret, i["key"].as_str().unwrap_or(""))),
                None => secret_has(secret, relative),
            }
        })
    })
}

#[test]
fn control_plane_containers_run_as_documented() {
    let documents = kubernetes_documents();
    let secrets: Vec<&Document> = documents.iter().filter(|d| d.kind() == "Secret").collect();
    let secret_has = |name: &str, key: &str| {
        secrets.iter().any(|s| {
            s.name() == name && (!s.value["stringData"][key].is_null() || !s.value["data"][key].is_null())
        })
    };
    let mut stores = Vec::new();
    for document in &documents {
        let Some(pod) = pod_spec(document) else { continue };
        for container in pod["containers"].as_array().into_iter().flatten() {
            if container["name"] != CONTROL_PLANE_CONTAINER {
                continue;
            }
            let at = format!("{} container `{CONTROL_PLANE_CONTAINER}`", document.origin);
            assert_eq!(probe_path(container, "readinessProbe").as_deref(), Some("/readyz"), "{at}");
            assert_eq!(probe_path(container, "livenessProbe").as_deref(), Some("/healthz"), "{at}");
            // Two listeners: the internal one on the pod's address (Envoys, probes), the
            // admin one on loopback only.
            let port_named = |name: &str| {
                container["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|p| p["name"] == name)
                    .map(|p| &p["containerPort"])
            };
            assert_eq!(port_named("internal"), Some(&json!(INTERNAL_PORT)), "{at}: internal port");
            assert_eq!(port_named("admin"), Some(&json!(ADMIN_PORT)), "{at}: admin port");
            for probe in ["readinessProbe", "livenessProbe"] {
                assert_eq!(
                    container[probe]["httpGet"]["port"], "internal",
                    "{at}: {probe} on the internal listener"
                );
            }
            let value = |name: &str| env_var(container, name).and_then(|e| e["value"].as_str()).unwrap_or("");
            assert_eq!(value("PORTCULLIS_INTERNAL_LISTEN"), format!("0.0.0.0:{INTERNAL_PORT}"), "{at}");
            assert_eq!(
                value("PORTCULLIS_ADMIN_LISTEN"),
                format!("127.0.0.1:{ADMIN_PORT}"),
                "{at}: admin on loopback"
            );
            assert!(env_var(container, "PORTCULLIS_LISTEN").is_none(), "{at}: PORTCULLIS_LISTEN was removed");
            assert!(
                env_var(container, FLEET_CREDENTIAL_ENV).is_none(),
                "{at}: the credential comes from a file"
            );
            let fleet_file = value("PORTCULLIS_FLEET_CREDENTIAL_FILE");
            assert!(
                secret_file(pod, container, fleet_file, &secret_has),
                "{at}: PORTCULLIS_FLEET_CREDENTIAL_FILE ({fleet_file}) must be a mounted key of a Secret in this file"
            );
            assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true, "{at}");
            assert_eq!(container["securityContext"]["allowPrivilegeEscalation"], false, "{at}");

            // State survives the pod: no embedded store, nothing written to the pod's disk.
            assert!(
                env_var(container, "PORTCULLIS_DATA_DIR").is_none(),
                "{at}: no data dir; the state is in Redis"
            );
            let master_key_file = value("PORTCULLIS_MASTER_KEY_FILE");
            assert!(
                secret_file(pod, container, master_key_file, &secret_has),
                "{at}: PORTCULLIS_MASTER_KEY_FILE ({master_key_file}) must be a mounted key of a Secret in this file"
            );
            // What the control plane mints is what the filter next to it accepts.
            let (_, plugin) = wasm_plugin_config(&istio_documents());
            let provider = &plugin["providers"]["portcullis"];
            assert_eq!(value("PORTCULLIS_ISSUER"), provider["issuer"], "{at}: issuer");
            assert!(
                provider["audiences"]
                    .as_array()
                    .is_some_and(|a| a.contains(&json!(value("PORTCULLIS_AUDIENCE")))),
                "{at}: PORTCULLIS_AUDIENCE must be one of the filter's audiences"
            );

            // The admin token comes from a Secret, never a literal in the manifest.
            if let Some(token) = env_var(container, "PORTCULLIS_ADMIN_TOKEN") {
                assert!(token.get("value").is_none(), "{at}: PORTCULLIS_ADMIN_TOKEN must come from a Secret");
            }
            let token_file =
                env_var(container, "PORTCULLIS_ADMIN_TOKEN_FILE").and_then(|e| e["value"].as_str());
            let token_from_file =
                token_file.is_some_and(|file| secret_file(pod, container, file, &secret_has));
            let token_from_env = env_var(container, "PORTCULLIS_ADMIN_TOKEN").is_some_and(|t| {
                let r = &t["valueFrom"]["secretKeyRef"];
                secret_has(r["name"].as_str().unwrap_or(""), r["key"].as_str().unwrap_or(""))
            });
            assert!(
                token_from_file || token_from_env,
                "{at}: the admin token must come from a Secret in this file"
            );

            let store = value("PORTCULLIS_STORE");
            assert_eq!(store, "redis", "{at}: an embedded store in the pod loses its keys at every rollout");
            let url = env_var(container, "PORTCULLIS_REDIS_URL")
                .unwrap_or_else(|| panic!("{at}: PORTCULLIS_STORE=redis needs PORTCULLIS_REDIS_URL"));
            let r = &url["valueFrom"]["secretKeyRef"];
            assert!(
                secret_has(r["name"].as_str().unwrap_or(""), r["key"].as_str().unwrap_or("")),
                "{at}: PORTCULLIS_REDIS_URL must come from a Secret key in this file (it holds a password)"
            );
            stores.push(document.origin.clone());
        }
    }
    assert_eq!(stores.len(), 2, "expected a sidecar and a shared control plane example: {stores:?}");
}

// ---------------------------------------------------------------------------------------
// The fleet credential and who may call the control plane
// ---------------------------------------------------------------------------------------

#[test]
fn the_fleet_credential_goes_from_a_secret_through_the_proxy_environment_into_the_filter() {
    let documents = istio_documents();
    // Both routes configure the filter to read it from the VM's environment...
    let (origin, config) = wasm_plugin_config(&documents);
    assert_eq!(
        config["controlPlane"]["credential"],
        json!({ "env": FLEET_CREDENTIAL_ENV }),
        "{origin}: the credential must come from the environment, never inline"
    );
    // ...which each route fills from the proxy's own environment.
    let plugin = wasm_plugin(&documents);
    let env = plugin.value["spec"]["vmConfig"]["env"].as_array().cloned().unwrap_or_default();
    assert!(
        env.iter().any(|e| e["name"] == FLEET_CREDENTIAL_ENV
            && e["valueFrom"] == "HOST"
            && e.get("value").is_none()),
        "{}: vmConfig.env must pass {FLEET_CREDENTIAL_ENV} from the host",
        plugin.origin
    );
    let (filter, patch) = wasm_filter_patch(&documents);
    let keys = &patch["patch"]["value"]["typed_config"]["config"]["vm_config"]["environment_variables"]
        ["host_env_keys"];
    assert!(
        keys.as_array().is_some_and(|k| k.contains(&json!(FLEET_CREDENTIAL_ENV))),
        "{}: vm_config.environment_variables.host_env_keys must list {FLEET_CREDENTIAL_ENV}",
        filter.origin
    );
    for document in &documents {
        let text = serde_json::to_string(&document.value).unwrap();
        assert!(!text.contains("\"inline\""), "{}: an inline credential", document.origin);
    }

    // The workload the filter runs in gets it into its istio-proxy from a Secret.
    let kubernetes = kubernetes_documents();
    let labels = &plugin.value["spec"]["selector"]["matchLabels"];
    let workload = kubernetes
        .iter()
        .find(|d| {
            let pod_labels = &d.value["spec"]["template"]["metadata"]["labels"];
            d.kind() == "Deployment"
                && labels.as_object().into_iter().flatten().all(|(k, v)| &pod_labels[k] == v)
        })
        .expect("the Deployment the WasmPlugin selects");
    let proxy = pod_spec(workload).unwrap()["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == "istio-proxy")
        .unwrap_or_else(|| panic!("{}: no istio-proxy override carrying the credential", workload.origin));
    let from =
        &env_var(proxy, FLEET_CREDENTIAL_ENV).expect("the credential variable")["valueFrom"]["secretKeyRef"];
    let namespace = workload.value["metadata"]["namespace"].as_str();
    let secret = kubernetes
        .iter()
        .find(|d| {
            d.kind() == "Secret"
                && d.name() == from["name"]
                && d.value["metadata"]["namespace"].as_str() == namespace
        })
        .unwrap_or_else(|| panic!("no Secret {} in the workload's namespace", from["name"]));
    let key = from["key"].as_str().unwrap();
    assert!(!secret.value["stringData"][key].is_null(), "{}: key {key} missing", secret.origin);
}

#[test]
fn the_control_plane_admits_only_the_workloads_service_accounts_on_its_internal_port() {
    let documents = istio_documents();
    let kubernetes = kubernetes_documents();
    let policy = the_only(&documents, "AuthorizationPolicy", |d| d.kind() == "AuthorizationPolicy");
    let peer = the_only(&documents, "PeerAuthentication", |d| d.kind() == "PeerAuthentication");
    let at = &policy.origin;
    assert_eq!(peer.value["spec"]["mtls"]["mode"], "STRICT", "{}: principals need mutual TLS", peer.origin);
    let spec = &policy.value["spec"];
    assert_eq!(peer.value["spec"]["selector"], spec["selector"], "both select the control plane");
    assert_eq!(spec["action"], "ALLOW", "{at}");

    // They select the shared control plane's pods, in its namespace.
    let labels = &spec["selector"]["matchLabels"];
    let control_plane = kubernetes
        .iter()
        .find(|d| {
            d.kind() == "Deployment"
                && d.value["metadata"]["namespace"] == policy.value["metadata"]["namespace"]
                && labels
                    .as_object()
                    .into_iter()
                    .flatten()
                    .all(|(k, v)| &d.value["spec"]["template"]["metadata"]["labels"][k] == v)
        })
        .unwrap_or_else(|| panic!("{at}: selects no control-plane Deployment in its namespace"));
    assert!(
        pod_spec(control_plane).unwrap()["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["name"] == CONTROL_PLANE_CONTAINER),
        "{at}: {} is not the control plane",
        control_plane.origin
    );

    // The principals are the service accounts of the workloads running the filter.
    let plugin_labels = &wasm_plugin(&documents).value["spec"]["selector"]["matchLabels"];
    let expected: BTreeSet<String> = kubernetes
        .iter()
        .filter(|d| d.kind() == "Deployment")
        .filter(|d| {
            plugin_labels
                .as_object()
                .into_iter()
                .flatten()
                .all(|(k, v)| &d.value["spec"]["template"]["metadata"]["labels"][k] == v)
        })
        .map(|d| {
            let namespace = d.value["metadata"]["namespace"].as_str().unwrap_or("default");
            let account = pod_spec(d).unwrap()["serviceAccountName"].as_str().unwrap_or_else(|| {
                panic!("{}: set serviceAccountName, the principal the policy admits", d.origin)
            });
            format!("cluster.local/ns/{namespace}/sa/{account}")
        })
        .collect();
    assert!(!expected.is_empty());
    let internal = INTERNAL_PORT.to_string();
    let mut public_paths = BTreeSet::new();
    for (i, rule) in spec["rules"].as_array().unwrap().iter().enumerate() {
        let operations: Vec<&Value> =
            rule["to"].as_array().into_iter().flatten().map(|t| &t["operation"]).collect();
        assert!(!operations.is_empty(), "{at}: rule {i} must name what it allows");
        for operation in &operations {
            assert_eq!(
                operation["ports"],
                json!([internal]),
                "{at}: rule {i} may open the internal port only"
            );
        }
        match rule.get("from") {
            Some(from) => {
                let principals: BTreeSet<String> = from
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|f| f["source"]["principals"].as_array().cloned().unwrap_or_default())
                    .filter_map(|p| p.as_str().map(str::to_string))
                    .collect();
                assert_eq!(
                    principals, expected,
                    "{at}: rule {i} must admit exactly the workloads' service accounts"
                );
            }
            // From anyone: only the public routes, by path and method.
            None => {
                for operation in operations {
                    let (paths, methods) = (&operation["paths"], &operation["methods"]);
                    for path in paths.as_array().unwrap_or_else(|| panic!("{at}: rule {i} opens every path"))
                    {
                        public_paths.insert((path.as_str().unwrap().to_string(), methods.to_string()));
                    }
                }
            }
        }
    }
    assert_eq!(
        public_paths,
        BTreeSet::from([
            ("/.well-known/jwks.json".to_string(), json!(["GET"]).to_string()),
            ("/v1/token/refresh".to_string(), json!(["POST"]).to_string()),
        ]),
        "{at}: only the JWKS and refresh token exchange are public"
    );
    // The Service in front of the shared control plane exposes the internal port only.
    let service = kubernetes
        .iter()
        .find(|d| {
            d.kind() == "Service"
                && d.value["metadata"]["namespace"] == policy.value["metadata"]["namespace"]
                && &d.value["spec"]["selector"] == labels
        })
        .expect("the control plane's Service");
    let ports: Vec<&Value> = service.value["spec"]["ports"].as_array().unwrap().iter().collect();
    assert_eq!(ports.len(), 1, "{}: only the internal listener", service.origin);
    assert_eq!((&ports[0]["port"], &ports[0]["targetPort"]), (&json!(INTERNAL_PORT), &json!("internal")));
}
