//! CustomResourceDefinitions (Istio's, the prometheus-operator's) as
//! validators: what a Kubernetes API server with the CRDs installed would
//! say about an object, without a cluster.
//!
//! An API server checks a custom resource in three ways, and so does this:
//!
//! 1. The version's `openAPIV3Schema`, a *structural* schema. Its JSON-schema
//!    part (types, enums, patterns, bounds, `oneOf`/`anyOf` constraints) is
//!    checked by the `jsonschema` crate, after [`structural_to_json_schema`]
//!    has translated the Kubernetes dialect into draft 7. An object schema
//!    without `additionalProperties` and without
//!    `x-kubernetes-preserve-unknown-fields: true` is *closed*: the API
//!    server prunes unknown fields, or rejects them under strict field
//!    validation (`kubectl apply`'s default). So it gets
//!    `additionalProperties: false`, and a misspelt field fails. `nullable`
//!    becomes a `null` type, `format: int32` bounds.
//! 2. The `x-kubernetes-validations` CEL rules at each level, evaluated on
//!    the object's value there with the `cel` crate, plus the Kubernetes CEL
//!    library functions Istio's rules call (`duration` as Go parses it,
//!    `isURL`, `url(..).getScheme()`, `substring`).
//! 3. `x-kubernetes-list-type: map` / `set`: no two items with the same keys.
//!
//! At the root, `apiVersion`, `kind` and `metadata` are implicit in every
//! CRD; `metadata` is checked as Kubernetes checks an object's name,
//! namespace, labels and annotations ([`object_meta_schema`]).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use cel::extractors::This;
use serde_json::{Map, Value, json};

/// The served versions of every CRD in a bundle, by (group, kind, version).
pub struct Crds {
    schemas: BTreeMap<(String, String, String), Value>,
}

/// What validating one object took: how many CEL rules ran.
#[derive(Debug, Default, Clone, Copy)]
pub struct Checked {
    pub cel_rules: usize,
}

impl Crds {
    /// Loads a `customresourcedefinitions.gen.yaml`-style bundle.
    pub fn load(path: &Path) -> Result<Crds, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the CRD bundle at {}: {e}", path.display()))?;
        let docs = super::yaml::documents(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut schemas = BTreeMap::new();
        for doc in docs {
            if doc["kind"] != "CustomResourceDefinition" {
                continue;
            }
            let spec = &doc["spec"];
            let group = str_at(spec, "/group")?;
            let kind = str_at(spec, "/names/kind")?;
            for version in spec["versions"].as_array().into_iter().flatten() {
                if version["served"] != true {
                    continue;
                }
                let name = str_at(version, "/name")?;
                let schema = version
                    .pointer("/schema/openAPIV3Schema")
                    .ok_or_else(|| format!("{kind}.{group}/{name} has no openAPIV3Schema"))?;
                schemas.insert(
                    (group.to_owned(), kind.to_owned(), name.to_owned()),
                    schema.clone(),
                );
            }
        }
        if schemas.is_empty() {
            return Err(format!("{}: no CustomResourceDefinition", path.display()));
        }
        Ok(Crds { schemas })
    }

    /// How many served (group, kind, version) schemas the bundle has.
    pub fn versions(&self) -> usize {
        self.schemas.len()
    }

    /// The API groups the bundle defines (`networking.istio.io`, ...).
    pub fn defines_group(&self, group: &str) -> bool {
        self.schemas.keys().any(|(g, _, _)| g == group)
    }

    /// The schema for an object's `apiVersion` (`group/version`) and `kind`.
    pub fn schema(&self, api_version: &str, kind: &str) -> Option<&Value> {
        let (group, version) = api_version.split_once('/')?;
        self.schemas
            .get(&(group.to_owned(), kind.to_owned(), version.to_owned()))
    }

    /// Panics unless `object` is rejected with an error containing
    /// `expected`: a broken copy each check must catch.
    #[track_caller]
    pub fn assert_rejects(&self, object: &Value, expected: &str) {
        match self.validate(object) {
            Ok(_) => panic!("accepted a broken object (expected an error about {expected:?})"),
            Err(errors) => assert!(
                errors.iter().any(|e| e.contains(expected)),
                "expected an error about {expected:?}, got {errors:#?}"
            ),
        }
    }

    /// Validates a whole object against its CRD: every problem, one line
    /// each (`/spec/http/0/timeout: ...`).
    pub fn validate(&self, object: &Value) -> Result<Checked, Vec<String>> {
        let api_version = object["apiVersion"].as_str().unwrap_or_default();
        let kind = object["kind"].as_str().unwrap_or_default();
        let Some(schema) = self.schema(api_version, kind) else {
            return Err(vec![format!(
                "no served CRD version for apiVersion {api_version:?}, kind {kind:?}"
            )]);
        };
        validate_against(schema, object)
    }
}

/// Validates an object against one CRD version's `openAPIV3Schema`.
pub fn validate_against(schema: &Value, object: &Value) -> Result<Checked, Vec<String>> {
    let mut root = structural_to_json_schema(schema);
    let properties = root["properties"]
        .as_object_mut()
        .expect("a CRD schema has properties");
    properties.insert("apiVersion".into(), json!({"type": "string"}));
    properties.insert("kind".into(), json!({"type": "string"}));
    properties.insert("metadata".into(), object_meta_schema());
    let required = root
        .as_object_mut()
        .expect("a CRD schema is an object")
        .entry("required")
        .or_insert_with(|| json!([]));
    for field in ["apiVersion", "kind", "metadata"] {
        required
            .as_array_mut()
            .expect("required is a list")
            .push(json!(field));
    }
    let validator = jsonschema::draft7::options()
        .should_validate_formats(true)
        .with_format("byte", is_base64)
        .build(&root)
        .map_err(|e| vec![format!("the CRD schema does not compile: {e}")])?;
    let errors: Vec<String> = validator
        .iter_errors(object)
        .map(|e| format!("{}: {e}", pointer_or_root(&e.instance_path().to_string())))
        .collect();
    if !errors.is_empty() {
        // CEL rules assume a value of the schema's type; an API server also
        // reports schema errors first.
        return Err(errors);
    }
    let mut checked = Checked::default();
    let mut errors = Vec::new();
    kubernetes_extensions(schema, object, "", &mut checked, &mut errors);
    if errors.is_empty() {
        Ok(checked)
    } else {
        Err(errors)
    }
}

/// Translates a Kubernetes structural schema into plain JSON Schema
/// (draft 7), closing every object schema that Kubernetes treats as closed.
pub fn structural_to_json_schema(schema: &Value) -> Value {
    let Value::Object(map) = schema else {
        return schema.clone();
    };
    let mut out = Map::new();
    for (key, value) in map {
        let translated = match key.as_str() {
            // Documentation, and the Kubernetes extensions: checked by
            // `kubernetes_extensions` or expressed below.
            "description" | "nullable" => continue,
            k if k.starts_with("x-kubernetes-") => continue,
            "properties" => Value::Object(
                value
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(name, s)| (name.clone(), structural_to_json_schema(s)))
                    .collect(),
            ),
            // A schema's own patterns must be ECMA-262 regexes, which have
            // no inline flags.
            "pattern" => value.as_str().map_or_else(
                || value.clone(),
                |p| Value::String(without_inline_ignore_case(p)),
            ),
            "additionalProperties" | "items" | "not" if value.is_object() => {
                structural_to_json_schema(value)
            }
            "allOf" | "anyOf" | "oneOf" => Value::Array(
                value
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(structural_to_json_schema)
                    .collect(),
            ),
            _ => value.clone(),
        };
        out.insert(key.clone(), translated);
    }
    let preserves_unknown = map.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
    let is_object = map.get("type") == Some(&json!("object")) || map.contains_key("properties");
    if is_object && !preserves_unknown && !map.contains_key("additionalProperties") {
        out.insert("additionalProperties".into(), json!(false));
    }
    if map.get("nullable") == Some(&json!(true)) {
        if let Some(t) = out.get("type").cloned() {
            out.insert("type".into(), json!([t, "null"]));
        }
        if let Some(Value::Array(values)) = out.get_mut("enum") {
            values.push(Value::Null);
        }
    }
    let bounds = match map.get("format").and_then(Value::as_str) {
        Some("int32") => Some((i64::from(i32::MIN), i64::from(i32::MAX))),
        Some("int64") => Some((i64::MIN, i64::MAX)),
        _ => None,
    };
    if let Some((min, max)) = bounds {
        out.entry("minimum").or_insert(json!(min));
        out.entry("maximum").or_insert(json!(max));
    }
    if bounds.is_some() {
        out.remove("format");
    }
    Value::Object(out)
}

/// A Go (RE2) pattern with a leading-group `(?i)` (the prometheus-operator's
/// `^(?i)(abort|warn)?$`) as the same pattern without the flag: each ASCII
/// letter after it becomes a class of both cases (`[aA]`, and both cases
/// inside a class). Patterns without `(?i)` are returned as they are.
fn without_inline_ignore_case(pattern: &str) -> String {
    let Some((before, after)) = pattern.split_once("(?i)") else {
        return pattern.to_owned();
    };
    let mut out = before.to_owned();
    let mut in_class = false;
    let mut escaped = false;
    for c in after.chars() {
        if escaped {
            out.push(c);
            escaped = false;
            continue;
        }
        match c {
            '\\' => {
                escaped = true;
                out.push(c);
            }
            '[' if !in_class => {
                in_class = true;
                out.push(c);
            }
            ']' if in_class => {
                in_class = false;
                out.push(c);
            }
            c if c.is_ascii_alphabetic() => {
                let (lower, upper) = (c.to_ascii_lowercase(), c.to_ascii_uppercase());
                if in_class {
                    out.push(lower);
                    out.push(upper);
                } else {
                    out.push('[');
                    out.push(lower);
                    out.push(upper);
                    out.push(']');
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// What the API server checks in every object's `metadata` (the fields a
/// manifest may set; server-set fields such as `uid` are refused).
pub fn object_meta_schema() -> Value {
    let dns_label = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
    let dns_subdomain = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
    // Label values: empty, or up to 63 alphanumerics with -_. inside.
    let label_value = "^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$";
    // Label and annotation keys: an optional DNS-subdomain prefix and a name.
    let key = "^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$";
    json!({
        "type": "object",
        "required": ["name"],
        "additionalProperties": false,
        "properties": {
            "name": {"type": "string", "maxLength": 253, "pattern": dns_subdomain},
            "namespace": {"type": "string", "maxLength": 63, "pattern": dns_label},
            "labels": {
                "type": "object",
                "propertyNames": {"pattern": key},
                "additionalProperties": {"type": "string", "maxLength": 63, "pattern": label_value}
            },
            "annotations": {
                "type": "object",
                "propertyNames": {"pattern": key},
                "additionalProperties": {"type": "string"}
            }
        }
    })
}

fn is_base64(s: &str) -> bool {
    let body = s.trim_end_matches('=');
    s.len().is_multiple_of(4)
        && s.len() - body.len() <= 2
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

fn pointer_or_root(pointer: &str) -> &str {
    if pointer.is_empty() { "/" } else { pointer }
}

fn str_at<'v>(value: &'v Value, pointer: &str) -> Result<&'v str, String> {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("CRD without {pointer}"))
}

/// Walks schema and object together, checking CEL rules and list types.
fn kubernetes_extensions(
    schema: &Value,
    value: &Value,
    path: &str,
    checked: &mut Checked,
    errors: &mut Vec<String>,
) {
    for rule in schema["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let source = rule["rule"].as_str().unwrap_or_default();
        // Transition rules compare with the stored object: not on create.
        if source.contains("oldSelf") {
            continue;
        }
        checked.cel_rules += 1;
        let message = rule["message"].as_str().unwrap_or(source);
        match evaluate_cel(source, value) {
            Ok(true) => {}
            Ok(false) => errors.push(format!(
                "{}: {message} (rule: {source})",
                pointer_or_root(path)
            )),
            Err(e) => errors.push(format!(
                "{}: cannot evaluate the rule {source:?}: {e}",
                pointer_or_root(path)
            )),
        }
    }
    match value {
        Value::Object(fields) => {
            let properties = schema["properties"].as_object();
            for (name, field) in fields {
                let sub = properties
                    .and_then(|p| p.get(name))
                    .or_else(|| schema.get("additionalProperties").filter(|s| s.is_object()));
                if let Some(sub) = sub {
                    let path = format!("{path}/{}", name.replace('~', "~0").replace('/', "~1"));
                    kubernetes_extensions(sub, field, &path, checked, errors);
                }
            }
        }
        Value::Array(items) => {
            match schema["x-kubernetes-list-type"].as_str() {
                Some("map") => {
                    let keys: Vec<&str> = schema["x-kubernetes-list-map-keys"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect();
                    let mut seen = HashMap::new();
                    for (i, item) in items.iter().enumerate() {
                        let id: Vec<&Value> = keys.iter().map(|k| &item[*k]).collect();
                        if let Some(first) = seen.insert(format!("{id:?}"), i) {
                            errors.push(format!(
                                "{path}/{i}: duplicate of item {first} (same {})",
                                keys.join(", ")
                            ));
                        }
                    }
                }
                Some("set") => {
                    for (i, item) in items.iter().enumerate() {
                        if let Some(first) = items.iter().take(i).position(|other| other == item) {
                            errors.push(format!("{path}/{i}: duplicate of item {first}"));
                        }
                    }
                }
                _ => {}
            }
            if let Some(sub) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    kubernetes_extensions(sub, item, &format!("{path}/{i}"), checked, errors);
                }
            }
        }
        _ => {}
    }
}

/// Evaluates one `x-kubernetes-validations` rule with `self` bound to `value`.
pub fn evaluate_cel(rule: &str, value: &Value) -> Result<bool, String> {
    let program = cel::Program::compile(rule).map_err(|e| e.to_string())?;
    let mut context = cel::Context::default();
    // Kubernetes' CEL library, as far as Istio's rules use it.
    context.add_function("duration", go_duration);
    context.add_function("isURL", |s: Arc<String>| is_url(&s));
    context.add_function("url", |s: Arc<String>| s);
    context.add_function("getScheme", |This(s): This<Arc<String>>| {
        s.split_once(':')
            .map(|(scheme, _)| scheme.to_owned())
            .unwrap_or_default()
    });
    context.add_function("substring", substring);
    context.add_variable_from_value("self", to_cel(value));
    match program.execute(&context) {
        Ok(cel::Value::Bool(b)) => Ok(b),
        Ok(other) => Err(format!("the rule gave {other:?}, not a boolean")),
        Err(e) => Err(e.to_string()),
    }
}

/// JSON as Kubernetes hands it to CEL: integers are `int`.
fn to_cel(value: &Value) -> cel::Value {
    match value {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => cel::Value::Int(i),
            (None, Some(u)) => cel::Value::UInt(u),
            _ => cel::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => cel::Value::String(Arc::new(s.clone())),
        Value::Array(items) => cel::Value::List(Arc::new(items.iter().map(to_cel).collect())),
        Value::Object(fields) => cel::Value::from(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), to_cel(v)))
                .collect::<HashMap<String, cel::Value>>(),
        ),
    }
}

/// `duration(string)` as Kubernetes evaluates it: Go's `time.ParseDuration`
/// (`300ms`, `1.5h`, `2h45m`; a unit is required except for `0`). Durations
/// are compared, so nanoseconds as an `int` serve as the value.
fn go_duration(s: Arc<String>) -> cel::ResolveResult {
    parse_go_duration(&s).map(cel::Value::Int).ok_or_else(|| {
        cel::ExecutionError::function_error("duration", format!("invalid duration {s:?}"))
    })
}

pub fn parse_go_duration(s: &str) -> Option<i64> {
    let (negative, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, tail) = rest.split_at(number_len);
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return None;
        }
        let amount: f64 = number.parse().ok()?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let nanos = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total += amount * nanos;
        rest = tail;
    }
    if total > i64::MAX as f64 {
        return None;
    }
    // Truncated to whole nanoseconds, as Go does.
    let total = total as i64;
    Some(if negative { -total } else { total })
}

/// `isURL(string)`: Go's `url.ParseRequestURI` accepts it, i.e. an absolute
/// URL (`scheme:...`) or an absolute path, without spaces or control
/// characters.
fn is_url(s: &str) -> bool {
    if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    if s.starts_with('/') {
        return true;
    }
    match s.split_once(':') {
        Some((scheme, rest)) => {
            let mut chars = scheme.chars();
            chars.next().is_some_and(|c| c.is_ascii_alphabetic())
                && chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
                && !rest.is_empty()
        }
        None => false,
    }
}

/// `string.substring(start, end)` of Kubernetes' strings library (code
/// points, end exclusive).
fn substring(This(s): This<Arc<String>>, start: i64, end: i64) -> cel::ResolveResult {
    let chars: Vec<char> = s.chars().collect();
    let range = usize::try_from(start).ok().zip(usize::try_from(end).ok());
    match range {
        Some((a, b)) if a <= b && b <= chars.len() => Ok(cel::Value::String(Arc::new(
            chars.get(a..b).unwrap_or_default().iter().collect(),
        ))),
        _ => Err(cel::ExecutionError::function_error(
            "substring",
            format!("range [{start}, {end}) out of bounds"),
        )),
    }
}
