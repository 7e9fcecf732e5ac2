//! The alert rules in `observability/alerts.yaml` and the Grafana dashboard
//! `observability/grafana-dashboard.json` only name metrics a real gateway
//! exports: start Envoy with the four filters and the demo's `stats_tags`,
//! scrape `/stats/prometheus`, and look every metric, every label value a
//! query matches on and every label it groups by up.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use ctxgate_e2e::yaml;

use ctxgate_e2e::demo::demo_stats_config;

use std::collections::{BTreeMap, BTreeSet};

use ctxgate_e2e::http::Client;
use ctxgate_e2e::{
    Envoy, EnvoyConfig, Request, Route, WasmFilter, WasmService, demo_idp, repo_root,
};
use regex::Regex;
use serde_json::{Value, json};

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

/// Metric name -> label sets seen on a gateway running the four filters.
type Exported = BTreeMap<String, Vec<BTreeMap<String, String>>>;

fn scrape_gateway() -> Exported {
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
    let config = EnvoyConfig::new()
        .bootstrap_field("stats_config", demo_stats_config())
        // Histograms reach /stats/prometheus on a stats flush.
        .bootstrap_field("stats_flush_interval", json!("0.2s"))
        .bootstrap_extension(WasmService::audit_singleton("ctxgate", audit.clone()))
        .filter(
            WasmFilter::ctxgate("ctxgate")
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
    scrape(&envoy.prometheus())
}

/// Checks one PromQL expression against what the gateway exports; returns
/// the metric names (or name regexes) it uses. `instance` is the label
/// Prometheus adds when scraping, so it is never looked for.
fn check_query(what: &str, expr: &str, exported: &Exported) -> Vec<String> {
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
    for c in name.captures_iter(&metrics_only) {
        // Names inside a quoted regex are handled below.
        let start = c.get(0).unwrap().start();
        if metrics_only[..start].matches('"').count() % 2 == 1 {
            continue;
        }
        let metric = &c[1];
        let series = exported
            .get(metric)
            .unwrap_or_else(|| panic!("{what}: {metric} is not exported by the gateway"));
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
            assert!(
                series
                    .iter()
                    .any(|labels| labels.get(label).is_some_and(|v| value_re.is_match(v))),
                "{what}: no {metric} series with {label} matching {value}"
            );
        }
        for label in &group_labels {
            assert!(
                series.iter().any(|labels| labels.contains_key(label)),
                "{what}: {metric} has no label {label} to group by"
            );
        }
        used.push(metric.to_owned());
    }
    for c in regex_name.captures_iter(expr) {
        let re = Regex::new(&format!("^(?:{})$", &c[1])).unwrap();
        assert!(
            exported.keys().any(|k| re.is_match(k)),
            "{what}: no exported metric matches {}",
            &c[1]
        );
        used.push(c[1].to_owned());
    }
    used
}

#[test]
fn every_metric_the_alerts_and_the_dashboard_name_is_exported_by_the_gateway() {
    let exported = scrape_gateway();

    let alerts_text =
        std::fs::read_to_string(repo_root().join("observability/alerts.yaml")).unwrap();
    let alerts = yaml::documents(&alerts_text).unwrap().remove(0);
    let mut alerted = BTreeSet::new();
    for group in alerts["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            let alert = rule["alert"].as_str().unwrap();
            let expr = rule["expr"].as_str().unwrap();
            alerted.extend(check_query(alert, expr, &exported));
        }
    }
    println!(
        "alerts: {} metric names checked: {alerted:?}",
        alerted.len()
    );
    assert!(
        alerted.len() >= 10,
        "the alert file names too few metrics: {alerted:?}"
    );

    let dashboard_text =
        std::fs::read_to_string(repo_root().join("observability/grafana-dashboard.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&dashboard_text).unwrap();
    let mut charted = BTreeSet::new();
    let mut queries = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        let title = panel["title"].as_str().unwrap();
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            charted.extend(check_query(title, expr, &exported));
            queries += 1;
        }
    }
    // The gateway picker's query, too.
    let label_values = Regex::new(r"label_values\((\w+),").unwrap();
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(query) = variable["query"]["query"].as_str() {
            let metric = label_values
                .captures(query)
                .map(|c| c[1].to_owned())
                .unwrap_or_else(|| panic!("unexpected variable query {query}"));
            assert!(
                exported.contains_key(&metric),
                "variable query: {metric} is not exported"
            );
        }
    }
    println!(
        "dashboard: {queries} queries, {} metric names checked: {charted:?}",
        charted.len()
    );
    assert!(queries >= 20, "the dashboard has too few queries");
    // Every ctxgate metric an alert fires on is on the dashboard too.
    for metric in alerted.iter().filter(|m| m.starts_with("ctxgate_")) {
        assert!(
            charted.contains(metric),
            "{metric} is alerted on but not on the dashboard"
        );
    }
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
        .bootstrap_field("stats_config", demo_stats_config())
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
        series = requests_series(&envoy.prometheus());
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
            .captures(&envoy.prometheus())
            .map_or(0, |c| c[1].parse::<usize>().unwrap());
        samples == sent
    });
    assert!(recorded, "{samples} latency samples for {sent} requests");
    let all = scrape(&envoy.prometheus());
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
