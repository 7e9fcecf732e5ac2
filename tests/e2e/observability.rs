//! The alert rules in `observability/alerts.yaml` only name metrics a real
//! gateway exports: start Envoy with the four filters and the demo's
//! `stats_tags`, scrape `/stats/prometheus`, and look every metric (and
//! every label value an alert matches on) up.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "istio/yaml.rs"]
mod yaml;

use std::collections::{BTreeMap, BTreeSet};

use ctxgate_e2e::{Envoy, EnvoyConfig, Request, Route, WasmFilter, repo_root};
use regex::Regex;
use serde_json::{Value, json};

/// The demo gateway's `stats_config`, so names and labels match it.
fn demo_stats_config() -> Value {
    let text = std::fs::read_to_string(repo_root().join("envoy/demo.yaml")).unwrap();
    let demo = yaml::documents(&text).unwrap().remove(0);
    demo["stats_config"].clone()
}

/// Metric name -> label sets seen, from Prometheus text.
fn scrape(text: &str) -> BTreeMap<String, Vec<BTreeMap<String, String>>> {
    let line = Regex::new(r#"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})? "#).unwrap();
    let label = Regex::new(r#"([a-zA-Z_][a-zA-Z0-9_]*)="([^"]*)""#).unwrap();
    let mut metrics: BTreeMap<String, Vec<BTreeMap<String, String>>> = BTreeMap::new();
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        if let Some(c) = line.captures(l) {
            let labels = c.get(3).map_or_else(BTreeMap::new, |m| {
                label
                    .captures_iter(m.as_str())
                    .map(|c| (c[1].to_owned(), c[2].to_owned()))
                    .collect()
            });
            metrics.entry(c[1].to_owned()).or_default().push(labels);
        }
    }
    metrics
}

#[test]
fn every_metric_an_alert_names_is_exported_by_the_gateway() {
    let auth = json!({
        "providers": [{"name": "demo", "issuer": "https://idp", "jwks": {"remote": {"cluster": "idp"}}}],
        "public_paths": [{"prefix": "/"}],
    });
    let ratelimit = json!({
        "adaptive": {"latency_threshold_ms": 500},
        "global": {"cluster": "idp"},
    });
    let config = EnvoyConfig::new()
        .bootstrap_field("stats_config", demo_stats_config())
        .filter(WasmFilter::new("ctxgate_auth").config(auth))
        .filter(WasmFilter::new("ctxgate_ratelimit").config(ratelimit))
        .filter(WasmFilter::new("ctxgate_tagging").config(json!({})))
        .filter(WasmFilter::new("ctxgate_breaker").config(json!({"breakers": [{"name": "context_repository"}]})))
        .raw_cluster(json!({
            "name": "idp", "type": "STATIC", "connect_timeout": "0.2s",
            "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}}},
            "load_assignment": {"cluster_name": "idp", "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9}}}}]}]},
        }))
        .route(Route::prefix("/").direct(200, "ok"));
    let envoy = Envoy::start(&config);
    Request::get("/v1/contexts/a").send(envoy.listener_addr());
    // Gauges published on the first ticks.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let exported = scrape(&envoy.prometheus());

    let alerts_text =
        std::fs::read_to_string(repo_root().join("observability/alerts.yaml")).unwrap();
    let alerts = yaml::documents(&alerts_text).unwrap().remove(0);
    let name = Regex::new(r"\b((?:ctxgate|envoy)_[a-z0-9_]+)(\{([^}]*)\})?").unwrap();
    let regex_name = Regex::new(r#"__name__=~"([^"]+)""#).unwrap();
    let matcher = Regex::new(r#"([a-z_]+)=~?"([^"]+)""#).unwrap();
    let mut checked = BTreeSet::new();
    for group in alerts["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            let alert = rule["alert"].as_str().unwrap();
            let expr = rule["expr"].as_str().unwrap();
            for c in name.captures_iter(expr) {
                // Names inside a quoted regex are handled below.
                let start = c.get(0).unwrap().start();
                if expr[..start].matches('"').count() % 2 == 1 {
                    continue;
                }
                let metric = &c[1];
                let series = exported
                    .get(metric)
                    .unwrap_or_else(|| panic!("{alert}: {metric} is not exported by the gateway"));
                for m in c
                    .get(3)
                    .map(|m| matcher.captures_iter(m.as_str()).collect::<Vec<_>>())
                    .unwrap_or_default()
                {
                    let (label, value) = (&m[1], &m[2]);
                    let value_re = Regex::new(&format!("^(?:{value})$")).unwrap();
                    assert!(
                        series
                            .iter()
                            .any(|labels| labels.get(label).is_some_and(|v| value_re.is_match(v))),
                        "{alert}: no {metric} series with {label} matching {value}"
                    );
                }
                checked.insert(metric.to_owned());
            }
            for c in regex_name.captures_iter(expr) {
                let re = Regex::new(&format!("^(?:{})$", &c[1])).unwrap();
                assert!(
                    exported.keys().any(|k| re.is_match(k)),
                    "{alert}: no exported metric matches {}",
                    &c[1]
                );
                checked.insert(c[1].to_owned());
            }
        }
    }
    println!("{} metric names checked: {checked:?}", checked.len());
    assert!(
        checked.len() >= 10,
        "the alert file names too few metrics: {checked:?}"
    );
}
