//! Reading matchers from the configuration.
//!
//! A `StringMatcher`'s members may stand alone (`"path": {"prefix": "/v1"}`)
//! or share an object with others (`{"name": "x-tier", "exact": "gold"}`,
//! `{"prefix": "/health", "methods": ["GET"]}`), so they are read by
//! [`Fields`], which the visitor of each such object hands the keys it does
//! not know itself. Unknown keys are errors, as everywhere in the
//! configuration.

use std::fmt;

use serde::de::{self, Deserialize, DeserializeSeed, Deserializer, MapAccess, Visitor};

use super::{AnchoredRegex, PATTERNS, Pattern, StringMatcher, concat};

/// The members of a `StringMatcher`, as written in the configuration.
pub(crate) const STRING_MATCHER_FIELDS: &[&str] = &concat::<7, 1, 8>(PATTERNS, ["ignore_case"]);

/// What to set when no pattern, or two, are given.
pub(crate) const ONE_PATTERN: &str =
    "set exactly one of exact, prefix, suffix, contains, safe_regex (or regex), one_of";

/// The `StringMatcher` members of one object, gathered key by key.
#[derive(Default)]
pub(crate) struct Fields {
    /// The pattern, and the key it was written under.
    pub pattern: Option<(&'static str, Pattern)>,
    pub ignore_case: Option<bool>,
}

impl Fields {
    /// Reads the value of the member `key`, a `StringMatcher` member under
    /// the name `canonical` (for callers' own aliases: `values` is `one_of`
    /// for a header selector).
    pub fn read<'de, A: MapAccess<'de>>(
        &mut self,
        key: &str,
        canonical: &str,
        map: &mut A,
    ) -> Result<(), A::Error> {
        let Some(written) = STRING_MATCHER_FIELDS
            .iter()
            .copied()
            .find(|field| *field == canonical)
        else {
            return Err(de::Error::unknown_field(key, STRING_MATCHER_FIELDS));
        };
        // `null` is an absent member, as it was when these were `Option`
        // fields of the configuration types.
        if written == "ignore_case" {
            let value: Option<bool> = map.next_value()?;
            if value.is_some() {
                if self.ignore_case.is_some() {
                    return Err(de::Error::duplicate_field("ignore_case"));
                }
                self.ignore_case = value;
            }
            return Ok(());
        }
        let pattern = match written {
            "exact" => map.next_value::<Option<_>>()?.map(Pattern::Exact),
            "prefix" => map.next_value::<Option<_>>()?.map(Pattern::Prefix),
            "suffix" => map.next_value::<Option<_>>()?.map(Pattern::Suffix),
            "contains" => map.next_value::<Option<_>>()?.map(Pattern::Contains),
            "safe_regex" => map
                .next_value::<Option<RegexMatcher>>()?
                .map(|m| Pattern::SafeRegex(m.regex)),
            "regex" => map.next_value::<Option<_>>()?.map(Pattern::SafeRegex),
            _ => map.next_value::<Option<_>>()?.map(Pattern::OneOf),
        };
        let Some(pattern) = pattern else {
            return Ok(());
        };
        if let Some((first, _)) = &self.pattern {
            return Err(de::Error::custom(format_args!(
                "{ONE_PATTERN}: {first} and {key} are both set"
            )));
        }
        self.pattern = Some((written, pattern));
        Ok(())
    }

    /// The matcher, if a pattern was given; errors on `ignore_case` without
    /// a pattern or with a regex.
    pub fn finish<E: de::Error>(self) -> Result<Option<StringMatcher>, E> {
        let ignore_case = self.ignore_case.unwrap_or(false);
        match self.pattern {
            None if self.ignore_case.is_some() => Err(E::custom(format_args!(
                "ignore_case needs a pattern: {ONE_PATTERN}"
            ))),
            None => Ok(None),
            Some((_, Pattern::SafeRegex(_))) if ignore_case => Err(E::custom(
                "ignore_case does not apply to a regex: start it with (?i-u) for ASCII \
                 case-insensitive matching",
            )),
            Some((_, pattern)) => Ok(Some(StringMatcher {
                pattern,
                ignore_case,
            })),
        }
    }
}

/// Reads a member's name, refusing names not in the list. Refused while
/// the key is read, the error's path ends in the key
/// (`rules[0].when.path.exakt: unknown field ...`), as with derived types.
pub(crate) struct Key(pub &'static [&'static str]);

impl<'de> DeserializeSeed<'de> for Key {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        let key = String::deserialize(d)?;
        if self.0.contains(&key.as_str()) {
            Ok(key)
        } else {
            Err(de::Error::unknown_field(&key, self.0))
        }
    }
}

/// Envoy's `RegexMatcher`: `{"regex": "..."}`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RegexMatcher {
    regex: AnchoredRegex,
}

impl<'de> Deserialize<'de> for AnchoredRegex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let source = String::deserialize(d)?;
        AnchoredRegex::new(&source).map_err(de::Error::custom)
    }
}

struct StringMatcherVisitor;

impl<'de> Visitor<'de> for StringMatcherVisitor {
    type Value = StringMatcher;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string matcher such as {\"prefix\": \"/v1/\"}")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StringMatcher, A::Error> {
        let mut fields = Fields::default();
        while let Some(key) = map.next_key_seed(Key(STRING_MATCHER_FIELDS))? {
            fields.read(&key, &key, &mut map)?;
        }
        fields
            .finish()?
            .ok_or_else(|| de::Error::custom(ONE_PATTERN))
    }
}

impl<'de> Deserialize<'de> for StringMatcher {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(StringMatcherVisitor)
    }
}
