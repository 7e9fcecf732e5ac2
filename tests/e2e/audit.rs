//! End-to-end tests of the audit trail through a real Envoy (1.40, V8,
//! two workers): the pipeline (auth, ratelimit, residency, breaker)
//! records every decision, the audit singleton (a bootstrap
//! `envoy.bootstrap.wasm` service running the same dist/ctxgate.wasm)
//! drains, batches, chains and POSTs the batches through an Envoy cluster
//! to the demo collector (`ctxgate_audit::CollectorHandle`, in process),
//! and the verifier checks the collector's file.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ctxgate_audit::{CollectorHandle, verify_file};
use ctxgate_e2e::{
    Client, Cluster, Envoy, EnvoyConfig, Request, Route, ScriptedServer, WasmFilter, WasmService,
    demo_idp, eventually,
};
use serde_json::{Value, json};

/// The filter's and the singleton's vm_id: shared data (where the
/// singleton tells workers what it took) is per vm_id.
const VM_ID: &str = "gw";

fn audit_section(extra: Value) -> Value {
    let mut section = json!({
        "singleton_vm_id": VM_ID,
        "pseudonymize_subjects": true,
        "pseudonym_key": "e2e-pseudonym-key-0123",
        "collector": {"cluster": "audit_collector", "timeout_ms": 1000},
        "batch": {"max_events": 500, "max_delay_ms": 50},
        "retry": {"initial_backoff_ms": 50, "max_backoff_ms": 500},
    });
    for (k, v) in extra.as_object().unwrap() {
        section[k] = v.clone();
    }
    section
}

/// auth -> ratelimit -> residency -> breaker, auditing, in front of direct
/// responses: `/v1/contexts/projects/broken` answers 503 (the breaker opens
/// on it), the rest 200. Tenant `limited` may make 200 requests; tenant
/// `nowhere` is pinned to a region no pool serves (residency refuses it).
fn gateway(collector: SocketAddr, audit: Value) -> Envoy {
    Envoy::start(&gateway_config(collector, audit))
}

fn gateway_config(collector: SocketAddr, audit: Value) -> EnvoyConfig {
    let filter = WasmFilter::ctxgate("gw")
        .vm_id(VM_ID)
        .stage(
            "auth",
            json!({
                "providers": [demo_idp::hs256_provider()],
                "operations": [{"name": "read", "methods": ["GET"], "path": "/v1/contexts/{context}", "action": "read"}],
            }),
        )
        .stage(
            "ratelimit",
            json!({
                "tiers": {
                    "standard": [{"name": "per_minute", "limit": 1_000_000, "window_seconds": 60}],
                    "tight": [{"name": "monthly", "limit": 200, "window_seconds": 2_678_400}],
                    "anonymous": [{"name": "per_minute", "limit": 60, "window_seconds": 60}],
                },
                "tenants": {"limited": {"tier": "tight"}},
            }),
        )
        .stage(
            "residency",
            json!({"region": "eu", "tenants": {"nowhere": "sa"},
                   "services": {"context": {"eu": ["context-eu"]}}}),
        )
        .stage(
            "breaker",
            json!({"breakers": [{"name": "broken", "select": {"header": {"name": "x-broken", "values": ["1"]}},
                "error_threshold_percent": 50, "window_seconds": 60, "min_requests": 5,
                "reset_timeout_ms": 600_000}]}),
        )
        .stage("audit", audit.clone());
    EnvoyConfig::new()
        .filter(filter)
        .route(Route::prefix("/v1/contexts/projects/broken").direct(503, "down"))
        .route(Route::prefix("/").direct(200, "ok"))
        .cluster(Cluster::new("audit_collector", [collector]))
        .bootstrap_extension(WasmService::audit_singleton(VM_ID, audit))
}

/// What the request should have left in the trail: (stage, decision) in
/// order, from the answer it got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Allowed,
    NoToken,
    Limited,
    Broken,
    Misplaced,
}

fn token(tenant: &str) -> String {
    demo_idp::hs256_token(tenant, "user-1", &json!({}))
}

/// Sends `count` requests with ids `{prefix}{i}` over `threads`
/// connections, spread over at least `spread`; returns each id's
/// expected trail.
fn traffic(
    envoy: &Envoy,
    prefix: &str,
    count: usize,
    threads: usize,
    spread: Duration,
) -> HashMap<String, Vec<(&'static str, &'static str)>> {
    let ok = token("acme");
    let limited = token("limited");
    let nowhere = token("nowhere");
    let addr = envoy.listener_addr();
    let started = Instant::now();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (ok, limited, nowhere) = (ok.clone(), limited.clone(), nowhere.clone());
                scope.spawn(move || {
                    let mut client = Client::connect(addr);
                    let mut out = Vec::new();
                    for i in (t..count).step_by(threads) {
                        let id = format!("{prefix}{i}");
                        let kind = match i % 10 {
                            0 => Kind::NoToken,
                            1 => Kind::Limited,
                            2 => Kind::Broken,
                            3 => Kind::Misplaced,
                            _ => Kind::Allowed,
                        };
                        let mut request = match kind {
                            Kind::Broken => {
                                Request::get("/v1/contexts/projects/broken").header("x-broken", "1")
                            }
                            _ => Request::get("/v1/contexts/projects/a"),
                        }
                        .header("x-request-id", &id);
                        request = match kind {
                            Kind::NoToken => request,
                            Kind::Limited => request.bearer(&limited),
                            Kind::Misplaced => request.bearer(&nowhere),
                            _ => request.bearer(&ok),
                        };
                        let response = client.send(&request);
                        let trail: Vec<(&str, &str)> = match response.status {
                            401 | 403 => vec![("auth", "deny")],
                            429 => vec![("auth", "allow"), ("ratelimit", "deny")],
                            421 => vec![
                                ("auth", "allow"),
                                ("ratelimit", "allow"),
                                ("residency", "deny"),
                            ],
                            200 => vec![
                                ("auth", "allow"),
                                ("ratelimit", "allow"),
                                ("residency", "allow"),
                                ("breaker", "allow"),
                            ],
                            // The upstream's 503 ("down") or the breaker's.
                            503 if response.text() == "down" => {
                                vec![
                                    ("auth", "allow"),
                                    ("ratelimit", "allow"),
                                    ("residency", "allow"),
                                    ("breaker", "allow"),
                                ]
                            }
                            503 => vec![
                                ("auth", "allow"),
                                ("ratelimit", "allow"),
                                ("residency", "allow"),
                                ("breaker", "deny"),
                            ],
                            other => panic!("{id}: unexpected {other}: {}", response.text()),
                        };
                        out.push((id, trail));
                        // Spread the requests over `spread`.
                        let due = spread.mul_f64((i + 1) as f64 / count as f64);
                        if let Some(wait) = due.checked_sub(started.elapsed()) {
                            std::thread::sleep(wait);
                        }
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    })
}

/// Every record in the file, in order.
fn records(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .flat_map(|line| {
            let batch: Value = serde_json::from_str(line).unwrap();
            batch["records"].as_array().unwrap().clone()
        })
        .collect()
}

/// Every event in the file: (request id, stage, decision).
fn trail(path: &Path) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for record in records(path) {
        let id = record["request_id"].as_str().unwrap_or("").to_owned();
        // [stage, decision, ms, status?, reason?]
        for d in record["decisions"].as_array().unwrap() {
            let s = |i: usize| d[i].as_str().unwrap_or("").to_owned();
            out.push((id.clone(), s(0), s(1)));
        }
    }
    out
}

/// Waits until the file holds `events` events (at most 30 s).
fn wait_for_events(path: &Path, events: usize) -> usize {
    let mut last = 0;
    eventually(Duration::from_secs(30), || {
        last = trail(path).len();
        last >= events
    });
    last
}

/// Every request's decisions are in the file exactly once, in order.
fn assert_exactly_once(path: &Path, expected: &HashMap<String, Vec<(&'static str, &'static str)>>) {
    let mut found: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for (id, stage, decision) in trail(path) {
        found.entry(id).or_default().push((stage, decision));
    }
    for (id, want) in expected {
        let got = found.remove(id).unwrap_or_default();
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(s, d)| ((*s).to_owned(), (*d).to_owned()))
            .collect();
        assert_eq!(got, want, "request {id}");
    }
    assert!(
        found.is_empty(),
        "events of requests never sent: {:?}",
        found.keys().take(5).collect::<Vec<_>>()
    );
}

fn out_file(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("audit.jsonl")
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

type Verified = Result<ctxgate_core::audit::batch::Summary, ctxgate_core::audit::batch::Broken>;

fn verify_lines(dir: &tempfile::TempDir, lines: &[String]) -> Verified {
    let path = dir.path().join("tampered.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    verify_file(&path).unwrap()
}

#[test]
fn a_mixed_run_of_10000_requests_is_in_the_trail_exactly_once_and_tampering_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = out_file(&dir);
    let collector = CollectorHandle::spawn("127.0.0.1:0".parse().unwrap(), out.clone()).unwrap();
    let envoy = gateway(collector.addr(), audit_section(json!({})));

    let expected = traffic(&envoy, "mixed-", 10_000, 4, Duration::ZERO);
    let total: usize = expected.values().map(Vec::len).sum();
    let denials = |stage: &str| {
        expected
            .values()
            .flatten()
            .filter(|(s, d)| *s == stage && *d == "deny")
            .count()
    };
    assert!(
        denials("auth") >= 1000
            && denials("ratelimit") >= 700
            && denials("residency") >= 1000
            && denials("breaker") >= 900,
        "a mix of decisions: auth {} ratelimit {} residency {} breaker {}",
        denials("auth"),
        denials("ratelimit"),
        denials("residency"),
        denials("breaker")
    );
    assert_eq!(wait_for_events(&out, total), total);
    assert_exactly_once(&out, &expected);

    let summary = verify_file(&out).unwrap().unwrap();
    assert_eq!(summary.events, total as u64);
    assert_eq!(summary.dropped, 0);
    assert_eq!(summary.chains, 1);
    assert_eq!(envoy.wasm_metric("ctxgate_audit.dropped"), 0);
    assert_eq!(envoy.wasm_metric("ctxgate_audit.events"), total as u64);

    // Subjects are pseudonymised; tokens appear only as a digest.
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(!text.contains("user-1"), "subject in clear");
    assert!(!text.contains(&token("acme")[..40]), "a token in the trail");
    let first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let event = first["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["decisions"][0][1] == "allow" && e["tenant"] == "acme")
        .unwrap();
    assert_eq!(event["subject"].as_str().unwrap().len(), 32);
    assert_eq!(event["token"].as_str().unwrap().len(), 16);
    assert_eq!(event["operation"], "read");
    assert_eq!(event["client"], "127.0.0.1", "the address Envoy computed");

    // Editing, deleting or swapping one line fails on that line.
    let original = lines(&out);
    assert!(original.len() >= 5, "{} batches", original.len());
    let mut edited = original.clone();
    edited[2] = edited[2].replacen("\"deny\"", "\"allow\"", 1);
    assert_ne!(edited[2], original[2]);
    let broken = verify_lines(&dir, &edited).unwrap_err();
    assert_eq!((broken.line, broken.seq), (3, Some(3)), "{broken}");
    assert!(broken.what.contains("edited"), "{broken}");

    let mut deleted = original.clone();
    deleted.remove(2);
    let broken = verify_lines(&dir, &deleted).unwrap_err();
    assert_eq!((broken.line, broken.seq), (3, Some(4)), "{broken}");

    let mut swapped = original.clone();
    swapped.swap(2, 3);
    let broken = verify_lines(&dir, &swapped).unwrap_err();
    assert_eq!((broken.line, broken.seq), (3, Some(4)), "{broken}");
    drop(envoy);
    drop(collector);
}

/// An edge gateway (`use_remote_address`) appends the connection's address
/// to `X-Forwarded-For` before the filters run: with `client.source`
/// `forwarded_for` and `trusted_hops` 1 the trail records that element,
/// never the ones the client wrote itself. (For a loopback peer, as here,
/// Envoy appends its own address instead of 127.0.0.1.)
#[test]
fn the_client_may_be_the_forwarded_for_element_envoy_appended() {
    let dir = tempfile::tempdir().unwrap();
    let out = out_file(&dir);
    let collector = CollectorHandle::spawn("127.0.0.1:0".parse().unwrap(), out.clone()).unwrap();
    let audit = audit_section(json!({"client": {"source": "forwarded_for", "trusted_hops": 1}}));
    let config =
        gateway_config(collector.addr(), audit).hcm_field("use_remote_address", json!(true));
    let envoy = Envoy::start(&config);
    let mut client = Client::connect(envoy.listener_addr());
    let ok = token("acme");
    for (context, forwarded_for) in [("plain", None), ("spoofed", Some("6.6.6.6, 203.0.113.9"))] {
        let mut request = Request::get(format!("/v1/contexts/projects/{context}")).bearer(&ok);
        if let Some(value) = forwarded_for {
            request = request.header("x-forwarded-for", value);
        }
        assert_eq!(client.send(&request).status, 200);
    }
    assert_eq!(wait_for_events(&out, 8), 8);
    let mut clients: Vec<(String, String)> = records(&out)
        .iter()
        .map(|r| {
            let field = |k: &str| r[k].as_str().unwrap().to_owned();
            (field("context"), field("client"))
        })
        .collect();
    clients.sort();
    let [(plain, appended), (spoofed, seen)] = clients.as_slice() else {
        panic!("two records: {clients:?}");
    };
    assert_eq!(
        (plain.as_str(), spoofed.as_str()),
        ("projects/plain", "projects/spoofed")
    );
    assert!(appended.parse::<std::net::IpAddr>().is_ok(), "{appended}");
    assert_eq!(seen, appended, "what the client wrote is not its address");
    assert!(verify_file(&out).unwrap().is_ok());
    drop(envoy);
    drop(collector);
}

/// The MCP stage decides on the request body (a `tools/call`'s tool and
/// the context it names), after the headers went on: its decisions are in
/// the trail like the others, with the refusal's status and reason.
#[test]
fn mcp_decisions_made_on_the_body_are_in_the_trail() {
    let dir = tempfile::tempdir().unwrap();
    let out = out_file(&dir);
    let collector = CollectorHandle::spawn("127.0.0.1:0".parse().unwrap(), out.clone()).unwrap();
    let audit = audit_section(json!({}));
    let filter = WasmFilter::ctxgate("gw")
        .vm_id(VM_ID)
        .stage("auth", json!({"providers": [demo_idp::hs256_provider()]}))
        .stage(
            "mcp",
            json!({"tools": [{"name": "search_context", "action": "read", "context": {"pointer": "/path"}}]}),
        )
        .stage("audit", audit.clone());
    // A real upstream: it reads the body the stage holds (a direct
    // response would answer on the headers alone).
    let upstream = ScriptedServer::start();
    let config = EnvoyConfig::new()
        .filter(filter)
        .cluster(Cluster::new("context", [upstream.addr()]))
        .route(Route::prefix("/").cluster("context"))
        .cluster(Cluster::new("audit_collector", [collector.addr()]))
        .bootstrap_extension(WasmService::audit_singleton(VM_ID, audit));
    let envoy = Envoy::start(&config);
    let bearer = format!("Bearer {}", token("acme"));
    // The token's scope is `admin:projects/*`: `teams/...` is outside it.
    for (id, path, status) in [("in", "projects/a", 200), ("out", "teams/x", 403)] {
        let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                          "params": {"name": "search_context", "arguments": {"path": path}}});
        let response = Request::post("/mcp")
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("authorization", &bearer)
            .header("x-request-id", id)
            .body(call.to_string())
            .send(envoy.listener_addr());
        assert_eq!(response.status, status, "{id}: {}", response.text());
    }
    assert_eq!(wait_for_events(&out, 4), 4);
    let mut records = records(&out);
    records.sort_by_key(|r| r["request_id"].as_str().unwrap().to_owned());
    // Each decision without its time: [stage, decision, status?, reason?].
    let decisions = |r: &Value| -> Vec<Vec<Value>> {
        let all = r["decisions"].as_array().unwrap();
        all.iter()
            .map(|d| {
                let mut d = d.as_array().unwrap().clone();
                d.remove(2);
                d
            })
            .collect()
    };
    let (allowed, refused) = (decisions(&records[0]), decisions(&records[1]));
    assert_eq!(records[0]["request_id"], "in");
    assert_eq!(records[0]["context"], "projects/a");
    assert_eq!(
        allowed,
        [
            [json!("auth"), json!("allow")],
            [json!("mcp"), json!("allow")]
        ]
    );
    assert_eq!(records[1]["request_id"], "out");
    assert_eq!(refused[0], [json!("auth"), json!("allow")]);
    assert_eq!(refused[1][..3], [json!("mcp"), json!("deny"), json!(403)]);
    assert!(
        refused[1][3].as_str().unwrap().starts_with("ctxgate_"),
        "the refusal's reason: {refused:?}"
    );
    // The stage lets the headers go on while it holds the body (a paused
    // Proxy-Wasm stream gets no body), so the upstream may see the refused
    // request's headers before Envoy resets it; never its body.
    let bodies: Vec<String> = upstream
        .requests()
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .filter(|b| !b.is_empty())
        .collect();
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    assert!(bodies[0].contains("projects/a"), "{bodies:?}");
    assert!(verify_file(&out).unwrap().is_ok());
    drop(envoy);
    drop(collector);
}

#[test]
fn the_collector_down_for_10_s_loses_nothing_within_the_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let out = out_file(&dir);
    let collector = CollectorHandle::spawn("127.0.0.1:0".parse().unwrap(), out.clone()).unwrap();
    let addr = collector.addr();
    let envoy = gateway(addr, audit_section(json!({})));

    let before = traffic(&envoy, "before-", 500, 2, Duration::ZERO);
    let before_total: usize = before.values().map(Vec::len).sum();
    assert_eq!(wait_for_events(&out, before_total), before_total);

    drop(collector);
    let down = Instant::now();
    let during = traffic(&envoy, "during-", 3_000, 2, Duration::from_secs(10));
    while down.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let backlog = envoy.wasm_metric("ctxgate_audit.backlog");
    assert!(envoy.wasm_metric("ctxgate_audit.delivery_failures") > 0);
    let collector = CollectorHandle::spawn(addr, out.clone()).unwrap();

    let after = traffic(&envoy, "after-", 500, 2, Duration::ZERO);
    let expected: HashMap<_, _> = before.into_iter().chain(during).chain(after).collect();
    let total: usize = expected.values().map(Vec::len).sum();
    assert_eq!(wait_for_events(&out, total), total, "backlog was {backlog}");
    assert_exactly_once(&out, &expected);
    let summary = verify_file(&out).unwrap().unwrap();
    assert_eq!((summary.events, summary.dropped), (total as u64, 0));
    assert_eq!(envoy.wasm_metric("ctxgate_audit.dropped"), 0);
    assert!(backlog > 1000, "events waited in the backlog: {backlog}");
    drop(envoy);
    drop(collector);
}

#[test]
fn beyond_the_backlog_the_overflow_is_counted_and_the_verifier_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = out_file(&dir);
    let collector = CollectorHandle::spawn("127.0.0.1:0".parse().unwrap(), out.clone()).unwrap();
    let addr = collector.addr();
    let envoy = gateway(addr, audit_section(json!({"backlog": {"max_events": 300}})));
    drop(collector);

    let expected = traffic(&envoy, "over-", 1_000, 2, Duration::ZERO);
    let total: usize = expected.values().map(Vec::len).sum();
    // Once the singleton has taken every event, the count is final.
    let mut received = 0;
    assert!(
        eventually(Duration::from_secs(10), || {
            received = envoy.wasm_metric("ctxgate_audit.received");
            received == total as u64
        }),
        "received {received} of {total}"
    );
    let dropped = envoy.wasm_metric("ctxgate_audit.dropped");
    assert!(
        dropped > 0 && dropped < total as u64,
        "dropped {dropped} of {total}"
    );
    let collector = CollectorHandle::spawn(addr, out.clone()).unwrap();
    let kept = total - usize::try_from(dropped).unwrap();
    assert_eq!(wait_for_events(&out, kept), kept);
    // The loss goes out with the next batch after it.
    let mut summary = Default::default();
    eventually(Duration::from_secs(10), || {
        summary = verify_file(&out).unwrap().unwrap();
        summary.dropped >= dropped
    });
    assert_eq!(
        summary.dropped, dropped,
        "the loss is recorded in the chain"
    );
    assert_eq!(summary.events + summary.dropped, total as u64);
    assert_eq!(
        envoy.wasm_metric("ctxgate_audit.dropped_backlog_full"),
        dropped
    );
    // Nothing kept is duplicated.
    let mut seen = std::collections::HashSet::new();
    for event in trail(&out) {
        assert!(seen.insert(event.clone()), "duplicate {event:?}");
    }
    drop(envoy);
    drop(collector);
}
