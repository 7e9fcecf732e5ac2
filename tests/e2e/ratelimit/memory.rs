//! Memory: a hundred thousand keys leave Envoy's memory bounded by the
//! bucket table.

use std::net::SocketAddr;
use std::time::Instant;

use ctxgate_e2e::{Client, Envoy, EnvoyConfig, Request, Route};
use serde_json::{Value, json};

use crate::support::*;

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
            .filter(ratelimit_only(json!({
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
