//! Reading the deployment manifests (`envoy/istio/`, `envoy/kubernetes/`): YAML documents
//! as JSON, pod specs, containers' environment. Shared by the offline checks
//! (`tests/manifests.rs`) and the run of the manifests (`tests/manifests_run.rs`).

use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::repo_root;

/// One YAML document of a manifest file, as JSON.
#[derive(Clone)]
pub struct Document {
    /// `file#index`, for messages.
    pub origin: String,
    pub value: Value,
}

impl Document {
    pub fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or("")
    }

    pub fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or("")
    }

    pub fn namespace(&self) -> &str {
        self.value["metadata"]["namespace"].as_str().unwrap_or("default")
    }
}

/// All documents of a multi-document YAML file; empty documents are skipped.
pub fn read_documents(path: &Path) -> Vec<Document> {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let file = path.strip_prefix(repo_root()).unwrap_or(path).display().to_string();
    let mut documents = Vec::new();
    for (index, deserializer) in serde_yaml::Deserializer::from_str(&text).enumerate() {
        let yaml = serde_yaml::Value::deserialize(deserializer)
            .unwrap_or_else(|e| panic!("{file}: document {index} is not valid YAML: {e}"));
        let value = serde_json::to_value(&yaml)
            .unwrap_or_else(|e| panic!("{file}: document {index} is not JSON-compatible: {e}"));
        if !value.is_null() {
            documents.push(Document { origin: format!("{file}#{index}"), value });
        }
    }
    documents
}

/// The `*.yaml`/`*.yml` files of a directory of the repository, sorted.
pub fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let dir = repo_root().join(dir);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no YAML files in {}", dir.display());
    files
}

/// Every document of every YAML file in a directory of the repository.
pub fn documents_in(dir: &str) -> Vec<Document> {
    yaml_files(dir).iter().flat_map(|f| read_documents(f)).collect()
}

pub fn istio_documents() -> Vec<Document> {
    documents_in("envoy/istio")
}

pub fn kubernetes_documents() -> Vec<Document> {
    documents_in("envoy/kubernetes")
}

/// The pod template of a workload document (`None` for other kinds).
pub fn pod_spec(document: &Document) -> Option<&Value> {
    match document.kind() {
        "Pod" => Some(&document.value["spec"]),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
            Some(&document.value["spec"]["template"]["spec"])
        }
        "CronJob" => Some(&document.value["spec"]["jobTemplate"]["spec"]["template"]["spec"]),
        _ => None,
    }
}

/// A container's `env` entry named `name`.
pub fn env_var<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    container["env"].as_array().into_iter().flatten().find(|e| e["name"] == name)
}
