//! What the matcher parsers accept, as JSON Schema, and the matchers
//! written back as configuration (for the schema's defaults).
//!
//! The parsers in `de.rs` and `named.rs` are hand-written, so is this: a
//! change there needs the same change here, and the schema test in
//! `tests/e2e/schema.rs` checks both against the same examples.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value, json};

use super::{MAX_REGEX_BYTES, NamedMatcher, NamedTest, Pattern, StringMatcher};

pub(crate) use super::PATTERNS;

/// The members of a string matcher: `properties` of its schema. Each may
/// be `null`, which the parser reads as absent.
pub(crate) fn string_members() -> Map<String, Value> {
    let regex = json!({
        "type": "string",
        "maxLength": MAX_REGEX_BYTES,
        "description": "A regular expression in RE2 syntax that must match the whole value \
                        (anchored, as in Envoy)."
    });
    let members = json!({
        "exact": {"type": ["string", "null"], "description": "The value equals this."},
        "prefix": {"type": ["string", "null"], "description": "The value starts with this."},
        "suffix": {"type": ["string", "null"], "description": "The value ends with this."},
        "contains": {"type": ["string", "null"], "description": "The value contains this."},
        "safe_regex": {
            "type": ["object", "null"],
            "description": "Envoy's `RegexMatcher`: the value matches `regex` as a whole.",
            "properties": {"regex": regex},
            "required": ["regex"],
            "additionalProperties": false
        },
        "regex": {
            "type": ["string", "null"],
            "maxLength": MAX_REGEX_BYTES,
            "description": "The same as `safe_regex: {regex: ...}` (ctxgate's older spelling)."
        },
        "one_of": {
            "type": ["array", "null"],
            "items": {"type": "string"},
            "description": "The value is one of these (ctxgate's; not in Envoy)."
        },
        "ignore_case": {
            "type": ["boolean", "null"],
            "default": false,
            "description": "Compare ASCII letters case-insensitively. Not with a regex: start \
                            it with `(?i-u)`."
        }
    });
    match members {
        Value::Object(members) => members,
        _ => Map::new(),
    }
}

/// `keys` are all given, and not `null`.
pub(crate) fn given(keys: &[&str]) -> Value {
    let not_null: Map<String, Value> = keys
        .iter()
        .map(|k| ((*k).to_owned(), json!({"not": {"type": "null"}})))
        .collect();
    json!({"required": keys, "properties": not_null})
}

/// Exactly one of `keys` is given (not `null`).
pub(crate) fn exactly_one(keys: &[&str]) -> Value {
    Value::Array(keys.iter().map(|k| given(&[k])).collect())
}

/// `ignore_case: true` is refused with a regex.
pub(crate) fn no_ignore_case_with_regex() -> Value {
    let with = |regex: &str| {
        json!({
            "required": ["ignore_case", regex],
            "properties": {"ignore_case": {"const": true}, regex: {"not": {"type": "null"}}}
        })
    };
    json!({"anyOf": [with("safe_regex"), with("regex")]})
}

impl JsonSchema for StringMatcher {
    fn schema_name() -> Cow<'static, str> {
        "StringMatcher".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "object",
            "description": "Envoy's `StringMatcher`: exactly one of `exact`, `prefix`, `suffix`, \
                            `contains`, `safe_regex` (or `regex`), `one_of`, and optionally \
                            `ignore_case`.",
            "properties": string_members(),
            "additionalProperties": false,
            "oneOf": exactly_one(&PATTERNS),
            "not": no_ignore_case_with_regex()
        })
    }
}

impl JsonSchema for NamedMatcher {
    fn schema_name() -> Cow<'static, str> {
        "NamedMatcher".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let mut properties = Map::new();
        properties.insert(
            "name".into(),
            json!({"type": "string", "description": "The header (lower case) or claim name."}),
        );
        properties.insert(
            "present_match".into(),
            json!({
                "type": ["boolean", "null"],
                "description": "`true`: the value is present, with any value; `false`: it is \
                                absent (Envoy's `present_match`)."
            }),
        );
        properties.insert(
            "present".into(),
            json!({
                "type": ["boolean", "null"],
                "description": "The same as `present_match` (ctxgate's older spelling)."
            }),
        );
        let string_match = generator.subschema_for::<StringMatcher>();
        properties.insert(
            "string_match".into(),
            json!({
                "description": "The value is present and matches (Envoy's `string_match`).",
                "anyOf": [string_match, {"type": "null"}]
            }),
        );
        properties.extend(string_members());
        properties.insert(
            "values".into(),
            json!({
                "type": ["array", "null"],
                "items": {"type": "string"},
                "description": "The same as `one_of` (a breaker selector's older spelling)."
            }),
        );
        let mut tests = vec!["present_match", "present", "string_match", "values"];
        tests.extend(PATTERNS);
        let mut not_with_case: Vec<Value> = ["present_match", "present", "string_match"]
            .iter()
            .map(|k| given(&["ignore_case", k]))
            .collect();
        if let Some(Value::Array(regexes)) = no_ignore_case_with_regex().get_mut("anyOf") {
            not_with_case.append(regexes);
        }
        json_schema!({
            "type": "object",
            "description": "A named value (a request header, a claim) and its test, in the shape \
                            of Envoy's `HeaderMatcher`: `name`, and exactly one of \
                            `present_match`, `string_match`, or a string matcher's members \
                            written inline (`exact`, `prefix`, `suffix`, `contains`, \
                            `safe_regex`, `one_of`, with `ignore_case`).",
            "properties": properties,
            "required": ["name"],
            "additionalProperties": false,
            "oneOf": exactly_one(&tests),
            "not": {"anyOf": not_with_case}
        })
    }
}

/// The member a pattern is written as, and its value.
pub(crate) fn pattern_member(pattern: &Pattern) -> (&'static str, Value) {
    match pattern {
        Pattern::Exact(s) => ("exact", json!(s)),
        Pattern::Prefix(s) => ("prefix", json!(s)),
        Pattern::Suffix(s) => ("suffix", json!(s)),
        Pattern::Contains(s) => ("contains", json!(s)),
        Pattern::SafeRegex(r) => ("safe_regex", json!({"regex": r.source})),
        Pattern::OneOf(values) => ("one_of", json!(values)),
    }
}

/// Writes a matcher's members into `map` (inline form).
pub(crate) fn serialize_members<M: SerializeMap>(
    m: &StringMatcher,
    map: &mut M,
) -> Result<(), M::Error> {
    let (key, value) = pattern_member(&m.pattern);
    map.serialize_entry(key, &value)?;
    if m.ignore_case {
        map.serialize_entry("ignore_case", &true)?;
    }
    Ok(())
}

impl Serialize for StringMatcher {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        serialize_members(self, &mut map)?;
        map.end()
    }
}

impl Serialize for NamedMatcher {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("name", &self.name)?;
        match &self.test {
            NamedTest::Present(present) => map.serialize_entry("present_match", present)?,
            NamedTest::Value(m) => map.serialize_entry("string_match", m)?,
        }
        map.end()
    }
}
