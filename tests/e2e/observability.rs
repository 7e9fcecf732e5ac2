//! The alert rules in `observability/alerts.yaml` and the Grafana dashboard
//! `observability/grafana-dashboard.json` only name metrics a real gateway
//! exports: start Envoy with the pipeline, scrape `/stats/prometheus`, and
//! look every metric, every label value a query matches on and every label
//! it groups by up.
//!
//! The same checks run against each way the gateway is deployed, since the
//! series' names and labels are made by the bootstrap's `stats_config`,
//! not by the module:
//!
//! * the standalone demo: envoy/demo.yaml's `stats_config`;
//! * Istio, on the ingress gateway and in a workload's sidecar: the
//!   `stats_config` Istio's own bootstrap template gives a proxy with the
//!   pod annotations istio/mesh/ctxgate-gateway-values.yaml, or
//!   deploy/kustomize/overlays/sidecar/workload-patch.yaml, sets (rendered
//!   from Istio's files, `istio/bootstrap.rs`), with the bootstrap override
//!   they name (istio/51-stats-tags.yaml) merged over it by Envoy itself, as
//!   pilot-agent has it merged, and the HTTP connection manager named as
//!   Istio names it there.
//!
//! On the native engine (`CTXGATE_ENGINE=native`) the demo gateway and
//! the flood run with the demo's tags moved to the native names, and every
//! scrape renamed as Prometheus renames it with the rule
//! `observability/native-relabel.yaml` ships; Istio runs only wasm.
//!
//! And that each Istio setting is needed: without the bootstrap override
//! ctxgate's series keep their labels in their names (Istio's own `wasm`
//! inclusion prefix does keep the stats), and without the stats matcher of
//! `proxy.istio.io/config` the listener's request time is not created.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "istio/bootstrap.rs"]
mod bootstrap;
#[allow(dead_code)]
#[path = "istio/manifests.rs"]
mod manifests;
use ctxgate_e2e::yaml;

use ctxgate_e2e::demo::{demo_stats_config, gateway_stats_config};

use std::collections::{BTreeMap, BTreeSet};

use ctxgate_e2e::http::Client;
use ctxgate_e2e::{
    Envoy, EnvoyConfig, FilterEngine, Request, Route, WasmFilter, WasmService, demo_idp, repo_root,
    skip_on_native,
};
use regex::Regex;
use serde_json::{Map, Value, json};

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

/// Metric name -> label sets seen on a gateway running the pipeline.
type Exported = BTreeMap<String, Vec<BTreeMap<String, String>>>;

/// How a gateway's Envoy makes and names its stats: what differs between
/// the demo and an Istio proxy.
struct StatsSetup {
    /// The bootstrap's `stats_config`.
    stats_config: Value,
    /// Merged over the bootstrap by Envoy (`--config-yaml`): Istio's
    /// bootstrap override.
    config_yaml: Option<Value>,
    /// The HTTP connection manager's `stat_prefix`.
    stat_prefix: String,
    /// The plugin's name in Envoy (`wasm.<name>.*` stats).
    plugin_name: String,
}

fn demo_stats() -> StatsSetup {
    StatsSetup {
        stats_config: gateway_stats_config(),
        config_yaml: None,
        stat_prefix: "ingress".into(),
        plugin_name: "ctxgate".into(),
    }
}

/// The objects of istio/.
fn istio_objects() -> Vec<manifests::Object> {
    manifests::load(&repo_root().join("istio")).unwrap()
}

/// The Istio proxy of a pod with these annotations, its bootstrap
/// override read from the ConfigMaps of istio/ (the sidecar overlay only
/// moves that ConfigMap to the workloads' namespace; tests/e2e/kustomize.rs
/// checks it stays the same).
fn istio_stats(annotations: &Map<String, Value>, stat_prefix: &str) -> StatsSetup {
    let objects = istio_objects();
    let config_map = |name: &str| {
        objects
            .iter()
            .find(|o| o.kind() == "ConfigMap" && o.name() == name)
            .and_then(|o| o.value["data"].as_object().cloned())
    };
    let proxy = bootstrap::proxy(annotations, config_map).unwrap_or_else(|e| panic!("{e}"));
    let plugin = objects
        .iter()
        .find(|o| o.kind() == "WasmPlugin")
        .expect("istio/ has a WasmPlugin");
    StatsSetup {
        stats_config: proxy.stats_config,
        config_yaml: proxy.config_yaml,
        stat_prefix: stat_prefix.to_owned(),
        // Istio names a WasmPlugin's filter <namespace>.<name>.
        plugin_name: format!("{}.{}", plugin.namespace(), plugin.name()),
    }
}

/// The pod annotations of the ingress gateway (its Helm values).
fn gateway_annotations() -> Map<String, Value> {
    let path = repo_root().join("istio/mesh/ctxgate-gateway-values.yaml");
    let values = yaml::documents(&std::fs::read_to_string(path).unwrap())
        .unwrap()
        .remove(0);
    values["podAnnotations"].as_object().unwrap().clone()
}

/// The pod annotations of a workload running the plugin in its sidecar.
fn sidecar_annotations() -> Map<String, Value> {
    let path = repo_root().join("deploy/kustomize/overlays/sidecar/workload-patch.yaml");
    let patch = yaml::documents(&std::fs::read_to_string(path).unwrap())
        .unwrap()
        .remove(0);
    patch["spec"]["template"]["metadata"]["annotations"]
        .as_object()
        .unwrap()
        .clone()
}

/// The HTTP connection manager's stat prefix on Istio's ingress gateway:
/// outbound_<bind>_<port>; (listener 0.0.0.0_<port> of the Gateway's
/// server; the `gateway` chart's pods listen on the Service's ports).
fn gateway_stat_prefix() -> String {
    let objects = istio_objects();
    let gateway = objects.iter().find(|o| o.kind() == "Gateway").unwrap();
    let port = &gateway.spec()["servers"][0]["port"]["number"];
    format!("outbound_0.0.0.0_{port};")
}

/// A workload's inbound HTTP connection manager: inbound_<bind>_<port>;
/// (the port is the workload's; the stats matcher must not depend on it).
/// Why the Istio deployments are checked on the wasm engine only.
const ISTIO_IS_WASM: &str = "Istio loads the gateway as a WasmPlugin";

const SIDECAR_STAT_PREFIX: &str = "inbound_0.0.0.0_8080;";

fn scrape_gateway(setup: &StatsSetup) -> Exported {
    // A remote provider (its JWKS metrics), and the demo's HS256 issuer for
    // a verified tenant (its per-tenant rate-limit gauges).
    let mut hs256 = demo_idp::hs256_provider();
    hs256["name"] = json!("hs256");
    hs256["tenant"] = json!("initech");
    let auth = json!({
        "providers": [{"name": "demo", "issuer": "https://idp", "tenant": "globex", "jwks": {"remote": {"cluster": "idp"}}}, hs256],
        "public_paths": [{"prefix": "/public"}],
        "operations": [{"name": "read", "methods": ["GET"], "path": "/v1/contexts/{context}", "action": "read"}],
    });
    let ratelimit = json!({
        "adaptive": {"latency_threshold_ms": 500},
        "global": {"cluster": "idp"},
    });
    // The audit singleton's metrics too (its collector is away).
    let audit = json!({"singleton_vm_id": "ctxgate", "collector": {"cluster": "idp"}});
    let mut config = EnvoyConfig::new()
        .bootstrap_field("stats_config", setup.stats_config.clone())
        // Histograms reach /stats/prometheus on a stats flush.
        .bootstrap_field("stats_flush_interval", json!("0.2s"))
        .hcm_field("stat_prefix", json!(setup.stat_prefix))
        .bootstrap_extension(WasmService::audit_singleton("ctxgate", audit.clone()))
        .filter(
            WasmFilter::ctxgate("ctxgate")
                .name(&setup.plugin_name)
                .stage("auth", auth)
                .stage("ratelimit", ratelimit)
                .stage("tagging", json!({}))
                .stage(
                    "metrics",
                    json!({"tenants": ["initech"], "flush_interval_ms": 100, "timing_every": 1}),
                )
                .stage(
                    "residency",
                    json!({"region": "eu", "tenants": {"acme": "eu"}, "services": {"api": {"eu": ["upstream"]}}}),
                )
                .stage("breaker", json!({"breakers": [{"name": "context_repository"}]}))
                .stage(
                    "signature",
                    json!({"keys": {"k1": {"secret": "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="}},
                           "routes": [{"path": {"prefix": "/signed/"}}]}),
                )
                .stage("audit", audit),
        )
        .raw_cluster(json!({
            "name": "idp", "type": "STATIC", "connect_timeout": "0.2s",
            "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}}}},
            "load_assignment": {"cluster_name": "idp", "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9}}}}]}]},
        }))
        .route(Route::prefix("/public/fail").direct(503, "down"))
        .route(Route::prefix("/").direct(200, "ok"));
    if let Some(fragment) = &setup.config_yaml {
        config = config.config_yaml(fragment.clone());
    }
    let envoy = Envoy::start(&config);
    // A success and a server error, each counted with its status class
    // and its upstream latency.
    Request::get("/public/a").send(envoy.listener_addr());
    Request::get("/public/fail").send(envoy.listener_addr());
    let token = demo_idp::hs256_token("initech", "user-1", &json!({}));
    Request::get("/v1/contexts/projects/a")
        .bearer(&token)
        .send(envoy.listener_addr())
        .expect_status(200);
    // Gauges published on the first ticks, histograms on a stats flush.
    std::thread::sleep(std::time::Duration::from_millis(800));
    scrape(&envoy.scraped())
}

/// Checks one PromQL expression against what the gateway exports: the
/// metric names (or name regexes) it uses, or what it lacks. `instance` is
/// the label Prometheus adds when scraping, so it is never looked for.
fn check_query(what: &str, expr: &str, exported: &Exported) -> Result<Vec<String>, Vec<String>> {
    let grouping = Regex::new(r"\b(?:by|without)\s*\(([^)]*)\)").unwrap();
    let name = Regex::new(r"\b((?:ctxgate|envoy)_[a-z0-9_]+)(\{([^}]*)\})?").unwrap();
    let regex_name = Regex::new(r#"__name__=~"([^"]+)""#).unwrap();
    let matcher = Regex::new(r#"([a-z_]+)=~?"([^"]+)""#).unwrap();
    let group_labels: Vec<String> = grouping
        .captures_iter(expr)
        .flat_map(|c| {
            c[1].split(',')
                .map(|l| l.trim().to_owned())
                .collect::<Vec<_>>()
        })
        .filter(|l| !l.is_empty() && l != "instance")
        .collect();
    // Label names in by (...) are not metrics.
    let metrics_only = grouping.replace_all(expr, "");
    let mut used = Vec::new();
    let mut problems = Vec::new();
    for c in name.captures_iter(&metrics_only) {
        // Names inside a quoted regex are handled below.
        let start = c.get(0).unwrap().start();
        if metrics_only[..start].matches('"').count() % 2 == 1 {
            continue;
        }
        let metric = &c[1];
        let Some(series) = exported.get(metric) else {
            problems.push(format!("{what}: {metric} is not exported by the gateway"));
            continue;
        };
        for m in c
            .get(3)
            .map(|m| matcher.captures_iter(m.as_str()).collect::<Vec<_>>())
            .unwrap_or_default()
        {
            let (label, value) = (&m[1], &m[2]);
            if label == "instance" {
                continue;
            }
            let value_re = Regex::new(&format!("^(?:{value})$")).unwrap();
            if !series
                .iter()
                .any(|labels| labels.get(label).is_some_and(|v| value_re.is_match(v)))
            {
                problems.push(format!(
                    "{what}: no {metric} series with {label} matching {value}"
                ));
            }
        }
        for label in &group_labels {
            if !series.iter().any(|labels| labels.contains_key(label)) {
                problems.push(format!("{what}: {metric} has no label {label} to group by"));
            }
        }
        used.push(metric.to_owned());
    }
    for c in regex_name.captures_iter(expr) {
        let re = Regex::new(&format!("^(?:{})$", &c[1])).unwrap();
        if !exported.keys().any(|k| re.is_match(k)) {
            problems.push(format!("{what}: no exported metric matches {}", &c[1]));
        }
        used.push(c[1].to_owned());
    }
    if problems.is_empty() {
        Ok(used)
    } else {
        Err(problems)
    }
}

/// What the alerts and the dashboard query.
struct Queries {
    /// (alert name, expression)
    alerts: Vec<(String, String)>,
    /// (panel title, expression)
    panels: Vec<(String, String)>,
    /// Metrics of the dashboard's variable queries (`label_values(m, l)`).
    variables: Vec<String>,
}

fn queries() -> Queries {
    let alerts_text =
        std::fs::read_to_string(repo_root().join("observability/alerts.yaml")).unwrap();
    let alert_rules = yaml::documents(&alerts_text).unwrap().remove(0);
    let mut alerts = Vec::new();
    for group in alert_rules["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            alerts.push((
                rule["alert"].as_str().unwrap().to_owned(),
                rule["expr"].as_str().unwrap().to_owned(),
            ));
        }
    }
    let dashboard_text =
        std::fs::read_to_string(repo_root().join("observability/grafana-dashboard.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&dashboard_text).unwrap();
    let mut panels = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap();
        for target in panel["targets"].as_array().into_iter().flatten() {
            panels.push((
                title.to_owned(),
                target["expr"].as_str().unwrap().to_owned(),
            ));
        }
    }
    // The gateway picker's query, too.
    let label_values = Regex::new(r"label_values\((\w+),").unwrap();
    let variables = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["query"]["query"].as_str())
        .map(|query| {
            label_values
                .captures(query)
                .map(|c| c[1].to_owned())
                .unwrap_or_else(|| panic!("unexpected variable query {query}"))
        })
        .collect();
    Queries {
        alerts,
        panels,
        variables,
    }
}

/// Every query of the alerts and the dashboard checked against what a
/// gateway exports: the metric names the alerts and the panels use, and
/// every problem found.
fn check_all(exported: &Exported) -> (BTreeSet<String>, BTreeSet<String>, Vec<String>) {
    let mut queries = queries();
    if FilterEngine::current() == FilterEngine::Native {
        // The wasm VM's own stats: the native engine has no VM (a panic
        // there is answered 500, which the error-rate alert counts).
        let wasm_only = |(_, expr): &(String, String)| !expr.contains("envoy_wasm_");
        queries.alerts.retain(wasm_only);
        queries.panels.retain(wasm_only);
    }
    let mut problems = Vec::new();
    let mut check = |what: &str, expr: &str| match check_query(what, expr, exported) {
        Ok(used) => used,
        Err(found) => {
            problems.extend(found);
            Vec::new()
        }
    };
    let alerted: BTreeSet<String> = queries
        .alerts
        .iter()
        .flat_map(|(alert, expr)| check(alert, expr))
        .collect();
    let charted: BTreeSet<String> = queries
        .panels
        .iter()
        .flat_map(|(title, expr)| check(title, expr))
        .collect();
    for metric in &queries.variables {
        if !exported.contains_key(metric) {
            problems.push(format!("variable query: {metric} is not exported"));
        }
    }
    (alerted, charted, problems)
}

/// The alerts and the dashboard find every series they query on a gateway
/// with this stats setup.
fn assert_alerts_and_dashboard_work(setup: &StatsSetup) {
    let exported = scrape_gateway(setup);
    let (alerted, charted, problems) = check_all(&exported);
    assert!(
        problems.is_empty(),
        "queries that find nothing:\n  {}",
        problems.join("\n  ")
    );
    println!(
        "alerts: {} metric names checked: {alerted:?}",
        alerted.len()
    );
    assert!(
        alerted.len() >= 10,
        "the alert file names too few metrics: {alerted:?}"
    );
    println!(
        "dashboard: {} queries, {} metric names checked: {charted:?}",
        queries().panels.len(),
        charted.len()
    );
    assert!(
        queries().panels.len() >= 20,
        "the dashboard has too few queries"
    );
    // Every ctxgate metric an alert fires on is on the dashboard too.
    for metric in alerted.iter().filter(|m| m.starts_with("ctxgate_")) {
        assert!(
            charted.contains(metric),
            "{metric} is alerted on but not on the dashboard"
        );
    }
}

#[test]
fn every_metric_the_alerts_and_the_dashboard_name_is_exported_by_the_demo_gateway() {
    assert_alerts_and_dashboard_work(&demo_stats());
}

#[test]
fn every_metric_the_alerts_and_the_dashboard_name_is_exported_by_an_istio_ingress_gateway() {
    if skip_on_native(ISTIO_IS_WASM) {
        return;
    }
    let setup = istio_stats(&gateway_annotations(), &gateway_stat_prefix());
    // Istio's own tags come first, ctxgate's are appended by the override.
    let istio_tags = setup.stats_config["stats_tags"].as_array().unwrap();
    assert!(istio_tags.iter().any(|t| t["tag_name"] == "cluster_name"));
    assert_eq!(setup.stats_config["use_all_default_tags"], false);
    assert_alerts_and_dashboard_work(&setup);
}

#[test]
fn every_metric_the_alerts_and_the_dashboard_name_is_exported_by_an_istio_sidecar() {
    if skip_on_native(ISTIO_IS_WASM) {
        return;
    }
    assert_alerts_and_dashboard_work(&istio_stats(&sidecar_annotations(), SIDECAR_STAT_PREFIX));
}

/// The problems of the alerts and the dashboard on an Istio ingress gateway
/// whose pod has these annotations.
fn istio_problems(annotations: &Map<String, Value>) -> (Exported, Vec<String>) {
    let exported = scrape_gateway(&istio_stats(annotations, &gateway_stat_prefix()));
    let (_, _, problems) = check_all(&exported);
    (exported, problems)
}

fn assert_problems(problems: &[String], expected: &[&str]) {
    for expected in expected {
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "expected {expected:?} among {problems:#?}"
        );
    }
}

#[test]
fn istio_needs_both_annotations_for_the_alerts_and_the_dashboard() {
    if skip_on_native(ISTIO_IS_WASM) {
        return;
    }
    let latency = "envoy_http_downstream_rq_time_bucket is not exported";
    // Neither: Istio's `wasm` prefix keeps ctxgate's stats, with their
    // labels left in their names; the listener's request time is not
    // created.
    let (exported, problems) = istio_problems(&Map::new());
    assert!(
        exported
            .keys()
            .any(|k| k.starts_with("ctxgate_requests_tier_standard_")),
        "{:?}",
        exported.keys().collect::<Vec<_>>()
    );
    assert!(exported.contains_key("envoy_server_live"));
    assert_problems(
        &problems,
        &[
            "ctxgate_requests is not exported",
            "ctxgate_auth_denied is not exported",
            "ctxgate_auth_jwks_fetch_failure is not exported",
            latency,
        ],
    );

    // The stats matcher without the tags.
    let mut annotations = gateway_annotations();
    annotations.remove(bootstrap::BOOTSTRAP_OVERRIDE).unwrap();
    let (_, problems) = istio_problems(&annotations);
    assert_problems(&problems, &["ctxgate_requests is not exported"]);
    assert!(
        !problems.iter().any(|p| p.contains(latency)),
        "{problems:#?}"
    );

    // The tags without the stats matcher: only the request time is missing.
    let mut annotations = gateway_annotations();
    annotations.remove(bootstrap::PROXY_CONFIG).unwrap();
    let (_, problems) = istio_problems(&annotations);
    assert_problems(&problems, &[latency]);
    assert!(
        problems.iter().all(|p| p.contains(latency)),
        "{problems:#?}"
    );
}

#[test]
fn the_istio_stats_config_is_what_istio_renders() {
    // Istio's own golden bootstrap for a proxy without stats options
    // (pkg/bootstrap/testdata/default_golden.json).
    let path = repo_root().join("tests/e2e/istio/bootstrap/default_golden.json");
    let golden: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let proxy = bootstrap::proxy(&Map::new(), |_| None).unwrap();
    assert_eq!(proxy.stats_config, golden["stats_config"]);
    assert!(proxy.config_yaml.is_none());
    // The gateway's options add to Istio's list, after its required ones.
    let gateway = istio_stats(&gateway_annotations(), &gateway_stat_prefix());
    let patterns = gateway.stats_config["stats_matcher"]["inclusion_list"]["patterns"]
        .as_array()
        .unwrap();
    let position = |pattern: Value| {
        patterns
            .iter()
            .position(|p| *p == pattern)
            .unwrap_or_else(|| panic!("no {pattern} in {patterns:#?}"))
    };
    assert!(
        position(json!({"prefix": "wasmcustom.ctxgate_"})) < position(json!({"prefix": "wasm"}))
    );
    position(json!({"safe_regex": {"regex": "http\\.outbound_[^;]*;\\.downstream_rq_time"}}));
}

#[test]
fn the_istio_bootstrap_override_carries_the_demo_stats_tags() {
    let setup = istio_stats(&gateway_annotations(), &gateway_stat_prefix());
    let tags = &setup.config_yaml.as_ref().expect("an override")["stats_config"]["stats_tags"];
    assert_eq!(
        *tags,
        demo_stats_config()["stats_tags"],
        "istio/51-stats-tags.yaml and envoy/demo.yaml's stats_tags differ"
    );
    // Nothing else in the override: the rest of the bootstrap is Istio's.
    let fragment = setup.config_yaml.unwrap();
    assert_eq!(fragment.as_object().unwrap().len(), 1, "{fragment}");
    assert_eq!(fragment["stats_config"].as_object().unwrap().len(), 1);
}

/// A flood of 100 000 distinct tenants, one request each, with a heavy
/// tenant (every tenth request) and a named one among them: the gateway
/// exports three `ctxgate_requests` series (the named tenant, the heavy
/// hitter, `other`) and every request is in one of them.
#[test]
fn a_flood_of_tenants_leaves_the_request_series_bounded() {
    const FLOOD: usize = 100_000;
    const THREADS: usize = 4;
    let auth = json!({
        "providers": [demo_idp::hs256_provider()],
        "operations": [{"name": "read", "methods": ["GET"], "path": "/v1/contexts/{context}", "action": "read"}],
    });
    let config = EnvoyConfig::new()
        .bootstrap_field("stats_config", gateway_stats_config())
        .bootstrap_field("stats_flush_interval", json!("0.2s"))
        .filter(WasmFilter::ctxgate("ctxgate").stage("auth", auth).stage(
            "metrics",
            json!({"tenants": ["acme"], "top_tenants": 2, "flush_interval_ms": 100}),
        ))
        .route(Route::prefix("/").direct(200, "ok"));
    let envoy = Envoy::start(&config);
    let addr = envoy.listener_addr();
    let token = |tenant: &str| demo_idp::hs256_token(tenant, "user-1", &json!({}));
    let (heavy, acme) = (token("heavy"), token("acme"));
    let started = std::time::Instant::now();
    let sent: usize = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let (heavy, acme) = (&heavy, &acme);
                scope.spawn(move || {
                    let mut client = Client::connect(addr);
                    let mut sent = 0;
                    for i in (t..FLOOD).step_by(THREADS) {
                        let mut tokens = vec![token(&format!("flood-{i}"))];
                        if i % 10 == 0 {
                            tokens.push(heavy.clone());
                        }
                        if i % 1000 == 0 {
                            tokens.push(acme.clone());
                        }
                        for t in &tokens {
                            let response =
                                client.send(&Request::get("/v1/contexts/projects/a").bearer(t));
                            assert_eq!(response.status, 200, "{}", response.text());
                            sent += 1;
                        }
                    }
                    sent
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    println!(
        "{sent} requests from {} tenants in {:.1} s",
        FLOOD + 2,
        started.elapsed().as_secs_f64()
    );
    // Every request counted (flushed every 100 ms).
    let mut series = Vec::new();
    let complete = ctxgate_e2e::eventually(std::time::Duration::from_secs(10), || {
        series = requests_series(&envoy.scraped());
        series.iter().map(|(_, n)| n).sum::<u64>() == sent as u64
    });
    assert!(complete, "not every request counted: {series:?}");
    let tenants: BTreeSet<&str> = series.iter().map(|(l, _)| l["tenant"].as_str()).collect();
    println!("ctxgate_requests series: {series:?}");
    assert_eq!(
        tenants,
        BTreeSet::from(["acme", "heavy", "other"]),
        "the named tenant, the heavy hitter and other"
    );
    assert_eq!(series.len(), 3, "one label set per tenant label");
    for (labels, _) in &series {
        assert_eq!(
            (
                labels["tier"].as_str(),
                labels["operation"].as_str(),
                labels["decision"].as_str(),
                labels["status_class"].as_str()
            ),
            ("standard", "read", "allow", "2xx")
        );
    }
    // The upstream latency histogram took a sample of every request
    // (Envoy publishes histograms on its stats flush, every 5 s).
    let count = Regex::new(
        r#"(?m)^ctxgate_upstream_latency_ms_count\{operation="read",route="none"\} (\d+)"#,
    )
    .unwrap();
    let mut samples = 0;
    let recorded = ctxgate_e2e::eventually(std::time::Duration::from_secs(15), || {
        samples = count
            .captures(&envoy.scraped())
            .map_or(0, |c| c[1].parse::<usize>().unwrap());
        samples == sent
    });
    assert!(recorded, "{samples} latency samples for {sent} requests");
    let all = scrape(&envoy.scraped());
    let total: usize = all.values().map(Vec::len).sum();
    println!("{total} series exported in all");
    assert!(total < 2_000, "the flood created series elsewhere: {total}");
}

/// The `ctxgate_requests` series of a Prometheus text: labels and value.
fn requests_series(text: &str) -> Vec<(BTreeMap<String, String>, u64)> {
    let value = Regex::new(r"^ctxgate_requests\{([^}]*)\} (\d+)").unwrap();
    let label = Regex::new(r#"([a-z_]+)="([^"]*)""#).unwrap();
    text.lines()
        .filter_map(|l| value.captures(l))
        .map(|c| {
            let labels = label
                .captures_iter(&c[1])
                .map(|l| (l[1].to_owned(), l[2].to_owned()))
                .collect();
            (labels, c[2].parse().unwrap())
        })
        .collect()
}
