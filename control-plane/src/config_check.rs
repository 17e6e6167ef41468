//! `portcullis config check`: finds the Portcullis plugin configurations in the files an
//! operator deploys and compiles each one with the filter's own compiler
//! ([`portcullis_core::config::compile_json_with`]), so a configuration that passes here is
//! one the filter accepts, and one that fails is reported with the same message the
//! filter would log.
//!
//! What is checked, per document (a YAML file may hold several, a JSON file holds one):
//! - an Istio `WasmPlugin`: its `spec.pluginConfig`, turned into JSON the way Istio does
//!   (through a protobuf `Struct`, so every number is a double and whole ones print as
//!   integers); a WasmPlugin without one hands the filter an empty configuration;
//! - any other document (an `EnvoyFilter`, an Envoy bootstrap, ...): the `configuration`
//!   of every `envoy.filters.http.wasm` filter in it, decoded the way Envoy hands it to
//!   the filter (`StringValue` and `BytesValue` as they are, `Struct` as JSON);
//! - a document that is neither a Kubernetes object (`kind`) nor an Envoy bootstrap and
//!   holds no wasm filter: the plugin configuration itself. A JSON file's bytes are
//!   compiled exactly as they are.
//!
//! Every WasmPlugin and wasm filter is taken to be Portcullis: pass only files meant for
//! it. A Kubernetes object or bootstrap without a configuration is reported and skipped;
//! a file in which no document has one is an error, so a typo in a path or a kind never
//! passes silently.
//!
//! The fleet credential named by `controlPlane.credential.env` lives in Envoy's
//! environment and is read when the filter loads, not here: the check stands in a strong
//! credential for any variable name ([`compile_offline`]), so everything else is
//! checked; an inline credential is checked as it is.
//!
//! The compiler stops at the first error of a configuration (deserialisation stops at the
//! first bad field, and later sections are compiled against earlier ones: a rule against
//! the providers), so each configuration reports one error; every configuration of every
//! document of every file is checked.

use std::fmt;

use base64::Engine as _;
use portcullis_core::config::{compile_json_with, Policy};
use portcullis_core::error::ConfigError;
use serde::Deserialize as _;
use serde_json::{Map, Value};

const WASM_FILTER_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
const STRING_VALUE_TYPE: &str = "type.googleapis.com/google.protobuf.StringValue";
const BYTES_VALUE_TYPE: &str = "type.googleapis.com/google.protobuf.BytesValue";
const STRUCT_TYPE: &str = "type.googleapis.com/google.protobuf.Struct";
/// Keys of an Envoy bootstrap: a document with one of them is Envoy config, not a plugin
/// configuration.
const BOOTSTRAP_KEYS: [&str; 3] = ["static_resources", "dynamic_resources", "admin"];

/// The result of checking one configuration (or one document without any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The file as given on the command line.
    pub file: String,
    /// 1-based document number in a YAML file; `None` for a JSON file.
    pub document: Option<usize>,
    /// `WasmPlugin demo/portcullis`, `Envoy bootstrap`, or empty for a bare configuration.
    pub subject: String,
    /// Where the configuration sits in the document, e.g. `spec.pluginConfig`.
    pub at: String,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The configuration compiles.
    Valid,
    /// The configuration (or the file) is invalid: the message names the field.
    Invalid(String),
    /// A Kubernetes object or bootstrap that holds no Portcullis configuration.
    NoConfiguration,
}

impl Finding {
    pub fn is_error(&self) -> bool {
        matches!(self.outcome, Outcome::Invalid(_))
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(document) = self.document {
            write!(f, "#{document}")?;
        }
        if !self.subject.is_empty() {
            write!(f, " ({})", self.subject)?;
        }
        if !self.at.is_empty() {
            write!(f, " {}", self.at)?;
        }
        match &self.outcome {
            Outcome::Valid => write!(f, ": ok"),
            Outcome::Invalid(message) => write!(f, ": {message}"),
            Outcome::NoConfiguration => write!(f, ": no Portcullis configuration here (skipped)"),
        }
    }
}

/// A place where a plugin configuration is (or could have been) found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The file as given on the command line.
    pub file: String,
    /// 1-based document number in a YAML file; `None` for a JSON file.
    pub document: Option<usize>,
    /// `WasmPlugin demo/portcullis`, `Envoy bootstrap`, or empty for a bare configuration.
    pub subject: String,
    /// Where the configuration sits in the document, e.g. `spec.pluginConfig`.
    pub at: String,
    pub content: Content,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// The bytes the filter would be handed.
    Config(Vec<u8>),
    /// What makes the file or the document unreadable (syntax, encoding, a
    /// `configuration` of the wrong type).
    Unreadable(String),
    /// A Kubernetes object or bootstrap that holds no Portcullis configuration.
    Nothing,
}

/// What the check resolves every `controlPlane.credential.env` variable to (long enough
/// to be accepted as a fleet credential).
const CREDENTIAL_STAND_IN: &str = "stand-in-for-the-fleet-credential-of-the-envoy-environment";

/// Compiles a plugin configuration as the filter would, with [`CREDENTIAL_STAND_IN`] for
/// the fleet credential's environment variable (Envoy's, not this process's).
pub fn compile_offline(bytes: &[u8]) -> Result<Policy, ConfigError> {
    compile_json_with(bytes, &|_| Some(CREDENTIAL_STAND_IN.to_owned()))
}

/// Checks the contents of one file; `file` names it in the findings. Never empty: a file
/// without any configuration yields an error finding.
pub fn check_bytes(file: &str, bytes: &[u8]) -> Vec<Finding> {
    let mut findings: Vec<Finding> = configurations(file, bytes)
        .into_iter()
        .map(|found| {
            let outcome = match &found.content {
                Content::Config(bytes) => match compile_offline(bytes) {
                    Ok(_) => Outcome::Valid,
                    Err(error) => Outcome::Invalid(error.to_string()),
                },
                Content::Unreadable(message) => Outcome::Invalid(message.clone()),
                Content::Nothing => Outcome::NoConfiguration,
            };
            Finding {
                file: found.file,
                document: found.document,
                subject: found.subject,
                at: found.at,
                outcome,
            }
        })
        .collect();
    if findings.iter().all(|f| f.outcome == Outcome::NoConfiguration) {
        findings.push(Finding {
            file: file.to_owned(),
            document: None,
            subject: String::new(),
            at: String::new(),
            outcome: Outcome::Invalid(
                "no Portcullis configuration found (expected a plugin configuration, a WasmPlugin, \
                 or an EnvoyFilter or Envoy bootstrap with an envoy.filters.http.wasm filter)"
                    .to_owned(),
            ),
        });
    }
    findings
}

/// Every plugin configuration in one file, in document order, with the documents that
/// have none and anything that could not be read.
pub fn configurations(file: &str, bytes: &[u8]) -> Vec<Found> {
    let found = |document, content| Found {
        file: file.to_owned(),
        document,
        subject: String::new(),
        at: String::new(),
        content,
    };
    let Ok(text) = std::str::from_utf8(bytes) else {
        return vec![found(None, Content::Unreadable("not UTF-8 text".to_owned()))];
    };
    let mut out = Vec::new();
    if text.trim_start_matches('\u{feff}').trim_start().starts_with('{') {
        // JSON: parsed here to say where a syntax error is (the compiler's messages name
        // fields, not lines) and to look for wasm filters; compiled from its own bytes.
        match serde_json::from_str::<Value>(text.trim_start_matches('\u{feff}')) {
            Err(error) => out.push(found(None, Content::Unreadable(format!("not valid JSON: {error}")))),
            Ok(value) => document_configurations(file, None, &value, Some(bytes), &mut out),
        }
        return out;
    }
    for (index, deserializer) in serde_norway::Deserializer::from_str(text).enumerate() {
        let document = Some(index + 1);
        let yaml = match serde_norway::Value::deserialize(deserializer) {
            Ok(yaml) => yaml,
            Err(error) => {
                // The parser cannot resynchronise after a syntax error.
                out.push(found(document, Content::Unreadable(format!("not valid YAML: {error}"))));
                return out;
            }
        };
        match serde_json::to_value(&yaml) {
            Ok(Value::Null) => {} // an empty document, e.g. after a trailing `---`
            Ok(value) => document_configurations(file, document, &value, None, &mut out),
            Err(error) => out.push(found(
                document,
                Content::Unreadable(format!("cannot be read as JSON (keys must be strings): {error}")),
            )),
        }
    }
    out
}

/// The configurations of one document. `raw` is the document's own bytes when it is a
/// whole JSON file, handed over as they are rather than re-serialised.
fn document_configurations(
    file: &str,
    document: Option<usize>,
    value: &Value,
    raw: Option<&[u8]>,
    out: &mut Vec<Found>,
) {
    let kind = value.get("kind").and_then(Value::as_str);
    let subject = match kind {
        Some(kind) => {
            let metadata = &value["metadata"];
            match (metadata["namespace"].as_str(), metadata["name"].as_str()) {
                (Some(ns), Some(name)) => format!("{kind} {ns}/{name}"),
                (None, Some(name)) => format!("{kind} {name}"),
                _ => kind.to_owned(),
            }
        }
        None if is_bootstrap(value) => "Envoy bootstrap".to_owned(),
        None => String::new(),
    };
    let mut push = |at: String, content: Content| {
        out.push(Found { file: file.to_owned(), document, subject: subject.clone(), at, content })
    };

    if kind == Some("WasmPlugin") {
        let bytes = match value.pointer("/spec/pluginConfig") {
            None | Some(Value::Null) => Vec::new(),
            Some(config) => through_struct(config).to_string().into_bytes(),
        };
        push("spec.pluginConfig".to_owned(), Content::Config(bytes));
        return;
    }

    let mut filters = Vec::new();
    find_wasm_filters(value, String::new(), &mut filters);
    if !filters.is_empty() {
        for (at, configuration) in filters {
            let content = match envoy_configuration_bytes(configuration) {
                Ok(bytes) => Content::Config(bytes),
                Err(message) => Content::Unreadable(message),
            };
            push(at, content);
        }
        return;
    }

    if kind.is_some() || is_bootstrap(value) {
        push(String::new(), Content::Nothing);
        return;
    }
    let bytes = match raw {
        Some(raw) => raw.to_vec(),
        None => value.to_string().into_bytes(),
    };
    push(String::new(), Content::Config(bytes));
}

fn is_bootstrap(value: &Value) -> bool {
    BOOTSTRAP_KEYS.iter().any(|k| value.get(k).is_some())
}

/// Every wasm HTTP filter config in `value` (plain `typed_config` or wrapped in a
/// `TypedStruct`), with the path of its `configuration`.
fn find_wasm_filters<'a>(value: &'a Value, path: String, out: &mut Vec<(String, Option<&'a Value>)>) {
    match value {
        Value::Object(map) => {
            let config = if map.get("@type").and_then(Value::as_str) == Some(WASM_FILTER_TYPE) {
                Some((map.get("config"), format!("{path}.config")))
            } else if map.get("type_url").and_then(Value::as_str) == Some(WASM_FILTER_TYPE) {
                Some((map.get("value").and_then(|v| v.get("config")), format!("{path}.value.config")))
            } else {
                None
            };
            if let Some((config, at)) = config {
                let at = format!("{at}.configuration");
                out.push((
                    at.trim_start_matches('.').to_owned(),
                    config.and_then(|c| c.get("configuration")),
                ));
                return;
            }
            for (key, child) in map {
                find_wasm_filters(child, format!("{path}.{key}"), out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                find_wasm_filters(child, format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// The bytes Envoy passes to the filter for a wasm filter's `configuration` (an `Any`).
fn envoy_configuration_bytes(configuration: Option<&Value>) -> Result<Vec<u8>, String> {
    let Some(configuration) = configuration else {
        return Ok(Vec::new()); // no configuration: the filter gets none
    };
    let type_url = configuration.get("@type").and_then(Value::as_str).unwrap_or("");
    let value = configuration.get("value");
    match type_url {
        STRING_VALUE_TYPE => match value {
            Some(Value::String(text)) => Ok(text.clone().into_bytes()),
            None => Ok(Vec::new()),
            Some(_) => Err("`configuration.value` of a StringValue must be a string".to_owned()),
        },
        BYTES_VALUE_TYPE => match value {
            Some(Value::String(text)) => base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|_| "`configuration.value` of a BytesValue must be base64".to_owned()),
            None => Ok(Vec::new()),
            Some(_) => Err("`configuration.value` of a BytesValue must be a base64 string".to_owned()),
        },
        STRUCT_TYPE => {
            // In an Any, a Struct's fields sit beside `@type` (or under `value`).
            let fields = match value {
                Some(v) => v.clone(),
                None => {
                    let mut map = configuration.as_object().cloned().unwrap_or_default();
                    map.remove("@type");
                    Value::Object(map)
                }
            };
            Ok(through_struct(&fields).to_string().into_bytes())
        }
        "" => {
            Err("`configuration` has no `@type`; the filter reads a StringValue, BytesValue or Struct"
                .to_owned())
        }
        other => Err(format!(
            "`configuration` is a `{other}`; the filter reads a StringValue, BytesValue or Struct"
        )),
    }
}

/// `value` as it comes out of a protobuf `Struct`: numbers are doubles, and whole ones
/// print without a fraction (as Istio and Envoy print them).
fn through_struct(value: &Value) -> Value {
    match value {
        Value::Number(n) => {
            let double = n.as_f64().unwrap_or(f64::NAN);
            // 2^63: the whole doubles that print as plain integers.
            if double.fract() == 0.0 && double.abs() < 9.223_372_036_854_776e18 {
                Value::from(double as i64)
            } else {
                serde_json::Number::from_f64(double).map(Value::Number).unwrap_or(Value::Null)
            }
        }
        Value::Array(items) => Value::Array(items.iter().map(through_struct).collect()),
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), through_struct(v))).collect::<Map<_, _>>())
        }
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"providers": {"p": {"issuer": "i", "remoteJwks": {"cluster": "c", "authority": "a"}}},
        "rules": [{"match": {"pathPrefix": "/"}, "requires": {"provider": "p"}}]}"#;

    fn outcomes(findings: &[Finding]) -> Vec<&Outcome> {
        findings.iter().map(|f| &f.outcome).collect()
    }

    #[test]
    fn a_json_file_is_compiled_as_it_is() {
        let findings = check_bytes("p.json", GOOD.as_bytes());
        assert_eq!(outcomes(&findings), [&Outcome::Valid]);
        assert_eq!(findings[0].to_string(), "p.json: ok");

        // Duplicate keys are an error for the filter's parser; re-serialising would hide them.
        let duplicate = r#"{"realm": "a", "realm": "b"}"#;
        let findings = check_bytes("d.json", duplicate.as_bytes());
        assert!(matches!(&findings[0].outcome, Outcome::Invalid(m) if m.contains("duplicate field `realm`")));
    }

    #[test]
    fn a_json_syntax_error_says_where() {
        let findings = check_bytes("p.json", b"{\n  \"realm\": \"a\",\n}");
        let Outcome::Invalid(message) = &findings[0].outcome else { panic!("{findings:?}") };
        assert!(message.starts_with("not valid JSON") && message.contains("line 3"), "{message}");
    }

    #[test]
    fn the_error_names_the_field_like_the_filter_log() {
        let bad = GOOD.replace(r#""provider": "p""#, r#""provider": "nope""#);
        let findings = check_bytes("p.json", bad.as_bytes());
        assert_eq!(
            findings[0].to_string(),
            "p.json: invalid configuration at `rules[0].requires.provider`: unknown provider `nope`"
        );
    }

    #[test]
    fn wasm_plugin_numbers_go_through_a_struct_like_istio() {
        // Istio turns pluginConfig into JSON through a protobuf Struct: 600.0 arrives as 600.
        let yaml = r#"
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: { name: portcullis, namespace: demo }
spec:
  pluginConfig:
    controlPlane: { cluster: c, authority: a, credential: { env: PORTCULLIS_FLEET_CREDENTIAL } }
    rateLimits: [ { name: all, limit: 600.0, unit: minute } ]
"#;
        let findings = check_bytes("w.yaml", yaml.as_bytes());
        assert_eq!(outcomes(&findings), [&Outcome::Valid], "{findings:?}");
        assert_eq!(findings[0].to_string(), "w.yaml#1 (WasmPlugin demo/portcullis) spec.pluginConfig: ok");
    }

    #[test]
    fn a_wasm_plugin_without_plugin_config_is_the_empty_configuration() {
        let yaml =
            "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: x}\nspec: {}\n";
        let findings = check_bytes("w.yaml", yaml.as_bytes());
        assert!(matches!(&findings[0].outcome, Outcome::Invalid(m) if m.contains("empty")), "{findings:?}");
    }

    #[test]
    fn envoy_configuration_is_decoded_as_envoy_passes_it() {
        let string = serde_json::json!({"@type": STRING_VALUE_TYPE, "value": GOOD});
        assert_eq!(envoy_configuration_bytes(Some(&string)).unwrap(), GOOD.as_bytes());
        let encoded = base64::engine::general_purpose::STANDARD.encode(GOOD);
        let bytes = serde_json::json!({"@type": BYTES_VALUE_TYPE, "value": encoded});
        assert_eq!(envoy_configuration_bytes(Some(&bytes)).unwrap(), GOOD.as_bytes());
        let structure = serde_json::json!({"@type": STRUCT_TYPE, "value": {"realm": "r", "n": 2.0}});
        assert_eq!(envoy_configuration_bytes(Some(&structure)).unwrap(), br#"{"n":2,"realm":"r"}"#);
        assert_eq!(envoy_configuration_bytes(None).unwrap(), b"");
        let other = serde_json::json!({"@type": "type.googleapis.com/google.protobuf.Int64Value"});
        assert!(envoy_configuration_bytes(Some(&other)).unwrap_err().contains("Int64Value"));
    }

    #[test]
    fn every_wasm_filter_of_a_bootstrap_is_found_with_its_path() {
        let config = |realm: &str| {
            serde_json::json!({"@type": WASM_FILTER_TYPE, "config": {"configuration":
                {"@type": STRING_VALUE_TYPE, "value": GOOD.replace("\"providers\"", &format!("\"realm\": \"{realm}\", \"providers\""))}}})
        };
        let bootstrap = serde_json::json!({"static_resources": {"listeners": [
            {"filters": [{"typed_config": config("a")}]},
            {"filters": [{"typed_config": {"type_url": WASM_FILTER_TYPE, "value": {"config": {"configuration":
                {"@type": STRING_VALUE_TYPE, "value": "{\"realm\": \"\\\"\"}"}}}}}]}
        ]}});
        let findings = check_bytes("b.json", bootstrap.to_string().as_bytes());
        assert_eq!(findings.len(), 2, "{findings:?}");
        assert_eq!(findings[0].subject, "Envoy bootstrap");
        assert_eq!(
            findings[0].at,
            "static_resources.listeners[0].filters[0].typed_config.config.configuration"
        );
        assert_eq!(findings[0].outcome, Outcome::Valid);
        assert_eq!(
            findings[1].at,
            "static_resources.listeners[1].filters[0].typed_config.value.config.configuration"
        );
        assert!(matches!(&findings[1].outcome, Outcome::Invalid(m) if m.contains("`realm`")));
    }

    #[test]
    fn documents_without_configuration_are_skipped_but_a_file_without_any_is_an_error() {
        let yaml = "apiVersion: v1\nkind: Service\nmetadata: {name: s}\n---\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n";
        let findings = check_bytes("k.yaml", yaml.as_bytes());
        assert_eq!(findings.len(), 3, "{findings:?}");
        assert_eq!(
            findings[0].to_string(),
            "k.yaml#1 (Service s): no Portcullis configuration here (skipped)"
        );
        assert_eq!(findings[1].document, Some(3));
        assert!(
            findings[2].is_error() && findings[2].to_string().contains("no Portcullis configuration found")
        );
        assert!(check_bytes("e.yaml", b"").iter().any(Finding::is_error));
    }

    #[test]
    fn a_yaml_syntax_error_is_reported_with_its_document() {
        let yaml = "kind: Service\nmetadata: {name: s}\n---\nkind: [unclosed\n";
        let findings = check_bytes("k.yaml", yaml.as_bytes());
        let last = findings.last().unwrap();
        assert_eq!(last.document, Some(2));
        assert!(matches!(&last.outcome, Outcome::Invalid(m) if m.starts_with("not valid YAML")), "{last:?}");
    }

    #[test]
    fn binary_input_is_an_error_not_a_crash() {
        let findings = check_bytes("x.bin", &[0xff, 0xfe, 0x00]);
        assert_eq!(outcomes(&findings), [&Outcome::Invalid("not UTF-8 text".to_owned())]);
    }
}
