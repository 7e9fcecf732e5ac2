//! JSON read strictly: a duplicate object key, at any depth, is refused,
//! and so is nesting deeper than a limit.
//!
//! RFC 8259 leaves duplicate keys to the reader, and readers differ:
//! `serde_json` and most JavaScript keep the last, others the first or
//! both. A gateway that authorises `{"name": "search", "name": "delete"}`
//! as one tool while the server runs the other is a confused deputy, so
//! the gateway reads no message that two readers could read differently.
//! `serde_json::Value` would silently keep the last key, hence this
//! visitor, which builds the same `Value` but stops at the first repeat.
//! Keys are compared after unescaping: `"a"` and `"\u0061"` are the same
//! key.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Deepest nesting ever read, whatever the caller asks: below
/// `serde_json`'s own recursion limit (128), so a too-deep document is
/// always reported as such and never as a syntax error.
pub const MAX_DEPTH_CEILING: usize = 120;

/// Why a document was not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    /// Not JSON (or trailing data after the value); `serde_json`'s message.
    Syntax(String),
    /// This key appears twice in one object.
    DuplicateKey(String),
    /// Arrays and objects nest deeper than the limit.
    TooDeep,
}

/// Reads one JSON value from `text`, refusing duplicate keys and nesting
/// deeper than `max_depth` (capped at [`MAX_DEPTH_CEILING`]) arrays and
/// objects.
pub fn read(text: &str, max_depth: usize) -> Result<Value, ReadError> {
    let violation = Cell::new(None);
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let seed = Strict {
        depth: 0,
        max_depth: max_depth.min(MAX_DEPTH_CEILING),
        violation: &violation,
    };
    let value = seed
        .deserialize(&mut deserializer)
        .and_then(|value| deserializer.end().map(|()| value));
    value.map_err(|e| violation.take().unwrap_or(ReadError::Syntax(e.to_string())))
}

/// Builds a `Value`, recording in `violation` why it stopped when the
/// document is valid JSON that the gateway still refuses.
#[derive(Clone, Copy)]
struct Strict<'a> {
    depth: usize,
    max_depth: usize,
    violation: &'a Cell<Option<ReadError>>,
}

impl<'a> Strict<'a> {
    /// The seed for the members of an array or object at this level.
    fn enter<E: de::Error>(self) -> Result<Strict<'a>, E> {
        if self.depth >= self.max_depth {
            self.violation.set(Some(ReadError::TooDeep));
            return Err(E::custom("nested too deep"));
        }
        Ok(Strict {
            depth: self.depth + 1,
            ..self
        })
    }
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("number is not finite"))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let inner = self.enter()?;
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(inner)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let inner = self.enter()?;
        let mut members = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if members.contains_key(&key) {
                self.violation.set(Some(ReadError::DuplicateKey(key)));
                return Err(de::Error::custom("duplicate key"));
            }
            let value = map.next_value_seed(inner)?;
            members.insert(key, value);
        }
        Ok(Value::Object(members))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn reads_what_serde_json_reads() {
        let text = r#"{"a": [1, -2, 3.5, "x", true, null, {"b": {}}], "c": "\u00e9"}"#;
        assert_eq!(
            read(text, 64).unwrap(),
            serde_json::from_str::<Value>(text).unwrap()
        );
        assert_eq!(read(" 7 ", 64).unwrap(), json!(7));
    }

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        for (text, key) in [
            (r#"{"a": 1, "a": 2}"#, "a"),
            (r#"{"a": {"b": [{"c": 1, "c": 1}]}}"#, "c"),
            (r#"{"name": "x", "n\u0061me": "y"}"#, "name"),
            (r#"[{}, {"k": null, "k": null}]"#, "k"),
        ] {
            assert_eq!(
                read(text, 64),
                Err(ReadError::DuplicateKey(key.into())),
                "{text}"
            );
        }
        // The same key in different objects is fine.
        assert!(read(r#"{"a": {"a": {"a": 1}}, "b": [{"a": 1}, {"a": 2}]}"#, 64).is_ok());
    }

    #[test]
    fn nesting_is_bounded() {
        let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(read(&nested(3), 3).is_ok());
        assert_eq!(read(&nested(4), 3), Err(ReadError::TooDeep));
        let objects = format!("{}1{}", r#"{"a":"#.repeat(5), "}".repeat(5));
        assert!(read(&objects, 5).is_ok());
        assert_eq!(read(&objects, 4), Err(ReadError::TooDeep));
        // Past serde_json's own limit, still reported as too deep.
        assert_eq!(read(&nested(500), 1000), Err(ReadError::TooDeep));
        assert!(read(&nested(MAX_DEPTH_CEILING), 1000).is_ok());
    }

    #[test]
    fn syntax_errors_and_trailing_data() {
        for text in [
            "",
            " ",
            "{",
            r#"{"a" 1}"#,
            "[1,]",
            "{} {}",
            "1 x",
            "\"\\ud800\"",
            "1e400",
        ] {
            assert!(
                matches!(read(text, 64), Err(ReadError::Syntax(_))),
                "{text:?}"
            );
        }
    }
}
