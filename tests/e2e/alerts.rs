//! The SLA alerts of `observability/alerts.yaml`, evaluated by Prometheus's
//! own rule engine (`promtool test rules`, Debian's `prometheus` package)
//! on series a real gateway exported.
//!
//! Each scenario runs a gateway (the pipeline, the demo's `stats_tags`) in
//! front of a scripted upstream under a steady load: first healthy, then
//! in the alert's condition (5xx from the upstream, forged tokens, a slow
//! upstream). `/stats/prometheus` is scraped every half second, and the
//! scrapes become promtool's input series, one per 15 s of rule time: the
//! four conditions are ratios and quantiles, which do not change when time
//! is compressed, and the rules' `for:` durations and rate windows play
//! out in full on the compressed timeline. promtool must see every SLA
//! alert silent at the end of the healthy phase, and at the end of the
//! faulty one exactly the scenario's alert firing, with its labels.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use ctxgate_e2e::http::Client;
use ctxgate_e2e::servers::{ScriptedResponse, ScriptedServer};
use ctxgate_e2e::{Cluster, Envoy, EnvoyConfig, Request, Route, WasmFilter, demo_idp, repo_root};
use regex::Regex;
use serde_json::json;

use ctxgate_e2e::yaml;

use ctxgate_e2e::demo::gateway_stats_config;

/// Real time between scrapes, and the rule time one scrape stands for.
const SCRAPE_EVERY: Duration = Duration::from_millis(500);
const STEP_SECONDS: u64 = 15;

/// Healthy steps first: six minutes of rule time, longer than any rule's
/// rate window.
const HEALTHY_STEPS: usize = 24;

/// The instance label Prometheus would add when scraping.
const INSTANCE: &str = "gateway-1";

const SLA_ALERTS: [&str; 4] = [
    "CtxgateHighErrorRate",
    "CtxgateAuthFailureRate",
    "CtxgateOperationLatencyHigh",
    "CtxgateRateLimitUtilisationHigh",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// One request in five answered 500 by the upstream.
    ServerErrors,
    /// One request in four carries a forged token.
    ForgedTokens,
    /// The upstream answers after 600 ms.
    SlowUpstream,
    /// The metered tenant sends 97% of its limit (40% while healthy).
    NearLimit,
}

/// The metered tenant's limit: 200 units per 2 s (a short window, so that
/// its use settles within a second of real time).
const METERED_LIMIT: u64 = 200;
const METERED_WINDOW_MS: u64 = 2000;

/// What the clients send and the upstream does right now.
struct Load {
    faulty: AtomicBool,
    sent: AtomicUsize,
    stop: AtomicBool,
}

/// Runs the scenario; returns the scrapes, healthy ones first.
fn capture(fault: Fault, faulty_steps: usize) -> Vec<String> {
    let upstream = ScriptedServer::start();
    let auth = json!({
        "providers": [demo_idp::hs256_provider()],
        "operations": [{"name": "read", "methods": ["GET"], "path": "/v1/contexts/{context}", "action": "read"}],
    });
    let ratelimit = json!({"tiers": {
        "standard": [{"name": "per_second", "limit": 1_000_000, "window_seconds": 1}],
        "anonymous": [{"name": "per_second", "limit": 1_000, "window_seconds": 1}],
        "metered": [{"name": "per_window", "limit": METERED_LIMIT, "window_seconds": METERED_WINDOW_MS / 1000}],
    }});
    let config = EnvoyConfig::new()
        .bootstrap_field("stats_config", gateway_stats_config())
        .bootstrap_field("stats_flush_interval", json!("0.25s"))
        .filter(
            WasmFilter::ctxgate("ctxgate")
                .stage("auth", auth)
                .stage("ratelimit", ratelimit)
                .stage(
                    "metrics",
                    json!({"flush_interval_ms": 100, "tenants": ["metered"]}),
                ),
        )
        .cluster(Cluster::new("context", [upstream.addr()]))
        .route(Route::prefix("/").cluster("context"));
    let envoy = Envoy::start(&config);
    let addr = envoy.listener_addr();
    let token = demo_idp::hs256_token("acme", "user-1", &json!({}));
    let metered = demo_idp::hs256_token(
        "metered",
        "user-1",
        &json!({"rate_limits": {"tier": "metered"}}),
    );
    // The same token with its signature's first character changed.
    let forged = {
        let (rest, signature) = token.rsplit_once('.').unwrap();
        let first = if signature.starts_with('A') { 'B' } else { 'A' };
        format!("{rest}.{first}{}", &signature[1..])
    };
    let load = Arc::new(Load {
        faulty: AtomicBool::new(false),
        sent: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
    });
    {
        let load = load.clone();
        upstream.set_handler(move |request| {
            let fail = load.faulty.load(Ordering::SeqCst)
                && fault == Fault::ServerErrors
                && request.path.ends_with("/boom");
            ScriptedResponse::new(if fail { 500 } else { 200 }).body("ok")
        });
    }
    let mut scrapes = Vec::new();
    std::thread::scope(|scope| {
        // The metered tenant, paced: 40% of its limit, 97% in the fault.
        let (paced, metered) = (&*load, &metered);
        scope.spawn(move || {
            let load = paced;
            let mut client = Client::connect(addr);
            let mut next = std::time::Instant::now();
            while !load.stop.load(Ordering::SeqCst) {
                let share = if fault == Fault::NearLimit && load.faulty.load(Ordering::SeqCst) {
                    0.97
                } else {
                    0.40
                };
                let gap_us = (METERED_WINDOW_MS * 1000) as f64 / (METERED_LIMIT as f64 * share);
                let response =
                    client.try_send(&Request::get("/v1/contexts/projects/m").bearer(metered));
                if let Ok(r) = response {
                    assert_eq!(r.status, 200, "the metered tenant stays within its limit");
                }
                next += Duration::from_micros(gap_us as u64);
                std::thread::sleep(next.saturating_duration_since(std::time::Instant::now()));
            }
        });
        for t in 0..4 {
            let (load, token, forged) = (&load, &token, &forged);
            scope.spawn(move || {
                let mut client = Client::connect(addr);
                let mut i = t;
                while !load.stop.load(Ordering::SeqCst) {
                    let faulty = load.faulty.load(Ordering::SeqCst);
                    let (path, bearer) = match fault {
                        Fault::ServerErrors if faulty && i % 5 == 0 => {
                            ("/v1/contexts/projects/boom", token)
                        }
                        Fault::ForgedTokens if faulty && i % 4 == 0 => {
                            ("/v1/contexts/projects/a", forged)
                        }
                        _ => ("/v1/contexts/projects/a", token),
                    };
                    let _ = client.try_send(&Request::get(path).bearer(bearer));
                    load.sent.fetch_add(1, Ordering::SeqCst);
                    i += 4;
                    std::thread::sleep(Duration::from_millis(2));
                }
            });
        }
        for step in 0..HEALTHY_STEPS + faulty_steps {
            if step == HEALTHY_STEPS {
                load.faulty.store(true, Ordering::SeqCst);
                if fault == Fault::SlowUpstream {
                    upstream.set_delay(Duration::from_millis(600));
                }
            }
            std::thread::sleep(SCRAPE_EVERY);
            scrapes.push(envoy.scraped());
        }
        upstream.set_delay(Duration::ZERO);
        load.stop.store(true, Ordering::SeqCst);
    });
    println!(
        "{fault:?}: {} requests, {} scrapes",
        load.sent.load(Ordering::SeqCst),
        scrapes.len()
    );
    scrapes
}

/// promtool's input series: every ctxgate series of the scrapes, with
/// the instance label, one value per step (`_` before it existed).
fn input_series(scrapes: &[String]) -> Vec<(String, String)> {
    let line = Regex::new(r"^(ctxgate_[a-zA-Z0-9_]+)(?:\{([^}]*)\})? (\S+)$").unwrap();
    let mut series: BTreeMap<String, Vec<Option<String>>> = BTreeMap::new();
    for (step, text) in scrapes.iter().enumerate() {
        for c in text.lines().filter_map(|l| line.captures(l)) {
            let labels = match c.get(2).map(|m| m.as_str()).filter(|l| !l.is_empty()) {
                Some(l) => format!("instance=\"{INSTANCE}\",{l}"),
                None => format!("instance=\"{INSTANCE}\""),
            };
            let values = series
                .entry(format!("{}{{{labels}}}", &c[1]))
                .or_insert_with(|| vec![None; scrapes.len()]);
            values[step] = Some(c[3].to_owned());
        }
    }
    series
        .into_iter()
        .map(|(name, values)| {
            let values: Vec<String> = values
                .into_iter()
                .map(|v| v.unwrap_or_else(|| "_".into()))
                .collect();
            (name, values.join(" "))
        })
        .collect()
}

/// The alert's annotations with `{{ $labels.x }}` filled in (the SLA
/// alerts use no other template).
fn annotations(alert: &str, labels: &BTreeMap<&str, &str>) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(repo_root().join("observability/alerts.yaml")).unwrap();
    let rules = yaml::documents(&text).unwrap().remove(0);
    let rule = rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .find(|r| r["alert"] == alert)
        .unwrap_or_else(|| panic!("{alert} is not in alerts.yaml"))
        .clone();
    let template = Regex::new(r"\{\{ \$labels\.(\w+) \}\}").unwrap();
    rule["annotations"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let value = template.replace_all(v.as_str().unwrap(), |c: &regex::Captures| {
                labels[&c[1]].to_owned()
            });
            assert!(!value.contains("{{"), "{alert}: template left in {value}");
            (k.clone(), value.into_owned())
        })
        .collect()
}

/// Evaluates the SLA alerts with promtool: silent after the healthy
/// steps; `firing` (with these labels) and nothing else after all steps.
fn evaluate(scrapes: &[String], firing: &str, labels: &[(&str, &str)]) {
    let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
    let mut test = String::new();
    let rules = repo_root().join("observability/alerts.yaml");
    writeln!(test, "rule_files: [{:?}]", rules.display().to_string()).unwrap();
    writeln!(test, "evaluation_interval: {STEP_SECONDS}s").unwrap();
    writeln!(test, "tests:\n- interval: {STEP_SECONDS}s\n  input_series:").unwrap();
    for (series, values) in input_series(scrapes) {
        writeln!(test, "  - series: '{series}'\n    values: '{values}'").unwrap();
    }
    writeln!(test, "  alert_rule_test:").unwrap();
    let healthy_end = HEALTHY_STEPS as u64 * STEP_SECONDS;
    let end = (scrapes.len() as u64 - 1) * STEP_SECONDS;
    for alert in SLA_ALERTS {
        writeln!(
            test,
            "  - eval_time: {healthy_end}s\n    alertname: {alert}\n    exp_alerts: []"
        )
        .unwrap();
        if alert != firing {
            writeln!(
                test,
                "  - eval_time: {end}s\n    alertname: {alert}\n    exp_alerts: []"
            )
            .unwrap();
        }
    }
    let expected = json!([{
        "exp_labels": labels,
        "exp_annotations": annotations(firing, &labels),
    }]);
    writeln!(
        test,
        "  - eval_time: {end}s\n    alertname: {firing}\n    exp_alerts: {expected}"
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sla_test.yaml");
    std::fs::write(&file, &test).unwrap();
    let result = ctxgate_e2e::promtool(&["test", "rules"], &file);
    let report = match &result {
        Ok(report) | Err(report) => report.clone(),
    };
    println!("{firing}: promtool says:\n{report}");
    assert!(
        result.is_ok(),
        "{firing}: promtool test rules failed:\n{report}\n(test file kept: {})",
        dir.keep().join("sla_test.yaml").display()
    );
}

#[test]
fn high_error_rate_fires_on_upstream_5xx_and_not_before() {
    // A 1 m rate, then 2 m: 4 minutes, and one more.
    let scrapes = capture(Fault::ServerErrors, 20);
    evaluate(
        &scrapes,
        "CtxgateHighErrorRate",
        &[("severity", "critical"), ("instance", INSTANCE)],
    );
}

#[test]
fn auth_failure_rate_fires_on_forged_tokens_and_not_before() {
    // A 1 m rate, then 1 m: 3 minutes, and one more.
    let scrapes = capture(Fault::ForgedTokens, 16);
    evaluate(
        &scrapes,
        "CtxgateAuthFailureRate",
        &[("severity", "warning"), ("instance", INSTANCE)],
    );
}

#[test]
fn operation_latency_fires_on_a_slow_upstream_and_not_before() {
    // A 5 m rate, then 3 m: 9 minutes, and one more.
    let scrapes = capture(Fault::SlowUpstream, 40);
    evaluate(
        &scrapes,
        "CtxgateOperationLatencyHigh",
        &[
            ("severity", "warning"),
            ("operation", "read"),
            ("instance", INSTANCE),
        ],
    );
}

#[test]
fn rate_limit_utilisation_fires_for_a_tenant_near_its_limit_and_not_before() {
    // A gauge, then 5 m: 5 minutes, and one more.
    let scrapes = capture(Fault::NearLimit, 24);
    evaluate(
        &scrapes,
        "CtxgateRateLimitUtilisationHigh",
        &[
            ("severity", "warning"),
            ("notify", "tenant"),
            ("tenant", "metered"),
            ("limit", "per_window"),
        ],
    );
}
