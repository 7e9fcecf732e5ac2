//! The demo gateway's observability settings (envoy/demo.yaml): its
//! `stats_config`, and its HTTP connection manager's `access_log` and
//! `tracing`, for suites whose metric names, log fields and span tags must
//! match the demo's.

use serde_json::Value;

use crate::{repo_root, yaml};

/// envoy/demo.yaml, as JSON.
pub fn demo() -> Value {
    let text = std::fs::read_to_string(repo_root().join("envoy/demo.yaml")).unwrap();
    yaml::documents(&text).unwrap().remove(0)
}

pub fn demo_stats_config() -> Value {
    demo()["stats_config"].clone()
}

/// The demo's `stats_config` for a gateway on the current engine: as
/// written for wasm, with its tags moved to the native names
/// ([`on_native`]) for native.
pub fn gateway_stats_config() -> Value {
    match crate::FilterEngine::current() {
        crate::FilterEngine::Wasm => demo_stats_config(),
        crate::FilterEngine::Native => on_native(&demo())["stats_config"].clone(),
    }
}

/// A field of the demo listener's HTTP connection manager.
pub fn demo_hcm_field(name: &str) -> Value {
    demo()["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        [name]
        .clone()
}

/// An Envoy bootstrap (such as envoy/demo.yaml) moved to the native
/// engine: every HTTP filter that runs `ctxgate.wasm` becomes a
/// `DynamicModuleFilter` loading `libctxgate.so` with the same name and
/// configuration; the audit singleton service goes (the filter whose
/// `audit` section names a collector ships the trail on the native
/// engine); stats tags written for `wasmcustom.` metrics match the native
/// namespace instead. Everything else is kept as it is.
pub fn on_native(bootstrap: &Value) -> Value {
    let mut out = bootstrap.clone();
    if let Some(extensions) = out
        .get_mut("bootstrap_extensions")
        .and_then(Value::as_array_mut)
    {
        extensions.retain(|e| !runs_ctxgate_wasm(&e["typed_config"]["config"]));
    }
    if let Some(tags) = out
        .pointer_mut("/stats_config/stats_tags")
        .and_then(Value::as_array_mut)
    {
        let native = format!(
            "^{}\\.",
            crate::engine::NATIVE_METRICS_NAMESPACE.replace('.', "\\.")
        );
        for tag in tags {
            if let Some(regex) = tag.get_mut("regex")
                && let Some(text) = regex.as_str()
            {
                *regex = Value::String(text.replacen("^wasmcustom\\.", &native, 1));
            }
        }
    }
    replace_filters(&mut out);
    out
}

/// Whether a wasm plugin configuration (`Wasm.config`) runs ctxgate.wasm.
fn runs_ctxgate_wasm(config: &Value) -> bool {
    config
        .pointer("/vm_config/code/local/filename")
        .and_then(Value::as_str)
        .is_some_and(|file| file.ends_with("ctxgate.wasm"))
}

fn replace_filters(value: &mut Value) {
    match value {
        Value::Object(fields) => {
            if let Some(Value::Array(filters)) = fields.get_mut("http_filters") {
                for filter in filters.iter_mut() {
                    let config = &filter["typed_config"]["config"];
                    if runs_ctxgate_wasm(config) {
                        let native = serde_json::json!({
                            "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
                            "dynamic_module_config": {
                                "name": "ctxgate",
                                "metrics_namespace": crate::engine::NATIVE_METRICS_NAMESPACE,
                            },
                            "filter_name": config["name"],
                            "filter_config": config["configuration"],
                        });
                        filter["typed_config"] = native;
                    }
                }
            }
            fields.values_mut().for_each(replace_filters);
        }
        Value::Array(items) => items.iter_mut().for_each(replace_filters),
        _ => {}
    }
}
