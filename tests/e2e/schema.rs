//! The configuration's JSON Schema (`docs/ctxgate.schema.json`) and the
//! README's configuration reference, without Envoy:
//!
//! * both are what `make schema` would write today (so a changed
//!   configuration type or doc comment cannot ship with stale docs);
//! * every configuration the repository ships (the `ctxgate` plugin of
//!   `envoy/demo.yaml`, each WasmPlugin of `istio/`) is valid against the
//!   schema and accepted by the parser;
//! * the schema and the parser agree on examples of what each accepts
//!   (durations, string matchers, jwt_authn spellings, older spellings)
//!   and of mistakes (unknown fields, wrong types, two patterns, ...);
//! * every field the schema describes has a description.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[allow(dead_code)]
#[path = "istio/manifests.rs"]
mod manifests;
use ctxgate_e2e::yaml;

use std::sync::LazyLock;

use ctxgate_core::auth::Auth;
use ctxgate_core::breaker::Breakers;
use ctxgate_core::config::parse_json;
use ctxgate_core::pipeline::config::PipelineConfig;
use ctxgate_core::ratelimit::RateLimiter;
use ctxgate_core::residency::Residency;
use ctxgate_core::shared::Secret;
use ctxgate_core::tagging::Tagger;
use ctxgate_e2e::reference::{self, SECTIONS};
use jsonschema::Validator;
use serde_json::{Value, json};

static SCHEMA: LazyLock<Value> = LazyLock::new(reference::schema);

static VALIDATOR: LazyLock<Validator> =
    LazyLock::new(|| jsonschema::validator_for(&SCHEMA).expect("the schema compiles"));

/// Why the schema refuses `config`, or nothing.
fn schema_errors(config: &Value) -> Vec<String> {
    VALIDATOR
        .iter_errors(config)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

/// What the plugin does with a configuration at start: parse it, check it,
/// and compile every section it has.
fn parse(config: &Value) -> Result<(), String> {
    let text = serde_json::to_vec(config).unwrap();
    let parsed: PipelineConfig = parse_json(&text).map_err(|e| e.to_string())?;
    parsed.validate().map_err(|e| e.to_string())?;
    let section = |name: &str| serde_json::to_vec(&config[name]).unwrap();
    let secret = || Secret::from_bytes([0; 16]);
    let compiled: [(&str, Result<(), String>); 5] = [
        (
            "auth",
            match parsed.auth {
                Some(_) => Auth::from_json(&section("auth"), "schema", secret())
                    .map(drop)
                    .map_err(|e| e.to_string()),
                None => Ok(()),
            },
        ),
        (
            "ratelimit",
            match parsed.ratelimit {
                Some(_) => RateLimiter::from_json(&section("ratelimit"), "schema", secret())
                    .map(drop)
                    .map_err(|e| e.to_string()),
                None => Ok(()),
            },
        ),
        (
            "tagging",
            match parsed.tagging {
                Some(_) => Tagger::from_json(&section("tagging"))
                    .map(drop)
                    .map_err(|e| e.to_string()),
                None => Ok(()),
            },
        ),
        (
            "residency",
            match parsed.residency {
                Some(c) => Residency::new(c).map(drop).map_err(|e| e.to_string()),
                None => Ok(()),
            },
        ),
        (
            "breaker",
            match parsed.breaker {
                Some(_) => Breakers::from_json(&section("breaker"), "schema")
                    .map(drop)
                    .map_err(|e| e.to_string()),
                None => Ok(()),
            },
        ),
    ];
    for (name, result) in compiled {
        result.map_err(|e| format!("{name}.{e}"))?;
    }
    Ok(())
}

fn assert_accepted(what: &str, config: &Value) {
    let errors = schema_errors(config);
    assert!(
        errors.is_empty(),
        "{what}: rejected by the schema:\n  {}\n{config:#}",
        errors.join("\n  ")
    );
    if let Err(e) = parse(config) {
        panic!("{what}: valid against the schema, but the parser refuses it: {e}\n{config:#}");
    }
}

/// A demo-like configuration to vary: one provider, one operation.
fn base() -> Value {
    json!({
        "auth": {
            "providers": [{
                "name": "idp",
                "issuer": "https://idp.example.com",
                "jwks": {"remote": {"cluster": "idp"}}
            }],
            "operations": [
                {"name": "read", "methods": ["GET"], "path": "/v1/contexts/{context}", "action": "read"}
            ]
        },
        "tagging": {"rules": []},
        "breaker": {"breakers": [{"name": "upstream"}]}
    })
}

/// `base()` with `value` at the JSON pointer `at` (objects on the way are
/// created).
fn with(at: &str, value: Value) -> Value {
    let mut config = base();
    let mut target = &mut config;
    for part in at.trim_start_matches('/').split('/') {
        target = match target {
            Value::Array(items) => &mut items[part.parse::<usize>().unwrap()],
            other => {
                if other.is_null() {
                    *other = json!({});
                }
                other
                    .as_object_mut()
                    .unwrap()
                    .entry(part)
                    .or_insert(Value::Null)
            }
        };
    }
    *target = value;
    config
}

// ---------------------------------------------------------------------------
// The generated files are up to date.

#[test]
fn the_committed_schema_is_what_make_schema_writes() {
    let path = reference::schema_path(&ctxgate_e2e::repo_root());
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == reference::schema_text(&SCHEMA),
        "{} is not what the configuration types give: run `make schema` and commit the result",
        path.display()
    );
}

#[test]
fn the_readme_reference_is_what_make_schema_writes() {
    let path = ctxgate_e2e::repo_root().join("README.md");
    let readme = std::fs::read_to_string(&path).unwrap();
    let expected = reference::splice(&readme, &reference::reference(&SCHEMA))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        readme == expected,
        "the configuration reference in README.md is not what the configuration types give: \
         run `make schema` and commit the result"
    );
}

#[test]
fn the_schema_is_a_valid_draft_2020_12_schema() {
    jsonschema::meta::validate(&SCHEMA).unwrap();
    assert_eq!(
        SCHEMA["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    let sections: Vec<&str> = SCHEMA["properties"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    // The sections, and the one top-level setting.
    let mut expected = SECTIONS.to_vec();
    expected.push("filter_state");
    expected.sort_unstable();
    assert_eq!(sections, expected);
}

/// Every property of every object has a description: the doc comments are
/// the reference.
#[test]
fn every_field_is_described() {
    fn walk(path: &str, schema: &Value, missing: &mut Vec<String>) {
        match schema {
            Value::Object(members) => {
                if let Some(Value::Object(properties)) = members.get("properties") {
                    for (name, property) in properties {
                        let described = property["description"]
                            .as_str()
                            .is_some_and(|d| !d.trim().is_empty());
                        // A tag's constant (`"action": "reject"`) names the
                        // variant; `{"not": {"type": "null"}}` only
                        // constrains a field described elsewhere.
                        let constraint = property
                            .as_object()
                            .is_some_and(|p| p.keys().all(|k| k == "const" || k == "not"));
                        if !described && !constraint {
                            missing.push(format!("{path}.{name}"));
                        }
                    }
                }
                for (key, value) in members {
                    if key != "default" {
                        walk(&format!("{path}/{key}"), value, missing);
                    }
                }
            }
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk(&format!("{path}/{i}"), item, missing);
                }
            }
            _ => {}
        }
    }
    let mut missing = Vec::new();
    walk("#", &SCHEMA, &mut missing);
    // Variants of an externally tagged enum carry the description on the
    // variant, not on its one member.
    missing.retain(|path| !path.contains("/oneOf/"));
    assert!(
        missing.is_empty(),
        "fields without a doc comment:\n  {}",
        missing.join("\n  ")
    );
    for (name, def) in SCHEMA["$defs"].as_object().unwrap() {
        assert!(
            def["description"].is_string(),
            "type {name} has no doc comment"
        );
    }
}

// ---------------------------------------------------------------------------
// The configurations the repository ships.

/// The `ctxgate` plugin's configuration in `envoy/demo.yaml`.
fn demo_config() -> Value {
    let path = ctxgate_e2e::repo_root().join("envoy/demo.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let bootstrap = yaml::documents(&text).unwrap().remove(0);
    let mut found = Vec::new();
    for listener in bootstrap["static_resources"]["listeners"]
        .as_array()
        .unwrap()
    {
        for chain in listener["filter_chains"].as_array().unwrap() {
            for filter in chain["filters"].as_array().unwrap() {
                for http in filter["typed_config"]["http_filters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    let config = &http["typed_config"]["config"];
                    if config["name"] == "ctxgate" {
                        let text = config["configuration"]["value"].as_str().unwrap();
                        found.push(serde_json::from_str::<Value>(text).unwrap());
                    }
                }
            }
        }
    }
    assert_eq!(found.len(), 1, "envoy/demo.yaml runs one ctxgate plugin");
    found.remove(0)
}

#[test]
fn the_demo_configuration_is_valid() {
    let config = demo_config();
    for section in ["auth", "ratelimit", "tagging", "breaker"] {
        assert!(config.get(section).is_some(), "the demo has no {section}");
    }
    assert_accepted("envoy/demo.yaml", &config);
}

#[test]
fn every_istio_plugin_configuration_is_valid() {
    let objects = manifests::load(&manifests::repo_root().join("istio")).unwrap();
    let plugins: Vec<_> = objects
        .iter()
        .filter(|o| o.kind() == "WasmPlugin")
        .collect();
    assert!(!plugins.is_empty(), "istio/ has no WasmPlugin");
    for plugin in plugins {
        let config = manifests::plugin_config_json(&plugin.spec()["pluginConfig"]);
        let has_section = config
            .as_object()
            .is_some_and(|c| c.keys().any(|k| SECTIONS.contains(&k.as_str())));
        // One plugin running the pipeline has sections; a plugin per stage
        // (`ctxgate-auth`, ...) has the section's content.
        let config = if has_section {
            config
        } else {
            let stage = plugin
                .name()
                .rsplit('-')
                .next()
                .filter(|s| SECTIONS.contains(s))
                .unwrap_or_else(|| panic!("{plugin}: which stage is this?"));
            json!({ stage: config })
        };
        assert_accepted(&plugin.to_string(), &config);
    }
}

// ---------------------------------------------------------------------------
// The schema accepts what the parser accepts...

#[test]
fn the_new_spellings_are_valid() {
    let accepted = [
        (
            "durations as strings",
            with(
                "/ratelimit",
                json!({
                    "tiers": {"standard": [{"name": "m", "limit": 10, "window_seconds": "1m"}],
                              "anonymous": [{"name": "h", "limit": 10, "window_seconds": "1h"}]},
                    "adaptive": {"latency_threshold_ms": "1.5s", "publish_interval_ms": "250ms"},
                    "global": {"cluster": "rls", "timeout_ms": "20ms", "sync_interval_ms": "0.2s",
                               "report_retry_seconds": "5m"}
                }),
            ),
        ),
        (
            "durations in auth",
            with(
                "/auth/providers/0",
                json!({
                    "name": "idp", "issuer": "i", "clock_skew_seconds": "30s",
                    "max_lifetime": "24h",
                    "jwks": {"remote": {"cluster": "idp", "timeout_ms": "5s",
                             "refresh_interval_seconds": "5m", "retry_interval_seconds": "2s",
                             "min_refresh_interval_seconds": "30s"}}
                }),
            ),
        ),
        ("durations in the breaker and metrics", {
            let mut c = with(
                "/breaker/breakers/0",
                json!({"name": "b", "request_timeout_ms": "10s", "window_seconds": "10s",
                           "reset_timeout_ms": "0.5m"}),
            );
            c["metrics"] = json!({"flush_interval_ms": "1s"});
            c["auth"]["cache"] = json!({"failure_ttl_seconds": "0s", "max_ttl_seconds": "1h"});
            c
        }),
        ("jwt_authn's token sources and forward", {
            let mut c = base();
            c["auth"]["from_headers"] =
                json!([{"name": "authorization", "value_prefix": "Bearer "}, {"name": "x-jwt"}]);
            c["auth"]["from_params"] = json!(["access_token"]);
            c["auth"]["from_cookies"] = json!(["session"]);
            c["auth"]["forward"] = json!(true);
            c
        }),
        ("ctxgate's older token sources", {
            let mut c = base();
            c["auth"]["token_sources"] =
                json!([{"header": "authorization", "prefix": "Bearer "}, {"query": "t"}]);
            c["auth"]["forward_token"] = json!(true);
            c
        }),
        (
            "public paths as string matchers",
            with(
                "/auth/public_paths",
                json!([
                    {"exact": "/health/context", "methods": ["GET", "HEAD"]},
                    {"prefix": "/.well-known"},
                    {"path_separated_prefix": "/public", "ignore_case": true},
                    {"suffix": "/openapi.json"},
                    {"contains": "/docs/"},
                    {"safe_regex": {"regex": "/v1/status/[0-9]+"}},
                    {"regex": "/v2/status"},
                    {"one_of": ["/a", "/b"]}
                ]),
            ),
        ),
        (
            "tagging conditions as Envoy matchers",
            with(
                "/tagging/rules",
                json!([
                    {"when": {"path": {"safe_regex": {"regex": "/v1/reports/[0-9]+"}}}, "set": {"priority": "high"}},
                    {"when": {"path": {"regex": "/v1/reports/[0-9]+"}}, "set": {"priority": "high"}},
                    {"when": {"path": {"suffix": ".json", "ignore_case": true}}, "set": {"type": "json"}},
                    {"when": {"header": {"name": "x-client-class", "string_match": {"prefix": "inter", "ignore_case": true}}}, "set": {"priority": "high"}},
                    {"when": {"header": {"name": "x-client-class", "one_of": ["interactive", "realtime"]}}, "set": {"priority": "high"}},
                    {"when": {"header": {"name": "x-debug", "present_match": true}}, "set": {"type": "debug"}},
                    {"when": {"header": {"name": "x-debug", "present": false}}, "set": {"type": "x"}},
                    {"when": {"claim": {"name": "tier", "contains": "prem"}}, "set": {"priority": "high"}},
                    {"when": {"claim": {"name": "tier", "string_match": {"exact": "gold"}}}, "set": {"priority": "high"}}
                ]),
            ),
        ),
        ("null members, read as absent as before", {
            let mut c = with(
                "/tagging/rules",
                json!([
                    {"when": {"path": {"exact": null, "prefix": "/v1", "ignore_case": null}}, "set": {"type": "x"}},
                    {"when": {"header": {"name": "x-a", "present": null, "regex": "a|b", "ignore_case": false}}, "set": {"type": "x"}},
                    {"when": {"path": {"regex": null, "prefix": "/v1", "ignore_case": true}}, "set": {"type": "x"}}
                ]),
            );
            c["auth"]["public_paths"] = json!([{"exact": "/a", "prefix": null}]);
            c
        }),
        (
            "breaker selectors as Envoy header matchers",
            with(
                "/breaker/breakers",
                json!([
                    {"name": "a", "select": {"header": {"name": "x-context-type", "values": ["large-context"]}}},
                    {"name": "b", "select": {"header": {"name": "x-context-type", "string_match": {"exact": "compute"}}}},
                    {"name": "c", "select": {"any_header": [
                        {"name": "x-context-priority", "exact": "high"},
                        {"name": "x-context-tenant", "safe_regex": {"regex": "globex|initech"}}
                    ]}}
                ]),
            ),
        ),
    ];
    for (what, config) in accepted {
        assert_accepted(what, &config);
    }
}

// ---------------------------------------------------------------------------
// ...and refuses what the parser refuses.

#[test]
fn mistakes_are_refused_by_both() {
    let refused = [
        ("an unknown section", {
            let mut c = base();
            c["authz"] = json!({});
            c
        }),
        (
            "an unknown field",
            with("/auth/providers/0/isuer", json!("x")),
        ),
        ("a wrong type", with("/auth/max_token_bytes", json!("big"))),
        (
            "a wrong type in a list",
            with("/auth/from_params", json!([1])),
        ),
        (
            "an unknown enum value",
            with("/auth/unmatched_requests", json!("allow")),
        ),
        (
            "a negative duration",
            with("/auth/cache/max_ttl_seconds", json!(-1)),
        ),
        (
            "a duration without a unit",
            with("/auth/cache/max_ttl_seconds", json!("60")),
        ),
        (
            "a duration with an unknown unit",
            with("/metrics/flush_interval_ms", json!("1d")),
        ),
        (
            "a fractional duration",
            with("/metrics/flush_interval_ms", json!(1.5)),
        ),
        (
            "a missing required field",
            with("/breaker/breakers/0", json!({"window_seconds": 10})),
        ),
        (
            "two patterns in a string matcher",
            with(
                "/tagging/rules",
                json!([{"when": {"path": {"exact": "/a", "prefix": "/b"}}, "set": {"type": "x"}}]),
            ),
        ),
        (
            "no pattern in a string matcher",
            with(
                "/tagging/rules",
                json!([{"when": {"path": {"ignore_case": true}}, "set": {"type": "x"}}]),
            ),
        ),
        (
            "ignore_case with a regex",
            with(
                "/tagging/rules",
                json!([{"when": {"path": {"regex": "/a", "ignore_case": true}}, "set": {"type": "x"}}]),
            ),
        ),
        (
            "an unknown member of a regex matcher",
            with(
                "/tagging/rules",
                json!([{"when": {"path": {"safe_regex": {"regex": "/a", "google_re3": {}}}}, "set": {"type": "x"}}]),
            ),
        ),
        (
            "present and a value match",
            with(
                "/tagging/rules",
                json!([{"when": {"header": {"name": "x-a", "present": true, "exact": "v"}}, "set": {"type": "x"}}]),
            ),
        ),
        (
            "a header matcher without a name",
            with(
                "/breaker/breakers/0/select",
                json!({"header": {"values": ["a"]}}),
            ),
        ),
        (
            "only null patterns",
            with(
                "/tagging/rules",
                json!([{"when": {"path": {"exact": null}}, "set": {"type": "x"}}]),
            ),
        ),
        (
            "ignore_case with present",
            with(
                "/tagging/rules",
                json!([{"when": {"header": {"name": "x-a", "present_match": true, "ignore_case": false}}, "set": {"type": "x"}}]),
            ),
        ),
        (
            "a public path with two patterns",
            with(
                "/auth/public_paths",
                json!([{"exact": "/a", "prefix": "/b"}]),
            ),
        ),
        (
            "a public path with a misspelt member",
            with("/auth/public_paths", json!([{"prefx": "/a"}])),
        ),
        (
            "a jwt_authn header without a name",
            with("/auth/from_headers", json!([{"value_prefix": "Bearer "}])),
        ),
        ("both spellings of forward", {
            let mut c = base();
            c["auth"]["forward"] = json!(true);
            c["auth"]["forward_token"] = json!(true);
            c
        }),
        (
            "an unknown open action",
            with("/breaker/breakers/0/on_open", json!({"action": "retry"})),
        ),
        (
            "an unknown condition",
            with(
                "/tagging/rules",
                json!([{"when": {"colour": "red"}, "set": {"type": "x"}}]),
            ),
        ),
    ];
    let mut wrong = Vec::new();
    for (what, config) in refused {
        let schema = schema_errors(&config);
        let parser = parse(&config);
        if schema.is_empty() {
            wrong.push(format!("{what}: the schema accepts it\n{config:#}"));
        }
        if parser.is_ok() {
            wrong.push(format!("{what}: the parser accepts it\n{config:#}"));
        }
        eprintln!("{what}: parser: {}", parser.err().unwrap_or_default());
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
}
