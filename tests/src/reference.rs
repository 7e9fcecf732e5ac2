//! The configuration's JSON Schema (`docs/ctxgate.schema.json`) and the
//! README's configuration reference, both generated from the configuration
//! types (`ctxgate_core::schema`). `make schema` writes them
//! (`src/bin/ctxgate-schema.rs`); `e2e/schema.rs` fails when the committed
//! files differ from what it would write.
//!
//! The reference is a table per object of the schema (field, type,
//! default, description), grouped by the section that first uses it (auth,
//! ratelimit, tagging, breaker, metrics) and, for types several sections
//! use, a last group of shared types; every type links to its table.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// The stage sections, in pipeline order, then the worker's own.
pub const SECTIONS: [&str; 9] = [
    "auth",
    "signature",
    "mcp",
    "ratelimit",
    "tagging",
    "residency",
    "breaker",
    "audit",
    "metrics",
];

pub const BEGIN: &str = "<!-- BEGIN GENERATED: configuration reference (make schema) -->";
pub const END: &str = "<!-- END GENERATED -->";

/// Where the schema is committed, relative to the repository.
pub const SCHEMA_PATH: &str = "docs/ctxgate.schema.json";

/// The schema, as committed (pretty JSON, one trailing newline).
pub fn schema() -> Value {
    serde_json::to_value(ctxgate_core::schema::plugin_schema()).expect("a schema is JSON")
}

pub fn schema_text(schema: &Value) -> String {
    let mut text = serde_json::to_string_pretty(schema).expect("a schema serializes");
    text.push('\n');
    text
}

pub fn schema_path(root: &Path) -> PathBuf {
    root.join(SCHEMA_PATH)
}

/// `readme` with the text between the markers replaced by `reference`.
pub fn splice(readme: &str, reference: &str) -> Result<String, String> {
    let begin = readme
        .find(BEGIN)
        .ok_or_else(|| format!("README.md has no {BEGIN:?} line"))?;
    let after_begin = begin + BEGIN.len();
    let end = readme[after_begin..]
        .find(END)
        .map(|i| after_begin + i)
        .ok_or_else(|| format!("README.md has no {END:?} after {BEGIN:?}"))?;
    Ok(format!(
        "{}\n{}{}",
        &readme[..after_begin],
        reference,
        &readme[end..]
    ))
}

/// The markdown between the markers (starting and ending with a newline
/// after the opening marker).
pub fn reference(schema: &Value) -> String {
    let defs = schema["$defs"].as_object().cloned().unwrap_or_default();
    let root = schema["properties"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    // Which sections reach each type.
    let mut users: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    let mut order: Vec<(String, &str)> = Vec::new();
    for section in SECTIONS {
        let mut seen = BTreeSet::new();
        let mut reached = Vec::new();
        if let Some(property) = root.get(section) {
            walk(property, &defs, &mut seen, &mut reached);
        }
        for name in reached {
            let entry = users.entry(name.clone()).or_default();
            if entry.is_empty() {
                order.push((name, section));
            }
            entry.insert(section);
        }
    }
    let mut out = String::new();
    out.push_str(
        "\n<!-- Generated from the configuration types by `make schema` \
         (tests/src/reference.rs); edit the doc comments, not this block. -->\n\n",
    );
    let description = schema["description"].as_str().unwrap_or_default();
    let _ = writeln!(out, "{}\n", prose(description).replace("<br><br>", "\n\n"));
    // The sections in pipeline order, not the schema's (alphabetical).
    let mut sections: Vec<(String, Value)> = SECTIONS
        .iter()
        .filter_map(|s| root.get(*s).map(|v| ((*s).to_owned(), v.clone())))
        .collect();
    sections.extend(
        root.iter()
            .filter(|(k, _)| !SECTIONS.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    out.push_str(&object_table(schema, &sections));
    let groups = SECTIONS
        .iter()
        .map(|s| (*s, format!("`{s}`")))
        .chain([("", "Shared types".to_owned())]);
    for (section, title) in groups {
        let names: Vec<&String> = order
            .iter()
            .filter(|(name, _)| {
                let sections = &users[name];
                if section.is_empty() {
                    sections.len() > 1
                } else {
                    sections.len() == 1 && sections.contains(section)
                }
            })
            .map(|(name, _)| name)
            .collect();
        if names.is_empty() {
            continue;
        }
        let _ = writeln!(out, "#### {title}\n");
        for name in names {
            out.push_str(&definition(name, &defs[name.as_str()]));
        }
    }
    out
}

/// The types `schema` refers to, depth first, each once.
fn walk(
    schema: &Value,
    defs: &Map<String, Value>,
    seen: &mut BTreeSet<String>,
    out: &mut Vec<String>,
) {
    match schema {
        Value::Object(members) => {
            if let Some(name) = members
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(def_name)
                && seen.insert(name.to_owned())
            {
                out.push(name.to_owned());
                if let Some(def) = defs.get(name) {
                    walk(def, defs, seen, out);
                }
            }
            for (key, value) in members {
                if key != "default" && key != "$ref" {
                    walk(value, defs, seen, out);
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                walk(item, defs, seen, out);
            }
        }
        _ => {}
    }
}

fn def_name(reference: &str) -> Option<&str> {
    reference.strip_prefix("#/$defs/")
}

fn anchor(name: &str) -> String {
    format!("config-{}", name.to_lowercase())
}

fn link(name: &str) -> String {
    format!("[{name}](#{})", anchor(name))
}

/// One type: its description and its table (fields, variants or values).
fn definition(name: &str, def: &Value) -> String {
    let mut out = format!("<a id=\"{}\"></a>\n**{name}**", anchor(name));
    if let Some(description) = def["description"].as_str() {
        let _ = write!(out, ": {}", prose(description).replace("<br><br>", "\n\n"));
    }
    out.push_str("\n\n");
    if let Some(properties) = def["properties"].as_object() {
        let properties: Vec<(String, Value)> = properties
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        out.push_str(&object_table(def, &properties));
    } else if let Some(variants) = def["oneOf"].as_array() {
        out.push_str(&variants_table(variants));
    } else {
        let _ = writeln!(out, "Type: {}.\n", type_of(def));
    }
    out
}

fn object_table(object: &Value, properties: &[(String, Value)]) -> String {
    let required: BTreeSet<&str> = object["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let mut out = String::from("| field | type | default | description |\n|---|---|---|---|\n");
    for (field, schema) in properties {
        let default = match schema.get("default") {
            Some(value) => format!("`{value}`"),
            None if required.contains(field.as_str()) => "required".to_owned(),
            None => "none".to_owned(),
        };
        let description = prose(schema["description"].as_str().unwrap_or_default());
        row(
            &mut out,
            &[
                &format!("`{field}`"),
                &type_of(schema),
                &default,
                &description,
            ],
        );
    }
    out.push('\n');
    out
}

/// An enum: each variant is a value (`"deny"`), a one-member object
/// (`{"inline": ...}`), or an object tagged by a member (`{"action":
/// "fallback", ...}`).
fn variants_table(variants: &[Value]) -> String {
    let mut out = String::from("| value | type | description |\n|---|---|---|\n");
    let mut tagged = String::new();
    for variant in variants {
        let description = prose(variant["description"].as_str().unwrap_or_default());
        let properties = variant["properties"].as_object();
        let tag = properties.and_then(|p| p.iter().find(|(_, s)| s.get("const").is_some()));
        match (variant.get("const"), properties, tag) {
            (Some(value), _, _) => row(&mut out, &[&format!("`{value}`"), "", &description]),
            (None, Some(properties), Some((tag, tag_schema))) => {
                let others: Vec<(String, Value)> = properties
                    .iter()
                    .filter(|(k, _)| *k != tag)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let value = &tag_schema["const"];
                let written = if others.is_empty() {
                    format!("`{{\"{tag}\": {value}}}`")
                } else {
                    format!("`{{\"{tag}\": {value}, ...}}`")
                };
                row(&mut out, &[&written, "object", &description]);
                if !others.is_empty() {
                    let _ = writeln!(tagged, "With {written}:\n");
                    tagged.push_str(&object_table(variant, &others));
                }
            }
            (None, Some(properties), None) if properties.len() == 1 => {
                if let Some((member, schema)) = properties.iter().next() {
                    let written = format!("`{{\"{member}\": ...}}`");
                    row(&mut out, &[&written, &type_of(schema), &description]);
                }
            }
            _ => row(&mut out, &["", &type_of(variant), &description]),
        }
    }
    out.push('\n');
    out.push_str(&tagged);
    out
}

/// A field's type, in words, with links to the tables of named types.
fn type_of(schema: &Value) -> String {
    if let Some(name) = schema["$ref"].as_str().and_then(def_name) {
        return link(name);
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(options) = schema[key].as_array() {
            let options: Vec<String> = options
                .iter()
                .filter(|o| o["type"] != "null")
                .map(type_of)
                .collect();
            if !options.is_empty() {
                return options.join(" or ");
            }
        }
    }
    if let Some(value) = schema.get("const") {
        return format!("`{value}`");
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .collect(),
        _ => vec![],
    };
    let words: Vec<String> = types
        .iter()
        .map(|t| match *t {
            "array" => format!("array of {}", type_of(&schema["items"])),
            "object" => match (&schema["properties"], &schema["additionalProperties"]) {
                (Value::Object(properties), _) => {
                    let members: Vec<String> = properties
                        .iter()
                        .map(|(k, v)| format!("`{k}`: {}", type_of(v)))
                        .collect();
                    format!("object {{{}}}", members.join(", "))
                }
                (_, Value::Object(_)) => {
                    format!(
                        "map of string to {}",
                        type_of(&schema["additionalProperties"])
                    )
                }
                _ => "object".to_owned(),
            },
            "string" => match schema["pattern"].as_str() {
                Some(pattern) => format!("string matching `{pattern}`"),
                None => "string".to_owned(),
            },
            other => other.to_owned(),
        })
        .collect();
    if words.is_empty() {
        "any JSON value".to_owned()
    } else {
        words.join(" or ")
    }
}

/// A description on one line (a table cell), its paragraphs kept.
fn prose(text: &str) -> String {
    text.split("\n\n")
        .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("<br><br>")
}

/// A table row. A `|` in a cell is escaped, also inside code spans, as
/// GitHub's tables want.
fn row(out: &mut String, cells: &[&str]) {
    let cells: Vec<String> = cells.iter().map(|c| c.replace('|', "\\|")).collect();
    let _ = writeln!(out, "| {} |", cells.join(" | "));
}
