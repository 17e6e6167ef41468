//! The JSON Schema of the plugin configuration, derived from the very types the filter
//! parses (`schemars` reads their `serde` attributes: `deny_unknown_fields` becomes
//! `additionalProperties: false`, renames and defaults carry over, enums become the
//! strings or single-key objects serde accepts).
//!
//! The schema checks structure and types; what only the compile step knows (ranges,
//! rules naming providers that exist, regexes that parse) is checked by
//! `portcullis config check`, which runs the compiler itself. Behind the `schema`
//! feature, which the filter never enables: the .wasm carries none of this.

use serde_json::{Map, Value};

use crate::config::PluginConfig;

/// The schema as JSON (draft 2020-12), keys sorted so the committed copy
/// (`docs/plugin-config.schema.json`) does not depend on how serde_json was built.
pub fn json_schema() -> Value {
    let mut schema = schemars::schema_for!(PluginConfig);
    schema.insert("title".to_owned(), Value::from("Portcullis plugin configuration"));
    let mut schema = Value::from(schema);
    require_requires_without_api_tokens(&mut schema);
    sorted(schema)
}

/// A rule's `requires` may be left out only on a rule taking API tokens alone
/// (`acceptApiTokens: true`), which serde alone cannot say.
fn require_requires_without_api_tokens(schema: &mut Value) {
    let Some(rule) = schema.pointer_mut("/$defs/RuleConfig").and_then(Value::as_object_mut) else {
        return;
    };
    rule.insert(
        "if".to_owned(),
        serde_json::json!({
            "not": { "properties": { "acceptApiTokens": { "const": true } }, "required": ["acceptApiTokens"] }
        }),
    );
    rule.insert("then".to_owned(), serde_json::json!({ "required": ["requires"] }));
}

/// [`json_schema`] as the text of the committed file: pretty-printed, ending in a newline.
pub fn json_schema_text() -> String {
    let mut text = serde_json::to_string_pretty(&json_schema()).unwrap_or_default();
    text.push('\n');
    text
}

fn sorted(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect::<Map<_, _>>())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}
