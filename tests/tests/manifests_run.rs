//! The deployment manifests, run as written: no cluster exists here, so this is how
//! `envoy/kubernetes/*.yaml` and `envoy/istio/*.yaml` are proven to work together.
//!
//! Each container is started as the kubelet would start it: the binary its image runs
//! (the control plane image's entrypoint is `portcullis-control-plane`,
//! `packaging/control-plane/Dockerfile`; Redis' is `redis-server`), its `command`/`args`
//! and `env` as written, `$(VAR)` expanded from its environment, `secretKeyRef`s and Secret
//! volumes filled from the Secrets in the same files, in the pod's namespace. Envoy is
//! started with what Istio would build from the WasmPlugin (or the EnvoyFilters): the
//! real `.wasm`, the plugin configuration as written, the VM environment from the
//! `istio-proxy` container's env, the control-plane cluster and the connection manager
//! options from the EnvoyFilter patches.
//!
//! Substituted, and nothing else (each substitution is printed by the test):
//! - **addresses and ports**: every listen address in a container's env (`*_LISTEN`) and
//!   Redis' `--port`/`--bind` become `127.0.0.1:<free port>`; a Service's DNS name
//!   (`<service>.<namespace>.svc.cluster.local:<port>`) becomes the loopback address of
//!   the container port its `targetPort` names, in the pods its selector picks; the
//!   sidecar cluster's `127.0.0.1:9091` becomes the control plane's internal listener;
//! - **file paths**: each Secret volume is written into a temporary directory and the
//!   paths under its `mountPath` point there; Redis' `--dir` is a temporary directory;
//!   the `.wasm` location (the WasmPlugin's `url`, the EnvoyFilter's `local.filename`) is
//!   the freshly built filter.
//!
//! What is not run: the `app` container (a placeholder for the user's application; the
//! test's upstream server stands in for it) and Istio itself (its probe rewriting, mTLS
//! and the AuthorizationPolicy: `tests/manifests.rs` checks those offline).
//!
//! What is checked, per variant (sidecar and shared control plane) and route (WasmPlugin
//! and EnvoyFilter): every probe of every container answers (HTTP 200 on the probe's path
//! and port, or a TCP connect); a token minted by that control plane passes the filter;
//! after `portcullis revoke token` it is refused, after `portcullis revoke user` the
//! user's tokens are; replicas share their keys (minted on one, verified through
//! another's JWKS); and after a rollout (new control-plane processes and a new Envoy)
//! tokens minted before still pass.

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use portcullis_e2e::manifests::{istio_documents, kubernetes_documents, pod_spec, read_documents, Document};
use portcullis_e2e::{
    bin, error_description, eventually, filter_wasm, free_port, http, repo_root, which, www_authenticate,
    Envoy, EnvoyClusters, Hcm, Proc, TestServer, Workdir, FLEET_CREDENTIAL_ENV,
};
use serde_json::{json, Value};

const CONTROL_PLANE_CONTAINER: &str = "portcullis-control-plane";
const WASM_FILTER: &str = "envoy.filters.http.wasm";
const WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
const STRING_VALUE_TYPE: &str = "type.googleapis.com/google.protobuf.StringValue";
/// The revocation poll interval of the shipped configuration is 1 s; a revocation shows
/// within a poll or two; the bound is generous so a starved machine's scheduling cannot
/// fail a correct run (a passing run never waits for it).
const PROPAGATION: Duration = Duration::from_secs(60);
/// Containers start, sync the revocation feed and fetch the JWKS.
const STARTUP: Duration = portcullis_e2e::STARTUP_BOUND;

// ---------------------------------------------------------------------------------------
// Substitutions
// ---------------------------------------------------------------------------------------

/// Addresses as the manifests write them → the loopback addresses they run on.
#[derive(Default)]
struct Addresses(BTreeMap<String, String>);

impl Addresses {
    fn add(&mut self, written: &str, loopback: &str) {
        eprintln!("substituted address {written} -> {loopback}");
        self.0.insert(written.to_string(), loopback.to_string());
    }

    /// `value` with every known address replaced.
    fn apply(&self, value: &str) -> String {
        self.0.iter().fold(value.to_string(), |v, (from, to)| v.replace(from, to))
    }
}

/// Kubernetes' `$(VAR)` expansion in `command`, `args` and `env` values, from the variables
/// defined so far; `$$` escapes, unknown references stay as written.
fn expand(value: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some((name, after)) = tail.strip_prefix("$(").and_then(|t| t.split_once(')')) {
            match env.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => out.push_str(&format!("$({name})")),
            }
            rest = after;
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

// ---------------------------------------------------------------------------------------
// Secrets and containers
// ---------------------------------------------------------------------------------------

/// A key of a Secret in `namespace`, from `stringData` or (base64) `data`.
fn secret_value(documents: &[Document], namespace: &str, name: &str, key: &str) -> String {
    let secret = documents
        .iter()
        .find(|d| d.kind() == "Secret" && d.name() == name && d.namespace() == namespace)
        .unwrap_or_else(|| panic!("no Secret {namespace}/{name} in the manifests"));
    if let Some(v) = secret.value["stringData"][key].as_str() {
        return v.to_string();
    }
    let data = secret.value["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("{}: Secret {name} has no key {key}", secret.origin));
    let bytes = base64::engine::general_purpose::STANDARD.decode(data).expect("Secret data is base64");
    String::from_utf8(bytes).expect("Secret data is UTF-8")
}

/// A container of a pod, started.
struct Started {
    proc: Proc,
    /// containerPort → the loopback port it runs on.
    ports: BTreeMap<u64, u16>,
    /// The container's environment as it ran (after substitutions).
    env: Vec<(String, String)>,
}

impl Started {
    /// The loopback port of a probe's or Service's port (a name or a number).
    fn port(&self, container: &Value, port: &Value) -> u16 {
        let number = match port {
            Value::String(name) => container["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| &p["name"] == name)
                .and_then(|p| p["containerPort"].as_u64())
                .unwrap_or_else(|| panic!("container {} has no port named {name}", container["name"])),
            other => other.as_u64().unwrap_or_else(|| panic!("bad port {other}")),
        };
        *self.ports.get(&number).unwrap_or_else(|| {
            panic!("container {}: nothing listens on container port {number}", container["name"])
        })
    }

    fn var(&self, name: &str) -> &str {
        self.env.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).unwrap_or("")
    }
}

/// The environment of `container` as the kubelet gives it (values, Secret references,
/// `$(VAR)`), with `Secret` mount paths moved to `mounts` and addresses substituted.
fn container_env(
    documents: &[Document],
    namespace: &str,
    container: &Value,
    mounts: &[(String, PathBuf)],
    addresses: &Addresses,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    for entry in container["env"].as_array().into_iter().flatten() {
        let name = entry["name"].as_str().expect("env name").to_string();
        let value = if let Some(v) = entry["value"].as_str() {
            expand(v, &env)
        } else if let Some(r) = entry["valueFrom"]["secretKeyRef"].as_object() {
            let (secret, key) = (r["name"].as_str().unwrap_or(""), r["key"].as_str().unwrap_or(""));
            secret_value(documents, namespace, secret, key)
        } else {
            panic!("container {}: env {name} comes from something this test cannot fill", container["name"]);
        };
        let mut value = addresses.apply(&value);
        for (mount, dir) in mounts {
            if let Some(relative) = value.strip_prefix(&format!("{mount}/")) {
                let moved = dir.join(relative).display().to_string();
                eprintln!("substituted path {value} -> {moved}");
                value = moved;
            }
        }
        env.push((name, value));
    }
    env
}

/// Writes the Secret volumes `container` mounts into `dir`; returns (mountPath, directory).
fn mount_secrets(
    documents: &[Document],
    workload: &Document,
    pod: &Value,
    container: &Value,
    dir: &Path,
) -> Vec<(String, PathBuf)> {
    let namespace = workload.namespace();
    let mut mounts = Vec::new();
    for mount in container["volumeMounts"].as_array().into_iter().flatten() {
        let claims = workload.value["spec"]["volumeClaimTemplates"].as_array().cloned().unwrap_or_default();
        if claims.iter().any(|c| c["metadata"]["name"] == mount["name"]) {
            continue; // a PersistentVolume: its path is substituted where the container names it
        }
        let volume = pod["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|v| v["name"] == mount["name"])
            .unwrap_or_else(|| panic!("volume {} is not declared", mount["name"]));
        let Some(secret) = volume["secret"]["secretName"].as_str() else { continue };
        let target = dir.join(format!(
            "{}-{}",
            container["name"].as_str().unwrap_or("c"),
            volume["name"].as_str().unwrap_or("v")
        ));
        std::fs::create_dir_all(&target).unwrap();
        let items = volume["secret"]["items"].as_array().cloned().unwrap_or_else(|| {
            let document =
                documents.iter().find(|d| d.kind() == "Secret" && d.name() == secret).expect("Secret");
            let keys = document.value["stringData"].as_object().or(document.value["data"].as_object());
            keys.into_iter().flatten().map(|(k, _)| json!({ "key": k, "path": k })).collect()
        });
        for item in items {
            let key = item["key"].as_str().unwrap_or("");
            let value = secret_value(documents, namespace, secret, key);
            std::fs::write(target.join(item["path"].as_str().unwrap_or(key)), value).unwrap();
        }
        mounts.push((
            mount["mountPath"].as_str().expect("mountPath").trim_end_matches('/').to_string(),
            target,
        ));
    }
    mounts
}

/// Starts one container of a workload: the control plane or Redis.
fn start_container(
    documents: &[Document],
    workload: &Document,
    container_name: &str,
    addresses: &Addresses,
    dir: &Path,
) -> Started {
    let pod = pod_spec(workload).expect("a workload");
    let container = container(workload, container_name);
    let namespace = workload.namespace();
    let dir = tempfile::Builder::new().prefix(container_name).tempdir_in(dir).unwrap().keep();
    let mounts = mount_secrets(documents, workload, pod, container, &dir);
    let mut env = container_env(documents, namespace, container, &mounts, addresses);
    let mut ports = BTreeMap::new();
    // Listen addresses in the environment: the pod's address or loopback, on loopback.
    for (name, value) in env.iter_mut() {
        if !name.ends_with("_LISTEN") {
            continue;
        }
        let (_, port) = value.rsplit_once(':').unwrap_or_else(|| panic!("{name}={value} is no address"));
        let loopback = free_port();
        ports.insert(port.parse::<u64>().expect("a port"), loopback);
        let new = format!("127.0.0.1:{loopback}");
        eprintln!("substituted {name} {value} -> {new}");
        *value = new;
    }
    let written: Vec<String> = container["command"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(container["args"].as_array().into_iter().flatten())
        .map(|a| expand(a.as_str().expect("a string argument"), &env))
        .collect();
    let image = container["image"].as_str().unwrap_or("");
    let mut cmd = if image.contains(CONTROL_PLANE_CONTAINER) {
        // The image's entrypoint, then the container's args (it has no command).
        assert!(
            container["command"].is_null(),
            "{}: the control plane image has its entrypoint",
            workload.origin
        );
        let mut cmd = Command::new(bin("portcullis-control-plane"));
        cmd.args(&written);
        cmd
    } else if written.first().map(String::as_str) == Some("redis-server") {
        let mut cmd = Command::new(which("redis-server").expect("redis-server on PATH (make setup)"));
        let mut args = written[1..].to_vec();
        for i in 0..args.len().saturating_sub(1) {
            let new = match args[i].as_str() {
                "--port" => {
                    let loopback = free_port();
                    ports.insert(args[i + 1].parse().expect("a port"), loopback);
                    loopback.to_string()
                }
                "--bind" => "127.0.0.1".to_string(),
                "--dir" => dir.display().to_string(),
                _ => continue,
            };
            eprintln!("substituted redis-server {} {} -> {new}", args[i], args[i + 1]);
            args[i + 1] = new;
        }
        cmd.args(args);
        cmd
    } else {
        panic!("{}: the test does not know how to run image {image}", workload.origin);
    };
    cmd.env_clear().envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let name =
        format!("{}-{}-{}", workload.name(), container_name, ports.values().next().copied().unwrap_or(0));
    let proc = Proc::spawn(&name, cmd, &dir);
    Started { proc, ports, env }
}

fn container<'a>(workload: &'a Document, name: &str) -> &'a Value {
    pod_spec(workload)
        .and_then(|p| p["containers"].as_array())
        .into_iter()
        .flatten()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("{}: no container {name}", workload.origin))
}

/// Waits until both probes of `container` succeed, as the kubelet checks them.
async fn probes_pass(workload: &Document, container: &Value, started: &mut Started) {
    for probe in ["readinessProbe", "livenessProbe"] {
        let spec = &container[probe];
        let what = format!("{} {} {probe}", workload.origin, container["name"]);
        if let Some(get) = spec["httpGet"].as_object() {
            let port = started.port(container, &get["port"]);
            let url = format!("http://127.0.0.1:{port}{}", get["path"].as_str().unwrap_or("/"));
            let exited = &mut started.proc;
            eventually(STARTUP, &format!("{what}: 200 from {url}"), || {
                let (url, what) = (url.clone(), what.clone());
                let gone = exited.exited();
                let log = if gone {
                    std::fs::read_to_string(&exited.log).unwrap_or_default()
                } else {
                    String::new()
                };
                async move {
                    assert!(!gone, "{what}: the container exited; its log:\n{log}");
                    matches!(http().get(&url).send().await, Ok(r) if r.status() == 200)
                }
            })
            .await;
        } else if let Some(tcp) = spec["tcpSocket"].as_object() {
            let port = started.port(container, &tcp["port"]);
            eventually(STARTUP, &format!("{what}: TCP to {port}"), || async move {
                TcpStream::connect(("127.0.0.1", port)).is_ok()
            })
            .await;
        } else {
            panic!("{what}: a probe this test cannot run: {spec}");
        }
    }
}

/// The Service `service` in `namespace`, resolved to the loopback address of its first
/// port's target in `started` (a container of a pod its selector picks).
fn service_address(
    kubernetes: &[Document],
    service: &str,
    workload: &Document,
    container_name: &str,
    started: &Started,
    addresses: &mut Addresses,
) {
    let document = kubernetes
        .iter()
        .find(|d| d.kind() == "Service" && d.name() == service && d.namespace() == workload.namespace())
        .unwrap_or_else(|| panic!("no Service {service} in {}", workload.namespace()));
    let labels = &workload.value["spec"]["template"]["metadata"]["labels"];
    for (k, v) in document.value["spec"]["selector"].as_object().expect("a selector") {
        assert_eq!(&labels[k], v, "{}: selects no pod of {}", document.origin, workload.origin);
    }
    let port = &document.value["spec"]["ports"][0];
    let loopback = started.port(container(workload, container_name), &port["targetPort"]);
    addresses.add(
        &format!("{service}.{}.svc.cluster.local:{}", workload.namespace(), port["port"]),
        &format!("127.0.0.1:{loopback}"),
    );
}

fn workload<'a>(documents: &'a [Document], kind: &str, name: &str) -> &'a Document {
    documents
        .iter()
        .find(|d| d.kind() == kind && d.name() == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in envoy/kubernetes/"))
}

// ---------------------------------------------------------------------------------------
// Envoy, as Istio configures it
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
enum Route {
    WasmPlugin,
    EnvoyFilter,
}

/// Where the filter's control-plane calls go.
enum ControlPlaneCluster {
    /// The pod's own control plane: the cluster EnvoyFilter of the route's file, its
    /// `127.0.0.1:9091` endpoint on the control plane's internal listener.
    Sidecar(u16),
    /// The shared control plane, as deploy-istio.md says: the cluster EnvoyFilter left
    /// out, the plugin configuration's clusters renamed to Istio's cluster for the Service
    /// (which Istio builds; here: pointing at the Service's loopback address).
    Shared(String),
}

const SHARED_CLUSTER: &str = "outbound|9091||portcullis-control-plane.portcullis.svc.cluster.local";

fn cluster(name: &str, address: &str) -> Value {
    let (host, port) = address.rsplit_once(':').expect("host:port");
    json!({
        "name": name, "type": "STATIC", "connect_timeout": "1s",
        "load_assignment": { "cluster_name": name, "endpoints": [ { "lb_endpoints": [
            { "endpoint": { "address": { "socket_address": {
                "address": host, "port_value": port.parse::<u16>().expect("port") } } } } ] } ] }
    })
}

/// The EnvoyFilter patches of one file, by `applyTo`.
fn patches(documents: &[Document], apply_to: &str) -> Vec<Value> {
    documents
        .iter()
        .filter(|d| d.kind() == "EnvoyFilter")
        .flat_map(|d| d.value["spec"]["configPatches"].as_array().cloned().unwrap_or_default())
        .filter(|p| p["applyTo"] == apply_to)
        .collect()
}

/// Renames every `cluster` field of the plugin configuration that names `from`.
fn rename_clusters(config: &mut Value, from: &str, to: &str) {
    match config {
        Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                if key == "cluster" && value == from {
                    *value = json!(to);
                } else {
                    rename_clusters(value, from, to);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| rename_clusters(v, from, to)),
        _ => {}
    }
}

/// The bootstrap for one route: Istio's inbound listener reduced to what matters here (the
/// connection manager with the EnvoyFilter's MERGE, the Wasm filter as the route delivers
/// it, the router to the app) and the clusters.
fn bootstrap(route: Route, upstream_port: u16, control_plane: &ControlPlaneCluster) -> Value {
    let file = match route {
        Route::WasmPlugin => "wasmplugin.yaml",
        Route::EnvoyFilter => "envoyfilter.yaml",
    };
    let documents = read_documents(&repo_root().join("envoy/istio").join(file));
    let wasm = filter_wasm().display().to_string();
    eprintln!("substituted the .wasm location in envoy/istio/{file} -> {wasm}");
    let mut filter = match route {
        Route::WasmPlugin => {
            // What istiod sends for a WasmPlugin (its `url` fetched by istio-agent and
            // handed to Envoy as a local file).
            let plugin = documents.iter().find(|d| d.kind() == "WasmPlugin").expect("a WasmPlugin");
            let spec = &plugin.value["spec"];
            assert_eq!(spec["type"], "HTTP");
            let host_env: Vec<&Value> = spec["vmConfig"]["env"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|e| e["valueFrom"] == "HOST")
                .map(|e| &e["name"])
                .collect();
            let inline: serde_json::Map<String, Value> = spec["vmConfig"]["env"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|e| e["valueFrom"] != "HOST")
                .map(|e| (e["name"].as_str().unwrap_or("").to_string(), e["value"].clone()))
                .collect();
            json!({ "name": WASM_FILTER, "typed_config": { "@type": WASM_TYPE, "config": {
                "name": format!("{}.{}", plugin.namespace(), plugin.name()),
                "root_id": spec["pluginName"].as_str().unwrap_or(""),
                "vm_config": {
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": { "local": { "filename": wasm } },
                    "environment_variables": { "host_env_keys": host_env, "key_values": inline }
                },
                "fail_open": spec["failStrategy"] == "FAIL_OPEN",
                "configuration": { "@type": STRING_VALUE_TYPE, "value": spec["pluginConfig"].to_string() }
            } } })
        }
        Route::EnvoyFilter => {
            let patch = patches(&documents, "HTTP_FILTER")
                .into_iter()
                .find(|p| p["patch"]["value"]["name"] == WASM_FILTER)
                .expect("the Wasm filter patch");
            let mut value = patch["patch"]["value"].clone();
            value["typed_config"]["config"]["vm_config"]["code"] = json!({ "local": { "filename": wasm } });
            value
        }
    };
    let mut clusters = vec![cluster("upstream", &format!("127.0.0.1:{upstream_port}"))];
    match control_plane {
        ControlPlaneCluster::Sidecar(port) => {
            for patch in patches(&documents, "CLUSTER") {
                let mut value = patch["patch"]["value"].clone();
                let name = value["name"].clone();
                let address = &mut value["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
                    ["address"]["socket_address"];
                eprintln!(
                    "substituted cluster {name} {}:{} -> 127.0.0.1:{port}",
                    address["address"], address["port_value"]
                );
                address["port_value"] = json!(port);
                clusters.push(value);
            }
        }
        ControlPlaneCluster::Shared(address) => {
            let config = &mut filter["typed_config"]["config"]["configuration"]["value"];
            let mut plugin: Value = serde_json::from_str(config.as_str().expect("configuration")).unwrap();
            rename_clusters(&mut plugin, "portcullis_control_plane", SHARED_CLUSTER);
            *config = json!(plugin.to_string());
            clusters.push(cluster(SHARED_CLUSTER, address));
        }
    }
    let plugin_config: Value =
        serde_json::from_str(filter["typed_config"]["config"]["configuration"]["value"].as_str().unwrap())
            .unwrap();
    let no_clusters = EnvoyClusters { upstream_port, jwks_port: None, control_plane_port: None };
    let mut bootstrap = Envoy::bootstrap(&plugin_config, &no_clusters, Hcm::Permissive, 0, 0);
    let manager = bootstrap
        .pointer_mut("/static_resources/listeners/0/filter_chains/0/filters/0/typed_config")
        .and_then(Value::as_object_mut)
        .expect("connection manager");
    for patch in patches(&documents, "NETWORK_FILTER") {
        let fields = patch["patch"]["value"]["typed_config"].as_object().cloned().unwrap_or_default();
        manager.extend(fields.into_iter().filter(|(k, _)| k != "@type"));
    }
    manager["http_filters"][0] = filter;
    bootstrap["static_resources"]["clusters"] = json!(clusters);
    bootstrap
}

/// The environment Istio's sidecar gets from the workload's `istio-proxy` container.
fn proxy_env(kubernetes: &[Document], workload: &Document) -> Vec<(String, String)> {
    let proxy = container(workload, "istio-proxy");
    let env = container_env(kubernetes, workload.namespace(), proxy, &[], &Addresses::default());
    assert!(
        env.iter().any(|(k, _)| k == FLEET_CREDENTIAL_ENV),
        "{}: istio-proxy without the credential",
        workload.origin
    );
    env
}

async fn start_envoy(
    dir: &Path,
    route: Route,
    upstream_port: u16,
    control_plane: &ControlPlaneCluster,
    env: &[(String, String)],
) -> Envoy {
    let config = bootstrap(route, upstream_port, control_plane);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Envoy::start_bootstrap(dir, &config, &env).await
}

// ---------------------------------------------------------------------------------------
// The checks
// ---------------------------------------------------------------------------------------

/// One control-plane replica, as the CLI reaches it (admin listener, admin token file).
struct Replica {
    started: Started,
}

impl Replica {
    fn cli(&self, args: &[&str]) -> String {
        let admin = self.started.var("PORTCULLIS_ADMIN_LISTEN");
        let out = Command::new(bin("portcullis"))
            .arg("--url")
            .arg(format!("http://{admin}"))
            .args(args)
            .env("PORTCULLIS_ADMIN_TOKEN_FILE", self.started.var("PORTCULLIS_ADMIN_TOKEN_FILE"))
            .output()
            .expect("run the portcullis CLI");
        assert!(out.status.success(), "portcullis {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn token(&self, sub: &str, scope: &str) -> String {
        self.cli(&["token", "issue", "--sub", sub, "--scope", scope])
    }

    fn internal_port(&self, container: &Value) -> u16 {
        self.started.port(container, &json!("internal"))
    }
}

async fn call(envoy: &Envoy, path: &str, token: Option<&str>) -> (u16, String) {
    let mut request = http().get(envoy.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let r = request.send().await.expect("request through envoy");
    (r.status().as_u16(), error_description(&r))
}

async fn passes(envoy: &Envoy, token: &str, what: &str) {
    eventually(STARTUP, what, || async { call(envoy, "/api/items", Some(token)).await.0 == 200 }).await;
}

/// Minted on `mint`, through the filter of `envoy`: passes; refused once revoked.
async fn tokens_pass_until_revoked(mint: &Replica, envoy: &Envoy, upstream: &TestServer) {
    assert_eq!(call(envoy, "/healthz", None).await.0, 200, "the public health route");
    let (status, _) = call(envoy, "/api/items", None).await;
    assert_eq!(status, 401, "a protected route without a token");

    let alice = mint.token("alice", "api.read");
    passes(envoy, &alice, "a token minted by the control plane to pass").await;
    assert!(upstream.protected_hits() > 0, "the app saw the request");
    mint.cli(&["revoke", "token", &alice]);
    eventually(PROPAGATION, "the revoked token to be refused", || async {
        call(envoy, "/api/items", Some(&alice)).await == (401, "revoked".to_string())
    })
    .await;

    let bob = mint.token("bob", "api.read");
    passes(envoy, &bob, "bob's token to pass").await;
    mint.cli(&["revoke", "user", "bob"]);
    eventually(PROPAGATION, "the revoked user's token to be refused", || async {
        let (status, reason) = call(envoy, "/api/items", Some(&bob)).await;
        status == 401 && (reason == "version_too_old" || reason == "revoked")
    })
    .await;
    // What docs/deploy-istio.md section 5 looks for in the sidecar's stats.
    let polls = envoy.counter("wasmcustom.portcullis.revocation.poll_ok").await;
    assert!(polls > 0, "the filter's feed polls are counted");
    // The rules as written: reading needs `api.read`.
    let r = http()
        .get(envoy.url("/api/items"))
        .bearer_auth(mint.token("carol", "api.write"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "a read route with only api.write");
    assert!(www_authenticate(&r).contains("error=\"insufficient_scope\""), "{}", www_authenticate(&r));
}

/// Starts Redis from `envoy/kubernetes/redis.yaml` and maps its Service.
async fn start_redis(kubernetes: &[Document], addresses: &mut Addresses, dir: &Path) -> Started {
    let redis = workload(kubernetes, "StatefulSet", "redis");
    let name = container(redis, "redis")["name"].as_str().unwrap().to_string();
    let mut started = start_container(kubernetes, redis, &name, addresses, dir);
    probes_pass(redis, container(redis, &name), &mut started).await;
    service_address(kubernetes, "redis", redis, &name, &started, addresses);
    started
}

/// `replicas` pods of `workload`'s control-plane container, probes answered.
async fn start_replicas(
    kubernetes: &[Document],
    workload: &Document,
    addresses: &Addresses,
    dir: &Path,
) -> Vec<Replica> {
    let replicas = workload.value["spec"]["replicas"].as_u64().unwrap_or(1).clamp(1, 2);
    let mut started = Vec::new();
    for _ in 0..replicas {
        let mut replica = start_container(kubernetes, workload, CONTROL_PLANE_CONTAINER, addresses, dir);
        probes_pass(workload, container(workload, CONTROL_PLANE_CONTAINER), &mut replica).await;
        started.push(Replica { started: replica });
    }
    started
}

async fn sidecar_variant(route: Route) {
    let dir = Workdir::new();
    let kubernetes = kubernetes_documents();
    let mut addresses = Addresses::default();
    let _redis = start_redis(&kubernetes, &mut addresses, dir.path()).await;
    let app = workload(&kubernetes, "Deployment", "demo-api");
    let cp_container = container(app, CONTROL_PLANE_CONTAINER);
    let upstream = TestServer::start(json!({ "keys": [] })).await;
    let proxy = proxy_env(&kubernetes, app);

    // Two pods: each with its control plane and its Envoy, one Redis behind both.
    let replicas = start_replicas(&kubernetes, app, &addresses, dir.path()).await;
    assert_eq!(replicas.len(), 2, "{}: the example runs two replicas", app.origin);
    let last = replicas.last().unwrap();
    let sidecar = ControlPlaneCluster::Sidecar(last.internal_port(cp_container));
    let envoy = start_envoy(dir.path(), route, upstream.port, &sidecar, &proxy).await;
    // Minted by the first pod's control plane, checked by the second pod's filter.
    tokens_pass_until_revoked(&replicas[0], &envoy, &upstream).await;
    let before = replicas[0].token("dave", "api.read");
    passes(&envoy, &before, "dave's token to pass").await;

    // A rollout: every container of every pod replaced (the proxy too, so nothing cached
    // survives but what is in Redis).
    drop(envoy);
    drop(replicas);
    let replicas = start_replicas(&kubernetes, app, &addresses, dir.path()).await;
    let sidecar = ControlPlaneCluster::Sidecar(replicas[0].internal_port(cp_container));
    let envoy = start_envoy(dir.path(), route, upstream.port, &sidecar, &proxy).await;
    passes(&envoy, &before, "a token minted before the rollout to pass after it").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_control_plane_and_the_wasm_plugin_work_as_written() {
    sidecar_variant(Route::WasmPlugin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sidecar_control_plane_and_the_envoy_filter_work_as_written() {
    sidecar_variant(Route::EnvoyFilter).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_control_plane_works_through_its_service_as_written() {
    let dir = Workdir::new();
    let kubernetes = kubernetes_documents();
    let mut addresses = Addresses::default();
    let _redis = start_redis(&kubernetes, &mut addresses, dir.path()).await;
    let shared = workload(&kubernetes, "Deployment", CONTROL_PLANE_CONTAINER);
    let replicas = start_replicas(&kubernetes, shared, &addresses, dir.path()).await;
    assert_eq!(replicas.len(), 2, "{}: the example runs two replicas", shared.origin);
    // The Service reaches the replicas' internal listener; the filter calls it there.
    let last = replicas.last().unwrap();
    service_address(
        &kubernetes,
        CONTROL_PLANE_CONTAINER,
        shared,
        CONTROL_PLANE_CONTAINER,
        &last.started,
        &mut addresses,
    );
    let service = addresses.apply("portcullis-control-plane.portcullis.svc.cluster.local:9091");
    assert!(service.starts_with("127.0.0.1:"), "the Service's address in the docs is {service}");

    let app = workload(&kubernetes, "Deployment", "demo-api");
    let upstream = TestServer::start(json!({ "keys": [] })).await;
    let envoy = start_envoy(
        dir.path(),
        Route::WasmPlugin,
        upstream.port,
        &ControlPlaneCluster::Shared(service),
        &proxy_env(&kubernetes, app),
    )
    .await;
    tokens_pass_until_revoked(&replicas[0], &envoy, &upstream).await;
}

/// The Istio manifests and the Kubernetes ones are the files this test reads.
#[test]
fn the_run_covers_every_workload_in_the_manifests() {
    let kubernetes = kubernetes_documents();
    let workloads: Vec<String> = kubernetes
        .iter()
        .filter(|d| pod_spec(d).is_some())
        .map(|d| format!("{}/{}", d.kind(), d.name()))
        .collect();
    assert_eq!(
        workloads,
        ["Deployment/demo-api", "Deployment/portcullis-control-plane", "StatefulSet/redis"]
            .map(str::to_string),
        "a workload this test does not run"
    );
    assert!(istio_documents().iter().any(|d| d.kind() == "WasmPlugin"));
    for d in &kubernetes {
        if let Some(pod) = pod_spec(d) {
            for c in pod["containers"].as_array().into_iter().flatten() {
                assert!(
                    ["istio-proxy", "app", CONTROL_PLANE_CONTAINER, "redis"]
                        .contains(&c["name"].as_str().unwrap_or("")),
                    "{}: container {} is not run by this test",
                    d.origin,
                    c["name"]
                );
            }
        }
    }
}

#[test]
fn kubernetes_variable_expansion_follows_the_kubelet() {
    let env = vec![("A".to_string(), "x".to_string()), ("B".to_string(), "y".to_string())];
    assert_eq!(expand("--requirepass $(A)", &env), "--requirepass x");
    assert_eq!(expand("$(A)$(B)-$(C)", &env), "xy-$(C)");
    assert_eq!(expand("$$(A) $", &env), "$(A) $");
}
