//! `portcullis config check` through the built binary, over the shipped manifests
//! (`envoy/istio/*.yaml`, `envoy/demo.yaml`) and broken copies of them: a misspelled
//! field, an unknown provider, a YAML file of two documents one of which is broken,
//! files that cannot be read, and exit codes 0 / 1 / 2.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use support::{command, CLI};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(repo().join(relative)).unwrap()
}

/// `portcullis config check ARGS` run in the repository root, so paths print as given.
fn check(args: &[&str]) -> Output {
    command(CLI).current_dir(repo()).args(["config", "check"]).args(args).output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `text` with `from` replaced, which must occur exactly `times` times.
fn replaced(text: &str, from: &str, to: &str, times: usize) -> String {
    assert_eq!(text.matches(from).count(), times, "expected {times} × {from:?}");
    text.replace(from, to)
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

/// The shipped Istio manifests that install the filter, sorted (the control plane's own
/// mesh policy, `control-plane-authorization.yaml`, holds no filter configuration).
fn istio_files() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(repo().join("envoy/istio"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .filter(|p| {
            let text = std::fs::read_to_string(p).unwrap();
            text.contains("kind: WasmPlugin") || text.contains("envoy.filters.http.wasm")
        })
        .map(|p| format!("envoy/istio/{}", p.file_name().unwrap().to_str().unwrap()))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "{files:?}");
    files
}

#[test]
fn every_shipped_istio_manifest_and_the_demo_bootstrap_pass() {
    let mut files = istio_files();
    files.push("envoy/demo.yaml".to_owned());
    let args: Vec<&str> = files.iter().map(String::as_str).collect();
    let output = check(&args);
    let out = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{out}{}", String::from_utf8_lossy(&output.stderr));
    for file in &files {
        assert!(
            out.lines().any(|l| l.starts_with(&format!("{file}#")) && l.ends_with(": ok")),
            "{file}:\n{out}"
        );
    }
    assert!(
        out.contains("envoy/istio/wasmplugin.yaml#1 (WasmPlugin demo/portcullis) spec.pluginConfig: ok"),
        "{out}"
    );
    assert!(out.contains("(EnvoyFilter demo/portcullis-filter) spec.configPatches[0].patch.value.typed_config.config.configuration: ok"), "{out}");
    // The cluster EnvoyFilter carries no configuration: said, and not an error.
    assert!(out.contains(
        "(EnvoyFilter demo/portcullis-control-plane-cluster): no Portcullis configuration here (skipped)"
    ));
    assert!(out.contains(" valid, 0 errors, 0 unreadable files"), "{out}");
}

#[test]
fn a_misspelled_field_in_a_wasm_plugin_fails_with_file_document_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let broken = replaced(
        &read("envoy/istio/wasmplugin.yaml"),
        "        issuer: portcullis",
        "        issuerr: portcullis",
        1,
    );
    let file = write(dir.path(), "wasmplugin.yaml", &broken);
    let output = check(&[&file]);
    let out = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    assert!(
        out.contains(&format!(
            "{file}#1 (WasmPlugin demo/portcullis) spec.pluginConfig: invalid configuration at \
             `providers.portcullis.issuerr`: unknown field `issuerr`, expected one of `issuer`"
        )),
        "{out}"
    );
    assert!(out.contains("0 valid, 1 errors"), "{out}");
}

#[test]
fn an_unknown_provider_in_an_envoy_filter_fails_naming_the_rule() {
    let dir = tempfile::tempdir().unwrap();
    let original = read("envoy/istio/envoyfilter.yaml");
    let broken = original.replacen(
        r#""requires": { "provider": "portcullis" }"#,
        r#""requires": { "provider": "nope" }"#,
        1,
    );
    assert_ne!(broken, original, "the manifest no longer has a rule requiring the portcullis provider");
    let file = write(dir.path(), "envoyfilter.yaml", &broken);
    let output = check(&[&file]);
    let out = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    let line = out.lines().find(|l| l.contains("invalid configuration")).unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.starts_with(&format!("{file}#2 (EnvoyFilter demo/portcullis-filter) spec.configPatches[0]")),
        "{line}"
    );
    assert!(
        line.contains(".requires.provider`: unknown provider `nope`") && line.contains("`rules["),
        "{line}"
    );
}

#[test]
fn in_a_file_of_two_documents_the_broken_one_is_reported_and_the_good_one_passes() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = read("envoy/istio/wasmplugin.yaml");
    let plugin = plugin.split("\n---\n").next().unwrap();
    let broken = replaced(plugin, "    onNoMatch: deny", "    onNoMatch: maybe", 1);
    let file = write(dir.path(), "two.yaml", &format!("{plugin}\n---\n{broken}\n"));
    let output = check(&[&file]);
    let out = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{out}");
    assert!(out.contains(&format!("{file}#1 (WasmPlugin demo/portcullis) spec.pluginConfig: ok")), "{out}");
    assert!(
        out.contains(&format!(
            "{file}#2 (WasmPlugin demo/portcullis) spec.pluginConfig: invalid configuration at `onNoMatch`: unknown variant `maybe`"
        )),
        "{out}"
    );
    assert!(out.contains("1 valid, 1 errors"), "{out}");
}

#[test]
fn every_file_is_checked_and_an_unreadable_one_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let bad_json = write(dir.path(), "bad.json", r#"{"rules": [{"requires": "none", "scopes": ["a"]}]}"#);
    let missing = dir.path().join("missing.yaml").to_str().unwrap().to_owned();
    let output = check(&["envoy/istio/wasmplugin.yaml", &missing, &bad_json]);
    let out = stdout(&output);
    assert_eq!(output.status.code(), Some(2), "{out}");
    assert!(String::from_utf8_lossy(&output.stderr).contains(&format!("{missing}: cannot read")));
    // The files after the unreadable one are still checked.
    assert!(
        out.contains("envoy/istio/wasmplugin.yaml#1 (WasmPlugin demo/portcullis) spec.pluginConfig: ok"),
        "{out}"
    );
    assert!(out.contains(&format!("{bad_json}: invalid configuration at `rules[0].scopes`")), "{out}");
    assert!(out.contains("1 valid, 1 errors, 1 unreadable files"), "{out}");
}

#[test]
fn a_plugin_json_file_and_standard_input_are_checked_as_the_filter_reads_them() {
    let config = read("envoy/istio/wasmplugin.yaml");
    let output = check(&["envoy/kubernetes/control-plane.yaml"]);
    assert_eq!(output.status.code(), Some(1), "a manifest without any configuration must not pass");
    assert!(stdout(&output).contains("no Portcullis configuration found"), "{}", stdout(&output));

    let mut child = command(CLI)
        .args(["config", "check", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(config.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stdout(&output));
    assert!(stdout(&output).contains("<stdin>#1 (WasmPlugin demo/portcullis) spec.pluginConfig: ok"));

    let dir = tempfile::tempdir().unwrap();
    let json = write(dir.path(), "plugin.json", "{\n  \"realm\": \"demo\",\n  \"rules\": []\n}\n");
    assert_eq!(check(&[&json]).status.code(), Some(0), "{}", stdout(&check(&[&json])));
    let syntax = write(dir.path(), "syntax.json", "{\n  \"realm\": \"demo\",\n}\n");
    let out = stdout(&check(&[&syntax]));
    assert!(out.contains(&format!("{syntax}: not valid JSON: trailing comma at line 3 column 1")), "{out}");
}

#[test]
fn config_check_without_files_is_a_usage_error() {
    let output = check(&[]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("<FILE>"));
}
