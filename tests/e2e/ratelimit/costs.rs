//! What a request costs and whose bucket pays: exact accounting under
//! concurrency, operation prices and payload bands, limits from the token,
//! and bodies of unknown length charged for the bytes that actually arrive.

use std::sync::Barrier;

use ctxgate_e2e::{Client, Envoy, EnvoyConfig, Request, Route, ScriptedServer};
use serde_json::{Value, json};

use crate::support::*;

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

// --- Bodies of unknown length ---------------------------------------------------

/// A body sent chunked (no `content-length`): the gateway cannot know its
/// size up front, so the payload band is charged as the bytes arrive. A
/// write costs 2 before its body, 4 once more than 100 KiB arrived, 8 past
/// 1 MiB: the same as the same body with a `content-length`.
#[test]
fn a_body_of_unknown_length_is_charged_for_the_bytes_that_arrive() {
    let (upstream, _upstream) = echo_upstream();
    let envoy = Envoy::start(&gateway(
        json!({"tiers": tiers(monthly(100_000))}),
        upstream,
    ));
    let acme = token("chunked", json!({}));
    let mut client = Client::connect(envoy.listener_addr());
    let mut last = remaining(&ok(client.send(&read(&acme))));
    let chunked = |bytes: usize| {
        Request::new("PUT", READ)
            .bearer(&acme)
            .chunked(&vec![b'x'; bytes], 16 * 1024)
    };
    // (what, request, body bytes, expected cost)
    let cases: [(&str, Request, usize, u64); 5] = [
        ("10 B chunked write", chunked(10), 10, 2),
        (
            "200 KiB chunked write (x2)",
            chunked(200 * 1024),
            200 * 1024,
            4,
        ),
        ("2 MiB chunked write (x4)", chunked(2 << 20), 2 << 20, 8),
        (
            "2 MiB write with content-length (x4)",
            write(&acme, 2 << 20),
            2 << 20,
            8,
        ),
        (
            "100 KiB chunked write (x1)",
            chunked(100 * 1024),
            100 * 1024,
            2,
        ),
    ];
    let mut charged = 1;
    for (what, request, bytes, cost) in cases {
        let echoed = ok(client.send(&request)).json();
        assert_eq!(
            echoed["body_bytes"], bytes,
            "{what}: the upstream got it all"
        );
        // The next read sees what the write was charged, whenever the
        // charge was taken.
        let now = remaining(&ok(client.send(&read(&acme))));
        assert_eq!(last - now - 1, cost, "{what} should cost {cost}");
        last = now;
        charged += cost + 1;
    }
    println!(
        "charged {charged} read-equivalents; metric cost {}: {:?}",
        metric(&envoy, "cost"),
        metrics(&envoy)
    );
}

/// When the bytes that arrive cross a payload band the bucket cannot pay
/// for, the request is refused then and there: the client gets the 429,
/// the upstream never gets the whole request (its stream is reset), and
/// the unpaid difference is not taken from the bucket.
#[test]
fn a_body_of_unknown_length_the_bucket_cannot_pay_for_is_refused_mid_stream() {
    let upstream = ScriptedServer::start();
    let envoy = Envoy::start(&gateway(
        json!({"tiers": tiers(monthly(3))}),
        upstream.addr(),
    ));
    let acme = token("streamer", json!({}));
    let addr = envoy.listener_addr();
    // The headers pay 2 of 3; 200 KiB of body would cost 2 more.
    let refused = Request::new("PUT", READ)
        .bearer(&acme)
        .chunked(&vec![b'x'; 200 * 1024], 16 * 1024)
        .send(addr);
    assert_eq!(
        refused.status,
        429,
        "{:?} {}",
        refused.headers,
        refused.text()
    );
    let body: Value = refused.json();
    assert_eq!(body["error"], "rate_limited", "{body}");
    assert_eq!(body["cost"], 2, "{body}");
    assert_eq!(
        metric(&envoy, "refused.local_limit"),
        1,
        "{:?}",
        metrics(&envoy)
    );
    // What the headers paid stays paid; the refused difference was not
    // taken: one unit is left.
    let last = ok(read(&acme).send(addr));
    assert_eq!(remaining(&last), 0);
    assert_eq!(read(&acme).send(addr).status, 429);
    assert_eq!(
        upstream.hits(),
        1,
        "only the read reached the upstream: {:?}",
        upstream
            .requests()
            .iter()
            .map(|r| r.method.clone())
            .collect::<Vec<_>>()
    );
}
