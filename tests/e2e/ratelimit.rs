//! End-to-end tests of the rate-limit filter through a real Envoy (1.40,
//! V8): auth -> ratelimit -> router, so buckets are keyed by the tenant the
//! auth filter verified (Envoy filter state `ctxgate.request`), in front of
//! the demo echo upstream, a scripted upstream or a direct response.
//!
//! Global limiting runs the real `ctxgate-rls` release binary (in memory or
//! on a throwaway `redis-server`) as a process; outages stop it, or replace
//! it on its port with an RLS that answers after 500 ms.
//!
//! Tokens are HS256, signed with the demo HMAC secret and trusted inline:
//! the cheapest to mint and verify. Limits that must not refill during a
//! test use a 31-day window with a large burst (`monthly`), so the counts
//! asserted are exact.
//!
//! Run with `--nocapture` to see the measured figures (global accuracy,
//! failure-mode latencies, memory).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Barrier;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ctxgate_demo::upstream::ShutdownHandle;
use ctxgate_e2e::{
    Client, Cluster, Envoy, EnvoyConfig, Redis, Request, Response, Rls, Route, ScriptedServer,
    SlowRls, WasmFilter, demo_idp, eventually,
};
use serde_json::{Value, json};

/// A read (cost 1).
const READ: &str = "/v1/contexts/projects/a";
/// A graph traversal (cost 10).
const GRAPH: &str = "/v1/graph/traverse?context=projects/a";

// --- Tokens, filters, gateways ---------------------------------------------

/// An HS256 token of `user-1` at `tenant`, with every right on
/// `projects/*` and these extra claims (`rate_limits`).
fn token(tenant: &str, extra: Value) -> String {
    demo_idp::hs256_token(tenant, "user-1", &extra)
}

fn auth() -> WasmFilter {
    WasmFilter::new("ctxgate_auth").config(json!({
        "providers": [demo_idp::hs256_provider()],
        "operations": [
            {"name": "read", "methods": ["GET", "HEAD"], "path": "/v1/contexts/{context}", "action": "read"},
            {"name": "write", "methods": ["PUT", "POST", "PATCH"], "path": "/v1/contexts/{context}", "action": "write"},
            {"name": "graph_traversal", "methods": ["POST"], "path": "/v1/graph/traverse", "context_param": "context", "action": "read"},
        ],
    }))
}

fn ratelimit(config: Value) -> WasmFilter {
    WasmFilter::new("ctxgate_ratelimit").config(config)
}

/// A limit that does not refill noticeably during a test: `capacity`
/// read-equivalents, refilled at 100 per 31 days (0.04 milli-tokens/s).
fn monthly(capacity: u64) -> Value {
    json!([{"name": "monthly", "limit": 100, "window_seconds": 2_678_400, "burst": capacity}])
}

fn per(name: &str, limit: u64, window_seconds: u64) -> Value {
    json!([{"name": name, "limit": limit, "window_seconds": window_seconds}])
}

/// `tiers` with `standard` (the default tier) as given and a small
/// `anonymous` tier (the config requires both).
fn tiers(standard: Value) -> Value {
    json!({"standard": standard, "anonymous": per("per_minute", 60, 60)})
}

/// auth -> ratelimit -> router to `upstream`.
fn gateway(ratelimit_config: Value, upstream: SocketAddr) -> EnvoyConfig {
    EnvoyConfig::new()
        .filter(auth())
        .filter(ratelimit(ratelimit_config))
        .route(Route::prefix("/").cluster("backend"))
        .cluster(Cluster::new("backend", [upstream]))
}

/// The demo echo upstream (honours `x-demo-delay-ms`, echoes headers).
fn echo_upstream() -> (SocketAddr, ShutdownHandle) {
    ctxgate_demo::upstream::spawn_in_thread("127.0.0.1:0", "backend").unwrap()
}

fn read(token: &str) -> Request {
    Request::get(READ).bearer(token)
}

fn graph(token: &str) -> Request {
    Request::post(GRAPH).bearer(token).body("{}")
}

/// A write of `bytes` bytes of payload (cost 2 times the payload band).
fn write(token: &str, bytes: usize) -> Request {
    Request::new("PUT", READ)
        .bearer(token)
        .body(vec![b'x'; bytes])
}

/// `wasmcustom.ctxgate_ratelimit.<name>`.
fn metric(envoy: &Envoy, name: &str) -> u64 {
    envoy.wasm_metric(&format!("ctxgate_ratelimit.{name}"))
}

/// Every rate-limit metric with a value, for messages and output.
fn metrics(envoy: &Envoy) -> BTreeMap<String, u64> {
    envoy
        .stats_matching(r"^wasmcustom\.ctxgate_ratelimit\.")
        .into_iter()
        .filter(|(_, v)| *v > 0)
        .map(|(k, v)| {
            (
                k.trim_start_matches("wasmcustom.ctxgate_ratelimit.")
                    .to_owned(),
                v,
            )
        })
        .collect()
}

#[track_caller]
fn remaining(response: &Response) -> u64 {
    response
        .header("x-ratelimit-remaining")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no x-ratelimit-remaining: {} {:?} {:?}",
                response.status,
                response.headers,
                response.text()
            )
        })
}

#[track_caller]
fn ok(response: Response) -> Response {
    response.expect_status(200)
}

// --- Exact accounting under concurrency -------------------------------------

#[test]
fn exactly_n_times_c_tokens_are_consumed_by_n_concurrent_requests_of_cost_c() {
    const CAPACITY: u64 = 100_000;
    const COST: u64 = 10;
    const THREADS: u64 = 40;
    const PER_THREAD: u64 = 10;
    const N: u64 = THREADS * PER_THREAD;
    let envoy = Envoy::start(
        &EnvoyConfig::new()
            .concurrency(4)
            .filter(auth())
            .filter(ratelimit(json!({"tiers": tiers(monthly(CAPACITY))})))
            .route(Route::prefix("/").direct(200, "ok")),
    );
    let token = token("concurrent", json!({}));
    let addr = envoy.listener_addr();
    let before = envoy.worker_connections(4);

    // N graph traversals at once, each on its own connection so that all
    // four workers (four wasm VMs) update the one shared bucket.
    let barrier = Barrier::new(usize::try_from(THREADS).unwrap());
    let answers: Vec<(u16, Option<u64>)> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..THREADS)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    (0..PER_THREAD)
                        .map(|_| {
                            let r = graph(&token).send(addr);
                            let left = r
                                .header("x-ratelimit-remaining")
                                .and_then(|v| v.parse().ok());
                            (r.status, left)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect()
    });
    assert!(
        answers.iter().all(|(status, _)| *status == 200),
        "every request fits: {:?}",
        answers
            .iter()
            .filter(|(s, _)| *s != 200)
            .collect::<Vec<_>>()
    );
    // Each admission saw the bucket right after its own take: the values
    // are exactly L - c, L - 2c, ..., L - Nc, each once.
    let mut seen: Vec<u64> = answers.iter().map(|(_, left)| left.unwrap()).collect();
    seen.sort_unstable();
    let expected: Vec<u64> = (1..=N).rev().map(|k| CAPACITY - k * COST).collect();
    assert_eq!(seen, expected, "remaining values after N concurrent takes");

    let last = ok(graph(&token).send(addr));
    assert_eq!(remaining(&last), CAPACITY - (N + 1) * COST);
    assert_eq!(
        metric(&envoy, "cost"),
        (N + 1) * COST,
        "{:?}",
        metrics(&envoy)
    );
    assert_eq!(metric(&envoy, "allowed.local"), N + 1);
    assert_eq!(metric(&envoy, "bucket.contended"), 0);
    assert_eq!(metric(&envoy, "allowed.contention"), 0);
    let after = envoy.worker_connections(4);
    assert!(
        before.iter().zip(&after).all(|(b, a)| a > b),
        "every worker took part: {before:?} -> {after:?}"
    );
}

// --- Costs and limits --------------------------------------------------------

#[test]
fn a_request_is_charged_its_operation_s_price_times_its_payload_band() {
    let (upstream, _upstream) = echo_upstream();
    let envoy = Envoy::start(&gateway(
        json!({"tiers": tiers(monthly(100_000))}),
        upstream,
    ));
    let token = token("costs", json!({}));
    let addr = envoy.listener_addr();
    let mut client = Client::connect(addr);
    let mut last = remaining(&ok(client.send(&read(&token))));
    let mut charged = 1;
    // (what, request, expected cost)
    let cases: [(&str, Request, u64); 7] = [
        ("read", read(&token), 1),
        ("graph traversal", graph(&token), 10),
        ("small write", write(&token, 10), 2),
        ("200 KB write (x2)", write(&token, 200 * 1024), 4),
        ("2 MB write (x4)", write(&token, 2 * 1024 * 1024), 8),
        (
            "200 KB graph traversal (x2)",
            Request::post(GRAPH)
                .bearer(&token)
                .body(vec![b' '; 200 * 1024]),
            20,
        ),
        ("read again", read(&token), 1),
    ];
    for (what, request, cost) in cases {
        let response = ok(client.send(&request));
        let now = remaining(&response);
        assert_eq!(last - now, cost, "{what} should cost {cost}");
        last = now;
        charged += cost;
    }
    // The upstream really received the payloads it was charged for.
    let echoed = ok(client.send(&write(&token, 2 * 1024 * 1024))).json();
    assert_eq!(echoed["body_bytes"], 2 * 1024 * 1024);
    charged += 8;
    assert_eq!(metric(&envoy, "cost"), charged, "{:?}", metrics(&envoy));
    assert_eq!(
        remaining(&ok(client.send(&read(&token)))),
        100_000 - charged - 1
    );
}

#[test]
fn the_token_s_rate_limits_claim_or_tier_chooses_the_tenant_s_limit() {
    let (upstream, _upstream) = echo_upstream();
    let envoy = Envoy::start(&gateway(
        json!({
            "use_token_limits": true,
            "max_token_limit": 10_000,
            "tiers": {
                "standard": per("per_minute", 1200, 60),
                "premium": per("per_minute", 6000, 60),
                "anonymous": per("per_minute", 60, 60),
            },
            "tenants": {"bigco": {"limits": per("daily", 50_000, 86_400)}},
        }),
        upstream,
    ));
    let addr = envoy.listener_addr();
    let limit_of = |tenant: &str, claims: Value| {
        let response = ok(graph(&token(tenant, claims)).send(addr));
        (
            response.header("x-ratelimit-limit").unwrap().to_owned(),
            remaining(&response),
        )
    };
    let cases = [
        ("plain", json!({}), "1200, 1200;w=60", 1190),
        (
            "gold",
            json!({"rate_limits": {"tier": "premium"}}),
            "6000, 6000;w=60",
            5990,
        ),
        (
            "hourly",
            json!({"rate_limits": {"context_operations_per_hour": 500}}),
            "500, 500;w=3600",
            490,
        ),
        // requests_per_minute counts requests: a traversal takes 1, not 10.
        (
            "rpm",
            json!({"rate_limits": {"requests_per_minute": 50}}),
            "50, 50;w=60",
            49,
        ),
        // Capped at max_token_limit.
        (
            "greedy",
            json!({"rate_limits": {"requests_per_minute": 5_000_000}}),
            "10000, 10000;w=60",
            9999,
        ),
        // A tenant override, no claim.
        ("bigco", json!({}), "50000, 50000;w=86400", 49_990),
    ];
    for (tenant, claims, limit, left) in cases {
        assert_eq!(
            limit_of(tenant, claims.clone()),
            (limit.to_owned(), left),
            "tenant {tenant} with {claims}"
        );
    }
    // The request-counted limit keeps counting 1 per traversal.
    let (_, again) = limit_of("rpm", json!({"rate_limits": {"requests_per_minute": 50}}));
    assert!(
        (48..=49).contains(&again),
        "rpm: second traversal left {again}"
    );
}

// --- Keys ---------------------------------------------------------------------

#[test]
fn a_client_naming_another_tenant_in_x_context_tenant_is_charged_to_its_own() {
    let (upstream, _upstream) = echo_upstream();
    let envoy = Envoy::start(&gateway(json!({"tiers": tiers(monthly(1000))}), upstream));
    let addr = envoy.listener_addr();
    let acme = token("acme", json!({}));
    let globex = token("globex", json!({}));

    for expected in [990, 980, 970] {
        let response = ok(graph(&acme).header("x-context-tenant", "globex").send(addr));
        assert_eq!(remaining(&response), expected, "acme's bucket pays");
        assert_eq!(
            response.json()["headers"]["x-context-tenant"],
            "acme",
            "the upstream sees the verified tenant"
        );
    }
    let response = ok(read(&globex).send(addr));
    assert_eq!(remaining(&response), 999, "globex's bucket was untouched");
    assert_eq!(remaining(&ok(read(&acme).send(addr))), 969);
    assert_eq!(metric(&envoy, "cost"), 32);
}

// --- Refusals -------------------------------------------------------------------

#[test]
fn over_the_limit_a_client_gets_429_with_retry_after_and_the_limit_it_exceeded() {
    let upstream = ScriptedServer::start();
    let envoy = Envoy::start(
        &gateway(
            json!({"tiers": {
                "standard": monthly(100_000),
                "free": per("per_minute", 3, 60),
                "anonymous": per("per_minute", 60, 60),
            }}),
            upstream.addr(),
        )
        .access_log("%REQ(:METHOD)% %RESPONSE_CODE% %RESPONSE_CODE_DETAILS%\n"),
    );
    let addr = envoy.listener_addr();
    let tiny = token("tiny", json!({"rate_limits": {"tier": "free"}}));

    // Allowed responses carry the headers too.
    for expected in [2, 1, 0] {
        let response = ok(read(&tiny).send(addr));
        assert_eq!(response.header("x-ratelimit-limit"), Some("3, 3;w=60"));
        assert_eq!(remaining(&response), expected);
        let reset: u64 = response
            .header("x-ratelimit-reset")
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&reset), "reset {reset}");
    }
    assert_eq!(upstream.hits(), 3);

    let refused = read(&tiny).send(addr);
    assert_eq!(
        refused.status,
        429,
        "{:?} {}",
        refused.headers,
        refused.text()
    );
    let retry: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    // One token comes back every 20 s.
    assert!((1..=20).contains(&retry), "Retry-After {retry}");
    assert_eq!(refused.header("x-ratelimit-limit"), Some("3, 3;w=60"));
    assert_eq!(refused.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(
        refused.header("x-ratelimit-reset"),
        Some(retry.to_string().as_str())
    );
    assert_eq!(refused.header("content-type"), Some("application/json"));
    let body = refused.json();
    assert_eq!(body["error"], "rate_limited");
    assert_eq!(
        body["message"],
        "tenant tiny exceeded its per_minute limit of 3 read-equivalents per 60 s"
    );
    assert_eq!(
        body["limit"],
        json!({"name": "per_minute", "limit": 3, "window_seconds": 60, "counts": "read-equivalents"})
    );
    assert_eq!(body["cost"], 1);
    assert_eq!(body["retry_after_seconds"], retry);

    // The body names the refused request's own cost.
    let refused = graph(&tiny).send(addr);
    assert_eq!(refused.status, 429);
    assert_eq!(refused.json()["cost"], 10);

    // gRPC: HTTP 200 with grpc-status 8 (RESOURCE_EXHAUSTED).
    let grpc = Request::post(READ)
        .bearer(&tiny)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(vec![0u8; 5])
        .send(addr);
    assert_eq!(grpc.status, 200, "{:?}", grpc.headers);
    assert_eq!(grpc.header("grpc-status"), Some("8"), "{:?}", grpc.headers);
    assert!(
        grpc.header("grpc-message")
            .is_some_and(|m| m.contains("tiny")),
        "{:?}",
        grpc.headers
    );

    assert_eq!(
        upstream.hits(),
        3,
        "refused requests never reach the upstream"
    );
    assert_eq!(metric(&envoy, "refused.local_limit"), 3);
    assert_eq!(metric(&envoy, "allowed.local"), 3);
    assert!(
        eventually(Duration::from_secs(5), || {
            let log = envoy.stdout();
            log.lines()
                .filter(|l| *l == "GET 429 ctxgate_ratelimit_refused{local_limit}")
                .count()
                == 1
                && log
                    .lines()
                    .filter(|l| *l == "POST 200 ctxgate_ratelimit_refused{local_limit}")
                    .count()
                    == 1
        }),
        "access log:\n{}",
        envoy.stdout()
    );
}

// --- Global limiting -------------------------------------------------------------

/// RLS limits of the global test: only `global-phase` has a global limit.
const GLOBAL_LIMIT: u64 = 2000;

/// Waits until at least `margin` is left before the current RLS window
/// (aligned to the unit, like envoyproxy/ratelimit) ends.
fn stay_clear_of_window_end(window: Duration, margin: Duration) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let into = Duration::from_millis(u64::try_from(now.as_millis() % window.as_millis()).unwrap());
    let left = window - into;
    if left < margin {
        println!("waiting {left:?} for the RLS window to roll over");
        std::thread::sleep(left + Duration::from_secs(2));
    }
}

/// Statuses of `total` reads split evenly over `targets` and
/// `threads_per_target` keep-alive connections each, all at once.
fn drive(
    targets: &[SocketAddr],
    token: &str,
    total: u64,
    threads_per_target: u64,
) -> Vec<BTreeMap<u16, u64>> {
    let per_thread = total / (targets.len() as u64 * threads_per_target);
    let barrier = Barrier::new(targets.len() * usize::try_from(threads_per_target).unwrap());
    std::thread::scope(|s| {
        let handles: Vec<Vec<_>> = targets
            .iter()
            .map(|&addr| {
                (0..threads_per_target)
                    .map(|_| {
                        let barrier = &barrier;
                        s.spawn(move || {
                            let mut client = Client::connect(addr);
                            let request = read(token);
                            barrier.wait();
                            let mut statuses = BTreeMap::new();
                            for _ in 0..per_thread {
                                *statuses.entry(client.send(&request).status).or_insert(0) += 1;
                            }
                            statuses
                        })
                    })
                    .collect()
            })
            .collect();
        handles
            .into_iter()
            .map(|threads| {
                let mut sum = BTreeMap::new();
                for t in threads {
                    for (status, n) in t.join().unwrap() {
                        *sum.entry(status).or_insert(0) += n;
                    }
                }
                sum
            })
            .collect()
    })
}

/// Two gateways (auth -> ratelimit, hierarchical mode) with one RLS replica
/// each, both replicas counting in one Redis, take 6000 reads of one tenant
/// at once: together they admit the RLS limit (+-2%). The same load with
/// local buckets only (the limit on each gateway) admits twice as much.
#[test]
fn two_gateways_sharing_one_rls_admit_the_global_limit_and_twice_as_much_without_it() {
    const LOAD: u64 = 6000;
    const THREADS: u64 = 4;
    stay_clear_of_window_end(Duration::from_secs(3600), Duration::from_secs(180));
    let redis = Redis::start();
    let limits = format!(
        "domain: ctxgate\ndescriptors:\n  - key: tenant\n    value: global-phase\n    \
         rate_limit: {{unit: hour, requests_per_unit: {GLOBAL_LIMIT}, name: global-phase}}\n"
    );
    // Two RLS replicas counting in the one Redis; each gateway has its own.
    let replicas = [
        Rls::start(&limits, Some(&redis.url())),
        Rls::start(&limits, Some(&redis.url())),
    ];
    let config = |rls: Option<&Rls>| {
        let mut config = json!({
            "tiers": tiers(per("per_hour", 100_000, 3600)),
            "tenants": {"local-phase": {"limits": per("per_hour", GLOBAL_LIMIT, 3600)}},
        });
        let mut envoy = EnvoyConfig::new()
            .filter(auth())
            .route(Route::prefix("/").direct(200, "ok"));
        if let Some(rls) = rls {
            envoy = envoy.cluster(rls.cluster("rls"));
            // A generous deadline: this test measures accuracy, not outages.
            config["global"] = json!({
                "mode": "hierarchical",
                "cluster": "rls",
                "sync_threshold": 0.8,
                "gateways": 2,
                "sync_interval_ms": 100,
                "timeout_ms": 1000,
            });
        }
        envoy.filter(ratelimit(config))
    };

    // Phase 1: global limiting.
    let gateways = [
        Envoy::start(&config(Some(&replicas[0]))),
        Envoy::start(&config(Some(&replicas[1]))),
    ];
    let targets: Vec<SocketAddr> = gateways.iter().map(Envoy::listener_addr).collect();
    let started = Instant::now();
    let global = drive(&targets, &token("global-phase", json!({})), LOAD, THREADS);
    let global_elapsed = started.elapsed();
    let admitted_global: u64 = global
        .iter()
        .map(|s| s.get(&200).copied().unwrap_or(0))
        .sum();
    println!(
        "global limit {GLOBAL_LIMIT}/hour, {LOAD} requests over 2 gateways in {global_elapsed:?} \
         ({:.0} req/s): {admitted_global} admitted ({:+.2}%), per gateway {global:?}",
        LOAD as f64 / global_elapsed.as_secs_f64(),
        (admitted_global as f64 - GLOBAL_LIMIT as f64) * 100.0 / GLOBAL_LIMIT as f64
    );
    for (i, gateway) in gateways.iter().enumerate() {
        println!("  gateway {i} metrics: {:?}", metrics(gateway));
    }
    for (i, statuses) in global.iter().enumerate() {
        assert!(
            statuses.keys().all(|s| *s == 200 || *s == 429),
            "gateway {i}: {statuses:?}"
        );
        assert!(
            statuses.get(&200).is_some_and(|n| *n > 0),
            "gateway {i} admitted some"
        );
    }
    for gateway in &gateways {
        assert_eq!(
            metric(gateway, "rls.timeout") + metric(gateway, "rls.failed"),
            0,
            "the RLS answered every call: {:?}",
            metrics(gateway)
        );
        assert!(metric(gateway, "sync.ok") > 0, "{:?}", metrics(gateway));
        assert!(
            metric(gateway, "refused.global_limit") > 0,
            "{:?}",
            metrics(gateway)
        );
    }
    drop(gateways);
    drop(replicas);
    drop(redis);

    // Phase 2: the same load, local buckets only (2000/hour on each).
    let gateways = [Envoy::start(&config(None)), Envoy::start(&config(None))];
    let targets: Vec<SocketAddr> = gateways.iter().map(Envoy::listener_addr).collect();
    let started = Instant::now();
    let local = drive(&targets, &token("local-phase", json!({})), LOAD, THREADS);
    let local_elapsed = started.elapsed();
    let admitted_local: u64 = local
        .iter()
        .map(|s| s.get(&200).copied().unwrap_or(0))
        .sum();
    println!(
        "local limits only, {GLOBAL_LIMIT}/hour per gateway, {LOAD} requests in {local_elapsed:?}: \
         {admitted_local} admitted, per gateway {local:?}"
    );
    // Each bucket admits its 2000 plus what refills meanwhile (0.56/s).
    let refill = 2 * (local_elapsed.as_secs() * GLOBAL_LIMIT / 3600 + 1);
    assert!(
        (2 * GLOBAL_LIMIT..=2 * GLOBAL_LIMIT + refill).contains(&admitted_local),
        "admitted {admitted_local} without global limiting"
    );
    println!(
        "global/local admitted: {admitted_global} / {admitted_local} = {:.2}",
        admitted_global as f64 / admitted_local as f64
    );
    // Checked last, so that both figures are printed either way.
    let tolerance = GLOBAL_LIMIT / 50;
    assert!(
        admitted_global.abs_diff(GLOBAL_LIMIT) <= tolerance,
        "with global limiting {admitted_global} admitted, expected {GLOBAL_LIMIT} +- 2%"
    );
}

// --- RLS outages -------------------------------------------------------------------

/// Deadline of every RLS call in the outage tests.
const RLS_TIMEOUT_MS: u64 = 20;
/// What a request may take beyond the deadline on this loaded machine.
const LATENCY_MARGIN_MS: u64 = 100;
/// Requests per outage phase.
const OUTAGE_REQUESTS: u64 = 10;

const OUTAGE_LIMITS: &str = "domain: ctxgate\ndescriptors:\n  - key: tenant\n    \
                             rate_limit: {unit: hour, requests_per_unit: 100000, name: tenants}\n";

/// What the client sees for a request during an outage; `local_limit` is
/// the local bucket's `x-ratelimit-limit`.
#[track_caller]
fn assert_outcome(mode: &str, response: &Response, local_limit: &str) {
    match mode {
        "local_fallback" => {
            assert_eq!(response.status, 200, "{}", response.text());
            // The local bucket's view, not the RLS's.
            assert_eq!(response.header("x-ratelimit-limit"), Some(local_limit));
        }
        "allow" => {
            assert_eq!(response.status, 200, "{}", response.text());
            assert_eq!(response.header("x-ratelimit-limit"), None);
        }
        "deny" => {
            assert_eq!(response.status, 503, "{:?}", response.headers);
            assert_eq!(response.json()["error"], "rate_limit_unavailable");
            assert_eq!(response.header("x-upstream"), None);
        }
        other => panic!("unknown mode {other}"),
    }
}

/// Sends `OUTAGE_REQUESTS` reads on one connection, checks each outcome,
/// returns the slowest client latency.
fn outage_phase(envoy: &Envoy, mode: &str, token: &str) -> Duration {
    let mut client = Client::connect(envoy.listener_addr());
    let request = read(token);
    let mut slowest = Duration::ZERO;
    for _ in 0..OUTAGE_REQUESTS {
        let started = Instant::now();
        let response = client.send(&request);
        slowest = slowest.max(started.elapsed());
        assert_outcome(mode, &response, "1000, 1000;w=3600");
    }
    slowest
}

/// The counters an outage moves, as a snapshot.
fn outage_counters(envoy: &Envoy, mode: &str) -> [u64; 4] {
    [
        metric(envoy, &format!("failure_mode.{mode}")),
        metric(envoy, "rls.failed"),
        metric(envoy, "rls.timeout"),
        metric(envoy, "rls.sent"),
    ]
}

/// One gateway in `always` mode with `failure_mode: mode`: the RLS decides,
/// is stopped (connections refused), replaced by one answering after
/// 500 ms, then restarted.
fn rls_outage(mode: &str) {
    let (upstream, _upstream) = echo_upstream();
    let mut rls = Rls::start(OUTAGE_LIMITS, None);
    let envoy = Envoy::start(
        &gateway(
            json!({
                "tiers": tiers(per("per_hour", 1000, 3600)),
                "tenants": {"tiny": {"limits": per("per_hour", 2, 3600)}},
                "global": {
                    "mode": "always",
                    "cluster": "rls",
                    "timeout_ms": RLS_TIMEOUT_MS,
                    "failure_mode": mode,
                    "deny_status": 503,
                },
            }),
            upstream,
        )
        .cluster(rls.cluster("rls")),
    );
    let addr = envoy.listener_addr();
    let acme = token("acme", json!({}));
    let bound = Duration::from_millis(RLS_TIMEOUT_MS + LATENCY_MARGIN_MS);

    // Healthy: the RLS decides and its limit is reported (the first call
    // opens the HTTP/2 connection and may miss the 20 ms deadline).
    let decided_by_rls = |envoy: &Envoy| {
        let before = metric(envoy, "allowed.rls");
        let response = read(&acme).send(addr);
        // The headers describe the tightest limit: the local 1000 per hour
        // (999 left), not the RLS's 100000.
        metric(envoy, "allowed.rls") > before
            && response.status == 200
            && response.header("x-ratelimit-limit") == Some("1000, 1000;w=3600")
    };
    assert!(
        eventually(Duration::from_secs(10), || decided_by_rls(&envoy)),
        "the RLS never decided: {:?}",
        metrics(&envoy)
    );

    // (a) Stopped: connections are refused.
    rls.stop();
    let before = outage_counters(&envoy, mode);
    let stopped_max = outage_phase(&envoy, mode, &acme);
    let after = outage_counters(&envoy, mode);
    println!("failure_mode {mode}, RLS stopped: slowest request {stopped_max:?}");
    assert_eq!(after[0] - before[0], OUTAGE_REQUESTS, "failure_mode.{mode}");
    assert_eq!(
        (after[1] - before[1]) + (after[2] - before[2]),
        OUTAGE_REQUESTS,
        "rls.failed + rls.timeout: {before:?} -> {after:?}"
    );
    assert_eq!(
        after[3] - before[3],
        OUTAGE_REQUESTS,
        "every request asked the RLS (mode always)"
    );
    assert!(
        after[1] > before[1],
        "a refused connection fails the call: {after:?}"
    );
    assert!(
        stopped_max <= bound,
        "RLS stopped: a request took {stopped_max:?}"
    );

    // (b) Slow: the port answers, 500 ms late.
    let slow = SlowRls::start_on(rls.addr(), Duration::from_millis(500));
    let before = outage_counters(&envoy, mode);
    let slow_max = outage_phase(&envoy, mode, &acme);
    let after = outage_counters(&envoy, mode);
    println!(
        "failure_mode {mode}, RLS 500 ms late: slowest request {slow_max:?}, \
         rls.timeout +{} rls.failed +{}",
        after[2] - before[2],
        after[1] - before[1]
    );
    assert!(slow.calls() > 0, "the calls reached the slow RLS");
    assert_eq!(after[0] - before[0], OUTAGE_REQUESTS, "failure_mode.{mode}");
    assert_eq!(
        (after[1] - before[1]) + (after[2] - before[2]),
        OUTAGE_REQUESTS,
        "rls.failed + rls.timeout: {before:?} -> {after:?}"
    );
    assert_eq!(
        after[3] - before[3],
        OUTAGE_REQUESTS,
        "every request asked the RLS (mode always)"
    );
    assert!(slow_max <= bound, "RLS slow: a request took {slow_max:?}");

    // The local bucket still applies: once it is empty the request is
    // refused without asking the RLS.
    let tiny = token("tiny", json!({}));
    let mut client = Client::connect(addr);
    for _ in 0..2 {
        assert_outcome(mode, &client.send(&read(&tiny)), "2, 2;w=3600");
    }
    let sent = metric(&envoy, "rls.sent");
    let refused = client.send(&read(&tiny));
    assert_eq!(refused.status, 429, "{}", refused.text());
    assert_eq!(refused.json()["limit"]["limit"], 2);
    assert_eq!(metric(&envoy, "rls.sent"), sent, "no RLS call for it");
    assert_eq!(metric(&envoy, "refused.local_limit"), 1);

    // Back: the RLS decides again.
    drop(slow);
    rls.restart();
    assert!(
        eventually(Duration::from_secs(10), || decided_by_rls(&envoy)),
        "the RLS never decided again: {:?}",
        metrics(&envoy)
    );
    println!("failure_mode {mode}: {:?}", metrics(&envoy));
}

#[test]
fn with_failure_mode_local_fallback_an_unreachable_or_late_rls_leaves_the_local_bucket_in_charge() {
    rls_outage("local_fallback");
}

#[test]
fn with_failure_mode_allow_an_unreachable_or_late_rls_lets_requests_through() {
    rls_outage("allow");
}

#[test]
fn with_failure_mode_deny_an_unreachable_or_late_rls_refuses_with_deny_status() {
    rls_outage("deny");
}

// --- Adaptive limits --------------------------------------------------------------

/// ratelimit -> router to the echo upstream; clients are keyed by
/// the address their (trusted) proxy put in `x-forwarded-for` (anonymous
/// tier: 1000 per hour).
fn adaptive_gateway(adaptive: Value, upstream: SocketAddr) -> Envoy {
    Envoy::start(
        &EnvoyConfig::new()
            .filter(ratelimit(json!({
                "anonymous": {"client": {"source": "forwarded_for", "trusted_hops": 1}},
                "tiers": {"anonymous": per("per_hour", 1000, 3600), "standard": per("per_hour", 1000, 3600)},
                "adaptive": adaptive,
            })))
            .route(Route::prefix("/").cluster("backend"))
            .cluster(Cluster::new("backend", [upstream])),
    )
}

/// A request of client `id` that the upstream answers after `delay_ms`,
/// on a fresh connection (so the workers share the traffic).
fn delayed(addr: SocketAddr, id: u64, delay_ms: u64) -> Response {
    Request::get("/work")
        .header("x-forwarded-for", &client_ip(id))
        .header("x-demo-delay-ms", &delay_ms.to_string())
        .send(addr)
}

#[test]
fn a_slow_upstream_shrinks_the_limits_and_a_fast_one_restores_them() {
    let (upstream, _upstream) = echo_upstream();
    let envoy = adaptive_gateway(
        json!({"latency_threshold_ms": 100, "publish_interval_ms": 50}),
        upstream,
    );
    let addr = envoy.listener_addr();
    let gauge = |name: &str| metric(&envoy, &format!("adaptive.{name}"));

    let fast = ok(delayed(addr, 1, 0));
    assert_eq!(fast.header("x-ratelimit-limit"), Some("1000, 1000;w=3600"));
    assert!(eventually(Duration::from_secs(5), || gauge(
        "multiplier_permille"
    ) == 1000));

    // Slow responses: the EWMA passes 100 ms and limits shrink to 0.6x.
    std::thread::scope(|s| {
        for _ in 0..6 {
            s.spawn(|| ok(delayed(addr, 1, 300)));
        }
    });
    let mut shrunk = None;
    assert!(
        eventually(Duration::from_secs(10), || {
            let r = ok(delayed(addr, 1, 300));
            shrunk = r.header("x-ratelimit-limit").map(str::to_owned);
            shrunk.as_deref() == Some("600, 600;w=3600")
        }),
        "limit while slow: {shrunk:?}; {:?}",
        metrics(&envoy)
    );
    assert_eq!(gauge("multiplier_permille"), 600, "{:?}", metrics(&envoy));
    assert!(gauge("latency_ewma_ms") > 100, "{:?}", metrics(&envoy));
    let slow_ewma = gauge("latency_ewma_ms");

    // Fast again: the EWMA falls below the threshold and limits recover.
    let mut restored = None;
    assert!(
        eventually(Duration::from_secs(20), || {
            let r = ok(delayed(addr, 1, 0));
            restored = r.header("x-ratelimit-limit").map(str::to_owned);
            restored.as_deref() == Some("1000, 1000;w=3600")
        }),
        "limit after recovery: {restored:?}; {:?}",
        metrics(&envoy)
    );
    assert!(
        eventually(Duration::from_secs(5), || gauge("multiplier_permille")
            == 1000),
        "{:?}",
        metrics(&envoy)
    );
    let fast_ewma = gauge("latency_ewma_ms");
    println!("adaptive: EWMA {slow_ewma} ms while slow, {fast_ewma} ms after recovery");
    assert!(fast_ewma <= 100, "{:?}", metrics(&envoy));
}

#[test]
fn requests_beyond_max_in_flight_are_refused_with_503() {
    const MAX_IN_FLIGHT: u64 = 4;
    const WORKERS: u64 = 2;
    const CONCURRENT: usize = 24;
    let (upstream, _upstream) = echo_upstream();
    let envoy = adaptive_gateway(
        json!({"latency_threshold_ms": 60_000, "max_in_flight": MAX_IN_FLIGHT, "publish_interval_ms": 50}),
        upstream,
    );
    let addr = envoy.listener_addr();

    let barrier = Barrier::new(CONCURRENT);
    let responses: Vec<Response> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..CONCURRENT)
            .map(|i| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    delayed(addr, i as u64, 1000)
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let admitted = responses.iter().filter(|r| r.status == 200).count() as u64;
    let overloaded: Vec<&Response> = responses.iter().filter(|r| r.status == 503).collect();
    println!(
        "max_in_flight {MAX_IN_FLIGHT}: {CONCURRENT} concurrent slow requests, {admitted} admitted, {} refused",
        overloaded.len()
    );
    assert_eq!(admitted + overloaded.len() as u64, CONCURRENT as u64);
    assert!(admitted >= 1);
    // Each worker counts its own requests live and the others' as of the
    // last publication (<= 50 ms old), so at worst every worker fills the
    // queue alone.
    assert!(
        admitted <= MAX_IN_FLIGHT * WORKERS,
        "{admitted} admitted with max_in_flight {MAX_IN_FLIGHT}"
    );
    for r in &overloaded {
        assert_eq!(r.header("x-upstream"), None, "the filter's refusal");
        assert_eq!(r.header("retry-after"), Some("1"));
        assert_eq!(r.json()["error"], "overloaded");
    }
    assert_eq!(
        metric(&envoy, "refused.queue_full"),
        overloaded.len() as u64
    );
    // Once they are done, requests pass again.
    assert!(eventually(Duration::from_secs(5), || delayed(
        addr, 9999, 0
    )
    .status
        == 200));
}

// --- Memory --------------------------------------------------------------------------

/// Envoy's heap (`/memory`: `allocated`, `heap_size`) and RSS, in bytes.
fn memory(envoy: &Envoy) -> (u64, u64, u64) {
    let body = envoy.admin_get("/memory").expect_status(200).json();
    let field = |name: &str| match &body[name] {
        Value::String(s) => s.parse::<u64>().unwrap(),
        Value::Number(n) => n.as_u64().unwrap(),
        other => panic!("/memory {name}: {other}"),
    };
    let status = std::fs::read_to_string(format!("/proc/{}/status", envoy.pid())).unwrap();
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    (field("allocated"), field("heap_size"), rss_kb * 1024)
}

/// A distinct IPv4 address per client number.
fn client_ip(id: u64) -> String {
    format!("10.{}.{}.{}", (id >> 16) & 255, (id >> 8) & 255, id & 255)
}

/// One request per client id in `ids`, over `threads` keep-alive connections.
fn one_request_per_client(addr: SocketAddr, ids: std::ops::Range<u64>, threads: u64) {
    std::thread::scope(|s| {
        for t in 0..threads {
            let ids = ids.clone();
            s.spawn(move || {
                let mut client = Client::connect(addr);
                for id in ids
                    .skip(usize::try_from(t).unwrap())
                    .step_by(usize::try_from(threads).unwrap())
                {
                    let r =
                        client.send(&Request::get("/").header("x-forwarded-for", &client_ip(id)));
                    assert_eq!(r.status, 200, "client-{id}: {}", r.text());
                }
            });
        }
    });
}

#[test]
fn a_hundred_thousand_tenants_leave_envoy_s_memory_bounded() {
    const SLOTS: u64 = 4096;
    const WAYS: u64 = 4;
    // A bucket with one limit: key hash 8 + last use 8 + idle at 8 +
    // global view 4x8 + limit count 1 + (id 4 + level 8 + leaked at 8) per
    // limit.
    const ENTRY_BYTES: u64 = 8 + 8 + 8 + 32 + 1 + 20;
    const TABLE_BYTES: u64 = SLOTS * WAYS * ENTRY_BYTES;
    let envoy = Envoy::start(
        &EnvoyConfig::new()
            .filter(ratelimit(json!({
                "anonymous": {
                    "client": {"source": "forwarded_for", "trusted_hops": 1},
                    "slots": SLOTS,
                },
                "tiers": tiers(per("per_minute", 1000, 60)),
            })))
            .route(Route::prefix("/").direct(200, "ok")),
    );
    let addr = envoy.listener_addr();
    let mb = |b: u64| b as f64 / (1024.0 * 1024.0);

    // Warm up Envoy's own pools with few keys.
    one_request_per_client(addr, 0..1000, 4);
    let start = memory(&envoy);
    let started = Instant::now();
    one_request_per_client(addr, 1000..11_000, 4);
    let at_10k = memory(&envoy);
    one_request_per_client(addr, 11_000..101_000, 4);
    let at_100k = memory(&envoy);
    let elapsed = started.elapsed();
    let evictions = metric(&envoy, "bucket.evictions");
    for (label, (allocated, heap, rss)) in [("start", start), ("10k", at_10k), ("100k", at_100k)] {
        println!(
            "memory after {label:>5} tenants: allocated {:.2} MiB, heap {:.2} MiB, RSS {:.2} MiB",
            mb(allocated),
            mb(heap),
            mb(rss)
        );
    }
    let growth = at_100k.0.saturating_sub(at_10k.0);
    let rss_growth = at_100k.2.saturating_sub(at_10k.2);
    println!(
        "100 000 tenants in {elapsed:?}; bucket table bound {:.2} MiB ({SLOTS} slots x {WAYS} ways x {ENTRY_BYTES} B); \
         allocated +{:.2} MiB and RSS +{:.2} MiB from 10k to 100k tenants; {evictions} evictions",
        mb(TABLE_BYTES),
        mb(growth),
        mb(rss_growth)
    );
    // Unbounded per-tenant state would add 90 000 buckets (> 6 MiB of
    // bucket bytes alone, twice that with keys and map nodes).
    assert!(
        growth <= 2 * TABLE_BYTES,
        "Envoy's heap grew by {growth} B from 10k to 100k tenants (table bound {TABLE_BYTES} B)"
    );
    assert!(
        rss_growth <= 8 * TABLE_BYTES,
        "Envoy's RSS grew by {rss_growth} B from 10k to 100k tenants"
    );
    // Every new client beyond the table's 16 384 buckets replaced one.
    assert!(
        (101_000 - SLOTS * WAYS..=101_000).contains(&evictions),
        "{evictions} evictions for 101 000 clients"
    );
}
