//! The JSON Schema of the plugin configuration (feature `schema`).
//!
//! Derived from the configuration types themselves with `schemars`, so it
//! cannot drift from the parser: field names, types, which fields are
//! required, `deny_unknown_fields` (as `additionalProperties: false`),
//! defaults (the values the parser fills in) and each field's doc comment
//! (as its `description`). What a derive cannot see is written by hand
//! next to the code that reads it: durations (a number or a string, see
//! [`crate::duration`]), matchers (see [`crate::matcher`]) and the older
//! spellings serde accepts as aliases ([`Alias`]).
//!
//! `cargo run -p ctxgate-e2e --bin ctxgate-schema` (`make schema`) writes
//! it to `docs/ctxgate.schema.json`.

use schemars::generate::SchemaSettings;
use schemars::transform::{Transform, transform_subschemas};
use schemars::{Schema, json_schema};
use serde_json::Value;

use crate::pipeline::config::PipelineConfig;

/// The schema of the `ctxgate` plugin's configuration (JSON Schema draft
/// 2020-12).
pub fn plugin_schema() -> Schema {
    let mut schema = SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<PipelineConfig>();
    NoNullDefaults.transform(&mut schema);
    Prose.transform(&mut schema);
    schema
}

/// A second name serde accepts for a field (`#[serde(alias)]`), which
/// `schemars` does not see: the alias becomes a property of its own with
/// the field's schema, and the two may not both be given.
pub struct Alias {
    name: &'static str,
    alias: &'static str,
}

impl Alias {
    pub const fn new(name: &'static str, alias: &'static str) -> Alias {
        Alias { name, alias }
    }
}

impl Transform for Alias {
    fn transform(&mut self, schema: &mut Schema) {
        let Some(properties) = schema.get_mut("properties").and_then(Value::as_object_mut) else {
            return;
        };
        let Some(mut field) = properties.get(self.name).cloned() else {
            return;
        };
        if let Some(field) = field.as_object_mut() {
            field.insert(
                "description".into(),
                format!("The same as `{}`.", self.name).into(),
            );
        }
        properties.insert(self.alias.into(), field);
        let both = json_schema!({"not": {"required": [self.name, self.alias]}});
        match schema.get_mut("allOf").and_then(Value::as_array_mut) {
            Some(all) => all.push(both.into()),
            None => {
                schema.insert("allOf".into(), Value::Array(vec![both.into()]));
            }
        }
    }
}

/// An `Option` field's default is "absent": no `default` is written for
/// it, and none inside a default object (`{"routes": null}`).
struct NoNullDefaults;

impl Transform for NoNullDefaults {
    fn transform(&mut self, schema: &mut Schema) {
        if let Some(object) = schema.as_object_mut() {
            if object.get("default").is_some_and(Value::is_null) {
                object.remove("default");
            }
            if let Some(default) = object.get_mut("default") {
                drop_nulls(default);
            }
        }
        transform_subschemas(self, schema);
    }
}

fn drop_nulls(value: &mut Value) {
    match value {
        Value::Object(members) => {
            members.retain(|_, v| !v.is_null());
            members.values_mut().for_each(drop_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

/// Doc comments become descriptions: lines of a paragraph are joined, and
/// rustdoc links (``[`ClientConfig`]``) become plain code spans.
struct Prose;

impl Transform for Prose {
    fn transform(&mut self, schema: &mut Schema) {
        if let Some(Value::String(text)) = schema.get_mut("description") {
            *text = prose(text);
        }
        transform_subschemas(self, schema);
    }
}

fn prose(doc: &str) -> String {
    doc.split("\n\n")
        .map(|paragraph| {
            paragraph
                .lines()
                .map(str::trim)
                .collect::<Vec<_>>()
                .join(" ")
                .replace("[`", "`")
                .replace("`]", "`")
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}
