use serde_json::{Value, json};

use super::*;
use crate::config::parse_json;

fn string(config: Value) -> Result<StringMatcher, String> {
    parse_json(config.to_string().as_bytes()).map_err(|e| e.to_string())
}

fn named(config: Value) -> Result<NamedMatcher, String> {
    parse_json(config.to_string().as_bytes()).map_err(|e| e.to_string())
}

fn matches(config: Value, value: &str) -> bool {
    string(config).unwrap().matches(value)
}

#[test]
fn envoy_patterns_match_as_in_envoy() {
    assert!(matches(json!({"exact": "gold"}), "gold"));
    assert!(!matches(json!({"exact": "gold"}), "golden"));
    assert!(matches(json!({"prefix": "/v1/"}), "/v1/contexts"));
    assert!(!matches(json!({"prefix": "/v1/"}), "/v1"));
    assert!(matches(json!({"suffix": ".json"}), "a.json"));
    assert!(!matches(json!({"suffix": ".json"}), "json"));
    assert!(matches(json!({"contains": "graph"}), "/v1/graph/x"));
    assert!(!matches(json!({"contains": "graph"}), "/v1/grap/h"));
    assert!(matches(json!({"contains": ""}), ""));
    assert!(matches(json!({"one_of": ["a", "b"]}), "b"));
    assert!(!matches(json!({"one_of": []}), ""));
    // A multi-byte character never splits a comparison.
    assert!(!matches(json!({"prefix": "é"}), "e"));
    assert!(matches(json!({"suffix": "é"}), "café"));
}

#[test]
fn regexes_are_anchored_to_the_whole_value() {
    for config in [
        json!({"safe_regex": {"regex": "[0-9]+"}}),
        json!({"regex": "[0-9]+"}),
    ] {
        assert!(matches(config.clone(), "42"), "{config}");
        assert!(!matches(config.clone(), "a42"), "{config}");
        assert!(!matches(config.clone(), "42a"), "{config}");
    }
    // Alternatives are anchored as a group, not only the first and last.
    assert!(!matches(json!({"regex": "a|b"}), "ab"));
    assert!(matches(json!({"regex": "(?i-u)gold"}), "GOLD"));
}

#[test]
fn ignore_case_folds_ascii_letters() {
    assert!(matches(
        json!({"exact": "Gold", "ignore_case": true}),
        "gOLD"
    ));
    assert!(matches(
        json!({"prefix": "/V1", "ignore_case": true}),
        "/v1/x"
    ));
    assert!(matches(
        json!({"suffix": ".JSON", "ignore_case": true}),
        "a.json"
    ));
    assert!(matches(
        json!({"contains": "GRAPH", "ignore_case": true}),
        "/graph/"
    ));
    assert!(matches(json!({"one_of": ["A"], "ignore_case": true}), "a"));
    assert!(!matches(json!({"exact": "Gold"}), "gold"));
    assert!(
        !matches(json!({"exact": "É", "ignore_case": true}), "é"),
        "ASCII only, as Envoy"
    );
    assert!(matches(json!({"exact": "a", "ignore_case": false}), "a"));
}

#[test]
fn mistakes_name_the_field() {
    let err = |config: Value| string(config).unwrap_err();
    assert!(err(json!({})).starts_with("set exactly one of"));
    assert!(err(json!({"exact": "a", "prefix": "b"})).contains("exact and prefix are both set"));
    assert!(err(json!({"regex": "a", "safe_regex": {"regex": "b"}})).contains("both set"));
    assert!(err(json!({"regex": "a", "ignore_case": true})).contains("(?i-u)"));
    assert!(err(json!({"safe_regex": {"regex": "a"}, "ignore_case": true})).contains("(?i-u)"));
    assert!(err(json!({"ignore_case": true})).contains("ignore_case needs a pattern"));
    assert!(err(json!({"exakt": "a"})).starts_with("exakt: unknown field `exakt`"));
    assert!(err(json!({"regex": "(unclosed"})).starts_with("regex: regex parse error"));
    assert!(
        err(json!({"safe_regex": {"regex": "(unclosed"}}))
            .starts_with("safe_regex.regex: regex parse error")
    );
    assert!(
        err(json!({"safe_regex": {"regex": "a", "google_re2": {}}}))
            .starts_with("safe_regex.google_re2: unknown field")
    );
    let long = "a".repeat(MAX_REGEX_BYTES + 1);
    assert!(err(json!({"regex": long})).starts_with("regex: is longer than 1024 bytes"));
    assert!(err(json!({"exact": 1})).starts_with("exact: invalid type"));
    let twice = parse_json::<StringMatcher>(br#"{"exact": "a", "exact": "b"}"#).unwrap_err();
    assert!(
        twice.to_string().contains("exact and exact are both set"),
        "{twice}"
    );
    assert!(err(json!("gold")).contains("expected a string matcher"));
}

#[test]
fn named_matchers_take_envoys_header_matcher_and_the_inline_form() {
    let m = named(json!({"name": "x-tier", "string_match": {"exact": "gold"}})).unwrap();
    assert_eq!(m.name, "x-tier");
    assert!(m.matches(Some("gold")) && !m.matches(Some("silver")) && !m.matches(None));
    let m = named(json!({"name": "x-tier", "exact": "gold"})).unwrap();
    assert!(m.matches(Some("gold")) && !m.matches(None));
    let m = named(json!({"name": "x-tier", "values": ["gold", "silver"]})).unwrap();
    assert!(m.matches(Some("silver")) && !m.is_empty_list());
    assert!(
        named(json!({"name": "x", "values": []}))
            .unwrap()
            .is_empty_list()
    );
    for key in ["present_match", "present"] {
        let present = named(json!({"name": "x", key: true})).unwrap();
        assert!(present.matches(Some("")) && !present.matches(None), "{key}");
        let absent = named(json!({"name": "x", key: false})).unwrap();
        assert!(!absent.matches(Some("v")) && absent.matches(None), "{key}");
    }
    let m = named(json!({"name": "x", "prefix": "A", "ignore_case": true})).unwrap();
    assert!(m.matches(Some("abc")));
}

#[test]
fn named_matcher_mistakes_name_the_field() {
    let err = |config: Value| named(config).unwrap_err();
    assert!(err(json!({"exact": "a"})).contains("missing field `name`"));
    assert!(err(json!({"name": "x"})).contains("set exactly one of present_match"));
    assert!(
        err(json!({"name": "x", "present": true, "exact": "a"}))
            .contains("present and exact are both set")
    );
    assert!(
        err(json!({"name": "x", "present_match": true, "string_match": {"exact": "a"}}))
            .contains("present_match and string_match are both set")
    );
    assert!(
        err(json!({"name": "x", "string_match": {"exact": "a"}, "ignore_case": true}))
            .contains("set it inside string_match")
    );
    assert!(
        err(json!({"name": "x", "present": true, "ignore_case": true}))
            .contains("ignore_case does not apply")
    );
    assert!(err(json!({"name": "x", "vals": ["a"]})).starts_with("vals: unknown field `vals`"));
    assert!(
        err(json!({"name": "x", "string_match": {"regex": "("}}))
            .starts_with("string_match.regex: regex parse error")
    );
    assert!(err(json!({"name": "x", "values": ["a"], "one_of": ["b"]})).contains("both set"));
}

#[test]
fn null_members_are_absent_as_they_were() {
    let m =
        string(json!({"exact": null, "prefix": "/a", "regex": null, "ignore_case": null})).unwrap();
    assert!(m.matches("/ab") && !m.ignore_case);
    let m = named(json!({"name": "x", "present": null, "exact": "a", "one_of": null})).unwrap();
    assert!(m.matches(Some("a")));
    let m = named(json!({"name": "x", "present": true, "regex": null})).unwrap();
    assert!(m.matches(Some("")));
    assert!(
        string(json!({"exact": null}))
            .unwrap_err()
            .starts_with("set exactly one of")
    );
}

#[test]
fn every_member_list_and_message_names_every_pattern() {
    for pattern in PATTERNS {
        assert!(de::STRING_MATCHER_FIELDS.contains(&pattern), "{pattern}");
        assert!(named::NAMED_MATCHER_FIELDS.contains(&pattern), "{pattern}");
        assert!(
            crate::auth::public_path::PUBLIC_PATH_FIELDS.contains(&pattern),
            "{pattern}"
        );
        assert!(ONE_PATTERN.contains(pattern), "{pattern}");
        assert!(named::ONE_TEST.contains(pattern), "{pattern}");
    }
}
