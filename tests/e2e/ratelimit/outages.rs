//! When the RLS fails: stopped (connections refused) or late (answering
//! after the filter's deadline). The filter enforces its own deadline and
//! applies `failure_mode`; a request paused for the RLS stays paused until
//! then, whatever else arrives.

use std::time::{Duration, Instant};

use ctxgate_e2e::{
    Client, Cluster, Envoy, Request, Response, Rls, ScriptedServer, SlowRls, eventually,
};
use serde_json::json;

use crate::support::*;

// --- RLS outages -------------------------------------------------------------------

/// Deadline of every RLS call in the outage tests.
/// (The default is 20 ms; 100 ms keeps a refused connection reported as a
/// failure, not a timeout, when a busy machine stalls Envoy for a while.)
const RLS_TIMEOUT_MS: u64 = 100;
/// How late the slow RLS answers: far beyond the deadline.
const SLOW_RLS_DELAY: Duration = Duration::from_secs(3);
/// The slowest a request may be during an outage: well below
/// [`SLOW_RLS_DELAY`], so it shows that the filter did not wait for the
/// RLS, with room for a busy 2-core machine to schedule Envoy (the
/// deadline itself is [`RLS_TIMEOUT_MS`]; the measured figures are
/// printed).
const LATENCY_BOUND: Duration = Duration::from_secs(1);
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
/// [`SLOW_RLS_DELAY`], then restarted.
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

    // Healthy: the RLS decides and its limit is reported (the first call
    // opens the HTTP/2 connection and may miss the deadline).
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
        stopped_max <= LATENCY_BOUND,
        "RLS stopped: a request took {stopped_max:?}"
    );

    // (b) Slow: the port answers, 500 ms late.
    let slow = SlowRls::start_on(rls.addr(), SLOW_RLS_DELAY);
    let before = outage_counters(&envoy, mode);
    let slow_max = outage_phase(&envoy, mode, &acme);
    let after = outage_counters(&envoy, mode);
    println!(
        "failure_mode {mode}, RLS {SLOW_RLS_DELAY:?} late: slowest request {slow_max:?}, \
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
    assert!(
        slow_max <= LATENCY_BOUND,
        "RLS slow: a request took {slow_max:?}"
    );

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

/// A request paused while the RLS decides must stay paused until the RLS
/// answers or the deadline passes: its body arriving meanwhile does not let
/// it through. With `failure_mode: deny` and an RLS that answers too late,
/// requests with a body are refused like those without.
#[test]
fn a_request_waiting_for_the_rls_is_not_let_through_by_its_body() {
    let upstream = ScriptedServer::start();
    let slow = SlowRls::start_on("127.0.0.1:0".parse().unwrap(), SLOW_RLS_DELAY);
    let envoy = Envoy::start(
        &gateway(
            json!({
                "tiers": tiers(monthly(1000)),
                "global": {
                    "mode": "always",
                    "cluster": "rls",
                    "timeout_ms": 100,
                    "failure_mode": "deny",
                    "deny_status": 503,
                },
            }),
            upstream.addr(),
        )
        .cluster(Cluster::new("rls", [slow.addr()]).http2(true)),
    );
    let addr = envoy.listener_addr();
    let acme = token("acme", json!({}));
    let requests = [
        ("read, no body", read(&acme)),
        ("write with content-length", write(&acme, 10)),
        (
            "chunked write",
            Request::new("PUT", READ)
                .bearer(&acme)
                .chunked(&[b'x'; 64 * 1024], 4096),
        ),
        ("graph traversal", graph(&acme)),
    ];
    for (what, request) in &requests {
        let response = request.send(addr);
        assert_eq!(
            response.status,
            503,
            "{what}: {:?} {}",
            response.headers,
            response.text()
        );
        assert_eq!(response.json()["error"], "rate_limit_unavailable", "{what}");
    }
    println!("{:?}", metrics(&envoy));
    assert_eq!(upstream.hits(), 0, "nothing reached the upstream");
    assert_eq!(metric(&envoy, "failure_mode.deny"), requests.len() as u64);
    assert!(
        slow.calls() >= requests.len() as u64,
        "every request asked the RLS"
    );
}
