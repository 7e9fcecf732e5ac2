//! The demo gateway's configuration (`envoy/demo.yaml`), read so that the
//! tests run the demo's own settings rather than a copy that could drift,
//! and checked so that the demo cannot silently drop them.
//!
//! `CTXGATE_DEMO_CONFIG` points the tests at another file (e.g. an older
//! revision's, to see the tests fail against it).

use std::path::PathBuf;

use serde_json::Value;

/// The HTTP connection manager settings of the demo listener that decide
/// what reaches the filters: path normalization, whose address counts as
/// the client's, and what happens to header names with underscores.
pub const LISTENER_SETTINGS: [&str; 6] = [
    "normalize_path",
    "merge_slashes",
    "path_with_escaped_slashes_action",
    "use_remote_address",
    "xff_num_trusted_hops",
    "common_http_protocol_options",
];

/// `$CTXGATE_DEMO_CONFIG`, else `<repo>/envoy/demo.yaml`.
pub fn demo_file() -> PathBuf {
    match std::env::var_os("CTXGATE_DEMO_CONFIG") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => ctxgate_e2e::repo_root().join("envoy/demo.yaml"),
    }
}

/// The demo bootstrap as JSON.
pub fn bootstrap() -> Value {
    let path = demo_file();
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut documents =
        crate::yaml::documents(&text).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()));
    assert_eq!(documents.len(), 1, "{} is one document", path.display());
    documents.remove(0)
}

/// The HTTP connection manager of the demo's one listener.
pub fn hcm() -> Value {
    let bootstrap = bootstrap();
    let listeners = bootstrap["static_resources"]["listeners"]
        .as_array()
        .expect("demo listeners");
    assert_eq!(listeners.len(), 1, "the demo has one listener");
    let filter = &listeners[0]["filter_chains"][0]["filters"][0];
    assert_eq!(
        filter["name"],
        "envoy.filters.network.http_connection_manager"
    );
    filter["typed_config"].clone()
}

/// The [`LISTENER_SETTINGS`] the demo sets, with their values.
pub fn listener_settings() -> Vec<(&'static str, Value)> {
    let hcm = hcm();
    LISTENER_SETTINGS
        .iter()
        .filter_map(|name| Some((*name, hcm.get(*name)?.clone())))
        .collect()
}

/// The CORS policy of the demo's virtual host, if any.
pub fn cors_policy(hcm: &Value) -> Option<Value> {
    let policy = &hcm["route_config"]["virtual_hosts"][0]["typed_per_filter_config"]["envoy.filters.http.cors"];
    (!policy.is_null()).then(|| policy.clone())
}

/// The names of the demo's HTTP filters, in order.
pub fn filter_names(hcm: &Value) -> Vec<String> {
    hcm["http_filters"]
        .as_array()
        .expect("demo http_filters")
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_owned())
        .collect()
}

/// The auth stage's configuration in the demo.
pub fn auth_config(hcm: &Value) -> Value {
    let filter = hcm["http_filters"]
        .as_array()
        .expect("demo http_filters")
        .iter()
        .find(|f| f["typed_config"]["config"]["name"] == "ctxgate")
        .expect("the demo runs ctxgate");
    let text = filter["typed_config"]["config"]["configuration"]["value"]
        .as_str()
        .expect("the plugin configuration is a string");
    let config: Value = serde_json::from_str(text).expect("the plugin configuration is JSON");
    config["auth"].clone()
}

#[test]
fn the_demo_configuration_keeps_its_hardening_settings() {
    let path = demo_file();
    let hcm = hcm();
    let setting = |name: &str| {
        hcm.get(name)
            .cloned()
            .unwrap_or_else(|| panic!("{}: the listener lost `{name}`", path.display()))
    };

    // Paths normalized by Envoy before any filter, %2F left for the
    // filters to decide on.
    assert_eq!(setting("normalize_path"), true);
    assert_eq!(setting("merge_slashes"), true);
    assert_eq!(
        setting("path_with_escaped_slashes_action"),
        "KEEP_UNCHANGED"
    );
    // The client address is the peer's, not what the client claims.
    assert_eq!(setting("use_remote_address"), true);
    assert_eq!(setting("xff_num_trusted_hops"), 0);
    // `x_context_tenant` never reaches an upstream that maps `_` to `-`.
    assert_eq!(
        setting("common_http_protocol_options")["headers_with_underscores_action"],
        "REJECT_REQUEST"
    );
    // The access log shows the tenant header: only the gateway's value
    // may ever appear there.
    let log_fields = &hcm["access_log"][0]["typed_config"]["log_format"]["json_format"];
    assert_eq!(
        log_fields["tenant"], "%REQ(X-CONTEXT-TENANT)%",
        "{log_fields}"
    );

    // Envoy's CORS filter answers preflights before the auth filter, and
    // forwards none, for any origin.
    let filters = filter_names(&hcm);
    let position = |name: &str| filters.iter().position(|f| f == name);
    let (cors, auth) = (position("envoy.filters.http.cors"), position("ctxgate"));
    assert!(
        cors.is_some() && cors < auth,
        "the CORS filter must run before ctxgate: {filters:?}"
    );
    let policy = cors_policy(&hcm)
        .unwrap_or_else(|| panic!("{}: the virtual host has no CORS policy", path.display()));
    assert_eq!(
        policy["@type"],
        "type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy"
    );
    assert_eq!(policy["forward_not_matching_preflights"], false);
    assert!(
        policy["allow_origin_string_match"]
            .as_array()
            .is_some_and(|origins| !origins.is_empty()),
        "{policy}"
    );

    // The auth filter: public paths for reading only, and nothing of the
    // request hardening turned off.
    let auth = auth_config(&hcm);
    let public = auth["public_paths"].as_array().expect("public_paths");
    let well_known = public
        .iter()
        .find(|p| p["prefix"] == "/.well-known")
        .expect("/.well-known is public");
    assert_eq!(well_known["methods"], serde_json::json!(["GET", "HEAD"]));
    for entry in public {
        assert!(
            entry["methods"].as_array().is_some_and(|m| !m.is_empty()),
            "every public path names its methods: {entry}"
        );
    }
    assert_ne!(auth["path_parameters"], "allow");
    for field in ["method_override_headers", "method_override_params"] {
        let value = &auth[field];
        assert!(
            value.is_null() || value.as_array().is_some_and(|names| !names.is_empty()),
            "{field} may be changed, not emptied: {value}"
        );
    }
}
