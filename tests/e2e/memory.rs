//! The native engine's memory stays within its configured tables: a flood
//! of distinct tenants (each with its own token, bucket and cache entry)
//! grows Envoy's resident memory by no more than the tables the
//! configuration sizes could ever hold.
//!
//! The gateway runs auth (HS256, its per-worker and cross-worker token
//! caches sized small), ratelimit (a per-tenant table of `SLOTS` x `WAYS`
//! buckets) and metrics (a top-tenants label). A warm-up of `WARM_UP`
//! tenants fills every table and the allocator's pools; then `FLOOD` more
//! tenants, never seen before, each send one request. If any table grew
//! per tenant (a few dozen bytes each at least), the flood would add
//! megabytes; bounded, it may add at most what the tables hold, counted
//! generously at [`ENTRY_BUDGET`] bytes per entry.
//!
//! Measured on the native engine, whose tables live in Envoy's own heap.
//! On wasm they live in the VM's linear memory and shared data, which V8
//! and Envoy size by their own policies (the `shared_data` suite checks
//! that the wasm tables stay bounded by key count).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use ctxgate_e2e::{Client, Envoy, EnvoyConfig, FilterEngine, Request, Route, WasmFilter, demo_idp};
use serde_json::json;

const WARM_UP: usize = 20_000;
const FLOOD: usize = 100_000;
const THREADS: usize = 4;
const WORKERS: u32 = 2;

/// The tables the configuration sizes.
const SLOTS: u64 = 256;
const WAYS: u64 = 4;
const CACHE_ENTRIES: u64 = 1000;
const SHARED_SLOTS: u64 = 256;

/// Bytes one table entry may take in memory at most: its record (a bucket
/// is under 100 bytes encoded, a cached principal a few hundred), its key,
/// the hash table's slot and the allocator's rounding.
const ENTRY_BUDGET: u64 = 1024;

/// Resident memory of a process, in bytes (`VmRSS` of /proc/<pid>/status).
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// One request per tenant `flood-<from>` .. `flood-<to - 1>`, from
/// `THREADS` clients.
fn flood(envoy: &Envoy, from: usize, to: usize) {
    let addr = envoy.listener_addr();
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            scope.spawn(move || {
                let mut client = Client::connect(addr);
                for i in (from + t..to).step_by(THREADS) {
                    let token = demo_idp::hs256_token(&format!("flood-{i}"), "user-1", &json!({}));
                    let response =
                        client.send(&Request::get("/v1/contexts/projects/a").bearer(&token));
                    assert_eq!(response.status, 200, "{}", response.text());
                }
            });
        }
    });
}

#[test]
fn a_flood_of_distinct_tenants_grows_memory_no_more_than_the_tables_hold() {
    if FilterEngine::current() != FilterEngine::Native {
        eprintln!("skipped on the wasm engine: measured for the native engine's heap");
        return;
    }
    let auth = json!({
        "providers": [demo_idp::hs256_provider()],
        "operations": [{"name": "read", "methods": ["GET"], "path": "/v1/contexts/{context}", "action": "read"}],
        "cache": {"max_entries": CACHE_ENTRIES, "shared_slots": SHARED_SLOTS},
    });
    let ratelimit = json!({
        "slots": SLOTS,
        "ways": WAYS,
        "tiers": {
            "standard": [{"name": "per_hour", "limit": 1000, "window_seconds": 3600}],
            "anonymous": [{"name": "per_minute", "limit": 60, "window_seconds": 60}],
        },
    });
    let config = EnvoyConfig::new()
        .concurrency(WORKERS)
        .filter(
            WasmFilter::ctxgate("ctxgate")
                .stage("auth", auth)
                .stage("ratelimit", ratelimit)
                .stage(
                    "metrics",
                    json!({"top_tenants": 2, "flush_interval_ms": 100}),
                ),
        )
        .route(Route::prefix("/").direct(200, "ok"));
    let envoy = Envoy::start(&config);
    flood(&envoy, 0, WARM_UP);
    let before = rss(envoy.pid());
    let started = std::time::Instant::now();
    flood(&envoy, WARM_UP, WARM_UP + FLOOD);
    let after = rss(envoy.pid());
    let entries = SLOTS * WAYS + CACHE_ENTRIES * u64::from(WORKERS) + SHARED_SLOTS;
    let bound = entries * ENTRY_BUDGET;
    let growth = after.saturating_sub(before);
    println!(
        "{FLOOD} new tenants in {:.1} s: RSS {:.1} MiB -> {:.1} MiB, grew {:.2} MiB \
         ({} B per tenant); table bound {entries} entries x {ENTRY_BUDGET} B = {:.2} MiB",
        started.elapsed().as_secs_f64(),
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        growth as f64 / 1048576.0,
        growth / FLOOD as u64,
        bound as f64 / 1048576.0,
    );
    assert!(
        growth <= bound,
        "RSS grew {growth} B for {FLOOD} tenants, more than the tables' bound {bound} B"
    );
}
