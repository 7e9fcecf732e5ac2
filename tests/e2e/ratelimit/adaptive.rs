//! Adaptive limits: limits shrink while the upstream is slow, and requests
//! beyond `max_in_flight` are refused with 503.

use std::net::SocketAddr;
use std::sync::Barrier;
use std::time::Duration;

use ctxgate_e2e::{Cluster, Envoy, EnvoyConfig, Request, Response, Route, eventually};
use serde_json::{Value, json};

use crate::support::*;

/// ratelimit -> router to the echo upstream; clients are keyed by
/// the address their (trusted) proxy put in `x-forwarded-for` (anonymous
/// tier: 1000 per hour).
fn adaptive_gateway(adaptive: Value, upstream: SocketAddr) -> Envoy {
    Envoy::start(
        &EnvoyConfig::new()
            .filter(ratelimit_only(json!({
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
