//! Multi-document YAML as JSON values, the way `kubectl` turns a manifest
//! into the JSON it sends (saphyr, the YAML parser services/rls uses).
//!
//! Duplicate keys are errors (as with `kubectl apply`'s strict decoding);
//! anchors, aliases and tags are refused rather than guessed at: manifests
//! here do not need them. Empty documents (a trailing `---`) are dropped.

use saphyr::{LoadableYamlNode, Scalar, Yaml};
use serde_json::{Map, Number, Value};

/// Every non-empty document of a YAML stream.
pub fn documents(text: &str) -> Result<Vec<Value>, String> {
    let docs = Yaml::load_from_str(text).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for (i, doc) in docs.iter().enumerate() {
        let value = to_json(doc).map_err(|e| format!("document {}: {e}", i + 1))?;
        if !value.is_null() {
            out.push(value);
        }
    }
    Ok(out)
}

fn to_json(node: &Yaml<'_>) -> Result<Value, String> {
    Ok(match node {
        Yaml::Value(scalar) => match scalar {
            Scalar::Null => Value::Null,
            Scalar::Boolean(b) => Value::Bool(*b),
            Scalar::Integer(i) => Value::from(*i),
            Scalar::FloatingPoint(f) => Number::from_f64(f.into_inner())
                .map(Value::Number)
                .ok_or_else(|| format!("{f} has no JSON form"))?,
            Scalar::String(s) => Value::String(s.to_string()),
        },
        Yaml::Sequence(items) => Value::Array(items.iter().map(to_json).collect::<Result<_, _>>()?),
        Yaml::Mapping(entries) => {
            let mut map = Map::new();
            for (key, value) in entries {
                // As sigs.k8s.io/yaml does: scalar keys become strings.
                let key = match key {
                    Yaml::Value(Scalar::String(s)) => s.to_string(),
                    Yaml::Value(Scalar::Integer(i)) => i.to_string(),
                    Yaml::Value(Scalar::Boolean(b)) => b.to_string(),
                    other => return Err(format!("unsupported mapping key {other:?}")),
                };
                map.insert(key, to_json(value)?);
            }
            Value::Object(map)
        }
        other => return Err(format!("unsupported YAML node {other:?}")),
    })
}
