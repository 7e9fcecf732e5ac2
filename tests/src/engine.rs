//! Which engine runs the pipeline under test: `dist/ctxgate.wasm` on
//! Envoy's V8 runtime, or `dist/libctxgate.so` as an Envoy dynamic module.
//!
//! Every suite that starts Envoy with the gateway runs on either engine,
//! chosen per test process by `CTXGATE_ENGINE` (`wasm`, the default, or
//! `native`): `make test-e2e` runs them once per engine. The configuration
//! a test writes is the same for both; only how Envoy loads it differs
//! ([`crate::WasmFilter`] renders one or the other), and the prefix Envoy
//! gives the metrics the pipeline defines.

use std::sync::LazyLock;

/// An engine the pipeline runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterEngine {
    /// proxy-wasm on V8 (`dist/ctxgate.wasm`).
    Wasm,
    /// An Envoy dynamic module (`dist/libctxgate.so`).
    Native,
}

static CURRENT: LazyLock<FilterEngine> =
    LazyLock::new(|| match std::env::var("CTXGATE_ENGINE").as_deref() {
        Err(_) | Ok("") | Ok("wasm") => FilterEngine::Wasm,
        Ok("native") => FilterEngine::Native,
        Ok(other) => panic!("CTXGATE_ENGINE={other}: expected `wasm` or `native`"),
    });

/// The namespace the native engine's metrics are defined in
/// (`DynamicModuleConfig.metrics_namespace`).
pub const NATIVE_METRICS_NAMESPACE: &str = "ctxgate";

impl FilterEngine {
    /// The engine this test process runs (`CTXGATE_ENGINE`).
    pub fn current() -> FilterEngine {
        *CURRENT
    }

    /// What Envoy puts before the name of a metric the pipeline defines,
    /// in admin `/stats`: `wasmcustom.` for wasm modules, the configured
    /// namespace and a dot for dynamic modules.
    pub fn metric_prefix(self) -> &'static str {
        match self {
            FilterEngine::Wasm => "wasmcustom.",
            FilterEngine::Native => "ctxgate.",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            FilterEngine::Wasm => "wasm",
            FilterEngine::Native => "native",
        }
    }
}

impl FilterEngine {
    /// What Envoy puts before the name of a metric the pipeline defines
    /// in admin `/stats/prometheus` (after dots became underscores):
    /// nothing for wasm modules (`ctxgate_auth_allowed`), `envoy_` and the
    /// namespace for dynamic modules (`envoy_ctxgate_ctxgate_auth_allowed`).
    pub fn prometheus_prefix(self) -> &'static str {
        match self {
            FilterEngine::Wasm => "",
            FilterEngine::Native => "envoy_ctxgate_",
        }
    }
}

/// [`FilterEngine::prometheus_prefix`] of the current engine.
pub fn prometheus_prefix() -> &'static str {
    FilterEngine::current().prometheus_prefix()
}

/// [`FilterEngine::metric_prefix`] of the current engine.
pub fn metric_prefix() -> &'static str {
    FilterEngine::current().metric_prefix()
}

/// How the lines filter `name` logs start in Envoy's log, on the current
/// engine (the filter's name also its root id and vm id, as
/// [`crate::WasmFilter::ctxgate`] sets them).
pub fn filter_log_prefix(name: &str) -> String {
    match FilterEngine::current() {
        FilterEngine::Wasm => format!("wasm log {name} {name}: "),
        FilterEngine::Native => format!("] {name}: "),
    }
}

/// What Envoy logs when filter `name` refuses its configuration at load.
pub fn filter_rejected(name: &str) -> String {
    match FilterEngine::current() {
        FilterEngine::Wasm => format!("Unable to create Wasm plugin {name}"),
        FilterEngine::Native => "Failed to initialize dynamic module".to_owned(),
    }
}

/// For the few tests that exercise something only the wasm engine has
/// (a neighbour plugin writing into the same VM's shared data): on the
/// native engine, says why the test does not apply and returns `true`
/// (the test returns at once).
pub fn skip_on_native(why: &str) -> bool {
    let skip = FilterEngine::current() == FilterEngine::Native;
    if skip {
        eprintln!("skipped on the native engine: {why}");
    }
    skip
}

/// Prometheus text with every metric name rewritten as the relabelling
/// rule of `observability/native-relabel.yaml` rewrites it (`__name__`
/// matched by the anchored regex, replaced by the replacement).
pub fn native_relabel(text: &str) -> String {
    let file = crate::repo_root().join("observability/native-relabel.yaml");
    let rules = crate::yaml::documents(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let rule = &rules[0][0];
    assert_eq!(rule["source_labels"], serde_json::json!(["__name__"]));
    assert_eq!(rule["target_label"], "__name__");
    let regex = regex::Regex::new(&format!("^(?:{})$", rule["regex"].as_str().unwrap())).unwrap();
    let replacement = rule["replacement"].as_str().unwrap();
    let rename = |name: &str| -> String {
        if regex.is_match(name) {
            regex.replace(name, replacement).into_owned()
        } else {
            name.to_owned()
        }
    };
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let renamed = if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            format!("# TYPE {} {kind}", rename(name))
        } else if line.starts_with('#') {
            line.to_owned()
        } else {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            format!("{}{}", rename(&line[..end]), &line[end..])
        };
        out.push_str(&renamed);
        out.push('\n');
    }
    out
}
