//! A configuration mistake stops Envoy at startup with a log line that
//! names the offending field, instead of a gateway that half works.

use std::time::Duration;

use ctxgate_e2e::{Envoy, EnvoyConfig, Route, WasmFilter, filter_rejected};
use serde_json::{Value, json};

use crate::support::*;

#[test]
fn it_refuses_to_start_with_an_invalid_configuration_and_names_the_field() {
    let keys = TestKeys::generate();
    let valid = inline_config(&keys);
    // The valid configuration with the member at `pointer` set to `value`.
    let with = |pointer: &str, value: Value| {
        let mut config = valid.clone();
        let (parent, member) = pointer.rsplit_once('/').unwrap();
        match config.pointer_mut(parent).unwrap() {
            Value::Object(object) => {
                object.insert(member.to_owned(), value);
            }
            Value::Array(array) => array[member.parse::<usize>().unwrap()] = value,
            other => panic!("cannot set {pointer} in {other}"),
        }
        config
    };
    let mut unknown_field = valid.clone();
    unknown_field["providers"][0]["isuer"] = json!(ISSUER);
    // A weak secret next to good keys: never silently skipped in a config.
    let mut weak_secret = keys.jwks();
    weak_secret["keys"]
        .as_array_mut()
        .unwrap()
        .push(json!({"kty": "oct", "kid": "weak", "alg": "HS256", "k": b64(&[7; 16])}));
    let weak_index = weak_secret["keys"].as_array().unwrap().len() - 1;

    // Each rejected start costs about a second (V8 compiles the module
    // first), so these are the mistakes worth an Envoy; the validation
    // rules themselves are unit-tested in filters/core.
    let cases: Vec<(&str, Value, String)> = vec![
        (
            "unknown field",
            unknown_field,
            "invalid configuration: auth.providers[0].isuer: unknown field `isuer`, expected one of"
                .into(),
        ),
        (
            "weak HS256 secret",
            with("/providers/0/jwks/inline", weak_secret),
            format!(
                "invalid configuration: auth.providers[0].jwks.inline: keys[{weak_index}] (kid weak): \
                 HS256 secret is 16 bytes, at least 32 are required"
            ),
        ),
        (
            "bad operation template",
            with("/operations/2/path", json!("/v1/{context}/x")),
            "invalid configuration: auth.operations[2]: path: {context} must be the last segment".into(),
        ),
        (
            "unsupported algorithm",
            with("/providers/0/algorithms", json!(["ES256", "none"])),
            "invalid configuration: auth.providers[0].algorithms: unsupported algorithm 'none'".into(),
        ),
    ];

    let logs: Vec<String> = cases
        .iter()
        .map(|(_, config, _)| {
            Envoy::start_expect_failure(
                &EnvoyConfig::new()
                    .filter(WasmFilter::single("auth", config.clone()))
                    .route(Route::prefix("/").direct(200, "unreachable")),
            )
        })
        .collect();
    let mut wrong = Vec::new();
    for ((what, _, expected), log) in cases.iter().zip(&logs) {
        assert!(
            log.contains(&filter_rejected("ctxgate_auth")),
            "{what}:\n{log}"
        );
        let line = log
            .lines()
            .find(|line| line.contains("invalid configuration"));
        if !line.is_some_and(|line| line.contains(expected.as_str())) {
            wrong.push(format!("{what}: expected {expected:?} in\n  {line:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // The valid configuration these were derived from starts.
    let envoy = Envoy::start(
        &EnvoyConfig::new()
            .filter(WasmFilter::single("auth", valid))
            .route(Route::prefix("/").direct(200, "ok")),
    );
    assert!(envoy.wait_for_log("auth: 1 provider(s): demo", Duration::from_secs(5)));
    assert_vm_healthy(&envoy);
}
