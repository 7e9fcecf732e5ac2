//! What a refused client gets: 429 with `Retry-After`, the limit it
//! exceeded in `x-ratelimit-*` and a JSON body, gRPC's RESOURCE_EXHAUSTED,
//! and a response-details string for the access log.

use std::time::Duration;

use ctxgate_e2e::{Envoy, Request, ScriptedServer, eventually};
use serde_json::json;

use crate::support::*;

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
