//! Paths served without a token (`public_paths`).
//!
//! An entry is a string matcher on the canonical request path (see
//! [`crate::matcher`]) and the methods it applies to. `exact` and `prefix`
//! compare whole segments of the canonical path: `{"prefix": "/health"}`
//! makes `/health` and `/health/live` public, never `/healthz`. That is
//! Envoy's `path_separated_prefix` (a route match), which is accepted as
//! the same thing; a character prefix on a list of unauthenticated paths
//! would be a trap. `suffix`, `contains`, `safe_regex` and `one_of` test the
//! canonical path as one string (`/` + the decoded segments joined by `/`),
//! the same string the tagging filter's `path` conditions see.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};

use crate::config::ConfigError;
use crate::matcher::{Fields, Key, ONE_PATTERN, PATTERNS, Pattern, StringMatcher, concat};
use crate::path::canonical_segments;

/// One `public_paths` entry, as configured.
#[derive(Debug, Clone)]
pub struct PublicPathConfig {
    /// The path test. `prefix` is matched per segment (see the module).
    pub path: StringMatcher,
    /// Methods this applies to (default: all).
    pub methods: Vec<String>,
}

/// Every member of a `public_paths` entry.
pub(crate) const PUBLIC_PATH_FIELDS: &[&str] = &concat::<7, 3, 10>(
    PATTERNS,
    ["path_separated_prefix", "ignore_case", "methods"],
);

struct PublicPathVisitor;

impl<'de> Visitor<'de> for PublicPathVisitor {
    type Value = PublicPathConfig;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a public path such as {\"prefix\": \"/health\", \"methods\": [\"GET\"]}")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PublicPathConfig, A::Error> {
        let mut methods: Option<Vec<String>> = None;
        let mut fields = Fields::default();
        while let Some(key) = map.next_key_seed(Key(PUBLIC_PATH_FIELDS))? {
            match key.as_str() {
                "methods" => {
                    if methods.is_some() {
                        return Err(de::Error::duplicate_field("methods"));
                    }
                    methods = Some(map.next_value()?);
                }
                "path_separated_prefix" => fields.read(&key, "prefix", &mut map)?,
                _ => fields.read(&key, &key, &mut map)?,
            }
        }
        let path = fields.finish()?.ok_or_else(|| {
            de::Error::custom(format_args!("{ONE_PATTERN} (or path_separated_prefix)"))
        })?;
        Ok(PublicPathConfig {
            path,
            methods: methods.unwrap_or_default(),
        })
    }
}

impl<'de> Deserialize<'de> for PublicPathConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(PublicPathVisitor)
    }
}

/// A compiled `public_paths` entry.
pub struct PublicPath {
    test: PathTest,
    methods: Vec<String>,
}

enum PathTest {
    /// The canonical segments equal one of these, or with `prefix` start
    /// with it.
    Segments {
        alternatives: Vec<Vec<String>>,
        prefix: bool,
        ignore_case: bool,
    },
    /// The canonical path as one string.
    Path(StringMatcher),
}

impl PublicPath {
    /// `field` names the entry in errors (`public_paths[0]`).
    pub fn compile(field: &str, config: PublicPathConfig) -> Result<PublicPath, ConfigError> {
        let segments = |path: &str| {
            if !path.starts_with('/') {
                return Err(ConfigError::new(
                    field,
                    format!("'{path}' must start with '/'"),
                ));
            }
            canonical_segments(path).map_err(|e| ConfigError::new(field, e.to_string()))
        };
        let ignore_case = config.path.ignore_case;
        let test = match &config.path.pattern {
            Pattern::Exact(path) => PathTest::Segments {
                alternatives: vec![segments(path)?],
                prefix: false,
                ignore_case,
            },
            Pattern::Prefix(path) => PathTest::Segments {
                alternatives: vec![segments(path)?],
                prefix: true,
                ignore_case,
            },
            Pattern::OneOf(paths) => PathTest::Segments {
                alternatives: paths
                    .iter()
                    .map(|p| segments(p))
                    .collect::<Result<_, _>>()?,
                prefix: false,
                ignore_case,
            },
            Pattern::Suffix(_) | Pattern::Contains(_) | Pattern::SafeRegex(_) => {
                PathTest::Path(config.path.clone())
            }
        };
        Ok(PublicPath {
            test,
            methods: config.methods,
        })
    }

    /// Is a request with this method and canonical path public?
    pub fn matches(&self, method: &str, segments: &[String]) -> bool {
        if !(self.methods.is_empty() || self.methods.iter().any(|m| m == method)) {
            return false;
        }
        match &self.test {
            PathTest::Segments {
                alternatives,
                prefix,
                ignore_case,
            } => alternatives.iter().any(|want| {
                let head = if *prefix {
                    segments.get(..want.len())
                } else {
                    (segments.len() == want.len()).then_some(segments)
                };
                head.is_some_and(|have| {
                    have.iter().zip(want).all(|(h, w)| {
                        if *ignore_case {
                            h.eq_ignore_ascii_case(w)
                        } else {
                            h == w
                        }
                    })
                })
            }),
            PathTest::Path(m) => m.matches(&format!("/{}", segments.join("/"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::config::parse_json;

    fn public(config: Value) -> PublicPath {
        let parsed: PublicPathConfig = parse_json(config.to_string().as_bytes()).unwrap();
        PublicPath::compile("public_paths[0]", parsed).unwrap()
    }

    fn segments(path: &str) -> Vec<String> {
        canonical_segments(path).unwrap()
    }

    fn is_public(p: &PublicPath, method: &str, path: &str) -> bool {
        p.matches(method, &segments(path))
    }

    #[test]
    fn prefixes_are_whole_segments_under_either_name() {
        for config in [
            json!({"prefix": "/health"}),
            json!({"path_separated_prefix": "/health"}),
            json!({"prefix": "/health/"}),
        ] {
            let p = public(config.clone());
            assert!(is_public(&p, "GET", "/health"), "{config}");
            assert!(is_public(&p, "GET", "/health/live"), "{config}");
            assert!(!is_public(&p, "GET", "/healthz"), "{config}");
            assert!(!is_public(&p, "GET", "/Health"), "{config}");
        }
        assert!(is_public(
            &public(json!({"prefix": "/"})),
            "GET",
            "/anything/at/all"
        ));
    }

    #[test]
    fn exact_paths_and_lists_compare_canonical_segments() {
        let p = public(json!({"exact": "/health//context", "methods": ["GET"]}));
        assert!(is_public(&p, "GET", "/health/context"));
        assert!(is_public(&p, "GET", "/health/./context/"));
        assert!(!is_public(&p, "POST", "/health/context"));
        assert!(!is_public(&p, "GET", "/health/context/x"));
        let list = public(json!({"one_of": ["/a", "/b/c"]}));
        assert!(is_public(&list, "PUT", "/b/c"));
        assert!(!is_public(&list, "PUT", "/b"));
        let folded = public(json!({"exact": "/Docs", "ignore_case": true}));
        assert!(is_public(&folded, "GET", "/docs"));
        assert!(is_public(&folded, "GET", "/DOCS"));
    }

    #[test]
    fn other_patterns_test_the_canonical_path_as_one_string() {
        let suffix = public(json!({"suffix": "/openapi.json"}));
        assert!(is_public(&suffix, "GET", "/v1/openapi.json"));
        assert!(is_public(&suffix, "GET", "/v1//x/../openapi.json"));
        assert!(!is_public(&suffix, "GET", "/v1/openapi.json/x"));
        let regex = public(json!({"safe_regex": {"regex": "/v1/status/[0-9]+"}}));
        assert!(is_public(&regex, "GET", "/v1/status/42"));
        assert!(!is_public(&regex, "GET", "/v1/status/42/x"), "anchored");
        let contains = public(json!({"contains": "/docs/", "ignore_case": true}));
        assert!(is_public(&contains, "GET", "/v1/DOCS/a"));
    }

    #[test]
    fn segment_patterns_must_be_absolute() {
        for config in [json!({"exact": "health"}), json!({"one_of": ["/a", "b"]})] {
            let parsed: PublicPathConfig = parse_json(config.to_string().as_bytes()).unwrap();
            let err = PublicPath::compile("public_paths[3]", parsed)
                .err()
                .unwrap();
            assert_eq!(err.field, "public_paths[3]", "{config}");
        }
        // A suffix needs no leading `/`.
        public(json!({"suffix": ".json"}));
    }
}

#[cfg(feature = "schema")]
mod schema {
    use std::borrow::Cow;

    use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
    use serde::ser::{Serialize, SerializeMap, Serializer};
    use serde_json::json;

    use super::PublicPathConfig;
    use crate::matcher::schema::{
        PATTERNS, exactly_one, no_ignore_case_with_regex, serialize_members, string_members,
    };

    impl JsonSchema for PublicPathConfig {
        fn schema_name() -> Cow<'static, str> {
            "PublicPath".into()
        }

        fn json_schema(_: &mut SchemaGenerator) -> Schema {
            let mut properties = string_members();
            properties.insert(
                "exact".into(),
                json!({
                    "type": ["string", "null"],
                    "description": "The canonical path is this path (compared per segment; \
                                    starts with `/`)."
                }),
            );
            properties.insert(
                "prefix".into(),
                json!({
                    "type": ["string", "null"],
                    "description": "The canonical path is this path or below it, per segment: \
                                    `/health` covers `/health/live`, not `/healthz` (Envoy's \
                                    `path_separated_prefix`; starts with `/`)."
                }),
            );
            properties.insert(
                "path_separated_prefix".into(),
                json!({"type": ["string", "null"], "description": "The same as `prefix`."}),
            );
            properties.insert(
                "one_of".into(),
                json!({
                    "type": ["array", "null"],
                    "items": {"type": "string"},
                    "description": "The canonical path is one of these paths (each compared \
                                    like `exact`)."
                }),
            );
            properties.insert(
                "methods".into(),
                json!({
                    "type": "array",
                    "items": {"type": "string"},
                    "default": [],
                    "description": "Methods this applies to (default: all)."
                }),
            );
            let mut patterns = PATTERNS.to_vec();
            patterns.push("path_separated_prefix");
            json_schema!({
                "type": "object",
                "description": "A path served without a token: a string matcher on the \
                                canonical path and, optionally, `methods`. `exact`, `prefix` \
                                and `one_of` compare whole segments; `suffix`, `contains` and \
                                `safe_regex` test the path as one string.",
                "properties": properties,
                "additionalProperties": false,
                "oneOf": exactly_one(&patterns),
                "not": no_ignore_case_with_regex()
            })
        }
    }

    impl Serialize for PublicPathConfig {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            let mut map = serializer.serialize_map(None)?;
            serialize_members(&self.path, &mut map)?;
            if !self.methods.is_empty() {
                map.serialize_entry("methods", &self.methods)?;
            }
            map.end()
        }
    }
}
