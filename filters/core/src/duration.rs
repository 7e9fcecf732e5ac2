//! Durations in the plugin configuration.
//!
//! Every duration field is named after its unit (`timeout_ms`,
//! `window_seconds`) and takes either a plain number in that unit, as it
//! always has, or a duration string as Envoy users write them: `"250ms"`,
//! `"5s"`, `"1.5s"`, `"2m"`, `"1h"`. A string must come to a whole number
//! of the field's unit: `"1.5s"` is 1500 in a `_ms` field, but an error in
//! a `_seconds` field, never silently rounded.
//!
//! The fields stay plain `u64`s: the functions here are serde
//! `deserialize_with` helpers, so nothing past parsing changes. Errors are
//! serde errors, and `parse_json` puts the field's path in front of them.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};

/// The unit a duration field counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Milliseconds,
    Seconds,
}

impl Unit {
    fn nanos(self) -> u128 {
        match self {
            Unit::Milliseconds => 1_000_000,
            Unit::Seconds => 1_000_000_000,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Unit::Milliseconds => "milliseconds",
            Unit::Seconds => "seconds",
        }
    }
}

/// Suffixes a duration string may end in, longest first (`ms` before `s`
/// and `m`), with their length in nanoseconds.
const SUFFIXES: [(&str, u128); 4] = [
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

/// Most digits after the decimal point: nanosecond precision, as Envoy's
/// `google.protobuf.Duration`.
const MAX_FRACTION_DIGITS: usize = 9;

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DurationError {
    Negative,
    /// A number without a unit: `"300"`.
    NoUnit,
    UnknownUnit(String),
    /// Not `<digits>[.<digits>]<unit>`.
    Malformed,
    /// More than nine digits after the decimal point.
    TooPrecise,
    /// Larger than the field can hold.
    Overflow,
    /// `"1.5ms"` in a milliseconds field.
    NotWhole(Unit),
}

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DurationError::Negative => f.write_str("must not be negative"),
            DurationError::NoUnit => {
                f.write_str("needs a unit (ms, s, m or h), or write it as a number")
            }
            DurationError::UnknownUnit(unit) => {
                write!(f, "unknown unit '{unit}' (use ms, s, m or h)")
            }
            DurationError::Malformed => {
                f.write_str("is not a duration such as \"250ms\", \"5s\", \"1.5s\", \"2m\", \"1h\"")
            }
            DurationError::TooPrecise => f.write_str("has more than nine decimal places"),
            DurationError::Overflow => f.write_str("is too large"),
            DurationError::NotWhole(unit) => {
                write!(f, "is not a whole number of {}", unit.name())
            }
        }
    }
}

impl std::error::Error for DurationError {}

/// `"1.5s"` -> 1500 in [`Unit::Milliseconds`]: a decimal number (no sign,
/// no exponent, at most nine decimal places) and one unit of `ms`, `s`,
/// `m`, `h`.
pub fn parse(text: &str, unit: Unit) -> Result<u64, DurationError> {
    if text.starts_with('-') {
        return Err(DurationError::Negative);
    }
    let number_len = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(number_len);
    if number.is_empty() {
        return Err(DurationError::Malformed);
    }
    if suffix.is_empty() {
        return Err(DurationError::NoUnit);
    }
    let Some(&(_, suffix_nanos)) = SUFFIXES.iter().find(|(name, _)| *name == suffix) else {
        return Err(if suffix.bytes().all(|b| b.is_ascii_alphabetic()) {
            DurationError::UnknownUnit(suffix.to_owned())
        } else {
            DurationError::Malformed
        });
    };
    let (whole, fraction) = match number.split_once('.') {
        Some((whole, fraction)) => (whole, fraction),
        None => (number, ""),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || (number.contains('.') && !digits(fraction)) {
        return Err(DurationError::Malformed);
    }
    if fraction.len() > MAX_FRACTION_DIGITS {
        return Err(DurationError::TooPrecise);
    }
    // value = whole.fraction x suffix, in the field's unit:
    // (whole x 10^d + fraction) x suffix_nanos / (10^d x unit_nanos)
    let scale = 10u128.pow(u32::try_from(fraction.len()).map_err(|_| DurationError::TooPrecise)?);
    let whole: u128 = whole.parse().map_err(|_| DurationError::Overflow)?;
    let fraction: u128 = if fraction.is_empty() {
        0
    } else {
        fraction.parse().map_err(|_| DurationError::Malformed)?
    };
    let numerator = whole
        .checked_mul(scale)
        .and_then(|n| n.checked_add(fraction))
        .and_then(|n| n.checked_mul(suffix_nanos))
        .ok_or(DurationError::Overflow)?;
    let denominator = scale
        .checked_mul(unit.nanos())
        .ok_or(DurationError::Overflow)?;
    if numerator % denominator != 0 {
        return Err(DurationError::NotWhole(unit));
    }
    u64::try_from(numerator / denominator).map_err(|_| DurationError::Overflow)
}

struct DurationVisitor(Unit);

impl Visitor<'_> for DurationVisitor {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a whole number of {} or a duration string such as \"5s\"",
            self.0.name()
        )
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        Ok(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
        u64::try_from(v).map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &self))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
        parse(v, self.0).map_err(|e| E::custom(format_args!("invalid duration \"{v}\": {e}")))
    }
}

struct OptionVisitor(Unit);

impl<'de> Visitor<'de> for OptionVisitor {
    type Value = Option<u64>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        DurationVisitor(self.0).expecting(f)?;
        f.write_str(", or null")
    }

    fn visit_none<E: de::Error>(self) -> Result<Option<u64>, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Option<u64>, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<u64>, D::Error> {
        d.deserialize_any(DurationVisitor(self.0)).map(Some)
    }
}

/// `deserialize_with` for a `_ms` field.
pub fn milliseconds<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    d.deserialize_any(DurationVisitor(Unit::Milliseconds))
}

/// `deserialize_with` for a `_seconds` field.
pub fn seconds<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    d.deserialize_any(DurationVisitor(Unit::Seconds))
}

/// `deserialize_with` for an optional `_ms` field (`null` is absent).
pub fn option_milliseconds<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    d.deserialize_option(OptionVisitor(Unit::Milliseconds))
}

/// `deserialize_with` for an optional `_seconds` field (`null` is absent).
pub fn option_seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    d.deserialize_option(OptionVisitor(Unit::Seconds))
}

/// What a `_ms` field accepts, for the JSON Schema.
#[cfg(feature = "schema")]
pub struct Milliseconds;

/// What a `_seconds` field accepts, for the JSON Schema.
#[cfg(feature = "schema")]
pub struct Seconds;

#[cfg(feature = "schema")]
mod schema {
    use std::borrow::Cow;

    use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};

    use super::{Milliseconds, Seconds};

    /// The strings [`super::parse`] reads, short of the whole-unit check.
    pub const PATTERN: &str = r"^[0-9]+(\.[0-9]{1,9})?(ms|s|m|h)$";

    fn duration(unit: &str, example: &str) -> Schema {
        json_schema!({
            "description": format!(
                "A duration: a whole number of {unit}, or a string of a decimal number and \
                 a unit (`ms`, `s`, `m`, `h`) that comes to a whole number of {unit}, e.g. \
                 `\"{example}\"`."
            ),
            "anyOf": [
                {"type": "integer", "minimum": 0},
                {"type": "string", "pattern": PATTERN}
            ]
        })
    }

    impl JsonSchema for Milliseconds {
        fn schema_name() -> Cow<'static, str> {
            "DurationMilliseconds".into()
        }

        fn json_schema(_: &mut SchemaGenerator) -> Schema {
            duration("milliseconds", "250ms")
        }
    }

    impl JsonSchema for Seconds {
        fn schema_name() -> Cow<'static, str> {
            "DurationSeconds".into()
        }

        fn json_schema(_: &mut SchemaGenerator) -> Schema {
            duration("seconds", "5m")
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    use super::*;
    use crate::config::parse_json;

    #[test]
    fn envoy_style_strings_are_read_in_the_fields_unit() {
        let ms = |s: &str| parse(s, Unit::Milliseconds);
        let s = |s: &str| parse(s, Unit::Seconds);
        assert_eq!(ms("250ms"), Ok(250));
        assert_eq!(ms("5s"), Ok(5000));
        assert_eq!(ms("1.5s"), Ok(1500));
        assert_eq!(ms("0.25s"), Ok(250));
        assert_eq!(ms("2m"), Ok(120_000));
        assert_eq!(ms("1h"), Ok(3_600_000));
        assert_eq!(ms("0s"), Ok(0));
        assert_eq!(ms("1.000000000s"), Ok(1000));
        assert_eq!(s("5s"), Ok(5));
        assert_eq!(s("1.5m"), Ok(90));
        assert_eq!(s("2m"), Ok(120));
        assert_eq!(s("1h"), Ok(3600));
        assert_eq!(s("3000ms"), Ok(3));
        assert_eq!(s("0ms"), Ok(0));
    }

    #[test]
    fn what_is_not_a_duration_is_refused_with_the_reason() {
        let ms = |s: &str| parse(s, Unit::Milliseconds);
        assert_eq!(ms("-5s"), Err(DurationError::Negative));
        assert_eq!(ms("300"), Err(DurationError::NoUnit));
        assert_eq!(ms("0"), Err(DurationError::NoUnit));
        assert_eq!(ms("5d"), Err(DurationError::UnknownUnit("d".into())));
        assert_eq!(ms("5S"), Err(DurationError::UnknownUnit("S".into())));
        assert_eq!(ms("5us"), Err(DurationError::UnknownUnit("us".into())));
        for bad in [
            "", "s", ".5s", "5.s", "1..5s", "1.2.3s", "5 s", " 5s", "5s ", "+5s", "1e3ms", "1h30m",
        ] {
            assert!(ms(bad).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(ms("1.0000000001s"), Err(DurationError::TooPrecise));
        assert_eq!(
            ms("1.5ms"),
            Err(DurationError::NotWhole(Unit::Milliseconds))
        );
        assert_eq!(
            parse("1.5s", Unit::Seconds),
            Err(DurationError::NotWhole(Unit::Seconds))
        );
        assert_eq!(
            parse("999ms", Unit::Seconds),
            Err(DurationError::NotWhole(Unit::Seconds))
        );
    }

    #[test]
    fn durations_past_the_field_overflow() {
        let ms = |s: &str| parse(s, Unit::Milliseconds);
        assert_eq!(ms("18446744073709551615ms"), Ok(u64::MAX));
        assert_eq!(ms("18446744073709551616ms"), Err(DurationError::Overflow));
        assert_eq!(ms("18446744073709551615s"), Err(DurationError::Overflow));
        assert_eq!(
            ms("99999999999999999999999999999999999999999h"),
            Err(DurationError::Overflow)
        );
        assert_eq!(
            ms("9999999999999999999999999999.999999999h"),
            Err(DurationError::Overflow)
        );
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Timeouts {
        #[serde(deserialize_with = "milliseconds")]
        timeout_ms: u64,
        #[serde(default, deserialize_with = "option_seconds")]
        ttl_seconds: Option<u64>,
    }

    fn timeouts(value: serde_json::Value) -> Result<Timeouts, String> {
        parse_json::<Timeouts>(value.to_string().as_bytes()).map_err(|e| e.to_string())
    }

    #[test]
    fn a_number_keeps_meaning_the_fields_unit() {
        let t = timeouts(json!({"timeout_ms": 20, "ttl_seconds": 60})).unwrap();
        assert_eq!((t.timeout_ms, t.ttl_seconds), (20, Some(60)));
        let t = timeouts(json!({"timeout_ms": "1.5s", "ttl_seconds": "2m"})).unwrap();
        assert_eq!((t.timeout_ms, t.ttl_seconds), (1500, Some(120)));
        let t = timeouts(json!({"timeout_ms": 0})).unwrap();
        assert_eq!(t.ttl_seconds, None);
        let t = timeouts(json!({"timeout_ms": 0, "ttl_seconds": null})).unwrap();
        assert_eq!(t.ttl_seconds, None);
    }

    #[test]
    fn errors_name_the_field() {
        let err = timeouts(json!({"timeout_ms": "1.5ms"})).unwrap_err();
        assert!(
            err.starts_with(
                "timeout_ms: invalid duration \"1.5ms\": is not a whole number of milliseconds"
            ),
            "{err}"
        );
        let err = timeouts(json!({"timeout_ms": 1, "ttl_seconds": "90"})).unwrap_err();
        assert!(
            err.starts_with("ttl_seconds: invalid duration \"90\": needs a unit"),
            "{err}"
        );
        let err = timeouts(json!({"timeout_ms": -5})).unwrap_err();
        assert!(
            err.starts_with("timeout_ms: invalid value: integer `-5`"),
            "{err}"
        );
        let err = timeouts(json!({"timeout_ms": 1.5})).unwrap_err();
        assert!(
            err.starts_with("timeout_ms: invalid type: floating point"),
            "{err}"
        );
        let err = timeouts(json!({"timeout_ms": "5d"})).unwrap_err();
        assert!(
            err.starts_with("timeout_ms: invalid duration \"5d\": unknown unit 'd'"),
            "{err}"
        );
        let err = timeouts(json!({"timeout_ms": true})).unwrap_err();
        assert!(
            err.contains("expected a whole number of milliseconds or a duration string"),
            "{err}"
        );
    }

    #[cfg(feature = "schema")]
    #[test]
    fn the_schema_pattern_matches_what_parse_reads() {
        let pattern = regex::Regex::new(schema::PATTERN).unwrap();
        for text in ["250ms", "1.5s", "2m", "1h", "0s", "1.000000000s"] {
            assert!(
                pattern.is_match(text) && parse(text, Unit::Milliseconds).is_ok(),
                "{text}"
            );
        }
        for text in ["-5s", "300", "5d", ".5s", "1.0000000001s", "1h30m"] {
            assert!(
                !pattern.is_match(text) && parse(text, Unit::Milliseconds).is_err(),
                "{text}"
            );
        }
    }
}
