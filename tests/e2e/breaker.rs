//! End-to-end tests of the circuit breaker filter through a real Envoy
//! (1.40, V8): breaker -> router in front of an upstream whose answers the
//! test controls, either a `ScriptedServer` switched at runtime (for
//! "upstream fails, then recovers") or the demo echo upstream driven by
//! `x-demo-status` / `x-demo-delay-ms` request headers.
//!
//! Breaker state lives in Envoy shared data, one record for all workers,
//! so the tests of shared state run Envoy with four workers and send over
//! many fresh connections; `listener.<addr>.worker_<i>.downstream_cx_total`
//! shows that every worker took part.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::Barrier;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ctxgate_demo::upstream::ShutdownHandle;
use ctxgate_e2e::{
    Client, Cluster, Envoy, EnvoyConfig, Request, Response, Route, ScriptedServer, WasmFilter,
    filter_log_prefix, filter_rejected,
};
use serde_json::{Value, json};

/// Header the scripted upstream marks its answers with, so an upstream 5xx
/// is never mistaken for one Envoy or the breaker generated.
const FROM_REPO: &str = "x-upstream";
/// Envoy writes its log file from a flush thread: log lines show up a
/// little after the event that logged them.
const LOG_FLUSH: Duration = Duration::from_secs(5);

fn breaker_filter(breakers: Value) -> WasmFilter {
    WasmFilter::single("breaker", json!({ "breakers": breakers }))
}

/// `ctxgate_breaker.<breaker>.<name>`.
fn metric(envoy: &Envoy, breaker: &str, name: &str) -> u64 {
    envoy.wasm_metric(&format!("ctxgate_breaker.{breaker}.{name}"))
}

/// Every metric of a breaker, for assertion messages and exact checks.
fn metrics(envoy: &Envoy, breaker: &str) -> Vec<(&'static str, u64)> {
    [
        "state",
        "opened",
        "half_opened",
        "closed",
        "rejected",
        "fallback",
        "probes",
        "failures",
    ]
    .into_iter()
    .map(|name| (name, metric(envoy, breaker, name)))
    .collect()
}

/// Is this the breaker's refusal (as opposed to an upstream's or Envoy's
/// own 503)? Checks the whole shape: 503, `Retry-After` in whole seconds
/// within `max_retry` s, a JSON body naming the breaker.
fn is_rejection(response: &Response, breaker: &str, max_retry: u64) -> bool {
    if response.status != 503 || response.header(FROM_REPO).is_some() {
        return false;
    }
    let Some(retry) = response
        .header("retry-after")
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return false;
    };
    let Ok(body) = serde_json::from_slice::<Value>(&response.body) else {
        return false;
    };
    response.header("content-type") == Some("application/json")
        && (1..=max_retry).contains(&retry)
        && body["error"] == "circuit_open"
        && body["breaker"] == breaker
        && body["retry_after_seconds"] == retry
        && body["message"]
            .as_str()
            .is_some_and(|m| m.contains(breaker))
}

#[track_caller]
fn assert_rejected(response: &Response, breaker: &str, max_retry: u64) {
    assert!(
        is_rejection(response, breaker, max_retry),
        "expected {breaker}'s 503 refusal (Retry-After <= {max_retry}); got {} {:?} {:?}",
        response.status,
        response.headers,
        response.text()
    );
}

#[track_caller]
fn assert_every_worker_served(before: &[u64], after: &[u64]) {
    assert!(
        before.iter().zip(after).all(|(b, a)| a > b),
        "every worker should have accepted connections: {before:?} -> {after:?}"
    );
}

/// Runs `f(i)` on `n` threads released together; returns the results in
/// order of `i`.
fn concurrently<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let barrier = Barrier::new(n);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let (barrier, f) = (&barrier, &f);
                scope.spawn(move || {
                    barrier.wait();
                    f(i)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// A scripted upstream answering `status` with the `x-upstream: repo` mark.
fn repo_answers(repo: &ScriptedServer, status: u16) {
    repo.set_response(status, &[(FROM_REPO, "repo")], format!("repo {status}"));
}

/// An upstream error rate over the threshold opens the breaker once, for
/// every worker: with four workers racing to record failures `.opened` is
/// exactly 1, and afterwards requests over many fresh connections (every
/// worker) are all refused with 503, `Retry-After` and a JSON body naming
/// the breaker, without reaching the upstream.
#[test]
fn it_opens_once_on_every_worker_when_errors_cross_the_threshold() {
    let repo = ScriptedServer::start();
    repo_answers(&repo, 500);
    repo.set_delay(Duration::from_millis(30));
    let envoy = Envoy::start(
        &EnvoyConfig::new()
            .concurrency(4)
            .filter(breaker_filter(json!([{
                "name": "repo",
                "error_threshold_percent": 50,
                "window_seconds": 60,
                "min_requests": 20,
                "reset_timeout_ms": 60_000,
            }])))
            .route(Route::prefix("/").cluster("repo"))
            .cluster(Cluster::new("repo", [repo.addr()])),
    );
    let addr = envoy.listener_addr();

    // 16 clients x 8 requests, each on a fresh connection, all failing.
    let racing: Vec<Response> = concurrently(16, |_| {
        (0..8)
            .map(|_| Request::get("/v1/contexts/x").send(addr))
            .collect::<Vec<_>>()
    })
    .into_iter()
    .flatten()
    .collect();
    let upstream_failures = racing
        .iter()
        .filter(|r| r.status == 500 && r.header(FROM_REPO) == Some("repo"))
        .count();
    let rejected = racing
        .iter()
        .filter(|r| is_rejection(r, "repo", 60))
        .count();
    let odd: Vec<_> = racing
        .iter()
        .filter(|r| !(r.status == 500 && r.header(FROM_REPO).is_some()) && r.status != 503)
        .map(|r| (r.status, r.text()))
        .collect();
    assert!(odd.is_empty(), "unexpected responses: {odd:?}");
    assert_eq!(upstream_failures + rejected, racing.len());
    assert!(
        upstream_failures >= 20,
        "opened before min_requests (20) failures: {upstream_failures}"
    );
    assert_eq!(
        (
            metric(&envoy, "repo", "opened"),
            metric(&envoy, "repo", "state")
        ),
        (1, 1),
        "opened exactly once: {:?}",
        metrics(&envoy, "repo")
    );

    // Open everywhere: 64 fresh connections spread over the four workers.
    let hits = repo.hits();
    let before = envoy.worker_connections(4);
    let refused: Vec<Response> = concurrently(8, |_| {
        (0..8)
            .map(|_| Request::get("/v1/contexts/y").send(addr))
            .collect::<Vec<_>>()
    })
    .into_iter()
    .flatten()
    .collect();
    assert_every_worker_served(&before, &envoy.worker_connections(4));
    let not_refused: Vec<_> = refused
        .iter()
        .filter(|r| !is_rejection(r, "repo", 60))
        .map(|r| (r.status, r.headers.clone(), r.text()))
        .collect();
    assert!(not_refused.is_empty(), "not refused: {not_refused:?}");
    assert_eq!(repo.hits(), hits, "an open breaker kept traffic away");
    assert_eq!(
        repo.hits(),
        upstream_failures as u64,
        "every request the upstream saw reached the client"
    );

    assert_eq!(
        metrics(&envoy, "repo"),
        vec![
            ("state", 1),
            ("opened", 1),
            ("half_opened", 0),
            ("closed", 0),
            ("rejected", (rejected + refused.len()) as u64),
            ("fallback", 0),
            ("probes", 0),
            ("failures", upstream_failures as u64),
        ]
    );
    assert!(envoy.wait_for_log("breaker repo is now open", LOG_FLUSH));
}

/// Echo upstreams started for a test; stopped when dropped.
struct Echoes {
    _handles: Vec<ShutdownHandle>,
}

impl Echoes {
    fn start(names: &[&str]) -> (Echoes, Vec<Cluster>) {
        let mut handles = Vec::new();
        let mut clusters = Vec::new();
        for name in names {
            let (addr, handle) = ctxgate_demo::spawn_in_thread("127.0.0.1:0", name).unwrap();
            clusters.push(Cluster::new(name, [addr]));
            handles.push(handle);
        }
        (Echoes { _handles: handles }, clusters)
    }
}

fn named_route(name: &str, cluster: &str, headers: Value) -> Route {
    let mut matcher = json!({"prefix": "/"});
    if !headers.is_null() {
        matcher["headers"] = headers;
    }
    Route::raw(json!({
        "name": name,
        "match": matcher,
        "route": {"cluster": cluster, "timeout": "5s"},
    }))
}

/// The header a request carried at the echo upstream (single value).
fn echoed(response: &Response, header: &str) -> Value {
    response.json()["headers"][header].clone()
}

/// Fallback mode: while open, requests go to the route matching
/// `x-context-degraded: cache` and the response says it is degraded; while
/// closed, a client sending that header itself does not reach the cache.
#[test]
fn an_open_breaker_with_a_fallback_sends_requests_to_the_cache_route() {
    let (_echoes, clusters) = Echoes::start(&["repo", "cache"]);
    let mut config = EnvoyConfig::new()
        .filter(breaker_filter(json!([{
            "name": "repo",
            "error_threshold_percent": 50,
            "min_requests": 5,
            "reset_timeout_ms": 60_000,
            "on_open": {"action": "fallback"},
        }])))
        .route(named_route(
            "degraded",
            "cache",
            json!([{"name": "x-context-degraded", "string_match": {"exact": "cache"}}]),
        ))
        .route(named_route("repo", "repo", Value::Null));
    for cluster in clusters {
        config = config.cluster(cluster);
    }
    let envoy = Envoy::start(&config);
    let addr = envoy.listener_addr();

    // Closed: the client's own x-context-degraded does not pick the cache.
    let mut closed_wrong = Vec::new();
    for value in ["cache", "true"] {
        let response = Request::get("/v1/contexts/a")
            .header("x-context-degraded", value)
            .send(addr);
        if response.status != 200
            || response.header("x-upstream") != Some("repo")
            || response.header("x-context-degraded").is_some()
            || !echoed(&response, "x-context-degraded").is_null()
        {
            closed_wrong.push((
                value,
                response.status,
                response.headers.clone(),
                response.text(),
            ));
        }
    }
    assert!(closed_wrong.is_empty(), "{closed_wrong:?}");

    // Trip it: with the 2 successes above, 3 upstream errors make 5
    // requests (min_requests) at 60 % failures.
    for i in 0..3 {
        assert_eq!(metric(&envoy, "repo", "opened"), 0, "opened after {i}");
        let response = Request::get("/v1/contexts/a")
            .header("x-demo-status", "500")
            .send(addr);
        assert_eq!(
            (response.status, response.header("x-upstream")),
            (500, Some("repo"))
        );
    }
    assert_eq!(metric(&envoy, "repo", "opened"), 1);

    // Open: every request lands on the cache, marked degraded.
    let mut open_wrong = Vec::new();
    let requests = [
        Request::get("/v1/contexts/a"),
        Request::get("/v1/contexts/b?x=1"),
        Request::get("/v1/contexts/a").header("x-context-degraded", "cache"),
        Request::get("/v1/contexts/a").header("x-context-degraded", "other"),
        Request::post("/v1/contexts/a").body("{}"),
    ];
    for _ in 0..4 {
        for request in &requests {
            let response = request.send(addr);
            let degraded = response.headers_all("x-context-degraded");
            if response.status != 200
                || response.header("x-upstream") != Some("cache")
                || degraded != ["true"]
                || echoed(&response, "x-context-degraded") != "cache"
            {
                open_wrong.push((response.status, response.headers.clone(), response.text()));
            }
        }
    }
    assert!(open_wrong.is_empty(), "{open_wrong:#?}");
    assert_eq!(
        metrics(&envoy, "repo"),
        vec![
            ("state", 1),
            ("opened", 1),
            ("half_opened", 0),
            ("closed", 0),
            ("rejected", 0),
            ("fallback", 20),
            ("probes", 0),
            ("failures", 3),
        ]
    );
}

/// Where a request should end up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// The named echo upstream answered 200.
    Upstream(&'static str),
    /// The named breaker refused it.
    Refused(&'static str),
}

/// Sends each request on a fresh connection; fails once, listing every
/// request that did not end up as expected.
#[track_caller]
fn check_outcomes(envoy: &Envoy, phase: &str, cases: &[(&str, &Request, Outcome)]) {
    let mut wrong = Vec::new();
    for (what, request, outcome) in cases {
        let response = request.send(envoy.listener_addr());
        let ok = match outcome {
            Outcome::Upstream(name) => {
                response.status == 200 && response.header("x-upstream") == Some(name)
            }
            Outcome::Refused(breaker) => is_rejection(&response, breaker, 60),
        };
        if !ok {
            wrong.push(format!(
                "{what}: want {outcome:?}, got {} {:?} {}",
                response.status,
                response.header("x-upstream"),
                response.text()
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{phase}:\n  {}\nbreakers: {:?}",
        wrong.join("\n  "),
        ["processor", "repo", "ssd"].map(|b| (b, metrics(envoy, b)))
    );
}

/// Behind the tagging filter (as in `envoy/demo.yaml`) breakers select by
/// tag: each guards exactly the requests the tags send to its upstream
/// class, never what the client's own headers asked for. (Route and cluster
/// names are those Envoy picked on arrival, before tagging; see the next
/// test.)
#[test]
fn behind_tagging_each_breaker_guards_the_requests_its_tag_selects() {
    let (_echoes, clusters) = Echoes::start(&["standard", "high-memory", "fast-ssd"]);
    let trip = |name: &str, select: Value| {
        json!({
            "name": name,
            "select": select,
            "error_threshold_percent": 50,
            "min_requests": 3,
            "reset_timeout_ms": 60_000,
        })
    };
    let mut config = EnvoyConfig::new()
        .filter(
            WasmFilter::ctxgate("ctxgate")
                .stage("tagging", json!({
            "rules": [
                {"when": {"size": {"above": 1000}}, "set": {"type": "large-context"}},
                {"when": {"header": {"name": "x-client-class", "exact": "interactive"}},
                 "set": {"priority": "high"}},
            ],
        }))
        .stage("breaker", json!({"breakers": json!([
            trip(
                "processor",
                json!({"header": {"name": "x-context-type", "values": ["large-context"]}})
            ),
            trip(
                "ssd",
                json!({"any_header": [{"name": "x-context-priority", "values": ["high"]}]})
            ),
            trip("repo", json!({})),
        ])})))
        .route(named_route(
            "high_memory",
            "high-memory",
            json!([{"name": "x-context-type", "string_match": {"exact": "large-context"}}]),
        ))
        .route(named_route(
            "fast_ssd",
            "fast-ssd",
            json!([{"name": "x-context-priority", "string_match": {"exact": "high"}}]),
        ))
        .route(named_route("standard", "standard", Value::Null));
    for cluster in clusters {
        config = config.cluster(cluster);
    }
    let envoy = Envoy::start(&config);
    let plain = Request::get("/v1/contexts/a");
    let large = Request::post("/v1/contexts/a").body(vec![b'x'; 5000]);
    let interactive = plain.clone().header("x-client-class", "interactive");
    let spoofed_large = plain.clone().header("x-context-type", "large-context");
    let spoofed_priority = plain.clone().header("x-context-priority", "high");
    let failing = |request: &Request| request.clone().header("x-demo-status", "500");
    // Each breaker opens once failures reach half of the requests in its
    // window (at least 3): after earlier successes it takes more failures.
    let trip_with = |request: &Request, upstream: &str, failures: usize| {
        for _ in 0..failures {
            let response = failing(request).send(envoy.listener_addr());
            assert_eq!(
                (response.status, response.header("x-upstream")),
                (500, Some(upstream)),
                "failing request for {upstream}: {}",
                response.text()
            );
        }
    };
    use Outcome::{Refused, Upstream};

    trip_with(&large, "high-memory", 3);
    check_outcomes(
        &envoy,
        "after 3 failures tagged large-context",
        &[
            ("large context", &large, Refused("processor")),
            ("plain", &plain, Upstream("standard")),
            (
                "client-set large-context type",
                &spoofed_large,
                Upstream("standard"),
            ),
            ("interactive", &interactive, Upstream("fast-ssd")),
        ],
    );

    // One success (above) and two failures: 2 of 3 failed.
    trip_with(&interactive, "fast-ssd", 2);
    check_outcomes(
        &envoy,
        "after 2 failures tagged priority high",
        &[
            ("interactive", &interactive, Refused("ssd")),
            (
                "client-set priority",
                &spoofed_priority,
                Upstream("standard"),
            ),
            ("plain", &plain, Upstream("standard")),
            ("large context", &large, Refused("processor")),
        ],
    );

    // Four successes so far (plain and spoofed requests): four failures.
    trip_with(&plain, "standard", 4);
    check_outcomes(
        &envoy,
        "after 4 failures on the standard pool",
        &[
            ("plain", &plain, Refused("repo")),
            (
                "client-set large-context type",
                &spoofed_large,
                Refused("repo"),
            ),
            ("client-set priority", &spoofed_priority, Refused("repo")),
            ("large context", &large, Refused("processor")),
            ("interactive", &interactive, Refused("ssd")),
        ],
    );
    for (breaker, failures) in [("processor", 3), ("ssd", 2), ("repo", 4)] {
        assert_eq!(
            (
                metric(&envoy, breaker, "opened"),
                metric(&envoy, breaker, "failures")
            ),
            (1, failures),
            "{breaker}: {:?}",
            metrics(&envoy, breaker)
        );
    }
}

/// Without a filter changing routing headers, breakers select by Envoy
/// route name and cluster name.
#[test]
fn breakers_select_by_route_or_cluster_name() {
    let (_echoes, clusters) = Echoes::start(&["standard", "high-memory"]);
    let trip = |name: &str, select: Value| json!({"name": name, "select": select, "error_threshold_percent": 50, "min_requests": 3, "reset_timeout_ms": 60_000});
    let mut config = EnvoyConfig::new()
        .filter(breaker_filter(json!([
            trip("processor", json!({"routes": ["heavy"]})),
            trip("repo", json!({"clusters": ["standard"]})),
        ])))
        .route(Route::raw(json!({
            "name": "heavy",
            "match": {"prefix": "/v1/heavy"},
            "route": {"cluster": "high-memory", "timeout": "5s"},
        })))
        .route(named_route("standard", "standard", Value::Null));
    for cluster in clusters {
        config = config.cluster(cluster);
    }
    let envoy = Envoy::start(&config);
    let heavy = Request::get("/v1/heavy/a");
    let plain = Request::get("/v1/contexts/a");
    for _ in 0..3 {
        let response = heavy
            .clone()
            .header("x-demo-status", "500")
            .send(envoy.listener_addr());
        assert_eq!(response.header("x-upstream"), Some("high-memory"));
    }
    use Outcome::{Refused, Upstream};
    check_outcomes(
        &envoy,
        "after 3 failures on route heavy",
        &[
            ("heavy", &heavy, Refused("processor")),
            ("plain", &plain, Upstream("standard")),
        ],
    );
    for _ in 0..3 {
        plain
            .clone()
            .header("x-demo-status", "503")
            .send(envoy.listener_addr());
    }
    check_outcomes(
        &envoy,
        "after 3 failures on cluster standard",
        &[("plain", &plain, Refused("repo"))],
    );
    assert_eq!(metric(&envoy, "processor", "opened"), 1);
    assert_eq!(metric(&envoy, "repo", "opened"), 1);
}

/// Half-open: after `reset_timeout_ms` a failing probe re-opens the
/// breaker; later, of 32 concurrent requests exactly `half_open_probes` (3)
/// reach the slow upstream and the rest are refused; when the probes
/// succeed the breaker closes and traffic flows again.
#[test]
fn half_open_lets_only_the_probe_budget_through_then_closes_or_reopens() {
    const RESET: Duration = Duration::from_millis(1000);
    let repo = ScriptedServer::start();
    repo_answers(&repo, 500);
    let envoy = Envoy::start(
        &EnvoyConfig::new()
            .concurrency(4)
            .filter(breaker_filter(json!([{
                "name": "repo",
                "error_threshold_percent": 50,
                "min_requests": 4,
                "reset_timeout_ms": RESET.as_millis() as u64,
                "half_open_probes": 3,
            }])))
            .route(Route::prefix("/").cluster("repo"))
            .cluster(Cluster::new("repo", [repo.addr()])),
    );
    let addr = envoy.listener_addr();
    let send = || Request::get("/v1/contexts/a").send(addr);

    for _ in 0..4 {
        assert_eq!(send().status, 500);
    }
    assert_rejected(&send(), "repo", 1);
    assert_eq!(metric(&envoy, "repo", "opened"), 1);

    // A failing probe re-opens it at once.
    std::thread::sleep(RESET + Duration::from_millis(200));
    let probe = send();
    assert_eq!(
        (probe.status, probe.header(FROM_REPO)),
        (500, Some("repo")),
        "the first request after the reset timeout is a probe"
    );
    assert_rejected(&send(), "repo", 1);
    assert_eq!(repo.hits(), 5);
    assert_eq!(
        (
            metric(&envoy, "repo", "opened"),
            metric(&envoy, "repo", "half_opened"),
            metric(&envoy, "repo", "state"),
        ),
        (2, 1, 1),
        "{:?}",
        metrics(&envoy, "repo")
    );

    // The upstream recovers, slowly: only the probe budget gets through.
    repo_answers(&repo, 200);
    repo.set_delay(Duration::from_millis(800));
    std::thread::sleep(RESET + Duration::from_millis(200));
    let before = envoy.worker_connections(4);
    let burst = concurrently(32, |_| send());
    assert_every_worker_served(&before, &envoy.worker_connections(4));
    let probes = burst.iter().filter(|r| r.status == 200).count();
    let refused = burst.iter().filter(|r| is_rejection(r, "repo", 1)).count();
    assert_eq!(
        (probes, refused, repo.hits() - 5),
        (3, 29, 3),
        "statuses {:?}",
        burst.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert_eq!(
        metrics(&envoy, "repo"),
        vec![
            ("state", 0),
            ("opened", 2),
            ("half_opened", 2),
            ("closed", 1),
            ("rejected", 2 + 29),
            ("fallback", 0),
            ("probes", 4),
            ("failures", 5),
        ]
    );

    // Closed: traffic flows, concurrently and from every worker.
    repo.set_delay(Duration::ZERO);
    let flowing = concurrently(8, |_| (0..4).map(|_| send().status).collect::<Vec<_>>());
    assert!(
        flowing.iter().flatten().all(|s| *s == 200),
        "after closing: {flowing:?}"
    );
    assert_eq!(repo.hits(), 8 + 32);
    assert!(envoy.wait_for_log("breaker repo is now closed", LOG_FLUSH));
}

/// No outcome is lost when four workers record at once. With
/// `min_requests` 2000 and a 50 % threshold, 1999 concurrent requests (999
/// upstream errors) cannot open the breaker, and one more failure must
/// open it exactly then: had any update been lost, the window would hold
/// fewer than 2000 requests or fewer than 1000 failures and stay closed;
/// had one been counted twice, it would already have opened.
#[test]
fn it_counts_every_outcome_from_every_worker_under_concurrency() {
    const MIN: usize = 2000;
    const THREADS: usize = 16;
    /// Requests per connection before a client reconnects, so the load
    /// spreads over all workers.
    const PER_CONNECTION: usize = 25;
    let (_echoes, clusters) = Echoes::start(&["repo"]);
    let envoy = Envoy::start(
        &EnvoyConfig::new()
            .concurrency(4)
            .filter(breaker_filter(json!([{
                "name": "repo",
                "error_threshold_percent": 50,
                "window_seconds": 600,
                "min_requests": MIN,
                "reset_timeout_ms": 60_000,
            }])))
            .route(Route::prefix("/").cluster("repo"))
            .cluster(clusters[0].clone()),
    );
    let addr = envoy.listener_addr();
    let failing = Request::get("/v1/contexts/a").header("x-demo-status", "500");
    let ok = Request::get("/v1/contexts/a");

    let before = envoy.worker_connections(4);
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    let statuses: Vec<(bool, u16)> = concurrently(THREADS, |_| {
        let mut seen = Vec::new();
        let mut client: Option<(Client, usize)> = None;
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= MIN - 1 {
                return seen;
            }
            if client
                .as_ref()
                .is_none_or(|(_, used)| *used >= PER_CONNECTION)
            {
                client = Some((Client::connect(addr), 0));
            }
            let (conn, used) = client.as_mut().unwrap();
            *used += 1;
            let fail = i % 2 == 1;
            let response = conn.send(if fail { &failing } else { &ok });
            seen.push((fail, response.status));
        }
    })
    .into_iter()
    .flatten()
    .collect();
    let elapsed = started.elapsed();
    assert_every_worker_served(&before, &envoy.worker_connections(4));
    let unexpected: Vec<_> = statuses
        .iter()
        .filter(|(fail, status)| *status != if *fail { 500 } else { 200 })
        .collect();
    assert!(
        unexpected.is_empty(),
        "{} of {} requests did not get the upstream's answer, e.g. {:?}",
        unexpected.len(),
        statuses.len(),
        &unexpected[..unexpected.len().min(5)]
    );
    let client_5xx = statuses.iter().filter(|(_, s)| *s >= 500).count();
    assert_eq!((statuses.len(), client_5xx), (MIN - 1, MIN / 2 - 1));
    assert_eq!(
        (
            metric(&envoy, "repo", "failures"),
            metric(&envoy, "repo", "opened")
        ),
        (client_5xx as u64, 0),
        "after {} requests in {elapsed:?}: {:?}",
        MIN - 1,
        metrics(&envoy, "repo")
    );

    // Request 2000, failure 1000: exactly 50 %.
    assert_eq!(
        Request::get("/")
            .header("x-demo-status", "503")
            .send(addr)
            .status,
        503
    );
    assert_eq!(
        (
            metric(&envoy, "repo", "opened"),
            metric(&envoy, "repo", "state"),
            metric(&envoy, "repo", "failures"),
        ),
        (1, 1, MIN as u64 / 2),
        "the {MIN}th request must open the breaker: {:?}",
        metrics(&envoy, "repo")
    );
    assert_rejected(&Request::get("/").send(addr), "repo", 60);
    eprintln!("{} concurrent requests in {elapsed:?}", MIN - 1);
}

/// `request_timeout_ms` is enforced by Envoy's router: an upstream slower
/// than it gets the client a 504 after the breaker's timeout, not the
/// route's 5 s, even if the client asks for more time; each timeout is a
/// failure, and enough of them open the breaker.
#[test]
fn it_enforces_the_request_timeout_and_counts_it_as_a_failure() {
    const TIMEOUT_MS: u64 = 300;
    let (_echoes, clusters) = Echoes::start(&["repo"]);
    let envoy = Envoy::start(
        &EnvoyConfig::new()
            .filter(breaker_filter(json!([{
                "name": "repo",
                "request_timeout_ms": TIMEOUT_MS,
                "error_threshold_percent": 60,
                "min_requests": 3,
                "reset_timeout_ms": 60_000,
            }])))
            .route(Route::prefix("/").cluster("repo"))
            .cluster(clusters[0].clone()),
    );
    let addr = envoy.listener_addr();

    let fast = Request::get("/fast")
        .header("x-demo-delay-ms", "50")
        .send(addr)
        .expect_status(200);
    assert_eq!(
        echoed(&fast, "x-envoy-expected-rq-timeout-ms"),
        TIMEOUT_MS.to_string(),
        "the router applied the breaker's timeout"
    );

    let mut timings = Vec::new();
    for request in [
        Request::get("/slow").header("x-demo-delay-ms", "3000"),
        Request::get("/slow")
            .header("x-demo-delay-ms", "3000")
            .header("x-envoy-upstream-rq-timeout-ms", "10000"),
    ] {
        let started = Instant::now();
        let response = request.send(addr);
        timings.push((response.status, started.elapsed()));
    }
    let timeout = Duration::from_millis(TIMEOUT_MS);
    assert!(
        timings
            .iter()
            .all(|(status, t)| *status == 504 && *t >= timeout * 9 / 10 && *t < timeout * 4),
        "expected 504 after ~{TIMEOUT_MS} ms each: {timings:?}"
    );
    assert_eq!(
        envoy.wait_for_counter("cluster.repo.upstream_rq_timeout", 2),
        2
    );
    // Two timeouts of three requests: 66 % >= 60 %, so it opened.
    assert_eq!(
        (
            metric(&envoy, "repo", "failures"),
            metric(&envoy, "repo", "opened")
        ),
        (2, 1),
        "{:?}",
        metrics(&envoy, "repo")
    );
    let started = Instant::now();
    assert_rejected(
        &Request::get("/slow")
            .header("x-demo-delay-ms", "3000")
            .send(addr),
        "repo",
        60,
    );
    assert!(started.elapsed() < timeout, "refused without waiting");
}

/// A configuration mistake stops Envoy at startup with a log line naming
/// the field.
#[test]
fn it_refuses_a_bad_breaker_config_and_names_the_field() {
    let good = json!({"name": "ok", "min_requests": 5});
    let cases = [
        (
            json!([good, {"name": "repo", "error_threshold_percent": 0}]),
            "invalid configuration: breaker.breakers[1].error_threshold_percent: must be between 1 and 100",
        ),
        (
            json!([{"name": "repo", "on_open": {"action": "fallback", "request_header": "X-Degraded"}}]),
            "invalid configuration: breaker.breakers[0].on_open.request_header: 'X-Degraded' is not a lower-case header name",
        ),
    ];
    let mut wrong = Vec::new();
    for (breakers, expected) in cases {
        let log = Envoy::start_expect_failure(
            &EnvoyConfig::new()
                .filter(breaker_filter(breakers))
                .route(Route::prefix("/").direct(200, "unreachable")),
        );
        let named = log
            .lines()
            .any(|l| l.contains(&filter_log_prefix("ctxgate_breaker")) && l.contains(expected));
        if !named || !log.contains(&filter_rejected("ctxgate_breaker")) {
            wrong.push(format!("expected {expected:?} in:\n{log}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n\n"));
}
