//! A test on a named value of the request (a header, a claim), in the
//! shape of Envoy's `config.route.v3.HeaderMatcher`: a `name`, and either
//! `present_match` or a `string_match`.
//!
//! The string match may also be written inline (`{"name": "x-tier",
//! "exact": "gold"}`), as ctxgate always accepted, and two older spellings
//! stay valid: `present` for `present_match`, and `values` (a header
//! selector's list) for `one_of`.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};

use super::de::{Fields, Key};
use super::{PATTERNS, StringMatcher, concat};
use crate::http::RequestHead;

/// A named value and the test it must pass.
#[derive(Debug, Clone)]
pub struct NamedMatcher {
    /// Header name (lower case) or claim name.
    pub name: String,
    pub test: NamedTest,
}

#[derive(Debug, Clone)]
pub enum NamedTest {
    /// `true`: the value is present (any value); `false`: it is absent.
    Present(bool),
    /// The value is present and matches.
    Value(StringMatcher),
}

impl NamedMatcher {
    /// Does `value` (None: absent) pass the test?
    pub fn matches(&self, value: Option<&str>) -> bool {
        match &self.test {
            NamedTest::Present(present) => value.is_some() == *present,
            NamedTest::Value(m) => value.is_some_and(|v| m.matches(v)),
        }
    }

    /// Does the request header `name` pass the test? Its first value is
    /// tested; a value that is not UTF-8 passes no string test.
    pub fn matches_header(&self, head: &RequestHead<'_>) -> bool {
        match &self.test {
            NamedTest::Present(present) => head.has_header(&self.name) == *present,
            NamedTest::Value(m) => head.header(&self.name).is_some_and(|v| m.matches(v)),
        }
    }

    /// `one_of: []` (or `values: []`), which matches nothing.
    pub fn is_empty_list(&self) -> bool {
        matches!(&self.test, NamedTest::Value(m) if m.is_empty_list())
    }
}

/// Every member a named matcher accepts.
pub(super) const NAMED_MATCHER_FIELDS: &[&str] = &concat::<11, 2, 13>(
    concat::<4, 7, 11>(
        ["name", "present_match", "present", "string_match"],
        PATTERNS,
    ),
    ["values", "ignore_case"],
);

pub(super) const ONE_TEST: &str = "set exactly one of present_match (or present), string_match, \
                        exact, prefix, suffix, contains, safe_regex (or regex), one_of (or values)";

struct NamedMatcherVisitor;

impl<'de> Visitor<'de> for NamedMatcherVisitor {
    type Value = NamedMatcher;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a named matcher such as {\"name\": \"x-tier\", \"exact\": \"gold\"}")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NamedMatcher, A::Error> {
        let mut name: Option<String> = None;
        // The test given outside the inline string fields, and its key.
        let mut test: Option<(String, NamedTest)> = None;
        let mut fields = Fields::default();
        while let Some(key) = map.next_key_seed(Key(NAMED_MATCHER_FIELDS))? {
            match key.as_str() {
                "name" => {
                    if name.is_some() {
                        return Err(de::Error::duplicate_field("name"));
                    }
                    name = Some(map.next_value()?);
                }
                "present_match" | "present" | "string_match" => {
                    // `null`: absent, as `present` was an `Option` field.
                    let value = if key == "string_match" {
                        map.next_value::<Option<_>>()?.map(NamedTest::Value)
                    } else {
                        map.next_value::<Option<_>>()?.map(NamedTest::Present)
                    };
                    let Some(value) = value else {
                        continue;
                    };
                    if let Some((first, _)) = &test {
                        return Err(de::Error::custom(format_args!(
                            "{ONE_TEST}: {first} and {key} are both set"
                        )));
                    }
                    test = Some((key, value));
                }
                "values" => fields.read(&key, "one_of", &mut map)?,
                _ => fields.read(&key, &key, &mut map)?,
            }
        }
        let name = name.ok_or_else(|| de::Error::missing_field("name"))?;
        let inline_keys = fields.pattern.as_ref().map(|(key, _)| *key);
        let inline_case = fields.ignore_case.is_some();
        let test = match (test, inline_keys) {
            (Some((first, _)), Some(second)) => {
                return Err(de::Error::custom(format_args!(
                    "{ONE_TEST}: {first} and {second} are both set"
                )));
            }
            (Some((key, _)), None) if inline_case => {
                return Err(de::Error::custom(format_args!(
                    "ignore_case does not apply to {key}{}",
                    if key == "string_match" {
                        ": set it inside string_match"
                    } else {
                        ""
                    }
                )));
            }
            (Some((_, test)), None) => test,
            (None, _) => match fields.finish()? {
                Some(m) => NamedTest::Value(m),
                None => return Err(de::Error::custom(ONE_TEST)),
            },
        };
        Ok(NamedMatcher { name, test })
    }
}

impl<'de> Deserialize<'de> for NamedMatcher {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(NamedMatcherVisitor)
    }
}
